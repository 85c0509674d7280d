"""`mssql-mcp doctor` as an operator runs it: the real CLI in a subprocess against real engines.

SQLite (the SQLite3 ODBC driver) and PostgreSQL 15 (psqlODBC) run every engine-neutral check; a closed
port (psqlODBC and the real Microsoft ODBC Driver 18) must fail fast with a clear report. SQL Server
cannot run here, so its checks are tested on the SQL they generate: parsed with sqlglot `tsql`, passed
(or refused) by the service's guard, and the expected values tied to the dialect's own converters.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from app.db import guard
from app.db.dialects import get_dialect
from app.doctor import probes
from app.doctor.checks import ORDER, _connect_hint, connection_options, describe_target
from app.doctor.report import FAIL, PASS, SKIP, WARN, CheckResult, Report
from app.settings import load_settings
from tests.fixtures.databases import PostgresServer, free_port
from tests.test_db_mssql import _msodbcsql

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "status", "detail", "hint"}


def run_doctor(env: dict[str, str], cwd: Path, *args: str, timeout: float = 90) -> tuple[int, str, str, float]:
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "DATA_DIR": str(cwd)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app", "doctor", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def statuses(document: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in document["checks"]}


def assert_well_formed(document: dict[str, Any]) -> None:
    assert set(document) >= {"ok", "strict", "dialect", "target", "summary", "checks"}
    for check in document["checks"]:
        assert set(check) == KEYS
        assert check["status"] in {PASS, WARN, FAIL, SKIP}
        assert check["detail"]
    assert [c["name"] for c in document["checks"]] == list(ORDER)


# --- real engines ----------------------------------------------------------------------------------


def test_sqlite_doctor_passes_and_json_has_the_documented_keys(sqlite_db: Path, tmp_path: Path) -> None:
    code, out, err, _ = run_doctor({"DB_BACKEND": "sqlite", "SQLITE_PATH": str(sqlite_db)}, tmp_path, "--json")
    assert "Traceback" not in err
    document = json.loads(out)
    assert_well_formed(document)
    assert code == 0 and document["ok"] is True, out
    got = statuses(document)
    assert got["tls"] == SKIP and got["for_json"] == SKIP  # no network; SQL Server only
    # The SQLite driver's 32-bit integers are the one known gap (test below); everything else passes.
    assert {name for name, status in got.items() if status not in (PASS, SKIP)} <= {"types"}
    assert document["dialect"] == "sqlite" and str(sqlite_db) in document["target"]


def test_sqlite_big_integers_round_trip(sqlite_db: Path, tmp_path: Path) -> None:
    _, out, _, _ = run_doctor({"DB_BACKEND": "sqlite", "SQLITE_PATH": str(sqlite_db)}, tmp_path, "--json")
    assert statuses(json.loads(out))["types"] == PASS, out


def test_postgres_doctor_passes_every_check(pg_db: dict[str, Any], tmp_path: Path) -> None:
    env = {
        "DB_BACKEND": "postgres",
        "PG_HOST": pg_db["pg_host"],
        "PG_PORT": str(pg_db["pg_port"]),
        "PG_USER": pg_db["pg_user"],
        "PG_DATABASE": pg_db["pg_database"],
    }
    code, out, err, _ = run_doctor(env, tmp_path, "--json")
    assert "Traceback" not in err
    document = json.loads(out)
    assert_well_formed(document)
    got = statuses(document)
    assert code == 0, out
    assert {name: status for name, status in got.items() if status != PASS} == {"for_json": SKIP}, out
    details = {c["name"]: c["detail"] for c in document["checks"]}
    assert "default_transaction_read_only=on" in details["read_only_session"]
    assert "read-only transaction" in details["write_refused"]
    assert "same connection" in details["query_timeout"] and "same connection" in details["unread_rows"]
    assert "(max_bytes)" in details["unread_rows"]  # cut by the byte cap, with rows left unread


def test_postgres_text_report_and_wrong_password_never_show_the_secret(
    postgres_server: PostgresServer, pg_db: dict[str, Any], tmp_path: Path
) -> None:
    password = "Doctor'Secret;{x}"
    postgres_server.execute("DROP ROLE IF EXISTS pw_user")
    postgres_server.execute("CREATE ROLE pw_user LOGIN PASSWORD '" + password.replace("'", "''") + "'")
    try:
        env = {
            "DB_BACKEND": "postgres",
            "PG_HOST": pg_db["pg_host"],
            "PG_PORT": str(pg_db["pg_port"]),
            "PG_USER": "pw_user",
            "PG_DATABASE": pg_db["pg_database"],
            "PG_PASSWORD": "wrong" + password,
        }
        code, out, err, took = run_doctor(env, tmp_path)
    finally:
        postgres_server.execute("DROP ROLE IF EXISTS pw_user")
    assert code == 1 and took < 30
    assert password not in out + err and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith("mssql-mcp doctor: postgres pw_user@127.0.0.1:")
    connect = next(line for line in lines if line.startswith("FAIL  connect"))
    assert "authentication failed" in connect
    assert any("check PG_USER / PG_PASSWORD" in line for line in lines)
    assert lines[-1].endswith("FAILED")


def test_closed_port_fails_fast_with_a_clear_report(tmp_path: Path) -> None:
    env = {
        "DB_BACKEND": "postgres",
        "PG_HOST": "127.0.0.1",
        "PG_PORT": str(free_port()),
        "DB_CONNECT_TIMEOUT_SECONDS": "2",
    }
    code, out, err, took = run_doctor(env, tmp_path, "--json")
    assert code == 1 and took < 15
    assert "Traceback" not in err
    document = json.loads(out)
    assert_well_formed(document)
    assert document["ok"] is False
    connect = document["checks"][1]
    assert connect["name"] == "connect" and connect["status"] == FAIL
    assert "08001" in connect["detail"] and "firewall" in connect["hint"]
    assert {c["status"] for c in document["checks"][2:]} == {SKIP}


def test_sql_server_closed_port_with_the_real_driver_fails_within_the_login_timeout(tmp_path: Path) -> None:
    driver = _msodbcsql()
    if driver is None:
        pytest.skip("mssql-python-odbc (Microsoft ODBC Driver 18) is not installed")
    password = "Sup3r;Secret}"
    env = {
        "DB_BACKEND": "mssql",
        "MSSQL_HOST": "127.0.0.1",
        "MSSQL_PORT": str(free_port()),
        "MSSQL_DATABASE": "Shop",
        "MSSQL_USER": "mcp_reader",
        "MSSQL_PASSWORD": password,
        "MSSQL_DRIVER": driver,
        "DB_CONNECT_TIMEOUT_SECONDS": "1",
    }
    code, out, err, took = run_doctor(env, tmp_path, "--json")
    assert code == 1 and took < 20, (out, err)
    assert password not in out + err and "Traceback" not in err
    document = json.loads(out)
    connect = statuses(document)
    assert connect["connect"] == FAIL
    assert "mcp_reader@127.0.0.1," in document["target"]


def test_a_silent_sql_server_listener_is_a_fail_within_the_login_timeout(tmp_path: Path) -> None:
    # The kernel completes the TCP handshake and nothing ever answers: the worst case for a hang.
    driver = _msodbcsql()
    if driver is None:
        pytest.skip("mssql-python-odbc (Microsoft ODBC Driver 18) is not installed")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            "DB_BACKEND": "mssql",
            "MSSQL_HOST": "127.0.0.1",
            "MSSQL_PORT": str(silent.getsockname()[1]),
            "MSSQL_DATABASE": "Shop",
            "MSSQL_USER": "mcp_reader",
            "MSSQL_PASSWORD": "x",
            "MSSQL_DRIVER": driver,
            "DB_CONNECT_TIMEOUT_SECONDS": "1",
        }
        code, out, err, took = run_doctor(env, tmp_path, "--json")
    assert code == 1 and took < 20 and "Traceback" not in err
    connect = json.loads(out)["checks"][1]
    assert connect["status"] == FAIL and connect["hint"], connect


def test_a_missing_sqlite_file_is_named(tmp_path: Path) -> None:
    code, out, _, _ = run_doctor({"DB_BACKEND": "sqlite", "SQLITE_PATH": str(tmp_path / "nope.db")}, tmp_path)
    assert code == 1
    assert f"FAIL  connect            SQLITE_PATH {tmp_path / 'nope.db'} does not exist" in out
    assert not (tmp_path / "nope.db").exists()


def test_bad_settings_are_a_fail_line_not_a_traceback(tmp_path: Path) -> None:
    code, out, err, _ = run_doctor({"DB_BACKEND": "mssql"}, tmp_path, "--json")
    assert code == 1 and "Traceback" not in err
    document = json.loads(out)
    assert document["checks"] == [
        {
            "name": "settings",
            "status": FAIL,
            "hint": document["checks"][0]["hint"],
            "detail": "MSSQL_HOST: required when DB_BACKEND=mssql (or set ODBC_CONNECTION_STRING)",
        }
    ]


def test_settings_come_from_the_env_file_in_the_working_directory(sqlite_db: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DB_BACKEND=sqlite\nSQLITE_PATH={sqlite_db}\n")
    code, out, _, _ = run_doctor({}, tmp_path)
    assert code == 0, out
    assert out.splitlines()[0] == f"mssql-mcp doctor: sqlite file:{sqlite_db}?mode=ro (read-only mode)"


# --- the report ------------------------------------------------------------------------------------


def test_exit_code_warnings_and_strict() -> None:
    report = Report("sqlite", "x")
    report.add(CheckResult("a", PASS, "fine"))
    report.add(CheckResult("b", SKIP, "n/a"))
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 0
    report.add(CheckResult("c", WARN, "hmm", "do this"))
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1
    assert json.loads(report.as_json(strict=True))["ok"] is False
    text = report.as_text()
    assert "WARN  c  hmm" in text and "-> do this" in text
    report.add(CheckResult("d", FAIL, "broken"))
    assert report.exit_code() == 1
    assert json.loads(report.as_json())["summary"] == {PASS: 1, WARN: 1, FAIL: 1, SKIP: 1}


# --- SQL Server: the generated T-SQL ---------------------------------------------------------------

MSSQL_READS = {
    "server": probes.MSSQL_SERVER,
    "tls": probes.MSSQL_TLS,
    "permissions": probes.MSSQL_PERMISSIONS,
    "after_rollback": probes.MSSQL_AFTER_ROLLBACK,
    "big_result": probes.MSSQL_BIG_RESULT,
    "for_json": probes.MSSQL_FOR_JSON,
    "types": probes.MssqlProbes.types_sql(),
}


@pytest.mark.parametrize("name", sorted(MSSQL_READS))
def test_tsql_probes_are_single_select_statements(name: str) -> None:
    statements = sqlglot.parse(MSSQL_READS[name], read="tsql")
    assert len(statements) == 1 and isinstance(statements[0], exp.Select), name
    # Nothing in a probe reads a user table: only system views, literals and built-in functions.
    tables = {t.sql("tsql").lower() for t in statements[0].find_all(exp.Table)}
    assert all(t.startswith("sys.") for t in tables), tables


@pytest.mark.parametrize("sql", [probes.MssqlProbes.types_sql(), probes.MSSQL_FOR_JSON, probes.MSSQL_BIG_RESULT])
def test_tsql_probes_run_through_the_guarded_read_path(sql: str) -> None:
    # These go through Database.read, like a user's query: the guard must accept them.
    assert guard.is_read_only(sql, "mssql"), guard.check(sql, "mssql").message


def test_the_service_sends_the_tsql_probes_as_written() -> None:
    # The read path regenerates a statement with sqlglot only when it must add or lower a TOP; the type and
    # FOR JSON probes carry a TOP within the cap, so SQL Server gets exactly the text tested here.
    settings = load_settings(
        environ={}, env_file=None, db_backend="mssql", mssql_host="h", mssql_database="d", mssql_user="u"
    )
    dialect = get_dialect(settings)
    for sql, max_rows in ((probes.MssqlProbes.types_sql(), 1), (probes.MSSQL_FOR_JSON, settings.max_rows)):
        verdict = guard.check(sql, "mssql")
        assert dialect.plan_read(sql, verdict.tree, max_rows, settings.max_result_bytes, None).sql == sql


def test_tsql_sleep_and_write_probes_are_what_the_guard_refuses() -> None:
    # That is why they run through the pool's worker API instead of the read path.
    for sql in (probes.MSSQL_SLEEP, *probes.MSSQL_WRITE_PROBE):
        assert not guard.is_read_only(sql, "mssql"), sql
    create, insert = (sqlglot.parse_one(s, read="tsql") for s in probes.MSSQL_WRITE_PROBE)
    assert isinstance(create, exp.Create) and isinstance(insert, exp.Insert)
    # Only the doctor's own temporary table (#...), never a user table.
    names = {t.sql("tsql") for statement in (create, insert) for t in statement.find_all(exp.Table)}
    assert names == {"#mcp_doctor_probe"}


def test_tsql_types_cover_the_issue_list_with_one_column_each() -> None:
    select = sqlglot.parse_one(probes.MssqlProbes.types_sql(), read="tsql")
    assert [e.alias for e in select.expressions] == [p.column for p in probes.MssqlProbes.type_probes]
    text = probes.MssqlProbes.types_sql().lower()
    for type_name in (
        "sql_variant",
        "datetimeoffset",
        "money",
        "uniqueidentifier",
        "xml",
        "geography",
        "hierarchyid",
        "timestamp",
        "varbinary(max)",
    ):  # timestamp: rowversion's name in CAST
        assert type_name in text, type_name
    rowversion = next(p for p in probes.MssqlProbes.type_probes if p.column == "rv")
    assert sqlglot.parse_one(rowversion.expression, read="tsql").to.this == exp.DataType.Type.ROWVERSION


def test_tsql_server_properties_are_cast_out_of_sql_variant() -> None:
    select = sqlglot.parse_one(probes.MSSQL_SERVER, read="tsql")
    for call in select.find_all(exp.Anonymous):
        if call.name.upper() in {"SERVERPROPERTY", "DATABASEPROPERTYEX"}:
            assert isinstance(call.parent, exp.Cast), call.sql("tsql")


def test_tsql_expected_values_match_the_dialect_converters() -> None:
    from app.db.dialects.mssql import datetimeoffset_to_iso
    from app.db.serialize import binary_to_json, decimal_to_json

    by_column = {p.column: p for p in probes.MssqlProbes.type_probes}
    # What Driver 18 sends for the datetimeoffset literal, through the dialect's converter.
    raw = struct.pack("<6hI2h", 2024, 1, 2, 3, 4, 5, 123_456_700, 2, 0)
    assert by_column["dto"].accept(datetimeoffset_to_iso(raw))
    from decimal import Decimal

    assert by_column["money_value"].accept(decimal_to_json(Decimal("12.3456")))
    assert by_column["decimal_value"].accept(decimal_to_json(Decimal(probes.BIG_DECIMAL)))
    assert by_column["rv"].accept(binary_to_json((2001).to_bytes(8, "big")))
    assert by_column["big_binary"].accept(binary_to_json(b"\xab" * 9000))
    assert by_column["guid"].accept(probes.GUID.lower())
    assert by_column["variant_value"].accept(42) and not by_column["variant_value"].accept("0x2A000000")


def test_mssql_target_and_hints_never_show_the_password() -> None:
    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="mssql",
        mssql_host="sql.example.com",
        mssql_database="Sales",
        mssql_user="mcp_reader",
        mssql_password="p;w}d",
    )
    options = connection_options(get_dialect(settings).connection_string())
    assert options["pwd"] == "p;w}d" and options["encrypt"] == "yes"
    target = describe_target("mssql", options, True)
    assert target == "mssql mcp_reader@sql.example.com,1433/Sales (read-only mode)"
    assert "TrustServerCertificate" in _connect_hint("mssql", "08001", "SSL Provider: certificate verify failed")
    assert "MSSQL_USER" in _connect_hint("mssql", "28000", "Login failed for user 'mcp_reader'.")
    assert "firewall" in _connect_hint("mssql", "HYT00", "Login timeout expired")


# --- SQL Server: the decisions, on rows shaped exactly like the probes' result sets -----------------


def columns_of(sql: str) -> list[str]:
    return [e.alias_or_name for e in sqlglot.parse_one(sql, read="tsql").expressions]


def row_for(sql: str, **values: Any) -> dict[str, Any]:
    """A row with the probe's own column names; a value for a column the probe lacks is a test bug."""
    columns = columns_of(sql)
    assert set(values) <= set(columns), set(values) - set(columns)
    return {column: values.get(column) for column in columns}


