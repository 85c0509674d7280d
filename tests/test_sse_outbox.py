"""A client that opens an event stream and stops reading cannot grow the process without bound.

Real sockets on a real loopback server: the stalled client is a raw TCP socket with a small receive
buffer that reads the first bytes and then never again. Many calls are sent to its session; the
queue for its stream fills to MCP_STREAM_MAX_BYTES, the stream is dropped with a log line, the
session's later POSTs get a clear 410, memory (VmRSS) stays bounded, and other clients carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fixtures.memory import status_bytes
from tests.fixtures.obs import CapturedLogs
from tests.fixtures.sse import legacy_sse_stream

ANSWER_BYTES = 100_000
STREAM_MAX_BYTES = 1_048_576
CALLS = 300


def _tools(cancelled: asyncio.Event) -> list[Any]:
    from app.mcp.tools import Tool

    async def blob(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"n": arguments.get("n", 0), "data": "x" * ANSWER_BYTES}

    async def noisy(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        # Progress notes with big messages; each report yields so the writer could keep up if it were read.
        try:
            for step in range(int(arguments["notes"])):
                await ctx.report_progress(step + 1, None, "y" * 60_000)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"sent": arguments["notes"]}

    return [
        Tool(name="blob", title="Blob", description="A 100 kB answer.", input_schema={"type": "object"}, handler=blob),
        Tool(
            name="noisy",
            title="Noisy",
            description="Many big progress notes.",
            input_schema={"type": "object", "properties": {"notes": {"type": "integer"}}},
            handler=noisy,
        ),
    ]


@pytest.fixture
async def server(mcp_test_app: Any, start_live_server: Any) -> Any:
    cancelled = asyncio.Event()
    test_app = mcp_test_app(tools=_tools(cancelled), stream_max_bytes=STREAM_MAX_BYTES)
    live = await start_live_server(test_app.app)
    live.cancelled = cancelled
    live.metrics = test_app.metrics
    return live


class StalledClient:
    """A raw socket that sends one request, reads until `pattern` shows up, then stops reading."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        self.sock.setblocking(False)

    async def open(self, request: bytes, pattern: bytes) -> re.Match[bytes]:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, self.address)
        await loop.sock_sendall(self.sock, request)
        seen = b""
        while (match := re.search(pattern, seen)) is None:
            chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 5)
            assert chunk, seen
            seen += chunk
        return match

    async def read_to_end(self, timeout: float) -> None:
        """Now read everything: the server must have ended the connection (EOF or reset)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if not await loop.sock_recv(self.sock, 1 << 16):
                        return
                except ConnectionResetError:
                    return

    def close(self) -> None:
        self.sock.close()


def _no_errors_logged(logs: CapturedLogs) -> None:
    errors = [line for line in logs.lines() if line.get("level") in ("error", "critical") or "exception" in line]
    assert errors == [], errors


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _call(request_id: int, name: str, arguments: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if progress:
        params["_meta"] = {"progressToken": f"p{request_id}"}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


@contextlib.asynccontextmanager
async def _reading_sse_client(http: aiohttp.ClientSession, url: str) -> AsyncIterator[tuple[str, asyncio.Queue]]:
    """A well-behaved legacy SSE client: reads every event as it arrives."""
    async with legacy_sse_stream(http, url + "/sse") as (endpoint, inbox):
        yield url + endpoint, inbox


async def _post(http: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with http.post(
        url,
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "Accept": "application/json", **headers},
    ) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" else text


async def test_a_legacy_sse_client_that_stops_reading_is_dropped_and_memory_stays_bounded(
    server: Any, captured_logs: CapturedLogs
) -> None:
    stalled = StalledClient(server.url)
    match = await stalled.open(
        _request("GET", "/sse", {"Accept": "text/event-stream"}), rb"(/messages\?session_id=[A-Za-z0-9_-]+)"
    )
    stalled_url = server.url + match.group(1).decode()
    async with aiohttp.ClientSession() as http, _reading_sse_client(http, server.url) as (good_url, good_inbox):
        for body in (
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2024-11-05",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
        ):
            assert (await _post(http, stalled_url, body))[0] == 202
            assert (await _post(http, good_url, body))[0] == 202
        assert (await asyncio.wait_for(good_inbox.get(), 5))["id"] == 0
        for n in range(5):  # warm up allocator and code paths before measuring
            await _post(http, good_url, _call(100 + n, "blob", {"n": n}))
            await asyncio.wait_for(good_inbox.get(), 5)
        baseline = status_bytes("VmRSS")

        statuses: list[int] = []
        good_answers = 0
        for start in range(1, CALLS + 1, 20):  # 20 concurrent POSTs at a time, plus one for the good client
            posts = [_post(http, stalled_url, _call(n, "blob", {"n": n})) for n in range(start, start + 20)]
            posts.append(_post(http, good_url, _call(1000 + start, "blob", {"n": start})))
            results = await asyncio.gather(*posts)
            statuses += [status for status, _ in results[:-1]]
            assert results[-1][0] == 202
            answer = await asyncio.wait_for(good_inbox.get(), 5)  # the reading client is served throughout
            assert answer["id"] == 1000 + start and not answer["result"].get("isError")
            good_answers += 1
        grown = status_bytes("VmRSS") - baseline

        # Unbounded, 300 answers of ~200 kB each (text + structuredContent) would have stayed queued: ~60 MB.
        assert grown < 24 * 1024 * 1024, f"VmRSS grew by {grown / 2**20:.1f} MiB"
        assert good_answers == len(range(1, CALLS + 1, 20))
        # Accepted until the queue overflowed, then refused (order within one parallel batch is not fixed).
        assert set(statuses) == {202, 410} and statuses[-20:] == [410] * 20
        status, payload = await _post(http, stalled_url, _call(9999, "blob", {}))
        assert status == 410 and payload["error"]["code"] == -32600
        assert "stopped reading" in payload["error"]["message"]

    [line] = captured_logs.events("mcp_stream_dropped", transport="sse")
    assert line["level"] == "warning" and line["reason"] == "client_not_reading"
    assert server.metrics.mcp_streams_dropped.labels("sse")._value.get() == 1
    assert line["queued_bytes"] <= STREAM_MAX_BYTES
    await stalled.read_to_end(timeout=10)  # what the kernel still held arrives, then the stream ends
    stalled.close()
    _no_errors_logged(captured_logs)


async def test_a_streamable_get_stream_that_is_not_read_is_dropped_and_the_session_lives_on(
    server: Any, captured_logs: CapturedLogs
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/mcp",
            data=json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                }
            ),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        ) as resp:
            session_id = resp.headers["Mcp-Session-Id"]
        stalled = StalledClient(server.url)
        await stalled.open(
            _request("GET", "/mcp", {"Accept": "text/event-stream", "Mcp-Session-Id": session_id}), rb"200 OK"
        )
        # A JSON-only POST: its progress notes travel on the session's GET stream, which nobody reads.
        status, payload = await _post(
            http,
            server.url + "/mcp",
            _call(2, "noisy", {"notes": 200}, progress=True),
            **{"Mcp-Session-Id": session_id},
        )
        assert status == 200 and payload["result"]["structuredContent"] == {"sent": 200}
        [line] = captured_logs.events("mcp_stream_dropped", transport="streamable_http", stream="get")
        assert line["queued_bytes"] <= STREAM_MAX_BYTES
        await stalled.read_to_end(timeout=10)
        stalled.close()
        # The session itself is fine: it answers, and a reading client may open a new GET stream.
        status, payload = await _post(
            http,
            server.url + "/mcp",
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            **{"Mcp-Session-Id": session_id},
        )
        assert status == 200 and payload["result"]["tools"]
        async with http.get(
            server.url + "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session_id}
        ) as stream:
            assert stream.status == 200
    _no_errors_logged(captured_logs)


async def test_a_call_whose_event_stream_is_not_read_is_cancelled(server: Any, captured_logs: CapturedLogs) -> None:
    body = json.dumps(_call(1, "noisy", {"notes": 100_000}, progress=True)).encode()
    stalled = StalledClient(server.url)
    # Headerless (2025-03-26 style, no session) POST that accepts only an event stream, never read.
    await stalled.open(
        _request(
            "POST",
            "/mcp",
            {
                "Accept": "text/event-stream",
                "Content-Type": "application/json",
                "MCP-Protocol-Version": "2026-07-28",
                "Mcp-Method": "tools/call",
                "Mcp-Name": "noisy",
            },
            body.replace(
                b'"progressToken"',
                b'"io.modelcontextprotocol/protocolVersion": '
                b'"2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, '
                b'"progressToken"',
            ),
        ),
        rb"200 OK",
    )
    await asyncio.wait_for(server.cancelled.wait(), 10)  # the tool was stopped, not left to run 100,000 steps
    [line] = captured_logs.events("mcp_stream_dropped", transport="streamable_http", stream="call")
    assert line["queued_bytes"] <= STREAM_MAX_BYTES
    await stalled.read_to_end(timeout=10)
    stalled.close()
    _no_errors_logged(captured_logs)
