"""create_app(settings, toolsets=..., resources=..., prompts=...): a test serves its own tools on every
surface through the same assembly as the service (auth, health, record pages, one ChatGPT tool set)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from app import keys
from app.core import SURFACES
from app.mcp.tools import Tool, ToolContext
from app.settings import Settings
from app.tools import ChatGptTools
from app.web import create_app
from tests.fixtures.calls import MODERN, MODERN_META


def _tool(name: str) -> Tool:
    async def handler(arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"tool": name}

    return Tool(
        name=name, title=name, description=f"The {name} test tool.", input_schema={"type": "object"}, handler=handler
    )


async def _rpc(client: TestClient, prefix: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if params and "name" in params:
        headers["Mcp-Name"] = params["name"]
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**(params or {}), "_meta": MODERN_META}}
    response = await client.post(f"{prefix}/mcp", data=json.dumps(body), headers=headers)
    payload = await response.json()
    assert response.status == 200, payload
    return payload


async def test_each_surface_serves_the_tool_set_given(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(
        make_settings(unauthenticated=True),
        toolsets={"claude": [_tool("alpha")], "chatgpt": [_tool("beta")]},
        resources=None,
        prompts=(),
    )
    client = await aiohttp_client(app)
    expected = {"claude": "alpha", "chatgpt": "beta"}
    for surface in SURFACES:
        listed = (await _rpc(client, surface.prefix, "tools/list"))["result"]["tools"]
        assert [tool["name"] for tool in listed] == [expected[surface.toolset]]
        called = await _rpc(client, surface.prefix, "tools/call", {"name": expected[surface.toolset], "arguments": {}})
        assert called["result"]["structuredContent"] == {"tool": expected[surface.toolset]}
        discovered = (await _rpc(client, surface.prefix, "server/discover"))["result"]
        assert "resources" not in discovered["capabilities"] and "prompts" not in discovered["capabilities"]
    # The record pages keep their one ChatGPT tool set even when MCP serves test tools.
    assert isinstance(app[keys.CHATGPT_TOOLS], ChatGptTools)


async def test_a_tool_set_left_out_serves_no_tools_and_catalog_stays_by_default(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(unauthenticated=True), toolsets={"claude": [_tool("alpha")]})
    )
    chatgpt = next(surface for surface in SURFACES if surface.toolset == "chatgpt")
    assert (await _rpc(client, chatgpt.prefix, "tools/list"))["result"]["tools"] == []
    resources = (await _rpc(client, "", "resources/list"))["result"]["resources"]
    assert any(resource["uri"].startswith("mssql://") for resource in resources)
    prompts = (await _rpc(client, "", "prompts/list"))["result"]["prompts"]
    assert {"explore_database", "write_query"} <= {prompt["name"] for prompt in prompts}


async def test_the_service_builds_one_chatgpt_tool_set_for_mcp_and_record_pages(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    chatgpt = next(surface for surface in SURFACES if surface.toolset == "chatgpt")
    fetch = next(tool for tool in app[keys.MCP_SERVERS][chatgpt.prefix].tools if tool.name == "fetch")
    assert getattr(fetch.handler, "__self__", None) is app[keys.CHATGPT_TOOLS]
