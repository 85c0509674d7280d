"""Job functions that run a statement on a worker's connection and read its result within the caps.

Reads run the dialect's ReadPlan: the user's statement with the row cap (cap + 1, to know whether more
exist) inside it and wide values cut on the server, so drivers that buffer whole results never hold more
than that. They read with `fetchmany` until the row cap or the byte cap (`max_bytes` of JSON row text) is
reached, then close the cursor (which discards unread rows). Writes (read-only mode off): execute, walk
every result set (so every statement of a batch runs), commit. Every call then ends in the pool worker,
which rolls back and resets the session (Dialect.end_call): a read never leaves anything behind, whatever
the statement did. Nothing here ever calls `fetchall` on user results.

The byte cap measures `len(json.dumps(row))` with non-ASCII escaped: the exact size of the row in a
default `json.dumps` of the result, and an upper bound on both its UTF-8 bytes and its characters.
`json_size` gets that number from orjson's (much cheaper) compact encoding whenever the two provably agree.
"""

from __future__ import annotations

import functools
import json
import operator
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson
import pyodbc
from sqlglot import exp

from .dialects.base import RECHECK_MARKER, Dialect, ReadPlan, rows_per_fetch, statement_body
from .errors import is_cancel, is_server_timeout
from .forjson import collect_document, is_document_result
from .serialize import rows_serializer
from .types import QueryResult

FETCH_BATCH = 256
_EMPTY_JSON_ARRAY = 2  # "[]"


def json_size(row: list[Any]) -> int:
    """`len(json.dumps(row))` for a serialized row (app.db.serialize: str, int, float, bool, None values).

    orjson's compact text differs from json.dumps' only in the ", " separators (one character each), in
    non-ASCII and DEL (json.dumps escapes them), and in floats below 1e-4 (json.dumps writes `1e-05`,
    orjson `0.00001` or `1e-7`): when the encoding shows none of those, the length follows from it;
    otherwise (or past 64-bit ints) json.dumps measures, as before."""
    try:
        encoded = orjson.dumps(row)
    except orjson.JSONEncodeError:
        return len(json.dumps(row))
    compact = _escaped_length(encoded)
    if compact is None:
        return len(json.dumps(row))
    return compact + max(len(row) - 1, 0)


def rows_json_size(rows: list[list[Any]], width: int | None = None) -> int | None:
    """`sum(json_size(row) for row in rows)` from one orjson encoding of them all (a read sizes a whole batch
    of rows at once while it is well inside the byte cap); None when only json.dumps would be exact. `width`:
    every row has that many values (a result's rows do), which spares counting them."""
    try:
        encoded = orjson.dumps(rows)
    except orjson.JSONEncodeError:
        return None
    compact = _escaped_length(encoded)
    if compact is None:
        return None
    # "[" + the rows' compact texts joined by "," + "]"; each row then gets back its missing spaces.
    spaces = sum(max(len(row) - 1, 0) for row in rows) if width is None else len(rows) * max(width - 1, 0)
    return compact - 2 - max(len(rows) - 1, 0) + spaces


def _escaped_length(encoded: bytes) -> int | None:
    """The length of orjson's compact text once non-ASCII and DEL are escaped as json.dumps does (`\\u00e9`,
    a surrogate pair for characters past U+FFFF); None when a float may be written differently."""
    if b"e-" in encoded or b"0.0000" in encoded:
        return None
    deleted = encoded.count(b"\x7f")
    if encoded.isascii():
        return len(encoded) + 5 * deleted
    text = encoded.decode()
    wide = len(text) - len(text.encode("ascii", "ignore"))  # characters that become \uXXXX (6 characters)
    astral = len(text.encode("utf-16-le")) // 2 - len(text)  # of those, the ones that become two escapes
    return len(text) + 5 * (wide + deleted) + 6 * astral


def _execute(cursor: pyodbc.Cursor, sql: str, params: Sequence[Any]) -> None:
    if params:
        cursor.execute(sql, list(params))
    else:
        cursor.execute(sql)


