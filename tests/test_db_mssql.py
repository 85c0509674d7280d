"""SQL Server: no server can run here, so the generated T-SQL and connection strings are checked as
text (and parsed with sqlglot's tsql dialect), and the connection path is exercised with the real
Microsoft ODBC Driver 18 (from the mssql-python-odbc wheel) against a closed loopback port."""

from __future__ import annotations

import glob
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import sqlglot

from app.db.dialects import MssqlDialect, get_dialect
from app.db.dialects.mssql import (
    COLUMNS,
    FOREIGN_KEYS,
    INDEXES,
    LIST_TABLES,
    PRIMARY_KEY,
    datetimeoffset_to_iso,
    format_type,
)
from app.db.types import DatabaseUnavailable, TableInfo
from app.settings import load_settings
from tests.fixtures.databases import free_port, open_database

PASSWORD = "Sup3r;Secret}{=pw"


def _settings(**overrides):
    base = {
        "db_backend": "mssql",
        "mssql_host": "db.example.net",
        "mssql_database": "Shop",
        "mssql_user": "mcp_reader",
        "mssql_password": PASSWORD,
    }
    base.update(overrides)
    return load_settings(environ={}, env_file=None, **base)


def _dialect(**overrides) -> MssqlDialect:
    dialect = get_dialect(_settings(**overrides))
    assert isinstance(dialect, MssqlDialect)
    return dialect


def test_connection_string_with_sql_login() -> None:
    assert _dialect().connection_string() == (
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=db.example.net,1433;DATABASE=Shop;UID=mcp_reader;"
        "PWD={Sup3r;Secret}}{=pw};Encrypt=yes;TrustServerCertificate=no;MultiSubnetFailover=Yes;APP=mssql-mcp;"
    )


def test_connection_string_options() -> None:
    cs = _dialect(
        trusted_connection=True,
        mssql_user="",
        mssql_password="",
        trust_server_certificate=True,
        mssql_read_only_intent=True,
        mssql_encrypt="strict",
        mssql_port=14330,
        mssql_database="Shop;Evil=1",
    ).connection_string()
    assert "Trusted_Connection=yes;" in cs
    assert "UID=" not in cs and "PWD=" not in cs
    assert "SERVER=db.example.net,14330;" in cs
    assert "DATABASE={Shop;Evil=1};" in cs  # a value cannot inject a keyword
    assert "Encrypt=strict;TrustServerCertificate=yes;ApplicationIntent=ReadOnly;" in cs


def test_named_instance_and_driver_path() -> None:
    cs = _dialect(mssql_host="sqlhost\\SQLEXPRESS", mssql_driver="/opt/ms/lib/libmsodbcsql-18.so").connection_string()
    assert cs.startswith("DRIVER={/opt/ms/lib/libmsodbcsql-18.so};SERVER=sqlhost\\SQLEXPRESS;")
    assert (
        "SERVER=sqlhost\\SQLEXPRESS,1500;"
        in _dialect(mssql_host="sqlhost\\SQLEXPRESS", mssql_port=1500).connection_string()
    )


def test_raw_connection_string_escape_hatch_is_used_verbatim_and_kept_secret() -> None:
    raw = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=x;Authentication=ActiveDirectoryMsi;"
    dialect = get_dialect(load_settings(environ={}, env_file=None, db_backend="mssql", odbc_connection_string=raw))
    assert dialect.connection_string() == raw
    assert raw in dialect.secrets()


def test_session_setup_sql() -> None:
    sql = _dialect(mssql_lock_timeout_ms=2500, max_result_bytes=100_000, max_rows=1000).session_sql()
    assert sql == (
        "SET LOCK_TIMEOUT 2500; SET XACT_ABORT ON; SET DEADLOCK_PRIORITY LOW; SET TEXTSIZE 200002; "
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET ROWCOUNT 1001;"
    )
    assert _dialect(query_timeout_seconds=12.2).server_timeout_seconds == 13


def test_generated_tsql_uses_top_and_bracket_quoting() -> None:
    dialect = _dialect()
    table = TableInfo("dbo", "Order]Lines", "table")
    assert dialect.sample_sql(table, 10) == "SELECT TOP (10) * FROM [dbo].[Order]]Lines]"
    assert dialect.row_sql(table, ["Order Id", "Line"]) == (
        "SELECT TOP (2) * FROM [dbo].[Order]]Lines] WHERE [Order Id] = ? AND [Line] = ?"
    )
    for sql in (dialect.sample_sql(table, 10), dialect.row_sql(table, ["a"])):
        tree = sqlglot.parse_one(sql, read="tsql")
        assert tree.find(sqlglot.exp.Table).name == "Order]Lines"


