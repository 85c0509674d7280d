"""POST {realm}/token: authorization_code (PKCE S256) and refresh_token grants.

Access tokens are ES256 JWTs bound to the RFC 8707 resource(s) in `aud`; refresh tokens are opaque,
stored hashed, and rotate on every use. A spent one presented again by the same client within
REFRESH_REUSE_LEEWAY_SECONDS of its first use gets another pair in the same family (connectors refresh in
parallel); presented later it is reuse and revokes its whole family.
Form bodies are the standard; JSON bodies are accepted as the seed system did.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from ..urls import base_url
from .clientauth import authenticate_client
from .common import error_response, read_params
from .params import NO_STORE, OAuthError, new_secret, server_resources, sha256_hex
from .records import Client, RotationRefused, User
from .state import AuthState, auth_state
from .validate import (
    GrantType,
    check_redeemed_code,
    check_rotation,
    code_exchange_params,
    grant_type_of,
    refresh_token_param,
    refreshed_scope,
    requested_refresh_scope,
    token_audience,
)

log = structlog.get_logger(__name__)

REFRESH_PREFIX = "rt_"


def new_refresh_token() -> str:
    return REFRESH_PREFIX + new_secret(32)


def _audience(request: web.Request, params: dict[str, Any], granted: Sequence[str]) -> list[str]:
    origin = base_url(request)
    return token_audience(params.get("resource", []), granted, known=server_resources(origin), origin=origin)


def issue_access_token(
    state: AuthState,
    *,
    issuer: str,
    user: User,
    client_id: str,
    scope: str,
    audience: list[str],
    family_id: str,
) -> tuple[str, int]:
    now = int(time.time())
    ttl = state.settings.access_token_ttl_seconds
    claims = {
        "iss": issuer,
        "sub": user.id,
        "aud": audience[0] if len(audience) == 1 else audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "client_id": client_id,
        "scope": scope,
        "sid": family_id,  # the token family: revoking it (reuse, RFC 7009) stops this token too
        "ver": user.token_version,
    }
    return state.keys.sign(claims), ttl


async def _authorization_code(
    request: web.Request, state: AuthState, client: Client, params: dict[str, Any]
) -> dict[str, Any]:
    code_value, verifier = code_exchange_params(params)
    code_hash = sha256_hex(code_value)
    redemption = await state.store.call(lambda s: s.consume_code(code_hash))
    if redemption.code is not None and redemption.reused:
        log.warning("oauth.code_reused", client_id=client.client_id)
    code = check_redeemed_code(
        redemption,
        client_id=client.client_id,
        redirect_uri=params.get("redirect_uri"),
        verifier=verifier,
        now=time.time(),
    )
    audience = _audience(request, params, code.resources)
    user = await state.store.call(lambda s: s.get_user(code.user_id))
    if user is None:
        raise OAuthError("invalid_grant", "the user no longer exists")
    family_id = await state.store.call(
        lambda s: s.create_family(
            client_id=client.client_id,
            user_id=user.id,
            token_version=user.token_version,
            ttl=state.settings.refresh_token_ttl_seconds,
        )
    )
    await state.store.call(lambda s: s.attach_family_to_code(code_hash, family_id))
    access, ttl = issue_access_token(
        state,
        issuer=code.issuer,
        user=user,
        client_id=client.client_id,
        scope=code.scope,
        audience=audience,
        family_id=family_id,
    )
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": code.scope}
    if "refresh_token" in client.grant_types:
        refresh = new_refresh_token()
        await state.store.call(
            lambda s: s.add_refresh_token(
                sha256_hex(refresh),
                family_id=family_id,
                client_id=client.client_id,
                user_id=user.id,
                scope=code.scope,
                resources=code.resources,
                issuer=code.issuer,
                ttl=state.settings.refresh_token_ttl_seconds,
            )
        )
        body["refresh_token"] = refresh
    log.info(
        "oauth.token_issued",
        grant="authorization_code",
        client_id=client.client_id,
        username=user.username,
        scope=code.scope,
    )
    return body


async def _refresh_token(
    request: web.Request, state: AuthState, client: Client, params: dict[str, Any]
) -> dict[str, Any]:
    old = refresh_token_param(params, client)
    # Check what is asked for before spending the token: a refused request must not use it up.
    current = await state.store.call(lambda s: s.get_refresh_token(sha256_hex(old)))
    wanted: list[str] | None = None
    audience: list[str] = []
    if current is not None and current.client_id == client.client_id:
        wanted = requested_refresh_scope(params.get("scope"), current.scope)
        audience = _audience(request, params, current.resources)
    new = new_refresh_token()
    rotation = await state.store.call(
        lambda s: s.rotate_refresh_token(
            sha256_hex(old),
            sha256_hex(new),
            client.client_id,
            state.settings.refresh_token_ttl_seconds,
            state.settings.refresh_reuse_leeway_seconds,
        )
    )
    if isinstance(rotation, RotationRefused) and rotation.outcome == "reused":
        state.metrics.oauth_refresh_reuse.inc()
        log.warning("oauth.refresh_reuse_detected", client_id=client.client_id)
    rotated = check_rotation(rotation)
    if rotated.within_leeway:  # a parallel refresh (or a retry) by the same client: another pair, same family
        log.info("oauth.refresh_within_leeway", client_id=client.client_id)
    scope = refreshed_scope(rotated.token.scope, wanted, rotated.user.role)
    access, ttl = issue_access_token(
        state,
        issuer=rotated.token.issuer,
        user=rotated.user,
        client_id=client.client_id,
        scope=scope,
        audience=audience or _audience(request, params, rotated.token.resources),
        family_id=rotated.family.family_id,
    )
    log.info("oauth.token_issued", grant="refresh_token", client_id=client.client_id, username=rotated.user.username)
    return {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": scope, "refresh_token": new}


async def token_endpoint(request: web.Request) -> web.Response:
    state = auth_state(request)
    grant: GrantType | None = None
    try:
        params = await read_params(request, repeatable=frozenset({"resource"}))
        grant = grant_type_of(params)
        client = await authenticate_client(request, state, params)
        if grant == "authorization_code":
            body = await _authorization_code(request, state, client, params)
        else:
            body = await _refresh_token(request, state, client, params)
    except OAuthError as exc:
        state.metrics.oauth_token_errors.labels(exc.error).inc()
        log.info("oauth.token_error", error=exc.error, grant=grant or "other", reason=exc.description)
        return error_response(exc)
    state.metrics.oauth_tokens.labels(grant).inc()
    return web.json_response(body, headers=NO_STORE)
