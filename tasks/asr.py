"""ASR tasks: plain transcription per language, contextual-biasing transcription (a bias list
with the utterance's content words and distractors in the instruction), and the guarded
LibriSpeech registration. Their makers are in tasks/prompts.py; `asr_maker` adds the
TensorFlow form that LibriSpeech runs.

Metrics: WER and CER (slm_jax.metrics.seqio_wer / seqio_cer).
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from tasks import common, prompts, world_text

log = logging.getLogger(__name__)


def asr_maker(language: str | None = None, instruction: str = prompts.ASR_INSTRUCTION) -> common.Make:
    """prompts.transcript_maker (record -> (instruction, transcript) for records in `language`,
    None: any language) with its TensorFlow form `make.tf`, for corpora without a listing
    (LibriSpeech)."""
    make = prompts.transcript_maker(language, instruction)

    def make_tf(ex):
        keep = tf.strings.length(tf.strings.strip(ex["text"])) > 0
        if language:
            keep = tf.logical_and(keep, tf.equal(ex["language"], language))
        return tf.constant(instruction), ex["text"], keep

    make.tf = make_tf
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
    return _register_per_language(f"{prefix}_biasing", prompts.biasing_maker, corpus, languages, **kw)


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
