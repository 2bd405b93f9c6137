"""tasks/augment.py: each change does what it says (band limit, gain, noise level, trimmed
silence), draws are fixed by the utterance id, and an AugmentedCorpus changes only the splits it
names and nothing but the audio."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import augment, common

SR = 16000


def tone(hz: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def apply(aug: augment.Augment, audio: np.ndarray, uid: str = "utt-1") -> np.ndarray:
    return aug(tf.constant(audio), tf.constant(uid)).numpy()


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_band_limit_removes_only_the_high_band():
    x = tone(1000) + tone(6000)
    y = apply(augment.Augment(band_limit=1.0, band_limit_hz=(3500.0, 3500.0)), x)
    assert y.shape == x.shape
    assert band_energy(y, 3600, 8000) < 1e-6 * band_energy(x, 3600, 8000)
    np.testing.assert_allclose(band_energy(y, 900, 1100), band_energy(x, 900, 1100), rtol=1e-3)


def test_gain_scales_by_its_decibels():
    x = tone(440)
    y = apply(augment.Augment(gain=1.0, gain_db=(-20.0, -20.0)), x)
    np.testing.assert_allclose(y, x * 0.1, rtol=1e-5, atol=1e-7)


def test_noise_has_the_drawn_snr():
    x = tone(440)
    y = apply(augment.Augment(noise=1.0, snr_db=(10.0, 10.0)), x)
    snr = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
    assert abs(snr - 10.0) < 0.3, snr


def test_speed_moves_tempo_and_pitch_together():
    x = tone(500)
    y = apply(augment.Augment(speed=1.0, speed_factor=(1.25, 1.25)), x)
    assert abs(len(y) - len(x) / 1.25) <= 1, len(y)
    freqs = np.fft.rfftfreq(len(y), 1 / SR)
    assert abs(freqs[np.argmax(np.abs(np.fft.rfft(y)))] - 625.0) < 2.0
    slower = apply(augment.Augment(speed=1.0, speed_factor=(0.8, 0.8)), x)
    assert abs(len(slower) - len(x) / 0.8) <= 1, len(slower)


def test_trim_cuts_silence_to_the_margin():
    x = np.concatenate([np.zeros(8000, np.float32), tone(440, 0.5), np.zeros(8000, np.float32)])
    y = apply(augment.Augment(trim=1.0, trim_margin_s=(0.05, 0.05)), x)
    # 0.5 s of tone plus 0.05 s each side (the tone's first sample is 0, below the threshold)
    assert abs(len(y) - int(0.6 * SR)) < 40, len(y)
    np.testing.assert_array_equal(y[:700], 0)
    assert np.abs(y[900:1000]).max() > 0.1
    # silence only: returned as it is
    np.testing.assert_array_equal(apply(augment.Augment(trim=1.0), np.zeros(4000, np.float32)), 0)


def test_draws_are_fixed_by_the_utterance_id():
    x = tone(300) + tone(5000)
    aug = augment.Augment(fraction=1.0, trim=0.5, gain=0.5, noise=1.0, band_limit=0.5)
    a, b, c = apply(aug, x, "utt-a"), apply(aug, x, "utt-a"), apply(aug, x, "utt-b")
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    # another seed is another draw
    reseeded = augment.Augment(fraction=1.0, trim=0.5, gain=0.5, noise=1.0, band_limit=0.5, seed=1)
    assert not np.array_equal(apply(reseeded, x, "utt-a")[:100], a[:100])


def test_fraction_decides_which_utterances_change():
    x = tone(300)
    assert np.array_equal(apply(augment.Augment(fraction=0.0, gain=1.0), x), x)
    aug = augment.Augment(fraction=0.5, gain=1.0, gain_db=(-6.0, -6.0))
    changed = [not np.array_equal(apply(aug, x, f"u{i}"), x) for i in range(200)]
    assert 70 < sum(changed) < 130, sum(changed)


def test_int16_audio_is_scaled_like_the_pipeline():
    pcm = (tone(440) * 32768).astype(np.int16)
    np.testing.assert_allclose(apply(augment.Augment(fraction=0.0), pcm), pcm / 32768.0, atol=1e-7)


@pytest.mark.parametrize("kw", [{"noise": 1.5}, {"fraction": -0.1}, {"snr_db": (30.0, 10.0)},
                                {"band_limit_hz": (3000.0, 9000.0)}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="Augment"):
        augment.Augment(**kw)


class ToyCorpus(common.Corpus):
    """Three utterances of a tone in each of two splits."""
    name, splits = "toy", ("train", "test")

    def records(self, split):
        return [{"id": f"{split}-{i}", "language": "en", "text": "a tone"} for i in range(3)]

    def load(self, split, *, shuffle, seed, shard_info):
        ids = [r["id"] for r in self.records(split)]
        return tf.data.Dataset.from_tensor_slices({"id": ids, "audio": np.stack([tone(440 * (i + 1)) for i in range(3)])})


def test_augmented_corpus_changes_only_the_named_splits():
    base = ToyCorpus()
    corpus = augment.AugmentedCorpus(base, augment.Augment(gain=1.0, gain_db=(-20.0, -20.0)))
    assert corpus.records("train") == base.records("train") and corpus.splits == base.splits

    def load(c, split):
        return list(c.load(split, shuffle=False, seed=None, shard_info=None).as_numpy_iterator())

    for got, want in zip(load(corpus, "train"), load(base, "train")):
        assert got["id"] == want["id"]
        np.testing.assert_allclose(got["audio"], want["audio"] * 0.1, rtol=1e-5, atol=1e-7)
    for got, want in zip(load(corpus, "test"), load(base, "test")):
        np.testing.assert_array_equal(got["audio"], want["audio"])


def test_augmented_mixture_is_the_plain_one_on_augmented_audio():
    # same tasks and rates as spoken_world_tiny_asr_ast, renamed; only the train split augmented
    plain, aug = common.mixture_rates("spoken_world_tiny_asr_ast"), common.mixture_rates("spoken_world_tiny_aug_asr_ast")
    assert {k.replace("_aug_", "_"): v for k, v in aug.items()} == plain
    task = seqio.get_mixture_or_task("spoken_world_tiny_aug_asr_en")
    assert isinstance(task.source.corpus, augment.AugmentedCorpus)
    assert task.source.corpus.augment == augment.CHANNEL_AUGMENT
    assert task.source.corpus.augment_splits == ("train",)
