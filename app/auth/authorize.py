"""GET/POST {realm}/authorize: the authorization code flow with a real sign-in and a consent page.

Order of checks follows RFC 6749 §4.1.2.1: while the client or its redirect URI is in doubt the user
sees an error page and nothing is sent anywhere; after that, errors go back to the (registered)
redirect URI with `error`, `state` and `iss` (RFC 9207). The checks themselves are pure functions in
app/auth/validate.py; the pending request and its browser cookie are app/auth/pending.py's, the consent
step app/auth/consent.py's and the upstream sign-in app/auth/upstream.py's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from ..urls import base_url
from .cimd import CimdError
from .common import client_address, issuer_for, read_limited_body
from .consent import decide, redirect_response, redirect_with, show_consent
from .pages import error_page, login_page
from .params import OAuthError, PageError, new_secret, parse_form, server_resources, sha256_hex
from .pending import PENDING_REQUEST_TTL, browser_nonce, load_pending, set_browser_cookie
from .records import Client, PendingSignIn
from .signin import check_password
from .state import AuthState, auth_state
from .upstream import begin as begin_upstream
from .validate import (
    Query,
    authorization_request,
    authorize_client_id,
    authorize_redirect_uri,
    authorize_state,
)

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _known_client(state: AuthState, client_id: str) -> Client:
    try:
        client = await state.find_client(client_id, refresh_metadata=True)
    except CimdError as exc:
        raise PageError("Unknown app", f"The app's metadata document could not be used: {exc}.") from None
    if client is None:
        raise PageError(
            "Unknown app", "This app is not registered with this server. Remove the connector and add it again."
        )
    return client


def authorize_get(realm: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = auth_state(request)
        query: Query = {name: request.query.getall(name) for name in request.query}
        try:
            client = await _known_client(state, authorize_client_id(query))
            redirect_uri, given = authorize_redirect_uri(
                query, client, state.settings.allowed_redirect_hosts, state.settings.allowed_redirect_schemes
            )
            client_state = authorize_state(query)
        except PageError as exc:  # nothing goes to a redirect URI that is in doubt
            return error_page(exc.title, exc.message, exc.status)
        # From here on the redirect URI is trustworthy: errors go back to the client.
        issuer = issuer_for(request, realm)
        try:
            params = authorization_request(
                query,
                client,
                redirect_uri=redirect_uri,
                redirect_uri_given=given,
                state=client_state,
                issuer=issuer,
                realm=realm,
                known_resources=server_resources(base_url(request)),
            )
        except OAuthError as exc:
            error = {"error": exc.error, "error_description": exc.description, "state": client_state, "iss": issuer}
            return redirect_response(redirect_with(redirect_uri, error))
        nonce, new_cookie = browser_nonce(request)
        request_id, csrf = new_secret(24), new_secret(24)
        await state.store.call(
            lambda s: s.create_auth_request(request_id, sha256_hex(nonce), csrf, params, PENDING_REQUEST_TTL)
        )
        response = login_page(
            request_id=request_id,
            csrf=csrf,
            client_name=params.client_name,
            upstream_label=state.oidc.label if state.oidc else None,
        )
        if new_cookie:
            set_browser_cookie(response, request, nonce)
        return response

    return handler


async def _login(
    request: web.Request, state: AuthState, pending: PendingSignIn, form: Mapping[str, Any]
) -> web.Response:
    username = form.get("username", "").strip()[:200]
    password = form.get("password", "")
    address = client_address(request)

    def again(error: str, status: int) -> web.Response:
        return login_page(
            request_id=pending.id,
            csrf=pending.csrf,
            client_name=pending.params.client_name,
            error=error,
            username=username,
            status=status,
            upstream_label=state.oidc.label if state.oidc else None,
        )

    if not username or not password:
        return again("Enter your username and password.", 400)
    checked = await check_password(state, username, password, address, event_prefix="auth")
    if checked.throttled:
        wait = max(1, round(checked.until - time.time()))
        if checked.throttled == "slowed":
            message = f"Too many failed sign-ins for this user. Wait {wait} second(s) and try again."
        else:
            message = f"Too many failed sign-ins. Try again in about {max(1, round(wait / 60))} minute(s)."
        response = again(message, 429)
        response.headers["Retry-After"] = str(wait)
        return response
    user = checked.user
    if user is None:
        return again("Wrong username or password.", 401)
    log.info("auth.login", username=user.username, client_id=pending.params.client_id)
    return await show_consent(state, pending, user)


def authorize_post(realm: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = auth_state(request)
        try:
            if request.content_type != "application/x-www-form-urlencoded":
                return error_page("Invalid request", "Unexpected form encoding.", status=415)
            form = parse_form(await read_limited_body(request, 16 * 1024))
            pending = await load_pending(request, state, form)
            action = form.get("action")
            if action == "login":
                if user_id := pending.user_id:
                    user = await state.store.call(lambda s: s.get_user(user_id))
                    if user is not None:
                        return await show_consent(state, pending, user)
                return await _login(request, state, pending, form)
            if action == "consent":
                return await decide(state, pending, form)
            if action == "upstream" and state.oidc is not None:
                return await begin_upstream(request, state, state.oidc, pending)
            return error_page("Invalid request", "Unknown form action.")
        except OAuthError as exc:
            return error_page("Invalid request", exc.description or exc.error, status=413 if exc.status == 413 else 400)
        except PageError as exc:
            return error_page(exc.title, exc.message, exc.status)

    return handler
