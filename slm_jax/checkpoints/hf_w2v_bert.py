"""Import a Hugging Face w2v-BERT 2.0 encoder (transformers `Wav2Vec2BertModel`, saved with
`save_pretrained`) into our Conformer (slm_jax/models/conformer.py, subsampling="none").

Layout changes: torch Linear weights [out, in] become kernels [in, out] (attention split into
heads); 1x1 Conv1d pointwise weights [out, in, 1] become dense kernels, the GLU conv's [2H, H, 1]
split into its value (first half) and gate (second half); the depthwise Conv1d [H, 1, K]
becomes [K, H]; LayerNorm weight/bias become scale/bias.

`masked_spec_embed` (SpecAugment's mask vector, used only when training w2v-BERT itself) is
ignored. Checkpoints that need the conv adapter or the intermediate FFN are refused: the error
names the config field rather than silently dropping those tensors.
"""

from __future__ import annotations

import numpy as np

from slm_jax.checkpoints.hf_common import CheckpointError, HFCheckpoint, validate_tree
from slm_jax.models.conformer import ConformerConfig, abstract_params

_IGNORED = ("masked_spec_embed",)


def _linear(ckpt: HFCheckpoint, prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict:
    out = {"kernel": ckpt.take(f"{prefix}.weight", (n_out, n_in)).T}
    if bias:
        out["bias"] = ckpt.take(f"{prefix}.bias", (n_out,))
    return out


def _layer_norm(ckpt: HFCheckpoint, prefix: str, n: int) -> dict:
    return {"norm": {"scale": ckpt.take(f"{prefix}.weight", (n,)), "bias": ckpt.take(f"{prefix}.bias", (n,))}}


def _ffn(ckpt: HFCheckpoint, prefix: str, cfg: ConformerConfig) -> dict:
    return {"intermediate_dense": _linear(ckpt, f"{prefix}.intermediate_dense", cfg.hidden_size, cfg.intermediate_size),
            "output_dense": _linear(ckpt, f"{prefix}.output_dense", cfg.intermediate_size, cfg.hidden_size)}


def _attention(ckpt: HFCheckpoint, prefix: str, cfg: ConformerConfig) -> dict:
    h, heads, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    out = {}
    for ours, theirs in (("query", "linear_q"), ("key", "linear_k"), ("value", "linear_v")):
        p = _linear(ckpt, f"{prefix}.{theirs}", h, h)
        out[ours] = {"kernel": p["kernel"].reshape(h, heads, hd), "bias": p["bias"].reshape(heads, hd)}
    p = _linear(ckpt, f"{prefix}.linear_out", h, h)
    out["out"] = {"kernel": p["kernel"].reshape(heads, hd, h), "bias": p["bias"]}
    if cfg.position_embeddings_type == "relative_key":
        out["distance_embedding"] = ckpt.take(f"{prefix}.distance_embedding.weight", (cfg.num_relpos_buckets, hd))
    return out


def _conv_module(ckpt: HFCheckpoint, prefix: str, cfg: ConformerConfig) -> dict:
    h, k = cfg.hidden_size, cfg.conv_kernel_size
    glu = ckpt.take(f"{prefix}.pointwise_conv1.weight", (2 * h, h, 1))[:, :, 0]      # [2H, H]
    return {
        "layer_norm": _layer_norm(ckpt, f"{prefix}.layer_norm", h),
        "pointwise_in_value": {"kernel": glu[:h].T},
        "pointwise_in_gate": {"kernel": glu[h:].T},
        "depthwise_kernel": ckpt.take(f"{prefix}.depthwise_conv.weight", (h, 1, k))[:, 0, :].T,
        "depthwise_layer_norm": _layer_norm(ckpt, f"{prefix}.depthwise_layer_norm", h),
        "pointwise_out": {"kernel": ckpt.take(f"{prefix}.pointwise_conv2.weight", (h, h, 1))[:, :, 0].T},
    }


def load_hf_w2v_bert(path: str, **config_overrides) -> tuple[ConformerConfig, dict]:
    """(ConformerConfig, params) from a Wav2Vec2BertModel `save_pretrained` directory.

    params is a plain nested dict of float32 numpy arrays matching `Conformer(config)`'s
    unboxed params. `config_overrides` (e.g. dtype=jnp.bfloat16) are applied to the config.
    Raises CheckpointError naming the file and tensor/field on any mismatch."""
    ckpt = HFCheckpoint(path)
    try:
        cfg = ConformerConfig.from_hf_w2v_bert(ckpt.config, **config_overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}/config.json: {e}") from None
    h = cfg.hidden_size
    params: dict = {
        "feature_projection": {
            "layer_norm": _layer_norm(ckpt, "feature_projection.layer_norm", cfg.input_dim),
            "projection": _linear(ckpt, "feature_projection.projection", cfg.input_dim, h),
        }
    }
    for i in range(cfg.num_layers):
        p = f"encoder.layers.{i}"
        params[f"layers_{i}"] = {
            "ffn1_layer_norm": _layer_norm(ckpt, f"{p}.ffn1_layer_norm", h),
            "ffn1": _ffn(ckpt, f"{p}.ffn1", cfg),
            "self_attn_layer_norm": _layer_norm(ckpt, f"{p}.self_attn_layer_norm", h),
            "self_attn": _attention(ckpt, f"{p}.self_attn", cfg),
            "conv_module": _conv_module(ckpt, f"{p}.conv_module", cfg),
            "ffn2_layer_norm": _layer_norm(ckpt, f"{p}.ffn2_layer_norm", h),
            "ffn2": _ffn(ckpt, f"{p}.ffn2", cfg),
            "final_layer_norm": _layer_norm(ckpt, f"{p}.final_layer_norm", h),
        }
    ckpt.check_all_used(ignore=_IGNORED)
    params = _as_float32(params)
    validate_tree(params, abstract_params(cfg), ckpt.path)
    return cfg, params


def _as_float32(tree):
    if isinstance(tree, dict):
        return {k: _as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
