"""Reads kept prepared on SQLite (issue 10): a repeated read runs its compiled statement again, and nothing else
about a read changes: schema changes are seen, no read lock outlives the call, time limits and cancels still stop
it, and a failure leaves no stale statement behind."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from app.db.types import QueryTimeout
from tests.fixtures.databases import open_database

pytestmark = pytest.mark.integration

WIDE_READ = "SELECT id, name FROM customers ORDER BY id"  # a text column: the value-cut wrapper, worth keeping
ENDLESS_WIDE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT 'n' || count(*) AS n FROM c"


def _sqlite(path: Path, **overrides):
    return open_database(db_backend="sqlite", sqlite_path=str(path), db_pool_size=1, **overrides)


def _plan(database, sql: str):
    return next(plan for (text, _, _), (_, plan) in database.read_plans._plans.items() if text == sql)


async def test_a_repeated_wrapped_read_runs_on_the_same_prepared_statement(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        first = await database.read(WIDE_READ)
        worker = database.pool._workers[0]
        kept = worker._prepared
        assert kept is not None
        for _ in range(3):
            assert (await database.read(WIDE_READ)).rows == first.rows
        assert worker._prepared is kept  # never closed and made again between calls
        plan = _plan(database, WIDE_READ)
        assert plan.marks_over_cap and plan.params == (0,) and plan.sql.count("?") == 1


async def test_plain_reads_and_statements_with_markers_are_not_given_a_parameter(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        await database.read("SELECT 1")  # cheap to compile: run as before, on a fresh cursor
        assert _plan(database, "SELECT 1").params == ()
        assert database.pool._workers[0]._prepared is None
        # A marker of the statement's own: its text stays as it was (the caller's parameters bind it).
        sql = "SELECT name FROM customers WHERE name = ? OR name LIKE 'a:%'"
        result = await database._read(sql, None, ("Ada",), max_rows=10)
        assert _plan(database, sql).params == ()
        assert result.rows in ([["Ada"]], [])


async def test_a_schema_change_is_seen_by_the_next_read(sqlite_db) -> None:
    async with _sqlite(sqlite_db, read_only_mode=True) as database:
        before = await database.read("SELECT * FROM customers ORDER BY id")
        again = await database.read("SELECT * FROM customers ORDER BY id")
        assert again.columns == before.columns
        con = sqlite3.connect(sqlite_db)
        con.execute("ALTER TABLE customers ADD COLUMN nickname TEXT DEFAULT 'nick'")
        con.commit()
        added = await database.read("SELECT * FROM customers ORDER BY id")
        assert added.columns == [*before.columns, "nickname"]
        assert all(row[-1] == "nick" for row in added.rows)
        con.execute("ALTER TABLE customers DROP COLUMN nickname")
        con.commit()
        con.close()
        dropped = await database.read("SELECT * FROM customers ORDER BY id")
        assert dropped.columns == before.columns and dropped.rows == before.rows


async def test_after_a_schema_change_values_come_with_the_new_column_types(sqlite_db) -> None:
    """Same column count, so the wrapper's column list still lines up: only the schema stamp tells the kept
    statement is stale (the driver would read the new integer column with the old text column's type)."""
    async with _sqlite(sqlite_db) as database:
        sql = "SELECT * FROM orders ORDER BY id"
        for _ in range(2):
            assert (await database.read(sql)).rows[0][-1] is None  # note TEXT, empty
        con = sqlite3.connect(sqlite_db)
        con.executescript("ALTER TABLE orders DROP COLUMN note; ALTER TABLE orders ADD COLUMN extra INTEGER DEFAULT 7;")
        con.close()
        assert (await database.read(sql)).rows[0][-1] == 7  # an integer, as a fresh statement reads it
        assert isinstance((await database.read(sql)).rows[0][-1], int)


async def test_no_read_lock_outlives_the_call(tmp_path, sqlite_db) -> None:
    con = sqlite3.connect(sqlite_db, isolation_level=None)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    con.execute("CREATE TABLE notes (x INTEGER)")
    async with _sqlite(sqlite_db) as database:
        for _ in range(2):  # the second one runs the kept statement
            result = await database.read(WIDE_READ, max_rows=1)  # rows left unread on the server side
            assert result.truncated
            con.execute("INSERT INTO notes VALUES (1)")
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0  # the idle worker holds no snapshot: a checkpoint goes through
    con.close()


async def test_a_time_limit_and_a_cancel_stop_a_kept_statement(sqlite_db) -> None:
    async with _sqlite(sqlite_db, query_timeout_seconds=30) as database:
        worker = database.pool._workers[0]
        await database.read(WIDE_READ)
        assert worker._prepared is not None  # the endless read below runs on the kept cursor
        with pytest.raises(QueryTimeout):
            await database.read(ENDLESS_WIDE, timeout=0.3)
        assert worker._prepared is None  # a statement that was stopped is not kept
        task = asyncio.create_task(database.read(ENDLESS_WIDE))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await asyncio.wait_for(database.read(WIDE_READ), timeout=3)
        assert result.row_count > 0 and worker._prepared is not None
        assert database.pool.healthy() == 1
        metric = database.metrics.registry.get_sample_value
        assert metric("mssql_mcp_query_timeouts_total", {"dialect": "sqlite"}) == 1
        assert metric("mssql_mcp_query_cancels_total", {"dialect": "sqlite"}) == 1


async def test_a_failing_kept_statement_is_replaced(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        sql = "SELECT id, name FROM customers WHERE id < 3 ORDER BY id"
        first = await database.read(sql)
        worker = database.pool._workers[0]
        kept = worker._prepared
        con = sqlite3.connect(sqlite_db)
        con.execute("ALTER TABLE customers RENAME COLUMN name TO full_name")
        con.commit()
        with pytest.raises(Exception, match="name"):
            await database.read(sql)
        con.execute("ALTER TABLE customers RENAME COLUMN full_name TO name")
        con.commit()
        con.close()
        assert (await database.read(sql)).rows == first.rows
        assert worker._prepared is not None and worker._prepared is not kept
