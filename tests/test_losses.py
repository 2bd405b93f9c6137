"""T5X-style cross entropy vs a direct numpy computation."""

import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.losses import cross_entropy_sums


def numpy_reference(logits, targets, weights, ls, z):
    v = logits.shape[-1]
    m = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    logp = logits - log_z[..., None]
    conf, low = 1.0 - ls, ls / (v - 1)
    total = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            soft = np.full(v, low)
            soft[targets[b, t]] = conf
            ent = -sum(p * np.log(p) for p in soft if p > 0)
            ce = -(soft * logp[b, t]).sum() - ent
            total += weights[b, t] * (ce + z * log_z[b, t] ** 2)
    return total


@pytest.mark.parametrize("ls,z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.2, 1e-2)])
def test_matches_numpy(ls, z):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float64) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    weights = (rng.random((2, 5)) > 0.3).astype(np.float64)
    out = cross_entropy_sums(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(weights),
                             label_smoothing=ls, z_loss=z)
    np.testing.assert_allclose(float(out["loss_sum"]), numpy_reference(logits, targets, weights, ls, z), rtol=1e-5)
    assert float(out["weight_sum"]) == weights.sum()
    correct = ((logits.argmax(-1) == targets) * weights).sum()
    assert float(out["correct_sum"]) == correct


def test_perfect_smoothed_prediction_has_zero_loss():
    v, ls = 7, 0.1
    soft = np.full(v, ls / (v - 1))
    soft[3] = 1 - ls
    logits = jnp.asarray(np.log(soft)[None, None], jnp.float32)
    out = cross_entropy_sums(logits, jnp.array([[3]]), jnp.ones((1, 1)), label_smoothing=ls)
    assert abs(float(out["loss_sum"])) < 1e-5
