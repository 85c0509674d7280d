"""What differs between SQL Server, PostgreSQL and SQLite, behind one small interface.

A dialect builds the ODBC connection string from settings, prepares each new session (read-only
defaults, server-side time limits), quotes identifiers, builds the few statements the service writes
itself (sample, row by key), and reads the catalog with parameterized SQL. Catalog methods take a
pyodbc cursor and run in a pool worker thread, never on the event loop.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import pyodbc

from ..types import TableDescription, TableInfo

_NEEDS_BRACES = frozenset(";{}=")
_PASSWORD_IN_STRING = re.compile(r"(?i)(?:^|;)\s*(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")


def odbc_value(value: str, *, always: bool = False) -> str:
    """One ODBC connection-string value, wrapped in braces when it could break the string.

    Inside braces a closing brace is written twice ("p}w" -> "{p}}w}"), per the ODBC grammar that
    the Microsoft and psqlODBC drivers implement.
    """
    if always or not value or value != value.strip() or any(ch in _NEEDS_BRACES for ch in value):
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string(pairs: Iterable[tuple[str, str | None]], *, braced: frozenset[str] = frozenset()) -> str:
    """`KEY=value;` pairs; None values are skipped, keys in `braced` are always brace-quoted."""
    out = []
    for key, value in pairs:
        if value is None:
            continue
        out.append(f"{key}={odbc_value(value, always=key in braced)};")
    return "".join(out)


class Dialect(ABC):
    name: ClassVar[str]
    sqlglot: ClassVar[str]
    default_schema: ClassVar[str | None]
    has_schemas: ClassVar[bool] = True
    ping_sql: ClassVar[str] = "SELECT 1"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    # --- connecting ------------------------------------------------------------------------------
    @abstractmethod
    def build_connection_string(self) -> str:
        """The connection string from the backend's settings (ignores ODBC_CONNECTION_STRING)."""

    def connection_string(self) -> str:
        raw = self.settings.odbc_connection_string
        return raw if raw else self.build_connection_string()

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in messages or logs (the raw string and any password in it)."""
        raw = str(self.settings.odbc_connection_string or "")
        if not raw:
            return ()
        found = [raw]
        for match in _PASSWORD_IN_STRING.finditer(raw):
            value = match.group(2)
            if value.startswith("{") and value.endswith("}"):
                value = value[1:-1].replace("}}", "}")
            if value:
                found.append(value)
        return tuple(found)

    def connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": False, "timeout": int(self.settings.db_connect_timeout_seconds)}

    def setup_connection(self, conn: pyodbc.Connection) -> None:  # noqa: B027 - optional hook
        """Per-session set-up right after connecting (runs once per connection, not per query)."""

    @property
    def server_timeout_seconds(self) -> int:
        """The server-side backstop: the settings' cap, rounded up to whole seconds."""
        return max(1, math.ceil(float(self.settings.query_timeout_seconds)))

    def prepare_read(self, sql: str, root: str | None) -> str:
        """The text to run for a read the guard accepted (`root` is the guard's root kind)."""
        return sql

    # --- SQL the service writes itself -----------------------------------------------------------
    @abstractmethod
    def quote_identifier(self, name: str) -> str: ...

    def table_sql(self, table: TableInfo) -> str:
        if table.schema and self.has_schemas:
            return f"{self.quote_identifier(table.schema)}.{self.quote_identifier(table.name)}"
        return self.quote_identifier(table.name)

    def sample_sql(self, table: TableInfo, limit: int) -> str:
        return f"SELECT * FROM {self.table_sql(table)} LIMIT {int(limit)}"

    def row_sql(self, table: TableInfo, columns: Sequence[str]) -> str:
        """SELECT of one row by key columns; values are bound as parameters (`?`)."""
        where = " AND ".join(f"{self.quote_identifier(c)} = ?" for c in columns)
        return f"SELECT * FROM {self.table_sql(table)} WHERE {where} LIMIT 2"

    # --- catalog ---------------------------------------------------------------------------------
    # Catalog query returning (schema, name, kind, row_estimate) rows; dialects without one override list_tables.
    list_tables_sql: str = ""

    def list_tables(self, cursor: pyodbc.Cursor) -> list[TableInfo]:
        cursor.execute(self.list_tables_sql)
        return [TableInfo(schema=str(schema), name=str(name), kind=str(kind),
                          row_estimate=None if estimate is None else int(estimate))
                for schema, name, kind, estimate in cursor.fetchall()]  # catalog rows, bounded by table count

    @abstractmethod
    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription: ...

    def split_name(self, name: str) -> list[str]:
        """'[dbo].[Order Lines]' / '"public"."orders"' / 'main.t' -> its parts, quotes removed."""
        return split_identifier(name)


_CLOSERS = {"[": "]", '"': '"', "`": "`"}


def split_identifier(name: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ch in _CLOSERS:
            close = _CLOSERS[ch]
            i += 1
            while i < n:
                if name[i] == close:
                    if i + 1 < n and name[i + 1] == close:  # doubled closer = literal
                        current.append(close)
                        i += 2
                        continue
                    break
                current.append(name[i])
                i += 1
            i += 1
            continue
        if ch == ".":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current).strip())
    return parts
