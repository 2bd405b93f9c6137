"""T5/mT5 model and HF importer: parity with transformers (PyTorch) on tiny random configs,
KV-cache decoding against the teacher-forced pass, bad checkpoints, bf16 compute."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.checkpoints.hf_t5 import load_hf_t5
from slm_jax.models import t5 as t5_lib
from slm_jax.models.t5 import T5, T5Config
from slm_jax.task_model import DecodeConfig, T5TaskModel

PARITY_TOL = 1e-4     # float32 logits, max abs diff vs transformers on valid positions
CACHE_TOL = 1e-5      # cached step logits vs the teacher-forced pass (same JAX model)

TINY = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
ENC_LENGTHS, DEC_LENGTHS = [20, 13, 7], [9, 5, 12]   # padded batch; 20 > max_distance


def _save_reference(kind: str, directory: str) -> torch.nn.Module:
    """Build a tiny random reference model, save it with save_pretrained, return it (eval mode).

    mt5_untied: mT5/mT0 layout - own lm_head, config.json says tie_word_embeddings=false.
    mt5_tied:   MT5 with the head tied to the embedding (no output scaling).
    t5_tied_relu: original T5 - ReLU FFN, tied head, decoder output scaled by d_model**-0.5."""
    torch.manual_seed({"mt5_untied": 0, "mt5_tied": 1, "t5_tied_relu": 2}[kind])
    if kind.startswith("mt5"):
        model = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**TINY)).eval()
    else:
        model = transformers.T5ForConditionalGeneration(
            transformers.T5Config(feed_forward_proj="relu", tie_word_embeddings=True, **TINY)).eval()
    if kind == "mt5_untied":
        model.lm_head.weight = torch.nn.Parameter(torch.randn(TINY["vocab_size"], TINY["d_model"]))
    model.save_pretrained(directory)
    if kind == "mt5_untied":
        _edit_config(directory, tie_word_embeddings=False)
    return model


def _edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def _edit_tensors(directory, fn):
    path = os.path.join(directory, "model.safetensors")
    tensors = dict(load_file(path))
    fn(tensors)
    save_file(tensors, path)


def _padded_batch(seed=0):
    rng = np.random.default_rng(seed)
    v = TINY["vocab_size"]
    enc = np.zeros((len(ENC_LENGTHS), max(ENC_LENGTHS)), np.int32)
    dec = np.zeros((len(DEC_LENGTHS), max(DEC_LENGTHS)), np.int32)
    for b, (le, ld) in enumerate(zip(ENC_LENGTHS, DEC_LENGTHS)):
        enc[b, :le] = rng.integers(2, v, le)
        dec[b, 1:ld] = rng.integers(2, v, ld - 1)      # position 0 = decoder_start_token_id = 0
    enc_mask = (np.arange(enc.shape[1])[None] < np.array(ENC_LENGTHS)[:, None]).astype(np.int32)
    dec_mask = (np.arange(dec.shape[1])[None] < np.array(DEC_LENGTHS)[:, None]).astype(np.int32)
    return enc, enc_mask, dec, dec_mask


def _reference_outputs(model, enc, enc_mask, dec, dec_mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc_mask),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long),
                    decoder_attention_mask=torch.tensor(dec_mask))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (directory, reference torch model), built once per module."""
    out = {}
    for kind in ("mt5_untied", "mt5_tied", "t5_tied_relu"):
        directory = str(tmp_path_factory.mktemp(kind))
        out[kind] = (directory, _save_reference(kind, directory))
    return out


def _max_diff_valid(a, b, mask):
    return float(np.max(np.abs(a - b) * mask[..., None]))


