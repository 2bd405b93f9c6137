"""Shared machinery of the task registrations: corpora, the task data source, preprocessors,
metric functions and the one-call `register_task` / `register_mixture` helpers.

A task is a *corpus* (where audio and per-utterance records come from) plus a *make*
function `make(record) -> (instruction, target) | None` that turns one record into one
example, or skips it (tasks/prompts.py has the makers). Records are small nested dicts of
str/int (id, language, text, translations, slots...) that a corpus lists without reading
audio. `make` runs in Python over that listing when the dataset is created; the pipeline then
joins its output to the audio by utterance id with a lookup table, so the same listing gives
the example counts that mixture rates need. The pipeline a task runs is

    corpus.load(split)             {"audio": 16 kHz samples, "id", ...}
    join make's output by id       + instruction, targets (strings), task; skipped ids dropped
    speech_features                audio -> speech [frames, n_mels] float32
    check_speech_length            frames > feature length is an error naming the utterance
    tokenize, append_eos_after_trim

and its examples carry "id" and "task" besides the three TASK_FEATURES of
`slm_jax.data.SLMFeatureConverter` (pass passthrough_features=["task"] to a mixture's
get_dataset to see where each example came from).

No Python runs inside the tf.data pipeline of the spoken_world, FSDD and manifest tasks:
the log-mel front end is re-expressed in TensorFlow (float64, bit-identical to
slm_jax.features.log_mel / whisper_log_mel on the tested inputs), in-memory corpora
decode their audio up front. This matters beyond speed: a tf.numpy_function still in
flight when the interpreter exits makes the process hang in the iterator's destructor
(observed with TF 2.21 whenever a get_batches iterator is alive at exit). The w2v_bert
fbank is re-expressed too (~1e-5 from numpy). Only corpora without a listing (LibriSpeech)
whose maker has no TensorFlow form (`make.tf`), and manifests too long to hold in memory,
fall back to tf.numpy_function.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from slm_jax import features as features_lib
from slm_jax import run_inputs
from tasks import vocab
from tasks.prompts import Make

SAMPLE_RATE = features_lib.SAMPLE_RATE
DEFAULT_FEATURES = features_lib.FeatureConfig(kind="log_mel", n_mels=80)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- corpora


class Corpus:
    """Where a task's audio and records come from. Subclasses implement `load` and either
    `records` (the listing, used to count examples and to run `make`) or, for corpora too
    large to list, `num_examples` with `has_records = False`."""

    name: str = "corpus"
    splits: tuple[str, ...] = ()
    has_records: bool = True

    def records(self, split: str) -> list[dict]:
        """All records of `split` (no audio), in a fixed order."""
        raise NotImplementedError

    def num_examples(self, split: str, make: Make) -> int:
        """How many records of `split` `make` keeps."""
        return sum(make(r) is not None for r in self.records(split))

    def load(self, split: str, *, shuffle: bool, seed: int | None,
             shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:
        """{"audio": int16 or float32 [samples] at 16 kHz, "id": string, ...} per utterance
        (with has_records=False: all the fields `make` reads)."""
        raise NotImplementedError

    def list_shards(self, split: str) -> Sequence[str]:
        return [f"{self.name}:{split}"]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; it has {list(self.splits)}")


class InMemoryCorpus(Corpus):
    """A corpus whose records list their audio files (`record["path"]`, any rate libsndfile
    reads). A split's audio is decoded and resampled to 16 kHz once, when it is first loaded,
    and held in memory as int16 (a 16 kHz hour is 115 MB); splits longer than
    `max_in_memory_hours` are streamed from disk through tf.numpy_function instead."""

    max_in_memory_hours: float = 4.0

    def load_samples(self, record: Mapping) -> np.ndarray:
        """One record's audio as float32 samples at 16 kHz."""
        return features_lib.load_audio(record["path"], SAMPLE_RATE)

    def _audio(self, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(all samples int16, end offsets) of the split, or None if it is too long to hold."""
        cache = self.__dict__.setdefault("_audio_cache", {})
        if split not in cache:
            import soundfile
            records = self.records(split)
            seconds = sum(soundfile.info(r["path"]).duration for r in records)
            if seconds > self.max_in_memory_hours * 3600:
                log.warning("%s: %s split is %.1f h of audio: streaming it from disk (tf.numpy_function)",
                            self.name, split, seconds / 3600)
                cache[split] = None
            else:
                chunks = [self.load_samples(r) for r in records]
                pcm = np.clip(np.round(np.concatenate(chunks) * 32768.0), -32768, 32767).astype(np.int16)
                cache[split] = (pcm, np.cumsum([c.size for c in chunks]))
        return cache[split]

    def load(self, split, *, shuffle, seed, shard_info):
        self.check_split(split)
        records = self.records(split)
        if not records:
            raise ValueError(f"{self.name}: split {split!r} has no usable records")
        audio = self._audio(split)
        index = np.arange(len(records))
        if shard_info:
            index = index[shard_info.index::shard_info.num_shards]
        ds = tf.data.Dataset.from_tensor_slices({
            "index": index, "id": [records[i]["id"] for i in index], "path": [records[i]["path"] for i in index]})
        if shuffle:
            ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
        if audio is not None:
            pcm, ends = tf.constant(audio[0]), tf.constant(audio[1], tf.int64)
            starts = tf.concat([tf.zeros([1], tf.int64), ends[:-1]], 0)
            return ds.map(lambda ex: {"id": ex["id"], "audio": pcm[starts[ex["index"]]:ends[ex["index"]]]})

        def read(i):
            return self.load_samples(records[int(i)])

        def stream(ex):
            samples = tf.numpy_function(read, [ex["index"]], tf.float32, stateful=False)
            samples.set_shape([None])
            return {"id": ex["id"], "audio": samples}
        return ds.map(stream, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------- data source


def to_py(v):
    """A numpy value of a tf.data example as Python: bytes -> str, scalars -> int/float/bool."""
    if isinstance(v, np.ndarray):
        v = v.item() if v.ndim == 0 else v
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def join_make(ds: tf.data.Dataset, records: Sequence[Mapping], make: Make, task_name: str) -> tf.data.Dataset:
    """Adds instruction/targets/task computed by `make` over the listing, joined by id;
    utterances whose record `make` skips (or that are not listed) are dropped."""
    ids, instructions, targets = [], [], []
    for r in records:
        out = make(r)
        if out is not None:
            ids.append(r["id"])
            instructions.append(out[0])
            targets.append(out[1])
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"task {task_name!r}: utterance ids are not unique (e.g. {dup})")
    if not ids:
        raise ValueError(f"task {task_name!r}: no record of this split gives an example")
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)
    instructions, targets = tf.constant(instructions), tf.constant(targets)
    name = tf.constant(task_name)

    def add(ex):
        i = table.lookup(ex["id"])
        j = tf.maximum(i, 0)
        return {"audio": ex["audio"], "id": ex["id"], "instruction": instructions[j], "targets": targets[j],
                "task": name, "_keep": i >= 0}

    ds = ds.map(add).filter(lambda ex: ex["_keep"])
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "_keep"})


def apply_make(ds: tf.data.Dataset, make: Make, task_name: str) -> tf.data.Dataset:
    """Like join_make for corpora without a listing: `make.tf(example) -> (instruction,
    target, keep)` in TensorFlow when the maker has one (asr_maker does), else `make` per
    example in tf.numpy_function on the loaded fields (see the module docstring about exit)."""
    if hasattr(make, "tf"):
        def tf_fn(ex):
            inst, tgt, keep = make.tf(ex)
            return {"audio": ex["audio"], "id": ex["id"], "instruction": inst, "targets": tgt,
                    "task": tf.constant(task_name), "_keep": keep}
        ds = ds.map(tf_fn).filter(lambda ex: ex["_keep"])
        return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "_keep"})

    def fn(ex):
        record = {k: v for k, v in ex.items() if k != "audio"}
        structure = tf.nest.map_structure(lambda _: 0, record)
        flat = tf.nest.flatten(record)

        def py(*values):
            out = make(tf.nest.pack_sequence_as(structure, [to_py(v) for v in values]))
            if out is None:
                return b"", b"", False
            return out[0].encode("utf-8"), out[1].encode("utf-8"), True

        inst, tgt, keep = tf.numpy_function(py, flat, [tf.string, tf.string, tf.bool], stateful=False)
        for t in (inst, tgt, keep):
            t.set_shape([])
        return {"audio": ex["audio"], "id": ex["id"], "instruction": inst, "targets": tgt,
                "task": tf.constant(task_name), "_keep": keep}

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda ex: ex["_keep"])
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "_keep"})


class TaskSource(seqio.DataSource):
    """seqio DataSource of one task: a corpus filtered and labelled by `make`."""

    def __init__(self, corpus: Corpus, make: Make, task_name: str):
        self.corpus, self.make, self.task_name = corpus, make, task_name
        self._counts: dict[str, int] = {}
        super().__init__(splits=corpus.splits, caching_permitted=False)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return isinstance(self.corpus, InMemoryCorpus)

    def list_shards(self, split: str) -> Sequence[str]:
        return self.corpus.list_shards(split)

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:
            self.corpus.check_split(split)
            self._counts[split] = self.corpus.num_examples(split, self.make)
        return self._counts[split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                    use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
        ds = self.corpus.load(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        if self.corpus.has_records:
            return join_make(ds, self.corpus.records(split), self.make, self.task_name)
        return apply_make(ds, self.make, self.task_name)


# ----------------------------------------------------------------------------- preprocessors


def tf_whisper_log_mel(audio: tf.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> tf.Tensor:
    """slm_jax.features.whisper_log_mel in TensorFlow (float64 inside, float32 out): periodic
    Hann 400, hop 160, reflect-padded centred STFT without its last frame, Slaney mel,
    log10 clamped at max - 8, (x + 4) / 4. Audio of 200 samples or fewer is an error."""
    x = tf.cast(audio, tf.float64)
    if pad_to_30s:
        n = features_lib.WHISPER_CHUNK_SECONDS * SAMPLE_RATE
        x = x[:n]
        x = tf.pad(x, [[0, n - tf.shape(x)[0]]])
    half = features_lib.WHISPER_N_FFT // 2
    x = tf.pad(x, [[half, half]], mode="REFLECT")
    frames = tf.signal.frame(x, features_lib.WHISPER_N_FFT, features_lib.WHISPER_HOP)[:-1]
    window = tf.constant(np.hanning(features_lib.WHISPER_N_FFT + 1)[:-1], tf.float64)
    spec = tf.signal.rfft(frames * window)
    power = tf.math.real(spec) ** 2 + tf.math.imag(spec) ** 2
    filters = features_lib.slaney_mel_filters(n_mels, features_lib.WHISPER_N_FFT, SAMPLE_RATE)
    mel = tf.matmul(power, tf.constant(filters, tf.float64))
    log_spec = tf.math.log(tf.maximum(mel, 1e-10)) / np.log(10.0)
    log_spec = tf.maximum(log_spec, tf.reduce_max(log_spec) - 8.0)
    return tf.cast((log_spec + 4.0) / 4.0, tf.float32)


def tf_w2v_bert_fbank(audio: tf.Tensor, num_mel_bins: int = 80, stride: int = 2) -> tf.Tensor:
    """slm_jax.features.w2v_bert_fbank in TensorFlow (Kaldi fbank, per-utterance per-bin
    normalisation, `stride` frames stacked), rounding to complex64/float32 where it does.
    The normalisation sums in another order, so results differ by ~1e-5 (features have unit
    variance). Audio shorter than max(2, stride) frames of 25 ms is an error."""
    x = tf.cast(tf.cast(audio, tf.float32) * features_lib.FBANK_INT16_SCALE, tf.float64)
    frames = tf.signal.frame(x, features_lib.FBANK_FRAME, features_lib.FBANK_HOP)
    frames = frames - tf.reduce_mean(frames, -1, keepdims=True)
    k = features_lib.FBANK_PREEMPHASIS
    emph = tf.concat([frames[:, :1] * (1.0 - k), frames[:, 1:] - k * frames[:, :-1]], 1)
    window = tf.constant(np.hanning(features_lib.FBANK_FRAME) ** 0.85, tf.float64)
    spec = tf.cast(tf.signal.rfft(emph * window, fft_length=[features_lib.FBANK_FFT]), tf.complex64)
    power = tf.cast(tf.math.real(spec), tf.float64) ** 2 + tf.cast(tf.math.imag(spec), tf.float64) ** 2
    filters = features_lib.kaldi_mel_filters(num_mel_bins, features_lib.FBANK_FFT, SAMPLE_RATE)
    mel = tf.matmul(power, tf.constant(filters, tf.float64))
    feats = tf.cast(tf.math.log(tf.maximum(mel, features_lib.FBANK_MEL_FLOOR)), tf.float32)
    n = tf.shape(feats)[0]
    mean = tf.reduce_mean(feats, 0, keepdims=True)
    var = tf.reduce_sum((feats - mean) ** 2, 0, keepdims=True) / tf.cast(n - 1, tf.float32)
    feats = (feats - mean) / tf.sqrt(var + 1e-7)
    return tf.reshape(feats[:(n // stride) * stride], [n // stride, num_mel_bins * stride])


def speech_features(ds: tf.data.Dataset, feature_config: features_lib.FeatureConfig | None = None
                    ) -> tf.data.Dataset:
    """audio (int16 or float32 samples at 16 kHz) -> speech [frames, feature_dim] float32.
    feature_config None: the run's front end (slm_jax.run_inputs), DEFAULT_FEATURES before a run
    sets one."""
    cfg = feature_config or run_inputs.feature_config(DEFAULT_FEATURES)
    if cfg.kind == "w2v_bert":
        min_samples = features_lib.FBANK_FRAME + (max(2, cfg.stride) - 1) * features_lib.FBANK_HOP
    else:
        min_samples = features_lib.WHISPER_N_FFT // 2 + 1

    def fn(ex):
        audio = ex["audio"]
        if audio.dtype == tf.int16:
            audio = tf.cast(audio, tf.float32) / 32768.0
        n = tf.shape(audio)[0]
        check = tf.debugging.Assert(n >= min_samples, [f"audio too short for {cfg.kind} features (need "
                                                       f"{min_samples} samples): utterance", ex["id"], "has", n])
        with tf.control_dependencies([check]):
            if cfg.kind == "w2v_bert":
                speech = tf_w2v_bert_fbank(audio, cfg.n_mels, cfg.stride)
            else:
                speech = tf_whisper_log_mel(audio, cfg.n_mels, cfg.kind == "whisper" and cfg.pad_to_30s)
        speech.set_shape([None, cfg.feature_dim])
        out = {k: v for k, v in ex.items() if k != "audio"}
        out["speech"] = speech
        return out

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def check_speech_length(ds: tf.data.Dataset, sequence_length=None, *, skip: bool = False) -> tf.data.Dataset:
    """Speech longer than sequence_length["speech"] is an error naming the utterance (seqio would
    otherwise silently trim it before the feature converter sees it); with skip=True such an
    utterance is dropped instead, with a warning naming it (on stderr)."""
    max_frames = (sequence_length or {}).get("speech")
    if max_frames is None:
        return ds
    if skip:
        def fits(ex):
            n = tf.shape(ex["speech"])[0]

            def warn():
                with tf.control_dependencies([tf.print(
                        f"WARNING: skipped, speech longer than feature_lengths['speech']={max_frames}: utterance",
                        ex["id"], "has frames:", n, output_stream=sys.stderr)]):
                    return tf.constant(False)
            return tf.cond(n > max_frames, warn, lambda: tf.constant(True))
        return ds.filter(fits)

    def fn(ex):
        n = tf.shape(ex["speech"])[0]
        check = tf.debugging.Assert(
            n <= max_frames, [f"speech longer than feature_lengths['speech']={max_frames}: utterance", ex["id"],
                              "has frames:", n], summarize=1)
        with tf.control_dependencies([check]):
            return {**ex, "speech": tf.identity(ex["speech"])}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------- metrics


def _metric(name: str) -> Callable:
    def fn(targets, predictions):
        from slm_jax import metrics  # imported at call time: registration needs no metric deps
        return getattr(metrics, name)(targets, predictions)
    fn.__name__ = fn.__qualname__ = name
    return fn


wer = _metric("seqio_wer")
cer = _metric("seqio_cer")
bleu = _metric("seqio_bleu")
chrf = _metric("seqio_chrf")
exact_match = _metric("seqio_exact_match")
METRICS = {"asr": (wer, cer), "ast": (bleu, chrf), "exact_match": (exact_match,)}


# ----------------------------------------------------------------------------- registration


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
    """The three task features SLMFeatureConverter expects (default vocabulary:
    tasks.vocab.get_vocabulary(), the run's)."""
    if vocabulary is None:
        vocabulary = vocab.get_vocabulary()
    return {
        "speech": seqio.ContinuousFeature(dtype=tf.float32, rank=2),
        "instruction": seqio.Feature(vocabulary, add_eos=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def register_task(name: str, corpus: Corpus, make: Make, metric_fns: Iterable[Callable] = (), *,
                  vocabulary: seqio.Vocabulary | None = None,
                  feature_config: features_lib.FeatureConfig | None = None,
                  shuffle_buffer_size: int = 128, replace: bool = False,
                  long_speech: str = "error") -> seqio.Task:
    """Registers the SeqIO task `name`: `make(record) -> (instruction, target) | None` on `corpus`.

    Registration reads and builds nothing; the corpus is loaded (and a synthetic corpus
    built) when the task is first used. `replace=True` re-registers an existing name.

    Shuffling: corpora shuffle before the audio is featurised (whole record lists in memory,
    files plus a 256-example buffer for TFDS); seqio's per-task shuffle after the features
    uses `shuffle_buffer_size` (each buffered example costs a log-mel computation up front,
    so it is kept small).

    vocabulary / feature_config None (the default): the run's, i.e. its LLM's SentencePiece model
    and its speech encoder's front end (slm_jax.run_inputs; before a run is set up, the vocabulary
    $SLM_VOCAB names and DEFAULT_FEATURES). Pass them only to pin a task to other ones.

    Speech longer than the run's feature_lengths["speech"] is an error naming the utterance
    (`long_speech="error"`), or dropped with a warning naming it (`"skip"`: manifests, whose
    rows the run's length was not known for when they were checked)."""
    if long_speech not in ("error", "skip"):
        raise ValueError(f"register_task: long_speech must be 'error' or 'skip', got {long_speech!r}")
    if name in seqio.TaskRegistry.names():
        if not replace:
            raise ValueError(f"task {name!r} is already registered (pass replace=True to re-register)")
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=TaskSource(corpus, make, name),
        output_features=output_features(vocabulary),
        preprocessors=[
            functools.partial(speech_features, feature_config=feature_config),
            functools.partial(check_speech_length, skip=long_speech == "skip"),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        metric_fns=list(metric_fns),
        shuffle_buffer_size=shuffle_buffer_size,
    )


def register_mixture(name: str, tasks: Sequence[str], *, temperature: float = 1.0,
                     maximum: int | None = None, replace: bool = False) -> seqio.Mixture:
    """Registers a mixture whose rates are the tasks' train example counts (optionally clipped
    at `maximum` and tempered: rate = count ** (1 / temperature))."""
    if name in seqio.MixtureRegistry.names():
        if not replace:
            raise ValueError(f"mixture {name!r} is already registered (pass replace=True to re-register)")
        seqio.MixtureRegistry.remove(name)
    rate = functools.partial(seqio.mixing_rate_num_examples, temperature=temperature, maximum=maximum)
    return seqio.MixtureRegistry.add(name, list(tasks), default_rate=rate)


def mixture_rates(name: str, split: str = "train") -> dict[str, float]:
    """Normalised sampling probability of each task of mixture `name`."""
    mix = seqio.get_mixture_or_task(name)
    rates = {t.name: float(mix.get_rate(t)) for t in mix.tasks if split in t.splits}
    total = sum(rates.values())
    return {k: v / total for k, v in rates.items()}
