"""Per-device HBM estimate for adapter-only SLM training on TPU slices, computed abstractly.

RETIRED AS A FIT VERDICT: XLA's TPU compiler disagrees with this formula, and XLA is what runs.
`benchmarks/tpu_compile.py` (slm_jax.tpu_compile) compiles the real steps for the slice on this
host and reports XLA's own per-device memory; use it (and `launch/tpu_pod.sh`'s pre-flight) to
decide whether a config fits. Checked on the same config (paper model, Adafactor, FSDP, v5e-256,
mesh 32 x 8, 256 x 30 s, 64 + 128 tokens; benchmarks/README.md, "TPU ahead-of-time compile"):
  right: the parameter, gradient, optimizer-state and input-batch rows (the sharding rules applied
    to the abstract shapes): with frozen weights in bf16 they sum to 0.124 GiB; XLA's argument
    bytes are 0.125 GiB.
  wrong: the activation and transient rows. As the formula assumes (f32 frozen weights, no
    remat), it totals 4.75 GiB and "fits"; XLA needs 56.3 GiB of temporaries and refuses the
    program (over by 40.6 GiB). With bf16 weights and per-layer remat, the formula's own remat
    note gives 2.57 GiB; XLA: 3.63 GiB (3.51 GiB temporaries). The formula's "2 gathered layers"
    for FSDP, and its "frozen matmuls keep no inputs", are not what XLA does with a scanned
    stack: it keeps far more live (all-gathered weights and per-layer residuals across the scan).
  So the activation formula is kept only as documentation of what a step would need at least;
  the table's "fits" line is the formula's, not XLA's.

    python benchmarks/memory_estimate.py [--slices v4-128,v5e-256] [--optimizers adafactor,adamw]
        [--fsdp both|on|off] [--global_batch 256] [--audio_seconds 30] [--instruction_len 64]
        [--target_len 128] [--custom NAME:CHIPS:HBM_GIB:DATAxMODEL] [--usable 0.9] [--xla_check]

Nothing is allocated: parameter shapes and logical axis names come from
`jax.eval_shape(SLMTaskModel(configs.paper_slm()).init_boxed)` (LogicallyPartitioned boxes),
optimizer-state shapes from `jax.eval_shape(tx.init, boxed_trainable)` with the trainer's own
`make_optimizer`, and they are laid out with the rules table `partitioning.axis_rules(fsdp)` on a
("data", "model") mesh of the slice's shape, using the Partitioner's rule: a logical axis maps to
its mesh axis only if that mesh axis divides the dimension and is not already used by the array;
otherwise the dimension is replicated. Leaves whose names do not fit their rank (factored
Adafactor moments, step counts) are replicated, as in `Trainer`. Runs in seconds on a CPU.

What is counted per device (one chip = one JAX device on v4/v5e/v5p):
  frozen params      the speech encoder and the LLM, float32 as stored (the model keeps f32 params
                     and casts to the bf16 compute dtype inside the step)
  trainable params   the adapter (float32); gradients: the same again (f32, only the adapter has any)
  optimizer state    AdamW: mu + nu (2 x trainable, sharded like it); Adafactor (optax, factored,
                     no momentum): row/column second moments, replicated (rank differs from the
                     param), plus full moments for vectors and small matrices
  saved activations  what the backward pass keeps, for b = global_batch / data examples per
                     device (see `activation_bytes`; bf16 = the compute dtype, attention
                     probabilities and logits f32), summed over layers
  transient peak     the largest short-lived working set (one layer's forward/backward buffers,
                     the loss gradient, and with FSDP two layers of all-gathered weights)

Activation formula (elements per example; m = the "model" axis size; X/m only where m divides X):
  speech encoder (frozen; its output goes through stop_gradient, nothing depends on trainable
    params): no saved activations. Transient: front end 2 x (T/2 x mel/2 + T/4 x mel/4) x ch,
    one Conformer layer ~ 3 x (h/m) x T'^2 (f32 logits/bias/probs) + 4 x T' x d + 2 x T' x ffn/m.
  adapter (trainable: weight gradients need every matmul input), per layer, s = T'/stride:
    2 s H (LayerNorm inputs) + 2 s H (LayerNorm outputs = q/k/v and FFN inputs) + 3 s H/m (q, k, v)
    + s H/m (attention output = `out` input) + 2 s F/m (pre- and post-GELU) + (h/m) s^2 (probs, f32)
    plus input_proj input s x d_enc and output_proj input s x H.
  LLM encoder (frozen weights, but the adapter's gradient flows back through all of it): a frozen
    matmul y = x W needs only W to send dy back to x (dx = dy W^T), so matmul inputs are NOT kept;
    kept are what nonlinear ops need: per layer, S = s + instruction tokens,
    2 S d (RMSNorm inputs) + 3 S (n/m) d_kv (q, k, v) + (n/m) S^2 (softmax probs, f32)
    + 2 S f/m (both gated-GELU branches; 1 for a non-gated FFN).
  LLM decoder (every layer after the first cross-attention depends on the adapter), per layer,
    t = target tokens: 3 t d + 3 t (n/m) d_kv + (n/m) t^2 (f32) + t (n/m) d_kv + 2 S (n/m) d_kv
    + (n/m) t S (f32) + 2 t f/m. (Counting layer 0's self-attention too: slightly conservative.)
  loss: logits t x V/m (f32), kept for the softmax-cross-entropy backward.
  If the whole adapter were frozen nothing would be saved at all; if the LLM were trainable,
  its matmul inputs (roughly 2 S d + S (n/m) d_kv + S f/m more per layer) would be kept too.

Not summed, printed for context: frozen params stored as bf16; saved activations with per-layer
rematerialisation (each layer keeps only its input, s x d; the trainer does not implement remat);
and the worst case where XLA keeps the bf16 casts of the frozen LLM weights that the backward
matmuls (dx = dy W^T) reuse, instead of re-casting them from the f32 params.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Mapping, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from slm_jax import configs  # noqa: E402
from slm_jax.models.slm import SLMConfig  # noqa: E402
from slm_jax.partitioning import LOGICAL_AXES, axis_rules  # noqa: E402
from slm_jax.task_model import SLMTaskModel  # noqa: E402
from slm_jax.trainer import make_optimizer, split_trainable  # noqa: E402

GiB = 1024 ** 3
FRAMES_PER_SECOND = 100   # 10 ms log-mel hop


# ----------------------------------------------------------------------------- slices

@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """A TPU slice as JAX sees it: `chips` devices of `hbm_gib` each, on a data x model mesh."""
    name: str
    chips: int
    hbm_gib: float
    data: int
    model: int

    def __post_init__(self):
        if self.data * self.model != self.chips:
            raise ValueError(f"{self.name}: mesh {self.data}x{self.model} != {self.chips} chips")

    @property
    def mesh_shape(self) -> dict[str, int]:
        return {"data": self.data, "model": self.model}

    @classmethod
    def parse(cls, text: str) -> "SliceSpec":
        """NAME:CHIPS:HBM_GIB:DATAxMODEL, e.g. v5p-128:64:95:8x8."""
        try:
            name, chips, hbm, mesh = text.split(":")
            data, model = mesh.lower().split("x")
            return cls(name, int(chips), float(hbm), int(data), int(model))
        except ValueError as e:
            raise SystemExit(f"--custom {text!r}: expected NAME:CHIPS:HBM_GIB:DATAxMODEL ({e})")


SLICES = {
    # v4: 32 GiB HBM per chip, one JAX device per chip (megacore); v4-128 = 128 TensorCores = 64 chips.
    "v4-128": SliceSpec("v4-128", 64, 32.0, 8, 8),
    # v5e: 16 GiB HBM per chip, one TensorCore per chip.
    "v5e-256": SliceSpec("v5e-256", 256, 16.0, 32, 8),
    # v5p: 95 GiB HBM per chip; v5p-128 = 64 chips.
    "v5p-128": SliceSpec("v5p-128", 64, 95.0, 8, 8),
}


# ----------------------------------------------------------------------------- layout of one array

def mesh_axes_for(names: Sequence[str | None], shape: Sequence[int], rules: Mapping[str, str | None],
                  mesh_shape: Mapping[str, int]) -> tuple[str | None, ...]:
    """The PartitionSpec entries the Partitioner gives an array: each logical axis maps to its
    rule's mesh axis only if that axis divides the dimension and this array does not use it yet."""
    used: set[str] = set()
    spec: list[str | None] = []
    for name, dim in zip(names, shape):
        if name is not None and name not in LOGICAL_AXES:
            raise ValueError(f"logical axis {name!r} is not in partitioning.LOGICAL_AXES")
        axis = rules.get(name) if name is not None else None
        if axis is None or axis in used or dim % mesh_shape[axis]:
            spec.append(None)
        else:
            used.add(axis)
            spec.append(axis)
    return tuple(spec)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One array's layout: its full shape and the part of it each device holds."""
    path: str
    shape: tuple[int, ...]
    itemsize: int
    spec: tuple[str | None, ...]        # mesh axis per dimension (None: replicated)
    mesh_shape: tuple[tuple[str, int], ...]

    @property
    def shards(self) -> int:
        """How many distinct pieces the array is cut into (product of the mesh axes it uses)."""
        sizes = dict(self.mesh_shape)
        return int(np.prod([sizes[a] for a in self.spec if a is not None], dtype=np.int64))

    @property
    def device_shape(self) -> tuple[int, ...]:
        sizes = dict(self.mesh_shape)
        return tuple(d // sizes[a] if a else d for d, a in zip(self.shape, self.spec))

    @property
    def total_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    @property
    def device_bytes(self) -> int:
        return int(np.prod(self.device_shape, dtype=np.int64)) * self.itemsize


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def layout(tree: Any, rules: Mapping[str, str | None], mesh_shape: Mapping[str, int],
           itemsize: int | None = None) -> list[Leaf]:
    """Leaf layouts of a tree of (boxed) ShapeDtypeStructs. Boxes whose names fit the rank are
    sharded by the rules; other leaves are replicated (as `Partitioner.tree_shardings` does).
    `itemsize` overrides the stored dtype (e.g. 2 for "if stored as bf16")."""
    out = []
    mesh_items = tuple(sorted(mesh_shape.items()))
    for path, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_box):
        value = x.value if _is_box(x) else x
        shape = tuple(int(d) for d in value.shape)
        if _is_box(x) and len(x.names) == len(shape):
            spec = mesh_axes_for(x.names, shape, rules, mesh_shape)
        else:
            spec = (None,) * len(shape)
        size = itemsize or jnp.dtype(value.dtype).itemsize
        out.append(Leaf(jax.tree_util.keystr(path), shape, size, spec, mesh_items))
    return out


