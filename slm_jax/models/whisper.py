"""OpenAI Whisper: the speech encoder (in the layout of transformers' WhisperEncoder so public
checkpoints import exactly; see checkpoints/hf_whisper.py and checkpoints/ct2_whisper.py), and,
in the second half of this file, the text decoder with its KV cache and the whole model.

    features [B, T, mel] -> Conv1d(k=3, pad 1) -> GELU -> Conv1d(k=3, stride 2, pad 1) -> GELU
                         -> + position table[:T']          T' = ceil(T / 2)
                         -> N x pre-LN transformer layer:
                                x = x + SelfAttention(LN(x))    q/v/out with bias, k without
                                x = x + fc2(GELU(fc1(LN(x))))
                         -> final LayerNorm              -> hidden [B, T', d_model], mask [B, T']

GELU is the exact (erf) form; LayerNorms have a bias and eps 1e-5; attention scales q by
head_dim ** -0.5 after its projection (bias included), as transformers does.

Input length. Whisper checkpoints are trained on 30 s windows (T = 2 * max_source_positions
frames) and transformers refuses anything else. Here any T with ceil(T / 2) <= max_source_positions
is accepted: the position table is sliced to the first T' rows. Longer inputs raise ValueError.

Padding. With `mask=None` every frame is attended to, exactly like transformers. With a mask
([B, T], 1/True = valid, valid frames first) padded frames are zeroed before each convolution
and excluded from attention as keys, so a valid output frame equals what the same audio without
padding gives (with mask=None): outputs never depend on batch padding or neighbours. The output
mask is the stride-2 conv's: frame i is valid iff its centre input frame 2i is (ceil(L / 2)
frames). Padded output frames are zero.

Trailing silence (`silence_frames` S > 0, with a mask). Whisper only ever saw speech followed
by silence up to 30 s; on a short utterance without any, its states carry more of the voice
and less of the words. With S > 0 each utterance's valid frames are followed by S frames of
log-mel silence (the utterance's floor, its features' max - 2, as whisper_log_mel writes
silent audio) that attention sees; the outputs keep the input's shape and mask, so the
silence costs encoder compute only and nothing downstream changes. S is cut where the 30 s
window ends.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from slm_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    max_source_positions: int = 1500      # output frames of a 30 s window (input: twice that)
    dropout_rate: float = 0.0             # after the front end and every residual branch
    dtype: Any = jnp.float32              # compute dtype; params stay float32
    # operands of the layers' projections and MLP cast to this dtype, products in float32
    # (layers.operand_dot; e.g. "bfloat16"); None: the compute dtype
    matmul_dtype: Any = None
    scan_layers: bool = False             # layers under nn.scan, params stacked under "layers"
    remat_policy: str = "none"            # layers.REMAT_POLICIES
    silence_frames: int = 0               # log-mel frames of silence attended after each utterance (docstring)

    def __post_init__(self):
        layers.check_remat_policy(self.remat_policy, "WhisperEncoderConfig")
        if self.silence_frames < 0:
            raise ValueError(f"WhisperEncoderConfig.silence_frames must be >= 0, got {self.silence_frames}")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"WhisperEncoderConfig.d_model {self.d_model} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}")
        if self.d_model % 2 or self.d_model < 4:
            raise ValueError(f"WhisperEncoderConfig.d_model must be even and >= 4 (sinusoidal positions), "
                             f"got {self.d_model}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def max_input_frames(self) -> int:
        return 2 * self.max_source_positions

    def output_length(self, length):
        """Frames the encoder emits for `length` valid input frames (ints or integer arrays)."""
        return (length + 1) // 2        # 3-tap, stride 2, padding 1: ceil(L / 2)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides) -> "WhisperEncoderConfig":
        """The encoder config of a transformers WhisperConfig (its config.json as a dict).
        Raises ValueError naming the field when the checkpoint needs something not implemented."""
        act = config.get("activation_function", "gelu")
        if act != "gelu":
            raise ValueError(f"activation_function={act!r} is not supported (only 'gelu')")
        kwargs = dict(
            num_mel_bins=int(config.get("num_mel_bins", 80)),
            d_model=int(config.get("d_model", 384)),
            encoder_layers=int(config.get("encoder_layers", 4)),
            encoder_attention_heads=int(config.get("encoder_attention_heads", 6)),
            encoder_ffn_dim=int(config.get("encoder_ffn_dim", 1536)),
            max_source_positions=int(config.get("max_source_positions", 1500)),
            dropout_rate=float(config.get("dropout", 0.0)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)


def _zero_padding(x: Array, mask: Array | None) -> Array:
    """Zero the frames of x [B, T, ...] where mask [B, T] is False (no-op without a mask)."""
    if mask is None:
        return x
    m = mask.astype(bool).reshape(mask.shape + (1,) * (x.ndim - 2))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


# Silent audio's log-mel value below an utterance's maximum: whisper_log_mel clamps log10 at
# (global max - 8) and maps x -> (x + 4) / 4, so the floor sits 8 / 4 below the features' max.
SILENCE_BELOW_MAX = 2.0


def with_silence(features: Array, mask: Array, frames: int) -> tuple[Array, Array]:
    """features [B, T, mel] with a prefix mask [B, T] -> [B, T + frames] features and mask in
    which each row's valid frames are followed by `frames` frames at its log-mel floor (max -
    SILENCE_BELOW_MAX; rows without a valid frame stay empty)."""
    lengths = mask.sum(1)
    pos = jnp.arange(features.shape[1] + frames)[None]
    x = jnp.pad(features, ((0, 0), (0, frames), (0, 0)))
    floor = jnp.max(jnp.where(mask[..., None], features, -jnp.inf), axis=(1, 2)) - SILENCE_BELOW_MAX
    valid = pos < lengths[:, None]
    silence = ~valid & (pos < lengths[:, None] + frames) & (lengths[:, None] > 0)
    floor = jnp.where(lengths > 0, floor, 0.0)[:, None, None].astype(x.dtype)
    x = jnp.where(silence[..., None], floor, jnp.where(valid[..., None], x, 0))
    return x, valid | silence


def _dense_general(features, axes, *, axis=-1, use_bias=True, dtype=jnp.float32, operand_dtype=None,
                   name=None) -> nn.DenseGeneral:
    """nn.DenseGeneral whose kernel and bias carry logical axis names (kernel: in..., out...)."""
    n_out = len(features) if isinstance(features, tuple) else 1
    return nn.DenseGeneral(
        features, axis=axis, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(axes[-n_out:])),
        dot_general=layers.operand_dot(operand_dtype), name=name)


def _conv(features: int, in_axis: str, stride: int, dtype, name: str) -> nn.Conv:
    """3-tap Conv1d, zero padding 1 each side; kernel [3, in, out]."""
    return nn.Conv(features, (3,), strides=(stride,), padding=((1, 1),), dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=nn.with_logical_partitioning(
                       nn.initializers.lecun_normal(), ("conv_width", in_axis, "embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                   name=name)


def _gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


class SelfAttention(nn.Module):
    """Multi-head self-attention; the key projection has no bias. mask: [B, 1, 1, T] (keys) or
    None. query_stride s > 1: only queries 0, s, 2s, ... ([B, ceil(T / s), D] out)."""
    config: WhisperEncoderConfig
    query_stride: int = 1

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> Array:
        cfg = self.config
        heads, hd = cfg.encoder_attention_heads, cfg.head_dim
        proj = lambda name, bias: _dense_general((heads, hd), ("embed", "heads", "kv"), use_bias=bias,
                                                 dtype=cfg.dtype, operand_dtype=cfg.matmul_dtype, name=name)
        q = proj("query", True)(x[:, ::self.query_stride])                          # [B, T', heads, hd]
        k, v = proj("key", False)(x), proj("value", True)(x)                         # [B, T, heads, hd]
        out = layers.dot_product_attention(q, k, v, mask=mask, scale=hd ** -0.5, dtype=cfg.dtype)
        return _dense_general(cfg.d_model, ("heads", "kv", "embed"), axis=(-2, -1), dtype=cfg.dtype,
                              operand_dtype=cfg.matmul_dtype, name="out")(out)


class WhisperEncoderLayer(nn.Module):
    """Pre-LN transformer layer: self-attention and a GELU MLP, each residual. output_stride
    s > 1: the output only at frames 0, s, 2s, ... (keys and values still read every frame)."""
    config: WhisperEncoderConfig
    output_stride: int = 1

    @nn.compact
    def __call__(self, x: Array, attn_mask: Array | None, deterministic: bool) -> Array:
        cfg = self.config
        norm = lambda name: layers.LayerNorm(1e-5, dtype=cfg.dtype, name=name)
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        s = self.output_stride
        x = x[:, ::s] + drop(SelfAttention(cfg, s, name="self_attn")(norm("self_attn_layer_norm")(x), attn_mask))
        h = layers.dense(cfg.encoder_ffn_dim, ("embed", "mlp"), use_bias=True, dtype=cfg.dtype,
                         operand_dtype=cfg.matmul_dtype, name="fc1")(norm("final_layer_norm")(x))
        h = nn.with_logical_constraint(_gelu(h), ("batch", "length", "mlp"))
        x = x + drop(layers.dense(cfg.d_model, ("mlp", "embed"), use_bias=True, dtype=cfg.dtype,
                                  operand_dtype=cfg.matmul_dtype, name="fc2")(h))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class WhisperEncoder(nn.Module):
    """features [B, T, num_mel_bins], mask [B, T] | None -> (hidden [B, T', d_model], mask [B, T'])
    with T' = ceil(T / 2) <= max_source_positions. output_stride s > 1 returns exactly
    `hidden[:, ::s], mask[:, ::s]`, the last layer computing only those frames' queries and MLP."""
    config: WhisperEncoderConfig

    @nn.compact
    def __call__(self, features: Array, mask: Array | None = None,
                 deterministic: bool = True, output_stride: int = 1) -> tuple[Array, Array]:
        cfg = self.config
        if output_stride < 1:
            raise ValueError(f"WhisperEncoder: output_stride must be >= 1, got {output_stride}")
        b, t, mel = features.shape
        if mel != cfg.num_mel_bins:
            raise ValueError(f"WhisperEncoder: features have {mel} mel bins, "
                             f"WhisperEncoderConfig.num_mel_bins is {cfg.num_mel_bins}")
        t_out = cfg.output_length(t)
        if t_out > cfg.max_source_positions:
            raise ValueError(f"WhisperEncoder: input of {t} frames gives {t_out} output frames, more than "
                             f"max_source_positions={cfg.max_source_positions} (at most {cfg.max_input_frames} "
                             f"input frames)")
        if mask is not None:
            if mask.shape != (b, t):
                raise ValueError(f"WhisperEncoder: mask shape {mask.shape} does not match features {(b, t)}")
            mask = mask.astype(bool)

        # Output frame i is centred on input frame 2i: valid iff that frame is (ceil(L / 2)).
        out_mask = mask[:, ::2] if mask is not None else jnp.ones((b, t_out), bool)
        keep = -(-t_out // output_stride)     # output frames returned
        silence = min(cfg.silence_frames, cfg.max_input_frames - t) if mask is not None else 0
        if silence > 0:
            features, mask = with_silence(features, mask, silence)
            t_out = cfg.output_length(t + silence)
        x = _zero_padding(features.astype(cfg.dtype), mask)
        x = _zero_padding(_gelu(_conv(cfg.d_model, "mel", 1, cfg.dtype, "conv1")(x)), mask)
        x = _gelu(_conv(cfg.d_model, "conv_in", 2, cfg.dtype, "conv2")(x))
        attended = mask[:, ::2] if mask is not None else out_mask

        positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(
                lambda key, shape, dtype: jnp.asarray(layers.sinusoids(*shape), dtype), (None, "embed")),
            (cfg.max_source_positions, cfg.d_model), jnp.float32)
        x = x + positions[:t_out].astype(cfg.dtype)[None]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        # Padded frames are excluded as keys; padded query rows are computed and later zeroed.
        attn_mask = attended[:, None, None, :] if mask is not None else None
        if cfg.scan_layers and cfg.encoder_layers:
            # every layer the same (under nn.scan), so the last one computes every frame too
            scan, layer = layers.layer_stack(WhisperEncoderLayer, cfg.encoder_layers, in_axes=(nn.broadcast,),
                                             static=(deterministic,), remat_policy=cfg.remat_policy)
            x, _ = scan(layer(cfg, name=layers.SCANNED), x, attn_mask)
            x = x[:, ::output_stride]
        elif not cfg.encoder_layers:
            x = x[:, ::output_stride]
        layer = layers.remat(WhisperEncoderLayer, cfg.remat_policy, static_argnums=(3,))
        for i in range(0 if cfg.scan_layers else cfg.encoder_layers):
            stride = output_stride if i == cfg.encoder_layers - 1 else 1
            x = layer(cfg, stride, name=f"layers_{i}")(x, attn_mask, deterministic)
        out_mask = out_mask[:, ::output_stride]
        x = layers.LayerNorm(1e-5, dtype=cfg.dtype, name="layer_norm")(x[:, :keep])
        return (x if mask is None else _zero_padding(x, out_mask)), out_mask


