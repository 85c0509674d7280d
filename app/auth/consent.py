"""The consent step: after a sign-in (local or upstream) the person allows or denies the app, and the
browser goes back to the client with a code or an error (plus `state` and `iss`, RFC 9207)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web

from .pages import consent_page, error_page
from .params import grant_scopes, new_secret, sha256_hex
from .records import PendingSignIn, User
from .state import AuthState

log = structlog.get_logger(__name__)


def redirect_with(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect_uri + separator + urlencode({k: v for k, v in params.items() if v is not None})


def redirect_response(location: str, status: int = 302) -> web.Response:
    # Returned rather than raised, so no middleware can turn the redirect into an error body.
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


async def show_consent(state: AuthState, pending: PendingSignIn, user: User, action: str = "authorize") -> web.Response:
    params = pending.params
    csrf = new_secret(24)  # a fresh token per step: the login form's token cannot approve
    await state.store.call(lambda s: s.update_auth_request(pending.id, csrf=csrf, user_id=user.id))
    return consent_page(
        request_id=pending.id,
        csrf=csrf,
        client_name=params.client_name,
        client_note=params.client_note,
        redirect_host=params.redirect_host,
        username=user.username,
        scopes=grant_scopes(params.scopes, user.role),
        read_only_server=state.settings.read_only_mode,
        action=action,
    )


async def continue_after_upstream(state: AuthState, pending: PendingSignIn, user: User) -> web.Response:
    """Upstream sign-in done: the same consent page as after a local sign-in. The page is served at
    /oauth/upstream/callback, so its form points back up to {realm}/authorize (same origin, any prefix)."""
    return await show_consent(state, pending, user, action="../.." + pending.params.realm + "/authorize")


async def decide(state: AuthState, pending: PendingSignIn, form: Mapping[str, Any]) -> web.StreamResponse:
    """The consent form's answer: a code for the client, or access_denied."""
    params = pending.params
    user_id = pending.user_id
    user = await state.store.call(lambda s: s.get_user(user_id)) if user_id else None
    if user is None:
        return error_page("Not signed in", "Sign in first.", status=403)
    decision = form.get("decision")
    if decision not in {"allow", "deny"}:
        return error_page("Invalid request", "Choose Allow or Deny.")
    if decision == "deny":
        await state.store.call(lambda s: s.delete_auth_request(pending.id))
        log.info("auth.consent_denied", username=user.username, client_id=params.client_id)
        location = redirect_with(
            params.redirect_uri,
            {
                "error": "access_denied",
                "error_description": "the user denied access",
                "state": params.state,
                "iss": params.issuer,
            },
        )
        return redirect_response(location, 303)
    code = new_secret(32)
    scopes = grant_scopes(params.scopes, user.role)
    stored = await state.store.call(
        lambda s: s.create_code(
            sha256_hex(code),
            client_id=params.client_id,
            user_id=user.id,
            redirect_uri=params.redirect_uri,
            redirect_uri_given=params.redirect_uri_given,
            code_challenge=params.code_challenge,
            scope=" ".join(scopes),
            resources=params.resources,
            issuer=params.issuer,
            ttl=state.settings.auth_code_ttl_seconds,
            consume_request=pending.id,
        )
    )
    if not stored:
        return error_page("Sign-in expired", "This sign-in page has expired or was already used.")
    log.info("auth.consent_granted", username=user.username, client_id=params.client_id, scope=" ".join(scopes))
    location = redirect_with(params.redirect_uri, {"code": code, "state": params.state, "iss": params.issuer})
    return redirect_response(location, 303)
