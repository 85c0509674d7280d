"""The Claude tool set: list_tables, describe_table, execute_sql, get_table_sample."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from ..db.dialects import dialect_class
from ..db.types import QueryResult
from ..mcp.tools import Tool, ToolContext, ToolError
from ..obs.audit import fingerprint_sql
from .common import (
    description_dict,
    json_size,
    not_read_reason,
    positive_int,
    positive_number,
    required_str,
    result_size_meta,
    table_info_dict,
    truncation_note,
    with_meta,
)
from .resources import NO_SCHEMA

if TYPE_CHECKING:
    from ..db.database import Database
    from ..settings import Settings

log = structlog.get_logger(__name__)

READER_REFUSAL = (
    "Refused: your account has the reader role, so only read queries run. This statement is not one: {why} "
    "Run a single SELECT instead, or ask an administrator for the writer role to change data."
)

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}

TABLE_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "schema": _NULLABLE_STR,
        "name": {"type": "string"},
        "qualified_name": {"type": "string"},
        "kind": {"type": "string", "enum": ["table", "view"]},
        "row_estimate": _NULLABLE_INT,
    },
    "required": ["schema", "name", "qualified_name", "kind", "row_estimate"],
}

QUERY_RESULT_PROPERTIES: dict[str, Any] = {
    "columns": {"type": "array", "items": {"type": "string"}},
    "rows": {"type": "array", "items": {"type": "array"}},
    "row_count": {"type": "integer", "minimum": 0},
    "truncated": {"type": "boolean"},
    "truncated_reason": {"type": "string", "enum": ["max_rows", "max_bytes"]},
    "rows_affected": {"type": "integer"},
    "elapsed_ms": {"type": "number"},
    "note": {"type": "string"},
}


def _result_payload(result: QueryResult, note: str | None) -> dict[str, Any]:
    out = result.as_dict()
    if note:
        out["note"] = note
    return out


class ClaudeTools:
    """Handlers bound to one database and one settings snapshot."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self.dialect = settings.db_backend

    # --- list_tables ---------------------------------------------------------------------
    async def list_tables(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        schema = arguments.get("schema")
        contains = arguments.get("name_contains")
        tables = await self.database.list_tables(principal=ctx.principal)  # only what the role may read
        schema_note = None
        if schema:
            # SQLite has no schemas: its tables answer to `main`, the name its resources URIs use.
            in_schema = [t for t in tables if (t.schema or NO_SCHEMA).lower() == schema.lower()]
            if not in_schema and tables:
                known = sorted({t.schema or NO_SCHEMA for t in tables}, key=str.lower)
                schema_note = f"No tables in schema {schema!r}. Schemas here: {', '.join(known[:50])}."
            tables = in_schema
        if contains:
            tables = [t for t in tables if contains.lower() in t.name.lower()]
        tables = sorted(tables, key=lambda t: ((t.schema or "").lower(), t.name.lower()))
        budget, items, truncated = self.settings.max_result_bytes, [], False
        for table in tables:
            item = table_info_dict(table)
            budget -= json_size(item) + 1
            if budget < 0:  # thousands of tables: cut rather than blow the client's result limit
                truncated = True
                break
            items.append(item)
        out: dict[str, Any] = {"tables": items, "count": len(items), "truncated": truncated}
        if truncated:
            out["note"] = (
                f"Only {len(items)} of {len(tables)} tables are listed. "
                "Pass 'schema' or 'name_contains' to narrow the list."
            )
        elif schema_note:
            out["note"] = schema_note
        ctx.audit.update(
            fingerprint=fingerprint_sql(f"list_tables {schema or ''} {contains or ''}"),
            rows=len(items),
            bytes=json_size(items),
        )
        return out

    # --- describe_table ------------------------------------------------------------------
    async def describe_table(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        name = required_str(arguments, "table_name")
        description = await self.database.describe_table(name.strip(), principal=ctx.principal)
        out = description_dict(description)
        ctx.audit.update(
            fingerprint=fingerprint_sql(f"describe_table {description.table.qualified_name}"),
            table=description.table.qualified_name,
            tables=[description.table.qualified_name],
            rows=len(out["columns"]),
            bytes=json_size(out),
        )
        return out

    # --- execute_sql ---------------------------------------------------------------------
    async def execute_sql(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        sql = required_str(arguments, "query")
        max_rows = positive_int(arguments, "max_rows", None)
        timeout = positive_number(arguments, "timeout_seconds")
        # A call can only lower the caps; Database applies them (one place for the row and time caps).
        audit = ctx.audit
        audit["fingerprint"] = fingerprint_sql(sql)
        audit["sql"] = sql

        verdict = self.database.verdict(sql)
        # Only a writer, while writes are enabled, holds a Writer; everything else can only reach read().
        writer = None if verdict.allowed else self.database.writer_for(ctx.principal)
        if writer is not None:
            log.info("tool.write", user=ctx.principal.username, fingerprint=audit["fingerprint"])
            result = await writer.write(sql, max_rows=max_rows, timeout=timeout)
        elif verdict.allowed or self.settings.read_only_mode:
            # In read-only mode read() refuses what the guard does not accept, with the guard's reason.
            result = await self.database.read(sql, principal=ctx.principal, max_rows=max_rows, timeout=timeout)
        else:
            raise ToolError(READER_REFUSAL.format(why=not_read_reason(verdict)), outcome="refused")
        audit["tables"] = list(result.tables)
        audit["rows"] = result.row_count if result.rows_affected is None else result.rows_affected
        audit["bytes"] = result.result_bytes
        audit["truncated"] = result.truncated
        if result.truncated_reason:
            audit["truncated_reason"] = result.truncated_reason
        out = result.as_dict()
        if result.truncated:  # only a cut result has a note
            note = truncation_note(result, self.dialect)
            if note:
                out["note"] = note
        return out

    # --- get_table_sample ----------------------------------------------------------------
    async def get_table_sample(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        name = required_str(arguments, "table_name")
        asked = positive_int(arguments, "limit", 10) or 10
        cap = self.settings.sample_max_rows
        limit = self.database.sample_limit(asked)
        table = await self.database.resolve_table(name.strip(), principal=ctx.principal)
        result = await self.database.sample(table.qualified_name, limit, principal=ctx.principal)
        note = truncation_note(result, self.dialect, sample=True)
        if asked > cap:
            note = (
                f"limit lowered from {asked} to the maximum of {cap} rows. "
                "Use execute_sql for more rows or specific ones." + (f" {note}" if note else "")
            )
        out = {"table": table.qualified_name, **_result_payload(result, note)}
        ctx.audit.update(
            fingerprint=fingerprint_sql(f"get_table_sample {table.qualified_name}"),
            table=table.qualified_name,
            tables=[table.qualified_name],
            rows=result.row_count,
            bytes=result.result_bytes,
            truncated=result.truncated,
        )
        return out


def build_claude_tools(database: Database, settings: Settings) -> list[Tool]:
    tools = ClaudeTools(database, settings)
    backend = dialect_class(settings.db_backend)
    dialect, limit_word = backend.label, backend.limit_syntax
    read_only = settings.read_only_mode
    read_annotations = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
    if read_only:
        sql_annotations = dict(read_annotations)
        mode = (
            "The server is in read-only mode: only a single read query is accepted (SELECT, WITH ... SELECT, "
            "set operations, VALUES); anything else is refused with the reason."
        )
    else:
        sql_annotations = {
            "readOnlyHint": False,
            "destructiveHint": True,
            "idempotentHint": False,
            "openWorldHint": False,
        }
        mode = (
            "Writes are enabled: INSERT/UPDATE/DELETE/DDL run in a transaction committed only on success, "
            "and only for accounts with the writer role. Double-check any statement that changes data."
        )

    schema_names = backend.schema_words
    tools_list = [
        Tool(
            name="list_tables",
            title="List tables",
            description=(
                f"List the tables and views of the {dialect} database: schema, name, kind (table or view) and an "
                "approximate row count where the database keeps one cheaply (null otherwise). Start here to find "
                "what exists, then use describe_table for columns. Optional filters: 'schema' (exact, "
                f"case-insensitive; {schema_names}) and 'name_contains' (substring, case-insensitive)."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 256,
                        "description": f"Only list objects in this schema ({schema_names}).",
                    },
                    "name_contains": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 256,
                        "description": "Only list objects whose name contains this text.",
                    },
                },
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "tables": {"type": "array", "items": TABLE_INFO_SCHEMA},
                    "count": {"type": "integer"},
                    "truncated": {"type": "boolean"},
                    "note": {"type": "string"},
                },
                "required": ["tables", "count", "truncated"],
            },
            annotations=dict(read_annotations),
            handler=tools.list_tables,
        ),
        Tool(
            name="describe_table",
            title="Describe a table",
            description=(
                "Show the structure of one table or view: columns with type, nullability, default and primary-key "
                "flag, the primary key, foreign keys (what each references), and indexes. 'table_name' may be "
                "schema-qualified (dbo.Orders) or not, and is matched case-insensitively; an unknown name returns "
                "an error listing the closest names. Use this before writing SQL against a table."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "table_name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 512,
                        "description": "Table or view name, optionally schema.name.",
                    },
                },
                "required": ["table_name"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    **TABLE_INFO_SCHEMA["properties"],
                    "columns": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "type": {"type": "string"},
                                "nullable": {"type": "boolean"},
                                "default": _NULLABLE_STR,
                                "primary_key": {"type": "boolean"},
                                # identity, computed, hidden, generated always ... (SQL Server)
                                "flags": {"type": "array", "items": {"type": "string"}},
                            },
                            "required": ["name", "type", "nullable", "default", "primary_key"],
                        },
                    },
                    "primary_key": {"type": "array", "items": {"type": "string"}},
                    "foreign_keys": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": _NULLABLE_STR,
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "references_table": {"type": "string"},
                                "references_columns": {"type": "array", "items": {"type": "string"}},
                            },
                            "required": ["columns", "references_table", "references_columns"],
                        },
                    },
                    "indexes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "unique": {"type": "boolean"},
                            },
                            "required": ["name", "columns", "unique"],
                        },
                    },
                },
                "required": [*TABLE_INFO_SCHEMA["required"], "columns", "primary_key", "foreign_keys", "indexes"],
            },
            annotations=dict(read_annotations),
            handler=tools.describe_table,
        ),
        Tool(
            name="execute_sql",
            title="Run SQL",
            description=(
                f"Run one SQL statement in the {dialect} dialect and return columns and rows. {mode} "
                f"Limits: at most {settings.max_rows} rows and about {settings.max_result_bytes:,} bytes of row data "
                f"per result, and {settings.query_timeout_seconds:g} s per query; 'max_rows' and 'timeout_seconds' "
                "can lower these (higher values are lowered to the limit). When a result is cut, 'truncated' is true "
                f"and 'note' says how to narrow the query: prefer WHERE filters, aggregates and {limit_word} over "
                "fetching whole tables. Values: dates/times as ISO 8601 text, decimals as exact text, binary as "
                "0x-prefixed hex."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 100_000,
                        "description": f"One SQL statement ({dialect}).",
                    },
                    "max_rows": {
                        "type": "integer",
                        "minimum": 1,
                        "description": f"Return at most this many rows (limit {settings.max_rows}).",
                    },
                    "timeout_seconds": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": "Stop the query after this many seconds "
                        f"(limit {settings.query_timeout_seconds:g}).",
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": QUERY_RESULT_PROPERTIES,
                "required": ["columns", "rows", "row_count", "truncated"],
            },
            annotations=sql_annotations,
            handler=tools.execute_sql,
        ),
        Tool(
            name="get_table_sample",
            title="Sample rows of a table",
            description=(
                "Return the first rows of a table or view (no particular order) to see what its data looks like. "
                f"'limit' defaults to 10 and is capped at {settings.sample_max_rows}. For specific rows, filters "
                "or ordering use execute_sql."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "table_name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 512,
                        "description": "Table or view name, optionally schema.name.",
                    },
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "default": 10,
                        "description": f"Number of rows (default 10, at most {settings.sample_max_rows}).",
                    },
                },
                "required": ["table_name"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {"table": {"type": "string"}, **QUERY_RESULT_PROPERTIES},
                "required": ["table", "columns", "rows", "row_count", "truncated"],
            },
            annotations=dict(read_annotations),
            handler=tools.get_table_sample,
        ),
    ]
    return with_meta(tools_list, {"list_tables", "execute_sql", "get_table_sample"}, result_size_meta(settings))