@pytest.mark.parametrize("kind", ["mt5_untied", "mt5_tied", "t5_tied_relu"])
def test_parity_with_transformers_padded_batch(checkpoints, kind):
    directory, reference = checkpoints[kind]
    cfg, params = load_hf_t5(directory)
    assert cfg.tie_word_embeddings == (kind != "mt5_untied")
    assert cfg.scales_decoder_outputs == (kind == "t5_tied_relu")
    assert cfg.is_gated == kind.startswith("mt5")
    enc, enc_mask, dec, dec_mask = _padded_batch()
    ref_encoded, ref_logits = _reference_outputs(reference, enc, enc_mask, dec, dec_mask)

    model = T5(cfg)
    variables = {"params": params}
    encoded = model.apply(variables, enc, enc_mask, method=T5.encode)
    logits = model.apply(variables, encoded, enc_mask, dec, dec_mask, method=T5.decode)
    assert logits.dtype == jnp.float32 and logits.shape == ref_logits.shape
    enc_diff = _max_diff_valid(np.asarray(encoded), ref_encoded, enc_mask)
    logit_diff = _max_diff_valid(np.asarray(logits), ref_logits, dec_mask)
    print(f"{kind}: encoder max abs diff {enc_diff:.2e}, logits max abs diff {logit_diff:.2e}")
    assert enc_diff <= PARITY_TOL
    assert logit_diff <= PARITY_TOL
    assert np.abs(ref_logits).max() > 0.1        # the comparison is not between near-zero arrays

    # __call__ (default masks: encoder tokens > 0, causal only) agrees on valid positions:
    # with right padding the decoder padding mask cannot change valid positions.
    full = model.apply(variables, enc, dec)
    assert _max_diff_valid(np.asarray(full), ref_logits, dec_mask) <= PARITY_TOL


def test_relative_position_bucket_matches_transformers():
    from transformers.models.mt5.modeling_mt5 import MT5Attention
    rel = np.arange(-600, 600)
    for num_buckets, max_distance in [(32, 128), (8, 16), (64, 256)]:
        for bidirectional in (True, False):
            ours = np.asarray(jax.jit(t5_lib.relative_position_bucket, static_argnums=(1, 2, 3))(
                jnp.asarray(rel), bidirectional, num_buckets, max_distance))
            ref = MT5Attention._relative_position_bucket(
                torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets,
                max_distance=max_distance).numpy()
            np.testing.assert_array_equal(ours, ref)


def test_embedding_key_layouts(checkpoints, tmp_path):
    """Encoder/decoder embedding copies instead of `shared.weight` load to the same model;
    copies that disagree are an error naming the key."""
    directory, reference = checkpoints["mt5_untied"]
    _, params = load_hf_t5(directory)
    alt = tmp_path / "alt"
    reference.save_pretrained(alt)
    _edit_config(alt, tie_word_embeddings=False)

    def move_shared(t):
        shared = t.pop("shared.weight")
        t["encoder.embed_tokens.weight"] = shared
        t["decoder.embed_tokens.weight"] = shared.copy()
    _edit_tensors(alt, move_shared)
    _, alt_params = load_hf_t5(str(alt))
    jax.tree_util.tree_map(np.testing.assert_array_equal, alt_params, params)

    def perturb(t):
        t["decoder.embed_tokens.weight"] = t["decoder.embed_tokens.weight"] + 1.0
    _edit_tensors(alt, perturb)
    with pytest.raises(CheckpointError, match="decoder.embed_tokens.weight"):
        load_hf_t5(str(alt))


def test_kv_cache_greedy_matches_teacher_forced(checkpoints):
    cfg, params = load_hf_t5(checkpoints["mt5_untied"][0])
    model = T5(cfg)
    enc, enc_mask, _, _ = _padded_batch(seed=1)
    batch, steps, max_len = enc.shape[0], 8, 11        # cache longer than the decoded sequence
    encoded = model.apply({"params": params}, enc, enc_mask, method=T5.encode)
    cache = t5_lib.init_cache(model, params, batch, max_len, enc.shape[1])
    step = jax.jit(lambda cache, tokens: t5_lib.decode_step(model, params, cache, encoded, enc_mask, tokens))

    tokens = np.full((batch, 1), cfg.decoder_start_token_id, np.int32)
    produced, step_logits = [], []
    for _ in range(steps):
        logits, cache = step(cache, jnp.asarray(tokens))
        assert logits.shape == (batch, cfg.vocab_size) and logits.dtype == jnp.float32
        tokens = np.asarray(jnp.argmax(logits, -1), np.int32)[:, None]
        produced.append(tokens[:, 0])
        step_logits.append(np.asarray(logits))
    produced, step_logits = np.stack(produced, 1), np.stack(step_logits, 1)
    for layer_cache in cache["decoder"].values():
        assert int(layer_cache["self_attention"]["cache_index"]) == steps

    decoder_inputs = np.asarray(t5_lib.shift_right(jnp.asarray(produced), cfg.decoder_start_token_id))
    full = np.asarray(model.apply({"params": params}, encoded, enc_mask, decoder_inputs, method=T5.decode))
    diff = float(np.max(np.abs(full - step_logits)))
    print(f"cached vs teacher-forced logits max abs diff {diff:.2e}")
    assert diff <= CACHE_TOL
    np.testing.assert_array_equal(np.argmax(full, -1), produced)
    assert len(np.unique(produced)) > 1      # a non-degenerate sequence was decoded


