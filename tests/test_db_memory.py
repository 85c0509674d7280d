"""Memory is bounded per call: a 300 MB value and a 10M-row query through the real Database on SQLite
and PostgreSQL grow the process's peak RSS by less than 64 MiB above the byte cap.

Each case runs in a fresh interpreter (peak RSS, VmHWM, only ever grows), which reads its peak after a
warm-up query and again after the case, and reports the result's shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.databases import make_sqlite_db

ROOT = Path(__file__).resolve().parent.parent
BYTE_CAP = 100_000
ALLOWED_GROWTH = 64 * 1024 * 1024 + BYTE_CAP

_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from tests.fixtures.databases import open_database
    from tests.fixtures.memory import status_bytes
    from app.db.types import DatabaseError

    def peak() -> int:
        return status_bytes("VmHWM")

    async def main() -> None:
        overrides, sql = json.loads(sys.argv[1]), sys.argv[2]
        async with open_database(**overrides) as database:
            await database.read("SELECT 1")
            before = peak()
            try:
                result = await database.read(sql)
                out = {"rows": result.row_count, "truncated": result.truncated,
                       "reason": result.truncated_reason, "too_long_column": result.too_long_column,
                       "bytes": result.result_bytes}
            except DatabaseError as exc:
                out = {"error": type(exc).__name__, "message": str(exc)}
            out["growth"] = peak() - before
            # The connection is still usable afterwards.
            out["after"] = (await database.read("SELECT 2")).rows
        print(json.dumps(out))

    asyncio.run(main())
""")


def run_case(overrides: dict[str, Any], sql: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(overrides), sql],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_bounded(out: dict[str, Any]) -> None:
    assert out["growth"] < ALLOWED_GROWTH, f"peak RSS grew by {out['growth'] / 2**20:.1f} MiB: {out}"
    assert out["after"] == [[2]]


@pytest.fixture
def sqlite_overrides(tmp_path: Path) -> dict[str, Any]:
    path = make_sqlite_db(tmp_path / "memory.db")
    return {
        "db_backend": "sqlite",
        "sqlite_path": str(path),
        "max_result_bytes": BYTE_CAP,
        "db_pool_size": 1,
        "query_timeout_seconds": 60,
    }


SQLITE_HUGE_VALUES = [
    "SELECT zeroblob(300000000) AS big",
    "SELECT printf('%.*c', 300000000, 'x') AS big",
    # A string doubled until 512 MiB: every step is a new value in the (in-process) engine.
    "WITH RECURSIVE r(s, n) AS (SELECT 'x', 0 UNION ALL SELECT s || s, n + 1 FROM r WHERE n < 29) "
    "SELECT n, s FROM r ORDER BY n DESC LIMIT 1",
]


@pytest.mark.parametrize("sql", SQLITE_HUGE_VALUES)
def test_sqlite_300_mb_value_is_refused_or_cut_within_the_bound(sqlite_overrides, sql) -> None:
    out = run_case(sqlite_overrides, sql)
    assert_bounded(out)
    if "error" in out:  # the engine's value limit, or the guard (zeroblob may not be on its allowlist)
        assert out["error"] in ("QueryFailed", "QueryRefused")
        assert "too big" in out["message"] or "not allowed" in out["message"]
    else:  # printf gives NULL when its result would pass the limit: nothing wide reaches the driver
        assert out["rows"] <= 1 and out["bytes"] <= BYTE_CAP


def test_sqlite_value_just_over_the_cap_is_cut_on_the_server(sqlite_overrides) -> None:
    # 4 MB is under SQLite's value limit: the engine builds it, the server-side cut keeps it off the driver.
    out = run_case(sqlite_overrides, "SELECT 1 AS id, printf('%.*c', 4000000, 'x') AS doc")
    assert_bounded(out)
    assert out == {**out, "rows": 0, "truncated": True, "reason": "max_bytes", "too_long_column": "doc"}


def test_sqlite_ten_million_rows_stop_at_the_row_cap(sqlite_overrides) -> None:
    out = run_case(
        sqlite_overrides,
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
        "WHERE n < 10000000) SELECT n, 'row ' || n AS label FROM r",
    )
    assert_bounded(out)
    assert (out["rows"], out["truncated"], out["reason"]) == (1000, True, "max_rows")