def collect(
    cursor: pyodbc.Cursor, session: Any, max_rows: int, max_bytes: int, *, marks_over_cap: bool = False
) -> QueryResult:
    """Read the current result set up to the caps. With `marks_over_cap` the last column is the server's
    byte-cap marker (ReadPlan, Dialect._running_total_sql): it is not shown, and a row where it is set ends
    the result."""
    description = cursor.description
    if description is None:
        return QueryResult(columns=[], rows=[], result_bytes=_EMPTY_JSON_ARRAY)
    if is_document_result(description[:-1] if marks_over_cap else description):  # FOR JSON / FOR XML
        return collect_document(cursor, session, max_rows, max_bytes, marks_over_cap=marks_over_cap)
    if marks_over_cap:
        description = description[:-1]
    columns = list(map(str, map(_first, description)))
    width = len(columns)
    # Converters chosen once from the column types; the marker column is left out as the rows are serialized.
    serialize_rows = rows_serializer(tuple(map(_second, description)), drop_last=marks_over_cap)
    rows: list[list[Any]] = []
    size = _EMPTY_JSON_ARRAY
    reason: str | None = None
    too_long: str | None = None
    batch_rows = _batch_rows(max_rows, max_bytes)
    while reason is None:
        want = min(batch_rows, max_rows + 1 - len(rows))
        batch = cursor.fetchmany(want)
        if not batch:
            break
        session.rows_returned = True
        # The rows that may be shown, in order: up to the row cap, and before a row the server marked.
        shown: Sequence[Any] = batch
        stop: str | None = None
        if len(shown) > max_rows - len(rows):
            shown, stop = shown[: max_rows - len(rows)], "max_rows"
        if marks_over_cap:
            for index, raw in enumerate(shown):
                marker = raw[-1]
                if marker:  # the server found the byte cap passed: -1, or the column whose value alone is over
                    if marker == RECHECK_MARKER:  # a quick plan's result is over the cap: the exact plan decides
                        raise _Recheck
                    shown, stop = shown[:index], "max_bytes"
                    if isinstance(marker, int) and 0 < marker <= len(columns):
                        too_long = columns[marker - 1]
                    break
        serialized = serialize_rows(shown)
        together = rows_json_size(serialized, width) if serialized else 0
        if together is not None and size + together + len(serialized) <= max_bytes:
            # Well inside the cap: one encoding sized them all.
            if rows:
                rows.extend(serialized)
            else:
                rows = serialized
            size += together + len(serialized)
        else:
            for row in serialized:
                cost = json_size(row) + 1  # the row and its separator
                if size + cost > max_bytes:
                    stop, too_long = "max_bytes", _too_long_column(columns, row, max_bytes)
                    break
                rows.append(row)
                size += cost
        reason = stop
        if len(batch) < want:  # the driver had no more rows: skip a useless round trip
            break
    return QueryResult(
        columns=columns,
        rows=rows,
        truncated=reason is not None,
        truncated_reason=reason,
        result_bytes=size,
        too_long_column=too_long,
    )


_first, _second = operator.itemgetter(0), operator.itemgetter(1)  # a description's name and type code


@functools.lru_cache(maxsize=64)
def _batch_rows(max_rows: int, max_bytes: int) -> int:
    return min(FETCH_BATCH, rows_per_fetch(max_rows, max_bytes))  # rows may each be up to the cap


def _too_long_column(columns: list[str], row: list[Any], max_bytes: int) -> str | None:
    """The first column whose value alone is over the byte cap (cut on the server or not)."""
    for name, value in zip(columns, row, strict=False):
        if isinstance(value, str) and len(value) + 2 > max_bytes:
            return name
    return None


class ReadPlans:
    """ReadPlans by statement text and row cap, made on a worker thread (the first time with a `LIMIT 0`
    probe for dialects that need the columns), then reused: a repeated statement pays a dict lookup.

    A plan knows the statement's columns, which a schema change can alter (`SELECT *` after ALTER TABLE), so
    plans expire after TTL_SECONDS (like the catalog), all are forgotten after a write through the service,
    and a plan whose statement fails is dropped (the next call probes again)."""

    MAX_ENTRIES = 2048
    MAX_TEXT = 16_384  # longer statements are planned every time instead of pinning memory
    TTL_SECONDS = 30.0

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._plans: dict[tuple[str, int, int], tuple[float, ReadPlan]] = {}
        self._lock = threading.Lock()

    def get(
        self, session: Any, sql: str, tree: exp.Expr | None, params: Sequence[Any], max_rows: int, max_bytes: int
    ) -> ReadPlan:
        return self.lookup(session, sql, tree, params, max_rows, max_bytes)[0]

    def lookup(
        self, session: Any, sql: str, tree: exp.Expr | None, params: Sequence[Any], max_rows: int, max_bytes: int
    ) -> tuple[ReadPlan, bool]:
        """The plan, and whether it came from the cache."""
        key = (sql, max_rows, max_bytes)
        cached = self._plans.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.TTL_SECONDS:
            return cached[1], True
        description = self._probe(session, sql, params) if self.dialect.needs_columns else None
        plan = self.dialect.plan_read(sql, tree, max_rows, max_bytes, description)
        if len(sql) <= self.MAX_TEXT:
            with self._lock:
                self._plans.pop(key, None)
                if len(self._plans) >= self.MAX_ENTRIES:
                    self._plans.pop(next(iter(self._plans)))  # oldest first
                self._plans[key] = (now, plan)
        return plan, False

    def discard(self, sql: str, max_rows: int, max_bytes: int) -> None:
        with self._lock:
            self._plans.pop((sql, max_rows, max_bytes), None)

    def forget(self) -> None:
        with self._lock:
            self._plans.clear()

    def _probe(self, session: Any, sql: str, params: Sequence[Any]) -> Any:
        cursor = session.cursor()
        try:
            _execute(cursor, self.dialect.probe_sql(statement_body(sql, self.dialect.sqlglot)), params)
            return cursor.description
        finally:
            cursor.close()


