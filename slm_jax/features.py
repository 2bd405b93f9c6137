"""Audio front ends: waveform -> log-mel features, computed host-side in numpy.

Three front ends, each matching a reference feature extractor from `transformers`
so that imported speech encoders see exactly the inputs they were trained on:

- `whisper_log_mel`: `WhisperFeatureExtractor` (Whisper encoder).
- `w2v_bert_fbank`: `SeamlessM4TFeatureExtractor` (w2v-BERT 2.0 Conformer): Kaldi fbank,
  per-utterance normalisation, 2-frame stacking.
- `log_mel`: the front end of our own tiny Conformer. It is the Whisper recipe without the
  30 s padding (80 mel, 25 ms Hann window = 400 samples, 10 ms hop = 160 samples at 16 kHz),
  so it needs no code of its own and stays comparable with the Whisper features.

`compute_features` dispatches on a frozen `FeatureConfig`; `load_audio` and `resample` bring
files to 16 kHz mono float32. Every function validates its input and raises ValueError
naming the offending field (and the file, when a path is known) instead of returning a
silently wrong result.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
KINDS = ("whisper", "w2v_bert", "log_mel")

# Whisper: 25 ms window, 10 ms hop, 30 s chunks.
WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_CHUNK_SECONDS = 30

# Kaldi fbank as used by SeamlessM4TFeatureExtractor (w2v-BERT 2.0).
FBANK_FRAME = 400  # 25 ms
FBANK_HOP = 160  # 10 ms
FBANK_FFT = 512  # next power of two
FBANK_PREEMPHASIS = 0.97
FBANK_MEL_FLOOR = 1.192092955078125e-07  # float32 machine epsilon, Kaldi's log floor
FBANK_LOW_FREQ = 20.0
FBANK_INT16_SCALE = 32768.0  # Kaldi works on 16-bit integer sample values


# ----------------------------------------------------------------------------- validation


def _where(source: str | os.PathLike | None) -> str:
    return f"{os.fspath(source)}: " if source is not None else ""


def check_sample_rate(sample_rate: Any, field: str = "sample_rate", source=None) -> int:
    """Returns `sample_rate` as a positive int or raises ValueError naming `field`."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float, np.floating)):
        raise ValueError(f"{_where(source)}{field} must be a positive number of Hz, got {sample_rate!r}")
    if not sample_rate > 0 or sample_rate != int(sample_rate):
        raise ValueError(f"{_where(source)}{field} must be a positive integer number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def as_mono_float32(audio: Any, source=None) -> np.ndarray:
    """Validates a waveform and returns it as a 1-D float32 array.

    Accepts 1-D arrays and single-channel 2-D arrays ([N, 1] as returned by soundfile, or
    [1, N]). Rejects empty audio, more than one channel, integer PCM (which would be
    silently 32768x too loud: convert to float in [-1, 1] first) and NaN/inf samples.
    """
    where = _where(source)
    x = np.asarray(audio)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        if np.issubdtype(x.dtype, np.integer):
            raise ValueError(
                f"{where}audio has integer dtype {x.dtype}; pass float samples in [-1, 1] "
                "(e.g. int16 / 32768)"
            )
        raise ValueError(f"{where}audio must be a float array, got dtype {x.dtype}")
    if x.ndim == 2:
        if x.shape[1] == 1 or x.shape[0] == 1:
            x = x.reshape(-1)
        else:
            channels = min(x.shape)
            raise ValueError(
                f"{where}audio must be mono, got shape {x.shape} ({channels} channels); downmix or pick a channel"
            )
    elif x.ndim != 1:
        raise ValueError(f"{where}audio must be a mono 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{where}audio is empty (0 samples)")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"{where}audio has {bad} non-finite (NaN/inf) samples")
    return x


# ----------------------------------------------------------------------------- loading


