"""Train-state checkpoints with orbax: async saves every K steps, keep N, save on exit or
preemption signal, resume from the latest step.

Only `TrainState` (step, trainable params, optimizer state) is written; frozen weights are never
part of a checkpoint. Each checkpoint also stores a JSON "fingerprint" of the run configuration
(model configs, trainable patterns, parameter shapes); restoring into a run whose fingerprint
differs raises `CheckpointError` naming the differing fields instead of failing deep in orbax.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.fingerprint import differences


class TrainCheckpointer:
    """Orbax CheckpointManager for TrainState plus a config fingerprint."""

    def __init__(self, directory: str, fingerprint: Mapping[str, Any], *, save_every: int = 1000,
                 keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.save_every = save_every
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "fingerprint"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True))
        self.preempted = False
        self._old_handlers: dict[int, Any] = {}

    # --- saving
    def maybe_save(self, step: int, state, force: bool = False) -> bool:
        """Save if `step` is a multiple of save_every, or when forced (exit / preemption)."""
        if not force and (step == 0 or step % self.save_every):
            return False
        if self.manager.latest_step() == step:
            return False
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), fingerprint=ocp.args.JsonSave(self.fingerprint)), force=True)
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self.restore_signal_handlers()

    # --- restoring
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state, step: int | None = None):
        """Restore TrainState at `step` (default latest) into `abstract_state`'s shapes/shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        saved = self.manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))
        diffs = differences(saved["fingerprint"], self.fingerprint, "checkpoint", "run")
        if diffs:
            raise CheckpointError(f"{self.directory}/{step}: checkpoint does not match this run's config: "
                                  + "; ".join(diffs[:8]))
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return out["state"]

    # --- preemption
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set `preempted` (to the signal's number); the train loop then saves
        and exits with status 128 + that number."""
        def handler(signum, frame):
            self.preempted = signum
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

