"""Time limits stop the engine, not the driver's statement: sqlite3_interrupt on SQLite
(Dialect.connect_interruptible), pg_cancel_backend on PostgreSQL (Dialect.cancel_session_sql).

The SQLite driver's and psqlODBC's SQLCancel free the statement's result while the worker may still be
reading it: a reader whose statements ran about as long as their time limit (or the inline-read budget)
crashed the server with heap corruption within seconds. These tests drive that pattern in parallel, against a
real server process (SQLite) and a real PostgreSQL, and check that an interrupt landing between two
statements of a call is not lost.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.db.types import QueryTimeout
from tests.fixtures.calls import EXECUTE_SQL_HEADERS, SLOW_SQLITE_READ, execute_sql_call
from tests.fixtures.databases import open_database
from tests.fixtures.served import serve

pytestmark = pytest.mark.integration


def _near_the_limit(n: int, rng: random.Random) -> dict[str, Any]:
    """A call whose statement takes about as long as its own time limit (and the 5 ms inline budget). The
    ORDER BY makes SQLite compute every row before the first one: without it the MAX_ROWS cap (1,000) ends the
    statement early, within 1 ms on a fast CPU, below every limit. Measured: 0.3-24 ms from 200 to 51,200 rows."""
    rows, width = rng.choice([200, 800, 3200, 12800, 51200]), rng.randint(10, 80)
    query = (
        f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < {rows}) "
        f"SELECT n, printf('%0{width}d', n) AS s FROM r ORDER BY n DESC"
    )
    return execute_sql_call(n, {"query": query, "timeout_seconds": rng.choice([0.002, 0.005, 0.01, 0.02, 0.05])})


def test_statements_cut_at_their_time_limit_in_parallel_never_crash_the_server(
    tmp_path: Path, demo_db_path: Path
) -> None:
    with serve(
        tmp_path,
        demo_db_path,
        DB_POOL_SIZE="4",
        ALLOW_UNAUTH_METHODS="true",
        ALLOW_UNAUTH_TOOLS_CALL="true",
        PYTHONFAULTHANDLER="1",
    ) as served:
        outcomes: dict[str, int] = {"rows": 0, "time limit": 0}

        async def drive() -> None:
            connector = aiohttp.TCPConnector(limit=16)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

                async def client(seed: int) -> None:
                    rng, n = random.Random(seed), seed * 100_000
                    deadline = time.monotonic() + 8.0  # the old cancel crashed the server in 1-6 s
                    while time.monotonic() < deadline:
                        n += 1
                        body = json.dumps(_near_the_limit(n, rng))
                        async with http.post(f"{served.url}/mcp", data=body, headers=EXECUTE_SQL_HEADERS) as response:
                            assert response.status == 200, await response.text()
                            answer = await response.json()
                        result = answer["result"]
                        if result.get("isError"):
                            text = result["content"][0]["text"]
                            assert "time limit" in text, text
                            outcomes["time limit"] += 1
                        else:
                            assert result["structuredContent"]["rows"], answer
                            outcomes["rows"] += 1

                await asyncio.gather(*(client(seed) for seed in range(16)))

        asyncio.run(drive())
        assert served.proc.poll() is None, f"the server died ({served.proc.returncode}):\n{served.log()[-3000:]}"
        assert "Fatal Python error" not in served.log() and "Traceback" not in served.log()
        # Both kinds happened: statements were cut at their limit, and others finished.
        assert outcomes["rows"] > 0 and outcomes["time limit"] > 0, outcomes


async def test_an_interrupt_that_lands_between_two_statements_still_stops_the_second(sqlite_db: Path) -> None:
    # SQLite forgets an interrupt when no statement is running and the next one starts: the watchdog repeats it.
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db), sqlite_inline_read_ms=0) as database:
        ran_second = threading.Event()

        def job(session: Any) -> Any:
            cursor = session.cursor()
            cursor.execute("SELECT 1").fetchall()
            time.sleep(0.3)  # past the deadline, between statements: the first interrupt finds nothing running
            ran_second.set()
            return cursor.execute(SLOW_SQLITE_READ).fetchall()  # about 1-2 s if nothing stops it

        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"0\.1 s time limit"):
            await database.pool.run(job, timeout=0.1)
        assert ran_second.is_set()
        assert time.monotonic() - started < 0.3 + 0.5


async def test_postgres_reads_cut_at_their_time_limit_in_parallel_keep_the_process_and_the_pool(pg_db: Any) -> None:
    # psqlODBC's SQLCancel closes a statement whose rows the worker is reading: this crashed the process in
    # a few seconds. The server's own cancel (pg_cancel_backend from the pool's canceller connection) does not.
    async with open_database(**pg_db, db_pool_size=4) as database:
        outcomes: dict[str, int] = {"rows": 0, "time limit": 0}

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline:
                rows = rng.choice([2000, 8000, 32000, 64000])
                query = f"SELECT g, lpad(g::text, {rng.randint(10, 80)}, '0') FROM generate_series(1, {rows}) AS g"
                try:
                    result = await database.read(query, timeout=rng.choice([0.002, 0.005, 0.01, 0.02, 0.05]))
                except QueryTimeout:
                    outcomes["time limit"] += 1
                else:
                    assert result.rows
                    outcomes["rows"] += 1

        await asyncio.gather(*(client(seed) for seed in range(16)))
        assert outcomes["rows"] > 0 and outcomes["time limit"] > 0, outcomes
        # A cancel that arrives as a call ends can cut its rollback: that connection is replaced in the
        # background, as after any failure.
        for _ in range(100):
            if database.pool.healthy() == 4:
                break
            await asyncio.sleep(0.05)
        assert database.pool.healthy() == 4
        assert (await database.read("SELECT 1")).rows == [[1]]
