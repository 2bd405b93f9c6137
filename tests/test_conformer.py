"""Conformer encoder: parity with transformers' Wav2Vec2BertModel through our importer, padding
invariance (w2v-BERT layout and the USM conv2d front end), conv2d output lengths, import errors."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import flax.linen as nn
from safetensors.numpy import load_file, save_file
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.checkpoints.hf_w2v_bert import load_hf_w2v_bert
from slm_jax.models import conformer as conformer_lib
from slm_jax.models.conformer import Conformer, ConformerConfig, relative_key_bias
from slm_jax.partitioning import axis_rules, check_logical_axes

PARITY_TOL = 1e-4      # max abs diff vs PyTorch on valid frames (float32, "highest" matmuls)
INVARIANCE_TOL = 1e-5  # same model, same sample, different batch padding / neighbours
LENGTHS = (20, 13, 7)  # > left_max_position_embeddings, so distance clipping is exercised


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Wav2Vec2BertModel saved with save_pretrained (all weights perturbed, so
    LayerNorm biases, attention biases and the distance table are all non-trivial)."""
    torch.manual_seed(0)
    cfg = Wav2Vec2BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        feature_projection_input_dim=16, conv_depthwise_kernel_size=5,
        left_max_position_embeddings=8, right_max_position_embeddings=4,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)  # -> masked_spec_embed exists
    model = Wav2Vec2BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("w2v_bert")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def _padded_batch(lengths, t, channels, seed=0, pad_value=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(lengths), t, channels)).astype(np.float32)
    mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    x[~mask] = pad_value
    return x, mask


def _apply(cfg, params, x, mask):
    return jax.jit(lambda p, x, m: Conformer(cfg).apply({"params": p}, x, m))(params, x, mask)


# ----------------------------------------------------------------------------- w2v-BERT parity


