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
def register_fixed_task(name: str = "test_fixed_asr") -> str:
    import jiwer

    def wer(targets, predictions):
        return {"wer": jiwer.wer(list(targets), list(predictions))}
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn, splits=["train", "validation"],
                                        num_input_examples={"train": 4, "validation": 4}),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={"speech": seqio.ContinuousFeature(dtype=tf.float32, rank=2),
                         "instruction": seqio.Feature(VOCAB, add_eos=False),
                         "targets": seqio.Feature(VOCAB, add_eos=True)},
        metric_fns=[wer])
    return name


REPO = Path(__file__).resolve().parents[1]
TINY_GIN = str(REPO / "gin/models/tiny.gin")
FEATURE_LENGTHS = {"speech": 64, "instruction": 12, "targets": 12}


def gin_tiny(*bindings: str) -> None:
    """Parse the tiny model config plus bindings into a clean gin state."""
    gin.clear_config()
    gin.parse_config_files_and_bindings([TINY_GIN], list(bindings))
