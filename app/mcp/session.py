"""Handshake-era MCP sessions (Streamable HTTP `Mcp-Session-Id` and legacy HTTP+SSE) and their store."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import Principal
from .jsonrpc import RequestId


class Outbox:
    """Encoded SSE frames waiting for an HTTP stream writer; one consumer, any number of producers.

    Lighter than asyncio.Queue and it can be woken without an item (task finished, session closed),
    which is what the transports wait on. Frames are encoded when they are queued, so the queue knows
    its size in bytes: a client that stops reading fills it up to `max_messages` / `max_bytes`, and
    then the outbox *overflows*: it empties, closes (further puts return False) and calls
    `on_overflow` once, so the transport can drop that client's stream instead of growing forever.
    """

    __slots__ = (
        "_encode",
        "_items",
        "_waiter",
        "closed",
        "max_bytes",
        "max_messages",
        "on_overflow",
        "overflowed",
        "queued_bytes",
    )

    def __init__(
        self,
        encode: Callable[[Any], bytes],
        *,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        on_overflow: Callable[[Outbox], None] | None = None,
    ) -> None:
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._encode = encode
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.closed = False
        self.overflowed = False
        self.on_overflow = on_overflow

    def put(self, message: Any) -> bool:
        """Queue one message; False when the outbox is closed or this message made it overflow."""
        if self.closed:
            return False
        frame = self._encode(message)
        too_many = self.max_messages is not None and len(self._items) >= self.max_messages
        # An empty queue always takes one frame, so a single large answer never counts as a stall.
        too_big = self.max_bytes is not None and bool(self._items) and self.queued_bytes + len(frame) > self.max_bytes
        if too_many or too_big:
            self._overflow()
            return False
        self._items.append(frame)
        self.queued_bytes += len(frame)
        self.wake()
        return True

    def _overflow(self) -> None:
        self.overflowed = True
        callback, self.on_overflow = self.on_overflow, None
        if callback is not None:
            callback(self)  # sees the queue as it was (for the log line), before it is dropped
        self._items.clear()
        self.queued_bytes = 0
        self.close()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.wake()

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def take(self, max_bytes: int = 65_536) -> bytes:
        """Dequeue frames up to about `max_bytes` (at least one) as one chunk to write; b"" when empty.

        Taking a bounded chunk (not everything) keeps what the writer holds outside the queue small,
        so the queue's limits bound the stream's memory even while the writer is stuck in a write.
        """
        chunks: list[bytes] = []
        size = 0
        while self._items and (not chunks or size + len(self._items[0]) <= max_bytes):
            frame = self._items.popleft()
            chunks.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return b"".join(chunks)

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


@dataclass(frozen=True)
class SessionOwner:
    """Who a session belongs to: the signed-in user and the OAuth client they signed in through.

    A refreshed access token (new jti, same user and client) is the same owner. The surface (Claude at
    `/mcp`, ChatGPT at `/chatgpt/mcp`) needs no field: each surface has its own SessionStore, and the
    bearer check admits only tokens whose audience is that surface.
    """

    subject: str
    client_id: str | None

    @classmethod
    def of(cls, principal: Principal) -> SessionOwner | None:
        """None for a caller without a token (the ALLOW_UNAUTH_* testing switches)."""
        return cls(principal.subject, principal.client_id) if principal.authenticated else None


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
    # Set from the principal that created the session; None while only anonymous callers used it.
    owner: SessionOwner | None = None

    def admits(self, principal: Principal) -> bool:
        """Whether `principal` may use this session; the first signed-in user claims an anonymous one.

        Claiming keeps the testing flow (ALLOW_UNAUTH_METHODS: initialize without a token, sign in at
        the first tools/call) working; once owned, anyone else, anonymous callers included, is refused.
        """
        caller = SessionOwner.of(principal)
        if self.owner is None:
            if caller is not None:
                self.owner = caller
            return True
        return caller == self.owner

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


DROPPED_REMEMBERED = 1000
DROPPED_REMEMBER_SECONDS = 600.0


class TooManySessions(Exception):
    pass


class SessionStore:
    """Bounded, idle-expiring session table (one per MCP endpoint prefix)."""

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        idle_seconds: float = 3600.0,
        active_seconds: float = 300.0,
        on_count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        # Used this recently (or streaming, or running a call) counts as active; otherwise the session is
        # idle: kept until idle_seconds in case its client comes back, but probably abandoned.
        self.active_seconds = active_seconds
        self._sessions: dict[str, Session] = {}
        # Sessions whose stream was dropped for not reading: id -> (owner, when), so their POSTs get
        # a clear 410 for a while instead of a bare 404. Bounded and short-lived.
        self._dropped: OrderedDict[str, tuple[SessionOwner | None, float]] = OrderedDict()
        self._on_count = on_count  # (transport, +1/-1): keeps the sessions-active gauge right
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def create(self, transport: str, protocol_version: str, owner: Principal | None = None) -> Session:
        now = time.monotonic()
        if len(self._sessions) >= self.max_sessions or now - self._last_sweep > 60:
            self.sweep(now)
        if len(self._sessions) >= self.max_sessions:
            self._evict_one()
        session = Session(
            id=secrets.token_urlsafe(24),
            transport=transport,
            protocol_version=protocol_version,
            created=now,
            last_seen=now,
            owner=SessionOwner.of(owner) if owner else None,
        )
        self._sessions[session.id] = session
        if self._on_count:
            self._on_count(transport, 1)
        return session

    def get(self, session_id: str | None, principal: Principal | None = None) -> Session | None:
        """The live session with this id; with `principal`, only if that caller may use it.

        Another user's session is None, exactly like an unknown id (its existence is not revealed),
        and such a request does not keep it alive.
        """
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if self._expired(session, now):
            self.remove(session)
            return None
        if principal is not None and not session.admits(principal):
            return None
        session.last_seen = now
        return session

    def drop(self, session: Session) -> None:
        """Remove a session whose client stopped reading its stream, remembering it for a while."""
        self.remove(session)
        now = time.monotonic()
        self._dropped[session.id] = (session.owner, now)
        while self._dropped:
            oldest_id, (_, when) = next(iter(self._dropped.items()))
            if len(self._dropped) <= DROPPED_REMEMBERED and now - when <= DROPPED_REMEMBER_SECONDS:
                break
            del self._dropped[oldest_id]

    def was_dropped(self, session_id: str | None, principal: Principal) -> bool:
        """True if this caller's session with this id was dropped recently (another user's: False)."""
        entry = self._dropped.get(session_id or "")
        if entry is None or time.monotonic() - entry[1] > DROPPED_REMEMBER_SECONDS:
            return False
        return entry[0] is None or entry[0] == SessionOwner.of(principal)

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

    def counts_by_state(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """{(transport, "active" | "idle"): n} over every open session, for the sessions gauge.

        Read at scrape time, possibly from another thread: it only reads a snapshot of the table.
        """
        now = time.monotonic() if now is None else now
        counts: dict[tuple[str, str], int] = {}
        for session in list(self._sessions.values()):
            key = (session.transport, "active" if self._active(session, now) else "idle")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.remove(session)

    @staticmethod
    def _in_use(session: Session) -> bool:
        # A session with an open stream or a running call is in use, however long ago it last posted.
        return bool(session.inflight) or (session.stream is not None and not session.stream.closed)

    def _active(self, session: Session, now: float) -> bool:
        return self._in_use(session) or now - session.last_seen <= self.active_seconds

    def _expired(self, session: Session, now: float) -> bool:
        return not self._in_use(session) and now - session.last_seen > self.idle_seconds

    def _evict_one(self) -> None:
        # Full: forget the least recently used session that has no open stream and no running call.
        idle = [s for s in self._sessions.values() if not s.inflight and (s.stream is None or s.stream.closed)]
        if not idle:
            raise TooManySessions("too many open MCP sessions")
        self.remove(min(idle, key=lambda s: s.last_seen))
