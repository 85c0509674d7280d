"""Browser sessions for the record pages: a person opening a ChatGPT citation signs in once, then reads.

A citation `url` (`/chatgpt/records/{id}`) opened in a browser has no bearer token. Instead of a JSON 401 the
page sends the browser to `{prefix}/records/signin?next=...`, a sign-in form for this server's users (the
same users, passwords, roles and sign-in throttling as the OAuth sign-in). A right password sets a short-lived
session cookie (HttpOnly, Secure behind https, SameSite=Lax, RECORDS_SESSION_SECONDS) and sends the browser
back to the record. The cookie is sealed with the state encryption key (shared by every node), names the user
and the role it was issued for, and is re-checked against the auth store on every page: a removed user or a
changed role ends the session. API clients with a bearer token never use it.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import time
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import keys
from ..core import SURFACES, surface_of
from ..state.redisstate import RedisUnavailable
from ..urls import base_url
from .common import client_address, read_limited_body
from .pages import PAGE_HEADERS, _page
from .params import new_secret, parse_form
from .signin import check_password
from .statekey import StateKeyError

log = structlog.get_logger(__name__)

SESSION_COOKIE = "mssql_mcp_records"
CSRF_COOKIE = "mssql_mcp_records_csrf"
_SESSION_KID = "records-session"
# Where a sign-in may send the browser back to: a record page of one of the surfaces (app.core.SURFACES).
_RECORD_PATHS = "|".join(re.escape(surface.records_path) for surface in SURFACES)
_NEXT = re.compile(rf"^(?:{_RECORD_PATHS})/[^/?#\\]+(?:\?[^#\\]*)?$")
_CSRF = re.compile(r"^[A-Za-z0-9_\-]{24,64}$")
# Without a state key (no auth store, e.g. a test app) sessions are sealed with a per-process key.
_PROCESS_KEY = AESGCM(os.urandom(32))


@dataclass(frozen=True)
class BrowserUser:
    user_id: str
    username: str
    role: str


def _seal(request: web.Request, payload: dict[str, Any]) -> str:
    state = request.app.get(keys.AUTH_STORE)
    state_key = getattr(state, "state_key", None)
    text = json.dumps(payload, separators=(",", ":"))
    if state_key is not None:
        return state_key.encrypt(_SESSION_KID, text)
    nonce = os.urandom(12)
    return "p:" + base64.urlsafe_b64encode(nonce + _PROCESS_KEY.encrypt(nonce, text.encode(), b"rs")).decode()


def _open(request: web.Request, sealed: str) -> dict[str, Any] | None:
    state = request.app.get(keys.AUTH_STORE)
    state_key = getattr(state, "state_key", None)
    try:
        if sealed.startswith("p:"):
            blob = base64.urlsafe_b64decode(sealed[2:])
            text = _PROCESS_KEY.decrypt(blob[:12], blob[12:], b"rs").decode()
        elif state_key is not None:
            text = state_key.decrypt(_SESSION_KID, sealed)
        else:
            return None
        value = json.loads(text)
    except (StateKeyError, ValueError, InvalidTag, UnicodeDecodeError):  # tampered or foreign: no session
        return None
    return value if isinstance(value, dict) else None


def _secure(request: web.Request) -> bool:
    return base_url(request).startswith("https://")


async def session_user(request: web.Request) -> BrowserUser | None:
    """The signed-in person of this browser, re-checked against the auth store (None: not signed in)."""
    sealed = request.cookies.get(SESSION_COOKIE, "")
    state = request.app.get(keys.AUTH_STORE)
    if not sealed or state is None:
        return None
    payload = _open(request, sealed)
    if not payload or not isinstance(payload.get("exp"), int | float) or payload["exp"] < time.time():
        return None
    user = await state.store.call(lambda s: s.get_user(str(payload.get("uid", ""))))
    if user is None or user.role != payload.get("role"):
        log.info("records.session_ended", reason="user_changed")
        return None
    return BrowserUser(user.id, user.username, user.role)


def allowed_roles(request: web.Request) -> tuple[str, ...]:
    return tuple(request.app[keys.SETTINGS].records_roles)


def wants_page(request: web.Request) -> bool:
    """A browser navigation (HTML wanted, no Authorization header): sign-in beats a JSON 401."""
    if "Authorization" in request.headers or request.query.get("format") == "json":
        return False
    accept = request.headers.get("Accept", "").lower()
    return "text/html" in accept


def signin_location(request: web.Request) -> str:
    prefix = surface_of(request.path).prefix
    here = request.rel_url.path_qs
    return f"{base_url(request)}{prefix}/records/signin?next={quote(here, safe='')}"


def _safe_next(raw: str) -> str:
    return raw if _NEXT.fullmatch(raw or "") else ""


def _signin_form(
    next_path: str, csrf: str, error: str | None = None, username: str = "", status: int = 200
) -> web.Response:
    err = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    body = (
        f"<h1>Sign in to read this record</h1>"
        f"<p class=muted>Records of this database are shown to its users only.</p>{err}"
        f"<form method=post action=signin>"
        f"<input type=hidden name=next value='{escape(next_path, quote=True)}'>"
        f"<input type=hidden name=csrf_token value='{escape(csrf, quote=True)}'>"
        f"<label for=username>Username</label>"
        f"<input id=username name=username type=text autocomplete=username required autofocus "
        f"value='{escape(username, quote=True)}'>"
        f"<label for=password>Password</label>"
        f"<input id=password name=password type=password autocomplete=current-password required>"
        f"<button type=submit>Sign in</button></form>"
    )
    return _page("Sign in", body, status)


def _with_csrf_cookie(request: web.Request, response: web.Response, csrf: str) -> web.Response:
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=900, path="/", httponly=True, samesite="Strict", secure=_secure(request)
    )
    return response


async def signin_get(request: web.Request) -> web.StreamResponse:
    if request.app.get(keys.AUTH_STORE) is None:
        return _page(
            "Sign-in unavailable",
            "<h1>Sign-in unavailable</h1><p class=error>This server has no "
            "user accounts; open records with an access token.</p>",
            404,
        )
    next_path = _safe_next(request.query.get("next", ""))
    csrf = request.cookies.get(CSRF_COOKIE, "")
    csrf = csrf if _CSRF.match(csrf) else new_secret(24)
    return _with_csrf_cookie(request, _signin_form(next_path, csrf), csrf)


async def signin_post(request: web.Request) -> web.StreamResponse:
    state = request.app.get(keys.AUTH_STORE)
    if state is None:
        raise web.HTTPNotFound()
    form = parse_form(await read_limited_body(request, 16 * 1024))
    next_path = _safe_next(form.get("next", ""))
    username = form.get("username", "").strip()[:200]
    password = form.get("password", "")
    cookie_csrf = request.cookies.get(CSRF_COOKIE, "")
    if not (_CSRF.match(cookie_csrf) and hmac.compare_digest(cookie_csrf, form.get("csrf_token", ""))):
        csrf = new_secret(24)
        return _with_csrf_cookie(
            request,
            _signin_form(
                next_path,
                csrf,
                "The form could not be verified: make sure cookies are enabled and sign in again.",
                username,
                403,
            ),
            csrf,
        )

    def again(message: str, status: int) -> web.Response:
        return _with_csrf_cookie(request, _signin_form(next_path, cookie_csrf, message, username, status), cookie_csrf)

    if not username or not password:
        return again("Enter your username and password.", 400)
    try:
        checked = await check_password(state, username, password, client_address(request), event_prefix="records")
    except RedisUnavailable:  # the throttle counters live in Redis (REDIS_URL) and it is away for a moment
        response = again("Sign-in is unavailable for a moment. Try again in a few seconds.", 503)
        response.headers["Retry-After"] = "2"
        return response
    if checked.throttled:
        wait = max(1, round(checked.until - time.time()))
        response = again(f"Too many failed sign-ins. Try again in {wait} s.", 429)
        response.headers["Retry-After"] = str(wait)
        return response
    user = checked.user
    if user is None:
        return again("Wrong username or password.", 401)
    if user.role not in allowed_roles(request):
        log.info("records.no_access", username=user.username, role=user.role)
        return no_access_page(
            f"You are signed in as {user.username} ({user.role}), and that role may not "
            "open record pages on this server. Ask an administrator for access."
        )
    lifetime = state.settings.records_session_seconds
    sealed = _seal(request, {"uid": user.id, "role": user.role, "exp": int(time.time()) + lifetime})
    if next_path:
        response = web.Response(status=303, headers={"Location": base_url(request) + next_path, **PAGE_HEADERS})
    else:  # no (or no safe) record to go back to
        response = _page(
            "Signed in",
            f"<h1>Signed in</h1><p>You are signed in as {escape(user.username)}. Open the record link again.</p>",
        )
    response.set_cookie(
        SESSION_COOKIE, sealed, max_age=lifetime, path="/", httponly=True, samesite="Lax", secure=_secure(request)
    )
    response.del_cookie(CSRF_COOKIE, path="/")
    log.info("records.login", username=user.username)
    return response


def no_access_page(message: str, status: int = 403) -> web.Response:
    body = f"<h1>No access</h1><p class=error role=alert>{escape(message)}</p>"
    return _page("No access", body, status)