# Four parameters: the (schema, name) pair twice, for a synonym's base object or the object itself.
@pytest.mark.parametrize(
    ("sql", "params"), [(LIST_TABLES, 0), (COLUMNS, 4), (PRIMARY_KEY, 4), (FOREIGN_KEYS, 4), (INDEXES, 4)]
)
def test_catalog_queries_are_parameterized_tsql(sql: str, params: int) -> None:
    tree = sqlglot.parse_one(sql, read="tsql")
    assert isinstance(tree, sqlglot.exp.Select)
    assert sql.count("?") == params
    if params:
        assert "OBJECT_ID(QUOTENAME(?) + N'.' + QUOTENAME(?))" in sql
    assert "sys." in sql


def test_type_names_are_formatted_like_ssms() -> None:
    assert format_type("nvarchar", 100, 0, 0) == "nvarchar(50)"
    assert format_type("varchar", -1, 0, 0) == "varchar(max)"
    assert format_type("decimal", 9, 18, 4) == "decimal(18,4)"
    assert format_type("datetime2", 8, 27, 7) == "datetime2(7)"
    assert format_type("int", 4, 10, 0) == "int"


def test_datetimeoffset_converter() -> None:
    raw = struct.pack("<6hI2h", 2024, 3, 9, 14, 5, 6, 123_400_000, -5, -30)
    assert datetimeoffset_to_iso(raw) == "2024-03-09T14:05:06.1234-05:30"
    assert datetimeoffset_to_iso(struct.pack("<6hI2h", 2024, 1, 1, 0, 0, 0, 0, 2, 0)) == "2024-01-01T00:00:00+02:00"
    assert datetimeoffset_to_iso(None) is None


def _msodbcsql() -> str | None:
    try:
        import mssql_python_odbc
    except ImportError:
        return None
    found = glob.glob(
        os.path.join(mssql_python_odbc.get_libs_dir(), "linux", "debian_ubuntu", "*", "lib", "libmsodbcsql-18*.so*")
    )
    return found[0] if found else None


async def test_real_driver_against_a_closed_port_degrades_cleanly() -> None:
    driver = _msodbcsql()
    if driver is None:
        pytest.skip("mssql-python-odbc (Microsoft ODBC Driver 18) is not installed")
    assert Path(driver).is_absolute()
    threads = threading.active_count()
    started = time.perf_counter()
    async with open_database(
        db_backend="mssql",
        mssql_host="127.0.0.1",
        mssql_port=free_port(),
        mssql_database="Shop",
        mssql_user="sa",
        mssql_password=PASSWORD,
        mssql_driver=driver,
        trust_server_certificate=True,
        db_connect_timeout_seconds=1,
        db_pool_size=1,
    ) as database:
        assert time.perf_counter() - started < 4  # start() waited at most ~1 s and did not raise
        status = database.status()
        assert status["status"] == "degraded"
        assert status["dialect"] == "mssql"
        assert status["pool"]["healthy"] == 0
        with pytest.raises(DatabaseUnavailable) as info:
            await database.read("SELECT 1")
        message = str(info.value)
        assert message.startswith("database unavailable") and "127.0.0.1" not in message  # no driver text
        # The real driver ran: its own diagnostic (for operators), not "can't open lib" or a connection-string error.
        last_error = str(database.status()["last_error"])
        assert "Login timeout expired" in last_error or "TCP Provider" in last_error, last_error
        for text in (message, last_error):
            assert PASSWORD not in text and "Secret" not in text
        assert not await database.ping()
        assert database.metrics.registry.get_sample_value("mssql_mcp_database_up") == 0
    assert threading.active_count() == threads


def test_passwords_inside_a_raw_connection_string_are_secrets() -> None:
    raw = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=h;UID=u;PWD={a;b}}c};Encrypt=yes"
    dialect = get_dialect(load_settings(environ={}, env_file=None, db_backend="mssql", odbc_connection_string=raw))
    assert set(dialect.secrets()) == {raw, "a;b}c"}
    assert "a;b}c" not in dialect_message(dialect, "Login failed: a;b}c")


def dialect_message(dialect, text: str) -> str:
    from app.db.errors import redact

    return redact(text, dialect.secrets())


