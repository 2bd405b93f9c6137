"""Building blocks shared by the model families: logically-partitioned dense/norm layers and
plain dot-product attention. Every parameter names its logical axes (see partitioning.py)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Dtype = Any
Array = jax.Array


def dense(features: int, axes: Sequence[str | None], *, use_bias: bool = False,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          kernel_init: Callable = nn.initializers.lecun_normal(), name: str | None = None) -> nn.Dense:
    """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names `axes`."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
        name=name)


class LayerNorm(nn.Module):
    """LayerNorm over the last ("embed"-like) axis, with optional bias; computes in float32."""
    epsilon: float = 1e-5
    use_bias: bool = True
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.LayerNorm(
            epsilon=self.epsilon, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
            name="norm")(x.astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nn.Module):
    """T5 LayerNorm: scale-only root-mean-square normalisation, float32 statistics."""
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


def attention_mask(q_mask: Array, kv_mask: Array) -> Array:
    """[B, Lq], [B, Lk] validity masks -> [B, 1, Lq, Lk] boolean attention mask."""
    return jnp.logical_and(q_mask[:, None, :, None].astype(bool), kv_mask[:, None, None, :].astype(bool))


def causal_mask(length: int) -> Array:
    """[1, 1, L, L] lower-triangular boolean mask."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def dot_product_attention(q: Array, k: Array, v: Array, *, bias: Array | None = None,
                          mask: Array | None = None, scale: float | None = None,
                          dtype: Dtype = jnp.float32, k_layout: str = "bkhd", v_layout: str = "bkhd") -> Array:
    """Softmax attention. q [B,Lq,H,D], k/v [B,Lk,H,D], or in the layouts `k_layout` / `v_layout`
    name (einsum letters b, k, h, d): a KV cache keeps k as "bhdk" and v as "bhkd", the operand
    layouts of the two dots, so no decoding step transposes it. bias broadcastable to
    [B,H,Lq,Lk]; mask boolean broadcastable to [B,H,Lq,Lk] (True = attend). Softmax in float32.
    Rows with no valid key produce zeros instead of NaN."""
    if scale is not None:
        q = q * jnp.asarray(scale, q.dtype)
    logits = jnp.einsum(f"bqhd,{k_layout}->bhqk", q, k).astype(jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    # Softmax with the normalisation deferred past the value dot: out = (e @ v) / sum(e), with
    # e = exp(logits - max). The same numbers as softmax-then-dot, one pass fewer over the
    # [Lq, Lk] weights (the division runs on [Lq, D]). The max is a constant shift of each row
    # (softmax does not depend on it), so no gradient flows through it.
    shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - shift)
    total = jnp.sum(e, axis=-1, keepdims=True)
    # [B,H,Lq,D] is the dot's natural output (batch dims first); XLA's CPU backend runs a dot
    # that writes [B,Lq,H,D] directly as a slow generic loop, so transpose the result instead
    out = jnp.einsum(f"bhqk,{v_layout}->bhqd", e.astype(dtype), v.astype(dtype))
    out = (out.astype(jnp.float32) / total).astype(dtype)
    if mask is not None:
        # a row with no valid key has all logits equal (uniform e): it attends to nothing
        out = jnp.where(jnp.any(mask, axis=-1, keepdims=True), out, jnp.zeros((), dtype))
    return out.transpose(0, 2, 1, 3)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper-style sinusoidal position table [length, channels] (sin half, then cos half)."""
    log_inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-log_inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)