def test_parity_with_transformers_wav2vec2bert(hf_dir):
    path, model = hf_dir
    cfg, params = load_hf_w2v_bert(str(path))
    assert (cfg.input_dim, cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (16, 32, 2, 4)
    assert (cfg.subsampling, cfg.position_embeddings_type, cfg.conv_kernel_size) == ("none", "relative_key", 5)
    assert (cfg.left_max_position_embeddings, cfg.right_max_position_embeddings) == (8, 4)

    x, mask = _padded_batch(LENGTHS, max(LENGTHS), 16)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
    out, out_mask = _apply(cfg, params, x, mask)
    out, out_mask = np.asarray(out), np.asarray(out_mask)
    np.testing.assert_array_equal(out_mask, mask)
    diff = np.abs(out - ref)[mask].max()
    print(f"w2v-BERT parity: max abs diff on valid frames {diff:.2e} (|ref| max {np.abs(ref).max():.2f})")
    assert diff <= PARITY_TOL
    assert np.all(out[~mask] == 0.0)  # our padded frames are zeroed


def test_padding_and_neighbours_do_not_change_valid_outputs(hf_dir):
    cfg, params = load_hf_w2v_bert(str(hf_dir[0]))
    x, mask = _padded_batch(LENGTHS, max(LENGTHS), 16)
    base = np.asarray(_apply(cfg, params, x, mask)[0])

    # 7 more padded frames, padding filled with garbage instead of zeros.
    x2, mask2 = _padded_batch(LENGTHS, max(LENGTHS) + 7, 16, pad_value=0.0)
    x2[:, :max(LENGTHS)] = x
    x2[~mask2] = 3.0
    more = np.asarray(_apply(cfg, params, x2, mask2)[0])
    # A different neighbour in the batch.
    x3 = x.copy()
    x3[0] = np.random.default_rng(1).standard_normal(x3[0].shape)
    neigh = np.asarray(_apply(cfg, params, x3, mask)[0])
    # Each sample alone, unpadded.
    for b, n in enumerate(LENGTHS):
        alone = np.asarray(_apply(cfg, params, x[b:b + 1, :n], mask[b:b + 1, :n])[0])[0]
        assert np.abs(alone - base[b, :n]).max() <= INVARIANCE_TOL
        assert np.abs(more[b, :n] - base[b, :n]).max() <= INVARIANCE_TOL
        if b > 0:
            assert np.abs(neigh[b, :n] - base[b, :n]).max() <= INVARIANCE_TOL
    assert np.abs(neigh[0] - base[0]).max() > 1e-2  # the changed sample did change


@pytest.mark.parametrize("stride", [2, 3, 4])
def test_output_stride_is_the_strided_full_output(hf_dir, stride):
    """output_stride=s (the last block computes only the kept frames) == full output[:, ::s],
    for T not a multiple of s, padded rows and a zero-layer stack; stride < 1 is refused."""
    cfg, params = load_hf_w2v_bert(str(hf_dir[0]))
    x, mask = _padded_batch(LENGTHS, max(LENGTHS) + 3, 16, pad_value=2.0)
    full, full_mask = map(np.asarray, _apply(cfg, params, x, mask))
    run = jax.jit(lambda p, x, m: Conformer(cfg).apply({"params": p}, x, m, output_stride=stride))
    out, out_mask = map(np.asarray, run(params, x, mask))
    assert out.shape == (len(LENGTHS), -(-x.shape[1] // stride), cfg.hidden_size)
    np.testing.assert_array_equal(out_mask, full_mask[:, ::stride])
    assert np.abs(out - full[:, ::stride]).max() <= INVARIANCE_TOL
    assert np.all(out[~out_mask] == 0.0)
    cfg0 = dataclasses.replace(cfg, num_layers=0)
    p0 = {k: v for k, v in params.items() if not k.startswith("layers_")}
    zero = jax.jit(lambda p, x, m: Conformer(cfg0).apply({"params": p}, x, m, output_stride=stride))(p0, x, mask)
    zfull = np.asarray(_apply(cfg0, p0, x, mask)[0])
    assert np.abs(np.asarray(zero[0]) - zfull[:, ::stride]).max() == 0.0
    with pytest.raises(ValueError, match="output_stride"):
        Conformer(cfg).apply({"params": params}, x, mask, output_stride=0)


@pytest.mark.parametrize("group", [1, 2])
def test_attention_in_example_groups_equals_whole_batch(hf_dir, monkeypatch, group):
    """On CPU the self-attention runs groups of examples one after another when their logits are
    large; a chunk size that forces groups of 1 and 2 (3 examples: a short last group) gives the
    whole-batch numbers."""
    cfg, params = load_hf_w2v_bert(str(hf_dir[0]))
    x, mask = _padded_batch(LENGTHS, max(LENGTHS), 16)
    t = max(LENGTHS)
    run = lambda: np.asarray(jax.jit(lambda p, x, m: Conformer(cfg).apply({"params": p}, x, m))(params, x, mask)[0])  # noqa: E731
    monkeypatch.setattr(conformer_lib, "ATTENTION_CHUNK_BYTES", 1 << 40)
    whole = run()
    monkeypatch.setattr(conformer_lib, "ATTENTION_CHUNK_BYTES", group * cfg.num_heads * t * t * 4)
    calls = []
    original = conformer_lib.SelfAttention._attend
    monkeypatch.setattr(conformer_lib.SelfAttention, "_attend",
                        lambda self, q, *a: calls.append(q.shape[0]) or original(self, q, *a))
    grouped = run()
    sizes = [min(group, len(LENGTHS) - i) for i in range(0, len(LENGTHS), group)]   # [1, 1, 1] or [2, 1]
    assert calls == sizes * cfg.num_layers
    assert np.abs(grouped - whole).max() <= INVARIANCE_TOL


# ----------------------------------------------------------------------------- USM conv2d front end

CONV_CFG = ConformerConfig(input_dim=20, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                           conv_kernel_size=5, subsampling="conv2d", subsampling_channels=8,
                           position_embeddings_type="relative_key", left_max_position_embeddings=4,
                           right_max_position_embeddings=2)


def _torch_conv_out_shape(t, f):
    """Time/feature sizes after the two 3x3 stride-2 padding-1 convs, computed by torch itself."""
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    with torch.no_grad():
        y = conv(conv(torch.zeros(1, 1, t, f)))
    return tuple(y.shape[2:])


@pytest.fixture(scope="module")
def conv_params():
    x = jnp.zeros((1, 16, CONV_CFG.input_dim))
    boxed = jax.jit(Conformer(CONV_CFG).init)(jax.random.PRNGKey(0), x, jnp.ones((1, 16), bool))["params"]
    # Perturb every param (LayerNorm/bias inits are constants) so no path is trivially zero.
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32),
                                    nn.meta.unbox(boxed))
    return boxed, params


def test_conv2d_logical_axes(conv_params):
    boxed, _ = conv_params
    specs = nn.get_partition_spec(boxed)
    check_logical_axes(specs)
    for fsdp in (False, True):  # every spec maps onto the mesh (no duplicate names)
        jax.tree_util.tree_map(lambda s: nn.logical_to_mesh_axes(s, axis_rules(fsdp)), specs,
                               is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert nn.meta.unbox(boxed)["subsampling"]["projection"]["kernel"].shape == (
        8 * _torch_conv_out_shape(16, 20)[1], 32)


def test_conv2d_lengths_masks_and_padding_invariance(conv_params):
    _, params = conv_params
    lengths, t = (29, 17, 8, 4, 1), 29
    x, mask = _padded_batch(lengths, t, CONV_CFG.input_dim, pad_value=5.0)  # garbage padding
    out, out_mask = _apply(CONV_CFG, params, x, mask)
    out, out_mask = np.asarray(out), np.asarray(out_mask)
    t_out, f_out = _torch_conv_out_shape(t, CONV_CFG.input_dim)
    assert out.shape == (len(lengths), t_out, 32) and t_out == 8
    want_lengths = [_torch_conv_out_shape(n, CONV_CFG.input_dim)[0] for n in lengths]
    assert want_lengths == [8, 5, 2, 1, 1]
    np.testing.assert_array_equal(out_mask.sum(-1), want_lengths)
    np.testing.assert_array_equal(out_mask, np.arange(t_out)[None] < np.asarray(want_lengths)[:, None])
    assert [CONV_CFG.output_length(n) for n in lengths] == want_lengths
    assert np.all(out[~out_mask] == 0.0)
    for b, n in enumerate(lengths):
        alone, alone_mask = _apply(CONV_CFG, params, x[b:b + 1, :n], mask[b:b + 1, :n])
        assert alone.shape[1] == want_lengths[b] and bool(np.all(alone_mask))
        assert np.abs(np.asarray(alone)[0] - out[b, :want_lengths[b]]).max() <= INVARIANCE_TOL
    # Extra padding and a changed neighbour leave sample 1 alone.
    x2, mask2 = _padded_batch(lengths, t + 11, CONV_CFG.input_dim, pad_value=-4.0)
    x2[:, :t][mask] = x[mask]
    x2[0] = 7.0 * np.random.default_rng(3).standard_normal(x2[0].shape)
    out2 = np.asarray(_apply(CONV_CFG, params, x2, mask2)[0])
    assert np.abs(out2[1:, :t_out] - out[1:]).max() <= INVARIANCE_TOL
    assert np.abs(out2[0, :8] - out[0]).max() > 1e-2


def test_usm_2b_shaped_config():
    cfg = ConformerConfig(input_dim=128, hidden_size=1536, num_layers=32, num_heads=16, intermediate_size=6144,
                          subsampling="conv2d")
    shapes = nn.meta.unbox(jax.eval_shape(Conformer(cfg).init, jax.random.PRNGKey(0),
                                          jnp.zeros((1, 64, 128)), jnp.ones((1, 64), bool))["params"])
    n = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert len([k for k in shapes if k.startswith("layers_")]) == 32
    assert shapes["layers_31"]["self_attn"]["query"]["kernel"].shape == (1536, 16, 96)
    assert 1.5e9 < n < 2.5e9


# ----------------------------------------------------------------------------- import errors


def _copy(src, dst, *, drop=None, replace=None, config=None):
    shutil.copytree(src, dst)
    if drop or replace:
        (f,) = list(dst.glob("*.safetensors"))
        tensors = load_file(f)
        if drop:
            del tensors[drop]
        if replace:
            tensors.update(replace)
        save_file(tensors, f, metadata={"format": "pt"})
    if config:
        c = json.loads((dst / "config.json").read_text())
        c.update(config)
        (dst / "config.json").write_text(json.dumps(c))
    return str(dst)


def test_missing_tensor_is_named(hf_dir, tmp_path):
    key = "encoder.layers.1.conv_module.depthwise_conv.weight"
    with pytest.raises(CheckpointError, match=f"missing tensor '{key}'"):
        load_hf_w2v_bert(_copy(hf_dir[0], tmp_path / "c", drop=key))


def test_misshaped_tensor_is_named(hf_dir, tmp_path):
    key = "encoder.layers.0.self_attn.linear_q.weight"
    bad = {key: np.zeros((32, 31), np.float32)}
    with pytest.raises(CheckpointError, match=rf"'{key}' has shape \(32, 31\)"):
        load_hf_w2v_bert(_copy(hf_dir[0], tmp_path / "c", replace=bad))


def test_unused_tensor_is_named(hf_dir, tmp_path):
    key = "encoder.layers.2.ffn1.output_dense.weight"
    with pytest.raises(CheckpointError, match=key):
        load_hf_w2v_bert(_copy(hf_dir[0], tmp_path / "c", replace={key: np.zeros((32, 64), np.float32)}))


@pytest.mark.parametrize("field, value", [("add_adapter", True),
                                          ("use_intermediate_ffn_before_adapter", True),
                                          ("position_embeddings_type", "rotary"),
                                          ("hidden_act", "gelu")])
def test_unsupported_config_field_is_named(hf_dir, tmp_path, field, value):
    with pytest.raises(CheckpointError, match=f"config.json: {field}="):
        load_hf_w2v_bert(_copy(hf_dir[0], tmp_path / "c", config={field: value}))


# ----------------------------------------------------------------------------- relative-key bias


@pytest.mark.parametrize("t,left,right", [(1, 4, 2), (2, 4, 2), (3, 4, 2), (5, 4, 2), (7, 2, 6), (40, 8, 3)])
def test_relative_key_bias_values_and_gradient_match_numpy(t, left, right):
    """out[q, k] = per_bucket[q, clip(k - q, -left, right) + left], and its gradient (computed
    by the pad/reshape transpose, not the gather's scatter) is the numpy scatter-add of the
    cotangent into those buckets. Exact up to float32 summation order (tol 1e-5)."""
    rng = np.random.default_rng(t)
    per_bucket = rng.standard_normal((2, 3, t, left + right + 1)).astype(np.float32)
    cot = rng.standard_normal((2, 3, t, t)).astype(np.float32)
    bucket = np.clip(np.arange(t)[None, :] - np.arange(t)[:, None], -left, right) + left   # [q, k]
    want = per_bucket[..., np.arange(t)[:, None], bucket]
    want_grad = np.zeros_like(per_bucket)
    for q in range(t):
        for k in range(t):
            want_grad[..., q, bucket[q, k]] += cot[..., q, k]
    got, vjp = jax.vjp(lambda x: relative_key_bias(x, left, right), jnp.asarray(per_bucket))
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(cot))[0]), want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t,f,cin", [(7, 80, 1), (8, 40, 3), (1, 5, 4)])
def test_conv3x3_stride2_matches_lax_convolution_and_nn_conv_params(t, f, cin):
    """The subsampling's patches-and-matmul convolution against lax.conv_general_dilated
    (values and gradients, float32, tolerance 1e-5), with nn.Conv's parameters."""
    from slm_jax.models.conformer import Conv3x3Stride2, conv3x3_stride2
    rng = np.random.default_rng(t)
    x = jnp.asarray(rng.standard_normal((2, t, f, cin)), jnp.float32)
    ours = Conv3x3Stride2(6)
    params = ours.init(jax.random.PRNGKey(1), x)
    ref = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    ref_params = ref.init(jax.random.PRNGKey(1), x)
    assert jax.tree_util.tree_map(jnp.shape, nn.meta.unbox(params)) == jax.tree_util.tree_map(jnp.shape, ref_params)
    np.testing.assert_array_equal(nn.meta.unbox(params)["params"]["kernel"], ref_params["params"]["kernel"])
    p = {"params": {"kernel": jnp.asarray(rng.standard_normal((3, 3, cin, 6)), jnp.float32),
                    "bias": jnp.asarray(rng.standard_normal(6), jnp.float32)}}
    out = ours.apply(p, x)
    assert out.shape == (2, (t + 1) // 2, (f + 1) // 2, 6)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref.apply(p, x)), rtol=1e-5, atol=1e-5)
    w = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    grad = lambda fn: jax.grad(lambda p, x: jnp.sum(fn(p, x) * w), argnums=(0, 1))(p, x)  # noqa: E731
    got, want = grad(ours.apply), grad(ref.apply)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(conv3x3_stride2(x, p["params"]["kernel"], p["params"]["bias"])),
                               np.asarray(out), rtol=0, atol=0)
