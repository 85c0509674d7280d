"""GET/POST {realm}/authorize: the authorization code flow with a real sign-in and a consent page.

Order of checks follows RFC 6749 §4.1.2.1: while the client or its redirect URI is in doubt the user
sees an error page and nothing is sent anywhere; after that, errors go back to the (registered)
redirect URI with `error`, `state` and `iss` (RFC 9207). Every form carries a CSRF token tied to the
pending request and to a cookie of the browser that started it.
"""

from __future__ import annotations

import hmac
import re
import time
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web

from ..urls import base_url
from .cimd import CimdError, is_cimd_client_id
from .common import (
    OAuthError,
    client_address,
    grant_scopes,
    issuer_for,
    new_secret,
    normalize_url,
    parse_form,
    parse_scope,
    read_limited_body,
    server_resources,
    sha256_hex,
)
from .pages import consent_page, error_page, login_page
from .redirects import RedirectUriError, check_redirect_uri, redirect_host_label, redirect_matches
from .signin import check_password
from .state import AuthState, auth_state
from .store import AuthStore

log = structlog.get_logger(__name__)

BROWSER_COOKIE = "mssql_mcp_signin"
PENDING_REQUEST_TTL = 15 * 60  # how long the sign-in and consent pages stay usable
_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_\-]{32,64}")
MAX_STATE_LENGTH = 2048


def _redirect_with(redirect_uri: str, params: dict[str, str | None]) -> str:
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect_uri + separator + urlencode({k: v for k, v in params.items() if v is not None})


