"""Messages between the workers serving one MCP endpoint prefix, over Redis pub/sub (issue 11).

Each worker listens on its own channel (`RedisState.worker_channel`: a session record names the worker
holding its stream, so a POST elsewhere is sent there) and on one broadcast channel (cancel a call or
close a session wherever it lives). Channels are subscribed while create_app builds the app; a message
names its endpoint prefix (`scope`) and kind, and its sender, which ignores its own broadcasts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import structlog

from ...core import Principal
from ...state.redisstate import RedisState, RedisUnavailable

log = structlog.get_logger(__name__)

RelayHandler = Callable[[dict[str, Any]], None]


def principal_fields(principal: Principal) -> dict[str, Any]:
    return {
        "subject": principal.subject,
        "username": principal.username,
        "role": principal.role,
        "client_id": principal.client_id,
        "scopes": sorted(principal.scopes),
        "authenticated": principal.authenticated,
    }


def principal_from(fields: dict[str, Any]) -> Principal:
    return Principal(
        subject=str(fields["subject"]),
        username=str(fields["username"]),
        role=fields.get("role", "reader"),
        client_id=fields.get("client_id"),
        scopes=frozenset(fields.get("scopes") or ()),
        authenticated=bool(fields.get("authenticated", True)),
    )


class Relay:
    def __init__(self, redis: RedisState, scope: str) -> None:
        self.redis = redis
        self.scope = scope
        self.worker_id = redis.worker_id
        self.broadcast_channel = redis.key("mcp", "broadcast")
        self._handlers: dict[str, RelayHandler] = {}
        self._background: set[asyncio.Task[Any]] = set()
        redis.subscribe(redis.worker_channel, self._receive)
        redis.subscribe(self.broadcast_channel, self._receive)

    def on(self, kind: str, handler: RelayHandler) -> None:
        self._handlers[kind] = handler

    def _encode(self, kind: str, fields: dict[str, Any]) -> bytes:
        return orjson.dumps({"scope": self.scope, "kind": kind, "from": self.worker_id, **fields})

    async def send(self, worker: str, kind: str, **fields: Any) -> int:
        """To one worker; how many received it (0: that worker is gone)."""
        return await self.redis.publish(self.redis.key("worker", worker), self._encode(kind, fields))

    async def broadcast(self, kind: str, **fields: Any) -> int:
        return await self.redis.publish(self.broadcast_channel, self._encode(kind, fields))

    def soon(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run a send in the background (callers that cannot await: cancel, emit), errors only logged."""
        task = asyncio.get_running_loop().create_task(self._quietly(job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, job: Coroutine[Any, Any, Any]) -> None:
        try:
            await job
        except RedisUnavailable:
            log.warning("mcp_relay_unavailable")

    def _receive(self, data: bytes) -> None:
        message = orjson.loads(data)
        if message.get("scope") != self.scope or message.get("from") == self.worker_id:
            return
        handler = self._handlers.get(message.get("kind", ""))
        if handler is not None:
            handler(message)
