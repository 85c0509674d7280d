"""Database.read() and the Writer capability, called directly (no tool in between), on SQLite and PostgreSQL.

read() runs the guard whatever READ_ONLY_MODE says: with writes enabled a DELETE sent to read() is refused and
changes nothing. Only a writer, and only while writes are enabled, gets a Writer; its writes commit.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from app.core import ANONYMOUS, Principal
from app.db.database import Database
from app.db.types import QueryRefused
from tests.fixtures.databases import open_database

READER = Principal(subject="r", username="reader", role="reader")
WRITER = Principal(subject="w", username="writer", role="writer")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> Any:
    """A function opening a started Database on the sample schema (overrides are settings)."""
    if request.param == "sqlite":
        path = request.getfixturevalue("sqlite_db")
        return lambda **overrides: open_database(db_backend="sqlite", sqlite_path=str(path), **overrides)
    pg_db = request.getfixturevalue("pg_db")
    return lambda **overrides: open_database(**pg_db, **overrides)


async def _count(database: Database, where: str) -> int:
    return int((await database.read(f"SELECT COUNT(*) FROM customers WHERE {where}")).rows[0][0])


async def test_read_refuses_a_delete_even_with_writes_enabled(backend: Any) -> None:
    opened: AbstractAsyncContextManager[Database] = backend(read_only_mode=False)
    async with opened as database:
        assert await _count(database, "id = 1") == 1
        with pytest.raises(QueryRefused) as info:
            await database.read("DELETE FROM customers WHERE id = 1")
        assert info.value.reason
        assert await _count(database, "id = 1") == 1  # the row is still there
        refusals = database.metrics.registry.get_sample_value(
            "mssql_mcp_guard_refusals_total", {"reason": info.value.reason}
        )
        assert refusals == 1


async def test_only_a_writer_gets_a_writer_and_only_while_writes_are_enabled(backend: Any) -> None:
    async with backend(read_only_mode=False) as database:
        assert database.writer_for(READER) is None
        assert database.writer_for(ANONYMOUS) is None
        writer = database.writer_for(WRITER)
        assert writer is not None
        deleted = await writer.write("DELETE FROM order_lines WHERE order_id = 1")
        assert deleted.rows_affected is not None and deleted.rows_affected >= 1
        inserted = await writer.write("INSERT INTO customers (id, name) VALUES (?, ?)", (40, "Written"))
        assert inserted.rows_affected == 1
    async with backend(read_only_mode=False) as reopened:  # committed: a new pool sees the row
        assert await _count(reopened, "id = 40") == 1
        assert int((await reopened.read("SELECT COUNT(*) FROM order_lines WHERE order_id = 1")).rows[0][0]) == 0
    async with backend() as read_only:  # READ_ONLY_MODE=true (the default): nobody writes
        assert read_only.writer_for(WRITER) is None


async def test_a_statement_is_parsed_once_per_call_even_past_the_guard_cache(
    sqlite_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.db import guard
    from app.db.database import WARM_UP_SQL

    checked: list[str] = []
    check = guard.check

    def counting(sql: str, *args: Any, **kwargs: Any) -> guard.Verdict:
        checked.append(sql)
        return check(sql, *args, **kwargs)

    monkeypatch.setattr(guard, "check", counting)
    long_sql = "SELECT id FROM customers WHERE id IN (" + ", ".join(["1"] * 6000) + ")"
    assert len(long_sql) > 16_384  # longer than the guard's own cache keeps
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        verdict = database.verdict(long_sql)  # a tool asks first (read or write?) ...
        assert verdict.allowed and verdict.shape is not None and verdict.shape.name == "customers"
        assert (await database.read(long_sql)).rows == [[1]]  # ... and read() checks again
    assert [sql for sql in checked if sql != WARM_UP_SQL] == [long_sql]  # Database.start checks one of its own
