"""The MCP path's per-call shortcuts (issue 10) answer exactly as the long way did."""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import pytest

from app.mcp.jsonrpc import PARSE_ERROR, JsonRpcError, loads
from app.mcp.transports.common import start_eagerly

BODIES = [
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"execute_sql","arguments":{"query":"SELECT 1"}}}',
    b'{"id":18446744073709551616,"big":-9223372036854775809}',  # past 64 bits: stays an exact integer
    b'{"id":9223372036854775807,"n":1234567890123456789}',
    b'{"a":[1.5,2,1E+2,0.1e-400,123456789012345678.5,-0]}',
    b'{"a":NaN,"b":Infinity,"c":1e400}',  # the standard library's extensions still decode
    b'"\\ud800"',  # a lone surrogate
    b'"\xed\xa0\x80"',  # the same surrogate as raw bytes
    b'"\\ud83d\\ude00 caf\xc3\xa9"',
    b'\xef\xbb\xbf{"bom":true}',
    '{"utf16":1}'.encode("utf-16"),
    b'{"a":1,"a":2}',
    b' {"spaces":null} \n',
]
BAD_BODIES = [b"", b"{", b"[1,]", b'{"a":01}', b"\x0c{}", b'"a\x01b"', b"\xff", b"{}x", b"[" * 5000 + b"]" * 5000]


@pytest.mark.parametrize("body", BODIES)
def test_loads_matches_the_standard_library(body: bytes) -> None:
    expected = json.loads(body)
    got = loads(body)
    assert repr(got) == repr(expected)  # repr: NaN compares unequal to itself, and float vs int must match


@pytest.mark.parametrize("body", BAD_BODIES)
def test_loads_refuses_what_the_standard_library_refuses(body: bytes) -> None:
    with pytest.raises(JsonRpcError) as caught:
        loads(body)
    assert caught.value.code == PARSE_ERROR


def test_loads_of_text() -> None:
    assert loads('{"id": 1}') == {"id": 1}


async def test_a_call_that_never_waits_gets_no_task() -> None:
    async def quick() -> str:
        return "answer"

    future = start_eagerly(quick())
    assert future.done() and not isinstance(future, asyncio.Task)
    assert future.result() == "answer"


async def test_a_call_that_waits_runs_on_as_a_task() -> None:
    steps: list[str] = []

    async def waits() -> int:
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")
        await asyncio.sleep(0.01)
        return 7

    future = start_eagerly(waits())
    assert steps == ["first"]  # the first step already ran
    assert isinstance(future, asyncio.Task) and not future.done()
    assert await future == 7
    assert steps == ["first", "second"]


@pytest.mark.parametrize("when", ["before_its_next_step", "while_waiting"])
async def test_cancel_reaches_the_call(when: str) -> None:
    cleaned_up = asyncio.Event()
    release = asyncio.get_running_loop().create_future()

    async def slow() -> None:
        try:
            await release
            await asyncio.sleep(10)
        finally:
            cleaned_up.set()

    future = start_eagerly(slow())
    if when == "while_waiting":
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    assert cleaned_up.is_set()  # its finally ran at once, not when the coroutine is collected


async def test_a_failure_in_the_first_step_is_the_result() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    future = start_eagerly(fails())
    assert future.done()
    with pytest.raises(ValueError, match="boom"):
        future.result()
    assert start_eagerly(cancelled()).cancelled()


async def test_the_call_has_a_context_of_its_own() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller")
    seen: list[str] = []

    async def sets() -> None:
        var.set("call")
        await asyncio.sleep(0)
        seen.append(var.get())

    quick = start_eagerly(sets())
    assert var.get() == "caller"  # nothing the call set leaks into the transport's context
    await quick
    assert seen == ["call"]  # and the call keeps its own across its steps


async def test_sync_and_async_tools_answer_the_same_bytes(aiohttp_client: Any, mcp_test_app: Any) -> None:
    from app.mcp.tools import Tool

    async def sync_echo(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"echo": arguments.get("text")}

    async def async_echo(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"echo": arguments.get("text")}

    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    tools = [Tool("sync_echo", "S", "s", schema, sync_echo), Tool("async_echo", "A", "a", schema, async_echo)]
    client = await aiohttp_client(mcp_test_app(tools).app)
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await client.post("/mcp", json=init, headers=headers)
    headers["Mcp-Session-Id"] = response.headers["Mcp-Session-Id"]
    headers["MCP-Protocol-Version"] = "2025-11-25"
    bodies = []
    for name in ("sync_echo", "async_echo"):
        call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name, "arguments": {"text": "é"}}}
        response = await client.post("/mcp", json=call, headers=headers)
        assert response.status == 200 and response.content_type == "application/json"
        bodies.append(await response.read())
    assert bodies[0] == bodies[1]
    assert json.loads(bodies[0])["result"]["structuredContent"] == {"echo": "é"}


@pytest.mark.parametrize(
    "structured",
    [
        {"columns": ["1"], "rows": [[1]], "row_count": 1, "truncated": False},
        {"rows": [[i, f"name é {i}", 1.5 + i, None, 'a"b\\c\n'] for i in range(20)], "note": "☃ \u2028"},
        {"big": 2**70, "nested": [[[[]]]]},  # past what orjson writes: the text path, same answer
        {},
    ],
)
@pytest.mark.parametrize("modern", [False, True])
def test_tool_results_are_encoded_once_and_unchanged(structured: dict[str, Any], modern: bool) -> None:
    from app.mcp.jsonrpc import RawJson, dumps, dumps_bytes, dumps_value, result_message
    from app.mcp.server import McpServer

    server = McpServer(name="t", version="1", instructions="", tools=[])
    result = server._success_result(structured, modern)
    text = dumps_value(structured)
    expected: dict[str, Any] = {
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": False,
    }
    if modern:
        expected = server._modern_fields(expected)
    message = result_message(3, result)
    assert dumps_bytes(message) == dumps(message).encode() == dumps(result_message(3, expected)).encode()
    assert RawJson(result.text).data == result.data
