"""Everything the OAuth endpoints and the bearer check share at run time (one object per app)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from .. import keys
from ..state.backend import POSTGRES_THREADS, storage_backend
from .cimd import CimdFetcher
from .oidc import UpstreamOidc
from .params import is_cimd_client_id
from .records import Client
from .signing import SigningKeys
from .statekey import StateKey, load_state_key, open_signing_keys
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
        rows = await self.store.call(open_signing_keys, self.state_key)
        self.signing = SigningKeys(rows)
        await self.cimd.start()
        if self.oidc is not None:
            await self.oidc.start()

    async def close(self) -> None:
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
