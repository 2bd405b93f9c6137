"""Conformer speech encoder: USM-style (the paper's speech encoder) and w2v-BERT 2.0 layout.

    features [B, T, C] -> front end -> N x Conformer block -> hidden [B, T', H], mask [B, T']

Front ends (`subsampling`):
- "conv2d" (USM): two 3x3 stride-2 Conv2D + ReLU over (time, feature), zero padding 1 on every
  side, then a linear projection to `hidden_size`: T' = ceil(ceil(T / 2) / 2), a 4x reduction.
- "none" (w2v-BERT 2.0): LayerNorm(input_dim) + Linear(input_dim -> hidden_size), T' = T.

Conformer block (the layout of transformers' Wav2Vec2BertEncoderLayer, so w2v-BERT 2.0
checkpoints import exactly; see checkpoints/hf_w2v_bert.py):

    x = x + 0.5 * FFN1(LN(x))                       macaron feed-forward, swish
    x = x + MHSA(LN(x))                             masked; optional Shaw relative-key term
    x = x + ConvModule(x)                           LN -> GLU pointwise -> causal depthwise conv
                                                    -> LN -> swish -> pointwise
    x = LN(x + 0.5 * FFN2(LN(x)))                   final LayerNorm per block

Padding. Masks are [B, T] with 1/True = valid, valid frames first. Padded frames are masked out
of attention as keys and zeroed before every convolution (time conv of the front end and the
depthwise conv), so a valid output frame is exactly what the same audio without padding gives:
outputs never depend on how much padding a batch adds. The output mask marks precisely the
frames an unpadded input of that length produces (for "conv2d": frame i of a stride-2 step is
valid iff its centre input frame 2i is, i.e. ceil(L / 2) frames). Padded output frames are zero.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import flax.linen as nn

from slm_jax.models import layers

Array = jax.Array

SUBSAMPLING = ("conv2d", "none")
# On CPU, self-attention runs the batch in groups of examples with at most this many bytes of
# [heads, T, T] float32 logits each (see SelfAttention); other backends run the whole batch.
ATTENTION_CHUNK_BYTES = 4 << 20
POSITION_EMBEDDINGS = ("relative_key", "none")


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    input_dim: int = 80                  # feature channels (80/128 log-mel; 160 = w2v-BERT stacked fbank)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024        # macaron FFN width
    conv_kernel_size: int = 31           # causal depthwise conv taps
    subsampling: str = "conv2d"          # "conv2d" (USM, 4x in time) or "none" (w2v-BERT 2.0)
    subsampling_channels: int = 128      # Conv2D channels of the "conv2d" front end
    position_embeddings_type: str = "relative_key"   # "relative_key" (w2v-BERT 2.0) or "none"
    left_max_position_embeddings: int = 64           # relative_key: clip of key-left distances
    right_max_position_embeddings: int = 8           # relative_key: clip of key-right distances
    layer_norm_eps: float = 1e-5
    dropout_rate: float = 0.0            # after the front end and every residual branch
    dtype: Any = jnp.float32             # compute dtype; params stay float32
    scan_layers: bool = False            # layers under nn.scan, params stacked under "layers"
    remat_policy: str = "none"           # layers.REMAT_POLICIES

    def __post_init__(self):
        layers.check_remat_policy(self.remat_policy, "ConformerConfig")
        if self.subsampling not in SUBSAMPLING:
            raise ValueError(f"ConformerConfig.subsampling must be one of {SUBSAMPLING}, got {self.subsampling!r}")
        if self.position_embeddings_type not in POSITION_EMBEDDINGS:
            raise ValueError(f"ConformerConfig.position_embeddings_type must be one of {POSITION_EMBEDDINGS}, "
                             f"got {self.position_embeddings_type!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ConformerConfig.hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if self.conv_kernel_size < 1:
            raise ValueError(f"ConformerConfig.conv_kernel_size must be >= 1, got {self.conv_kernel_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_relpos_buckets(self) -> int:
        return self.left_max_position_embeddings + self.right_max_position_embeddings + 1

    @property
    def time_reduction(self) -> int:
        return 4 if self.subsampling == "conv2d" else 1

    def output_length(self, length):
        """Frames the encoder emits for `length` valid input frames (ints or integer arrays)."""
        if self.subsampling == "none":
            return length
        for _ in range(2):
            length = (length + 1) // 2          # 3-tap, stride 2, padding 1: ceil(L / 2)
        return length

    @classmethod
    def from_hf_w2v_bert(cls, config: Mapping[str, Any], **overrides) -> "ConformerConfig":
        """The config of a transformers Wav2Vec2BertModel (its config.json as a dict).

        Raises ValueError naming the field when the checkpoint needs something this encoder
        does not implement (the conv adapter, the intermediate FFN, rotary / Transformer-XL
        position embeddings, a non-swish activation)."""
        def get(name, default):
            return config.get(name, default)

        if get("add_adapter", False):
            raise ValueError("add_adapter=True (the w2v-BERT conv adapter) is not supported")
        if get("use_intermediate_ffn_before_adapter", False):
            raise ValueError("use_intermediate_ffn_before_adapter=True is not supported")
        pos = get("position_embeddings_type", "relative_key")
        if pos not in ("relative_key", None):
            raise ValueError(f"position_embeddings_type={pos!r} is not supported (only 'relative_key' or None)")
        act = get("hidden_act", "swish")
        if act not in ("swish", "silu"):
            raise ValueError(f"hidden_act={act!r} is not supported (only 'swish')")
        kwargs = dict(
            input_dim=int(get("feature_projection_input_dim", 160)),
            hidden_size=int(get("hidden_size", 1024)),
            num_layers=int(get("num_hidden_layers", 24)),
            num_heads=int(get("num_attention_heads", 16)),
            intermediate_size=int(get("intermediate_size", 4096)),
            conv_kernel_size=int(get("conv_depthwise_kernel_size", 31)),
            subsampling="none",
            position_embeddings_type="relative_key" if pos == "relative_key" else "none",
            left_max_position_embeddings=int(get("left_max_position_embeddings", 64)),
            right_max_position_embeddings=int(get("right_max_position_embeddings", 8)),
            layer_norm_eps=float(get("layer_norm_eps", 1e-5)),
            dropout_rate=float(get("hidden_dropout", 0.0)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)


def _zero_padding(x: Array, mask: Array) -> Array:
    """Zero the frames of x [B, T, ...] where mask [B, T] is False."""
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


def _conv3x3_stride2_patches(x: Array, kernel: Array, bias: Array) -> Array:
    """conv3x3_stride2 as the 9 strided views of the padded input stacked into patches
    [..., 9 Cin] and one matmul (the form whose gradient XLA's CPU backend runs fast)."""
    b, t, f, c = x.shape
    to, fo = (t + 1) // 2, (f + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + 2 * to - 1:2, j:j + 2 * fo - 1:2] for i in range(3) for j in range(3)], -1)
    return patches @ kernel.reshape(9 * c, -1) + bias


@jax.custom_vjp
def conv3x3_stride2(x: Array, kernel: Array, bias: Array) -> Array:
    """3x3 convolution, stride 2, padding 1 on both sides, of x [B, T, F, Cin] with kernel
    [3, 3, Cin, Cout] (nn.Conv's layout) and bias [Cout] -> [B, ceil(T/2), ceil(F/2), Cout].

    Forward: `lax.conv_general_dilated`. Backward: the gradient of the same math written as
    patches and a matmul (`_conv3x3_stride2_patches`), because XLA's CPU backend runs the
    convolution's own backward pass as a slow generic convolution (timing:
    benchmarks/README.md)."""
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _conv3x3_stride2_fwd(x, kernel, bias):
    return conv3x3_stride2(x, kernel, bias), (x, kernel, bias)


def _conv3x3_stride2_bwd(res, cotangent):
    return jax.vjp(_conv3x3_stride2_patches, *res)[1](cotangent)


conv3x3_stride2.defvjp(_conv3x3_stride2_fwd, _conv3x3_stride2_bwd)


class Conv3x3Stride2(nn.Module):
    """nn.Conv(features, (3, 3), strides 2, padding 1)'s parameters (same names, shapes, init and
    logical axes, so checkpoints are interchangeable), computed by `conv3x3_stride2`."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("conv_width", None, "conv_in", "embed")),
            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                          (self.features,), jnp.float32)
        return conv3x3_stride2(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


class Conv2dSubsampling(nn.Module):
    """USM front end: 2 x (3x3 Conv2D, stride 2, padding 1, ReLU) over (time, feature), then a
    linear projection of (feature x channel) to hidden_size. [B,T,C],[B,T] -> [B,T',H],[B,T']."""
    config: ConformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> tuple[Array, Array]:
        cfg = self.config
        x = _zero_padding(x.astype(cfg.dtype), mask)[..., None]          # [B, T, C, 1]
        for i in (1, 2):
            x = Conv3x3Stride2(cfg.subsampling_channels, cfg.dtype, name=f"conv{i}")(x)
            # Output frame t is centred on input frame 2t: valid iff that frame is (ceil(L/2)).
            mask = mask[:, ::2]
            x = _zero_padding(nn.relu(x), mask)
        b, t, f, c = x.shape
        x = x.reshape(b, t, f * c)
        x = layers.dense(cfg.hidden_size, ("mel", "embed"), use_bias=True, dtype=cfg.dtype, name="projection")(x)
        return x, mask


class FeatureProjection(nn.Module):
    """w2v-BERT 2.0 front end: LayerNorm over the input channels, then Linear to hidden_size."""
    config: ConformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> tuple[Array, Array]:
        cfg = self.config
        x = layers.LayerNorm(cfg.layer_norm_eps, axis_name="mel", dtype=cfg.dtype, name="layer_norm")(x)
        x = layers.dense(cfg.hidden_size, ("mel", "embed"), use_bias=True, dtype=cfg.dtype, name="projection")(x)
        return x, mask


class FeedForward(nn.Module):
    """Linear -> swish -> Linear (both with bias)."""
    config: ConformerConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.config
        h = layers.dense(cfg.intermediate_size, ("embed", "mlp"), use_bias=True, dtype=cfg.dtype,
                         name="intermediate_dense")(x)
        h = nn.with_logical_constraint(nn.silu(h), ("batch", "length", "mlp"))
        return layers.dense(cfg.hidden_size, ("mlp", "embed"), use_bias=True, dtype=cfg.dtype,
                            name="output_dense")(h)


def _skewed_relative_bias(per_bucket: Array, left: int, right: int) -> Array:
    """The same map as `relative_key_bias`, as pads and reshapes (no gather): the rows
    rel[q, r] (r = k - q + T - 1, clipped buckets broadcast) laid out flat with stride 2T - 1 put
    rel[q, k - q + T - 1] at flat position T - 1 + q (2T - 2) + k, so a slice and a reshape to
    rows of 2T - 2 read out[q, k]. Its transpose is what XLA's CPU scatter does slowly."""
    *lead, t, p = per_bucket.shape
    if t == 1:
        return per_bucket[..., left:left + 1]
    parts = [jnp.broadcast_to(per_bucket[..., :1], (*lead, t, max(t - 1 - left, 0))),
             per_bucket[..., max(left - (t - 1), 0):p - max(right - (t - 1), 0)],
             jnp.broadcast_to(per_bucket[..., -1:], (*lead, t, max(t - 1 - right, 0)))]
    flat = jnp.concatenate(parts, axis=-1).reshape(*lead, t * (2 * t - 1))
    return flat[..., t - 1:t - 1 + t * (2 * t - 2)].reshape(*lead, t, 2 * t - 2)[..., :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def relative_key_bias(per_bucket: Array, left: int, right: int) -> Array:
    """[..., Tq, P] logits of each query against each distance bucket -> [..., Tq, Tk] with
    out[q, k] = per_bucket[q, clip(k - q, -left, right) + left]. Forward: a gather from the
    flattened [..., Tq * P] rows with one [Tq * Tk] index vector (`take_along_axis` would build a
    coordinate tensor the size of the output per leading index); backward: the transpose of
    `_skewed_relative_bias` (pads and sums), the same numbers as the gather's scatter-add, which
    XLA's CPU backend runs slowly (timings: benchmarks/README.md)."""
    *lead, t, p = per_bucket.shape
    pos = jnp.arange(t)
    flat_index = (pos[:, None] * p + jnp.clip(pos[None, :] - pos[:, None], -left, right) + left).reshape(-1)
    out = jnp.take(per_bucket.reshape(*lead, t * p), flat_index, axis=-1, mode="clip",
                   indices_are_sorted=True)
    return out.reshape(*lead, t, t)


def _relative_key_bias_fwd(per_bucket, left, right):
    return relative_key_bias(per_bucket, left, right), per_bucket


def _relative_key_bias_bwd(left, right, per_bucket, cotangent):
    # the map is linear: its transpose does not depend on the point (XLA drops the unused forward)
    _, vjp = jax.vjp(lambda x: _skewed_relative_bias(x, left, right), per_bucket)
    return vjp(cotangent.astype(per_bucket.dtype))


relative_key_bias.defvjp(_relative_key_bias_fwd, _relative_key_bias_bwd)


class SelfAttention(nn.Module):
    """Masked multi-head self-attention. With "relative_key" position embeddings (Shaw et al.,
    as in w2v-BERT 2.0) the logits gain q . E[clip(k - q, -left, right)], scaled like q . k:
        logits[q, k] = (q . k + q . E[d(q, k)]) / sqrt(head_dim)."""
    config: ConformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        cfg = self.config
        heads, hd = cfg.num_heads, cfg.head_dim
        proj = lambda name: _dense_general((heads, hd), ("embed", "heads", "kv"), dtype=cfg.dtype, name=name)
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)          # [B, T, heads, hd]
        table = None
        if cfg.position_embeddings_type == "relative_key":
            table = self.param("distance_embedding", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("relpos_buckets", "kv")), (cfg.num_relpos_buckets, hd), jnp.float32)
            table = table.astype(cfg.dtype)
        amask = layers.attention_mask(mask, mask)
        # On CPU: examples in groups whose [heads, T, T] logits fit in ATTENTION_CHUNK_BYTES, one
        # group after another, so each group's logits, softmax and value dot stay in the cache
        # instead of the whole batch's logits streaming through memory several times (timings:
        # benchmarks/README.md). Accelerators, where the batch is sharded and wide kernels pay,
        # run it whole.
        b, t = x.shape[:2]
        group = b
        if layers.backend() == "cpu":
            group = max(1, min(b, ATTENTION_CHUNK_BYTES // (heads * t * t * 4)))
        outs = [self._attend(q[i:i + group], k[i:i + group], v[i:i + group], amask[i:i + group], table)
                for i in range(0, b, group)]
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
        return _dense_general(cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), dtype=cfg.dtype,
                              name="out")(out)

    def _attend(self, q: Array, k: Array, v: Array, mask: Array, table: Array | None) -> Array:
        cfg = self.config
        hd = cfg.head_dim
        bias = None
        if table is not None:
            # q against every bucket, then picked per (q, k): never builds a [T, T, hd] tensor.
            per_bucket = jnp.einsum("bqhd,pd->bhqp", q, table)
            bias = relative_key_bias(per_bucket, cfg.left_max_position_embeddings,
                                     cfg.right_max_position_embeddings) * (hd ** -0.5)
        return layers.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=hd ** -0.5, dtype=cfg.dtype)


