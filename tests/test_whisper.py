"""Whisper encoder: parity with transformers' WhisperModel encoder through our importer (both
WhisperModel and WhisperForConditionalGeneration layouts), padding invariance on inputs shorter
than the 30 s window, logical axes, length and import errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import flax.linen as nn
import ml_dtypes
from safetensors.numpy import load_file, save_file
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperModel

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.checkpoints.hf_whisper import load_hf_whisper_encoder
from slm_jax.models import layers
from slm_jax.models.whisper import WhisperEncoder, WhisperEncoderConfig
from slm_jax.partitioning import LOGICAL_AXES, check_logical_axes

PARITY_TOL = 1e-4      # max abs diff vs PyTorch (float32, "highest" matmuls)
INVARIANCE_TOL = 1e-5  # same model, same sample, different batch padding / neighbours
MEL, MAX_POS = 16, 30  # input window: 2 * MAX_POS = 60 frames


def _hf_config():
    return WhisperConfig(
        vocab_size=64, num_mel_bins=MEL, d_model=32, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=64, max_source_positions=MAX_POS,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_target_positions=16,
        pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
        suppress_tokens=None, begin_suppress_tokens=None,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _perturb(model):
    """Random offsets on every weight (LayerNorm biases, the position table... all non-trivial)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random WhisperModel saved with save_pretrained (keys `encoder.*` / `decoder.*`)."""
    torch.manual_seed(0)
    model = _perturb(WhisperModel(_hf_config()).eval())
    path = tmp_path_factory.mktemp("whisper")
    model.save_pretrained(path, safe_serialization=True)
    return path, model


@pytest.fixture(scope="module")
def loaded(hf_dir):
    return load_hf_whisper_encoder(str(hf_dir[0]))


def _apply(cfg, params, x, mask=None):
    return jax.jit(lambda p, x, m: WhisperEncoder(cfg).apply({"params": p}, x, m))(params, x, mask)


def _padded_batch(lengths, t, seed=0, pad_value=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(lengths), t, MEL)).astype(np.float32)
    mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    x[~mask] = pad_value
    return x, mask


# ----------------------------------------------------------------------------- parity


def test_parity_with_transformers_whisper_encoder(hf_dir, loaded):
    _, model = hf_dir
    cfg, params = loaded
    assert (cfg.num_mel_bins, cfg.d_model, cfg.encoder_layers, cfg.encoder_attention_heads,
            cfg.encoder_ffn_dim, cfg.max_source_positions) == (MEL, 32, 2, 4, 64, MAX_POS)
    # The checkpoint's (perturbed) position table replaces the sinusoid initialisation.
    np.testing.assert_array_equal(params["embed_positions"],
                                  model.encoder.embed_positions.weight.detach().numpy())

    x, _ = _padded_batch((2 * MAX_POS,) * 2, 2 * MAX_POS, seed=1)
    with torch.no_grad():
        ref = model.encoder(torch.from_numpy(x).transpose(1, 2)).last_hidden_state.numpy()
    out, out_mask = _apply(cfg, params, x)
    out = np.asarray(out)
    assert out.shape == ref.shape == (2, MAX_POS, 32)
    assert np.asarray(out_mask).all()
    diff = np.abs(out - ref).max()
    print(f"Whisper parity (mask=None): max abs diff {diff:.2e} (|ref| max {np.abs(ref).max():.2f})")
    assert diff <= PARITY_TOL

    # An all-valid mask takes the masked code path and must give the same numbers.
    out_m, out_mask_m = _apply(cfg, params, x, np.ones(x.shape[:2], bool))
    diff_m = np.abs(np.asarray(out_m) - ref).max()
    print(f"Whisper parity (all-valid mask): max abs diff {diff_m:.2e}")
    assert diff_m <= PARITY_TOL
    assert np.asarray(out_mask_m).all()


def test_operand_dot_is_a_bfloat16_product_accumulated_in_float32():
    """layers.operand_dot: operands rounded to bfloat16, products summed in float32: equal to
    numpy on the rounded operands (float64 sums) up to float32 summation order (1e-5 relative)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 300)).astype(np.float32), rng.standard_normal((300, 48)).astype(np.float32)
    dot = layers.operand_dot(jnp.bfloat16)
    out = np.asarray(jax.jit(lambda a, b: dot(a, b, (((1,), (0,)), ((), ()))))(a, b))
    assert out.dtype == np.float32
    rounded = lambda x: np.asarray(x.astype(ml_dtypes.bfloat16), np.float64)  # noqa: E731
    ref = rounded(a) @ rounded(b)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.abs(out - a.astype(np.float64) @ b).max() > 1e-3   # the rounding is real
    assert layers.operand_dot(None) is None


