"""Import a CTranslate2 Whisper checkpoint (`WhisperSpec`, e.g. faster-whisper's conversions)
into our Flax Whisper modules (slm_jax/models/whisper.py). ctranslate2 is not needed.

The config comes from the variables' own shapes (CTranslate2's config.json holds no widths).
Layout changes: Conv1D weights [out, in, 3] -> kernels [3, in, out]; Linear weights [out, in]
-> kernels [in, out], split into heads; CTranslate2's fused projections are split (encoder and
decoder self-attention `linear_0` = [q; k; v], cross-attention `linear_1` = [k; v]); the key
bias CTranslate2 stores (zeros: Whisper's key projection has none) must be zero. LayerNorm
gamma/beta -> scale/bias. Every variable is consumed or named as ignored; anything else,
an unknown spec, a missing or misshaped variable raise CheckpointError naming the file.
"""

from __future__ import annotations

import numpy as np

from slm_jax.checkpoints import ct2
from slm_jax.checkpoints.hf_common import CheckpointError, validate_tree
from slm_jax.models.whisper import WhisperEncoderConfig, abstract_params

SPEC, REVISIONS = "WhisperSpec", (3,)
# scalar settings CTranslate2 stores as variables, with the value our modules implement
_SETTINGS = {"encoder/num_heads": None, "decoder/num_heads": None, "decoder/activation": 3,  # GELU
             "decoder/alibi": 0, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
             "decoder/start_from_zero_embedding": 0, "decoder/alignment_heads": None,
             "decoder/alignment_layer": None}


class _Variables:
    """Variables of one model.bin taken by name with shape checks; tracks what was used."""

    def __init__(self, model: ct2.CT2Model):
        self.model, self.used = model, set()

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.model:
            raise CheckpointError(f"{self.model.path}: variable {name!r} missing ({self.model.spec})")
        value = self.model.dequantized(name)
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{self.model.path}: variable {name!r} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(shape)}")
        self.used.add(self.model.aliases.get(name, name))
        self.used.add(self.model.aliases.get(f"{name}_scale", f"{name}_scale"))
        return value

    def scalar(self, name: str) -> int:
        if name not in self.model:
            raise CheckpointError(f"{self.model.path}: variable {name!r} missing ({self.model.spec})")
        self.used.add(name)
        return int(np.asarray(self.model.get(name)).reshape(-1)[0])

    def count(self, prefix: str) -> int:
        n = 0
        while any(k.startswith(f"{prefix}{n}/") for k in self.model.variables):
            n += 1
        return n

    def check_all_used(self, ignore: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.model.variables if k not in self.used and not k.startswith(ignore))
        if left:
            raise CheckpointError(f"{self.model.path}: variables not used by the importer: {left[:10]}"
                                  + (" ..." if len(left) > 10 else ""))


def open_model(path: str) -> ct2.CT2Model:
    """Read `path` (a model.bin or its directory) and check it is a Whisper spec we import."""
    try:
        model = ct2.read(path)
    except ct2.CT2FormatError as e:
        raise CheckpointError(str(e)) from None
    if model.spec != SPEC or model.revision not in REVISIONS:
        raise CheckpointError(f"{model.path}: spec {model.spec!r} revision {model.revision}; this importer "
                              f"reads {SPEC} revision {'/'.join(map(str, REVISIONS))}")
    for name, want in _SETTINGS.items():
        if want is not None and name in model and int(np.asarray(model.get(name)).reshape(-1)[0]) != want:
            raise CheckpointError(f"{model.path}: {name} = {np.asarray(model.get(name)).reshape(-1)[0]}, "
                                  f"our Whisper implements {want}")
    return model


def encoder_config(model: ct2.CT2Model, **overrides) -> WhisperEncoderConfig:
    """The WhisperEncoderConfig the encoder variables' shapes define (`overrides`: dtype etc.)."""
    v = _Variables(model)
    if "encoder/conv1/weight" not in model:
        raise CheckpointError(f"{model.path}: variable 'encoder/conv1/weight' missing ({model.spec})")
    d, mel, _ = model.get("encoder/conv1/weight").shape
    kwargs = dict(num_mel_bins=int(mel), d_model=int(d), encoder_layers=v.count("encoder/layer_"),
                  encoder_attention_heads=v.scalar("encoder/num_heads"),
                  encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
                  max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]))
    kwargs.update(overrides)
    return WhisperEncoderConfig(**kwargs)


