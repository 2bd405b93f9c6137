"""The vocabulary and speech front end of the run in this process, for tasks registered without
their own.

A run's foundations decide how its text is tokenized (the LLM's SentencePiece model) and how its
audio is featurised (the speech encoder's front end), whatever task it reads. Tasks registered
without an explicit vocabulary or feature config therefore hold `RunVocabulary` and
`feature_config()` placeholders that resolve, when a dataset is built, to what `use` last set;
`train_lib.setup` calls `use` with the run's choices (slm_jax.foundations), so every task of the
run tokenizes and featurises alike. Before any run is set up (a script reading a task directly),
the placeholders fall back to the defaults the task registrations name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Sequence

import seqio
import tensorflow as tf

from slm_jax.features import FeatureConfig


@dataclasses.dataclass
class Inputs:
    """What `use` set: a vocabulary and a front end (None: the registrations' defaults), and the
    default vocabulary's factory (`set_default_vocabulary`)."""
    vocabulary: seqio.Vocabulary | None = None
    features: FeatureConfig | None = None
    default_vocabulary: Callable[[], seqio.Vocabulary] | None = None


CURRENT = Inputs()


def set_default_vocabulary(factory: Callable[[], seqio.Vocabulary]) -> None:
    """What tasks tokenize with before (or without) a run's own vocabulary (tasks/vocab.py
    registers $SLM_VOCAB's)."""
    CURRENT.default_vocabulary = factory


def vocabulary() -> seqio.Vocabulary | None:
    """The vocabulary of tasks registered without their own: the run's, else the default."""
    if CURRENT.vocabulary is not None:
        return CURRENT.vocabulary
    return CURRENT.default_vocabulary() if CURRENT.default_vocabulary else None


def use(vocabulary: seqio.Vocabulary | None, features: FeatureConfig | None) -> None:
    """Make `vocabulary` / `features` those of every task registered without its own."""
    CURRENT.vocabulary, CURRENT.features = vocabulary, features


def feature_config(default: FeatureConfig) -> FeatureConfig:
    """The run's front end, or `default` before a run sets one."""
    return CURRENT.features or default


def vocabulary_id(vocab: seqio.Vocabulary) -> dict:
    """What identifies a vocabulary in fingerprints: its size and, for SentencePiece, a sha256
    of the model bytes (a model of the same size but other pieces is another vocabulary)."""
    if isinstance(vocab, RunVocabulary):
        vocab = vocab.resolved
    out = {"type": type(vocab).__name__, "vocab_size": int(vocab.vocab_size)}
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        out["sentencepiece_sha256"] = hashlib.sha256(vocab.sp_model).hexdigest()
    return out


class RunVocabulary(seqio.Vocabulary):
    """The vocabulary `vocabulary()` returns when used (see the module docstring)."""

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def resolved(self) -> seqio.Vocabulary:
        vocab = vocabulary()
        if vocab is None:
            raise ValueError("no vocabulary: the run names none (RunConfig.vocabulary, an LLM directory with "
                             "spiece.model) and no default is registered (import tasks)")
        return vocab

    @property
    def eos_id(self):
        return self.resolved.eos_id

    @property
    def unk_id(self):
        return self.resolved.unk_id

    @property
    def pad_id(self):
        return self.resolved.pad_id

    @property
    def vocab_size(self) -> int:
        return self.resolved.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolved.vocab_size

    def _encode(self, s: str) -> Sequence[int]:
        return self.resolved.encode(s)

    def _decode(self, ids):
        return self.resolved.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return self.resolved.encode_tf(s)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return self.resolved.decode_tf(ids)

    def decode(self, ids):
        return self.resolved.decode(ids)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return self.resolved.decode_tf(ids)

    def __eq__(self, other):
        return isinstance(other, RunVocabulary) or (isinstance(other, seqio.Vocabulary) and other == self.resolved)


    def __hash__(self):
        return hash(RunVocabulary)

    def __str__(self):
        return f"RunVocabulary({self.resolved})"