class ConvolutionModule(nn.Module):
    """LN -> zero padded frames -> pointwise GLU -> causal depthwise conv (left pad K-1) -> LN
    -> swish -> pointwise. The GLU's value and gate halves are separate (embed, mlp) kernels so
    that a model-parallel split of the channels keeps each channel's pair on one shard.
    output_stride s > 1: only output frames 0, s, 2s, ... are computed (the conv reads every
    input frame, so everything before it runs on all frames)."""
    config: ConformerConfig
    output_stride: int = 1

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        cfg = self.config
        h = cfg.hidden_size
        x = layers.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name="layer_norm")(x)
        x = _zero_padding(x, mask)
        value = layers.dense(h, ("embed", "mlp"), dtype=cfg.dtype, name="pointwise_in_value")(x)
        gate = layers.dense(h, ("embed", "mlp"), dtype=cfg.dtype, name="pointwise_in_gate")(x)
        x = value * nn.sigmoid(gate)
        kernel = self.param("depthwise_kernel", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.conv_kernel_size ** -0.5), ("conv_width", "mlp")),
            (cfg.conv_kernel_size, h), jnp.float32)
        x = causal_depthwise_conv(x, kernel, self.output_stride)
        x = layers.LayerNorm(cfg.layer_norm_eps, axis_name="mlp", dtype=cfg.dtype, name="depthwise_layer_norm")(x)
        x = nn.silu(x)
        return layers.dense(h, ("mlp", "embed"), dtype=cfg.dtype, name="pointwise_out")(x)


