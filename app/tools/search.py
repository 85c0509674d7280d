"""Keyword search over the data for ChatGPT's `search`: which columns, the bounded queries, the ranking.

Which columns are searched: SEARCH_COLUMNS when set (`table.column`, `schema.table.column`, `table.*`),
otherwise text columns whose names look like what people search by (names, titles, descriptions, cities,
emails, ...). Only tables with a primary key are searched, so every hit is a re-fetchable `row:` id.

Every query goes through Database.read (the guard, the row cap in the statement, the value bounds);
each table gets at most SEARCH_ROWS_PER_TABLE rows, the whole search SEARCH_TIME_BUDGET_SECONDS, and at
most SEARCH_MAX_TABLES tables are read. SQL Server tables with a full-text index are searched with
CONTAINSTABLE (its RANK orders the rows), SQLite tables with an FTS5 index over them (content='t') with
MATCH and bm25; elsewhere a case-insensitive substring test per column.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..core import Principal
from ..db.types import DatabaseError, TableInfo

if TYPE_CHECKING:
    from ..db.database import Database
    from ..db.dialects import Dialect
    from ..settings import Settings

log = structlog.get_logger(__name__)

# Column names people search by; matched against the name's underscore/camelCase parts.
_SEARCHABLE_WORDS = frozenset(
    {
        "name",
        "names",
        "title",
        "description",
        "desc",
        "summary",
        "city",
        "town",
        "country",
        "region",
        "state",
        "province",
        "address",
        "street",
        "email",
        "mail",
        "company",
        "organization",
        "organisation",
        "label",
        "category",
        "brand",
        "tag",
        "tags",
        "sku",
        "code",
        "note",
        "notes",
        "comment",
        "comments",
        "subject",
        "keywords",
        "keyword",
        "username",
        "login",
        "firstname",
        "lastname",
        "surname",
        "fullname",
        "product",
    }
)
_TEXT_TYPES = re.compile(r"char|text|clob|string|citext|uniqueidentifier|xml|json|varchar", re.I)
_NAME_WORDS = frozenset({"name", "title", "fullname", "firstname", "lastname", "surname", "username", "label"})
_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
CATALOG_KEY = "\0all_columns"
FullText = dict[tuple[str | None, str], tuple[list[str], str, str]]


@dataclass
class CatalogTable:
    """One table's columns as the all-columns catalog query lists them."""

    schema: str | None
    name: str
    columns: list[tuple[str, str]] = field(default_factory=list)  # (column, type), in table order
    primary_key: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class RowHit:
    table: CatalogTable
    key: tuple[Any, ...]
    row: dict[str, Any]
    score: float
    matched: tuple[str, ...]


@dataclass
class ContentResult:
    hits: list[RowHit]
    truncated: bool  # a budget (rows per table, tables, time) cut the search short
    notes: list[str] = field(default_factory=list)


def name_parts(column: str) -> list[str]:
    return [p.lower() for p in _PARTS.findall(column.replace("_", " ").replace("-", " "))]


def is_auto_searchable(column: str, column_type: str) -> bool:
    if not _TEXT_TYPES.search(column_type or ""):
        return False
    parts = name_parts(column)
    return any(p in _SEARCHABLE_WORDS for p in parts) or column.lower() in _SEARCHABLE_WORDS


def is_name_column(column: str) -> bool:
    parts = name_parts(column)
    return bool(parts) and (parts[-1] in _NAME_WORDS or column.lower() in _NAME_WORDS)


def parse_catalog_rows(rows: Sequence[Sequence[Any]]) -> list[CatalogTable]:
    """(schema, table, column, type, pk_position) rows -> tables with their columns and primary key."""
    tables: dict[tuple[str | None, str], CatalogTable] = {}
    positions: dict[tuple[str | None, str], list[tuple[int, str]]] = {}
    for schema, table, column, column_type, pk_position in rows:
        key = (None if schema is None else str(schema), str(table))
        entry = tables.setdefault(key, CatalogTable(key[0], key[1]))
        entry.columns.append((str(column), str(column_type or "")))
        if pk_position:
            positions.setdefault(key, []).append((int(pk_position), str(column)))
    for key, found in positions.items():
        tables[key].primary_key = [name for _, name in sorted(found)]
    return list(tables.values())


def configured_columns(setting: Sequence[str], table: CatalogTable) -> list[str]:
    """Columns of `table` that SEARCH_COLUMNS names (case-insensitive; `*` for every text column)."""
    chosen: list[str] = []
    for entry in setting:
        *table_parts, column = entry.strip().split(".")
        wanted = ".".join(table_parts).lower()
        if wanted not in (table.name.lower(), table.qualified.lower()):
            continue
        for name, column_type in table.columns:
            if (column == "*" and _TEXT_TYPES.search(column_type)) or name.lower() == column.lower():
                chosen.append(name)
    return list(dict.fromkeys(chosen))


def searchable_columns(table: CatalogTable, setting: Sequence[str]) -> list[str]:
    if setting:
        return configured_columns(setting, table)
    return [name for name, column_type in table.columns if is_auto_searchable(name, column_type)]


