"""SLM: packing, padding/mask invariance, adapter subsampling, and paper-size parameter counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import configs
from slm_jax.models.adapter import Adapter, subsample
from slm_jax.models.slm import SLM, abstract_params, dummy_inputs, pack, param_counts
from slm_jax.models.whisper import WhisperEncoderConfig


def test_pack_matches_python_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5, 2)).astype(np.float32), rng.normal(size=(3, 4, 2)).astype(np.float32)
    na, nb = [5, 2, 0], [1, 4, 3]
    ma = (np.arange(5)[None] < np.array(na)[:, None]).astype(np.int32)
    mb = (np.arange(4)[None] < np.array(nb)[:, None]).astype(np.int32)
    out, mask = pack(jnp.asarray(a), jnp.asarray(ma), jnp.asarray(b), jnp.asarray(mb))
    for i in range(3):
        expect = np.concatenate([a[i, :na[i]], b[i, :nb[i]]])
        n = len(expect)
        np.testing.assert_allclose(np.asarray(out[i, :n]), expect, rtol=0, atol=0)
        assert np.all(np.asarray(out[i, n:]) == 0)
        assert np.asarray(mask[i]).tolist() == [1] * n + [0] * (9 - n)


def test_subsample_modes():
    x = jnp.arange(2 * 7 * 1, dtype=jnp.float32).reshape(2, 7, 1)
    m = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
    y, ym = subsample(x, m, 3, "stride")
    assert y[:, :, 0].tolist() == [[0, 3, 6], [7, 10, 13]] and ym.tolist() == [[1, 1, 1], [1, 1, 0]]
    y, ym = subsample(x, m, 3, "mean")
    np.testing.assert_allclose(np.asarray(y[:, :, 0]), [[1, 4, 6], [8, 10.5, 0]])  # window means over valid frames
    assert np.asarray(ym).tolist() == [[True, True, True], [True, True, False]]


def _batch(rng, lengths, text_lengths, frames, text_len, channels=80):
    feats = rng.normal(size=(len(lengths), frames, channels)).astype(np.float32)
    fmask = (np.arange(frames)[None] < np.array(lengths)[:, None]).astype(np.int32)
    feats *= fmask[..., None]
    toks = rng.integers(3, 200, size=(len(lengths), text_len)).astype(np.int32)
    toks *= (np.arange(text_len)[None] < np.array(text_lengths)[:, None])
    return feats, fmask, toks


@pytest.mark.parametrize("speech_first", [True, False])
def test_outputs_invariant_to_padding_and_other_samples(speech_first):
    cfg = dataclasses.replace(configs.tiny_slm(adapter_layers=2), speech_first=speech_first)
    model = SLM(cfg)
    rng = np.random.default_rng(0)
    feats, fmask, toks = _batch(rng, [40, 23, 9], [5, 2, 7], 48, 8)
    dec = rng.integers(3, 200, size=(3, 6)).astype(np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), feats, fmask, toks, dec)["params"]
    apply = jax.jit(model.apply)
    base = np.asarray(apply({"params": params}, feats, fmask, toks, dec))

    # sample 0 alone, without any padding
    alone = np.asarray(apply({"params": params}, feats[:1, :40], fmask[:1, :40], toks[:1, :5], dec[:1]))
    np.testing.assert_allclose(alone[0], base[0], atol=1e-5)

    # more padding everywhere, garbage in the padded audio frames, another sample changed
    feats2 = np.concatenate([feats, rng.normal(size=(3, 20, 80)).astype(np.float32)], axis=1)
    fmask2 = np.concatenate([fmask, np.zeros((3, 20), np.int32)], axis=1)
    feats2[0, 40:] = 7.0
    feats2[1] = rng.normal(size=feats2[1].shape)
    fmask2[1] = 1
    toks2 = np.concatenate([toks, np.zeros((3, 5), np.int32)], axis=1)
    toks2[2, :12] = 5
    out2 = np.asarray(apply({"params": params}, feats2, fmask2, toks2, dec))
    np.testing.assert_allclose(out2[0], base[0], atol=1e-5)
    assert np.abs(out2[1] - base[1]).max() > 1e-3  # the changed sample did change


def test_gradients_reach_adapter_and_speech_encoder():
    # The model does not stop gradients anywhere: freezing is the trainer's job (it
    # differentiates only the trainable subtree, see test_trainer), so full fine-tuning
    # really trains the speech encoder.
    cfg = configs.tiny_slm()
    model = SLM(cfg)
    inputs = dummy_inputs(cfg, batch=2, frames=32)
    inputs["features"] = jax.random.normal(jax.random.PRNGKey(1), inputs["features"].shape)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), **inputs)["params"]
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, **inputs).sum()))(params)
    norm = lambda t: float(sum(jnp.abs(x).sum() for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
    assert norm(grads["adapter"]) > 0
    assert norm(grads["speech_encoder"]) > 0


@pytest.mark.parametrize("stride,mode", [(2, "stride"), (3, "stride"), (3, "mean")])
def test_embed_speech_equals_whole_encoder_output_then_subsampling(stride, mode):
    """embed_speech asks a "stride" adapter's encoder for the kept frames only (its last layer
    skips the rest): values and the gradients of adapter and encoder equal running the whole
    encoder and subsampling its output (float32; tolerance 1e-5 of the largest value, for
    gradients of the largest gradient entry of that part)."""
    base = configs.tiny_slm(adapter_layers=1)
    cfg = dataclasses.replace(base, adapter=dataclasses.replace(base.adapter, stride=stride, subsampling=mode),
                              speech_encoder=dataclasses.replace(base.speech_encoder, num_layers=2))
    model = SLM(cfg)
    rng = np.random.default_rng(4)
    feats, fmask, toks = _batch(rng, [45, 30, 11], [3, 3, 3], 46, 3)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), feats, fmask, toks, toks)["params"]

    def whole(m, f, fm):
        hidden, mask = m.speech_encoder(f, fm)
        return m.adapter(hidden, mask)

    def run(method):
        def f(p):
            out, mask = model.apply({"params": p}, feats, fmask, method=method)
            return (out * jnp.cos(jnp.arange(out.size).reshape(out.shape))).sum(), (out, mask)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (_, (out, mask)), grads = run(SLM.embed_speech)
    (_, (ref, ref_mask)), ref_grads = run(whole)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    assert out.shape == ref.shape == (3, -(-12 // stride), cfg.llm.d_model)
    assert np.abs(np.asarray(out - ref)).max() <= 1e-5 * np.abs(np.asarray(ref)).max()
    for part in ("adapter", "speech_encoder"):
        got, want = (list(map(np.asarray, jax.tree_util.tree_leaves(t[part]))) for t in (grads, ref_grads))
        scale = max(np.abs(r).max() for r in want)
        assert scale > 0
        assert max(np.abs(g - r).max() for g, r in zip(got, want)) <= 1e-5 * scale


def test_kept_frames_only_off_runs_the_whole_encoder():
    """SLMConfig.kept_frames_only=False: the encoder runs over every frame and its output is
    subsampled afterwards: the same embeddings (tolerance 1e-5 of the largest value) and more
    FLOPs in XLA's count than the default, which computes the kept frames only."""
    base = configs.tiny_slm(adapter_layers=1)
    assert base.kept_frames_only
    whole_cfg = dataclasses.replace(base, kept_frames_only=False)
    feats, fmask, toks = _batch(np.random.default_rng(5), [45, 30], [3, 3], 48, 3)
    params = jax.jit(SLM(base).init)(jax.random.PRNGKey(0), feats, fmask, toks, toks)["params"]
    outs, flops = [], []
    for cfg in (base, whole_cfg):
        embed = jax.jit(lambda p, f, m, model=SLM(cfg): model.apply({"params": p}, f, m, method=SLM.embed_speech))
        outs.append(embed(params, feats, fmask))
        cost = embed.lower(params, feats, fmask).compile().cost_analysis()
        flops.append(float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]))
    (out, mask), (ref, ref_mask) = outs
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    assert np.abs(np.asarray(out - ref)).max() <= 1e-5 * np.abs(np.asarray(ref)).max()
    assert flops[1] > flops[0]


