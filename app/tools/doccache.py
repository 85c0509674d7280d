"""The ChatGPT fetch cache: documents `search` made, so `fetch` (and the record pages) need no query.

Two buckets: "documents" (tables, rows, samples: re-readable from the database, so losing one costs a
query) and "queries" (ad-hoc query results: the server does not keep their SQL, so they are only here).
Both keep an entry CACHE_TTL_SECONDS.

- `MemoryDocumentCache`: this process's TtlLruCache pair (one process, no REDIS_URL: today's behaviour);
- `RedisDocumentCache`: every worker and node shares the entries, so `search` on one node and `fetch`
  of its ids on another work. While Redis is down it raises `FetchCacheUnavailable`, a ToolError whose
  text tells the model (or the person on a record page) to search again in a moment; never a hang
  (RedisState's 1 s limit, and an immediate refusal while it is known to be down).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ..mcp.jsonrpc import dumps_value
from ..mcp.tools import ToolError
from ..state.redisstate import RedisState, RedisUnavailable
from .cache import TtlLruCache

Bucket = Literal["documents", "queries"]
Document = dict[str, Any]

CACHE_MAX_ENTRIES = 512
QUERY_CACHE_MAX_ENTRIES = 256


class FetchCacheUnavailable(ToolError):
    """The shared fetch cache (Redis) cannot be reached right now."""

    def __init__(self) -> None:
        super().__init__(
            "The shared result cache is unavailable for a moment (Redis is not reachable); search again in a moment.",
            outcome="error",
        )


class DocumentCache(Protocol):
    async def get(self, bucket: Bucket, key: str) -> Document | None: ...
    async def put(self, bucket: Bucket, key: str, document: Document) -> None: ...


class MemoryDocumentCache:
    """Per process, bounded in entries (LRU) and age; query results apart so row documents cannot push
    them out before their time."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.documents: TtlLruCache[Document] = TtlLruCache(CACHE_MAX_ENTRIES, ttl_seconds, clock)
        self.queries: TtlLruCache[Document] = TtlLruCache(QUERY_CACHE_MAX_ENTRIES, ttl_seconds, clock)

    def _bucket(self, bucket: Bucket) -> TtlLruCache[Document]:
        return self.queries if bucket == "queries" else self.documents

    async def get(self, bucket: Bucket, key: str) -> Document | None:
        return self._bucket(bucket).get(key)

    async def put(self, bucket: Bucket, key: str, document: Document) -> None:
        self._bucket(bucket).put(key, document)


class RedisDocumentCache:
    """Shared by every worker: one Redis string per entry (the document's JSON), expiring by itself."""

    def __init__(self, redis_state: RedisState, ttl_seconds: float) -> None:
        self.redis = redis_state
        self.ttl_seconds = ttl_seconds

    def _key(self, bucket: Bucket, key: str) -> str:
        # Keys hold a role name and an id of up to a few KB: a digest keeps Redis keys short and uniform.
        return self.redis.key("fetch", bucket, hashlib.sha256(key.encode()).hexdigest())

    async def get(self, bucket: Bucket, key: str) -> Document | None:
        if self.ttl_seconds <= 0:
            return None
        try:
            raw = await self.redis.run(lambda client: client.get(self._key(bucket, key)))
        except RedisUnavailable:
            raise FetchCacheUnavailable() from None
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None

    async def put(self, bucket: Bucket, key: str, document: Document) -> None:
        if self.ttl_seconds <= 0:
            return
        data = dumps_value(document).encode()
        milliseconds = max(1, int(self.ttl_seconds * 1000))
        try:
            await self.redis.run(lambda client: client.set(self._key(bucket, key), data, px=milliseconds))
        except RedisUnavailable:
            raise FetchCacheUnavailable() from None
