"""T5.1.1 / mT5 / mT0 encoder-decoder in Flax linen, numerically matching Hugging Face MT5.

The architecture (as in HF `MT5ForConditionalGeneration` and t5x):
  - token embedding shared by encoder and decoder inputs;
  - pre-norm residual blocks with RMSNorm (`layers.RMSNorm`), dropout on each sublayer output;
  - attention without 1/sqrt(d_kv) scaling; a learned relative-position bias (bidirectional
    buckets in the encoder, causal buckets in the decoder) computed once per stack, in its first
    layer, and shared by the later layers; cross-attention has no position bias;
  - gated-GELU feed-forward (wi_0, wi_1, wo; gelu_new = tanh approximation), or plain ReLU (wi, wo);
  - final RMSNorm per stack, then an untied lm_head (mT5/mT0), or the transposed token embedding
    when tied (original T5, which also rescales the decoder output by d_model**-0.5).

Decoder inputs follow T5: targets shifted right, starting with `decoder_start_token_id` (0 = pad).

Incremental decoding (`decode=True`) is t5x-style: every decoder self-attention keeps
`cached_key` [B, H, d_kv, max_len] / `cached_value` [B, H, max_len, d_kv] (`KV_LAYOUTS`) and a
scalar `cache_index` in the flax "cache" collection; each call runs ONE position, writes its key/value at `cache_index` and
attends to positions <= cache_index, with the relative-position bias of the current position
against all cached positions. `init_cache` builds a zeroed cache, `decode_step` runs one step.
Cross-attention keys/values depend only on `encoded`: `cross_attention_kv` projects them once
per batch and `decode_step(..., cross_kv=...)` reuses them (without it they are projected from
`encoded` at every step, as in t5x).

Beam search never reorders the cache (t5x gathers every layer's whole cache at every step). With
`beam_slots` [B, K, max_len] the cache holds one row per example (`init_cache(..., beams=K)`):
beam slot s writes position t at cache index t * K + s, and hypothesis j attends to position t
in slot beam_slots[b, j, t] (its ancestor's), so only that small table follows the beams.

Parameters are float32; `T5Config.dtype` is the compute dtype; logits are returned in float32.

`T5Config.scan_layers`: each stack's layers run under `nn.scan` (`layers.layer_stack`), so a
24-layer stack is traced and compiled as one layer: parameters live under "layers" with a
leading layer axis instead of "layers_0".."layers_{N-1}" (`layers.stack_layers` converts an
unrolled checkpoint), and the decoding cache is stacked the same way. `remat_policy` recomputes
each layer's forward in the backward pass (`layers.REMAT_POLICIES`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from slm_jax.models import layers
from slm_jax.models.layers import RMSNorm, causal_mask, dot_product_attention

Array = jax.Array
Dtype = Any

# Feed-forward activations by Hugging Face name ("gelu_new" is the tanh approximation).
_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5.1.1 / mT5 / mT0 hyper-parameters (names follow the Hugging Face config).

    feed_forward_proj: "[gated-]ACT" with ACT in relu | gelu | gelu_new | silu; "gated-gelu"
      means gated gelu_new (as in HF). mT5/mT0: "gated-gelu"; original T5: "relu".
    tie_word_embeddings: logits from the transposed token embedding instead of an own lm_head.
    scale_decoder_outputs: multiply the final decoder output by d_model**-0.5 before the logits;
      None means "same as tie_word_embeddings" (original T5)."""
    vocab_size: int
    d_model: int
    num_heads: int
    d_kv: int
    d_ff: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = False
    scale_decoder_outputs: bool | None = None
    decoder_start_token_id: int = 0
    pad_id: int = 0
    eos_id: int = 1
    dtype: Dtype = jnp.float32
    scan_layers: bool = False        # layers under nn.scan, params stacked under "layers"
    remat_policy: str = "none"       # layers.REMAT_POLICIES

    def __post_init__(self):
        layers.check_remat_policy(self.remat_policy, "T5Config")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.activation not in _ACTIVATIONS:
            raise ValueError(f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected "
                             f"'[gated-]ACT' with ACT in {sorted(_ACTIVATIONS)}")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def scales_decoder_outputs(self) -> bool:
        return self.tie_word_embeddings if self.scale_decoder_outputs is None else self.scale_decoder_outputs

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides) -> "T5Config":
        """A T5Config from a Hugging Face T5/MT5 `config.json` dict; `overrides` replace fields
        (e.g. dtype=jnp.bfloat16, dropout_rate=0.0).

        Output scaling: an explicit `scale_decoder_outputs` key wins; otherwise model_type "t5"
        scales when `tie_word_embeddings` is not False (original T5), and "mt5" never scales
        (the behaviour of the installed MT5 reference; real mT5/mT0 checkpoints are untied)."""
        model_type = config.get("model_type", "t5")
        if model_type not in ("t5", "mt5"):
            raise ValueError(f"T5Config.from_hf: model_type {model_type!r} is not t5/mt5")
        tied = config.get("tie_word_embeddings", True) is not False
        if "scale_decoder_outputs" in config:
            scale = bool(config["scale_decoder_outputs"])
        else:
            scale = tied if model_type == "t5" else False
        num_layers = config["num_layers"]
        eos = config.get("eos_token_id", 1)
        kwargs = dict(
            vocab_size=config["vocab_size"], d_model=config["d_model"], num_heads=config["num_heads"],
            d_kv=config["d_kv"], d_ff=config["d_ff"], num_encoder_layers=num_layers,
            num_decoder_layers=config.get("num_decoder_layers") or num_layers,
            relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
            dropout_rate=float(config.get("dropout_rate", 0.1)),
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=config.get("feed_forward_proj", "gated-gelu" if model_type == "mt5" else "relu"),
            tie_word_embeddings=tied, scale_decoder_outputs=scale,
            decoder_start_token_id=config.get("decoder_start_token_id") or 0,
            pad_id=config.get("pad_token_id") or 0,
            eos_id=eos[0] if isinstance(eos, (list, tuple)) else (1 if eos is None else eos))
        kwargs.update(overrides)
        return cls(**kwargs)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """Mesh-TensorFlow / HF T5 bucketing of (key position - query position): exact buckets for
    small distances, log-spaced up to max_distance, one bucket beyond. Causal (not
    bidirectional) maps all future positions to bucket 0."""
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(relative_position)
    else:
        n = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each relative-position bucket -> [1, H, Lq, Lk] (float32)."""
    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        cfg = self.config
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model ** -0.5), ("relpos_buckets", "heads")),
            (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.float32)
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None], self.bidirectional,
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        values = jnp.take(table, buckets, axis=0)            # [Lq, Lk, H]
        return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)


KV_LAYOUTS = ("bhdk", "bhkd")   # keys [B, H, d_kv, L], values [B, H, L, d_kv]: the dots' operand layouts


def to_kv_layouts(k: Array, v: Array) -> tuple[Array, Array]:
    """Projected keys / values [B, L, H, d_kv] -> the KV_LAYOUTS that decoding keeps (cache and
    cross-attention keys/values), so XLA does not transpose them again at every step."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Multi-head attention with T5 conventions (no scaling, bias from the caller).

    q/k/v kernels [D, H, d_kv] ("embed", "heads", "kv"); output kernel [H, d_kv, D].
    With `decode_step=True` (decoder self-attention only) it runs one position against the
    KV cache and builds its own mask; if given `relpos` it also computes the position bias
    (first layer) and returns it so the stack can share it with later layers. `kv`: keys and
    values already projected from inputs_kv, in `KV_LAYOUTS` (cross-attention while decoding);
    they may hold one row per example for several query rows each (beams: see `decode_step`).
    `beam_slots` [B, K, max_len] (decode steps of beam search): the cache has one row per
    example holding all K beam slots (see the module docstring)."""
    config: T5Config

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None, bias: Array | None,
                 decode: bool = False, decode_step: bool = False,
                 relpos: RelativePositionBias | None = None,
                 kv: tuple[Array, Array] | None = None,
                 beam_slots: Array | None = None) -> tuple[Array, Array | None]:
        cfg = self.config
        h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model

        def proj(name, std):
            return nn.DenseGeneral(
                (h, dk), axis=-1, use_bias=False, dtype=cfg.dtype, param_dtype=jnp.float32, name=name,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), ("embed", "heads", "kv")))

        q = proj("query", (d * dk) ** -0.5)(inputs_q)
        if kv is not None:     # keys / values projected ahead of time (`cross_attention_kv`)
            k, v = kv
        else:
            k = proj("key", d ** -0.5)(inputs_kv)
            v = proj("value", d ** -0.5)(inputs_kv)

        in_kv_layouts = kv is not None
        if decode:
            # cached in the layouts the per-step attention dots read (KV_LAYOUTS), so no step
            # transposes (copies) the whole cache
            b, length = k.shape[:2]
            cached_key = self.variable("cache", "cached_key", jnp.zeros, (b, h, dk, length), k.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, (b, h, length, dk), v.dtype)
            cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if decode_step:
                if inputs_q.shape[1] != 1:
                    raise ValueError(f"decode=True runs one position at a time; got length {inputs_q.shape[1]}")
                idx = cache_index.value
                new_k, new_v = to_kv_layouts(k, v)
                if beam_slots is None:
                    offset, key_positions = idx, jnp.arange(cached_value.value.shape[2])
                    mask = (key_positions <= idx)[None, None, None, :]
                else:
                    # the K beam slots of an example write position idx side by side (cache index
                    # idx * K + slot); each hypothesis sees its own ancestors' slots only
                    bsz, beams, max_len = beam_slots.shape
                    new_k = new_k.reshape(bsz, beams, h, dk).transpose(0, 2, 3, 1)   # [B, H, d_kv, K]
                    new_v = new_v.reshape(bsz, beams, h, dk).transpose(0, 2, 1, 3)   # [B, H, K, d_kv]
                    offset, key_positions = idx * beams, jnp.repeat(jnp.arange(max_len), beams)
                    visible = ((beam_slots[..., None] == jnp.arange(beams))
                               & (jnp.arange(max_len) <= idx)[:, None])              # [B, K, max_len, K]
                    mask = visible.reshape(bsz, 1, beams, max_len * beams)
                k = jax.lax.dynamic_update_slice(cached_key.value, new_k.astype(cached_key.value.dtype),
                                                 (0, 0, 0, offset))
                v = jax.lax.dynamic_update_slice(cached_value.value, new_v.astype(cached_value.value.dtype),
                                                 (0, 0, offset, 0))
                cached_key.value, cached_value.value, cache_index.value = k, v, idx + 1
                in_kv_layouts = True
                if bias is None and relpos is not None:
                    bias = relpos(idx[None], key_positions)   # [1, H, 1, cache length]

        layouts = dict(zip(("k_layout", "v_layout"), KV_LAYOUTS)) if in_kv_layouts else {}
        rows, kv_rows = q.shape[0], k.shape[0]
        if rows != kv_rows:
            # beam search: the rows of one example (beam-major) share its keys / values, so its
            # beams attend as extra query positions instead of repeating the keys per beam
            if (kv is None and beam_slots is None) or rows % kv_rows:
                raise ValueError(f"{rows} query rows for {kv_rows} key/value rows: only precomputed "
                                 "cross-attention keys/values or a beam-slot cache may be shared, "
                                 "by a whole number of rows each")
            q = q.reshape(kv_rows, -1, h, dk)
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, dtype=cfg.dtype, **layouts)
        out = out.reshape(rows, -1, h, dk)
        out = nn.DenseGeneral(
            d, axis=(-2, -1), use_bias=False, dtype=cfg.dtype, param_dtype=jnp.float32, name="out",
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal((h * dk) ** -0.5),
                                                     ("heads", "kv", "embed")))(out)
        return out, bias


class MlpBlock(nn.Module):
    """Feed-forward: act(x wi_0) * (x wi_1) -> wo (gated), or act(x wi) -> wo."""
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config

        def dense(features, axes, std, name):
            return nn.DenseGeneral(
                features, use_bias=False, dtype=cfg.dtype, param_dtype=jnp.float32, name=name,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes))

        act = _ACTIVATIONS[cfg.activation]
        std_in = cfg.d_model ** -0.5
        if cfg.is_gated:
            hidden = act(dense(cfg.d_ff, ("embed", "mlp"), std_in, "wi_0")(x)) * dense(
                cfg.d_ff, ("embed", "mlp"), std_in, "wi_1")(x)
        else:
            hidden = act(dense(cfg.d_ff, ("embed", "mlp"), std_in, "wi")(x))
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
        return dense(cfg.d_model, ("mlp", "embed"), cfg.d_ff ** -0.5, "wo")(hidden)


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    return RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype, name=name)


def _constrain(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        h, _ = Attention(cfg, name="attention")(h, h, mask, bias)
        x = x + drop(h, deterministic=deterministic)
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg, name="mlp")(h, deterministic)
        return _constrain(x + drop(h, deterministic=deterministic))


class DecoderLayer(nn.Module):
    config: T5Config
    relpos: RelativePositionBias | None = None   # given to the first layer in decode steps

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array | None, self_bias: Array | None,
                 cross_mask: Array, cross_kv: tuple[Array, Array] | None = None,
                 beam_slots: Array | None = None, deterministic: bool = True, decode: bool = False,
                 decode_step: bool = False) -> tuple[Array, Array]:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = _norm(cfg, "pre_self_attention_layer_norm")(x)
        h, self_bias = Attention(cfg, name="self_attention")(
            h, h, self_mask, self_bias, decode=decode, decode_step=decode_step, relpos=self.relpos,
            beam_slots=beam_slots)
        x = x + drop(h, deterministic=deterministic)
        h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        h, _ = Attention(cfg, name="encoder_decoder_attention")(h, encoded, cross_mask, None, kv=cross_kv)
        x = x + drop(h, deterministic=deterministic)
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg, name="mlp")(h, deterministic)
        return _constrain(x + drop(h, deterministic=deterministic)), self_bias


def segment_mask(query_segments: Array | None, key_segments: Array) -> Array:
    """Attention mask [B, 1, Lq or 1, Lk] from integer segment ids [B, L] (0 = padding, 1.. the
    examples of a packed row, as t5x packs) or boolean validity masks. A key is visible when it is
    valid and, for a query in a segment, lies in the same segment: packed examples attend only
    within themselves. Padding queries see every valid key, as HF's key-only masks do; boolean
    masks (or no query_segments) give that key-only mask [B, 1, 1, Lk]. Relative position biases
    need no per-segment positions: within one segment the global offsets are the local ones."""
    keys = key_segments.astype(jnp.int32)[:, None, None, :]
    mask = keys > 0
    if query_segments is None or query_segments.dtype == jnp.bool_ or key_segments.dtype == jnp.bool_:
        return mask
    queries = query_segments.astype(jnp.int32)[:, None, :, None]
    return mask & ((queries == keys) | (queries == 0))


class Encoder(nn.Module):
    """Encoder stack on embeddings [B, L, D] with validity mask or segment ids [B, L]."""
    config: T5Config

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        x = drop(_constrain(x.astype(cfg.dtype)), deterministic=deterministic)
        length = x.shape[1]
        bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(
            jnp.arange(length), jnp.arange(length))
        attn_mask = segment_mask(mask, mask)
        if cfg.scan_layers:
            scan, layer = layers.layer_stack(EncoderLayer, cfg.num_encoder_layers, in_axes=(nn.broadcast,) * 2,
                                             static=(deterministic,), remat_policy=cfg.remat_policy)
            x, _ = scan(layer(cfg, name=layers.SCANNED), x, attn_mask, bias)
        else:
            layer = layers.remat(EncoderLayer, cfg.remat_policy, static_argnums=(4,))
            for i in range(cfg.num_encoder_layers):
                x = layer(cfg, name=f"layers_{i}")(x, attn_mask, bias, deterministic)
        x = _norm(cfg, "encoder_norm")(x)
        return drop(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder stack on embedded decoder inputs [B, T, D] -> final-normed hidden [B, T, D]."""
    config: T5Config

    @nn.compact
    def __call__(self, y: Array, encoded: Array, encoder_mask: Array, decoder_mask: Array | None = None,
                 deterministic: bool = True, decode: bool = False, cross_kv: Mapping | None = None,
                 beam_slots: Array | None = None) -> Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        y = drop(_constrain(y.astype(cfg.dtype)), deterministic=deterministic)
        encoded = encoded.astype(cfg.dtype)
        relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        cross_mask = segment_mask(decoder_mask, encoder_mask)
        # A real cached step, unless this is model.init building the cache from full-length inputs.
        decode_step = decode and not self.is_initializing()
        if decode_step:
            self_mask, bias = None, None     # built by the first layer's attention from the cache
        else:
            length = y.shape[1]
            bias = relpos(jnp.arange(length), jnp.arange(length))
            self_mask = causal_mask(length)
            if decoder_mask is not None:
                self_mask = jnp.logical_and(self_mask, segment_mask(decoder_mask, decoder_mask))
        if cfg.scan_layers:
            y = self._scanned_layers(y, encoded, self_mask, bias, cross_mask, relpos, deterministic, decode,
                                     decode_step, cross_kv, beam_slots)
            y = _norm(cfg, "decoder_norm")(y)
            return drop(y, deterministic=deterministic)
        # decoding never differentiates: no remat there (and the first layer holds `relpos`)
        layer = layers.remat(DecoderLayer, "none" if decode else cfg.remat_policy, static_argnums=(8, 9, 10))
        for i in range(cfg.num_decoder_layers):
            y, bias = layer(cfg, relpos=relpos if (decode_step and i == 0) else None, name=f"layers_{i}")(
                y, encoded, self_mask, bias, cross_mask, None if cross_kv is None else cross_kv[f"layers_{i}"],
                beam_slots if decode_step else None, deterministic, decode, decode_step)
        y = _norm(cfg, "decoder_norm")(y)
        return drop(y, deterministic=deterministic)

    def _scanned_layers(self, y, encoded, self_mask, bias, cross_mask, relpos, deterministic, decode,
                        decode_step, cross_kv, beam_slots):
        """The layers under nn.scan. Every layer must get the same position bias, so in a decode
        step the stack (not its first layer) computes it, from its own step counter and a cache
        entry whose length is the cache's (`positions`); cross_kv is (keys, values) stacked on a
        leading layer axis (`cross_attention_kv`)."""
        cfg = self.config
        if decode:
            index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            slots = self.variable("cache", "positions", lambda: jnp.zeros((y.shape[1],), jnp.int8))
            if decode_step:
                idx, length = index.value, slots.value.shape[0]
                if beam_slots is None:
                    key_positions = jnp.arange(length)
                else:
                    beams = beam_slots.shape[1]
                    key_positions = jnp.repeat(jnp.arange(length // beams), beams)
                bias = relpos(idx[None], key_positions)      # [1, H, 1, cache length]
                index.value = idx + 1
        scan, layer = layers.layer_stack(
            DecoderLayer, cfg.num_decoder_layers,
            in_axes=(nn.broadcast,) * 4 + (0, nn.broadcast),
            static=(deterministic, decode, decode_step), remat_policy="none" if decode else cfg.remat_policy)
        y, _ = scan(layer(cfg, name=layers.SCANNED), y, encoded, self_mask, bias, cross_mask,
                    cross_kv, beam_slots if decode_step else None)
        return y


class T5(nn.Module):
    """Encoder-decoder LLM. Parameter tree: token_embedder, encoder, decoder, lm_head (untied)."""
    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = nn.Embed(
            cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.DenseGeneral(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model ** -0.5),
                                                         ("embed", "vocab")))

    def embed(self, tokens: Array) -> Array:
        """Token ids [B, L] -> embeddings [B, L, D] (compute dtype)."""
        return self.token_embedder(tokens)

    def encode_embedded(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        """Encoder stack on embeddings x [B, L, D] with mask [B, L] -> [B, L, D]."""
        return self.encoder(x, mask, deterministic=deterministic)

    def encode(self, encoder_input_tokens: Array, encoder_mask: Array | None = None,
               deterministic: bool = True) -> Array:
        """Token ids [B, L] -> encoded [B, L, D]; the mask defaults to tokens > 0."""
        if encoder_mask is None:
            encoder_mask = encoder_input_tokens > 0
        return self.encode_embedded(self.embed(encoder_input_tokens), encoder_mask, deterministic)

    def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
               decoder_mask: Array | None = None, deterministic: bool = True, decode: bool = False,
               cross_kv: Mapping | None = None, beam_slots: Array | None = None) -> Array:
        """Float32 logits [B, T, V] for shifted-right decoder inputs [B, T].

        decoder_mask (optional, [B, T]) masks padded keys on top of the causal mask; with right
        padding it does not change the logits at valid positions. Packed rows: both masks are
        segment ids (`segment_mask`), so each target attends to its own example's inputs only.
        decode=True: one cached step (decoder_input_tokens [B, 1]); apply with mutable=["cache"] (see `decode_step`).
        cross_kv: the cross-attention keys/values of `cross_attention_kv(encoded)`, so they are
        not projected again (decoding projects them once, not at every step).
        beam_slots: beam search's slot table for a cache of one row per example (`decode_step`)."""
        cfg = self.config
        y = self.decoder(self.embed(decoder_input_tokens), encoded, encoder_mask, decoder_mask,
                         deterministic=deterministic, decode=decode, cross_kv=cross_kv, beam_slots=beam_slots)
        if cfg.scales_decoder_outputs:
            y = y * jnp.asarray(cfg.d_model ** -0.5, y.dtype)
        if cfg.tie_word_embeddings:
            logits = self.token_embedder.attend(y)
        else:
            logits = self.lm_head(y)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 encoder_mask: Array | None = None, decoder_mask: Array | None = None,
                 deterministic: bool = True) -> Array:
        if encoder_mask is None:
            encoder_mask = encoder_input_tokens > 0
        encoded = self.encode(encoder_input_tokens, encoder_mask, deterministic)
        return self.decode(encoded, encoder_mask, decoder_input_tokens, decoder_mask, deterministic)


