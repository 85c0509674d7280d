"""Columns whose values are numbers by construction skip the server-side value cut (issue 10): a statement of
only COUNT/SUM/AVG/ROUND/LENGTH columns runs without the wrapper, and in a mixed one only the text columns are
measured; the values still come back as numbers, whatever the argument (SQLite converts text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyodbc

from app.db import guard
from app.db.dialects import get_dialect
from app.settings import load_settings
from tests.fixtures.databases import open_database

AGGREGATES = (
    "SELECT COUNT(*) AS n, SUM(name) AS s, AVG(id) AS a, ROUND(SUM(id) * 1.5, 2) AS r, LENGTH(name) AS l FROM t"
)


def _plan(sql: str, description: list[tuple[Any, ...]]) -> Any:
    settings = load_settings(environ={}, env_file=None, db_backend="sqlite", sqlite_path="/nonexistent.db")
    dialect = get_dialect(settings)
    return dialect.plan_read(sql, guard.check(sql, "sqlite").tree, 100, 10_000, description)


def _text_columns(*names: str) -> list[tuple[Any, ...]]:
    # What SQLite's LIMIT 0 probe reports for expression columns: text, no size.
    return [(name, str, None, None, None, None, True) for name in names]


def test_numeric_aggregates_need_no_value_cut() -> None:
    plan = _plan(AGGREGATES, _text_columns("n", "s", "a", "r", "l"))
    assert not plan.marks_over_cap
    assert "mcp_width" not in plan.sql


def test_only_the_text_columns_are_measured() -> None:
    plan = _plan(
        "SELECT name, SUM(id) AS s, ROUND(AVG(id), 1) AS r FROM t GROUP BY name", _text_columns("name", "s", "r")
    )
    assert plan.marks_over_cap
    assert "length(mcp_r.c1)" in plan.sql
    assert "length(mcp_r.c2)" not in plan.sql and "length(mcp_r.c3)" not in plan.sql


async def test_aggregates_of_text_are_numbers_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "agg.db"
    conn = pyodbc.connect(f"DRIVER={{SQLite3}};Database={path};")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO t (name) VALUES (?), (?)", "x" * 5000, "12abc")
    conn.commit()
    conn.close()
    async with open_database(db_backend="sqlite", sqlite_path=str(path), max_result_bytes=4096) as database:
        result = await database.read(AGGREGATES)
    assert not result.truncated
    ((n, s, a, r, length),) = result.rows
    assert (n, s, a, r) == (2, 12, 1.5, 4.5)
    assert length in (5000, 5)
