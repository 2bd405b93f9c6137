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


def test_ctc_loss_leaves_out_unalignable_utterances():
    """An utterance with fewer frames than labels (+1 per repeated neighbour) has no CTC
    alignment: it adds nothing to the loss or its weight and is counted as unalignable; the
    alignable ones get optax's loss."""
    import flax.linen as nn
    import optax
    from slm_jax.models.conformer import ConformerConfig
    from slm_jax.task_model import CTCTaskModel
    cfg = ConformerConfig(input_dim=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                          conv_kernel_size=3, subsampling="none")
    model = CTCTaskModel(cfg, vocab_size=7)
    params = nn.meta.unbox(model.init_boxed(jax.random.PRNGKey(0)))
    t = 6
    feats = np.random.default_rng(0).standard_normal((3, t, 8)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], np.int32)
    # row 0: 3 labels in 6 frames; row 1: 3 labels + 1 repeat = 4 frames needed, 4 there (just);
    # row 2: 3 labels + 1 repeat = 4 needed, 3 there: unalignable
    targets = np.array([[2, 3, 4, 1, 0], [5, 5, 6, 1, 0], [2, 2, 3, 1, 0]], np.int32)
    batch = {"features": feats, "feature_mask": mask, "decoder_target_tokens": targets}
    sums = jax.jit(lambda p, b: model.loss_fn(p, b, jax.random.PRNGKey(0), True))(params, batch)
    logits, out_mask = model.module.apply({"params": params}, feats, mask)
    labels = np.where(targets > 1, targets, 0)
    per_seq = np.asarray(optax.ctc_loss(logits, 1.0 - np.asarray(out_mask, np.float32), labels,
                                        (labels == 0).astype(np.float32)))
    assert per_seq[2] > 1e3                     # what optax gives an unalignable row
    np.testing.assert_allclose(float(sums["loss_sum"]), per_seq[0] + per_seq[1], rtol=1e-5)
    assert float(sums["weight_sum"]) == 6 and float(sums["unalignable_sum"]) == 3
