"""Every real tool over MCP with the official SDK client as the peer, on the demo database:
Streamable HTTP with each handshake version, the 2026-07-28 envelope and legacy SSE, on both prefixes."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import mcp.client.session as sdk_session
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from app.settings import Settings
from app.tools import build_instructions
from tests.fixtures.app import LiveServer

CLAUDE = {"list_tables", "describe_table", "execute_sql", "get_table_sample"}
CHATGPT = {"search", "fetch"}
TRANSPORTS = [
    pytest.param("streamable", "2024-11-05", id="http-2024-11-05"),
    pytest.param("streamable", "2025-03-26", id="http-2025-03-26"),
    pytest.param("streamable", "2025-06-18", id="http-2025-06-18"),
    pytest.param("streamable", "2025-11-25", id="http-2025-11-25"),
    pytest.param("envelope", "2026-07-28", id="envelope-2026-07-28"),
    pytest.param("sse", "2025-11-25", id="sse"),
]


def _client(server: LiveServer, prefix: str, transport: str, version: str, monkeypatch: pytest.MonkeyPatch) -> Client:
    if transport == "envelope":
        return Client(server.url + prefix + "/mcp")  # auto: discovers the envelope (and the instructions)
    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", version)
    if transport == "sse":
        return Client(sse_client(server.url + prefix + "/sse"), mode="legacy")
    return Client(server.url + prefix + "/mcp", mode="legacy")


def _payload(result: Any) -> dict[str, Any]:
    """A successful result: exactly one text content whose JSON is the structured content."""
    assert result.is_error is not True, result.content[0].text
    assert len(result.content) == 1 and result.content[0].type == "text"
    payload = json.loads(result.content[0].text)
    assert payload == result.structured_content
    return payload


def _error(result: Any) -> str:
    assert result.is_error is True
    return result.content[0].text


@pytest.fixture
async def server(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> LiveServer:
    return await start_live_server(make_settings())


async def _exercise_claude(client: Client) -> None:
    tables = _payload(await client.call_tool("list_tables", {}))
    assert {"customers", "orders", "order_lines"} <= {t["name"] for t in tables["tables"]}
    described = _payload(await client.call_tool("describe_table", {"table_name": "Order_Lines"}))
    assert described["primary_key"] == ["order_id", "line_number"]
    rows = _payload(await client.call_tool("execute_sql", {"query": "SELECT COUNT(*) AS n FROM orders"}))
    assert rows["rows"] == [[1500]]
    cut = _payload(await client.call_tool("execute_sql", {"query": "SELECT * FROM customers", "max_rows": 3}))
    assert cut["truncated"] is True and cut["row_count"] == 3 and "note" in cut
    sample = _payload(await client.call_tool("get_table_sample", {"table_name": "products", "limit": 2}))
    assert sample["row_count"] == 2

    assert "customers" in _error(await client.call_tool("describe_table", {"table_name": "custmer"}))
    assert "Refused" in _error(await client.call_tool("execute_sql", {"query": "DROP TABLE orders"}))
    assert "limit" in _error(await client.call_tool("get_table_sample", {"table_name": "orders", "limit": 0}))
    assert "additional" in _error(await client.call_tool("execute_sql", {"query": "SELECT 1", "sql": "x"})).lower()


async def _exercise_chatgpt(client: Client, base: str) -> None:
    found = _payload(await client.call_tool("search", {"query": "SELECT * FROM orders WHERE order_id <= 3"}))
    assert list(found) == ["results"]
    for item in found["results"]:
        assert list(item) == ["id", "title", "url"] and all(isinstance(v, str) for v in item.values())
        assert item["url"] == f"{base}/chatgpt/records/{item['id']}"
    ids = [r["id"] for r in found["results"]]
    assert ids[0].startswith("query:~") and [re.sub(r".*:", "", i) for i in ids[1:]] == ["1", "2", "3"]

    document = _payload(await client.call_tool("fetch", {"id": ids[1]}))
    assert list(document) == ["id", "title", "text", "url", "metadata"]
    assert document["id"] == ids[1] and "customer_id:" in document["text"]
    assert isinstance(document["metadata"], dict)

    keyword = _payload(await client.call_tool("search", {"query": "customer email"}))
    assert keyword["results"][0]["id"] == "table:customers"
    assert "not a valid id" in _error(await client.call_tool("fetch", {"id": "bogus"}))
    assert "search only runs read queries" in _error(await client.call_tool("search", {"query": "DELETE FROM orders"}))


@pytest.mark.parametrize(("transport", "version"), TRANSPORTS)
async def test_claude_tools_over_mcp(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, transport: str, version: str
) -> None:
    async with _client(server, "", transport, version, monkeypatch) as client:
        assert client.protocol_version == version
        assert client.instructions == build_instructions(_settings(server), "claude")
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == CLAUDE
        for tool in listed.values():
            assert tool.annotations is not None and tool.annotations.read_only_hint is True
            assert tool.output_schema is not None and tool.input_schema["additionalProperties"] is False
        await _exercise_claude(client)


@pytest.mark.parametrize(("transport", "version"), TRANSPORTS)
async def test_chatgpt_tools_over_mcp(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, transport: str, version: str
) -> None:
    async with _client(server, "/chatgpt", transport, version, monkeypatch) as client:
        assert client.protocol_version == version
        assert client.instructions == build_instructions(_settings(server), "chatgpt")
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == CHATGPT
        assert listed["search"].input_schema["required"] == ["query"]
        assert listed["fetch"].input_schema["required"] == ["id"]
        await _exercise_chatgpt(client, server.url)


async def test_chatgpt_prefix_can_offer_the_claude_tools(
    start_live_server: Callable[..., Awaitable[LiveServer]], make_settings: Callable[..., Settings]
) -> None:
    server = await start_live_server(make_settings(chatgpt_include_claude_tools=True))
    async with Client(server.url + "/chatgpt/mcp", mode="legacy") as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == CLAUDE | CHATGPT
        await _exercise_claude(client)
        await _exercise_chatgpt(client, server.url)


async def test_write_mode_annotations_over_mcp(
    start_live_server: Callable[..., Awaitable[LiveServer]],
    make_settings: Callable[..., Settings],
    writable_demo_db: Any,
) -> None:
    server = await start_live_server(make_settings(read_only_mode=False, sqlite_path=str(writable_demo_db)))
    async with Client(server.url + "/mcp", mode="legacy") as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        sql = listed["execute_sql"].annotations
        assert sql is not None and sql.read_only_hint is False and sql.destructive_hint is True
        assert listed["list_tables"].annotations.read_only_hint is True
        refused = await client.call_tool("execute_sql", {"query": "DELETE FROM price_history"})
        # Without a token nobody writes, even with READ_ONLY_MODE=false: the unauthenticated testing
        # switches let callers in as readers only.
        assert refused.is_error and "reader role" in refused.content[0].text


async def test_search_result_urls_open_the_record_page(server: LiveServer) -> None:
    async with Client(server.url + "/chatgpt/mcp", mode="legacy") as client:
        found = _payload(await client.call_tool("search", {"query": "sample customers limit 2"}))
    async with aiohttp.ClientSession() as http:
        for item in found["results"]:
            async with http.get(item["url"], headers={"Accept": "application/json"}) as response:
                assert response.status == 200
                page = await response.json()
                assert page["id"] == item["id"] and page["title"] == item["title"]
            async with http.get(item["url"]) as response:
                assert response.status == 200 and response.content_type == "text/html"


def _settings(server: LiveServer) -> Settings:
    from app import keys

    return server.app[keys.SETTINGS]
