"""Eval sweeps: evaluate a grid (or a list) of binding sets and tabulate the results.

    python -m slm_jax.sweep --gin_file=gin/models/tiny.gin --gin_file=gin/runs/sweep_example.gin \\
        --gin.sweep.run_dir="'runs/demo'" [--gin.sweep.max_points=2]

A *point* is a dict of gin bindings ("DecodeConfig.beam_size": 4, "EvalConfig.max_examples": 100,
...) plus three special keys:
    task            one task name (or a list) -> EvalConfig.eval_tasks
    checkpoint_dir  a training run dir whose checkpoints/ are evaluated (default: sweep.checkpoint_dir,
                    else run_dir)
    step            the checkpoint step to restore (default: the latest one)
`sweep.points` lists points; `sweep.grid` maps axis names to value lists and takes their product.
A grid value that is a dict sets several bindings together (e.g. method=beam with beam_size=4),
otherwise the axis name is the binding: {"task": ["a", "b"], "DecodeConfig.alpha": [0.0, 0.6]}.
String values starting with "@" or "%" are gin references / macros, passed unquoted.

Each point is evaluated with `eval_lib.evaluate` under its own gin config: the config the sweep
started with (`gin.config_str()`), then `base_bindings`, then the point's bindings, so nothing
leaks from one point to the next. Its `RunConfig` (run_dir: the checkpoint dir) and `EvalConfig`
(with its DecodeConfig) are built under that config. Points that differ only in evaluation
settings (EvalConfig.*, DecodeConfig.*, get_batches.*, task, step) share one `train_lib.setup`:
the model, mesh and frozen foundation weights are built and loaded once. Bounded eval samples
(EvalConfig.max_examples) are read once per sweep.

State lives in run_dir/sweep/: `<key>.json` per finished point (key: a stable hash of the point's
bindings, base_bindings and an explicit checkpoint_dir) and `<key>/eval/` with its predictions. A
killed sweep re-run with the same definition evaluates only the missing points. The key does not
cover the gin files: after changing the model or data config, use a new run_dir or delete
run_dir/sweep. A point without `step` is evaluated at the latest checkpoint of the time it ran
(the step is recorded); pin `step` for exact reruns. At the end: results.csv, results.md (one
row per point x task, one column per metric) and results.png (one panel per metric, bars
grouped by point, one bar per task). On several hosts run_dir must be on a shared filesystem.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m slm_jax.sweep`: run the importable module, so gin knows one configurable `sweep`
    # (this file executed as __main__ would register a second, `__main__.sweep`, and any config
    # importing slm_jax.sweep would make `sweep.X` bindings ambiguous).
    from slm_jax.sweep import main as _main
    _main()
    raise SystemExit(0)

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np

from slm_jax import configs  # noqa: F401  (registers the model configs with gin)
from slm_jax import eval_lib, gin_utils, train_lib

SPECIAL_KEYS = ("task", "checkpoint_dir", "step")
# Bindings that do not change the model / mesh / loaded weights: points differing only in these
# share one set-up.
EVAL_ONLY_PREFIXES = ("EvalConfig.", "DecodeConfig.", "get_batches.", "sweep.")
# Metrics left out of the plot by default (bookkeeping, not quality).
NOT_PLOTTED = ("num_examples",)


# ----------------------------------------------------------------------------- points

def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """The product of the grid's axes, in order (the last axis varies fastest)."""
    axes = list(grid.items())
    for name, values in axes:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep.grid[{name!r}] must be a non-empty list of values, got {values!r}")
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        point: dict = {}
        for (name, _), value in zip(axes, combo):
            part = dict(value) if isinstance(value, Mapping) else {name: value}
            clash = set(part) & set(point)
            if clash:
                raise ValueError(f"sweep.grid: axis {name!r} sets {sorted(clash)} again")
            point.update(part)
        points.append(point)
    return points


def check_point(point: Mapping[str, Any]) -> None:
    for key, value in point.items():
        if key in SPECIAL_KEYS:
            continue
        if not isinstance(key, str) or "." not in key:
            raise ValueError(f"sweep point {dict(point)}: key {key!r} is neither a gin binding "
                             f"('Configurable.parameter') nor one of {SPECIAL_KEYS}")
    if "step" in point and not isinstance(point["step"], int):
        raise ValueError(f"sweep point {dict(point)}: step must be an int, got {point['step']!r}")


