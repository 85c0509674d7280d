"""The import graph of app/: the layering the README's Architecture section draws, enforced.

Read from the source with `ast` (nothing is imported), so a rule breaks here before it breaks at run time.
Imports inside functions count like any other; imports under `if TYPE_CHECKING:` count for layering (a
type is a dependency too) but not for cycles (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

APP = Path(__file__).resolve().parent.parent / "app"


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. app.mcp.server
    target: str  # imported module or name, e.g. app.core or aiohttp.web
    line: int
    type_only: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(APP.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def _imports(module: str, path: Path) -> Iterator[Import]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import x` imports the submodule x when there is one, else a name of the package
                submodule = f"{target}.{alias.name}"
                yield Import(module, submodule if submodule in MODULES else target, node.lineno, type_only)


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(sources: str, forbidden: tuple[str, ...], *, except_in: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{MODULES[imp.source].relative_to(APP.parent)}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if _within(imp.source, sources)
        and not any(_within(imp.source, allowed) for allowed in except_in)
        and any(_within(imp.target, bad) for bad in forbidden)
    ]


def test_the_graph_sees_the_whole_app() -> None:
    # A guard against a parser that silently finds nothing: these edges exist today.
    assert {"app.web", "app.core", "app.db.database", "app.mcp.server"} <= set(MODULES)
    assert any(imp.source == "app.web" and imp.target == "app.db.database" for imp in IMPORTS)


def test_protocol_core_does_not_import_aiohttp() -> None:
    """Only the transports speak HTTP; the MCP protocol core is plain Python."""
    assert _violations("app.mcp", ("aiohttp",), except_in=("app.mcp.transports",)) == []


def test_protocol_core_knows_nothing_of_database_auth_or_tools() -> None:
    assert _violations("app.mcp", ("app.db", "app.auth", "app.tools", "app.web", "pyodbc")) == []


def test_database_imports_nothing_from_the_layers_above() -> None:
    assert _violations("app.db", ("app.auth", "app.tools", "app.mcp", "app.web", "aiohttp")) == []


def test_observability_imports_nothing_from_the_areas_it_observes() -> None:
    assert _violations("app.obs", ("app.auth", "app.db", "app.mcp", "app.tools")) == []


# What the tools may know of app.db (an allowlist): the Database object, its result and error types, the
# guard's verdict and a statement's shape, and the dialect registry's class-level knowledge (names, labels).
# Never a connection, the pool, the executor or a backend module.
TOOLS_MAY_IMPORT_FROM_DB = frozenset(
    {"app.db", "app.db.database", "app.db.types", "app.db.guard", "app.db.shape", "app.db.dialects"}
)


def test_tools_reach_the_database_only_through_database() -> None:
    reached = [
        f"{MODULES[imp.source].relative_to(APP.parent)}:{imp.line} imports {imp.target}"
        for imp in IMPORTS
        if _within(imp.source, "app.tools")
        and (
            _within(imp.target, "pyodbc")
            or (_within(imp.target, "app.db") and imp.target not in TOOLS_MAY_IMPORT_FROM_DB)
        )
    ]
    assert reached == []


def test_auth_never_touches_the_pool() -> None:
    assert _violations("app.auth", ("pyodbc", "app.db", "app.tools", "app.mcp")) == []


def test_the_vocabulary_depends_on_nothing_in_app() -> None:
    """app.core is what every area may import, so it imports none of them."""
    assert [imp for imp in IMPORTS if imp.source == "app.core" and _within(imp.target, "app")] == []


def _runs(source: str, target: str) -> set[str]:
    """The modules an import of `target` from `source` executes: the target, and its parent packages'
    `__init__` files that are not already `source`'s own (importing app.auth.store runs app/auth/__init__.py
    first, which may import more)."""
    parts = target.split(".")
    ran = {".".join(parts[:n]) for n in range(2, len(parts) + 1)}
    own = {".".join(source.split(".")[:n]) for n in range(1, len(source.split(".")) + 1)}
    return {module for module in ran - own if module in MODULES and module != source}


def _cycles() -> list[list[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in IMPORTS:
        if not imp.type_only:
            graph[imp.source] |= _runs(imp.source, imp.target)
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_anywhere_in_app() -> None:
    """Lazy imports inside functions count: hiding a cycle behind one is still a cycle. So do parent
    packages: importing a submodule runs its package's `__init__` first."""
    assert _cycles() == []


def test_a_cycle_through_a_package_init_is_seen() -> None:
    """app.state.backend -> app.auth.store ran app/auth/__init__.py, which imported app.auth.state ->
    app.state.backend: a real cycle (an ImportError when app.state.backend was imported first)."""
    assert _runs("app.state.backend", "app.auth.store") == {"app.auth", "app.auth.store"}
    assert _runs("app.auth.state", "app.auth.store") == {"app.auth.store"}