def like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def score_row(row: dict[str, Any], columns: Sequence[str], terms: Sequence[str]) -> tuple[float, tuple[str, ...]]:
    """Exact value > a word starting with the term > substring; name columns weigh more; every term counts."""
    total, matched = 0.0, []
    for term in terms:
        best, best_column = 0.0, None
        for column in columns:
            value = row.get(column)
            if value is None:
                continue
            text = str(value).lower()
            if text == term:
                points = 30.0
            elif text.startswith(term) or re.search(rf"(?<![^\W_]){re.escape(term)}", text):
                points = 20.0  # the value or one of its words starts with the term ("tokyo", "@example.com")
            elif term in text:
                points = 10.0
            else:
                continue
            if is_name_column(column):
                points *= 1.5
            if points > best:
                best, best_column = points, column
        if best_column is not None:
            total += best
            matched.append(best_column)
    return total, tuple(dict.fromkeys(matched))


class ContentSearch:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings

    @property
    def dialect(self) -> Dialect:
        return self.database.dialect

    async def catalog(self) -> tuple[list[CatalogTable], bool]:
        """Every table's columns in one query (the guard and caps apply). True when the row cap cut it."""
        sql = self.dialect.all_columns_sql
        if not sql:
            return [], False
        result = await self.database.read(sql)
        if result.truncated:
            log.warning("search.catalog_truncated", rows=result.row_count)
        return parse_catalog_rows(result.rows), bool(result.truncated)

    async def fulltext(self) -> FullText:
        """{(schema, table): (indexed columns, join key column, index table)} of the tables with a full-text
        index (SQL Server full-text indexes, SQLite FTS5 over a content table); empty elsewhere or when the
        catalog cannot be read."""
        sql = self.dialect.fulltext_columns_sql
        if not sql:
            return {}
        try:
            result = await self.database.read(sql)
        except DatabaseError as exc:
            log.info("search.fulltext_unavailable", error=str(exc)[:200])
            return {}
        rows = self.dialect.fulltext_index_rows(result.rows)
        found: FullText = {}
        for schema, table, column, key_column, index_name in rows:
            key = (None if schema is None else str(schema), str(table).lower())
            columns, _, _ = found.setdefault(key, ([], str(key_column), str(index_name)))
            columns.append(str(column))
        return found

    async def search(
        self, tables: list[CatalogTable], terms: Sequence[str], fulltext: FullText, *, principal: Principal | None
    ) -> ContentResult:
        """`tables` are the ones `principal` may read, without its denied columns; each read is checked again."""
        terms = [t.lower() for t in terms if t]
        setting = tuple(getattr(self.settings, "search_columns", ()) or ())
        candidates = [
            (t, cols)
            for t in tables
            if t.primary_key and ((cols := searchable_columns(t, setting)) or (t.schema, t.name.lower()) in fulltext)
        ]
        max_tables = self.settings.search_max_tables
        truncated = len(candidates) > max_tables
        notes = [f"only the first {max_tables} of {len(candidates)} searchable tables were read"] if truncated else []
        candidates = candidates[:max_tables]
        per_table = self.settings.search_rows_per_table
        deadline = time.monotonic() + self.settings.search_time_budget_seconds
        hits: list[RowHit] = []
        for table, columns in candidates:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                truncated = True
                notes.append("the search's time budget ran out before every table was read")
                break
            try:
                rows, cut = await asyncio.wait_for(
                    self._table_rows(table, columns, terms, per_table, remaining, fulltext, principal),
                    timeout=remaining + 1,
                )
            except (DatabaseError, TimeoutError) as exc:  # one unreadable table does not end the search
                log.info("search.table_skipped", table=table.qualified, error=str(exc)[:200])
                continue
            truncated = truncated or cut
            for row in rows:
                score, matched = score_row(row, columns, terms)
                if score <= 0:
                    continue
                key = tuple(row[pk] for pk in table.primary_key)
                hits.append(RowHit(table, key, row, score, matched))
        hits.sort(key=lambda h: (-h.score, h.table.qualified.lower(), [str(k) for k in h.key]))
        return ContentResult(hits, truncated, notes)

    async def _table_rows(
        self,
        table: CatalogTable,
        columns: list[str],
        terms: list[str],
        per_table: int,
        timeout: float,
        fulltext: FullText,
        principal: Principal | None,
    ) -> tuple[list[dict[str, Any]], bool]:
        info = TableInfo(schema=table.schema, name=table.name, kind="table", row_estimate=None)
        indexed = fulltext.get((table.schema, table.name.lower()))
        condition = self.dialect.fulltext_condition(terms) if indexed else ""
        if indexed and condition:  # the index ranks the rows (CONTAINSTABLE RANK, FTS5 bm25)
            indexed_columns, key_column, index_name = indexed
            shown = [*table.primary_key, *dict.fromkeys([*columns, *indexed_columns])]
            extra = {"index_name": index_name} if index_name else {}
            sql = self.dialect.fulltext_search_sql(info, key_column, shown, indexed_columns, **extra)
            params: list[Any] = [condition]
            columns[:] = list(dict.fromkeys([*columns, *indexed_columns]))  # score on what the index matched
        else:
            sql = self.dialect.content_search_sql(info, table.primary_key, columns, len(terms))
            params = [like_pattern(term) for term in terms for _ in columns]
        result = await self.database.read(sql, params, principal=principal, max_rows=per_table, timeout=timeout)
        rows = [dict(zip(result.columns, values, strict=False)) for values in result.rows]
        return rows, bool(result.truncated)