def _gin_value(value: Any) -> str:
    if isinstance(value, str) and value[:1] in ("@", "%"):
        return value
    return repr(value)


def point_bindings(point: Mapping[str, Any]) -> list[str]:
    """The gin binding strings of a point (special keys translated, sorted for stability)."""
    out = [f"{k} = {_gin_value(v)}" for k, v in sorted(point.items()) if k not in SPECIAL_KEYS]
    if "task" in point:
        tasks = [point["task"]] if isinstance(point["task"], str) else list(point["task"])
        out.append(f"EvalConfig.eval_tasks = {tasks!r}")
    return out


def point_key(point: Mapping[str, Any], base_bindings: Sequence[str] = (), checkpoint_dir: str | None = None) -> str:
    """Stable 12-hex-digit name of a point: a hash of its bindings, the sweep's base bindings and
    an explicitly given checkpoint dir (independent of dict order and of the process)."""
    ident = {"point": {k: point[k] for k in sorted(point)}, "base_bindings": list(base_bindings)}
    if checkpoint_dir is not None and "checkpoint_dir" not in point:
        ident["checkpoint_dir"] = checkpoint_dir
    blob = json.dumps(ident, sort_keys=True, default=repr)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def point_label(point: Mapping[str, Any], exclude: Sequence[str] = ("task",)) -> str:
    """Short human name: 'method=beam beam_size=2' (the last part of each binding name)."""
    short = [k.rsplit(".", 1)[-1] for k in point if k not in exclude]
    parts = []
    for k, v in point.items():
        if k in exclude:
            continue
        name = k.rsplit(".", 1)[-1]
        parts.append(f"{name if short.count(name) == 1 else k}={_fmt_value(v)}")
    return " ".join(parts) or "default"


def _fmt_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, str) and os.sep in v:
        return os.path.basename(v.rstrip(os.sep)) or v
    return str(v)


def _setup_key(point: Mapping[str, Any], checkpoint_dir: str) -> tuple:
    relevant = sorted(b for b in point_bindings({k: v for k, v in point.items() if k not in SPECIAL_KEYS})
                      if not b.startswith(EVAL_ONLY_PREFIXES))
    return (os.path.abspath(checkpoint_dir), tuple(relevant))


# ----------------------------------------------------------------------------- gin per point

def _parse(base_config: str, bindings: Sequence[str]) -> None:
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(base_config)
        gin.parse_config(list(bindings))


@contextlib.contextmanager
def point_config(base_config: str, bindings: Sequence[str]) -> Iterator[None]:
    """Inside the block: gin config `base_config` (a `gin.config_str()`) plus `bindings`;
    after it: `base_config` alone."""
    try:
        _parse(base_config, bindings)
        yield
    finally:
        _parse(base_config, [])


# ----------------------------------------------------------------------------- state files

