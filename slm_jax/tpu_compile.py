"""Ahead-of-time compilation of the real train, eval and decode steps for a TPU topology, on a
CPU host: does a config fit a pod slice, and what would a step cost there.

With `libtpu` installed, `jax.experimental.topologies.get_topology_desc` gives compile-only TPU
devices for any slice (e.g. "v5e:16x16" = 256 TPU v5 lite) without a TPU. `compile_steps` builds
the mesh over them (`MeshConfig`, as a run does), the same `Trainer` (train and eval steps,
optimizer, shardings from the one rules table) and the same greedy decoding as a run, gives
them abstract parameters and batches (`jax.ShapeDtypeStruct`: nothing is allocated), and
compiles each with XLA's TPU compiler. Per step it reports:

- memory: XLA's own `memory_analysis()` per device (arguments, outputs, aliased, temp); the
  TPU compiler refuses a program that does not fit the chip's HBM, and that refusal (with its
  "exceeded by" figure) is reported as such;
- flops and bytes per device, an *estimate*: XLA's `cost_analysis()` counts the body of a loop
  once (so it misses all but one layer of a scanned stack, and all but one decoding step), so
  they are counted from the step's jaxpr (`jaxpr_costs`): matmul / convolution FLOPs with loop
  bodies times their trip counts, divided over the devices; bytes are the matmul operands and
  outputs and reduction inputs (elementwise work is assumed fused into them), weights divided
  over the "model" axis only (every data replica reads them), activations over every device;
- a roofline step time from those at the chip's published peaks (slm_jax.chips) and the MFU it
  implies: an estimate that ignores communication, not a measurement.

Frozen weights can be stored in bf16 (`CompileConfig.frozen_dtype`); the steps cast weights to
the compute dtype anyway.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
from jax.sharding import NamedSharding, PartitionSpec as P

from slm_jax import chips
from slm_jax.models import layers
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.task_model import DecodeConfig, TaskModel
from slm_jax.trainer import Trainer, make_optimizer, make_schedule, merge_params

FRAMES_PER_SECOND = 100     # 10 ms log-mel hop
STEPS = ("train", "eval", "decode")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """What to compile, for which slice, at which shapes.

    topology: a slice ("v5e-256") or topology ("v5e:16x16") name (slm_jax.chips).
    num_slices: slices joined over DCN (multislice); the mesh's "data" axis spans them.
    global_batch: examples per train / eval step (all devices together).
    audio_seconds: padded audio length; frames = audio_seconds x feature_rate.
    feature_rate: feature frames per second (100: 10 ms log-mel hop; w2v-BERT 2.0 stacks 2: 50).
    instruction_len / target_len: text lengths of a batch; decode_len: decoded tokens (greedy).
    decode_batch: examples per decode step (None: global_batch).
    frozen_dtype: storage dtype of the frozen weights ("bfloat16", or None: as initialised).
    steps: which of train / eval / decode to compile.
    serialize_dir: if set, each compiled executable is written there (jax serialize_executable)."""
    topology: str = "v5e:2x2"
    num_slices: int = 1
    global_batch: int = 8
    audio_seconds: float = 30.0
    feature_rate: float = FRAMES_PER_SECOND
    instruction_len: int = 64
    target_len: int = 128
    decode_len: int = 128
    decode_batch: int | None = None
    frozen_dtype: str | None = "bfloat16"
    steps: Sequence[str] = STEPS
    serialize_dir: str | None = None

    def __post_init__(self):
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise ValueError(f"CompileConfig.steps: unknown {bad}, expected some of {STEPS}")

    @property
    def frames(self) -> int:
        return int(round(self.audio_seconds * self.feature_rate))


def tpu_devices(topology: str, num_slices: int = 1) -> list:
    """Compile-only TPU devices of a slice (needs libtpu; the default backend stays as it is).
    v4 is taken as megacore (one device per chip), as v4 runs by default."""
    from jax.experimental import topologies
    # compile-only: several processes (tests, parallel compiles) may hold libtpu at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    name = chips.topology_name(topology)
    kwargs: dict[str, Any] = {"num_slices": num_slices} if num_slices > 1 else {}
    if name.startswith("v4:"):
        kwargs["chip_config_name"] = "megacore"
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)


# ----------------------------------------------------------------------------- costs from the jaxpr

@dataclasses.dataclass
class Costs:
    flops: float = 0.0          # per device
    bytes: float = 0.0          # per device

    def __iadd__(self, other: "Costs") -> "Costs":
        self.flops += other.flops
        self.bytes += other.bytes
        return self


def _size(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64))


def _nbytes(aval) -> int:
    return _size(aval) * jnp.dtype(aval.dtype).itemsize


def _sub_jaxprs(params: Mapping[str, Any]):
    for value in params.values():
        if isinstance(value, ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, Jaxpr):
            yield value


def jaxpr_costs(closed: ClosedJaxpr, weight_inputs: Sequence[bool], n_devices: int,
                model_shards: int, while_trips: int = 1) -> Costs:
    """Per-device matmul FLOPs and bytes of a step's jaxpr (see the module docstring).

    weight_inputs: per flat input, whether it is a parameter (or optimizer state): values
    computed only from such inputs are weights, read `n_devices / model_shards` times over.
    Scan bodies count `length` times, while-loop bodies `while_trips` times (decoding's
    max length: an upper bound, the loop stops at EOS), cond the costlier branch."""
    def walk(jaxpr, flags: list, mult: float) -> Costs:
        weight = {v: f for v, f in zip(jaxpr.invars, flags)}
        for v in jaxpr.constvars:
            weight[v] = True
        c = Costs()

        def is_w(v) -> bool:
            return True if isinstance(v, Literal) else weight.get(v, False)

        def share(v) -> float:
            return _nbytes(v.aval) / (model_shards if is_w(v) else n_devices)

        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [v for v in eqn.invars]
            in_flags = [is_w(v) for v in ins]
            if name == "dot_general":
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                lhs, rhs = ins[0].aval, ins[1].aval
                free = [d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb]
                c.flops += mult * 2.0 * _size(lhs) * float(np.prod(free, dtype=np.float64)) / n_devices
                c.bytes += mult * (share(ins[0]) + share(ins[1]) + _nbytes(eqn.outvars[0].aval) / n_devices)
            elif name == "conv_general_dilated":
                rhs, out = ins[1].aval, eqn.outvars[0].aval
                spec = eqn.params["dimension_numbers"].rhs_spec
                per_out = rhs.shape[spec[1]] * float(np.prod([rhs.shape[i] for i in spec[2:]], dtype=np.float64))
                c.flops += mult * 2.0 * _size(out) * per_out / n_devices
                c.bytes += mult * (share(ins[0]) + share(ins[1]) + _nbytes(out) / n_devices)
            elif name.startswith("reduce_") or name in ("argmax", "argmin"):
                c.bytes += mult * share(ins[0])
            elif name == "scan":
                body = eqn.params["jaxpr"].jaxpr
                c += walk(body, in_flags, mult * eqn.params["length"])
            elif name == "while":
                nc, nb = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
                c += walk(eqn.params["body_jaxpr"].jaxpr, in_flags[nc:nc + nb] + in_flags[nc + nb:],
                          mult * while_trips)
            elif name == "cond":
                branches = [walk(b.jaxpr, in_flags[1:], mult) for b in eqn.params["branches"]]
                c += max(branches, key=lambda b: b.flops)
            else:
                for sub in _sub_jaxprs(eqn.params):
                    if len(sub.invars) == len(ins):
                        c += walk(sub, in_flags, mult)
            # weights: computed from parameters only (literals alone make constants, not weights)
            named = [f for v, f in zip(ins, in_flags) if not isinstance(v, Literal)]
            out_w = bool(named) and all(named)
            for v in eqn.outvars:
                weight[v] = out_w
        return c

    return walk(closed.jaxpr, list(weight_inputs), 1.0)


# ----------------------------------------------------------------------------- the steps

@dataclasses.dataclass
class StepReport:
    """One compiled step, per device. Bytes from XLA's memory_analysis; flops / bytes_accessed
    from `jaxpr_costs` (estimates); xla_flops / xla_bytes as XLA's cost_analysis says (loop
    bodies once)."""
    step: str
    compile_seconds: float           # wall clock: lowering + XLA compilation
    compile_cpu_seconds: float = 0.0  # this process's CPU time over the same span (all threads)
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    flops: float = 0.0
    bytes_accessed: float = 0.0
    xla_flops: float = 0.0
    xla_bytes: float = 0.0
    oom: str | None = None           # the TPU compiler's out-of-memory message, if it refused
    oom_over_bytes: float | None = None
    compiled: Any = dataclasses.field(default=None, repr=False, compare=False)   # jax Compiled

    @property
    def total_bytes(self) -> int:
        """Peak HBM of the program: arguments + outputs - aliased (donated) + temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass
class Report:
    topology: str
    num_slices: int
    chip: chips.ChipSpec
    n_devices: int
    mesh_shape: dict
    config: CompileConfig
    steps: list[StepReport]
    param_counts: dict

    def fits(self) -> bool:
        return all(s.oom is None and s.total_bytes <= self.chip.hbm_bytes for s in self.steps)


def _sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def abstract_batch(model: TaskModel, cfg: CompileConfig, partitioner: Partitioner, batch_size: int,
                   with_targets: bool = True) -> dict:
    """ShapeDtypeStructs of one sharded SLM batch (the keys the data pipeline yields)."""
    enc = model.config.speech_encoder
    channels = getattr(enc, "input_dim", None) or enc.num_mel_bins
    sh = lambda nd: partitioner.batch_sharding(nd)  # noqa: E731
    batch = dict(features=_sds((batch_size, cfg.frames, channels), jnp.float32, sh(3)),
                 feature_mask=_sds((batch_size, cfg.frames), jnp.int32, sh(2)),
                 instruction_tokens=_sds((batch_size, cfg.instruction_len), jnp.int32, sh(2)))
    if with_targets:
        for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
            batch[k] = _sds((batch_size, cfg.target_len), jnp.int32, sh(2))
    return batch


_OOM_BY = re.compile(r"[Ee]xceeded hbm capacity by ([0-9.]+)([KMGT]?)")
_OOM_OF = re.compile(r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available HBM \(([0-9.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def oom_excess(message: str) -> float | None:
    """Bytes by which a program exceeds HBM, from the TPU compiler's RESOURCE_EXHAUSTED message
    (its two phrasings), or None."""
    if m := _OOM_BY.search(message):
        return float(m.group(1)) * _UNITS[m.group(2)]
    if m := _OOM_OF.search(message):
        return float(m.group(1)) * _UNITS[m.group(2)] - float(m.group(3)) * _UNITS[m.group(4)]
    return None


def _compile(name: str, jitted, args: tuple, n_weight_args: int, n_devices: int, model_shards: int,
             while_trips: int, serialize_dir: str | None) -> StepReport:
    t0, c0 = time.perf_counter(), time.process_time()
    with layers.target_backend("tpu"):
        lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:          # the TPU compiler's RESOURCE_EXHAUSTED: the program does not fit
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "memory" not in msg.lower():
            raise
        report = StepReport(name, time.perf_counter() - t0, time.process_time() - c0,
                            oom=msg.strip().splitlines()[0][:400], oom_over_bytes=oom_excess(msg))
        compiled = None
    else:
        report = StepReport(name, time.perf_counter() - t0, time.process_time() - c0, compiled=compiled)
        mem = compiled.memory_analysis()
        report.argument_bytes, report.output_bytes = mem.argument_size_in_bytes, mem.output_size_in_bytes
        report.alias_bytes, report.temp_bytes = mem.alias_size_in_bytes, mem.temp_size_in_bytes
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        report.xla_flops, report.xla_bytes = float(cost.get("flops", 0)), float(cost.get("bytes accessed", 0))
    leaves = [jax.tree_util.tree_leaves(a) for a in args]
    flags = [i < n_weight_args for i, group in enumerate(leaves) for _ in group]
    with layers.target_backend("tpu"):
        closed = jax.make_jaxpr(jitted)(*args)
    costs = jaxpr_costs(closed, flags, n_devices, model_shards, while_trips)
    report.flops, report.bytes_accessed = costs.flops, costs.bytes
    if compiled is not None and serialize_dir:
        from jax.experimental import serialize_executable
        import pickle
        os.makedirs(serialize_dir, exist_ok=True)
        with open(os.path.join(serialize_dir, f"{name}.pkl"), "wb") as f:
            pickle.dump(serialize_executable.serialize(compiled), f)
    return report


def _with_dtype(tree, shardings, dtype):
    def one(s, sh):
        floating = jnp.issubdtype(s.dtype, jnp.floating)
        return _sds(s.shape, dtype if (dtype is not None and floating) else s.dtype, sh)
    return jax.tree_util.tree_map(one, tree, shardings)


def compile_steps(model: TaskModel, cfg: CompileConfig, *, mesh: MeshConfig | None = None,
                  trainable_patterns: Sequence[str] = ("adapter/.*",), accum_steps: int = 1,
                  train_steps: int = 1000, devices: Sequence[Any] | None = None,
                  log: Callable[[str], None] = print) -> Report:
    """Compile `cfg.steps` of `model` (an SLMTaskModel) for cfg.topology; see the module docstring.
    mesh / trainable_patterns / accum_steps / train_steps: the run's (RunConfig) settings."""
    devices = list(devices) if devices is not None else tpu_devices(cfg.topology, cfg.num_slices)
    chip = chips.chip_for(devices[0].device_kind)
    mesh_cfg = mesh or MeshConfig()
    partitioner = Partitioner(make_mesh(mesh_cfg, devices), fsdp=mesh_cfg.fsdp)
    mesh_shape = dict(partitioner.mesh.shape)
    n, m = len(devices), mesh_shape["model"]
    partitioner.check_batch_size(cfg.global_batch, "CompileConfig.global_batch")
    boxed = model.abstract_params()
    schedule = make_schedule(total_steps=train_steps)
    trainer = Trainer(model.loss_fn, make_optimizer(schedule=schedule), partitioner, boxed, trainable_patterns,
                      accum_steps=accum_steps, schedule=schedule)
    dtype = jnp.dtype(cfg.frozen_dtype) if cfg.frozen_dtype else None
    frozen = _with_dtype(trainer.abstract_frozen, trainer.frozen_shardings, dtype)
    trainable = _with_dtype(trainer.abstract_trainable, trainer.trainable_shardings, None)
    count = lambda t: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
    counts = {"trainable": count(trainable), "frozen": count(frozen)}
    log(f"[tpu_compile] {cfg.topology} x{cfg.num_slices}: {n} x {devices[0].device_kind}, mesh {mesh_shape}, "
        f"fsdp={mesh_cfg.fsdp}; params trainable {counts['trainable'] / 1e6:.1f}M, frozen "
        f"{counts['frozen'] / 1e9:.3f}B ({cfg.frozen_dtype or 'as initialised'})")
    reports = []
    rep = partitioner.replicated
    for step in cfg.steps:
        log(f"[tpu_compile] compiling {step} step ...")
        if step == "train":
            args = (trainer.abstract_state(), frozen, abstract_batch(model, cfg, partitioner, cfg.global_batch),
                    _sds((2,), jnp.uint32, rep))
            r = _compile(step, trainer.train_step, args, 2, n, m, 1, cfg.serialize_dir)
        elif step == "eval":
            args = (trainable, frozen, abstract_batch(model, cfg, partitioner, cfg.global_batch))
            r = _compile(step, trainer.eval_step, args, 2, n, m, 1, cfg.serialize_dir)
        else:
            bsz = cfg.decode_batch or cfg.global_batch
            partitioner.check_batch_size(bsz, "CompileConfig.decode_batch")
            decode_cfg = DecodeConfig(method="greedy", max_len=cfg.decode_len)
            params = merge_params(trainable, frozen)
            params_sh = jax.tree_util.tree_map(lambda s: s.sharding, params)
            out_sh = NamedSharding(partitioner.mesh, P("data"))

            def decode(params, batch):
                # predict_batch's two programs (encode, then the decoding loop) as one; the loop's
                # own jit wrapper carries CPU-only XLA options, so its function is called here
                encoded, mask = model.encode_batch(params, batch)
                return type(model).decode_encoded.__wrapped__(model, params, encoded, mask, decode_cfg, None)

            jitted = jax.jit(decode, in_shardings=(params_sh, partitioner.batch_shardings(
                abstract_batch(model, cfg, partitioner, bsz, with_targets=False))), out_shardings=(out_sh, out_sh))
            args = (params, abstract_batch(model, cfg, partitioner, bsz, with_targets=False))
            r = _compile(step, jitted, args, 1, n, m, cfg.decode_len, cfg.serialize_dir)
        log(f"[tpu_compile]   {step}: {r.compile_seconds:.1f} s ({r.compile_cpu_seconds:.0f} CPU s)"
            + (f" (does not fit: {r.oom})" if r.oom else ""))
        reports.append(r)
    return Report(cfg.topology, cfg.num_slices, chip, n, mesh_shape, cfg, reports, counts)


# ----------------------------------------------------------------------------- the table

def _gib(b: float) -> str:
    return f"{b / chips.GiB:.3g}"


def roofline(r: StepReport, chip: chips.ChipSpec) -> tuple[float, float]:
    """(step seconds, MFU) by the roofline: max(compute, HBM) time at the chip's peaks."""
    seconds = max(r.flops / chip.bf16_flops, r.bytes_accessed / chip.hbm_bandwidth)
    return seconds, (r.flops / seconds / chip.bf16_flops if seconds else 0.0)


def format_report(report: Report, title: str = "") -> str:
    """The markdown table of a Report (per device; time and MFU are roofline estimates)."""
    c, chip = report.config, report.chip
    lines = [f"{title + ': ' if title else ''}{report.topology}"
             f"{' x ' + str(report.num_slices) + ' slices' if report.num_slices > 1 else ''}, "
             f"{report.n_devices} x {chip.name} ({chip.hbm_bytes / chips.GiB:g} GiB HBM, "
             f"{chip.bf16_flops / 1e12:g} TFLOP/s bf16, {chip.hbm_bandwidth / 1e9:g} GB/s; ridge "
             f"{chip.ridge_point:.0f} flop/B), mesh data={report.mesh_shape['data']} x "
             f"model={report.mesh_shape['model']}; global batch {c.global_batch} x {c.audio_seconds:g} s audio "
             f"({c.frames} frames), instruction {c.instruction_len}, target {c.target_len} tokens; decode "
             f"{c.decode_batch or c.global_batch} x {c.decode_len} tokens greedy; frozen weights "
             f"{c.frozen_dtype or 'as initialised'}",
             "",
             "| step | args GiB | out GiB | alias GiB | temp GiB | total GiB | fits HBM | GFLOP/dev | "
             "GB/dev | flop/B | roofline ms (est.) | MFU (est.) | compile s (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report.steps:
        t, mfu = roofline(r, chip)
        if r.oom:
            over = f"NO (+{r.oom_over_bytes / chips.GiB:.2f} GiB)" if r.oom_over_bytes else "NO"
            mem = ["-"] * 5 + [over]
        else:
            fits = "yes" if r.total_bytes <= chip.hbm_bytes else \
                f"NO (+{(r.total_bytes - chip.hbm_bytes) / chips.GiB:.2f} GiB)"
            mem = [_gib(r.argument_bytes), _gib(r.output_bytes), _gib(r.alias_bytes), _gib(r.temp_bytes),
                   _gib(r.total_bytes), fits]
        ai = r.flops / r.bytes_accessed if r.bytes_accessed else 0.0
        lines.append("| " + " | ".join([r.step] + mem + [
            f"{r.flops / 1e9:,.4g}", f"{r.bytes_accessed / 1e9:.3g}", f"{ai:.0f}", f"{t * 1e3:,.4g}",
            f"{mfu:.0%}", f"{r.compile_seconds:.0f} ({r.compile_cpu_seconds:.0f})"]) + " |")
    return "\n".join(lines)


def report_dict(report: Report) -> dict:
    """A Report as plain data (for JSON)."""
    out = {"topology": report.topology, "num_slices": report.num_slices, "chip": report.chip.name,
           "devices": report.n_devices, "mesh": report.mesh_shape, "params": report.param_counts,
           "config": {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in dataclasses.asdict(report.config).items()},
           "fits": report.fits(), "steps": []}
    for r in report.steps:
        t, mfu = roofline(r, report.chip)
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "compiled"}
        out["steps"].append({**fields, "total_bytes": r.total_bytes,
                             "roofline_seconds": t, "roofline_mfu": mfu})
    return out
