"""Import a CTranslate2 Whisper checkpoint (`WhisperSpec`, e.g. faster-whisper's conversions)
into our Flax Whisper modules (slm_jax/models/whisper.py). ctranslate2 is not needed.

The config comes from the variables' own shapes (CTranslate2's config.json holds no widths).
Layout changes: Conv1D weights [out, in, 3] -> kernels [3, in, out]; Linear weights [out, in]
-> kernels [in, out], split into heads; CTranslate2's fused projections are split (encoder and
decoder self-attention `linear_0` = [q; k; v], cross-attention `linear_1` = [k; v]); the key
bias CTranslate2 stores (zeros: Whisper's key projection has none) must be zero. LayerNorm
gamma/beta -> scale/bias. The decoder's token embedding is also its output projection
(`decoder/projection/weight`, an alias of it or an equal copy; the converter's int8 files keep
the alias, and an alias reads its target's `_scale`). Every variable is consumed or named as
ignored; anything else, an unknown spec, a missing or misshaped variable raise CheckpointError
naming the file (and the variable).

load_encoder / load_decoder read one half (the other half's variables are ignored);
load_whisper reads both and consumes every variable.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from slm_jax.checkpoints import ct2
from slm_jax.checkpoints.hf_common import CheckpointError, validate_tree
from slm_jax.models.whisper import (WhisperDecoderConfig, WhisperEncoderConfig, abstract_decoder_params,
                                    abstract_params)

SPEC, REVISIONS = "WhisperSpec", (3,)
# scalar settings CTranslate2 stores as variables, with the value our modules implement
_SETTINGS = {"encoder/num_heads": None, "decoder/num_heads": None, "decoder/activation": 3,  # GELU
             "decoder/alibi": 0, "decoder/alibi_use_positive_positions": None, "decoder/scale_alibi": None,
             "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
             "decoder/start_from_zero_embedding": 0, "decoder/alignment_heads": None,
             "decoder/alignment_layer": None}


class _Variables:
    """Variables of one model.bin taken by name with shape checks; tracks what was used."""

    def __init__(self, model: ct2.CT2Model):
        self.model, self.used = model, set()

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        name = self.model.aliases.get(name, name)      # an alias's target, with the target's scale
        if name not in self.model:
            raise CheckpointError(f"{self.model.path}: variable {name!r} missing ({self.model.spec})")
        value = self.model.dequantized(name)
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{self.model.path}: variable {name!r} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(shape)}")
        self.used.add(name)
        self.used.add(f"{name}_scale")
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


def require(model: ct2.CT2Model, *names: str) -> None:
    """CheckpointError naming the first of `names` the model lacks."""
    for name in names:
        if name not in model:
            raise CheckpointError(f"{model.path}: variable {name!r} missing ({model.spec})")


def stack_shape(model: ct2.CT2Model, side: str, first: str) -> dict:
    """What the variables of one stack ("encoder" / "decoder") define: the shape of its `first`
    variable, its layer count, heads, FFN width and position-table length."""
    v = _Variables(model)
    ffn, positions = f"{side}/layer_0/ffn/linear_0/weight", f"{side}/position_encodings/encodings"
    require(model, first, positions, ffn)
    return dict(first=model.get(first).shape, layers=v.count(f"{side}/layer_"), heads=v.scalar(f"{side}/num_heads"),
                ffn=int(model.get(ffn).shape[0]), positions=int(model.get(positions).shape[0]))


def encoder_config(model: ct2.CT2Model, **overrides) -> WhisperEncoderConfig:
    """The WhisperEncoderConfig the encoder variables' shapes define (`overrides`: dtype etc.)."""
    shape = stack_shape(model, "encoder", "encoder/conv1/weight")
    d, mel, _ = shape["first"]
    kwargs = dict(num_mel_bins=int(mel), d_model=int(d), encoder_layers=shape["layers"],
                  encoder_attention_heads=shape["heads"], encoder_ffn_dim=shape["ffn"],
                  max_source_positions=shape["positions"])
    return WhisperEncoderConfig(**{**kwargs, **overrides})


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
    params = encoder_params(v, cfg)
    v.check_all_used(ignore=("decoder/",))
    return cfg, params


def encoder_params(v: _Variables, cfg: WhisperEncoderConfig) -> dict:
    """The encoder's float32 params, validated against WhisperEncoder(cfg)."""
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
    params = as_float32(params)
    validate_tree(params, abstract_params(cfg), v.model.path)
    return params


def decoder_config(model: ct2.CT2Model, **overrides) -> WhisperDecoderConfig:
    """The WhisperDecoderConfig the decoder variables' shapes define (`overrides`: dtype etc.)."""
    shape = stack_shape(model, "decoder", "decoder/embeddings/weight")
    vocab, d = shape["first"]
    kwargs = dict(vocab_size=int(vocab), d_model=int(d), decoder_layers=shape["layers"],
                  decoder_attention_heads=shape["heads"], decoder_ffn_dim=shape["ffn"],
                  max_target_positions=shape["positions"])
    return WhisperDecoderConfig(**{**kwargs, **overrides})


