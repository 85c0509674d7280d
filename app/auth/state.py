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
from ..state.backend import POSTGRES_THREADS, storage_backend
from .cimd import CimdFetcher
from .keyring import KEY_RELOAD_SECONDS, UNKNOWN_KID_RELOAD_SECONDS, live_signing_keys
from .oidc import UpstreamOidc
from .params import is_cimd_client_id
from .records import Client
from .signing import SigningKeys, token_kid
from .statekey import StateKey, load_state_key
from .store import AsyncAuthStore

if TYPE_CHECKING:
    from ..obs.metrics import Metrics
    from ..settings import Settings

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
    _unknown_kid_reload_at: float = float("-inf")  # monotonic time of the last reload a token's kid caused
    _key_reloader: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics) -> AuthState:
        return cls(
            settings=settings,
            metrics=metrics,
            store=AsyncAuthStore(storage_backend(settings), threads=POSTGRES_THREADS),
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

    async def close(self) -> None:
        if self._key_reloader is not None:
            self._key_reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_reloader
            self._key_reloader = None
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
