"""Decoding algorithms on a toy Markov "model" whose exact answers can be enumerated."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import decoding

V, EOS = 5, 1


def markov_step(table):
    """step_fn whose next-token logits depend only on the last token; the cache counts steps."""
    def step_fn(tokens, cache, slots=None):   # beam search also passes its slot table
        return table[tokens[:, 0]], cache + 1
    return step_fn


def make_table(seed):
    """Random next-token logits; token 0 is padding and never predicted (as for a real model)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V)) * 2.0
    table[:, 0] = -1e9
    return jnp.asarray(table, jnp.float32)


def seq_logp(table, seq):
    logp = np.asarray(jax.nn.log_softmax(table, -1))
    last, total = 0, 0.0
    for t in seq:
        total += logp[last, t]
        last = t
    return total


def exhaustive_best(table, max_len, alpha, logp_fn=seq_logp):
    """Best EOS-terminated (or max_len) sequence under the GNMT length penalty; `logp_fn(table,
    seq)` scores a sequence."""
    best, best_score = None, -np.inf
    for length in range(1, max_len + 1):
        for body in itertools.product([t for t in range(1, V) if t != EOS], repeat=length - 1):
            for last in range(1, V):
                seq = list(body) + [last]
                if last != EOS and length != max_len:
                    continue
                score = logp_fn(table, seq) / ((5 + length) / 6) ** alpha
                if score > best_score:
                    best, best_score = seq, score
    return best, best_score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_python_loop(seed):
    table = make_table(seed)
    tokens, score = decoding.greedy(markov_step(table), jnp.zeros(()), batch_size=1, max_len=6, eos_id=EOS)
    last, expected = 0, []
    for _ in range(6):
        last = int(np.argmax(np.asarray(table[last])))
        expected.append(last)
        if last == EOS:
            break
    expected += [0] * (6 - len(expected))
    assert np.asarray(tokens)[0].tolist() == expected
    np.testing.assert_allclose(float(score[0]), seq_logp(table, [t for t in expected if t]), rtol=1e-5)


@pytest.mark.parametrize("seed,alpha", [(0, 0.0), (1, 0.6), (3, 1.0), (4, 0.0)])
def test_wide_beam_finds_exhaustive_optimum(seed, alpha):
    table = make_table(seed)
    max_len = 4
    best, best_score = exhaustive_best(table, max_len, alpha)
    # a beam as wide as the number of candidates at the last step is exact
    k = (V - 2) ** (max_len - 1) * (V - 1)
    cache = jnp.zeros((k,))
    tokens, score = decoding.beam_search(markov_step(table), cache, 1, k, max_len, EOS, alpha=alpha)
    got = [t for t in np.asarray(tokens)[0].tolist()]
    got = got[:len(best)]
    assert got == best
    np.testing.assert_allclose(float(score[0]), best_score, rtol=1e-5)


def second_order_step(table2, batch, beams):
    """Beam step_fn whose logits depend on the last TWO tokens [prev, last]. The token before the
    last is read back from a cache that beam search never reorders, through its slot table
    (as the T5 self-attention reads its keys): a wrong slot gives a wrong context."""
    def step_fn(tokens, cache, slots):
        hist, i = cache                                   # hist [B*K, max_len]: each slot's inputs
        hist = hist.at[:, i].set(tokens[:, 0])
        before = jnp.maximum(i - 1, 0)
        rows = (jnp.arange(batch)[:, None] * beams + slots[:, :, before]).reshape(-1)
        prev = jnp.where(i == 0, 0, hist[rows, before])
        return table2[prev, tokens[:, 0]], (hist, i + 1)
    return step_fn


def second_order_logp(table2, seq):
    logp = np.asarray(jax.nn.log_softmax(table2, -1))
    prev, last, total = 0, 0, 0.0
    for t in seq:
        total += logp[prev, last, t]
        prev, last = last, t
    return total


@pytest.mark.parametrize("seed", [19, 24])
def test_beam_slots_follow_each_hypothesis_history(seed):
    """A model with two tokens of context: the wide beam still finds the exhaustive optimum, so
    every hypothesis read its own ancestors' cache slots. The seeds are ones whose optimum does
    not start with the most likely first token, so it descends from a hypothesis outside slot 0."""
    max_len, alpha = 4, 0.6
    k = (V - 2) ** (max_len - 1) * (V - 1)
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V, V)) * 2.0
    table[..., 0] = -1e9
    table[..., EOS] -= 4.0     # long sequences win, so the optimum depends on deep contexts
    table2 = jnp.asarray(table, jnp.float32)
    best, best_score = exhaustive_best(table2, max_len, alpha, second_order_logp)
    assert len(best) >= 3 and best[0] != int(np.argmax(table[0, 0])), best
    cache = (jnp.zeros((k, max_len), jnp.int32), jnp.array(0))
    tokens, score = decoding.beam_search(second_order_step(table2, 1, k), cache, 1, k, max_len, EOS, alpha=alpha)
    assert np.asarray(tokens)[0].tolist()[:len(best)] == best
    np.testing.assert_allclose(float(score[0]), best_score, rtol=1e-5)


def test_beam_width_one_equals_greedy():
    for seed in range(5):
        table = make_table(seed)
        g, _ = decoding.greedy(markov_step(table), jnp.zeros((2,)), batch_size=2, max_len=7, eos_id=EOS)
        b, _ = decoding.beam_search(markov_step(table), jnp.zeros((2,)), 2, 1, 7, EOS, alpha=0.0)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(b))


def test_sampling_follows_distribution_and_temperature():
    table = make_table(7)
    n = 4000
    tokens, _ = decoding.sample(markov_step(table), jnp.zeros((n,)), jax.random.PRNGKey(0), n, 1,
                                temperature=1.0, eos_id=EOS)
    freq = np.bincount(np.asarray(tokens)[:, 0], minlength=V) / n
    probs = np.asarray(jax.nn.softmax(table[0]))
    np.testing.assert_allclose(freq, probs, atol=0.03)
    cold, _ = decoding.sample(markov_step(table), jnp.zeros((64,)), jax.random.PRNGKey(1), 64, 1,
                              temperature=1e-4, eos_id=EOS)
    assert np.all(np.asarray(cold)[:, 0] == int(np.argmax(np.asarray(table[0]))))
    topk, _ = decoding.sample(markov_step(table), jnp.zeros((500,)), jax.random.PRNGKey(2), 500, 1,
                              temperature=1.0, top_k=2, eos_id=EOS)
    allowed = set(np.argsort(-np.asarray(table[0]))[:2].tolist())
    assert set(np.asarray(topk)[:, 0].tolist()) <= allowed


def test_tokens_after_eos_are_padding():
    table = jnp.full((V, V), -5.0).at[:, EOS].set(5.0).at[0, EOS].set(-5.0).at[0, 3].set(5.0)
    tokens, _ = decoding.greedy(markov_step(table), jnp.zeros(()), 1, 5, EOS)
    assert np.asarray(tokens)[0].tolist() == [3, EOS, 0, 0, 0]
