"""Every function name the live engines expose is either on the guard's allowlist and accepted, or
refused by name: SQLite through the {SQLite3} ODBC driver (pragma_function_list, which includes the
driver's own blob_import/blob_export) and PostgreSQL 15 (pg_proc)."""

from __future__ import annotations

import re
from pathlib import Path

import pyodbc
import pytest

from app.db import guard

_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _call_forms(name: str) -> list[str]:
    callee = name if _WORD.match(name) else '"' + name.replace('"', '""') + '"'
    return [
        f"SELECT {callee}(1)",
        f"SELECT {callee}()",
        f"SELECT {callee}(1, 2)",
        f"SELECT {callee}(1, 2, 3)",
        f"SELECT x FROM t WHERE x = {callee}(1)",
        f"SELECT * FROM {callee}(1)",
    ]


def _quoted_forms(name: str, dialect: str) -> list[str]:
    quoted = '"' + name.replace('"', '""') + '"'
    forms = [f"SELECT {quoted}(1)", f"SELECT * FROM {quoted}(1)"]
    if dialect == "postgres":
        forms.append(f"SELECT pg_catalog.{quoted}(1)")
    return forms


def _walk(names: set[str], dialect: str) -> tuple[list[str], list[str]]:
    """(allowlisted names no call form accepts, unlisted names some call form accepts)."""
    lists = guard.allowlist("tsql" if dialect == "mssql" else dialect)
    listed = lists.functions | lists.table_functions
    unreachable, leaked = [], []
    for name in sorted(names):
        forms = _call_forms(name)
        verdicts = [guard.check(sql, dialect) for sql in forms]
        if (
            name.lower() in listed
            and guard.never_reason(name) is None
            and (dialect != "postgres" or name == name.lower())
        ):
            if not any(v.allowed for v in verdicts):
                unreachable.append(f"{name}: {verdicts[0].message}")
        else:
            for sql, verdict in zip(
                forms + _quoted_forms(name, dialect),
                verdicts + [guard.check(s, dialect) for s in _quoted_forms(name, dialect)],
                strict=True,
            ):
                if verdict.allowed:
                    leaked.append(sql)
                elif verdict.reason == "denied_function":
                    assert name.upper() in (verdict.message or "").upper(), (sql, verdict.message)
    return unreachable, leaked


def test_every_sqlite_function_is_allowlisted_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "fn.db"
    conn = pyodbc.connect(f"DRIVER={{SQLite3}};Database={path}", timeout=5)
    try:
        names = {row[0] for row in conn.cursor().execute("SELECT name FROM pragma_function_list").fetchall()}
    finally:
        conn.close()
    assert {"blob_import", "blob_export", "load_extension", "upper", "json_extract"} <= names
    unreachable, leaked = _walk(names, "sqlite")
    assert leaked == []
    assert unreachable == []
    refused = [n for n in names if not any(guard.check(s, "sqlite").allowed for s in _call_forms(n))]
    assert {
        "blob_import",
        "blob_export",
        "load_extension",
        "zeroblob",
        "randomblob",
        "fts3_tokenizer",
        "changes",
        "last_insert_rowid",
        "optimize",
        "sqlite_log",
    } <= set(refused)


def test_every_postgres_function_is_allowlisted_or_refused(postgres_server) -> None:
    names = {row[0] for row in postgres_server.execute("SELECT DISTINCT proname FROM pg_catalog.pg_proc")}
    assert len(names) > 2000
    unreachable, leaked = _walk(names, "postgres")
    assert leaked == []
    assert unreachable == []
    refused = {n for n in names if not any(guard.check(s, "postgres").allowed for s in _call_forms(n))}
    must_refuse = {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "set_config",
        "current_setting",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
        "pg_try_advisory_lock",
        "nextval",
        "setval",
        "ts_stat",
        "ts_rewrite",
        "query_to_xml",
        "table_to_xml",
        "database_to_xml",
        "cursor_to_xml",
        "brin_summarize_new_values",
        "brin_summarize_range",
        "gin_clean_pending_list",
        "pg_reload_conf",
        "pg_notify",
        "txid_current",
        "pg_current_xact_id",
        "pg_stat_get_activity",
        "inet_server_addr",
        "pg_logical_emit_message",
        "pg_create_restore_point",
        "pg_switch_wal",
        "pg_export_snapshot",
    }
    assert must_refuse <= refused, must_refuse - refused


def test_allowlists_hold_no_never_name() -> None:
    for glot in ("sqlite", "postgres", "tsql"):
        lists = guard.allowlist(glot)
        clash = sorted(n for n in lists.functions | lists.table_functions if guard.never_reason(n))
        assert clash == [], (glot, clash)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "tsql"])
def test_allowlisted_functions_pass_the_guard(dialect: str) -> None:
    lists = guard.allowlist(dialect)
    unreachable = [
        n
        for n in sorted(lists.functions)
        if not any(guard.check(s, dialect).allowed for s in [*_call_forms(n), f"SELECT {n}"])
    ]
    assert unreachable == []
