"""Audio front ends vs the transformers reference feature extractors, resampling, input errors."""

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from transformers import SeamlessM4TFeatureExtractor, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from slm_jax import features as F

SR = 16000
TOL = 1e-3
FSDD = Path(__file__).parents[2] / "shared" / "data" / "fsdd" / "recordings"


def _noise(n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _sine(n, freq=440.0, sr=SR, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


SIGNALS = {"noise": _noise, "sine": _sine}


# ----------------------------------------------------------------------------- mel banks


@pytest.mark.parametrize("n_mels", [80, 128])
def test_slaney_mel_filters_match_reference(n_mels):
    ref = mel_filter_bank(201, n_mels, 0.0, 8000.0, SR, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(F.slaney_mel_filters(n_mels), ref, rtol=0, atol=1e-12)


def test_kaldi_mel_filters_match_reference():
    ref = mel_filter_bank(257, 80, 20, SR // 2, SR, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
    np.testing.assert_allclose(F.kaldi_mel_filters(80), ref, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- Whisper


@pytest.mark.parametrize("signal", ["noise", "sine"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_matches_extractor(n_mels, signal):
    audio = SIGNALS[signal](16123)  # not a multiple of the hop
    fe = WhisperFeatureExtractor(feature_size=n_mels)

    # Default extractor call: pad to 30 s -> 3000 frames.
    ref = fe(audio, sampling_rate=SR, return_tensors="np").input_features[0].T
    ours = F.whisper_log_mel(audio, n_mels=n_mels, pad_to_30s=True)
    assert ours.shape == ref.shape == (3000, n_mels) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= TOL

    # padding="longest" on one utterance = no padding -> len // 160 frames.
    ref = fe(audio, sampling_rate=SR, padding="longest", return_tensors="np").input_features[0].T
    ours = F.whisper_log_mel(audio, n_mels=n_mels, pad_to_30s=False)
    assert ours.shape == ref.shape == (16123 // 160, n_mels)
    assert np.abs(ours - ref).max() <= TOL


def test_whisper_pad_to_30s_truncates_long_audio():
    audio = _noise(30 * SR + 3210, seed=1)
    ref = WhisperFeatureExtractor()(audio, sampling_rate=SR, return_tensors="np").input_features[0].T
    ours = F.whisper_log_mel(audio, pad_to_30s=True)
    assert ours.shape == (3000, 80)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("n", [12800, 12810, 12839, 12840, 12850])
def test_whisper_unpadded_frames_are_prefix_of_padded(n):
    """Documented difference: only the last frame, and only when n % 160 < 40."""
    audio = _noise(n, seed=2)
    padded = WhisperFeatureExtractor()(audio, sampling_rate=SR, return_tensors="np").input_features[0].T
    ours = F.whisper_log_mel(audio, pad_to_30s=False)
    assert ours.shape[0] == n // 160
    # Noise keeps every value far above the "max - 8" floor, so the clamp is inactive in both.
    assert ours.min() > ours.max() - 2.0
    assert np.abs(ours[:-1] - padded[: ours.shape[0] - 1]).max() <= TOL
    last = np.abs(ours[-1] - padded[ours.shape[0] - 1]).max()
    if n % 160 < 40 - 10:  # >= 10 samples past the end: reflected here, zeros there
        assert last > 2 * TOL
    elif n % 160 >= 40:  # the last window ends inside the audio
        assert last <= TOL


def test_log_mel_is_unpadded_whisper():
    audio = _noise(8000, seed=3)
    np.testing.assert_array_equal(F.log_mel(audio), F.whisper_log_mel(audio, pad_to_30s=False))


# ----------------------------------------------------------------------------- w2v-BERT fbank


@pytest.mark.parametrize("signal", ["noise", "sine"])
@pytest.mark.parametrize("num_samples", [16000, 16123, 48000])  # 98 (even), 99 (odd), 298 fbank frames
def test_w2v_bert_fbank_matches_extractor(num_samples, signal):
    audio = SIGNALS[signal](num_samples)
    out = SeamlessM4TFeatureExtractor()(audio, sampling_rate=SR, return_attention_mask=True, return_tensors="np")
    ref, mask = out.input_features[0], out.attention_mask[0]
    ours = F.w2v_bert_fbank(audio)
    n = F.w2v_bert_num_frames(num_samples)
    assert ours.shape == (n, 160) and ours.dtype == np.float32
    # The extractor pads an odd frame count and masks that last stacked frame out.
    assert mask.sum() == n and mask[:n].all()
    assert np.abs(ours - ref[:n]).max() <= TOL


def test_w2v_bert_fbank_no_stacking():
    audio = _noise(8000, seed=4)
    flat = F.w2v_bert_fbank(audio, stride=1)
    stacked = F.w2v_bert_fbank(audio, stride=2)
    assert flat.shape == (48, 80)
    np.testing.assert_array_equal(stacked, flat.reshape(24, 160))


# ----------------------------------------------------------------------------- dispatcher


@pytest.mark.parametrize("kind,fn,dim", [
    ("whisper", lambda a: F.whisper_log_mel(a, n_mels=128, pad_to_30s=True), 128),
    ("w2v_bert", F.w2v_bert_fbank, 160),
    ("log_mel", F.log_mel, 80),
])
def test_compute_features_dispatch(kind, fn, dim):
    audio = _noise(9000, seed=5)
    overrides = {"n_mels": 128, "pad_to_30s": True} if kind == "whisper" else {}
    cfg = F.FeatureConfig(kind=kind, **overrides)
    feats = F.compute_features(audio, SR, kind, **overrides)
    np.testing.assert_array_equal(feats, fn(audio))
    np.testing.assert_array_equal(F.compute_features(audio, SR, config=cfg), feats)
    assert feats.shape == (cfg.num_frames(audio.size), cfg.feature_dim) and cfg.feature_dim == dim


def test_compute_features_resamples_only_when_asked():
    audio = _sine(22050, freq=1000.0, sr=22050)
    with pytest.raises(ValueError, match=r"sample_rate.*16000.*22050"):
        F.compute_features(audio, 22050, "log_mel")
    feats = F.compute_features(audio, 22050, "log_mel", resample=True)
    np.testing.assert_array_equal(feats, F.log_mel(F.resample(audio, 22050)))


# ----------------------------------------------------------------------------- resampling / loading


def test_resample_keeps_frequency_and_length_ratio():
    orig = 22050
    audio = _sine(orig, freq=1000.0, sr=orig)  # 1 s
    out = F.resample(audio, orig, SR)
    assert out.dtype == np.float32
    assert out.size == math.ceil(audio.size * SR / orig) == SR
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(out.size, d=1.0 / SR)
    assert abs(freqs[spectrum.argmax()] - 1000.0) <= 1.0
    # Amplitude preserved away from the edges.
    assert abs(np.abs(out[1000:-1000]).max() - 0.5) < 0.01


def test_load_audio_resamples_wav(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, _sine(8000, freq=300.0, sr=8000), 8000, subtype="FLOAT")
    audio = F.load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size == 16000
    np.testing.assert_allclose(audio, F.resample(_sine(8000, freq=300.0, sr=8000), 8000), atol=1e-6)


@pytest.mark.skipif(not FSDD.is_dir(), reason="shared/data/fsdd not present")
def test_load_real_fsdd_recording():
    path = sorted(FSDD.glob("*.wav"))[0]
    info = soundfile.info(path)
    assert info.samplerate == 8000 and info.channels == 1
    audio = F.load_audio(path)
    assert audio.size == info.frames * 2  # 8 kHz -> 16 kHz
    assert np.isfinite(audio).all() and 0.0 < np.abs(audio).max() <= 1.5
    feats = F.compute_features(audio, SR, "w2v_bert")
    assert feats.shape == (F.w2v_bert_num_frames(audio.size), 160)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("audio,pattern", [
    (np.zeros(0, np.float32), r"audio is empty"),
    (np.zeros((1000, 2), np.float32), r"audio must be mono.*2 channels"),
    (np.zeros((2, 3, 400), np.float32), r"audio must be a mono"),
    (np.array([0.0, np.nan] * 500, np.float32), r"audio has 500 non-finite"),
    (np.array([0.0, np.inf] * 500, np.float32), r"audio has 500 non-finite"),
    (np.zeros(1000, np.int16), r"audio has integer dtype int16"),
])
@pytest.mark.parametrize("kind", ["whisper", "w2v_bert"])
def test_bad_audio_raises(audio, pattern, kind):
    with pytest.raises(ValueError, match=pattern):
        F.compute_features(audio, SR, kind)
    with pytest.raises(ValueError, match=r"clip\.wav: " + pattern):
        F.compute_features(audio, SR, kind, source="data/clip.wav")


@pytest.mark.parametrize("sample_rate", [0, -16000, 16000.5, None])
def test_bad_sample_rate_raises(sample_rate):
    with pytest.raises(ValueError, match="sample_rate"):
        F.compute_features(_noise(1000), sample_rate, "log_mel")


@pytest.mark.parametrize("fn", [F.whisper_log_mel, F.w2v_bert_fbank])
def test_front_ends_reject_other_rates(fn):
    with pytest.raises(ValueError, match=r"sample_rate.*16000.*8000"):
        fn(_noise(4000), 8000)


def test_single_channel_2d_is_squeezed():
    audio = _noise(4000, seed=6)
    np.testing.assert_array_equal(F.log_mel(audio[:, None]), F.log_mel(audio))
    np.testing.assert_array_equal(F.log_mel(audio[None, :]), F.log_mel(audio))


def test_too_short_audio_raises():
    with pytest.raises(ValueError, match="too short for w2v_bert_fbank: 500 samples"):
        F.w2v_bert_fbank(_noise(500))
    with pytest.raises(ValueError, match="too short for whisper_log_mel: 150 samples"):
        F.log_mel(_noise(150))
    # Padded to 30 s, any non-empty clip works (as in the extractor).
    assert F.whisper_log_mel(_noise(150), pad_to_30s=True).shape == (3000, 80)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="FeatureConfig.kind"):
        F.FeatureConfig(kind="mfcc")
    with pytest.raises(ValueError, match="FeatureConfig.sample_rate"):
        F.FeatureConfig(sample_rate=8000)
    with pytest.raises(ValueError, match="FeatureConfig.stride"):
        F.FeatureConfig(kind="w2v_bert", stride=0)


def test_load_audio_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope" / "missing.wav"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        F.load_audio(missing)
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.zeros((800, 2), np.float32), 8000)
    with pytest.raises(ValueError, match=rf"{stereo}: audio must be mono, file has 2 channels"):
        F.load_audio(stereo)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match=rf"{garbage}: cannot decode audio"):
        F.load_audio(garbage)
    with pytest.raises(ValueError, match="orig_sr"):
        F.resample(_noise(100), 0)
