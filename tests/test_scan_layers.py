"""Scanned layer stacks (`scan_layers`) and rematerialisation (`remat_policy`): on the same
weights (unrolled -> stacked by `layers.stack_layers`), scanned T5 / Conformer / Whisper encoder
/ SLM give the unrolled outputs, gradients and decoded tokens. Tolerances: float32 with highest
matmul precision, so only summation order differs: 1e-5 relative on outputs, 1e-4 on gradients."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import configs, decoding
from slm_jax.models import layers, t5
from slm_jax.models.conformer import Conformer
from slm_jax.models.slm import dummy_inputs
from slm_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.task_model import SLMTaskModel

RTOL, GRAD_RTOL = 1e-5, 1e-4


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(a).max())))


def scanned(cfg, **kw):
    return dataclasses.replace(cfg, scan_layers=True, **kw)


T5_CFG = t5.T5Config(vocab_size=64, d_model=32, num_heads=2, d_kv=16, d_ff=48, num_encoder_layers=3,
                     num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=32)
ENC = jax.random.randint(jax.random.PRNGKey(1), (2, 7), 1, 64)
DEC = jax.random.randint(jax.random.PRNGKey(2), (2, 5), 1, 64)


@pytest.fixture(scope="module")
def t5_pair():
    m, sm = t5.T5(T5_CFG), t5.T5(scanned(T5_CFG, remat_policy="full"))
    unrolled = nn.meta.unbox(m.init(jax.random.PRNGKey(0), ENC, DEC)["params"])
    return m, sm, unrolled, layers.stack_layers(unrolled)


def test_stacked_layout_matches_the_scanned_model(t5_pair):
    _, sm, unrolled, stacked = t5_pair
    boxed = jax.eval_shape(sm.init, jax.random.PRNGKey(0), ENC, DEC)["params"]
    assert jax.tree_util.tree_structure(nn.meta.unbox(boxed)) == jax.tree_util.tree_structure(stacked)
    assert boxed["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].names == ("layers", "embed", "mlp")
    assert stacked["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (3, 48, 32)
    back = layers.unstack_layers(stacked)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, back, unrolled))


def test_t5_scanned_with_remat_equals_unrolled(t5_pair):
    m, sm, unrolled, stacked = t5_pair
    close(sm.apply({"params": stacked}, ENC, DEC), m.apply({"params": unrolled}, ENC, DEC))
    loss = lambda mod: lambda p: jnp.sum(jnp.tanh(mod.apply({"params": p}, ENC, DEC)))  # noqa: E731
    g_unrolled = layers.stack_layers(jax.grad(loss(m))(unrolled))
    g_scanned = jax.grad(loss(sm))(stacked)
    jax.tree_util.tree_map(lambda a, b: close(a, b, GRAD_RTOL), g_scanned, g_unrolled)


@pytest.mark.parametrize("beams", [1, 3])
def test_t5_scanned_decoding_equals_unrolled(t5_pair, beams):
    outs = []
    for mod, p in ((t5_pair[0], t5_pair[2]), (t5_pair[1], t5_pair[3])):
        encoded = mod.apply({"params": p}, ENC, method=t5.T5.encode)
        kv = t5.cross_attention_kv(mod, p, encoded)
        cache = t5.init_cache(mod, p, 2, 6, 7, beams=beams)

        def step(tok, cache, slots=None, mod=mod, p=p, encoded=encoded, kv=kv):
            return t5.decode_step(mod, p, cache, encoded, ENC > 0, tok, kv, slots)

        outs.append(decoding.greedy(step, cache, 2, 6) if beams == 1 else
                    decoding.beam_search(step, cache, 2, beams, 6, 1, 0, 0.6))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    close(outs[0][1], outs[1][1])


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_conformer_scanned_equals_unrolled(remat):
    cfg = configs.tiny_slm().speech_encoder
    cfg = dataclasses.replace(cfg, num_layers=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 24, cfg.input_dim))
    mask = jnp.arange(24)[None] < jnp.array([[24], [17]])
    p = nn.meta.unbox(Conformer(cfg).init(jax.random.PRNGKey(1), x, mask)["params"])
    sc = Conformer(scanned(cfg, remat_policy=remat))
    for stride in (1, 2):
        h, m = Conformer(cfg).apply({"params": p}, x, mask, output_stride=stride)
        hs, ms = sc.apply({"params": layers.stack_layers(p)}, x, mask, output_stride=stride)
        close(hs, h)
        np.testing.assert_array_equal(ms, m)


def test_whisper_encoder_scanned_equals_unrolled():
    cfg = WhisperEncoderConfig(num_mel_bins=8, d_model=16, encoder_layers=3, encoder_attention_heads=2,
                               encoder_ffn_dim=32, max_source_positions=16)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 8))
    mask = jnp.arange(20)[None] < jnp.array([[20], [13]])
    p = nn.meta.unbox(WhisperEncoder(cfg).init(jax.random.PRNGKey(1), x, mask)["params"])
    for stride in (1, 4):
        h, m = WhisperEncoder(cfg).apply({"params": p}, x, mask, output_stride=stride)
        hs, ms = WhisperEncoder(scanned(cfg, remat_policy="full")).apply(
            {"params": layers.stack_layers(p)}, x, mask, output_stride=stride)
        close(hs, h)
        np.testing.assert_array_equal(ms, m)


def test_slm_scanned_loss_and_adapter_gradients_equal_unrolled():
    c = configs.tiny_slm(vocab_size=256)
    c = dataclasses.replace(c, speech_encoder=dataclasses.replace(c.speech_encoder, num_layers=2),
                            llm=dataclasses.replace(c.llm, num_encoder_layers=2, num_decoder_layers=2))
    sc = dataclasses.replace(c, speech_encoder=scanned(c.speech_encoder),
                             llm=scanned(c.llm, remat_policy="full"))
    model, smodel = SLMTaskModel(c), SLMTaskModel(sc)
    p = nn.meta.unbox(model.init_boxed(jax.random.PRNGKey(0)))
    sp = layers.stack_layers(p)
    batch = dict(dummy_inputs(c, batch=2, frames=32))
    batch["features"] = jax.random.normal(jax.random.PRNGKey(3), batch["features"].shape)
    batch["decoder_target_tokens"] = jax.random.randint(jax.random.PRNGKey(4), (2, 8), 1, 256)

    def adapter_loss(m, params):
        def f(adapter):
            sums = m.loss_fn({**params, "adapter": adapter}, batch, jax.random.PRNGKey(0), True)
            return sums["loss_sum"]
        return jax.value_and_grad(f)(params["adapter"])

    (l1, g1), (l2, g2) = adapter_loss(model, p), adapter_loss(smodel, sp)
    close(l2, l1)
    jax.tree_util.tree_map(lambda a, b: close(a, b, GRAD_RTOL), g2, g1)


def test_stacked_axis_is_replicated_and_the_rest_sharded():
    c = configs.tiny_slm(vocab_size=256)
    model = SLMTaskModel(dataclasses.replace(c, llm=scanned(c.llm)))
    part = Partitioner(make_mesh(MeshConfig(data=4, model=2), jax.devices()[:8]), fsdp=True)
    sh = part.params_shardings(model.abstract_params())
    assert tuple(sh["llm"]["encoder"]["layers"]["mlp"]["wi_0"]["kernel"].spec) == (None, "data", "model")
    assert tuple(sh["llm"]["decoder"]["layers"]["self_attention"]["out"]["kernel"].spec) == (None, "model", None,
                                                                                             "data")


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy"):
        dataclasses.replace(T5_CFG, remat_policy="sometimes")
