"""The pool's line of waiting jobs (issue 10): a worker takes the next job itself, a caller that gives up
while in line never runs, and the in-use count is settled when the caller has its result."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from app.db.types import DatabaseUnavailable
from tests.fixtures.databases import open_database

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _sqlite(path: Path, **overrides: Any) -> Any:
    return open_database(db_backend="sqlite", sqlite_path=str(path), **overrides)


async def test_a_call_cancelled_while_in_line_never_runs(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, db_pool_wait_seconds=10, query_timeout_seconds=10) as database:
        blocker = asyncio.create_task(database.read(ENDLESS))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(database.read(ENDLESS))  # would hold the only worker for 10 s if it ran
        await asyncio.sleep(0.05)
        assert database.status()["pool"]["waiting"] == 1
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert database.status()["pool"]["waiting"] == 0
        blocker.cancel()
        await asyncio.gather(blocker, return_exceptions=True)
        result = await asyncio.wait_for(database.read("SELECT 'next'"), 5)  # the worker is free at once
        assert result.rows == [["next"]]


async def test_jobs_in_line_run_in_order_on_the_busy_workers(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, db_pool_max_waiting=1000) as database:
        threads = threading.active_count()
        for _ in range(3):
            results = await asyncio.gather(*(database.read("SELECT ?", (i,)) for i in range(300)))
            assert [r.rows[0][0] for r in results] == list(range(300))
            assert database.status()["pool"] | {"healthy": 2} == {
                "size": 2,
                "in_use": 0,  # settled before the last caller had its result
                "idle": 2,
                "waiting": 0,
                "healthy": 2,
            }
        assert threading.active_count() == threads
        waits = database.metrics.registry.get_sample_value("mssql_mcp_pool_wait_seconds_count")
        assert waits == 900


async def test_closing_refuses_the_jobs_in_line(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, db_pool_wait_seconds=10, query_timeout_seconds=10) as database:
        blocker = asyncio.create_task(database.read(ENDLESS))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(database.read("SELECT 1"))
        await asyncio.sleep(0.05)
        await database.close()
        with pytest.raises(DatabaseUnavailable, match="shutting down"):
            await queued
        await asyncio.gather(blocker, return_exceptions=True)
