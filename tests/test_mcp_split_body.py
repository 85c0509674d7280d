"""MCP request bodies are read whole (up to MAX_REQUEST_BYTES) before parsing, however they arrive.

A raw asyncio socket with TCP_NODELAY writes the headers and the first part of the body, pauses so
the parts travel as separate TCP segments, then writes the rest; with Content-Length and chunked.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import pytest

INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "split-" + "x" * 2000, "version": "1"},
        },
    }
).encode()


@pytest.fixture
async def server(mcp_test_app: Any, start_live_server: Any) -> Any:
    return await start_live_server(mcp_test_app(max_request_bytes=8192).app)


async def _send_in_pieces(url: str, head: bytes, pieces: list[bytes], pause: float = 0.2) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(head)
    for piece in pieces:
        await writer.drain()
        await asyncio.sleep(pause)  # the server has seen what came so far; the rest comes later
        writer.write(piece)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)  # Connection: close: read to EOF
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1]


def _head(path: str, length: int | None, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Accept: application/json",
        "Connection: close",
        *extra,
    ]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_a_post_mcp_body_in_two_segments_is_read_whole(server: Any) -> None:
    status, body = await _send_in_pieces(
        server.url, _head("/mcp", len(INITIALIZE)) + INITIALIZE[:40], [INITIALIZE[40:]]
    )
    assert status == 200, body
    assert json.loads(body)["id"] == 7 and json.loads(body)["result"]["protocolVersion"] == "2025-11-25"


async def test_a_chunked_body_in_three_segments_is_read_whole(server: Any) -> None:
    status, body = await _send_in_pieces(
        server.url,
        _head("/mcp", None) + _chunk(INITIALIZE[:10]),
        [_chunk(INITIALIZE[10:1500]), _chunk(INITIALIZE[1500:]) + b"0\r\n\r\n"],
    )
    assert status == 200, body
    assert json.loads(body)["result"]["serverInfo"]


async def test_legacy_messages_body_in_two_segments_is_read_whole(server: Any) -> None:
    # Open a legacy SSE session, then post to it in two segments; the answer arrives on the stream.
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    seen = b""
    while (match := re.search(rb"(/messages\?session_id=[A-Za-z0-9_-]+)", seen)) is None:
        seen += await asyncio.wait_for(reader.read(4096), 5)
    path = match.group(1).decode()
    status, body = await _send_in_pieces(server.url, _head(path, len(INITIALIZE)) + INITIALIZE[:25], [INITIALIZE[25:]])
    assert status == 202, body
    seen = b""
    while b'"id":7' not in seen:
        seen += await asyncio.wait_for(reader.read(4096), 5)
    writer.close()


async def test_a_body_over_the_limit_in_pieces_is_413_not_a_parse_error(server: Any) -> None:
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "z" * 9000}}).encode()
    status, body = await _send_in_pieces(
        server.url, _head("/mcp", None) + _chunk(big[:4000]), [_chunk(big[4000:]) + b"0\r\n\r\n"]
    )
    assert status == 413 and "too large" in json.loads(body)["error"]["message"]
