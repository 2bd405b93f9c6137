"""Conformer + linear CTC head: how this codebase pretrains its own speech encoder foundation.

CTC on characters (bytes) is the cheapest objective that makes encoder frames carry the spoken
content, which is what the frozen encoder must give the SLM adapter. (USM itself uses BEST-RQ
self-supervision followed by supervised fine-tuning; at miniature scale and CPU budgets CTC
converges in minutes, BEST-RQ would not.) After pretraining, params["encoder"] is the frozen
`speech_encoder` subtree of an SLM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from slm_jax.models import layers
from slm_jax.models.conformer import Conformer, ConformerConfig

Array = jax.Array


class ConformerCTC(nn.Module):
    config: ConformerConfig
    vocab_size: int

    @nn.compact
    def __call__(self, features: Array, mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
        """-> (logits [B, T', vocab] float32, out_mask [B, T']). Index 0 is the CTC blank."""
        hidden, out_mask = Conformer(self.config, name="encoder")(features, mask, deterministic)
        logits = layers.dense(self.vocab_size, ("embed", "vocab"), use_bias=True, dtype=self.config.dtype,
                              name="ctc_head")(hidden)
        return logits.astype(jnp.float32), out_mask


def greedy_ctc(logits: Array, mask: Array) -> Array:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks (0).
    Returns [B, T'] ids, left-aligned, 0-padded."""
    best = jnp.argmax(logits, -1) * mask
    prev = jnp.pad(best, ((0, 0), (1, 0)))[:, :-1]
    keep = (best != 0) & (best != prev)
    order = jnp.argsort(~keep, axis=1, stable=True)          # kept frames first, in time order
    return jnp.where(jnp.take_along_axis(keep, order, 1), jnp.take_along_axis(best, order, 1), 0)