def device_bytes(leaves: Sequence[Leaf]) -> int:
    return sum(leaf.device_bytes for leaf in leaves)


def total_bytes(leaves: Sequence[Leaf]) -> int:
    return sum(leaf.total_bytes for leaf in leaves)


# ----------------------------------------------------------------------------- activations

@dataclasses.dataclass(frozen=True)
class Shapes:
    """Per-example sequence lengths of one training batch."""
    frames: int                 # input log-mel frames
    instruction_len: int        # instruction tokens
    target_len: int             # decoder tokens

    def lengths(self, config: SLMConfig) -> dict[str, int]:
        enc = config.speech_encoder
        t_enc = int(enc.output_length(self.frames)) if hasattr(enc, "output_length") else self.frames
        s_ad = math.ceil(t_enc / config.adapter.stride)
        return dict(frames=self.frames, speech_encoder=t_enc, adapter=s_ad,
                    llm_encoder=s_ad + self.instruction_len, llm_decoder=self.target_len)


def _split(dim: int, m: int) -> int:
    """Per-device size of an activation axis laid out over "model" (only if m divides it)."""
    return dim // m if dim % m == 0 else dim


def activation_bytes(config: SLMConfig, batch: int, shapes: Shapes, model_axis: int) -> dict[str, dict[str, float]]:
    """Saved (kept for the backward pass) and transient activation bytes per device for `batch`
    examples per device; formulas in the module docstring. Returns {"saved": {...}, "transient": {...}}."""
    enc, ad, llm = config.speech_encoder, config.adapter, config.llm
    m = model_axis
    a = jnp.dtype(llm.dtype).itemsize          # compute dtype (bf16: 2)
    f32 = 4
    L = shapes.lengths(config)
    T, s, S, t = L["speech_encoder"], L["adapter"], L["llm_encoder"], L["llm_decoder"]

    # speech encoder: forward only (stop_gradient; no trainable input) -> transient only
    ch = getattr(enc, "subsampling_channels", 0) if getattr(enc, "subsampling", "none") == "conv2d" else 0
    mel = getattr(enc, "input_dim", 0)
    front = 2 * (math.ceil(shapes.frames / 2) * math.ceil(mel / 2) + T * math.ceil(mel / 4)) * ch * a
    d_e, h_e, ffn_e = enc.hidden_size, enc.num_heads, enc.intermediate_size
    enc_layer = 3 * _split(h_e, m) * T * T * f32 + (4 * T * d_e + 2 * T * _split(ffn_e, m)) * a
    enc_out = T * d_e * a

    # adapter: trainable, every matmul input kept
    H, F, h_a = ad.hidden_size, ad.intermediate_size, ad.num_heads
    if ad.num_layers:
        ad_layer = (4 * s * H + 4 * s * _split(H, m) + 2 * s * _split(F, m)) * a + _split(h_a, m) * s * s * f32
        ad_extra = (s * d_e + 2 * s * H) * a      # input_proj input, final_norm input, output_proj input
    else:
        ad_layer, ad_extra = 0, s * d_e * a
    adapter_saved = ad.num_layers * ad_layer + ad_extra

    # LLM: frozen weights, activations kept only where nonlinear ops need them
    d, n, dk, f = llm.d_model, llm.num_heads, llm.d_kv, llm.d_ff
    nm, fm = _split(n, m), _split(f, m)
    ffn_branches = 2 if llm.is_gated else 1
    llm_enc_layer = (2 * S * d + 3 * S * nm * dk + ffn_branches * S * fm) * a + nm * S * S * f32
    llm_dec_layer = ((3 * t * d + 3 * t * nm * dk + t * nm * dk + 2 * S * nm * dk + ffn_branches * t * fm) * a
                     + (nm * t * t + nm * t * S) * f32)
    norms = (S * d + t * d) * a                   # final encoder / decoder norms
    logits = t * _split(llm.vocab_size, m) * f32

    saved = {
        "adapter": batch * adapter_saved,
        "llm_encoder": batch * (llm.num_encoder_layers * llm_enc_layer),
        "llm_decoder": batch * (llm.num_decoder_layers * llm_dec_layer + norms),
        "logits": batch * logits,
    }
    largest_layer = max(ad_layer, llm_enc_layer, llm_dec_layer)
    transient = {
        "speech_encoder": batch * (front + enc_layer + enc_out),
        "backward_layer": batch * 2 * largest_layer,   # one layer's residuals and their gradients in flight
        "loss_grad": batch * logits,                   # d(loss)/d(logits), f32
    }
    remat = batch * ((llm.num_encoder_layers * S + llm.num_decoder_layers * t) * d * a + ad.num_layers * s * H * a
                     + ad_extra + logits) + batch * 2 * largest_layer
    return {"saved": saved, "transient": transient, "saved_with_remat": remat, "lengths": L}


