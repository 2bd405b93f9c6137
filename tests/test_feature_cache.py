"""Frozen-encoder feature cache: training from cached encoder outputs is exact (loss, adapter
gradients, decoding, a train run's loss curve), stale caches are refused naming the file, and
cached_batches is deterministic, resumable and shardable like get_batches."""

import dataclasses
import itertools
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import REPO, FEATURE_LENGTHS, TINY_GIN, register_fixed_task, tiny_run
from slm_jax import configs, feature_cache, train_lib
from slm_jax.cached_features import StaleCacheError, build_cache, cached_batches, weights_id
from slm_jax.checkpoints.params_io import load_foundation, save_params
from slm_jax.data import get_batches
from slm_jax.models.slm import SLM
from slm_jax.task_model import DecodeConfig, SLMTaskModel
from slm_jax.trainer import split_trainable

CONFIG = configs.tiny_slm()


def encoder_fingerprint(config=CONFIG, speech_encoder_checkpoint=None, seed=0):
    """What training a run of this model, encoder checkpoint and seed checks a cache against."""
    run = train_lib.RunConfig(run_dir="unused", model=SLMTaskModel(config),
                              speech_encoder_checkpoint=speech_encoder_checkpoint, seed=seed)
    return train_lib.cache_fingerprint(run)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache of the fixed task's train split, built from an encoder checkpoint file holding
    the encoder part of the SLM params (init seed 0)."""
    tmp = tmp_path_factory.mktemp("cache")
    model = SLMTaskModel(CONFIG)
    params = nn.meta.unbox(jax.jit(model.init_boxed)(jax.random.PRNGKey(0)))
    ckpt = str(tmp / "encoder.msgpack")
    save_params(ckpt, params["speech_encoder"])
    enc = load_foundation(ckpt, "speech_encoder", nn.meta.unbox(model.abstract_params())["speech_encoder"])
    for a, b in zip(jax.tree_util.tree_leaves(enc), jax.tree_util.tree_leaves(params["speech_encoder"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    manifest = build_cache(str(tmp / "c"), register_fixed_task(), "train", feature_lengths=FEATURE_LENGTHS,
                           config=CONFIG, encoder_params=enc, weights=weights_id(ckpt), batch_size=3,
                           examples_per_shard=3, verbose=False)   # a padded, cut last batch; 2 shards
    return dict(dir=str(tmp / "c"), ckpt=ckpt, params=params, manifest=manifest)


def _cached(cache, config=CONFIG, speech_encoder_checkpoint="<the cache's>", cache_dir=None, **kw):
    """cached_batches of the fixture's cache (or `cache_dir`) for a run of `config` with that
    encoder checkpoint (default: the one the cache was built from)."""
    if speech_encoder_checkpoint == "<the cache's>":
        speech_encoder_checkpoint = cache["ckpt"]
    kw = dict(dict(feature_lengths=FEATURE_LENGTHS, batch_size=8, shuffle=False, cache_dir=cache_dir or cache["dir"],
                   encoder_fingerprint=encoder_fingerprint(config, speech_encoder_checkpoint)), **kw)
    return cached_batches(register_fixed_task(), "train", **kw)


def test_manifest_describes_the_cache(cache):
    m = cache["manifest"]
    assert m["count"] == 4 and [s["count"] for s in m["shards"]] == [3, 1]
    # 64 frames -> conv2d 4x -> 16 -> adapter stride 2 -> 8; valid lengths 36, 52, 28, 44 frames -> 5, 7, 4, 6
    assert (m["encoded_length"], m["dim"], m["dtype"]) == (8, 32, "float32")
    assert m["encoded_bytes"] == (5 + 7 + 4 + 6) * 32 * 4      # no padding stored
    with open(os.path.join(cache["dir"], register_fixed_task(), "train", "manifest.json")) as f:
        assert json.load(f) == m


def test_cached_loss_gradients_and_decoding_equal_raw(cache):
    model = SLMTaskModel(CONFIG)
    raw = next(get_batches(register_fixed_task(), "train", feature_lengths=FEATURE_LENGTHS, batch_size=8,
                           shuffle=False))
    cached = next(_cached(cache))
    assert "features" not in cached
    for k in ("instruction_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"):
        assert np.array_equal(cached[k], raw[k]), k
    expect, mask = jax.jit(lambda p, f, m: SLM(CONFIG).apply({"params": p}, f, m, method=SLM.speech_encoder_outputs))(
        cache["params"], raw["features"], raw["feature_mask"])
    assert np.array_equal(cached["encoded_mask"], np.asarray(mask).astype(np.int32))
    # the cache ran the encoder in batches of 3, this reference in one batch of 8: programs of
    # other shapes may order float32 sums differently (seen: 1.1e-6 relative on an AVX-512 CPU)
    np.testing.assert_allclose(cached["encoded_speech"], np.asarray(expect), rtol=1e-5, atol=1e-6)

    trainable, frozen = split_trainable(cache["params"], ["adapter/.*"])

    @jax.jit
    def loss_and_grads(t, batch):
        def f(t):
            sums = model.loss_fn({**frozen, **t}, batch, jax.random.PRNGKey(0), deterministic=False)
            return sums["loss_sum"] / sums["weight_sum"]
        return jax.value_and_grad(f)(t)

    (l_raw, g_raw), (l_cached, g_cached) = loss_and_grads(trainable, raw), loss_and_grads(trainable, cached)
    np.testing.assert_allclose(float(l_cached), float(l_raw), rtol=1e-5)
    flat_raw, flat_cached = jax.tree_util.tree_leaves(g_raw), jax.tree_util.tree_leaves(g_cached)
    assert len(flat_raw) == len(flat_cached) > 0
    for a, b in zip(flat_cached, flat_raw):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)

    decode = DecodeConfig(max_len=6)
    tokens_raw, scores_raw = model.predict_batch(cache["params"], raw, decode)
    tokens_cached, scores_cached = model.predict_batch(cache["params"], cached, decode)
    assert np.array_equal(np.asarray(tokens_cached), np.asarray(tokens_raw))
    np.testing.assert_allclose(np.asarray(scores_cached), np.asarray(scores_raw), rtol=1e-5)


def test_resume_shards_and_epochs(cache):
    first = list(itertools.islice(_cached(cache, batch_size=2, shuffle=True, seed=5), 6))
    resumed = list(itertools.islice(_cached(cache, batch_size=2, shuffle=True, seed=5, start_batch=4), 2))
    for a, b in zip(first[4:], resumed):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # every epoch (2 batches of 2) is a permutation of the 4 examples
    for e in range(3):
        rows = np.concatenate([first[2 * e]["decoder_target_tokens"], first[2 * e + 1]["decoder_target_tokens"]])
        assert len({r.tobytes() for r in rows}) == 4
    # two hosts together read the one-host global batch
    hosts = [next(_cached(cache, batch_size=4, shuffle=True, seed=5, shard_index=i, num_shards=2)) for i in (0, 1)]
    whole = next(_cached(cache, batch_size=4, shuffle=True, seed=5))
    for k in whole:
        assert np.array_equal(np.concatenate([hosts[0][k], hosts[1][k]]), whole[k])
    # finite epochs: the remainder is kept or dropped
    sizes = lambda **kw: [b["encoded_speech"].shape[0] for b in _cached(cache, batch_size=3, num_epochs=1, **kw)]  # noqa: E731
    assert sizes(drop_remainder=False) == [3, 1] and sizes() == [3]


def test_stale_cache_is_refused_naming_the_file(cache, tmp_path):
    manifest = os.path.join(cache["dir"], register_fixed_task(), "train", "manifest.json")
    enc = CONFIG.speech_encoder
    other_encoder = dataclasses.replace(CONFIG, speech_encoder=dataclasses.replace(enc, conv_kernel_size=5))
    with pytest.raises(StaleCacheError, match=f"(?s){re.escape(manifest)}.*speech_encoder.conv_kernel_size"):
        _cached(cache, config=other_encoder)
    other_stride = dataclasses.replace(CONFIG, adapter=dataclasses.replace(CONFIG.adapter, stride=4))
    with pytest.raises(StaleCacheError, match=f"(?s){re.escape(manifest)}.*adapter_input.stride"):
        _cached(cache, config=other_stride)
    with pytest.raises(StaleCacheError, match=f"(?s){re.escape(manifest)}.*feature_lengths.targets"):
        _cached(cache, feature_lengths={**FEATURE_LENGTHS, "targets": 16})
    # other encoder weights: another checkpoint file, or a random init
    other = jax.tree_util.tree_map(lambda x: np.asarray(x) + 1e-3, cache["params"]["speech_encoder"])
    save_params(str(tmp_path / "other.msgpack"), other)
    with pytest.raises(StaleCacheError, match=f"(?s){re.escape(manifest)}.*speech_encoder_checkpoint_sha256"):
        _cached(cache, speech_encoder_checkpoint=str(tmp_path / "other.msgpack"))
    with pytest.raises(StaleCacheError, match=f"(?s){re.escape(manifest)}.*init_seed"):
        _cached(cache, speech_encoder_checkpoint=None)
    with pytest.raises(FileNotFoundError, match="validation/manifest.json"):
        cached_batches(register_fixed_task(), "validation", feature_lengths=FEATURE_LENGTHS, cache_dir=cache["dir"],
                       encoder_fingerprint=encoder_fingerprint())


def test_encoder_dropout_is_refused(tmp_path):
    cfg = dataclasses.replace(CONFIG, speech_encoder=dataclasses.replace(CONFIG.speech_encoder, dropout_rate=0.1))
    with pytest.raises(ValueError, match="dropout_rate=0.1"):
        build_cache(str(tmp_path), register_fixed_task(), feature_lengths=FEATURE_LENGTHS, config=cfg,
                    encoder_params={}, weights=weights_id(None))


# ----------------------------------------------------------------------------- a training run's cache

RUN_BINDINGS = ("RunConfig.train_steps=4", "TrainConfig.log_every=1", "TrainConfig.shuffle=False",
                "make_schedule.learning_rate=1e-2", "make_schedule.warmup_steps=1")


def _train(run_dir, *bindings):
    tiny_run(run_dir, *RUN_BINDINGS, *bindings)
    return train_lib.train(train_lib.RunConfig(), train_lib.TrainConfig())


def _losses(run_dir):
    with open(os.path.join(run_dir, "train_metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f)]


def test_train_run_from_cache_has_the_raw_loss_curve(tmp_path):
    """Built by the entry point (slm_jax.feature_cache) from the run's own gin config (random-init
    encoder, RunConfig.seed), then trained with TrainConfig.feature_cache_dir set; unshuffled, the
    batches are get_batches'."""
    use_cache = f"TrainConfig.feature_cache_dir='{tmp_path / 'cache'}'"
    task = register_fixed_task()
    manifest = feature_cache.main([f"--gin_file={TINY_GIN}", f"--gin.RunConfig.run_dir='{tmp_path / 'cached'}'",
                                   f"--gin.TrainConfig.train_task='{task}'",
                                   f"--gin.TrainConfig.feature_lengths={FEATURE_LENGTHS}",
                                   "--gin.TrainConfig.batch_size=8", f"--gin.{use_cache}"])
    assert manifest["count"] == 4 and manifest["fingerprint"]["weights"] == {"init_seed": 0}
    _train(tmp_path / "cached", use_cache)
    _train(tmp_path / "raw")
    raw, cached = _losses(tmp_path / "raw"), _losses(tmp_path / "cached")
    assert len(raw) == 4 and raw[-1] < raw[0]
    np.testing.assert_allclose(cached, raw, rtol=1e-5)


