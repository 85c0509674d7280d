"""The Claude tool set against the real Database on the demo SQLite file (handlers called directly)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.core import Principal
from app.db.database import Database
from app.db.types import QueryRefused, QueryTimeout, TableNotFound
from app.mcp.tools import Tool, ToolContext, ToolError
from app.obs.metrics import Metrics
from app.settings import Settings
from app.tools import claude_tools

READER = Principal(subject="u1", username="rita", role="reader")
WRITER = Principal(subject="u2", username="walt", role="writer")


def _tools(database: Any, settings: Settings) -> dict[str, Tool]:
    return {tool.name: tool for tool in claude_tools(database, settings)}


async def _call(tool: Tool, arguments: dict[str, Any], ctx: ToolContext | None = None) -> dict[str, Any]:
    """Call like the MCP layer does: arguments validated against inputSchema, result against outputSchema."""
    jsonschema.validate(arguments, tool.input_schema)
    result = await tool.handler(arguments, ctx or ToolContext())
    jsonschema.validate(result, tool.output_schema)
    return result


@pytest.fixture
def tools(demo_database: Database) -> dict[str, Tool]:
    return _tools(demo_database, demo_database.settings)


@pytest.fixture
async def started(demo_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Start a Database with custom settings; closed at teardown."""
    opened: list[Database] = []

    async def start(**overrides: Any) -> tuple[Database, dict[str, Tool]]:
        settings = demo_settings(**overrides)
        database = Database(settings, Metrics())
        await database.start()
        opened.append(database)
        return database, _tools(database, settings)

    yield start
    for database in opened:
        await database.close()


# --- list_tables ----------------------------------------------------------------------------
async def test_list_tables_shows_tables_and_views(tools: dict[str, Tool]) -> None:
    ctx = ToolContext()
    out = await _call(tools["list_tables"], {}, ctx)
    by_name = {t["name"]: t for t in out["tables"]}
    assert {"customers", "orders", "order_lines", "products", "categories", "suppliers", "price_history"} <= set(
        by_name
    )
    assert by_name["orders"]["kind"] == "table" and by_name["order_totals"]["kind"] == "view"
    assert by_name["customer_lifetime_value"]["kind"] == "view"
    assert out["count"] == len(out["tables"]) and out["truncated"] is False
    estimate = by_name["orders"]["row_estimate"]
    assert estimate is None or 1000 <= estimate <= 2000
    assert ctx.audit["rows"] == out["count"] and ctx.audit["fingerprint"]


async def test_list_tables_filters(tools: dict[str, Tool]) -> None:
    everything = await _call(tools["list_tables"], {})
    schema = everything["tables"][0]["schema"]
    if schema:
        same = await _call(tools["list_tables"], {"schema": schema.upper()})
        assert same["count"] == everything["count"]
    none = await _call(tools["list_tables"], {"schema": "no_such_schema"})
    assert {k: none[k] for k in ("tables", "count", "truncated")} == {"tables": [], "count": 0, "truncated": False}
    assert none["note"].startswith("No tables in schema 'no_such_schema'. Schemas here: ")  # the real ones
    orders = await _call(tools["list_tables"], {"name_contains": "ORDER"})
    assert {t["name"] for t in orders["tables"]} == {"orders", "order_lines", "order_totals"}


async def test_list_tables_is_cut_to_the_byte_budget(started: Callable[..., Any]) -> None:
    _, tools = await started(max_result_bytes=500)
    out = await _call(tools["list_tables"], {})
    assert out["truncated"] is True and 0 < out["count"] < 9
    assert "name_contains" in out["note"]


