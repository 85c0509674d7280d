"""Resource-server check in front of the MCP endpoints.

Contract: transports call `await authenticator.authenticate(request, methods)` after parsing the
JSON-RPC body (methods = the JSON-RPC method names in it; empty for a GET stream). It returns
the Principal, or raises web.HTTPUnauthorized / web.HTTPForbidden carrying WWW-Authenticate.

A token is accepted only from the Authorization header (RFC 6750 §2.1; the MCP spec forbids query
strings), must be one of our signed JWTs, unexpired, issued by this server for this prefix's
resource (RFC 8707 audience), not revoked (jti denylist, token family, user's token version), and
carry `mcp:read`. The Principal's role is the user's current role, capped by the granted scope.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import structlog
from aiohttp import web

from .. import keys
from ..core import ANONYMOUS, Principal, unauthenticated_allowed
from ..urls import base_url
from .metadata import resource_metadata_url
from .params import (
    REALMS,
    SCOPE_READ,
    SCOPE_WRITE,
    SUPPORTED_SCOPES,
    accepted_audiences,
    mcp_endpoint_of_path,
    normalize_url,
)
from .signing import SigningKeys, TokenInvalid
from .state import AuthState

log = structlog.get_logger(__name__)

CLOCK_SKEW_SECONDS = 30
_QUERY_TOKEN_NAMES = ("access_token", "token", "bearer")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Authenticator:
    """Stateless itself: it reads the auth state from the app the request belongs to."""

    def __init__(self, state: AuthState | None = None) -> None:
        self._state = state

    def _auth_state(self, request: web.Request) -> AuthState:
        return self._state or request.app[keys.AUTH_STORE]

    # -- public contract --------------------------------------------------------------------------
    async def authenticate(self, request: web.Request, methods: Sequence[str]) -> Principal:
        state = self._auth_state(request)
        settings = state.settings
        header = request.headers.get("Authorization")
        if any(name in request.query for name in _QUERY_TOKEN_NAMES) and header is None:
            self._reject(
                request,
                state,
                "query_token",
                "invalid_request",
                "send the access token in the Authorization header, not the URL",
            )
        if header is None:
            if unauthenticated_allowed(
                methods, allow_methods=settings.allow_unauth_methods, allow_tools_call=settings.allow_unauth_tools_call
            ):
                return ANONYMOUS
            self._reject(request, state, "missing", None, None)
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._reject(request, state, "malformed", "invalid_request", "use Authorization: Bearer <token>")
        keys = await state.keys_for(token)  # a key rotated in elsewhere is learnt before the check
        claims = self._verify(request, state, keys, token)
        return await self._principal(request, state, claims)

    # -- internals --------------------------------------------------------------------------------
    def _verify(self, request: web.Request, state: AuthState, keys: SigningKeys, token: str) -> dict[str, Any]:
        try:
            claims = keys.verify(token)
        except TokenInvalid as exc:
            self._reject(request, state, exc.reason, "invalid_token", "the access token is not valid")
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat", 0))
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            self._reject(request, state, "malformed", "invalid_token", "the access token is not valid")
        if exp + CLOCK_SKEW_SECONDS < now:
            self._reject(request, state, "expired", "invalid_token", "the access token expired")
        if nbf - CLOCK_SKEW_SECONDS > now:
            self._reject(request, state, "malformed", "invalid_token", "the access token is not valid yet")
        base = base_url(request)
        if claims.get("iss") not in {base + realm for realm in REALMS}:
            self._reject(request, state, "wrong_issuer", "invalid_token", "the access token was issued elsewhere")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        accepted = accepted_audiences(base, request.path)
        if not any(isinstance(a, str) and normalize_url(a) in accepted for a in audiences):
            self._reject(
                request, state, "wrong_audience", "invalid_token", "the access token is for a different resource"
            )
        for name in ("sub", "jti"):
            if not isinstance(claims.get(name), str):
                self._reject(request, state, "malformed", "invalid_token", "the access token is not valid")
        return claims

    async def _principal(self, request: web.Request, state: AuthState, claims: dict[str, Any]) -> Principal:
        sid = claims.get("sid") if isinstance(claims.get("sid"), str) else None
        record = await state.bearer_lookup(claims["sub"], claims["jti"], sid)
        if record is None:
            self._reject(request, state, "unknown_user", "invalid_token", "the user no longer exists")
        if record.jti_revoked or record.family_revoked_at is not None or record.token_version != claims.get("ver"):
            self._reject(request, state, "revoked", "invalid_token", "the access token was revoked")
        scopes = frozenset(s for s in str(claims.get("scope", "")).split() if s in SUPPORTED_SCOPES)
        if SCOPE_READ not in scopes:
            self._forbid(request, state, SCOPE_READ)
        role = "writer" if record.role == "writer" and SCOPE_WRITE in scopes else "reader"
        return Principal(
            subject=record.id,
            username=record.username,
            role=role,
            client_id=claims.get("client_id") if isinstance(claims.get("client_id"), str) else None,
            scopes=scopes,
            authenticated=True,
        )

    def _challenge(
        self, request: web.Request, error: str | None, description: str | None, scope: str = " ".join(SUPPORTED_SCOPES)
    ) -> str:
        parts = [
            f"resource_metadata={_quote(resource_metadata_url(request, mcp_endpoint_of_path(request.path)))}",
            f"scope={_quote(scope)}",
        ]
        if error:
            parts.append(f"error={_quote(error)}")
        if description:
            parts.append(f"error_description={_quote(description)}")
        return "Bearer " + ", ".join(parts)

    def _reject(
        self, request: web.Request, state: AuthState, reason: str, error: str | None, description: str | None
    ) -> NoReturn:
        state.metrics.bearer_rejections.labels(reason).inc()
        if reason != "missing":
            log.info("auth.bearer_rejected", reason=reason, path=request.path)
        body = {
            "error": error or "unauthorized",
            "error_description": description or "this endpoint needs an OAuth access token",
        }
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": self._challenge(request, error, description), "Cache-Control": "no-store"},
            text=json.dumps(body),
            content_type="application/json",
        )

    def _forbid(self, request: web.Request, state: AuthState, scope: str) -> NoReturn:
        state.metrics.bearer_rejections.labels("insufficient_scope").inc()
        log.info("auth.bearer_rejected", reason="insufficient_scope", path=request.path)
        description = f"this request needs the {scope} scope"
        raise web.HTTPForbidden(
            headers={
                "WWW-Authenticate": self._challenge(request, "insufficient_scope", description, scope),
                "Cache-Control": "no-store",
            },
            text=json.dumps({"error": "insufficient_scope", "error_description": description}),
            content_type="application/json",
        )
