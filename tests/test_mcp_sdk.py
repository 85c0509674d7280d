"""The official MCP SDK client as the peer: every handshake version, the 2026-07-28 envelope, legacy SSE."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import mcp.client.session as sdk_session
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

HANDSHAKE_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
PREFIXES = ["", "/chatgpt"]


@pytest.fixture
async def live(mcp_test_app: Any, start_live_server: Any) -> Any:
    test_app = mcp_test_app()
    server = await start_live_server(test_app.app)
    server.test_app = test_app
    return server


def _offer(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """Make the SDK's initialize offer `version` (it always offers its latest otherwise)."""
    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", version)


async def _list_and_call(client: Client) -> None:
    tools = await client.list_tools()
    names = [tool.name for tool in tools.tools]
    assert names == ["echo", "slow", "fail", "chatty"]
    echo = tools.tools[0]
    assert echo.input_schema["required"] == ["text"]
    assert echo.annotations is not None and echo.annotations.read_only_hint is True
    result = await client.call_tool("echo", {"text": "héllo"})
    assert result.is_error is not True
    assert result.structured_content is not None and result.structured_content["echo"] == "héllo"
    assert json.loads(result.content[0].text)["echo"] == "héllo"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
async def test_streamable_http_each_handshake_version(
    live: Any, monkeypatch: pytest.MonkeyPatch, version: str, prefix: str
) -> None:
    _offer(monkeypatch, version)
    async with Client(live.url + prefix + "/mcp", mode="legacy") as client:
        assert client.protocol_version == version
        assert client.server_info is not None and client.server_info.version == "9.9.9"
        assert client.instructions == "Test server: echo, slow, fail and chatty tools."
        await _list_and_call(client)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_stateless_2026_envelope_auto_negotiated(live: Any, prefix: str) -> None:
    async with Client(live.url + prefix + "/mcp") as client:  # mode="auto" probes server/discover first
        assert client.protocol_version == "2026-07-28"
        assert client.session.discover_result is not None
        assert client.instructions == "Test server: echo, slow, fail and chatty tools."
        await _list_and_call(client)
    # Stateless: nothing was kept per client.
    assert len(live.test_app.endpoints[prefix].sessions) == 0


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("version", ["2024-11-05", "2025-11-25"])
async def test_legacy_sse_transport(live: Any, monkeypatch: pytest.MonkeyPatch, version: str, prefix: str) -> None:
    _offer(monkeypatch, version)
    async with Client(sse_client(live.url + prefix + "/sse"), mode="legacy") as client:
        assert client.protocol_version == version
        await _list_and_call(client)
        assert len(live.test_app.endpoints[prefix].sessions) == 1
    for _ in range(50):  # the stream closing ends the session
        if not live.test_app.endpoints[prefix].sessions:
            break
        await asyncio.sleep(0.02)
    assert len(live.test_app.endpoints[prefix].sessions) == 0


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_tool_failures_are_is_error_results(live: Any, mode: str) -> None:
    async with Client(live.url + "/mcp", mode=mode) as client:
        refused = await client.call_tool("fail", {"kind": "tool"})
        assert refused.is_error is True and refused.content[0].text == "the tool refused: bad input"
        db = await client.call_tool("fail", {"kind": "db"})
        assert db.is_error is True and "no such table: nowhere" in db.content[0].text
        boom = await client.call_tool("fail", {"kind": "boom"})
        assert boom.is_error is True and "internal error" in boom.content[0].text
        assert "secret internal detail" not in boom.content[0].text  # never leaks internals
        missing = await client.call_tool("fail", {})
        assert missing.is_error is True and "'kind' is a required property" in missing.content[0].text
        invalid = await client.call_tool("echo", {"text": 42})
        assert invalid.is_error is True and "42 is not of type 'string'" in invalid.content[0].text
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("nope", {})
        assert unknown.value.code == -32602 and "Unknown tool" in unknown.value.error.message


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_progress_notifications_arrive(live: Any, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(live.url + "/mcp", mode=mode) as client:
        result = await client.call_tool("slow", {"steps": 3, "step_seconds": 0.01}, progress_callback=on_progress)
    assert result.structured_content == {"steps": 3}
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_logging_set_level_filters_notifications(live: Any) -> None:
    received: list[Any] = []

    async def on_log(params: Any) -> None:
        received.append((params.level, params.data))

    async with Client(live.url + "/mcp", mode="legacy", logging_callback=on_log) as client:
        await client.call_tool("chatty", {})
        assert received == []  # no level set: no log notifications
        with pytest.warns(MCPDeprecationWarning):  # deprecated in 2026-07-28, still part of 2025-11-25
            await client.set_logging_level("warning")
        await client.call_tool("chatty", {})
    assert received == [("warning", {"said": "warning"}), ("error", {"said": "error"})]


async def test_modern_log_level_is_per_request(live: Any) -> None:
    received: list[Any] = []

    async def on_log(params: Any) -> None:
        received.append(params.level)

    async with Client(live.url + "/mcp", mode="2026-07-28", logging_callback=on_log, log_level="info") as client:
        await client.call_tool("chatty", {})
    assert received == ["info", "warning", "error"]


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_cancelling_a_call_stops_the_tool(live: Any, mode: str) -> None:
    probe = live.test_app.probe
    async with Client(live.url + "/mcp", mode=mode) as client:
        call = asyncio.create_task(client.call_tool("slow", {"steps": 200, "step_seconds": 0.05}))
        await asyncio.wait_for(probe.started.wait(), 5)
        call.cancel()  # the SDK sends notifications/cancelled (legacy) or aborts the POST (2026-07-28)
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(probe.cancelled.wait(), 5)
        assert not probe.finished.is_set()
        # The session is still usable afterwards.
        assert (await client.call_tool("echo", {"text": "after"})).structured_content["echo"] == "after"


async def test_sse_cancel_stops_the_tool(live: Any) -> None:
    probe = live.test_app.probe
    async with Client(sse_client(live.url + "/sse"), mode="legacy") as client:
        call = asyncio.create_task(client.call_tool("slow", {"steps": 200, "step_seconds": 0.05}))
        await asyncio.wait_for(probe.started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_ping_and_metrics(live: Any) -> None:
    async with Client(live.url + "/mcp", mode="legacy") as client:
        with pytest.warns(MCPDeprecationWarning):
            await client.send_ping()
        await client.call_tool("echo", {"text": "x"})
        await client.call_tool("fail", {"kind": "tool"})
    metrics = live.test_app.metrics
    assert metrics.tool_calls.labels("echo", "ok")._value.get() == 1
    assert metrics.tool_calls.labels("fail", "refused")._value.get() == 1
    assert metrics.mcp_messages.labels("ping")._value.get() == 1
    assert metrics.mcp_messages.labels("tools/call")._value.get() == 2
    assert metrics.mcp_sessions_active.labels("streamable_http")._value.get() == 0  # DELETE on exit
