"""The project's layering, read from the source with `ast` (nothing is imported or compiled):
no import cycles among slm_jax/ and tasks/ modules (function-local imports count), nothing
imports the CLI slm_jax.main, no private name is reached in another project module, gin is
queried in slm_jax/gin_utils.py only, the slm_jax core does not depend on tasks/, and functions
in slm_jax/ stay short."""

from __future__ import annotations

import ast
import contextlib
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("slm_jax", "tasks")            # importable by their dotted names from the repo root
SCANNED = ("slm_jax", "tasks", "tests", "benchmarks")
MAX_FUNCTION_LINES = 80                    # a function must be shorter than this

# The slm_jax core: models, training and evaluation libraries; none may reach tasks/ (the SeqIO
# task definitions sit on top of it).
CORE = ("slm_jax.models", "slm_jax.trainer", "slm_jax.partitioning", "slm_jax.decoding", "slm_jax.data",
        "slm_jax.checkpoints", "slm_jax.features", "slm_jax.metrics", "slm_jax.train_lib", "slm_jax.eval_lib",
        "slm_jax.cached_features", "slm_jax.fingerprint", "slm_jax.gin_utils", "slm_jax.task_model")

# Deliberate uses of another module's private name: (file relative to the repo, "module._name")
# -> why. Only tests that check one module's internals belong here.
PRIVATE_NAME_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


_PARSED: dict[Path, ast.Module] = {}


def _tree(path: Path) -> ast.Module:
    if path not in _PARSED:
        _PARSED[path] = ast.parse(path.read_text(), filename=str(path))
    return _PARSED[path]


@contextlib.contextmanager
def _probe(rel: str, source: str):
    """A module that exists only as parsed source at `rel` (for testing the checks)."""
    path = REPO / rel
    _PARSED[path] = ast.parse(source)
    try:
        yield path
    finally:
        del _PARSED[path]


