"""Backend dialects: SQL Server (primary), PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

from .base import Dialect
from .mssql import MssqlDialect
from .postgres import PostgresDialect
from .sqlite import SqliteDialect

DIALECTS: dict[str, type[Dialect]] = {
    "mssql": MssqlDialect,
    "postgres": PostgresDialect,
    "sqlite": SqliteDialect,
}


def get_dialect(settings: Any) -> Dialect:
    return DIALECTS[str(settings.db_backend)](settings)


__all__ = ["DIALECTS", "Dialect", "MssqlDialect", "PostgresDialect", "SqliteDialect", "get_dialect"]