def test_bfloat16_where_fast_reads_the_cpu_flags(tmp_path):
    """On the CPU backend: bfloat16 with AVX512-BF16 or AMX-BF16 in the CPU flags, else None."""
    assert jax.default_backend() == "cpu"
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert layers.bfloat16_where_fast(str(info)) == "bfloat16"
    info.write_text("flags\t: fpu avx2 amx_bf16 amx_tile\n")
    assert layers.bfloat16_where_fast(str(info)) == "bfloat16"
    info.write_text("flags\t: fpu avx2 avx512f avx512_bf16x\n")
    assert layers.bfloat16_where_fast(str(info)) is None
    assert layers.bfloat16_where_fast(str(tmp_path / "missing")) is None


def test_bfloat16_matmuls_stay_near_transformers(hf_dir, loaded):
    """WhisperEncoderConfig.matmul_dtype = bfloat16 (projections and MLP): against PyTorch's
    float32 encoder the outputs differ by at most 2% of their largest value (bfloat16 keeps 8
    significant bits: 0.4% per operand); float32 stays within PARITY_TOL."""
    _, model = hf_dir
    cfg, params = loaded
    x, _ = _padded_batch((2 * MAX_POS,) * 2, 2 * MAX_POS, seed=3)
    with torch.no_grad():
        ref = model.encoder(torch.from_numpy(x).transpose(1, 2)).last_hidden_state.numpy()
    low = np.asarray(_apply(dataclasses.replace(cfg, matmul_dtype="bfloat16"), params, x)[0])
    full = np.asarray(_apply(dataclasses.replace(cfg, matmul_dtype="float32"), params, x)[0])
    assert np.abs(full - ref).max() <= PARITY_TOL
    assert 1e-4 < np.abs(low - ref).max() <= 0.02 * np.abs(ref).max()


def test_import_from_conditional_generation_layout(tmp_path):
    """WhisperForConditionalGeneration keys are `model.encoder.*`; decoder + LM head ignored."""
    torch.manual_seed(1)
    model = _perturb(WhisperForConditionalGeneration(_hf_config()).eval())
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert any(k.startswith("model.encoder.") for k in load_file(str(tmp_path / "model.safetensors")))
    cfg, params = load_hf_whisper_encoder(str(tmp_path))
    x, _ = _padded_batch((2 * MAX_POS,), 2 * MAX_POS, seed=2)
    with torch.no_grad():
        ref = model.model.encoder(torch.from_numpy(x).transpose(1, 2)).last_hidden_state.numpy()
    diff = np.abs(np.asarray(_apply(cfg, params, x)[0]) - ref).max()
    print(f"Whisper parity (ForConditionalGeneration): max abs diff {diff:.2e}")
    assert diff <= PARITY_TOL


# ----------------------------------------------------------------------------- padding


