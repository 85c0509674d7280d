"""The MCP endpoints with authentication on: refusals carry WWW-Authenticate, tokens reach the tools."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures.calls import MODERN, MODERN_META


@pytest.fixture
async def secured(start_live_server: Any, make_settings: Any, writable_demo_db: Any) -> Any:
    settings = make_settings(read_only_mode=False, sqlite_path=str(writable_demo_db))
    server = await start_live_server(settings, signed_in_as=None)
    server.settings = settings
    return server


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        (
            "POST",
            "/chatgpt/mcp",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "search", "arguments": {"query": "x"}},
            },
        ),
        ("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}),
        ("GET", "/sse", None),
        ("POST", "/mcp", None),  # malformed body: still 401 first, nothing learned without a token
    ],
)
async def test_no_token_is_401_with_resource_metadata(secured: Any, method: str, path: str, body: Any) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if body is not None and body.get("method") == "server/discover":
        headers.update({"MCP-Protocol-Version": MODERN, "Mcp-Method": "server/discover"})
    async with httpx.AsyncClient() as http:
        response = await http.request(
            method, secured.url + path, headers=headers, content=json.dumps(body) if body is not None else b"{nope"
        )
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and "resource_metadata=" in challenge


@pytest.mark.parametrize("transport", ["streamable-2026", "streamable-legacy", "sse"])
async def test_token_reaches_the_tools(secured: Any, mint_access_token: Any, transport: str) -> None:
    results = {}
    for role in ("reader", "writer"):
        resource = secured.url + ("/sse" if transport == "sse" else "/mcp")
        token = mint_access_token(
            secured.settings,
            secured.url,
            username=f"user-{role}",
            role=role,
            scope="mcp:read mcp:write" if role == "writer" else "mcp:read",
            resource=resource,
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers) as http:
            if transport == "sse":
                target: Any = sse_client(resource, headers=headers)
            else:
                target = streamable_http_client(resource, http_client=http)
            async with Client(target, mode="2026-07-28" if transport == "streamable-2026" else "legacy") as client:
                read = await client.call_tool("execute_sql", {"query": "SELECT count(*) AS n FROM customers"})
                assert read.is_error is not True
                results[role] = await client.call_tool(
                    "execute_sql", {"query": "UPDATE customers SET email = email WHERE 1 = 0"}
                )
    # The principal from the bearer check is what the tool sees: readers cannot write, writers can.
    assert results["reader"].is_error is True
    assert results["writer"].is_error is not True, results["writer"].content[0].text


async def test_token_for_another_endpoint_is_refused(secured: Any, mint_access_token: Any) -> None:
    token = mint_access_token(secured.settings, secured.url, resource=secured.url + "/chatgpt/mcp")
    async with httpx.AsyncClient() as http:
        response = await http.post(
            secured.url + "/mcp",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            content=json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
            ),
        )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/mcp"), ("GET", "/sse"), ("POST", "/messages?session_id=x"), ("DELETE", "/mcp")]
)
async def test_an_app_without_an_authenticator_fails_closed(
    aiohttp_client: Any, tmp_path: Any, method: str, path: str
) -> None:
    """No fallback of the transports' own: without the app's authenticator nothing runs, even with the
    unauthenticated testing switches on (they are the authenticator's rule, app.core.unauthenticated_allowed)."""
    from aiohttp import web

    from app import keys
    from app.mcp.server import McpServer
    from app.mcp.transports import add_mcp_routes
    from app.obs.metrics import Metrics
    from app.settings import load_settings

    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="sqlite",
        sqlite_path=str(tmp_path / "unused.db"),
        metrics_port=0,
        allow_unauth_methods=True,
        allow_unauth_tools_call=True,
    )
    app = web.Application()
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    add_mcp_routes(app, "", McpServer(name="bare", version="1", instructions="", tools=[]))
    client = await aiohttp_client(app)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await client.request(
        method,
        path,
        json=initialize if method == "POST" else None,
        headers={"Accept": "application/json, text/event-stream", "Mcp-Session-Id": "x"},
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