# ----------------------------------------------------------------------------- the estimate

def paper_config(dtype=jnp.bfloat16) -> SLMConfig:
    """configs.paper_slm() with `dtype` (bf16) compute in every part, as gin/models/paper.gin."""
    c = configs.paper_slm()
    return dataclasses.replace(c, speech_encoder=dataclasses.replace(c.speech_encoder, dtype=dtype),
                               adapter=dataclasses.replace(c.adapter, dtype=dtype),
                               llm=dataclasses.replace(c.llm, dtype=dtype))


def abstract_boxed(config: SLMConfig) -> Any:
    """LogicallyPartitioned ShapeDtypeStructs of every parameter (nothing allocated)."""
    return SLMTaskModel(config).abstract_params()


@dataclasses.dataclass
class Estimate:
    slice: SliceSpec
    optimizer: str
    fsdp: bool
    batch_per_device: int
    rows: dict[str, int]            # bytes per device, summed into `total`
    notes: dict[str, int]           # bytes per device, for context (not summed)
    frozen: list[Leaf]
    trainable: list[Leaf]
    opt_state: list[Leaf]
    lengths: dict[str, int]
    usable_fraction: float

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    @property
    def usable_bytes(self) -> float:
        return self.slice.hbm_gib * GiB * self.usable_fraction

    @property
    def fits(self) -> bool:
        return self.total <= self.usable_bytes


