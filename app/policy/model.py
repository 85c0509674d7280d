"""The typed access policy: per role, which tables it may read, which columns it may never see, and its caps.

Patterns (all matching is case-insensitive, as the catalog resolves names):
- tables: `table`, `schema.table`, `schema.*`, `*`; `*` inside a part matches any run of characters
  (`tmp_*`). A pattern without a schema matches that table in every schema.
- columns: `[schema.]table.column`, with `*` wildcards in any part (`*.ssn`, `hr.*.*`).

A table without a schema (SQLite) is matched as if its schema were `main`, SQLite's name for it.
A role may read a table when an allow pattern matches it and no deny pattern does (deny wins). Roles the
file does not name get `UNRESTRICTED`: everything, with the global caps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

SCHEMALESS = "main"  # how a table without a schema (SQLite) is matched against schema-qualified patterns


def _part_regex(part: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(piece) for piece in part.split("*")), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class NamePart:
    """One part of a pattern (`dbo`, `Payroll`, `tmp_*`, `*`), matched case-insensitively."""

    text: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _part_regex(self.text))

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.text

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class TablePattern:
    """`table`, `schema.table`, `schema.*` or `*`; `schema` None matches every schema."""

    schema: NamePart | None
    table: NamePart

    def matches(self, schema: str | None, table: str) -> bool:
        if self.schema is not None and not self.schema.matches(schema or SCHEMALESS):
            return False
        return self.table.matches(table)

    def __str__(self) -> str:
        return f"{self.schema.text}.{self.table.text}" if self.schema else self.table.text


@dataclass(frozen=True, slots=True)
class ColumnPattern:
    """`[schema.]table.column`; `schema` None matches every schema."""

    schema: NamePart | None
    table: NamePart
    column: NamePart

    def matches_table(self, schema: str | None, table: str) -> bool:
        """Whether some column of this table could be denied by this pattern."""
        if self.schema is not None and not self.schema.matches(schema or SCHEMALESS):
            return False
        return self.table.matches(table)

    def matches(self, schema: str | None, table: str, column: str) -> bool:
        return self.matches_table(schema, table) and self.column.matches(column)

    def __str__(self) -> str:
        head = f"{self.schema.text}." if self.schema else ""
        return f"{head}{self.table.text}.{self.column.text}"


class NamedTable(Protocol):
    """Anything with a schema and a name: app.db.types.TableInfo, policy.check.CatalogTable."""

    @property
    def schema(self) -> str | None: ...

    @property
    def name(self) -> str: ...


class NamedColumn(Protocol):
    @property
    def name(self) -> str: ...


TableT = TypeVar("TableT", bound=NamedTable)
ColumnT = TypeVar("ColumnT", bound="NamedColumn | str")


@dataclass(frozen=True, slots=True)
class Caps:
    """The limits a role's reads run with: never above the global ones."""

    max_rows: int
    timeout_seconds: float


ALLOW_EVERYTHING = (TablePattern(None, NamePart("*")),)


@dataclass(frozen=True, slots=True)
class RolePolicy:
    name: str
    allow_tables: tuple[TablePattern, ...] = ALLOW_EVERYTHING
    deny_tables: tuple[TablePattern, ...] = ()
    deny_columns: tuple[ColumnPattern, ...] = ()
    max_rows: int | None = None
    timeout_seconds: float | None = None

    @property
    def restricts(self) -> bool:
        """False when this role may read everything (the check can be skipped)."""
        allows_all = any(p.schema is None and p.table.text == "*" for p in self.allow_tables)
        return bool(self.deny_tables or self.deny_columns) or not allows_all

    def table_denial(self, schema: str | None, table: str) -> str | None:
        """Why this role may not read the table (the pattern that denies it), or None if it may."""
        for pattern in self.deny_tables:
            if pattern.matches(schema, table):
                return f'denied by "{pattern}"'
        if not any(pattern.matches(schema, table) for pattern in self.allow_tables):
            return "not in the tables this role may read"
        return None

    def may_read_table(self, schema: str | None, table: str) -> bool:
        return self.table_denial(schema, table) is None

    def column_denied(self, schema: str | None, table: str, column: str) -> bool:
        return any(pattern.matches(schema, table, column) for pattern in self.deny_columns)

    def may_deny_columns_of(self, schema: str | None, table: str) -> bool:
        """Whether any column pattern names this table (for tables whose columns are unknown)."""
        return any(pattern.matches_table(schema, table) for pattern in self.deny_columns)

    def denied_columns(self, schema: str | None, table: str, columns: Iterable[str]) -> list[str]:
        return [c for c in columns if self.column_denied(schema, table, c)]

    def visible_tables(self, tables: Iterable[TableT]) -> list[TableT]:
        return [t for t in tables if self.may_read_table(t.schema, t.name)]

    def visible_columns(self, table: NamedTable, columns: Iterable[ColumnT]) -> list[ColumnT]:
        return [c for c in columns if not self.column_denied(table.schema, table.name, _column_name(c))]

    def caps(self, global_max_rows: int, global_timeout_seconds: float) -> Caps:
        """The effective caps: the role's own where it has them, never above the global ones."""
        rows = global_max_rows if self.max_rows is None else min(self.max_rows, global_max_rows)
        timeout = (
            global_timeout_seconds
            if self.timeout_seconds is None
            else min(self.timeout_seconds, global_timeout_seconds)
        )
        return Caps(rows, timeout)


def _column_name(column: NamedColumn | str) -> str:
    return column if isinstance(column, str) else column.name


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Every role's policy; `source` names where it came from (a file path, or "none")."""

    roles: Mapping[str, RolePolicy] = field(default_factory=dict)
    source: str = "none"

    def role(self, name: str) -> RolePolicy:
        """The policy of a role; roles without an entry may read everything with the global caps."""
        found = self.roles.get(name) or self.roles.get(name.lower())
        return found if found is not None else RolePolicy(name)


UNRESTRICTED = AccessPolicy()


def visible_tables(role: RolePolicy, tables: Iterable[TableT]) -> list[TableT]:
    """The tables (TableInfo or anything with schema and name) a role may read, in their order."""
    return role.visible_tables(tables)


def visible_columns(role: RolePolicy, table: NamedTable, columns: Iterable[ColumnT]) -> list[ColumnT]:
    """The columns (names, or app.db.types.Column) of `table` a role may see, in their order."""
    return role.visible_columns(table, columns)


def effective_caps(role: RolePolicy, global_max_rows: int, global_timeout_seconds: float) -> Caps:
    return role.caps(global_max_rows, global_timeout_seconds)