SERVER_2022 = dict(
    product_version="16.0.4135.4",
    product_level="RTM",
    edition="Standard Edition (64-bit)",
    engine_edition=2,
    database_name="Sales",
    login_name="mcp_reader",
    user_name="mcp_reader",
    updateability="READ_WRITE",
)
READER = dict(
    view_definition=1,
    is_sysadmin=0,
    is_db_owner=0,
    can_alter_database=0,
    can_create_table=0,
    writable_tables=0,
    visible_tables=12,
)


def test_mssql_server_verdict() -> None:
    from app.doctor.checks import mssql_server_verdict

    status, detail, _ = mssql_server_verdict(row_for(probes.MSSQL_SERVER, **SERVER_2022))
    assert status == PASS and "SQL Server 16.0.4135.4" in detail and "login mcp_reader" in detail
    old = row_for(probes.MSSQL_SERVER, **{**SERVER_2022, "product_version": "13.0.6300.2"})
    assert mssql_server_verdict(old)[0] == WARN
    azure = row_for(probes.MSSQL_SERVER, **{**SERVER_2022, "product_version": "12.0.2000.8", "engine_edition": 5})
    assert mssql_server_verdict(azure)[0] == PASS  # Azure SQL Database reports 12.x


def test_mssql_tls_verdict() -> None:
    from app.doctor.checks import mssql_tls_verdict

    encrypted = row_for(probes.MSSQL_TLS, encrypt_option="TRUE", auth_scheme="SQL", net_transport="TCP")
    assert mssql_tls_verdict({"encrypt": "yes", "trustservercertificate": "no"}, encrypted, visible=True)[0] == PASS
    assert mssql_tls_verdict({"encrypt": "strict"}, None, visible=False)[0] == PASS  # no VIEW SERVER STATE: fine
    status, detail, hint = mssql_tls_verdict(
        {"encrypt": "yes", "trustservercertificate": "yes"}, encrypted, visible=True
    )
    assert status == WARN and "not validated" in detail and "TrustServerCertificate=false" in hint
    assert mssql_tls_verdict({"encrypt": "no"}, None, visible=False)[0] == WARN
    plain = row_for(probes.MSSQL_TLS, encrypt_option="FALSE", auth_scheme="SQL", net_transport="TCP")
    assert mssql_tls_verdict({"encrypt": "optional"}, plain, visible=True)[0] == FAIL