def test_mixture_cache_holds_every_example_of_each_task_once(cache, tmp_path):
    """A mixture's cache is one full epoch of each of its tasks in turn (not seqio's sampled
    one-epoch mixture stream, which stops when the first task runs out), and the manifest counts
    them per task; length-bucketed batches are read back at the longest bucket's length."""
    import seqio
    first, second = register_fixed_task(), register_fixed_task("test_fixed_asr_second")
    mixture = "test_fixed_mixture"
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, [(first, 1.0), (second, 3.0)])
    import gin
    # one-row batches cut to 48 or 64 frames (6 or 8 encoded); valid frames 36, 52, 28, 44: the
    # last batch of each task is a short one
    gin.parse_config("get_batches.speech_buckets = [48]")
    try:
        build = lambda d, **kw: build_cache(d, mixture, "train", feature_lengths=FEATURE_LENGTHS, config=CONFIG,  # noqa: E731
                                            encoder_params=cache["params"]["speech_encoder"],
                                            weights=weights_id(cache["ckpt"]), batch_size=1, verbose=False, **kw)
        manifest = build(str(tmp_path))
        unshared = build(str(tmp_path / "unshared"), share_bytes=0)   # no frames kept: every example encoded
    finally:
        gin.clear_config()
    assert manifest["count"] == 8 and manifest["tasks"] == {first: 4, second: 4}
    # the two tasks share their audio: each utterance went through the encoder once
    assert manifest["build"]["encoded_utterances"] == 4 and unshared["build"]["encoded_utterances"] == 8
    assert manifest["frames"] == unshared["frames"]
    fp = encoder_fingerprint(CONFIG, cache["ckpt"])
    one, other = (next(cached_batches(mixture, "train", feature_lengths=FEATURE_LENGTHS, batch_size=8, shuffle=False,
                                      cache_dir=d, encoder_fingerprint=fp))
                  for d in (str(tmp_path), str(tmp_path / "unshared")))
    assert all(np.array_equal(one[k], other[k]) for k in one)
    assert manifest["encoded_length"] == 8          # the longest bucket, whichever batch came last
    got = next(cached_batches(mixture, "train", feature_lengths=FEATURE_LENGTHS, batch_size=8, shuffle=False,
                              cache_dir=str(tmp_path), encoder_fingerprint=fp))
    raw = [next(get_batches(t, "train", feature_lengths=FEATURE_LENGTHS, batch_size=4, shuffle=False))
           for t in (first, second)]
    rows = lambda b: sorted(map(tuple, np.concatenate([b["instruction_tokens"], b["decoder_target_tokens"]], 1).tolist()))  # noqa: E731
    # bucketing reorders within a task: the same examples, each once
    assert rows(got) == sorted(rows(raw[0]) + rows(raw[1]))
    assert got["encoded_speech"].shape[1] == 8


