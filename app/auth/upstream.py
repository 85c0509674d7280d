"""The browser's side of the optional upstream sign-in (OpenID Connect, app/auth/oidc.py): the login
page's "Sign in with ..." button sends the browser to the provider, and the provider sends it back to
CALLBACK_PATH, where the ID token is checked and the consent page follows.

Register `{PUBLIC_BASE_URL}/oauth/upstream/callback` as the redirect URI at the provider.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from ..urls import base_url
from .consent import continue_after_upstream
from .oidc import UpstreamError, UpstreamOidc
from .pages import error_page
from .params import sha256_hex
from .pending import from_this_browser
from .records import PendingSignIn
from .state import AuthState, auth_state

log = structlog.get_logger(__name__)

CALLBACK_PATH = "/oauth/upstream/callback"


def callback_url(request: web.Request) -> str:
    return base_url(request) + CALLBACK_PATH


async def begin(request: web.Request, state: AuthState, oidc: UpstreamOidc, pending: PendingSignIn) -> web.Response:
    """The login page's "Sign in with ..." button: off to the provider."""
    try:
        location, upstream = await oidc.authorization_url(callback_url(request))
    except UpstreamError as exc:
        return error_page("Sign-in unavailable", str(exc), status=502)
    await state.store.call(lambda s: s.update_auth_request(pending.id, upstream=upstream))
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def upstream_callback(request: web.Request) -> web.StreamResponse:
    state = auth_state(request)
    oidc = state.oidc
    if oidc is None:
        return error_page("Not available", "Upstream sign-in is not configured.", status=404)
    upstream_state = request.query.get("state", "")
    pending = (
        await state.store.call(lambda s: s.find_auth_request_by_upstream_state(sha256_hex(upstream_state)))
        if upstream_state
        else None
    )
    if pending is None or pending.upstream is None:
        return error_page("Sign-in expired", "This sign-in has expired or was already used.")
    if not from_this_browser(request, pending):
        return error_page(
            "Request not verified", "The sign-in could not be verified. Make sure cookies are enabled.", status=403
        )
    code = request.query.get("code")
    if "error" in request.query or not code:
        state.metrics.login_failures.labels("upstream").inc()
        return error_page("Sign-in cancelled", f"{oidc.label} did not sign you in.", status=403)
    try:
        id_token = await oidc.exchange(code, pending.upstream)
        claims = await oidc.verify_id_token(id_token, pending.upstream.nonce)
        email = oidc.email_of(claims)
    except UpstreamError as exc:
        state.metrics.login_failures.labels("upstream").inc()
        return error_page("Sign-in failed", str(exc), status=403)
    if not oidc.email_allowed(email):
        state.metrics.login_failures.labels("upstream_not_allowed").inc()
        log.warning("auth.upstream_refused", provider=oidc.label, domain=email.rpartition("@")[2])
        return error_page("Not allowed", f"{email} may not sign in to this server.", status=403)
    user = await state.store.call(lambda s: s.upsert_upstream_user(email, oidc.default_role))
    log.info("auth.login", username=user.username, provider=oidc.label, client_id=pending.params.client_id)
    return await continue_after_upstream(state, pending, user)