# --- describe_table -------------------------------------------------------------------------
async def test_describe_table_shows_keys_and_indexes(tools: dict[str, Tool]) -> None:
    out = await _call(tools["describe_table"], {"table_name": "ORDER_LINES"})  # any case
    assert out["name"] == "order_lines" and out["kind"] == "table"
    assert out["primary_key"] == ["order_id", "line_number"]
    columns = {c["name"]: c for c in out["columns"]}
    assert columns["order_id"]["primary_key"] is True and columns["quantity"]["primary_key"] is False
    assert columns["quantity"]["nullable"] is False
    assert "INT" in columns["quantity"]["type"].upper()
    assert columns["discount"]["default"] is not None
    references = {
        (tuple(fk["columns"]), fk["references_table"].split(".")[-1], tuple(fk["references_columns"]))
        for fk in out["foreign_keys"]
    }
    assert references == {(("order_id",), "orders", ("order_id",)), (("product_id",), "products", ("product_id",))}
    assert any(ix["columns"] == ["product_id"] and not ix["unique"] for ix in out["indexes"])


async def test_describe_table_accepts_a_schema_qualified_name(tools: dict[str, Tool]) -> None:
    plain = await _call(tools["describe_table"], {"table_name": "customers"})
    qualified = await _call(tools["describe_table"], {"table_name": plain["qualified_name"]})
    assert qualified == plain
    assert any(ix["unique"] and ix["columns"] == ["email"] for ix in plain["indexes"])


async def test_describe_unknown_table_suggests_close_names(tools: dict[str, Tool]) -> None:
    with pytest.raises(TableNotFound) as info:
        await _call(tools["describe_table"], {"table_name": "custmers"})
    assert "customers" in str(info.value)


async def test_describe_a_view(tools: dict[str, Tool]) -> None:
    out = await _call(tools["describe_table"], {"table_name": "order_totals"})
    assert out["kind"] == "view" and "total" in {c["name"] for c in out["columns"]}


# --- execute_sql ----------------------------------------------------------------------------
async def test_execute_sql_returns_rows(tools: dict[str, Tool]) -> None:
    ctx = ToolContext()
    sql = "SELECT status, COUNT(*) AS n FROM orders GROUP BY status ORDER BY status"
    out = await _call(tools["execute_sql"], {"query": sql}, ctx)
    assert out["columns"] == ["status", "n"]
    assert sum(row[1] for row in out["rows"]) == 1500
    assert out["row_count"] == len(out["rows"]) == 6 and out["truncated"] is False and "note" not in out
    assert ctx.audit["sql"] == sql and ctx.audit["rows"] == 6 and len(ctx.audit["fingerprint"]) == 16


async def test_execute_sql_truncation_says_how_to_narrow(tools: dict[str, Tool]) -> None:
    out = await _call(tools["execute_sql"], {"query": "SELECT * FROM orders", "max_rows": 5})
    assert out["row_count"] == 5 and out["truncated"] is True and out["truncated_reason"] == "max_rows"
    assert "WHERE" in out["note"] and "LIMIT" in out["note"]


async def test_execute_sql_caps_can_only_be_lowered(started: Callable[..., Any]) -> None:
    _, tools = await started(max_rows=50)
    out = await _call(
        tools["execute_sql"], {"query": "SELECT * FROM customers", "max_rows": 100000, "timeout_seconds": 3600}
    )
    assert out["row_count"] == 50 and out["truncated"] is True


async def test_execute_sql_byte_cap(started: Callable[..., Any]) -> None:
    _, tools = await started(max_result_bytes=2000)
    out = await _call(tools["execute_sql"], {"query": "SELECT * FROM customers"})
    assert out["truncated"] is True and out["truncated_reason"] == "max_bytes"
    assert 0 < out["row_count"] < 50
    assert "columns" in out["note"]


