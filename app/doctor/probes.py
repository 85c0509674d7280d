"""The SQL each engine's doctor checks run, kept as data so the SQL Server text can be unit-tested.

SQL Server cannot run on the machines this project is built on, so its probes are checked by parsing
them with sqlglot (`tsql`) and, for the ones that go through the service's read path, by the guard.
Everything here is a read, except the write probes, which touch only a temporary table of the doctor's
own inside a transaction that is always rolled back, and which a read-only session must refuse.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class TypeProbe:
    """One column of the type round-trip SELECT: a literal of some type and what its JSON value must be."""

    column: str
    expression: str
    expected: str  # shown in the report when the value differs
    accept: Callable[[Any], bool]
    hint: str = ""


def _equals(expected: Any) -> Callable[[Any], bool]:
    return lambda value: value == expected


def _text_ci(expected: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value.lower() == expected.lower()


def _json_equals(expected: Any) -> Callable[[Any], bool]:
    def accept(value: Any) -> bool:
        try:
            return json.loads(value) == expected if isinstance(value, str) else value == expected
        except ValueError:
            return False

    return accept


def _same_instant(expected: dt.datetime) -> Callable[[Any], bool]:
    """ISO text of the same instant; a value without offset must be that instant in UTC."""

    def accept(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            parsed = dt.datetime.fromisoformat(value.replace(" ", "T"))
        except ValueError:
            return False
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed == expected

    return accept


BIG_INTEGER = 9007199254740993  # 2**53 + 1: wrong in any float, and beyond 32 bits
BIG_DECIMAL = "12345678901234567890.0123456789"
UNICODE_TEXT = "h\u00e9llo \u2603 \U0001f600"  # accents, a BMP symbol and an emoji (a surrogate pair in UTF-16)
GUID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
_INSTANT = dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC)


class Probes:
    """What one engine's checks run. Subclasses fill in the SQL; None means the check does not apply."""

    engine: ClassVar[str]
    server_sql: ClassVar[str]
    tls_sql: ClassVar[str | None] = None
    read_only_sql: ClassVar[str | None] = None
    # Statements of the write probe, run in order in one transaction that is rolled back.
    write_probe: ClassVar[tuple[str, ...]] = ()
    sleep_sql: ClassVar[str]
    big_result_sql: ClassVar[str]
    for_json_sql: ClassVar[str | None] = None
    type_probes: ClassVar[tuple[TypeProbe, ...]] = ()

    select_prefix: ClassVar[str] = "SELECT "

    @classmethod
    def types_sql(cls) -> str:
        return cls.select_prefix + ", ".join(f"{p.expression} AS {p.column}" for p in cls.type_probes)


# --- SQL Server ------------------------------------------------------------------------------------