def read(session: Any, plan: ReadPlan | str, params: Sequence[Any], max_rows: int, max_bytes: int) -> QueryResult:
    """Run a planned read (a plain text runs as written); the pool worker rolls back and resets the session
    afterwards."""
    if isinstance(plan, str):
        plan = ReadPlan(plan)
    started = time.perf_counter()
    result = _run_read(session, plan, params, max_rows, max_bytes)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


class _Recheck(Exception):
    """A quick plan's result is over the byte cap (RECHECK_MARKER): run its exact plan."""


def _run_read(session: Any, plan: ReadPlan, params: Sequence[Any], max_rows: int, max_bytes: int) -> QueryResult:
    cursor = _start_read(session, plan, params)
    try:
        # Unread rows are discarded when the worker closes the cursor, before the rollback (Worker._end_call).
        return collect(cursor, session, max_rows, max_bytes, marks_over_cap=plan.marks_over_cap)
    except _Recheck:
        assert plan.exact is not None
    # Rare: on the kept cursor (Worker.statement_cursor) the exact plan, then the quick one, prepare afresh.
    cursor = _start_read(session, plan.exact, params)
    return collect(cursor, session, max_rows, max_bytes, marks_over_cap=plan.exact.marks_over_cap)


def _start_read(session: Any, plan: ReadPlan, params: Sequence[Any]) -> pyodbc.Cursor:
    if params or plan.params:
        # A statement with parameters may stay prepared on the connection between calls (Worker.statement_cursor).
        cursor = session.statement_cursor()
        cursor.execute(plan.sql, [*params, *plan.params])
    else:
        cursor = session.cursor()
        cursor.execute(plan.sql)
    return cursor


def planned_read(
    session: Any,
    plans: ReadPlans,
    sql: str,
    tree: exp.Expr | None,
    params: Sequence[Any],
    max_rows: int,
    max_bytes: int,
) -> QueryResult:
    started = time.perf_counter()
    session.guarded_read = True  # statements the guard accepted, or the service's own (sample, row by key)
    plan, cached = plans.lookup(session, sql, tree, params, max_rows, max_bytes)
    try:
        result = _run_read(session, plan, params, max_rows, max_bytes)
    except pyodbc.Error as exc:
        plans.discard(sql, max_rows, max_bytes)
        # A cached plan knows the columns the statement had (SELECT * after ALTER TABLE may have others): plan
        # again and run once more, unless the statement was stopped (time limit, cancel) or never ran.
        if not cached or getattr(session, "cancel_reason", None) or is_cancel(exc) or is_server_timeout(exc):
            raise
        session.forget_prepared()  # the statement kept prepared is the one that failed
        session.conn.rollback()
        plan = plans.get(session, sql, tree, params, max_rows, max_bytes)
        result = _run_read(session, plan, params, max_rows, max_bytes)
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


def write(session: Any, sql: str, params: Sequence[Any], max_rows: int, max_bytes: int) -> QueryResult:
    started = time.perf_counter()
    session.wrote = True  # the session reset afterwards also undoes settings a write may have changed
    cursor = session.cursor()
    _execute(cursor, sql, params)
    result: QueryResult | None = None
    affected: int | None = None
    while True:
        count = cursor.rowcount  # -1 when the driver does not know (e.g. a SELECT); INSERT ... RETURNING counts
        if count is not None and count >= 0:
            affected = (affected or 0) + count
        if cursor.description is not None and result is None:
            result = collect(cursor, session, max_rows, max_bytes)
        if not cursor.nextset():  # later statements of a batch only run as their results are consumed
            break
    session.conn.commit()
    if result is None:
        result = QueryResult(columns=[], rows=[], result_bytes=_EMPTY_JSON_ARRAY)
    result.rows_affected = affected if affected is not None else 0
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result
