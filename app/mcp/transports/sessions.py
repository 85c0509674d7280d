"""The transport-level session manager: it creates, finds (bound to user + client), drops, sweeps and
counts the MCP sessions of one endpoint prefix, and owns their streams and running calls.

Like the official SDK's `StreamableHTTPSessionManager`, the protocol core (`McpServer`) keeps no session
table: a transport looks the session up here, hands its record to the protocol with the request, and the
protocol reaches open sessions (resources/list_changed, resources/updated) through `SessionNotifier`,
which the manager implements.

Storage sits behind `SessionStorage` (records only, see `app.mcp.session.SessionRecord`), so a shared
store can replace the in-memory one; what cannot leave this process (asyncio tasks, outboxes) stays in
the manager's `Session` objects.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...core import Principal
from ..jsonrpc import RequestId
from ..session import SessionOwner, SessionRecord, TooManySessions
from .outbox import Outbox

DROPPED_REMEMBERED = 1000
DROPPED_REMEMBER_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 60.0


class SessionStorage(Protocol):
    """Where session records live. Synchronous today (in memory); a shared store keeps the same shape."""

    def add(self, record: SessionRecord) -> None: ...

    def get(self, session_id: str) -> SessionRecord | None: ...

    def save(self, record: SessionRecord) -> None:
        """Persist changes the protocol made to a record (version, capabilities, log level, subscriptions)."""
        ...

    def remove(self, session_id: str) -> SessionRecord | None: ...

    def records(self) -> list[SessionRecord]:
        """A snapshot of every record (sweeps and the sessions gauge, possibly from another thread)."""
        ...

    def __len__(self) -> int: ...


class InMemorySessionStorage:
    """Records in a dict: one process, and the records are the very objects the protocol changes."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}

    def add(self, record: SessionRecord) -> None:
        self._records[record.id] = record

    def get(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    def save(self, record: SessionRecord) -> None:
        pass  # the stored object is the one that changed

    def remove(self, session_id: str) -> SessionRecord | None:
        return self._records.pop(session_id, None)

    def records(self) -> list[SessionRecord]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)


@dataclass(eq=False)
class Session:
    """A session as this process serves it: the stored record plus what only lives here."""

    record: SessionRecord
    # Running calls by request id, so notifications/cancelled (and closing the session) can stop them.
    inflight: dict[RequestId, asyncio.Task[Any]] = field(default_factory=dict)
    # Server->client stream: the GET stream (Streamable HTTP) or the event stream (legacy SSE).
    stream: Outbox | None = None
    closed: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a message on the session's stream; False when it has none open (or it overflowed)."""
        return self.stream is not None and not self.closed and self.stream.put(message)

    def track(self, request_id: RequestId | None, task: asyncio.Task[Any]) -> None:
        if request_id is not None:
            self.inflight[request_id] = task

    def untrack(self, request_id: RequestId | None, task: asyncio.Task[Any]) -> None:
        if request_id is not None and self.inflight.get(request_id) is task:
            del self.inflight[request_id]

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

    @property
    def in_use(self) -> bool:
        # A session with an open stream or a running call is in use, however long ago it last posted.
        return bool(self.inflight) or (self.stream is not None and not self.stream.closed)


