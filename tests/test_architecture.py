"""The shape of the code, checked from its source: the layer rule (cli -> evalcore -> cachekit,
never back) and no import circle among the product's modules. Every import counts, including the
ones inside functions: a lazy import still makes one module depend on another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("cachekit", "evalcore", "cli")
LAYER = {"cli": 2, "evalcore": 1, "cachekit": 0}  # a package may import only lower (or its own) layers
# Inside evalcore, lowest first (docs/architecture.md); each folder's __init__ says the same.
EVALCORE_LAYERS = ("errors", "isolation", "scoring", "benchmarks", "backends", "plan", "engine", "runners", "report")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The product modules `name` imports (a `from pkg import sub` names the submodule)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        for t in targets:
            while t and t not in known:  # `a.b.func` -> `a.b`
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(m, p, known) for m, p in mods.items()}
    # importing a submodule runs its package's __init__, which is not an edge of the design
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports():
    graph = _graph()
    assert "cachekit.manifest" in graph["cachekit.bundle"] or graph["cachekit.bundle"], graph["cachekit.bundle"]
    assert any(t.startswith("evalcore") for t in graph["cli.evalcore_cli"])


def test_layers_point_down_only():
    bad = [f"{m} imports {t}" for m, ts in _graph().items() for t in sorted(ts)
           if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not bad, "imports against the layer rule (cli -> evalcore -> cachekit):\n" + "\n".join(bad)


def _evalcore_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "evalcore" or len(parts) < 2:
        return None
    return EVALCORE_LAYERS.index(parts[1]) if parts[1] in EVALCORE_LAYERS else None


def test_every_evalcore_module_has_a_layer():
    stray = [m for m in _modules() if m.startswith("evalcore.") and _evalcore_layer(m) is None]
    assert not stray, f"modules outside the layers {EVALCORE_LAYERS}: {stray}"


def test_evalcore_layers_point_down_only():
    bad = [f"{m} imports {t}" for m, ts in _graph().items() for t in sorted(ts)
           if _evalcore_layer(m) is not None and _evalcore_layer(t) is not None
           and _evalcore_layer(t) > _evalcore_layer(m)]
    assert not bad, ("imports against evalcore's layers (" + " < ".join(EVALCORE_LAYERS) + "):\n"
                     + "\n".join(bad))


def test_no_import_circle():
    graph = _graph()
    cycles = _cycles(graph)

    def path_in(comp: list[str]) -> str:  # the shortest circle through comp[0], for the message
        start, back = comp[0], {comp[0]: None}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for t in sorted(graph[node]):
                if t == start:
                    path = [node]
                    while back[path[-1]] is not None:
                        path.append(back[path[-1]])
                    return " -> ".join([start] + path[::-1][1:] + [start]) if len(path) > 1 else f"{start} -> {start}"
                if t in comp and t not in back:
                    back[t] = node
                    queue.append(t)
        return ", ".join(comp)

    assert not cycles, "import circles:\n" + "\n".join(path_in(c) for c in cycles)


# ---- module size ------------------------------------------------------------------------------

MAX_LINES = 400
SIZE_REASON = "Over 400 lines on purpose"  # what a big module writes at its top, with the reason
BEING_SPLIT: set[str] = set()  # modules being split by job (none now)  # split by job in issue 15, item 4


def test_no_big_module_without_a_reason_at_its_top():
    """A product module over 400 lines says why at its top (in its first 30 lines)."""
    big = {}
    for path in _modules().values():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and SIZE_REASON not in "\n".join(lines[:30]):
            big[str(path.relative_to(ROOT))] = len(lines)
    unexplained = {p: n for p, n in big.items() if p not in BEING_SPLIT}
    assert not unexplained, f"modules over {MAX_LINES} lines with no reason at the top: {unexplained}"
    if big:
        pytest.xfail(f"still to be split: {big}")
