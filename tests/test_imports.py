"""The import graph of absint: no cycles, and every module stands on its own floor or lower.

Every module's imports are read with :mod:`ast` — top-level imports and the lazy ones inside
functions alike — and resolved to the modules of this project (``domains/`` and ``solvers/`` map to
``absint.domains`` and ``absint.solvers``). An edge ``A -> B`` means ``A`` imports ``B`` (for
``from P import name``: ``P.name`` if that is a module, else ``P``). Importing a submodule also
runs its packages' ``__init__``, which is not counted as a dependency: package ``__init__`` files
import nothing heavy (tests/test_registry.py checks what ``import absint`` loads).

The floors (docs/architecture.md):

0. core: errors, rounding, linear, ir, specs, options, registry, results, data (and the bundled data),
   timelimit, provenance, optim (Adam for the bound optimisers);
1. domains, solvers, frontends, the VNN-LIB parser, the attacks and their re-check — each on the core only;
   domains and solvers never import each other, and solvers never import the network IR;
2. the interpreter (walks a graph with a domain);
3. analyses (analyses, alpha, sdp, bab, refine) and the conformance kit;
4. the decision path (verify, and absint.vnnlib.solver which answers VNN-LIB queries through it);
5. the CLI (with its argument types; absint-vnnlib and the VNN-COMP runner of absint.vnnlib), the
   experiments (bench) and the public facade ``absint``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"absint": ROOT / "absint", "absint.domains": ROOT / "domains", "absint.solvers": ROOT / "solvers",
           "absint.networks": ROOT / "networks"}

FLOORS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("absint.errors", "absint.rounding", "absint.linear", "absint.ir", "absint.specs", "absint.options",
         "absint.registry", "absint.results", "absint.data", "absint.networks", "absint.timelimit",
         "absint.provenance", "absint.optim")),
    (1, ("absint.domains", "absint.solvers", "absint.frontends", "absint.vnnlib", "absint.attack",
         "absint.recheck")),
    (2, ("absint.interpreter",)),
    (3, ("absint.analyses", "absint.alpha", "absint.sdp", "absint.bab", "absint.refine", "absint.testing")),
    (4, ("absint.verify", "absint.vnnlib.solver")),
    (5, ("absint.cli", "absint.argtypes", "absint.bench", "absint", "absint.vnnlib.cli", "absint.vnnlib.vnncomp")),
]
#: pairs of floor-1 packages that must not import each other
APART = [("absint.domains", "absint.solvers"), ("absint.domains", "absint.frontends"),
         ("absint.solvers", "absint.frontends")]
#: solvers know LP/MILP/SDP models, not networks: no network IR, operators or specs
NETWORK_FREE = ("absint.solvers",)
NETWORK = ("absint.ir", "absint.linear", "absint.specs")


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if prefix == "absint" and name.startswith(("absint.domains", "absint.solvers", "absint.networks")):
                continue  # an installed copy inside the package would shadow the folders
            out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """Project modules imported anywhere in ``module`` (top level, functions, classes, ``if`` blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]  # importlib.import_module("absint.x") with a literal name
        else:
            continue
        for t in targets:
            r = _resolve(t) if t.startswith("absint") else None
            if r is not None and r != module:
                out.add(r)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _floor(module: str) -> int:
    best = (-1, 99)
    for floor, prefixes in FLOORS:
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                best = max(best, (len(p), floor))
    return best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_walker_sees_lazy_imports() -> None:
    """Sanity: lazy imports inside functions count (absint.cli imports absint.registry in _run_list)."""
    assert "absint.registry" in GRAPH["absint.cli"]
    assert len(MODULES) > 60 and "absint.domains.base" in MODULES and "absint.solvers.base" in MODULES


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_is_detected() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_stands_on_its_floor_or_lower(module: str) -> None:
    floor = _floor(module)
    assert floor != 99, f"{module} has no floor in tests/test_imports.py (add it to FLOORS)"
    above = sorted(t for t in GRAPH[module] if _floor(t) > floor)
    assert not above, f"{module} (floor {floor}) imports higher modules: {above}"
    for a, b in APART:
        for x, y in ((a, b), (b, a)):
            if module == x or module.startswith(x + "."):
                crossing = sorted(t for t in GRAPH[module] if t == y or t.startswith(y + "."))
                assert not crossing, f"{module} imports {crossing}: {x} and {y} stand side by side"
    if module.startswith(NETWORK_FREE):
        network = sorted(t for t in GRAPH[module] if t.startswith(NETWORK))
        assert not network, f"{module} imports the network IR {network}: the solver layer sees models only"
