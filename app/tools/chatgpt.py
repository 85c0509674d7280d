"""The ChatGPT tool set: `search` and `fetch`, OpenAI's deep-research / connector contract.

search(query) -> {"results": [{"id", "title", "url"}]}
fetch(id)     -> {"id", "title", "text", "url", "metadata"}

The MCP layer sends each dict as one text content (its JSON) plus structuredContent. Ids are
described in app.tools.ids; `url` is `{base_url}/chatgpt/records/{id}`, a page this service
serves (app.tools.records) behind the same bearer token as the ChatGPT MCP endpoint (so a token
issued for /chatgpt/mcp is accepted there).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from ..core import RECORDS_SURFACE, Principal
from ..db import guard
from ..db.dialects import dialect_class
from ..db.shape import SelectShape
from ..db.types import DatabaseError, QueryResult, TableDescription, TableInfo, TableNotFound
from ..mcp.tools import Tool, ToolContext, ToolError
from ..obs.audit import fingerprint_sql
from . import ids
from .cache import TtlLruCache
from .common import (
    description_dict,
    json_size,
    not_read_reason,
    render_value,
    result_size_meta,
    text_table,
    truncation_note,
    with_meta,
)
from .doccache import Bucket, DocumentCache, FetchCacheUnavailable, MemoryDocumentCache, RedisDocumentCache
from .intent import Intent, parse_intent, stem
from .search import CatalogTable, ContentSearch, FullText, RowHit

if TYPE_CHECKING:
    from ..db.database import Database
    from ..obs.metrics import Metrics
    from ..settings import Settings
    from ..state.redisstate import RedisState

log = structlog.get_logger(__name__)

CATALOG_MAX_TABLES = 500  # keyword search looks at columns of at most this many tables
COLUMN_INDEX_BUDGET_SECONDS = 8.0  # time to describe the tables a capped catalog query did not reach
TABLE_FETCH_SAMPLE = 5
CHILD_TABLES_MAX = 8  # a fetched row lists child rows from at most this many referencing foreign keys
CHILD_ROWS_MAX = 20  # ... and at most this many rows of each
LABEL_COLUMNS = ("name", "title", "full_name", "display_name", "company_name", "username", "email", "sku", "code")

SEARCH_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "url": {"type": "string"}},
                "required": ["id", "title", "url"],
                "additionalProperties": False,
            },
        },
        # Present (true) only when more results exist than were returned; the last result says how to see them.
        "truncated": {"type": "boolean"},
    },
    "required": ["results"],
    "additionalProperties": False,
}
FETCH_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "text": {"type": "string"},
        "url": {"type": "string"},
        "metadata": {"type": ["object", "null"]},
    },
    "required": ["id", "title", "text", "url", "metadata"],
    "additionalProperties": False,
}


# Record links point below the surface that serves search/fetch, whose tokens carry that prefix's audience.
RECORDS_PREFIX = RECORDS_SURFACE.prefix


def record_url(base_url: str, record_id: str, prefix: str = RECORDS_PREFIX) -> str:
    # ':' '.' ',' '~' are legal in a path segment; anything else a table name brings is escaped.
    return f"{base_url.rstrip('/')}{prefix}/records/{quote(record_id, safe=':.,~')}"


# --- reading a query's shape ----------------------------------------------------------------
def select_shape(sql: str, dialect: str) -> SelectShape | None:
    """The shape of a single-table SELECT the guard accepts (guard.Verdict.shape), else None."""
    return guard.check(sql, dialect).shape


# --- the tool set ---------------------------------------------------------------------------
class ChatGptTools:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        redis: RedisState | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.metrics = metrics
        self.dialect = settings.db_backend
        ttl = settings.cache_ttl_seconds
        # fetch documents (without url: it depends on the caller's base URL), in this process...
        memory = MemoryDocumentCache(ttl, clock)
        self.cache: TtlLruCache[dict[str, Any]] = memory.documents
        # ...or, with REDIS_URL, shared by every worker and node (search on one, fetch on another)
        self.documents: DocumentCache = memory if redis is None else RedisDocumentCache(redis, ttl)
        # The table list, descriptions and what keyword search derives from them are cached by Database
        # (database.derived, database.cached_description): one catalog cache for the whole service.
        self.content = ContentSearch(database, settings)

    # --- catalog helpers -----------------------------------------------------------------
    # Every helper takes the caller: None is the service itself (the whole catalog, for the shared caches);
    # a caller sees only the tables and columns its role may read (ACCESS_POLICY_FILE, app.db.access).
    async def _tables(self, caller: Principal | None) -> list[TableInfo]:
        tables: list[TableInfo] | None = self.database.derived.get("chatgpt.tables")
        if tables is None:
            tables = sorted(await self.database.list_tables(), key=lambda t: ((t.schema or "").lower(), t.name.lower()))
            self.database.derived.put("chatgpt.tables", tables)
        role = self.database.access.restricting_role(caller)
        return tables if role is None else role.visible_tables(tables)

    async def _describe(self, name: str, caller: Principal | None) -> TableDescription:
        return await self.database.cached_description(name, principal=caller)

    async def _describe_ref(self, ref: ids.TableRef, caller: Principal | None) -> TableDescription:
        return await self._describe(ref.qualified, caller)

    def _cache_key(self, key: str, caller: Principal | None) -> str:
        """Documents are cached per role when the role's policy restricts it (they differ per role)."""
        role = self.database.access.restricting_role(caller)
        return key if role is None else f"{role.name}\x00{key}"

    async def _remember(self, key: str, document: dict[str, Any], caller: Principal | None) -> None:
        """Cache a re-readable document; without the shared cache for now, fetch re-reads it instead."""
        try:
            await self.documents.put("documents", self._cache_key(key, caller), document)
        except FetchCacheUnavailable:
            log.info("chatgpt.cache_unavailable", action="put")

    async def _recall(self, bucket: Bucket, key: str, caller: Principal | None) -> dict[str, Any] | None:
        """A cached document; a re-readable one is re-read while the shared cache is away, a query result
        (only in the cache) raises FetchCacheUnavailable."""
        try:
            return await self.documents.get(bucket, self._cache_key(key, caller))
        except FetchCacheUnavailable:
            if bucket == "queries":
                raise
            log.info("chatgpt.cache_unavailable", action="get")
            return None

    async def _all_columns(self, caller: Principal | None = None) -> list[CatalogTable]:
        """The catalog of _all_columns_shared, without the tables and columns the caller may not read (a
        table whose key has a denied column loses its key: its rows get no ids)."""
        tables = await self._all_columns_shared()
        role = self.database.access.restricting_role(caller)
        if role is None:
            return tables
        out = []
        for table in role.visible_tables(tables):
            columns = [(c, t) for c, t in table.columns if not role.column_denied(table.schema, table.name, c)]
            shown = {c for c, _ in columns}
            key = table.primary_key if all(c in shown for c in table.primary_key) else []
            out.append(CatalogTable(table.schema, table.name, columns, list(key)))
        return out

    async def _all_columns_shared(self) -> list[CatalogTable]:
        """Every table's columns and primary key from one catalog query (cached like the table list)."""
        columns: list[CatalogTable] | None = self.database.derived.get("chatgpt.all_columns")
        if columns is None:
            try:
                columns, cut = await self.content.catalog()
            except DatabaseError as exc:  # no catalog access: keyword search still matches table names
                log.info("chatgpt.catalog_unreadable", error=str(exc)[:200])
                return []
            complete = True
            if cut:  # more columns than MAX_ROWS: describe the tables the capped query did not reach
                columns, complete = await self._complete_catalog(columns[:-1])  # the last one may be partial
            if complete:
                self.database.derived.put("chatgpt.all_columns", columns)
        return columns

    async def _complete_catalog(self, known: list[CatalogTable]) -> tuple[list[CatalogTable], bool]:
        """Describe the tables missing from a capped catalog read, within a time budget (True: all found).
        Descriptions read stay cached, so a search after a cut one goes on where it stopped."""
        have = {(t.schema, t.name) for t in known}
        missing = [t for t in await self._tables(None) if (t.schema, t.name) not in have][:CATALOG_MAX_TABLES]
        limit = asyncio.Semaphore(max(1, min(4, int(self.settings.db_pool_size))))

        async def describe(table: TableInfo) -> CatalogTable | None:
            async with limit:
                try:
                    description = await self._describe(table.qualified_name, None)
                except DatabaseError:
                    return None
            return CatalogTable(
                table.schema, table.name, [(c.name, c.type) for c in description.columns], list(description.primary_key)
            )

        tasks = [asyncio.create_task(describe(t)) for t in missing]
        done, pending = await asyncio.wait(tasks, timeout=COLUMN_INDEX_BUDGET_SECONDS) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        found = [t for task in tasks if task in done and (t := task.result()) is not None]
        return known + found, not pending

    async def _column_index(self, caller: Principal | None) -> list[tuple[TableInfo, list[str]]]:
        role = self.database.access.restricting_role(caller)
        derived_key = "chatgpt.columns" if role is None else f"chatgpt.columns:{role.name}"
        index: list[tuple[TableInfo, list[str]]] | None = self.database.derived.get(derived_key)
        if index is not None:
            return index
        tables = await self._tables(caller)
        by_name = {(t.schema, t.name): [c for c, _ in t.columns] for t in await self._all_columns(caller)}
        index = [(t, by_name.get((t.schema, t.name), [])) for t in tables]
        self.database.derived.put(derived_key, index)
        return index

    # --- titles and documents ------------------------------------------------------------
    @staticmethod
    def _table_title(table: TableInfo) -> str:
        rows = f" (about {table.row_estimate:,} rows)" if table.row_estimate is not None else ""
        return f"{table.kind.capitalize()} {table.qualified_name}{rows}"

    @staticmethod
    def _row_label(row: dict[str, Any]) -> str | None:
        lowered = {k.lower(): v for k, v in row.items()}
        if lowered.get("first_name") and lowered.get("last_name"):
            return f"{lowered['first_name']} {lowered['last_name']}"
        for column in LABEL_COLUMNS:
            if isinstance(lowered.get(column), str) and lowered[column]:
                return lowered[column]
        for column, value in lowered.items():
            if isinstance(value, str) and value and (column.endswith("_name") or column.endswith("name")):
                return value
        return None

    def _row_title(self, table: str, key: dict[str, Any], row: dict[str, Any]) -> str:
        keys = ", ".join(f"{k}={render_value(v, 40)}" for k, v in key.items())
        label = self._row_label(row)
        return f"{table} {keys}" + (f": {render_value(label, 80)}" if label else "")

    async def _referenced(self, qualified: str) -> tuple[str | None, str]:
        """(schema, name) of a foreign key's target, from the catalog (names may contain dots)."""
        for table in await self._tables(None):
            if table.qualified_name.lower() == qualified.lower():
                return table.schema, table.name
        schema, _, name = qualified.rpartition(".")
        return schema or None, name

    async def _row_document(
        self, description: TableDescription, row: dict[str, Any], caller: Principal | None
    ) -> dict[str, Any]:
        """`description` is the caller's (app.db hides its denied columns and foreign keys); so are the row's
        columns, and the rows that refer to it come from tables the caller may read."""
        table = description.table
        lowered = {k.lower(): k for k in row}
        key = {pk: row[lowered[pk.lower()]] for pk in description.primary_key}
        record_id = ids.row_id(table.schema, table.name, list(key.values()))
        related: dict[str, str] = {}
        for fk in description.foreign_keys:
            values = [row.get(lowered.get(c.lower(), c)) for c in fk.columns]
            if any(v is None for v in values):
                continue
            schema, name = await self._referenced(fk.references_table)
            related[",".join(fk.columns)] = ids.row_id(schema, name, values)
        lines = [f"Row of {table.kind} {table.qualified_name} ({', '.join(f'{k}={v}' for k, v in key.items())})", ""]
        for column, value in row.items():
            link = related.get(column)
            lines.append(f"{column}: {render_value(value, 2000)}" + (f"  (see {link})" if link else ""))
        children = await self._children(description, row, caller)
        if children:
            lines += ["", "Rows that refer to this one:"]
            lines.extend(f"- {child_id}: {label}" for child_id, label in children)
        return {
            "id": record_id,
            "title": self._row_title(table.qualified_name, key, row),
            "text": "\n".join(lines),
            "metadata": {
                "kind": "row",
                "table": table.qualified_name,
                "primary_key": key,
                "related": sorted(set(related.values())),
                "referenced_by": [child_id for child_id, _ in children],
            },
            "_children": children,
            # for the record page only (fetch and the JSON page return the five public keys)
            "_row": {column: render_value(value, 2000) for column, value in row.items()},
            "_links": {column: link for column, link in related.items() if "," not in column},
        }

    async def _children(
        self, description: TableDescription, row: dict[str, Any], caller: Principal | None
    ) -> list[tuple[str, str]]:
        """(id, title) of rows whose foreign keys point at `row`, bounded; [] when the catalog cannot say."""
        sql, params = self.database.dialect.referencing_sql(description.table)
        if not sql:
            return []
        try:
            found = await self.database.read(sql, params)  # the service's own catalog query (system views)
        except DatabaseError as exc:
            log.info("chatgpt.children_unreadable", error=str(exc)[:200])
            return []
        keys: dict[tuple[Any, Any, str], list[tuple[str, str | None]]] = {}
        for schema, child, child_column, parent_column, fk_name in found.rows:
            keys.setdefault((schema, str(child), str(fk_name)), []).append(
                (str(child_column), None if parent_column is None else str(parent_column))
            )
        lowered = {k.lower(): v for k, v in row.items()}
        catalog = {(t.schema, t.name): t for t in await self._all_columns(caller)}  # only tables it may read
        children: list[tuple[str, str]] = []
        for (schema, child, _), pairs in list(keys.items())[:CHILD_TABLES_MAX]:
            # a key that names no parent columns means the parent's primary key, in order
            parents = [
                p or (description.primary_key[i] if i < len(description.primary_key) else "")
                for i, (_, p) in enumerate(pairs)
            ]
            values = [lowered.get(p.lower()) for p in parents]
            entry = catalog.get((None if schema is None else str(schema), child))
            if any(v is None for v in values) or entry is None or not entry.primary_key:
                continue
            info = TableInfo(schema=entry.schema, name=entry.name, kind="table", row_estimate=None)
            dialect = self.database.dialect
            shown = ", ".join(dialect.quote_identifier(c) for c, _ in entry.columns)
            where = " AND ".join(f"{dialect.quote_identifier(c)} = ?" for c, _ in pairs)
            try:
                rows = await self.database.read(
                    f"SELECT {shown} FROM {dialect.table_sql(info)} WHERE {where}",
                    values,
                    principal=caller,
                    max_rows=CHILD_ROWS_MAX,
                )
            except DatabaseError as exc:
                log.info("chatgpt.children_unreadable", table=entry.qualified, error=str(exc)[:200])
                continue
            for child_values in rows.rows:
                child_row = dict(zip(rows.columns, child_values, strict=False))
                child_key = {pk: child_row.get(pk) for pk in entry.primary_key}
                children.append(
                    (
                        ids.row_id(entry.schema, entry.name, list(child_key.values())),
                        self._row_title(entry.qualified, child_key, child_row),
                    )
                )
        return children

    async def _table_document(self, ref: ids.TableRef, caller: Principal | None) -> dict[str, Any]:
        description = await self._describe_ref(ref, caller)
        table = description.table
        info = description_dict(description)
        lines = [self._table_title(table), ""]
        lines.append("Columns:")
        for c in description.columns:
            flags = ["null" if c.nullable else "not null"]
            if c.primary_key:
                flags.append("primary key")
            if c.default is not None:
                flags.append(f"default {c.default}")
            lines.append(f"- {c.name} {c.type} ({', '.join(flags)})")
        if description.primary_key:
            lines.append(f"Primary key: {', '.join(description.primary_key)}")
        if description.foreign_keys:
            lines.append("Foreign keys:")
            lines.extend(
                f"- ({', '.join(fk.columns)}) references {fk.references_table} ({', '.join(fk.references_columns)})"
                for fk in description.foreign_keys
            )
        if description.indexes:
            lines.append("Indexes:")
            lines.extend(
                f"- {ix.name}{' (unique)' if ix.unique else ''}: {', '.join(ix.columns)}" for ix in description.indexes
            )
        sample_rows = self.database.sample_limit(TABLE_FETCH_SAMPLE)
        try:
            sample = await self.database.sample(table.qualified_name, sample_rows, principal=caller)
            lines += ["", f"First {sample.row_count} rows:", text_table(sample.columns, sample.rows)]
        except DatabaseError as exc:  # a broken view still has a description worth showing
            lines += ["", f"(Could not read sample rows: {exc})"]
        return {
            "id": ids.table_id(table.schema, table.name),
            "title": self._table_title(table),
            "text": "\n".join(lines),
            "metadata": {
                "kind": table.kind,
                "schema": table.schema,
                "name": table.name,
                "row_estimate": table.row_estimate,
                "primary_key": info["primary_key"],
                "columns": [c["name"] for c in info["columns"]],
            },
        }

    def _result_document(
        self, record_id: str, title: str, result: QueryResult, metadata: dict[str, Any], header: str
    ) -> dict[str, Any]:
        note = truncation_note(result, self.dialect)
        text = f"{header}\nRows: {result.row_count}{' (truncated)' if result.truncated else ''}\n"
        if note:
            text += f"{note}\n"
        text += "\n" + text_table(result.columns, result.rows)
        return {
            "id": record_id,
            "title": title,
            "text": text,
            "metadata": {
                **metadata,
                "columns": result.columns,
                "row_count": result.row_count,
                "truncated": result.truncated,
            },
        }

    async def _sample_document(self, ref: ids.TableRef, limit: int, caller: Principal | None) -> dict[str, Any]:
        description = await self._describe_ref(ref, caller)
        table = description.table
        limit = self.database.sample_limit(limit)
        result = await self.database.sample(table.qualified_name, limit, principal=caller)
        return self._result_document(
            ids.sample_id(table.schema, table.name, limit),
            f"First {result.row_count} rows of {table.qualified_name}",
            result,
            {"kind": "sample", "table": table.qualified_name, "limit": limit},
            f"First rows of {table.kind} {table.qualified_name} (no particular order).",
        )

    async def _fetch_row(self, ref: ids.TableRef, key: tuple[Any, ...], caller: Principal | None) -> dict[str, Any]:
        description = await self._describe_ref(ref, caller)
        table = description.table
        if not description.primary_key:
            raise ToolError(f"{table.qualified_name} has no primary key, so its rows have no ids.", outcome="invalid")
        if len(key) != len(description.primary_key):
            raise ToolError(
                f"Row ids of {table.qualified_name} need {len(description.primary_key)} key value(s) "
                f"({', '.join(description.primary_key)}).",
                outcome="invalid",
            )
        row = await self.database.fetch_row(
            table, dict(zip(description.primary_key, key, strict=True)), principal=caller
        )
        if row is None:
            raise ToolError(
                f"No row of {table.qualified_name} has "
                f"{', '.join(f'{k}={v!r}' for k, v in zip(description.primary_key, key, strict=True))}"
                " (it may have been deleted).",
                outcome="error",
            )
        return await self._row_document(description, row, caller)

    async def document(self, record_id: str, caller: Principal | None = None) -> dict[str, Any]:
        """The fetch document of an id (without `url`), from the cache or re-queried, as `caller` may see it
        (None: the service itself, which sees everything)."""
        try:
            parsed = ids.parse_id(record_id)
        except ids.InvalidId as exc:
            raise ToolError(str(exc), outcome="invalid") from None
        key = record_id.strip()
        cached = await self._recall("queries" if parsed.kind == "query" else "documents", key, caller)
        if cached is not None:
            self._count(hit=True)
            return cached
        self._count(hit=False)
        table = parsed.table
        if parsed.kind in ("table", "row", "sample") and table is None:  # parse_id names one for these kinds
            raise ToolError(f"The id {key[:200]!r} names no table.", outcome="invalid")
        try:
            if parsed.kind == "table" and table is not None:
                document = await self._table_document(table, caller)
            elif parsed.kind == "row" and table is not None:
                document = await self._fetch_row(table, parsed.key, caller)
            elif parsed.kind == "sample" and table is not None:
                document = await self._sample_document(table, parsed.limit or 10, caller)
            elif parsed.kind == "more":
                return self._more_document(parsed)
            else:
                raise ToolError(
                    f"The query result '{key}' is no longer cached (ad-hoc query results are kept for "
                    f"{self.settings.cache_ttl_seconds} s and this server does not keep their SQL). Search again "
                    "with the same SQL to get a fresh result; table: and row: ids never expire.",
                    outcome="error",
                )
        except TableNotFound as exc:
            raise ToolError(f"Unknown id '{key}': {exc}", outcome="error") from None
        await self._remember(key, document, caller)
        if document["id"] != key:  # the canonical form too (table:customers for table:main.customers)
            await self._remember(document["id"], document, caller)
        return document

    def _count(self, *, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).inc()

    # --- search --------------------------------------------------------------------------
    async def search(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        query = arguments.get("query")
        if not isinstance(query, str):
            raise ToolError("'query' is required and must be a string.", outcome="invalid")
        intent = parse_intent(query)
        limit = self.settings.max_search_results
        ctx.audit.update(fingerprint=fingerprint_sql(intent.sql if intent.sql else f"search {query.strip().lower()}"))
        caller = ctx.principal
        if intent.kind == "sql":
            ctx.audit["sql"] = intent.sql
            hits = await self._search_sql(intent.sql or "", limit, ctx)
        elif intent.kind == "write":
            raise ToolError(
                "search only runs read queries (SELECT, WITH ... SELECT, VALUES); it never changes "
                "data. Rephrase as a SELECT.",
                outcome="refused",
            )
        elif intent.kind == "describe":
            hits = await self._search_describe(intent, caller)
        elif intent.kind == "sample":
            hits = await self._search_sample(intent, limit, caller)
        elif intent.kind == "list":
            hits = [(ids.table_id(t.schema, t.name), self._table_title(t)) for t in await self._tables(caller)]
        else:
            hits, cut = await self._search_keywords(intent.terms, caller)
            if cut:  # a budget cut the search: say so even when the results fit
                hits.append(("", ""))
        out = self._page(query, intent, hits, limit, ctx.base_url)
        ctx.audit.update(rows=len(out["results"]), bytes=json_size(out))
        return out

    def _page(
        self, query: str, intent: Intent, hits: list[tuple[str, str]], limit: int, base_url: str
    ) -> dict[str, Any]:
        """One page of results; when more exist, the last result says how to see them (and `truncated`)."""
        budget_cut = bool(hits) and hits[-1] == ("", "")
        if budget_cut:
            hits = hits[:-1]
        paged = intent.kind in ("list", "keywords")
        page = intent.page if paged else 1
        start = (page - 1) * (limit - 1) if paged and limit > 1 else 0
        more = len(hits) - start > limit or budget_cut
        shown = hits[start : start + (limit - 1 if more and limit > 1 else limit)]
        results = [{"id": i, "title": t, "url": record_url(base_url, i)} for i, t in shown]
        if not more:
            return {"results": results}
        base = re.sub(r"[\s,;]+page\s*\d+\s*$", "", query.strip(), flags=re.I) or "list tables"
        remaining = max(0, len(hits) - start - len(shown))
        more_id = ids.more_id(base if paged else query, page + 1 if paged else 0)  # 0: cannot be paged
        title = (
            f"{remaining} more result(s) not shown: search '{base} page {page + 1}' or narrow the query"
            if paged and remaining
            else "More results exist than were returned: narrow the query (more keywords, a table name, or a SELECT "
            "with WHERE)"
        )
        results.append({"id": more_id, "title": title, "url": record_url(base_url, more_id)})
        return {"results": results, "truncated": True}

    def _more_document(self, parsed: ids.RecordId) -> dict[str, Any]:
        query, page = ids.decode_more(parsed)
        limit = self.settings.max_search_results
        shown = query if len(query) <= 200 else query[:199] + "…"
        text = (
            f"The search '{shown}' had more results than the {limit} returned, so it was cut.\n\n"
            + (
                f"- See the next results: search '{shown} page {page}'.\n"
                if page
                else "- The full result set is in the query result (fetch its id); to see other rows, add a WHERE "
                "clause or an ORDER BY to the SELECT.\n"
            )
            + "- Or narrow it: add keywords (e.g. a city and a name), name a table ('describe customers', "
            "'sample orders limit 20'), or write a SELECT with a WHERE clause."
        )
        return {
            "id": ids.more_id(query, page),
            "title": f"More results for '{query}'",
            "text": text,
            "metadata": {"kind": "more", "query": query, "next_page": page},
        }

    async def _search_describe(self, intent: Intent, caller: Principal) -> list[tuple[str, str]]:
        description = await self._describe(intent.table or "", caller)
        table = description.table
        return [(ids.table_id(table.schema, table.name), self._table_title(table))]

    async def _search_sample(self, intent: Intent, limit: int, caller: Principal) -> list[tuple[str, str]]:
        description = await self._describe(intent.table or "", caller)
        table = description.table
        rows = self.database.sample_limit(intent.limit or 10)
        result = await self.database.sample(table.qualified_name, rows, principal=caller)
        sample_id = ids.sample_id(table.schema, table.name, rows)
        document = self._result_document(
            sample_id,
            f"First {result.row_count} rows of {table.qualified_name}",
            result,
            {"kind": "sample", "table": table.qualified_name, "limit": rows},
            f"First rows of {table.kind} {table.qualified_name} (no particular order).",
        )
        await self._remember(sample_id, document, caller)
        hits = [(sample_id, document["title"])]
        if description.primary_key:
            for values in result.rows[: max(0, limit - 1)]:
                row = dict(zip(result.columns, values, strict=False))
                row_doc = await self._row_document(description, row, caller)
                await self._remember(row_doc["id"], row_doc, caller)
                hits.append((row_doc["id"], row_doc["title"]))
        return hits

    async def _search_sql(self, sql: str, limit: int, ctx: ToolContext) -> list[tuple[str, str]]:
        # search is read-only whatever READ_ONLY_MODE says: ChatGPT treats it as a read tool.
        verdict = self.database.verdict(sql)
        if not verdict.allowed:
            raise ToolError(
                "search only runs read queries (SELECT, WITH ... SELECT, VALUES) and this statement "
                f"is not one: {not_read_reason(verdict)} Rephrase as a single SELECT.",
                outcome="refused",
            )
        caller = ctx.principal
        result = await self.database.read(sql, principal=caller)
        ctx.audit["tables"] = list(result.tables)
        record_id = ids.query_id(sql)
        short = " ".join(sql.split())
        short = short if len(short) <= 80 else short[:79] + "…"
        document = self._result_document(
            record_id,
            f"Query result ({result.row_count} rows): {short}",
            result,
            {"kind": "query", "sql": sql},
            f"Query: {sql}",
        )
        # The id is only worth returning if fetch can find it: without the shared cache, say so instead.
        await self.documents.put("queries", self._cache_key(record_id, caller), document)
        hits = [(record_id, document["title"])]
        hits.extend(
            await self._rows_of_query(verdict.shape, result, limit, caller)
        )  # one more than fits: _page then says so
        return hits

    async def _rows_of_query(
        self, shape: SelectShape | None, result: QueryResult, limit: int, caller: Principal
    ) -> list[tuple[str, str]]:
        """Rows of a single-table SELECT that include the primary key become re-fetchable row ids."""
        if limit <= 0 or not result.rows:
            return []
        if shape is None:
            return []
        try:
            description = await self._describe(f"{shape.schema}.{shape.name}" if shape.schema else shape.name, caller)
        except DatabaseError:
            return []
        if not description.primary_key:
            return []
        positions: dict[str, int] = {}
        for index, column in enumerate(result.columns):
            source = shape.source_of(column)
            if source:
                positions.setdefault(source, index)
        if not all(pk.lower() in positions for pk in description.primary_key):
            return []
        table = description.table
        table_columns = {c.name.lower() for c in description.columns}
        whole_rows = {c.lower() for c in result.columns} == table_columns and len(positions) == len(table_columns)
        hits = []
        for values in result.rows[:limit]:
            key = [values[positions[pk.lower()]] for pk in description.primary_key]
            row = dict(zip(result.columns, values, strict=False))
            if whole_rows:  # a full row: cache it so fetch needs no query
                row_doc = await self._row_document(description, row, caller)
                await self._remember(row_doc["id"], row_doc, caller)
                hits.append((row_doc["id"], row_doc["title"]))
            else:
                key_map = dict(zip(description.primary_key, key, strict=True))
                hits.append(
                    (ids.row_id(table.schema, table.name, key), self._row_title(table.qualified_name, key_map, row))
                )
        return hits

    async def _search_keywords(self, terms: tuple[str, ...], caller: Principal) -> tuple[list[tuple[str, str]], bool]:
        """Tables named like the terms first, then rows whose data contains them, then weaker name matches.
        True when a search budget cut the content search."""
        if not terms:
            return [], False
        names = await self._search_names(terms, caller)
        strong = [hit for score, hit in names if score >= 10]
        weak = [hit for score, hit in names if score < 10]
        rows, cut = await self._search_content(terms, caller)
        return strong + rows + weak, cut

    async def _search_content(self, terms: tuple[str, ...], caller: Principal) -> tuple[list[tuple[str, str]], bool]:
        tables = await self._all_columns(caller)
        if not tables:
            return [], False
        result = await self.content.search(tables, terms, await self._fulltext(), principal=caller)
        return [(self._hit_id(hit), self._hit_title(hit)) for hit in result.hits], result.truncated

    async def _fulltext(self) -> FullText:
        found: FullText | None = self.database.derived.get("chatgpt.fulltext")
        if found is None:
            found = await self.content.fulltext()
            self.database.derived.put("chatgpt.fulltext", found)
        return found

    @staticmethod
    def _hit_id(hit: RowHit) -> str:
        return ids.row_id(hit.table.schema, hit.table.name, list(hit.key))

    def _hit_title(self, hit: RowHit) -> str:
        key = dict(zip(hit.table.primary_key, hit.key, strict=True))
        title = self._row_title(hit.table.qualified, key, hit.row)
        matched = [f"{c}: {render_value(hit.row.get(c), 60)}" for c in hit.matched if c not in title]
        return title + (f" ({'; '.join(matched[:3])})" if matched else "")

    async def _search_names(self, terms: tuple[str, ...], caller: Principal) -> list[tuple[int, tuple[str, str]]]:
        stems = [stem(t) for t in terms]
        scored = []
        for table, columns in await self._column_index(caller):
            name = table.name.lower()
            score, matched_columns = 0, []
            for term, root in zip(terms, stems, strict=True):
                if name in (term, root) or stem(name) == root:
                    score += 10
                elif root in name:
                    score += 6
                elif (table.schema or "").lower() == term:
                    score += 2
                for column in columns:
                    lowered = column.lower()
                    if lowered in (term, root) or stem(lowered) == root:
                        score += 4
                        matched_columns.append(column)
                    elif len(root) >= 3 and root in lowered:
                        score += 2
                        matched_columns.append(column)
            if score:
                scored.append((score, table, matched_columns))
        scored.sort(key=lambda item: (-item[0], (item[1].schema or "").lower(), item[1].name.lower()))
        hits = []
        for score, table, matched in scored:
            title = self._table_title(table)
            if matched:
                shown = list(dict.fromkeys(matched))
                title += f"; columns {', '.join(shown[:5])}{'…' if len(shown) > 5 else ''}"
            hits.append((score, (ids.table_id(table.schema, table.name), title)))
        return hits

    # --- fetch ---------------------------------------------------------------------------
    async def fetch(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        record_id = arguments.get("id")
        if not isinstance(record_id, str) or not record_id.strip():
            raise ToolError("'id' is required: pass an id from a search result.", outcome="invalid")
        ctx.audit.update(fingerprint=fingerprint_sql(f"fetch {record_id.strip()}"), id=record_id.strip()[:200])
        document = await self.document(record_id, ctx.principal)
        out = {**document, "url": record_url(ctx.base_url, document["id"])}
        out = {k: out[k] for k in ("id", "title", "text", "url", "metadata")}
        ctx.audit.update(rows=out["metadata"].get("row_count", 1) if out["metadata"] else 1, bytes=json_size(out))
        read = _document_table(out["metadata"] or {})
        if read:
            ctx.audit["tables"] = [read]
        return out


def _document_table(metadata: dict[str, Any]) -> str | None:
    """The table a table, row or sample document was read from (for the audit line)."""
    if metadata.get("kind") in ("table", "view") and metadata.get("name"):
        return f"{metadata['schema']}.{metadata['name']}" if metadata.get("schema") else str(metadata["name"])
    table = metadata.get("table")
    return str(table) if table else None


def build_chatgpt_tools(tools: ChatGptTools) -> list[Tool]:
    """search and fetch over one tool set (create_app builds one per app: the record pages share it)."""
    settings = tools.settings
    dialect = dialect_class(settings.db_backend).label
    read_annotations = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
    tools_list = [
        Tool(
            name="search",
            title="Search the database",
            description=(
                f"Search a {dialect} database; returns ids to pass to fetch. The query may be: 'list tables' "
                "(every table and view); 'describe <table>' (that table); 'sample <table> limit <n>' (its first "
                "rows); a read-only SQL statement (SELECT/WITH/VALUES: the first result is the whole result set, "
                "then one result per row when the query reads a single table including its primary key); or "
                "keywords, matched against the data (names, titles, descriptions, cities, emails, ...: one result "
                "per matching row, best first) and against table and column names (e.g. 'Tokyo', 'customer "
                f"email'). Search never changes data. At most {settings.max_search_results} results; when there "
                "are more, the last result says so and how to see the next page (e.g. 'Tokyo page 2')."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "maxLength": 100_000,
                        "description": "'list tables', 'describe X', 'sample X limit N', a SELECT "
                        "statement, or keywords.",
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            output_schema=SEARCH_OUTPUT_SCHEMA,
            annotations=dict(read_annotations),
            handler=tools.search,
        ),
        Tool(
            name="fetch",
            title="Fetch a record",
            description=(
                "Fetch the full content of a search result by its id: a table's columns, keys, indexes and first "
                "rows; a row's every column (with ids of the rows its foreign keys point to and of the rows that "
                "refer to it, e.g. an order's lines); or a query's full "
                "result. Table and row ids stay valid and are re-read from the database; ids of ad-hoc query "
                f"results are kept for {settings.cache_ttl_seconds} s."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "id": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": ids.MAX_ID_LENGTH,
                        "description": "An id from a search result, e.g. table:customers or row:orders:42.",
                    },
                },
                "required": ["id"],
                "additionalProperties": False,
            },
            output_schema=FETCH_OUTPUT_SCHEMA,
            annotations=dict(read_annotations),
            handler=tools.fetch,
        ),
    ]
    return with_meta(tools_list, {"fetch"}, result_size_meta(settings))
