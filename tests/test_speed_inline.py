"""Inline reads (issue 10): on a SQLite file in WAL mode a read runs on the event loop within
SQLITE_INLINE_READ_MS, saving the thread hand-offs; a longer one is stopped and finishes on a worker thread
with the rest of its time limit, and the loop stays free while it runs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.db.types import QueryTimeout
from tests.fixtures.calls import SLOW_SQLITE_READ
from tests.fixtures.databases import make_sqlite_db, open_database

ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _sqlite(path: Path, **overrides: Any) -> Any:
    return open_database(db_backend="sqlite", sqlite_path=str(path), **overrides)


# The budget is wall time: on a machine busy with other tests a short read can lose its core for a few ms.
# Where a test needs a read to stay on the loop, it gives it more room than the default.
ROOMY_MS = 200


def _thread_of_reads(database: Any) -> list[str]:
    """Record the thread every job of the pool runs on (wraps each worker's job runner)."""
    seen: list[str] = []
    for worker in database.pool._workers:
        original = worker._execute

        def recording(job: Any, original: Any = original) -> Any:
            seen.append(threading.current_thread().name)
            return original(job)

        worker._execute = recording
    return seen


class LoopGaps:
    """The longest time the loop went without running a 1 ms ticker, measured while the block runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    async def __aenter__(self) -> LoopGaps:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_a_short_read_runs_on_the_loop(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, sqlite_inline_read_ms=ROOMY_MS) as database:
        seen = _thread_of_reads(database)
        result = await database.read("SELECT ? AS answer", (42,))
        assert result.rows == [[42]]
        assert seen == [threading.current_thread().name]
        assert database.status()["pool"]["in_use"] == 0


async def test_a_slow_read_finishes_on_a_thread_and_the_loop_stays_free(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, query_timeout_seconds=30) as database:
        seen = _thread_of_reads(database)
        async with LoopGaps() as gaps:
            first = await database.read(SLOW_SQLITE_READ)
        assert first.rows == [[3000000]]
        # Started on the loop, stopped at the budget, run again (from the start) on a worker thread.
        assert seen[0] == threading.current_thread().name
        assert seen[-1].startswith("db-worker-")
        assert gaps.worst < 0.05, f"the loop stood still for {gaps.worst * 1000:.0f} ms"

        # Outrunning the budget a second time sends the statement straight to a thread.
        await database.read(SLOW_SQLITE_READ)
        seen.clear()
        async with LoopGaps() as gaps:
            third = await database.read(SLOW_SQLITE_READ)
        assert third.rows == [[3000000]]
        assert [name.startswith("db-worker-") for name in seen] == [True]
        assert gaps.worst < 0.05
        # Other statements still run on the loop (a short read may outrun the budget on a busy machine, once).
        seen.clear()
        await database.read("SELECT 1")
        assert seen[0] == threading.current_thread().name


async def test_a_time_limit_is_the_calls_own_after_moving_to_a_thread(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=1, query_timeout_seconds=0.3) as database:
        started = time.perf_counter()
        with pytest.raises(QueryTimeout) as caught:
            await database.read(ENDLESS)
        elapsed = time.perf_counter() - started
        assert "0.3 s time limit" in str(caught.value)
        assert 0.25 < elapsed < 2.0
        # The connection is fine afterwards, inline again.
        assert (await database.read("SELECT 'next'")).rows == [["next"]]


async def test_many_parallel_reads_share_the_loop_in_bursts(sqlite_db: Path) -> None:
    join = "SELECT a.id, b.id FROM (SELECT 1 AS id UNION ALL SELECT 2) AS a, (SELECT 3 AS id) AS b ORDER BY a.id"
    async with _sqlite(sqlite_db, db_pool_size=4, db_pool_max_waiting=1000) as database:
        async with LoopGaps() as gaps:
            for _ in range(3):
                results = await asyncio.gather(*(database.read(join + f" LIMIT {n % 5 + 1}") for n in range(200)))
                assert [len(r.rows) for r in results] == [min(n % 5 + 1, 2) for n in range(200)]
        # 200 reads ready at once: the loop runs at most a couple of ms of them before its timers again.
        assert gaps.worst < 0.05, f"the loop stood still for {gaps.worst * 1000:.0f} ms"
        assert database.status()["pool"]["in_use"] == 0


async def test_a_file_not_in_wal_mode_reads_on_threads(tmp_path: Path) -> None:
    path = make_sqlite_db(tmp_path / "rollback.db")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = DELETE")  # a reader here can wait on a writer's lock
    con.close()
    async with _sqlite(path, db_pool_size=2) as database:
        seen = _thread_of_reads(database)
        assert (await database.read("SELECT ?", (7,))).rows == [[7]]
        assert [name.startswith("db-worker-") for name in seen] == [True]


async def test_inline_reads_can_be_turned_off(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, sqlite_inline_read_ms=0) as database:
        seen = _thread_of_reads(database)
        assert (await database.read("SELECT ?", (7,))).rows == [[7]]
        assert [name.startswith("db-worker-") for name in seen] == [True]


async def test_a_quick_statement_that_outran_the_budget_now_and_then_stays_on_the_loop(sqlite_db: Path) -> None:
    async with _sqlite(sqlite_db, db_pool_size=2, sqlite_inline_read_ms=ROOMY_MS) as database:
        pool = database.pool
        seen = _thread_of_reads(database)
        pool._note_slow("SELECT 5")  # say the machine took the core away during one run...
        for _ in range(20):
            await database.read("SELECT 5")
        pool._note_slow("SELECT 5")  # ...and once more, 21 runs later: 2 in 22 is not a slow statement
        seen.clear()
        await database.read("SELECT 5")
        assert seen == [threading.current_thread().name]
        pool._note_slow("SELECT 6")
        pool._note_slow("SELECT 6")  # every run outran it: a slow statement
        seen.clear()
        await database.read("SELECT 6")
        assert [name.startswith("db-worker-") for name in seen] == [True]


async def test_a_quick_read_that_outran_the_budget_waiting_for_the_gil_is_not_demoted(sqlite_db: Path) -> None:
    # A Python thread that never sleeps holds the GIL for whole switch intervals (5 ms): a read past a 2 ms
    # budget then waited, it did not compute. Such reads move to a thread, one by one, but the statement
    # stays on the loop (it was demoted for a minute, and with it a whole benchmark run).
    async with _sqlite(sqlite_db, db_pool_size=2, sqlite_inline_read_ms=2) as database:
        await database.read("SELECT 7 AS n")  # its first run also plans it: more CPU than the others
        seen = _thread_of_reads(database)
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                pass

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            for _ in range(300):  # until a few reads outran the budget (two would have demoted it)
                assert (await database.read("SELECT 7 AS n")).rows == [[7]]
                if sum(name.startswith("db-worker-") for name in seen) >= 3:
                    break
        finally:
            stop.set()
            spinner.join()
        assert sum(name.startswith("db-worker-") for name in seen) >= 3, "reads did not outrun the budget"
        assert "SELECT 7 AS n" not in database.pool._slow
