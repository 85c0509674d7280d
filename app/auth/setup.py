"""setup_auth(app): the OAuth 2.1 authorization server and the bearer check, wired into the service.

It adds the discovery documents, /register, /authorize (login and consent pages), /token,
/revoke (each also under /chatgpt, the second issuer), the JWKS and the optional upstream OpenID Connect
callback; opens the state store on start-up (cleanup_ctx); and sets `app[keys.AUTHENTICATOR]`, which the
MCP transports call on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .. import keys
from ..cors import PUBLIC, allow_cors
from .authorize import authorize_get, authorize_post
from .bearer import Authenticator
from .metadata import add_metadata_routes
from .params import REALMS
from .register import register_endpoint
from .revoke import revoke_endpoint
from .state import AuthState
from .token import token_endpoint
from .upstream import CALLBACK_PATH, upstream_callback

log = structlog.get_logger(__name__)

CLEANUP_INTERVAL_SECONDS = 600.0


async def _periodic_cleanup(state: AuthState) -> None:
    while True:
        await asyncio.sleep(CLEANUP_INTERVAL_SECONDS)
        try:
            await state.store.call(lambda s: s.cleanup(unused_client_seconds=state.settings.unused_client_seconds))
        except Exception:  # keep cleaning next time; a failed sweep loses nothing
            log.exception("auth.cleanup_failed")


def _warn_if_open(state: AuthState) -> None:
    settings = state.settings
    if settings.allow_unauth_methods:
        log.warning(
            "auth.UNAUTHENTICATED_ACCESS_ENABLED",
            detail="ALLOW_UNAUTH_METHODS is on: MCP methods other than tools/call work WITHOUT a token. "
            "Testing only; never in production.",
        )
    if settings.allow_unauth_tools_call:
        log.warning(
            "auth.UNAUTHENTICATED_ACCESS_ENABLED",
            detail="ALLOW_UNAUTH_TOOLS_CALL is on: anyone who can reach this server can run queries "
            "WITHOUT signing in. Testing only; never in production.",
        )


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    state: AuthState = app[keys.AUTH_STORE]
    await state.start()
    _warn_if_open(state)
    cleanup = asyncio.create_task(_periodic_cleanup(state), name="auth-cleanup")
    try:
        yield
    finally:
        cleanup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleanup
        await state.close()


def setup_auth(app: web.Application) -> None:
    state = AuthState.build(app[keys.SETTINGS], app[keys.METRICS])
    app[keys.AUTH_STORE] = state
    app[keys.AUTHENTICATOR] = Authenticator()
    add_metadata_routes(app)
    router = app.router
    for realm in REALMS:
        router.add_get(f"{realm}/authorize", authorize_get(realm))
        router.add_post(f"{realm}/authorize", authorize_post(realm))
        for path, handler in (
            (f"{realm}/token", token_endpoint),
            (f"{realm}/register", register_endpoint),
            (f"{realm}/revoke", revoke_endpoint),
        ):
            router.add_post(path, handler)
            allow_cors(app, path, PUBLIC, methods="POST, OPTIONS")  # browser clients register and sign in
    router.add_get(CALLBACK_PATH, upstream_callback)
    app.cleanup_ctx.append(_auth_ctx)
