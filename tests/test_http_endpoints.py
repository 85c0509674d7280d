"""Origin policy, legacy SSE over raw HTTP, HEAD/OPTIONS, /health and the error middleware."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app import keys
from app.health import add_health_routes
from app.web import create_app
from tests.fixtures.calls import MODERN, MODERN_META

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
async def client(aiohttp_client: Any, mcp_test_app: Any) -> TestClient:
    test_app = mcp_test_app(
        allowed_origins=("https://intranet.example.org",), public_base_url="https://mcp.example.com"
    )
    c = await aiohttp_client(test_app.app)
    c.test_app = test_app
    return c


# -- Origin ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://evil.example.com",
        "null",
        "https://chatgpt.com.evil.net",
        "http://localhost.evil.net",
    ],
)
@pytest.mark.parametrize("path", ["/mcp", "/sse", "/messages?session_id=x", "/chatgpt/mcp"])
async def test_foreign_origin_is_403(client: TestClient, origin: str, path: str) -> None:
    response = await client.post(path, data=json.dumps(INIT), headers={**HEADERS, "Origin": origin})
    assert response.status == 403
    body = await response.json()
    assert body["error"]["code"] == -32600 and "Origin" in body["error"]["message"]
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_dns_rebinding_host_and_origin_are_refused(client: TestClient) -> None:
    # A rebinding page controls both Host and Origin; the Host header must not make its origin trusted.
    response = await client.post(
        "/mcp",
        data=json.dumps(INIT),
        headers={**HEADERS, "Host": "evil.example.com", "Origin": "http://evil.example.com"},
    )
    assert response.status == 403
    for path in ("/mcp", "/sse"):
        response = await client.get(path, headers={"Accept": "text/event-stream", "Origin": "http://evil.example.com"})
        assert response.status == 403
    response = await client.delete("/mcp", headers={"Mcp-Session-Id": "x", "Origin": "http://evil.example.com"})
    assert response.status == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:6274",
        "http://127.0.0.1",
        "https://[::1]:8443",
        "https://chatgpt.com",
        "https://claude.ai",
        "https://claude.com",
        "https://mcp.example.com",
        "https://intranet.example.org",
        "HTTPS://Claude.AI/",
    ],
)
async def test_allowed_origins_get_cors(client: TestClient, origin: str) -> None:
    response = await client.post("/mcp", data=json.dumps(INIT), headers={**HEADERS, "Origin": origin})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Mcp-Session-Id" in response.headers["Access-Control-Expose-Headers"]


async def test_no_origin_is_fine(client: TestClient) -> None:
    response = await client.post("/mcp", data=json.dumps(INIT), headers=HEADERS)
    assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers


async def test_forwarded_public_origin_only_from_trusted_proxy(aiohttp_client: Any, mcp_test_app: Any) -> None:
    app = mcp_test_app(trusted_proxies=("127.0.0.1", "::1")).app
    c = await aiohttp_client(app)
    forwarded = {"X-Forwarded-Host": "db.example.net", "X-Forwarded-Proto": "https"}
    response = await c.post(
        "/mcp", data=json.dumps(INIT), headers={**HEADERS, **forwarded, "Origin": "https://db.example.net"}
    )
    assert response.status == 200
    untrusted = await aiohttp_client(mcp_test_app(trusted_proxies=("10.9.9.9",)).app)
    response = await untrusted.post(
        "/mcp", data=json.dumps(INIT), headers={**HEADERS, **forwarded, "Origin": "https://db.example.net"}
    )
    assert response.status == 403


# -- HEAD / OPTIONS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/chatgpt"])
async def test_head_and_options_on_sse(client: TestClient, prefix: str) -> None:
    head = await client.head(prefix + "/sse")
    assert head.status == 200
    assert head.headers["Content-Type"].startswith("text/event-stream")
    assert "GET" in head.headers["Allow"]
    options = await client.options(
        prefix + "/sse", headers={"Origin": "https://claude.ai", "Access-Control-Request-Method": "POST"}
    )
    assert options.status == 200
    assert options.headers["Allow"] == "GET, POST, HEAD, OPTIONS"
    assert options.headers["Access-Control-Allow-Origin"] == "https://claude.ai"
    assert "Mcp-Session-Id" in options.headers["Access-Control-Allow-Headers"]
    assert "Authorization" in options.headers["Access-Control-Allow-Headers"]
    options = await client.options(prefix + "/mcp")
    assert options.status == 200 and "DELETE" in options.headers["Allow"]


async def test_options_from_foreign_origin_gets_no_cors(client: TestClient) -> None:
    response = await client.options("/mcp", headers={"Origin": "https://evil.example.com"})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


# -- legacy SSE over raw HTTP ----------------------------------------------------------------------------


async def _read_event(stream: Any) -> tuple[str, str]:
    event, data = "message", ""
    while True:
        line = (await asyncio.wait_for(stream.content.readline(), 5)).decode()
        if line.startswith(":"):
            continue
        if line == "\n":
            if data:
                return event, data
            continue
        field, _, value = line.rstrip("\n").partition(": ")
        if field == "event":
            event = value
        elif field == "data":
            data = value


@pytest.mark.parametrize("prefix", ["", "/chatgpt"])
async def test_sse_endpoint_event_and_messages(client: TestClient, prefix: str) -> None:
    stream = await client.get(prefix + "/sse", headers={"Accept": "text/event-stream"})
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    assert stream.headers["Cache-Control"].startswith("no-cache")
    event, endpoint = await _read_event(stream)
    assert event == "endpoint"
    assert endpoint.startswith(prefix + "/messages?session_id=")
    response = await client.post(endpoint, data=json.dumps(INIT), headers=HEADERS)
    assert response.status == 202
    event, data = await _read_event(stream)
    assert event == "message" and json.loads(data)["result"]["protocolVersion"] == "2025-11-25"
    # POST {prefix}/sse?session_id= is the same legacy endpoint.
    response = await client.post(
        endpoint.replace("/messages", "/sse"),
        headers=HEADERS,
        data=json.dumps(
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "s"}}}
        ),
    )
    assert response.status == 202
    event, data = await _read_event(stream)
    assert json.loads(data)["result"]["structuredContent"]["echo"] == "s"
    # Errors in the POST itself are answered on the POST.
    response = await client.post(endpoint, data=b"{nope", headers=HEADERS)
    assert response.status == 400 and (await response.json())["error"]["code"] == -32700
    stream.close()


async def test_sse_message_session_rules(client: TestClient) -> None:
    ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert (await client.post("/messages", data=ping, headers=HEADERS)).status == 400
    assert (await client.post("/messages?session_id=unknown", data=ping, headers=HEADERS)).status == 404
    assert (
        await client.post("/messages?session_id=x", data=ping, headers={"Content-Type": "text/plain"})
    ).status == 415


async def test_sse_endpoint_includes_environment_path(aiohttp_client: Any, mcp_test_app: Any) -> None:
    c = await aiohttp_client(mcp_test_app(environment_path="/team-a").app)
    stream = await c.get("/sse", headers={"Accept": "text/event-stream"})
    _event, endpoint = await _read_event(stream)
    assert endpoint.startswith("/team-a/messages?session_id=")
    stream.close()


async def test_sse_keepalive_comments(client: TestClient) -> None:
    client.test_app.endpoints[""].sse.keepalive_seconds = 0.05
    stream = await client.get("/sse", headers={"Accept": "text/event-stream"})
    await _read_event(stream)
    line = await asyncio.wait_for(stream.content.readline(), 5)
    assert line.startswith(b":")
    stream.close()


async def test_sse_disconnect_ends_session_and_cancels_calls(client: TestClient) -> None:
    sessions = client.test_app.endpoints[""].sessions  # the transport's session manager
    probe = client.test_app.probe
    stream = await client.get("/sse", headers={"Accept": "text/event-stream"})
    _, endpoint = await _read_event(stream)
    await client.post(endpoint, data=json.dumps(INIT), headers=HEADERS)
    await client.post(
        endpoint,
        headers=HEADERS,
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {"steps": 200, "step_seconds": 0.05}},
            }
        ),
    )
    await asyncio.wait_for(probe.started.wait(), 5)
    assert len(sessions) == 1
    stream.close()
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    for _ in range(100):
        if not len(sessions):
            break
        await asyncio.sleep(0.02)
    assert len(sessions) == 0


async def test_streamable_disconnect_cancels_call(client: TestClient) -> None:
    probe = client.test_app.probe
    call = asyncio.create_task(
        client.post(
            "/mcp",
            headers={
                **HEADERS,
                "Accept": "application/json",
                "MCP-Protocol-Version": MODERN,
                "Mcp-Method": "tools/call",
                "Mcp-Name": "slow",
            },
            data=json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "slow", "arguments": {"steps": 200, "step_seconds": 0.05}, "_meta": MODERN_META},
                }
            ),
        )
    )
    await asyncio.wait_for(probe.started.wait(), 5)
    call.cancel()  # the client goes away mid-call: the tool must stop, not run to the end
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    assert not probe.finished.is_set()


# -- /health ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tools"),
    [("/health", ["echo", "slow", "fail", "chatty"]), ("/chatgpt/health", ["echo", "slow", "fail", "chatty"])],
)
async def test_health_without_database(aiohttp_client: Any, mcp_test_app: Any, path: str, tools: list[str]) -> None:
    # The service always has a Database; health must still answer on an app that has none registered.
    bare = web.Application()
    bare[keys.MCP_SERVERS] = mcp_test_app().app[keys.MCP_SERVERS]
    add_health_routes(bare)
    client = await aiohttp_client(bare)
    response = await client.get(path)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "degraded" and body["database"] == {"status": "unknown"}
    assert body["tools"] == tools
    assert body["protocolVersions"] == ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]
    assert (await client.head(path)).status == 200


async def test_health_on_the_real_app(aiohttp_client: Any, make_settings: Any) -> None:
    app_client = await aiohttp_client(create_app(make_settings()))  # sign-in on, and this caller has no token
    body = await (await app_client.get("/health")).json()
    assert body["status"] == "healthy"
    # The seed system's fields, which its monitoring script reads (`status -ne "healthy"`).
    assert body["transport"] == "streamable-http, sse" and body["oauth"] in {"enabled", "disabled"}
    assert body["database_name"] == "demo.db" and body["mcp_version"] == "2025-11-25"
    assert body["read_only"] is True and body["compatible_with"] == "Claude"
    assert body["database"]["dialect"] == "sqlite" and body["database"]["pool"]["size"] == 2
    # Without credentials: the public fields only (last_error needs the metrics token or a sign-in).
    assert set(body["database"]) == {"status", "dialect", "name", "pool"} and body["database"]["name"] == "demo.db"
    assert body["tools"] == ["list_tables", "describe_table", "execute_sql", "get_table_sample"]
    chatgpt = await (await app_client.get("/chatgpt/health")).json()
    assert chatgpt["tools"] == ["search", "fetch"] and chatgpt["endpoint"] == "/chatgpt/mcp"
    assert chatgpt["status"] == "healthy" and chatgpt["compatible_with"] == "ChatGPT Deep Research"


# -- error middleware ------------------------------------------------------------------------------------


async def test_unknown_paths_and_methods_are_json_on_api_paths(client: TestClient) -> None:
    response = await client.get("/nope/health")
    assert response.status == 404 and (await response.json())["status"] == 404
    response = await client.put("/mcp", data=b"{}")
    assert response.status == 405 and "POST" in response.headers["Allow"]
    body = await response.json()
    assert body["error"]["code"] == -32600  # JSON-RPC shaped on MCP paths


async def test_unexpected_exception_is_500_without_traceback(aiohttp_client: Any) -> None:
    from app.middlewares import error_middleware

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("password=hunter2 in a stack frame")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/health", broken)
    app.router.add_get("/page", broken)
    c = await aiohttp_client(app)
    response = await c.get("/health")
    assert response.status == 500
    text = await response.text()
    assert json.loads(text) == {"error": "Internal server error", "status": 500}
    assert "hunter2" not in text and "Traceback" not in text
    page = await c.get("/page")
    assert page.status == 500 and "hunter2" not in await page.text()


async def test_oversized_body_elsewhere_is_json_413(aiohttp_client: Any) -> None:
    from app.middlewares import error_middleware

    async def reads(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(middlewares=[error_middleware], client_max_size=1024)
    app.router.add_post("/.well-known/thing", reads)
    c = await aiohttp_client(app)
    response = await c.post("/.well-known/thing", data=b"x" * 4096)
    assert response.status == 413 and "too large" in (await response.json())["error"]
