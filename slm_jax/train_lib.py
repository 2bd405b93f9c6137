"""Set-up and the train loop, as a library: `RunConfig` (what defines a run: model, foundation
checkpoints, seed, steps, mesh, checkpointing) and `TrainConfig` (what the train loop reads)
are built once by an entry point from gin and passed here explicitly. `setup` builds the same
model, mesh and parameters for every mode (train, eval, infer, sweep), so a foundation without a
checkpoint is initialised from `RunConfig.seed` wherever the run is read back."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
import seqio

from slm_jax import cached_features, foundations, gin_utils, run_inputs
from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.checkpoints.manager import TrainCheckpointer
from slm_jax.checkpoints.params_io import load_foundation, save_params
from slm_jax.data import get_batches
from slm_jax.features import FeatureConfig
from slm_jax.models.slm import SLMConfig
from slm_jax.speech_windows import SpeechWindows, check_config
from slm_jax.fingerprint import state_fingerprint
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.progress import MetricsWriter, Progress, truncate_logs
from slm_jax.task_model import TaskModel
from slm_jax.trainer import Trainer, make_optimizer, make_schedule, merge_params

# (trainable params, step) -> None: evaluation during training (see `train`)
Evaluator = Callable[["Setup", Any, int], Any]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run, the same in every mode.

    run_dir: checkpoints, metrics and evaluations go here. model: the task model (SLM, T5, CTC).
    trainable_patterns: regexes over param paths ("adapter/.*"); the rest is frozen.
    mesh: device mesh (built when the RunConfig is, so MeshConfig bindings apply).
    seed: parameter init (of every subtree no checkpoint provides) and the data order.
    train_steps: the schedule's length and where training stops.
    speech_encoder_checkpoint / llm_checkpoint: foundations loaded into those subtrees: a msgpack
      parameter file, or a Hugging Face / CTranslate2 directory, whose own config then defines the
      model part (an SLMConfig part left unbound is built from it; a bound one must agree with it
      on every field it defines; see slm_jax.foundations).
    speech_encoder_overrides / llm_overrides: settings of a checkpoint-defined part that the
      checkpoint does not fix, e.g. {"dtype": jnp.bfloat16}.
    vocabulary: SentencePiece model of every task of the run; None: the LLM directory's
      spiece.model if it has one, else the tasks' own.
    features: front end of every task of the run registered without its own; None: the speech
      encoder's (Whisper log-mel, w2v-BERT fbank, log-mel for our Conformer).
    speech_windows: an SLM's frozen speech path packs consecutive utterances into shared
      Whisper encoder windows (slm_jax.speech_windows): the feature cache and the evaluations'
      frozen encoder do; training from audio with them is refused.
    save_every / keep / async_save: checkpointing."""
    run_dir: str | None = None
    model: TaskModel | None = None
    trainable_patterns: Sequence[str] = ("adapter/.*",)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    seed: int = 0
    train_steps: int = 1000
    accum_steps: int = 1
    speech_encoder_checkpoint: str | None = None
    llm_checkpoint: str | None = None
    speech_encoder_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    llm_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    vocabulary: str | None = None
    features: FeatureConfig | None = None
    save_every: int = 1000
    keep: int = 3
    async_save: bool = True
    speech_windows: SpeechWindows = dataclasses.field(default_factory=SpeechWindows)

    def __post_init__(self):
        gin_utils.require(self, "run_dir", "model")
        config = getattr(self.model, "config", None)
        if isinstance(config, SLMConfig):
            resolved = foundations.resolve_slm(
                config, llm_checkpoint=self.llm_checkpoint, speech_encoder_checkpoint=self.speech_encoder_checkpoint,
                llm_overrides=self.llm_overrides, speech_encoder_overrides=self.speech_encoder_overrides)
            if resolved != config:
                object.__setattr__(self, "model", self.model.with_config(resolved))
            if resolved.complete:
                check_config(self.speech_windows, resolved)
        elif self.speech_windows.on:
            raise ValueError(f"RunConfig.speech_windows packs an SLM's speech; this run's model is a "
                             f"{type(self.model).__name__}")
        elif self.llm_overrides or self.speech_encoder_overrides:
            raise ValueError("RunConfig.llm_overrides / speech_encoder_overrides apply to an SLM's foundations; "
                             f"this run's model is a {type(self.model).__name__}")

    def inputs(self) -> tuple[Any, FeatureConfig | None]:
        """(vocabulary, feature config) of the run's tasks (None: the tasks' own), see
        RunConfig.vocabulary / features."""
        path = foundations.vocabulary_path(self.vocabulary, self.llm_checkpoint)
        config = getattr(self.model, "config", None)
        encoder = config.speech_encoder if isinstance(config, SLMConfig) else None
        return (foundations.vocabulary(path) if path else None), foundations.run_features(encoder, self.features)

    def foundation_ids(self) -> dict:
        """sha256 of each foundation checkpoint (the fingerprint's record of which ones were used)."""
        return {kind: foundations.identity(path) for kind, path in (("speech_encoder", self.speech_encoder_checkpoint),
                                                                    ("llm", self.llm_checkpoint)) if path}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What the train loop reads.

    input_fn(task, split, feature_lengths=, batch_size=, seed=, shuffle=, start_batch=,
    shard_index=, num_shards=) yields numpy batches (default: SeqIO via get_batches).
    feature_cache_dir: read the frozen encoder's outputs from a feature cache built there
    (slm_jax.feature_cache) instead of running the encoder; replaces input_fn.
    eval_every: evaluate every N steps (needs an EvalConfig; see slm_jax.main).
    stop_after: end early at that step (a simulated preemption; the run resumes).
    export_to: when training completes, write the merged params, or their `export_subtree`, to
    this msgpack file: how a pretrained foundation is handed to the SLM stage."""
    train_task: str | None = None
    feature_lengths: Mapping[str, int] | None = None
    batch_size: int = 8
    log_every: int = 10
    eval_every: int = 0
    shuffle: bool = True
    stop_after: int | None = None
    input_fn: Callable[..., Iterator[dict]] = get_batches
    feature_cache_dir: str | None = None
    export_to: str | None = None
    export_subtree: str | None = None

    def __post_init__(self):
        gin_utils.require(self, "train_task", "feature_lengths")
        if self.feature_cache_dir and self.input_fn is not get_batches:
            raise ValueError("TrainConfig: set feature_cache_dir or input_fn, not both "
                             "(the feature cache is the input)")


@dataclasses.dataclass
class Setup:
    """What a run is built into: the model, mesh, trainer, initial params and checkpointer."""
    run: RunConfig
    model: TaskModel
    partitioner: Partitioner
    trainer: Trainer
    trainable: Any
    frozen: Any
    checkpointer: TrainCheckpointer

    def restore(self, step: int | None = None) -> tuple[Any, int]:
        """(trainable params, step) at checkpoint `step` (default: the newest intact one, see
        TrainCheckpointer.restore_latest); the initial trainable params and step 0 when the run
        has no checkpoint."""
        if step is None:
            state = self.checkpointer.restore_latest(self.trainer.abstract_state())
            if state is None:
                return self.trainable, 0
        else:
            state = self.checkpointer.restore(self.trainer.abstract_state(), step=step)
        return state.params, int(state.step)

    def params(self, trainable: Any) -> dict:
        """The whole params: `trainable` merged with the frozen subtrees."""
        return merge_params(trainable, self.frozen)


def setup(run: RunConfig) -> Setup:
    """Model, mesh, trainer and checkpointer; params initialised (foundations loaded if given).
    Makes the run's vocabulary and front end those of every task without its own (run_inputs)."""
    vocab, features = run.inputs()
    run_inputs.use(vocab, features)
    partitioner = Partitioner(make_mesh(run.mesh), fsdp=run.mesh.fsdp)
    model = run.model
    boxed = model.abstract_params()
    schedule = make_schedule(total_steps=run.train_steps)
    trainer = Trainer(model.loss_fn, make_optimizer(schedule=schedule), partitioner, boxed,
                      run.trainable_patterns, accum_steps=run.accum_steps, schedule=schedule)
    shardings = partitioner.params_shardings(boxed)
    abstract = nn.meta.unbox(boxed)
    loaded = {kind: path for kind, path in (("speech_encoder", run.speech_encoder_checkpoint),
                                            ("llm", run.llm_checkpoint)) if path}
    for kind in loaded:
        if kind not in abstract:
            raise ValueError(f"RunConfig.{kind}_checkpoint given but the model has no {kind!r} subtree")
    # Initialise only the subtrees no checkpoint provides: the compiled init then holds no random
    # initialisers of the foundations (XLA drops what the outputs do not need); the subtrees it
    # does return get the same values as a full init.
    fresh = [k for k in abstract if k not in loaded]
    params = jax.jit(lambda r: {k: v for k, v in nn.meta.unbox(model.init_boxed(r)).items() if k in fresh},
                     out_shardings={k: shardings[k] for k in fresh})(jax.random.PRNGKey(run.seed))
    for kind, path in loaded.items():
        try:
            foundation = load_foundation(path, kind, abstract[kind])
        except CheckpointError as e:
            raise CheckpointError(f"RunConfig.{kind}_checkpoint: {e}") from e
        params[kind] = jax.device_put(foundation, shardings[kind])
    params = {k: params[k] for k in abstract}      # the model's own subtree order
    trainable, frozen = trainer.split(params)
    fingerprint = state_fingerprint(trainer.abstract_trainable, model=model.config,
                                    trainable_patterns=list(run.trainable_patterns),
                                    vocabulary=vocabulary_fingerprint(),
                                    features=features, foundations_sha256=run.foundation_ids())
    ckpt = TrainCheckpointer(os.path.join(run.run_dir, "checkpoints"), fingerprint, save_every=run.save_every,
                             keep=run.keep, async_save=run.async_save)
    return Setup(run, model, partitioner, trainer, trainable, frozen, ckpt)


