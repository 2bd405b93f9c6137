"""SLM: frozen speech encoder -> trainable adapter -> packed concatenation with the embedded
text instruction -> frozen encoder-decoder LLM (mT5/mT0) -> next-token logits.

Parameters live under three top-level keys: "speech_encoder", "adapter", "llm". The trainer
treats "adapter" as the trainable subtree (configurable) and the rest as a frozen pytree.

Packing: speech frames and instruction tokens are both right-padded. Concatenating them naively
would leave a padding hole between the two parts, so the LLM's relative positions (and hence a
sample's output) would depend on how much padding the batch has. `pack` instead places each
sample's valid speech frames and valid text tokens contiguously at the front, padding at the end.

Cached encoder outputs: with `precomputed=True` (`encode`, `__call__`, `embed_speech`) the
speech inputs are the frozen part's outputs, `speech_encoder_outputs` (encoder, then the
adapter's parameter-free subsampling), as slm_jax.feature_cache stores them; the speech encoder
is then not run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from slm_jax.models.adapter import Adapter, AdapterConfig, prepare_input
from slm_jax.models.conformer import Conformer, ConformerConfig
from slm_jax.models.t5 import T5, T5Config
from slm_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SLMConfig:
    """speech_first: speech embeddings before (True) or after the instruction.
    kept_frames_only: with the adapter's "stride" subsampling, ask the speech encoder for the
    frames the adapter keeps only (its last layer skips the dropped ones; the same numbers).
    False runs the encoder over every frame and subsamples its output afterwards: the work an
    implementation that computes the whole encoder output does (benchmarks/common.py counts a
    reference's FLOPs so). No effect with "mean" subsampling.
    speech_encoder / llm None, adapter input_dim / output_dim None: taken from the foundations'
    checkpoint directories when the RunConfig is built (slm_jax.foundations)."""
    speech_encoder: ConformerConfig | WhisperEncoderConfig | None = None
    adapter: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    llm: T5Config | None = None
    speech_first: bool = True
    kept_frames_only: bool = True

    def __post_init__(self):
        if not self.complete:
            return     # parts left to the foundations' checkpoints (slm_jax.foundations.resolve_slm)
        enc_width = getattr(self.speech_encoder, "hidden_size", None) or getattr(self.speech_encoder, "d_model")
        if self.adapter.input_dim != enc_width:
            raise ValueError(f"SLMConfig.adapter.input_dim={self.adapter.input_dim} must equal the speech "
                             f"encoder width {enc_width}")
        if self.adapter.output_dim != self.llm.d_model:
            raise ValueError(f"SLMConfig.adapter.output_dim={self.adapter.output_dim} must equal "
                             f"llm.d_model={self.llm.d_model}")

    @property
    def complete(self) -> bool:
        """Every part given (None parts and adapter widths come from the foundations' checkpoints)."""
        return None not in (self.speech_encoder, self.llm, self.adapter.input_dim, self.adapter.output_dim)


def pack(first: Array, first_mask: Array, second: Array, second_mask: Array) -> tuple[Array, Array]:
    """Concatenate two right-padded sequences per sample without a padding hole.

    first [B, S, D] / [B, S], second [B, L, D] / [B, L] -> [B, S+L, D], [B, S+L]: sample b holds its
    n1 valid `first` items, then its n2 valid `second` items, then zeros (mask 0)."""
    s, l = first.shape[1], second.shape[1]
    n1 = first_mask.astype(jnp.int32).sum(-1, keepdims=True)
    n2 = second_mask.astype(jnp.int32).sum(-1, keepdims=True)
    pos = jnp.arange(s + l)[None, :]
    in_first = pos < n1
    src = jnp.where(in_first, pos, s + pos - n1)          # index into concat([first, second])
    valid = pos < n1 + n2
    src = jnp.where(valid, src, 0)
    joined = jnp.concatenate([first, second.astype(first.dtype)], axis=1)
    out = jnp.take_along_axis(joined, src[..., None], axis=1)
    return out * valid[..., None].astype(out.dtype), valid


class SLM(nn.Module):
    """The joint speech-and-language model (see module docstring)."""
    config: SLMConfig

    def setup(self):
        cfg = self.config
        if isinstance(cfg.speech_encoder, ConformerConfig):
            self.speech_encoder = Conformer(cfg.speech_encoder)
        elif isinstance(cfg.speech_encoder, WhisperEncoderConfig):
            self.speech_encoder = WhisperEncoder(cfg.speech_encoder)
        else:
            raise TypeError(f"SLMConfig.speech_encoder: unsupported config {type(cfg.speech_encoder).__name__}")
        self.adapter = Adapter(cfg.adapter)
        self.llm = T5(cfg.llm)

    def _subsampled_speech(self, features: Array, feature_mask: Array, deterministic: bool):
        """Speech encoder, then the adapter's parameter-free subsampling (`prepare_input`). With
        "stride" subsampling and `SLMConfig.kept_frames_only` the encoder is asked for only the
        frames the adapter keeps, so its last layer skips the work on the dropped ones (the same
        numbers)."""
        cfg = self.config.adapter
        if cfg.subsampling == "stride" and self.config.kept_frames_only:
            hidden, mask = self.speech_encoder(features, feature_mask, deterministic=deterministic,
                                               output_stride=cfg.stride)
            return hidden.astype(cfg.dtype), mask
        hidden, mask = self.speech_encoder(features, feature_mask, deterministic=deterministic)
        return prepare_input(hidden, mask, cfg)

    def speech_encoder_outputs(self, features: Array, feature_mask: Array) -> tuple[Array, Array]:
        """The frozen, parameter-free-subsampled speech path (inference mode): audio features
        [B, T, C] -> [B, T', D_enc] in the adapter's dtype, mask [B, T']. What
        slm_jax.feature_cache stores, and what `embed_speech(..., precomputed=True)` takes."""
        return self._subsampled_speech(features, feature_mask, deterministic=True)

    def embed_speech(self, features: Array, feature_mask: Array, deterministic: bool = True,
                     precomputed: bool = False):
        """Audio features [B, T, C] -> adapter outputs in LLM embedding space [B, T', D], mask.
        precomputed=True: features / feature_mask are `speech_encoder_outputs` (cached)."""
        if not precomputed:
            # No stop_gradient: freezing is the trainer's job (it differentiates only the
            # trainable subtree, so a frozen encoder gets no backward pass); full fine-tuning
            # trains it.
            features, feature_mask = self._subsampled_speech(features, feature_mask, deterministic)
        return self.adapter(features, feature_mask, deterministic=deterministic, subsampled=True)

    def encode(self, features: Array, feature_mask: Array, instruction_tokens: Array,
               instruction_mask: Array | None = None, deterministic: bool = True,
               precomputed: bool = False) -> tuple[Array, Array]:
        """Run the LLM encoder over [speech ; instruction] (packed). Returns (encoded, mask)."""
        if instruction_mask is None:
            instruction_mask = instruction_tokens > 0
        speech, speech_mask = self.embed_speech(features, feature_mask, deterministic, precomputed)
        text = self.llm.embed(instruction_tokens)
        if self.config.speech_first:
            x, mask = pack(speech, speech_mask, text, instruction_mask)
        else:
            x, mask = pack(text, instruction_mask, speech, speech_mask)
        return self.llm.encode_embedded(x, mask, deterministic=deterministic), mask

    def decode(self, encoded: Array, encoder_mask: Array, decoder_input_tokens: Array,
               decoder_mask: Array | None = None, deterministic: bool = True, decode: bool = False) -> Array:
        """LLM decoder logits (full teacher-forced pass, or one cached step with decode=True)."""
        return self.llm.decode(encoded, encoder_mask, decoder_input_tokens, decoder_mask=decoder_mask,
                               deterministic=deterministic, decode=decode)

    def __call__(self, features: Array, feature_mask: Array, instruction_tokens: Array,
                 decoder_input_tokens: Array, instruction_mask: Array | None = None,
                 decoder_mask: Array | None = None, deterministic: bool = True, precomputed: bool = False) -> Array:
        encoded, mask = self.encode(features, feature_mask, instruction_tokens, instruction_mask, deterministic,
                                    precomputed)
        return self.decode(encoded, mask, decoder_input_tokens, decoder_mask, deterministic)


def dummy_inputs(config: SLMConfig, batch: int = 1, frames: int = 64, text_len: int = 8,
                 target_len: int = 8) -> dict[str, Array]:
    """Zero-valued inputs of the right shapes/dtypes, for init and eval_shape."""
    channels = getattr(config.speech_encoder, "input_dim", None) or config.speech_encoder.num_mel_bins
    return dict(features=jnp.zeros((batch, frames, channels), jnp.float32),
                feature_mask=jnp.ones((batch, frames), jnp.int32),
                instruction_tokens=jnp.ones((batch, text_len), jnp.int32),
                decoder_input_tokens=jnp.ones((batch, target_len), jnp.int32))


def abstract_params(config: SLMConfig, **dummy_kwargs) -> dict:
    """Unboxed parameter ShapeDtypeStructs of SLM(config), without allocating anything."""
    model = SLM(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(config, **dummy_kwargs)))
    return nn.meta.unbox(shapes["params"])


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def param_counts(params: dict, trainable: tuple[str, ...] = ("adapter",)) -> dict[str, Any]:
    """Parameter counts per top-level subtree, split trainable/frozen (works on arrays or shapes)."""
    per_part = {name: count(sub) for name, sub in params.items()}
    n_train = sum(n for name, n in per_part.items() if name in trainable)
    total = sum(per_part.values())
    return dict(per_part, trainable=n_train, frozen=total - n_train, total=total,
                trainable_fraction=n_train / max(total, 1))
