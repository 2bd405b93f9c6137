"""Two processes on localhost (jax.distributed, CPU gloo collectives) train a tiny SLM with the
data split across processes, checkpoint, and restore; the loss equals a single-process run."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from helpers import FEATURE_LENGTHS, REPO, TINY_GIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir, n_proc, devices_per_proc, steps, tmp_path):
    gin_file = tmp_path / "task.gin"
    gin_file.write_text("import register_fixed\n")
    args = [sys.executable, "-m", "slm_jax.main", f"--gin_file={TINY_GIN}", f"--gin_file={gin_file}",
            f"--gin.RunConfig.run_dir='{run_dir}'", "--gin.TrainConfig.train_task='test_fixed_asr'",
            f"--gin.TrainConfig.feature_lengths={FEATURE_LENGTHS}", "--gin.TrainConfig.batch_size=8",
            f"--gin.RunConfig.train_steps={steps}", "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.shuffle=False",
            "--gin.RunConfig.save_every=2", "--gin.RunConfig.async_save=False"]
    port = _free_port()
    procs = []
    for i in range(n_proc):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}/tests:{REPO}",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_proc}", TF_CPP_MIN_LOG_LEVEL="3")
        if n_proc > 1:
            env.update(SLM_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", SLM_NUM_PROCESSES=str(n_proc),
                       SLM_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _losses(run_dir):
    with open(os.path.join(run_dir, "train_metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_two_processes_match_one(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _launch(single, 1, 4, 4, tmp_path)
    _launch(multi, 2, 2, 2, tmp_path)                 # first 2 steps, checkpoint at step 2
    outs = _launch(multi, 2, 2, 4, tmp_path)          # restore from step 2 in both processes, go on
    assert "resumed from step 2" in outs[0] and "resumed from step 2" in outs[1]
    a, b = _losses(single), _losses(multi)
    assert sorted(b) == [1, 2, 3, 4]
    # same global batches (each process reads its own shard); float32 reduction order differs
    np.testing.assert_allclose([b[s] for s in range(1, 5)], [a[s] for s in range(1, 5)], rtol=1e-5)
