"""The console's browser session: a sealed cookie on /admin, re-checked against the auth store per request.

After a right password (the same throttled check as every sign-in form) the browser gets `mssql_mcp_admin`:
the user id, the role it was issued for, an expiry and the session's CSRF token, sealed with the state
encryption key (shared by every node, so any node can read it). HttpOnly, SameSite=Strict, Secure behind
https, path /admin: the record pages and the OAuth pages never see it. Every request re-reads the user: a
removed user or a changed role ends the session at once.

CSRF: the sign-in form uses a double-submit cookie (there is no session yet); every form after sign-in
carries the session's own token, which only a page rendered for that session contains.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote

from aiohttp import web

from .. import keys
from ..auth.params import new_secret
from ..auth.state import AuthState
from ..auth.statekey import StateKeyError
from ..urls import base_url

ADMIN_ROLE = "admin"
SESSION_COOKIE = "mssql_mcp_admin"
SIGNIN_CSRF_COOKIE = "mssql_mcp_admin_csrf"
NOTICE_COOKIE = "mssql_mcp_admin_notice"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 3600  # an operator's sitting; signing in again costs one password
_SESSION_KID = "admin-session"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{24,64}$")


@dataclass(frozen=True, slots=True)
class AdminSession:
    user_id: str
    username: str
    role: str  # the user's role now (a session of a user who is no longer an admin is refused with 403)
    csrf: str


def secure_cookies(request: web.Request) -> bool:
    return base_url(request).startswith("https://")


def auth_state(request: web.Request) -> AuthState | None:
    """The auth state, when it can seal sessions (None: this server has no user accounts)."""
    state = request.app.get(keys.AUTH_STORE)
    return state if state is not None and state.state_key is not None else None


def _open(state: AuthState, sealed: str) -> dict[str, object] | None:
    if state.state_key is None or not sealed:
        return None
    try:
        value = json.loads(state.state_key.decrypt(_SESSION_KID, sealed))
    except (StateKeyError, ValueError, UnicodeDecodeError):  # tampered, foreign or from another key
        return None
    return value if isinstance(value, dict) else None


async def current_session(request: web.Request) -> AdminSession | None:
    """This browser's console session, with the user as the store has it now (None: not signed in)."""
    state = auth_state(request)
    if state is None:
        return None
    payload = _open(state, request.cookies.get(SESSION_COOKIE, ""))
    if payload is None:
        return None
    expires, user_id, csrf = payload.get("exp"), payload.get("uid"), payload.get("csrf")
    if not isinstance(expires, int) or expires < time.time() or not isinstance(user_id, str):
        return None
    if not isinstance(csrf, str) or not _TOKEN.match(csrf):
        return None
    user = await state.store.call(lambda s: s.get_user(user_id))
    if user is None:
        return None
    return AdminSession(user.id, user.username, user.role, csrf)


def start_session(request: web.Request, response: web.StreamResponse, state: AuthState, user_id: str) -> None:
    """Seal a new session (with a fresh CSRF token) into the response's cookie."""
    if state.state_key is None:
        raise RuntimeError("the auth state is not started")
    payload = {"uid": user_id, "exp": int(time.time()) + SESSION_SECONDS, "csrf": new_secret(24)}
    sealed = state.state_key.encrypt(_SESSION_KID, json.dumps(payload, separators=(",", ":")))
    response.set_cookie(
        SESSION_COOKIE,
        sealed,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )
    response.del_cookie(SIGNIN_CSRF_COOKIE, path=COOKIE_PATH)


def end_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def signin_token(request: web.Request) -> str:
    """The sign-in form's double-submit token: the browser's current one, or a new one."""
    token = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
    return token if _TOKEN.match(token) else new_secret(24)


def set_signin_token(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SIGNIN_CSRF_COOKIE,
        token,
        max_age=900,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )


def signin_token_matches(request: web.Request, submitted: str) -> bool:
    cookie = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
    return bool(_TOKEN.match(cookie)) and hmac.compare_digest(cookie, submitted)


def session_token_matches(session: AdminSession, submitted: str) -> bool:
    return hmac.compare_digest(session.csrf, submitted)


def set_notice(request: web.Request, response: web.StreamResponse, text: str) -> None:
    """A one-line result for the page the browser is sent to next (post/redirect/get)."""
    response.set_cookie(
        NOTICE_COOKIE,
        quote(text[:300], safe=""),
        max_age=60,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(request),
    )


def take_notice(request: web.Request, response: web.StreamResponse) -> None:
    if NOTICE_COOKIE in request.cookies:
        response.del_cookie(NOTICE_COOKIE, path=COOKIE_PATH)


def notice_of(request: web.Request) -> str | None:
    raw = request.cookies.get(NOTICE_COOKIE)
    return unquote(raw)[:300] if raw else None
