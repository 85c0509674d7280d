"""Everything the OAuth endpoints and the bearer check share at run time (one object per app)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from .. import keys
from ..state.authredis import BEARER_CACHE_WATCH_SECONDS, BearerCache, RedisAuthStorage
from ..state.backend import POSTGRES_THREADS, storage_backend
from .cimd import CimdFetcher
from .keyring import KEY_RELOAD_SECONDS, UNKNOWN_KID_RELOAD_SECONDS, live_signing_keys
from .oidc import UpstreamOidc
from .params import is_cimd_client_id
from .records import BearerRecord, Client
from .signing import SigningKeys, token_kid
from .statekey import StateKey, load_state_key
from .store import AsyncAuthStore, AuthStore, StorageBackend

if TYPE_CHECKING:
    from ..obs.metrics import Metrics
    from ..settings import Settings
    from ..state.redisstate import RedisState

log = structlog.get_logger(__name__)


@dataclass
class AuthState:
    settings: Settings
    metrics: Metrics
    store: AsyncAuthStore
    cimd: CimdFetcher
    oidc: UpstreamOidc | None = None
    signing: SigningKeys | None = None
    state_key: StateKey | None = None
    # Keys are re-read this often, so a rotation on any node (or by `mssql-mcp keys`) reaches every node.
    key_reload_seconds: float = KEY_RELOAD_SECONDS
    # With REDIS_URL: bearer lookups reused for a few seconds, dropped by every revocation broadcast.
    bearer_cache: BearerCache | None = None
    _unknown_kid_reload_at: float = float("-inf")  # monotonic time of the last reload a token's kid caused
    _key_reloader: asyncio.Task[None] | None = field(default=None, repr=False)
    _cache_watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics, redis: RedisState | None = None) -> AuthState:
        """Without `redis` the store is the durable backend alone (today's one-process behaviour); with it
        sign-ins, codes and throttling live in Redis and revocations are broadcast (app.state.authredis)."""
        durable = storage_backend(settings)
        threads = 1 if isinstance(durable, AuthStore) else POSTGRES_THREADS  # SQLite: one thread, always
        backend: StorageBackend = durable
        bearer_cache = None
        if redis is not None:
            bearer_cache = BearerCache(redis)
            backend = RedisAuthStorage(durable, redis, bearer_cache)
        return cls(
            settings=settings,
            metrics=metrics,
            store=AsyncAuthStore(backend, threads=threads),
            bearer_cache=bearer_cache,
            cimd=CimdFetcher(
                allow_private=settings.cimd_allow_private,
                allowed_hosts=tuple(settings.allowed_redirect_hosts),
                allowed_schemes=tuple(settings.allowed_redirect_schemes),
            ),
            oidc=UpstreamOidc.from_settings(settings),
        )

    async def start(self) -> None:
        self.state_key = load_state_key(self.settings)
        await self.store.open()
        await self.reload_keys()
        self._key_reloader = asyncio.create_task(self._reload_keys_periodically())
        if self.bearer_cache is not None:
            self._cache_watcher = asyncio.create_task(self._watch_bearer_cache(self.bearer_cache))
        await self.cimd.start()
        if self.oidc is not None:
            await self.oidc.start()

    async def reload_keys(self) -> None:
        """Re-read the signing keys (retiring those whose tokens have all expired)."""
        state_key, ttl = self.state_key, float(self.settings.access_token_ttl_seconds)
        if state_key is None:
            raise RuntimeError("auth state not started")
        rows = await self.store.call(lambda s: live_signing_keys(s, state_key, ttl))
        current = self.signing
        if current is None or current.schedule_id != SigningKeys.schedule_of(rows):
            self.signing = SigningKeys(rows)
            if current is not None:
                log.info("auth.signing_keys_reloaded", kids=sorted(self.signing.kids))

    async def _reload_keys_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.key_reload_seconds)
            try:
                await self.reload_keys()
            except Exception as exc:  # the store is away for now: keep the keys we have, try again later
                log.warning("auth.signing_keys_reload_failed", error=type(exc).__name__)

    async def keys_for(self, token: str) -> SigningKeys:
        """The keys to check `token` with: re-read at once (at most once a second) when it names a kid this
        node has not seen, such as a key rotated in on another node since the last reload."""
        keys = self.keys
        kid = token_kid(token)
        now = time.monotonic()
        if kid is None or kid in keys.kids or now - self._unknown_kid_reload_at < UNKNOWN_KID_RELOAD_SECONDS:
            return keys
        self._unknown_kid_reload_at = now
        try:
            await self.reload_keys()
        except Exception as exc:  # as above: the token is then judged with the keys we have
            log.warning("auth.signing_keys_reload_failed", error=type(exc).__name__)
        return self.keys

    @staticmethod
    async def _watch_bearer_cache(cache: BearerCache) -> None:
        """Forget every cached lookup as soon as the revocation listener is (even briefly) not connected:
        a message may have been missed while it reconnected."""
        while True:
            await asyncio.sleep(BEARER_CACHE_WATCH_SECONDS)
            if not cache.usable and len(cache):
                cache.clear()

    async def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None:
        """The bearer check's one read, from the cache when there is one and it may answer."""
        cache = self.bearer_cache
        if cache is None:
            return await self.store.bearer_lookup(user_id, jti, family_id)
        key = (user_id, jti, family_id or "")
        cached = cache.get(key)
        if cached is not None:
            return cached
        generation = cache.generation  # a revocation while we read makes put() keep nothing
        record = await self.store.bearer_lookup(user_id, jti, family_id)
        if record is not None:
            cache.put(key, record, generation)
        return record

    async def close(self) -> None:
        for task in (self._key_reloader, self._cache_watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._key_reloader = self._cache_watcher = None
        if self.oidc is not None:
            await self.oidc.close()
        await self.cimd.close()
        await self.store.close()

    @property
    def keys(self) -> SigningKeys:
        if self.signing is None:
            raise RuntimeError("auth state not started")
        return self.signing

    def _unused_and_expired(self, client: Client) -> bool:
        """A registration never used for an authorization in time: gone even before the cleanup sweep."""
        return client.last_used_at is None and client.created_at <= time.time() - self.settings.unused_client_seconds

    async def find_client(self, client_id: str, *, refresh_metadata: bool = False) -> Client | None:
        """A registered client, or a Client ID Metadata Document client (fetched when `refresh_metadata`
        is set and the stored copy is stale or missing). Raises CimdError when a document is unusable."""
        if not client_id or len(client_id) > 2000:
            return None
        stored = await self.store.call(lambda s: s.get_client(client_id))
        if not is_cimd_client_id(client_id):
            if stored is None or stored.kind != "dcr" or self._unused_and_expired(stored):
                return None
            return stored
        if not refresh_metadata:
            return stored
        fresh = self.cimd.cached(client_id)
        if fresh is None:
            fresh = await self.cimd.fetch(client_id)
            created_at = stored.created_at if stored is not None else time.time()
            await self.store.call(lambda s: s.save_client(replace(fresh, created_at=created_at)))
        return await self.store.call(lambda s: s.get_client(client_id))


def auth_state(request: web.Request) -> AuthState:
    return request.app[keys.AUTH_STORE]