def test_precomputed_cross_attention_kv_gives_the_same_step(checkpoints):
    cfg, params = load_hf_t5(checkpoints["mt5_untied"][0])
    model = T5(cfg)
    enc, enc_mask, _, _ = _padded_batch(seed=2)
    encoded = model.apply({"params": params}, enc, enc_mask, method=T5.encode)
    cross_kv = t5_lib.cross_attention_kv(model, params, encoded)
    assert set(cross_kv) == {f"layers_{i}" for i in range(cfg.num_decoder_layers)}
    key, value = cross_kv["layers_0"]   # the KV_LAYOUTS the decoding dots read
    b, length = encoded.shape[:2]
    assert key.shape == (b, cfg.num_heads, cfg.d_kv, length) and value.shape == (b, cfg.num_heads, length, cfg.d_kv)
    step = jax.jit(lambda c, t, kv: t5_lib.decode_step(model, params, c, encoded, enc_mask, t, kv))
    cache_a = cache_b = t5_lib.init_cache(model, params, enc.shape[0], 5, enc.shape[1])
    tokens = jnp.zeros((enc.shape[0], 1), jnp.int32)
    for _ in range(3):
        logits_a, cache_a = step(cache_a, tokens, None)       # keys/values projected in the step
        logits_b, cache_b = step(cache_b, tokens, cross_kv)   # projected once, reused
        # the same math; XLA may fuse the two programs differently (float32 rounding)
        assert float(np.max(np.abs(np.asarray(logits_b) - np.asarray(logits_a)))) <= CACHE_TOL
        tokens = jnp.argmax(logits_a, -1).astype(jnp.int32)[:, None]


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_matches_transformers_generate(checkpoints, beams):
    """Greedy and beam search (the cached loop, beams sharing their example's cross-attention
    keys/values) produce the same tokens as transformers' generate on the same weights. EOS is
    an id outside the vocabulary on both sides, so every sequence runs max_len steps."""
    directory, reference = checkpoints["mt5_untied"]
    cfg, params = load_hf_t5(directory)
    never, max_len, alpha = cfg.vocab_size, 7, 0.6
    model = T5TaskModel(dataclasses.replace(cfg, eos_id=never))
    enc, enc_mask, _, _ = _padded_batch(seed=3)
    dcfg = DecodeConfig(method="greedy" if beams == 1 else "beam", max_len=max_len, beam_size=beams, alpha=alpha)
    ours, _ = model.predict_batch(params, {"encoder_input_tokens": jnp.asarray(enc)}, dcfg)
    with torch.no_grad():
        theirs = reference.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                                    attention_mask=torch.tensor(enc_mask), max_new_tokens=max_len,
                                    do_sample=False, num_beams=beams, eos_token_id=never,
                                    **({"length_penalty": alpha} if beams > 1 else {}))
    theirs = theirs[:, 1:].numpy()          # drop the decoder start token
    assert theirs.shape == (enc.shape[0], max_len)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    assert len(np.unique(theirs)) > 2       # non-degenerate sequences