def causal_depthwise_conv(x: Array, kernel: Array, stride: int = 1) -> Array:
    """Causal depthwise 1-D convolution: x [B, T, C], kernel [K, C] ->
    y[:, t] = sum_j kernel[j] * x[:, t - (K - 1) + j] (zeros before the start), float32 sums,
    at output frames t = 0, stride, 2 stride, ... ([B, ceil(T / stride), C]).

    Written as K shifted multiply-adds, which XLA fuses into one pass over x. This is the same
    math as `lax.conv_general_dilated(..., feature_group_count=C)` with left padding K - 1, which
    XLA's CPU backend runs as a slow generic loop (timing: benchmarks/README.md)."""
    k, t = kernel.shape[0], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
    w = kernel.astype(jnp.float32)
    out = xp[:, 0:t:stride].astype(jnp.float32) * w[0]
    for j in range(1, k):
        out = out + xp[:, j:j + t:stride].astype(jnp.float32) * w[j]
    return out.astype(x.dtype)


class ConformerLayer(nn.Module):
    """One Conformer block (see the module docstring). output_stride s > 1: the block's output
    only at frames 0, s, 2s, ... ([B, ceil(T / s), H]): FFN1 and attention run on every frame
    (the depthwise conv reads them all), the conv's output side, FFN2 and the final LN only on
    the kept frames. The same numbers as the full block's output at those frames."""
    config: ConformerConfig
    output_stride: int = 1

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        norm = lambda name: layers.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, name=name)
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        x = x + 0.5 * drop(FeedForward(cfg, name="ffn1")(norm("ffn1_layer_norm")(x), deterministic))
        x = x + drop(SelfAttention(cfg, name="self_attn")(norm("self_attn_layer_norm")(x), mask))
        x = x[:, ::self.output_stride] + drop(
            ConvolutionModule(cfg, self.output_stride, name="conv_module")(x, mask))
        x = x + 0.5 * drop(FeedForward(cfg, name="ffn2")(norm("ffn2_layer_norm")(x), deterministic))
        x = norm("final_layer_norm")(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Conformer(nn.Module):
    """features [B, T, input_dim], mask [B, T] -> (hidden [B, T', hidden_size], mask [B, T']).

    output_stride s > 1 returns only output frames 0, s, 2s, ... and their mask, exactly
    `hidden[:, ::s], mask[:, ::s]`: what a keep-every-s-th-frame adapter reads. The last block
    then skips the work whose results would be dropped (`ConformerLayer.output_stride`), except
    with `scan_layers`, where every layer is the same. `scan_layers` / `remat_policy`: as in
    slm_jax.models.t5 (params under "layers" with a leading layer axis)."""
    config: ConformerConfig

    @nn.compact
    def __call__(self, features: Array, mask: Array, deterministic: bool = True,
                 output_stride: int = 1) -> tuple[Array, Array]:
        cfg = self.config
        if output_stride < 1:
            raise ValueError(f"Conformer: output_stride must be >= 1, got {output_stride}")
        if features.shape[-1] != cfg.input_dim:
            raise ValueError(f"Conformer: features have {features.shape[-1]} channels, "
                             f"ConformerConfig.input_dim is {cfg.input_dim}")
        mask = mask.astype(bool)
        if cfg.subsampling == "conv2d":
            x, mask = Conv2dSubsampling(cfg, name="subsampling")(features, mask)
        else:
            x, mask = FeatureProjection(cfg, name="feature_projection")(features.astype(cfg.dtype), mask)
        x = nn.Dropout(cfg.dropout_rate)(_zero_padding(x, mask), deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        if cfg.scan_layers and cfg.num_layers:
            # every layer the same (under nn.scan), so the last one computes every frame too
            scan, layer = layers.layer_stack(ConformerLayer, cfg.num_layers, in_axes=(nn.broadcast,),
                                             static=(deterministic,), remat_policy=cfg.remat_policy)
            x, _ = scan(layer(cfg, name=layers.SCANNED), x, mask)
            x = x[:, ::output_stride]
        elif not cfg.num_layers:
            x = x[:, ::output_stride]
        layer = layers.remat(ConformerLayer, cfg.remat_policy, static_argnums=(3,))
        for i in range(0 if cfg.scan_layers else cfg.num_layers):
            stride = output_stride if i == cfg.num_layers - 1 else 1
            x = layer(cfg, stride, name=f"layers_{i}")(x, mask, deterministic)
        mask = mask[:, ::output_stride]
        return _zero_padding(x, mask), mask


def abstract_params(config: ConformerConfig, frames: int = 16) -> dict:
    """Unboxed parameter ShapeDtypeStructs of Conformer(config), nothing allocated."""
    model = Conformer(config)
    x = jnp.zeros((1, frames, config.input_dim), jnp.float32)
    m = jnp.ones((1, frames), bool)
    return nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, m)["params"])
