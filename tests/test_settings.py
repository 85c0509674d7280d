"""Settings: seed names keep working, bad values stop start-up with one line, secrets stay secret."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from app.settings import SETTINGS, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
SQLITE = {"DB_BACKEND": "sqlite", "SQLITE_PATH": "/tmp/x.db"}


def test_seed_env_file_is_understood(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "MSSQL_HOST=sql.example.com\nMSSQL_PORT=14330\nMSSQL_USER=reporter\nMSSQL_PASSWORD=s3cret!\n"
        "MSSQL_DATABASE=Sales\nMSSQL_DRIVER=ODBC Driver 18 for SQL Server\nTrustServerCertificate=yes\n"
        "Trusted_Connection=no\nREAD_ONLY_MODE=true\nALLOWED_REDIRECT_HOSTS=chatgpt.com,claude.ai\n"
        "MAX_SEARCH_RESULTS=7\nCACHE_TTL_SECONDS=60\nENVIRONMENT_PATH=/prod/\nALLOW_UNAUTH_METHODS=false\n"
        "ALLOW_UNAUTH_TOOLS_CALL=false\nLOG_LEVEL=debug\n"
    )
    s = load_settings(environ={}, env_file=env)
    assert (s.mssql_host, s.mssql_port, s.mssql_user, s.mssql_database) == (
        "sql.example.com",
        14330,
        "reporter",
        "Sales",
    )
    assert s.trust_server_certificate is True and s.trusted_connection is False and s.read_only_mode is True
    assert s.allowed_redirect_hosts == ("chatgpt.com", "claude.ai")
    assert (s.max_search_results, s.cache_ttl_seconds, s.environment_path, s.log_level) == (7, 60, "/prod", "DEBUG")
    assert s.redacted()["mssql_password"] == "***"


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DB_BACKEND=sqlite\nSQLITE_PATH=/a.db\nPORT=9000\n")
    assert load_settings(environ={"PORT": "9001"}, env_file=env).port == 9001


def test_env_file_values_are_taken_literally(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DB_BACKEND=sqlite\nSQLITE_PATH=/a.db\nMSSQL_PASSWORD='pa${HOME}ss'\n")
    assert load_settings(environ={}, env_file=env).mssql_password == "pa${HOME}ss"


def test_defaults_are_safe() -> None:
    s = load_settings(environ=SQLITE, env_file=None)
    assert s.read_only_mode is True
    assert s.host == "127.0.0.1"
    assert s.allow_unauth_methods is False and s.allow_unauth_tools_call is False
    assert s.db_pool_size == 4 and s.query_timeout_seconds == 30
    assert s.max_result_bytes < 150_000


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"READ_ONLY_MODE": "maybe"}, "READ_ONLY_MODE"),
        ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE"),
        ({"DB_BACKEND": "oracle"}, "DB_BACKEND"),
        ({"PUBLIC_BASE_URL": "example.com"}, "PUBLIC_BASE_URL"),
    ],
)
def test_bad_value_names_the_setting(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={**SQLITE, **environ}, env_file=None)
    assert str(info.value).startswith(f"{named}:")
    assert "\n" not in str(info.value)


def test_missing_sql_server_settings_are_named() -> None:
    with pytest.raises(SettingsError, match=r"^MSSQL_HOST:"):
        load_settings(environ={}, env_file=None)
    with pytest.raises(SettingsError, match=r"^MSSQL_DATABASE:"):
        load_settings(environ={"MSSQL_HOST": "h"}, env_file=None)
    with pytest.raises(SettingsError, match=r"^SQLITE_PATH:"):
        load_settings(environ={"DB_BACKEND": "sqlite"}, env_file=None)


def test_secret_values_never_appear_in_errors() -> None:
    # A secret never fails to parse today; guard the rule for the future all the same.
    for setting in SETTINGS:
        if setting.secret:
            assert setting.parse("p@ss;PWD=x") is not None


def test_every_setting_is_documented_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [s.env[0] for s in SETTINGS if f"`{s.env[0]}`" not in readme]
    assert not missing, f"settings missing from README.md: {missing}"


def _as_written(default: object) -> str:
    """A default as `mssql-mcp settings` writes it into a .env template."""
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default).lower() if isinstance(default, bool) else str(default)


def test_every_field_has_its_real_type_and_its_default_reads_back() -> None:
    # One table: SETTINGS is derived from the Settings fields, so names and order agree by construction.
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]
    hints = typing.get_type_hints(Settings)
    for setting in SETTINGS:
        declared = hints[setting.name]
        assert declared in (str, int, float, bool, tuple[str, ...]), setting.name
        assert isinstance(setting.default, typing.get_origin(declared) or declared), setting.name
        parsed = setting.parse(_as_written(setting.default))
        assert parsed == setting.default and type(parsed) is type(setting.default), setting.name


def test_settings_are_frozen_and_replace_checks_names() -> None:
    s = load_settings(environ=SQLITE, env_file=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]  # the point: assignment is refused
    changed = s.replace(port=9009)
    assert (changed.port, s.port) == (9009, 8008) and changed.sqlite_path == s.sqlite_path
    with pytest.raises(AttributeError, match="unknown settings: no_such"):
        s.replace(no_such=1)
    with pytest.raises(SettingsError, match="unknown settings: no_such"):
        load_settings(environ=SQLITE, env_file=None, no_such=1)


def test_every_app_key_is_typed_with_a_class() -> None:
    # app/keys.py imports the value classes for the type checker only, so check the annotations as written.
    tree = ast.parse((ROOT / "app" / "keys.py").read_text())
    declared = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) in {"web.AppKey", "web.RequestKey"}
    ]
    assert len(declared) >= 8
    for node in declared:
        assert isinstance(node, ast.AnnAssign), ast.unparse(node)
        annotation = ast.unparse(node.annotation)
        assert annotation.startswith(("web.AppKey[", "web.RequestKey[")) and "Any" not in annotation, annotation
