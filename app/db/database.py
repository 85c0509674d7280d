"""Database: the one object the rest of the service talks to (tools, health, ChatGPT fetch).

It combines the read-only guard, the bounded worker pool, the result caps and the dialect's catalog.
Every method that touches the database is a coroutine whose driver work happens on a pool worker
thread; `status()` and `is_read_only()` are instant and never touch the driver.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyodbc
import structlog
from sqlglot import exp

from ..core import Principal
from . import execute as run
from . import guard
from .catalog import resolve
from .dialects import Dialect, get_dialect
from .pool import Pool, Worker
from .types import DatabaseError, QueryFailed, QueryRefused, QueryResult, TableDescription, TableInfo, TableNotFound

log = structlog.get_logger(__name__)

T = TypeVar("T")

CATALOG_TTL_SECONDS = 30.0
CATALOG_MIN_REFRESH_SECONDS = 2.0  # an unknown name refreshes the catalog at most this often
PING_TIMEOUT_SECONDS = 5.0
RECENT_VERDICTS = 8  # a call's statement, checked by its tool and again by read(); a few calls in flight
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")


class Database:
    def __init__(self, settings: Any, metrics: Any = None) -> None:
        if metrics is None:
            from ..obs.metrics import Metrics

            metrics = Metrics()
        self.settings = settings
        self.metrics = metrics
        self.dialect: Dialect = get_dialect(settings)
        self.pool = Pool(self.dialect, settings, metrics)
        self.read_plans = run.ReadPlans(self.dialect)
        self._tables: list[TableInfo] | None = None
        self._tables_at = 0.0
        self._descriptions: dict[tuple[str | None, str], tuple[float, TableDescription]] = {}
        self.derived = DerivedCatalog(CATALOG_TTL_SECONDS)
        self._extra_functions = guard.extra_functions(settings)
        self._recent_verdicts: OrderedDict[str, guard.Verdict] = OrderedDict()
        name = self.dialect.name
        self._rows_counter = metrics.rows_returned.labels(name)
        self._bytes_counter = metrics.bytes_returned.labels(name)

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def dialect_name(self) -> str:
        return self.dialect.name

    async def start(self) -> None:
        """Start the pool. Never raises because the database is down: status() says degraded."""
        await self.pool.start()
        log.info(
            "db.started",
            dialect=self.dialect.name,
            pool_size=self.pool.size,
            read_only=bool(self.settings.read_only_mode),
            healthy=self.pool.healthy(),
        )

    async def close(self) -> None:
        await self.pool.close()

    # --- queries -----------------------------------------------------------------------------------
    def verdict(self, sql: str) -> guard.Verdict:
        """The guard's verdict on `sql` as a read, with the operator's GUARD_EXTRA_FUNCTIONS (never raises).

        A tool asks first (to choose read or write, or to word a refusal) and read() asks again: the last few
        verdicts are kept here so a statement is parsed once per call, also when it is too long for the
        guard's own cache."""
        verdict = self._recent_verdicts.get(sql)
        if verdict is None:
            verdict = guard.check(sql, self.dialect.name, extra_functions=self._extra_functions)
            self._recent_verdicts[sql] = verdict
            if len(self._recent_verdicts) > RECENT_VERDICTS:
                self._recent_verdicts.popitem(last=False)
        return verdict

    def is_read_only(self, sql: str) -> bool:
        """The guard's verdict without raising (the statement would run as a read)."""
        return self.verdict(sql).allowed

    def _row_cap(self, max_rows: int | None) -> int:
        """The one place the row cap is decided: the setting, lowered (never raised) by a call."""
        cap = int(self.settings.max_rows)
        return cap if max_rows is None else max(1, min(cap, int(max_rows)))

    def _time_cap(self, timeout: float | None) -> float:
        cap = float(self.settings.query_timeout_seconds)
        if timeout is None or timeout <= 0:
            return cap
        return min(cap, float(timeout))

    def _refuse_unless_read(self, verdict: guard.Verdict) -> None:
        if verdict.allowed:
            return
        reason = verdict.reason or "refused"
        self.metrics.guard_refusals.labels(reason).inc()
        log.info("db.refused", reason=reason)
        raise QueryRefused(reason, verdict.message or "refused: not a single read query")

    async def read(
        self, sql: str, params: Sequence[Any] = (), *, max_rows: int | None = None, timeout: float | None = None
    ) -> QueryResult:
        """Run one read query: the guard must accept it (else QueryRefused), whatever READ_ONLY_MODE says, and
        it runs in a transaction that is rolled back. `max_rows` and `timeout` can only lower the caps."""
        verdict = self.verdict(sql)
        self._refuse_unless_read(verdict)
        return await self._read(sql, _checked_tree(verdict), params, max_rows=max_rows, timeout=timeout)

    async def _read(
        self,
        sql: str,
        tree: exp.Expr | None,
        params: Sequence[Any],
        *,
        max_rows: int | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """A read of a statement the guard accepted or the service wrote itself (sample, row by key)."""
        plans = self.read_plans

        def job(session: Worker, rows_cap: int, bytes_cap: int) -> QueryResult:
            return run.planned_read(session, plans, sql, tree, params, rows_cap, bytes_cap)

        return await self._capped(job, max_rows=max_rows, timeout=timeout, retry=True)

    async def _capped(
        self,
        job: Callable[[Worker, int, int], QueryResult],
        *,
        max_rows: int | None,
        timeout: float | None,
        retry: bool,
    ) -> QueryResult:
        """The one place a statement's row, byte and time caps are applied (reads and writes alike)."""
        rows_cap, bytes_cap = self._row_cap(max_rows), int(self.settings.max_result_bytes)
        result = await self.pool.run(
            lambda session: job(session, rows_cap, bytes_cap), timeout=self._time_cap(timeout), retry=retry
        )
        self._account(result)
        return result

    def writer_for(self, principal: Principal) -> Writer | None:
        """The capability to write, for a writer while writes are enabled; None otherwise (READ_ONLY_MODE on,
        or a caller whose role may not write), so a reader's statement can only ever reach read()."""
        if self.settings.read_only_mode or not principal.can_write:
            return None
        return Writer(self, principal)

    async def _write(
        self, sql: str, params: Sequence[Any], *, max_rows: int | None, timeout: float | None
    ) -> QueryResult:
        def job(session: Worker, rows_cap: int, bytes_cap: int) -> QueryResult:
            return run.write(session, sql, params, rows_cap, bytes_cap)

        try:
            return await self._capped(job, max_rows=max_rows, timeout=timeout, retry=False)
        finally:
            self.forget_catalog()  # the write may have been DDL

    def _account(self, result: QueryResult) -> None:
        self._rows_counter.inc(result.row_count)
        self._bytes_counter.inc(result.result_bytes)
        if result.truncated and result.truncated_reason:
            self.metrics.truncations.labels(result.truncated_reason).inc()

    async def ping(self) -> bool:
        """A real round trip (SELECT 1). False when the database cannot answer."""
        try:
            await self.pool.run(_ping_job, timeout=min(PING_TIMEOUT_SECONDS, self._time_cap(None)), retry=True)
        except DatabaseError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """For /health: instant, no driver call, correct while every connection is busy."""
        pool = self.pool.stats()
        return {
            # misconfigured: the server refuses the login, which retrying will not fix (/health: unhealthy).
            "status": "ok" if pool["healthy"] > 0 else ("misconfigured" if self.pool.login_refused else "degraded"),
            "dialect": self.dialect.name,
            "pool": pool,
            "last_error": self.pool.last_error,
        }

    # --- catalog -------------------------------------------------------------------------------------
    async def _catalog(self, fn: Callable[[pyodbc.Cursor], T]) -> T:
        def job(session: Worker) -> T:
            return fn(session.cursor())  # the worker rolls back and resets the session afterwards

        return await self.pool.run(job, timeout=self._time_cap(None), retry=True)

    def forget_catalog(self) -> None:
        """Drop every cached catalog fact (tables, descriptions, derived values, read plans)."""
        self.derived.clear()
        self._tables = None
        self._descriptions.clear()
        self.read_plans.forget()  # plans know their statements' columns

    async def _table_list(self, *, refresh: bool = False) -> list[TableInfo]:
        now = time.monotonic()
        if refresh or self._tables is None or now - self._tables_at > CATALOG_TTL_SECONDS:
            self._tables = await self._catalog(self.dialect.list_tables)
            self._tables_at = time.monotonic()
        return self._tables

    async def list_tables(self) -> list[TableInfo]:
        return list(await self._table_list())

    async def resolve_table(self, name: str | TableInfo) -> TableInfo:
        """The catalog entry for a user-supplied name (any case, with or without schema)."""
        if isinstance(name, TableInfo):
            name = name.qualified_name
        tables = await self._table_list()
        try:
            return resolve(name, tables, self.dialect)
        except TableNotFound:
            # Maybe created since the catalog was cached: look again, but not on every bad name.
            if time.monotonic() - self._tables_at < CATALOG_MIN_REFRESH_SECONDS:
                raise
        return resolve(name, await self._table_list(refresh=True), self.dialect)

    async def describe_table(self, name: str | TableInfo) -> TableDescription:
        table = await self.resolve_table(name)
        description = await self._catalog(lambda cursor: self.dialect.describe_table(cursor, table))
        self._descriptions[(table.schema, table.name)] = (time.monotonic(), description)
        return description

    async def cached_description(self, name: str | TableInfo) -> TableDescription:
        """describe_table, served from the catalog cache while it is fresh (for callers that describe the same
        tables again and again, such as ChatGPT's search and fetch)."""
        return await self._description(await self.resolve_table(name))

    async def _description(self, table: TableInfo) -> TableDescription:
        cached = self._descriptions.get((table.schema, table.name))
        if cached and time.monotonic() - cached[0] < CATALOG_TTL_SECONDS:
            return cached[1]
        description = await self._catalog(lambda cursor: self.dialect.describe_table(cursor, table))
        self._descriptions[(table.schema, table.name)] = (time.monotonic(), description)
        return description

    def sample_limit(self, asked: int) -> int:
        """The rows a sample of `asked` rows may return: the one place SAMPLE_MAX_ROWS and MAX_ROWS cap it."""
        return max(1, min(int(asked), int(self.settings.sample_max_rows), int(self.settings.max_rows)))

    async def sample(self, name: str | TableInfo, limit: int = 10) -> QueryResult:
        """The first `limit` rows of a table or view (capped by sample_limit)."""
        table = await self.resolve_table(name)
        n = self.sample_limit(limit)
        sql = self.dialect.sample_sql(table, n)
        return await self._read(sql, None, (), max_rows=n)  # the same caps as any read: wide values cut on the server

    async def fetch_row(self, table: TableInfo, key: dict[str, Any]) -> dict[str, Any] | None:
        """The row whose key columns equal `key` (column names matched case-insensitively), or None."""
        if not key:
            raise QueryFailed("a row key needs at least one column value")
        description = await self._description(table)
        by_name = {c.name.lower(): c for c in description.columns}
        columns: list[str] = []
        column_types: list[str | None] = []
        params: list[Any] = []
        for column_name, value in key.items():
            column = by_name.get(str(column_name).lower())
            if column is None:
                raise QueryFailed(f"column '{column_name}' does not exist in {table.qualified_name}")
            columns.append(column.name)
            column_types.append(column.base_type or column.type)
            params.append(_coerce(value, column.base_type or column.type))  # an alias of int is an int key
        sql = self.dialect.row_sql(table, columns, column_types)
        # Read inside the byte cap like every read: a row larger than the cap is refused with the column to
        # leave out, rather than pulled whole.
        result = await self._read(sql, None, params, max_rows=1)
        if result.rows:
            return dict(zip(result.columns, result.rows[0], strict=False))
        if result.truncated_reason == "max_bytes":
            where = f" (column {result.too_long_column})" if result.too_long_column else ""
            raise QueryFailed(
                f"the row is larger than the {int(self.settings.max_result_bytes):,}-byte result limit{where}; "
                "select the columns you need with a query instead"
            )
        return None


class DerivedCatalog:
    """Values callers derive from the catalog (ChatGPT's column index, its full-text map, ...), kept with the
    catalog's lifetime: they expire with its TTL and are forgotten with it after a write through the service,
    so the catalog is cached in one place (Database) and nobody keeps a stale copy of their own."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds, self._clock = ttl_seconds, clock
        self._values: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> Any | None:
        entry = self._values.get(key)
        if entry is None or self._clock() - entry[0] >= self.ttl_seconds:
            return None
        return entry[1]

    def put(self, key: str, value: Any) -> None:
        self._values[key] = (self._clock(), value)

    def clear(self) -> None:
        self._values.clear()


class Writer:
    """The capability to write, handed out by Database.writer_for only to a writer while writes are enabled.

    A write runs any statement and commits it only if it succeeds (a failing batch is rolled back whole),
    within the same row, byte and time caps as a read."""

    def __init__(self, database: Database, principal: Principal) -> None:
        self._database = database
        self.principal = principal

    async def write(
        self, sql: str, params: Sequence[Any] = (), *, max_rows: int | None = None, timeout: float | None = None
    ) -> QueryResult:
        log.info("db.write", user=self.principal.username)
        return await self._database._write(sql, params, max_rows=max_rows, timeout=timeout)


def _ping_job(session: Worker) -> None:
    cursor = session.cursor()
    cursor.execute(session.dialect.ping_sql)
    cursor.fetchmany(1)


def _checked_tree(verdict: guard.Verdict) -> exp.Expr | None:
    """The statement the guard checked, as a tree (shared and read-only: copy before changing it). None when
    the guard checked a rewritten text that would not run the same (then the original text runs as is)."""
    return verdict.tree


def _coerce(value: Any, column_type: str) -> Any:
    """Ids arrive as text; bind integer keys as integers so typed servers compare them natively."""
    if isinstance(value, str) and "int" in column_type.lower() and _INTEGER.match(value.strip()):
        return int(value.strip())
    return value
