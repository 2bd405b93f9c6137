"""What every entry point (main, demo, feature_cache, sweep) does before calling a library:
parse `--gin_file=F --gin.NAME=VALUE` flags, start jax.distributed when several processes run,
turn on the persistent compilation cache, and parse gin once. Gin is read here and in the
entry points only; libraries receive the config objects gin built.

`scoped_config` parses a config for one block and restores the enclosing one after it (the
demo's stages each run under their own gin files)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, Sequence

import gin
import jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """--gin_file=F (repeatable) and --gin.NAME=VALUE bindings; anything else is an error."""
    files, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            bindings.append(arg[len("--gin."):])
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            raise SystemExit(f"unknown argument {arg!r}; use --gin_file=FILE and --gin.NAME=VALUE")
    return files, bindings


def init_distributed() -> None:
    """Start jax.distributed when this is one of several processes, before any device use:
    explicit SLM_COORDINATOR_ADDRESS / SLM_NUM_PROCESSES / SLM_PROCESS_ID (local or custom
    launchers), or a multi-task SLURM job / multi-host TPU slice (auto-detected by JAX)."""
    env = os.environ
    if env.get("SLM_COORDINATOR_ADDRESS"):
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env["SLM_COORDINATOR_ADDRESS"], int(env["SLM_NUM_PROCESSES"]),
                                   int(env["SLM_PROCESS_ID"]))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


def enable_compilation_cache() -> str | None:
    """Keep compiled XLA programs on disk (JAX's persistent compilation cache), so a stage, eval
    or re-run that builds the same program again loads it instead of compiling. Directory:
    $JAX_COMPILATION_CACHE_DIR when set (JAX reads it itself), else $SLM_JAX_COMPILATION_CACHE,
    else ~/.cache/slm_jax/xla; SLM_JAX_COMPILATION_CACHE=off disables it. Returns the directory
    in use, or None."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = os.environ.get("SLM_JAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "slm_jax", "xla"))
    if path.lower() in ("", "off", "0", "none"):
        return None
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
    return path


def parse_config(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """A fresh gin config from files and bindings; includes also resolve against the repo root.
    A missing file is named."""
    for f in files:
        if not os.path.isfile(f) and not os.path.isfile(os.path.join(REPO_ROOT, f)):
            raise SystemExit(f"gin file not found: {f}")
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    # gin logs "Path not found" for each search path an include is not under (the working
    # directory first) before it finds the file under the repo root: probes, not errors.
    probes = logging.Filter()
    probes.filter = lambda record: not str(record.msg).startswith("Path not found")
    logging.getLogger().addFilter(probes)
    try:
        gin.parse_config_files_and_bindings([f if os.path.isfile(f) else os.path.join(REPO_ROOT, f) for f in files],
                                            list(bindings), finalize_config=False)
    finally:
        logging.getLogger().removeFilter(probes)


def parse_argv(argv: Sequence[str] | None) -> None:
    """The entry points' start: flags (argv, or sys.argv[1:] when None) parsed into a fresh gin
    config, the compilation cache on, and jax.distributed started when argv is None (a real
    process start, not a call from Python)."""
    if argv is None:
        init_distributed()
    enable_compilation_cache()
    files, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
    parse_config(files, bindings)


@contextlib.contextmanager
def scoped_config(files: Sequence[str], bindings: Sequence[str] = ()) -> Iterator[None]:
    """Gin config of `files` + `bindings` inside the block; the enclosing config after it."""
    saved = gin.config_str()
    parse_config(files, bindings)
    try:
        yield
    finally:
        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config(saved)


def require(config: Any, *names: str) -> None:
    """ValueError naming the first field of `config` (a config dataclass) among `names` that is
    None: a setting the run needs and gin did not bind."""
    for name in names:
        if getattr(config, name) is None:
            kind = type(config).__name__
            raise ValueError(f"{kind}.{name} is not set (bind it in gin: {kind}.{name} = ...)")


def bindings_of(configurable: str) -> dict[str, Any]:
    """The gin bindings of one configurable (e.g. what shapes `get_batches`' batches)."""
    return dict(gin.get_bindings(configurable))


def query(name: str, default: Any = None) -> Any:
    """The value bound to `name` ('configurable.parameter'), references evaluated; `default`
    when unbound."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn()
    return value
