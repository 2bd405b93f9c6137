"""Import the encoder of a Hugging Face Whisper checkpoint (transformers `WhisperModel` or
`WhisperForConditionalGeneration`, saved with `save_pretrained`) into our WhisperEncoder
(slm_jax/models/whisper.py).

Tensor names are `model.encoder.*` (WhisperForConditionalGeneration), `encoder.*` (WhisperModel)
or bare (a WhisperEncoder saved alone). Decoder tensors (and the LM head) are ignored
explicitly; any other unconverted tensor is an error.

Layout changes: torch Conv1d weights [out, in, 3] become kernels [3, in, out]; Linear weights
[out, in] become kernels [in, out] (attention split into heads); LayerNorm weight/bias become
scale/bias; `embed_positions.weight` [max_source_positions, d_model] is taken as is.
"""

from __future__ import annotations

import numpy as np

from slm_jax.checkpoints.hf_common import CheckpointError, HFCheckpoint, validate_tree
from slm_jax.models.whisper import WhisperEncoderConfig, abstract_params

_PREFIXES = ("model.encoder.", "encoder.", "")
_IGNORED = ("model.decoder.", "decoder.", "proj_out.")


def _linear(ckpt: HFCheckpoint, prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict:
    out = {"kernel": ckpt.take(f"{prefix}.weight", (n_out, n_in)).T}
    if bias:
        out["bias"] = ckpt.take(f"{prefix}.bias", (n_out,))
    return out


def _conv(ckpt: HFCheckpoint, prefix: str, n_in: int, n_out: int) -> dict:
    return {"kernel": ckpt.take(f"{prefix}.weight", (n_out, n_in, 3)).transpose(2, 1, 0),
            "bias": ckpt.take(f"{prefix}.bias", (n_out,))}


def _layer_norm(ckpt: HFCheckpoint, prefix: str, n: int) -> dict:
    return {"norm": {"scale": ckpt.take(f"{prefix}.weight", (n,)), "bias": ckpt.take(f"{prefix}.bias", (n,))}}


def _attention(ckpt: HFCheckpoint, prefix: str, cfg: WhisperEncoderConfig) -> dict:
    d, heads, hd = cfg.d_model, cfg.encoder_attention_heads, cfg.head_dim
    out = {}
    for ours, theirs, bias in (("query", "q_proj", True), ("key", "k_proj", False), ("value", "v_proj", True)):
        p = _linear(ckpt, f"{prefix}.{theirs}", d, d, bias=bias)
        out[ours] = {"kernel": p["kernel"].reshape(d, heads, hd)}
        if bias:
            out[ours]["bias"] = p["bias"].reshape(heads, hd)
    p = _linear(ckpt, f"{prefix}.out_proj", d, d)
    out["out"] = {"kernel": p["kernel"].reshape(heads, hd, d), "bias": p["bias"]}
    return out


def load_hf_whisper_encoder(path: str, **config_overrides) -> tuple[WhisperEncoderConfig, dict]:
    """(WhisperEncoderConfig, params) from a Whisper `save_pretrained` directory.

    params is a plain nested dict of float32 numpy arrays matching `WhisperEncoder(config)`'s
    unboxed params. `config_overrides` (e.g. dtype=jnp.bfloat16) are applied to the config.
    Raises CheckpointError naming the file and tensor/field on any mismatch."""
    ckpt = HFCheckpoint(path)
    try:
        cfg = WhisperEncoderConfig.from_hf(ckpt.config, **config_overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}/config.json: {e}") from None
    prefix = next((p for p in _PREFIXES if f"{p}conv1.weight" in ckpt), None)
    if prefix is None:
        raise CheckpointError(f"{ckpt.path}: no Whisper encoder found (no tensor "
                              f"{' / '.join(repr(p + 'conv1.weight') for p in _PREFIXES)})")
    d = cfg.d_model
    params: dict = {
        "conv1": _conv(ckpt, f"{prefix}conv1", cfg.num_mel_bins, d),
        "conv2": _conv(ckpt, f"{prefix}conv2", d, d),
        "embed_positions": ckpt.take(f"{prefix}embed_positions.weight", (cfg.max_source_positions, d)),
        "layer_norm": _layer_norm(ckpt, f"{prefix}layer_norm", d),
    }
    for i in range(cfg.encoder_layers):
        p = f"{prefix}layers.{i}"
        params[f"layers_{i}"] = {
            "self_attn_layer_norm": _layer_norm(ckpt, f"{p}.self_attn_layer_norm", d),
            "self_attn": _attention(ckpt, f"{p}.self_attn", cfg),
            "final_layer_norm": _layer_norm(ckpt, f"{p}.final_layer_norm", d),
            "fc1": _linear(ckpt, f"{p}.fc1", d, cfg.encoder_ffn_dim),
            "fc2": _linear(ckpt, f"{p}.fc2", cfg.encoder_ffn_dim, d),
        }
    ckpt.check_all_used(ignore=_IGNORED)
    params = _as_float32(params)
    validate_tree(params, abstract_params(cfg), ckpt.path)
    return cfg, params


def _as_float32(tree):
    if isinstance(tree, dict):
        return {k: _as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
