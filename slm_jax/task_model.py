"""What the trainer and evaluator need from an SLM: init, the loss on a batch, and decoding.

`SLMTaskModel` wraps the Flax `SLM` module (T5X's "model" layer): the loss is teacher-forced
next-token cross entropy (T5X style, `losses.cross_entropy_sums`); `predict_batch` encodes
[speech ; instruction] once and decodes with the LLM's KV cache (greedy, beam or sampling).
"""

from __future__ import annotations

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


@gin.configurable
class SLMTaskModel:
    def __init__(self, config: SLMConfig, label_smoothing: float = 0.0, z_loss: float = 1e-4):
        self.config = config
        self.module = SLM(config)
        self.llm = t5_lib.T5(config.llm)
        self.label_smoothing, self.z_loss = label_smoothing, z_loss

    # ---------------------------------------------------------------- init
    def abstract_params(self, **dummy_kwargs) -> Any:
        """Boxed (LogicallyPartitioned) parameter shapes, nothing allocated."""
        return jax.eval_shape(self.init_boxed, jax.random.PRNGKey(0), **dummy_kwargs)

    def init_boxed(self, rng: jax.Array, **dummy_kwargs) -> Any:
        return self.module.init(rng, **dummy_inputs(self.config, **dummy_kwargs))["params"]

    # ---------------------------------------------------------------- loss
    def loss_fn(self, params, batch: Batch, rng: jax.Array, deterministic: bool) -> dict:
        logits = self.module.apply(
            {"params": params}, batch["features"], batch["feature_mask"], batch["instruction_tokens"],
            batch["decoder_input_tokens"], decoder_mask=None, deterministic=deterministic,
            rngs=None if deterministic else {"dropout": rng})
        weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
        return cross_entropy_sums(logits, batch["decoder_target_tokens"], weights,
                                  label_smoothing=self.label_smoothing, z_loss=self.z_loss)

    # ---------------------------------------------------------------- decoding
    def encode(self, params, batch: Batch):
        return self.module.apply({"params": params}, batch["features"], batch["feature_mask"],
                                 batch["instruction_tokens"], method=SLM.encode)

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def predict_batch(self, params, batch: Batch, decode_cfg: DecodeConfig = DecodeConfig(),
                      rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Decoded target tokens [B, max_len] (EOS then 0s) and their scores [B]."""
        encoded, mask = self.encode(params, batch)
        bsz = encoded.shape[0]
        llm_params = params["llm"]
        eos = self.config.llm.eos_id
        start = self.config.llm.decoder_start_token_id
        k = decode_cfg.beam_size if decode_cfg.method == "beam" else 1
        if k > 1:
            encoded, mask = decoding.expand_for_beams((encoded, mask), k)
        cache = t5_lib.init_cache(self.llm, llm_params, bsz * k, decode_cfg.max_len, encoded.shape[1])

        def step_fn(tokens, cache):
            return t5_lib.decode_step(self.llm, llm_params, cache, encoded, mask, tokens)

        if decode_cfg.method == "greedy":
            return decoding.greedy(step_fn, cache, bsz, decode_cfg.max_len, eos, start)
        if decode_cfg.method == "beam":
            return decoding.beam_search(step_fn, cache, bsz, k, decode_cfg.max_len, eos, start, decode_cfg.alpha)
        if decode_cfg.method == "sample":
            rng = jax.random.PRNGKey(0) if rng is None else rng
            return decoding.sample(step_fn, cache, rng, bsz, decode_cfg.max_len, decode_cfg.temperature,
                                   decode_cfg.top_k, eos, start)
        raise ValueError(f"DecodeConfig.method must be greedy/beam/sample, got {decode_cfg.method!r}")
