"""Job functions that run a statement on a worker's connection and read its result within the caps.

Reads: execute, read with `fetchmany` until the row cap (`max_rows`, plus one row to know whether
more exist) or the byte cap (`max_bytes` of JSON row text) is reached, then roll back: a read never
leaves anything behind, whatever the statement did. Writes (read-only mode off): execute, walk every
result set (so every statement of a batch runs), commit; any error rolls the whole thing back (the
pool worker does that). Nothing here ever calls `fetchall` on user results.

The byte cap measures `len(json.dumps(row))` with non-ASCII escaped: the exact size of the row in a
default `json.dumps` of the result, and an upper bound on both its UTF-8 bytes and its characters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pyodbc

from .serialize import serialize_row
from .types import QueryResult

FETCH_BATCH = 256
_EMPTY_JSON_ARRAY = 2  # "[]"


def _execute(cursor: pyodbc.Cursor, sql: str, params: Sequence[Any]) -> None:
    if params:
        cursor.execute(sql, list(params))
    else:
        cursor.execute(sql)


def collect(cursor: pyodbc.Cursor, session: Any, max_rows: int, max_bytes: int) -> QueryResult:
    """Read the current result set up to the caps."""
    description = cursor.description
    if description is None:
        return QueryResult(columns=[], rows=[], result_bytes=_EMPTY_JSON_ARRAY)
    columns = [str(d[0]) for d in description]
    rows: list[list[Any]] = []
    size = _EMPTY_JSON_ARRAY
    reason: str | None = None
    dumps = json.dumps
    while reason is None:
        want = min(FETCH_BATCH, max_rows + 1 - len(rows))
        batch = cursor.fetchmany(want)
        if not batch:
            break
        session.rows_returned = True
        for raw in batch:
            if len(rows) >= max_rows:
                reason = "max_rows"
                break
            row = serialize_row(raw)
            cost = len(dumps(row)) + 1  # the row and its separator
            if size + cost > max_bytes:
                reason = "max_bytes"
                break
            rows.append(row)
            size += cost
        if len(batch) < want:  # the driver had no more rows: skip a useless round trip
            break
    return QueryResult(columns=columns, rows=rows, truncated=reason is not None, truncated_reason=reason,
                       result_bytes=size)


def read(session: Any, sql: str, params: Sequence[Any], max_rows: int, max_bytes: int) -> QueryResult:
    started = time.perf_counter()
    cursor = session.cursor()
    _execute(cursor, sql, params)
    result = collect(cursor, session, max_rows, max_bytes)
    session.conn.rollback()  # defence in depth: a read commits nothing, ever
    result.elapsed_ms = (time.perf_counter() - started) * 1000
    return result


def write(session: Any, sql: str, params: Sequence[Any], max_rows: int, max_bytes: int) -> QueryResult:
    started = time.perf_counter()
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


def first_row_as_dict(session: Any, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
    """One row (by key) as {column: JSON-ready value}, or None; rolled back like every read."""
    cursor = session.cursor()
    _execute(cursor, sql, params)
    columns = [str(d[0]) for d in cursor.description or ()]
    row = cursor.fetchmany(1)
    session.conn.rollback()
    if not row:
        return None
    return dict(zip(columns, serialize_row(row[0]), strict=False))
