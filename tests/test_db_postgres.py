"""The database layer on a real PostgreSQL 15 through psqlODBC: types, read-only sessions, writes,
catalog, time limits, cancellation, restarts and start-up while the server is down."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from app.core import Principal
from app.db import execute as run
from app.db.database import Database, Writer
from app.db.types import DatabaseUnavailable, QueryFailed, QueryTimeout, TableNotFound
from tests.fixtures.databases import open_database, pg_snapshot

WRITER = Principal(subject="w", username="writer", role="writer")
# A slow read the guard allows (no deny-listed function): ~10^10 rows to count.
SLOW_READ = "SELECT count(*) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b"


def _writer(database: Database) -> Writer:
    writer = database.writer_for(WRITER)
    assert writer is not None
    return writer


async def worker_rows(database, sql: str) -> list[list]:
    """Run `sql` as a direct worker job (no guard): for session facts the guard keeps from readers."""

    def job(session) -> list[list]:
        cursor = session.cursor()
        cursor.execute(sql)
        return [list(row) for row in cursor.fetchall()]

    return await database.pool.run(job, timeout=5)


async def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_types_serialize(pg_db) -> None:
    async with open_database(**pg_db) as database:
        result = await database.read(
            "SELECT 12345678901234567890.0123456789::numeric AS big, 9.99::numeric(10,2) AS price, "
            "DATE '2024-02-29' AS d, TIME '13:14:15.5' AS t, TIMESTAMP '2024-01-02 03:04:05.678' AS ts, "
            "'\\x0001ff'::bytea AS b, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, NULL::int AS n, "
            "'NaN'::float8 AS nan, 'Infinity'::float8 AS inf, true AS yes, 9007199254740993::bigint AS big_int, "
            "'{\"k\": [1, 2]}'::jsonb AS j, interval '1 day 2 hours' AS iv, 'héllo ☃ 😀' AS s, 1.5::real AS r"
        )
        row = dict(zip(result.columns, result.rows[0], strict=True))
        assert row["big"] == "12345678901234567890.0123456789"  # exact, as a string
        assert row["price"] == "9.99"
        assert row["d"] == "2024-02-29"
        assert row["t"].startswith("13:14:15")
        assert row["ts"] == "2024-01-02T03:04:05.678000"
        assert row["b"] == "0x0001FF"
        assert row["u"].lower() == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        assert row["n"] is None
        assert (row["nan"], row["inf"]) == ("NaN", "Infinity")
        assert row["yes"] is True
        assert row["big_int"] == 9007199254740993
        assert json.loads(row["j"]) == {"k": [1, 2]}
        assert "1 day" in row["iv"]
        assert row["s"] == "héllo ☃ 😀"
        assert row["r"] == 1.5
        json.dumps(result.as_dict(), allow_nan=False)

        products = await database.read("SELECT id, price, weight, picture, guid FROM products ORDER BY id")
        assert products.rows[0] == [1, "9.99", 0.5, "0x0001FF", "6F9619FF-8B86-D011-B42D-00C04FC964FF"]
        assert products.rows[2][2:] == [None, "0x68656C6C6F", None]


async def test_caps_on_postgres(pg_db) -> None:
    async with open_database(**pg_db, max_rows=100, max_result_bytes=2000) as database:
        rows = await database.read("SELECT g FROM generate_series(1, 1000000) g")
        assert (rows.row_count, rows.truncated_reason) == (100, "max_rows")
        wide = await database.read("SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g")
        assert wide.truncated_reason == "max_bytes" and len(json.dumps(wide.rows)) <= 2000


async def test_session_is_read_only_and_limited(pg_db, postgres_server) -> None:
    before = pg_snapshot(postgres_server, pg_db["pg_database"])
    async with open_database(**pg_db, query_timeout_seconds=7) as database:
        settings = await worker_rows(
            database,
            "SELECT current_setting('default_transaction_read_only'), current_setting('statement_timeout'), "
            "current_setting('application_name')",
        )
        assert settings == [["on", "7s", "mssql-mcp"]]
        # Defence in depth: a write handed straight to the pool (no guard) fails in the read-only session.
        with pytest.raises(QueryFailed) as info:
            await database.pool.run(lambda s: run.write(s, "DELETE FROM order_lines", (), 10, 10_000), timeout=5)
        assert info.value.sqlstate == "25006"
        assert "read-only transaction" in str(info.value)
        with pytest.raises(QueryFailed):
            await database.pool.run(lambda s: run.read(s, "SELECT nextval('order_numbers')", (), 10, 10_000), timeout=5)
        assert (await database.read("SELECT count(*) FROM order_lines")).rows == [[7]]
    assert pg_snapshot(postgres_server, pg_db["pg_database"]) == before


async def test_pg_sleep_past_the_limit_times_out_and_the_connection_survives(pg_db) -> None:
    # pg_sleep is deny-listed in read-only mode, so this runs with it off.
    async with open_database(**pg_db, read_only_mode=False, db_pool_size=1, query_timeout_seconds=30) as database:
        writer = _writer(database)  # both functions are refused as reads: a writer runs them
        pid = (await writer.write("SELECT pg_backend_pid()")).rows[0][0]
        started = time.perf_counter()
        with pytest.raises(QueryTimeout) as info:
            await writer.write("SELECT pg_sleep(5)", timeout=0.5)
        assert 0.45 < time.perf_counter() - started < 2.0
        assert str(info.value) == "query exceeded the 0.5 s time limit and was cancelled"
        assert (await writer.write("SELECT pg_backend_pid()")).rows == [[pid]]  # same connection
        assert database.pool.healthy() == 1


async def test_slow_read_in_read_only_mode_times_out(pg_db) -> None:
    async with open_database(**pg_db, db_pool_size=1) as database:
        with pytest.raises(QueryTimeout):
            await database.read(SLOW_READ, timeout=0.4)
        assert (await database.read("SELECT 1")).rows == [[1]]


async def test_server_side_statement_timeout_is_the_backstop(pg_db) -> None:
    # With the server's statement_timeout equal to the cap, whichever fires first, the caller sees a timeout.
    async with open_database(**pg_db, db_pool_size=1, query_timeout_seconds=1) as database:
        with pytest.raises(QueryTimeout, match="1 s time limit"):
            await database.read(SLOW_READ)
        assert (await database.read("SELECT 2")).rows == [[2]]


async def test_cancelling_the_task_stops_the_query_on_the_server(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, db_pool_size=1, query_timeout_seconds=30) as database:
        pid = (await worker_rows(database, "SELECT pg_backend_pid()"))[0][0]
        task = asyncio.create_task(database.read(SLOW_READ))

        def active() -> bool:
            return postgres_server.execute("SELECT state FROM pg_stat_activity WHERE pid = ?", pid) == [("active",)]

        assert await _wait_for(active, 5)
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.perf_counter() - started < 1.0  # the caller is released at once
        assert await _wait_for(lambda: not active(), 3)  # and the server stopped working on it
        result = await asyncio.wait_for(worker_rows(database, "SELECT pg_backend_pid()"), timeout=5)
        assert result == [[pid]]  # the same connection, still usable


async def test_restart_mid_run_recovers_without_recreating_the_database(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, db_pool_size=2) as database:
        await asyncio.gather(*(database.read("SELECT count(*) FROM customers") for _ in range(4)))
        assert database.pool.healthy() == 2
        postgres_server.restart()
        for _ in range(6):  # every old connection is dead; each call is retried on a fresh one
            assert (await database.read("SELECT count(*) FROM customers")).rows == [[5]]
        assert database.status()["status"] == "ok"
        reconnects = database.metrics.registry.get_sample_value("mssql_mcp_pool_reconnects_total")
        assert reconnects is not None and reconnects >= 1
        assert (await database.describe_table("customers")).primary_key == ["id"]


async def test_restart_under_load_fails_only_cleanly_and_recovers(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, db_pool_size=3) as database:
        outcomes: list[tuple[float, str]] = []  # (when the call started, outcome)
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await database.read("SELECT count(*) FROM orders")
                    outcomes.append((started, "ok"))
                except DatabaseUnavailable:  # only while the server is really gone
                    outcomes.append((started, "unavailable"))
                await asyncio.sleep(0.005)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres_server.restart)
        back = time.monotonic()
        await asyncio.sleep(0.6)
        stop.set()
        await asyncio.gather(*clients)  # no other exception type escaped
        # Calls made once the server is back succeed (a probe that raced the start-up may delay that by
        # one probe interval).
        later = [outcome for started, outcome in outcomes if started >= back + 0.15]
        assert later and set(later) == {"ok"}
        assert (await database.read("SELECT 1")).rows == [[1]]


async def test_start_while_down_then_recover_by_itself(pg_db, postgres_server) -> None:
    postgres_server.stop()
    try:
        threads = threading.active_count()
        async with open_database(**pg_db, db_pool_size=2) as database:
            status = database.status()
            assert status["status"] == "degraded"
            assert status["pool"]["healthy"] == 0
            assert "refused" in (status["last_error"] or "") or "connect" in (status["last_error"] or "")
            started = time.perf_counter()
            with pytest.raises(DatabaseUnavailable) as info:
                await database.read("SELECT 1")
            assert time.perf_counter() - started < 1.0  # fails fast while the server is down
            assert str(info.value).startswith("database unavailable")
            assert not await database.ping()
            assert database.metrics.registry.get_sample_value("mssql_mcp_database_up") == 0

            postgres_server.start()
            assert await _wait_for(lambda: database.status()["status"] == "ok", 15)
            assert (await database.read("SELECT 1")).rows == [[1]]
            assert database.status()["last_error"] is None
            assert database.metrics.registry.get_sample_value("mssql_mcp_database_up") == 1
            assert threading.active_count() == threads + 3  # 2 workers + the watchdog, no more
    finally:
        if not postgres_server.is_running():
            postgres_server.start()


async def test_writes_commit_only_on_success(pg_db, postgres_server) -> None:
    name = pg_db["pg_database"]
    async with open_database(**pg_db, read_only_mode=False) as database:
        writer = _writer(database)
        inserted = await writer.write("INSERT INTO customers (id, name) VALUES (?, ?)", (10, "New Person"))
        assert inserted.rows_affected == 1
        returning = await writer.write("INSERT INTO customers (id, name) VALUES (11, 'Other') RETURNING id, name")
        assert returning.rows == [[11, "Other"]] and returning.rows_affected == 1
        with pytest.raises(QueryFailed) as info:  # the second statement fails: the first is rolled back too
            await writer.write(
                "INSERT INTO customers (id, name) VALUES (12, 'Lost'); "
                "INSERT INTO customers (id, name) VALUES (10, 'Duplicate')"
            )
        assert info.value.sqlstate == "23505"
        seq = await writer.write("SELECT nextval('order_numbers')")  # allowed as a write when RO is off
        assert seq.rows == [[1]]
        await writer.write("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        assert (await database.describe_table("notes")).primary_key == ["id"]
    rows = postgres_server.execute("SELECT id, name FROM customers WHERE id >= 10 ORDER BY id", database=name)
    assert rows == [(10, "New Person"), (11, "Other")]
    assert postgres_server.execute("SELECT last_value FROM order_numbers", database=name) == [(1,)]


async def test_catalog_on_postgres(pg_db) -> None:
    async with open_database(**pg_db) as database:
        tables = {t.qualified_name: t for t in await database.list_tables()}
        assert {
            "public.customers",
            "public.orders",
            "public.order_lines",
            "public.products",
            "public.customer_totals",
            "sales.orders",
            "sales.Regions",
        } <= set(tables)
        assert tables["public.customer_totals"].kind == "view"
        assert tables["public.customers"].row_estimate == 5  # pg_class.reltuples after ANALYZE

        assert (await database.resolve_table("orders")).qualified_name == "public.orders"  # default schema
        assert (await database.resolve_table("Sales.Orders")).qualified_name == "sales.orders"
        assert (await database.resolve_table("sales.regions")).qualified_name == "sales.Regions"
        assert (await database.resolve_table('"sales"."Regions"')).qualified_name == "sales.Regions"
        assert (await database.resolve_table("REGIONS")).qualified_name == "sales.Regions"

        orders = await database.describe_table("PUBLIC.ORDERS")
        assert [c.name for c in orders.columns] == ["id", "customer_id", "ordered_on", "status", "note"]
        status = next(c for c in orders.columns if c.name == "status")
        assert status.type == "character varying(20)" and not status.nullable
        assert status.default is not None and "'new'" in status.default
        assert orders.primary_key == ["id"]
        assert [(fk.columns, fk.references_table, fk.references_columns) for fk in orders.foreign_keys] == [
            (["customer_id"], "public.customers", ["id"])
        ]
        assert [(i.name, i.columns, i.unique) for i in orders.indexes] == [
            ("ix_orders_customer", ["customer_id", "ordered_on"], False)
        ]

        lines = await database.describe_table("order_lines")
        assert lines.primary_key == ["order_id", "line_no"]
        regions = await database.describe_table("sales.regions")
        assert [c.name for c in regions.columns] == ["id", "Name"]
        sales_orders = await database.describe_table("sales.orders")
        assert sales_orders.foreign_keys[0].references_table == "sales.Regions"

        with pytest.raises(TableNotFound) as info:
            await database.describe_table("custmers")
        assert "public.customers" in info.value.suggestions
        with pytest.raises(TableNotFound):
            await database.resolve_table("nope.customers")

        sample = await database.sample("Customers", 2)
        assert sample.row_count == 2 and sample.columns[:2] == ["id", "name"]
        regions_sample = await database.sample("sales.Regions", 10)
        assert regions_sample.rows == [[1, "North"], [2, "South"]]

        customers = await database.resolve_table("customers")
        row = await database.fetch_row(customers, {"id": "3"})  # ids arrive as text
        assert row is not None and row["name"] == "Alan Turing" and row["balance"] == "0.00"
        assert await database.fetch_row(customers, {"ID": 404}) is None
        lines_table = await database.resolve_table("order_lines")
        assert await database.fetch_row(lines_table, {"order_id": 1, "line_no": 2}) == {
            "order_id": 1,
            "line_no": 2,
            "product_id": 2,
            "qty": 1,
        }


async def test_password_with_special_characters_connects(pg_db, postgres_server) -> None:
    password = "p;w}{=d 'x\""
    postgres_server.execute("DROP ROLE IF EXISTS pw_user")
    postgres_server.execute("CREATE ROLE pw_user LOGIN PASSWORD '" + password.replace("'", "''") + "'")
    try:
        async with open_database(**{**pg_db, "pg_user": "pw_user", "pg_password": password}) as database:
            assert (await database.read("SELECT current_user")).rows == [["pw_user"]]
        async with open_database(
            **{**pg_db, "pg_user": "pw_user", "pg_password": "wrong " + password}, db_pool_size=1
        ) as database:
            assert database.status()["status"] == "misconfigured"  # a wrong password does not heal by retrying
            with pytest.raises(DatabaseUnavailable) as info:
                await database.read("SELECT 1")
            assert "refused the service's login" in str(info.value)
            assert "password authentication failed" in database.status()["last_error"]  # for operators only
            assert password not in str(info.value) and password not in str(database.status())
    finally:
        postgres_server.execute("DROP ROLE IF EXISTS pw_user")


async def test_caps_inside_the_statement_keep_order_limits_and_types(pg_db) -> None:
    async with open_database(**pg_db, max_result_bytes=1000) as database:
        assert (await database.read("SELECT id FROM orders ORDER BY id DESC", max_rows=3)).rows == [[5], [4], [3]]
        assert (await database.read("SELECT id FROM orders ORDER BY id LIMIT 2 OFFSET 3")).rows == [[4], [5]]
        assert (await database.read("VALUES (1), (2), (3)", max_rows=2)).rows == [[1], [2]]
        assert (await database.read("SELECT 1 UNION ALL SELECT 2 ORDER BY 1 DESC;")).rows == [[2], [1]]
        wide = await database.read("SELECT id, repeat('x', 5000) AS doc FROM orders ORDER BY id")
        assert (wide.rows, wide.truncated_reason, wide.too_long_column) == ([], "max_bytes", "doc")
        binary = await database.read("SELECT decode(repeat('ab', 600), 'hex') AS b")  # 1204 JSON chars
        assert (binary.rows, binary.too_long_column) == ([], "b")
        digits = await database.read("SELECT repeat('9', 3000)::numeric AS n")
        assert (digits.rows, digits.too_long_column) == ([], "n")
        small = await database.read("SELECT 12.50::numeric AS n, 'ab'::bytea AS b, gen_random_uuid() AS u")
        assert small.rows[0][:2] == ["12.50", "0x6162"] and small.rows[0][2] == small.rows[0][2].upper()


async def test_cached_plans_follow_schema_changes(pg_db, postgres_server) -> None:
    async with open_database(**pg_db) as database:
        before = await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")
        postgres_server.execute(
            "ALTER TABLE orders ADD COLUMN channel text DEFAULT 'web'", database=pg_db["pg_database"]
        )
        try:
            after = await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")
            assert after.columns == [*before.columns, "channel"] and after.rows[0][-1] == "web"
        finally:
            postgres_server.execute("ALTER TABLE orders DROP COLUMN channel", database=pg_db["pg_database"])
        assert (await database.read("SELECT * FROM orders ORDER BY id LIMIT 1")).columns == before.columns


async def test_a_refused_login_backs_off_to_minutes_and_calls_do_not_hammer_it(pg_db, captured_logs) -> None:
    """SQLSTATE class 28 (here: a role PostgreSQL does not know) is a configuration error: retrying every few
    seconds would flood the server's log and can lock a SQL Server login. /health says unhealthy, callers get
    one clear sentence without the driver's text (it names host and port), and it is logged once."""
    from app.health import overall_status

    settings = {**pg_db, "pg_user": "no_such_role", "db_pool_size": 2}
    async with open_database(**settings) as database:
        assert await _wait_for(lambda: database.pool.login_refused, 5)
        status = database.status()
        assert status["status"] == "misconfigured" and overall_status(status) == "unhealthy"
        attempts_before = len(captured_logs.events("db.connect_failed")) + len(captured_logs.events("db.login_refused"))
        messages = set()
        for _ in range(50):  # callers arriving at a high rate must not each try to log in
            with pytest.raises(DatabaseUnavailable) as info:
                await database.read("SELECT 1")
            messages.add(str(info.value).rsplit("(", 1)[0])
        assert messages == {
            "database unavailable: the database refused the service's login; an operator must fix its settings "
        }
        assert "127.0.0.1" not in str(info.value) and "no_such_role" not in str(info.value)
        attempts_after = len(captured_logs.events("db.connect_failed")) + len(captured_logs.events("db.login_refused"))
        assert attempts_after == attempts_before  # no new login attempt: the next one is tens of seconds away
        assert database.pool._next_attempt - time.monotonic() > 20
        assert len(captured_logs.events("db.login_refused")) == 1
