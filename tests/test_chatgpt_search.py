"""ChatGPT's keyword search over the data (issue 13): the official SDK client on /chatgpt/mcp against the demo
database, the same search SQL on PostgreSQL, and SQL Server's full-text SQL parsed with sqlglot `tsql`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import sqlglot
from mcp import Client

from app import keys
from app.db import guard
from app.db.dialects.mssql import MssqlDialect
from app.db.types import TableInfo
from app.mcp.tools import ToolContext
from app.settings import Settings
from app.tools.chatgpt import ChatGptTools
from app.tools.intent import parse_intent
from app.tools.search import is_auto_searchable, like_pattern, parse_catalog_rows, score_row
from tests.fixtures.app import LiveServer
from tests.fixtures.databases import open_database


def _payload(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    return result.structured_content or json.loads(result.content[0].text)


async def _search(client: Client, query: str) -> dict[str, Any]:
    return _payload(await client.call_tool("search", {"query": query}))


async def _fetch(client: Client, record_id: str) -> dict[str, Any]:
    return _payload(await client.call_tool("fetch", {"id": record_id}))


async def test_keyword_search_finds_values_in_the_data(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    server = await start_live_server(make_settings())
    async with Client(server.url + "/chatgpt/mcp") as client:
        for value in ("Tokyo", "example.com", "Keyboard"):
            found = await _search(client, value)
            rows = [r for r in found["results"] if r["id"].startswith("row:")]
            assert rows, f"no row documents for {value}: {found}"
            document = await _fetch(client, rows[0]["id"])
            assert value.lower() in document["text"].lower()
            assert document["id"] == rows[0]["id"] and document["metadata"]["kind"] == "row"

        tokyo = await _search(client, "Tokyo")  # more than twenty demo customers live in Tokyo
        assert tokyo.get("truncated") is True and len(tokyo["results"]) == 20
        last = tokyo["results"][-1]
        assert last["id"].startswith("more:") and "Tokyo page 2" in last["title"]
        assert "page 2" in (await _fetch(client, last["id"]))["text"]
        page_two = await _search(client, "Tokyo page 2")
        first_ids = {r["id"] for r in tokyo["results"][:-1]}
        assert page_two["results"] and not first_ids & {r["id"] for r in page_two["results"]}

        # a row id is re-read from the database once the fetch cache is gone
        row_id = next(r["id"] for r in tokyo["results"] if r["id"].startswith("row:customers:"))
        server.app[keys.CHATGPT_TOOLS].cache.clear()
        assert "Tokyo" in (await _fetch(client, row_id))["text"]


async def test_a_fetched_row_lists_its_neighbours(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    server = await start_live_server(make_settings())
    async with Client(server.url + "/chatgpt/mcp") as client:
        order = await _fetch(client, "row:orders:1")
        lines = [i for i in order["metadata"]["referenced_by"] if i.startswith("row:order_lines:")]
        assert lines and all(f"- {i}:" in order["text"] for i in lines)  # an order with its lines
        assert any(i.startswith("row:customers:") for i in order["metadata"]["related"])  # and its customer
        line = await _fetch(client, lines[0])
        assert "row:orders:1" in line["metadata"]["related"]
        # both spellings of a SQLite table id are accepted; the canonical one is returned
        assert (await _fetch(client, "table:main.customers"))["id"] == "table:customers"
        assert (await _fetch(client, "table:customers"))["id"] == "table:customers"


async def test_list_tables_says_when_it_is_cut(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    server = await start_live_server(make_settings(max_search_results=3))
    async with Client(server.url + "/chatgpt/mcp") as client:
        first = await _search(client, "list tables")
        assert first["truncated"] is True and len(first["results"]) == 3
        assert "list tables page 2" in first["results"][-1]["title"]
        sql = await _search(client, "SELECT * FROM customers")  # a query result: narrowed, not paged
        assert sql["truncated"] is True and sql["results"][-1]["id"].startswith("more:")
        assert "WHERE" in (await _fetch(client, sql["results"][-1]["id"]))["text"]
        second = await _search(client, "list tables page 2")
        assert {r["id"] for r in second["results"]}.isdisjoint({r["id"] for r in first["results"]})


async def test_the_same_search_on_postgresql(pg_db: dict[str, Any]) -> None:
    async with open_database(**pg_db, db_pool_size=2) as database:
        tools = ChatGptTools(database, database.settings)
        found = (await tools.search({"query": "north"}, ToolContext()))["results"]
        assert "row:sales.Regions:1" in [r["id"] for r in found]
        document = await tools.fetch({"id": "row:sales.Regions:1"}, ToolContext())
        assert "North" in document["text"]
        assert "row:sales.orders:10" in document["metadata"]["referenced_by"]  # the region's orders


async def test_sqlite_fts5_index_is_used(writable_demo_db: Any) -> None:
    with sqlite3.connect(writable_demo_db) as conn:  # an external-content FTS5 index over products
        conn.executescript(
            "CREATE VIRTUAL TABLE products_fts USING fts5(name, content='products', "
            "content_rowid='product_id'); INSERT INTO products_fts(products_fts) VALUES ('rebuild');"
        )
        word = conn.execute("SELECT name FROM products ORDER BY product_id LIMIT 1").fetchone()[0].split()[0]
    async with open_database(
        db_backend="sqlite", sqlite_path=str(writable_demo_db), db_pool_size=2, search_columns=("customers.city",)
    ) as database:
        tools = ChatGptTools(database, database.settings)
        found = await tools.content.fulltext()
        assert found[(None, "products")] == (["name"], "product_id", "products_fts")
        results = (await tools.search({"query": word}, ToolContext()))["results"]
        product_rows = [r["id"] for r in results if r["id"].startswith("row:products:")]
        assert product_rows  # found through the FTS5 index (SEARCH_COLUMNS names no product column)
        assert word.lower() in (await tools.fetch({"id": product_rows[0]}, ToolContext()))["text"].lower()


def test_sql_server_full_text_sql_parses_and_passes_the_guard() -> None:
    dialect = MssqlDialect.__new__(MssqlDialect)  # SQL generation needs no settings or driver
    table = TableInfo(schema="dbo", name="Order Details", kind="table", row_estimate=None)
    sql = dialect.fulltext_search_sql(table, "id", ["id", "name"], ["name", "city"])
    tree = sqlglot.parse_one(sql, read="tsql")
    assert "CONTAINSTABLE" in sql.upper() and tree.find(sqlglot.exp.Order) is not None
    assert "[dbo].[Order Details]" in sql and "k.[KEY]" in sql
    assert dialect.fulltext_condition(["tokyo", 'we"ird']) == '"tokyo*" OR "weird*"'
    like = dialect.content_search_sql(table, ["id"], ["name", "city"], 2)
    assert like.count("?") == 4 and "LIKE ? ESCAPE" in like
    referencing, params = dialect.referencing_sql(table)
    assert params == ["[dbo].[Order Details]"]
    for statement in (sql, like, dialect.all_columns_sql, dialect.fulltext_columns_sql, referencing):
        sqlglot.parse_one(statement, read="tsql")
        verdict = guard.check(statement, "mssql")
        assert verdict.allowed, verdict.message
    assert "COALESCE(TYPE_NAME(c.user_type_id), TYPE_NAME(c.system_type_id))" in dialect.all_columns_sql


def test_sql_server_queries_are_recognised_as_sql() -> None:
    for text in (
        ";WITH c AS (SELECT 1 AS x) SELECT x FROM c",
        "-- the top customers\nSELECT TOP 5 * FROM t",
        "/* report */ SELECT 1",
        "WITH [my cte] AS (SELECT 1 AS x) SELECT * FROM [my cte]",
    ):
        intent = parse_intent(text)
        assert intent.kind == "sql", text
        assert guard.check(intent.sql or "", "mssql").allowed, text
    assert parse_intent("-- sneaky\nDELETE FROM t").kind == "write"


def test_ranking_and_column_choice() -> None:
    assert is_auto_searchable("city", "TEXT") and is_auto_searchable("contact_email", "nvarchar(200)")
    assert not is_auto_searchable("city_id", "INTEGER") and not is_auto_searchable("thumbnail", "BLOB")
    exact, _ = score_row({"city": "Tokyo"}, ["city"], ["tokyo"])
    prefix, _ = score_row({"city": "Tokyo Bay"}, ["city"], ["tokyo"])
    inner, _ = score_row({"city": "Kitokyo"}, ["city"], ["tokyo"])
    named, _ = score_row({"name": "Tokyo"}, ["name"], ["tokyo"])
    assert named > exact > prefix > inner > 0
    assert like_pattern("50%_off") == "%50\\%\\_off%"
    [table] = parse_catalog_rows([(None, "t", "b", "TEXT", 2), (None, "t", "a", "INTEGER", 1)])
    assert table.primary_key == ["a", "b"]


async def test_a_search_over_its_time_budget_says_it_was_cut(demo_db_path: Any) -> None:
    async with open_database(
        db_backend="sqlite", sqlite_path=str(demo_db_path), db_pool_size=2, search_time_budget_seconds=0.2
    ) as database:
        tools = ChatGptTools(database, database.settings)
        original = database.read

        async def slow(sql: str, *args: Any, **kwargs: Any) -> Any:
            if "LIKE ?" in sql:
                await asyncio.sleep(0.15)  # every table read is slow: the budget ends the search early
            return await original(sql, *args, **kwargs)

        database.read = slow  # type: ignore[method-assign]
        out = await tools.search({"query": "zzzz-not-there"}, ToolContext())
        assert out["truncated"] is True
        assert out["results"][-1]["id"].startswith("more:") and "narrow" in out["results"][-1]["title"]
