"""Soak check of preemption and resume (not a test; minutes): the tiny config is trained twice
without interruption (compiling, then with the compiled programs from JAX's cache, as every
re-run below gets them), then again in another run directory where the same command is killed with SIGKILL at a random
moment (start-up, restore, a step, an async checkpoint write, a metrics row...) and re-run,
`--cycles` times, and finally let finish. The
interrupted run must end bit-identical to the uninterrupted one: the same exported parameters,
byte for byte, and the same metrics for every step, each logged once.

    .venv/bin/python benchmarks/soak_resume.py                  # 20 cycles (~8 min on 2 cores)
    .venv/bin/python benchmarks/soak_resume.py --cycles 3       # a shorter check

Prints one line per cycle (when it was killed, the newest checkpoint before and after, the last
step it logged) and the times; exits 1 if the runs differ.

The re-runs load their compiled programs from a JAX compilation cache in the work directory
(as a re-run does from ~/.cache/slm_jax/xla), so a cycle is mostly start-up and steps."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_GIN = REPO / "gin" / "models" / "tiny.gin"
FEATURE_LENGTHS = {"speech": 64, "instruction": 12, "targets": 12}


def command(run_dir: Path, work: Path, args) -> list[str]:
    """`python -m slm_jax.main` on the tiny model and the tests' fixed task."""
    task_gin = work / "task.gin"
    task_gin.write_text("import register_fixed\n")
    return [sys.executable, "-m", "slm_jax.main", f"--gin_file={TINY_GIN}", f"--gin_file={task_gin}",
            f"--gin.RunConfig.run_dir='{run_dir}'", "--gin.TrainConfig.train_task='test_fixed_asr'",
            f"--gin.TrainConfig.feature_lengths={FEATURE_LENGTHS}", "--gin.TrainConfig.batch_size=8",
            f"--gin.RunConfig.train_steps={args.steps}", "--gin.TrainConfig.log_every=1",
            f"--gin.RunConfig.save_every={args.save_every}", "--gin.RunConfig.keep=3",
            f"--gin.TrainConfig.export_to='{run_dir / 'params.msgpack'}'"]


def environment(work: Path, args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO / 'tests'}:{REPO}", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["SLM_JAX_COMPILATION_CACHE"] = args.compilation_cache or str(work / "xla_cache")
    return env


class Run:
    """One run of the command in a process group of its own (so SIGKILL reaches every thread
    and child), its output copied to `log`; `first_step` is when its first step was logged
    (seconds after the start), `last_step` the last step it logged, `status` its exit status
    (-9 when killed)."""

    def __init__(self, cmd, env, log: Path, kill_step: int | None = None):
        self.t0, self.first_step, self.last_step, self.log = time.time(), None, None, open(log, "w")
        self.kill_step, self.reached = kill_step, threading.Event()
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True)
        self.reader = threading.Thread(target=self.copy, daemon=True)
        self.reader.start()

    def copy(self):
        for line in self.proc.stdout:
            step = re.match(r"\[train\] step (\d+)/", line)
            if step:
                self.first_step = self.first_step or time.time() - self.t0
                self.last_step = int(step.group(1))
                if self.kill_step is not None and self.last_step >= self.kill_step:
                    self.reached.set()
            self.log.write(line)
        self.log.close()
        self.reached.set()

    def wait(self, kill_at: float | None = None, delay: float = 0.0) -> bool:
        """Wait for the end; or SIGKILL the process group at `kill_at` s after the start, or
        `delay` s after step `kill_step` was logged. True if it was killed."""
        if self.kill_step is not None:
            self.reached.wait()
            time.sleep(delay)
        elif kill_at is not None:
            time.sleep(max(kill_at - (time.time() - self.t0), 0))
        killed = False
        if (kill_at is not None or self.kill_step is not None) and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            killed = True
        self.proc.wait()
        self.reader.join()
        self.seconds, self.status = time.time() - self.t0, self.proc.returncode
        return killed


def finish(cmd, env, log: Path) -> Run:
    run = Run(cmd, env, log)
    run.wait()
    if run.status != 0:
        raise SystemExit(f"run failed (status {run.status}); see {log}:\n{log.read_text()[-3000:]}")
    return run


