"""Pure pieces of the database layer: value serialization, SQLSTATE classification, name parsing and
resolution, connection-string escaping."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal

import pyodbc
import pytest

from app.db.catalog import resolve, suggest
from app.db.dialects import get_dialect
from app.db.dialects.base import connection_string, odbc_value, split_identifier
from app.db.errors import clean_message, is_cancel, is_dead_connection, is_server_timeout, sqlstate_of
from app.db.serialize import serialize_row, to_json_value
from app.db.types import TableInfo, TableNotFound
from app.settings import load_settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (42, 42),
        (2**63 - 1, 2**63 - 1),
        ("héllo ☃", "héllo ☃"),
        (1.5, 1.5),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (Decimal("12345678901234567890.0123456789"), "12345678901234567890.0123456789"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-0.00"), "-0.00"),
        (Decimal("NaN"), "NaN"),
        (dt.date(2024, 2, 29), "2024-02-29"),
        (dt.time(23, 59, 58, 123000), "23:59:58.123000"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-01-02T03:04:05+02:00"),
        (dt.timedelta(days=1, seconds=3600, microseconds=500000), "P1DT3600.5S"),
        (b"\x00\x01\xff", "0x0001FF"),
        (bytearray(b"hi"), "0x6869"),
        (memoryview(b"\x10"), "0x10"),
        (uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff"), "6f9619ff-8b86-d011-b42d-00c04fc964ff"),
    ],
)
def test_every_value_becomes_strict_json(value, expected) -> None:
    out = to_json_value(value)
    assert out == expected
    json.dumps(out, allow_nan=False)


def test_rows_keep_order_and_plain_values_untouched() -> None:
    row = (1, "a", None, Decimal("1.10"), b"\x01", float("nan"))
    assert serialize_row(row) == [1, "a", None, "1.10", "0x01", "NaN"]
    assert not math.isnan(1.0)


def _err(state: str, message: str, cls: type[pyodbc.Error] = pyodbc.Error) -> pyodbc.Error:
    return cls(state, message)


@pytest.mark.parametrize(
    "exc",
    [
        _err("08S01", "[08S01] Communication link failure (SQLExecDirectW)", pyodbc.OperationalError),
        _err("08001", "[08001] could not connect to server"),
        _err("57P01", "[57P01] FATAL: terminating connection due to administrator command"),
        _err("57P02", "[57P02] crash shutdown"),
        _err("57P03", "[57P03] the database system is starting up"),
        _err("HY000", "[HY000] server closed the connection unexpectedly"),
        _err("01000", "[01000] [Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: Error code 0x68"),
        pyodbc.ProgrammingError("Attempt to use a closed connection."),
    ],
)
def test_dead_connections_are_recognised_by_sqlstate_or_message(exc) -> None:
    assert is_dead_connection(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _err("42P01", '[42P01] ERROR: relation "x" does not exist'),
        _err("25006", "[25006] ERROR: cannot execute INSERT in a read-only transaction"),
        _err("HYT00", "[HYT00] Query timeout expired"),
        _err("57014", "[57014] ERROR: canceling statement due to user request"),
        ValueError("not a driver error"),
    ],
)
def test_ordinary_errors_are_not_dead_connections(exc) -> None:
    assert not is_dead_connection(exc)


def test_timeouts_and_cancels_are_told_apart() -> None:
    statement_timeout = _err("57014", "[57014] ERROR: canceling statement due to statement timeout")
    user_cancel = _err("57014", "[57014] ERROR: canceling statement due to user request")
    assert is_server_timeout(statement_timeout) and is_cancel(statement_timeout)
    assert not is_server_timeout(user_cancel) and is_cancel(user_cancel)
    assert is_server_timeout(_err("HYT00", "[HYT00] [Microsoft]Query timeout expired"))
    assert is_cancel(_err("HY008", "[HY008] Operation canceled"))
    assert is_cancel(_err("HY000", "[HY000] [SQLite]interrupted (9) (9) (SQLExecDirectW)"))


def test_driver_messages_are_cleaned_and_secrets_masked() -> None:
    exc = _err(
        "42P01", '[42P01] ERROR: relation "x" does not exist;\nError while executing the query (1) (SQLExecDirectW)'
    )
    assert clean_message(exc) == 'ERROR: relation "x" does not exist'
    exc = _err(
        "28000",
        "[28000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user 'sa'. "
        "(18456) (SQLDriverConnect); [28000] [Microsoft][ODBC Driver 18 for SQL Server]"
        "[SQL Server]Login failed for user 'sa'. (18456)",
    )
    assert clean_message(exc) == "Login failed for user 'sa'."
    assert sqlstate_of(exc) == "28000"
    leaky = _err("HY000", "[HY000] bad password hunter2 for user")
    assert "hunter2" not in clean_message(leaky, ("hunter2",))


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("orders", ["orders"]),
        ("dbo.Orders", ["dbo", "Orders"]),
        ("[dbo].[Order Lines]", ["dbo", "Order Lines"]),
        ("[we]]ird].[a.b]", ["we]ird", "a.b"]),
        ('"public"."Mixed ""Case"""', ["public", 'Mixed "Case"']),
        ("`main`.`t`", ["main", "t"]),
        ("shop.dbo.orders", ["shop", "dbo", "orders"]),
    ],
)
def test_identifier_splitting(name, parts) -> None:
    assert split_identifier(name) == parts


