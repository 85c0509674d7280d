"""Catalog resources and completions through the official MCP SDK client, on both surfaces and every
protocol version that has them (resources since 2024-11-05; the 2026-07-28 envelope included)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import mcp.client.session as sdk_session
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import ResourceListChangedNotification, ResourceTemplateReference, ResourceUpdatedNotification

from app import keys
from app.tools import watch_catalog
from tests.fixtures.calls import MODERN, MODERN_META

PREFIXES = ["", "/chatgpt"]
MODES = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]
TABLE_TEMPLATE = "mssql://tables/{schema}/{table}"


def _client(url: str, mode: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Client:
    if mode == "2026-07-28":
        return Client(url, mode="2026-07-28", **kwargs)
    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", mode)  # what initialize offers
    return Client(url, mode="legacy", **kwargs)


async def _all_resources(client: Client) -> list[Any]:
    resources, cursor = [], None
    while True:
        page = await client.list_resources(cursor=cursor, cache_mode="bypass")
        resources.extend(page.resources)
        cursor = page.next_cursor
        if not cursor:
            return resources


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("mode", MODES)
async def test_list_read_template_and_complete(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, mode: str, prefix: str
) -> None:
    async with _client(live_server.url + prefix + "/mcp", mode, monkeypatch) as client:
        assert client.protocol_version == mode
        resources = {resource.uri: resource for resource in await _all_resources(client)}
        assert {
            "mssql://overview",
            "mssql://overview.json",
            "mssql://tables/main/customers",
            "mssql://tables/main/order_totals",
        } <= set(resources)
        customers = resources["mssql://tables/main/customers"]
        assert customers.mime_type == "text/markdown" and "about 400 rows" in (customers.description or "")

        markdown = (await client.read_resource("mssql://tables/main/customers")).contents[0]
        assert markdown.mime_type == "text/markdown"
        assert "# Table customers" in markdown.text and "| customer_id | INTEGER | no |  | yes |" in markdown.text
        as_json = (await client.read_resource("mssql://tables/main/orders.json")).contents[0]
        described = json.loads(as_json.text)
        assert described["name"] == "orders" and described["primary_key"] == ["order_id"]
        assert described["foreign_keys"][0]["references_table"] == "customers"
        assert any(index["name"] == "ix_orders_customer" for index in described["indexes"])
        overview = json.loads((await client.read_resource("mssql://overview.json")).contents[0].text)
        assert overview["dialect"] == "sqlite" and overview["view_count"] == 2

        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [TABLE_TEMPLATE, TABLE_TEMPLATE + ".json"]
        # The template's variables complete from the catalog, prefix match, any case.
        ref = ResourceTemplateReference(type="ref/resource", uri=TABLE_TEMPLATE)
        tables = await client.complete(ref, {"name": "table", "value": "CUST"}, {"schema": "main"})
        assert tables.completion.values == ["customer_lifetime_value", "customers"]
        assert tables.completion.has_more is False
        schemas = await client.complete(ref, {"name": "schema", "value": ""})
        assert schemas.completion.values == ["main"]


async def test_unknown_resources_are_invalid_params_naming_the_uri(live_server: Any) -> None:
    async with Client(live_server.url + "/mcp") as client:
        for uri in ("mssql://tables/main/nope", "mssql://tables/only-one-part", "https://example.com/x"):
            with pytest.raises(MCPError) as raised:
                await client.read_resource(uri)
            assert raised.value.code == -32602 and raised.value.error.data == {"uri": uri}
        with pytest.raises(MCPError) as raised:
            await client.complete(
                ResourceTemplateReference(type="ref/resource", uri="mssql://nope/{x}"), {"name": "x", "value": ""}
            )
        assert raised.value.code == -32602


async def test_resources_list_is_paged(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    live_server.app[keys.MCP_SERVERS][""].page_size = 3
    async with _client(live_server.url + "/mcp", "2025-11-25", monkeypatch) as client:
        first = await client.list_resources()
        assert len(first.resources) == 3 and first.next_cursor
        every = await _all_resources(client)
        assert len(every) == 11 and len({r.uri for r in every}) == 11  # 2 overviews, 7 tables, 2 views
        with pytest.raises(MCPError) as raised:
            await client.list_resources(cursor="not-a-cursor")
        assert raised.value.code == -32602


async def test_capabilities_per_version(live_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in MODES:
        # mode="auto" probes server/discover, so the 2026-07-28 capabilities are the server's own.
        client = (
            Client(live_server.url + "/mcp")
            if mode == "2026-07-28"
            else _client(live_server.url + "/mcp", mode, monkeypatch)
        )
        async with client:
            assert client.protocol_version == mode
            caps = client.server_capabilities
            assert caps is not None and caps.resources is not None and caps.prompts is not None
            # completions is a capability from 2025-03-26 on; stateless 2026-07-28 has no list_changed stream
            assert (caps.completions is not None) == (mode != "2024-11-05"), mode
            assert caps.resources.list_changed is (mode != "2026-07-28")
            assert bool(caps.resources.subscribe) is (mode != "2026-07-28")  # 2026-07-28 removed subscribe


async def test_schemas_and_mixed_case_on_postgres(
    pg_db: dict[str, Any], make_settings: Any, start_live_server: Any
) -> None:
    server = await start_live_server(make_settings(**pg_db))
    async with Client(server.url + "/mcp") as client:
        uris = {resource.uri for resource in await _all_resources(client)}
        assert {"mssql://tables/public/orders", "mssql://tables/sales/orders", "mssql://tables/sales/Regions"} <= uris
        regions = json.loads((await client.read_resource("mssql://tables/sales/Regions.json")).contents[0].text)
        assert regions["schema"] == "sales" and [c["name"] for c in regions["columns"]] == ["id", "Name"]
        sales_orders = (await client.read_resource("mssql://tables/sales/orders")).contents[0].text
        assert "references sales.Regions (id)" in sales_orders
        ref = ResourceTemplateReference(type="ref/resource", uri=TABLE_TEMPLATE)
        assert (await client.complete(ref, {"name": "schema", "value": ""})).completion.values == ["public", "sales"]
        in_sales = await client.complete(ref, {"name": "table", "value": "r"}, {"schema": "sales"})
        assert in_sales.completion.values == ["Regions"]


async def test_new_tables_send_list_changed(
    writable_demo_db: Path, make_settings: Any, start_live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_live_server(make_settings(sqlite_path=str(writable_demo_db)))
    servers = list(server.app[keys.MCP_SERVERS].values())
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceListChangedNotification):
            changed.set()

    # The app's own watcher polls every 60 s; a second one at test speed over the same servers.
    watcher = asyncio.get_running_loop().create_task(watch_catalog(servers[0].resources, servers, 0.05))
    try:
        async with _client(server.url + "/mcp", "2025-11-25", monkeypatch, message_handler=on_message) as client:
            before = {r.uri for r in await _all_resources(client)}
            await asyncio.sleep(0.3)  # the watcher has its first snapshot; the client's GET stream is open
            with sqlite3.connect(writable_demo_db) as connection:
                connection.execute("CREATE TABLE audit_notes (id INTEGER PRIMARY KEY, note TEXT)")
            await asyncio.sleep(2.1)  # an unknown name refreshes the cached catalog at most every 2 s
            await client.call_tool("describe_table", {"table_name": "audit_notes"})
            await asyncio.wait_for(changed.wait(), 5)
            after = {r.uri for r in await _all_resources(client)}
        assert after - before == {"mssql://tables/main/audit_notes"}
    finally:
        watcher.cancel()


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_legacy_sse_transport(live_server: Any, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    from mcp.client.sse import sse_client

    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", "2024-11-05")
    async with Client(sse_client(live_server.url + prefix + "/sse"), mode="legacy") as client:
        resources = await _all_resources(client)
        assert "mssql://tables/main/products" in {r.uri for r in resources}
        text = (await client.read_resource("mssql://tables/main/products")).contents[0].text
        assert "# Table products" in text
        prompt = await client.get_prompt("explain_table", {"table": "products"})
        assert prompt.messages[0].content.resource.text == text


async def test_resources_need_a_token_when_auth_is_on(make_settings: Any, start_live_server: Any) -> None:
    import aiohttp

    server = await start_live_server(make_settings(), signed_in_as=None)
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "resources/read",
        "Mcp-Name": "mssql://overview",
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "resources/read",
        "params": {"uri": "mssql://overview", "_meta": MODERN_META},
    }
    async with aiohttp.ClientSession() as http, http.post(server.url + "/mcp", json=body, headers=headers) as answer:
        assert answer.status == 401 and "resource_metadata" in answer.headers["WWW-Authenticate"]


async def test_database_down_is_a_clear_error(make_settings: Any, start_live_server: Any, tmp_path: Path) -> None:
    server = await start_live_server(make_settings(sqlite_path=str(tmp_path / "missing" / "nowhere.db")))
    async with Client(server.url + "/mcp") as client:
        for call in (
            client.list_resources(),
            client.read_resource("mssql://overview"),
            client.get_prompt("explain_table", {"table": "customers"}),
        ):
            with pytest.raises(MCPError) as raised:
                await call
            assert raised.value.code == -32603
            assert "database" in raised.value.error.message.lower()
            assert raised.value.error.message != "Internal error"
        templates = await client.list_resource_templates()  # needs no database
        assert len(templates.resource_templates) == 2


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # subscribe: 2025-11-25 only
async def test_subscribed_tables_send_updated(
    writable_demo_db: Path, make_settings: Any, start_live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_live_server(make_settings(sqlite_path=str(writable_demo_db)))
    servers = list(server.app[keys.MCP_SERVERS].values())
    updated: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    watcher = asyncio.get_running_loop().create_task(watch_catalog(servers[0].resources, servers, 0.05))
    try:
        async with _client(server.url + "/mcp", "2025-11-25", monkeypatch, message_handler=on_message) as client:
            with pytest.raises(MCPError) as raised:
                await client.subscribe_resource("mssql://tables/main/nope")
            assert raised.value.code == -32602
            await client.subscribe_resource("mssql://tables/main/suppliers")
            await client.subscribe_resource("mssql://tables/main/categories")
            await asyncio.sleep(0.3)  # the watcher has read both once
            with sqlite3.connect(writable_demo_db) as connection:
                connection.execute("ALTER TABLE suppliers ADD COLUMN rating INTEGER")
            for _ in range(100):
                if updated:
                    break
                await asyncio.sleep(0.05)
            assert updated == ["mssql://tables/main/suppliers"]  # only the table that changed
            await client.unsubscribe_resource("mssql://tables/main/suppliers")
            assert servers[0].subscribed_uris() == {"mssql://tables/main/categories"}
        # The session ended: nothing is watched any more.
        assert servers[0].subscribed_uris() == set()
    finally:
        watcher.cancel()
