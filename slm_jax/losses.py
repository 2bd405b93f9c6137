"""T5X-style token losses: weighted cross entropy with label smoothing and z-loss.

Everything returns *sums* over tokens together with the weight sum, so losses are normalised
once per (possibly accumulated) batch: the result does not depend on how a batch is split into
microbatches or over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def cross_entropy_sums(logits: Array, targets: Array, weights: Array, *, label_smoothing: float = 0.0,
                       z_loss: float = 0.0) -> dict[str, Array]:
    """logits [B, T, V] (any float dtype), targets [B, T] int, weights [B, T] -> dict of sums:

    loss_sum: sum_t w_t * (CE_t + z_loss * logsumexp_t^2), where CE uses smoothed targets
      (confidence 1-ls on the target, ls/(V-1) elsewhere) minus the smoothed distribution's
      entropy, so a perfect prediction of the smoothed targets has zero loss (as in T5X);
    z_loss_sum: the z-loss part alone; weight_sum; correct_sum (argmax == target, weighted)."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    weights = weights.astype(jnp.float32)
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    normalizing = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20)) \
        if label_smoothing > 0 else 0.0
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
    ce = -jnp.sum(soft * log_probs, axis=-1) - normalizing
    zl = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return dict(loss_sum=jnp.sum((ce + zl) * weights), z_loss_sum=jnp.sum(zl * weights),
                weight_sum=jnp.sum(weights), correct_sum=jnp.sum(correct * weights))