def newest_step(run_dir: Path) -> int:
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def metrics(run_dir: Path) -> list[dict]:
    """train_metrics.jsonl without the wall-clock field."""
    with open(run_dir / "train_metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def soak(cmd, env, work: Path, run_dir: Path, args, ref: Run) -> list[dict]:
    """Runs until `args.cycles` of them were SIGKILLed (at most 3 x cycles runs). A quarter are
    killed at a moment drawn uniformly from start-up (0.5 s to the reference's first step:
    imports, restore, compilation from the cache); the others after a step drawn uniformly from
    the next 3 x save_every past the newest checkpoint (a third of them moved up to the next
    checkpointed step; the last step at most), 0-100 ms after it was logged: inside a step, a
    metrics row, an async checkpoint write or the export."""
    rng = random.Random(args.seed)
    startup = ref.first_step or ref.seconds / 2
    cycles: list[dict] = []
    while sum(c["killed"] for c in cycles) < args.cycles and len(cycles) < 3 * args.cycles:
        i, before = len(cycles), newest_step(run_dir)
        log = work / f"cycle{i:02d}.log"
        if rng.random() < 0.25:
            at, target = rng.uniform(0.5, startup), None
            run = Run(cmd, env, log)
            killed, when = run.wait(kill_at=at), f"{at:4.1f} s after the start"
        else:
            target = before + rng.randint(1, 3 * args.save_every)
            if rng.random() < 1 / 3:        # right after a checkpointed step: during its async write
                target = (target // args.save_every + 1) * args.save_every
            target = min(args.steps, target)
            delay = rng.uniform(0.0, 0.1)
            run = Run(cmd, env, log, kill_step=target)
            killed, when = run.wait(delay=delay), f"{1000 * delay:3.0f} ms after step {target:4d}"
        text = log.read_text(errors="replace")
        resumed = re.findall(r"resumed from step (\d+)", text)
        moved = re.findall(r"moved damaged step (\d+)", text)
        cycles.append({"killed": killed, "target": target, "resumed_from": int(resumed[0]) if resumed else None,
                       "last_step": run.last_step, "checkpoint": newest_step(run_dir), "moved_aside": moved})
        status = f"killed {when}" if killed else f"ended by itself after {run.seconds:5.1f} s (status {run.status})"
        print(f"cycle {i + 1:2d}: {status}; newest checkpoint before {before:4d}, after "
              f"{cycles[-1]['checkpoint']:4d}; last step logged {run.last_step}"
              + (f"; moved aside {moved}" if moved else ""), flush=True)
        if not killed and run.status != 0:
            raise SystemExit(f"cycle {i + 1} failed by itself (status {run.status}); see {log}")
    return cycles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20, help="kills")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--save_every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
    parser.add_argument("--work_dir", default=None, help="default: a new temporary directory")
    parser.add_argument("--compilation_cache", default=None,
                        help="JAX compilation cache directory (default: one in the work dir; 'off' for none)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="soak_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work, args)
    ref_dir, soak_dir = work / "uninterrupted", work / "interrupted"
    t0 = time.time()
    cold = finish(command(work / "uninterrupted_cold", work, args), env, work / "uninterrupted_cold.log")
    ref = finish(command(ref_dir, work, args), env, work / "uninterrupted.log")    # programs from the cache
    for name, r in (("compiling", cold), ("compiled programs from the cache", ref)):
        print(f"uninterrupted, {name}: {args.steps} steps in {r.seconds:.1f} s (first step logged after "
              f"{r.first_step or 0:.1f} s)", flush=True)
    t1 = time.time()
    cycles = soak(command(soak_dir, work, args), env, work, soak_dir, args, ref)
    last = finish(command(soak_dir, work, args), env, work / "final.log")
    soak_seconds = time.time() - t1
    params = [(d / "params.msgpack").read_bytes() for d in (work / "uninterrupted_cold", ref_dir, soak_dir)]
    same_params = params[0] == params[1] == params[2]
    ref_rows, soak_rows = metrics(ref_dir), metrics(soak_dir)
    same_metrics = metrics(work / "uninterrupted_cold") == ref_rows == soak_rows
    steps = [r["step"] for r in soak_rows]
    kills = sum(c["killed"] for c in cycles)
    in_steps = sum(c["killed"] and c["target"] is not None for c in cycles)
    one_row_per_step = steps == list(range(1, args.steps + 1))
    print(f"\n{kills} kills ({in_steps} after a step, {kills - in_steps} in start-up) in {len(cycles)} cycles, "
          f"then a final run of {last.seconds:.1f} s (from step {cycles[-1]['checkpoint'] if cycles else 0}); "
          f"interrupted run {soak_seconds:.1f} s in all, uninterrupted {ref.seconds:.1f} s; whole check "
          f"{time.time() - t0:.1f} s")
    print(f"exported params bit-identical (both uninterrupted runs, interrupted run): {same_params}; "
          f"metrics of all {len(ref_rows)} steps identical: "
          f"{same_metrics}; one row per step: {one_row_per_step}")
    print(f"work dir: {work}")
    return 0 if same_params and same_metrics and one_row_per_step else 1


if __name__ == "__main__":
    sys.exit(main())