@functools.lru_cache(None)
def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the importable packages (a package by its name)."""
    out = {}
    for path in _files(*PACKAGES):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _module_name(path: Path) -> str:
    """The dotted name a file is imported under: packages from the repo root; tests/ and
    benchmarks/ put their own directory on sys.path, so their modules go by their file name."""
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[0] in PACKAGES:
        return ".".join(parts).removesuffix(".__init__")
    return parts[-1]


def _local_modules(path: Path) -> set[str]:
    """Modules importable from `path` by a bare name: the other files of its directory outside
    the packages (tests' helpers, benchmarks' common)."""
    if path.relative_to(REPO).parts[0] in PACKAGES:
        return set()
    return {p.stem for p in path.parent.glob("*.py")}


def _project_modules(path: Path) -> set[str]:
    return set(_modules()) | _local_modules(path)


def _absolute(node: ast.ImportFrom, me: str, is_package: bool) -> str | None:
    """The module an ImportFrom reads from, relative imports resolved against `me`."""
    if node.level == 0:
        return node.module
    base = me.split(".") if is_package else me.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def _imported_names(path: Path) -> list[tuple[ast.stmt, str, list[str]]]:
    """Every import statement of a file, anywhere in it: (node, source module, names it imports
    from that module; [] for `import a.b`)."""
    me, out = _module_name(path), []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(node, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, me, path.name == "__init__.py")
            if source:
                out.append((node, source, [a.name for a in node.names]))
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest prefix of dotted `name` that is a known module."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _dependencies(path: Path) -> set[str]:
    """Project modules a module imports (with the package __init__s that importing them runs),
    not counting the packages it belongs to itself."""
    me, known, out = _module_name(path), set(_modules()), set()
    for _, source, names in _imported_names(path):
        for full in [source] + [f"{source}.{n}" for n in names]:
            target = _resolve(full, known)
            while target:
                if target != me and not me.startswith(target + "."):
                    out.add(target)
                target = target.rpartition(".")[0]
    return out


@functools.lru_cache(None)
def _graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(_dependencies(path)) for name, path in _modules().items()}


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in graph[v]:
                        out.append(sorted(comp))
    return out


def _path_between(graph, start: str, goal) -> list[str] | None:
    """A shortest import chain from `start` to a module satisfying `goal` (breadth first)."""
    previous, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w in previous:
                    continue
                previous[w] = v
                if goal(w):
                    chain = [w]
                    while previous[chain[-1]] is not None:
                        chain.append(previous[chain[-1]])
                    return chain[::-1]
                nxt.append(w)
        frontier = nxt
    return None


# ----------------------------------------------------------------------------- the checker itself

def test_cycle_finder_finds_cycles_and_only_cycles():
    acyclic = {"a": frozenset({"b", "c"}), "b": frozenset({"c"}), "c": frozenset()}
    assert _cycles(acyclic) == []
    cyclic = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a", "d"}), "d": frozenset({"d"}),
              "e": frozenset({"a"})}
    assert sorted(_cycles(cyclic)) == [["a", "b", "c"], ["d"]]
    assert _path_between(cyclic, "e", lambda m: m == "d") == ["e", "a", "b", "c", "d"]


def test_relative_and_function_local_imports_are_seen():
    source = ("def f():\n    from . import fingerprint\n    import slm_jax.data as d\n"
              "from .checkpoints.manager import TrainCheckpointer\n")
    with _probe("slm_jax/layering_probe.py", source) as path:
        deps = _dependencies(path)
    assert {"slm_jax.fingerprint", "slm_jax.data", "slm_jax.checkpoints.manager", "slm_jax.checkpoints"} <= deps


# ----------------------------------------------------------------------------- the rules

def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 20 and "slm_jax.train_lib" in graph and "tasks.asr" in graph
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_nothing_imports_the_cli():
    """slm_jax.main is the command line; libraries, tasks, tests and benchmarks use train_lib,
    eval_lib and gin_utils (tests may run the CLI as a subprocess). main.py imports itself in its
    `__main__` block only."""
    bad = []
    for path in _files(*SCANNED):
        rel = _rel(path)
        for node, source, names in _imported_names(path):
            if source == "slm_jax.main" or (source == "slm_jax" and "main" in names):
                if rel == "slm_jax/main.py":
                    continue
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, "imports slm_jax.main: " + ", ".join(bad)


def test_main_imports_itself_only_in_its_main_block():
    tree = _tree(REPO / "slm_jax" / "main.py")
    guarded = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    inside = {id(n) for g in guarded for n in ast.walk(g)}
    own = [n for n, source, names in _imported_names(REPO / "slm_jax" / "main.py")
           if source == "slm_jax.main" or (source == "slm_jax" and "main" in names)]
    assert all(id(n) in inside for n in own)


def _module_aliases(path: Path) -> dict[str, str]:
    """Local names a file binds to project modules by importing them (`import a.b` binds `a`)."""
    known, out = _project_modules(path), {}
    for node, source, names in _imported_names(path):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _resolve(alias.name, known) is None:
                    continue
                if alias.asname:
                    out[alias.asname] = alias.name
                else:
                    out[alias.name.split(".")[0]] = alias.name.split(".")[0]
        else:
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    out[alias.asname or alias.name] = f"{source}.{alias.name}"
    return out


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(path: Path) -> list[tuple[int, str]]:
    """(line, "module._name") for each private name of another project module that the file
    imports or reads as an attribute of an imported module."""
    me, known, out = _module_name(path), _project_modules(path), []
    for node, source, names in _imported_names(path):
        if isinstance(node, ast.ImportFrom) and _resolve(source, known) and source != me:
            out += [(node.lineno, f"{source}.{n}") for n in names if _private(n)]
    aliases = _module_aliases(path)
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = _dotted(node.value)
            if base is None or base.split(".")[0] not in aliases:
                continue
            module = aliases[base.split(".")[0]] + base[len(base.split(".")[0]):]
            if _resolve(module, known) == module and module != me:
                out.append((node.lineno, f"{module}.{node.attr}"))
    return out


def test_private_name_finder():
    source = ("from slm_jax.cached_features import _Reader, build_cache\nimport slm_jax.data as d\n"
              "from slm_jax import sweep\nimport helpers\nimport numpy as np\nimport slm_jax.models.t5\n"
              "d._x, sweep._bound, sweep.run, helpers._y, np._z, d.__name__, slm_jax.models.t5._w\n")
    with _probe("tests/layering_probe.py", source) as path:
        found = _private_uses(path)
    assert sorted(found) == [(1, "slm_jax.cached_features._Reader"), (7, "helpers._y"), (7, "slm_jax.data._x"),
                             (7, "slm_jax.models.t5._w"), (7, "slm_jax.sweep._bound")]


def test_no_private_names_of_other_modules():
    """`from X import _name` and `X._name` of another project module break its encapsulation;
    the exceptions are listed, with their reasons, in PRIVATE_NAME_EXCEPTIONS."""
    bad, used = [], set()
    for path in _files(*SCANNED):
        for line, name in _private_uses(path):
            key = (_rel(path), name)
            if key in PRIVATE_NAME_EXCEPTIONS:
                used.add(key)
            else:
                bad.append(f"{key[0]}:{line}: {name}")
    assert not bad, "private names of other modules:\n" + "\n".join(bad)
    assert used == set(PRIVATE_NAME_EXCEPTIONS), f"stale exceptions: {set(PRIVATE_NAME_EXCEPTIONS) - used}"


def test_gin_is_queried_in_gin_utils_only():
    """Libraries receive the config objects gin built; reading a binding directly is
    slm_jax/gin_utils.py's job (gin_utils.query)."""
    bad = []
    for path in _files(*SCANNED):
        for node in ast.walk(_tree(path)):
            hit = (isinstance(node, ast.Attribute) and node.attr == "query_parameter") or \
                  (isinstance(node, ast.ImportFrom) and any(a.name == "query_parameter" for a in node.names))
            if hit and _rel(path) != "slm_jax/gin_utils.py":
                bad.append(f"{_rel(path)}:{node.lineno}")
    assert not bad, "gin query_parameter outside slm_jax/gin_utils.py: " + ", ".join(bad)


@pytest.mark.parametrize("core", CORE)
def test_core_does_not_depend_on_tasks(core):
    """Neither directly nor through other project modules, function-local imports included."""
    graph = _graph()
    members = [m for m in graph if m == core or m.startswith(core + ".")]
    assert members, f"{core} not found"
    for m in members:
        chain = _path_between(graph, m, lambda w: w == "tasks" or w.startswith("tasks."))
        assert chain is None, "the core imports tasks/: " + " -> ".join(chain)


def _long_functions() -> list[str]:
    out = []
    for path in _files("slm_jax"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_FUNCTION_LINES:
                    out.append(f"{_rel(path)}:{node.lineno} {node.name}: {lines} lines")
    return out


def test_functions_are_short():
    long = _long_functions()
    assert not long, f"functions of {MAX_FUNCTION_LINES} lines or more:\n" + "\n".join(long)
