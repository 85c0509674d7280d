"""MCP session records in Redis (issue 11), so any worker on any VM serves any session.

Keys, in the `RedisState` namespace, for one endpoint prefix (`scope`):

    session:<scope>:<id>              the record as JSON (SessionRecord.to_json), TTL = SESSION_IDLE_SECONDS
    sessions:<scope>:<transport>      a sorted set of ids by last use (ms since the epoch)
    dropped:<scope>:<id>              its owner, for a while after its stream was dropped (POSTs get 410)

A use is one round trip: GETEX refreshes the TTL and ZADD XX the index, pipelined. The index gives the
count for MAX_SESSIONS and the gauge without SCAN (ZCOUNT over the idle window); expired records leave
it at the next trim (SessionManager.sweep), which is also how the gauge learns they went.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio

from ..mcp.session import SessionOwner, SessionRecord
from .redisstate import RedisState

TRANSPORTS = ("streamable_http", "sse")


class RedisSessionStorage:
    shared = True

    def __init__(self, redis_state: RedisState, scope: str, *, idle_seconds: float) -> None:
        self.redis = redis_state
        self.scope = scope
        self.idle_ms = max(1, int(idle_seconds * 1000))

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
        async def get(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.getex(self._key(session_id), px=self.idle_ms)
            now = self._now_ms()
            for transport in TRANSPORTS:  # XX: only where it is (the id names no transport)
                pipe.zadd(self._index(transport), {session_id: now}, xx=True)
            return await pipe.execute()

        data = (await self.redis.run(get))[0]
        return SessionRecord.from_json(data) if data is not None else None

    async def save(self, record: SessionRecord) -> bool:
        data = record.to_json()
        if data == record.stored:
            return False  # the usual call changes nothing: no write
        # XX: a record removed meanwhile (DELETE on another worker) stays removed.
        written = await self.redis.run(lambda client: client.set(self._key(record.id), data, px=self.idle_ms, xx=True))
        record.stored = data
        return bool(written)

    async def remove(self, session_id: str) -> SessionRecord | None:
        async def remove(client: redis.asyncio.Redis) -> Any:
            pipe = client.pipeline(transaction=False)
            pipe.getdel(self._key(session_id))
            for transport in TRANSPORTS:
                pipe.zrem(self._index(transport), session_id)
            return await pipe.execute()

        data = (await self.redis.run(remove))[0]
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
                for transport in TRANSPORTS:
                    pipe.zadd(self._index(transport), {session_id: now}, xx=True)
            return await pipe.execute()

        await self.redis.run(touch)

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