class ShowPage(Exception):
    """Stop validating and answer with this response (an error page or an error redirect)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _stop(title: str, message: str, status: int = 400) -> NoReturn:
    raise ShowPage(error_page(title, message, status))


def redirect_response(location: str, status: int = 302) -> web.Response:
    # Returned rather than raised, so no middleware can turn the redirect into an error body.
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def _error_redirect(redirect_uri: str, error: str, description: str, state: str | None, issuer: str) -> NoReturn:
    location = _redirect_with(
        redirect_uri, {"error": error, "error_description": description, "state": state, "iss": issuer}
    )
    raise ShowPage(redirect_response(location))


def _client_label(client: dict[str, Any]) -> tuple[str, str]:
    """(display name, note) for the consent page; names chosen by a client are marked as such."""
    if is_cimd_client_id(client["client_id"]):
        host = urlsplit(client["client_id"]).hostname or "?"
        return client.get("client_name") or host, f"This app is identified by its web address at {host}."
    name = client.get("client_name") or "An unnamed app"
    return name, "The app chose this name itself when it registered; check where you will be sent back to."


def _browser_nonce(request: web.Request) -> tuple[str, bool]:
    current = request.cookies.get(BROWSER_COOKIE, "")
    if _COOKIE_VALUE.fullmatch(current):
        return current, False
    return new_secret(32), True


def _set_browser_cookie(response: web.StreamResponse, request: web.Request, nonce: str) -> None:
    response.set_cookie(
        BROWSER_COOKIE,
        nonce,
        max_age=86400,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=base_url(request).startswith("https://"),
    )


async def _validate_request(request: web.Request, state: AuthState, realm: str) -> dict[str, Any]:
    """The authorization request as the flow will remember it, or an error page / error redirect."""
    query = request.query
    for name in ("client_id", "redirect_uri"):
        if len(query.getall(name, [])) > 1:
            _stop("Invalid request", f"The parameter {name} was given more than once.")
    client_id = query.get("client_id", "")
    if not client_id:
        _stop("Invalid request", "The request does not name a client (client_id is missing).")
    try:
        client = await state.find_client(client_id, refresh_metadata=True)
    except CimdError as exc:
        _stop("Unknown app", f"The app's metadata document could not be used: {exc}.")
    if client is None:
        _stop(
            "Unknown app",
            "This app is not registered with this server. Remove the connector and add it again.",
            status=400,
        )
    registered = client["redirect_uris"]
    redirect_uri = query.get("redirect_uri")
    if redirect_uri is None:
        if len(registered) != 1:
            _stop("Invalid request", "The request does not say where to return (redirect_uri).")
        redirect_uri, given = registered[0], False
    else:
        given = True
        if not redirect_matches(redirect_uri, registered):
            _stop("Invalid request", "The return address (redirect_uri) is not registered for this app.")
    try:
        check_redirect_uri(redirect_uri, state.settings.allowed_redirect_hosts, state.settings.allowed_redirect_schemes)
    except RedirectUriError as exc:
        _stop("Invalid request", f"The return address is not allowed: {exc}.")

    # From here on the redirect URI is trustworthy: errors go back to the client.
    issuer = issuer_for(request, realm)
    client_state = query.get("state")
    if client_state is not None and len(client_state) > MAX_STATE_LENGTH:
        _stop("Invalid request", "The state parameter is too long.")

    def fail(error: str, description: str) -> NoReturn:
        _error_redirect(redirect_uri, error, description, client_state, issuer)

    for name in query:
        if name != "resource" and len(query.getall(name)) > 1:
            fail("invalid_request", f"parameter {name[:40]} given more than once")
    if query.get("response_type") != "code":
        fail("unsupported_response_type", "only response_type=code is supported")
    if "authorization_code" not in client["grant_types"]:
        fail("unauthorized_client", "this client may not use the authorization code grant")
    challenge = query.get("code_challenge", "")
    if not challenge:
        fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
    if query.get("code_challenge_method") != "S256":
        fail("invalid_request", "only code_challenge_method=S256 is supported")
    if not _CHALLENGE.fullmatch(challenge):
        fail("invalid_request", "malformed code_challenge")
    if query.get("request") is not None or query.get("request_uri") is not None:
        fail("request_not_supported", "request objects are not supported")
    if query.get("prompt") == "none":
        fail("login_required", "this server always asks the user to sign in")
    try:
        requested_scopes = parse_scope(query.get("scope"))
    except OAuthError as exc:
        fail(exc.error, exc.description)
    resources: list[str] = []
    known = server_resources(base_url(request))
    for raw in query.getall("resource", []):
        normalized = normalize_url(raw)
        if normalized is None or normalized not in known:
            fail("invalid_target", "resource is not a resource of this server")
        elif normalized not in resources:
            resources.append(normalized)
    name, note = _client_label(client)
    return {
        "client_id": client["client_id"],
        "redirect_uri": redirect_uri,
        "redirect_uri_given": given,
        "state": client_state,
        "code_challenge": challenge,
        "scopes": requested_scopes,
        "resources": resources,
        "issuer": issuer,
        "realm": realm,
        "client_name": name,
        "client_note": note,
        "redirect_host": redirect_host_label(redirect_uri),
    }


def authorize_get(realm: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        state = auth_state(request)
        try:
            params = await _validate_request(request, state, realm)
        except ShowPage as stop:  # error page, or an error redirect to the checked redirect URI
            return stop.response
        nonce, new_cookie = _browser_nonce(request)
        request_id, csrf = new_secret(24), new_secret(24)
        await state.store.call(
            AuthStore.create_auth_request, request_id, sha256_hex(nonce), csrf, params, PENDING_REQUEST_TTL
        )
        response = login_page(
            request_id=request_id,
            csrf=csrf,
            client_name=params["client_name"],
            upstream_label=state.oidc.label if state.oidc else None,
        )
        if new_cookie:
            _set_browser_cookie(response, request, nonce)
        return response

    return handler


async def _load_pending(request: web.Request, state: AuthState, form: dict[str, Any]) -> dict[str, Any]:
    pending = await state.store.call(AuthStore.get_auth_request, form.get("request_id", "")[:64])
    if pending is None:
        _stop("Sign-in expired", "This sign-in page has expired or was already used.")
    nonce = request.cookies.get(BROWSER_COOKIE, "")
    csrf_ok = hmac.compare_digest(pending["csrf"].encode(), form.get("csrf_token", "").encode())
    browser_ok = hmac.compare_digest(pending["browser_hash"], sha256_hex(nonce))
    if not (csrf_ok and browser_ok):
        state.metrics.login_failures.labels("csrf").inc()
        log.warning("auth.csrf_rejected", client_id=pending["params"]["client_id"], address=client_address(request))
        _stop(
            "Request not verified",
            "The form could not be verified. Make sure cookies are enabled, then start connecting again from your app.",
            status=403,
        )
    return pending


async def _show_consent(
    state: AuthState, pending: dict[str, Any], user: dict[str, Any], action: str = "authorize"
) -> web.Response:
    params = pending["params"]
    csrf = new_secret(24)  # a fresh token per step: the login form's token cannot approve
    await state.store.call(AuthStore.update_auth_request, pending["id"], csrf=csrf, user_id=user["id"])
    return consent_page(
        request_id=pending["id"],
        csrf=csrf,
        client_name=params["client_name"],
        client_note=params["client_note"],
        redirect_host=params["redirect_host"],
        username=user["username"],
        scopes=grant_scopes(params["scopes"], user["role"]),
        read_only_server=state.settings.read_only_mode,
        action=action,
    )


async def _login(request: web.Request, state: AuthState, pending: dict[str, Any], form: dict[str, Any]) -> web.Response:
    username = form.get("username", "").strip()[:200]
    password = form.get("password", "")
    address = client_address(request)

    def again(error: str, status: int) -> web.Response:
        return login_page(
            request_id=pending["id"],
            csrf=pending["csrf"],
            client_name=pending["params"]["client_name"],
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
    log.info("auth.login", username=user["username"], client_id=pending["params"]["client_id"])
    return await _show_consent(state, pending, user)


async def _consent(
    request: web.Request, state: AuthState, pending: dict[str, Any], form: dict[str, Any]
) -> web.StreamResponse:
    params = pending["params"]
    user = await state.store.call(AuthStore.get_user, pending["user_id"]) if pending["user_id"] else None
    if user is None:
        return error_page("Not signed in", "Sign in first.", status=403)
    decision = form.get("decision")
    if decision not in {"allow", "deny"}:
        return error_page("Invalid request", "Choose Allow or Deny.")
    if decision == "deny":
        await state.store.call(AuthStore.delete_auth_request, pending["id"])
        log.info("auth.consent_denied", username=user["username"], client_id=params["client_id"])
        location = _redirect_with(
            params["redirect_uri"],
            {
                "error": "access_denied",
                "error_description": "the user denied access",
                "state": params["state"],
                "iss": params["issuer"],
            },
        )
        return redirect_response(location, 303)
    code = new_secret(32)
    scopes = grant_scopes(params["scopes"], user["role"])
    stored = await state.store.call(
        AuthStore.create_code,
        sha256_hex(code),
        client_id=params["client_id"],
        user_id=user["id"],
        redirect_uri=params["redirect_uri"],
        redirect_uri_given=params["redirect_uri_given"],
        code_challenge=params["code_challenge"],
        scope=" ".join(scopes),
        resources=params["resources"],
        issuer=params["issuer"],
        ttl=state.settings.auth_code_ttl_seconds,
        consume_request=pending["id"],
    )
    if not stored:
        return error_page("Sign-in expired", "This sign-in page has expired or was already used.")
    log.info("auth.consent_granted", username=user["username"], client_id=params["client_id"], scope=" ".join(scopes))
    location = _redirect_with(params["redirect_uri"], {"code": code, "state": params["state"], "iss": params["issuer"]})
    return redirect_response(location, 303)


def authorize_post(realm: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        state = auth_state(request)
        try:
            if request.content_type != "application/x-www-form-urlencoded":
                return error_page("Invalid request", "Unexpected form encoding.", status=415)
            form = parse_form(await read_limited_body(request, 16 * 1024))
            pending = await _load_pending(request, state, form)
            action = form.get("action")
            if action == "login":
                if pending["user_id"]:
                    user = await state.store.call(AuthStore.get_user, pending["user_id"])
                    if user is not None:
                        return await _show_consent(state, pending, user)
                return await _login(request, state, pending, form)
            if action == "consent":
                return await _consent(request, state, pending, form)
            if action == "upstream" and state.oidc is not None:
                return await state.oidc.begin(request, state, pending)
            return error_page("Invalid request", "Unknown form action.")
        except OAuthError as exc:
            return error_page("Invalid request", exc.description or exc.error, status=413 if exc.status == 413 else 400)
        except ShowPage as stop:
            return stop.response

    return handler


async def continue_after_upstream(
    request: web.Request, state: AuthState, pending: dict[str, Any], user: dict[str, Any]
) -> web.Response:
    """Upstream sign-in done: the same consent page as after a local sign-in. The page is served at
    /oauth/upstream/callback, so its form points back up to {realm}/authorize (same origin, any prefix)."""
    return await _show_consent(state, pending, user, action="../.." + pending["params"]["realm"] + "/authorize")
