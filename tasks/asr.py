"""ASR tasks: plain transcription per language, contextual-biasing transcription (a bias list
with the utterance's content words and distractors in the instruction), and the guarded
LibriSpeech registration.

Metrics: WER and CER (slm_jax.metrics.seqio_wer / seqio_cer).
"""

from __future__ import annotations

import logging
import os
import random

import tensorflow as tf

from tasks import common, world_text

ASR_INSTRUCTION = "Transcribe the speech."
BIASING_INSTRUCTION = "Transcribe the speech. It may contain these words: {words}."
log = logging.getLogger(__name__)


def asr_maker(language: str | None = None, instruction: str = ASR_INSTRUCTION) -> common.Make:
    """record -> (instruction, transcript) for records in `language` (None: any language)."""

    def make(r):
        if (language and r["language"] != language) or not r["text"].strip():
            return None
        return instruction, r["text"]

    def make_tf(ex):  # the same in TensorFlow, for corpora without a listing (LibriSpeech)
        keep = tf.strings.length(tf.strings.strip(ex["text"])) > 0
        if language:
            keep = tf.logical_and(keep, tf.equal(ex["language"], language))
        return tf.constant(instruction), ex["text"], keep

    make.__name__ = f"asr_{language or 'any'}"
    make.tf = make_tf
    return make


def bias_words(r: dict, num_distractors: int = 4) -> list[str]:
    """The bias list of a sentence record: its object, colour and subject words in the
    record's language plus `num_distractors` other lexicon words of the same categories,
    in a deterministic per-utterance order."""
    lang, s = r["language"], r["slots"]
    right = [world_text.object_text(s["object"], lang), world_text.colour_text(s["colour"], s["object"], lang)]
    if s["subject"]:
        right.append(world_text.content_word(world_text.subject_text(s["subject"], lang)))
    rng = random.Random(f"bias-{r['id']}")
    lexicon = world_text.lexicon_words(lang)
    pool = sorted({w for cat in ("object", "colour", "subject") for w in lexicon[cat]} - set(right))
    words = right + rng.sample(pool, num_distractors)
    rng.shuffle(words)
    return words


def biasing_maker(language: str, num_distractors: int = 4) -> common.Make:
    """Contextual-biasing ASR on spoken sentences in `language`."""

    def make(r):
        if r["language"] != language or r["kind"] != "sentence":
            return None
        words = ", ".join(bias_words(r, num_distractors))
        return BIASING_INSTRUCTION.format(words=words), r["text"]

    make.__name__ = f"biasing_{language}"
    return make


def _register_per_language(prefix: str, maker, corpus: common.Corpus, languages, **kw) -> list[str]:
    """{prefix}_{lang} for each language, made by maker(lang) and scored by the ASR metrics."""
    names = []
    for lang in languages:
        names.append(f"{prefix}_{lang}")
        common.register_task(names[-1], corpus, maker(lang), common.METRICS["asr"], **kw)
    return names


def register_asr_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES, **kw) -> list[str]:
    """{prefix}_asr_{lang} for each language."""
    return _register_per_language(f"{prefix}_asr", asr_maker, corpus, languages, **kw)


def register_char_asr_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES,
                            **kw) -> list[str]:
    """{prefix}_asr_chars_{lang}: the ASR tasks with UTF-8 byte targets (seqio.ByteVocabulary),
    for CTC pretraining of a speech encoder on characters."""
    import seqio
    return _register_per_language(f"{prefix}_asr_chars", asr_maker, corpus, languages,
                                  vocabulary=seqio.ByteVocabulary(), **kw)


def register_biasing_tasks(prefix: str, corpus: common.Corpus, languages=world_text.LANGUAGES, **kw) -> list[str]:
    """{prefix}_biasing_{lang} for each language (needs world_text sentence records)."""
    return _register_per_language(f"{prefix}_biasing", biasing_maker, corpus, languages, **kw)


# ----------------------------------------------------------------------------- LibriSpeech


class LibriSpeechCorpus(common.Corpus):
    """LibriSpeech from the TFDS catalogue, read from an already prepared copy only.

    This project never downloads it: prepare it elsewhere (`tfds build librispeech`) and
    point $TFDS_DATA_DIR (or `data_dir`) at it. Until then, using the task raises an error
    saying so; registering it touches neither network nor disk."""

    name = "librispeech"
    splits = ("train", "validation", "test")
    has_records = False  # too large to list: makers run per example (asr_maker's TF form)
    SPLIT_MAP = {"train": "train_clean100+train_clean360+train_other500", "validation": "dev_clean",
                 "test": "test_clean"}

    def __init__(self, data_dir: str | None = None):
        self._data_dir = data_dir

    def _builder(self):
        import tensorflow_datasets as tfds
        data_dir = self._data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
        b = tfds.builder("librispeech", data_dir=data_dir)
        if not b.is_prepared():
            raise FileNotFoundError(
                f"librispeech is not prepared under {data_dir}; this project never downloads it. Build it with "
                "`tfds build librispeech --data_dir DIR` where it can be downloaded, then set $TFDS_DATA_DIR=DIR")
        return b

    def num_examples(self, split, make):
        self.check_split(split)
        return self._builder().info.splits[self.SPLIT_MAP[split]].num_examples

    def list_shards(self, split):
        self.check_split(split)
        return [f.filename for f in self._builder().info.splits[self.SPLIT_MAP[split]].file_instructions]

    def load(self, split, *, shuffle, seed, shard_info):
        import tensorflow_datasets as tfds
        self.check_split(split)
        read_config = tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True)
        ds = self._builder().as_dataset(split=self.SPLIT_MAP[split], shuffle_files=shuffle, read_config=read_config)
        return ds.map(lambda ex: {"audio": ex["speech"], "id": ex["id"], "language": tf.constant("en"),
                                  "text": tf.strings.lower(ex["text"])})


def register_librispeech() -> list[str]:
    """librispeech_asr_en (registration only; see LibriSpeechCorpus)."""
    try:
        return register_asr_tasks("librispeech", LibriSpeechCorpus(), ["en"])
    except Exception as e:  # never let an optional corpus break the other registrations
        log.warning("librispeech tasks not registered: %s", e)
        return []
