"""Tools that need the client's input, at the protocol layer (McpServer, no HTTP): the 2026-07-28
InputRequiredResult round trip with signed requestState, and the handshake era's server->client requests
answered through handle_response; -32021 when the client did not declare the capability."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.mcp.jsonrpc import Message
from app.mcp.server import CallEnv, Envelope, McpServer
from app.mcp.session import SessionRecord
from app.mcp.tools import InputRequired, Tool, ToolContext, ToolResult

ASK_NAME = {
    "method": "elicitation/create",
    "params": {
        "message": "Your name?",
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}


async def greet(arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
    if not ctx.input_responses or "who" not in ctx.input_responses:
        raise InputRequired({"who": ASK_NAME}, state={"asked": "who"})
    assert ctx.request_state == {"asked": "who"}
    return ToolResult([{"type": "text", "text": f"Hello, {ctx.input_responses['who']['content']['name']}!"}])


def _server() -> McpServer:
    return McpServer(
        name="t",
        version="1",
        instructions="",
        tools=[Tool("greet", "Greet", "Asks a name.", {"type": "object", "properties": {}}, greet)],
    )


def _record(session_id: str) -> SessionRecord:
    """A handshake-era session as a transport's session manager would hand it to the protocol."""
    return SessionRecord(id=session_id, transport="streamable_http", protocol_version="2025-11-25")


def _modern(capabilities: dict[str, Any]) -> CallEnv:
    return CallEnv(envelope=Envelope("2026-07-28", capabilities))


def _call(request_id: Any = 1, **params: Any) -> Message:
    return Message("request", "tools/call", {"name": "greet", "arguments": {}, **params}, request_id)


async def test_modern_round_trip_with_signed_state() -> None:
    server = _server()
    env = _modern({"elicitation": {}})
    first = (await server.handle_request(_call(), env))["result"]
    assert first["resultType"] == "input_required" and first["inputRequests"] == {"who": ASK_NAME}
    state = first["requestState"]
    answer = {"who": {"action": "accept", "content": {"name": "Ada"}}}
    done = (await server.handle_request(_call(2, inputResponses=answer, requestState=state), env))["result"]
    assert done["resultType"] == "complete" and done["content"][0]["text"] == "Hello, Ada!"

    altered = state[:-1] + ("1" if state.endswith("0") else "0")  # one hex digit of the MAC, surely different
    tampered = await server.handle_request(_call(3, inputResponses=answer, requestState=altered), env)
    assert tampered["error"]["code"] == -32602 and "integrity" in tampered["error"]["message"]
    bad_answers = await server.handle_request(_call(4, inputResponses={"who": 12345}, requestState=state), env)
    assert bad_answers["error"]["code"] == -32602


async def test_modern_refuses_questions_the_client_cannot_answer() -> None:
    answer = await _server().handle_request(_call(), _modern({"sampling": {}}))
    assert answer["error"]["code"] == -32021
    assert answer["error"]["data"] == {"requiredCapabilities": {"elicitation": {}}}


@pytest.mark.parametrize("declared", [True, False])
async def test_handshake_era_asks_the_client_on_the_stream(declared: bool) -> None:
    server = _server()
    session = _record("s-1")
    session.client_capabilities = {"elicitation": {}} if declared else {}
    sent: list[dict[str, Any]] = []
    env = CallEnv(session=session, emit=sent.append)
    call = asyncio.create_task(server.handle_request(_call(), env))
    if not declared:
        answer = await call
        assert answer["error"]["code"] == -32021 and sent == []
        return
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    question = sent[0]
    assert question["method"] == "elicitation/create" and question["params"] == ASK_NAME["params"]
    # Only the session that was asked can answer; an unknown id is ignored.
    other = _record("s-2")
    reply = {"result": {"action": "accept", "content": {"name": "Grace"}}}
    assert not server.handle_response(Message("response", "", reply, question["id"]), CallEnv(session=other))
    assert not server.handle_response(Message("response", "", reply, "srv-unknown"), env)
    assert server.handle_response(Message("response", "", reply, question["id"]), env)
    answer = await asyncio.wait_for(call, 2)
    assert answer["result"]["content"][0]["text"] == "Hello, Grace!"


async def test_handshake_era_client_refusal_is_a_tool_error() -> None:
    server = _server()
    session = _record("s-1")
    session.client_capabilities = {"elicitation": {}}
    sent: list[dict[str, Any]] = []
    env = CallEnv(session=session, emit=sent.append)
    call = asyncio.create_task(server.handle_request(_call(), env))
    while not sent:
        await asyncio.sleep(0.01)
    refusal = {"error": {"code": -1, "message": "User rejected"}}
    assert server.handle_response(Message("response", "", refusal, sent[0]["id"]), env)
    result = (await asyncio.wait_for(call, 2))["result"]
    assert result["isError"] is True and "User rejected" in result["content"][0]["text"]


async def test_handshake_era_without_a_stream_fails_at_once() -> None:
    server = _server()
    session = _record("s-1")
    session.client_capabilities = {"elicitation": {}}
    env = CallEnv(session=session, emit=lambda message: False)  # what a closed or missing stream answers
    result = (await asyncio.wait_for(server.handle_request(_call(), env), 2))["result"]
    assert result["isError"] is True and "text/event-stream" in result["content"][0]["text"]