def abstract_params(config: WhisperEncoderConfig, frames: int = 2) -> dict:
    """Unboxed parameter ShapeDtypeStructs of WhisperEncoder(config), nothing allocated."""
    model = WhisperEncoder(config)
    x = jnp.zeros((1, frames, config.num_mel_bins), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"])


# ----------------------------------------------------------------------------- decoder
#
#   tokens [B, T] -> token embedding + learned position table[offset : offset + T]
#                 -> N x pre-LN layer: x += SelfAttention(LN(x)) (causal)
#                                      x += CrossAttention(LN(x), encoder states)
#                                      x += fc2(GELU(fc1(LN(x))))
#                 -> final LayerNorm -> logits = x @ token_embedding.T (tied, float32)
#
# No embedding scaling; attention projections as in the encoder (key without bias, q scaled by
# head_dim ** -0.5). Incremental decoding keeps an explicit cache pytree (`init_decoder_cache`):
# per layer self-attention keys [B, H, hd, L] and values [B, H, L, hd] (the layouts the step's
# dots read) and one scalar `index`, the position the next token takes (all rows share it: the
# rows of a batch share their prompt length). Beam search (decoding.beam_search) never reorders
# the cache: the cache holds one row per example and L = max_len * K slots; beam slot s writes
# position t at t * K + s, and hypothesis j reads position t from slot beam_slots[b, j, t]
# (slm_jax/models/t5.py does the same).

KV_LAYOUTS = ("bhdk", "bhkd")   # keys [B, H, hd, L], values [B, H, L, hd]


@dataclasses.dataclass(frozen=True)
class WhisperDecoderConfig:
    vocab_size: int = 51865
    d_model: int = 384
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_target_positions: int = 448       # rows of the learned position table
    dtype: Any = jnp.float32              # compute dtype; params stay float32

    def __post_init__(self):
        if self.d_model % self.decoder_attention_heads:
            raise ValueError(f"WhisperDecoderConfig.d_model {self.d_model} is not divisible by "
                             f"decoder_attention_heads {self.decoder_attention_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads


def _to_kv_layouts(k: Array, v: Array) -> tuple[Array, Array]:
    """Projected keys / values [B, L, H, hd] -> KV_LAYOUTS."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)


def _write_cache(cache: dict, k: Array, v: Array, index: Array,
                 beam_slots: Array | None) -> tuple[Array, Array, Array, dict]:
    """Write one position's keys / values k, v [N, 1, H, hd] at `index`. Returns the whole
    cached keys and values, the boolean mask of what the step's queries may read, and the
    updated layer cache. beam_slots [B, K, max_len]: N = B * K rows (beam-major), written side
    by side at index * K + slot; hypothesis j reads its ancestors' slots only."""
    h, hd = k.shape[2:]
    length = cache["value"].shape[2]
    if beam_slots is None:
        new_k, new_v = _to_kv_layouts(k, v)
        offset = index
        mask = (jnp.arange(length) <= index)[None, None, None, :]
    else:
        b, beams, max_len = beam_slots.shape
        if length != max_len * beams:
            raise ValueError(f"beam cache holds {length} positions, beam_slots needs {max_len} x {beams}")
        new_k = k.reshape(b, beams, h, hd).transpose(0, 2, 3, 1)            # [B, H, hd, K]
        new_v = v.reshape(b, beams, h, hd).transpose(0, 2, 1, 3)            # [B, H, K, hd]
        offset = index * beams
        visible = (beam_slots[..., None] == jnp.arange(beams)) & (jnp.arange(max_len) <= index)[:, None]
        mask = visible.reshape(b, 1, beams, max_len * beams)
    keys = jax.lax.dynamic_update_slice(cache["key"], new_k.astype(cache["key"].dtype), (0, 0, 0, offset))
    values = jax.lax.dynamic_update_slice(cache["value"], new_v.astype(cache["value"].dtype), (0, 0, offset, 0))
    return keys, values, mask, {"key": keys, "value": values}


class DecoderAttention(nn.Module):
    """Multi-head attention of a decoder layer (q/v/out with bias, k without). Self-attention
    when `context` is None, else cross-attention on `context` [B, S, D]. `kv`: keys / values
    already projected, in KV_LAYOUTS (`decoder_cross_kv`). `cache` (self-attention, one
    position per call): the layer's cache, written at `index`; the mask is then built here.
    Query rows may be a whole multiple of the key rows (beams sharing their example's keys).
    Returns (output [N, T, D], updated cache or None)."""
    config: WhisperDecoderConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, context: Array | None = None,
                 kv: tuple[Array, Array] | None = None, cache: dict | None = None,
                 index: Array | None = None, beam_slots: Array | None = None) -> tuple[Array, dict | None]:
        cfg = self.config
        heads, hd = cfg.decoder_attention_heads, cfg.head_dim
        proj = lambda name, bias: _dense_general((heads, hd), ("embed", "heads", "kv"), use_bias=bias,
                                                 dtype=cfg.dtype, name=name)
        q = proj("query", True)(x)                                               # [N, T, H, hd]
        layouts, new_cache = {}, None
        if kv is not None:
            k, v = kv
            layouts = dict(zip(("k_layout", "v_layout"), KV_LAYOUTS))
        else:
            source = x if context is None else context
            k, v = proj("key", False)(source), proj("value", True)(source)
            if cache is not None:
                k, v, mask, new_cache = _write_cache(cache, k, v, index, beam_slots)
                layouts = dict(zip(("k_layout", "v_layout"), KV_LAYOUTS))
        rows, kv_rows = q.shape[0], k.shape[0]
        if rows % kv_rows:
            raise ValueError(f"DecoderAttention: {rows} query rows for {kv_rows} key/value rows")
        q = q.reshape(kv_rows, -1, heads, hd)      # beams of one example as extra query positions
        out = layers.dot_product_attention(q, k, v, mask=mask, scale=hd ** -0.5, dtype=cfg.dtype, **layouts)
        out = out.reshape(rows, -1, heads, hd)
        out = _dense_general(cfg.d_model, ("heads", "kv", "embed"), axis=(-2, -1), dtype=cfg.dtype,
                             name="out")(out)
        return out, new_cache


class WhisperDecoderLayer(nn.Module):
    """Pre-LN decoder layer: causal self-attention, cross-attention, GELU MLP, each residual."""
    config: WhisperDecoderConfig

    @nn.compact
    def __call__(self, x: Array, encoded: Array | None, self_mask: Array | None, cross_mask: Array | None,
                 cache: dict | None = None, index: Array | None = None, cross_kv=None,
                 beam_slots: Array | None = None) -> tuple[Array, dict | None]:
        cfg = self.config
        norm = lambda name: layers.LayerNorm(1e-5, dtype=cfg.dtype, name=name)
        h, cache = DecoderAttention(cfg, name="self_attn")(norm("self_attn_layer_norm")(x), self_mask,
                                                          cache=cache, index=index, beam_slots=beam_slots)
        x = x + h
        h, _ = DecoderAttention(cfg, name="encoder_attn")(norm("encoder_attn_layer_norm")(x), cross_mask,
                                                          context=encoded, kv=cross_kv)
        x = x + h
        h = layers.dense(cfg.decoder_ffn_dim, ("embed", "mlp"), use_bias=True, dtype=cfg.dtype,
                         name="fc1")(norm("final_layer_norm")(x))
        h = nn.with_logical_constraint(_gelu(h), ("batch", "length", "mlp"))
        x = x + layers.dense(cfg.d_model, ("mlp", "embed"), use_bias=True, dtype=cfg.dtype, name="fc2")(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class WhisperDecoder(nn.Module):
    """tokens [N, T], encoder states [B, S, D] (N = B, or B * K beam-major rows when `cross_kv`
    is given), encoder_mask [B, S] | None -> (float32 logits [N, T, V], cache).

    Without `cache`: teacher forcing, positions 0..T-1, causal self-attention; the returned
    cache is None. With `cache` (`init_decoder_cache`): one step (T = 1) at position
    cache["index"]; returns the updated cache. `cross_kv` (`decoder_cross_kv`) replaces
    `encoded` with its per-layer keys / values, projected once per batch."""
    config: WhisperDecoderConfig

    @nn.compact
    def __call__(self, tokens: Array, encoded: Array | None, encoder_mask: Array | None = None,
                 cache: dict | None = None, cross_kv: Mapping | None = None,
                 beam_slots: Array | None = None) -> tuple[Array, dict | None]:
        cfg = self.config
        n, t = tokens.shape
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
                         name="embed_tokens")
        positions = self.param("embed_positions", nn.with_logical_partitioning(nn.initializers.normal(0.01),
                                                                               (None, "embed")),
                               (cfg.max_target_positions, cfg.d_model), jnp.float32)
        index = None if cache is None else cache["index"]
        if cache is not None and t != 1:
            raise ValueError(f"WhisperDecoder: a cached step runs one position, got {t}")
        if t > cfg.max_target_positions:
            raise ValueError(f"WhisperDecoder: {t} positions, max_target_positions={cfg.max_target_positions}")
        if encoded is None and cross_kv is None:
            raise ValueError("WhisperDecoder: pass the encoder states or their cross_kv")
        pos = positions[:t] if cache is None else jax.lax.dynamic_slice_in_dim(positions, index, 1)
        x = embed(tokens) + pos.astype(cfg.dtype)[None]
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        self_mask = layers.causal_mask(t) if cache is None else None
        cross_mask = None if encoder_mask is None else encoder_mask.astype(bool)[:, None, None, :]
        new_cache = None if cache is None else {"index": index + 1}
        for i in range(cfg.decoder_layers):
            name = f"layers_{i}"
            x, layer_cache = WhisperDecoderLayer(cfg, name=name)(
                x, encoded, self_mask, cross_mask, None if cache is None else cache[name], index,
                None if cross_kv is None else cross_kv[name], beam_slots)
            if cache is not None:
                new_cache[name] = layer_cache
        x = layers.LayerNorm(1e-5, dtype=cfg.dtype, name="layer_norm")(x)
        logits = embed.attend(x).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab")), new_cache


def init_decoder_cache(config: WhisperDecoderConfig, batch_size: int, max_length: int, beams: int = 1) -> dict:
    """A zeroed cache for `max_length` positions (the prompt included) of `batch_size` rows;
    beams > 1: beam search's cache, batch_size examples of max_length * beams slots."""
    if max_length > config.max_target_positions:
        raise ValueError(f"decoder cache of {max_length} positions > max_target_positions "
                         f"{config.max_target_positions}")
    h, hd, length = config.decoder_attention_heads, config.head_dim, max_length * beams
    cache: dict = {"index": jnp.zeros((), jnp.int32)}
    for i in range(config.decoder_layers):
        cache[f"layers_{i}"] = {"key": jnp.zeros((batch_size, h, hd, length), config.dtype),
                                "value": jnp.zeros((batch_size, h, length, hd), config.dtype)}
    return cache


def decoder_cross_kv(config: WhisperDecoderConfig, params: Mapping, encoded: Array) -> dict:
    """Every layer's cross-attention keys [B, H, hd, S] and values [B, H, S, hd] for encoder
    states [B, S, D] (decoder `params`): {"layers_i": (key, value)}, computed once per batch."""
    heads, hd = config.decoder_attention_heads, config.head_dim
    x = encoded.astype(config.dtype)
    out = {}
    for i in range(config.decoder_layers):
        p = params[f"layers_{i}"]["encoder_attn"]
        k = nn.DenseGeneral((heads, hd), use_bias=False, dtype=config.dtype).apply({"params": p["key"]}, x)
        v = nn.DenseGeneral((heads, hd), use_bias=True, dtype=config.dtype).apply({"params": p["value"]}, x)
        out[f"layers_{i}"] = _to_kv_layouts(k, v)
    return out


def decoder_step(config: WhisperDecoderConfig, params: Mapping, cache: dict, tokens: Array, cross_kv: Mapping,
                 encoder_mask: Array | None = None, beam_slots: Array | None = None) -> tuple[Array, dict]:
    """One cached step: tokens [N, 1] -> (float32 logits [N, V] for the next position, cache).
    cross_kv / encoder_mask have one row per example; N is a multiple of it (beams)."""
    logits, cache = WhisperDecoder(config).apply({"params": params}, tokens, None, encoder_mask, cache=cache,
                                                 cross_kv=cross_kv, beam_slots=beam_slots)
    return logits[:, -1], cache


def abstract_decoder_params(config: WhisperDecoderConfig) -> dict:
    """Unboxed parameter ShapeDtypeStructs of WhisperDecoder(config), nothing allocated."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    encoded = jnp.zeros((1, 1, config.d_model), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(WhisperDecoder(config).init, jax.random.PRNGKey(0), tokens, encoded)["params"])


class Whisper(nn.Module):
    """The whole model: params {"encoder": WhisperEncoder's, "decoder": WhisperDecoder's}.
    `__call__(features, tokens, mask)` -> teacher-forced logits [B, T, V]; `encode` for
    decoding (then `decoder_cross_kv` / `decoder_step` on params["decoder"])."""
    encoder_config: WhisperEncoderConfig
    decoder_config: WhisperDecoderConfig

    def setup(self):
        if self.encoder_config.d_model != self.decoder_config.d_model:
            raise ValueError(f"Whisper: encoder d_model {self.encoder_config.d_model} != decoder d_model "
                             f"{self.decoder_config.d_model}")
        self.encoder = WhisperEncoder(self.encoder_config)
        self.decoder = WhisperDecoder(self.decoder_config)

    def encode(self, features: Array, mask: Array | None = None) -> tuple[Array, Array]:
        return self.encoder(features, mask)

    def __call__(self, features: Array, tokens: Array, mask: Array | None = None) -> Array:
        encoded, encoded_mask = self.encoder(features, mask)
        return self.decoder(tokens, encoded, None if mask is None else encoded_mask)[0]
