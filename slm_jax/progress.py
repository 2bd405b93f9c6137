"""Training/eval progress: a console line with steps/s, loss and ETA, plus metrics a user can
plot: a JSONL log (one JSON object per write) and TensorBoard event files (tf.summary)."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from typing import Mapping

import jax
import numpy as np

log = logging.getLogger("slm_jax")


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def truncate_logs(logdir: str, step: int) -> list[str]:
    """Drop the rows past `step` from every `*_metrics.jsonl` in `logdir` (and a torn last row
    of a killed process), so a run resumed from checkpoint `step` logs each later step once.
    Only process 0 writes. Returns the files it changed."""
    changed = []
    if jax.process_index() != 0:
        return changed
    for path in sorted(glob.glob(os.path.join(logdir, "*_metrics.jsonl"))):
        with open(path, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if line.endswith(b"\n") and isinstance(row, dict) and int(row.get("step", 0)) <= step:
                keep.append(line)
        if keep != lines:
            with open(path + ".tmp", "wb") as f:
                f.writelines(keep)
            os.replace(path + ".tmp", path)
            changed.append(path)
    return changed


class MetricsWriter:
    """Writes scalars to `<logdir>/metrics.jsonl` and TensorBoard events under `<logdir>/tb/<name>`.
    Only process 0 writes."""

    def __init__(self, logdir: str, name: str = "train"):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(logdir, f"{name}_metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(logdir, exist_ok=True)
            import tensorflow as tf
            self._tb = tf.summary.create_file_writer(os.path.join(logdir, "tb", name))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
        import tensorflow as tf
        with self._tb.as_default():
            for k, v in scalars.items():
                tf.summary.scalar(k, v, step=int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """Rate and ETA. The rate is that of the steps since the previous report (so the first
    steps' compilation does not drag the ETA for the whole run); a resumed run starts anew.
    `unit` names what is counted ("step"; the demo's baselines count tasks)."""

    def __init__(self, total_steps: int, start_step: int = 0, desc: str = "train", unit: str = "step"):
        self.total, self.start, self.desc, self.unit = total_steps, start_step, desc, unit
        self.t0 = time.time()
        self._last = (start_step, self.t0)

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        now = time.time()
        last_step, last_t = self._last
        rate = max(step - last_step, 1) / max(now - last_t, 1e-9)
        self._last = (step, now)
        eta = (self.total - step) / rate
        parts = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
        return (f"[{self.desc}] {self.unit} {step}/{self.total} {rate:.2f} {self.unit}s/s elapsed "
                f"{_fmt_duration(now - self.t0)} ETA {_fmt_duration(eta)} {parts}")

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        if jax.process_index() == 0:
            msg = self.line(step, metrics)
            log.info(msg)
            print(msg, flush=True)
