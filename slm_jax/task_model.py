"""What the trainer and evaluator need from a model: init, the loss on a batch, and decoding
(T5X's "model" layer over the Flax modules).

`TaskModel` is that interface, the type set-up, trainer and evaluator code annotates with.
`EncDecTaskModel` holds what every encoder-decoder shares: teacher-forced next-token cross
entropy (T5X style, `losses.cross_entropy_sums`) and `predict_batch`, which encodes once and
decodes with the LLM's KV cache (greedy, beam or sampling). Subclasses say how a batch is
encoded: `SLMTaskModel` ([speech ; instruction] through the SLM) and `T5TaskModel` (text only,
used to pretrain / instruction-tune the LLM foundation with the same trainer). `CTCTaskModel`
pretrains the speech encoder with a CTC head.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp

from slm_jax import decoding
from slm_jax.losses import cross_entropy_sums
from slm_jax.models import t5 as t5_lib
from slm_jax.models.slm import SLM, SLMConfig, dummy_inputs

Batch = Mapping[str, jax.Array]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings. method: greedy | beam | sample. alpha: beam length penalty."""
    method: str = "greedy"
    max_len: int = 32
    beam_size: int = 4
    alpha: float = 0.6
    temperature: float = 1.0
    top_k: int = 0


# XLA compiler options of the decoding loop's program, per backend. On CPU, XLA's YNNPACK
# library fusions slow the loop's matmuls of a few rows per step, while the encoders (and the
# train step) run faster with them, so only this program turns them off (timings:
# benchmarks/README.md, "Profile", its item "XLA options per program").
DECODE_COMPILER_OPTIONS = {"cpu": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def jit_per_backend(options: Mapping[str, Mapping[str, Any]], **jit_kwargs):
    """Decorator: `jax.jit(fun, **jit_kwargs)` compiled with the XLA options `options[backend]`
    of the default backend, which is read at the first call (not at import). The wrapper has
    `.lower` as a jitted function does."""
    def wrap(fun):
        jitted = {}

        def get():
            backend = jax.default_backend()
            if backend not in jitted:
                jitted[backend] = jax.jit(fun, compiler_options=options.get(backend), **jit_kwargs)
            return jitted[backend]

        @functools.wraps(fun)
        def call(*args, **kwargs):
            return get()(*args, **kwargs)
        call.lower = lambda *args, **kwargs: get().lower(*args, **kwargs)
        return call
    return wrap


class TaskModel(abc.ABC):
    """A model as the set-up, trainer and evaluator use it; every task model subclasses this.

    config: the model's config (SLMConfig, T5Config, ConformerConfig).
    module: the Flax module the methods apply.
    eos_id: the target vocabulary's EOS id (targets end with it; evaluation cuts decoded tokens
        there).
    init_boxed(rng): freshly initialised parameters, boxed (nn.LogicallyPartitioned leaves that
        carry their logical axis names for slm_jax.partitioning); `nn.meta.unbox` gives arrays.
    abstract_params(): init_boxed's result as shapes (jax.eval_shape), nothing allocated.
    loss_fn(params, batch, rng, deterministic): summed (not averaged) metrics of one batch,
        "loss_sum" and "weight_sum" at least (the loss is their ratio) and any other "*_sum"
        (see slm_jax.trainer); rng feeds dropout when not deterministic.
    predict_batch(params, batch, decode_cfg, rng): (decoded target tokens [B, L], 0-padded;
        their scores [B]); decode_cfg is a DecodeConfig (models that decode one way ignore it),
        rng is used by sampling.

    Jitted methods take the task model as a static argument, so it is hashed and compared by
    identity (another instance, even of an equal config, compiles them again)."""

    config: Any
    module: Any
    eos_id: int

    @abc.abstractmethod
    def init_boxed(self, rng: jax.Array) -> Any:
        """Freshly initialised, boxed parameters (see the class docstring)."""

    def abstract_params(self) -> Any:
        """Boxed (LogicallyPartitioned) parameter shapes, nothing allocated."""
        return jax.eval_shape(self.init_boxed, jax.random.PRNGKey(0))

    @abc.abstractmethod
    def loss_fn(self, params, batch: Batch, rng: jax.Array, deterministic: bool) -> dict:
        """Summed loss metrics of `batch` (see the class docstring)."""

    @abc.abstractmethod
    def predict_batch(self, params, batch: Batch, decode_cfg: Any = None,
                      rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Decoded target tokens [B, L] (0-padded) and their scores [B]."""


class EncDecTaskModel(TaskModel):
    """Shared loss and decoding; subclasses define `config`, `module`, `llm_config`,
    `init_boxed`, `logits`, `encode` and `llm_params`."""

    llm_config: t5_lib.T5Config

    def __init__(self, label_smoothing: float = 0.0, z_loss: float = 1e-4):
        self.llm = t5_lib.T5(self.llm_config)
        self.label_smoothing, self.z_loss = label_smoothing, z_loss

    @property
    def eos_id(self) -> int:
        return self.llm_config.eos_id

    def loss_fn(self, params, batch: Batch, rng: jax.Array, deterministic: bool) -> dict:
        logits = self.logits(params, batch, None if deterministic else {"dropout": rng}, deterministic)
        weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
        return cross_entropy_sums(logits, batch["decoder_target_tokens"], weights,
                                  label_smoothing=self.label_smoothing, z_loss=self.z_loss)

    def predict_batch(self, params, batch: Batch, decode_cfg: DecodeConfig = DecodeConfig(),
                      rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Decoded target tokens [B, max_len] (EOS then 0s) and their scores [B]: `encode_batch`,
        then `decode_encoded` (two programs, each compiled with its own XLA options)."""
        encoded, mask = self.encode_batch(params, batch)
        return self.decode_encoded(params, encoded, mask, decode_cfg, rng)

    @functools.partial(jax.jit, static_argnums=0)
    def encode_batch(self, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """`encode` jitted: the LLM encoder states [B, L, D] and mask [B, L] decoding starts from."""
        return self.encode(params, batch)

    @jit_per_backend(DECODE_COMPILER_OPTIONS, static_argnums=(0, 4))
    def decode_encoded(self, params, encoded: jax.Array, mask: jax.Array,
                       decode_cfg: DecodeConfig = DecodeConfig(),
                       rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The decoding loop from LLM encoder states [B, L, D] and their mask [B, L] (the output
        of `encode`), e.g. to decode several ways from one encoding."""
        bsz = encoded.shape[0]
        llm_params = self.llm_params(params)
        eos, start = self.llm_config.eos_id, self.llm_config.decoder_start_token_id
        # cross-attention keys/values: projected once here, not at every step, and shared by the
        # beams of each example (not repeated per beam)
        cross_kv = t5_lib.cross_attention_kv(self.llm, llm_params, encoded)
        k = decode_cfg.beam_size if decode_cfg.method == "beam" else 1
        cache = t5_lib.init_cache(self.llm, llm_params, bsz, decode_cfg.max_len, encoded.shape[1], beams=k)

        def step_fn(tokens, cache, beam_slots=None):   # beam search passes its slot table
            return t5_lib.decode_step(self.llm, llm_params, cache, encoded, mask, tokens, cross_kv, beam_slots)

        if decode_cfg.method == "greedy":
            return decoding.greedy(step_fn, cache, bsz, decode_cfg.max_len, eos, start)
        if decode_cfg.method == "beam":
            return decoding.beam_search(step_fn, cache, bsz, k, decode_cfg.max_len, eos, start, decode_cfg.alpha)
        if decode_cfg.method == "sample":
            rng = jax.random.PRNGKey(0) if rng is None else rng
            return decoding.sample(step_fn, cache, rng, bsz, decode_cfg.max_len, decode_cfg.temperature,
                                   decode_cfg.top_k, eos, start)
        raise ValueError(f"DecodeConfig.method must be greedy/beam/sample, got {decode_cfg.method!r}")


def speech_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, bool]:
    """(speech, mask, precomputed) of an SLM batch: cached encoder outputs `encoded_speech` /
    `encoded_mask` (slm_jax.feature_cache) when present, else audio `features` / `feature_mask`."""
    if "encoded_speech" in batch:
        return batch["encoded_speech"], batch["encoded_mask"], True
    return batch["features"], batch["feature_mask"], False


@gin.configurable
class SLMTaskModel(EncDecTaskModel):
    """SLM on batches of features / feature_mask / instruction_tokens / decoder_* tokens, or of
    cached encoder outputs encoded_speech / encoded_mask instead of features / feature_mask
    (then the speech encoder is not run; see slm_jax.feature_cache)."""

    def __init__(self, config: SLMConfig, label_smoothing: float = 0.0, z_loss: float = 1e-4):
        self.config, self.llm_config = config, config.llm
        self.module = SLM(config)
        super().__init__(label_smoothing, z_loss)

    def init_boxed(self, rng: jax.Array) -> Any:
        return self.module.init(rng, **dummy_inputs(self.config))["params"]

    def with_config(self, config: SLMConfig) -> "SLMTaskModel":
        """The same task model on another config (the one its foundations' checkpoints define)."""
        return SLMTaskModel(config, self.label_smoothing, self.z_loss)

    def logits(self, params, batch: Batch, rngs, deterministic: bool) -> jax.Array:
        speech, mask, precomputed = speech_inputs(batch)
        return self.module.apply({"params": params}, speech, mask, batch["instruction_tokens"],
                                 batch["decoder_input_tokens"], deterministic=deterministic,
                                 precomputed=precomputed, rngs=rngs)

    def encode(self, params, batch: Batch):
        speech, mask, precomputed = speech_inputs(batch)
        return self.module.apply({"params": params}, speech, mask, batch["instruction_tokens"],
                                 precomputed=precomputed, method=SLM.encode)

    def llm_params(self, params):
        return params["llm"]


@gin.configurable
class T5TaskModel(EncDecTaskModel):
    """The LLM alone on text batches: encoder_input_tokens / decoder_* tokens, and for packed
    rows (several examples per row, as t5x packs) encoder_segment_ids / decoder_segment_ids."""

    def __init__(self, config: t5_lib.T5Config, label_smoothing: float = 0.0, z_loss: float = 1e-4):
        self.config = self.llm_config = config
        self.module = t5_lib.T5(config)
        super().__init__(label_smoothing, z_loss)

    def init_boxed(self, rng: jax.Array) -> Any:
        tokens = jnp.ones((1, 8), jnp.int32)
        return self.module.init(rng, tokens, tokens)["params"]

    def logits(self, params, batch: Batch, rngs, deterministic: bool) -> jax.Array:
        return self.module.apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                                 batch.get("encoder_segment_ids"), batch.get("decoder_segment_ids"),
                                 deterministic=deterministic, rngs=rngs)

    def encode(self, params, batch: Batch):
        mask = batch["encoder_input_tokens"] > 0
        return self.module.apply({"params": params}, batch["encoder_input_tokens"], mask, method=t5_lib.T5.encode), mask

    def llm_params(self, params):
        return params


@gin.configurable
class CTCTaskModel(TaskModel):
    """Speech-encoder pretraining: Conformer + CTC head on features -> target tokens (the EOS
    of the target feature is dropped; token 0 is the blank). Targets: any seqio vocabulary, e.g.
    the world SentencePiece pieces or UTF-8 bytes (the `_asr_chars` tasks, vocab_size 259)."""

    def __init__(self, config, vocab_size: int, eos_id: int = 1):
        from slm_jax.models.ctc import ConformerCTC
        self.config, self.eos_id = config, eos_id
        self.module = ConformerCTC(config, vocab_size)

    def init_boxed(self, rng: jax.Array) -> Any:
        feats = jnp.zeros((1, 64, self.config.input_dim), jnp.float32)
        return self.module.init(rng, feats, jnp.ones((1, 64), jnp.int32))["params"]

    def loss_fn(self, params, batch: Batch, rng: jax.Array, deterministic: bool) -> dict:
        import optax
        logits, mask = self.module.apply({"params": params}, batch["features"], batch["feature_mask"],
                                         deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
        labels = batch["decoder_target_tokens"]
        valid = (labels > 0) & (labels != self.eos_id)
        per_seq = optax.ctc_loss(logits, 1.0 - mask.astype(jnp.float32), jnp.where(valid, labels, 0),
                                 1.0 - valid.astype(jnp.float32))
        n_labels = valid.sum(-1).astype(jnp.float32)
        # CTC needs a frame per label plus a blank between equal neighbours; an utterance with
        # fewer frames has no alignment (its loss is ~1e5, meaningless): it is left out of the
        # loss and its labels are counted in the "unalignable" metric (share of label tokens).
        repeats = jnp.sum(valid[:, 1:] & valid[:, :-1] & (labels[:, 1:] == labels[:, :-1]), -1)
        alignable = ((n_labels > 0) & (n_labels + repeats <= mask.sum(-1))).astype(jnp.float32)
        # loss per label token (as the seq2seq losses), so logs are comparable across batches
        return dict(loss_sum=jnp.sum(per_seq * alignable), weight_sum=jnp.sum(n_labels * alignable),
                    frames_sum=jnp.sum(mask.astype(jnp.float32)),
                    unalignable_sum=jnp.sum(n_labels * (1.0 - alignable)))

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def predict_batch(self, params, batch: Batch, decode_cfg: Any = None,
                      rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Greedy CTC tokens [B, T'] (0-padded) and their summed frame log-probabilities [B];
        the TaskModel interface; `decode_cfg` and `rng` are not used."""
        from slm_jax.models.ctc import greedy_ctc
        logits, mask = self.module.apply({"params": params}, batch["features"], batch["feature_mask"])
        best = jnp.max(jax.nn.log_softmax(logits), axis=-1)
        return greedy_ctc(logits, mask), jnp.sum(best * mask, axis=-1)