def test_mssql_write_verdict() -> None:
    from app.doctor.checks import mssql_write_verdict

    server = row_for(probes.MSSQL_SERVER, **SERVER_2022)
    reader = row_for(probes.MSSQL_PERMISSIONS, **READER)
    gone = row_for(probes.MSSQL_AFTER_ROLLBACK, gone=1)["gone"]
    status, detail, _ = mssql_write_verdict(reader, server, gone=gone, refused=None)
    assert status == PASS and "12 tables" in detail and "left nothing after rollback" in detail
    writer = row_for(probes.MSSQL_PERMISSIONS, **{**READER, "writable_tables": 3, "is_db_owner": 1})
    status, detail, hint = mssql_write_verdict(writer, server, gone=1, refused=None)
    assert status == WARN and "db_owner" in detail and "3 tables" in detail and "db_datareader" in hint
    secondary = row_for(probes.MSSQL_SERVER, **{**SERVER_2022, "updateability": "READ_ONLY"})
    assert mssql_write_verdict(writer, secondary, gone=1, refused=None)[0] == PASS


def test_mssql_view_definition_verdict() -> None:
    from app.doctor.checks import mssql_view_definition_verdict

    assert mssql_view_definition_verdict(row_for(probes.MSSQL_PERMISSIONS, **READER), "x")[0] == PASS
    status, _, hint = mssql_view_definition_verdict(
        row_for(probes.MSSQL_PERMISSIONS, **{**READER, "view_definition": 0}), "x"
    )
    assert status == WARN and "GRANT VIEW DEFINITION" in hint