def cross_attention(v: _Variables, prefix: str, d: int, heads: int) -> dict:
    """CTranslate2's cross-attention: linear_0 = q, linear_1 = fused [k; v], linear_2 = out."""
    k, val = split_fused(v, f"{prefix}/linear_1", d, 2)
    no_key_bias(v, k, f"{prefix}/linear_1")
    return {"query": heads_in(linear(v, f"{prefix}/linear_0", d, d), heads),
            "key": heads_in(k, heads, key_bias=False), "value": heads_in(val, heads),
            "out": heads_out(linear(v, f"{prefix}/linear_2", d, d), heads)}


def tied_projection(v: _Variables, embeddings: np.ndarray) -> None:
    """The output projection must be the token embedding (an alias, or an equal copy) and have
    no non-zero bias: our decoder ties them."""
    weight = v.take("decoder/projection/weight", embeddings.shape)
    if not np.array_equal(weight, embeddings):
        raise CheckpointError(f"{v.model.path}: decoder/projection/weight differs from decoder/embeddings/weight; "
                              "our Whisper decoder ties its output projection to the token embedding")
    if "decoder/projection/bias" in v.model:
        if np.any(v.take("decoder/projection/bias", (embeddings.shape[0],)) != 0):
            raise CheckpointError(f"{v.model.path}: decoder/projection/bias is non-zero; our Whisper decoder "
                                  "has no output bias")


def decoder_params(v: _Variables, cfg: WhisperDecoderConfig) -> dict:
    """The decoder's float32 params, validated against WhisperDecoder(cfg); consumes the
    decoder's scalar settings too (open_model checked their values)."""
    d, heads = cfg.d_model, cfg.decoder_attention_heads
    embeddings = v.take("decoder/embeddings/weight", (cfg.vocab_size, d))
    tied_projection(v, embeddings)
    params: dict = {
        "embed_tokens": {"embedding": embeddings},
        "embed_positions": v.take("decoder/position_encodings/encodings", (cfg.max_target_positions, d)),
        "layer_norm": layer_norm(v, "decoder/layer_norm", d),
    }
    for i in range(cfg.decoder_layers):
        p = f"decoder/layer_{i}"
        params[f"layers_{i}"] = {
            "self_attn_layer_norm": layer_norm(v, f"{p}/self_attention/layer_norm", d),
            "self_attn": self_attention(v, f"{p}/self_attention", d, heads),
            "encoder_attn_layer_norm": layer_norm(v, f"{p}/attention/layer_norm", d),
            "encoder_attn": cross_attention(v, f"{p}/attention", d, heads),
            "final_layer_norm": layer_norm(v, f"{p}/ffn/layer_norm", d),
            "fc1": linear(v, f"{p}/ffn/linear_0", d, cfg.decoder_ffn_dim),
            "fc2": linear(v, f"{p}/ffn/linear_1", cfg.decoder_ffn_dim, d),
        }
    v.scalar("decoder/num_heads")
    for name in _SETTINGS:
        if name.startswith("decoder/") and name in v.model:
            v.scalar(name)
    params = as_float32(params)
    validate_tree(params, abstract_decoder_params(cfg), v.model.path)
    return params


def load_decoder(path: str, **config_overrides) -> tuple[WhisperDecoderConfig, dict]:
    """(WhisperDecoderConfig, params) of the decoder in a CTranslate2 Whisper model.bin; the
    encoder's variables are left alone (see `load_encoder`)."""
    model = open_model(path)
    v = _Variables(model)
    cfg = decoder_config(model, **config_overrides)
    params = decoder_params(v, cfg)
    v.check_all_used(ignore=("encoder/",))
    return cfg, params


def load_whisper(path: str, **config_overrides) -> tuple[WhisperEncoderConfig, WhisperDecoderConfig, dict]:
    """(encoder config, decoder config, params) of a whole CTranslate2 Whisper model.bin, read
    once; params = {"encoder": ..., "decoder": ...} (models.whisper.Whisper's tree). Every
    variable is consumed. config_overrides go to the config(s) having that field (dtype: both)."""
    model = open_model(path)
    v = _Variables(model)
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}
    unknown = set(config_overrides) - fields(WhisperEncoderConfig) - fields(WhisperDecoderConfig)
    if unknown:
        raise TypeError(f"load_whisper: unknown config fields {sorted(unknown)}")
    pick = lambda cls: {k: x for k, x in config_overrides.items() if k in fields(cls)}
    enc_cfg = encoder_config(model, **pick(WhisperEncoderConfig))
    dec_cfg = decoder_config(model, **pick(WhisperDecoderConfig))
    if enc_cfg.d_model != dec_cfg.d_model:
        raise CheckpointError(f"{model.path}: encoder width {enc_cfg.d_model} != decoder width {dec_cfg.d_model}")
    params = {"encoder": encoder_params(v, enc_cfg), "decoder": decoder_params(v, dec_cfg)}
    v.check_all_used()
    return enc_cfg, dec_cfg, params


def as_float32(tree):
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