def test_cache_order_is_set_by_the_read_batch_not_the_encoder_batch(cache, tmp_path):
    """With length buckets bound, get_batches groups the examples it reads by length bucket, so
    the batch the examples are read in fixes the cache's order (and which example each training key
    draws); the encoder's batch is a speed knob and leaves the cache unchanged."""
    import gin
    gin.parse_config("get_batches.speech_buckets = [48]")
    try:
        build = lambda d, **kw: build_cache(str(tmp_path / d), register_fixed_task(), "train",  # noqa: E731
                                            feature_lengths=FEATURE_LENGTHS, config=CONFIG,
                                            encoder_params=cache["params"]["speech_encoder"],
                                            weights=weights_id(cache["ckpt"]), verbose=False, **kw)
        by_one, by_three = build("e1", batch_size=1, read_batch_size=4), build("e3", batch_size=3, read_batch_size=4)
        read_by_one = build("r1", batch_size=1)
    finally:
        gin.clear_config()
    # valid frames 36, 52, 28, 44 -> 5, 7, 4, 6 encoded; read 4 at a time, 52 waits for its
    # bucket (64) to fill and comes last; read 1 at a time, every example is its own batch
    assert by_one["frames"] == by_three["frames"] == [5, 4, 6, 7]
    assert read_by_one["frames"] == [5, 7, 4, 6]   # the read batch does set the order
    assert (by_one["build"]["encoded_utterances"], by_three["build"]["encoded_utterances"]) == (4, 4)
    fp = encoder_fingerprint(CONFIG, cache["ckpt"])
    one, three = (next(cached_batches(register_fixed_task(), "train", feature_lengths=FEATURE_LENGTHS, batch_size=4,
                                      shuffle=True, seed=3, cache_dir=str(tmp_path / d), encoder_fingerprint=fp))
                  for d in ("e1", "e3"))
    for k in one:
        np.testing.assert_allclose(one[k], three[k], atol=1e-5, err_msg=k)


