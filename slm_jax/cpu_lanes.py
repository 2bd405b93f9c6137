"""CPU lanes: independent jobs run side by side, each in its own process on its share of the CPUs.

On a few CPU cores a job rarely keeps every core busy: decoding loops of a small model and jit
compilation run on about one thread, and training a small model gains 1.6-1.9x from a second
thread. Jobs that do not depend on each other then finish sooner side by side, each on its own
CPUs, than one after the other on all of them. Each lane is a fresh process (`python -c`) started
with its CPU affinity already set, so its XLA client sizes its thread pool to its own CPUs.

A lane's function and arguments are pickled (a module-level function is pickled by name), so
nothing of this process's state (gin's config, jax's client) is inherited: pass what the function
needs. Its output goes to this process's stdout / stderr.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

CHILD = "import sys; from slm_jax.cpu_lanes import run_pickled; run_pickled(sys.argv[1])"

Call = tuple[Callable[..., Any], Sequence[Any]]


def share_cpus(n: int, cpus: Sequence[int] | None = None) -> list[set[int]] | None:
    """This process's CPUs (or `cpus`) cut into n nearly equal shares, in order; None with
    fewer CPUs than shares."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if n < 1 or len(cpus) < n:
        return None
    bounds = [len(cpus) * i // n for i in range(n + 1)]
    return [set(cpus[bounds[i]:bounds[i + 1]]) for i in range(n)]


def run_pickled(path: str) -> None:
    """A lane's entry point: call the (function, args) pickled at `path`."""
    with open(path, "rb") as f:
        fn, args = pickle.load(f)
    fn(*args)


def run_side_by_side(calls: Sequence[Call], names: Sequence[str], parallel: bool = True) -> bool:
    """Run each (function, args) of `calls` in its own process on its share of this process's
    CPUs, and wait for all of them; the first to fail stops the others and is raised as a
    RuntimeError naming it. With `parallel` off, or fewer CPUs than calls, they run here one
    after the other. Returns whether they ran side by side."""
    if len(names) != len(calls):
        raise ValueError(f"run_side_by_side: {len(calls)} calls but {len(names)} names")
    shares = share_cpus(len(calls)) if parallel else None
    if shares is None:
        for fn, args in calls:
            fn(*args)
        return False
    with tempfile.TemporaryDirectory(prefix="cpu_lanes_") as tmp:
        procs = []
        for i, ((fn, args), cpus) in enumerate(zip(calls, shares)):
            path = os.path.join(tmp, f"lane{i}.pkl")
            with open(path, "wb") as f:
                pickle.dump((fn, tuple(args)), f)
            procs.append(subprocess.Popen([sys.executable, "-c", CHILD, path],
                                          preexec_fn=lambda cpus=cpus: os.sched_setaffinity(0, cpus)))
        try:
            running = dict(zip(names, procs))
            while running:
                for name, proc in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[name]
                    if code != 0:
                        raise RuntimeError(f"lane {name!r} failed with exit code {code} (its error is printed above)")
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
    return True