def shift_right(targets: Array, decoder_start_token_id: int = 0) -> Array:
    """Decoder inputs from targets [B, T]: prepend the start token, drop the last token."""
    start = jnp.full_like(targets[:, :1], decoder_start_token_id)
    return jnp.concatenate([start, targets[:, :-1]], axis=1)


def init_cache(model: T5, params: Any, batch_size: int, max_decode_length: int, encoded_length: int,
               beams: int = 1) -> Any:
    """A zeroed KV cache for `decode_step`: cached_key [B, H, d_kv, max_len], cached_value
    [B, H, max_len, d_kv] (`KV_LAYOUTS`) and a scalar cache_index per decoder layer. Shapes only
    (eval_shape): nothing runs; `params` is accepted for API symmetry and not needed.
    beams > 1: beam search's cache, B rows of max_len * beams slots (see the module docstring)."""
    del params
    cfg = model.config
    max_decode_length *= beams

    def build():
        return model.init(
            jax.random.PRNGKey(0),
            jnp.zeros((batch_size, encoded_length, cfg.d_model), cfg.dtype),
            jnp.ones((batch_size, encoded_length), bool),
            jnp.zeros((batch_size, max_decode_length), jnp.int32),
            decode=True, method=T5.decode)

    shapes = jax.eval_shape(build)["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cross_attention_kv(model: T5, params: Any, encoded: Array) -> dict:
    """Every decoder layer's cross-attention keys [B, H, d_kv, L] and values [B, H, L, d_kv]
    (`KV_LAYOUTS`) for encoder states `encoded` [B, L, D]: {"layers_i": (key, value)}. They
    depend only on the encoder output, so decoding computes them once
    (`decode_step(..., cross_kv=...)`) instead of at every step, already in the layouts the
    step's dots read. The same projections (DenseGeneral, compute dtype) as `Attention`.
    With `scan_layers`: (keys [L, B, H, d_kv, S], values [L, B, H, S, d_kv]), stacked per layer."""
    cfg = model.config
    proj = nn.DenseGeneral((cfg.num_heads, cfg.d_kv), axis=-1, use_bias=False, dtype=cfg.dtype,
                           param_dtype=jnp.float32)
    x = encoded.astype(cfg.dtype)
    if cfg.scan_layers:
        p = params["decoder"][layers.SCANNED]["encoder_decoder_attention"]
        one = lambda pk, pv: to_kv_layouts(proj.apply({"params": pk}, x), proj.apply({"params": pv}, x))  # noqa: E731
        return jax.vmap(one)(p["key"], p["value"])
    out = {}
    for i in range(cfg.num_decoder_layers):
        p = params["decoder"][f"layers_{i}"]["encoder_decoder_attention"]
        out[f"layers_{i}"] = to_kv_layouts(*(proj.apply({"params": p[n]}, x) for n in ("key", "value")))
    return out


def decode_step(model: T5, params: Any, cache: Any, encoded: Array, encoder_mask: Array,
                tokens: Array, cross_kv: Mapping | None = None,
                beam_slots: Array | None = None) -> tuple[Array, Any]:
    """One cached decoder step: tokens [B, 1] (the previous output, or the start token) ->
    (float32 logits [B, V] for the next token, updated cache). Pass `cross_kv`
    (`cross_attention_kv(model, params, encoded)`, computed once per batch) to skip
    re-projecting the encoder states at every step; the logits are the same. With `cross_kv`,
    `encoded` / `encoder_mask` / `cross_kv` may have one row per example while tokens and cache
    have beam_size rows per example (beam-major): the beams share their example's keys/values.
    `beam_slots` [B, K, max_len] (beam search; cache from `init_cache(..., beams=K)`): the cache
    slot holding each hypothesis's key/value at each position, the current one included."""
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, encoder_mask, tokens,
                                    decode=True, cross_kv=cross_kv, beam_slots=beam_slots,
                                    method=T5.decode, mutable=["cache"])
    return logits[:, -1], variables["cache"]
