"""Vocabularies of the tasks.

- The world vocabulary: a small SentencePiece unigram model (1000 pieces by default, T5 ids:
  pad=0, eos=1, unk=2, no bos; byte fallback so any text round-trips; digits split) trained
  deterministically on world_text renderings in all four languages plus every instruction
  and target the spoken-world makers (tasks/prompts.py) produce. It is trained on first use
  (about a second) and cached under <data dir>/vocab/, its file name carrying a hash of the
  training text and settings, so a changed generator never reads a stale model.
- The mT5 vocabulary (real runs): any SentencePiece model by path, e.g. mT5's spiece.model,
  from the `path` argument or $SLM_MT5_VOCAB.

`get_vocabulary()` is what tasks tokenize with: the run's vocabulary (its LLM checkpoint's
spiece.model or RunConfig.vocabulary, set by slm_jax.train_lib.setup through
slm_jax.run_inputs), or before a run is set up the one $SLM_VOCAB names: "world" (default) |
"mt5" | a path to a .model file. The functions are gin-configurable.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path

import gin
import seqio

from slm_jax import run_inputs
from tasks import paths, prompts, world_text

VOCAB_SIZE = 1000
VOCAB_SEED = 20231001
VOCAB_ITEMS = 2000
_SPM_SETTINGS = dict(
    model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
    byte_fallback=True, split_digits=True, num_threads=1, shuffle_input_sentence=False,
    input_sentence_size=0, max_sentence_length=4096, minloglevel=2)


def training_sentences() -> list[str]:
    """The text the world vocabulary is trained on, in a fixed order."""
    items = world_text.generate_items(VOCAB_ITEMS, VOCAB_SEED)
    sentences = [t for item in items for t in item.texts.values()]
    for lang in world_text.LANGUAGES:
        for words in world_text.lexicon_words(lang).values():
            sentences.extend(words)
    records = world_text.text_records(items, "vocab")
    seen = set(sentences)

    def add(strings):
        for s in strings:
            if s and s not in seen:
                seen.add(s)
                sentences.append(s)
    for make in prompts.world_makers():
        for r in records:
            add(make(r) or ())
    for r in records:  # every question type, not only the one drawn per utterance
        if r["kind"] == "sentence":
            add(s for qa in prompts.qa_questions(r).values() for s in qa)
    return sentences


def _train(sentences: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                   vocab_size=vocab_size, **_SPM_SETTINGS)
    return model.getvalue()


@functools.lru_cache(maxsize=None)
def world_spm_path(vocab_size: int = VOCAB_SIZE, root: str | None = None) -> Path:
    """Path of the cached world SentencePiece model, trained first if missing."""
    sentences = training_sentences()
    digest = hashlib.sha256(repr((sentences, vocab_size, sorted(_SPM_SETTINGS.items()))).encode()).hexdigest()[:12]
    path = Path(root or paths.data_dir()) / "vocab" / f"world_spm_{vocab_size}_{digest}.model"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_train(sentences, vocab_size))
        os.replace(tmp, path)  # atomic: concurrent trainers write identical bytes
    return path


class WorldVocabulary(seqio.SentencePieceVocabulary):
    """SentencePieceVocabulary of the world model; the model file is located (and trained if
    missing) under the data dir of the moment on first use, not at construction."""

    def __init__(self, vocab_size: int = VOCAB_SIZE):
        self._world_vocab_size = vocab_size
        super().__init__(sentencepiece_model_file="")

    def _model_context(self):
        if not self._model:
            self._sentencepiece_model_file = str(world_spm_path(self._world_vocab_size, str(paths.data_dir())))
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        self._model_context()
        return self._sentencepiece_model_file

    def __str__(self):
        return f"WorldVocabulary(vocab_size={self._world_vocab_size})"


_WORLD: dict[int, WorldVocabulary] = {}


@gin.configurable
def world_vocabulary(vocab_size: int = VOCAB_SIZE) -> WorldVocabulary:
    """The world vocabulary (one shared instance per size)."""
    if vocab_size not in _WORLD:
        _WORLD[vocab_size] = WorldVocabulary(vocab_size)
    return _WORLD[vocab_size]


@gin.configurable
def mt5_vocabulary(path: str | None = None) -> seqio.SentencePieceVocabulary:
    """mT5/mT0 SentencePiece vocabulary from `path` or $SLM_MT5_VOCAB (e.g. .../spiece.model)."""
    path = path or os.environ.get("SLM_MT5_VOCAB")
    if not path:
        raise ValueError("mt5_vocabulary: no path given and $SLM_MT5_VOCAB is not set "
                         "(point it at the checkpoint's spiece.model)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: SentencePiece model not found (mt5_vocabulary)")
    return seqio.SentencePieceVocabulary(path)


def named_vocabulary(name: str | None = None) -> seqio.Vocabulary:
    """name (default $SLM_VOCAB or "world"): "world" | "mt5" | a path to a SentencePiece model."""
    name = name or os.environ.get("SLM_VOCAB") or "world"
    if name == "world":
        return world_vocabulary()
    if name == "mt5":
        return mt5_vocabulary()
    if name.endswith(".model"):
        return mt5_vocabulary(name)
    raise ValueError(f"get_vocabulary: unknown vocabulary {name!r}; use 'world', 'mt5' or a .model path")


run_inputs.set_default_vocabulary(named_vocabulary)
RUN_VOCABULARY = run_inputs.RunVocabulary()


@gin.configurable
def get_vocabulary(name: str | None = None) -> seqio.Vocabulary:
    """The vocabulary `name` names (see `named_vocabulary`), or without a name the run's: the
    LLM's SentencePiece model once a run is set up (slm_jax.run_inputs), else $SLM_VOCAB's."""
    return named_vocabulary(name) if name else RUN_VOCABULARY
