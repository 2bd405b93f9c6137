"""Results remembered by the contents of the arrays they were computed from: a bounded map,
least recently used first out. The evaluations' frozen encoders (eval_lib.frozen_encoder,
WhisperASR) use it to run once per batch of audio that several tasks read; `array_key` is the
one digest of array contents every such key uses (also the feature cache's shared audio and the
Whisper baselines' texts)."""

from __future__ import annotations

import collections
import hashlib
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def array_key(arrays: Sequence[np.ndarray | None]) -> bytes:
    """A digest of the arrays' shapes, dtypes and bytes (None counts as an absent array)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.digest()


class ArrayMemo(Generic[T]):
    """`memo(arrays, compute)`: compute()'s result, or the one remembered for arrays with the
    same contents among the last `size` distinct ones asked for."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"ArrayMemo: size must be >= 1, got {size}")
        self.size = size
        self.results: collections.OrderedDict[bytes, T] = collections.OrderedDict()

    def __call__(self, arrays: Sequence[np.ndarray | None], compute: Callable[[], T]) -> T:
        key = array_key(arrays)
        if key not in self.results:
            self.results[key] = compute()
            while len(self.results) > self.size:
                self.results.popitem(last=False)
        self.results.move_to_end(key)
        return self.results[key]
