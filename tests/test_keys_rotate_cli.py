"""`mssql-mcp keys list|rotate` through a real subprocess, on the SQLite file and on PostgreSQL: states
without key material, the publish delay, one-line errors (no store, state key missing) and --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.auth.statekey import load_state_key, open_signing_keys
from app.auth.store import AuthStore
from app.settings import load_settings
from app.state.backend import opened_backend
from app.state.pgstore import PgAuthStore
from tests.fixtures.databases import PostgresServer

pytestmark = pytest.mark.timeout(120)

CLI = Path(sys.executable).with_name("mssql-mcp")


@pytest.fixture(autouse=True)
def _cli_installed() -> None:
    if not CLI.exists():
        pytest.skip(f"{CLI} is not installed (pip install -e .)")


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment the service and the command share (DATA_DIR, or STATE_DATABASE_URL)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DB_", "MSSQL_", "SQLITE_"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "LOG_FORMAT": "json", "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    if request.param == "sqlite":
        yield env
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    if not server.is_running():
        server.start()
    name = f"keys_cli_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE DATABASE {name}")
    env["STATE_DATABASE_URL"] = f"postgresql://postgres@{server.host}:{server.port}/{name}"
    env["PUBLIC_BASE_URL"] = "https://mcp.example.test"
    try:
        yield env
    finally:
        server.drop_database(name)


def _keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "keys", *args], env=env, text=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _start_service_store(env: dict[str, str]) -> None:
    """What the service does at start-up: the store with its first signing key, under the state key."""
    settings = load_settings(environ=env, env_file=None, require_database=False)
    with opened_backend(settings) as store:
        open_signing_keys(store, load_state_key(settings, env))


def _age_keys(env: dict[str, str], seconds: float) -> None:
    """Move every key's times `seconds` into the past (the tests' clock; a subprocess takes a while)."""
    sql = sa.text(
        "UPDATE signing_keys SET created_at = created_at - :s, signs_from = COALESCE(signs_from, created_at) - :s"
    )
    settings = load_settings(environ=env, env_file=None, require_database=False)
    with opened_backend(settings) as store:
        if isinstance(store, PgAuthStore):
            with store.engine.begin() as c:
                c.execute(sql, {"s": seconds})
        else:
            assert isinstance(store, AuthStore)
            store.conn.execute(
                "UPDATE signing_keys SET created_at = created_at - ?, "
                "signs_from = COALESCE(signs_from, created_at) - ?",
                (seconds, seconds),
            )


def _listed(env: dict[str, str]) -> dict[str, str]:
    result = _keys(env, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["kid"]: row["state"] for row in json.loads(result.stdout)}


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_rotate_publishes_then_signs_and_list_never_shows_key_material(store_env: dict[str, str]) -> None:
    _start_service_store(store_env)
    (first,) = _listed(store_env).items()
    assert first[1] == "signing"
    rotated = _keys(store_env, "rotate", "--publish-seconds", "60")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("added key ") and "published now" in rotated.stdout
    states = _listed(store_env)
    new_kid = next(kid for kid in states if kid != first[0])
    assert states == {first[0]: "signing", new_kid: "published"}
    _age_keys(store_env, 61)  # the publish delay has passed
    assert _listed(store_env) == {first[0]: "published", new_kid: "signing"}
    table = _keys(store_env, "list")
    assert table.returncode == 0 and "KID" in table.stdout and new_kid in table.stdout
    assert "PRIVATE" not in table.stdout.upper() and "enc:v1:" not in table.stdout and "BEGIN" not in table.stdout
    assert "enc:v1:" not in _keys(store_env, "list", "--json").stdout


def test_errors_are_one_line(store_env: dict[str, str], tmp_path: Path) -> None:
    if "STATE_DATABASE_URL" not in store_env:
        assert "no auth store" in _one_line_error(_keys(store_env, "list"))
    _start_service_store(store_env)
    missing = {**store_env, "STATE_ENCRYPTION_KEY_FILE": str(tmp_path / "nowhere" / "state.key")}
    line = _one_line_error(_keys(missing, "rotate"))
    assert line.startswith("error: state encryption key missing") and "STATE_ENCRYPTION_KEY" in line
    wrong = {**store_env, "STATE_ENCRYPTION_KEY": "x" * 40}
    assert "cannot be opened" in _one_line_error(_keys(wrong, "rotate"))
    assert len(_listed(store_env)) == 1  # nothing was added by the failed rotations
    assert _one_line_error(_keys(store_env, "rotate", "--publish-seconds", "-1")).startswith("error: ")


def test_an_unreachable_state_database_is_one_line(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DB_", "MSSQL_", "SQLITE_"))}
    env |= {
        "DATA_DIR": str(tmp_path),
        "PUBLIC_BASE_URL": "https://x",
        "STATE_DATABASE_URL": "postgresql://u@127.0.0.1:9/x",
    }
    assert "Traceback" not in _one_line_error(_keys(env, "list"))


def test_help_explains_the_commands() -> None:
    result = _keys(dict(os.environ), "--help")
    assert result.returncode == 0 and "rotate" in result.stdout and "published" in result.stdout
    rotate = _keys(dict(os.environ), "rotate", "--help")
    assert rotate.returncode == 0 and "--publish-seconds" in rotate.stdout
