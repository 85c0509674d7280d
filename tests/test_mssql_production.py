"""SQL Server in production (issue 15, items 2, 3, 4 TLS, 6, 7, 8, 9, 12).

No SQL Server runs here: catalog and key SQL is checked as T-SQL parsed by sqlglot, connection strings and
attributes by the real Microsoft ODBC Driver 18 `.so` (mssql-python-odbc wheel) against a closed loopback port
and a TLS listener started by the test, and the engine-neutral parts (deadlock retry, FOR JSON joining) run
through the real pool on SQLite.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyodbc
import pytest
import sqlglot
from sqlglot import exp

from app.db.dialects import MssqlDialect, get_dialect
from app.db.dialects.mssql import (
    COLUMNS,
    FOREIGN_KEYS,
    HIDDEN_DEFAULT,
    INDEXES,
    LIST_TABLES,
    SQL_COPT_SS_ACCESS_TOKEN,
    access_token_struct,
    column_from_catalog,
    referenced_name,
)
from app.db.errors import driver_text, is_cancel, is_dead_connection, is_deadlock, is_tls_failure
from app.db.forjson import FOR_JSON_GUID, is_document_result
from app.db.types import DatabaseUnavailable, QueryFailed, TableInfo
from app.settings import SettingsError, load_settings
from tests.fixtures.databases import free_port, open_database

MS = "[Microsoft][ODBC Driver 18 for SQL Server]"


def _settings(**overrides: Any) -> Any:
    base = {
        "db_backend": "mssql",
        "mssql_host": "db.example.net",
        "mssql_database": "Shop",
        "mssql_user": "mcp_reader",
        "mssql_password": "pw",
    }
    base.update(overrides)
    return load_settings(environ={}, env_file=None, **base)


def _dialect(**overrides: Any) -> MssqlDialect:
    dialect = get_dialect(_settings(**overrides))
    assert isinstance(dialect, MssqlDialect)
    return dialect


def _tsql(sql: str) -> exp.Expression:
    tree = sqlglot.parse_one(sql, read="tsql")
    assert isinstance(tree, exp.Select), sql
    return tree


def _msodbcsql() -> str:
    try:
        import mssql_python_odbc
    except ImportError:
        pytest.skip("mssql-python-odbc (Microsoft ODBC Driver 18) is not installed")
    found = glob.glob(
        os.path.join(mssql_python_odbc.get_libs_dir(), "linux", "debian_ubuntu", "*", "lib", "libmsodbcsql-18*.so*")
    )
    if not found:
        pytest.skip("no libmsodbcsql-18 in the mssql-python-odbc wheel")
    return found[0]


# --- item 2: least-privileged logins ----------------------------------------------------------------------
def test_alias_types_fall_back_to_the_base_type_and_fks_survive_invisible_targets() -> None:
    columns = _tsql(COLUMNS)
    assert "COALESCE(TYPE_NAME(c.user_type_id), TYPE_NAME(c.system_type_id))" in COLUMNS
    assert columns.find(exp.Coalesce) is not None
    fks = _tsql(FOREIGN_KEYS)
    tables = {t.name for t in fks.find_all(exp.Table)}
    # No join to the referenced table's sys.objects/sys.schemas/sys.columns rows the login may not see.
    assert tables == {"foreign_keys", "foreign_key_columns", "columns", "synonyms"}  # synonyms: the target
    for function in (
        "OBJECT_SCHEMA_NAME(fkc.referenced_object_id)",
        "OBJECT_NAME(fkc.referenced_object_id)",
        "COL_NAME(fkc.referenced_object_id, fkc.referenced_column_id)",
    ):
        assert function in FOREIGN_KEYS
    assert referenced_name("sales", "Customers", 7) == "sales.Customers"
    assert referenced_name(None, None, 1234) == "(object 1234, not visible to this login)"


def test_a_default_hidden_by_missing_view_definition_says_so() -> None:
    row = ("Status", "StatusCode", 2, 0, 0, False, None, 99, False, False, False, 0, "smallint")
    column = column_from_catalog(row, [])
    assert column.default == HIDDEN_DEFAULT  # default_object_id 99: one exists, OBJECT_DEFINITION gave NULL
    assert column.type == "StatusCode" and column.base_type == "smallint"
    no_default = column_from_catalog(("x", "int", 4, 10, 0, True, None, 0, False, False, False, 0, "int"), [])
    assert no_default.default is None
    visible = column_from_catalog(("x", "int", 4, 10, 0, True, "((0))", 5, False, False, False, 0, "int"), [])
    assert visible.default == "((0))"


# --- item 9: describe gaps -----------------------------------------------------------------------------------
def test_column_flags_identity_computed_hidden_generated_always() -> None:
    assert all(name in COLUMNS for name in ("c.is_identity", "c.is_computed", "c.is_hidden", "c.generated_always_type"))
    identity = column_from_catalog(("Id", "int", 4, 10, 0, False, None, 0, True, False, False, 0, "int"), ["Id"])
    assert identity.flags == ["identity"] and identity.primary_key
    computed = column_from_catalog(("Total", "money", 8, 19, 4, True, None, 0, False, True, False, 0, "money"), [])
    assert computed.flags == ["computed"]
    start = column_from_catalog(
        ("ValidFrom", "datetime2", 8, 27, 7, False, None, 0, False, False, True, 1, "datetime2"), []
    )
    assert start.flags == ["hidden", "generated always as row start"] and start.type == "datetime2(7)"
    end = column_from_catalog(
        ("ValidTo", "datetime2", 8, 27, 7, False, None, 0, False, False, False, 2, "datetime2"), []
    )
    assert end.flags == ["generated always as row end"]


def test_indexes_keep_columnstore_and_drop_hypothetical_and_disabled() -> None:
    tree = _tsql(INDEXES)
    where = tree.args["where"].sql(dialect="tsql")
    assert "i.is_hypothetical = 0" in where and "i.is_disabled = 0" in where
    assert "(ic.is_included_column = 0 OR i.type IN (5, 6))" in where  # columnstore columns are "included"


def test_synonyms_and_external_tables_are_listed() -> None:
    tree = _tsql(LIST_TABLES)
    where = tree.args["where"].sql(dialect="tsql")
    assert "o.type IN ('U', 'V', 'ET', 'SN')" in where
    case = tree.find(exp.Case).sql(dialect="tsql")
    assert "WHEN 'SN' THEN 'view'" in case  # the tools' kind stays "table" | "view"
    assert "sys.synonyms" in COLUMNS and "OBJECT_ID(sn.base_object_name)" in COLUMNS  # described via its target


def test_describe_table_binds_the_name_twice_and_reads_every_part() -> None:
    dialect = _dialect()

    class Cursor:
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[Any, ...]]] = []
            self.rows: list[tuple[Any, ...]] = []

        def execute(self, sql: str, *params: Any) -> None:
            assert sql.count("?") == len(params) == 4
            self.calls.append((sql, params))
            if "is_primary_key = 1" in sql and "is_unique" not in sql:
                self.rows = [("Id",)]
            elif sql is COLUMNS:
                self.rows = [
                    ("Id", "int", 4, 10, 0, False, None, 0, True, False, False, 0, "int"),
                    ("CustomerId", "int", 4, 10, 0, False, None, 0, False, False, False, 0, "int"),
                ]
            elif sql is FOREIGN_KEYS:
                self.rows = [("FK_Orders_Customers", None, None, "CustomerId", None, 901)]
            else:
                self.rows = [("CCI_Orders", False, "Id"), ("CCI_Orders", False, "CustomerId")]

        def fetchall(self) -> list[tuple[Any, ...]]:
            return self.rows

    cursor = Cursor()
    described = dialect.describe_table(cursor, TableInfo("sales", "Orders", "table"))
    assert all(params == ("sales", "Orders", "sales", "Orders") for _, params in cursor.calls)
    assert described.primary_key == ["Id"] and described.columns[0].flags == ["identity"]
    fk = described.foreign_keys[0]
    assert fk.references_table == "(object 901, not visible to this login)" and fk.references_columns == ["?"]
    assert described.indexes[0].columns == ["Id", "CustomerId"]


# --- item 6: row fetch by key -------------------------------------------------------------------------------
def test_row_by_key_casts_each_key_to_its_column_type() -> None:
    dialect = _dialect()
    table = TableInfo("dbo", "Events", "table")
    sql = dialect.row_sql(
        table,
        ["At", "Hash", "Code", "Id", "Name", "Guid"],
        ["datetime", "varbinary(32)", "varchar(20)", "int", "nvarchar(50)", "uniqueidentifier"],
    )
    assert sql == (
        "SELECT TOP (2) * FROM [dbo].[Events] WHERE [At] = CAST(? AS datetime) AND "
        "[Hash] = CONVERT(varbinary(32), ?, 1) AND [Code] = CAST(? AS varchar(20)) AND [Id] = ? AND "
        "[Name] = ? AND [Guid] = CAST(? AS uniqueidentifier)"
    )
    tree = _tsql(sql)
    assert len(list(tree.find_all(exp.Cast))) == 3
    assert sql.count("?") == 6
    # Anything that is not a plain base type name is never pasted into the SQL.
    assert dialect.row_sql(table, ["a"], ["int); DROP TABLE x; --"]).endswith("WHERE [a] = ?")
    assert dialect.row_sql(table, ["a"], ["xml"]).endswith("WHERE [a] = ?")
    assert dialect.row_sql(table, ["a"]).endswith("WHERE [a] = ?")


async def test_fetch_row_passes_column_types_through_the_real_layer(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        conn.execute("INSERT INTO t VALUES ('a', 1)")
    async with open_database(db_backend="sqlite", sqlite_path=str(path)) as database:
        table = await database.resolve_table("t")
        assert await database.fetch_row(table, {"k": "a"}) == {"k": "a", "v": 1}


# --- item 7: Azure SQL, availability groups, Entra ID ---------------------------------------------------------
def test_multi_subnet_failover_and_login_timeout_defaults() -> None:
    cs = _dialect().connection_string()
    assert "MultiSubnetFailover=Yes;" in cs
    assert "MultiSubnetFailover" not in _dialect(mssql_multi_subnet_failover=False).connection_string()
    assert "MultiSubnetFailover" not in _dialect(mssql_host="h\\SQLEXPRESS").connection_string()  # named instance
    assert _settings().db_connect_timeout_seconds == 20
    assert _settings(db_connect_timeout_seconds=3).db_connect_timeout_seconds == 3
    assert (
        load_settings(
            environ={"DB_BACKEND": "sqlite", "SQLITE_PATH": "/x.db"}, env_file=None
        ).db_connect_timeout_seconds
        == 5
    )
    assert (
        load_settings(
            environ={
                "DB_BACKEND": "mssql",
                "MSSQL_HOST": "h",
                "MSSQL_DATABASE": "d",
                "MSSQL_USER": "u",
                "DB_CONNECT_TIMEOUT_SECONDS": "7",
            },
            env_file=None,
        ).db_connect_timeout_seconds
        == 7
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MSSQL_HOST": "sql.example.net,1433"}, "MSSQL_HOST: a host name without ',port'"),
        ({"MSSQL_AUTHENTICATION": "ActiveDirectoryServicePrincipal", "MSSQL_PASSWORD": ""}, "client secret"),
        ({"MSSQL_AUTHENTICATION": "AccessToken"}, "needs MSSQL_ACCESS_TOKEN_FILE"),
        ({"MSSQL_AUTHENTICATION": "ActiveDirectoryMsi", "Trusted_Connection": "yes"}, "Trusted_Connection"),
        ({"MSSQL_AUTHENTICATION": "Kerberos"}, "MSSQL_AUTHENTICATION: expected one of"),
    ],
)
def test_bad_sql_server_settings_stop_start_up_with_one_line(environ: dict[str, str], message: str) -> None:
    base = {"DB_BACKEND": "mssql", "MSSQL_HOST": "h", "MSSQL_DATABASE": "d", "MSSQL_USER": "u", "MSSQL_PASSWORD": "p"}
    with pytest.raises(SettingsError) as info:
        load_settings(environ={**base, **environ}, env_file=None)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_entra_id_connection_strings(tmp_path: Path) -> None:
    sp = _dialect(
        mssql_authentication="ActiveDirectoryServicePrincipal", mssql_user="0000-app-id", mssql_password="s3cret"
    ).connection_string()
    assert "Authentication=ActiveDirectoryServicePrincipal;UID=0000-app-id;PWD={s3cret};" in sp
    msi = _dialect(mssql_authentication="ActiveDirectoryMsi", mssql_user="", mssql_password="").connection_string()
    assert "Authentication=ActiveDirectoryMsi;" in msi and "UID=" not in msi and "PWD=" not in msi
    token_file = tmp_path / "token"
    token_file.write_text("eyJ0eXAiOiJKV1Qi.payload.sig\n")
    dialect = _dialect(mssql_authentication="AccessToken", mssql_access_token_file=str(token_file))
    cs = dialect.connection_string()
    assert "UID=" not in cs and "PWD=" not in cs and "Authentication" not in cs  # the driver refuses them (FA005)
    token = dialect.connect_kwargs()["attrs_before"][SQL_COPT_SS_ACCESS_TOKEN]
    assert token == access_token_struct("eyJ0eXAiOiJKV1Qi.payload.sig")
    (length,) = struct.unpack_from("<I", token)
    assert token[4:].decode("utf-16-le") == "eyJ0eXAiOiJKV1Qi.payload.sig" and length == len(token) - 4


def test_a_missing_token_file_is_a_refused_login(tmp_path: Path) -> None:
    dialect = _dialect(mssql_authentication="AccessToken", mssql_access_token_file=str(tmp_path / "absent"))
    with pytest.raises(pyodbc.Error) as info:
        dialect.connect_kwargs()
    assert dialect.login_refused(info.value, str(info.value))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(pyodbc.Error, match="is empty"):
        _dialect(mssql_authentication="AccessToken", mssql_access_token_file=str(tmp_path / "empty")).connect_kwargs()


@pytest.mark.parametrize(
    "settings",
    [
        {"mssql_authentication": "ActiveDirectoryServicePrincipal", "mssql_user": "app-id", "mssql_password": "x"},
        {"mssql_authentication": "ActiveDirectoryMsi", "mssql_user": "", "mssql_password": ""},
        {"mssql_authentication": "AccessToken", "mssql_user": "", "mssql_password": ""},
    ],
)
def test_the_real_driver_accepts_the_attributes_and_fails_only_to_connect(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("eyJ0eXAiOiJKV1Qi.payload.sig")
    dialect = _dialect(
        mssql_driver=_msodbcsql(),
        mssql_host="127.0.0.1",
        mssql_port=free_port(),
        mssql_access_token_file=str(token_file),
        db_connect_timeout_seconds=1,
        **settings,
    )
    assert "MultiSubnetFailover=Yes;" in dialect.connection_string()
    started = time.perf_counter()
    with pytest.raises(pyodbc.Error) as info:
        dialect.connect(dialect.connection_string())
    # A connect error after the 1 s login timeout, not an attribute/option error (FA005, "Invalid value").
    assert info.value.args[0] == "HYT00", info.value.args
    assert time.perf_counter() - started < 5
    assert not dialect.login_refused(info.value, str(info.value))


def test_the_real_driver_rejects_what_it_does_not_support() -> None:
    # Negative control: the driver does check attributes, so the test above means something.
    driver = _msodbcsql()
    base = f"DRIVER={{{driver}}};SERVER=127.0.0.1,{free_port()};Encrypt=yes;"
    with pytest.raises(pyodbc.Error) as bogus:
        pyodbc.connect(base + "Authentication=Bogus;", timeout=1)
    assert "Invalid value specified for connection string attribute 'Authentication'" in str(bogus.value)
    with pytest.raises(pyodbc.Error) as both:
        pyodbc.connect(
            base + "UID=u;PWD=p;", timeout=1, attrs_before={SQL_COPT_SS_ACCESS_TOKEN: access_token_struct("t")}
        )
    assert both.value.args[0] == "FA005"


# --- item 4 (TLS) and item 12: configuration errors and error classification ------------------------------
def _read_tds_packet(sock: socket.socket) -> tuple[int | None, bytes]:
    """One TDS packet: 8-byte header (type, status, big-endian length, spid, packet id, window), then body."""
    data = b""
    while len(data) < 8 or len(data) < struct.unpack_from(">H", data, 2)[0]:
        chunk = sock.recv(4096)
        if not chunk:
            return None, b""
        data += chunk
    return data[0], data[8:]


def _tds_packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBHHBB", kind, 1, len(body) + 8, 0, 1, 0) + body


# PRELOGIN answer (MS-TDS 2.2.6.5): VERSION 16.0.2000 at offset 11, ENCRYPTION = ENCRYPT_ON at offset 17.
PRELOGIN_ENCRYPT_ON = (
    struct.pack(">BHH", 0, 11, 6) + struct.pack(">BHH", 1, 17, 1) + b"\xff" + bytes([16, 0, 0x07, 0xD0, 0, 0]) + b"\x01"
)


def _tls_in_tds(client: socket.socket, context: ssl.SSLContext) -> None:
    """Encrypt=yes: PRELOGIN in clear, then the TLS handshake carried in TDS PRELOGIN (0x12) packets."""
    _read_tds_packet(client)
    client.sendall(_tds_packet(0x04, PRELOGIN_ENCRYPT_ON))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
            return  # the client trusted the certificate; closing now is a plain connect failure
        except ssl.SSLWantReadError:
            pass
        pending = outgoing.read()
        if pending:
            client.sendall(_tds_packet(0x12, pending))
        kind, body = _read_tds_packet(client)
        if kind is None:
            return  # the driver hung up on the certificate
        incoming.write(body)


@pytest.fixture(params=["strict", "yes"])
def tls_listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A loopback listener with a self-signed certificate: Encrypt=strict (TDS 8) speaks TLS first,
    Encrypt=yes (the default) answers PRELOGIN and runs the TLS handshake inside TDS packets, as SQL Server
    does. Yields (port, Encrypt value)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            client.settimeout(5)
            with client, contextlib.suppress(OSError):  # ssl.SSLError is an OSError
                if request.param == "strict":
                    context.wrap_socket(client, server_side=True).recv(16)
                else:
                    _tls_in_tds(client, context)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], request.param
    finally:
        stop.set()
        thread.join(5)
        server.close()


async def test_an_untrusted_certificate_is_a_configuration_error(tls_listener: tuple[int, str]) -> None:
    port, encrypt = tls_listener
    async with open_database(
        db_backend="mssql",
        mssql_host="127.0.0.1",
        mssql_port=port,
        mssql_database="Shop",
        mssql_user="sa",
        mssql_password="pw",
        mssql_encrypt=encrypt,
        trust_server_certificate=False,
        mssql_driver=_msodbcsql(),
        db_connect_timeout_seconds=2,
        db_pool_size=1,
    ) as database:
        status = database.status()
        assert "SSL Provider" in str(status["last_error"]), status
        assert status["status"] == "misconfigured" and database.pool.login_refused
        with pytest.raises(DatabaseUnavailable) as info:
            await database.read("SELECT 1")
        assert "operator must fix its settings" in str(info.value)
        assert "127.0.0.1" not in str(info.value)


async def test_a_trusted_certificate_then_a_dropped_link_is_not_a_configuration_error(
    tls_listener: tuple[int, str],
) -> None:
    # Control: with TrustServerCertificate=yes the handshake passes and the listener hangs up afterwards.
    port, encrypt = tls_listener
    if encrypt == "strict":
        pytest.skip("Encrypt=strict always validates the certificate: Driver 18 ignores TrustServerCertificate")
    async with open_database(
        db_backend="mssql",
        mssql_host="127.0.0.1",
        mssql_port=port,
        mssql_database="Shop",
        mssql_user="sa",
        mssql_password="pw",
        mssql_encrypt=encrypt,
        trust_server_certificate=True,
        mssql_driver=_msodbcsql(),
        db_connect_timeout_seconds=2,
        db_pool_size=1,
    ) as database:
        status = database.status()
        assert status["status"] == "degraded" and not database.pool.login_refused, status
        assert "SSL Provider" not in str(status["last_error"])


def test_tls_and_dead_connections_are_classified_by_sqlstate_and_driver_prefix_only() -> None:
    tls = pyodbc.Error(
        "08001",
        f"[08001] {MS}SSL Provider: [error:0A000086:SSL routines::certificate verify "
        "failed:self-signed certificate] (-1) (SQLDriverConnect)",
    )
    assert is_tls_failure(tls) and _dialect().login_refused(tls, str(tls))
    # A server message quoting user data with the driver's phrases in it is not a dead link or a TLS error.
    quoted = pyodbc.Error(
        "42000",
        f"[42000] {MS}[SQL Server]Invalid object name 'TCP Provider: SSL Provider: "
        "Communication link failure'. (208) (SQLExecDirectW)",
    )
    assert driver_text(quoted) is None
    assert not is_dead_connection(quoted) and not is_tls_failure(quoted)
    raised = pyodbc.Error("HY000", f"[HY000] {MS}[SQL Server]communication link failure interrupted (50000)")
    assert not is_dead_connection(raised) and not is_cancel(raised)
    pg = pyodbc.Error(
        "HY000",
        '[HY000] ERROR: value "server closed the connection" is bad;\nError while '
        "executing the query (1) (SQLExecDirectW)",
    )
    assert not is_dead_connection(pg)
    assert is_dead_connection(pyodbc.Error("HY000", f"[HY000] {MS}Communication link failure (0)"))
    assert is_dead_connection(pyodbc.Error("01000", f"[01000] {MS}TCP Provider: Error code 0x68 (104)"))
    assert not is_tls_failure(pyodbc.Error("08001", f"[08001] {MS}TCP Provider: Error code 0x2749 (10057)"))


# --- item 8: deadlock victims -------------------------------------------------------------------------------
DEADLOCK = (
    "40001",
    f"[40001] {MS}[SQL Server]Transaction (Process ID 61) was deadlocked on lock resources "
    "with another process and has been chosen as the deadlock victim. Rerun the transaction. "
    "(1205) (SQLExecDirectW)",
)


def test_deadlock_classification_and_session_priority() -> None:
    assert is_deadlock(pyodbc.Error(*DEADLOCK))
    assert is_deadlock(pyodbc.Error("40P01", "[40P01] ERROR: deadlock detected"))
    assert not is_deadlock(pyodbc.Error("42000", "[42000] deadlocked victim in a string"))
    batch = _dialect().session_sql()
    assert "SET DEADLOCK_PRIORITY LOW;" in batch
    for statement in batch.rstrip(";").split("; "):
        sqlglot.parse_one(statement, read="tsql")


async def test_a_read_chosen_as_deadlock_victim_runs_once_more_and_a_write_does_not(sqlite_db: Path) -> None:
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db), db_pool_size=1) as database:
        attempts: list[int] = []

        def victim_once(session: Any) -> int:
            attempts.append(1)
            cursor = session.cursor()
            cursor.execute("SELECT 1")
            if len(attempts) == 1:
                raise pyodbc.Error(*DEADLOCK)
            return int(cursor.fetchone()[0])

        assert await database.pool.run(victim_once, timeout=5, retry=True) == 1
        assert len(attempts) == 2

        def always_victim(session: Any) -> None:
            attempts.append(1)
            raise pyodbc.Error(*DEADLOCK)

        attempts.clear()
        with pytest.raises(QueryFailed) as info:
            await database.pool.run(always_victim, timeout=5, retry=True)
        assert len(attempts) == 2 and info.value.sqlstate == "40001"  # one retry, then surfaced
        attempts.clear()
        with pytest.raises(QueryFailed):
            await database.pool.run(always_victim, timeout=5, retry=False)  # a write is never repeated
        assert len(attempts) == 1
        assert (await database.read("SELECT 2 AS x")).rows == [[2]]  # the connection is still good


# --- item 3: FOR JSON / FOR XML -------------------------------------------------------------------------------
JSON_COLUMN = f"JSON_{FOR_JSON_GUID.replace('D', 'd', 1)}"  # the driver reports SQL Server's mixed case


def _fragments_db(path: Path, document: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE fragments (seq INTEGER PRIMARY KEY, part TEXT)")
        conn.executemany(
            "INSERT INTO fragments VALUES (?, ?)", [(i, document[i : i + 2033]) for i in range(0, len(document), 2033)]
        )
    return path


def test_a_json_document_one_longer_than_the_row_cap_is_cut_to_it() -> None:
    from app.db.forjson import _row_capped

    column = f"JSON_{FOR_JSON_GUID}"
    assert _row_capped(column, '[{"a":1},{"a":2},{"a":3}]', 2) == ('[{"a":1},{"a":2}]', True)
    assert _row_capped(column, '{"rows":[{"a":1},{"a":2},{"a":3}]}', 2) == ('{"rows":[{"a":1},{"a":2}]}', True)
    assert _row_capped(column, '[{"a":1},{"a":2}]', 2) == ('[{"a":1},{"a":2}]', False)
    assert _row_capped(f"XML_{FOR_JSON_GUID}", "<r/><r/><r/>", 2) == ("<r/><r/><r/>", False)
    assert _row_capped(column, '{"a":1,"b":[1,2,3]}', 2)[1] is False  # not a ROOT wrapper


def test_document_column_detection() -> None:
    assert is_document_result([("JSON_F52E2B61-18A1-11d1-B105-00805F49916B", str)])
    assert is_document_result([("XML_F52E2B61-18A1-11d1-B105-00805F49916B", str)])
    assert not is_document_result([("JSON_F52E2B61-18A1-11d1-B105-00805F49916B", str), ("x", int)])
    assert not is_document_result([("json", str)]) and not is_document_result(None)


async def test_for_json_fragments_are_joined_before_the_caps(tmp_path: Path) -> None:
    # SQLite can name a column like SQL Server's FOR JSON column and return the same ~2,033-character
    # fragments, so the joining runs through the real layer and driver rather than a fake cursor.
    document = json.dumps([{"id": i, "name": f"object number {i}", "type": "USER_TABLE"} for i in range(400)])
    path = _fragments_db(tmp_path / "j.db", document)
    sql = f'SELECT part AS "{JSON_COLUMN}" FROM fragments ORDER BY seq'
    assert len(document) > 10 * 2033
    async with open_database(db_backend="sqlite", sqlite_path=str(path)) as database:
        result = await database.read(sql)
        assert result.columns == [JSON_COLUMN] and result.row_count == 1 and not result.truncated
        assert json.loads(result.rows[0][0]) == json.loads(document)
    # SQL Server's TOP (MAX_ROWS + 1) sits under FOR JSON: an array one longer than the cap was cut.
    async with open_database(db_backend="sqlite", sqlite_path=str(path), max_rows=399) as database:
        capped = await database.read(sql)
        assert capped.truncated and capped.truncated_reason == "max_rows"
        assert json.loads(capped.rows[0][0]) == json.loads(document)[:399]
    async with open_database(db_backend="sqlite", sqlite_path=str(path), max_result_bytes=5000) as database:
        cut = await database.read(sql)
        assert cut.truncated and cut.truncated_reason == "max_bytes" and cut.too_long_column == JSON_COLUMN
        assert cut.rows == []  # never a fragment that is not JSON
        small = await database.read(f'SELECT part AS "{JSON_COLUMN}" FROM fragments WHERE seq = 0')
        assert small.row_count == 1 and not small.truncated


async def test_doctor_for_json_check_passes_on_joined_fragments(tmp_path: Path) -> None:
    # The doctor's own verdict logic, fed the real layer's joined result (its SQL Server probe, run on SQLite
    # against fragments shaped like SQL Server's).
    from app.doctor import checks, probes
    from app.doctor.report import Report

    document = json.dumps(
        [
            {
                "object_id": i,
                "name": f"sysobject_{i:04d}",
                "type_desc": "SYSTEM_TABLE",
                "create_date": "2019-01-01T00:00:00",
            }
            for i in range(probes.FOR_JSON_ROWS)
        ]
    )
    path = _fragments_db(tmp_path / "d.db", document)
    settings = load_settings(environ={}, env_file=None, db_backend="sqlite", sqlite_path=str(path))
    doctor = checks.Doctor(settings, Report(dialect="sqlite", target="test"))

    class FragmentProbes(doctor.probes):  # type: ignore[name-defined, misc]
        for_json_sql = f'SELECT part AS "{JSON_COLUMN}" FROM fragments ORDER BY seq'

    doctor.probes = FragmentProbes
    async with open_database(db_backend="sqlite", sqlite_path=str(path)) as database:
        doctor.database = database
        await doctor.for_json()
    (result,) = [r for r in doctor.report.checks if r.name == "for_json"]
    assert result.status == checks.PASS, result
