"""LibriSpeech ASR from a copy prepared by tensorflow-datasets, read in place.

Layout (what `tfds build librispeech --data_dir DIR` writes; copy the folder here as is):

    DIR/librispeech/default/2.1.1/dataset_info.json, features.json,
                                  librispeech-<split>.tfrecord-NNNNN-of-NNNNN
    splits: train_clean100, train_clean360, train_other500, dev_clean, dev_other, test_clean,
            test_other; features: speech (int16, 16 kHz), text (uppercase), speaker_id,
            chapter_id, id ("84-121123-0000")

DIR: the `data_dir` argument, else $SLM_LIBRISPEECH_DIR, else $TFDS_DATA_DIR, else
~/tensorflow_datasets. This project never downloads it. The copy is opened with
`tfds.builder(builder_name, data_dir=DIR)`, exactly as TFDS reads any prepared dataset.

Task: librispeech_asr_en, targets the transcript **lowercased** ("he hoped there would be
stew"), instruction prompts.ASR_INSTRUCTION. Task splits -> TFDS splits (SPLIT_MAP, the train
one configurable): train -> train_clean100+train_clean360+train_other500, validation ->
dev_clean, test -> test_clean, validation_other -> dev_other, test_other -> test_other.

The corpus is too large to list, so the maker runs per example (asr.asr_maker's TensorFlow
form): an utterance with an empty transcript is dropped, and audio too short for the
features is an error naming the utterance id (common.speech_features).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import tensorflow as tf

from tasks import asr, common

log = logging.getLogger(__name__)

TFDS_SPLITS = ("train_clean100", "train_clean360", "train_other500", "dev_clean", "dev_other", "test_clean",
               "test_other")
TRAIN_SPLITS = ("train_clean100", "train_clean360", "train_other500")
SPLIT_MAP = {"train": "+".join(TRAIN_SPLITS), "validation": "dev_clean", "test": "test_clean",
             "validation_other": "dev_other", "test_other": "test_other"}
ENV_VAR = "SLM_LIBRISPEECH_DIR"


def librispeech_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The TFDS data dir holding librispeech/: the argument, $SLM_LIBRISPEECH_DIR,
    $TFDS_DATA_DIR or ~/tensorflow_datasets, first one set."""
    return os.fspath(data_dir or os.environ.get(ENV_VAR) or os.environ.get("TFDS_DATA_DIR")
                     or os.path.expanduser("~/tensorflow_datasets"))


class LibriSpeechCorpus(common.Corpus):
    """LibriSpeech from the TFDS catalogue, read from an already prepared copy only (see the
    module docstring). Constructing it touches neither network nor disk; the copy is opened
    (and a missing one reported, naming the expected folder) when a task first uses it."""

    name = "librispeech"
    has_records = False  # too large to list: makers run per example (asr_maker's TF form)

    def __init__(self, data_dir: str | os.PathLike | None = None, *,
                 train_splits: Sequence[str] = TRAIN_SPLITS, builder_name: str = "librispeech"):
        unknown = sorted(set(train_splits) - set(TFDS_SPLITS))
        if unknown or not train_splits:
            raise ValueError(f"librispeech: train_splits must be some of {list(TFDS_SPLITS)}, got {list(train_splits)}")
        self.data_dir = data_dir
        self.builder_name = builder_name
        self.split_map = {**SPLIT_MAP, "train": "+".join(train_splits)}
        self.splits = tuple(self.split_map)
        self._builder_cache = None

    def builder(self):
        """The TFDS builder of the prepared copy; FileNotFoundError naming the expected
        folder when it is not there."""
        if self._builder_cache is None:
            import tensorflow_datasets as tfds
            data_dir = librispeech_dir(self.data_dir)
            b = tfds.builder(self.builder_name, data_dir=data_dir)
            if not b.is_prepared():
                raise FileNotFoundError(
                    f"LibriSpeech: no prepared TFDS copy at {b.data_dir} (expected there: dataset_info.json, "
                    f"features.json and librispeech-<split>.tfrecord-* files for the splits {', '.join(TFDS_SPLITS)}). "
                    f"This project never downloads it: run `tfds build librispeech --data_dir {data_dir}` on a "
                    f"machine that can, copy {b.data_dir} here, and pass data_dir= or set ${ENV_VAR} "
                    f"(now {data_dir}).")
            self._builder_cache = b
        return self._builder_cache

    def num_examples(self, split, make):
        self.check_split(split)
        return self.builder().info.splits[self.split_map[split]].num_examples

    def list_shards(self, split):
        self.check_split(split)
        return [f.filename for f in self.builder().info.splits[self.split_map[split]].file_instructions]

    def load(self, split, *, shuffle, seed, shard_info):
        import tensorflow_datasets as tfds
        self.check_split(split)
        context = None
        if shard_info:
            context = tf.distribute.InputContext(num_input_pipelines=shard_info.num_shards,
                                                 input_pipeline_id=shard_info.index)
        read_config = tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True, input_context=context,
                                      try_autocache=False)   # see spoken_world: bounded evaluations
        ds = self.builder().as_dataset(split=self.split_map[split], shuffle_files=shuffle, read_config=read_config)
        return ds.map(lambda ex: {"audio": ex["speech"], "id": ex["id"], "language": tf.constant("en"),
                                  "text": tf.strings.lower(ex["text"])})


def register_librispeech(data_dir: str | os.PathLike | None = None, *,
                         train_splits: Sequence[str] = TRAIN_SPLITS, builder_name: str = "librispeech",
                         **kw) -> list[str]:
    """librispeech_asr_en on the copy under `data_dir` (see the module docstring).

    With an explicit `data_dir` the copy is opened now, so a missing one is an error here,
    naming the expected folder; without it (data dir from the environment) registration
    touches no disk and a missing copy is reported when the task is first used. `kw` goes to
    common.register_task (vocabulary, feature_config, ...); names registered before (by
    `import tasks`, from the environment) are replaced unless replace=False."""
    kw.setdefault("replace", True)
    corpus = LibriSpeechCorpus(data_dir, train_splits=train_splits, builder_name=builder_name)
    if data_dir is not None:
        corpus.builder()
    return asr.register_asr_tasks("librispeech", corpus, ["en"], **kw)


def register_default() -> list[str]:
    """librispeech_asr_en from the environment's data dir, or nothing (logged) if even
    registering fails: an optional corpus never breaks the other registrations."""
    try:
        return register_librispeech()
    except Exception as e:
        log.warning("librispeech tasks not registered: %s", e)
        return []
