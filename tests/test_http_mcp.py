"""Raw HTTP against the MCP endpoints: every malformed or refused request gets a proper 4xx, never a 5xx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.fixtures.calls import MODERN, MODERN_META

ACCEPT_BOTH = "application/json, text/event-stream"


@pytest.fixture
async def client(aiohttp_client: Any, mcp_test_app: Any) -> TestClient:
    test_app = mcp_test_app()
    c = await aiohttp_client(test_app.app)
    c.test_app = test_app
    return c


def _headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **extra}


async def _post(client: TestClient, body: Any, path: str = "/mcp", **headers: str) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body)
    response = await client.post(path, data=data, headers=_headers(**headers))
    text = await response.text()
    payload = json.loads(text) if text and response.content_type == "application/json" else text
    return response.status, payload, response


async def _initialize(client: TestClient, version: str = "2025-11-25", path: str = "/mcp") -> str:
    status, payload, response = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        },
        path=path,
    )
    assert status == 200, payload
    assert payload["result"]["protocolVersion"] == version
    session_id = response.headers["Mcp-Session-Id"]
    assert len(session_id) >= 32 and all(0x21 <= ord(c) <= 0x7E for c in session_id)
    return session_id


def _modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


# -- JSON-RPC framing ------------------------------------------------------------------------------


async def test_malformed_json_is_parse_error(client: TestClient) -> None:
    status, payload, _ = await _post(client, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 400
    assert payload == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "Parse error: the body is not valid JSON"},
    }


@pytest.mark.parametrize(
    "body",
    [
        {"id": 1, "method": "ping"},  # no jsonrpc
        {"jsonrpc": "1.0", "id": 1, "method": "ping"},  # wrong version
        {"jsonrpc": "2.0", "id": 1, "method": 7},  # method not a string
        {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"},  # id not string/int
        {"jsonrpc": "2.0", "id": 1},  # neither request nor response
        "just a string",
        42,
    ],
)
async def test_wrong_jsonrpc_is_invalid_request(client: TestClient, body: Any) -> None:
    status, payload, _ = await _post(client, body)
    assert status == 400
    assert payload["error"]["code"] == -32600


async def test_non_object_params_is_invalid_params(client: TestClient) -> None:
    status, payload, _ = await _post(client, {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": [1]})
    assert status == 400 and payload["error"]["code"] == -32602 and payload["id"] == 3


async def test_unknown_method_and_tool(client: TestClient) -> None:
    sid = await _initialize(client)
    status, payload, _ = await _post(
        client, {"jsonrpc": "2.0", "id": 2, "method": "no/such"}, **{"Mcp-Session-Id": sid}
    )
    assert status == 200 and payload["error"]["code"] == -32601 and payload["id"] == 2
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}},
        **{"Mcp-Session-Id": sid},
    )
    assert payload["error"]["code"] == -32602
    assert "Unknown tool: 'nope'" in payload["error"]["message"] and "echo" in payload["error"]["message"]


async def test_missing_and_invalid_arguments_are_tool_errors(client: TestClient) -> None:
    sid = await _initialize(client)
    for arguments, expected in [
        ({}, "'text' is a required property"),
        ({"text": ""}, "should be non-empty"),
        ({"text": "x", "extra": 1}, "Additional properties are not allowed"),
        ("not-an-object", "is not of type 'object'"),
    ]:
        status, payload, _ = await _post(
            client,
            {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo", "arguments": arguments}},
            **{"Mcp-Session-Id": sid},
        )
        assert status == 200
        result = payload["result"]
        assert result["isError"] is True
        assert expected in result["content"][0]["text"] and "echo" in result["content"][0]["text"]
    assert client.test_app.metrics.tool_calls.labels("echo", "invalid")._value.get() == 4


async def test_tool_result_shape(client: TestClient) -> None:
    sid = await _initialize(client)
    status, payload, response = await _post(
        client,
        {"jsonrpc": "2.0", "id": "s", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": 'a"b'}}},
        **{"Mcp-Session-Id": sid},
    )
    assert status == 200 and response.content_type == "application/json"  # the common path is plain JSON
    result = payload["result"]
    assert payload["id"] == "s"
    assert result["structuredContent"]["echo"] == 'a"b'
    assert result["content"] == [
        {"type": "text", "text": json.dumps(result["structuredContent"], separators=(",", ":"))}
    ]
    assert result["isError"] is False
    assert "resultType" not in result  # handshake-era results carry no 2026 fields


# -- HTTP negotiation ----------------------------------------------------------------------------------


async def test_oversized_body_is_413_with_jsonrpc_error(aiohttp_client: Any, mcp_test_app: Any) -> None:
    client = await aiohttp_client(mcp_test_app(max_request_bytes=2048).app)
    big = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x" * 5000}},
        }
    ).encode()
    for path in ("/mcp", "/sse", "/messages?session_id=x"):
        status, payload, _ = await _post(client, big, path=path)
        assert status == 413
        assert payload["error"]["code"] == -32600 and "2048 bytes" in payload["error"]["message"]

    async def chunks():
        yield big

    response = await client.post("/mcp", data=chunks(), headers=_headers())  # chunked: no Content-Length
    assert response.status == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    headers = {"Accept": ACCEPT_BOTH}
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post("/mcp", data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers=headers)
    assert response.status == 415
    assert (await response.json())["error"]["code"] == -32600


async def test_wrong_accept_is_406(client: TestClient) -> None:
    response = await client.post(
        "/mcp", data=b"{}", headers={"Content-Type": "application/json", "Accept": "text/html"}
    )
    assert response.status == 406
    response = await client.get("/mcp", headers={"Accept": "application/json"})
    assert response.status == 406
    response = await client.get("/sse", headers={"Accept": "application/json"})
    assert response.status == 406


async def test_sse_only_accept_gets_sse_answer(client: TestClient) -> None:
    response = await client.post(
        "/mcp",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        data=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
        ),
    )
    assert response.status == 200 and response.content_type == "text/event-stream"
    text = await response.text()
    assert text.startswith("event: message\ndata: ")
    assert json.loads(text.split("data: ", 1)[1])["result"]["protocolVersion"] == "2025-06-18"


async def test_unknown_handshake_version_gets_latest(client: TestClient) -> None:
    status, payload, _ = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2099-01-01", "capabilities": {}},
        },
    )
    assert status == 200
    result = payload["result"]
    assert result["protocolVersion"] == "2025-11-25"
    assert result["capabilities"] == {"tools": {"listChanged": False}, "logging": {}}
    assert result["serverInfo"] == {"name": "test", "version": "9.9.9"}
    assert result["instructions"].startswith("Test server")


async def test_initialize_without_protocol_version_is_invalid_params(client: TestClient) -> None:
    _status, payload, _ = await _post(client, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert payload["error"]["code"] == -32602


# -- sessions ------------------------------------------------------------------------------------------


async def test_missing_unknown_and_deleted_sessions(client: TestClient) -> None:
    ping = {"jsonrpc": "2.0", "id": 5, "method": "ping"}
    status, payload, _ = await _post(client, ping)
    assert status == 400 and "Mcp-Session-Id" in payload["error"]["message"]
    status, payload, _ = await _post(client, ping, **{"Mcp-Session-Id": "no-such-session"})
    assert status == 404 and payload["error"]["code"] == -32600
    sid = await _initialize(client)
    status, payload, _ = await _post(client, ping, **{"Mcp-Session-Id": sid})
    assert status == 200 and payload == {"jsonrpc": "2.0", "id": 5, "result": {}}
    # The /chatgpt endpoint has its own sessions.
    status, _, _ = await _post(client, ping, path="/chatgpt/mcp", **{"Mcp-Session-Id": sid})
    assert status == 404
    response = await client.delete("/mcp", headers={"Mcp-Session-Id": sid})
    assert response.status == 204
    status, _, _ = await _post(client, ping, **{"Mcp-Session-Id": sid})
    assert status == 404
    assert (await client.delete("/mcp", headers={"Mcp-Session-Id": sid})).status == 404
    assert (await client.delete("/mcp")).status == 400


async def test_notifications_get_202(client: TestClient) -> None:
    sid = await _initialize(client)
    response = await client.post(
        "/mcp",
        data=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        headers=_headers(**{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}),
    )
    assert response.status == 202 and await response.read() == b""
    # A client's JSON-RPC response (to a request we never sent) is accepted the same way.
    response = await client.post(
        "/mcp", data=json.dumps({"jsonrpc": "2.0", "id": 9, "result": {}}), headers=_headers(**{"Mcp-Session-Id": sid})
    )
    assert response.status == 202


async def test_bad_protocol_version_header_is_400(client: TestClient) -> None:
    sid = await _initialize(client)
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 6, "method": "ping"},
        **{"Mcp-Session-Id": sid, "MCP-Protocol-Version": "1999-01-01"},
    )
    assert status == 400
    assert payload["error"]["code"] == -32022 and payload["id"] == 6
    assert payload["error"]["data"]["requested"] == "1999-01-01"
    assert "2025-11-25" in payload["error"]["data"]["supported"] and MODERN in payload["error"]["data"]["supported"]


async def test_session_store_is_bounded_and_expires(aiohttp_client: Any, mcp_test_app: Any) -> None:
    test_app = mcp_test_app(max_sessions=3)
    client = await aiohttp_client(test_app.app)
    sessions = test_app.endpoints[""].sessions
    first = await _initialize(client)
    others = [await _initialize(client) for _ in range(3)]
    assert len(sessions) == 3
    assert await sessions.get(first) is None  # the least recently used one made room
    assert all([await sessions.get(s) is not None for s in others])
    gauge = test_app.metrics.mcp_sessions_active.labels("streamable_http")
    assert gauge._value.get() == 3
    sessions.idle_seconds = 0.0
    await asyncio.sleep(0.01)
    assert await sessions.sweep() == 3
    assert gauge._value.get() == 0
    status, _, _ = await _post(client, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, **{"Mcp-Session-Id": others[0]})
    assert status == 404


async def test_get_stream_rules(client: TestClient) -> None:
    assert (await client.get("/mcp", headers={"Accept": "text/event-stream"})).status == 400
    assert (await client.get("/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": "nope"})).status == 404
    response = await client.get("/mcp", headers={"Accept": "text/event-stream", "MCP-Protocol-Version": MODERN})
    assert response.status == 405 and response.headers["Allow"] == "POST"
    sid = await _initialize(client)
    stream = await client.get("/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid})
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    second = await client.get("/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid})
    assert second.status == 409
    # Progress for a JSON-only caller goes to the session's GET stream.
    _status, payload, _ = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "slow", "arguments": {"steps": 1, "step_seconds": 0}, "_meta": {"progressToken": "p1"}},
        },
        **{"Mcp-Session-Id": sid, "Accept": "application/json"},
    )
    assert payload["result"]["structuredContent"] == {"steps": 1}
    line = await asyncio.wait_for(stream.content.readline(), 5)
    assert line == b"event: message\n"
    data = json.loads((await stream.content.readline()).decode().removeprefix("data: "))
    assert data["method"] == "notifications/progress" and data["params"]["progressToken"] == "p1"
    assert (await client.delete("/mcp", headers={"Mcp-Session-Id": sid})).status == 204
    await asyncio.wait_for(stream.read(), 5)  # deleting the session ends its stream
    stream.close()


async def test_long_call_switches_to_sse_with_keepalive(client: TestClient) -> None:
    endpoint = client.test_app.endpoints[""]
    endpoint.streamable.sse_after_seconds = 0.05
    endpoint.streamable.keepalive_seconds = 0.05
    sid = await _initialize(client)
    response = await client.post(
        "/mcp",
        headers=_headers(**{"Mcp-Session-Id": sid}),
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 8,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {"steps": 1, "step_seconds": 0.3}},
            }
        ),
    )
    assert response.status == 200 and response.content_type == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    text = await response.text()
    assert ": keep-alive" in text
    final = json.loads(text.strip().rsplit("data: ", 1)[1])
    assert final["id"] == 8 and final["result"]["structuredContent"] == {"steps": 1}


async def test_cancelled_notification_over_raw_http(client: TestClient) -> None:
    probe = client.test_app.probe
    sid = await _initialize(client)
    call = asyncio.create_task(
        _post(
            client,
            {
                "jsonrpc": "2.0",
                "id": 77,
                "method": "tools/call",
                "params": {"name": "slow", "arguments": {"steps": 100, "step_seconds": 0.05}},
            },
            **{"Mcp-Session-Id": sid, "Accept": "application/json"},
        )
    )
    await asyncio.wait_for(probe.started.wait(), 5)
    response = await client.post(
        "/mcp",
        headers=_headers(**{"Mcp-Session-Id": sid}),
        data=json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77, "reason": "user"}}
        ),
    )
    assert response.status == 202
    status, payload, _ = await asyncio.wait_for(call, 5)
    assert probe.cancelled.is_set() and not probe.finished.is_set()
    assert status == 200 and payload["error"]["code"] == -32800 and payload["id"] == 77
    assert client.test_app.metrics.tool_calls.labels("slow", "cancelled")._value.get() == 1


# -- batches -------------------------------------------------------------------------------------------


async def test_batches_only_in_2025_03_26(client: TestClient) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "b"}}},
        {"jsonrpc": "2.0", "id": 3, "method": 5},
    ]
    new = await _initialize(client, "2025-11-25")
    status, payload, _ = await _post(client, batch, **{"Mcp-Session-Id": new})
    assert status == 400 and "not supported in protocol version 2025-11-25" in payload["error"]["message"]
    old = await _initialize(client, "2025-03-26")
    status, payload, _ = await _post(client, batch, **{"Mcp-Session-Id": old})
    assert status == 200
    by_id = {item["id"]: item for item in payload}
    assert by_id[1]["result"] == {}
    assert by_id[2]["result"]["structuredContent"]["echo"] == "b"
    assert by_id[3]["error"]["code"] == -32600
    status, payload, _ = await _post(
        client, [{"jsonrpc": "2.0", "method": "notifications/initialized"}], **{"Mcp-Session-Id": old}
    )
    assert status == 202
    status, payload, _ = await _post(client, [], **{"Mcp-Session-Id": old})
    assert status == 400
    status, payload, _ = await _post(
        client,
        [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}}],
        **{"Mcp-Session-Id": old},
    )
    assert status == 400 and "initialize" in payload["error"]["message"]


# -- 2026-07-28 envelope ---------------------------------------------------------------------------------


async def test_discover(client: TestClient) -> None:
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": "d", "method": "server/discover", "params": {"_meta": MODERN_META}},
        **_modern_headers("server/discover"),
    )
    assert status == 200
    result = payload["result"]
    assert result["supportedVersions"] == ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", MODERN]
    assert result["resultType"] == "complete"
    assert result["serverInfo"] == {"name": "test", "version": "9.9.9"}
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"] == {"name": "test", "version": "9.9.9"}
    assert result["ttlMs"] >= 0 and result["cacheScope"] in ("public", "private")
    assert result["capabilities"]["tools"] == {"listChanged": False}


async def test_modern_results_carry_result_type_and_cache_hints(client: TestClient) -> None:
    status, payload, response = await _post(
        client,
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}},
        **_modern_headers("tools/list"),
    )
    assert status == 200 and "Mcp-Session-Id" not in response.headers
    result = payload["result"]
    assert result["resultType"] == "complete" and result["cacheScope"] == "private" and result["ttlMs"] > 0
    assert [tool["name"] for tool in result["tools"]] == ["echo", "slow", "fail", "chatty"]
    status, payload, _ = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "m"}, "_meta": MODERN_META},
        },
        **_modern_headers("tools/call", "echo"),
    )
    assert status == 200
    assert payload["result"]["resultType"] == "complete" and payload["result"]["structuredContent"]["echo"] == "m"
    status, payload, _ = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "fail", "arguments": {"kind": "tool"}, "_meta": MODERN_META},
        },
        **_modern_headers("tools/call", "fail"),
    )
    assert payload["result"]["isError"] is True and payload["result"]["resultType"] == "complete"


@pytest.mark.parametrize(
    "meta",
    [None, {"io.modelcontextprotocol/clientCapabilities": {}}, {"io.modelcontextprotocol/protocolVersion": MODERN}],
)
async def test_modern_missing_meta_is_invalid_params_400(client: TestClient, meta: dict | None) -> None:
    params = {} if meta is None else {"_meta": meta}
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 101, "method": "server/discover", "params": params},
        **_modern_headers("server/discover"),
    )
    assert status == 400 and payload["error"]["code"] == -32602 and payload["id"] == 101


async def test_modern_client_info_is_optional(client: TestClient) -> None:
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}},
        **_modern_headers("tools/list"),
    )
    assert status == 200 and "result" in payload


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Mcp-Method": "tools/call", "Mcp-Name": "echo"}, "MCP-Protocol-Version header is required"),
        ({"MCP-Protocol-Version": MODERN, "Mcp-Name": "echo"}, "Mcp-Method header is required"),
        (
            {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/list", "Mcp-Name": "echo"},
            "does not match body method",
        ),
        ({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call"}, "Mcp-Name header is required"),
        ({"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": "fail"}, "does not match body value"),
    ],
)
async def test_modern_header_mismatch_is_32020(client: TestClient, headers: dict[str, str], expected: str) -> None:
    status, payload, _ = await _post(
        client,
        {
            "jsonrpc": "2.0",
            "id": 11,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": MODERN_META},
        },
        **headers,
    )
    assert status == 400
    assert payload["error"]["code"] == -32020 and payload["id"] == 11
    assert expected in payload["error"]["message"]


async def test_modern_name_header_base64_and_whitespace(client: TestClient) -> None:
    for name_header in ("=?base64?ZWNobw==?=", "  echo  "):
        status, payload, _ = await _post(
            client,
            {
                "jsonrpc": "2.0",
                "id": 12,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x"}, "_meta": MODERN_META},
            },
            **_modern_headers("tools/call", name_header),
        )
        assert status == 200, payload


async def test_modern_protocol_header_must_match_meta(client: TestClient) -> None:
    meta = {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2026-01-01"}
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 13, "method": "tools/list", "params": {"_meta": meta}},
        **_modern_headers("tools/list"),
    )
    assert status == 400 and payload["error"]["code"] == -32020


async def test_modern_unsupported_version_is_32022(client: TestClient) -> None:
    meta = {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2030-01-01"}
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 14, "method": "server/discover", "params": {"_meta": meta}},
        **{"MCP-Protocol-Version": "2030-01-01", "Mcp-Method": "server/discover"},
    )
    assert status == 400
    assert payload["error"]["code"] == -32022 and payload["id"] == 14
    assert payload["error"]["data"]["requested"] == "2030-01-01" and MODERN in payload["error"]["data"]["supported"]


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel", "resources/list", "no/such"])
async def test_modern_removed_or_unknown_methods_are_404(client: TestClient, method: str) -> None:
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 15, "method": method, "params": {"_meta": MODERN_META}},
        **_modern_headers(method),
    )
    assert status == 404 and payload["error"]["code"] == -32601 and payload["id"] == 15


async def test_modern_unknown_tool_is_400(client: TestClient) -> None:
    status, payload, _ = await _post(
        client,
        {"jsonrpc": "2.0", "id": 16, "method": "tools/call", "params": {"name": "nope", "_meta": MODERN_META}},
        **_modern_headers("tools/call", "nope"),
    )
    assert status == 400 and payload["error"]["code"] == -32602


async def test_modern_notification_and_batch(client: TestClient) -> None:
    response = await client.post(
        "/mcp",
        headers=_headers(**_modern_headers("notifications/cancelled")),
        data=json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "_meta": MODERN_META}}
        ),
    )
    assert response.status == 202
    status, payload, _ = await _post(
        client,
        [{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN_META}}],
        **_modern_headers("tools/list"),
    )
    assert status == 400 and payload["error"]["code"] == -32600


async def test_modern_delete_is_405(client: TestClient) -> None:
    response = await client.delete("/mcp", headers={"MCP-Protocol-Version": MODERN})
    assert response.status == 405


async def test_modern_progress_streams_sse(client: TestClient) -> None:
    response = await client.post(
        "/mcp",
        headers=_headers(**_modern_headers("tools/call", "slow")),
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 17,
                "method": "tools/call",
                "params": {
                    "name": "slow",
                    "arguments": {"steps": 2, "step_seconds": 0.01},
                    "_meta": {**MODERN_META, "progressToken": 5},
                },
            }
        ),
    )
    assert response.status == 200 and response.content_type == "text/event-stream"
    events = [
        json.loads(chunk.split("data: ", 1)[1]) for chunk in (await response.text()).split("\n\n") if "data: " in chunk
    ]
    assert [e.get("method") for e in events] == ["notifications/progress", "notifications/progress", None]
    assert events[0]["params"] == {"progressToken": 5, "progress": 1, "total": 2, "message": "step 1"}
    assert events[-1]["id"] == 17 and events[-1]["result"]["resultType"] == "complete"
