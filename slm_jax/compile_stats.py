"""Counting XLA compilations (and jaxpr traces), to catch silent recompilation.

A jitted step that is called with a new input shape, dtype, pytree structure, sharding or
static argument is traced and compiled again; with bucketed batches that should happen once
per bucket and never in the steady state. `count_compilations` listens to JAX's monitoring
events while its block runs:

    with count_compilations() as cc:
        for batch in batches:
            state, metrics = trainer.train_step(state, frozen, batch, rng)
    assert cc.count("step") <= n_buckets
    print(cc.summary())

Every backend compilation is counted, including the small ones eager `jnp` calls trigger
outside jit; `count(name)` filters by the jitted function's name (its `__name__`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from typing import Iterator

from jax import monitoring

# Event names of jax._src.dispatch (stable since jax 0.4.2x): one per backend (XLA)
# compilation, and one per jaxpr trace of a jitted function.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
JAXPR_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@dataclasses.dataclass
class CompileStats:
    """What happened while a `count_compilations` block ran."""
    compiles: list[tuple[str, float]] = dataclasses.field(default_factory=list)   # (function name, seconds)
    traces: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def count(self, name: str | None = None) -> int:
        """Backend compilations, of all functions or of those named `name`."""
        return sum(1 for n, _ in self.compiles if name is None or n == name)

    def trace_count(self, name: str | None = None) -> int:
        """Jaxpr traces (a re-trace usually precedes a re-compile), all or of `name`."""
        return sum(1 for n, _ in self.traces if name is None or n == name)

    def seconds(self, name: str | None = None) -> float:
        """Total backend compile time, all or of `name`."""
        return sum(s for n, s in self.compiles if name is None or n == name)

    def by_name(self) -> dict[str, int]:
        return dict(collections.Counter(n for n, _ in self.compiles))

    def summary(self) -> str:
        names = ", ".join(f"{n} x{c}" for n, c in sorted(self.by_name().items(), key=lambda kv: -kv[1]))
        return f"{self.count()} compilation(s) in {self.seconds():.1f}s" + (f" ({names})" if names else "")


_lock = threading.Lock()


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileStats]:
    """Record the compilations and traces that happen inside the block (any thread)."""
    stats = CompileStats()

    def listener(event: str, duration: float, **kwargs) -> None:
        name = str(kwargs.get("fun_name", "?"))
        if name.startswith("jit(") and name.endswith(")"):   # compile events say "jit(step)"
            name = name[4:-1]
        if event == BACKEND_COMPILE_EVENT:
            with _lock:
                stats.compiles.append((name, duration))
        elif event == JAXPR_TRACE_EVENT:
            with _lock:
                stats.traces.append((name, duration))

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield stats
    finally:
        monitoring.unregister_event_duration_listener(listener)
