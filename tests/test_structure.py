"""Structure of the package: the modules of ltuning import one another one way only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ltuning"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _module_names() -> dict[str, Path]:
    """ltuning module name -> file (a package's name -> its __init__.py)."""
    names = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree: top level, inside functions, and under ``if TYPE_CHECKING:`` (a
    type checker follows those too, so they count)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ltuning modules an import statement needs: ``from X import y`` needs X.y when y is a module, and X
    itself (its ``__init__`` run to the end) when y is a name defined there. A package being imported
    before its submodules is not counted: that is how every submodule is imported."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    submodules = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules}
    names_from_init = len(submodules) < len(node.names) and source in modules
    return submodules | ({source} if names_from_init else set())


def import_graph() -> dict[str, set[str]]:
    names = _module_names()
    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(tree):
            targets |= _targets(node, module, is_package, set(names))
        graph[module] = targets - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_import_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "ltuning.model" in graph["ltuning.api"]  # top level, relative
    assert "ltuning.methods" in graph["ltuning.card"]
    assert "ltuning.prediction" in graph["ltuning.cli"]  # inside a function
    assert "ltuning.card" in graph["ltuning.adapter_io"] and "ltuning" not in graph["ltuning.adapter_io"]
    assert "ltuning.train" in graph["ltuning.recipe"]  # from . import train as training
    assert "ltuning.backbones" in graph["ltuning.adapter_io"]  # under TYPE_CHECKING
    assert "ltuning.model" not in graph["ltuning.prediction"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_ltuning_modules():
    cycles = find_cycles(import_graph())
    assert cycles == [], f"import cycles among ltuning modules: {cycles}"
