"""Imports go one way: each layer imports only those beneath it, and no module imports
one that imports it back, at the top, inside a function or for types."""

from __future__ import annotations

import ast
from pathlib import Path

import eidetica

PACKAGE = Path(eidetica.__file__).parent

BENEATH = {
    "eidetica.protocol": {"eidetica.errors", "eidetica.protocol"},
    "eidetica.storage": {"eidetica.errors", "eidetica.protocol", "eidetica.storage"},
}
"""What each lower layer may import of ours."""

TYPED_BACK_REFERENCES = {("eidetica.storage.tree", "eidetica.storage.instance")}
"""Imports for types only that close a cycle, each for a reason: a Tree's ``instance``
is its node, typed as such for users (``tree.instance.changed()``)."""


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> dict[str, bool]:
    """The modules of ours that ``path`` imports, each with whether it is for types
    only (under ``if TYPE_CHECKING``); imports inside functions count like any other."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(inner) for inner in ast.walk(node))
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("eidetica"):
                found[name] = found.get(name, True) and id(node) in typing_only
    return found


def _graph() -> dict[str, dict[str, bool]]:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {imported: typed for imported, typed in _imports(path).items() if imported in modules}
        for name, path in modules.items()
    }


def test_lower_layers_import_nothing_above_them() -> None:
    upward = [
        (module, imported)
        for module, imports in _graph().items()
        for layer, allowed in BENEATH.items()
        if module.startswith(layer)
        for imported in imports
        if not any(imported == ok or imported.startswith(f"{ok}.") for ok in allowed)
    ]
    assert upward == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    edges = {
        module: {
            imported
            for imported, typed in imports.items()
            if imported != module and not (typed and (module, imported) in TYPED_BACK_REFERENCES)
        }
        for module, imports in graph.items()
    }
    cycles = []
    for start in sorted(edges):
        path = [start]
        seen = {start}
        todo = [iter(sorted(edges[start]))]
        while todo:
            following = next(todo[-1], None)
            if following is None:
                todo.pop()
                seen.discard(path.pop())
                continue
            if following == start:
                cycles.append(" -> ".join([*path, start]))
            elif following not in seen and following > start:
                path.append(following)
                seen.add(following)
                todo.append(iter(sorted(edges.get(following, ()))))
    assert cycles == []
