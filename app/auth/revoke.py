"""POST {realm}/revoke: RFC 7009 token revocation.

A refresh token revokes its whole family (every refresh and access token of that sign-in); an access
token goes on the jti denylist until it would have expired anyway. Unknown tokens, and tokens of another
client, get the same 200 so the endpoint cannot be used to probe tokens.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from .clientauth import authenticate_client
from .common import error_response, read_params
from .params import NO_STORE, OAuthError, sha256_hex
from .signing import TokenInvalid
from .state import auth_state
from .validate import revocation_params

log = structlog.get_logger(__name__)


async def revoke_endpoint(request: web.Request) -> web.Response:
    state = auth_state(request)
    try:
        params = await read_params(request)
        client = await authenticate_client(request, state, params)
        token, _hint = revocation_params(params)  # the hint is checked, then not needed: both kinds are tried
    except OAuthError as exc:
        return error_response(exc)
    stored = await state.store.call(lambda s: s.get_refresh_token(sha256_hex(token)))
    if stored is not None:
        if stored.client_id == client.client_id:
            await state.store.call(lambda s: s.revoke_family(stored.family_id, "revoked by client"))
            log.info("oauth.revoked", kind="refresh_token", client_id=client.client_id)
        return web.Response(status=200, headers=NO_STORE)
    try:
        claims = (await state.keys_for(token)).verify(token)
    except TokenInvalid:
        return web.Response(status=200, headers=NO_STORE)
    if claims.get("client_id") == client.client_id and isinstance(claims.get("jti"), str):
        expires = float(claims.get("exp") or time.time() + state.settings.access_token_ttl_seconds)
        await state.store.call(lambda s: s.revoke_jti(claims["jti"], expires))
        log.info("oauth.revoked", kind="access_token", client_id=client.client_id)
    return web.Response(status=200, headers=NO_STORE)