class SessionManager:
    """Bounded, idle-expiring sessions of one MCP endpoint prefix (both transports share it)."""

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        idle_seconds: float = 3600.0,
        active_seconds: float = 300.0,
        on_count: Callable[[str, int], None] | None = None,
        storage: SessionStorage | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        # Used this recently (or streaming, or running a call) counts as active; otherwise the session is
        # idle: kept until idle_seconds in case its client comes back, but probably abandoned.
        self.active_seconds = active_seconds
        self.storage: SessionStorage = storage if storage is not None else InMemorySessionStorage()
        self._live: dict[str, Session] = {}
        # Sessions whose stream was dropped for not reading: id -> (owner, when), so their POSTs get
        # a clear 410 for a while instead of a bare 404. Bounded and short-lived.
        self._dropped: OrderedDict[str, tuple[SessionOwner | None, float]] = OrderedDict()
        self._on_count = on_count  # (transport, +1/-1): keeps the sessions-active gauge right
        self._last_sweep = time.monotonic()

    def __len__(self) -> int:
        return len(self.storage)

    def __iter__(self) -> Iterator[Session]:
        return iter([self._session(record) for record in self.storage.records()])

    # -- lifecycle ---------------------------------------------------------------------------------
    def create(self, transport: str, protocol_version: str, owner: Principal | None = None) -> Session:
        now = time.monotonic()
        if len(self.storage) >= self.max_sessions or now - self._last_sweep > SWEEP_EVERY_SECONDS:
            self.sweep(now)
        if len(self.storage) >= self.max_sessions:
            self._evict_one()
        record = SessionRecord(
            id=secrets.token_urlsafe(24),
            transport=transport,
            protocol_version=protocol_version,
            created=now,
            last_seen=now,
            owner=SessionOwner.of(owner) if owner else None,
        )
        self.storage.add(record)
        session = self._live[record.id] = Session(record)
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
        record = self.storage.get(session_id)
        if record is None:
            return None
        session = self._session(record)
        now = time.monotonic()
        if self._expired(session, now):
            self.remove(session)
            return None
        if principal is not None and not record.admits(principal):
            return None
        record.last_seen = now
        return session

    def save(self, session: Session) -> None:
        """Store what the protocol changed in the session's record while answering a message."""
        if not session.closed:
            self.storage.save(session.record)

    def remove(self, session: Session) -> None:
        if self.storage.remove(session.id) is not None and self._on_count:
            self._on_count(session.record.transport, -1)
        self._live.pop(session.id, None)
        session.close()

    def drop(self, session: Session) -> None:
        """Remove a session whose client stopped reading its stream, remembering it for a while."""
        self.remove(session)
        now = time.monotonic()
        self._dropped[session.id] = (session.record.owner, now)
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

    def sweep(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._last_sweep = now
        expired = [session for session in self if self._expired(session, now)]
        for session in expired:
            self.remove(session)
        return len(expired)

    def close_all(self) -> None:
        for session in list(self):
            self.remove(session)

    # -- metrics -----------------------------------------------------------------------------------
    def counts_by_state(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """{(transport, "active" | "idle"): n} over every open session, for the sessions gauge.

        Read at scrape time, possibly from another thread: it only reads snapshots of the tables.
        """
        now = time.monotonic() if now is None else now
        live = dict(self._live)
        counts: dict[tuple[str, str], int] = {}
        for record in self.storage.records():
            session = live.get(record.id)
            in_use = session is not None and session.in_use
            active = in_use or now - record.last_seen <= self.active_seconds
            key = (record.transport, "active" if active else "idle")
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- SessionNotifier: how the protocol reaches open sessions ---------------------------------------
    def notify_all(self, message: dict[str, Any]) -> int:
        return sum(1 for session in list(self._live.values()) if session.send(message))

    def notify_subscribers(self, uri: str, message: dict[str, Any]) -> int:
        return sum(
            1 for session in list(self._live.values()) if uri in session.record.subscriptions and session.send(message)
        )

    def subscribed_uris(self) -> set[str]:
        return {
            uri for session in list(self._live.values()) if not session.closed for uri in session.record.subscriptions
        }

    # -- internals ---------------------------------------------------------------------------------
    def _session(self, record: SessionRecord) -> Session:
        # A record this process has not served yet (a shared store) gets its live part on first use.
        session = self._live.get(record.id)
        if session is None:
            session = self._live[record.id] = Session(record)
        return session

    def _expired(self, session: Session, now: float) -> bool:
        return not session.in_use and now - session.record.last_seen > self.idle_seconds

    def _evict_one(self) -> None:
        # Full: forget the least recently used session that has no open stream and no running call.
        idle = [session for session in self if not session.in_use]
        if not idle:
            raise TooManySessions("too many open MCP sessions")
        self.remove(min(idle, key=lambda session: session.record.last_seen))
