"""Building blocks shared by the model families: logically-partitioned dense/norm layers,
plain dot-product attention, and layer stacks under `nn.scan` with rematerialisation. Every
parameter names its logical axes (see partitioning.py)."""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Dtype = Any
Array = jax.Array


def operand_dot(dtype: Dtype | None) -> Callable | None:
    """A `dot_general` for nn.Dense / nn.DenseGeneral whose operands are cast to `dtype` (e.g.
    bfloat16, which CPUs with AVX512-BF16 and TPUs multiply at twice the float32 rate) while the
    products accumulate and come out in float32. None: the layer's own dot."""
    if dtype is None:
        return None

    def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), dimension_numbers, precision=precision,
                                   preferred_element_type=jnp.float32)
    return dot


def bfloat16_where_fast(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """"bfloat16" where the default jax backend multiplies bfloat16 operands natively (TPU, GPU,
    or a CPU with AVX512-BF16 or AMX-BF16), else None: a `matmul_dtype` for configs. Other CPUs
    widen bfloat16 operands back to float32 and only pay for the conversions."""
    if jax.default_backend() != "cpu":
        return "bfloat16"
    try:
        with open(cpuinfo) as f:
            flags = f.read()
    except OSError:
        return None
    return "bfloat16" if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) else None


def dense(features: int, axes: Sequence[str | None], *, use_bias: bool = False,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          kernel_init: Callable = nn.initializers.lecun_normal(), name: str | None = None,
          operand_dtype: Dtype | None = None) -> nn.Dense:
    """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names `axes`;
    operand_dtype: see `operand_dot`."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[-1],)),
        dot_general=operand_dot(operand_dtype), name=name)


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


# ----------------------------------------------------------------------------- target backend

_target = threading.local()


@contextlib.contextmanager
def target_backend(name: str) -> Iterator[None]:
    """Trace for backend `name` (e.g. "tpu" while compiling ahead of time for a TPU topology on a
    CPU host): `backend()` returns it inside the block, so backend-specific layouts (the
    Conformer's CPU attention chunking) follow the compile target, not the host."""
    previous = getattr(_target, "name", None)
    _target.name = name
    try:
        yield
    finally:
        _target.name = previous


def backend() -> str:
    """The backend being traced for: `target_backend`'s, else JAX's default backend."""
    return getattr(_target, "name", None) or jax.default_backend()


# ----------------------------------------------------------------------------- layer stacks

# Rematerialisation policies by name (what the backward pass keeps of each layer's forward):
# none = no remat (keep everything XLA wants), full = keep only the layer's input,
# dots = keep matmul outputs, dots_no_batch = keep matmul outputs without batch dimensions.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
SCANNED = "layers"      # the stacked layers' submodule name and logical axis name


def check_remat_policy(name: str, owner: str) -> None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"{owner}.remat_policy must be one of {sorted(REMAT_POLICIES)}, got {name!r}")


def remat(cls: type, policy: str, static_argnums: Sequence[int] = ()) -> type:
    """`cls` with its forward recomputed in the backward pass per `policy` (REMAT_POLICIES);
    `static_argnums` count `self` as 0 (Python values such as `deterministic`)."""
    if policy == "none":
        return cls
    return nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=False, static_argnums=tuple(static_argnums))


def layer_stack(cls: type, length: int, *, in_axes: Sequence[Any] = (), static: Sequence[Any] = (),
                remat_policy: str = "none") -> tuple[Callable, type]:
    """(scan, layer class) for `length` layers of `cls` applied in sequence under `nn.scan`:
    `carry = scan(layer_class(..., name=SCANNED), carry, *args)[0]` runs
    `carry = layer(carry, *args, *static)` `length` times, where each of `args` is broadcast to
    every layer (`nn.broadcast`) or sliced along axis 0 (0) as `in_axes` says and `static` are
    Python values. A layer returning a tuple carries its first element. Parameters (and a
    decoding cache) gain a leading axis of size `length`, logically named SCANNED ("layers"):
    one layer is traced and compiled once instead of `length` times."""
    n = len(in_axes)
    cls = remat(cls, remat_policy, tuple(range(2 + n, 2 + n + len(static))))

    def body(module, carry, *args):
        out = module(carry, *args, *static)
        return (out[0] if isinstance(out, tuple) else out), None

    scan = nn.scan(body, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=tuple(in_axes), length=length, metadata_params={nn.PARTITION_NAME: SCANNED})
    return scan, cls


_LAYER = re.compile(r"^layers_(\d+)$")


def stack_layers(params: Mapping[str, Any]) -> dict:
    """Unrolled -> scanned parameter layout: wherever a dict holds "layers_0" .. "layers_{N-1}"
    (and nothing else named layers_*), they become one "layers" subtree whose leaves are the
    per-layer leaves stacked on a new leading axis. How checkpoints in the unrolled layout (the
    Hugging Face / CTranslate2 importers' output) load into a model with scan_layers=True.
    Works on arrays and on ShapeDtypeStructs."""
    if not isinstance(params, Mapping):
        return params
    out = {k: stack_layers(v) for k, v in params.items()}
    idx = sorted(int(m.group(1)) for k in out if (m := _LAYER.match(k)))
    if idx:
        if idx != list(range(len(idx))):
            raise ValueError(f"stack_layers: layers {idx} are not numbered 0..{len(idx) - 1}")
        per_layer = [out.pop(f"layers_{i}") for i in idx]
        out[SCANNED] = jax.tree_util.tree_map(_stack, *per_layer)
    return out


def _stack(*xs):
    if isinstance(xs[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(xs),) + tuple(xs[0].shape), xs[0].dtype)
    return jnp.stack(xs)


def unstack_layers(params: Mapping[str, Any]) -> dict:
    """Scanned -> unrolled layout, the inverse of `stack_layers` (e.g. to export a scanned
    model's weights to the Hugging Face layout)."""
    if not isinstance(params, Mapping):
        return params
    out = {}
    for k, v in params.items():
        if k == SCANNED and isinstance(v, Mapping):
            n = jax.tree_util.tree_leaves(v)[0].shape[0]
            for i in range(n):
                out[f"layers_{i}"] = unstack_layers(jax.tree_util.tree_map(lambda x: x[i], v))
        else:
            out[k] = unstack_layers(v)
    return out
