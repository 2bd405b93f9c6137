"""Shared pieces of the Hugging Face importers: reading a `save_pretrained` directory
(config.json + *.safetensors, sharded or not), taking tensors by name with shape checks, and
validating a converted pytree against the Flax model's abstract parameters.

Every failure raises `CheckpointError` naming the checkpoint path and the offending key.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


class HFCheckpoint:
    """Tensors of a Hugging Face checkpoint directory, as float32 numpy arrays.

    `take(key, shape)` returns a tensor and records it as used; `check_all_used()` reports
    tensors the importer did not consume (so nothing is silently dropped)."""

    def __init__(self, path: str):
        self.path = str(path)
        if not os.path.isdir(self.path):
            raise CheckpointError(f"checkpoint directory not found: {self.path}")
        cfg_file = os.path.join(self.path, "config.json")
        if not os.path.isfile(cfg_file):
            raise CheckpointError(f"{cfg_file}: missing config.json")
        with open(cfg_file) as f:
            self.config: dict[str, Any] = json.load(f)
        files = sorted(fn for fn in os.listdir(self.path) if fn.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors files (save with safe_serialization=True)")
        from safetensors.numpy import load_file
        self._tensors: dict[str, np.ndarray] = {}
        self._origin: dict[str, str] = {}
        for fn in files:
            for k, v in load_file(os.path.join(self.path, fn)).items():
                self._tensors[k] = v
                self._origin[k] = fn
        self._used: set[str] = set()

    def keys(self) -> Iterable[str]:
        return self._tensors.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor `key` as float32, checked against `shape` when given."""
        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: missing tensor '{key}'")
        value = np.asarray(self._tensors[key], dtype=np.float32)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.path}/{self._origin[key]}: tensor '{key}' has shape {tuple(value.shape)}, "
                f"expected {tuple(shape)}")
        self._used.add(key)
        return value

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        """Raise if tensors were left unconverted (prefix match on `ignore`)."""
        ignore = tuple(ignore)
        left = sorted(k for k in self._tensors if k not in self._used and not k.startswith(ignore))
        if left:
            raise CheckpointError(f"{self.path}: tensors not used by the importer: {left[:10]}"
                                  + (" ..." if len(left) > 10 else ""))


def _path_str(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def validate_tree(params: Mapping, abstract: Mapping, source: str) -> None:
    """Check converted `params` against `abstract` (e.g. `jax.eval_shape(model.init, ...)`
    params, unboxed): same keys and shapes. The error names the parameter path and `source`."""
    got = {_path_str(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
    want = {_path_str(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing:
        raise CheckpointError(f"{source}: converted params lack {missing[:10]}")
    if extra:
        raise CheckpointError(f"{source}: converted params have unexpected {extra[:10]}")
    for k, shape in want.items():
        if tuple(got[k]) != shape:
            raise CheckpointError(f"{source}: param '{k}' has shape {tuple(got[k])}, model expects {shape}")


def nest(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out
