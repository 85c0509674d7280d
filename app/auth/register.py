"""POST {realm}/register: RFC 7591 dynamic client registration.

Redirect URIs must pass the allowlist; the secret (for confidential clients) is returned once and stored
only as a hash. Each address may register REGISTRATIONS_PER_HOUR clients an hour, and a client never used
for an authorization within UNUSED_CLIENT_SECONDS is forgotten. Errors are RFC 7591 §3.2.2 shaped:
invalid_redirect_uri / invalid_client_metadata.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from .common import client_address, error_response, read_limited_body
from .params import NO_STORE, OAuthError, load_json, new_secret, sha256_hex
from .records import Client
from .state import auth_state
from .validate import validate_registration

log = structlog.get_logger(__name__)


async def register_endpoint(request: web.Request) -> web.Response:
    state = auth_state(request)
    try:
        body = await read_limited_body(request)
        try:
            data = load_json(body)
        except ValueError:
            raise OAuthError("invalid_client_metadata", "the registration request must be a JSON object") from None
        metadata = validate_registration(
            data, state.settings.allowed_redirect_hosts, state.settings.allowed_redirect_schemes
        )
    except OAuthError as exc:
        state.metrics.oauth_registrations.labels("error").inc()
        log.info("oauth.registration_refused", error=exc.error, reason=exc.description)
        return error_response(exc)
    client_id = "mcp-" + new_secret(18)
    secret = new_secret(32) if metadata["token_endpoint_auth_method"] != "none" else None
    issued_at = int(time.time())
    address = client_address(request)
    saved = await state.store.call(
        lambda s: s.register_client(
            Client(
                client_id=client_id,
                kind="dcr",
                secret_hash=sha256_hex(secret) if secret else None,
                auth_method=metadata["token_endpoint_auth_method"],
                redirect_uris=tuple(metadata["redirect_uris"]),
                grant_types=tuple(metadata["grant_types"]),
                client_name=metadata.get("client_name"),
                metadata=metadata,
                created_at=issued_at,
            ),
            address,
            state.settings.registrations_per_hour,
        )
    )
    if not saved:
        state.metrics.oauth_registrations.labels("error").inc()
        log.warning("oauth.registration_rate_limited", address=address)
        return error_response(
            OAuthError(
                "invalid_client_metadata",
                "too many registrations from this address; try again later",
                status=429,
                headers={"Retry-After": "3600"},
            )
        )
    state.metrics.oauth_registrations.labels("ok").inc()
    log.info(
        "oauth.client_registered",
        client_id=client_id,
        client_name=metadata.get("client_name"),
        auth_method=metadata["token_endpoint_auth_method"],
    )
    response: dict[str, Any] = {"client_id": client_id, "client_id_issued_at": issued_at, **metadata}
    if secret:
        response["client_secret"] = secret
        response["client_secret_expires_at"] = 0  # never expires
    return web.json_response(response, status=201, headers=NO_STORE)
