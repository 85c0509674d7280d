"""Helpers shared by both tool sets: shaping catalog objects, fingerprints, limits, text tables."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..db.dialects import dialect_class
from ..db.guard import Verdict
from ..db.types import QueryResult, TableDescription, TableInfo
from ..mcp.tools import Tool, ToolError

if TYPE_CHECKING:
    from ..settings import Settings

CLAUDE_MAX_RESULT_CHARS = 500_000  # the most Claude Code accepts via anthropic/maxResultSizeChars


def result_size_meta(settings: Settings) -> dict[str, Any]:
    """Tool `_meta` telling Claude Code how large a result can get, so results between its default
    50,000-character threshold and our byte cap stay inline instead of being spilled to a file."""
    chars = min(CLAUDE_MAX_RESULT_CHARS, max(50_000, settings.max_result_bytes + 20_000))
    return {"anthropic/maxResultSizeChars": chars}


def with_meta(tools: list[Tool], names: set[str], meta: dict[str, Any]) -> list[Tool]:
    """Merge `meta` into the `_meta` of the named tools."""
    for tool in tools:
        if tool.name in names:
            tool.meta = {**(tool.meta or {}), **meta}
    return tools


def not_read_reason(verdict: Verdict) -> str:
    """Why the guard would not run a statement as a read, in words (for refusals outside read-only mode)."""
    message = verdict.message or ""
    message = message.removeprefix("Refused in read-only mode: ").strip()
    return message or "it is not a single read query."


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":")).encode())


def positive_int(arguments: dict[str, Any], name: str, default: int | None) -> int | None:
    """An optional integer argument >= 1 (the MCP layer validates the schema too; handlers are also
    called directly, so they check again)."""
    value = arguments.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise ToolError(f"'{name}' must be a whole number of at least 1 (got {value!r}).", outcome="invalid")
    return int(value)


def positive_number(arguments: dict[str, Any], name: str) -> float | None:
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ToolError(f"'{name}' must be a number greater than 0 (got {value!r}).", outcome="invalid")
    return float(value)


def required_str(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"'{name}' is required and must be a non-empty string.", outcome="invalid")
    return value


def table_info_dict(table: TableInfo) -> dict[str, Any]:
    return {
        "schema": table.schema,
        "name": table.name,
        "qualified_name": table.qualified_name,
        "kind": table.kind,
        "row_estimate": table.row_estimate,
    }


def description_dict(description: TableDescription) -> dict[str, Any]:
    return {
        **table_info_dict(description.table),
        "columns": [
            {
                "name": c.name,
                "type": c.type,
                "nullable": c.nullable,
                "default": c.default,
                "primary_key": c.primary_key,
                **({"flags": list(c.flags)} if c.flags else {}),
            }
            for c in description.columns
        ],
        "primary_key": list(description.primary_key),
        "foreign_keys": [
            {
                "name": fk.name,
                "columns": list(fk.columns),
                "references_table": fk.references_table,
                "references_columns": list(fk.references_columns),
            }
            for fk in description.foreign_keys
        ],
        "indexes": [{"name": ix.name, "columns": list(ix.columns), "unique": ix.unique} for ix in description.indexes],
    }


def truncation_note(result: QueryResult, dialect: str, *, sample: bool = False) -> str | None:
    """What the model should do next when a result was cut (it otherwise tends to assume it saw everything)."""
    if not result.truncated:
        return None
    if result.truncated_reason == "max_bytes" and result.too_long_column:
        why = (
            f"a value of column {result.too_long_column} alone is larger than the size limit, so the result "
            f"stops after {result.row_count} rows"
        )
        how = (
            f"leave {result.too_long_column} out, or select a part of it (a substring, its length) instead of "
            "the whole value"
        )
    elif result.truncated_reason == "max_bytes":
        why = f"the result reached the size limit after {result.row_count} rows"
        how = "select fewer or narrower columns (avoid large text/binary columns), filter with WHERE, or aggregate"
    else:
        why = f"only the first {result.row_count} rows are shown"
        how = "filter with WHERE, aggregate with GROUP BY/COUNT, or page with ORDER BY plus a key range"
    if sample:
        return f"Result truncated: {why}. Use execute_sql with a WHERE clause to look at specific rows."
    limit = dialect_class(dialect).limit_syntax
    return f"Result truncated: {why}. To see what you need, {how}; use {limit} to ask for fewer rows on purpose."


def render_value(value: Any, limit: int = 200) -> str:
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A plain pipe table: readable by a model and by a person, and cheap to build."""
    lines = [" | ".join(render_value(c) for c in columns), " | ".join("---" for _ in columns)]
    lines.extend(" | ".join(render_value(v) for v in row) for row in rows)
    return "\n".join(lines)
