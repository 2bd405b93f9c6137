"""The SLM adapter: the only trainable part of SLM.

speech-encoder output [B, T, D_enc] -> uniform subsampling (keep every `stride`-th frame, as in
the paper; or average `stride` frames) -> input projection to the adapter width -> `num_layers`
pre-LN transformer layers (masked self-attention + GELU FFN) -> LayerNorm -> projection to the
LLM's d_model, so the result can be concatenated with the LLM's text embeddings.
`num_layers=0` gives a projection-only adapter (the paper's depth ablation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from slm_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    input_dim: int | None = None    # speech encoder width (None: the encoder's, see slm_jax.foundations)
    output_dim: int | None = None   # LLM d_model (None: the LLM's)
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    stride: int = 4
    subsampling: str = "stride"   # "stride": keep every stride-th frame; "mean": average windows
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.stride < 1:
            raise ValueError(f"AdapterConfig.stride must be >= 1, got {self.stride}")
        if self.subsampling not in ("stride", "mean"):
            raise ValueError(f"AdapterConfig.subsampling must be 'stride' or 'mean', got {self.subsampling!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"AdapterConfig.hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")


def subsample(x: Array, mask: Array, stride: int, mode: str = "stride") -> tuple[Array, Array]:
    """Uniformly subsample [B, T, D] frames and their [B, T] mask by `stride` along time.

    "stride" keeps frames 0, s, 2s, ...; an output frame is valid iff its source frame is.
    "mean" averages each window of s frames over its valid frames; valid iff any frame is."""
    if stride == 1:
        return x, mask
    if mode == "stride":
        return x[:, ::stride], mask[:, ::stride]
    b, t, d = x.shape
    pad = (-t) % stride
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    m = jnp.pad(mask.astype(x.dtype), ((0, 0), (0, pad)))
    xw = x.reshape(b, -1, stride, d)
    mw = m.reshape(b, -1, stride)
    total = jnp.einsum("bwsd,bws->bwd", xw, mw)
    count = mw.sum(-1)
    return total / jnp.maximum(count, 1)[..., None], count > 0


def prepare_input(x: Array, mask: Array, config: AdapterConfig) -> tuple[Array, Array]:
    """What the adapter does before its first parameter: cast to its compute dtype, then
    subsample. Parameter-free, so it can run ahead of time (slm_jax.feature_cache stores its
    output; the adapter then skips it: `Adapter(...)(x, mask, subsampled=True)`)."""
    return subsample(x.astype(config.dtype), mask, config.stride, config.subsampling)


class AdapterLayer(nn.Module):
    """Pre-LN transformer layer: x + MHA(LN(x)); x + FFN(LN(x))."""
    config: AdapterConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_heads
        dense = lambda feats, axes, name: layers.dense(  # noqa: E731
            feats, axes, use_bias=True, dtype=cfg.dtype, name=name)

        h = layers.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name="attn_norm")(x)
        q, k, v = (dense(cfg.hidden_size, ("embed", "mlp"), n)(h) for n in ("query", "key", "value"))
        split = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, head_dim))  # noqa: E731
        attn = layers.dot_product_attention(
            split(q), split(k), split(v), mask=layers.attention_mask(mask, mask),
            scale=head_dim ** -0.5, dtype=cfg.dtype)
        attn = dense(cfg.hidden_size, ("mlp", "embed"), "out")(attn.reshape(x.shape[:2] + (-1,)))
        x = x + nn.Dropout(cfg.dropout_rate)(attn, deterministic=deterministic)

        h = layers.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name="ffn_norm")(x)
        h = nn.gelu(dense(cfg.intermediate_size, ("embed", "mlp"), "ffn_in")(h), approximate=False)
        h = dense(cfg.hidden_size, ("mlp", "embed"), "ffn_out")(h)
        return x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)


class Adapter(nn.Module):
    """Maps speech-encoder frames into the LLM's text-embedding space (see module docstring)."""
    config: AdapterConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True,
                 subsampled: bool = False) -> tuple[Array, Array]:
        """x [B, T, input_dim], mask [B, T] -> [B, T', output_dim], mask [B, T'].
        subsampled=True: x, mask are already `prepare_input`'s output (cached encoder outputs)."""
        cfg = self.config
        if x.shape[-1] != cfg.input_dim:
            raise ValueError(f"Adapter expects speech features of width input_dim={cfg.input_dim}, "
                             f"got {x.shape[-1]}")
        if subsampled:
            x = x.astype(cfg.dtype)
        else:
            x, mask = prepare_input(x, mask, cfg)
        if cfg.num_layers:
            x = layers.dense(cfg.hidden_size, (None, "embed"), use_bias=True, dtype=cfg.dtype,
                             name="input_proj")(x)
            for i in range(cfg.num_layers):
                x = AdapterLayer(cfg, name=f"layer_{i}")(x, mask, deterministic)
            x = layers.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name="final_norm")(x)
        x = layers.dense(cfg.output_dim, (None, "embed"), use_bias=True, dtype=cfg.dtype,
                         name="output_proj")(x)
        x = x * mask[..., None].astype(x.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, mask