def test_whisper_encoder_variant_runs():
    base = configs.tiny_slm()
    enc = WhisperEncoderConfig(num_mel_bins=80, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=64, max_source_positions=64)
    cfg = dataclasses.replace(base, speech_encoder=enc)
    model = SLM(cfg)
    inputs = dummy_inputs(cfg, batch=2, frames=40)
    params = model.init(jax.random.PRNGKey(0), **inputs)["params"]
    out = model.apply({"params": params}, **inputs)
    assert out.shape == (2, 8, cfg.llm.vocab_size) and bool(jnp.all(jnp.isfinite(out)))


def test_config_mismatch_is_a_clear_error():
    cfg = configs.tiny_slm()
    with pytest.raises(ValueError, match="adapter.output_dim"):
        dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, output_dim=48))
    with pytest.raises(ValueError, match="input_dim"):
        Adapter(dataclasses.replace(cfg.adapter)).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16)), jnp.ones((1, 4)))


def test_paper_size_parameter_counts():
    """USM-2B-like Conformer + mT0-XXL shapes + 2-layer adapter, counted abstractly."""
    counts = param_counts(abstract_params(configs.paper_slm()))
    print("\nparameter counts (paper-shaped config):")
    for k, v in counts.items():
        print(f"  {k:>20}: {v:,.4f}" if isinstance(v, float) else f"  {k:>20}: {v:,}")
    assert 1.5e9 < counts["speech_encoder"] < 2.5e9        # USM: 2B
    assert 12.0e9 < counts["llm"] < 14.0e9                  # mT0-XXL: 13B
    assert 0.005 < counts["trainable_fraction"] < 0.02      # adapter ~1% of all parameters
    assert counts["trainable"] == counts["adapter"]


def test_gin_configs_parse_and_match_presets():
    """gin/models/{tiny,paper}.gin are readable configs of the same models as the presets."""
    import gin
    from helpers import REPO
    from slm_jax import gin_utils, train_lib  # noqa: F401  (train_lib registers RunConfig, which the files bind)
    for name, preset in (("tiny", configs.tiny_slm()), ("paper", configs.paper_slm())):
        gin_utils.parse_config([str(REPO / f"gin/models/{name}.gin")])
        model = gin_utils.query("RunConfig.model")
        cfg = model.config
        if name == "paper":  # the gin file computes in bfloat16
            assert cfg.llm.dtype == jnp.bfloat16
            strip = lambda c: dataclasses.replace(c, dtype=jnp.float32)  # noqa: E731
            cfg = dataclasses.replace(cfg, speech_encoder=strip(cfg.speech_encoder), adapter=strip(cfg.adapter),
                                      llm=strip(cfg.llm))
        assert cfg == preset, name
    gin.clear_config()
