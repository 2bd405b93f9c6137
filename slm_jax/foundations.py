"""What a run's foundation checkpoints define: their model configs, the LLM's vocabulary, the
speech encoder's front end, and their identity.

A Hugging Face directory (mT5/mT0; w2v-BERT 2.0 or Whisper) or a CTranslate2 Whisper directory
carries its own config, so the run takes the model's shapes from it: an SLMConfig part left None
is built from the checkpoint, and a part given explicitly must agree with it on every field the
checkpoint defines (an error names the field and both values). Settings a checkpoint does not
define (dtype, dropout) come from the given config or `overrides`. The LLM directory's
`spiece.model` is the run's vocabulary and the speech encoder's front end (Whisper log-mel,
w2v-BERT fbank) its feature config, unless the run names its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import seqio

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.features import FeatureConfig
from slm_jax.fingerprint import hash_path
from slm_jax.models.conformer import ConformerConfig
from slm_jax.models.slm import SLMConfig
from slm_jax.models.t5 import T5Config
from slm_jax.models.whisper import WhisperEncoderConfig

# The fields each config class takes from a checkpoint (the rest are the run's choice).
CHECKPOINT_FIELDS = {
    T5Config: ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers",
               "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
               "feed_forward_proj", "tie_word_embeddings", "scale_decoder_outputs", "decoder_start_token_id",
               "pad_id", "eos_id"),
    ConformerConfig: ("input_dim", "hidden_size", "num_layers", "num_heads", "intermediate_size", "conv_kernel_size",
                      "subsampling", "position_embeddings_type", "left_max_position_embeddings",
                      "right_max_position_embeddings", "layer_norm_eps"),
    WhisperEncoderConfig: ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                           "max_source_positions"),
}
SPIECE = "spiece.model"


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint's config ({e})") from e


def checkpoint_config(path: str | None, kind: str) -> tuple[Any, str] | None:
    """(config, where it was read) of the foundation at `path`, or None when `path` holds no
    config (a msgpack parameter file, or no checkpoint)."""
    if not path or not os.path.isdir(path):
        return None
    if kind == "speech_encoder" and os.path.isfile(os.path.join(path, "model.bin")):
        from slm_jax.checkpoints import ct2_whisper
        return ct2_whisper.encoder_config(ct2_whisper.open_model(path)), os.path.join(path, "model.bin")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise CheckpointError(f"RunConfig.{kind}_checkpoint={path}: a directory without config.json or model.bin")
    raw = read_json(cfg_file)
    model_type = raw.get("model_type")
    try:
        if kind == "llm" and model_type in ("t5", "mt5"):
            return T5Config.from_hf(raw), cfg_file
        if kind == "speech_encoder" and model_type == "wav2vec2-bert":
            return ConformerConfig.from_hf_w2v_bert(raw), cfg_file
        if kind == "speech_encoder" and model_type == "whisper":
            return WhisperEncoderConfig.from_hf(raw), cfg_file
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: {e}") from e
    raise CheckpointError(f"{cfg_file}: model_type {model_type!r} is not a supported "
                          f"{'LLM (t5, mt5)' if kind == 'llm' else 'speech encoder (wav2vec2-bert, whisper)'}")


def same(cls, field: str, a: Any, b: Any) -> bool:
    if cls is T5Config and field == "scale_decoder_outputs":
        return True      # compared through the resolved behaviour below
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(abs(float(b)), 1.0)
    return a == b


def reconcile(given: Any, overrides: Mapping[str, Any], found: tuple[Any, str] | None, what: str) -> Any:
    """The config of one foundation: `found` (from its checkpoint) with the run's settings from
    `given` and `overrides`; `given` alone when the checkpoint has no config. A field of `given`
    or `overrides` that contradicts the checkpoint is an error naming it and both values."""
    if found is None:
        if given is None:
            raise ValueError(f"SLMConfig.{what} is None, so the model takes it from RunConfig.{what}_checkpoint, "
                             "but that is not a checkpoint directory with a config (a Hugging Face or CTranslate2 "
                             f"directory): bind SLMConfig.{what}")
        return dataclasses.replace(given, **overrides) if overrides else given
    ckpt, source = found
    cls = type(ckpt)
    if given is not None and type(given) is not cls:
        raise ValueError(f"SLMConfig.{what} is a {type(given).__name__}, but RunConfig.{what}_checkpoint holds a "
                         f"{cls.__name__} ({source}); leave SLMConfig.{what} unbound to take the checkpoint's")
    defined = CHECKPOINT_FIELDS[cls]
    for origin, values in ((f"SLMConfig.{what}", dataclasses.asdict(given) if given is not None else {}),
                           (f"RunConfig.{what}_overrides", dict(overrides))):
        for field in defined:
            if field in values and not same(cls, field, values[field], getattr(ckpt, field)):
                raise ValueError(f"{origin}: {cls.__name__}.{field} = {values[field]!r} contradicts the checkpoint "
                                 f"{source}, which has {field} = {getattr(ckpt, field)!r} (remove the binding to "
                                 "use the checkpoint's)")
    run_side = {f.name: getattr(given, f.name) for f in dataclasses.fields(cls) if f.name not in defined} \
        if given is not None else {}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"RunConfig.{what}_overrides: {cls.__name__} has no field(s) {unknown}")
    out = dataclasses.replace(ckpt, **{**run_side, **{k: v for k, v in overrides.items() if k not in defined}})
    if given is not None and cls is T5Config and given.scales_decoder_outputs != out.scales_decoder_outputs:
        raise ValueError(f"SLMConfig.{what}: T5Config.scale_decoder_outputs = {given.scale_decoder_outputs!r} "
                         f"contradicts the checkpoint {source}, which has scale_decoder_outputs = "
                         f"{out.scale_decoder_outputs!r}")
    return out


def encoder_width(cfg: Any) -> int:
    return cfg.hidden_size if isinstance(cfg, ConformerConfig) else cfg.d_model


def resolve_slm(config: SLMConfig, *, llm_checkpoint: str | None, speech_encoder_checkpoint: str | None,
                llm_overrides: Mapping[str, Any] = {}, speech_encoder_overrides: Mapping[str, Any] = {}) -> SLMConfig:
    """`config` with its foundations taken from (and checked against) their checkpoints, and the
    adapter's unset input/output widths taken from them."""
    llm = reconcile(config.llm, llm_overrides, checkpoint_config(llm_checkpoint, "llm"), "llm")
    enc = reconcile(config.speech_encoder, speech_encoder_overrides,
                    checkpoint_config(speech_encoder_checkpoint, "speech_encoder"), "speech_encoder")
    ad = config.adapter
    ad = dataclasses.replace(ad, input_dim=ad.input_dim or encoder_width(enc), output_dim=ad.output_dim or llm.d_model)
    return dataclasses.replace(config, llm=llm, speech_encoder=enc, adapter=ad)