def test_sqlite_many_wide_columns_stop_at_the_byte_cap(sqlite_overrides) -> None:
    columns = ", ".join(f"printf('%.*c', 90000, 'x') AS c{i}" for i in range(40))
    out = run_case(
        sqlite_overrides,
        f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000) SELECT n, {columns} FROM r",
    )
    assert_bounded(out)
    assert (out["rows"], out["truncated"], out["reason"]) == (0, True, "max_bytes")


PG_CASES = [
    "SELECT repeat('x', 300000000) AS big",
    "SELECT decode(repeat('00', 150000000), 'hex') AS big",  # a 150 MB bytea (300 MB of hex)
    "SELECT n, repeat('y', 90000) AS a, repeat('z', 90000) AS b FROM generate_series(1, 5000) AS n",
    "SELECT n, repeat('y', 90000) AS a FROM generate_series(1, 5000) AS n",  # each row fits, together they do not
]


@pytest.mark.parametrize("sql", PG_CASES)
def test_postgres_huge_values_are_cut_on_the_server(pg_db, sql) -> None:
    out = run_case({**pg_db, "max_result_bytes": BYTE_CAP, "db_pool_size": 1, "query_timeout_seconds": 60}, sql)
    assert_bounded(out)
    assert (out["truncated"], out["reason"]) == (True, "max_bytes")
    assert out["bytes"] <= BYTE_CAP


def test_postgres_ten_million_rows_stop_at_the_row_cap(pg_db) -> None:
    out = run_case(
        {**pg_db, "max_result_bytes": BYTE_CAP, "db_pool_size": 1, "query_timeout_seconds": 60},
        "SELECT n, md5(n::text) AS h FROM generate_series(1, 10000000) AS n",
    )
    assert_bounded(out)
    assert (out["rows"], out["truncated"], out["reason"]) == (1000, True, "max_rows")


_TOOL_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from aiohttp.test_utils import TestClient, TestServer
    from app.settings import load_settings
    from app.web import create_app
    from tests.fixtures.memory import status_bytes

    def peak() -> int:
        return status_bytes("VmHWM")

    HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    async def main() -> None:
        overrides, sql = json.loads(sys.argv[1]), sys.argv[2]
        settings = load_settings(environ={}, env_file=None, **overrides)
        async with TestClient(TestServer(create_app(settings))) as client:
            init = await client.post("/mcp", headers=HEADERS, data=json.dumps({
                "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "m", "version": "1"}}}))
            session = {**HEADERS, "Mcp-Session-Id": init.headers["Mcp-Session-Id"],
                       "MCP-Protocol-Version": "2025-11-25"}

            async def call(query: str) -> dict:
                response = await client.post("/mcp", headers=session, data=json.dumps({
                    "jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "execute_sql", "arguments": {"query": query}}}))
                return (await response.json())["result"]

            await call("SELECT 1")
            before = peak()
            result = await call(sql)
            growth = peak() - before
        print(json.dumps({"growth": growth, "isError": result.get("isError", False),
                          "structured": result.get("structuredContent"),
                          "text": result["content"][0]["text"][:500]}))

    asyncio.run(main())
""")


def test_mcp_tool_10m_rows_and_a_wide_value_stay_within_the_bound(tmp_path: Path) -> None:
    path = make_sqlite_db(tmp_path / "tool.db")
    overrides = {
        "db_backend": "sqlite",
        "sqlite_path": str(path),
        "max_result_bytes": BYTE_CAP,
        "metrics_port": 0,
        "db_pool_size": 1,
        "data_dir": str(tmp_path / "state"),
        "log_format": "json",
        "allow_unauth_methods": True,
        "allow_unauth_tools_call": True,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for sql, reason in [
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10000000) SELECT n FROM r",
            "max_rows",
        ),
        ("SELECT 1 AS id, printf('%.*c', 4000000, 'x') AS doc", "max_bytes"),
    ]:
        done = subprocess.run(
            [sys.executable, "-c", _TOOL_CHILD, json.dumps(overrides), sql],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["growth"] < ALLOWED_GROWTH, out
        assert not out["isError"], out
        assert out["structured"]["truncated"] is True and out["structured"]["truncated_reason"] == reason, out