def _write_json(path: str, obj: Any) -> None:
    """Atomic: a killed sweep never leaves a half-written point file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=repr)
    os.replace(tmp, path)


def _read_point(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if not isinstance(record.get("results"), dict):
            raise ValueError("no 'results'")
        return record
    except (OSError, ValueError) as e:
        print(f"[sweep] ignoring unreadable {path} ({e}); the point is evaluated again", flush=True)
        return None


def _broadcast_done(done: list[bool]) -> list[bool]:
    """Process 0 decides what is finished, so every host runs the same points."""
    if jax.process_count() == 1 or not done:
        return done
    from jax.experimental import multihost_utils
    return [bool(x) for x in multihost_utils.broadcast_one_to_all(np.asarray(done, np.int32))]


# ----------------------------------------------------------------------------- the runner

class SetupCache:
    """The `train_lib.Setup` of the current set-up key (closed and rebuilt when the key changes)
    and the trainable params of the step restored last."""

    def __init__(self):
        self.key = self.setup = self.step = self.trainable = None

    def get(self, key: tuple, checkpoint_dir: str) -> train_lib.Setup:
        """The set-up for `key`; a new one is built under the current gin config."""
        if self.key != key:
            self.close()
            self.setup = train_lib.setup(train_lib.RunConfig(run_dir=checkpoint_dir))
            self.key = key
        return self.setup

    def restore(self, step: int | None, what: str) -> tuple[Any, int]:
        """(trainable params, step) of the current set-up at `step` (default: the latest; the
        initial params and step 0 when there is no checkpoint)."""
        s = self.setup
        step = s.checkpointer.latest_step() if step is None else step
        if step is None:
            print(f"[sweep] {s.run.run_dir} has no checkpoint: evaluating the initial parameters (step 0)", flush=True)
            return s.restore()
        if self.step != step:
            available = sorted(s.checkpointer.manager.all_steps())
            if step not in available:
                raise ValueError(f"{what}: no checkpoint step {step} in {s.checkpointer.directory} (has {available})")
            self.trainable, self.step = s.restore(step)[0], step
        return self.trainable, step

    def close(self) -> None:
        if self.setup is not None:
            self.setup.checkpointer.close()
        self.key = self.setup = self.step = self.trainable = None


@dataclasses.dataclass
class SweepContext:
    """What evaluating a point needs besides the point: where state goes, the gin config the
    sweep started with, the bindings every point gets, the default checkpoint dir, the set-up in
    use and the sweep's eval data cache."""
    state_dir: str
    base_config: str
    base_bindings: list[str]
    checkpoint_dir: str
    setups: SetupCache = dataclasses.field(default_factory=SetupCache)
    data: eval_lib.EvalDataCache = dataclasses.field(default_factory=eval_lib.EvalDataCache)

    def checkpoint_dir_of(self, point: Mapping[str, Any]) -> str:
        return point.get("checkpoint_dir") or self.checkpoint_dir


def collect_points(points: Sequence[Mapping[str, Any]] | None, grid: Mapping[str, Sequence[Any]] | None,
                   base_bindings: Sequence[str], checkpoint_dir: str | None) -> tuple[list[dict], list[str]]:
    """The sweep's points (from exactly one of points / grid), each checked, and their keys."""
    if (points is None) == (grid is None):
        raise ValueError("sweep: give exactly one of sweep.points (a list of dicts) or sweep.grid (a dict of lists)")
    all_points = [dict(p) for p in points] if points is not None else expand_grid(grid)
    if not all_points:
        raise ValueError("sweep: no points")
    for p in all_points:
        check_point(p)
    keys = [point_key(p, base_bindings, checkpoint_dir) for p in all_points]
    dup = [k for k in set(keys) if keys.count(k) > 1]
    if dup:
        raise ValueError(f"sweep: identical points: {[all_points[keys.index(k)] for k in dup]}")
    return all_points, keys


def check_bindings_parse(base_config: str, base_bindings: Sequence[str], all_points: Sequence[dict]) -> None:
    """Every point's bindings must parse before hours of evaluation start."""
    for p in all_points:
        try:
            with point_config(base_config, [*base_bindings, *point_bindings(p)]):
                pass
        except Exception as e:
            raise ValueError(f"sweep: point {p} does not parse as gin bindings: {e}") from e


def plan(ctx: SweepContext, all_points: Sequence[dict], keys: Sequence[str],
         records: Mapping[str, dict | None]) -> tuple[list[str], list[tuple[str, dict]]]:
    """(keys of the finished points, as process 0 sees them; the other (key, point)s, grouped by
    set-up in order of each set-up's first point, sweep order within a group)."""
    done = _broadcast_done([records[k] is not None for k in keys])
    skipped = [k for k, d in zip(keys, done) if d]
    for k, p, d in zip(keys, all_points, done):
        if d:
            print(f"[sweep] skip {k} (finished): {point_label(p, ())}", flush=True)
    todo = [(k, p) for k, p, d in zip(keys, all_points, done) if not d]
    first: dict[tuple, int] = {}
    for _, p in todo:
        first.setdefault(_setup_key(p, ctx.checkpoint_dir_of(p)), len(first))
    todo.sort(key=lambda kp: first[_setup_key(kp[1], ctx.checkpoint_dir_of(kp[1]))])
    return skipped, todo