def resample(audio: Any, orig_sr: int, target_sr: int = SAMPLE_RATE, source=None) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly with the gcd-reduced ratio).

    Output length is ceil(len * target_sr / orig_sr); returns float32.
    """
    from scipy import signal

    orig_sr = check_sample_rate(orig_sr, "orig_sr", source)
    target_sr = check_sample_rate(target_sr, "target_sr", source)
    x = as_mono_float32(audio, source)
    if orig_sr == target_sr:
        return x.copy()
    g = math.gcd(orig_sr, target_sr)
    y = signal.resample_poly(x.astype(np.float64), target_sr // g, orig_sr // g)
    return y.astype(np.float32)


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Reads an audio file (anything libsndfile reads) as float32 mono at `target_sr`.

    Multi-channel files are rejected (no silent downmix); other rates are resampled.
    """
    import soundfile

    target_sr = check_sample_rate(target_sr, "target_sr", path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: audio file not found")
    try:
        data, sr = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors are RuntimeError subclasses with terse messages
        raise ValueError(f"{os.fspath(path)}: cannot decode audio ({e})") from e
    if data.shape[1] != 1:
        raise ValueError(f"{os.fspath(path)}: audio must be mono, file has {data.shape[1]} channels")
    audio = as_mono_float32(data, path)
    return resample(audio, sr, target_sr, source=path) if sr != target_sr else audio


# ----------------------------------------------------------------------------- mel banks


def _hz_to_mel_slaney(f):
    f = np.asarray(f, np.float64)
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz_slaney(m):
    m = np.asarray(m, np.float64)
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def _hz_to_mel_kaldi(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


def _triangles(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[num_points, num_filters] triangular filters with corners at consecutive `centers`."""
    diff = np.diff(centers)
    slopes = centers[None, :] - points[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def slaney_mel_filters(n_mels: int, n_fft: int = WHISPER_N_FFT, sample_rate: int = SAMPLE_RATE,
                       fmax: float = 8000.0) -> np.ndarray:
    """[n_fft//2+1, n_mels] Slaney-scale, area-normalised mel filters (librosa/Whisper)."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    hz = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(fmax), n_mels + 2))
    filters = _triangles(fft_freqs, hz)
    return filters * (2.0 / (hz[2:] - hz[:-2]))[None, :]


def kaldi_mel_filters(n_mels: int, n_fft: int = FBANK_FFT, sample_rate: int = SAMPLE_RATE,
                      fmin: float = FBANK_LOW_FREQ) -> np.ndarray:
    """[n_fft//2+1, n_mels] Kaldi mel filters: triangles in mel space, no normalisation."""
    mels = np.linspace(_hz_to_mel_kaldi(fmin), _hz_to_mel_kaldi(sample_rate // 2), n_mels + 2)
    fft_mels = _hz_to_mel_kaldi(sample_rate / n_fft * np.arange(n_fft // 2 + 1))
    return _triangles(fft_mels, mels)


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """[1 + (len(x) - length) // hop, length] read-only view of overlapping frames."""
    return np.lib.stride_tricks.sliding_window_view(x, length)[::hop]


# ----------------------------------------------------------------------------- Whisper


def whisper_num_frames(num_samples: int, pad_to_30s: bool = False, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of frames `whisper_log_mel` returns for `num_samples` samples."""
    n = WHISPER_CHUNK_SECONDS * sample_rate if pad_to_30s else num_samples
    return n // WHISPER_HOP


def whisper_log_mel(audio: Any, sample_rate: int = SAMPLE_RATE, n_mels: int = 80,
                    pad_to_30s: bool = False, source=None) -> np.ndarray:
    """Whisper log-mel spectrogram, [frames, n_mels] float32.

    Recipe (WhisperFeatureExtractor): periodic Hann window of 400, hop 160, STFT centred with
    reflect padding of 200 samples, power spectrum, Slaney mel (0-8 kHz, area-normalised), the
    last STFT frame dropped, log10 of max(mel, 1e-10), clamp to (global max - 8), (x + 4) / 4.

    pad_to_30s=True zero-pads or truncates the audio to 480000 samples first and returns 3000
    frames: the extractor's default output (padding="max_length", truncation=True).
    pad_to_30s=False returns len(audio) // 160 frames and equals the extractor called with
    padding="longest" on this one utterance. Versus the first len(audio) // 160 frames of
    the 30 s output, the two differ in:
      * the last frame only, and only when len(audio) % 160 < 40: frame t covers samples
        [160 t - 200, 160 t + 200), so the last frame reaches 40 - len % 160 samples past the
        end, which are reflected audio here and zeros in the padded version (they sit in the
        window's taper, weight <= 0.1: ~1e-2 difference on noise);
      * the clamp floor: "global max - 8" is taken over the frames each version computes,
        so it moves only if the global max is in that last frame (or, in the 30 s version,
        in the frames after the audio, which hold at most 200 samples of it).
    All other frames are identical (tested).
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate", source)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"{_where(source)}sample_rate: whisper_log_mel expects {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    x = as_mono_float32(audio, source)
    if pad_to_30s:
        n = WHISPER_CHUNK_SECONDS * sample_rate
        x = np.pad(x[:n], (0, max(0, n - x.size)))
    elif x.size <= WHISPER_N_FFT // 2:
        raise ValueError(
            f"{_where(source)}audio too short for whisper_log_mel: {x.size} samples, need more than "
            f"{WHISPER_N_FFT // 2} (the reflect padding of the centred STFT)"
        )
    x = np.pad(x.astype(np.float64), WHISPER_N_FFT // 2, mode="reflect")
    window = np.hanning(WHISPER_N_FFT + 1)[:-1]  # periodic Hann, = torch.hann_window(400)
    frames = _frames(x, WHISPER_N_FFT, WHISPER_HOP)[:-1]  # drop the last frame
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ slaney_mel_filters(n_mels, WHISPER_N_FFT, sample_rate)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def log_mel(audio: Any, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, source=None) -> np.ndarray:
    """Front end of our own Conformer: the Whisper recipe, 25 ms / 10 ms, no 30 s padding."""
    return whisper_log_mel(audio, sample_rate, n_mels=n_mels, pad_to_30s=False, source=source)


# ----------------------------------------------------------------------------- w2v-BERT fbank


def w2v_bert_num_frames(num_samples: int, stride: int = 2) -> int:
    """Number of (stacked) frames `w2v_bert_fbank` returns for `num_samples` samples."""
    if num_samples < FBANK_FRAME:
        return 0
    return (1 + (num_samples - FBANK_FRAME) // FBANK_HOP) // stride


def w2v_bert_fbank(audio: Any, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 80, stride: int = 2,
                   source=None) -> np.ndarray:
    """w2v-BERT 2.0 input features, [fbank_frames // stride, num_mel_bins * stride] float32.

    Recipe (SeamlessM4TFeatureExtractor, i.e. Kaldi fbank): samples scaled by 32768; frames of
    400 with hop 160 and no centring; per frame: remove DC offset, pre-emphasis 0.97 (first
    sample scaled by 0.03), symmetric Povey window (hann^0.85), zero-pad to 512, power
    spectrum, Kaldi mel filters (20 Hz - 8 kHz, triangles in mel space), natural log of
    max(mel, float32 eps). Then per-utterance, per-bin normalisation
    (x - mean) / sqrt(var(ddof=1) + 1e-7) over time, and `stride` consecutive frames
    concatenated along the feature axis.

    The extractor pads an odd frame count to even with a zero frame before stacking and masks
    that last stacked frame out (attention_mask 0); here it is dropped, so the output equals
    the extractor's `input_features[attention_mask == 1]`.
    """
    sample_rate = check_sample_rate(sample_rate, "sample_rate", source)
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"{_where(source)}sample_rate: w2v_bert_fbank expects {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    if num_mel_bins <= 0:
        raise ValueError(f"num_mel_bins must be positive, got {num_mel_bins}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    x = as_mono_float32(audio, source)
    num_frames = 1 + (x.size - FBANK_FRAME) // FBANK_HOP if x.size >= FBANK_FRAME else 0
    if num_frames < max(2, stride):
        need = FBANK_FRAME + (max(2, stride) - 1) * FBANK_HOP
        raise ValueError(
            f"{_where(source)}audio too short for w2v_bert_fbank: {x.size} samples, need at least {need} "
            f"({max(2, stride)} frames of 25 ms for the variance and the stacking)"
        )
    x = (x * np.float32(FBANK_INT16_SCALE)).astype(np.float64)
    frames = _frames(x, FBANK_FRAME, FBANK_HOP)
    frames = frames - frames.mean(axis=-1, keepdims=True)
    emph = np.empty_like(frames)
    emph[:, 1:] = frames[:, 1:] - FBANK_PREEMPHASIS * frames[:, :-1]
    emph[:, 0] = frames[:, 0] * (1.0 - FBANK_PREEMPHASIS)
    window = np.hanning(FBANK_FRAME) ** 0.85  # symmetric Povey window
    # The reference stores the spectrum as complex64 and the log-mel as a float32 array in
    # [frames, bins] Fortran order, then normalises in float32; we round at the same points
    # and keep the same memory order (numpy sums contiguous data pairwise, strided data
    # sequentially). It matters for near-constant bins (e.g. a stationary tone): their tiny
    # variance amplifies any rounding difference up to ~1e-2.
    spec = np.fft.rfft(emph * window, n=FBANK_FFT, axis=-1).astype(np.complex64)
    power = np.abs(spec, dtype=np.float64) ** 2
    mel = power @ kaldi_mel_filters(num_mel_bins, FBANK_FFT, sample_rate)
    feats = np.asfortranarray(np.log(np.maximum(mel, FBANK_MEL_FLOOR)).astype(np.float32))
    feats = (feats - feats.mean(0, keepdims=True)) / np.sqrt(feats.var(0, ddof=1, keepdims=True) + 1e-7)
    usable = (num_frames // stride) * stride
    return feats[:usable].reshape(num_frames // stride, num_mel_bins * stride).astype(np.float32)


# ----------------------------------------------------------------------------- dispatcher


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Which front end to run and how.

    kind: "whisper" | "w2v_bert" | "log_mel".
    n_mels: mel bins (whisper: 80 or 128; w2v_bert: num_mel_bins, 80).
    pad_to_30s: whisper only; pad/truncate to 30 s (3000 frames) like the Whisper extractor.
    stride: w2v_bert only; frames stacked per output frame.
    resample: if False (default), audio at another rate than `sample_rate` is an error; if
      True it is resampled with `resample()`. Off by default so a wrong rate is never hidden.
    """

    kind: str = "log_mel"
    sample_rate: int = SAMPLE_RATE
    n_mels: int = 80
    pad_to_30s: bool = False
    stride: int = 2
    resample: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"FeatureConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"FeatureConfig.sample_rate must be {SAMPLE_RATE} (all front ends are 16 kHz), "
                             f"got {self.sample_rate}")
        if self.n_mels <= 0:
            raise ValueError(f"FeatureConfig.n_mels must be positive, got {self.n_mels}")
        if self.stride < 1:
            raise ValueError(f"FeatureConfig.stride must be >= 1, got {self.stride}")

    @property
    def feature_dim(self) -> int:
        """Size of the last axis of the features."""
        return self.n_mels * self.stride if self.kind == "w2v_bert" else self.n_mels

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` samples at 16 kHz."""
        if self.kind == "w2v_bert":
            return w2v_bert_num_frames(num_samples, self.stride)
        return whisper_num_frames(num_samples, self.kind == "whisper" and self.pad_to_30s)


def compute_features(audio: Any, sample_rate: int, kind: str | None = None, *,
                     config: FeatureConfig | None = None, source=None, **overrides) -> np.ndarray:
    """Features for one utterance, [frames, config.feature_dim] float32.

    Either pass a `config`, or `kind` plus FeatureConfig fields as keyword overrides
    (e.g. `compute_features(x, 16000, "whisper", n_mels=128)`). `source` (e.g. the file path)
    is named in error messages.
    """
    if config is None:
        config = FeatureConfig(kind=kind or "log_mel", **overrides)
    elif kind is not None or overrides:
        config = dataclasses.replace(config, **({"kind": kind} if kind else {}), **overrides)
    sample_rate = check_sample_rate(sample_rate, "sample_rate", source)
    audio = as_mono_float32(audio, source)
    if sample_rate != config.sample_rate:
        if not config.resample:
            raise ValueError(
                f"{_where(source)}sample_rate: expected {config.sample_rate} Hz, got {sample_rate} Hz "
                "(resample first, or set resample=True)"
            )
        audio = resample(audio, sample_rate, config.sample_rate, source=source)
    if config.kind == "whisper":
        return whisper_log_mel(audio, config.sample_rate, config.n_mels, config.pad_to_30s, source=source)
    if config.kind == "w2v_bert":
        return w2v_bert_fbank(audio, config.sample_rate, config.n_mels, config.stride, source=source)
    return log_mel(audio, config.sample_rate, config.n_mels, source=source)