def vocabulary_fingerprint() -> dict | None:
    """What identifies the vocabulary the run's tasks tokenize with (None: no tasks imported)."""
    vocab = run_inputs.vocabulary()
    return run_inputs.vocabulary_id(vocab) if vocab is not None else None


def cache_fingerprint(run: RunConfig) -> dict:
    """What a feature cache for this run's speech encoder must have been built with."""
    return cached_features.fingerprint(run.model.config,
                                       cached_features.weights_id(run.speech_encoder_checkpoint, run.seed),
                                       run.speech_windows)


def train_batches(run: RunConfig, cfg: TrainConfig, start_batch: int) -> Iterator[dict]:
    """This host's training batches from `start_batch` on: from the feature cache when
    cfg.feature_cache_dir is set, else from cfg.input_fn."""
    kwargs = dict(feature_lengths=cfg.feature_lengths, batch_size=cfg.batch_size, seed=run.seed,
                  shuffle=cfg.shuffle, start_batch=start_batch, shard_index=jax.process_index(),
                  num_shards=jax.process_count())
    if cfg.feature_cache_dir:
        return cached_features.cached_batches(cfg.train_task, "train", cache_dir=cfg.feature_cache_dir,
                                              encoder_fingerprint=cache_fingerprint(run), **kwargs)
    return cfg.input_fn(cfg.train_task, "train", **kwargs)