TABLES = [
    TableInfo("dbo", "Orders", "table"),
    TableInfo("dbo", "OrderLines", "table"),
    TableInfo("sales", "Orders", "table"),
    TableInfo("sales", "Regions", "table"),
    TableInfo("dbo", "CustomerTotals", "view"),
    TableInfo("x", "Same", "table"),
    TableInfo("y", "Same", "table"),
]


def _mssql():
    return get_dialect(
        load_settings(environ={}, env_file=None, db_backend="mssql", mssql_host="h", mssql_database="d", mssql_user="u")
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("orders", "dbo.Orders"),  # two schemas: the default one wins
        ("ORDERS", "dbo.Orders"),
        ("sales.orders", "sales.Orders"),
        ("[Sales].[ORDERS]", "sales.Orders"),
        ("regions", "sales.Regions"),
        ("shop.sales.regions", "sales.Regions"),  # a database prefix is ignored
        ("customertotals", "dbo.CustomerTotals"),
    ],
)
def test_resolution_is_case_insensitive_with_or_without_schema(name, expected) -> None:
    assert resolve(name, TABLES, _mssql()).qualified_name == expected


def test_unknown_and_ambiguous_names_get_suggestions() -> None:
    with pytest.raises(TableNotFound) as info:
        resolve("ordrs", TABLES, _mssql())
    assert "dbo.Orders" in info.value.suggestions
    assert "Did you mean" in str(info.value) and "ordrs" in str(info.value)
    with pytest.raises(TableNotFound) as info:
        resolve("same", TABLES, _mssql())
    assert set(info.value.suggestions) == {"x.Same", "y.Same"}
    with pytest.raises(TableNotFound) as info:
        resolve("", TABLES, _mssql())
    assert suggest("line", TABLES) == ["dbo.OrderLines"]


def test_odbc_values_are_brace_quoted_when_needed() -> None:
    assert odbc_value("plain") == "plain"
    assert odbc_value("p;w") == "{p;w}"
    assert odbc_value("a}b") == "{a}}b}"
    assert odbc_value("x=y") == "{x=y}"
    assert odbc_value(" lead") == "{ lead}"
    assert odbc_value("") == "{}"
    assert odbc_value("safe", always=True) == "{safe}"
    assert connection_string([("A", "1"), ("B", None), ("PWD", "x")], braced=frozenset({"PWD"})) == "A=1;PWD={x};"