# CAST everything SERVERPROPERTY returns: it is sql_variant, which some pyodbc builds hand back as bytes.
MSSQL_SERVER = """
SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version,
       CAST(SERVERPROPERTY('ProductLevel') AS nvarchar(128)) AS product_level,
       CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition,
       CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition,
       DB_NAME() AS database_name,
       SUSER_SNAME() AS login_name,
       USER_NAME() AS user_name,
       CAST(DATABASEPROPERTYEX(DB_NAME(), 'Updateability') AS nvarchar(60)) AS updateability
"""
# Needs VIEW SERVER STATE (VIEW SERVER PERFORMANCE STATE on 2022+); without it the check says so.
MSSQL_TLS = """
SELECT c.encrypt_option, c.auth_scheme, c.net_transport, c.protocol_version
FROM sys.dm_exec_connections AS c
WHERE c.session_id = @@SPID
"""
# Which writes the login could make: the database's own state, server and database roles, and the
# user tables it may change (HAS_PERMS_BY_NAME folds in grants on the object, its schema and the database).
MSSQL_PERMISSIONS = """
SELECT CAST(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE', 'VIEW DEFINITION') AS int) AS view_definition,
       CAST(IS_SRVROLEMEMBER('sysadmin') AS int) AS is_sysadmin,
       CAST(IS_ROLEMEMBER('db_owner') AS int) AS is_db_owner,
       CAST(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE', 'ALTER') AS int) AS can_alter_database,
       CAST(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE', 'CREATE TABLE') AS int) AS can_create_table,
       (SELECT COUNT(*)
        FROM sys.objects AS o
        CROSS APPLY (SELECT QUOTENAME(SCHEMA_NAME(o.schema_id)) + N'.' + QUOTENAME(o.name) AS qualified) AS n
        WHERE o.type = 'U' AND o.is_ms_shipped = 0
          AND (HAS_PERMS_BY_NAME(n.qualified, 'OBJECT', 'INSERT') = 1
            OR HAS_PERMS_BY_NAME(n.qualified, 'OBJECT', 'UPDATE') = 1
            OR HAS_PERMS_BY_NAME(n.qualified, 'OBJECT', 'DELETE') = 1)
       ) AS writable_tables,
       (SELECT COUNT(*) FROM sys.objects AS o WHERE o.type = 'U' AND o.is_ms_shipped = 0) AS visible_tables
"""
# SQL Server has no read-only session: any login may create temporary tables (in tempdb, even on a
# readable secondary). So on SQL Server this probe proves the other half, that a rolled-back transaction
# leaves nothing behind, and the permission query above says whether user tables could be written.
MSSQL_WRITE_PROBE = (
    "CREATE TABLE #mcp_doctor_probe (id int NOT NULL)",
    "INSERT INTO #mcp_doctor_probe (id) VALUES (1)",
)
MSSQL_AFTER_ROLLBACK = "SELECT CASE WHEN OBJECT_ID(N'tempdb..#mcp_doctor_probe') IS NULL THEN 1 ELSE 0 END AS gone"
MSSQL_SLEEP = "WAITFOR DELAY '00:00:05'"
# Millions of 4 KB rows from catalog views every login can read. The row cap goes into the statement
# (TOP, SET ROWCOUNT), and the byte cap then stops the read after a few dozen rows, so about a thousand
# rows are still unread when the transaction is rolled back (issue 15 item 5).
MSSQL_BIG_RESULT = """
SELECT a.object_id AS a_id, b.object_id AS b_id, REPLICATE(N'x', 2000) AS filler
FROM sys.all_objects AS a CROSS JOIN sys.all_objects AS b
"""
# Over 2,033 characters of JSON, so SQL Server sends it as several rows of one JSON_F52E2B61-... column.
MSSQL_FOR_JSON = """
SELECT TOP (100) o.object_id, o.name, o.type_desc, o.create_date
FROM sys.all_objects AS o
ORDER BY o.object_id
FOR JSON PATH
"""
FOR_JSON_ROWS = 100
FOR_JSON_COLUMN_PREFIXES = ("JSON_F52E2B61-", "XML_F52E2B61-")

# MS-SSCLRT 2.1: SRID 4326, version 1, properties 0C (valid, single point), latitude, longitude (little-endian).
GEOGRAPHY_POINT = "0x" + (struct.pack("<iBB", 4326, 1, 0x0C) + struct.pack("<2d", 47.65, -122.35)).hex().upper()

_ITEM_1_HINT = (
    "pyodbc 5.2+ decodes sql_variant itself; the dialect's output converter for SQL type -150 "
    "turns it into hex (issue 15 item 1)"
)


