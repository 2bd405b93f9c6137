"""Batched autoregressive decoding with a KV cache: greedy, temperature sampling, beam search.

All three take a `step_fn(tokens [N, 1], cache) -> (logits [N, V], cache)` that runs one cached
decoder step (beam search also passes the beams' slot table, see `beam_search`), so they work for
any encoder-decoder (T5 alone or SLM). Loops are
`jax.lax.while_loop`s (jit-friendly) that stop early once every sequence has emitted EOS.
Outputs are [B, max_len] token arrays holding EOS where it was produced and 0 (pad) after it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, object], tuple[Array, object]]
BeamStepFn = Callable[[Array, object, Array], tuple[Array, object]]   # (tokens, cache, slots)
NEG_INF = -1.0e7


def _sample_loop(step_fn: StepFn, cache, batch_size: int, max_len: int, eos_id: int, start_id: int,
                 choose: Callable[[Array, Array], Array]) -> tuple[Array, Array]:
    """Shared loop for greedy/sampling: `choose(logits, i)` picks the next token ids."""

    def cond(carry):
        i, _, _, done, _, _ = carry
        return jnp.logical_and(i < max_len, ~jnp.all(done))

    def body(carry):
        i, last, out, done, score, cache = carry
        logits, cache = step_fn(last[:, None], cache)
        logits = logits.astype(jnp.float32)
        tok = choose(logits, i)
        logp = jax.nn.log_softmax(logits)[jnp.arange(batch_size), tok]
        tok = jnp.where(done, 0, tok)
        score = score + jnp.where(done, 0.0, logp)
        out = out.at[:, i].set(tok)
        return i + 1, tok, out, done | (tok == eos_id), score, cache

    init = (jnp.array(0), jnp.full((batch_size,), start_id, jnp.int32), jnp.zeros((batch_size, max_len), jnp.int32),
            jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.float32), cache)
    _, _, out, _, score, _ = jax.lax.while_loop(cond, body, init)
    return out, score


def greedy(step_fn: StepFn, cache, batch_size: int, max_len: int, eos_id: int = 1,
           start_id: int = 0) -> tuple[Array, Array]:
    """Argmax decoding. Returns (tokens [B, max_len], sum of token log-probs [B])."""
    return _sample_loop(step_fn, cache, batch_size, max_len, eos_id, start_id,
                        lambda logits, i: jnp.argmax(logits, -1).astype(jnp.int32))


def sample(step_fn: StepFn, cache, rng: Array, batch_size: int, max_len: int, temperature: float = 1.0,
           top_k: int = 0, eos_id: int = 1, start_id: int = 0) -> tuple[Array, Array]:
    """Temperature sampling (optionally from the top_k logits). temperature 0 is greedy."""
    if temperature == 0.0:
        return greedy(step_fn, cache, batch_size, max_len, eos_id, start_id)

    def choose(logits, i):
        if top_k:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth, NEG_INF, logits)
        return jax.random.categorical(jax.random.fold_in(rng, i), logits / temperature).astype(jnp.int32)
    return _sample_loop(step_fn, cache, batch_size, max_len, eos_id, start_id, choose)


def _length_penalty(length: Array, alpha: float) -> Array:
    """GNMT length penalty ((5 + len) / 6) ** alpha; alpha 0 disables it."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(step_fn: BeamStepFn, cache, batch_size: int, beam_size: int, max_len: int, eos_id: int = 1,
                start_id: int = 0, alpha: float = 0.6) -> tuple[Array, Array]:
    """Beam search. `step_fn(tokens [B*K, 1], cache, slots [B, K, max_len])` runs one step for
    the B*K hypotheses (beam-major within each example); the cache is never reordered: each beam
    slot k writes its step-t state at (t, k), and slots[b, j, t] names the slot that holds
    hypothesis j's step-t state (its ancestor's; slot j itself at the current step), so a step
    attends to its own history only (`t5.decode_step(..., beam_slots=...)`). Returns the best
    sequence per example [B, max_len] and its length-penalised score [B]. Sequences that reach
    max_len without EOS compete as finished hypotheses at the end. Only EOS candidates ranked in
    the top `beam_size` finish a hypothesis, so beam_size=1 with alpha=0 reproduces greedy."""
    b, k = batch_size, beam_size
    own_slot = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))

    def cond(c):
        i, _, alive_logp, _, fin_score, fin_any, _, _ = c
        best_alive = jnp.max(alive_logp, axis=1) / _length_penalty(jnp.array(max_len), alpha)
        worst_fin = jnp.min(jnp.where(fin_any, fin_score, -NEG_INF), axis=1)
        done = jnp.all(fin_any, axis=1) & (best_alive <= worst_fin)
        return (i < max_len) & ~jnp.all(done)

    def body(c):
        i, alive_seq, alive_logp, fin_seq, fin_score, fin_any, slots, cache = c
        last = jnp.where(i == 0, start_id, alive_seq[:, :, jnp.maximum(i - 1, 0)]).reshape(-1)
        slots = jax.lax.dynamic_update_slice(slots, own_slot[..., None], (0, 0, i))
        logits, cache = step_fn(last[:, None], cache, slots)
        v = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, v)
        cand = (alive_logp[..., None] + logp).reshape(b, k * v)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)
        beam_idx, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seq, beam_idx[..., None], axis=1).at[:, :, i].set(tok)
        is_eos = tok == eos_id
        last_step = i == max_len - 1
        # Finished candidates: EOS among the top k (as in HF; so beam_size 1 with alpha 0 is
        # exactly greedy), or anything in the top k at the last step.
        in_top_k = jnp.arange(2 * k)[None, :] < k
        new_fin = (is_eos | last_step) & in_top_k
        new_fin_score = jnp.where(new_fin, top_logp / _length_penalty(i + 1, alpha), NEG_INF)
        all_seq = jnp.concatenate([fin_seq, seqs], axis=1)
        all_score = jnp.concatenate([jnp.where(fin_any, fin_score, NEG_INF), new_fin_score], axis=1)
        all_any = jnp.concatenate([fin_any, new_fin], axis=1)
        fin_score, sel = jax.lax.top_k(all_score, k)
        fin_seq = jnp.take_along_axis(all_seq, sel[..., None], axis=1)
        fin_any = jnp.take_along_axis(all_any, sel, axis=1)
        # alive: best k non-EOS candidates
        alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
        alive_logp, sel = jax.lax.top_k(alive_cand, k)
        alive_seq = jnp.take_along_axis(seqs, sel[..., None], axis=1)
        # each new hypothesis inherits its parent's slot history (the cache itself stays put)
        slots = jnp.take_along_axis(slots, jnp.take_along_axis(beam_idx, sel, axis=1)[..., None], axis=1)
        return i + 1, alive_seq, alive_logp, fin_seq, fin_score, fin_any, slots, cache

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
    init = (jnp.array(0), jnp.zeros((b, k, max_len), jnp.int32), alive_logp,
            jnp.zeros((b, k, max_len), jnp.int32), jnp.full((b, k), NEG_INF, jnp.float32),
            jnp.zeros((b, k), bool), jnp.zeros((b, k, max_len), jnp.int32), cache)
    _, alive_seq, alive_logp, fin_seq, fin_score, fin_any, _, _ = jax.lax.while_loop(cond, body, init)
    return fin_seq[:, 0], fin_score[:, 0]
