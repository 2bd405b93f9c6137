"""Plain parameter files (flax msgpack) for foundation models, plus loading foundations into
an SLM parameter tree: a Hugging Face checkpoint directory or one of our own msgpack files."""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np

from slm_jax.checkpoints.hf_common import CheckpointError, validate_tree
from slm_jax.models.layers import SCANNED, stack_layers


def save_params(path: str, params: Mapping[str, Any]) -> None:
    """Write a param tree (numpy / jax arrays) to `path` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(host))
    os.replace(tmp, path)


def describe_tree(params: Any) -> str:
    """What a parameter tree holds, for error messages: its top-level keys and size."""
    if not isinstance(params, Mapping):
        return f"a {type(params).__name__}, not a tree of named parameters"
    leaves = jax.tree_util.tree_leaves(params)
    size = sum(int(np.prod(getattr(x, "shape", np.shape(x)))) for x in leaves)
    return f"top-level keys {sorted(map(str, params))} ({len(leaves)} arrays, {size:,} values)"


def load_params(path: str, abstract: Mapping[str, Any] | None = None, layout: bool = False) -> dict:
    """Read a msgpack param tree; with `abstract`, check keys and shapes (errors name the key,
    the file and what it holds); with `layout`, first bring unrolled layers into `abstract`'s
    scanned layout (see `in_layout`)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"parameter file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        params = flax.serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001  (msgpack raises ExtraData, ValueError, TypeError, ...)
        raise CheckpointError(f"{path}: not a flax msgpack parameter file ({len(data):,} bytes; "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    if abstract is not None:
        if not isinstance(params, Mapping):
            raise CheckpointError(f"{path}: holds {describe_tree(params)}; expected {describe_tree(abstract)}")
        if layout:
            params = in_layout(params, abstract)
        try:
            validate_tree(params, abstract, path)
        except CheckpointError as e:
            inside = [k for k, v in params.items() if isinstance(v, Mapping) and set(abstract) <= set(v)]
            hint = (f" (its {inside[0]!r} subtree has the keys the model expects: give a file of that subtree "
                    f"alone, e.g. written with TrainConfig.export_subtree='{inside[0]}')" if inside else "")
            raise CheckpointError(f"{e}; the file holds {describe_tree(params)}, the model expects "
                                  f"{describe_tree(abstract)}{hint}") from e
    return params


def load_foundation(path: str, kind: str, abstract: Mapping[str, Any]) -> dict:
    """Load a frozen foundation's params from `path` for the SLM subtree `kind`
    ("speech_encoder" or "llm"): a msgpack file, or a Hugging Face directory (mT5/mT0 for the
    LLM; w2v-BERT 2.0 or Whisper for the speech encoder), or a CTranslate2 Whisper directory
    (model.bin) for the speech encoder."""
    if os.path.isfile(path):
        return load_params(path, abstract, layout=True)
    if not os.path.isdir(path):
        raise CheckpointError(f"{kind} checkpoint not found: {path}")
    if kind == "llm":
        from slm_jax.checkpoints.hf_t5 import load_hf_t5
        _, params = load_hf_t5(path)
    elif kind == "speech_encoder" and os.path.isfile(os.path.join(path, "model.bin")):
        from slm_jax.checkpoints.ct2_whisper import load_encoder   # a CTranslate2 Whisper directory
        _, params = load_encoder(path)
    elif kind == "speech_encoder":
        import json
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type")
        if model_type == "wav2vec2-bert":
            from slm_jax.checkpoints.hf_w2v_bert import load_hf_w2v_bert
            _, params = load_hf_w2v_bert(path)
        elif model_type == "whisper":
            from slm_jax.checkpoints.hf_whisper import load_hf_whisper_encoder
            _, params = load_hf_whisper_encoder(path)
        else:
            raise CheckpointError(f"{path}/config.json: unsupported speech encoder model_type {model_type!r}")
    else:
        raise ValueError(f"load_foundation: kind must be 'speech_encoder' or 'llm', got {kind!r}")
    params = in_layout(params, abstract)
    validate_tree(params, abstract, path)
    return params


def has_key(tree: Any, key: str) -> bool:
    return isinstance(tree, Mapping) and any(k == key or has_key(v, key) for k, v in tree.items())


def in_layout(params: Mapping[str, Any], abstract: Mapping[str, Any]) -> Mapping[str, Any]:
    """`params` in the layer layout of `abstract`: unrolled layers ("layers_0", ...: what the
    importers and unscanned models write) are stacked when the model scans its layers."""
    if has_key(abstract, SCANNED) and not has_key(params, SCANNED):
        return stack_layers(params)
    return params
