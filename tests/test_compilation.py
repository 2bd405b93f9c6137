"""Jitted steps compile once per input shape: no silent recompilation in the steady state.

With bucketed batches the train step, the eval step and `predict_batch` should compile once per
bucket (padded speech length) and never again: not when the rng, the step counter, the
parameters or the batch values change, not when an equal `DecodeConfig` is rebuilt, and not
when an earlier bucket comes back."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from slm_jax import configs
from slm_jax.compile_stats import count_compilations
from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.task_model import DecodeConfig, SLMTaskModel
from slm_jax.trainer import Trainer

BATCH, TEXT_LEN = 4, 10


def make_batch(frames: int, seed: int) -> dict[str, np.ndarray]:
    """A numpy batch as the data pipeline yields it, speech padded to `frames`."""
    rng = np.random.default_rng(seed)
    n = rng.integers(frames // 2, frames + 1, BATCH)
    fmask = (np.arange(frames)[None] < n[:, None]).astype(np.int32)
    feats = (rng.normal(size=(BATCH, frames, 80)) * fmask[..., None]).astype(np.float32)
    instr = rng.integers(2, 200, (BATCH, TEXT_LEN)).astype(np.int32)
    tgt = rng.integers(2, 200, (BATCH, TEXT_LEN)).astype(np.int32)
    tgt[:, -3:] = 0
    dec_in = np.concatenate([np.zeros((BATCH, 1), np.int32), tgt[:, :-1]], axis=1)
    return dict(features=feats, feature_mask=fmask, instruction_tokens=instr,
                decoder_input_tokens=dec_in, decoder_target_tokens=tgt)


@pytest.fixture(scope="module", autouse=True)
def no_disk_cache():
    """A program loaded from the on-disk cache (tests/conftest.py) is not compiled, and these
    tests count compilations: the cache is off while they run."""
    from jax.experimental.compilation_cache import compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()      # JAX decides once whether the cache is used; decide again
    yield
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def setup():
    model = SLMTaskModel(configs.tiny_slm(adapter_layers=1))
    part = Partitioner(make_mesh(MeshConfig(data=1, model=1), devices=jax.devices()[:1]))
    trainer = Trainer(model.loss_fn, optax.adamw(optax.linear_schedule(1e-3, 0.0, 100)), part,
                      model.abstract_params(), trainable_patterns=("adapter/.*",))
    train, frozen = trainer.split(nn.meta.unbox(model.init_boxed(jax.random.PRNGKey(0))))
    return model, part, trainer, train, frozen


def test_train_step_compiles_once_per_bucket(setup):
    _, part, trainer, train, frozen = setup
    state = trainer.init_state(train)
    seed = iter(range(1000))

    def steps(frames, n):
        nonlocal state
        for _ in range(n):
            rng = jax.random.PRNGKey(next(seed))          # a new key every step
            state, metrics = trainer.train_step(state, frozen, part.shard_batch(make_batch(frames, next(seed))), rng)
        jax.block_until_ready(metrics)

    with count_compilations() as cc:
        steps(64, 3)
        assert cc.count("step") == 1, cc.summary()
        steps(96, 2)                                       # a second bucket: one more
        assert cc.count("step") == 2, cc.summary()
        steps(64, 2)                                       # the first one again: cached
        steps(96, 1)
    assert cc.count("step") == 2 and cc.trace_count("step") == 2, cc.summary()
    assert int(state.step) == 8


def test_eval_step_compiles_once_per_bucket(setup):
    _, part, trainer, train, frozen = setup
    with count_compilations() as cc:
        for frames in (64, 64, 96, 96, 64, 96):
            jax.block_until_ready(trainer.eval_step(train, frozen, part.shard_batch(make_batch(frames, frames))))
    assert cc.count("step") == 2 and cc.trace_count("step") == 2, cc.summary()


def test_predict_batch_compiles_once_per_bucket_and_config(setup):
    model, part, _, train, frozen = setup
    params = {**train, **frozen}
    features_only = lambda b: {k: v for k, v in b.items() if not k.startswith("decoder")}  # noqa: E731

    def predict(frames, seed, cfg):
        tokens, _ = model.predict_batch(params, part.shard_batch(features_only(make_batch(frames, seed))), cfg)
        return np.asarray(tokens)

    greedy = DecodeConfig(method="greedy", max_len=8)
    # predict_batch runs two programs: encode_batch (per bucket) and decode_encoded (per bucket
    # and decoding config)
    with count_compilations() as cc:
        programs = lambda: (cc.count("encode_batch"), cc.count("decode_encoded"))  # noqa: E731
        predict(64, 0, greedy)
        predict(64, 1, greedy)
        predict(64, 2, DecodeConfig(method="greedy", max_len=8))    # equal config, rebuilt: hashed equal
        assert programs() == (1, 1), cc.summary()
        predict(96, 3, greedy)
        assert programs() == (2, 2), cc.summary()
        predict(64, 4, greedy)
        predict(96, 5, dataclasses.replace(greedy))
        assert programs() == (2, 2), cc.summary()
        # another decoding config is another decoding program (static argument), once
        beam = DecodeConfig(method="beam", max_len=8, beam_size=2)
        predict(64, 6, beam)
        predict(64, 7, beam)
    assert programs() == (2, 3), cc.summary()
    assert (cc.trace_count("encode_batch"), cc.trace_count("decode_encoded")) == (2, 3), cc.summary()


def test_counter_sees_recompilation():
    """The counter itself: a changed input dtype is a new program."""
    f = jax.jit(lambda x: x * 2)
    with count_compilations() as cc:
        f(np.ones(3, np.float32))
        f(np.ones(3, np.float32) * 3)
        f(np.ones(3, np.int32))
    assert cc.count("<lambda>") == 2 and cc.seconds("<lambda>") > 0
    assert "<lambda> x2" in cc.summary()


_CACHE_PROBE = """
import sys
from jax import monitoring
hits = []
monitoring.register_event_listener(lambda e, **kw: hits.append(e) if e == "/jax/compilation_cache/cache_hits" else None)
import jax, jax.numpy as jnp
from slm_jax.gin_utils import enable_compilation_cache
print("DIR", enable_compilation_cache())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print("VALUE", float(f(jnp.arange(12.0).reshape(3, 4) / 10)))
print("HITS", len(hits))
"""


def test_runs_keep_compiled_programs_on_disk(tmp_path):
    """enable_compilation_cache (called by every run): a second process compiling the same
    program loads it from SLM_JAX_COMPILATION_CACHE; `off` turns the cache off."""
    import os
    import subprocess
    import sys

    def probe(value):
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
        env.update(SLM_JAX_COMPILATION_CACHE=value, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True,
                             check=True).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ")[0] in ("DIR", "VALUE", "HITS"))

    cache = str(tmp_path / "xla")
    first, second = probe(cache), probe(cache)
    assert first["DIR"] == second["DIR"] == cache and os.listdir(cache)
    # the second process loads its programs (the jitted one and the eager ops') from the first's
    assert first["HITS"] == "0" and int(second["HITS"]) >= 1 and first["VALUE"] == second["VALUE"]
    off = probe("off")
    assert off["DIR"] == "None" and off["HITS"] == "0"
