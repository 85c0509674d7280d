"""Backend dialects: SQL Server (primary), PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

from .base import Dialect, ServerCutDialect
from .mssql import MssqlDialect
from .postgres import PostgresDialect
from .sqlite import SqliteDialect

DIALECTS: dict[str, type[Dialect]] = {
    "mssql": MssqlDialect,
    "postgres": PostgresDialect,
    "sqlite": SqliteDialect,
}


def get_dialect(settings: Any) -> Dialect:
    return dialect_class(settings.db_backend)(settings)


def dialect_class(backend: str) -> type[Dialect]:
    """The dialect of a DB_BACKEND value ("mssql", "postgres", "sqlite"): its names, labels and limit syntax
    are class attributes, readable without settings or a connection."""
    return DIALECTS[backend]


__all__ = [
    "DIALECTS",
    "Dialect",
    "MssqlDialect",
    "PostgresDialect",
    "ServerCutDialect",
    "SqliteDialect",
    "dialect_class",
    "get_dialect",
]
