"""The one entry point:  python -m slm_jax.main --gin_file=FILE [--gin_file=...] [--gin.BINDING=VALUE ...]

Modes (`run.mode`): train, eval, infer. Everything a user tunes is a gin binding, e.g.
    --gin.run.mode="'eval'"  --gin.train.train_steps=200  --gin.DecodeConfig.method="'beam'"
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m slm_jax.main`: run the module as imported under its package name, so gin
    # registers each configurable once (not also as __main__.*).
    from slm_jax.main import main as _entry
    _entry()
    sys.exit(0)

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np

from slm_jax import configs  # noqa: F401  (registers gin configurables)
from slm_jax.checkpoints.manager import TrainCheckpointer, state_fingerprint
from slm_jax.checkpoints.params_io import load_foundation, save_params
from slm_jax.data import get_batches, pad_rows
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.progress import MetricsWriter, Progress
from slm_jax.task_model import DecodeConfig, SLMTaskModel
from slm_jax.trainer import Trainer, make_optimizer, make_schedule, merge_params

log = logging.getLogger("slm_jax")


# ----------------------------------------------------------------------------- set-up shared by modes

@dataclasses.dataclass
class Setup:
    model: SLMTaskModel
    partitioner: Partitioner
    trainer: Trainer
    trainable: Any
    frozen: Any
    checkpointer: TrainCheckpointer


@gin.configurable
def setup(run_dir: str, model: SLMTaskModel = gin.REQUIRED, *, trainable_patterns: Sequence[str] = ("adapter/.*",),
          mesh: MeshConfig = MeshConfig(), train_steps: int = 1000, accum_steps: int = 1, seed: int = 0,
          speech_encoder_checkpoint: str | None = None, llm_checkpoint: str | None = None,
          save_every: int = 1000, keep: int = 3, async_save: bool = True) -> Setup:
    """Model, mesh, trainer and checkpointer; params initialised (foundations loaded if given)."""
    partitioner = Partitioner(make_mesh(mesh), fsdp=mesh.fsdp)
    boxed = model.abstract_params()
    schedule = make_schedule(total_steps=train_steps)
    trainer = Trainer(model.loss_fn, make_optimizer(schedule=schedule), partitioner, boxed,
                      trainable_patterns, accum_steps=accum_steps, schedule=schedule)
    import flax.linen as nn
    shardings = partitioner.params_shardings(boxed)
    abstract = nn.meta.unbox(boxed)
    loaded = {kind: path for kind, path in (("speech_encoder", speech_encoder_checkpoint), ("llm", llm_checkpoint))
              if path}
    for kind in loaded:
        if kind not in abstract:
            raise ValueError(f"setup: {kind}_checkpoint given but the model has no {kind!r} subtree")
    # Initialise only the subtrees no checkpoint provides: the compiled init then holds no random
    # initialisers of the foundations (XLA drops what the outputs do not need), which made up
    # most of its compile time; the subtrees it does return get the same values as a full init.
    fresh = [k for k in abstract if k not in loaded]
    params = jax.jit(lambda r: {k: v for k, v in nn.meta.unbox(model.init_boxed(r)).items() if k in fresh},
                     out_shardings={k: shardings[k] for k in fresh})(jax.random.PRNGKey(seed))
    for kind, path in loaded.items():
        params[kind] = jax.device_put(load_foundation(path, kind, abstract[kind]), shardings[kind])
    params = {k: params[k] for k in abstract}      # the model's own subtree order
    trainable, frozen = trainer.split(params)
    fingerprint = state_fingerprint(trainer.abstract_trainable, model=model.config,
                                    trainable_patterns=list(trainable_patterns))
    ckpt = TrainCheckpointer(os.path.join(run_dir, "checkpoints"), fingerprint, save_every=save_every,
                             keep=keep, async_save=async_save)
    return Setup(model, partitioner, trainer, trainable, frozen, ckpt)


# ----------------------------------------------------------------------------- train

@gin.configurable
def train(run_dir: str, *, train_task: str = gin.REQUIRED, feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = 8, train_steps: int = 1000, log_every: int = 10, eval_every: int = 0,
          seed: int = 0, shuffle: bool = True, stop_after: int | None = None,
          input_fn: Callable[..., Iterator[dict]] = get_batches, export_to: str | None = None,
          export_subtree: str | None = None) -> dict:
    """Train the trainable subtree; resumes from the latest checkpoint in run_dir.

    input_fn(task, split, feature_lengths=, batch_size=, seed=, shuffle=, start_batch=,
    shard_index=, num_shards=) yields numpy batches (default: SeqIO via get_batches).
    `stop_after` ends the process early at that step (a simulated preemption; the run resumes).
    `export_to`: when training completes, write the (merged) params, or their `export_subtree`,
    to this msgpack file: how a pretrained foundation is handed to the SLM stage."""
    s = setup(run_dir, train_steps=train_steps, seed=seed)
    state = s.trainer.init_state(s.trainable)
    start = 0
    if s.checkpointer.latest_step() is not None:
        state = s.checkpointer.restore(s.trainer.abstract_state())
        start = int(state.step)
        print(f"[train] resumed from step {start} ({s.checkpointer.directory})", flush=True)
    writer = MetricsWriter(run_dir, "train")
    progress = Progress(train_steps, start)
    s.checkpointer.install_signal_handlers()
    batches = input_fn(train_task, "train", feature_lengths=feature_lengths, batch_size=batch_size,
                          seed=seed, shuffle=shuffle, start_batch=start, shard_index=jax.process_index(),
                          num_shards=jax.process_count())
    rng = jax.random.PRNGKey(seed + 1)
    pending: list[dict] = []
    last: dict = {}
    step = start
    try:
        while step < train_steps:
            batch = s.partitioner.shard_batch(next(batches))
            state, metrics = s.trainer.train_step(state, s.frozen, batch, rng)
            step += 1
            pending.append(metrics)
            if step % log_every == 0 or step == train_steps:
                host = jax.device_get(pending)
                last = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                pending = []
                writer.write(step, last)
                progress.report(step, {k: last[k] for k in ("loss", "accuracy", "learning_rate") if k in last})
            s.checkpointer.maybe_save(step, state)
            if eval_every and step % eval_every == 0 and step < train_steps:
                evaluate(run_dir, setup_=s, trainable=state.params, step=step)
            if s.checkpointer.preempted or (stop_after is not None and step >= stop_after):
                print(f"[train] stopping at step {step}; checkpoint saved", flush=True)
                break
    finally:
        s.checkpointer.maybe_save(step, state, force=True)
        s.checkpointer.close()
        writer.close()
    if s.checkpointer.preempted:
        # a preempted run ends the process (status 128 + signal, as the signal would have), also
        # when called from a pipeline such as the demo: its next stage must not start
        print(f"[train] preempted at step {step}: checkpoint saved; run the same command again to resume",
              flush=True)
        raise SystemExit(128 + int(s.checkpointer.preempted))
    if export_to and step >= train_steps:
        params = merge_params(state.params, s.frozen)
        save_params(export_to, params[export_subtree] if export_subtree else params)
        print(f"[train] exported {export_subtree or 'params'} to {export_to}", flush=True)
    return {"step": step, **last}


# ----------------------------------------------------------------------------- eval

def _text(vocab, ids: np.ndarray, eos_id: int) -> str:
    ids = [int(t) for t in ids]
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    return vocab.decode([t for t in ids if t > 0])


_EVAL_DATA: "collections.OrderedDict[tuple, tuple[Any, list]]" = collections.OrderedDict()
_EVAL_DATA_ENTRIES = 64


def _eval_batches(task: Any, name: str, split: str, feature_lengths: Mapping[str, int], batch_size: int,
                  max_examples: int | None) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a task's split in file order. With max_examples (a bounded sample: the
    split's first N examples, with or without length buckets), the
    batches are also kept in memory for this process, so evaluating several models on the same
    data (the demo's adapter depths) builds the seqio pipeline once. The key holds everything
    that shapes the batches: the arguments, every gin binding of get_batches, and the registered
    task object itself (re-registering a name gives a new entry; the entry holds the task, so
    its id is not reused while the entry lives)."""
    batches = lambda: get_batches(name, split, feature_lengths=feature_lengths, batch_size=batch_size,  # noqa: E731
                                  shuffle=False, num_epochs=1, drop_remainder=False, max_examples=max_examples)
    if not max_examples:
        yield from batches()
        return
    key = (name, id(task), split, tuple(sorted(feature_lengths.items())), batch_size, max_examples,
           repr(sorted(gin.get_bindings("get_batches").items())))
    hit = _EVAL_DATA.get(key)
    if hit is not None:
        _EVAL_DATA.move_to_end(key)
        yield from hit[1]
        return
    kept = list(batches())      # at most max_examples rows (get_batches takes them)
    _EVAL_DATA[key] = (task, kept)
    while len(_EVAL_DATA) > _EVAL_DATA_ENTRIES:
        _EVAL_DATA.popitem(last=False)
    yield from kept


