"""Shared test fixtures: a SeqIO task of a few fixed synthetic utterances, and gin set-up."""

from __future__ import annotations

import functools
from pathlib import Path

import gin
import numpy as np
import seqio
import tensorflow as tf

VOCAB = seqio.ByteVocabulary()
FIXED_TRANSCRIPTS = ["one", "two three", "four", "five six"]


def fixed_examples(n_frames=(36, 52, 28, 44), channels=80, seed=0):
    """Distinct random 'speech' feature sequences, one per transcript."""
    rng = np.random.default_rng(seed)
    return [dict(speech=rng.normal(size=(t, channels)).astype(np.float32), text=s)
            for t, s in zip(n_frames, FIXED_TRANSCRIPTS)]


def _dataset_fn(split, shuffle_files, seed=None):
    exs = fixed_examples()
    return tf.data.Dataset.from_generator(
        lambda: ({"speech": e["speech"], "instruction": "transcribe", "targets": e["text"]} for e in exs),
        output_signature={"speech": tf.TensorSpec([None, 80], tf.float32),
                          "instruction": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string)})


@functools.lru_cache(None)
def register_fixed_task(name: str = "test_fixed_asr", metric: str = "seqio_wer") -> str:
    """Register the fixed utterances as task `name`, scored by `metric` (a function of slm_jax.metrics)."""
    from slm_jax import metrics
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn, splits=["train", "validation"],
                                        num_input_examples={"train": 4, "validation": 4}),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"speech": seqio.ContinuousFeature(dtype=tf.float32, rank=2),
                         "instruction": seqio.Feature(VOCAB, add_eos=False),
                         "targets": seqio.Feature(VOCAB, add_eos=True)},
        metric_fns=[getattr(metrics, metric)])
    return name


REPO = Path(__file__).resolve().parents[1]
TINY_GIN = str(REPO / "gin/models/tiny.gin")
FEATURE_LENGTHS = {"speech": 64, "instruction": 12, "targets": 12}


def gin_tiny(*bindings: str) -> None:
    """Parse the tiny model config plus bindings into a clean gin state."""
    from slm_jax import train_lib  # noqa: F401  (registers RunConfig, which tiny.gin binds)
    gin.clear_config()
    gin.parse_config_files_and_bindings([TINY_GIN], list(bindings))


def tiny_run(run_dir, *bindings: str, task: str | None = None) -> None:
    """A fresh gin config, as `python -m slm_jax.main --gin_file=<tiny.gin>` would parse it, of a
    tiny-model run in `run_dir` that trains and evaluates on the fixed task (batches of 8,
    synchronous checkpoints); `bindings` (gin syntax, e.g. "RunConfig.train_steps=2") add to or
    override it. Build the configs with train_lib.RunConfig() / TrainConfig() / eval_lib.EvalConfig()."""
    from slm_jax import eval_lib, gin_utils  # noqa: F401  (eval_lib and train_lib register the configs)
    task = task or register_fixed_task()
    gin_utils.parse_config([TINY_GIN], [
        f"RunConfig.run_dir='{run_dir}'", "RunConfig.async_save=False",
        f"TrainConfig.train_task='{task}'", f"TrainConfig.feature_lengths={FEATURE_LENGTHS}",
        "TrainConfig.batch_size=8", f"EvalConfig.eval_tasks=['{task}']",
        f"EvalConfig.feature_lengths={FEATURE_LENGTHS}", "EvalConfig.batch_size=8", *bindings])


def copy_batch(rng: np.random.Generator, batch_size: int = 32, max_chars: int = 10, length: int = 12) -> dict:
    """Text batch for a copy task: a random lowercase string (with spaces) -> the same string."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz      ", np.uint8)
    enc = np.zeros((batch_size, length), np.int32)
    tgt = np.zeros((batch_size, length), np.int32)
    for i in range(batch_size):
        n = rng.integers(1, max_chars + 1)
        ids = VOCAB.encode(bytes(rng.choice(letters, n)).decode()) + [1]
        enc[i, :len(ids)] = ids
        tgt[i, :len(ids)] = ids
    dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt}


def pretrain_tiny_llm(path: str, steps: int = 400, seed: int = 0) -> float:
    """Pretrain the tiny T5 of gin/models/tiny.gin to copy text (everything trainable, same
    trainer as SLM) and save its params to `path`: a miniature frozen "LLM" foundation.
    Returns the final loss."""
    import jax
    import optax
    import flax.linen as nn
    from slm_jax import configs
    from slm_jax.checkpoints.params_io import save_params
    from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
    from slm_jax.task_model import T5TaskModel
    from slm_jax.trainer import Trainer

    model = T5TaskModel(configs.tiny_slm().llm)
    part = Partitioner(make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]))
    trainer = Trainer(model.loss_fn, optax.adamw(optax.warmup_cosine_decay_schedule(0, 1e-2, 20, steps)), part,
                      model.abstract_params(), trainable_patterns=(".*",))
    params, _ = trainer.split(nn.meta.unbox(model.init_boxed(jax.random.PRNGKey(seed))))
    state = trainer.init_state(params)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        state, metrics = trainer.train_step(state, {}, copy_batch(rng), jax.random.PRNGKey(0))
    save_params(path, state.params)
    return float(metrics["loss"])