def run_points(ctx: SweepContext, todo: Sequence[tuple[str, dict]], records: dict[str, dict | None],
               max_points: int | None) -> list[str]:
    """Evaluate the points of `todo` in order (at most max_points), filling `records`; returns
    the evaluated keys. The set-up is closed and the base gin config restored on the way out."""
    evaluated: list[str] = []
    try:
        for k, p in todo:
            if max_points is not None and len(evaluated) >= max_points:
                break
            records[k] = evaluate_point(ctx, k, p)
            evaluated.append(k)
    finally:
        ctx.setups.close()
    return evaluated


def evaluate_point(ctx: SweepContext, key: str, point: dict) -> dict:
    """Evaluate one point under its gin config; predictions go to state_dir/<key>/eval/, the
    record (returned) to state_dir/<key>.json."""
    label = point_label(point, ())
    print(f"[sweep] point {key}: {label}", flush=True)
    bindings = ctx.base_bindings + point_bindings(point)
    ckpt_dir = ctx.checkpoint_dir_of(point)
    with point_config(ctx.base_config, bindings):
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"sweep point {key} ({label}): checkpoint_dir {ckpt_dir} does not exist")
        s = ctx.setups.get(_setup_key(point, ckpt_dir), ckpt_dir)
        trainable, step = ctx.setups.restore(point.get("step"), f"sweep point {key} ({label})")
        cfg = eval_lib.EvalConfig()      # built here: the point's EvalConfig.* and DecodeConfig.* apply
        point_setup = dataclasses.replace(s, run=dataclasses.replace(s.run, run_dir=os.path.join(ctx.state_dir, key)))
        t0 = time.time()
        results = eval_lib.evaluate(point_setup, cfg, trainable, step, ctx.data)
    record = dict(key=key, point=point, label=point_label(point), bindings=bindings,
                  checkpoint_dir=os.path.abspath(ckpt_dir), step=int(step), decode=dataclasses.asdict(cfg.decode),
                  results={t: {m: float(v) for m, v in r.items()} for t, r in results.items()},
                  seconds=time.time() - t0, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    if jax.process_index() == 0:
        _write_json(os.path.join(ctx.state_dir, f"{key}.json"), record)
    return record


@gin.configurable
def sweep(run_dir: str | None = None, *, points: Sequence[Mapping[str, Any]] | None = None,
          grid: Mapping[str, Sequence[Any]] | None = None, base_bindings: Sequence[str] = (),
          checkpoint_dir: str | None = None, max_points: int | None = None,
          plot_metrics: Sequence[str] | None = None) -> dict:
    """Evaluate every point not yet finished in run_dir/sweep/, then write the results table and plot.

    run_dir: where run_dir/sweep/ lives (default: the gin binding RunConfig.run_dir).
    points / grid: the points (exactly one of them; see the module docstring).
    base_bindings: gin bindings applied to every point (part of each point's key).
    checkpoint_dir: training run dir to evaluate when a point names none (default run_dir).
    max_points: evaluate at most this many missing points in this call, then stop (the table is
      written for what is finished; re-running continues).
    plot_metrics: metrics to plot (default: every metric but num_examples).
    Returns dict(records=[...finished points in sweep order], evaluated=[keys], skipped=[keys],
    remaining=[keys], csv=, markdown=, plot= paths)."""
    if run_dir is None:
        run_dir = gin_utils.query("RunConfig.run_dir")
    if not run_dir:
        raise ValueError("sweep: set sweep.run_dir (or RunConfig.run_dir)")
    base_bindings = list(base_bindings)
    all_points, keys = collect_points(points, grid, base_bindings, checkpoint_dir)
    ctx = SweepContext(os.path.join(str(run_dir), "sweep"), gin.config_str(), base_bindings,
                       checkpoint_dir or str(run_dir))
    os.makedirs(ctx.state_dir, exist_ok=True)
    check_bindings_parse(ctx.base_config, base_bindings, all_points)

    records = {k: _read_point(os.path.join(ctx.state_dir, f"{k}.json")) for k in keys}
    skipped, todo = plan(ctx, all_points, keys, records)
    print(f"[sweep] {len(all_points)} points: {len(skipped)} finished, {len(todo)} to evaluate"
          + (f" (at most {max_points} now)" if max_points is not None else ""), flush=True)
    evaluated = run_points(ctx, todo, records, max_points)

    remaining = [k for k in keys if records[k] is None]
    finished = [records[k] for k in keys if records[k] is not None]
    if remaining:
        print(f"[sweep] stopped with {len(remaining)} of {len(keys)} points left; re-run to finish them", flush=True)
    paths = write_results(ctx.state_dir, finished, plot_metrics) if jax.process_index() == 0 else {}
    return dict(records=finished, evaluated=evaluated, skipped=skipped, remaining=remaining, **paths)


# ----------------------------------------------------------------------------- results table and plot

def _metric_order(records: Sequence[dict]) -> list[str]:
    seen: list[str] = []
    for r in records:
        for scores in r["results"].values():
            seen += [m for m in scores if m not in seen]
    tail = [m for m in ("num_examples", "examples_per_s") if m in seen]
    return [m for m in seen if m not in tail] + tail


def table_rows(records: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per point x task; columns key, step, each swept binding, task,
    then the union of metrics (empty where a task has no such metric)."""
    binding_cols: list[str] = []
    for r in records:
        binding_cols += [k for k in r["point"] if k not in binding_cols and k not in ("task", "step")]
    metrics = _metric_order(records)
    header = ["point", "step", *binding_cols, "task", *metrics]
    rows = []
    for r in records:
        for task, scores in r["results"].items():
            swept = [_fmt_value(r["point"][c]) if c in r["point"] else "" for c in binding_cols]
            rows.append([r["key"], r["step"], *swept, task, *(scores.get(m, "") for m in metrics)])
    return header, rows


def _fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def write_results(state_dir: str, records: Sequence[dict], plot_metrics: Sequence[str] | None = None) -> dict:
    """results.csv, results.md and results.png under state_dir; returns their paths."""
    header, rows = table_rows(records)
    paths = {k: os.path.join(state_dir, f"results.{ext}")
             for k, ext in (("csv", "csv"), ("markdown", "md"), ("plot", "png"))}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt_cell(v) for v in row) + " |" for row in rows]
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(lines) + "\n")
    plot_results(paths["plot"], records, plot_metrics)
    print(f"[sweep] {len(rows)} rows -> {paths['csv']}, {paths['markdown']}, {paths['plot']}", flush=True)
    return paths


def plot_results(path: str, records: Sequence[dict], metrics: Sequence[str] | None = None) -> None:
    """One panel per metric; x: the points (labels without the task), one bar per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in (metrics or _metric_order(records)) if metrics or m not in NOT_PLOTTED]
    labels: list[str] = []
    tasks: list[str] = []
    values: dict[tuple[str, str, str], float] = {}
    several_steps = len({r["step"] for r in records}) > 1
    for r in records:
        label = f"{r['label']} @{r['step']}" if several_steps and "step" not in r["point"] else r["label"]
        labels += [label] if label not in labels else []
        for task, scores in r["results"].items():
            tasks += [task] if task not in tasks else []
            for m in metrics:
                if isinstance(scores.get(m), (int, float)):
                    values[(label, task, m)] = float(scores[m])
    n = max(len(metrics), 1)
    fig, axes = plt.subplots(n, 1, figsize=(max(6.0, 1.5 * len(labels) + 3), 2.8 * n), squeeze=False)
    x = np.arange(len(labels))
    for ax, m in zip(axes[:, 0], metrics):
        scored = [t for t in tasks if any((lab, t, m) in values for lab in labels)]  # tasks with this metric
        width = 0.8 / max(len(scored), 1)
        for i, task in enumerate(scored):
            ys = [values.get((lab, task, m), math.nan) for lab in labels]
            ax.bar(x + (i - (len(scored) - 1) / 2) * width, ys, width, label=task,
                   color=f"C{tasks.index(task) % 10}")  # one colour per task in every panel
        ax.set_ylabel(m)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if scored:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[0, 0].set_title(f"eval sweep: {len(records)} points")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> dict:
    """python -m slm_jax.sweep --gin_file=F ... --gin.sweep.NAME=VALUE ... (the flags of slm_jax.main)."""
    gin_utils.parse_argv(argv)
    return sweep()
