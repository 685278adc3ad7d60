"""The tree is the map: the import graph of vit_porting, read from the source, has no circle between
modules or between parts (the subpackages and top-level modules), and the family contract imports the
standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vit_porting"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (a function's lazy import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _part(module: str) -> str:
    """vit_porting.<part>: a subpackage, or a top-level module."""
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_through_others():
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _graph().items()}  # parents: packages
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_parts_import_each_other_in_one_direction():
    parts: dict[str, set[str]] = {}
    for module, deps in _graph().items():
        parts.setdefault(_part(module), set()).update(_part(d) for d in deps if _part(d) != _part(module))
    parts.pop("vit_porting", None)  # the package's own __init__ names only its version
    assert _cycle(parts) is None, " -> ".join(_cycle(parts))


def test_the_family_contract_imports_the_standard_library_only():
    contract = ("vit_porting.families.base", "vit_porting.families.spec", "vit_porting.families.presentation")
    for name in contract:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        outside = {m for m in _imports(path) if m.split(".")[0] not in sys.stdlib_module_names
                   and not m.startswith(contract) and m.split(".")[0] not in ("keras", "torch")}
        assert outside == set(), (name, outside)
        frameworks = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.If)
                      and "TYPE_CHECKING" in ast.unparse(node.test)]
        lazily = {m for m in _imports(path) if m.split(".")[0] in ("keras", "torch")}
        assert not lazily or frameworks, (name, lazily)  # annotations only, under TYPE_CHECKING
