"""The database layer on SQLite through the {SQLite3} ODBC driver: results, caps, writes, catalog,
time limits, cancellation and the bounded pool."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from app.core import Principal
from app.db import execute as run
from app.db.database import Database, Writer
from app.db.types import (
    DatabaseBusy,
    DatabaseUnavailable,
    QueryFailed,
    QueryRefused,
    QueryTimeout,
    TableNotFound,
)
from tests.fixtures.databases import open_database, sqlite_snapshot

WRITER = Principal(subject="w", username="writer", role="writer")
# Runs until interrupted: SQLite computes an endless recursive CTE.
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _writer(database: Database) -> Writer:
    writer = database.writer_for(WRITER)
    assert writer is not None
    return writer


def _sqlite(path: Path, **overrides):
    return open_database(db_backend="sqlite", sqlite_path=str(path), **overrides)


async def test_results_and_types_serialize(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        result = await database.read(
            "SELECT p.id, p.price, p.weight, p.picture, p.guid, c.created_at, o.ordered_on, o.note "
            "FROM products p, customers c, orders o "
            "WHERE p.id = 1 AND c.id = 1 AND o.id = 1"
        )
    assert result.columns == ["id", "price", "weight", "picture", "guid", "created_at", "ordered_on", "note"]
    (row,) = result.rows
    assert row[0] == 1
    assert row[1] in (9.99, "9.99")  # SQLite stores NUMERIC(10,2) as REAL
    assert row[2] == 0.5
    assert row[3] == "0x0001FF"
    assert row[4] == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert row[5] == "2024-01-05T10:00:00"
    assert row[6] == "2024-04-01"
    assert row[7] is None
    payload = result.as_dict()
    json.dumps(payload, allow_nan=False)
    assert payload["truncated"] is False and payload["row_count"] == 1


async def test_special_floats_and_unicode(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        result = await database.read("SELECT 1e999 AS inf, -1e999 AS ninf, 'héllo ☃ 😀' AS s, NULL AS n")
    assert result.rows == [["Infinity", "-Infinity", "héllo ☃ 😀", None]]
    json.dumps(result.as_dict(), allow_nan=False)


async def test_64_bit_integers_survive(sqlite_db) -> None:
    # Without BigInt=1 the driver reads integers as 32-bit: 9007199254740993 would come back as 1.
    async with _sqlite(sqlite_db) as database:
        result = await database.read("SELECT 9007199254740993 AS big, -9223372036854775808 AS smallest")
    assert result.rows == [[9007199254740993, -9223372036854775808]]


async def test_row_cap_truncates_and_callers_can_only_lower_it(sqlite_db) -> None:
    many = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 50) SELECT x FROM n"
    async with _sqlite(sqlite_db, max_rows=20) as database:
        full = await database.read(many, max_rows=1000)  # asking for more than the setting: still 20
        assert (full.row_count, full.truncated, full.truncated_reason) == (20, True, "max_rows")
        assert full.rows[-1] == [20]
        lowered = await database.read(many, max_rows=5)
        assert (lowered.row_count, lowered.truncated_reason) == (5, "max_rows")
        exact = await database.read("SELECT id FROM customers", max_rows=5)
        assert (exact.row_count, exact.truncated) == (5, False)  # exactly at the cap is not truncated
        assert database.metrics.registry.get_sample_value("mssql_mcp_truncations_total", {"reason": "max_rows"}) == 2
        assert database.metrics.registry.get_sample_value("mssql_mcp_rows_returned_total", {"dialect": "sqlite"}) == 30


async def test_byte_cap_truncates_by_json_size(sqlite_db) -> None:
    wide = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100) "
        "SELECT x, printf('%.200c', 'y') AS pad FROM n"
    )
    async with _sqlite(sqlite_db, max_result_bytes=5000) as database:
        result = await database.read(wide)
    assert result.truncated and result.truncated_reason == "max_bytes"
    assert 0 < result.row_count < 100
    assert len(json.dumps(result.rows)) <= 5000
    assert result.result_bytes <= 5000
    assert result.rows[0][1] == "y" * 200


async def test_refused_in_read_only_mode_with_reason_metric(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        assert database.is_read_only("SELECT 1") and not database.is_read_only("DELETE FROM customers")
        assert database.writer_for(WRITER) is None  # read-only mode: no writes, not even for a writer
        with pytest.raises(QueryRefused) as info:
            await database.read("SELECT 1; DELETE FROM customers")
        assert info.value.reason == "multiple_statements"
        assert (
            database.metrics.registry.get_sample_value(
                "mssql_mcp_guard_refusals_total", {"reason": "multiple_statements"}
            )
            == 1
        )


async def test_read_only_connection_blocks_writes_even_past_the_guard(sqlite_db) -> None:
    before = sqlite_snapshot(sqlite_db)

    def unlock_then_delete(session):
        cursor = session.cursor()
        cursor.execute("PRAGMA query_only = 0")  # lifts one lock; the file is still opened mode=ro
        cursor.execute("DELETE FROM customers")
        session.conn.commit()

    async with _sqlite(sqlite_db) as database:
        # Defence in depth: hand writes straight to the pool, skipping the guard.
        for sql in ("DELETE FROM customers", "CREATE TABLE evil (a INTEGER)"):
            with pytest.raises(QueryFailed) as info:
                await database.pool.run(lambda s, sql=sql: run.write(s, sql, (), 10, 10_000), timeout=5)
            assert "readonly" in str(info.value) or "query_only" in str(info.value), str(info.value)
        with pytest.raises(QueryFailed, match="readonly"):
            await database.pool.run(unlock_then_delete, timeout=5)
    assert sqlite_snapshot(sqlite_db) == before


async def test_writes_commit_only_on_success(sqlite_db) -> None:
    async with _sqlite(sqlite_db, read_only_mode=False) as database:
        assert database.is_read_only("SELECT 1")
        writer = _writer(database)
        result = await writer.write("INSERT INTO customers (id, name) VALUES (10, 'New Person')")
        assert result.rows_affected == 1
        updated = await writer.write("UPDATE orders SET status = 'archived' WHERE customer_id = 1")
        assert updated.rows_affected == 2
        with pytest.raises(QueryFailed) as info:  # duplicate primary key
            await writer.write("INSERT INTO customers (id, name) VALUES (10, 'Again')")
        assert "UNIQUE" in str(info.value) or "constraint" in str(info.value).lower()
        with pytest.raises(QueryFailed):  # foreign key (FKSupport=1)
            await writer.write("INSERT INTO orders (id, customer_id, ordered_on) VALUES (99, 12345, '2024-01-01')")
        read = await database.read("SELECT name FROM customers WHERE id = 10")
        assert read.rows == [["New Person"]] and read.rows_affected is None
        ddl = await writer.write("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        assert ddl.rows_affected == 0
        assert any(t.name == "notes" for t in await database.list_tables())  # catalog cache refreshed
    con = sqlite3.connect(sqlite_db)
    try:
        assert con.execute("SELECT name FROM customers WHERE id = 10").fetchall() == [("New Person",)]
        assert con.execute("SELECT count(*) FROM orders WHERE status = 'archived'").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM orders WHERE id = 99").fetchone() == (0,)
    finally:
        con.close()


async def test_catalog_on_sqlite(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        tables = {t.name: t for t in await database.list_tables()}
        assert set(tables) == {"customers", "products", "orders", "order_lines", "customer_totals"}
        assert tables["customer_totals"].kind == "view" and tables["orders"].kind == "table"
        assert tables["orders"].schema is None and tables["orders"].qualified_name == "orders"

        for name in ("ORDERS", "Orders", "main.orders", '"orders"', "[orders]"):
            assert (await database.resolve_table(name)).name == "orders"

        orders = await database.describe_table("Orders")
        assert [c.name for c in orders.columns] == ["id", "customer_id", "ordered_on", "status", "note"]
        assert orders.primary_key == ["id"]
        status = next(c for c in orders.columns if c.name == "status")
        assert not status.nullable and status.default == "'new'"
        assert orders.foreign_keys[0].columns == ["customer_id"]
        assert orders.foreign_keys[0].references_table == "customers"
        assert orders.foreign_keys[0].references_columns == ["id"]
        assert [(i.name, i.columns, i.unique) for i in orders.indexes] == [
            ("ix_orders_customer", ["customer_id", "ordered_on"], False)
        ]

        lines = await database.describe_table("order_lines")
        assert lines.primary_key == ["order_id", "line_no"]
        assert {fk.references_table for fk in lines.foreign_keys} == {"orders", "products"}
        customers = await database.describe_table("customers")
        assert any(i.unique and i.columns == ["email"] for i in customers.indexes)

        with pytest.raises(TableNotFound) as info:
            await database.describe_table("custmers")
        assert info.value.suggestions[0] == "customers"
        with pytest.raises(TableNotFound):
            await database.sample("other.customers", 3)

        sample = await database.sample("ORDER_LINES", 3)
        assert sample.row_count == 3 and sample.columns == ["order_id", "line_no", "product_id", "qty"]
        assert (await database.sample("customers", 10_000)).row_count == 5  # capped by SAMPLE_MAX_ROWS/table

        table = await database.resolve_table("order_lines")
        assert await database.fetch_row(table, {"ORDER_ID": "3", "line_no": 2}) == {
            "order_id": 3,
            "line_no": 2,
            "product_id": 3,
            "qty": 2,
        }
        assert await database.fetch_row(table, {"order_id": 3, "line_no": 9}) is None
        with pytest.raises(QueryFailed):
            await database.fetch_row(table, {"nope": 1})


async def test_sample_limit_is_capped(sqlite_db) -> None:
    async with _sqlite(sqlite_db, sample_max_rows=2) as database:
        result = await database.sample("customers", 50)
    assert result.row_count == 2


async def test_time_limit_cancels_and_connection_stays_usable(sqlite_db) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, query_timeout_seconds=5) as database:
        started = time.perf_counter()
        with pytest.raises(QueryTimeout) as info:
            await database.read(ENDLESS, timeout=0.3)
        elapsed = time.perf_counter() - started
        assert 0.25 < elapsed < 2.0
        assert str(info.value) == "query exceeded the 0.3 s time limit and was cancelled"
        assert (await database.read("SELECT 42")).rows == [[42]]  # same (only) connection
        assert database.pool.healthy() == 1
        assert database.metrics.registry.get_sample_value("mssql_mcp_query_timeouts_total", {"dialect": "sqlite"}) == 1


async def test_a_call_cannot_raise_the_time_limit(sqlite_db) -> None:
    async with _sqlite(sqlite_db, query_timeout_seconds=0.4) as database:
        started = time.perf_counter()
        with pytest.raises(QueryTimeout, match=r"0\.4 s"):
            await database.read(ENDLESS, timeout=60)
        assert time.perf_counter() - started < 2.0


async def test_cancelling_the_caller_cancels_the_statement(sqlite_db) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, query_timeout_seconds=30) as database:
        task = asyncio.create_task(database.read(ENDLESS))
        await asyncio.sleep(0.3)
        assert database.pool.in_use() == 1
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker is back quickly because the statement was interrupted, not left running for 30 s.
        result = await asyncio.wait_for(database.read("SELECT 'after'"), timeout=3)
        assert result.rows == [["after"]]
        assert time.perf_counter() - started < 2.0
        assert database.metrics.registry.get_sample_value("mssql_mcp_query_cancels_total", {"dialect": "sqlite"}) == 1


async def test_pool_exhaustion_gives_busy_after_the_bounded_wait(sqlite_db) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, db_pool_wait_seconds=0.3, query_timeout_seconds=10) as database:
        threads = threading.active_count()
        blockers = [asyncio.create_task(database.read(ENDLESS)) for _ in range(2)]
        await asyncio.sleep(0.2)
        waiter = asyncio.create_task(database.read("SELECT 1"))
        await asyncio.sleep(0.05)

        started = time.perf_counter()
        status = database.status()  # instant while every connection is busy
        assert time.perf_counter() - started < 0.05
        assert status["pool"] == {"size": 2, "in_use": 2, "idle": 0, "waiting": 1, "healthy": 2}
        assert status["status"] == "ok"

        started = time.perf_counter()
        with pytest.raises(DatabaseBusy) as info:
            await waiter
        assert str(info.value) == "database busy, retry in a moment"
        assert time.perf_counter() - started < 1.5  # the 0.3 s bounded wait, plus scheduling slack
        with pytest.raises(DatabaseBusy):
            await database.read("SELECT 1")
        assert threading.active_count() == threads  # no thread per call, no growth under pressure
        assert database.metrics.registry.get_sample_value("mssql_mcp_pool_busy_rejections_total") == 2

        for task in blockers:
            task.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)
        assert (await database.read("SELECT 1")).rows == [[1]]
        deadline = time.monotonic() + 2
        while database.status()["pool"]["in_use"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the interrupted statements hand their workers back
        assert database.status()["pool"]["in_use"] == 0


async def test_waiting_line_is_bounded(sqlite_db) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, db_pool_wait_seconds=5, db_pool_max_waiting=1) as database:
        blocker = asyncio.create_task(database.read(ENDLESS))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(database.read("SELECT 'queued'"))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(DatabaseBusy):  # the line is full: refused at once, not after 5 s
            await database.read("SELECT 1")
        assert time.perf_counter() - started < 1.0
        blocker.cancel()
        await asyncio.gather(blocker, return_exceptions=True)
        assert (await queued).rows == [["queued"]]  # the waiter got the freed connection


async def test_many_concurrent_calls_share_the_pool(sqlite_db) -> None:
    async with _sqlite(sqlite_db, db_pool_size=3, db_pool_max_waiting=500) as database:
        threads = threading.active_count()
        results = await asyncio.gather(*(database.read("SELECT ?", (i,)) for i in range(200)))
        assert [r.rows[0][0] for r in results] == list(range(200))
        assert threading.active_count() == threads
        assert database.status()["pool"]["in_use"] == 0


async def test_missing_file_degrades_and_recovers(tmp_path) -> None:
    missing = tmp_path / "later.db"
    async with _sqlite(missing) as database:
        status = database.status()
        assert status["status"] == "degraded" and status["last_error"]
        assert not missing.exists()  # mode=rw/ro never creates an empty database
        with pytest.raises(DatabaseUnavailable):
            await database.read("SELECT 1")
        sqlite3.connect(missing).close()
        deadline = time.monotonic() + 10
        while database.status()["status"] != "ok" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert database.status()["status"] == "ok"
        assert (await database.read("SELECT 7")).rows == [[7]]
        assert await database.ping()


async def test_closed_database_refuses_calls(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        assert await database.ping()
    with pytest.raises(DatabaseUnavailable):
        await database.read("SELECT 1")


# --- the caps inside the statement ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT id FROM orders ORDER BY id DESC", [[5], [4], [3]]),  # the statement's order is kept
        ("SELECT id FROM orders ORDER BY id LIMIT 2", [[1], [2]]),  # a smaller limit the user wrote holds
        ("SELECT id FROM orders ORDER BY id LIMIT 2 OFFSET 3", [[4], [5]]),
        ("VALUES (1), (2), (3), (4)", [[1], [2], [3]]),
        ("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4", [[1], [2], [3]]),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", [[1], [2], [3]]),
        ("SELECT id FROM orders ORDER BY id; -- trailing comment", [[1], [2], [3]]),
        ("SELECT id FROM orders ORDER BY id /* trailing block */ ;", [[1], [2], [3]]),
    ],
)
async def test_row_cap_goes_into_the_statement(sqlite_db, sql, rows) -> None:
    async with _sqlite(sqlite_db) as database:
        result = await database.read(sql, max_rows=3)
        assert result.rows == rows
        _, plan = next(iter(database.read_plans._plans.values()))
        assert "LIMIT 4" in plan.sql  # cap + 1: the driver never sees more rows than that


async def test_wide_values_are_cut_on_the_server_and_typed_values_kept(sqlite_db) -> None:
    async with _sqlite(sqlite_db, max_result_bytes=1000) as database:
        typed = await database.read("SELECT id, created_at, balance, name FROM customers ORDER BY id LIMIT 1")
        plain = await database.pool.run(
            lambda s: run.read(
                s, "SELECT id, created_at, balance, name FROM customers ORDER BY id LIMIT 1", (), 10, 1000
            ),
            timeout=5,
        )
        assert typed.rows == plain.rows  # same values and types as the statement run as written
        wide = await database.read("SELECT id, printf('%.*c', 5000, 'x') AS doc FROM orders ORDER BY id")
        assert (wide.rows, wide.truncated_reason, wide.too_long_column) == ([], "max_bytes", "doc")
        assert wide.as_dict()["too_long_column"] == "doc"
        some = await database.read("SELECT id, printf('%.*c', 300, 'x') AS doc FROM orders ORDER BY id")
        assert [r[0] for r in some.rows] == [1, 2, 3] and some.truncated_reason == "max_bytes"
        assert some.too_long_column is None  # the rows together, not one value, reached the cap
        blob = await database.read("SELECT picture FROM products WHERE picture IS NOT NULL ORDER BY id")
        assert blob.rows == [["0x0001FF"], ["0x68656C6C6F"]]  # blobs pass the cut whole when they fit


async def test_repeated_statements_are_planned_once(sqlite_db) -> None:
    async with _sqlite(sqlite_db) as database:
        for _ in range(3):
            await database.read("SELECT name FROM customers ORDER BY id")
        assert len(database.read_plans._plans) == 1


async def test_fetch_row_reads_inside_the_byte_cap(sqlite_db) -> None:
    con = sqlite3.connect(sqlite_db)
    con.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO docs VALUES (1, 'short'), (2, printf('%.*c', 200000, 'x'))")
    con.commit()
    con.close()
    async with _sqlite(sqlite_db, max_result_bytes=10_000) as database:
        table = await database.resolve_table("docs")
        assert await database.fetch_row(table, {"id": "1"}) == {"id": 1, "body": "short"}
        with pytest.raises(QueryFailed, match=r"larger than the 10,000-byte result limit \(column body\)"):
            await database.fetch_row(table, {"id": "2"})
        assert await database.fetch_row(table, {"id": "3"}) is None


async def test_cached_plans_follow_schema_changes(sqlite_db) -> None:
    async with _sqlite(sqlite_db, read_only_mode=False) as database:
        before = await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")
        con = sqlite3.connect(sqlite_db)  # changed behind the service's back: the cached plan is stale
        con.execute("ALTER TABLE orders ADD COLUMN channel TEXT DEFAULT 'web'")
        con.commit()
        con.close()
        after = await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")
        assert after.columns == [*before.columns, "channel"] and after.rows[0][-1] == "web"
        await _writer(database).write("ALTER TABLE orders DROP COLUMN channel")  # through the service
        assert (await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")).columns == before.columns
