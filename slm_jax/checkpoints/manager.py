"""Train-state checkpoints with orbax: async saves every K steps, keep N, save on exit or
preemption signal, resume from the latest step.

Only `TrainState` (step, trainable params, optimizer state) is written; frozen weights are never
part of a checkpoint. Each checkpoint also stores a JSON "fingerprint" of the run configuration
(model configs, trainable patterns, parameter shapes); restoring into a run whose fingerprint
differs raises `CheckpointError` naming the differing fields instead of failing deep in orbax.

Resuming takes the newest *intact* step (`restore_latest`): a step that cannot be read back
(array files truncated or overwritten, state/_METADATA deleted, the fingerprint emptied, an
empty step folder) is reported by path and reason, moved aside to `<step>.damaged` in the same
directory (never deleted), and the step before it is tried; only when no step is intact does
the error stop the run (then nothing is moved).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from slm_jax.checkpoints.hf_common import CheckpointError
from slm_jax.fingerprint import differences

log = logging.getLogger(__name__)


class DamagedCheckpointError(CheckpointError):
    """A checkpoint step that cannot be read back (as opposed to one of another config)."""


def _short(e: BaseException, limit: int = 300) -> str:
    """An exception as one short line (orbax / TensorStore messages run to pages)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def missing_files(step_dir: str) -> str | None:
    """Why a step folder lacks what a restore reads (state metadata, fingerprint), or None."""
    if not os.path.isdir(step_dir) or not os.listdir(step_dir):
        return "the step folder is empty"
    for rel in ("state/_METADATA", "fingerprint/metadata"):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) == 0:
            return f"{rel} is empty"
    return None


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
    def save_due(self, step: int) -> bool:
        """Whether `maybe_save(step, ...)` would save (without forcing)."""
        return step > 0 and step % self.save_every == 0 and self.manager.latest_step() != step

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

    def read_fingerprint(self, step: int) -> dict:
        """The fingerprint stored with `step`; DamagedCheckpointError naming the path if unreadable."""
        where = os.path.join(self.directory, str(step))
        why = missing_files(where)
        if why is None:
            try:
                saved = self.manager.restore(step, args=ocp.args.Composite(fingerprint=ocp.args.JsonRestore()))
                return saved["fingerprint"]
            except Exception as e:  # noqa: BLE001  (orbax raises anything from KeyError to JSON errors)
                why = _short(e)
        raise DamagedCheckpointError(f"{where}: checkpoint cannot be restored ({why})")

    def restore(self, abstract_state, step: int | None = None):
        """Restore TrainState at `step` (default latest) into `abstract_state`'s shapes/shardings.
        A checkpoint of another config raises CheckpointError naming the differing fields; one
        that cannot be read raises DamagedCheckpointError naming its path and the reason."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        diffs = differences(self.read_fingerprint(step), self.fingerprint, "checkpoint", "run")
        if diffs:
            raise CheckpointError(f"{self.directory}/{step}: checkpoint does not match this run's config: "
                                  + "; ".join(diffs[:8]))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001
            raise DamagedCheckpointError(f"{self.directory}/{step}: checkpoint cannot be restored ({_short(e)})") from e
        return out["state"]

    def restore_latest(self, abstract_state):
        """The newest intact checkpoint's TrainState, or None when there is no checkpoint. Steps
        that cannot be read are reported and moved aside (`move_aside`) once an older step
        restores; when none does, DamagedCheckpointError lists every step and reason (nothing
        moved).
        A checkpoint of another config is an error at once (a config change, not damage)."""
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(abstract_state, step)
            except DamagedCheckpointError as e:
                damaged.append((step, str(e)))
                print(f"[checkpoint] {e}; trying the step before it", flush=True)
                continue
            for bad, why in damaged:
                self.move_aside(bad, why)
            if damaged:
                print(f"[checkpoint] restored step {step}, the newest intact checkpoint", flush=True)
            return state
        if damaged:
            raise DamagedCheckpointError(
                f"{self.directory}: no intact checkpoint to resume from:\n" + "\n".join(f"  {e}" for _, e in damaged)
                + "\nMove these step folders aside (or delete them) to start this run afresh.")
        return None

    def move_aside(self, step: int, why: str) -> str:
        """Rename step folder `step` to `<step>.damaged` (`.damaged.N` if taken): orbax no longer
        lists it, nothing is deleted. Returns the new path."""
        src = os.path.join(self.directory, str(step))
        dst, n = src + ".damaged", 1
        if jax.process_index() == 0:
            while os.path.exists(dst):
                dst, n = f"{src}.damaged.{n}", n + 1
            os.rename(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
        self.manager.reload()
        msg = f"[checkpoint] moved damaged step {step} aside to {dst}"
        log.warning("%s (%s)", msg, why)
        print(msg, flush=True)
        return dst

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