def estimate(config: SLMConfig, slice_spec: SliceSpec, *, optimizer: str = "adafactor", fsdp: bool = False,
             global_batch: int = 256, shapes: Shapes = Shapes(3000, 64, 128),
             trainable_patterns: Sequence[str] = ("adapter/.*",), usable_fraction: float = 0.9,
             boxed: Any = None, batch_per_device: int | None = None) -> Estimate:
    """Bytes per device of everything adapter-only training holds on one chip of `slice_spec`."""
    boxed = abstract_boxed(config) if boxed is None else boxed
    rules = dict(axis_rules(fsdp))
    mesh = slice_spec.mesh_shape
    train_boxed, frozen_boxed = split_trainable(boxed, trainable_patterns)
    frozen = layout(frozen_boxed, rules, mesh)
    trainable = layout(train_boxed, rules, mesh)
    tx = make_optimizer(name=optimizer, schedule=lambda step: 1e-3)
    opt_state = layout(jax.eval_shape(tx.init, train_boxed), rules, mesh)
    if batch_per_device is None:
        if global_batch % slice_spec.data:
            raise ValueError(f"global batch {global_batch} is not divisible by the data axis {slice_spec.data}")
        batch_per_device = global_batch // slice_spec.data

    by_part: dict[str, int] = {}
    for leaf in frozen:
        part = leaf.path.split("'")[1]
        by_part[part] = by_part.get(part, 0) + leaf.device_bytes
    rows = {f"frozen {part} (f32 as stored)": b for part, b in sorted(by_part.items())}
    rows["trainable params (f32)"] = device_bytes(trainable)
    rows["gradients (f32, trainable only)"] = device_bytes(trainable)
    rows["optimizer state"] = device_bytes(opt_state)
    gathered = 2 * max_layer_gathered_bytes(frozen, slice_spec) if fsdp else 0
    batch_rows, remat, lengths = _batch_rows(config, slice_spec, batch_per_device, shapes, gathered)
    rows.update(batch_rows)
    notes = {
        "frozen params if stored bf16": sum(leaf.device_bytes // 2 for leaf in frozen),
        "saved activations with per-layer remat": remat,
        "bf16 casts of frozen LLM kept (worst case)": sum(
            leaf.device_bytes // 2 for leaf in frozen if leaf.path.startswith("['llm']") and len(leaf.shape) >= 2),
    }
    return Estimate(slice_spec, optimizer, fsdp, batch_per_device, rows, notes, frozen, trainable, opt_state,
                    lengths, usable_fraction)


def _batch_rows(config: SLMConfig, slice_spec: SliceSpec, batch: int, shapes: Shapes,
                gathered: int) -> tuple[dict[str, int], int, dict[str, int]]:
    """The rows that scale with the per-device batch."""
    acts = activation_bytes(config, batch, shapes, slice_spec.model)
    per_example = (shapes.frames * (config.speech_encoder.input_dim * 4 + 4)       # features + mask
                   + (shapes.instruction_len + 3 * shapes.target_len) * 4)          # int32 token arrays
    rows = {"input batch (f32 features, int32 tokens)": batch * per_example}
    labels = {"adapter": "saved act.: adapter (trainable)", "llm_encoder": "saved act.: LLM encoder (frozen)",
              "llm_decoder": "saved act.: LLM decoder (frozen)", "logits": "saved act.: logits (f32)"}
    rows.update({labels[k]: int(v) for k, v in acts["saved"].items()})
    rows["transient peak (+FSDP: 2 gathered layers)"] = int(max(acts["transient"].values()) + gathered)
    return rows, int(acts["saved_with_remat"]), acts["lengths"]


def max_layer_gathered_bytes(frozen: Sequence[Leaf], slice_spec: SliceSpec) -> int:
    """Bytes per device of the largest frozen layer (or unlayered array, e.g. the embedding) once
    its "data" (FSDP) sharding is all-gathered."""
    per_layer: dict[str, int] = {}
    for leaf in frozen:
        parts = leaf.path.split("'")[1::2]
        idx = next((i for i, p in enumerate(parts) if p.startswith("layers_")), None)
        group = "/".join(parts[:idx + 1]) if idx is not None else leaf.path
        factor = slice_spec.data if "data" in leaf.spec else 1
        per_layer[group] = per_layer.get(group, 0) + leaf.device_bytes * factor
    return max(per_layer.values()) if per_layer else 0


def max_batch_that_fits(config: SLMConfig, est: Estimate, shapes: Shapes, limit: int = 4096) -> int:
    """Largest per-device batch for which `est`'s configuration fits (0 if none does)."""
    fixed = sum(v for k, v in est.rows.items() if not k.startswith(("input batch", "saved act.", "transient")))
    gathered = 2 * max_layer_gathered_bytes(est.frozen, est.slice) if est.fsdp else 0

    def fits(b):
        return fixed + sum(_batch_rows(config, est.slice, b, shapes, gathered)[0].values()) <= est.usable_bytes

    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


# ----------------------------------------------------------------------------- a check against XLA

def xla_check(batches: tuple[int, int] = (4, 8), llm_layers: int = 2, shapes: Shapes = Shapes(1600, 32, 64),
              dtype=jnp.float32) -> dict:
    """Compile (never run) the real adapter-only train step of a reduced paper model (paper widths;
    1 Conformer layer, `llm_layers` + `llm_layers` LLM layers, 32k vocabulary) on one CPU device at
    two batch sizes, and compare XLA's temp-buffer growth per example with the formula's (saved +
    transient activations). A sanity check of the formula's terms, not a TPU measurement: float32
    compute by default, since XLA:CPU has no native bf16 matmul and adds f32 upcasts in bf16;
    measured here, per example XLA grows by 233 MiB vs the formula's 257 MiB at batch 4-16 (f32);
    XLA:CPU schedules differently at larger batches. The batch-independent part of XLA's temp
    (weight casts, layout copies) is backend-specific and printed as is. ~30 s of compilation."""
    from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
    from slm_jax.trainer import Trainer

    c = paper_config(dtype)
    c = dataclasses.replace(c, speech_encoder=dataclasses.replace(c.speech_encoder, num_layers=1),
                            llm=dataclasses.replace(c.llm, num_encoder_layers=llm_layers,
                                                    num_decoder_layers=llm_layers, vocab_size=32128))
    model = SLMTaskModel(c)
    part = Partitioner(make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]))
    trainer = Trainer(model.loss_fn, make_optimizer("adafactor"), part, model.abstract_params(), ("adapter/.*",))
    state = trainer.abstract_state()
    frozen = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainer.abstract_frozen)
    temps, formula = {}, {}
    for b in batches:
        f, t = shapes.frames, shapes.target_len
        batch = dict(features=jax.ShapeDtypeStruct((b, f, c.speech_encoder.input_dim), jnp.float32),
                     feature_mask=jax.ShapeDtypeStruct((b, f), jnp.int32),
                     instruction_tokens=jax.ShapeDtypeStruct((b, shapes.instruction_len), jnp.int32),
                     decoder_input_tokens=jax.ShapeDtypeStruct((b, t), jnp.int32),
                     decoder_target_tokens=jax.ShapeDtypeStruct((b, t), jnp.int32))
        compiled = trainer.train_step.lower(state, frozen, batch, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
        temps[b] = compiled.memory_analysis().temp_size_in_bytes
        acts = activation_bytes(c, b, shapes, 1)
        formula[b] = sum(acts["saved"].values()) + max(acts["transient"].values())
    b0, b1 = batches
    xla_slope = (temps[b1] - temps[b0]) / (b1 - b0)
    formula_slope = (formula[b1] - formula[b0]) / (b1 - b0)
    print(f"\n== XLA check ({jax.devices()[0].platform}, reduced paper model: {llm_layers}+{llm_layers} LLM layers,"
          f" 1 Conformer layer, {shapes.frames} frames, {shapes.target_len} target tokens)")
    print(f"   activation bytes per example: XLA {xla_slope / 2 ** 20:.1f} MiB, formula "
          f"{formula_slope / 2 ** 20:.1f} MiB (ratio formula/XLA {formula_slope / xla_slope:.2f})")
    print(f"   batch-independent XLA temp: {(temps[b0] - b0 * xla_slope) / GiB:.2f} GiB "
          "(weight casts / copies; backend-specific)")
    return dict(xla_per_example=xla_slope, formula_per_example=formula_slope, temps=temps)


# ----------------------------------------------------------------------------- printing

def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= 0.1 * GiB else f"{b / 2 ** 20:.1f} MiB"


def print_slice(config: SLMConfig, slice_spec: SliceSpec, optimizers: Sequence[str], fsdps: Sequence[bool],
                boxed: Any, global_batch: int, shapes: Shapes, usable: float) -> list[Estimate]:
    cols = [(o, f) for f in fsdps for o in optimizers]
    ests = [estimate(config, slice_spec, optimizer=o, fsdp=f, global_batch=global_batch, shapes=shapes,
                     usable_fraction=usable, boxed=boxed) for o, f in cols]
    e0 = ests[0]
    L = e0.lengths
    print(f"\n== {slice_spec.name}: {slice_spec.chips} chips x {slice_spec.hbm_gib:g} GiB HBM, "
          f"mesh data={slice_spec.data}"
          f" x model={slice_spec.model}; global batch {global_batch} -> {e0.batch_per_device} per device")
    print(f"   speech {L['frames']} frames -> {L['speech_encoder']} encoder frames -> {L['adapter']} adapter frames;"
          f" LLM encoder {L['llm_encoder']} positions, decoder {L['llm_decoder']} tokens")
    width = 46
    header = f"{'per device':<{width}}" + "".join(f"{o + ('+fsdp' if f else ''):>16}" for o, f in cols)
    print(header)
    print("-" * len(header))
    for name in e0.rows:
        print(f"{name:<{width}}" + "".join(f"{_gib(e.rows[name]):>16}" for e in ests))
    print(f"{'total':<{width}}" + "".join(f"{_gib(e.total):>16}" for e in ests))
    print(f"{f'fits in {usable:.0%} of {slice_spec.hbm_gib:g} GiB (formula)?':<{width}}"
          + "".join(f"{'yes' if e.fits else 'NO (+' + format((e.total - e.usable_bytes) / GiB, '.1f') + ' GiB)':>16}"
                    for e in ests))
    fits = [max_batch_that_fits(config, e, shapes) for e in ests]
    print(f"{'max per-device batch that fits':<{width}}" + "".join(f"{b:>16}" for b in fits))
    print(f"{'not summed:':<{width}}")
    for name in e0.notes:
        print(f"{'  ' + name:<{width}}" + "".join(f"{_gib(e.notes[name]):>16}" for e in ests))
    for e in ests:
        if not e.fits:
            print(f"  !! {slice_spec.name} {e.optimizer}{'+fsdp' if e.fsdp else ''}: {e.total / GiB:.1f} GiB "
                  "does not fit "
                  f"{e.usable_bytes / GiB:.1f} GiB usable")
    return ests


def main(argv: Sequence[str] | None = None) -> dict[str, list[Estimate]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", default="v4-128,v5e-256", help=f"comma-separated, from {sorted(SLICES)}")
    p.add_argument("--custom", action="append", default=[], help="NAME:CHIPS:HBM_GIB:DATAxMODEL (repeatable)")
    p.add_argument("--optimizers", default="adafactor,adamw")
    p.add_argument("--fsdp", default="both", choices=("both", "on", "off"))
    p.add_argument("--global_batch", type=int, default=256)
    p.add_argument("--audio_seconds", type=float, default=30.0)
    p.add_argument("--instruction_len", type=int, default=64)
    p.add_argument("--target_len", type=int, default=128)
    p.add_argument("--usable", type=float, default=0.9, help="fraction of HBM usable by buffers (XLA reserves some)")
    p.add_argument("--xla_check", action="store_true",
                   help="also compare the activation formula with XLA:CPU on a reduced model (~30 s)")
    args = p.parse_args(argv)
    slices = [SLICES[s] for s in args.slices.split(",") if s] + [SliceSpec.parse(c) for c in args.custom]
    fsdps = {"both": [False, True], "on": [True], "off": [False]}[args.fsdp]
    shapes = Shapes(int(args.audio_seconds * FRAMES_PER_SECOND), args.instruction_len, args.target_len)
    config = paper_config()
    boxed = abstract_boxed(config)
    counts: dict[str, int] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(boxed, is_leaf=_is_box):
        counts[path[0].key] = counts.get(path[0].key, 0) + int(np.prod(x.value.shape))
    total = sum(counts.values())
    print("paper SLM (configs.paper_slm(), bf16 compute, f32 params), adapter-only training: "
          + ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in counts.items())
          + f"; trainable {counts.get('adapter', 0) / total:.2%} of {total / 1e9:.2f}B")
    print("NOTE: the parameter / optimizer / batch rows agree with XLA; the activation rows do not "
          "(XLA needs far more): for a fit verdict run benchmarks/tpu_compile.py (see this file's docstring)")
    out = {}
    for s in slices:
        out[s.name] = print_slice(config, s, args.optimizers.split(","), fsdps, boxed, args.global_batch, shapes,
                                  args.usable)
    if args.xla_check:
        xla_check()
    return out


if __name__ == "__main__":
    main()
