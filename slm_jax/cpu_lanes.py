"""Two CPU lanes: a function run in a second process on its own CPUs while this one goes on.

A CPU job whose ops are too small to keep two threads busy (decoding loops of a small model,
jit compilation) leaves cores idle; running two such jobs side by side, each on its own CPUs,
uses them. The second process is started with its CPU affinity already set, so its XLA client
sizes its thread pool to its own CPUs; this process is pinned to the other CPUs while the lane
runs (its pool keeps its threads, which then share those CPUs) and gets every CPU back after.

The function and its arguments are pickled (a module-level function is pickled by name), and
the child runs them in a fresh interpreter (`python -c`), so nothing of this process's state
(gin's config, jax's client) is inherited: pass what the function needs. Its output goes to
this process's stdout / stderr.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

CHILD = "import sys; from slm_jax.cpu_lanes import run_pickled; run_pickled(sys.argv[1])"


def split_cpus(cpus: Sequence[int] | None = None) -> tuple[set[int], set[int]] | None:
    """This process's CPUs cut in two halves (this lane's, the second lane's); None with fewer than 2."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def run_pickled(path: str) -> None:
    """The second lane's entry point: call the (function, args) pickled at `path`."""
    with open(path, "rb") as f:
        fn, args = pickle.load(f)
    fn(*args)


@contextlib.contextmanager
def second_lane(fn: Callable[..., Any], args: Sequence[Any] = (), name: str = "second lane") -> Iterator[bool]:
    """Run `fn(*args)` in a second process on half of this process's CPUs while the body runs
    on the other half; on leaving, wait for it and raise RuntimeError (naming `name`) if it
    failed. With fewer than 2 CPUs, `fn` runs here first, then the body. Yields whether the
    lanes run side by side. An error in the body stops the second process."""
    split = split_cpus()
    if split is None:
        fn(*args)
        yield False
        return
    mine, theirs = split
    everything = mine | theirs
    with tempfile.TemporaryDirectory(prefix="cpu_lane_") as tmp:
        path = os.path.join(tmp, "call.pkl")
        with open(path, "wb") as f:
            pickle.dump((fn, tuple(args)), f)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, path],
                                preexec_fn=lambda: os.sched_setaffinity(0, theirs))
        os.sched_setaffinity(0, mine)
        try:
            yield True
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            os.sched_setaffinity(0, everything)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{name}: the second process failed with exit code {code} (its error is printed above)")
