"""Database: the one object the rest of the service talks to (tools, health, ChatGPT fetch).

It combines the read-only guard, the bounded worker pool, the result caps and the dialect's catalog.
Every method that touches the database is a coroutine whose driver work happens on a pool worker
thread; `status()` and `is_read_only()` are instant and never touch the driver.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyodbc
import structlog
from sqlglot import exp

from ..core import Principal
from ..loop_pass import LoopPass
from ..policy import AccessPolicy, CatalogTable, InMemoryCatalog, RolePolicy, check_statement, tables_read
from . import execute as run
from . import guard
from .access import AccessControl, internal_refusal, write_refusal, write_tables
from .catalog import resolve
from .dialects import Dialect, get_dialect
from .pool import Pool, Worker
from .types import (
    DatabaseError,
    ForeignKey,
    QueryFailed,
    QueryRefused,
    QueryResult,
    TableDescription,
    TableInfo,
    TableNotFound,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

CATALOG_TTL_SECONDS = 30.0
CATALOG_MIN_REFRESH_SECONDS = 2.0  # an unknown name refreshes the catalog at most this often
PING_TIMEOUT_SECONDS = 5.0
# A read every dialect's guard accepts, with the parts most statements have (Database.start).
WARM_UP_SQL = (
    "SELECT a.x, COUNT(*) AS n FROM t AS a JOIN u AS b ON b.id = a.id "
    "WHERE a.d >= '2024-01-01' GROUP BY a.x ORDER BY a.x DESC"
)
RECENT_VERDICTS = 8  # a call's statement, checked by its tool and again by read(); a few calls in flight
RECENT_DECISIONS = 256  # policy decisions kept (statement, role, catalog version, policy generation)
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
        self.loop_pass = LoopPass()
        self.read_plans = run.ReadPlans(self.dialect)
        self._tables: list[TableInfo] | None = None
        self._tables_at = 0.0
        self._descriptions: dict[tuple[str | None, str], tuple[float, TableDescription]] = {}
        self.derived = DerivedCatalog(CATALOG_TTL_SECONDS)
        self._extra_functions = guard.extra_functions(settings)
        self._recent_verdicts: OrderedDict[str, guard.Verdict] = OrderedDict()
        # The access policy in force (ACCESS_POLICY_FILE): a bad file raises PolicyError here, which stops
        # start-up with its one line; reload_policy() (SIGHUP) replaces it.
        self.access = AccessControl(
            str(settings.access_policy_file or ""),
            max_rows=settings.max_rows,
            timeout_seconds=settings.query_timeout_seconds,
        )
        self._catalog_version = 0  # bumped whenever the cached tables or descriptions change
        self._policy_catalog: tuple[int, InMemoryCatalog] | None = None
        self._decisions: OrderedDict[tuple[str, str, int, int], tuple[tuple[str, ...], str | None]] = OrderedDict()
        name = self.dialect.name
        self._rows_counter = metrics.rows_returned.labels(name)
        self._bytes_counter = metrics.bytes_returned.labels(name)

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def dialect_name(self) -> str:
        return self.dialect.name

    async def start(self) -> None:
        """Start the pool. Never raises because the database is down: status() says degraded."""
        # sqlglot builds its dialect's tokenizer and parser tables on first use: 6-8 ms on the event loop, in
        # the first call's statement check. Checking a statement here (before the site listens) pays it now.
        guard.check(WARM_UP_SQL, self.dialect.name, extra_functions=self._extra_functions)
        await self.pool.start()
        log.info(
            "db.started",
            dialect=self.dialect.name,
            pool_size=self.pool.size,
            read_only=self.settings.read_only_mode,
            healthy=self.pool.healthy(),
        )

    async def close(self) -> None:
        await self.pool.close()

    # --- access policy -------------------------------------------------------------------------------
    @property
    def policy(self) -> AccessPolicy:
        """The access policy in force (UNRESTRICTED when ACCESS_POLICY_FILE is empty); `access.describe()`
        summarises it for the operator console."""
        return self.access.policy

    def reload_policy(self) -> bool:
        """Re-read ACCESS_POLICY_FILE (SIGHUP); False (and the old policy kept) when the new file is invalid."""
        return self.access.reload()

    def role_policy(self, principal: Principal) -> RolePolicy:
        return self.access.role(principal)

    def _catalog_changed(self) -> None:
        self._catalog_version += 1
        self._policy_catalog = None

    async def _check_catalog(self, tree: exp.Expr | None, role: RolePolicy | None) -> InMemoryCatalog:
        """The catalog the policy check resolves names in: every table, with the columns the cache knows.
        Tables the statement reads whose columns a column pattern of `role` may deny are described first
        (a column the check does not know could be a denied one: it fails closed without them)."""
        tables = await self._table_list()
        catalog = self._built_catalog(tables)
        if role is not None and role.deny_columns and tree is not None:
            wanted = []
            for name in tables_read(tree, catalog):
                schema, _, table_name = name.rpartition(".")
                for found in catalog.resolve(schema or None, table_name):
                    if found.columns is None and role.may_deny_columns_of(found.schema, found.name):
                        wanted.append(found)
            for found in wanted:
                info = next((t for t in tables if t.schema == found.schema and t.name == found.name), None)
                if info is not None:
                    await self._description(info)
            if wanted:
                catalog = self._built_catalog(tables)
        return catalog

    def _built_catalog(self, tables: list[TableInfo]) -> InMemoryCatalog:
        if self._policy_catalog is not None and self._policy_catalog[0] == self._catalog_version:
            return self._policy_catalog[1]
        now = time.monotonic()
        entries = []
        for table in tables:
            cached = self._descriptions.get((table.schema, table.name))
            columns = (
                tuple(c.name for c in cached[1].columns)
                if cached and now - cached[0] < CATALOG_TTL_SECONDS
                else None  # unknown: the check fails closed for `*` over it
            )
            entries.append(CatalogTable(table.schema, table.name, columns, table.kind))
        catalog = InMemoryCatalog(entries, self.dialect.default_schema)
        self._policy_catalog = (self._catalog_version, catalog)
        return catalog

    async def _policy_check(
        self, sql: str, verdict: guard.Verdict, principal: Principal | None
    ) -> tuple[tuple[str, ...], RolePolicy | None]:
        """(the tables the read reads, the caller's restricting role or None); QueryRefused("policy", ...)
        when the caller's role may not read something it touches. Decisions are kept per (statement, role,
        catalog version, policy generation): a model repeats its statements, and the check costs up to ~0.5 ms."""
        tree = _checked_tree(verdict)
        role = self.access.restricting_role(principal)
        internal = principal is None and self.access.restricts_anyone
        if role is None and not internal:
            # Nothing to enforce: the tables as written, for the audit (no catalog query for a read that
            # did not need one before).
            key = (sql, "", -1, 0)
            cached = self._decisions.get(key)
            if cached is None:
                cached = (tables_read(tree, _NO_CATALOG[self.dialect.default_schema]) if tree is not None else (), None)
                self._remember(key, cached)
            return cached[0], None
        if role is not None and tree is None:
            self._refuse_policy(
                f"role {role.name} has an access policy, and this statement can only be checked after a "
                "rewrite (a T-SQL hint or XMLNAMESPACES): leave that part out"
            )
        catalog = await self._check_catalog(tree, role)
        key = (sql, role.name if role is not None else "\x00service", self._catalog_version, self.access.generation)
        cached = self._decisions.get(key)
        if cached is None:
            if role is None:
                why = internal_refusal(tree, catalog)
                cached = (tables_read(tree, catalog), why)
            else:
                decision = check_statement(tree, catalog, role)
                denied = decision.message or f"role {role.name} may not read what this statement reads"
                cached = (decision.tables, None if decision.allowed else denied)
            self._remember(key, cached)
        if cached[1] is not None:
            self._refuse_policy(cached[1])
        return cached[0], role

    def _remember(self, key: tuple[str, str, int, int], value: tuple[tuple[str, ...], str | None]) -> None:
        self._decisions[key] = value
        if len(self._decisions) > RECENT_DECISIONS:
            self._decisions.popitem(last=False)

    def _refuse_policy(self, message: str) -> None:
        self.metrics.guard_refusals.labels("policy").inc()
        log.info("db.refused", reason="policy")
        raise QueryRefused("policy", message)

    def _role_caps(
        self, role: RolePolicy | None, max_rows: int | None, timeout: float | None
    ) -> tuple[int | None, float | None]:
        """A role's own caps lower the call's (never raise the global ones)."""
        if role is None:
            return max_rows, timeout
        caps = role.caps(self.settings.max_rows, self.settings.query_timeout_seconds)
        rows = caps.max_rows if max_rows is None else min(caps.max_rows, max_rows)
        seconds = caps.timeout_seconds if timeout is None or timeout <= 0 else min(caps.timeout_seconds, timeout)
        return rows, seconds

    async def visible_table(self, table: TableInfo, principal: Principal | None) -> TableInfo:
        """`table` itself when the caller may read it; QueryRefused("policy", ...) naming it when not."""
        role = self.access.restricting_role(principal)
        if role is not None:
            denial = role.table_denial(table.schema, table.name)
            if denial:
                self._refuse_policy(f"role {role.name} may not read {table.qualified_name} ({denial})")
        return table

    def _visible_description(self, description: TableDescription, role: RolePolicy | None) -> TableDescription:
        """The description without the columns `role` may never see, nor keys, indexes and foreign keys that
        name them or point at a table it may not read."""
        if role is None:
            return description
        table = description.table
        columns = role.visible_columns(table, description.columns)
        shown = {c.name for c in columns}

        def keeps(names: Sequence[str]) -> bool:
            return all(n in shown for n in names)

        def keeps_fk(fk: ForeignKey) -> bool:
            schema, _, name = fk.references_table.rpartition(".")
            target_schema = schema or None
            return (
                keeps(fk.columns)
                and role.may_read_table(target_schema, name)
                and not any(role.column_denied(target_schema, name, c) for c in fk.references_columns)
            )

        return dataclasses.replace(
            description,
            columns=columns,
            primary_key=[c for c in description.primary_key if c in shown] if keeps(description.primary_key) else [],
            foreign_keys=[fk for fk in description.foreign_keys if keeps_fk(fk)],
            indexes=[ix for ix in description.indexes if keeps(ix.columns)],
        )

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
        cap = self.settings.max_rows
        return cap if max_rows is None else max(1, min(cap, int(max_rows)))

    def _time_cap(self, timeout: float | None) -> float:
        cap = self.settings.query_timeout_seconds
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
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        principal: Principal | None = None,
        max_rows: int | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one read query: the guard must accept it (else QueryRefused), whatever READ_ONLY_MODE says, and
        it runs in a transaction that is rolled back. `max_rows` and `timeout` can only lower the caps.

        `principal` is the caller: its role's access policy must allow every table and column the statement
        touches (else QueryRefused("policy", ...)), and the role's caps lower the call's. A read without a
        principal is the service's own catalog query: while a policy restricts anyone it may read no table
        of the catalog (app.db.access.internal_refusal), so no caller's statement can take that path.
        `result.tables` names the tables the statement reads (for the audit line)."""
        verdict = self.verdict(sql)
        self._refuse_unless_read(verdict)
        tables, role = await self._policy_check(sql, verdict, principal)
        max_rows, timeout = self._role_caps(role, max_rows, timeout)
        result = await self._read(sql, _checked_tree(verdict), params, max_rows=max_rows, timeout=timeout)
        result.tables = tables  # the result is this call's own (a copy costs a few µs per call)
        return result

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
        # A read may run on the loop (below): it waits for a pass of the loop with time left (app.loop_pass).
        if self.loop_pass.spent():
            await self.loop_pass.turn()
        plans = self.read_plans

        def job(session: Worker, rows_cap: int, bytes_cap: int) -> QueryResult:
            return run.planned_read(session, plans, sql, tree, params, rows_cap, bytes_cap)

        # A read may run on the event loop where the engine is in this process (Pool.run's inline_key).
        return await self._capped(job, max_rows=max_rows, timeout=timeout, retry=True, inline_key=sql)

    async def _capped(
        self,
        job: Callable[[Worker, int, int], QueryResult],
        *,
        max_rows: int | None,
        timeout: float | None,
        retry: bool,
        inline_key: str | None = None,
    ) -> QueryResult:
        """The one place a statement's row, byte and time caps are applied (reads and writes alike)."""
        rows_cap, bytes_cap = self._row_cap(max_rows), self.settings.max_result_bytes
        result = await self.pool.run(
            lambda session: job(session, rows_cap, bytes_cap),
            timeout=self._time_cap(timeout),
            retry=retry,
            inline_key=inline_key,
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
        self, sql: str, params: Sequence[Any], principal: Principal, *, max_rows: int | None, timeout: float | None
    ) -> QueryResult:
        glot = guard.sqlglot_dialect(self.dialect.name)
        role = self.access.restricting_role(principal)
        if role is not None:  # the guard gives no tree for a write: parse it here, fail closed
            why = write_refusal(sql, glot, role, self._built_catalog(await self._table_list()))
            if why:
                self._refuse_policy(why)
        max_rows, timeout = self._role_caps(role, max_rows, timeout)

        def job(session: Worker, rows_cap: int, bytes_cap: int) -> QueryResult:
            return run.write(session, sql, params, rows_cap, bytes_cap)

        try:
            result = await self._capped(job, max_rows=max_rows, timeout=timeout, retry=False)
        finally:
            self.forget_catalog()  # the write may have been DDL
        return dataclasses.replace(result, tables=write_tables(sql, glot) or ())

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
        self._catalog_changed()
        self.read_plans.forget()  # plans know their statements' columns

    async def _table_list(self, *, refresh: bool = False) -> list[TableInfo]:
        now = time.monotonic()
        if refresh or self._tables is None or now - self._tables_at > CATALOG_TTL_SECONDS:
            self._tables = await self._catalog(self.dialect.list_tables)
            self._tables_at = time.monotonic()
            self._catalog_changed()
        return self._tables

    async def list_tables(self, *, principal: Principal | None = None) -> list[TableInfo]:
        """The tables and views, only those the caller's role may read (all of them without a principal)."""
        tables = await self._table_list()
        role = self.access.restricting_role(principal)
        return list(tables) if role is None else role.visible_tables(tables)

    async def resolve_table(self, name: str | TableInfo, *, principal: Principal | None = None) -> TableInfo:
        """The catalog entry for a user-supplied name (any case, with or without schema). For a caller whose
        role may not read it: QueryRefused("policy", ...); suggestions for an unknown name come only from
        the tables the role may read."""
        if isinstance(name, TableInfo):
            name = name.qualified_name
        role = self.access.restricting_role(principal)
        try:
            found = await self._resolve(name, await self._table_list())
        except TableNotFound as exc:
            if role is None:
                raise
            raise TableNotFound(str(name), [s for s in exc.suggestions if self._readable_name(s, role)]) from None
        return await self.visible_table(found, principal)

    def _readable_name(self, qualified: str, role: RolePolicy) -> bool:
        for table in self._tables or ():
            if table.qualified_name == qualified:
                return role.may_read_table(table.schema, table.name)
        return False

    async def _resolve(self, name: str, tables: list[TableInfo]) -> TableInfo:
        try:
            return resolve(name, tables, self.dialect)
        except TableNotFound:
            # Maybe created since the catalog was cached: look again, but not on every bad name.
            if time.monotonic() - self._tables_at < CATALOG_MIN_REFRESH_SECONDS:
                raise
        return resolve(name, await self._table_list(refresh=True), self.dialect)

    async def describe_table(self, name: str | TableInfo, *, principal: Principal | None = None) -> TableDescription:
        """The table's columns, keys and indexes; for a caller, without what its role may never see."""
        table = await self.resolve_table(name, principal=principal)
        description = await self._catalog(lambda cursor: self.dialect.describe_table(cursor, table))
        self._descriptions[(table.schema, table.name)] = (time.monotonic(), description)
        self._catalog_changed()
        return self._visible_description(description, self.access.restricting_role(principal))

    async def cached_description(
        self, name: str | TableInfo, *, principal: Principal | None = None
    ) -> TableDescription:
        """describe_table, served from the catalog cache while it is fresh (for callers that describe the same
        tables again and again, such as ChatGPT's search and fetch)."""
        table = await self.resolve_table(name, principal=principal)
        return self._visible_description(await self._description(table), self.access.restricting_role(principal))

    async def _description(self, table: TableInfo) -> TableDescription:
        cached = self._descriptions.get((table.schema, table.name))
        if cached and time.monotonic() - cached[0] < CATALOG_TTL_SECONDS:
            return cached[1]
        description = await self._catalog(lambda cursor: self.dialect.describe_table(cursor, table))
        self._descriptions[(table.schema, table.name)] = (time.monotonic(), description)
        self._catalog_changed()
        return description

    def sample_limit(self, asked: int) -> int:
        """The rows a sample of `asked` rows may return: the one place SAMPLE_MAX_ROWS and MAX_ROWS cap it."""
        return max(1, min(int(asked), self.settings.sample_max_rows, self.settings.max_rows))

    async def sample(
        self, name: str | TableInfo, limit: int = 10, *, principal: Principal | None = None
    ) -> QueryResult:
        """The first `limit` rows of a table or view (capped by sample_limit). For a caller: a table its role
        may not read is refused, and the columns it may never see are left out of the SELECT."""
        table = await self.resolve_table(name, principal=principal)
        role = self.access.restricting_role(principal)
        n = self.sample_limit(limit)
        sql = await self._without_denied_columns(self.dialect.sample_sql(table, n), table, role)
        max_rows, timeout = self._role_caps(role, n, None)
        # the same caps as any read: wide values cut on the server
        result = await self._read(sql, None, (), max_rows=max_rows, timeout=timeout)
        return dataclasses.replace(result, tables=(table.qualified_name,))

    async def _without_denied_columns(self, sql: str, table: TableInfo, role: RolePolicy | None) -> str:
        """The dialect's own `SELECT * FROM table ...` with `*` replaced by the columns `role` may see."""
        if role is None or not role.may_deny_columns_of(table.schema, table.name):
            return sql
        description = await self._description(table)
        shown = role.visible_columns(table, [c.name for c in description.columns])
        if len(shown) == len(description.columns):
            return sql
        if not shown or sql.count(" * FROM ") != 1:
            self._refuse_policy(f"role {role.name} may see none of the columns of {table.qualified_name}")
        columns = ", ".join(self.dialect.quote_identifier(c) for c in shown)
        return sql.replace(" * FROM ", f" {columns} FROM ", 1)

    async def fetch_row(
        self, table: TableInfo, key: dict[str, Any], *, principal: Principal | None = None
    ) -> dict[str, Any] | None:
        """The row whose key columns equal `key` (column names matched case-insensitively), or None. For a
        caller: refused when its role may not read the table or a key column; the columns it may never see
        are not selected."""
        if not key:
            raise QueryFailed("a row key needs at least one column value")
        await self.visible_table(table, principal)
        role = self.access.restricting_role(principal)
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
        if role is not None and any(role.column_denied(table.schema, table.name, c) for c in columns):
            self._refuse_policy(f"role {role.name} may not look rows of {table.qualified_name} up by that key")
        sql = await self._without_denied_columns(self.dialect.row_sql(table, columns, column_types), table, role)
        _, timeout = self._role_caps(role, 1, None)
        # Read inside the byte cap like every read: a row larger than the cap is refused with the column to
        # leave out, rather than pulled whole.
        result = await self._read(sql, None, params, max_rows=1, timeout=timeout)
        if result.rows:
            return dict(zip(result.columns, result.rows[0], strict=False))
        if result.truncated_reason == "max_bytes":
            where = f" (column {result.too_long_column})" if result.too_long_column else ""
            raise QueryFailed(
                f"the row is larger than the {self.settings.max_result_bytes:,}-byte result limit{where}; "
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
        return await self._database._write(sql, params, self.principal, max_rows=max_rows, timeout=timeout)


class _EmptyCatalogs(dict[str | None, InMemoryCatalog]):
    """An empty catalog per default schema: tables_read then names the tables as written."""

    def __missing__(self, default_schema: str | None) -> InMemoryCatalog:
        catalog = self[default_schema] = InMemoryCatalog((), default_schema)
        return catalog


_NO_CATALOG = _EmptyCatalogs()


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
