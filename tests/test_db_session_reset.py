"""Nothing a call does outlives it on the pooled connection: PostgreSQL sessions are reset after every call
(advisory locks, settings, temp tables, prepared statements), and SQLite connections cannot load extensions
or build giant values even when a statement gets past the guard (direct worker jobs here)."""

from __future__ import annotations

import pytest

from app.core import Principal
from tests.fixtures.databases import open_database


def _rows(sql: str):
    def job(session) -> list[list]:
        cursor = session.cursor()
        cursor.execute(sql)
        return [list(row) for row in cursor.fetchall()] if cursor.description else []

    return job


def _statements(*sql: str, commit: bool = True):
    def job(session) -> None:
        cursor = session.cursor()
        for statement in sql:
            cursor.execute(statement)
            if cursor.description:
                cursor.fetchall()
        if commit:
            session.conn.commit()

    return job


async def _advisory_locks(postgres_server, pid: int) -> int:
    return postgres_server.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = ?", pid)[0][0]


async def test_postgres_write_leaves_no_lock_setting_temp_table_or_prepared_statement(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, read_only_mode=False, db_pool_size=1) as database:
        pid = (await database.pool.run(_rows("SELECT pg_backend_pid()"), timeout=5))[0][0]
        # Through the write path (the guard refuses each of these as a read).
        writer = database.writer_for(Principal(subject="w", username="writer", role="writer"))
        assert writer is not None
        await writer.write("SELECT pg_advisory_lock(4242)")
        await writer.write("SET work_mem = '7MB'")
        await writer.write("CREATE TEMP TABLE scratch (x int)")
        await writer.write("PREPARE leftover AS SELECT 1")
        # The next call gets the same connection (pool of one) in a clean state.
        state = await database.pool.run(
            _rows(
                "SELECT pg_backend_pid(), current_setting('work_mem'), to_regclass('pg_temp.scratch') IS NULL, "
                "(SELECT count(*) FROM pg_prepared_statements)"
            ),
            timeout=5,
        )
        assert state == [[pid, "4MB", True, 0]]
        assert await _advisory_locks(postgres_server, pid) == 0
        # Our own session settings are back after the reset.
        assert (
            await database.pool.run(
                _rows("SELECT current_setting('application_name'), current_setting('standard_conforming_strings')"),
                timeout=5,
            )
        ) == [["mssql-mcp", "on"]]


async def test_postgres_read_only_session_stays_read_only_after_a_job_changed_it(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, db_pool_size=1, query_timeout_seconds=7) as database:
        pid = (await database.pool.run(_rows("SELECT pg_backend_pid()"), timeout=5))[0][0]
        # A direct worker job (no guard): a session-level lock and settings that would weaken the session.
        await database.pool.run(
            _statements(
                "SELECT pg_advisory_lock(77)",
                "SET SESSION default_transaction_read_only = off",
                "SET SESSION statement_timeout = 0",
            ),
            timeout=5,
        )
        assert await _advisory_locks(postgres_server, pid) == 0
        state = await database.pool.run(
            _rows(
                "SELECT pg_backend_pid(), current_setting('default_transaction_read_only'), "
                "current_setting('statement_timeout')"
            ),
            timeout=5,
        )
        assert state == [[pid, "on", "7s"]]
        # Reads still work and dates still come back typed (psqlODBC's DateStyle is restored too).
        result = await database.read("SELECT ordered_on FROM orders ORDER BY id LIMIT 1")
        assert result.rows == [["2024-04-01"]]


async def test_postgres_reset_after_a_failed_statement(pg_db, postgres_server) -> None:
    async with open_database(**pg_db, db_pool_size=1) as database:
        pid = (await database.pool.run(_rows("SELECT pg_backend_pid()"), timeout=5))[0][0]

        def lock_then_fail(session) -> None:
            cursor = session.cursor()
            cursor.execute("SELECT pg_advisory_lock(99)")
            cursor.fetchall()
            cursor.execute("SELECT 1 / 0")

        with pytest.raises(Exception, match="division by zero"):
            await database.pool.run(lock_then_fail, timeout=5)
        assert await _advisory_locks(postgres_server, pid) == 0
        assert (await database.read("SELECT 2")).rows == [[2]]


@pytest.mark.parametrize("read_only", [True, False])
async def test_sqlite_cannot_load_extensions_even_past_the_guard(sqlite_db, read_only) -> None:
    async with open_database(
        db_backend="sqlite", sqlite_path=str(sqlite_db), read_only_mode=read_only, db_pool_size=1
    ) as database:
        with pytest.raises(Exception, match="not authorized"):
            await database.pool.run(_rows("SELECT load_extension('/nonexistent/libevil')"), timeout=5)
        # And through the service as a call would send it: refused or failing, never loading.
        writer = database.writer_for(Principal(subject="w", username="writer", role="writer"))
        run = database.read if writer is None else writer.write  # a writer's statement is sent as a write
        with pytest.raises(Exception, match=r"not authorized|not allowed|refused"):
            await run("SELECT load_extension('/nonexistent/libevil')")
        assert (await database.read("SELECT 2")).rows == [[2]]


async def test_sqlite_value_limit_holds_past_the_guard(sqlite_db) -> None:
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db), db_pool_size=1) as database:
        with pytest.raises(Exception, match="too big"):
            await database.pool.run(_rows("SELECT length(zeroblob(100000000))"), timeout=5)
        assert (await database.pool.run(_rows("SELECT length(zeroblob(1000000))"), timeout=5)) == [[1000000]]


async def test_postgres_lock_taken_by_a_read_that_got_past_the_guard_is_released(pg_db, postgres_server) -> None:
    # A read the guard accepted gets the lighter reset (rollback + unlock): as if a locking function had
    # slipped past the allowlist, the lock still does not outlive the call.
    async with open_database(**pg_db, db_pool_size=1) as database:
        pid = (await database.pool.run(_rows("SELECT pg_backend_pid()"), timeout=5))[0][0]

        def sneaky_read(session) -> None:
            session.guarded_read = True
            cursor = session.cursor()
            cursor.execute("SELECT pg_advisory_lock(5150)")
            cursor.fetchall()

        await database.pool.run(sneaky_read, timeout=5)
        assert await _advisory_locks(postgres_server, pid) == 0
