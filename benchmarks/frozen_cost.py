"""What freezing buys (slm_jax only): adapter-only training vs full fine-tuning of the same SLM.

Same model, batch and optimizer (AdamW, clipping 1.0); only `Trainer(trainable_patterns=...)`
differs: ("adapter/.*",) vs (".*",). Per mode: step time (median), FLOPs of the compiled step
(XLA cost analysis), optimizer-state leaves and bytes (`state.opt_state`), XLA's compiled memory
analysis of the step (`train_step.lower(...).compile().memory_analysis()`: argument, output,
temp bytes), and the process' peak resident memory (on GPU also the device allocator's peak). Memory is measured for each mode alone in a
fresh subprocess, so peak RSS is that mode's own (the RSS after imports is shown too, the same
for both); step times are taken in this process with the two modes' steps alternating.

In "full" every parameter trains, the speech encoder included (the model stops no gradients;
freezing is only the trainer's `trainable_patterns`).

    python benchmarks/frozen_cost.py [--configs tiny,small] [--threads N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import common  # first: pins threads before jax / torch load
import flax.linen as nn
import jax
import optax

from slm_jax.partitioning import MeshConfig, Partitioner, make_mesh
from slm_jax.task_model import SLMTaskModel
from slm_jax.trainer import Trainer, make_optimizer

MODES = {"adapter": ("adapter/.*",), "full": (".*",)}
MB = 2 ** 20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MB


def build(name: str, mode: str):
    """Trainer for one mode; returns (blocking step fn, measurements without timing)."""
    size = common.SIZES[name]
    model = SLMTaskModel(common.slm_config(size))
    part = Partitioner(make_mesh(MeshConfig(data=1, model=1), devices=jax.devices()[:1]))
    tx = make_optimizer("adamw", schedule=optax.constant_schedule(1e-4), weight_decay=0.0, clip_norm=1.0)
    trainer = Trainer(model.loss_fn, tx, part, model.abstract_params(), trainable_patterns=MODES[mode])
    train, frozen = trainer.split(nn.meta.unbox(jax.jit(model.init_boxed)(jax.random.PRNGKey(0))))
    state = trainer.init_state(train)
    batch, rng = part.shard_batch(common.make_batch(size)), jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = trainer.train_step.lower(state, frozen, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    opt_leaves = jax.tree_util.tree_leaves(state.opt_state)
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], frozen, batch, rng)
        jax.block_until_ready(metrics["loss"])

    info = dict(trainable=common.count_params(train), frozen=common.count_params(frozen),
                opt_leaves=len(opt_leaves), opt_mb=sum(x.nbytes for x in opt_leaves) / MB,
                gflop=cost["flops"] / 1e9, arg_mb=mem.argument_size_in_bytes / MB,
                out_mb=mem.output_size_in_bytes / MB, alias_mb=mem.alias_size_in_bytes / MB,
                temp_mb=mem.temp_size_in_bytes / MB, compile_s=compile_s)
    return step, info


def worker(name: str, mode: str, warmup: int) -> dict:
    """Memory of one mode, alone in a fresh process: RSS after imports and peak RSS after
    building, compiling and running the step."""
    start_rss = rss_mb()
    step, info = build(name, mode)
    for _ in range(max(warmup, 1)):
        step()
    stats = jax.devices()[0].memory_stats() or {}     # device allocator (GPU); None on the CPU
    return dict(info, start_rss_mb=start_rss, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                device_peak_mb=stats["peak_bytes_in_use"] / MB if "peak_bytes_in_use" in stats else "n/a")


def main():
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.warmup)))
        return
    names = common.resolve(args)
    common.header("frozen_cost")
    rows = []
    for name in names:
        mem = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--worker", name, mode, "--threads", str(common.THREADS),
                   "--device", common.DEVICE,
                   "--warmup", str(args.warmup)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"worker {name}/{mode} failed:\n{proc.stderr[-3000:]}")
            mem[mode] = json.loads(lines[-1][len("RESULT "):])
        steps = {mode: build(name, mode)[0] for mode in MODES}
        t = common.time_interleaved(steps, args.repeats, args.warmup)
        print(f"[{name}] compile " + ", ".join(f"{m} {r['compile_s']:.1f}s" for m, r in mem.items())
              + f" (excluded); {args.repeats} timed steps each, modes alternating; {common.load_note()}", flush=True)
        for mode, r in mem.items():
            rows.append({"config": name, "trainable": mode, "params train/frozen": f"{r['trainable'] / 1e6:.2f}M/"
                         f"{r['frozen'] / 1e6:.2f}M", "step ms (median)": t[mode].median * 1e3,
                         "min-max ms": f"{t[mode].min * 1e3:.0f}-{t[mode].max * 1e3:.0f}",
                         "GFLOP/step": r["gflop"], "opt leaves": r["opt_leaves"], "opt-state MB": r["opt_mb"],
                         "XLA args MB": r["arg_mb"], "XLA out MB": r["out_mb"], "XLA alias MB": r["alias_mb"],
                         "XLA temp MB": r["temp_mb"], "RSS start MB": r["start_rss_mb"],
                         "peak RSS MB": r["peak_rss_mb"], "device peak MB": r["device_peak_mb"]})
    common.print_table(f"Adapter-only vs full fine-tuning (slm_jax), {common.WHERE}; XLA = "
                       "compiled memory analysis of the train step (alias = donated train state)", rows)


if __name__ == "__main__":
    main()
