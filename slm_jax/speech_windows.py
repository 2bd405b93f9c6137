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
  * windows: first-fit decreasing within each block of `block` consecutive utterances of the
    stream: the block's segments, longest first, each go into the first of its windows with room,
    else open the next one (a segment longer than `frames` has a window of its own). Blocks
    never share a window;
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
    row, the model's path); gap: log-mel floor frames after each utterance in a window; block:
    consecutive utterances packed together (first-fit decreasing; an evaluation batch is one
    stream, cut into blocks the same way)."""
    frames: int = 0
    gap: int = 100
    block: int = 64

    def __post_init__(self):
        if self.frames < 0 or self.gap < 0 or self.block < 1:
            raise ValueError(f"SpeechWindows needs frames >= 0, gap >= 0 and block >= 1, got frames={self.frames}, "
                             f"gap={self.gap}, block={self.block}")

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


def first_fit(lengths: Sequence[int], frames: int) -> tuple[list[tuple[int, int]], int]:
    """First-fit decreasing of segments of `lengths` frames into windows of `frames` frames:
    ((window, frame offset) of each segment in the given order, windows used). Longest first
    (ties in the given order), each into the first window with room, else a new one."""
    used: list[int] = []
    places: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        w = next((w for w, u in enumerate(used) if u + lengths[i] <= frames), len(used))
        if w == len(used):
            used.append(0)
        places[i] = (w, used[w])
        used[w] += lengths[i]
    return places, len(used)


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
    utterance's valid log-mel frames; each full block is packed (first_fit), and each time
    `rows` packed windows wait they are encoded (asynchronously: the previous group is brought
    back meanwhile); `ready` yields the adapter input frames of the utterances brought back, in
    the order added, as far as none is missing. The packing depends on the stream only, not on
    `rows`."""

    def __init__(self, frozen: FrozenSpeech, rows: int):
        self.frozen, self.rows = frozen, rows
        self._block: list[tuple[np.ndarray, int]] = []          # (segment, positions) not yet packed
        self._packed: list[np.ndarray] = []                     # windows packed, not yet encoded
        self._where: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
        #   window -> (utterance, frame offset, positions) of the utterances it holds
        self._frames: dict[int, np.ndarray] = {}                 # utterance -> frames back, not yet taken
        self._added = self._taken = 0                            # utterances added / yielded by `ready`
        self.windows = 0                                         # windows packed so far
        self._in_flight = None                                   # (first window, device outputs)
        self._dispatched = 0                                     # windows sent to the encoder

    def add(self, features: np.ndarray) -> None:
        f = self.frozen
        self._block.append((segment(features, f.windows.gap, f.align), positions(len(features), f.config)))
        if len(self._block) == f.windows.block:
            self._pack()
        while len(self._packed) >= self.rows:
            self._dispatch(self.rows)

    def finish(self) -> None:
        """Pack the last block, encode every window still waiting and bring everything back."""
        self._pack()
        while self._packed:
            self._dispatch(min(self.rows, len(self._packed)))
        self._collect()

    def ready(self) -> Iterator[np.ndarray]:
        while self._taken in self._frames:
            yield self._frames.pop(self._taken)
            self._taken += 1

    def _pack(self) -> None:
        if not self._block:
            return
        places, count = first_fit([len(seg) for seg, _ in self._block], self.frozen.windows.frames)
        held: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(count)]
        for (seg, n), (w, off) in zip(self._block, places):
            held[w].append((off, seg))
            self._where[self.windows + w].append((self._added, off, n))
            self._added += 1
        self._packed += [np.concatenate([seg for _, seg in sorted(h, key=lambda x: x[0])]) for h in held]
        self.windows += count
        self._block = []

    def _dispatch(self, n: int) -> None:
        f = self.frozen
        group, self._packed = self._packed[:n], self._packed[n:]
        outputs = f.encode(f.params, *padded(group, f.windows.frames))
        self._collect()
        self._in_flight = (self._dispatched, outputs)
        self._dispatched += n

    def _collect(self) -> None:
        if self._in_flight is None:
            return
        (first, outputs), self._in_flight = self._in_flight, None
        hidden = np.asarray(jax.device_get(outputs[0]))
        a = self.frozen.align
        for row in range(len(hidden)):
            for u, off, c in self._where.pop(first + row):
                self._frames[u] = hidden[row, off // a:off // a + c].copy()


def stacked(frames: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance frames [c_i, D] -> zero-padded [B, max c, D] and mask [B, max c]."""
    frames = list(frames)
    out = np.zeros((len(frames), max(len(f) for f in frames), frames[0].shape[-1]), frames[0].dtype)
    mask = np.zeros(out.shape[:2], bool)
    for i, f in enumerate(frames):
        out[i, :len(f)], mask[i, :len(f)] = f, True
    return out, mask
