"""The pending sign-in between /authorize and the consent decision, and the browser that started it.

Every form of the flow carries a CSRF token tied to the pending request, and the request is tied to a
cookie of the browser that started it (only its hash is stored), so a form posted from elsewhere, or a
sign-in link opened in another browser, is refused.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from ..urls import base_url
from .common import client_address
from .params import PageError, new_secret, sha256_hex
from .records import PendingSignIn
from .state import AuthState

log = structlog.get_logger(__name__)

BROWSER_COOKIE = "mssql_mcp_signin"
PENDING_REQUEST_TTL = 15 * 60  # how long the sign-in and consent pages stay usable
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_\-]{32,64}")


def browser_nonce(request: web.Request) -> tuple[str, bool]:
    """(this browser's sign-in cookie value, whether it is new and must be set)."""
    current = request.cookies.get(BROWSER_COOKIE, "")
    if _COOKIE_VALUE.fullmatch(current):
        return current, False
    return new_secret(32), True


def set_browser_cookie(response: web.StreamResponse, request: web.Request, nonce: str) -> None:
    response.set_cookie(
        BROWSER_COOKIE,
        nonce,
        max_age=86400,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=base_url(request).startswith("https://"),
    )


def from_this_browser(request: web.Request, pending: PendingSignIn) -> bool:
    return hmac.compare_digest(pending.browser_hash, sha256_hex(request.cookies.get(BROWSER_COOKIE, "")))


async def load_pending(request: web.Request, state: AuthState, form: Mapping[str, Any]) -> PendingSignIn:
    """The pending sign-in a posted form belongs to, if the form and the browser are the ones it was
    shown to (PageError otherwise)."""
    pending = await state.store.call(lambda s: s.get_auth_request(form.get("request_id", "")[:64]))
    if pending is None:
        raise PageError("Sign-in expired", "This sign-in page has expired or was already used.")
    csrf_ok = hmac.compare_digest(pending.csrf.encode(), form.get("csrf_token", "").encode())
    if not (csrf_ok and from_this_browser(request, pending)):
        state.metrics.login_failures.labels("csrf").inc()
        log.warning("auth.csrf_rejected", client_id=pending.params.client_id, address=client_address(request))
        raise PageError(
            "Request not verified",
            "The form could not be verified. Make sure cookies are enabled, then start connecting again from your app.",
            status=403,
        )
    return pending