def test_length_bucketed_batches_pad_less_and_keep_loss_order_and_shards(cache, tmp_path):
    """speech_buckets: each window's examples sorted by length and padded to the smallest bucket
    that holds them; every example still read once per epoch, the loss unchanged by the padding,
    resumable, and the same global batches (and padding) on every host."""
    assert cache["manifest"]["frames"] == [5, 7, 4, 6]
    bucketed = lambda **kw: _cached(cache, batch_size=2, speech_buckets=(5, 6), bucket_window=2, **kw)  # noqa: E731
    got = list(bucketed(num_epochs=1))
    # unshuffled: keys by length 2 (4 frames), 0 (5) | 3 (6), 1 (7): buckets 5, then the cache's longest (8)
    assert [b["encoded_speech"].shape[1] for b in got] == [5, 8]
    assert [b["encoded_mask"].sum(1).tolist() for b in got] == [[4, 5], [6, 7]]
    full = next(_cached(cache, batch_size=4))        # unbucketed: keys 0..3 in order, padded to 8
    for b, keys in zip(got, ([2, 0], [3, 1])):
        for row, k in enumerate(keys):
            n = full["encoded_mask"][k].sum()
            np.testing.assert_array_equal(b["encoded_speech"][row, :n], full["encoded_speech"][k, :n])
            assert np.array_equal(b["decoder_target_tokens"][row], full["decoder_target_tokens"][k])
    # the padding does not change the loss: batch [2, 0] at 5 frames vs the same rows at 8
    model, padded = SLMTaskModel(CONFIG), {k: v[[2, 0]] for k, v in full.items()}
    short = model.loss_fn(cache["params"], got[0], jax.random.PRNGKey(0), deterministic=True)
    long = model.loss_fn(cache["params"], padded, jax.random.PRNGKey(0), deterministic=True)
    np.testing.assert_allclose(float(short["loss_sum"]), float(long["loss_sum"]), rtol=1e-5)
    assert float(short["weight_sum"]) == float(long["weight_sum"]) > 0

    stream = list(itertools.islice(bucketed(shuffle=True, seed=3), 8))
    for e in range(4):   # a window is an epoch here: each holds every example once
        rows = np.concatenate([stream[2 * e]["decoder_target_tokens"], stream[2 * e + 1]["decoder_target_tokens"]])
        assert len({r.tobytes() for r in rows}) == 4
    for a, b in zip(stream[5:], itertools.islice(bucketed(shuffle=True, seed=3, start_batch=5), 3)):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    hosts = [list(itertools.islice(bucketed(shuffle=True, seed=3, shard_index=i, num_shards=2), 8)) for i in (0, 1)]
    for whole, h0, h1 in zip(stream, *hosts):
        for k in whole:
            assert np.array_equal(np.concatenate([h0[k], h1[k]]), whole[k]), k

    # a cache written before the manifest listed lengths: they are read from the records instead,
    # and the bucketed batches are the same
    old = os.path.join(tmp_path, register_fixed_task(), "train")
    shutil.copytree(os.path.join(cache["dir"], register_fixed_task(), "train"), old)
    manifest = {k: v for k, v in cache["manifest"].items() if k != "frames"}
    with open(os.path.join(old, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    from_records = list(bucketed(num_epochs=1, cache_dir=str(tmp_path)))
    assert [b["encoded_mask"].sum(1).tolist() for b in from_records] == [[4, 5], [6, 7]]
    for a, b in zip(from_records, got, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_entry_point_parses_the_runs_own_gin_file():
    """`python -m slm_jax.feature_cache` reads the same gin files as the training run: importing
    it alone registers everything a run file binds (EvalConfig included), in a fresh process."""
    import subprocess
    import sys
    code = ("from slm_jax import feature_cache, gin_utils; "
            "gin_utils.parse_config(['gin/runs/demo_slm.gin'], []); print('parsed')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "parsed" in proc.stdout, proc.stderr[-2000:]
