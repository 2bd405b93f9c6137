"""Fingerprints: JSON descriptions of what a saved artefact (a train checkpoint, a feature
cache) was built from, compared field by field when it is read back, and the one file hasher
that identifies weights on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp


def jsonable(value: Any) -> Any:
    """`value` as JSON data: dataclasses and mappings as dicts, sequences as lists, dtypes by
    name, anything else by repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        return jnp.dtype(value).name      # dtypes: jnp.float32, jnp.bfloat16, np.dtype
    except TypeError:
        return repr(value)


def hash_path(path: str) -> str:
    """sha256 (hex) of a file, or of a directory's files (relative names and contents, sorted).
    FileNotFoundError naming `path` when it does not exist."""
    def file_digest(p):
        with open(p, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    if os.path.isfile(path):
        return file_digest(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"not found: {path}")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0" + file_digest(full).encode())
    return h.hexdigest()


def differences(saved: Any, wanted: Any, saved_name: str = "saved", wanted_name: str = "run",
                path: str = "") -> list[str]:
    """One line per leaf field that differs: 'a.b: <saved_name> has X, <wanted_name> has Y'."""
    if isinstance(saved, Mapping) and isinstance(wanted, Mapping):
        out = []
        for k in sorted(set(saved) | set(wanted), key=str):
            sub = f"{path}.{k}" if path else str(k)
            out += differences(saved.get(k, "<absent>"), wanted.get(k, "<absent>"), saved_name, wanted_name, sub)
        return out
    return [] if saved == wanted else [f"{path}: {saved_name} has {saved!r}, {wanted_name} has {wanted!r}"]


def state_fingerprint(abstract_trainable, **configs) -> dict:
    """Fingerprint of a training run: the given configs and the trainable param shapes."""
    shapes = {"/".join(str(getattr(k, "key", k)) for k in path): list(x.shape)
              for path, x in jax.tree_util.tree_leaves_with_path(abstract_trainable)}
    return {"configs": {k: jsonable(v) for k, v in configs.items()}, "trainable_shapes": shapes}
