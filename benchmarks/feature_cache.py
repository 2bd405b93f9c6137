"""Frozen-encoder feature caching (slm_jax only): the adapter-only train step from audio features
vs from cached encoder outputs (slm_jax.cached_features), and what the cache costs.

Per config (common.SIZES): the same model (`common.slm_config`, random weights), optimizer
(AdamW, clipping 1.0, adapter only) and batch (`common.make_batch`). The cached batch holds that
batch's `SLM.speech_encoder_outputs` (frozen encoder + the adapter's parameter-free
subsampling), exactly what the cache stores, with the same tokens. First both steps must give
the same loss and updated adapter (the script stops otherwise), then their step times are taken
with the two steps alternating.

The one-off cost: `build_cache` over a synthetic seqio task of random features shaped like the
batch (`--build_batches` batches): end-to-end examples/s (data pipeline, one jit compilation,
writing) and the encoder's steady-state examples/s (jitted forward alone, timed); the cached
frames per example (KiB, what grows with the data set) and the files on disk per example
(ArrayRecord adds ~0.3 KiB per record and rounds files to 64 KiB, 128 KiB at least, which
dominates small caches), against the float32 audio features they replace; and the time
`cached_batches` takes to read one shuffled batch (random ArrayRecord reads; in training this
runs on a background thread while the step computes).

    python benchmarks/feature_cache.py [--configs tiny,small] [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import common  # first: pins threads before jax / torch load
import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf

from slm_jax.cached_features import build_cache, cached_batches, fingerprint, weights_id
from slm_jax.models.slm import SLM
from slm_jax.task_model import SLMTaskModel

LOSS_TOL, PARAM_TOL = 1e-5, 1e-5   # relative; float32


def synthetic_examples(s: common.Size, n: int):
    """n random examples shaped like common.make_batch's rows (75-100% of the frames; targets end in EOS = 1)."""
    rng = np.random.default_rng(1)
    for _ in range(n):
        frames = int(rng.integers(int(0.75 * s.frames), s.frames + 1))
        yield {"speech": rng.standard_normal((frames, s.input_dim)).astype(np.float32),
               "instruction": rng.integers(2, s.vocab, s.instr_len // 2 + 1).astype(np.int32),
               "targets": np.append(rng.integers(2, s.vocab, s.target_len // 2), 1).astype(np.int32)}


def register_task(name: str, s: common.Size, n: int) -> str:
    """A seqio task of `synthetic_examples(s, n)`."""
    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_generator(lambda: synthetic_examples(s, n), output_signature={
            "speech": tf.TensorSpec([None, s.input_dim], tf.float32),
            "instruction": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)})

    if name not in seqio.TaskRegistry.names():
        vocab = seqio.PassThroughVocabulary(s.vocab)
        seqio.TaskRegistry.add(
            name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"], num_input_examples={"train": n}),
            preprocessors=[],
            output_features={"speech": seqio.ContinuousFeature(dtype=tf.float32, rank=2),
                             "instruction": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
                             "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)})   # EOS (1) included
    return name


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def step_rows(name: str, args) -> tuple[dict, dict]:
    s = common.SIZES[name]
    config = common.slm_config(s)
    model = SLMTaskModel(config)
    part, trainer = common.adapter_trainer(model)
    params = nn.meta.unbox(jax.jit(model.init_boxed)(jax.random.PRNGKey(0)))
    train, frozen = trainer.split(params)
    raw = common.make_batch(s)
    batches = {"raw features": raw, "cached encoder outputs": common.cached_batch(model, params, raw)}
    rng = jax.random.PRNGKey(0)
    steps, compile_s, flops, first = {}, {}, {}, {}
    for kind, batch in batches.items():
        batch = part.shard_batch(batch)
        state = trainer.init_state(train)
        t0 = time.perf_counter()
        compiled = trainer.train_step.lower(state, frozen, batch, rng).compile()
        compile_s[kind] = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        flops[kind] = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
        state, metrics = compiled(state, frozen, batch, rng)
        first[kind] = (float(metrics["loss"]), jax.tree_util.tree_map(np.asarray, state.params))
        holder = {"state": state}

        def step(compiled=compiled, holder=holder, batch=batch):
            holder["state"], m = compiled(holder["state"], frozen, batch, rng)
            jax.block_until_ready(m["loss"])
        steps[kind] = step

    (l_raw, p_raw), (l_cached, p_cached) = first.values()
    loss_diff = abs(l_cached - l_raw) / abs(l_raw)
    param_diff = max(rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(p_cached), jax.tree_util.tree_leaves(p_raw)))
    if loss_diff > LOSS_TOL or param_diff > PARAM_TOL:
        raise SystemExit(f"[{name}] cached and raw steps differ: loss {l_cached} vs {l_raw}, "
                         f"updated adapter rel. diff {param_diff:.2e}")
    t = common.time_interleaved(steps, args.repeats, args.warmup)
    print(f"[{name}] compile " + ", ".join(f"{k} {v:.1f}s" for k, v in compile_s.items())
          + f" (excluded); {args.repeats} timed steps each, alternating; {common.load_note()}", flush=True)
    raw_ms, cached_ms = (t[k].median * 1e3 for k in batches)
    row = {"config": name, "batch": f"{s.batch} x {s.frames * common.FRAME_SECONDS:g} s",
           "raw step ms": raw_ms, "cached step ms": cached_ms, "speed-up": raw_ms / cached_ms,
           "raw min-max ms": f"{t['raw features'].min * 1e3:.0f}-{t['raw features'].max * 1e3:.0f}",
           "cached min-max ms": f"{t['cached encoder outputs'].min * 1e3:.0f}-"
                                f"{t['cached encoder outputs'].max * 1e3:.0f}",
           "GFLOP/step raw": flops["raw features"] / 1e9, "GFLOP/step cached": flops["cached encoder outputs"] / 1e9,
           "loss rel diff": f"{loss_diff:.1e}", "adapter rel diff": f"{param_diff:.1e}"}
    return row, {"config": config, "params": params, "model": model, "raw": raw}


def build_row(name: str, ctx: dict, args, tmp: str) -> dict:
    s = common.SIZES[name]
    n = s.batch * args.build_batches
    task = register_task(f"bench_feature_cache_{name}_{n}", s, n)
    lengths = {"speech": s.frames, "instruction": s.instr_len, "targets": s.target_len}
    enc_params = ctx["params"]["speech_encoder"]
    t0 = time.perf_counter()
    manifest = build_cache(tmp, task, "train", feature_lengths=lengths, config=ctx["config"], encoder_params=enc_params,
                           weights=weights_id(None, 0), batch_size=s.batch, verbose=False)
    build_s = time.perf_counter() - t0
    directory = os.path.join(tmp, task, "train")
    disk = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    # steady-state encoder throughput: the jitted forward alone, on the benchmark batch
    encode = jax.jit(lambda p, f, m: ctx["model"].module.apply({"params": {"speech_encoder": p}}, f, m,
                                                               method=SLM.speech_encoder_outputs))
    raw = ctx["raw"]
    t = common.time_interleaved({"encode": lambda: jax.block_until_ready(
        encode(enc_params, raw["features"], raw["feature_mask"]))}, args.repeats, args.warmup)["encode"]
    # reading: one shuffled batch at a time, no read-ahead
    it = cached_batches(task, "train", feature_lengths=lengths, batch_size=s.batch, shuffle=True, seed=0,
                        cache_dir=tmp, encoder_fingerprint=fingerprint(ctx["config"], weights_id(None, 0)),
                        prefetch=0)
    next(it)
    reads = []
    for _ in range(max(args.repeats, 5)):
        t1 = time.perf_counter()
        next(it)
        reads.append(time.perf_counter() - t1)
    feat_bytes = sum(ex["speech"].nbytes for ex in synthetic_examples(s, n))   # the float32 audio features replaced
    return {"config": name, "examples": n, "build s (end to end)": build_s,
            "build ex/s (end to end)": n / build_s, "encoder ex/s (steady)": s.batch / t.median,
            "frames x dim (mean)": f"{manifest['encoded_bytes'] / n / (4 * manifest['dim']):.1f} x {manifest['dim']}",
            "cached frames KiB/ex": manifest["encoded_bytes"] / n / 1024, "disk KiB/ex": disk / n / 1024,
            "audio features KiB/ex": feat_bytes / n / 1024,
            "read ms/batch": statistics.median(reads) * 1e3}


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--build_batches", type=int, default=8, help="batches in the cache-build task")
    args = parser.parse_args()
    names = common.resolve(args)
    if args.quick:
        args.build_batches = 2
    common.header("feature_cache")
    step_table, build_table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row, ctx = step_rows(name, args)
            step_table.append(row)
            build_table.append(build_row(name, ctx, args, tmp))
    common.print_table(f"Adapter-only train step from raw audio features vs from cached encoder outputs (slm_jax), "
                       f"{common.WHERE}; same batch, loss and update checked equal first", step_table)
    common.print_table("One-off cache build (build_cache: encoder + adapter subsampling, float32, ArrayRecord) "
                       "and reading (cached_batches, shuffled)", build_table)


if __name__ == "__main__":
    main()