def check_batch_size(s: Setup, cfg: TrainConfig) -> None:
    """TrainConfig.batch_size must split over the mesh's data axis and into accum_steps
    microbatches: refused here, naming the settings, before anything runs or is written."""
    s.partitioner.check_batch_size(cfg.batch_size, "TrainConfig.batch_size")
    if cfg.batch_size % s.run.accum_steps:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} is not divisible by "
                         f"RunConfig.accum_steps={s.run.accum_steps} (the microbatches must be equal)")


def check_vocabulary(s: Setup, cfg: TrainConfig) -> None:
    """The train task's vocabulary must fit the LLM's embedding table: refused before step 1,
    naming both sizes (larger ids would index past the table and train to NaN)."""
    llm = getattr(s.model, "llm_config", None)
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if llm is None or cfg.train_task not in registered:     # not a SeqIO task: the input_fn's own data
        return
    vocab = seqio.get_mixture_or_task(cfg.train_task).output_features["targets"].vocabulary
    if vocab.vocab_size > llm.vocab_size:
        raise ValueError(
            f"task {cfg.train_task!r} tokenizes with {vocab} ({vocab.vocab_size} ids), more than the LLM's "
            f"embedding table (T5Config.vocab_size={llm.vocab_size}). Use the LLM's own SentencePiece model: put "
            "spiece.model in RunConfig.llm_checkpoint's directory or set RunConfig.vocabulary")


