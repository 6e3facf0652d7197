"""The package shows the pipeline: no import cycles, and each stage imports only the stages before it.

Every import statement counts, including the ones inside functions (a lazy import is still a dependency). Run it
as a script to print the import graph's cycles and layer violations: `python tests/test_architecture.py`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avanon", "dataset_adapters")

# Stages in pipeline order; a module may import its own stage and earlier ones only. Modules not listed
# (cli, pipeline, the facade) are the top and may import anything.
LAYERS = [
    ("avanon.registry", "avanon.schema", "avanon.cliutil", "avanon.progress"),
    ("dataset_adapters",),
    ("avanon.regions",),
    ("avanon.generators", "avanon.anonymizers"),
    ("avanon.mirror",),
    ("avanon.study",),
    ("avanon.recipe",),
]
# Modules allowed over the size limit, with the reason (one cohesive thing that reads top to bottom).
SIZE_LIMIT = 600


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules imported anywhere in the file (a `from pkg import sub` that names a submodule counts as
    importing the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def layer_of(module: str):
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in g.items():
        ls = layer_of(src)
        if ls is None:
            continue
        for t in sorted(targets):
            lt = layer_of(t)
            if lt is None or lt > ls:
                bad.append(f"{src} -> {t}")
    return bad


def oversized() -> list[str]:
    out = []
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > SIZE_LIMIT and "reads top to bottom" not in path.read_text()[:3000]:
            out.append(f"{name}: {n} lines")
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_stages_import_only_earlier_stages():
    assert layer_violations(graph()) == []


def test_modules_stay_small_or_say_why():
    assert oversized() == []


if __name__ == "__main__":
    g = graph()
    for c in cycles(g):
        print("cycle:", " <-> ".join(c))
    for v in layer_violations(g):
        print("layer:", v)
    for o in oversized():
        print("size:", o)
