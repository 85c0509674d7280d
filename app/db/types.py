"""Values and errors shared by the database layer and its callers (tools, health, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core import SafeError


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]  # JSON-ready values (see app.db.serialize)
    truncated: bool = False
    truncated_reason: str | None = None  # "max_rows" | "max_bytes"
    too_long_column: str | None = None  # with max_bytes: a column whose one value is over the byte cap
    elapsed_ms: float = 0.0
    result_bytes: int = 0
    rows_affected: int | None = None  # writes only
    # The tables the statement reads (qualified names, for the audit line; not part of the tool result).
    tables: tuple[str, ...] = ()

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
        }
        if self.truncated_reason:  # (a result that was not cut, the usual one, has none of these three)
            out["truncated_reason"] = self.truncated_reason
        if self.too_long_column is not None:
            out["too_long_column"] = self.too_long_column
        if self.rows_affected is not None:
            out["rows_affected"] = self.rows_affected
        out["elapsed_ms"] = round(self.elapsed_ms, 2)
        return out


@dataclass
class Column:
    name: str
    type: str
    nullable: bool
    default: str | None = None
    primary_key: bool = False
    # What else a writer or reader should know: "identity", "computed", "hidden", "generated always as row
    # start/end" (SQL Server; other dialects leave it empty).
    flags: list[str] = field(default_factory=list)
    # The built-in type under an alias type, as a CAST target (SQL Server); None where it is `type` itself.
    base_type: str | None = None


@dataclass
class ForeignKey:
    columns: list[str]
    references_table: str  # schema-qualified where the backend has schemas
    references_columns: list[str]
    name: str | None = None


@dataclass
class Index:
    name: str
    columns: list[str]
    unique: bool


@dataclass
class TableInfo:
    schema: str | None
    name: str
    kind: str  # "table" | "view"
    row_estimate: int | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass
class TableDescription:
    table: TableInfo
    columns: list[Column]
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)


class DatabaseError(SafeError):
    """Base for errors a tool turns into an `isError` result; `str()` is safe to show the user."""

    code = "database_error"


class QueryRefused(DatabaseError):
    """The read-only guard refused the statement. `reason` is a short stable label for metrics."""

    code = "refused"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class QueryTimeout(DatabaseError):
    code = "timeout"


class QueryCancelled(DatabaseError):
    code = "cancelled"


class DatabaseBusy(DatabaseError):
    code = "busy"


class DatabaseUnavailable(DatabaseError):
    code = "unavailable"


class QueryFailed(DatabaseError):
    code = "query_failed"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class TableNotFound(DatabaseError):
    code = "not_found"

    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Table or view '{name}' was not found.{hint}")
        self.name = name
        self.suggestions = suggestions