@gin.configurable
def evaluate(run_dir: str, *, eval_tasks: Sequence[str] = gin.REQUIRED, split: str = "validation",
             feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = 8,
             decode: DecodeConfig | None = None, max_examples: int | None = None, setup_: Setup | None = None,
             trainable: Any = None, step: int | None = None, tag: str = "") -> dict[str, dict[str, float]]:
    """Decode each task's `split` and score it with the task's metric functions. Writes
    predictions (JSONL) and metrics (JSON, TensorBoard) under run_dir/eval/."""
    import seqio
    decode = decode or DecodeConfig()  # built here, so --gin.DecodeConfig.* bindings apply
    s = setup_ or setup(run_dir)
    if trainable is None:
        trainable = s.trainable
        if s.checkpointer.latest_step() is not None:
            state = s.checkpointer.restore(s.trainer.abstract_state())
            trainable, step = state.params, int(state.step)
    step = step or 0
    params = merge_params(trainable, s.frozen)
    eos = s.model.eos_id
    out_dir = os.path.join(run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    writer = MetricsWriter(run_dir, f"eval{tag}")
    results = {}
    for name in eval_tasks:
        task = seqio.get_mixture_or_task(name)
        vocab = task.output_features["targets"].vocabulary
        targets, preds = [], []
        t0 = time.time()
        for batch in _eval_batches(task, name, split, feature_lengths, batch_size, max_examples):
            n = batch["features"].shape[0]
            tokens, _ = s.model.predict_batch(params, s.partitioner.shard_batch(pad_rows(batch, batch_size)), decode)
            tokens = np.asarray(jax.device_get(tokens))[:n]
            preds += [_text(vocab, t, eos) for t in tokens]
            targets += [_text(vocab, t, eos) for t in batch["decoder_target_tokens"]]
        if not preds:
            raise ValueError(f"eval task {name!r} split {split!r} produced no examples")
        scores: dict[str, float] = {}
        for fn in task.metric_fns:
            scores.update({k: float(v) for k, v in fn(targets, preds).items()})
        scores["num_examples"] = len(preds)
        scores["examples_per_s"] = len(preds) / (time.time() - t0)
        results[name] = scores
        with open(os.path.join(out_dir, f"{name}{tag}_step{step}.jsonl"), "w") as f:
            for t, p in zip(targets, preds):
                f.write(json.dumps({"target": t, "prediction": p}, ensure_ascii=False) + "\n")
        writer.write(step, {f"{name}/{k}": v for k, v in scores.items()})
        print(f"[eval] step {step} {name}: " + " ".join(f"{k}={v:.4g}" for k, v in scores.items()), flush=True)
    with open(os.path.join(out_dir, f"metrics{tag}_step{step}.json"), "w") as f:
        json.dump(results, f, indent=2)
    writer.close()
    if setup_ is None:
        s.checkpointer.close()
    return results


# ----------------------------------------------------------------------------- infer

@gin.configurable
def infer(run_dir: str, *, audio_files: Sequence[str] = gin.REQUIRED, instruction: str = "",
          vocabulary: Any = gin.REQUIRED, feature_kind: str = "log_mel", n_mels: int = 80,
          decode: DecodeConfig | None = None) -> list[str]:
    """Run the trained SLM on audio files with a text instruction; prints and returns outputs."""
    from slm_jax.features import compute_features, load_audio
    decode = decode or DecodeConfig()
    s = setup(run_dir)
    trainable = s.trainable
    if s.checkpointer.latest_step() is not None:
        trainable = s.checkpointer.restore(s.trainer.abstract_state()).params
    params = merge_params(trainable, s.frozen)
    feats = [compute_features(load_audio(p), 16000, kind=feature_kind, n_mels=n_mels, source=p) for p in audio_files]
    frames = max(f.shape[0] for f in feats)
    batch = {
        "features": np.stack([np.pad(f, ((0, frames - f.shape[0]), (0, 0))) for f in feats]),
        "feature_mask": np.stack([(np.arange(frames) < f.shape[0]).astype(np.int32) for f in feats]),
        "instruction_tokens": np.tile(np.asarray(vocabulary.encode(instruction) + [0], np.int32), (len(feats), 1)),
    }
    tokens, _ = s.model.predict_batch(params, batch, decode)
    outs = [_text(vocabulary, t, s.model.eos_id) for t in np.asarray(tokens)]
    for p, o in zip(audio_files, outs):
        print(f"{p}\t{o}", flush=True)
    s.checkpointer.close()
    return outs


# ----------------------------------------------------------------------------- CLI

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@gin.configurable
def run(mode: str = "train", run_dir: str = gin.REQUIRED) -> Any:
    """Dispatch to a mode."""
    from slm_jax.demo import run_demo
    modes = {"train": train, "eval": evaluate, "infer": infer, "demo": run_demo}
    if mode not in modes:
        raise ValueError(f"run.mode must be one of {sorted(modes)}, got {mode!r}")
    return modes[mode](run_dir)


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """--gin_file=F (repeatable) and --gin.NAME=VALUE bindings; anything else is an error."""
    files, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            bindings.append(arg[len("--gin."):])
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            raise SystemExit(f"unknown argument {arg!r}; use --gin_file=FILE and --gin.NAME=VALUE")
    return files, bindings


def init_distributed() -> None:
    """Start jax.distributed when this is one of several processes, before any device use:
    explicit SLM_COORDINATOR_ADDRESS / SLM_NUM_PROCESSES / SLM_PROCESS_ID (local or custom
    launchers), or a multi-task SLURM job / multi-host TPU slice (auto-detected by JAX)."""
    env = os.environ
    if env.get("SLM_COORDINATOR_ADDRESS"):
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env["SLM_COORDINATOR_ADDRESS"], int(env["SLM_NUM_PROCESSES"]),
                                   int(env["SLM_PROCESS_ID"]))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def enable_compilation_cache() -> str | None:
    """Keep compiled XLA programs on disk (JAX's persistent compilation cache), so a stage, eval
    or re-run that builds the same program again loads it instead of compiling (seconds per
    program on CPU). Directory: $JAX_COMPILATION_CACHE_DIR when set (JAX reads it itself), else
    $SLM_JAX_COMPILATION_CACHE, else ~/.cache/slm_jax/xla; SLM_JAX_COMPILATION_CACHE=off
    disables it. Returns the directory in use, or None."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = os.environ.get("SLM_JAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "slm_jax", "xla"))
    if path.lower() in ("", "off", "0", "none"):
        return None
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
    return path


def parse_gin(argv: Sequence[str] | None) -> None:
    """Parse `--gin_file=F ... --gin.NAME=VALUE ...` (argv, or sys.argv[1:] when None) into a
    fresh gin config; gin includes also resolve against the repository root. Also turns on the
    persistent compilation cache (`enable_compilation_cache`) for the run."""
    enable_compilation_cache()
    files, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
    for f in files:
        if not os.path.isfile(f):
            raise SystemExit(f"gin file not found: {f}")
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)


def main(argv: Sequence[str] | None = None) -> Any:
    if argv is None:
        init_distributed()
    parse_gin(argv)
    logging.basicConfig(level=logging.WARNING)
    return run()

