"""`mssql-mcp users add|passwd` run without a terminal (ssh without -t, Ansible, cron, `< /dev/null`).

Real subprocesses in a new session (setsid): no controlling terminal, so /dev/tty cannot be opened,
exactly as under Ansible or `ssh host cmd`. They must end in one clear line, never a traceback, and
--password-stdin must work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("mssql-mcp")
PASSWORD = "correct horse battery"


def _run(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DB_", "MSSQL_", "SQLITE_"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json"})
    return subprocess.run(
        [str(CLI), "users", *args],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL if stdin is None else None,
        input=stdin,
        start_new_session=True,
    )  # no controlling terminal: getpass cannot open /dev/tty


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _cli_installed() -> None:
    if not CLI.exists():
        pytest.skip(f"{CLI} is not installed (pip install -e .)")


def test_add_without_terminal_says_how_and_creates_nothing(tmp_path: Path) -> None:
    line = _one_line_error(_run(tmp_path, "add", "ansible-user", "--role", "reader"))
    assert "no terminal" in line and "--password-stdin" in line
    listed = _run(tmp_path, "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"


def test_password_stdin_without_terminal_adds_and_changes_the_password(tmp_path: Path) -> None:
    added = _run(tmp_path, "add", "carol", "--role", "writer", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added carol (writer)"
    assert PASSWORD not in added.stdout + added.stderr

    from app.auth.passwords import verify_password
    from app.auth.store import AuthStore, store_path

    with AuthStore(store_path(tmp_path / "data")) as store:
        assert verify_password(store.get_user_by_name("carol").password_hash, PASSWORD)

    line = _one_line_error(_run(tmp_path, "passwd", "carol"))
    assert "no terminal" in line and "--password-stdin" in line

    new_password = "another long passphrase"
    changed = _run(tmp_path, "passwd", "carol", "--password-stdin", stdin=new_password + "\r\n")  # CRLF too
    assert changed.returncode == 0, changed.stderr
    with AuthStore(store_path(tmp_path / "data")) as store:
        assert verify_password(store.get_user_by_name("carol").password_hash, new_password)


def test_password_stdin_problems_are_one_line(tmp_path: Path) -> None:
    empty = _one_line_error(_run(tmp_path, "add", "dave", "--password-stdin"))  # stdin is /dev/null
    assert "standard input is empty" in empty
    short = _one_line_error(_run(tmp_path, "add", "dave", "--password-stdin", stdin="short\n"))
    assert "at least" in short
    assert _run(tmp_path, "list", "--json").stdout.strip() == "[]"