class MssqlProbes(Probes):
    engine = "mssql"
    # A TOP within the row cap: the service then sends the statement as written instead of regenerating it.
    select_prefix = "SELECT TOP (1) "
    server_sql = MSSQL_SERVER
    tls_sql = MSSQL_TLS
    write_probe = MSSQL_WRITE_PROBE
    sleep_sql = MSSQL_SLEEP
    big_result_sql = MSSQL_BIG_RESULT
    for_json_sql = MSSQL_FOR_JSON
    type_probes = (
        TypeProbe("variant_value", "CAST(42 AS sql_variant)", "42", lambda v: v in (42, "42"), _ITEM_1_HINT),
        TypeProbe(
            "dto",
            "CAST('2024-01-02T03:04:05.1234567+02:00' AS datetimeoffset(7))",
            "2024-01-02T03:04:05.1234567+02:00",
            _equals("2024-01-02T03:04:05.1234567+02:00"),
        ),
        TypeProbe(
            "datetime2_value",
            "CAST('2024-01-02T03:04:05.123456' AS datetime2(6))",
            "2024-01-02T03:04:05.123456",
            _equals("2024-01-02T03:04:05.123456"),
        ),
        TypeProbe("money_value", "CAST(12.3456 AS money)", "12.3456", _equals("12.3456")),
        TypeProbe("decimal_value", f"CAST({BIG_DECIMAL} AS decimal(38, 10))", BIG_DECIMAL, _equals(BIG_DECIMAL)),
        TypeProbe("bigint_value", f"CAST({BIG_INTEGER} AS bigint)", str(BIG_INTEGER), _equals(BIG_INTEGER)),
        TypeProbe("guid", f"CAST('{GUID}' AS uniqueidentifier)", GUID, _text_ci(GUID)),
        TypeProbe("unicode_text", f"CAST(N'{UNICODE_TEXT}' AS nvarchar(max))", UNICODE_TEXT, _equals(UNICODE_TEXT)),
        TypeProbe("xml_value", "CAST(N'<a b=\"1\"/>' AS xml)", '<a b="1"/>', _equals('<a b="1"/>')),
        # CLR types arrive as their serialized bytes. A cast from bytes, not geography::Point(): the guard
        # allowlists functions, and a column value is what users meet anyway.
        TypeProbe(
            "geo",
            f"CAST({GEOGRAPHY_POINT} AS geography)",
            f"{GEOGRAPHY_POINT} (serialized point)",
            _text_ci(GEOGRAPHY_POINT),
        ),
        TypeProbe("hid", "CAST('/1/2/' AS hierarchyid)", "0x5AC0", _text_ci("0x5AC0")),
        # rowversion's name in sys.types (and in CAST) is timestamp.
        TypeProbe(
            "rv", "CAST(CAST(2001 AS binary(8)) AS timestamp)", "0x00000000000007D1", _text_ci("0x00000000000007D1")
        ),
        # Beyond 8,000 bytes: the driver must stream a (max) value, not cut it.
        TypeProbe(
            "big_binary",
            "CAST(REPLICATE(CAST(0xAB AS varbinary(max)), 9000) AS varbinary(max))",
            "0x + 'AB' x 9000",
            _equals("0x" + "AB" * 9000),
        ),
    )


# --- PostgreSQL ------------------------------------------------------------------------------------

PG_SERVER = """
SELECT current_setting('server_version') AS product_version, version() AS edition,
       current_database() AS database_name, current_user AS login_name,
       current_setting('TimeZone') AS time_zone
"""
PG_TLS = "SELECT ssl, version, cipher FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()"
PG_READ_ONLY = (
    "SELECT current_setting('default_transaction_read_only') AS default_read_only, "
    "current_setting('transaction_read_only') AS transaction_read_only"
)
PG_WRITE_PROBE = (
    "CREATE TEMPORARY TABLE mcp_doctor_probe (id integer NOT NULL)",
    "INSERT INTO mcp_doctor_probe (id) VALUES (1)",
)