async def test_execute_sql_refuses_writes_in_read_only_mode(tools: dict[str, Tool], demo_db_path: Path) -> None:
    with pytest.raises(QueryRefused) as info:
        await _call(tools["execute_sql"], {"query": "DELETE FROM orders"}, ToolContext(principal=WRITER))
    assert str(info.value)
    with sqlite3.connect(demo_db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1500


async def test_execute_sql_timeout_seconds_stops_a_long_query(tools: dict[str, Tool]) -> None:
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        await _call(tools["execute_sql"], {"query": endless, "timeout_seconds": 0.3})
    assert time.monotonic() - started < 3
    # the connection is still fine afterwards
    assert (await _call(tools["execute_sql"], {"query": "SELECT 1 AS one"}))["rows"] == [[1]]


async def test_execute_sql_bad_arguments(tools: dict[str, Tool]) -> None:
    handler = tools["execute_sql"].handler
    for arguments in (
        {"query": "  "},
        {"query": "SELECT 1", "max_rows": 0},
        {"query": "SELECT 1", "timeout_seconds": -1},
        {"query": "SELECT 1", "max_rows": True},
    ):
        with pytest.raises(ToolError) as info:
            await handler(arguments, ToolContext())
        assert info.value.outcome == "invalid"


async def test_write_mode_reader_is_refused_writer_commits(started: Callable[..., Any], writable_demo_db: Path) -> None:
    _, tools = await started(sqlite_path=str(writable_demo_db), read_only_mode=False)
    assert tools["execute_sql"].annotations["destructiveHint"] is True
    update = "UPDATE customers SET loyalty_points = loyalty_points + 1 WHERE country = 'DE'"

    with pytest.raises(ToolError) as info:
        await _call(tools["execute_sql"], {"query": update}, ToolContext(principal=READER))
    assert "reader role" in str(info.value) and info.value.outcome == "refused"
    assert "UPDATE" in str(info.value)  # says what was refused
    with sqlite3.connect(writable_demo_db) as conn:
        before = conn.execute("SELECT SUM(loyalty_points) FROM customers WHERE country = 'DE'").fetchone()[0]
        german = conn.execute("SELECT COUNT(*) FROM customers WHERE country = 'DE'").fetchone()[0]

    # A reader can still read in write mode.
    read = await _call(tools["execute_sql"], {"query": "SELECT COUNT(*) FROM customers"}, ToolContext(principal=READER))
    assert read["rows"] == [[400]]

    ctx = ToolContext(principal=WRITER)
    out = await _call(tools["execute_sql"], {"query": update}, ctx)
    assert out["rows_affected"] == german
    with sqlite3.connect(writable_demo_db) as conn:
        after = conn.execute("SELECT SUM(loyalty_points) FROM customers WHERE country = 'DE'").fetchone()[0]
    assert after == before + german
    assert ctx.audit["rows"] == german


# --- get_table_sample -----------------------------------------------------------------------
async def test_sample_defaults_to_ten_rows(tools: dict[str, Tool]) -> None:
    out = await _call(tools["get_table_sample"], {"table_name": "Customers"})
    assert out["row_count"] == 10 and out["table"].endswith("customers")
    assert "email" in out["columns"]


async def test_sample_limit_and_cap(started: Callable[..., Any]) -> None:
    _, tools = await started(sample_max_rows=7)
    three = await _call(tools["get_table_sample"], {"table_name": "orders", "limit": 3})
    assert three["row_count"] == 3
    capped = await _call(tools["get_table_sample"], {"table_name": "orders", "limit": 500})
    assert capped["row_count"] == 7 and "lowered from 500 to the maximum of 7" in capped["note"]
    with pytest.raises(ToolError) as info:
        await tools["get_table_sample"].handler({"table_name": "orders", "limit": 0}, ToolContext())
    assert info.value.outcome == "invalid"
    with pytest.raises(jsonschema.ValidationError):
        await _call(tools["get_table_sample"], {"table_name": "orders", "limit": -1})


async def test_sample_unknown_table(tools: dict[str, Tool]) -> None:
    with pytest.raises(TableNotFound) as info:
        await _call(tools["get_table_sample"], {"table_name": "prodcts"})
    assert "products" in str(info.value)


async def test_sample_serializes_every_type(tools: dict[str, Tool]) -> None:
    out = await _call(tools["get_table_sample"], {"table_name": "products", "limit": 5})
    row = dict(zip(out["columns"], out["rows"][0], strict=True))
    assert isinstance(row["thumbnail"], str | None)  # binary arrives as text, never raw bytes
    assert row["added_on"][:4].isdigit()
