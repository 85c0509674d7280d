"""Protocol core units: JSON-RPC framing, the outbox, the session manager, era routing (schemas: test_mcp_schema)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.core import ANONYMOUS, Principal
from app.mcp.jsonrpc import RawJson, dumps, loads, parse_message
from app.mcp.server import McpServer, decode_header_value, is_modern_request
from app.mcp.session import TooManySessions
from app.mcp.tools import Tool
from app.mcp.transports.outbox import Outbox
from app.mcp.transports.sessions import SessionManager


def test_parse_message_kinds() -> None:
    assert parse_message({"jsonrpc": "2.0", "id": 1, "method": "ping"}).kind == "request"
    assert parse_message({"jsonrpc": "2.0", "method": "notifications/initialized"}).kind == "notification"
    assert parse_message({"jsonrpc": "2.0", "id": 1, "result": {}}).kind == "response"
    with pytest.raises(Exception) as bool_id:
        parse_message({"jsonrpc": "2.0", "id": True, "method": "ping"})
    assert bool_id.value.code == -32600
    with pytest.raises(Exception) as null_id:
        parse_message({"jsonrpc": "2.0", "id": None, "method": "ping"})
    assert null_id.value.code == -32600


def test_loads_rejects_garbage_without_crashing() -> None:
    for body in (b"\xff\xfe", b"[" * 100_000, b"1" * 5000, b""):
        with pytest.raises(Exception) as error:
            loads(body)
        assert error.value.code == -32700


def test_dumps_splices_raw_results() -> None:
    text = dumps({"jsonrpc": "2.0", "id": "a", "result": RawJson('{"tools":[]}')})
    assert json.loads(text) == {"jsonrpc": "2.0", "id": "a", "result": {"tools": []}}
    batch = dumps([{"jsonrpc": "2.0", "id": 1, "result": RawJson("{}")}, {"jsonrpc": "2.0", "id": 2, "result": {}}])
    assert json.loads(batch)[0]["result"] == {}


def test_base64_header_values() -> None:
    assert decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=") == "Hello, 世界"
    assert decode_header_value("plain") == "plain"
    assert decode_header_value("=?base64?%%%?=") is None


@pytest.mark.parametrize(
    ("body", "header", "modern"),
    [
        ({"method": "tools/list"}, None, False),
        ({"method": "tools/list"}, "2025-06-18", False),
        ({"method": "tools/list"}, "2026-07-28", True),
        ({"method": "server/discover"}, None, True),
        ({"method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "x"}}}, None, True),
        (
            {"method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "x"}}},
            "2025-11-25",
            False,
        ),
    ],
)
def test_era_routing(body: dict[str, Any], header: str | None, modern: bool) -> None:
    assert is_modern_request(body, header) is modern


def _frame(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def test_outbox_wakes_on_put_close_and_timeout() -> None:
    box = Outbox(_frame)
    waiter = asyncio.ensure_future(box.wait(5))
    await asyncio.sleep(0)
    box.put({"a": 1})
    await asyncio.wait_for(waiter, 1)
    assert box.take() == b'{"a": 1}\n' and not box and box.queued_bytes == 0
    await asyncio.wait_for(box.wait(0.01), 1)  # times out quietly
    box.close()
    await asyncio.wait_for(box.wait(5), 1)
    assert box.put({"b": 2}) is False


def test_outbox_overflows_once_at_its_message_or_byte_limit() -> None:
    seen: list[tuple[int, int]] = []
    by_count = Outbox(_frame, max_messages=3, on_overflow=lambda box: seen.append((len(box), box.queued_bytes)))
    assert all(by_count.put({"n": n}) for n in range(3))
    assert by_count.put({"n": 3}) is False and by_count.overflowed and by_count.closed
    assert seen == [(3, 3 * len(_frame({"n": 0})))]  # the callback sees the queue it is about to drop
    assert not by_count and by_count.queued_bytes == 0 and by_count.put({"n": 4}) is False and len(seen) == 1

    by_size = Outbox(_frame, max_bytes=100, on_overflow=lambda box: seen.append((len(box), box.queued_bytes)))
    assert by_size.put({"big": "x" * 500})  # an empty queue takes any one message
    assert by_size.put({"more": 1}) is False and by_size.overflowed


def test_outbox_take_is_bounded_and_keeps_order() -> None:
    box = Outbox(_frame)
    for n in range(10):
        box.put({"n": n, "pad": "y" * 40})
    first = box.take(max_bytes=120)
    assert first.count(b"\n") == 2 and box.queued_bytes == sum(
        len(_frame({"n": n, "pad": "y" * 40})) for n in range(2, 10)
    )
    rest = b"".join(iter(box.take, b""))
    assert [json.loads(line)["n"] for line in (first + rest).splitlines()] == list(range(10))


async def test_sessions_belong_to_their_principal() -> None:
    alice = Principal(subject="u-alice", username="alice", client_id="c1")
    alice_refreshed = Principal(subject="u-alice", username="alice", client_id="c1", scopes=frozenset({"x"}))
    alice_other_client = Principal(subject="u-alice", username="alice", client_id="c2")
    bob = Principal(subject="u-bob", username="bob", client_id="c1")
    store = SessionManager()
    owned = await store.create("sse", "2024-11-05", owner=alice)
    assert await store.get(owned.id, bob) is None and await store.get(owned.id, ANONYMOUS) is None
    assert await store.get(owned.id, alice_other_client) is None
    assert await store.get(owned.id, alice_refreshed) is owned and await store.get(owned.id, alice) is owned
    # Created without a token (testing switches): the first signed-in caller claims it.
    anonymous = await store.create("streamable_http", "2025-11-25", owner=ANONYMOUS)
    assert await store.get(anonymous.id, ANONYMOUS) is anonymous and anonymous.record.owner is None
    assert await store.get(anonymous.id, bob) is anonymous
    assert await store.get(anonymous.id, alice) is None and await store.get(anonymous.id, ANONYMOUS) is None
    # A dropped session is remembered for its owner only.
    await store.drop(owned)
    assert await store.get(owned.id, alice) is None
    assert store.was_dropped(owned.id, alice_refreshed) and not store.was_dropped(owned.id, bob)


async def test_session_manager_counts_and_eviction() -> None:
    counts: list[tuple[str, int]] = []
    store = SessionManager(max_sessions=2, idle_seconds=3600, on_count=lambda t, d: counts.append((t, d)))
    first = await store.create("streamable_http", "2025-11-25")
    first.stream = Outbox(_frame)  # an open stream: never evicted
    second = await store.create("sse", "2024-11-05")
    third = await store.create("streamable_http", "2025-06-18")
    assert (
        await store.get(second.id) is None and await store.get(first.id) is first and await store.get(third.id) is third
    )
    third.stream = Outbox(_frame)
    with pytest.raises(TooManySessions):
        await store.create("streamable_http", "2025-11-25")
    await store.close_all()
    assert len(store) == 0 and first.stream.closed
    assert sum(delta for _, delta in counts) == 0


def test_duplicate_tool_names_and_bad_schemas_fail_at_start() -> None:
    async def handler(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {}

    tool = Tool("t", "T", "d", {"type": "object"}, handler)
    with pytest.raises(ValueError):
        McpServer(name="x", version="1", instructions="", tools=[tool, tool])
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's SchemaError
        McpServer(
            name="x",
            version="1",
            instructions="",
            tools=[Tool("u", "U", "d", {"type": "object", "properties": 5}, handler)],
        )


async def test_session_records_live_in_a_replaceable_storage() -> None:
    """The manager keeps only process-local parts (tasks, streams); records come from its SessionStorage,
    so a record another process stored (a shared store) is served here too, and changes are saved back."""
    from app.mcp.session import SessionRecord
    from app.mcp.transports.sessions import InMemorySessionStorage

    class CountingStorage(InMemorySessionStorage):
        def __init__(self) -> None:
            super().__init__()
            self.saved: list[str] = []

        async def save(self, record: SessionRecord) -> bool:
            self.saved.append(record.id)
            return False

    alice = Principal(subject="u-alice", username="alice", client_id="c1")
    storage = CountingStorage()
    manager = SessionManager(storage=storage)
    elsewhere = SessionRecord(id="from-another-node", transport="streamable_http", protocol_version="2025-11-25")
    elsewhere.subscriptions.add("mssql://tables/main/t")
    await storage.add(elsewhere)
    session = await manager.get("from-another-node", alice)
    assert session is not None and session.record is elsewhere and session.inflight == {} and session.stream is None
    assert elsewhere.owner is not None and elsewhere.owner.subject == "u-alice"  # claimed, as any anonymous one
    assert manager.subscribed_uris() == {"mssql://tables/main/t"}
    note = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "mssql://tables/main/t"}}
    assert manager.notify_subscribers("mssql://tables/main/t", note) == 0  # no stream open in this process
    session.stream = Outbox(_frame)
    assert manager.notify_subscribers("mssql://tables/main/t", note) == 1 and manager.notify_all(note) == 1
    await manager.save(session)
    assert storage.saved == ["from-another-node"]
    assert manager.counts_by_state() == {("streamable_http", "active"): 1}
    await manager.remove(session)
    assert len(storage) == 0 and session.stream.closed and manager.subscribed_uris() == set()


async def test_a_new_server_identity_reaches_the_pre_serialized_results() -> None:
    from app.mcp.jsonrpc import Message, dumps
    from app.mcp.server import CallEnv, Envelope

    async def handler(arguments: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"ok": True}

    tool = Tool("t", "T", "d", {"type": "object"}, handler)
    server = McpServer(name="old", version="1", instructions="", tools=[tool])
    server.server_info = {"name": "new", "version": "2"}
    env = CallEnv(envelope=Envelope("2026-07-28", {}))
    for method, params in (("tools/list", {}), ("tools/call", {"name": "t", "arguments": {}})):
        answer = json.loads(dumps(await server.handle_request(Message("request", method, params, 1), env)))
        assert answer["result"]["_meta"]["io.modelcontextprotocol/serverInfo"] == {"name": "new", "version": "2"}
