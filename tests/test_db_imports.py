"""Import rules of the database seam (issue 9), checked over the source (lazy imports included):
tools reach the database only through Database; app/db depends on no area above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports anywhere in it (relative imports resolved)."""
    package = ".".join(path.relative_to(APP.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted((APP / package).rglob("*.py")):
        bad = sorted(m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if bad:
            out[str(path.relative_to(APP.parent))] = bad
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("tools", ("pyodbc", "app.db.pool", "app.db.execute")),  # the database only through Database
        ("db", ("app.auth", "app.tools", "app.mcp", "app.web")),  # the database layer depends on no area above
    ],
)
def test_import_rules(package: str, forbidden: tuple[str, ...]) -> None:
    assert _offenders(package, forbidden) == {}


def test_the_rules_see_relative_and_lazy_imports() -> None:
    assert "app.db.pool.Pool" in _imports(APP / "db" / "database.py")
    assert "app.obs.metrics" in _imports(APP / "db" / "database.py")  # imported inside __init__