def linear(v: _Variables, prefix: str, n_in: int, n_out: int) -> dict:
    return {"kernel": v.take(f"{prefix}/weight", (n_out, n_in)).T, "bias": v.take(f"{prefix}/bias", (n_out,))}


def layer_norm(v: _Variables, prefix: str, n: int) -> dict:
    return {"norm": {"scale": v.take(f"{prefix}/gamma", (n,)), "bias": v.take(f"{prefix}/beta", (n,))}}


def heads_in(p: dict, heads: int, key_bias: bool = True) -> dict:
    """A [d, heads * hd] projection as our DenseGeneral (heads, hd) kernel and bias."""
    d, n = p["kernel"].shape
    out = {"kernel": p["kernel"].reshape(d, heads, n // heads)}
    if key_bias:
        out["bias"] = p["bias"].reshape(heads, n // heads)
    return out


def heads_out(p: dict, heads: int) -> dict:
    n, d = p["kernel"].shape
    return {"kernel": p["kernel"].reshape(heads, n // heads, d), "bias": p["bias"]}


def split_fused(v: _Variables, prefix: str, d: int, parts: int) -> list[dict]:
    """A fused [parts * d, d] Linear (CTranslate2's [q; k; v] or [k; v]) as `parts` Linears."""
    p = linear(v, prefix, d, parts * d)
    return [{"kernel": p["kernel"][:, i * d:(i + 1) * d], "bias": p["bias"][i * d:(i + 1) * d]}
            for i in range(parts)]


def no_key_bias(v: _Variables, key: dict, name: str) -> None:
    if np.any(key["bias"] != 0):
        raise CheckpointError(f"{v.model.path}: {name} has a non-zero key bias; Whisper's key projection has "
                              "none")


def self_attention(v: _Variables, prefix: str, d: int, heads: int) -> dict:
    q, k, val = split_fused(v, f"{prefix}/linear_0", d, 3)
    no_key_bias(v, k, f"{prefix}/linear_0")
    return {"query": heads_in(q, heads), "key": heads_in(k, heads, key_bias=False), "value": heads_in(val, heads),
            "out": heads_out(linear(v, f"{prefix}/linear_1", d, d), heads)}


def load_encoder(path: str, **config_overrides) -> tuple[WhisperEncoderConfig, dict]:
    """(WhisperEncoderConfig, params) of the encoder in a CTranslate2 Whisper model.bin.

    params: nested dict of float32 numpy arrays matching `WhisperEncoder(config)`'s unboxed
    params. The decoder's variables are left alone (see `load_decoder`)."""
    model = open_model(path)
    v = _Variables(model)
    cfg = encoder_config(model, **config_overrides)
    d, heads = cfg.d_model, cfg.encoder_attention_heads
    params: dict = {
        "conv1": {"kernel": v.take("encoder/conv1/weight", (d, cfg.num_mel_bins, 3)).transpose(2, 1, 0),
                  "bias": v.take("encoder/conv1/bias", (d,))},
        "conv2": {"kernel": v.take("encoder/conv2/weight", (d, d, 3)).transpose(2, 1, 0),
                  "bias": v.take("encoder/conv2/bias", (d,))},
        "embed_positions": v.take("encoder/position_encodings/encodings", (cfg.max_source_positions, d)),
        "layer_norm": layer_norm(v, "encoder/layer_norm", d),
    }
    for i in range(cfg.encoder_layers):
        p = f"encoder/layer_{i}"
        params[f"layers_{i}"] = {
            "self_attn_layer_norm": layer_norm(v, f"{p}/self_attention/layer_norm", d),
            "self_attn": self_attention(v, f"{p}/self_attention", d, heads),
            "final_layer_norm": layer_norm(v, f"{p}/ffn/layer_norm", d),
            "fc1": linear(v, f"{p}/ffn/linear_0", d, cfg.encoder_ffn_dim),
            "fc2": linear(v, f"{p}/ffn/linear_1", cfg.encoder_ffn_dim, d),
        }
    v.scalar("encoder/num_heads")
    v.check_all_used(ignore=("decoder/",))
    params = as_float32(params)
    validate_tree(params, abstract_params(cfg), model.path)
    return cfg, params


def as_float32(tree):
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