def front_end(encoder: Any) -> FeatureConfig | None:
    """The feature config a speech encoder was trained on: Whisper's log-mel with its mel count;
    w2v-BERT's fbank (a Conformer without subsampling: input_dim = 80 mels x 2 stacked frames);
    our Conformer's log-mel with input_dim mels."""
    if isinstance(encoder, WhisperEncoderConfig):
        return FeatureConfig(kind="whisper", n_mels=encoder.num_mel_bins)
    if isinstance(encoder, ConformerConfig):
        if encoder.subsampling == "none":
            if encoder.input_dim % 2:
                raise ValueError(f"ConformerConfig.input_dim={encoder.input_dim}: a w2v-BERT encoder takes 2 "
                                 "stacked fbank frames, so an even width")
            return FeatureConfig(kind="w2v_bert", n_mels=encoder.input_dim // 2, stride=2)
        return FeatureConfig(kind="log_mel", n_mels=encoder.input_dim)
    return None


def input_dim(encoder: Any) -> int:
    return encoder.num_mel_bins if isinstance(encoder, WhisperEncoderConfig) else encoder.input_dim


def run_features(encoder: Any, given: FeatureConfig | None) -> FeatureConfig | None:
    """The run's feature config: `given` (checked against the encoder's input width), else the
    encoder's own front end."""
    if encoder is None:
        return given
    if given is not None:
        if given.feature_dim != input_dim(encoder):
            raise ValueError(f"RunConfig.features gives {given.feature_dim}-dim features ({given.kind}), but the "
                             f"speech encoder ({type(encoder).__name__}) takes {input_dim(encoder)}")
        return given
    return front_end(encoder)


def vocabulary_path(given: str | None, llm_checkpoint: str | None) -> str | None:
    """The run's SentencePiece model: RunConfig.vocabulary, else the LLM directory's spiece.model,
    else None (the tasks' own)."""
    if given:
        if not os.path.isfile(given):
            raise FileNotFoundError(f"RunConfig.vocabulary={given}: SentencePiece model not found")
        return given
    if llm_checkpoint and os.path.isfile(os.path.join(llm_checkpoint, SPIECE)):
        return os.path.join(llm_checkpoint, SPIECE)
    return None


@functools.lru_cache(maxsize=16)
def vocabulary(path: str) -> seqio.Vocabulary:
    return seqio.SentencePieceVocabulary(path)


@functools.lru_cache(maxsize=64)
def cached_hash(path: str, signature: tuple) -> str:
    return hash_path(path)


def identity(path: str) -> str:
    """sha256 of a foundation's files (kept per process while their sizes and times are unchanged)."""
    path = os.path.realpath(path)
    if os.path.isfile(path):
        st = os.stat(path)
        return cached_hash(path, (st.st_size, st.st_mtime_ns))
    sig = []
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            sig.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return cached_hash(path, tuple(sorted(sig)))
