"""Whisper speech encoder (the encoder half of OpenAI Whisper, in the layout of transformers'
WhisperEncoder so public checkpoints import exactly; see checkpoints/hf_whisper.py).

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

    def __post_init__(self):
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


def _dense_general(features, axes, *, axis=-1, use_bias=True, dtype=jnp.float32, name=None) -> nn.DenseGeneral:
    """nn.DenseGeneral whose kernel and bias carry logical axis names (kernel: in..., out...)."""
    n_out = len(features) if isinstance(features, tuple) else 1
    return nn.DenseGeneral(
        features, axis=axis, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(axes[-n_out:])),
        name=name)


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
                                                 dtype=cfg.dtype, name=name)
        q = proj("query", True)(x[:, ::self.query_stride])                          # [B, T', heads, hd]
        k, v = proj("key", False)(x), proj("value", True)(x)                         # [B, T, heads, hd]
        out = layers.dot_product_attention(q, k, v, mask=mask, scale=hd ** -0.5, dtype=cfg.dtype)
        return _dense_general(cfg.d_model, ("heads", "kv", "embed"), axis=(-2, -1), dtype=cfg.dtype,
                              name="out")(out)


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
                         name="fc1")(norm("final_layer_norm")(x))
        h = nn.with_logical_constraint(_gelu(h), ("batch", "length", "mlp"))
        x = x + drop(layers.dense(cfg.d_model, ("mlp", "embed"), use_bias=True, dtype=cfg.dtype, name="fc2")(h))
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

        x = _zero_padding(features.astype(cfg.dtype), mask)
        x = _zero_padding(_gelu(_conv(cfg.d_model, "mel", 1, cfg.dtype, "conv1")(x)), mask)
        x = _gelu(_conv(cfg.d_model, "conv_in", 2, cfg.dtype, "conv2")(x))
        # Output frame i is centred on input frame 2i: valid iff that frame is (ceil(L / 2)).
        out_mask = mask[:, ::2] if mask is not None else jnp.ones((b, t_out), bool)

        positions = self.param(
            "embed_positions",
            nn.with_logical_partitioning(
                lambda key, shape, dtype: jnp.asarray(layers.sinusoids(*shape), dtype), (None, "embed")),
            (cfg.max_source_positions, cfg.d_model), jnp.float32)
        x = x + positions[:t_out].astype(cfg.dtype)[None]
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        # Padded frames are excluded as keys; padded query rows are computed and later zeroed.
        attn_mask = out_mask[:, None, None, :] if mask is not None else None
        if not cfg.encoder_layers:
            x = x[:, ::output_stride]
        for i in range(cfg.encoder_layers):
            stride = output_stride if i == cfg.encoder_layers - 1 else 1
            x = WhisperEncoderLayer(cfg, stride, name=f"layers_{i}")(x, attn_mask, deterministic)
        out_mask = out_mask[:, ::output_stride]
        x = layers.LayerNorm(1e-5, dtype=cfg.dtype, name="layer_norm")(x)
        return (x if mask is None else _zero_padding(x, out_mask)), out_mask


def abstract_params(config: WhisperEncoderConfig, frames: int = 2) -> dict:
    """Unboxed parameter ShapeDtypeStructs of WhisperEncoder(config), nothing allocated."""
    model = WhisperEncoder(config)
    x = jnp.zeros((1, frames, config.num_mel_bins), jnp.float32)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"])