def nonfinite_error(host: Sequence[Mapping[str, Any]], step: int) -> FloatingPointError:
    """The error naming the first of the steps up to `step` (metrics `host`, the last len(host)
    steps) whose loss or gradient was not finite (the train step kept the previous params then,
    so nothing non-finite is in the state)."""
    bad = [i for i, m in enumerate(host) if m["nonfinite"]]
    at = step - len(host) + 1 + bad[0]
    return FloatingPointError(
        f"[train] non-finite loss or gradient at step {at} (loss={float(host[bad[0]]['loss'])}, grad_norm="
        f"{float(host[bad[0]]['grad_norm'])}); training stopped and nothing after step {at - 1} is saved. "
        "Check that step's data, the learning rate, and that the vocabulary and features fit the model")


def check_features(s: Setup, cfg: TrainConfig, batch: Mapping[str, np.ndarray]) -> None:
    """The first batch's features must have the width the speech encoder takes (refused before
    step 1, naming the task and both widths)."""
    config = getattr(s.model, "config", None)
    if not isinstance(config, SLMConfig) or "features" not in batch:
        return
    want = foundations.input_dim(config.speech_encoder)
    if batch["features"].shape[-1] != want:
        raise ValueError(f"task {cfg.train_task!r} gives {batch['features'].shape[-1]}-dim speech features, but "
                         f"the speech encoder ({type(config.speech_encoder).__name__}) takes {want}: register the "
                         "task without feature_config (the run's front end) or set RunConfig.features")


def resume(s: Setup) -> tuple[Any, int]:
    """(train state, step) to continue from: the newest intact checkpoint (damaged newer steps
    are moved aside, see TrainCheckpointer.restore_latest), else a fresh state at step 0. The
    run's metrics logs are cut back to that step, so every later step is logged once."""
    state = s.checkpointer.restore_latest(s.trainer.abstract_state())
    start = 0 if state is None else int(state.step)
    if state is None:
        state = s.trainer.init_state(s.trainable)
    else:
        print(f"[train] resumed from step {start} ({s.checkpointer.directory})", flush=True)
    for path in truncate_logs(s.run.run_dir, start):
        print(f"[train] {path}: rows after step {start} dropped (they are logged again)", flush=True)
    return state, start


