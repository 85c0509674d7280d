"""MCP sessions in Redis and the stream relay (issue 11): three `create_app` nodes in this process share one
real redis-server (and one DATA_DIR, so one set of signing keys), and a session made on one node is used on
the others. Clients are real: the official `mcp` SDK client and raw aiohttp where status codes matter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client

from app import keys
from app.mcp.transports.sessions import SessionManager
from app.state.sessions import RedisSessionStorage
from tests.fixtures.auth import mint_token
from tests.fixtures.redis import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUBLIC = "http://127.0.0.1"  # PUBLIC_BASE_URL: every node is the same issuer
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}


@dataclass
class Node:
    url: str
    app: web.Application
    runner: web.AppRunner
    test_app: Any

    @property
    def sessions(self) -> SessionManager:
        manager: SessionManager = self.test_app.endpoints[""].sessions
        return manager


@pytest.fixture
async def start_nodes(redis_url: str, mcp_test_app: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """Start n nodes serving the default test tools (or `tools`) on one Redis; stopped at teardown."""
    started: list[Node] = []

    async def start(n: int = 3, tools: list[Any] | None = None) -> list[Node]:
        for _ in range(n):
            test_app = mcp_test_app(tools, redis_url=redis_url, public_base_url=PUBLIC)
            runner = web.AppRunner(test_app.app, access_log=None, shutdown_timeout=2)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            started.append(Node(f"http://{host}:{port}", test_app.app, runner, test_app))
        for node in started:
            assert node.app[keys.REDIS].listening
        return started[-n:]

    yield start
    for node in started:
        await node.runner.cleanup()


@pytest.fixture
async def nodes(start_nodes: Callable[..., Any]) -> list[Node]:
    return list(await start_nodes())


async def _post(
    http: aiohttp.ClientSession, node: Node, message: Any, session_id: str | None = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = dict(HEADERS)
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(node.url + "/mcp", data=json.dumps(message), headers=headers) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None), dict(response.headers)


async def _initialize(http: aiohttp.ClientSession, node: Node, token: str | None = None) -> str:
    status, body, headers = await _post(http, node, INITIALIZE, token=token)
    assert status == 200, body
    session_id = headers["Mcp-Session-Id"]
    status, _, _ = await _post(
        http, node, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id, token=token
    )
    assert status == 202
    return session_id


async def _delivered(redis_state: Any, channel: str) -> None:
    """Wait until this worker's listener has handed over every message published on `channel` so far: Redis
    keeps a channel's order, so a marker published now arrives after them. (Another worker's announcement is
    out before its answer, but reaches this worker a little later, and later still on a loaded machine.)"""
    arrived = asyncio.Event()
    marker = json.dumps({"id": "delivered-marker", "from": redis_state.worker_id}).encode()  # its own: ignored

    def seen(data: bytes) -> None:
        if data == marker:
            arrived.set()

    handlers = redis_state._handlers[channel]  # the listener's list for the channel, read per message
    handlers.append(seen)
    try:
        await redis_state.publish(channel, marker)
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        handlers.remove(seen)


def _call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


async def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    event, data = "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_a_session_made_by_the_sdk_on_one_node_is_served_by_every_node(nodes: list[Node]) -> None:
    a, b, c = nodes
    async with Client(a.url + "/mcp", mode="legacy") as client, aiohttp.ClientSession() as http:
        assert [tool.name for tool in (await client.list_tools()).tools][:2] == ["echo", "slow"]
        await _eventually(lambda: len(a.sessions) == 1)
        session_id = next(iter(a.sessions)).id

        for node in (b, c):
            status, body, _ = await _post(http, node, {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, session_id)
            assert status == 200 and "echo" in [tool["name"] for tool in body["result"]["tools"]]
            status, body, _ = await _post(http, node, _call(8, "echo", {"text": f"on {node.url}"}), session_id)
            assert status == 200 and body["result"]["structuredContent"]["echo"] == f"on {node.url}"
        result = await client.call_tool("echo", {"text": "still on A"})
        assert result.structured_content == {"echo": "still on A", "principal": "anonymous", "base_url": PUBLIC}

        # A record changed on B reaches the worker holding the GET stream (the SDK opened one on A), so a
        # subscription made on B counts on A; a notification for the session on B is relayed to A's stream.
        await _eventually(lambda: next(iter(a.sessions)).stream is not None)
        on_b = await b.sessions.get(session_id)
        assert on_b is not None and on_b.record.stream_worker == a.app[keys.REDIS].worker_id
        on_b.record.subscriptions.add("test://watched")
        await b.sessions.save(on_b)
        await _eventually(lambda: "test://watched" in a.sessions.subscribed_uris())
        assert b.sessions.sender(on_b)({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
        on_a = a.sessions.local(session_id)
        assert on_a is not None

        # DELETE on C ends it everywhere: the record, A's GET stream, and every node answers 404.
        async with http.delete(c.url + "/mcp", headers={**HEADERS, "Mcp-Session-Id": session_id}) as response:
            assert response.status == 204
        await _eventually(lambda: a.sessions.local(session_id) is None and on_a.closed)
        for node in nodes:
            status, body, _ = await _post(http, node, {"jsonrpc": "2.0", "id": 9, "method": "ping"}, session_id)
            assert status == 404 and "Session not found" in body["error"]["message"]
        with contextlib.suppress(Exception):
            await client.call_tool("echo", {"text": "gone"})


async def test_legacy_sse_stream_on_one_node_gets_the_replies_to_posts_on_the_others(nodes: list[Node]) -> None:
    a, b, c = nodes
    big = "x" * 20_000  # a reply much larger than one pub/sub frame or socket read
    async with (
        aiohttp.ClientSession() as http,
        http.get(a.url + "/sse", headers={"Accept": "text/event-stream"}) as stream,
    ):
        assert stream.status == 200
        events = _sse_events(stream)
        kind, endpoint = await anext(events)
        assert kind == "endpoint" and endpoint.startswith("/messages?session_id=")

        async def post(node: Node, message: Any) -> int:
            async with http.post(
                node.url + endpoint, data=json.dumps(message), headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 202, await response.text()
                return response.status

        await post(b, {**INITIALIZE, "params": {**INITIALIZE["params"], "protocolVersion": "2024-11-05"}})
        kind, data = await anext(events)
        assert json.loads(data)["result"]["protocolVersion"] == "2024-11-05"
        await post(c, {"jsonrpc": "2.0", "method": "notifications/initialized"})

        calls = [_call(100 + n, "echo", {"text": f"{n}:{big}"}) for n in range(20)]
        await asyncio.gather(*(post((b, c)[n % 2], call) for n, call in enumerate(calls)))
        replies: dict[int, str] = {}
        async with asyncio.timeout(20):
            while len(replies) < 20:
                kind, data = await anext(events)
                reply = json.loads(data)
                replies[reply["id"]] = reply["result"]["structuredContent"]["echo"]
        assert replies == {100 + n: f"{n}:{big}" for n in range(20)}

        # The stream's worker stops listening (as when it crashed): a POST elsewhere is a clear error,
        # and the session is gone for good.
        session_id = endpoint.split("session_id=", 1)[1]
        await a.app[keys.REDIS].close()
        async with http.post(
            b.url + endpoint,
            data=json.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping"}),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 404
            assert "event stream closed" in (await response.json())["error"]["message"]
        assert await c.sessions.get(session_id) is None


async def test_cancel_on_another_node_stops_the_call(nodes: list[Node]) -> None:
    a, b, _ = nodes
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a)
        call = asyncio.create_task(_post(http, a, _call(42, "slow", {"steps": 200, "step_seconds": 0.05}), session_id))
        await asyncio.wait_for(a.test_app.probe.started.wait(), 10)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 42}}
        status, _, _ = await _post(http, b, cancel, session_id)
        assert status == 202
        await asyncio.wait_for(a.test_app.probe.cancelled.wait(), 5)
        status, body, _ = await asyncio.wait_for(call, 10)
        assert not a.test_app.probe.finished.is_set()
        assert status == 200 and body["error"]["message"] == "Request cancelled by the client"


async def test_another_users_session_on_another_node_is_like_an_unknown_one(nodes: list[Node]) -> None:
    a, b, _ = nodes
    settings = a.app[keys.SETTINGS]
    alice = mint_token(settings, PUBLIC, username="alice", role="reader", scope="mcp:read", resource=PUBLIC)
    bob = mint_token(settings, PUBLIC, username="bob", role="reader", scope="mcp:read", resource=PUBLIC)
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a, token=alice)
        status, body, _ = await _post(http, b, ping, session_id, token=alice)
        assert status == 200 and body["result"] == {}
        theirs = await _post(http, b, ping, session_id, token=bob)
        unknown = await _post(http, b, ping, "no-such-session", token=bob)
        assert theirs[0] == unknown[0] == 404 and theirs[1] == unknown[1]
        status, _, _ = await _post(http, a, ping, session_id, token=alice)  # bob's try did not end it
        assert status == 200


async def test_redis_down_refuses_clearly_and_everything_works_once_it_is_back(
    nodes: list[Node], redis_server: RedisServer
) -> None:
    a, b, c = nodes
    ping = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a)
        redis_server.stop()
        try:
            for node in nodes:
                started = time.monotonic()
                status, body, headers = await _post(http, node, INITIALIZE)
                assert time.monotonic() - started < 2.0
                assert status == 503 and headers["Retry-After"] == "1"
                assert body["error"]["message"] == "shared state (Redis) is unavailable; try again in a few seconds"
                status, body, headers = await _post(http, node, ping, session_id)
                assert status == 503 and "Redis" in body["error"]["message"] and headers["Retry-After"] == "1"
            started = time.monotonic()
            async with http.get(c.url + "/sse", headers={"Accept": "text/event-stream"}) as response:
                assert response.status == 503 and "Redis" in (await response.json())["error"]["message"]
            assert time.monotonic() - started < 2.0
        finally:
            redis_server.start()
        await _eventually(
            lambda: all(node.app[keys.REDIS].available and node.app[keys.REDIS].listening for node in nodes)
        )
        # Redis came back empty (no persistence here): the old session is unknown, new ones work everywhere.
        status, _, _ = await _post(http, b, ping, session_id)
        assert status == 404
        fresh = await _initialize(http, b)
        for node in nodes:
            status, body, _ = await _post(http, node, _call(5, "echo", {"text": "back"}), fresh)
            assert status == 200 and body["result"]["structuredContent"]["echo"] == "back"


async def test_limits_expiry_and_the_gauge_hold_across_nodes(nodes: list[Node]) -> None:
    """MAX_SESSIONS counts every node's sessions, idle records expire in Redis (a session with an open stream
    does not while its worker keeps it alive), and the gauge reads the shared counts."""
    a, b, c = nodes
    for node in nodes:
        node.sessions.max_sessions = 2
    ping = {"jsonrpc": "2.0", "id": 6, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        first, second = await _initialize(http, a), await _initialize(http, b)
        await a.sessions.maintain()
        assert a.sessions.counts_by_state() == {("streamable_http", "active"): 2}
        third = await _initialize(http, c)  # full: the least recently used one (on another node) made room
        assert (await _post(http, b, ping, first))[0] == 404
        assert (await _post(http, a, ping, second))[0] == (await _post(http, a, ping, third))[0] == 200

        # Idle expiry (1 s here): a session nobody uses is forgotten by every node, while one whose event
        # stream is open on A stays, however long ago its client posted.
        for node in nodes:
            node.sessions.storage.idle_ms = 1000  # type: ignore[attr-defined]
            node.sessions.max_sessions = 10
        assert (await _post(http, b, ping, third))[0] == 200  # used now: expires 1 s from now
        async with http.get(a.url + "/sse", headers={"Accept": "text/event-stream"}) as stream:
            events = _sse_events(stream)
            _, endpoint = await anext(events)
            for _ in range(8):  # A's upkeep rounds (every few seconds in production) keep it alive
                await asyncio.sleep(0.2)
                await a.sessions.maintain()
            assert (await _post(http, c, ping, third))[0] == 404
            async with http.post(
                b.url + endpoint, data=json.dumps(ping), headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 202
            _, data = await anext(events)
            assert json.loads(data) == {"jsonrpc": "2.0", "id": 6, "result": {}}
            await c.sessions.maintain()
            assert c.sessions.counts_by_state() == {("sse", "active"): 1}


async def test_the_clients_answer_to_a_question_reaches_the_call_on_another_node(
    start_nodes: Callable[..., Any],
) -> None:
    from app.mcp.tools import InputRequired, Tool

    async def ask(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if ctx.input_responses:
            return {"answer": ctx.input_responses["name"]}
        question = {"message": "Your name?", "requestedSchema": {"type": "object", "properties": {}}}
        raise InputRequired({"name": {"method": "elicitation/create", "params": question}})

    tool = Tool("ask", "Ask", "Asks the client a question.", {"type": "object"}, ask)
    a, b = await start_nodes(2, tools=[tool])
    initialize = {**INITIALIZE, "params": {**INITIALIZE["params"], "capabilities": {"elicitation": {}}}}
    async with aiohttp.ClientSession() as http:
        status, _, headers = await _post(http, a, initialize)
        assert status == 200
        session_id = headers["Mcp-Session-Id"]
        call_headers = {**HEADERS, "Accept": "text/event-stream", "Mcp-Session-Id": session_id}
        async with http.post(a.url + "/mcp", data=json.dumps(_call(9, "ask", {})), headers=call_headers) as call:
            events = _sse_events(call)
            _, data = await anext(events)
            question = json.loads(data)
            assert question["method"] == "elicitation/create"
            answer = {"jsonrpc": "2.0", "id": question["id"], "result": {"action": "accept", "content": {"n": 1}}}
            assert (await _post(http, b, answer, session_id))[0] == 202  # answered on B, asked on A
            async with asyncio.timeout(10):
                _, data = await anext(events)
            result = json.loads(data)["result"]["structuredContent"]["answer"]
            assert result["action"] == "accept" and result["content"] == {"n": 1}


async def test_a_dropped_event_stream_is_gone_on_every_node(nodes: list[Node]) -> None:
    """The 410 for a session whose client stopped reading its stream is answered by every node."""
    a, b, c = nodes
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(a.url + "/sse", headers={"Accept": "text/event-stream"}) as stream,
    ):
        _, endpoint = await anext(_sse_events(stream))
        session_id = endpoint.split("session_id=", 1)[1]
        session = a.sessions.local(session_id)
        assert session is not None and session.stream is not None
        session.stream._overflow()  # what a full outbox does when its client stopped reading
        await _eventually(lambda: a.sessions.local(session_id) is None)
        for node in (b, c):
            async with http.post(
                node.url + endpoint, data=json.dumps(ping), headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 410
                assert "stopped reading" in (await response.json())["error"]["message"]


async def test_repeated_calls_on_a_shared_session_cost_no_redis_round_trip_within_touch_seconds(
    nodes: list[Node],
) -> None:
    a, b, _ = nodes
    redis_state = b.app[keys.REDIS]
    storage = b.sessions.storage
    assert isinstance(storage, RedisSessionStorage)
    storage.touch_seconds = 0.5  # shorter than production's TOUCH_SECONDS, so the test sees one expire
    trips: list[str] = []
    run = redis_state.run

    async def counted(command: Any) -> Any:
        trips.append("run")
        return await run(command)

    async def no_upkeep() -> None:
        return None

    b.sessions.maintain = no_upkeep  # type: ignore[method-assign]  # only the calls' own trips are counted
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a)
        # `notifications/initialized` on a announced a change: once b has it, b's first read is kept.
        await _delivered(redis_state, storage.changes_channel)
        redis_state.run = counted  # type: ignore[method-assign]
        try:
            started = time.monotonic()
            for n in range(5):
                status, body, _ = await _post(http, b, _call(n, "echo", {"text": "x"}), session_id)
                assert status == 200 and body["result"]["structuredContent"]["echo"] == "x"
            status, _, _ = await _post(http, b, {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, session_id)
            assert status == 200
            assert time.monotonic() - started < storage.touch_seconds
            # GETEX + index touch, pipelined, for the first call; the others reuse the record
            assert len(trips) == 1
            await asyncio.sleep(storage.touch_seconds)
            status, body, _ = await _post(http, b, _call(10, "echo", {"text": "y"}), session_id)
            assert status == 200 and body["result"]["structuredContent"]["echo"] == "y"
            assert len(trips) == 2  # older than touch_seconds: read (and TTL refreshed) again, once
        finally:
            redis_state.run = run  # type: ignore[method-assign]


async def test_a_record_in_its_handshake_is_always_read_fresh(nodes: list[Node]) -> None:
    a, b, _ = nodes
    storage = b.sessions.storage
    assert isinstance(storage, RedisSessionStorage)
    async with aiohttp.ClientSession() as http:
        status, _, headers = await _post(http, a, INITIALIZE)
        assert status == 200
        session_id = headers["Mcp-Session-Id"]
        status, _, _ = await _post(http, b, {"jsonrpc": "2.0", "id": 2, "method": "ping"}, session_id)
        assert status == 200 and storage.cached() == 0  # not initialized yet: nothing kept
        status, _, _ = await _post(http, b, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id)
        assert status == 202
        status, _, _ = await _post(http, b, {"jsonrpc": "2.0", "id": 3, "method": "ping"}, session_id)
        assert status == 200 and storage.cached() == 1


async def test_delete_on_one_node_ends_a_session_the_others_hold_at_once(nodes: list[Node]) -> None:
    a, b, c = nodes
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # a few rounds: the broadcast must beat the client's next request every time
            session_id = await _initialize(http, a)
            for node in nodes:  # every node now holds the record
                assert (await _post(http, node, ping, session_id))[0] == 200
            headers = {**HEADERS, "Mcp-Session-Id": session_id}
            async with http.delete(a.url + "/mcp", headers=headers) as response:
                assert response.status in (200, 204)
            assert (await _post(http, b, ping, session_id))[0] == 404
            assert (await _post(http, c, ping, session_id))[0] == 404


async def test_a_changed_record_reaches_the_nodes_that_hold_it_at_once(nodes: list[Node]) -> None:
    a, b, _ = nodes
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a)
        ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
        assert (await _post(http, b, ping, session_id))[0] == 200  # B holds the record now
        set_level = {"jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": {"level": "debug"}}
        status, _, _ = await _post(http, a, set_level, session_id)
        assert status == 200
        # Redis has pushed the announcement to B before A answered; B's loop reads it from its subscriber
        # socket, and on a busy machine the next request can be read first. Well within the copy's 2 s
        # lifetime (TOUCH_SECONDS), B must serve the new record: the announcement, not the expiry, did it.
        deadline = time.monotonic() + 1.0
        while True:
            assert (await _post(http, b, ping, session_id))[0] == 200
            session = b.sessions.local(session_id)
            if (session is not None and session.record.log_level == "debug") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert session is not None and session.record.log_level == "debug"


async def test_another_users_call_on_a_held_session_is_404(nodes: list[Node]) -> None:
    a, b, _ = nodes
    settings = a.app[keys.SETTINGS]
    alice = mint_token(settings, PUBLIC, username="alice", role="reader", scope="mcp:read", resource=PUBLIC)
    bob = mint_token(settings, PUBLIC, username="bob", role="reader", scope="mcp:read", resource=PUBLIC)
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a, token=alice)
        assert (await _post(http, b, ping, session_id, token=alice))[0] == 200
        assert (await _post(http, b, ping, session_id, token=bob))[0] == 404  # from B's copy: still refused
        assert (await _post(http, b, ping, session_id, token=alice))[0] == 200


async def test_a_held_session_is_refused_once_the_node_sees_redis_down(
    nodes: list[Node], redis_server: RedisServer
) -> None:
    """A cached record serves calls only while the listener is connected: stopping Redis closes that
    connection, so the node answers 503 as soon as it notices (at once here; after a silent network
    partition at most touch_seconds later)."""
    a, b, _ = nodes
    ping = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        session_id = await _initialize(http, a)
        assert (await _post(http, b, ping, session_id))[0] == 200
        redis_state = b.app[keys.REDIS]
        generation = redis_state.listen_generation
        redis_server.stop()
        try:
            await _eventually(lambda: not redis_state.listening, timeout=2.0)
            status, body, headers = await _post(http, b, ping, session_id)
            assert status == 503 and "Redis" in body["error"]["message"] and headers["Retry-After"] == "1"
            status, _, _ = await _post(http, b, INITIALIZE)  # a new session: never from a cache
            assert status == 503
        finally:
            redis_server.start()
        await _eventually(lambda: redis_state.available and redis_state.listening)
        assert redis_state.listen_generation > generation
        assert (await _post(http, b, ping, session_id))[0] == 404  # Redis came back empty: not served from a copy
