"""The package's import graph: no cycles (lazy imports inside functions included), and the
library never reaches up into the application (docs/index.md, "Layout")."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hpcflow"

# What each part of the library may import from the package, besides itself.
ALLOWED = {
    "lattice": set(),
    "estimators": set(),
    "kernels": set(),
    "nn": {"kernels"},
    "masks": {"lattice"},
    "updates": {"lattice"},
    "flows": {"lattice", "masks", "nn", "updates", "kernels"},
    "io": {"lattice", "errors", "_version"},
    "distributed": set(),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import, known) -> list[str]:
    """Absolute hpcflow module names an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "hpcflow"]
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "hpcflow":
        return []
    out = []
    for alias in node.names:  # `from pkg import submodule` loads the submodule too
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in known else base)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps.update(_resolve(name, path, node, mods))
        deps.discard(name)
        graph[name] = {d for d in deps if d in mods}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_package_root_is_not_imported_from_inside():
    users = [m for m, deps in import_graph().items() if "hpcflow" in deps and m != "hpcflow"]
    assert users == []


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_library_does_not_import_the_application(part):
    """``lattice``, ``masks``, ``nn``, ``flows``, ``updates``, ``estimators``, ``io`` and
    ``distributed`` import only the parts below them: never ``app``, ``cli`` or config."""
    bad = []
    for mod, deps in import_graph().items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] != part:
            continue
        for dep in deps:
            top = dep.split(".")[1] if "." in dep else "hpcflow"
            if top != part and top not in ALLOWED[part]:
                bad.append(f"{mod} imports {dep}")
    assert bad == []


def test_the_graph_sees_lazy_imports():
    """The walker must find imports inside functions (a lazy import once hid a cycle)."""
    graph = import_graph()
    assert "hpcflow.app.train" in graph["hpcflow.cli"]  # imported inside cmd_train
