"""MCP session records in Redis (issue 11), so any worker on any VM serves any session.

Keys, in the `RedisState` namespace, for one endpoint prefix (`scope`):

    session:<scope>:<id>              the record as JSON (SessionRecord.to_json), TTL = SESSION_IDLE_SECONDS
    sessions:<scope>:<transport>      a sorted set of ids by last use (ms since the epoch)
    dropped:<scope>:<id>              its owner, for a while after its stream was dropped (POSTs get 410)

A use is one round trip: GETEX refreshes the TTL and ZADD XX the index, pipelined. The index gives the
count for MAX_SESSIONS and the gauge without SCAN (ZCOUNT over the idle window); expired records leave
it at the next trim (SessionManager.sweep), which is also how the gauge learns they went.

Repeated calls skip even that (issue 10): a worker keeps the records of handshaken sessions it read for
`touch_seconds` and reuses them without asking Redis, so the TTL and the index are refreshed at most
once per `touch_seconds` per session per worker (idle expiry and MAX_SESSIONS are right to within that).
It is safe because every change (a written save, a remove) is published, awaited, on `changed:<scope>`
before the caller answers, and every other worker drops its copy at once; so the cache answers only
while the listener is connected under the subscription (`listen_generation`) the entry was filled
under: a reconnect may have missed messages. A record still in its handshake (not `initialized`) is
always read fresh, since another worker may be changing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio

from ..mcp.session import SessionOwner, SessionRecord
from .redisstate import RedisState

TRANSPORTS = ("streamable_http", "sse")
# How long a worker reuses a record it read (and so how often it refreshes TTL and index per session).
TOUCH_SECONDS = 2.0
CACHED_RECORDS_MAX = 10_000


@dataclass(frozen=True)
class CachedRecord:
    data: bytes  # the JSON Redis held: every use gets its own SessionRecord, as from Redis
    fetched: float  # monotonic time of the GETEX that read it (and refreshed TTL and index)
    listen_generation: int  # RedisState.listen_generation when it was read


class RedisSessionStorage:
    shared = True

    def __init__(
        self,
        redis_state: RedisState,
        scope: str,
        *,
        idle_seconds: float,
        touch_seconds: float = TOUCH_SECONDS,
        max_cached: int = CACHED_RECORDS_MAX,
    ) -> None:
        self.redis = redis_state
        self.scope = scope
        self.idle_ms = max(1, int(idle_seconds * 1000))
        self.touch_seconds = touch_seconds
        self.max_cached = max_cached
        self._cached: dict[str, CachedRecord] = {}
        # Counts changes seen (here or announced): a read under way while one happened is not kept.
        self._changes = 0
        self.changes_channel = redis_state.key("changed", scope)
        redis_state.subscribe(self.changes_channel, self._on_changed)

    # -- the per-worker cache ----------------------------------------------------------------------
    @property
    def _reuse_seconds(self) -> float:
        # Well under the idle time, whatever it is (tests shorten idle_ms on a running store).
        return min(self.touch_seconds, self.idle_ms / 10_000)

    def _cache_usable(self, generation: int) -> bool:
        return self.redis.available and self.redis.listening and self.redis.listen_generation == generation

    def _cached_record(self, session_id: str) -> SessionRecord | None:
        entry = self._cached.get(session_id)
        if entry is None:
            return None
        if self._cache_usable(entry.listen_generation) and time.monotonic() - entry.fetched < self._reuse_seconds:
            return SessionRecord.from_json(entry.data)
        del self._cached[session_id]
        return None

    def _remember(self, session_id: str, data: bytes, changes: int, generation: int) -> None:
        if changes != self._changes or self._reuse_seconds <= 0 or not self._cache_usable(generation):
            return  # changed meanwhile, or the listener reconnected: a message may have been missed
        self._cached.pop(session_id, None)
        while len(self._cached) >= self.max_cached:  # oldest read first (entries are re-inserted on reads)
            del self._cached[next(iter(self._cached))]
        self._cached[session_id] = CachedRecord(data, time.monotonic(), generation)

    def _forget(self, session_id: str) -> None:
        self._changes += 1
        self._cached.pop(session_id, None)

    def cached(self) -> int:
        """How many records this worker holds (tests, diagnostics)."""
        return len(self._cached)

    async def _announce(self, session_id: str) -> None:
        """Tell every other worker to drop its copy; awaited, so it is out before the caller answers."""
        message = orjson.dumps({"id": session_id, "from": self.redis.worker_id})
        await self.redis.publish(self.changes_channel, message)

    def _on_changed(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            self._changes += 1
            self._cached.clear()  # unreadable: forget everything rather than guess
            return
        if message.get("from") != self.redis.worker_id:
            self._forget(message["id"])

    def _key(self, session_id: str) -> str:
        return self.redis.key("session", self.scope, session_id)

    def _index(self, transport: str) -> str:
        return self.redis.key("sessions", self.scope, transport)

    @staticmethod
    def _now_ms() -> int:
        return int(time.time() * 1000)

    async def add(self, record: SessionRecord) -> None:
        data = record.to_json()

        async def add(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.set(self._key(record.id), data, px=self.idle_ms)
            pipe.zadd(self._index(record.transport), {record.id: self._now_ms()})
            return await pipe.execute()

        await self.redis.run(add)
        record.stored = data

    async def get(self, session_id: str) -> SessionRecord | None:
        cached = self._cached_record(session_id)
        if cached is not None:
            return cached
        changes, generation = self._changes, self.redis.listen_generation

        async def get(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.getex(self._key(session_id), px=self.idle_ms)
            self._mark_used(pipe, session_id, self._now_ms())
            return await pipe.execute()

        data = (await self.redis.run(get))[0]
        if data is None:
            self._cached.pop(session_id, None)
            return None
        record = SessionRecord.from_json(data)
        if record.initialized:  # handshake over: other workers change it only with an announcement
            self._remember(session_id, data, changes, generation)
        return record

    async def save(self, record: SessionRecord) -> bool:
        data = record.to_json()
        if data == record.stored:
            return False  # the usual call changes nothing: no write
        self._forget(record.id)  # also when Redis fails below: the copy here may no longer be what it holds
        # XX: a record removed meanwhile (DELETE on another worker) stays removed.
        written = await self.redis.run(lambda client: client.set(self._key(record.id), data, px=self.idle_ms, xx=True))
        record.stored = data
        if written:
            await self._announce(record.id)
        return bool(written)

    async def remove(self, session_id: str) -> SessionRecord | None:
        self._forget(session_id)

        async def remove(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.getdel(self._key(session_id))
            for transport in TRANSPORTS:
                pipe.zrem(self._index(transport), session_id)
            return await pipe.execute()

        data = (await self.redis.run(remove))[0]
        await self._announce(session_id)  # DELETE here ends it on every worker at once
        return SessionRecord.from_json(data) if data is not None else None

    async def records(self) -> list[SessionRecord]:
        """Every live record, least recently used first (eviction when full; not on the hot path)."""
        cutoff = self._now_ms() - self.idle_ms

        async def ids(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            for transport in TRANSPORTS:
                pipe.zrangebyscore(self._index(transport), cutoff, "+inf", withscores=True)
            return await pipe.execute()

        scored = sorted(
            ((score, member.decode()) for members in await self.redis.run(ids) for member, score in members),
        )
        if not scored:
            return []
        keys = [self._key(session_id) for _, session_id in scored]
        values = await self.redis.run(lambda client: client.mget(keys))
        now_ms, now = self._now_ms(), time.monotonic()
        return [
            SessionRecord.from_json(data, last_seen=now - (now_ms - score) / 1000)
            for (score, _), data in zip(scored, values, strict=True)
            if data is not None
        ]

    async def count(self) -> int:
        cutoff = self._now_ms() - self.idle_ms

        async def count(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            for transport in TRANSPORTS:
                pipe.zcount(self._index(transport), cutoff, "+inf")
            return await pipe.execute()

        return sum(int(n) for n in await self.redis.run(count))

    async def touch(self, session_ids: list[str]) -> None:
        async def touch(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            now = self._now_ms()
            for session_id in session_ids:
                pipe.pexpire(self._key(session_id), self.idle_ms)
                self._mark_used(pipe, session_id, now)
            return await pipe.execute()

        await self.redis.run(touch)

    def _mark_used(self, pipe: Any, session_id: str, now_ms: int) -> None:
        """Queue the last-use update of a session in its transport's index (XX: only in the index that holds
        it, since the id names no transport)."""
        for transport in TRANSPORTS:
            pipe.zadd(self._index(transport), {session_id: now_ms}, xx=True)

    async def trim(self) -> dict[str, int]:
        cutoff = self._now_ms() - self.idle_ms

        async def trim(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            for transport in TRANSPORTS:
                pipe.zremrangebyscore(self._index(transport), "-inf", f"({cutoff}")
            return await pipe.execute()

        # Only the worker whose trim removed an entry counts it, so the gauges of all workers add up.
        return dict(zip(TRANSPORTS, (int(n) for n in await self.redis.run(trim)), strict=True))

    async def counts(self, active_seconds: float) -> dict[tuple[str, str], int]:
        now = self._now_ms()
        idle_from, active_from = now - self.idle_ms, now - int(active_seconds * 1000)

        async def counts(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            for transport in TRANSPORTS:
                pipe.zcount(self._index(transport), active_from, "+inf")
                pipe.zcount(self._index(transport), idle_from, f"({active_from}")
            return await pipe.execute()

        values = iter(await self.redis.run(counts))
        result: dict[tuple[str, str], int] = {}
        for transport in TRANSPORTS:
            for state in ("active", "idle"):
                n = int(next(values))
                if n:
                    result[(transport, state)] = n
        return result

    async def remember_dropped(self, session_id: str, owner: SessionOwner | None, seconds: float) -> None:
        data = orjson.dumps([owner.subject, owner.client_id] if owner is not None else None)
        key = self.redis.key("dropped", self.scope, session_id)
        await self.redis.run(lambda client: client.set(key, data, px=int(seconds * 1000)))

    async def dropped(self, session_id: str) -> tuple[bool, SessionOwner | None]:
        data = await self.redis.run(lambda client: client.get(self.redis.key("dropped", self.scope, session_id)))
        if data is None:
            return False, None
        owner = orjson.loads(data)
        return True, (SessionOwner(str(owner[0]), owner[1]) if owner else None)