def test_missing_tensor_is_named(checkpoints, tmp_path):
    directory = str(tmp_path)
    _save_reference("mt5_untied", directory)
    key = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    _edit_tensors(directory, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_hf_t5(directory)


def test_misshaped_tensor_is_named(checkpoints, tmp_path):
    directory = str(tmp_path)
    _save_reference("mt5_untied", directory)
    key = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"

    def reshape(t):
        t[key] = t[key][:-1]                       # [d_ff - 1, d_model]
    _edit_tensors(directory, reshape)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.") + r".*\(47, 32\)"):
        load_hf_t5(directory)


def test_untied_config_without_lm_head_and_unused_tensor(checkpoints, tmp_path):
    directory = str(tmp_path)
    _save_reference("mt5_untied", directory)
    _edit_tensors(directory, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        load_hf_t5(directory)

    _save_reference("mt5_untied", directory)
    _edit_tensors(directory, lambda t: t.update({"encoder.block.7.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"encoder\.block\.7\.extra\.weight"):
        load_hf_t5(directory)


def test_bfloat16_compute_close_to_float32(checkpoints):
    directory, _ = checkpoints["mt5_untied"]
    cfg32, params = load_hf_t5(directory)
    cfg16, params16 = load_hf_t5(directory, dtype=jnp.bfloat16)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params16))   # params stay f32
    enc, enc_mask, dec, dec_mask = _padded_batch()
    ref = np.asarray(T5(cfg32).apply({"params": params}, enc, dec, enc_mask, dec_mask))
    model16 = T5(cfg16)
    got = model16.apply({"params": params}, enc, dec, enc_mask, dec_mask)
    assert got.dtype == jnp.float32
    encoded = model16.apply({"params": params}, enc, enc_mask, method=T5.encode)
    assert encoded.dtype == jnp.bfloat16
    diff = _max_diff_valid(np.asarray(got), ref, dec_mask)
    scale = float(np.abs(ref).max())
    print(f"bf16 vs f32 logits max abs diff {diff:.3f} (max |logit| {scale:.2f})")
    assert diff <= 0.05 * scale
    # the cached step also runs in bf16
    cache = t5_lib.init_cache(model16, params, enc.shape[0], 4, enc.shape[1])
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(cache) if x.ndim)
    logits, _ = t5_lib.decode_step(model16, params, cache, encoded, enc_mask, jnp.zeros((enc.shape[0], 1), jnp.int32))
    assert np.all(np.isfinite(np.asarray(logits)))


def test_from_hf_reads_config_fields():
    cfg = T5Config.from_hf({"model_type": "mt5", "vocab_size": 250112, "d_model": 4096, "d_kv": 64,
                            "d_ff": 10240, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 64,
                            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False,
                            "dropout_rate": 0.1, "eos_token_id": 1, "pad_token_id": 0,
                            "decoder_start_token_id": 0}, dropout_rate=0.0)
    assert (cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (250112, 4096, 64, 64, 10240)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.dropout_rate) == (24, 24, 0.0)
    assert cfg.activation == "gelu_new" and cfg.is_gated and not cfg.tie_word_embeddings
    assert not cfg.scales_decoder_outputs
    t5_cfg = T5Config.from_hf({"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64,
                               "d_ff": 2048, "num_layers": 6, "num_heads": 8})
    assert t5_cfg.tie_word_embeddings and t5_cfg.scales_decoder_outputs and t5_cfg.activation == "relu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(vocab_size=8, d_model=8, num_heads=1, d_kv=8, d_ff=8, num_encoder_layers=1,
                 num_decoder_layers=1, feed_forward_proj="gated-tanh")


def test_every_param_names_known_logical_axes():
    import flax.linen as nn
    from slm_jax.partitioning import LOGICAL_AXES
    cfg = T5Config(vocab_size=16, d_model=8, num_heads=2, d_kv=4, d_ff=12, num_encoder_layers=1,
                   num_decoder_layers=1, feed_forward_proj="relu")
    tokens = jnp.ones((1, 3), jnp.int32)
    boxed = jax.eval_shape(T5(cfg).init, jax.random.PRNGKey(0), tokens, tokens)["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= set(LOGICAL_AXES), leaf.names
        assert leaf.value.dtype == jnp.float32
