"""End to end: the real app on the demo database, the official SDK client, every transport and prefix."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp.client.session as sdk_session
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from app import keys

# (transport, handshake version or mode)
VARIANTS = [
    ("streamable", "2024-11-05"),
    ("streamable", "2025-03-26"),
    ("streamable", "2025-06-18"),
    ("streamable", "2025-11-25"),
    ("streamable", "2026-07-28"),
    ("sse", "2024-11-05"),
    ("sse", "2025-11-25"),
]
CLAUDE_TOOLS = ["list_tables", "describe_table", "execute_sql", "get_table_sample"]
SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000000) SELECT count(*) AS n FROM c"
)


@asynccontextmanager
async def connect(url: str, transport: str, version: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    if version == "2026-07-28":
        async with Client(url + "/mcp") as client:  # auto: server/discover, then the stateless envelope
            assert client.protocol_version == "2026-07-28"
            yield client
        return
    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", version)
    target = sse_client(url + "/sse") if transport == "sse" else url + "/mcp"
    async with Client(target, mode="legacy") as client:
        assert client.protocol_version == version
        yield client


def _json(result: Any) -> Any:
    assert result.is_error is not True, result.content[0].text
    assert len(result.content) == 1 and result.content[0].type == "text"
    data = json.loads(result.content[0].text)
    assert result.structured_content == data
    return data


@pytest.mark.parametrize(("transport", "version"), VARIANTS)
async def test_claude_tools(live_server: Any, monkeypatch: pytest.MonkeyPatch, transport: str, version: str) -> None:
    async with connect(live_server.url, transport, version, monkeypatch) as client:
        assert "read-only access to a SQLite database" in (client.instructions or "")
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == CLAUDE_TOOLS
        by_name = {tool.name: tool for tool in listed.tools}
        assert by_name["list_tables"].annotations.read_only_hint is True
        assert by_name["execute_sql"].output_schema is not None
        tables = _json(await client.call_tool("list_tables", {}))
        names = {table["name"] for table in tables["tables"]}
        assert {"customers", "orders", "products"} <= names
        described = _json(await client.call_tool("describe_table", {"table_name": "CUSTOMERS"}))
        assert described["name"] == "customers" and described["primary_key"]
        rows = _json(await client.call_tool("execute_sql", {"query": "SELECT count(*) AS n FROM orders"}))
        assert rows["rows"][0][0] > 0
        sample = _json(await client.call_tool("get_table_sample", {"table_name": "products", "limit": 3}))
        assert len(sample["rows"]) == 3
        refused = await client.call_tool("execute_sql", {"query": "DELETE FROM orders"})
        assert refused.is_error is True
        missing = await client.call_tool("describe_table", {})
        assert missing.is_error is True and "table_name" in missing.content[0].text


@pytest.mark.parametrize(("transport", "version"), VARIANTS)
async def test_chatgpt_tools(live_server: Any, monkeypatch: pytest.MonkeyPatch, transport: str, version: str) -> None:
    async with connect(live_server.url + "/chatgpt", transport, version, monkeypatch) as client:
        assert "SQLite database" in (client.instructions or "")
        listed = await client.list_tools()
        assert [tool.name for tool in listed.tools] == ["search", "fetch"]
        found = await client.call_tool("search", {"query": "list tables"})
        data = _json(found)
        assert set(data) == {"results"} and data["results"]
        assert all(set(item) == {"id", "title", "url"} for item in data["results"])
        assert all(item["url"].startswith(live_server.url + "/") for item in data["results"])
        record = _json(await client.call_tool("fetch", {"id": data["results"][0]["id"]}))
        assert set(record) == {"id", "title", "text", "url", "metadata"}
        assert record["id"] == data["results"][0]["id"]
        unknown = await client.call_tool("fetch", {"id": "table:no_such_table"})
        assert unknown.is_error is True


async def test_chatgpt_prefix_can_offer_claude_tools(start_live_server: Any, make_settings: Any) -> None:
    server = await start_live_server(make_settings(chatgpt_include_claude_tools=True))
    async with Client(server.url + "/chatgpt/mcp") as client:
        names = [tool.name for tool in (await client.list_tools()).tools]
    assert names == ["search", "fetch", *CLAUDE_TOOLS]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_cancel_stops_a_running_query(live_server: Any, mode: str) -> None:
    database = live_server.app[keys.DATABASE]
    async with Client(live_server.url + "/mcp", mode=mode) as client:
        call = asyncio.create_task(client.call_tool("execute_sql", {"query": SLOW_SQL}))
        for _ in range(200):  # wait until the statement occupies a connection
            if database.status()["pool"]["in_use"]:
                break
            await asyncio.sleep(0.01)
        assert database.status()["pool"]["in_use"] == 1
        started = time.monotonic()
        call.cancel()  # notifications/cancelled (legacy) or closing the POST (2026-07-28)
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(300):
            if not database.status()["pool"]["in_use"]:
                break
            await asyncio.sleep(0.01)
        assert database.status()["pool"]["in_use"] == 0, "the query kept running after the cancel"
        assert time.monotonic() - started < 3
        # The same pool answers right away afterwards.
        rows = _json(await client.call_tool("execute_sql", {"query": "SELECT 1 AS one"}))
        assert rows["rows"] == [[1]]
    metrics = live_server.app[keys.METRICS]
    assert metrics.tool_calls.labels("execute_sql", "cancelled")._value.get() == 1


async def test_health_answers_while_every_connection_is_busy(live_server: Any) -> None:
    import httpx

    database = live_server.app[keys.DATABASE]
    async with Client(live_server.url + "/mcp", mode="2026-07-28") as client:
        calls = [asyncio.create_task(client.call_tool("execute_sql", {"query": SLOW_SQL})) for _ in range(2)]
        for _ in range(300):
            if database.status()["pool"]["in_use"] == 2:
                break
            await asyncio.sleep(0.01)
        assert database.status()["pool"]["in_use"] == 2
        async with httpx.AsyncClient() as http:
            started = time.monotonic()
            response = await http.get(live_server.url + "/health")
            elapsed = time.monotonic() - started
        body = response.json()
        assert response.status_code == 200 and elapsed < 0.5
        assert body["database"]["pool"]["in_use"] == 2 and body["status"] == "healthy"
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
