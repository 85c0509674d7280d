"""SQLite's quick value cut (issue 10): one total of the wide values instead of a running one. A read gets
exactly what the exact wrapper gives, whether the result fits the byte cap or not; only the cost differs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.db import execute as run
from app.db.database import Database
from app.db.dialects.base import RECHECK_MARKER
from tests.fixtures.databases import open_database

BYTE_CAP = 3000


@pytest.fixture
def notes_db(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT, picture BLOB)")
    con.executemany(
        "INSERT INTO notes VALUES (?, ?, ?, ?)",
        [(i, f"note {i}", "é" * (i % 7) * 5 or None, bytes([i % 256]) * (i % 3)) for i in range(1, 401)],
    )
    con.execute("INSERT INTO notes VALUES (500, 'huge', ?, NULL)", ("x" * 5000,))
    con.commit()
    con.close()
    return path


CASES = [
    # fits: order kept (descending), NULLs, blobs, non-ASCII
    "SELECT id, title, body, picture FROM notes WHERE id <= 10 ORDER BY id DESC",
    # the same rows and more: past the cap once the é are counted as JSON escapes (six characters each)
    "SELECT id, title, body, picture FROM notes WHERE id <= 40 ORDER BY id DESC",
    # the rows together pass the cap: cut at the same row as the exact wrapper
    "SELECT id, title, body FROM notes WHERE id < 500 ORDER BY title",
    # one value alone is over the cap
    "SELECT id, body FROM notes WHERE id IN (1, 500) ORDER BY id DESC",
    # no rows at all
    "SELECT id, title FROM notes WHERE id < 0",
    # more rows than the row cap
    "SELECT id, title FROM notes ORDER BY random() IS NULL, id",
]


async def _exact(database: Database, sql: str) -> Any:
    """The read as the exact wrapper alone gives it."""
    plan = database.read_plans.get(None, sql, None, (), 100, BYTE_CAP)  # planned by the first read
    assert plan.exact is not None and RECHECK_MARKER == -2
    return await database.pool.run(lambda s: run.read(s, plan.exact, (), 100, BYTE_CAP), timeout=10)


@pytest.mark.parametrize("sql", CASES)
async def test_quick_cut_gives_what_the_exact_cut_gives(notes_db: Path, sql: str) -> None:
    async with open_database(
        db_backend="sqlite", sqlite_path=str(notes_db), max_result_bytes=BYTE_CAP, max_rows=100
    ) as database:
        quick = await database.read(sql)
        exact = await _exact(database, sql)
        again = await database.read(sql)  # after the exact plan ran on the kept cursor, the quick one again
    shown = ("rows", "truncated", "truncated_reason", "too_long_column", "columns", "result_bytes")
    assert {k: getattr(quick, k) for k in shown} == {k: getattr(exact, k) for k in shown}
    assert again.rows == quick.rows and again.truncated_reason == quick.truncated_reason


async def test_results_within_the_cap_run_the_quick_form(notes_db: Path) -> None:
    async with open_database(
        db_backend="sqlite", sqlite_path=str(notes_db), max_result_bytes=BYTE_CAP, max_rows=100
    ) as database:
        await database.read(CASES[0])
        plan = database.read_plans.get(None, CASES[0], None, (), 100, BYTE_CAP)
    assert "OVER (" not in plan.sql and "OVER (" in plan.exact.sql  # the running total only in the exact plan