def test_mssql_for_json_column_name_is_the_one_sql_server_uses() -> None:
    # SQL Server names the single FOR JSON column JSON_F52E2B61-18A1-11d1-B105-00805F49916B.
    assert "JSON_F52E2B61-18A1-11d1-B105-00805F49916B".startswith(probes.FOR_JSON_COLUMN_PREFIXES)


def test_read_only_mode_off_skips_the_write_checks_and_changes_nothing(sqlite_db: Path, tmp_path: Path) -> None:
    from tests.fixtures.databases import sqlite_snapshot

    before = sqlite_snapshot(sqlite_db)
    code, out, _, _ = run_doctor(
        {"DB_BACKEND": "sqlite", "SQLITE_PATH": str(sqlite_db), "READ_ONLY_MODE": "false"}, tmp_path, "--json"
    )
    got = statuses(json.loads(out))
    assert code == 0, out
    assert got["read_only_session"] == got["write_refused"] == got["guard"] == SKIP
    assert sqlite_snapshot(sqlite_db) == before


def test_a_raw_connection_string_is_described_without_its_password() -> None:
    raw = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql.example.com,1433;DATABASE=Sales;UID=r;PWD={a;b}}c};"
    options = connection_options(raw)
    assert options["pwd"] == "a;b}c"
    target = describe_target("mssql", options, True)
    assert target == "mssql r@sql.example.com,1433/Sales (read-only mode)" and "a;b" not in target
