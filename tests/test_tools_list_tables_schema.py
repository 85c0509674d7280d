"""list_tables {"schema": "main"} on SQLite, through the official SDK client: SQLite has no schemas, and its
tables answer to `main`, the schema segment of their resource URIs (mssql://tables/main/customers)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from mcp import Client

from app.settings import Settings
from tests.fixtures.app import LiveServer


def _payload(result: Any) -> dict[str, Any]:
    assert result.is_error is not True, result.content[0].text
    return json.loads(result.content[0].text)


async def test_sqlite_tables_are_listed_under_schema_main(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    server = await start_live_server(make_settings())
    async with Client(server.url + "/mcp", mode="legacy") as client:
        everything = _payload(await client.call_tool("list_tables", {}))
        assert everything["count"] >= 3
        for schema in ("main", "MAIN"):  # case-insensitive, like the other filters
            in_main = _payload(await client.call_tool("list_tables", {"schema": schema}))
            assert in_main["tables"] == everything["tables"], schema
            assert "note" not in in_main
        narrowed = _payload(await client.call_tool("list_tables", {"schema": "main", "name_contains": "order"}))
        assert {t["name"] for t in narrowed["tables"]} >= {"orders", "order_lines"}
        assert all("order" in t["name"] for t in narrowed["tables"])

        # A schema SQLite does not have: nothing, and the answer says which schema there is.
        wrong = _payload(await client.call_tool("list_tables", {"schema": "dbo"}))
        assert wrong["tables"] == [] and wrong["count"] == 0
        assert "main" in wrong["note"] and "'dbo'" in wrong["note"]

        # The tool tells the model what the schema names are.
        [tool] = [t for t in (await client.list_tools()).tools if t.name == "list_tables"]
        assert "SQLite has no schemas" in tool.description and "'main'" in tool.description
        assert "'main'" in tool.input_schema["properties"]["schema"]["description"]

        # The same name the resources use for the table.
        resources = {r.uri for r in (await client.list_resources()).resources}
        assert "mssql://tables/main/customers" in {str(uri) for uri in resources}
