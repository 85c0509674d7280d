"""The transport-level session manager: it creates, finds (bound to user + client), drops, sweeps and
counts the MCP sessions of one endpoint prefix, and owns their streams and running calls.

Like the official SDK's `StreamableHTTPSessionManager`, the protocol core (`McpServer`) keeps no session
table: a transport looks the session up here, hands its record to the protocol with the request, and the
protocol reaches open sessions (resources/list_changed, resources/updated) through `SessionNotifier`,
which the manager implements.

Storage sits behind `SessionStorage` (records only, see `app.mcp.session.SessionRecord`): in this process
by default, or in Redis with REDIS_URL (`app.state.sessions.RedisSessionStorage`), so any worker serves
any session. What cannot leave a process (asyncio tasks, outboxes) stays in the manager's `Session`
objects, and the `Relay` reaches it from other workers: a legacy SSE POST goes to the worker holding the
event stream, cancel and close are broadcast, a changed record and notifications for a session go to the
worker holding its GET stream, and a client's answer to a server question goes to every worker.

Known limit of the shared store: a record is written whole, so two workers changing the same session at
the same moment (a subscribe on one, a setLevel on another) keep the later write only. Clients change a
session rarely and one message at a time, so this is accepted rather than paid for with a hash per field.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from ...core import Principal
from ...state.redisstate import RedisUnavailable
from ..jsonrpc import RequestId
from ..session import SessionOwner, SessionRecord, TooManySessions
from .outbox import Outbox
from .relay import Relay

log = structlog.get_logger(__name__)

DROPPED_REMEMBERED = 1000
DROPPED_REMEMBER_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 60.0


class SessionStorage(Protocol):
    """Where session records live: in this process (the default) or shared by every worker (Redis).

    Async because a shared store is a network round trip away; the in-memory one never suspends. A
    shared store may raise `RedisUnavailable` from any method (the transports answer 503).
    """

    # True when other processes see the same records: every get() returns a fresh copy, and idle expiry
    # is the store's (a key TTL) rather than the manager's sweep.
    shared: bool

    async def add(self, record: SessionRecord) -> None: ...

    async def get(self, session_id: str) -> SessionRecord | None:
        """The record, and it counts as used now (a shared store refreshes its expiry)."""
        ...

    async def save(self, record: SessionRecord) -> bool:
        """Persist changes the protocol made to a record (version, capabilities, log level, subscriptions);
        True if something was written (never re-creates a record removed meanwhile)."""
        ...

    async def remove(self, session_id: str) -> SessionRecord | None: ...

    async def records(self) -> list[SessionRecord]:
        """Every record (sweeps, eviction, shutdown), least recently used first."""
        ...

    async def count(self) -> int: ...


@runtime_checkable
class SharedSessionStorage(SessionStorage, Protocol):
    """A store other workers share (app.state.sessions.RedisSessionStorage): records expire there."""

    async def touch(self, session_ids: list[str]) -> None:
        """Used now: sessions in use here (open stream, running call) must not expire while they are."""
        ...

    async def trim(self) -> dict[str, int]:
        """Let go of the index entries of expired records; how many per transport."""
        ...

    async def counts(self, active_seconds: float) -> dict[tuple[str, str], int]:
        """{(transport, "active" | "idle"): n}, for the sessions gauge."""
        ...

    async def remember_dropped(self, session_id: str, owner: SessionOwner | None, seconds: float) -> None:
        """A session whose stream was dropped for not reading: every worker answers its POSTs 410."""
        ...

    async def dropped(self, session_id: str) -> tuple[bool, SessionOwner | None]:
        """(dropped recently, its owner)."""
        ...


class InMemorySessionStorage:
    """Records in a dict: one process, and the records are the very objects the protocol changes."""

    shared = False

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}

    async def add(self, record: SessionRecord) -> None:
        self._records[record.id] = record

    async def get(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def save(self, record: SessionRecord) -> bool:
        return False  # the stored object is the one that changed

    async def remove(self, session_id: str) -> SessionRecord | None:
        return self._records.pop(session_id, None)

    async def records(self) -> list[SessionRecord]:
        return sorted(self._records.values(), key=lambda record: record.last_seen)

    async def count(self) -> int:
        return len(self._records)

    def __len__(self) -> int:
        return len(self._records)


@dataclass(eq=False)
class Session:
    """A session as this process serves it: the stored record plus what only lives here."""

    record: SessionRecord
    # Running calls by request id, so notifications/cancelled (and closing the session) can stop them.
    inflight: dict[RequestId, asyncio.Future[Any]] = field(default_factory=dict)
    # Server->client stream: the GET stream (Streamable HTTP) or the event stream (legacy SSE).
    stream: Outbox | None = None
    closed: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a message on the session's stream; False when it has none open (or it overflowed)."""
        return self.stream is not None and not self.closed and self.stream.put(message)

    def track(self, request_id: RequestId | None, task: asyncio.Future[Any]) -> None:
        if request_id is not None:
            self.inflight[request_id] = task

    def untrack(self, request_id: RequestId | None, task: asyncio.Future[Any]) -> None:
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
    """Bounded, idle-expiring sessions of one MCP endpoint prefix (both transports share it).

    With a shared storage and a `relay` (Redis), any worker serves any session: the records come from
    the store on every use (which may reuse its copy for a moment: `RedisSessionStorage`), and the relay
    reaches what only another worker holds (its stream, its running calls). `_live` is then a cache of
    this worker's part of the sessions it served.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 10_000,
        idle_seconds: float = 3600.0,
        active_seconds: float = 300.0,
        on_count: Callable[[str, int], None] | None = None,
        storage: SessionStorage | None = None,
        relay: Relay | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        # Used this recently (or streaming, or running a call) counts as active; otherwise the session is
        # idle: kept until idle_seconds in case its client comes back, but probably abandoned.
        self.active_seconds = active_seconds
        self.storage: SessionStorage = storage if storage is not None else InMemorySessionStorage()
        # The in-memory store holds the very records the protocol changes: saving one has nothing to do.
        self._saved_in_place = type(self.storage) is InMemorySessionStorage
        self.relay = relay
        self.worker_id = relay.worker_id if relay is not None else None
        self._live: dict[str, Session] = {}
        # Sessions whose stream was dropped for not reading: id -> (owner, when), so their POSTs get
        # a clear 410 for a while instead of a bare 404. Bounded and short-lived.
        self._dropped: OrderedDict[str, tuple[SessionOwner | None, float]] = OrderedDict()
        self._on_count = on_count  # (transport, +1/-1): keeps the sessions-active gauge right
        self._last_sweep = time.monotonic()
        # A shared store's counts by (transport, state), refreshed by maintain() (the gauge reads it).
        self._shared_counts: dict[tuple[str, str], int] = {}
        if relay is not None:
            relay.on("close", self._on_close)
            relay.on("cancel", self._on_cancel)
            relay.on("record", self._on_record)
            relay.on("emit", self._on_emit)

    def __len__(self) -> int:
        """Sessions this process holds (with the in-memory store: every session)."""
        return len(self._live)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._live.values()))

    # -- lifecycle ---------------------------------------------------------------------------------
    async def create(self, transport: str, protocol_version: str, owner: Principal | None = None) -> Session:
        await self.make_room()
        session = self.new(transport, protocol_version, owner)
        await self.add(session)
        return session

    async def make_room(self) -> None:
        """Sweep now and then, and evict the least recently used session when full (TooManySessions if
        every one is in use)."""
        now = time.monotonic()
        if await self.storage.count() >= self.max_sessions or now - self._last_sweep > SWEEP_EVERY_SECONDS:
            await self.sweep(now)
        if await self.storage.count() >= self.max_sessions:
            await self._evict_one()

    def new(self, transport: str, protocol_version: str, owner: Principal | None = None) -> Session:
        """A session not stored yet (add() stores it): initialize fills its record in first."""
        now = time.monotonic()
        record = SessionRecord(
            id=secrets.token_urlsafe(24),
            transport=transport,
            protocol_version=protocol_version,
            created=now,
            last_seen=now,
            owner=SessionOwner.of(owner) if owner else None,
        )
        return Session(record)

    async def add(self, session: Session) -> None:
        await self.storage.add(session.record)
        self._live[session.id] = session
        if self._on_count:
            self._on_count(session.record.transport, 1)

    async def get(self, session_id: str | None, principal: Principal | None = None) -> Session | None:
        """The live session with this id; with `principal`, only if that caller may use it.

        Another user's session is None, exactly like an unknown id (its existence is not revealed),
        and such a request does not keep it alive.
        """
        if not session_id:
            return None
        record = await self.storage.get(session_id)
        if record is None:
            if self.storage.shared:
                self._forget(session_id)  # removed by another worker, or expired
            return None
        session = self._session(record)
        now = time.monotonic()
        if self._expired(session, now):
            await self.remove(session)
            return None
        if principal is not None and not record.admits(principal):
            return None
        record.last_seen = now
        return session

    def local(self, session_id: str) -> Session | None:
        """This worker's part of a session, without asking the store (relayed messages)."""
        return self._live.get(session_id)

    async def save(self, session: Session) -> None:
        """Store what the protocol changed in the session's record while answering a message."""
        if session.closed or self._saved_in_place:
            return
        written = await self.storage.save(session.record)
        worker = session.record.stream_worker
        if not written or self.relay is None or worker is None or worker == self.worker_id:
            return
        # The stream's worker answers resources notifications from its copy: keep it current.
        if not await self.relay.send(worker, "record", record=session.record.to_json().decode()):
            session.record.stream_worker = None  # that worker is gone, and its stream with it
            await self.storage.save(session.record)

    async def save_quietly(self, session: Session) -> None:
        """save() after an answer went out: Redis going down then is logged, not answered."""
        if self._saved_in_place:
            return
        try:
            await self.save(session)
        except RedisUnavailable:
            log.warning("mcp_session_not_saved", reason="redis_unavailable")

    async def remove(self, session: Session) -> None:
        self._live.pop(session.id, None)
        session.close()
        if session.id in self._dropped and isinstance(self.storage, SharedSessionStorage):
            owner = self._dropped[session.id][0]
            await self.storage.remember_dropped(session.id, owner, DROPPED_REMEMBER_SECONDS)
        removed = await self.storage.remove(session.id)
        if removed is not None and self._on_count:
            self._on_count(session.record.transport, -1)
        if self.relay is not None:
            # Its stream or running calls may be on another worker: they end there too.
            await self.relay.broadcast("close", session=session.id)

    async def drop(self, session: Session) -> None:
        """Remove a session whose client stopped reading its stream, remembering it for a while."""
        self.mark_dropped(session)
        await self.remove(session)

    def mark_dropped(self, session: Session) -> None:
        """Remember (for a while, for its owner) that this session's stream was dropped: its POSTs get 410."""
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

    async def was_dropped_anywhere(self, session_id: str | None, principal: Principal) -> bool:
        """was_dropped(), on any worker (a shared store remembers drops too); only asked before a 404."""
        if self.was_dropped(session_id, principal):
            return True
        if not session_id or not isinstance(self.storage, SharedSessionStorage):
            return False
        dropped, owner = await self.storage.dropped(session_id)
        return dropped and (owner is None or owner == SessionOwner.of(principal))

    async def sweep(self, now: float | None = None) -> int:
        """Remove expired sessions; how many. A shared store expires records itself (key TTL): then this
        only forgets this worker's idle copies and counts what the store let go."""
        now = time.monotonic() if now is None else now
        self._last_sweep = now
        if isinstance(self.storage, SharedSessionStorage):
            expired = await self.storage.trim()
            for transport, n in expired.items():
                if n and self._on_count:
                    self._on_count(transport, -n)
            for session in list(self._live.values()):
                if not session.in_use and now - session.record.last_seen > self.active_seconds:
                    self._live.pop(session.id, None)  # a cache entry: the record stays in the store
            return sum(expired.values())
        removed = 0
        for record in await self.storage.records():
            session = self._session(record)
            if self._expired(session, now):
                await self.remove(session)
                removed += 1
        return removed

    async def close_all(self) -> None:
        """Shutdown: end the sessions this process holds. With a shared store, a session whose stream is
        here ends with it; the others live on (another worker serves them)."""
        for session in list(self._live.values()):
            streaming_here = session.stream is not None and not session.stream.closed
            if not self.storage.shared or (session.record.transport == "sse" and streaming_here):
                with contextlib.suppress(RedisUnavailable):  # down: the record expires by itself
                    await self.remove(session)
            else:
                self._forget(session.id)

    # -- a shared store's upkeep -------------------------------------------------------------------------
    async def maintain(self) -> None:
        """One round for a shared store: keep the sessions in use here from expiring (an open stream, a
        running call), let go of expired ones, and refresh the counts the gauge reports."""
        if not isinstance(self.storage, SharedSessionStorage):
            return
        in_use = [session.id for session in list(self._live.values()) if session.in_use]
        if in_use:
            await self.storage.touch(in_use)
        await self.sweep()
        self._shared_counts = await self.storage.counts(self.active_seconds)

    async def maintain_forever(self) -> None:
        every = max(0.5, min(5.0, self.idle_seconds / 3))
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(RedisUnavailable):  # /health says so; the next round tries again
                await self.maintain()

    # -- metrics -----------------------------------------------------------------------------------
    def counts_by_state(self, now: float | None = None) -> dict[tuple[str, str], int]:
        """{(transport, "active" | "idle"): n} over every open session, for the sessions gauge.

        Read at scrape time, possibly from another thread: it only reads snapshots of the tables. With a
        shared store these are the store's counts (every worker reports the same totals: aggregate them
        with max(), not sum()), as of the last maintain() round.
        """
        if self.storage.shared:
            return dict(self._shared_counts)
        now = time.monotonic() if now is None else now
        counts: dict[tuple[str, str], int] = {}
        for session in list(self._live.values()):
            active = session.in_use or now - session.record.last_seen <= self.active_seconds
            key = (session.record.transport, "active" if active else "idle")
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- SessionNotifier: how the protocol reaches open sessions ---------------------------------------
    # Only this worker's streams: every worker watches the catalog itself and tells its own streams, and
    # a record changed elsewhere is pushed to its stream's worker (save()), so subscriptions count there.
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

    # -- reaching another worker's part of a session ----------------------------------------------------
    def canceller(self, session: Session) -> Callable[[Any], bool]:
        """notifications/cancelled: stop the call here, or wherever it runs (broadcast)."""
        if self.relay is None:
            return session.cancel

        def cancel(request_id: Any) -> bool:
            if session.cancel(request_id):
                return True
            if self.relay is not None and isinstance(request_id, int | str):
                self.relay.soon(self.relay.broadcast("cancel", session=session.id, request_id=request_id))
            return False

        return cancel

    def sender(self, session: Session) -> Callable[[dict[str, Any]], bool]:
        """Notifications for the session's stream, relayed when that stream is on another worker."""
        if self.relay is None:
            return session.send

        def send(message: dict[str, Any]) -> bool:
            if session.send(message):
                return True
            worker = session.record.stream_worker
            if self.relay is None or worker is None or worker == self.worker_id or session.closed:
                return False
            self.relay.soon(self.relay.send(worker, "emit", session=session.id, message=message))
            return True

        return send

    def _on_close(self, message: dict[str, Any]) -> None:
        session = self._live.pop(str(message.get("session")), None)
        if session is not None:
            session.close()

    def _on_cancel(self, message: dict[str, Any]) -> None:
        session = self._live.get(str(message.get("session")))
        if session is not None and session.cancel(message.get("request_id")):
            log.info("mcp_request_cancelled", relayed=True)

    def _on_record(self, message: dict[str, Any]) -> None:
        record = SessionRecord.from_json(str(message.get("record", "")).encode())
        session = self._live.get(record.id)
        if session is not None:
            record.last_seen = session.record.last_seen
            self._refresh(session, record)

    def _on_emit(self, message: dict[str, Any]) -> None:
        session = self._live.get(str(message.get("session")))
        if session is not None and isinstance(message.get("message"), dict):
            session.send(message["message"])

    # -- internals ---------------------------------------------------------------------------------
    def _session(self, record: SessionRecord) -> Session:
        # A record this process has not served yet (a shared store) gets its live part on first use;
        # a shared store's fresh copy replaces the one this worker had.
        session = self._live.get(record.id)
        if session is None:
            session = self._live[record.id] = Session(record)
        elif session.record is not record:
            self._refresh(session, record)
        return session

    def _refresh(self, session: Session, record: SessionRecord) -> None:
        # In place: the calls running here hold this object, and see the store's state too. A copy read
        # while this worker was opening the session's stream may not name it yet: this worker knows better
        # (and the next save() writes it back, since it differs from what the store held).
        last_seen = session.record.last_seen
        session.record.update_from(record)
        if self.worker_id is not None and session.stream is not None and not session.stream.closed:
            session.record.stream_worker = self.worker_id
        if record.last_seen < last_seen:
            session.record.last_seen = last_seen

    def _forget(self, session_id: str) -> None:
        session = self._live.pop(session_id, None)
        if session is not None:
            session.close()

    def _expired(self, session: Session, now: float) -> bool:
        return not session.in_use and now - session.record.last_seen > self.idle_seconds

    async def _evict_one(self) -> None:
        # Full: forget the least recently used session that has no open stream and no running call.
        for record in await self.storage.records():
            session = self._live.get(record.id)
            if (session is None or not session.in_use) and (record.stream_worker is None or not self.storage.shared):
                await self.remove(self._session(record))
                return
        raise TooManySessions("too many open MCP sessions")