class PostgresProbes(Probes):
    engine = "postgres"
    server_sql = PG_SERVER
    tls_sql = PG_TLS
    read_only_sql = PG_READ_ONLY
    write_probe = PG_WRITE_PROBE
    sleep_sql = "SELECT pg_sleep(5)"
    # Ten million 2 KB rows made lazily (a nested loop), so the server never builds them all; the caps stop
    # the read early.
    big_result_sql = (
        "SELECT a.a * 10000 + b.b AS n, repeat('x', 2000) AS filler "
        "FROM generate_series(1, 1000) AS a(a), generate_series(1, 10000) AS b(b)"
    )
    type_probes = (
        TypeProbe("numeric_value", f"{BIG_DECIMAL}::numeric", BIG_DECIMAL, _equals(BIG_DECIMAL)),
        TypeProbe("bigint_value", f"{BIG_INTEGER}::bigint", str(BIG_INTEGER), _equals(BIG_INTEGER)),
        TypeProbe(
            "timestamptz_value",
            "TIMESTAMPTZ '2024-01-02 03:04:05.123456+02'",
            "2024-01-02T01:04:05.123456+00:00 (the same instant)",
            _same_instant(_INSTANT),
        ),
        TypeProbe("date_value", "DATE '2024-01-02'", "2024-01-02", _equals("2024-01-02")),
        TypeProbe("uuid_value", f"'{GUID.lower()}'::uuid", GUID.lower(), _text_ci(GUID)),
        TypeProbe("bytea_value", "'\\x00ff'::bytea", "0x00FF", _equals("0x00FF")),
        TypeProbe("json_value", "'{\"a\": [1, 2]}'::json", '{"a": [1, 2]}', _json_equals({"a": [1, 2]})),
        TypeProbe("jsonb_value", "'{\"a\": [1, 2]}'::jsonb", '{"a": [1, 2]}', _json_equals({"a": [1, 2]})),
        TypeProbe("array_value", "ARRAY[1, 2, 3]", "{1,2,3}", _equals("{1,2,3}")),
        TypeProbe("boolean_value", "true", "true", _equals(True)),
        TypeProbe("nan_value", "'NaN'::float8", "NaN", _equals("NaN")),
        TypeProbe("unicode_text", f"'{UNICODE_TEXT}'::text", UNICODE_TEXT, _equals(UNICODE_TEXT)),
    )


# --- SQLite ----------------------------------------------------------------------------------------


class SqliteProbes(Probes):
    engine = "sqlite"
    server_sql = "SELECT sqlite_version() AS product_version"
    read_only_sql = "PRAGMA query_only"
    write_probe = (
        "CREATE TEMPORARY TABLE mcp_doctor_probe (id INTEGER NOT NULL)",
        "INSERT INTO mcp_doctor_probe (id) VALUES (1)",
    )
    # No sleep function: a bounded recursive count that runs for many seconds unless it is interrupted.
    sleep_sql = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100000000) SELECT MAX(x) FROM n"
    )
    # The SQLite ODBC driver builds a whole result at execute time, so "big" stays moderate here.
    big_result_sql = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000) "
        "SELECT x, printf('%2000s', '') AS filler FROM n"
    )
    type_probes = (
        TypeProbe("integer_value", "42", "42", _equals(42)),
        TypeProbe(
            "big_integer",
            str(BIG_INTEGER),
            str(BIG_INTEGER),
            _equals(BIG_INTEGER),
            "the SQLite ODBC driver reads INTEGER columns and expressions as 32-bit unless the "
            "connection string has BigInt=1",
        ),
        TypeProbe("real_value", "1.5", "1.5", _equals(1.5)),
        TypeProbe("unicode_text", f"'{UNICODE_TEXT}'", UNICODE_TEXT, _equals(UNICODE_TEXT)),
        TypeProbe("blob_value", "X'00FF'", "0x00FF", _equals("0x00FF")),
        TypeProbe("null_value", "NULL", "null", _equals(None)),
    )


PROBES: dict[str, type[Probes]] = {"mssql": MssqlProbes, "postgres": PostgresProbes, "sqlite": SqliteProbes}
