"""Reader for CTranslate2 `model.bin` files (no ctranslate2 needed).

Layout (little endian), as ctranslate2's `ModelSpec._serialize` writes it:

    uint32 binary_version                      (this reader: 2..6)
    string spec_name, uint32 spec_revision     (version >= 2)
    uint32 n_variables, then per variable:
        string name, uint8 rank, uint32 dims[rank],
        uint8 dtype_id (float32, int8, int16, int32, float16, bfloat16),  uint32 n_bytes, bytes
    uint32 n_aliases, then per alias: string alias, string target   (version >= 3)
    string = uint16 length (with the trailing NUL), utf-8 bytes, NUL

Quantized weights: an int8 `.../weight` comes with a float32 `.../weight_scale` (one per output
row); `dequantized` returns weight / scale, as ctranslate2 does.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


class CT2FormatError(ValueError):
    """A model.bin that cannot be read; the message names the file and what is wrong."""


@dataclasses.dataclass
class CT2Model:
    path: str
    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """Variable `name` (following aliases) as stored."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(f"{self.path}: variable {name!r} missing ({self.spec} revision {self.revision})")
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def dequantized(self, name: str) -> np.ndarray:
        """Variable `name` as float32; int8 weights divided by their `<name>_scale`."""
        name = self.aliases.get(name, name)   # an alias shares its target's scale
        value = self.get(name)
        if value.dtype == np.int8 and f"{name}_scale" in self:
            scale = self.get(f"{name}_scale").astype(np.float32)
            return value.astype(np.float32) / scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
        return value.astype(np.float32)


class _Cursor:
    def __init__(self, path: str, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos} reading {what} "
                                 f"({n} bytes needed, file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: malformed string for {what} at byte {self.pos - n}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.pos - n} is not utf-8 ({e})") from None


def read(path: str) -> CT2Model:
    """Parse `path` (a CTranslate2 model.bin). Raises CT2FormatError naming the file for an
    unsupported version, a truncated or malformed file, or trailing bytes."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CTranslate2 model file not found: {path}")
    with open(path, "rb") as f:
        cur = _Cursor(path, f.read())
    (version,) = cur.unpack("I", "binary_version")
    if not 2 <= version <= 6:
        raise CT2FormatError(f"{path}: binary version {version} is not a CTranslate2 model.bin this reader "
                             "supports (2..6); is it a CTranslate2 model?")
    spec = cur.string("spec name")
    (revision,) = cur.unpack("I", "spec revision")
    (count,) = cur.unpack("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        name = cur.string(f"name of variable {i}")
        (rank,) = cur.unpack("B", f"rank of {name}")
        shape = cur.unpack(f"{rank}I", f"shape of {name}") if rank else ()
        if version >= 4:
            (dtype_id,) = cur.unpack("B", f"dtype of {name}")
            if dtype_id >= len(DTYPES):
                raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
            dtype = DTYPES[dtype_id]
        else:
            (item_size,) = cur.unpack("B", f"item size of {name}")
            dtype = {4: np.float32, 2: np.float16, 1: np.int8}.get(item_size)
            if dtype is None:
                raise CT2FormatError(f"{path}: variable {name!r} has item size {item_size}")
        (nbytes,) = cur.unpack("I", f"byte count of {name}")
        raw = cur.take(nbytes, f"data of {name}")
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise CT2FormatError(f"{path}: variable {name!r} holds {nbytes} bytes, shape {list(shape)} of "
                                 f"{np.dtype(dtype).name if dtype != 'bfloat16' else dtype} needs "
                                 f"{int(np.prod(shape)) * itemsize}")
        if dtype == "bfloat16":   # widen to float32: the high half of each float32
            value = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            value = np.frombuffer(raw, dtype)
        variables[name] = value.reshape(shape)
    aliases = {}
    if version >= 3:
        (n_alias,) = cur.unpack("I", "alias count")
        for i in range(n_alias):
            alias = cur.string(f"alias {i}")
            aliases[alias] = cur.string(f"target of alias {alias!r}")
    if cur.pos != len(cur.data):
        raise CT2FormatError(f"{path}: {len(cur.data) - cur.pos} unexpected bytes after the last "
                             f"{'alias' if version >= 3 else 'variable'} (at byte {cur.pos})")
    return CT2Model(path, version, spec, revision, variables, aliases)
