"""SQLite's memory statistics are off in a serving process (issue 10: a global mutex on every allocation).

Each check runs in a fresh interpreter: SQLite takes the setting only before it initialises, and this test
process initialised it long ago (pytest's plugins import sqlite3)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.fixtures.served import ROOT

# Allocates inside SQLite, then prints what SQLite counted (sqlite3_memory_used: 0 when it counts nothing).
_REPORT = """
import ctypes, sqlite3
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (x TEXT)")
conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 200)
conn.execute("SELECT group_concat(x) FROM t ORDER BY x").fetchall()
lib = ctypes.CDLL("libsqlite3.so.0")
lib.sqlite3_memory_used.restype = ctypes.c_int64
print(lib.sqlite3_memory_used(), flush=True)
"""


def _run(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_serve_turns_them_off_before_anything_opens_sqlite() -> None:
    # main() as `mssql-mcp serve` runs it, up to where the server would start: by then the auth store's
    # module (sqlite3) is imported, and connections opened afterwards are not counted.
    out = _run(
        "import app.__main__ as cli\n"
        f"cli._serve = lambda settings, banner=None: exec({_REPORT!r}) or 0\n"
        "import os; os.environ.update(DB_BACKEND='sqlite', SQLITE_PATH=':memory:')\n"
        "raise SystemExit(cli.main(['serve']))\n"
    )
    assert out == ["0"]


def test_they_count_when_left_on() -> None:
    # The control: without the call SQLite counts what it holds, so the test above measures the setting.
    assert int(_run(_REPORT)[0]) > 0


def test_too_late_is_reported_not_raised() -> None:
    out = _run(
        "import sqlite3\n"
        "sqlite3.connect(':memory:').execute('SELECT 1')\n"
        "from app.db.dialects.sqlite import skip_memory_statistics\n"
        "print(skip_memory_statistics())\n"
    )
    assert out == ["False"]
