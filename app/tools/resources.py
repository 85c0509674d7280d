"""MCP resources for the database catalog: an overview and one description per table or view.

URIs (percent-encoded segments; SQLite has no schemas, so its tables use the placeholder schema `main`):

    mssql://overview                         Markdown: dialect, every table/view with kind and row estimate
    mssql://overview.json                    the same as JSON
    mssql://tables/{schema}/{table}          Markdown: columns, types, keys, foreign keys, indexes, rows
    mssql://tables/{schema}/{table}.json     the same as JSON (describe_table's shape)

resources/list names the two overviews and the Markdown description of every table (the JSON twin is
reachable through its template, so a menu lists each table once). Everything is read through
Database.list_tables / describe_table: the same catalog cache, pool, time limit and caps as the tools.
watch_catalog (started by app.web) turns catalog changes into list_changed / updated notifications.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

import structlog

from ..core import Principal
from ..db.dialects import dialect_class
from ..db.types import DatabaseError, TableDescription, TableInfo
from ..mcp.resources import Resource, ResourceContents, ResourceNotFound, ResourceTemplate
from .common import description_dict, json_size, render_value, table_info_dict

if TYPE_CHECKING:
    from ..db.database import Database
    from ..settings import Settings

log = structlog.get_logger(__name__)

SCHEME = "mssql://"
OVERVIEW_URI = f"{SCHEME}overview"
OVERVIEW_JSON_URI = f"{SCHEME}overview.json"
TABLES_PREFIX = f"{SCHEME}tables/"
TABLE_TEMPLATE = f"{TABLES_PREFIX}{{schema}}/{{table}}"
TABLE_JSON_TEMPLATE = f"{TABLES_PREFIX}{{schema}}/{{table}}.json"
NO_SCHEMA = "main"  # the schema segment for backends without schemas (SQLite)
CATALOG_TTL_MS = 30_000  # Database caches the catalog for 30 s; clients may reuse answers as long
CATALOG_WATCH_SECONDS = 60.0  # how often the catalog and subscribed resources are compared for notifications
MAX_WATCHED_RESOURCES = 200  # subscribed resources re-read per round (one catalog query each)
MARKDOWN, JSON_TYPE = "text/markdown", "application/json"


def table_uri(table: TableInfo, *, as_json: bool = False) -> str:
    schema = table.schema or NO_SCHEMA
    return f"{TABLES_PREFIX}{quote(schema, safe='')}/{quote(table.name, safe='')}" + (".json" if as_json else "")


def catalog_fingerprint(tables: Sequence[TableInfo]) -> tuple[tuple[str, str, str], ...]:
    """What resources/list shows of the catalog (row estimates change too often to count)."""
    return tuple(sorted((t.schema or "", t.name, t.kind) for t in tables))


class DatabaseResources:
    """A ResourceProvider (app.mcp.resources) over one Database."""

    ttl_ms = CATALOG_TTL_MS
    subscribable = True  # watch_catalog re-reads subscribed resources and reports real changes

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    # -- listing ------------------------------------------------------------------------------------
    async def _tables(self, caller: Principal | None) -> list[TableInfo]:
        """The tables `caller` may read (every table for the service itself: caller None)."""
        tables = await self.database.list_tables(principal=caller)
        return sorted(tables, key=lambda t: ((t.schema or "").lower(), t.name.lower(), t.name))

    async def list_resources(self, *, caller: Principal | None = None) -> list[Resource]:
        label = self.database.dialect.label
        out = [
            Resource(
                OVERVIEW_URI,
                "overview",
                "Database overview",
                f"Every table and view of this {label} database with its kind and row estimate.",
                MARKDOWN,
            ),
            Resource(
                OVERVIEW_JSON_URI,
                "overview.json",
                "Database overview (JSON)",
                "The database overview as JSON.",
                JSON_TYPE,
            ),
        ]
        for table in await self._tables(caller):
            rows = f", about {table.row_estimate:,} rows" if table.row_estimate is not None else ""
            out.append(
                Resource(
                    table_uri(table),
                    table.qualified_name,
                    f"{table.qualified_name} ({table.kind})",
                    f"{table.kind.capitalize()} {table.qualified_name}{rows}: columns, types, keys "
                    f"and indexes. JSON: {table_uri(table, as_json=True)}",
                    MARKDOWN,
                )
            )
        return out

    def list_templates(self) -> list[ResourceTemplate]:
        return [
            ResourceTemplate(
                TABLE_TEMPLATE,
                "table",
                "Table or view description",
                "Columns, types, primary and foreign keys, indexes and row estimate of one table "
                f"or view, as Markdown. Use schema '{NO_SCHEMA}' on SQLite.",
                MARKDOWN,
            ),
            ResourceTemplate(
                TABLE_JSON_TEMPLATE,
                "table.json",
                "Table or view description (JSON)",
                "The same description as JSON (the describe_table tool's shape).",
                JSON_TYPE,
            ),
        ]

    # -- reading ------------------------------------------------------------------------------------
    async def read(self, uri: str, *, caller: Principal | None = None) -> list[ResourceContents]:
        if uri == OVERVIEW_URI:
            return [ResourceContents(uri, MARKDOWN, self._overview_markdown(await self._tables(caller)))]
        if uri == OVERVIEW_JSON_URI:
            return [
                ResourceContents(
                    uri,
                    JSON_TYPE,
                    json.dumps(self._overview_json(await self._tables(caller)), ensure_ascii=False, default=str),
                )
            ]
        table, as_json = await self._table_for(uri, caller)  # a table the caller may not read is not found
        description = await self.database.describe_table(table, principal=caller)
        if as_json:
            text = json.dumps({**description_dict(description), "uri": uri}, ensure_ascii=False, default=str)
            return [ResourceContents(uri, JSON_TYPE, text)]
        return [ResourceContents(uri, MARKDOWN, table_markdown(description, self.database.dialect_name))]

    async def _table_for(self, uri: str, caller: Principal | None) -> tuple[TableInfo, bool]:
        if not uri.startswith(TABLES_PREFIX):
            raise ResourceNotFound(uri)
        parts = uri[len(TABLES_PREFIX) :].split("/")
        if len(parts) != 2 or not all(parts):
            raise ResourceNotFound(uri, f"Resource not found: {uri} (expected {TABLE_TEMPLATE})")
        schema, name = unquote(parts[0]), unquote(parts[1])
        tables = await self._tables(caller)
        table = _find(tables, schema, name)
        if table is not None:
            return table, False
        if name.endswith(".json"):
            table = _find(tables, schema, name[: -len(".json")])
            if table is not None:
                return table, True
        raise ResourceNotFound(uri, f"Resource not found: no table or view {name!r} in schema {schema!r}")

    def _overview_json(self, tables: list[TableInfo]) -> dict[str, Any]:
        budget, items = self.settings.max_result_bytes, []
        for table in tables:
            item = {**table_info_dict(table), "uri": table_uri(table)}
            budget -= json_size(item) + 1
            if budget < 0:  # thousands of tables: stay inside the result cap like list_tables does
                break
            items.append(item)
        out: dict[str, Any] = {
            "dialect": self.database.dialect_name,
            "dialect_label": self.database.dialect.label,
            "table_count": sum(t.kind == "table" for t in tables),
            "view_count": sum(t.kind == "view" for t in tables),
            "tables": items,
            "truncated": len(items) < len(tables),
        }
        return out

    def _overview_markdown(self, tables: list[TableInfo]) -> str:
        overview = self._overview_json(tables)
        label = overview["dialect_label"] or overview["dialect"]
        lines = [
            f"# Database overview ({label})",
            "",
            f"{overview['table_count']} tables and {overview['view_count']} views. Read "
            f"`{TABLE_TEMPLATE}` for one table's columns, keys and indexes.",
            "",
            "| Name | Kind | Rows (estimate) |",
            "| --- | --- | --- |",
        ]
        for item in overview["tables"]:
            rows = f"{item['row_estimate']:,}" if item["row_estimate"] is not None else "?"
            lines.append(f"| {render_value(item['qualified_name'])} | {item['kind']} | {rows} |")
        if overview["truncated"]:
            lines += [
                "",
                f"Only {len(overview['tables'])} of {len(tables)} are listed (size limit); use the "
                "list_tables tool with a filter for the rest.",
            ]
        return "\n".join(lines) + "\n"

    # -- completions ----------------------------------------------------------------------------------
    async def complete(
        self,
        uri_template: str,
        argument: str,
        value: str,
        context: Mapping[str, str],
        *,
        caller: Principal | None = None,
    ) -> list[str]:
        tables = await self._tables(caller)
        if argument == "schema":
            return sorted({t.schema or NO_SCHEMA for t in tables})
        if argument == "table":
            schema = context.get("schema")
            return [t.name for t in tables if not schema or (t.schema or NO_SCHEMA).casefold() == schema.casefold()]
        return []


def _find(tables: list[TableInfo], schema: str, name: str) -> TableInfo | None:
    def schema_of(table: TableInfo) -> str:
        return table.schema or NO_SCHEMA

    for table in tables:
        if schema_of(table) == schema and table.name == name:
            return table
    folded = [
        t for t in tables if schema_of(t).casefold() == schema.casefold() and t.name.casefold() == name.casefold()
    ]
    return folded[0] if len(folded) == 1 else None


def table_markdown(description: TableDescription, dialect: str) -> str:
    table = description.table
    rows = f"about {table.row_estimate:,} rows (estimate)" if table.row_estimate is not None else "row count unknown"
    lines = [
        f"# {table.kind.capitalize()} {table.qualified_name}",
        "",
        f"{dialect_class(dialect).label} {table.kind}, {rows}, {len(description.columns)} columns.",
        "",
        "| Column | Type | Nullable | Default | Primary key |",
        "| --- | --- | --- | --- | --- |",
    ]
    for column in description.columns:
        default = render_value(column.default) if column.default is not None else ""
        lines.append(
            f"| {render_value(column.name)} | {render_value(column.type)} | "
            f"{'yes' if column.nullable else 'no'} | {default} | {'yes' if column.primary_key else ''} |"
        )
    if description.primary_key:
        lines += ["", f"Primary key: ({', '.join(description.primary_key)})"]
    if description.foreign_keys:
        lines += ["", "## Foreign keys", ""]
        lines += [
            f"- ({', '.join(fk.columns)}) references {fk.references_table} "
            f"({', '.join(fk.references_columns)})" + (f" — {fk.name}" if fk.name else "")
            for fk in description.foreign_keys
        ]
    if description.indexes:
        lines += ["", "## Indexes", ""]
        lines += [
            f"- {ix.name}: ({', '.join(ix.columns)})" + (" unique" if ix.unique else "") for ix in description.indexes
        ]
    return "\n".join(lines) + "\n"


class CatalogListener(Protocol):
    """What the watcher tells (McpServer): the list changed, one resource changed, who listens to what."""

    def resource_list_changed(self) -> int: ...

    def resource_updated(self, uri: str) -> int: ...

    def subscribed_uris(self) -> set[str]: ...


async def watch_catalog(
    resources: DatabaseResources, listeners: Sequence[CatalogListener], interval_seconds: float
) -> None:
    """Every `interval_seconds`: compare the (cached) table list and tell listeners when tables or views
    come or go (notifications/resources/list_changed); read every subscribed resource again and tell its
    subscribers when its content changed (notifications/resources/updated).

    Runs until cancelled; a database that is down is simply tried again at the next interval. At most
    MAX_WATCHED_RESOURCES subscribed resources are read per round (McpServer caps subscriptions too).
    """
    seen: tuple[tuple[str, str, str], ...] | None = None
    contents: dict[str, str] = {}  # uri -> digest of its last content
    while True:
        # Sleep first: the first catalog read waits until the service has been up a while, so start-up (and a
        # short-lived app, as in tests) never races a catalog query against shutting the pool down.
        await asyncio.sleep(interval_seconds)
        current: tuple[tuple[str, str, str], ...] | None
        try:
            current = catalog_fingerprint(await resources.database.list_tables())
        except DatabaseError:
            current = seen
        if seen is not None and current != seen:
            log.info("catalog_changed", tables=len(current or ()))
            for listener in listeners:
                listener.resource_list_changed()
        seen = current
        watched = sorted(set().union(*(listener.subscribed_uris() for listener in listeners)))
        contents = {uri: digest for uri, digest in contents.items() if uri in watched}
        for uri in watched[:MAX_WATCHED_RESOURCES]:
            digest = await _digest(resources, uri)
            if digest is None:
                continue
            if uri in contents and contents[uri] != digest:
                log.info("resource_changed", uri=uri)
                for listener in listeners:
                    listener.resource_updated(uri)
            contents[uri] = digest


async def _digest(resources: DatabaseResources, uri: str) -> str | None:
    """A digest of what resources/read returns for `uri` now; a vanished table reads as its own digest."""
    try:
        items = await resources.read(uri)
    except ResourceNotFound:
        return "gone"
    except DatabaseError:
        return None  # cannot tell now; try again next round
    return hashlib.sha256("\0".join(item.text or "" for item in items).encode()).hexdigest()