# --- caps in the statement (TOP) and per session (TEXTSIZE, ROWCOUNT) ------------------------------
def _plan(sql: str, max_rows: int = 1000) -> str:
    dialect = _dialect()
    return dialect.plan_read(sql, sqlglot.parse_one(sql, read="tsql"), max_rows, 100_000, None).sql


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT name FROM dbo.Customers", "SELECT TOP 1001 name FROM dbo.Customers"),
        ("SELECT DISTINCT name FROM dbo.Customers", "SELECT DISTINCT TOP 1001 name FROM dbo.Customers"),
        (
            "SELECT TOP (5000) name FROM dbo.Customers ORDER BY name",
            "SELECT TOP 1001 name FROM dbo.Customers ORDER BY name",
        ),
        ("WITH c AS (SELECT 1 AS a) SELECT a FROM c", "WITH c AS (SELECT 1 AS a) SELECT TOP 1001 a FROM c"),
        (
            "SELECT name FROM dbo.Customers ORDER BY name OFFSET 10 ROWS",
            "SELECT name FROM dbo.Customers ORDER BY name OFFSET 10 ROWS FETCH NEXT 1001 ROWS ONLY",
        ),
        (
            "SELECT name FROM dbo.Customers ORDER BY name OFFSET 10 ROWS FETCH NEXT 5000 ROWS ONLY",
            "SELECT name FROM dbo.Customers ORDER BY name OFFSET 10 ROWS FETCH NEXT 1001 ROWS ONLY",
        ),
    ],
)
def test_reads_get_top_cap_plus_one_in_the_outermost_select(sql, expected) -> None:
    planned = _plan(sql)
    assert planned == expected
    tree = sqlglot.parse_one(planned, read="tsql")  # valid T-SQL, the cap where the server applies it first
    assert tree.args["limit"] is not None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT TOP 5 name FROM dbo.Customers",  # a smaller cap the user wrote stays as written
        "SELECT name FROM dbo.Customers ORDER BY name OFFSET 0 ROWS FETCH NEXT 20 ROWS ONLY",
        "SELECT TOP 10 PERCENT name FROM dbo.Customers ORDER BY name",  # SET ROWCOUNT caps these
        "SELECT TOP 3 WITH TIES name FROM dbo.Customers ORDER BY name",
        "SELECT 1 AS a UNION ALL SELECT 2",
        "VALUES (1), (2)",
    ],
)
def test_reads_top_cannot_improve_run_as_written(sql) -> None:
    assert _plan(sql) == sql


def test_a_lowered_row_cap_goes_into_top() -> None:
    assert _plan("SELECT name FROM dbo.Customers", max_rows=10) == "SELECT TOP 11 name FROM dbo.Customers"


def test_session_batch_sets_textsize_and_rowcount_and_parses_as_tsql() -> None:
    read_only = _dialect(max_result_bytes=50_000, max_rows=200).session_sql()
    assert "SET TEXTSIZE 100002" in read_only  # 2 bytes a character: a cut nvarchar(max) is over the cap
    assert "SET ROWCOUNT 201" in read_only
    writable = _dialect(read_only_mode=False).session_sql()
    assert "SET ROWCOUNT 0" in writable  # never cap a write's rows
    for statement in read_only.rstrip(";").split("; "):
        sqlglot.parse_one(statement, read="tsql")


def test_sql_variant_has_no_output_converter() -> None:
    # pyodbc 5.2+ decodes sql_variant itself (issue 15); only datetimeoffset and CLR types are converted.
    import app.db.dialects.mssql as mssql

    assert not hasattr(mssql, "SQL_SS_VARIANT")
    assert (mssql.SQL_SS_UDT, mssql.SQL_SS_TIMESTAMPOFFSET) == (-151, -155)


def test_end_call_reruns_the_session_batch_after_anything_but_a_guarded_read() -> None:
    dialect = _dialect()

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def rollback(self) -> None:
            self.calls.append("rollback")

        def commit(self) -> None:
            self.calls.append("commit")

        def execute(self, sql: str) -> None:
            self.calls.append(sql)

    conn = Recorder()
    dialect.end_call(conn, conn, guarded_read=True)
    assert conn.calls == ["rollback"]
    conn.calls.clear()
    dialect.end_call(conn, conn, guarded_read=False)
    assert conn.calls == ["rollback", dialect.session_sql(), "commit"]


@pytest.mark.parametrize(
    ("state", "text", "refused"),
    [
        ("28000", "[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user 'mcp'. (18456)", True),
        ("28000", "[Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed: account disabled (18470)", True),
        ("HYT00", "[Microsoft][ODBC Driver 18 for SQL Server]Login timeout expired (0)", False),
        ("08001", "[Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: Error code 0x2749 (10057)", False),
    ],
)
def test_a_refused_sql_server_login_is_told_apart_from_an_unreachable_server(
    state: str, text: str, refused: bool
) -> None:
    import pyodbc

    from app.settings import load_settings

    dialect = get_dialect(
        load_settings(
            environ={}, env_file=None, db_backend="mssql", mssql_host="db", mssql_database="Shop", mssql_user="mcp"
        )
    )
    assert dialect.login_refused(pyodbc.Error(state, text), text) is refused
