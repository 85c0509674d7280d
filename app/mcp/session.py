"""Handshake-era MCP sessions (Streamable HTTP `Mcp-Session-Id` and legacy HTTP+SSE) and their store."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .jsonrpc import RequestId


class Outbox:
    """Messages waiting for an HTTP stream writer; one consumer, any number of producers.

    Lighter than asyncio.Queue and it can be woken without an item (task finished, session closed),
    which is what the transports wait on.
    """

    __slots__ = ("_items", "_waiter", "closed")

    def __init__(self) -> None:
        self._items: list[dict[str, Any]] = []
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def put(self, message: dict[str, Any]) -> bool:
        if self.closed:
            return False
        self._items.append(message)
        self.wake()
        return True

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.wake()

    def __bool__(self) -> bool:
        return bool(self._items)

    def drain(self) -> list[dict[str, Any]]:
        items, self._items = self._items, []
        return items

    async def wait(self, timeout: float | None) -> None:
        """Return when an item arrives, wake() is called, the outbox closes, or `timeout` passes."""
        if self._items or self.closed:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(timeout, _set_done, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(eq=False)
class Session:
    id: str
    transport: str  # "streamable_http" | "sse" (metrics label)
    protocol_version: str
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    client_info: dict[str, Any] = field(default_factory=dict)
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    initialized: bool = False
    log_level: str | None = None  # set by logging/setLevel; None sends no notifications/message
    # Running tools/call tasks by request id, so notifications/cancelled can stop them.
    inflight: dict[RequestId, asyncio.Task[Any]] = field(default_factory=dict)
    # Server->client stream: the GET stream (Streamable HTTP) or the event stream (legacy SSE).
    stream: Outbox | None = None
    closed: bool = False

    def cancel(self, request_id: Any) -> bool:
        task = self.inflight.get(request_id) if isinstance(request_id, int | str) else None
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def close(self) -> None:
        self.closed = True
        for task in list(self.inflight.values()):
            task.cancel()
        self.inflight.clear()
        if self.stream is not None:
            self.stream.close()


class TooManySessions(Exception):
    pass


class SessionStore:
    """Bounded, idle-expiring session table (one per MCP endpoint prefix)."""

    def __init__(self, *, max_sessions: int = 10_000, idle_seconds: float = 3600.0,
                 on_count: Callable[[str, int], None] | None = None) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._sessions: dict[str, Session] = {}
        self._on_count = on_count  # (transport, +1/-1): keeps the sessions-active gauge right
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def create(self, transport: str, protocol_version: str) -> Session:
        now = time.monotonic()
        if len(self._sessions) >= self.max_sessions or now - self._last_sweep > 60:
            self.sweep(now)
        if len(self._sessions) >= self.max_sessions:
            self._evict_one()
        session = Session(id=secrets.token_urlsafe(24), transport=transport, protocol_version=protocol_version,
                          created=now, last_seen=now)
        self._sessions[session.id] = session
        if self._on_count:
            self._on_count(transport, 1)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if self._expired(session, now):
            self.remove(session)
            return None
        session.last_seen = now
        return session

    def remove(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None and self._on_count:
            self._on_count(session.transport, -1)
        session.close()

    def sweep(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._last_sweep = now
        expired = [s for s in self._sessions.values() if self._expired(s, now)]
        for session in expired:
            self.remove(session)
        return len(expired)

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.remove(session)

    def _expired(self, session: Session, now: float) -> bool:
        # A session with an open stream or a running call is in use, however long ago it last posted.
        if session.inflight or (session.stream is not None and not session.stream.closed):
            return False
        return now - session.last_seen > self.idle_seconds

    def _evict_one(self) -> None:
        # Full: forget the least recently used session that has no open stream and no running call.
        idle = [s for s in self._sessions.values()
                if not s.inflight and (s.stream is None or s.stream.closed)]
        if not idle:
            raise TooManySessions("too many open MCP sessions")
        self.remove(min(idle, key=lambda s: s.last_seen))
