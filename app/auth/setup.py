"""setup_auth(app): the OAuth 2.1 authorization server and the bearer check, wired into the service.

It adds the discovery documents, /register, /authorize (login and consent pages), /token,
/revoke (each also under /chatgpt, the second issuer), the JWKS and the optional upstream OpenID Connect
callback; opens the state store on start-up (cleanup_ctx); and sets `app[keys.AUTHENTICATOR]`, which the
MCP transports call on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from .. import keys
from ..cors import PUBLIC, allow_cors
from ..state.authredis import revocations_channel
from ..state.redisstate import RedisUnavailable
from .authorize import authorize_get, authorize_post
from .bearer import Authenticator
from .metadata import add_metadata_routes
from .pages import error_page
from .params import NO_STORE, REALMS
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_SECONDS = "2"  # Redis comes back by itself (RedisState's monitor pings every 0.25 s while down)


def while_shared_state_is_down(handler: Handler, *, page: bool) -> Handler:
    """The endpoint answers clearly while Redis (sign-ins, codes, throttling) is unreachable: a page for
    browsers, RFC 6749-style `temporarily_unavailable` JSON for programs, both 503 with Retry-After."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RedisUnavailable as exc:
            log.warning("auth.shared_state_unavailable", path=request.path)
            response: web.Response
            if page:
                response = error_page(
                    "Temporarily unavailable", "Sign-in is unavailable for a moment. Try again in a few seconds.", 503
                )
            else:
                body = {"error": "temporarily_unavailable", "error_description": str(exc)}
                response = web.json_response(body, status=503, headers=NO_STORE)
            response.headers["Retry-After"] = RETRY_AFTER_SECONDS
            return response

    return guarded


def setup_auth(app: web.Application) -> None:
    redis = app.get(keys.REDIS)
    state = AuthState.build(app[keys.SETTINGS], app[keys.METRICS], redis)
    app[keys.AUTH_STORE] = state
    app[keys.AUTHENTICATOR] = Authenticator()
    if redis is not None and state.bearer_cache is not None:
        redis.subscribe(revocations_channel(), state.bearer_cache.drop)  # before start: channels are fixed
    add_metadata_routes(app)
    router = app.router
    for realm in REALMS:
        router.add_get(f"{realm}/authorize", while_shared_state_is_down(authorize_get(realm), page=True))
        router.add_post(f"{realm}/authorize", while_shared_state_is_down(authorize_post(realm), page=True))
        for path, handler in (
            (f"{realm}/token", token_endpoint),
            (f"{realm}/register", register_endpoint),
            (f"{realm}/revoke", revoke_endpoint),
        ):
            router.add_post(path, while_shared_state_is_down(handler, page=False))
            allow_cors(app, path, PUBLIC, methods="POST, OPTIONS")  # browser clients register and sign in
    router.add_get(CALLBACK_PATH, while_shared_state_is_down(upstream_callback, page=True))
    app.cleanup_ctx.append(_auth_ctx)
