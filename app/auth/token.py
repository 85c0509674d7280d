"""POST {realm}/token: authorization_code (PKCE S256) and refresh_token grants.

Access tokens are ES256 JWTs bound to the RFC 8707 resource(s) in `aud`; refresh tokens are opaque,
stored hashed, and rotate on every use. A spent one presented again by the same client within
REFRESH_REUSE_LEEWAY_SECONDS of its first use gets another pair in the same family (connectors refresh in
parallel); presented later it is reuse and revokes its whole family.
Form bodies are the standard; JSON bodies are accepted as the seed system did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from ..urls import base_url
from .clientauth import authenticate_client
from .common import (
    NO_STORE,
    OAuthError,
    grant_scopes,
    new_secret,
    normalize_url,
    parse_scope,
    read_params,
    server_resources,
    sha256_hex,
)
from .state import AuthState, auth_state
from .store import AuthStore

log = structlog.get_logger(__name__)

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
REFRESH_PREFIX = "rt_"


def new_refresh_token() -> str:
    return REFRESH_PREFIX + new_secret(32)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode("ascii").rstrip("=")


def _resources(request: web.Request, params: dict[str, Any], granted: list[str]) -> list[str]:
    """The audience for the new access token: what was asked for now, within what was granted."""
    asked = []
    known = server_resources(base_url(request))
    for raw in params.get("resource", []):
        normalized = normalize_url(raw)
        if normalized is None or normalized not in known:
            raise OAuthError("invalid_target", "resource is not a resource of this server")
        if granted and normalized not in granted:
            raise OAuthError("invalid_target", "resource was not part of the authorization")
        asked.append(normalized)
    if asked:
        return list(dict.fromkeys(asked))
    if granted:
        return granted
    # No resource anywhere (a pre-2025-06-18 client): the token is for this whole server.
    return [normalize_url(base_url(request)) or base_url(request)]


def issue_access_token(
    state: AuthState,
    *,
    issuer: str,
    user: dict[str, Any],
    client_id: str,
    scope: str,
    audience: list[str],
    family_id: str,
) -> tuple[str, int]:
    now = int(time.time())
    ttl = int(state.settings.access_token_ttl_seconds)
    claims = {
        "iss": issuer,
        "sub": user["id"],
        "aud": audience[0] if len(audience) == 1 else audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "client_id": client_id,
        "scope": scope,
        "sid": family_id,  # the token family: revoking it (reuse, RFC 7009) stops this token too
        "ver": user["token_version"],
    }
    return state.keys.sign(claims), ttl


async def _authorization_code(
    request: web.Request, state: AuthState, client: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    code, verifier = params.get("code"), params.get("code_verifier")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    if not verifier:
        raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
    code_hash = sha256_hex(code)
    row, reused = await state.store.call(AuthStore.consume_code, code_hash)
    if row is None:
        raise OAuthError("invalid_grant", "unknown or expired authorization code")
    if reused:
        log.warning("oauth.code_reused", client_id=client["client_id"])
        raise OAuthError("invalid_grant", "authorization code was already used")
    if row["client_id"] != client["client_id"]:
        raise OAuthError("invalid_grant", "authorization code was issued to another client")
    if row["expires_at"] <= time.time():
        raise OAuthError("invalid_grant", "authorization code expired")
    redirect_uri = params.get("redirect_uri")
    if (row["redirect_uri_given"] or redirect_uri is not None) and redirect_uri != row["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(s256(verifier), row["code_challenge"]):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    audience = _resources(request, params, row["resources"])
    user = await state.store.call(AuthStore.get_user, row["user_id"])
    if user is None:
        raise OAuthError("invalid_grant", "the user no longer exists")
    family_id = await state.store.call(
        AuthStore.create_family,
        client_id=client["client_id"],
        user_id=user["id"],
        token_version=user["token_version"],
        ttl=state.settings.refresh_token_ttl_seconds,
    )
    await state.store.call(AuthStore.attach_family_to_code, code_hash, family_id)
    access, ttl = issue_access_token(
        state,
        issuer=row["issuer"],
        user=user,
        client_id=client["client_id"],
        scope=row["scope"],
        audience=audience,
        family_id=family_id,
    )
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": row["scope"]}
    if "refresh_token" in client["grant_types"]:
        refresh = new_refresh_token()
        await state.store.call(
            AuthStore.add_refresh_token,
            sha256_hex(refresh),
            family_id=family_id,
            client_id=client["client_id"],
            user_id=user["id"],
            scope=row["scope"],
            resources=row["resources"],
            issuer=row["issuer"],
            ttl=state.settings.refresh_token_ttl_seconds,
        )
        body["refresh_token"] = refresh
    log.info(
        "oauth.token_issued",
        grant="authorization_code",
        client_id=client["client_id"],
        username=user["username"],
        scope=row["scope"],
    )
    return body


async def _refresh_token(
    request: web.Request, state: AuthState, client: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    old = params.get("refresh_token")
    if not old:
        raise OAuthError("invalid_request", "refresh_token is required")
    if "refresh_token" not in client["grant_types"]:
        raise OAuthError("unauthorized_client", "this client may not use refresh tokens")
    # Check what is asked for before spending the token: a refused request must not use it up.
    current = await state.store.call(AuthStore.get_refresh_token, sha256_hex(old))
    wanted: list[str] | None = None
    audience: list[str] = []
    if current is not None and current["client_id"] == client["client_id"]:
        if params.get("scope"):
            wanted = parse_scope(params["scope"])
            if any(s not in current["scope"].split() for s in wanted):
                raise OAuthError("invalid_scope", "scope exceeds what was granted")
        audience = _resources(request, params, current["resources"])
    new = new_refresh_token()
    outcome, data = await state.store.call(
        AuthStore.rotate_refresh_token,
        sha256_hex(old),
        sha256_hex(new),
        client["client_id"],
        state.settings.refresh_token_ttl_seconds,
        state.settings.refresh_reuse_leeway_seconds,
    )
    if outcome == "reused":
        state.metrics.oauth_refresh_reuse.inc()
        log.warning("oauth.refresh_reuse_detected", client_id=client["client_id"])
        raise OAuthError("invalid_grant", "refresh token was already used; the session has been revoked")
    if outcome != "ok":
        raise OAuthError(
            "invalid_grant",
            {
                "unknown": "unknown refresh token",
                "client_mismatch": "refresh token was issued to another client",
                "expired": "refresh token expired",
                "revoked": "refresh token was revoked",
                "user_gone": "the user no longer exists or changed their password",
            }.get(outcome, "invalid refresh token"),
        )
    row, user, family, within_leeway = data
    if within_leeway:  # a parallel refresh (or a retry) by the same client: another pair, same family
        log.info("oauth.refresh_within_leeway", client_id=client["client_id"])
    granted = row["scope"].split()
    if wanted is not None:
        granted = [s for s in granted if s in wanted]
    # The user's role may have dropped since: never keep write access a reader no longer has.
    allowed = grant_scopes(granted, user["role"])
    scope = " ".join(s for s in granted if s in allowed)
    access, ttl = issue_access_token(
        state,
        issuer=row["issuer"],
        user=user,
        client_id=client["client_id"],
        scope=scope,
        audience=audience or _resources(request, params, row["resources"]),
        family_id=family["family_id"],
    )
    log.info("oauth.token_issued", grant="refresh_token", client_id=client["client_id"], username=user["username"])
    return {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": scope, "refresh_token": new}


async def token_endpoint(request: web.Request) -> web.Response:
    state = auth_state(request)
    grant = "unknown"
    try:
        params = await read_params(request, repeatable=frozenset({"resource"}))
        grant = params.get("grant_type") or ""
        if not grant:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant not in {"authorization_code", "refresh_token"}:
            raise OAuthError("unsupported_grant_type", "supported grants: authorization_code, refresh_token")
        client = await authenticate_client(request, state, params)
        if grant == "authorization_code":
            body = await _authorization_code(request, state, client, params)
        else:
            body = await _refresh_token(request, state, client, params)
    except OAuthError as exc:
        state.metrics.oauth_token_errors.labels(exc.error).inc()
        log.info(
            "oauth.token_error",
            error=exc.error,
            grant=grant if grant in {"authorization_code", "refresh_token"} else "other",
            reason=exc.description,
        )
        return exc.response()
    state.metrics.oauth_tokens.labels(grant).inc()
    return web.json_response(body, headers=NO_STORE)
