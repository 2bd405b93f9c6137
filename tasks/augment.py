"""Audio augmentation of a corpus's training utterances, towards real recordings.

The demo's adapter learns from espeak-ng speech: clean, full band (16 kHz), one loudness, about
0.3 s of silence after every utterance. Real recordings such as FSDD's spoken digits differ in
those ways too (8 kHz band, microphone noise, levels 15 dB apart between speakers, trimmed
clips), besides being real voices. `Augment` changes a share of the training audio in those
directions, before the speech front end:

    speed       play faster or slower (resampled: tempo, pitch and formants move together,
                like another speaker's vocal tract)
    trim        cut the leading / trailing silence to a random margin
    gain        scale by a random number of dB
    noise       add white noise at a random signal-to-noise ratio
    band_limit  keep only frequencies below a random cutoff (3.3-4 kHz: audio sampled at 8 kHz)

Every draw is a function of the utterance id and `Augment.seed` (stateless TensorFlow random
ops), so one utterance gets the same audio in every task, epoch and run: a frozen-encoder
feature cache built from augmented tasks stays exact (slm_jax.cached_features), and an utterance
shared by the ASR and AST tasks is still encoded once. Augmented utterances replace their
originals (the cache and the step count stay the same size).

`AugmentedCorpus` wraps any corpus and augments the splits it names (default: "train" only, so
the same task names evaluate on clean audio). `register_augmented_spoken_world` registers the
spoken_world ASR + AST mixture on augmented audio, `spoken_world_<config>_<suffix>_asr_ast`;
importing this module registers `CHANNEL_AUGMENT`'s for the tiny and demo worlds (suffix "aug";
the demo trains on it with DemoConfig.slm_mixture = "aug_asr_ast").

Measured on the demo (benchmarks/README.md): neither these channel changes nor speed changes
made the adapter better on FSDD's real voices or on held-out synthetic voices, so the demo
trains on the plain mixture.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from tasks import asr, ast, common, spoken_world

SAMPLE_RATE = common.SAMPLE_RATE
_DRAWS = 11   # uniform numbers drawn per utterance (one per decision / amount below)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Which share of utterances is augmented, and how.

    fraction: share of utterances changed at all (the rest pass through bit for bit); each of
      the five changes then applies to an augmented utterance with its own probability.
    speed / speed_factor: resample so the utterance plays `factor` times faster (linear
      interpolation), factor drawn from speed_factor.
    trim / trim_margin_s: cut silence (samples below `trim_threshold` times the peak) before the
      first and after the last louder sample down to a margin drawn from trim_margin_s.
    gain / gain_db: multiply by 10 ** (dB / 20), dB drawn from gain_db.
    noise / snr_db: white Gaussian noise at an SNR (against the utterance's RMS) from snr_db.
    band_limit / band_limit_hz: zero every frequency above a cutoff drawn from band_limit_hz
      (an ideal low-pass: what resampling to 8 kHz and back keeps, 4 kHz and below).
    seed: changes every draw (another augmented copy of the corpus)."""

    fraction: float = 1.0
    speed: float = 0.0
    speed_factor: tuple[float, float] = (0.9, 1.1)
    trim: float = 0.0
    trim_margin_s: tuple[float, float] = (0.0, 0.1)
    trim_threshold: float = 0.05
    gain: float = 0.0
    gain_db: tuple[float, float] = (-20.0, 3.0)
    noise: float = 0.0
    snr_db: tuple[float, float] = (10.0, 40.0)
    band_limit: float = 0.0
    band_limit_hz: tuple[float, float] = (3300.0, 4000.0)
    seed: int = 0

    def __post_init__(self):
        for name in ("fraction", "speed", "trim", "gain", "noise", "band_limit"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"Augment.{name} is a probability in [0, 1], got {p}")
        for name in ("speed_factor", "trim_margin_s", "gain_db", "snr_db", "band_limit_hz"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"Augment.{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.speed_factor[0] <= 0:
            raise ValueError(f"Augment.speed_factor must be positive, got {self.speed_factor}")
        if not (0 < self.band_limit_hz[0] and self.band_limit_hz[1] <= SAMPLE_RATE / 2):
            raise ValueError(f"Augment.band_limit_hz must lie in (0, {SAMPLE_RATE // 2}], got {self.band_limit_hz}")

    def __call__(self, audio: tf.Tensor, utterance_id: tf.Tensor) -> tf.Tensor:
        """`audio` (int16 or float32 samples at 16 kHz) of utterance `utterance_id` (string) ->
        float32 samples, augmented as drawn for that id (unchanged when not drawn)."""
        x = tf.cast(audio, tf.float32)
        if audio.dtype == tf.int16:
            x = x / 32768.0
        key = tf.strings.to_hash_bucket_fast(utterance_id, 2 ** 31 - 1)
        seed = tf.stack([key, tf.constant(self.seed, tf.int64)])
        u = tf.random.stateless_uniform([_DRAWS], seed=seed)

        def between(r, lo_hi):
            return lo_hi[0] + r * (lo_hi[1] - lo_hi[0])

        def changed(x):
            x = tf.cond(u[9] < self.speed, lambda: change_speed(x, between(u[10], self.speed_factor)), lambda: x)
            x = tf.cond(u[1] < self.trim, lambda: trim_silence(x, between(u[2], self.trim_margin_s),
                                                               self.trim_threshold), lambda: x)
            x = tf.cond(u[3] < self.gain, lambda: x * 10.0 ** (between(u[4], self.gain_db) / 20.0), lambda: x)
            x = tf.cond(u[5] < self.noise, lambda: add_noise(x, between(u[6], self.snr_db), seed + 1), lambda: x)
            x = tf.cond(u[7] < self.band_limit, lambda: low_pass(x, between(u[8], self.band_limit_hz)), lambda: x)
            return tf.clip_by_value(x, -1.0, 1.0)

        if self.fraction <= 0.0:
            return x
        return tf.cond(u[0] < self.fraction, lambda: changed(x), lambda: x)


def change_speed(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """`x` played `factor` times faster: sample i of the result is `x` at i * factor, linearly
    interpolated (no anti-aliasing filter: above 8 kHz / factor a little aliasing remains)."""
    n = tf.shape(x)[0]
    last = tf.cast(n - 1, tf.float32)
    pos = tf.range(tf.floor(last / factor) + 1.0) * factor
    i0 = tf.minimum(tf.cast(tf.floor(pos), tf.int32), n - 1)
    i1 = tf.minimum(i0 + 1, n - 1)
    frac = pos - tf.cast(i0, tf.float32)
    return tf.gather(x, i0) * (1.0 - frac) + tf.gather(x, i1) * frac


def trim_silence(x: tf.Tensor, margin_s: tf.Tensor, threshold: float) -> tf.Tensor:
    """`x` without the samples more than `margin_s` seconds before its first / after its last
    sample louder than `threshold` times its peak; at least 0.05 s is kept (the front end needs
    some samples)."""
    n = tf.shape(x)[0]
    loud = tf.where(tf.abs(x) > threshold * tf.reduce_max(tf.abs(x)))[:, 0]
    margin = tf.cast(tf.round(margin_s * SAMPLE_RATE), tf.int64)
    first = tf.maximum(tf.reduce_min(loud) - margin, 0)
    last = tf.minimum(tf.reduce_max(loud) + margin + 1, tf.cast(n, tf.int64))
    last = tf.maximum(last, tf.minimum(first + SAMPLE_RATE // 20, tf.cast(n, tf.int64)))
    first = tf.minimum(first, tf.maximum(last - SAMPLE_RATE // 20, 0))
    return tf.cond(tf.size(loud) > 0, lambda: x[first:last], lambda: x)


def add_noise(x: tf.Tensor, snr_db: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """`x` plus white Gaussian noise `snr_db` dB below its RMS (stateless: `seed` fixes it)."""
    rms = tf.sqrt(tf.reduce_mean(tf.square(x)) + 1e-12)
    noise = tf.random.stateless_normal(tf.shape(x), seed=seed)
    return x + noise * rms * 10.0 ** (-snr_db / 20.0)


def low_pass(x: tf.Tensor, cutoff_hz: tf.Tensor) -> tf.Tensor:
    """`x` with every frequency above `cutoff_hz` removed (zeroed in its whole-signal spectrum)."""
    n = tf.shape(x)[0]
    spectrum = tf.signal.rfft(x[None])[0]
    freqs = tf.cast(tf.range(tf.shape(spectrum)[0]), tf.float32) * (SAMPLE_RATE / tf.cast(n, tf.float32))
    kept = spectrum * tf.cast(freqs <= cutoff_hz, tf.complex64)
    return tf.signal.irfft(kept[None], fft_length=n[None])[0]


class AugmentedCorpus(common.Corpus):
    """`base` with its audio augmented by `augment` in the splits `augment_splits` (records,
    counts and ids unchanged; the other splits are `base`'s as they are)."""

    def __init__(self, base: common.Corpus, augment: Augment, augment_splits: Sequence[str] = ("train",),
                 name: str | None = None):
        self.base, self.augment, self.augment_splits = base, augment, tuple(augment_splits)
        self.name = name or f"{base.name}+augment"
        self.splits, self.has_records = base.splits, base.has_records

    def records(self, split):
        return self.base.records(split)

    def num_examples(self, split, make):
        return self.base.num_examples(split, make)

    def list_shards(self, split):
        return self.base.list_shards(split)

    def load(self, split, *, shuffle, seed, shard_info):
        ds = self.base.load(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        if split not in self.augment_splits:
            return ds
        return ds.map(lambda ex: {**ex, "audio": self.augment(ex["audio"], ex["id"])},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# The channel augmentation measured on the demo (benchmarks/README.md): half the utterances
# changed, each change applied to some of those
CHANNEL_AUGMENT = Augment(fraction=0.5, trim=0.5, gain=0.7, noise=0.5, band_limit=0.5)


def register_augmented_spoken_world(config: str | spoken_world.SpokenWorldConfig = "demo",
                                    augment: Augment = CHANNEL_AUGMENT, suffix: str = "aug",
                                    replace: bool = False) -> list[str]:
    """spoken_world_<config>_<suffix>_{asr_<lang>, ast_<pair>} on `augment`ed training audio and
    their mixture spoken_world_<config>_<suffix>_asr_ast (rates: train example counts, as the
    plain _asr_ast). Returns the task names and, last, the mixture's."""
    corpus = AugmentedCorpus(spoken_world.SpokenWorldCorpus(config), augment)
    prefix = f"spoken_world_{corpus.base.config.name}_{suffix}"
    corpus.name = f"{corpus.base.name}+{suffix}"
    tasks = (asr.register_asr_tasks(prefix, corpus, replace=replace)
             + ast.register_ast_tasks(prefix, corpus, replace=replace))
    common.register_mixture(f"{prefix}_asr_ast", tasks, replace=replace)
    return tasks + [f"{prefix}_asr_ast"]


DEMO_TASKS = register_augmented_spoken_world("demo", CHANNEL_AUGMENT, "aug", replace=True)
TINY_TASKS = register_augmented_spoken_world("tiny", CHANNEL_AUGMENT, "aug", replace=True)
