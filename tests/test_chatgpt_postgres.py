"""search/fetch ids on PostgreSQL: schemas, mixed case, names with spaces, text and UUID keys."""

from __future__ import annotations

from typing import Any

from app.mcp.tools import Tool, ToolContext
from app.tools import claude_tools
from app.tools.chatgpt import ChatGptTools
from app.tools.ids import parse_id
from tests.fixtures.databases import PostgresServer, open_database

BASE = "https://db.example.com"


async def _search(tools: ChatGptTools, query: str) -> list[dict[str, str]]:
    return (await tools.search({"query": query}, ToolContext(base_url=BASE)))["results"]


async def _fetch(tools: ChatGptTools, record_id: str) -> dict[str, Any]:
    return await tools.fetch({"id": record_id}, ToolContext(base_url=BASE))


async def test_ids_carry_the_schema(pg_db: dict[str, Any]) -> None:
    async with open_database(**pg_db, db_pool_size=2) as database:
        tools = ChatGptTools(database, database.settings)
        ids = {r["id"] for r in await _search(tools, "list tables")}
        assert {
            "table:public.customers",
            "table:sales.orders",
            "table:sales.Regions",
            "table:public.customer_totals",
        } <= ids

        [described] = await _search(tools, "describe SALES.regions")  # any case
        assert described["id"] == "table:sales.Regions"
        table = await _fetch(tools, described["id"])
        assert table["metadata"]["schema"] == "sales" and "Name" in table["metadata"]["columns"]

        rows = await _search(tools, 'SELECT * FROM sales."Regions" ORDER BY id')
        assert [r["id"] for r in rows[1:]] == ["row:sales.Regions:1", "row:sales.Regions:2"]
        tools.cache.clear()
        north = await _fetch(tools, "row:sales.Regions:1")
        assert "Name: North" in north["text"]

        order = await _fetch(tools, "row:sales.orders:10")  # sales.orders, not public.orders
        assert order["metadata"]["related"] == ["row:sales.Regions:1"]

        ranked = [r["id"] for r in await _search(tools, "region")]
        assert ranked[0] == "table:sales.Regions"


async def test_unusual_names_and_keys_round_trip(pg_db: dict[str, Any], postgres_server: PostgresServer) -> None:
    name = pg_db["pg_database"]
    postgres_server.execute(
        'CREATE TABLE public."Order Details" (code TEXT, line INTEGER, qty INTEGER, PRIMARY KEY (code, line))',
        database=name,
    )
    postgres_server.execute("""INSERT INTO public."Order Details" VALUES ('AL:FKI/1 ?#', 3, 7)""", database=name)
    postgres_server.execute("CREATE TABLE public.tokens (id UUID PRIMARY KEY, label TEXT)", database=name)
    postgres_server.execute(
        "INSERT INTO public.tokens VALUES ('0e984725-c51c-4bf4-9960-e1c80e27aba0', 'ci')", database=name
    )
    async with open_database(**pg_db, db_pool_size=2) as database:
        tools = ChatGptTools(database, database.settings)
        results = await _search(tools, 'sample "Order Details" limit 5')
        row_id = results[1]["id"]
        parsed = parse_id(row_id)
        assert (parsed.table.schema, parsed.table.name, parsed.key) == ("public", "Order Details", ("AL:FKI/1 ?#", 3))
        assert results[1]["url"] == f"{BASE}/chatgpt/records/{row_id}"  # no escaping needed: the id is URL-safe
        tools.cache.clear()
        row = await _fetch(tools, row_id)
        assert "qty: 7" in row["text"] and row["id"] == row_id

        token = (await _search(tools, "SELECT id, label FROM tokens"))[1]["id"]
        tools.cache.clear()
        assert "label: ci" in (await _fetch(tools, token))["text"]


async def test_claude_tools_on_schemas(pg_db: dict[str, Any]) -> None:
    async with open_database(**pg_db, db_pool_size=2) as database:
        tools: dict[str, Tool] = {t.name: t for t in claude_tools(database, database.settings)}
        sales = await tools["list_tables"].handler({"schema": "SALES"}, ToolContext())
        assert {t["qualified_name"] for t in sales["tables"]} == {"sales.orders", "sales.Regions"}
        regions = await tools["describe_table"].handler({"table_name": "sales.regions"}, ToolContext())
        assert regions["foreign_keys"] == [] and regions["primary_key"] == ["id"]
        orders = await tools["describe_table"].handler({"table_name": "sales.orders"}, ToolContext())
        assert orders["foreign_keys"][0]["references_table"] == "sales.Regions"
        out = await tools["execute_sql"].handler({"query": "SELECT pg_typeof(1)::text AS t"}, ToolContext())
        assert out["rows"] == [["integer"]]