def train(run: RunConfig, cfg: TrainConfig, evaluator: Evaluator | None = None) -> dict:
    """Train the trainable subtree to run.train_steps; resumes from the newest intact checkpoint
    in run.run_dir. `evaluator(setup, trainable, step)` runs every cfg.eval_every steps and once
    when training completes. A
    preempted run (SIGTERM / SIGINT) saves and ends the process with status 128 + signal. No
    checkpoint is written before the first step completes (a run that fails before it leaves
    nothing that would tie a later run to its config)."""
    if cfg.eval_every and evaluator is None:
        raise ValueError("TrainConfig.eval_every is set but this run has no evaluation to run "
                         "(bind the EvalConfig in gin)")
    if run.speech_windows.on and not cfg.feature_cache_dir:
        raise ValueError(f"RunConfig.speech_windows.frames={run.speech_windows.frames}: shared encoder windows are "
                         "packed outside the model, so this run trains from a feature cache "
                         "(set TrainConfig.feature_cache_dir, or SpeechWindows.frames = 0)")
    s = setup(run)
    try:
        check_batch_size(s, cfg)
        check_vocabulary(s, cfg)
        state, start = resume(s)
    except BaseException:
        s.checkpointer.close()
        raise
    writer = MetricsWriter(run.run_dir, "train")
    progress = Progress(run.train_steps, start)
    s.checkpointer.install_signal_handlers()
    batches = train_batches(run, cfg, start)
    rng = jax.random.PRNGKey(run.seed + 1)
    pending: list[dict] = []
    last: dict = {}
    step = start
    nonfinite = False
    try:
        while step < run.train_steps:
            host_batch = next(batches)
            if step == start:
                check_features(s, cfg, host_batch)
            batch = s.partitioner.shard_batch(host_batch)
            state, metrics = s.trainer.train_step(state, s.frozen, batch, rng)
            step += 1
            pending.append(metrics)
            log_now = step % cfg.log_every == 0 or step == run.train_steps
            if log_now or s.checkpointer.save_due(step):
                host = jax.device_get(pending)
                nonfinite = any(m["nonfinite"] for m in host)
                if nonfinite:
                    raise nonfinite_error(host, step)
                if log_now:
                    last = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
                    writer.write(step, last)
                    progress.report(step, {k: last[k] for k in ("loss", "accuracy", "learning_rate") if k in last})
                    pending = []
            s.checkpointer.maybe_save(step, state)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < run.train_steps:
                evaluator(s, state.params, step)
            if s.checkpointer.preempted or (cfg.stop_after is not None and step >= cfg.stop_after):
                host = jax.device_get(pending)           # checked before the final save below
                nonfinite = any(m["nonfinite"] for m in host)
                if nonfinite:
                    raise nonfinite_error(host, step)
                print(f"[train] stopping at step {step}; checkpoint saved", flush=True)
                break
    finally:
        if step > start and not nonfinite:    # nothing new to keep before the first completed step
            s.checkpointer.maybe_save(step, state, force=True)
        s.checkpointer.close()
        writer.close()
    if s.checkpointer.preempted:
        # a preempted run ends the process (status 128 + signal, as the signal would have), also
        # when called from a pipeline such as the demo: its next stage must not start
        print(f"[train] preempted at step {step}: checkpoint saved; run the same command again to resume",
              flush=True)
        raise SystemExit(128 + int(s.checkpointer.preempted))
    if cfg.export_to and step >= run.train_steps:
        params = s.params(state.params)
        save_params(cfg.export_to, params[cfg.export_subtree] if cfg.export_subtree else params)
        print(f"[train] exported {cfg.export_subtree or 'params'} to {cfg.export_to}", flush=True)
    if evaluator is not None and step >= run.train_steps and start < run.train_steps:
        evaluator(s, state.params, step)      # the trained model, once at the end
    return {"step": step, **last}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """How `build_feature_cache` writes: the split, the encoder's batch size (None:
    TrainConfig.batch_size; examples are read in batches of TrainConfig.batch_size whatever it
    is, so it changes the speed, never the cache's order), examples per ArrayRecord shard,
    whether to rebuild an up-to-date cache, and the bytes of encoder outputs kept for examples
    that share audio."""
    split: str = "train"
    batch_size: int | None = None
    examples_per_shard: int = 4096
    overwrite: bool = False
    share_bytes: int = 2 ** 30


def build_feature_cache(run: RunConfig, cfg: TrainConfig, cache: CacheConfig | None = None) -> dict:
    """Write the feature cache that `train` reads with this run and cfg.feature_cache_dir: the
    frozen speech encoder's outputs for cfg.train_task, from the weights `setup(run)` builds.
    Returns the cache's manifest."""
    if not cfg.feature_cache_dir:
        raise ValueError("TrainConfig.feature_cache_dir is not set: where should the feature cache go?")
    cache = cache or CacheConfig()
    s = setup(run)
    s.checkpointer.close()
    return cached_features.build_cache(
        cfg.feature_cache_dir, cfg.train_task, cache.split, feature_lengths=cfg.feature_lengths,
        config=run.model.config, encoder_params=s.params(s.trainable)["speech_encoder"],
        weights=cached_features.weights_id(run.speech_encoder_checkpoint, run.seed),
        batch_size=cache.batch_size or cfg.batch_size, read_batch_size=cfg.batch_size, seed=run.seed,
        examples_per_shard=cache.examples_per_shard, overwrite=cache.overwrite, share_bytes=cache.share_bytes,
        windows=run.speech_windows)
