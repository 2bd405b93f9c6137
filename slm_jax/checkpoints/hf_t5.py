"""Import a Hugging Face T5 / mT5 / mT0 `save_pretrained` directory (safetensors) into the
parameter pytree of `slm_jax.models.t5.T5`.

All names live in one table (`t5_param_names`): HF tensor name -> our parameter path, with the
conversion applied (torch Linear weights are [out, in]; ours are [in, out], and attention
kernels are split per head).

Embeddings: HF stores one shared token embedding under `shared.weight`, and depending on the
version and tying also (or only) under `encoder.embed_tokens.weight` /
`decoder.embed_tokens.weight`; every copy present must agree. The output head: a checkpoint
with `lm_head.weight` has an own head (mT5/mT0 are untied, and a head distinct from the
embedding is always kept, whatever the config claims); without it the head is the transposed
embedding (tied). `T5Config.from_hf` decides the d_model**-0.5 output scaling.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from slm_jax.checkpoints.hf_common import CheckpointError, HFCheckpoint, nest, validate_tree
from slm_jax.models.t5 import T5, T5Config

# Tensors HF itself ignores when loading (an unused relpos table in old checkpoints).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: its name and shape there, our param path, and the conversion."""
    hf_key: str
    hf_shape: tuple[int, ...]
    path: str
    convert: Callable[[np.ndarray], np.ndarray]


def _copy(w):
    return w


def _linear(w):            # [out, in] -> [in, out]
    return w.T


def _attention_table(cfg: T5Config, hf: str, ours: str) -> list[Entry]:
    h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    in_proj = lambda w: w.T.reshape(d, h, dk)         # [H*dk, D] -> [D, H, dk]
    out_proj = lambda w: w.T.reshape(h, dk, d)        # [D, H*dk] -> [H, dk, D]
    return [
        Entry(f"{hf}.q.weight", (h * dk, d), f"{ours}/query/kernel", in_proj),
        Entry(f"{hf}.k.weight", (h * dk, d), f"{ours}/key/kernel", in_proj),
        Entry(f"{hf}.v.weight", (h * dk, d), f"{ours}/value/kernel", in_proj),
        Entry(f"{hf}.o.weight", (d, h * dk), f"{ours}/out/kernel", out_proj),
    ]


def _mlp_table(cfg: T5Config, hf: str, ours: str) -> list[Entry]:
    d, f = cfg.d_model, cfg.d_ff
    wi = ["wi_0", "wi_1"] if cfg.is_gated else ["wi"]
    return ([Entry(f"{hf}.DenseReluDense.{n}.weight", (f, d), f"{ours}/mlp/{n}/kernel", _linear) for n in wi]
            + [Entry(f"{hf}.DenseReluDense.wo.weight", (d, f), f"{ours}/mlp/wo/kernel", _linear)])


def t5_param_names(cfg: T5Config) -> list[Entry]:
    """Every non-embedding HF tensor of a T5ForConditionalGeneration with config `cfg`, mapped to
    our parameter paths (the embedding and the lm_head are handled by `load_hf_t5`)."""
    d, nb, h = cfg.d_model, cfg.relative_attention_num_buckets, cfg.num_heads
    norm = lambda hf, ours: Entry(hf, (d,), f"{ours}/scale", _copy)
    table: list[Entry] = []
    for i in range(cfg.num_encoder_layers):
        hf, ours = f"encoder.block.{i}", f"encoder/layers_{i}"
        table += [norm(f"{hf}.layer.0.layer_norm.weight", f"{ours}/pre_attention_layer_norm")]
        table += _attention_table(cfg, f"{hf}.layer.0.SelfAttention", f"{ours}/attention")
        table += [norm(f"{hf}.layer.1.layer_norm.weight", f"{ours}/pre_mlp_layer_norm")]
        table += _mlp_table(cfg, f"{hf}.layer.1", ours)
    for i in range(cfg.num_decoder_layers):
        hf, ours = f"decoder.block.{i}", f"decoder/layers_{i}"
        table += [norm(f"{hf}.layer.0.layer_norm.weight", f"{ours}/pre_self_attention_layer_norm")]
        table += _attention_table(cfg, f"{hf}.layer.0.SelfAttention", f"{ours}/self_attention")
        table += [norm(f"{hf}.layer.1.layer_norm.weight", f"{ours}/pre_cross_attention_layer_norm")]
        table += _attention_table(cfg, f"{hf}.layer.1.EncDecAttention", f"{ours}/encoder_decoder_attention")
        table += [norm(f"{hf}.layer.2.layer_norm.weight", f"{ours}/pre_mlp_layer_norm")]
        table += _mlp_table(cfg, f"{hf}.layer.2", ours)
    for stack in ("encoder", "decoder"):
        table += [
            Entry(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (nb, h),
                  f"{stack}/relpos_bias/rel_embedding", _copy),
            norm(f"{stack}.final_layer_norm.weight", f"{stack}/{stack}_norm"),
        ]
    return table


def abstract_t5_params(cfg: T5Config) -> dict:
    """Unboxed parameter shapes of T5(cfg), nothing allocated."""
    model = T5(cfg)
    tokens = jnp.ones((1, 2), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
    return nn.meta.unbox(shapes["params"])


def _embedding(ckpt: HFCheckpoint, cfg: T5Config) -> np.ndarray:
    present = [k for k in _EMBEDDING_KEYS if k in ckpt]
    if not present:
        raise CheckpointError(f"{ckpt.path}: missing tensor 'shared.weight' (no token embedding: "
                              f"none of {list(_EMBEDDING_KEYS)})")
    shape = (cfg.vocab_size, cfg.d_model)
    embedding = ckpt.take(present[0], shape)
    for key in present[1:]:
        if not np.array_equal(ckpt.take(key, shape), embedding):
            raise CheckpointError(f"{ckpt.path}: tensor '{key}' differs from '{present[0]}'; "
                                  "separate encoder/decoder embeddings are not supported")
    return embedding


def load_hf_t5(path: str, **config_overrides) -> tuple[T5Config, dict]:
    """(T5Config, params) from a HF T5/mT5/mT0 directory. Params are unboxed float32 numpy
    arrays, validated against T5(config)'s abstract params. `config_overrides` replace
    T5Config fields (e.g. dtype=jnp.bfloat16). Raises CheckpointError naming the file and key."""
    ckpt = HFCheckpoint(path)
    try:
        cfg = T5Config.from_hf(ckpt.config, **config_overrides)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path}/config.json: cannot build a T5Config: {e!r}") from e

    embedding = _embedding(ckpt, cfg)
    flat = {"token_embedder/embedding": embedding}
    if "lm_head.weight" in ckpt:
        lm_head = ckpt.take("lm_head.weight", (cfg.vocab_size, cfg.d_model))
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False,
                                  scale_decoder_outputs=cfg.scales_decoder_outputs)
        flat["lm_head/kernel"] = lm_head.T
    elif not cfg.tie_word_embeddings:
        raise CheckpointError(f"{ckpt.path}: missing tensor 'lm_head.weight' "
                              "(config.json says tie_word_embeddings=false)")
    for e in t5_param_names(cfg):
        flat[e.path] = e.convert(ckpt.take(e.hf_key, e.hf_shape))
    ckpt.check_all_used(ignore=_IGNORED)

    params = nest({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()})
    validate_tree(params, abstract_t5_params(cfg), ckpt.path)
    return cfg, params
