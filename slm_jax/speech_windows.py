"""Shared encoder windows: consecutive utterances packed into the frozen Whisper encoder's windows.

Whisper was trained on 30 s windows of running speech. Alone in its window, a short utterance
(one spoken digit) gives states that carry more of the voice than of the words, and an adapter
fit on synthetic voices reads human ones badly from them. With `SpeechWindows.frames` > 0 the
frozen speech path instead packs a stream of utterances into windows of that many log-mel
frames, as a recording of several utterances would fill them, encodes each window once, and cuts
each utterance's frames back out for the adapter (benchmarks/README.md, "Shared encoder
windows"):

  * segment: an utterance's valid frames followed by `gap` frames of its log-mel floor (its
    features' max - SILENCE_BELOW_MAX, as whisper_log_mel writes silent audio), rounded up to a
    multiple of the feature frames per adapter position (2 x the adapter's stride), so every
    utterance starts on an adapter position;
  * windows: next-fit over the stream in order: a segment goes into the current window when it
    fits, else it opens the next one (a segment longer than `frames` has a window of its own);
  * outputs: utterance i keeps the positions of its own frames, as many as encoding it alone
    gives (ceil(ceil(n / 2) / stride)); the gap's positions are dropped. An utterance whose
    encoder frames do not fill its last position leaves gap frames in that position (with
    "mean" subsampling they are averaged in, where alone they are masked out). The window
    rows are encoded with the model's own trailing silence off (each segment brings its gap).

An utterance's outputs then depend on its neighbours in the stream: the feature cache packs
the training examples in the order it stores them (`PackedStream`, whatever its encoder
batch), and evaluation packs each batch's utterances in the batch's order. The packing runs on
the host around the jitted encoder, not inside the model, so a run with windows trains from a
feature cache and evaluates through `eval_lib.frozen_encoder`; training from audio with
windows is refused (`train_lib.train`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np

from slm_jax.models.slm import SLM, SLMConfig
from slm_jax.models.whisper import SILENCE_BELOW_MAX, WhisperEncoderConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SpeechWindows:
    """frames: log-mel frames per shared encoder window (0: every utterance alone in its own
    row, the model's path); gap: log-mel floor frames after each utterance in a window."""
    frames: int = 0
    gap: int = 100

    def __post_init__(self):
        if self.frames < 0 or self.gap < 0:
            raise ValueError(f"SpeechWindows.frames and .gap must be >= 0, got {self.frames} and {self.gap}")

    @property
    def on(self) -> bool:
        return self.frames > 0


def check_config(windows: SpeechWindows, config: SLMConfig) -> None:
    """Windows need a Whisper speech encoder whose window holds SpeechWindows.frames."""
    if not windows.on:
        return
    enc = config.speech_encoder
    if not isinstance(enc, WhisperEncoderConfig):
        raise ValueError(f"SpeechWindows.frames={windows.frames} packs utterances into a Whisper encoder's "
                         f"windows; this SLM's speech encoder is a {type(enc).__name__}. Set it to 0.")
    if windows.frames > enc.max_input_frames:
        raise ValueError(f"SpeechWindows.frames={windows.frames} is longer than the Whisper encoder's window "
                         f"({enc.max_input_frames} log-mel frames)")


def frames_per_position(config: SLMConfig) -> int:
    """Log-mel frames per adapter input position: Whisper's stride-2 conv times the adapter's stride."""
    return 2 * config.adapter.stride


def positions(n: int, config: SLMConfig) -> int:
    """Adapter input positions of an n-frame utterance encoded alone (the encoder's and the
    subsampling's masks): ceil(ceil(n / 2) / stride)."""
    return -(-(-(-n // 2)) // config.adapter.stride)


def segment(features: np.ndarray, gap: int, align: int) -> np.ndarray:
    """An utterance's valid log-mel frames [n, mel] followed by `gap` frames of its floor, rounded
    up to a multiple of `align` frames."""
    n = features.shape[0]
    pad = gap + (-(n + gap)) % align
    floor = np.full((pad, features.shape[1]), features.max() - SILENCE_BELOW_MAX, features.dtype)
    return np.concatenate([features, floor])


class WindowStream:
    """Next-fit packing of a stream of segments into windows of `frames` frames. `add` returns
    where the segment went (window number, frame offset); `take` hands over the closed windows."""

    def __init__(self, frames: int):
        self.frames = frames
        self.count = 0                      # windows opened so far
        self._current: list[np.ndarray] = []
        self._used = 0
        self.closed: list[np.ndarray] = []  # closed windows not yet taken

    def add(self, seg: np.ndarray) -> tuple[int, int]:
        if self._current and self._used + len(seg) > self.frames:
            self.close()
        if not self._current:
            self.count += 1
        self._current.append(seg)
        self._used += len(seg)
        return self.count - 1, self._used - len(seg)

    def close(self) -> None:
        if self._current:
            self.closed.append(np.concatenate(self._current))
            self._current, self._used = [], 0

    def take(self) -> list[np.ndarray]:
        out, self.closed = self.closed, []
        return out


def padded(windows: Sequence[np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n_i, mel] zero-padded to max(frames, longest) frames [R, T, mel], with masks [R, T]."""
    t = max(frames, max(len(w) for w in windows))
    x = np.zeros((len(windows), t, windows[0].shape[1]), np.float32)
    mask = np.zeros((len(windows), t), np.int32)
    for i, w in enumerate(windows):
        x[i, :len(w)], mask[i, :len(w)] = w, 1
    return x, mask


def jitted_encoder(config: SLMConfig, windows: SpeechWindows | None = None):
    """jit of `(speech_encoder params, features, feature_mask) -> SLM.speech_encoder_outputs`:
    the frozen speech path whose outputs a cache stores and a precomputed batch carries. With
    windows on, it encodes window rows: the model's trailing silence is off (segments bring theirs)."""
    if windows is not None and windows.on:
        config = dataclasses.replace(config, speech_encoder=dataclasses.replace(config.speech_encoder,
                                                                                silence_frames=0))
    module = SLM(config)
    return jax.jit(lambda p, f, m: module.apply({"params": {"speech_encoder": p}}, f, m,
                                                method=SLM.speech_encoder_outputs))


class FrozenSpeech:
    """The frozen speech path on the host: audio features -> adapter input frames per utterance,
    each utterance alone (windows off) or packed with its neighbours (see the module docstring)."""

    def __init__(self, config: SLMConfig, params: Mapping[str, Any], windows: SpeechWindows | None = None):
        self.windows = windows or SpeechWindows()
        check_config(self.windows, config)
        self.config, self.params = config, params
        self.encode = jitted_encoder(config, self.windows)
        self.align = frames_per_position(config)

    def batch(self, features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features [B, T, mel], mask [B, T] -> (frames [B, P, D], mask [B, P]): the batch's
        utterances as one stream (windows on) or each alone."""
        if not self.windows.on:
            return tuple(np.asarray(x) for x in jax.device_get(self.encode(self.params, features, mask)))
        return stacked(self.packed(features, mask).ready())

    def packed(self, features: np.ndarray, mask: np.ndarray) -> "PackedStream":
        """The finished stream of a batch's utterances (windows on), in the batch's order."""
        packed = PackedStream(self, rows=len(features))
        for f, n in zip(np.asarray(features), np.asarray(mask).astype(bool).sum(1)):
            packed.add(f[:n])
        packed.finish()
        return packed


class PackedStream:
    """A stream of utterances through shared windows (FrozenSpeech's, windows on). `add` an
    utterance's valid log-mel frames; each time `rows` windows are full they are encoded
    (asynchronously: the previous group is brought back meanwhile); `ready` yields the adapter
    input frames of every utterance brought back so far, in the order added. The packing
    depends on the stream only, not on `rows`."""

    def __init__(self, frozen: FrozenSpeech, rows: int):
        self.frozen, self.rows = frozen, rows
        self._packer = WindowStream(frozen.windows.frames)
        self._pending: collections.deque = collections.deque()   # (window, offset, positions) not yet back
        self._done: collections.deque = collections.deque()      # frames back, not yet taken
        self._in_flight = None                                    # (first window, device outputs)
        self._dispatched = 0                                      # windows sent to the encoder

    def add(self, features: np.ndarray) -> None:
        f = self.frozen
        self._pending.append((*self._packer.add(segment(features, f.windows.gap, f.align)),
                              positions(len(features), f.config)))
        if len(self._packer.closed) >= self.rows:
            self._dispatch(self._packer.take())

    def finish(self) -> None:
        """Encode the windows still open or waiting and bring everything back."""
        self._packer.close()
        windows = self._packer.take()
        for i in range(0, len(windows), self.rows):
            self._dispatch(windows[i:i + self.rows])
        self._collect()

    @property
    def windows(self) -> int:
        """Windows opened so far."""
        return self._packer.count

    def ready(self) -> Iterator[np.ndarray]:
        while self._done:
            yield self._done.popleft()

    def _dispatch(self, windows: list[np.ndarray]) -> None:
        f = self.frozen
        outputs = f.encode(f.params, *padded(windows, f.windows.frames))
        self._collect()
        self._in_flight = (self._dispatched, outputs)
        self._dispatched += len(windows)

    def _collect(self) -> None:
        if self._in_flight is None:
            return
        (first, outputs), self._in_flight = self._in_flight, None
        hidden = np.asarray(jax.device_get(outputs[0]))
        a = self.frozen.align
        while self._pending and self._pending[0][0] < first + len(hidden):
            w, off, c = self._pending.popleft()
            self._done.append(hidden[w - first, off // a:off // a + c].copy())


def stacked(frames: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance frames [c_i, D] -> zero-padded [B, max c, D] and mask [B, max c]."""
    frames = list(frames)
    out = np.zeros((len(frames), max(len(f) for f in frames), frames[0].shape[-1]), frames[0].dtype)
    mask = np.zeros(out.shape[:2], bool)
    for i, f in enumerate(frames):
        out[i, :len(f)], mask[i, :len(f)] = f, True
    return out, mask