def test_short_padded_batch_matches_unpadded_and_is_invariant(loaded):
    cfg, params = loaded
    lengths = (37, 24, 9)                       # odd and even, all shorter than the 60-frame window
    x, mask = _padded_batch(lengths, 40, seed=3)
    out, out_mask = map(np.asarray, _apply(cfg, params, x, mask))
    assert out.shape == (3, 20, 32)
    want_len = [(n + 1) // 2 for n in lengths]
    np.testing.assert_array_equal(out_mask.sum(1), want_len)
    np.testing.assert_array_equal(out_mask, np.arange(20)[None] < np.asarray(want_len)[:, None])
    assert np.all(out[~out_mask] == 0.0)

    for i, n in enumerate(lengths):
        # The same audio alone, unpadded, mask=None (plain transformers semantics, shorter window).
        alone, _ = _apply(cfg, params, x[i:i + 1, :n])
        d = np.abs(np.asarray(alone)[0] - out[i, :want_len[i]]).max()
        assert d <= INVARIANCE_TOL, (n, d)

    # More padding, non-zero padding values and different neighbours: valid frames unchanged.
    x2, mask2 = _padded_batch(lengths, 58, seed=3, pad_value=7.0)
    x2[:, :40][mask] = x[mask]
    x2[1] = np.random.default_rng(9).standard_normal(x2[1].shape) * mask2[1][:, None]
    x2[1][~mask2[1]] = -3.0
    out2, out_mask2 = map(np.asarray, _apply(cfg, params, x2, mask2))
    np.testing.assert_array_equal(out_mask2[:, :20], out_mask)
    assert not out_mask2[:, 20:].any()
    for i in (0, 2):
        d = np.abs(out2[i, :want_len[i]] - out[i, :want_len[i]]).max()
        assert d <= INVARIANCE_TOL, (i, d)
    assert np.abs(out2[1, :want_len[1]] - out[1, :want_len[1]]).max() > 1e-2   # neighbour did change


@pytest.mark.parametrize("stride,with_mask", [(2, True), (3, True), (4, False)])
def test_output_stride_is_the_strided_full_output(loaded, stride, with_mask):
    """output_stride=s (the last layer's queries and MLP only at kept frames) == output[:, ::s]."""
    cfg, params = loaded
    x, mask = _padded_batch((37, 24, 9), 40, seed=5, pad_value=1.5)
    mask = mask if with_mask else None
    full, full_mask = map(np.asarray, _apply(cfg, params, x, mask))
    run = jax.jit(lambda p, x, m: WhisperEncoder(cfg).apply({"params": p}, x, m, output_stride=stride))
    out, out_mask = map(np.asarray, run(params, x, mask))
    assert out.shape == (3, -(-20 // stride), cfg.d_model)
    np.testing.assert_array_equal(out_mask, full_mask[:, ::stride])
    assert np.abs(out - full[:, ::stride]).max() <= INVARIANCE_TOL
    with pytest.raises(ValueError, match="output_stride"):
        WhisperEncoder(cfg).apply({"params": params}, x, mask, output_stride=0)


def test_without_mask_padding_is_attended(loaded):
    """Sanity check that the mask matters: mask=None attends over the padding (as HF does)."""
    cfg, params = loaded
    x, mask = _padded_batch((24,), 40, seed=4)
    masked = np.asarray(_apply(cfg, params, x, mask)[0])[0, :12]
    unmasked = np.asarray(_apply(cfg, params, x)[0])[0, :12]
    assert np.abs(masked - unmasked).max() > 1e-2


@pytest.mark.parametrize("stride", [1, 2])
def test_silence_frames_equal_the_utterance_followed_by_silence(loaded, stride):
    """silence_frames=S: each row's output == the same utterance alone, followed by S frames at
    its log-mel floor (max - 2) and encoded without a mask, cut back to the utterance's frames;
    shapes and masks are those of S=0, rows are independent of their neighbours, and S is cut
    where the window ends."""
    cfg, params = loaded
    lengths, S = (37, 24, 9), 6
    x, mask = _padded_batch(lengths, 40, seed=7, pad_value=2.5)
    quiet = dataclasses.replace(cfg, silence_frames=S)
    run = jax.jit(lambda p, x, m, c=quiet: WhisperEncoder(c).apply({"params": p}, x, m, output_stride=stride))
    out, out_mask = map(np.asarray, run(params, x, mask))
    plain, plain_mask = map(np.asarray, jax.jit(lambda p, x, m: WhisperEncoder(cfg).apply(
        {"params": p}, x, m, output_stride=stride))(params, x, mask))
    assert out.shape == plain.shape and np.array_equal(out_mask, plain_mask)
    assert np.all(out[~out_mask] == 0.0)
    for i, n in enumerate(lengths):
        row = np.concatenate([x[i, :n], np.full((S, MEL), x[i, :n].max() - 2.0, np.float32)])
        alone = np.asarray(_apply(cfg, params, row[None])[0])[0, ::stride]
        k = out_mask[i].sum()
        d = np.abs(alone[:k] - out[i, :k]).max()
        assert d <= INVARIANCE_TOL, (n, d)
        assert np.abs(out[i, :k] - plain[i, :k]).max() > 1e-2   # the silence changed the states
    # the last frames of a full window get no silence: the same as S=0
    full, full_mask = _padded_batch((2 * MAX_POS,), 2 * MAX_POS, seed=8)
    np.testing.assert_allclose(np.asarray(run(params, full, full_mask)[0]),
                               np.asarray(_apply(cfg, params, full, full_mask)[0])[:, ::stride], atol=INVARIANCE_TOL)
    with pytest.raises(ValueError, match="silence_frames"):
        dataclasses.replace(cfg, silence_frames=-1)


# ----------------------------------------------------------------------------- structure and errors


def test_params_logical_axes_and_init():
    cfg = WhisperEncoderConfig(num_mel_bins=MEL, d_model=32, encoder_layers=1, encoder_attention_heads=4,
                               encoder_ffn_dim=64, max_source_positions=MAX_POS)
    x = jnp.zeros((1, 10, MEL))
    boxed = WhisperEncoder(cfg).init(jax.random.PRNGKey(0), x)["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    specs = nn.get_partition_spec(boxed)
    check_logical_axes(specs)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
        assert all(n is None or n in LOGICAL_AXES for n in leaf.names)
    assert specs["conv1"]["kernel"] == jax.sharding.PartitionSpec("conv_width", "mel", "embed")
    assert specs["layers_0"]["self_attn"]["query"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads", "kv")
    assert "bias" not in boxed["layers_0"]["self_attn"]["key"]
    pos = np.asarray(nn.meta.unbox(boxed)["embed_positions"])
    # Sinusoid table: row 0 is sin(0)=0 then cos(0)=1.
    np.testing.assert_allclose(pos[0], np.r_[np.zeros(16), np.ones(16)], atol=1e-7)
    out, out_mask = WhisperEncoder(cfg).apply({"params": nn.meta.unbox(boxed)}, x)
    assert out.shape == (1, 5, 32) and out_mask.shape == (1, 5)


def test_too_long_input_raises(loaded):
    cfg, params = loaded
    x = np.zeros((1, 2 * MAX_POS + 1, MEL), np.float32)     # ceil(61 / 2) = 31 > 30
    with pytest.raises(ValueError, match=r"61 frames.*31 output frames.*max_source_positions=30"):
        WhisperEncoder(cfg).apply({"params": params}, x)
    with pytest.raises(ValueError, match="mel bins"):
        WhisperEncoder(cfg).apply({"params": params}, np.zeros((1, 10, MEL + 1), np.float32))


def _rewrite(src, dst, edit):
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_bad_checkpoints_name_the_key(hf_dir, tmp_path):
    path, _ = hf_dir
    key = "encoder.layers.1.fc2.weight"
    missing = _rewrite(path, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{key}'"):
        load_hf_whisper_encoder(str(missing))

    key2 = "encoder.layers.0.self_attn.q_proj.weight"
    def bad_shape(t):
        t[key2] = t[key2][:, :-1].copy()
    shaped = _rewrite(path, tmp_path / "shape", bad_shape)
    with pytest.raises(CheckpointError, match=rf"'{key2}' has shape \(32, 31\), expected \(32, 32\)"):
        load_hf_whisper_encoder(str(shaped))

    extra_key = "encoder.layers.0.self_attn.k_proj.bias"     # Whisper has none: must not be dropped
    extra = _rewrite(path, tmp_path / "extra", lambda t: t.__setitem__(extra_key, np.zeros(32, np.float32)))
    with pytest.raises(CheckpointError, match=extra_key):
        load_hf_whisper_encoder(str(extra))

    bad_cfg = _rewrite(path, tmp_path / "cfg", lambda t: None)
    c = json.loads((bad_cfg / "config.json").read_text())
    c["activation_function"] = "relu"
    (bad_cfg / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="activation_function"):
        load_hf_whisper_encoder(str(bad_cfg))
