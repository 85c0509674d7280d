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

from .common import (
    GRANT_TYPES,
    NO_STORE,
    SUPPORTED_SCOPES,
    TOKEN_AUTH_METHODS,
    OAuthError,
    client_address,
    load_json,
    new_secret,
    parse_scope,
    read_limited_body,
    sha256_hex,
)
from .redirects import RedirectUriError, check_redirect_uri
from .state import auth_state
from .store import AuthStore

log = structlog.get_logger(__name__)

MAX_REDIRECT_URIS = 10
_TEXT_FIELDS = ("client_name", "software_id", "software_version")
_URL_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")


def _metadata_error(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def _text(value: Any, name: str, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _metadata_error(f"{name} must be a string")
    cleaned = "".join(c for c in value if c.isprintable()).strip()
    return cleaned[:limit] or None


def validate_registration(
    data: Any, allowed_hosts: tuple[str, ...], allowed_schemes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The client record to store (without id/secret) from a registration request, or OAuthError."""
    if not isinstance(data, dict):
        raise _metadata_error("the registration request must be a JSON object")
    uris = data.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a non-empty list")
    if len(uris) > MAX_REDIRECT_URIS:
        raise OAuthError("invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} redirect_uris")
    for uri in uris:
        try:
            check_redirect_uri(uri, allowed_hosts, allowed_schemes)
        except RedirectUriError as exc:
            raise OAuthError("invalid_redirect_uri", str(exc)) from None
    method = data.get("token_endpoint_auth_method", "client_secret_basic")  # RFC 7591 §2 default
    if method not in TOKEN_AUTH_METHODS:
        raise _metadata_error(f"token_endpoint_auth_method must be one of {', '.join(TOKEN_AUTH_METHODS)}")
    # RFC 7591 defaults to authorization_code only; connectors that omit the field still expect to stay
    # connected past the first access token, so refresh_token comes with it.
    grant_types = data.get("grant_types", list(GRANT_TYPES))
    if not isinstance(grant_types, list) or not grant_types or not all(isinstance(g, str) for g in grant_types):
        raise _metadata_error("grant_types must be a list of strings")
    unsupported = [g for g in grant_types if g not in GRANT_TYPES]
    if unsupported or "authorization_code" not in grant_types:
        raise _metadata_error("grant_types must include authorization_code and may add refresh_token only")
    response_types = data.get("response_types", ["code"])
    if not isinstance(response_types, list) or set(response_types) != {"code"}:
        raise _metadata_error('response_types must be ["code"]')
    scope = data.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise _metadata_error("scope must be a space-separated string")
        try:
            scope = " ".join(s for s in parse_scope(scope) if s in SUPPORTED_SCOPES) or None
        except OAuthError:
            raise _metadata_error("malformed scope") from None
    application_type = data.get("application_type")
    if application_type is not None and application_type not in {"web", "native"}:
        raise _metadata_error("application_type must be web or native")
    metadata: dict[str, Any] = {
        "redirect_uris": list(uris),
        "token_endpoint_auth_method": method,
        "grant_types": list(dict.fromkeys(grant_types)),
        "response_types": ["code"],
    }
    for name in _TEXT_FIELDS:
        value = _text(data.get(name), name)
        if value:
            metadata[name] = value
    for name in _URL_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value.startswith("https://") and len(value) <= 2000:
            metadata[name] = value
    if scope:
        metadata["scope"] = scope
    if application_type:
        metadata["application_type"] = application_type
    contacts = data.get("contacts")
    if isinstance(contacts, list) and all(isinstance(c, str) for c in contacts):
        metadata["contacts"] = [c[:200] for c in contacts[:5]]
    return metadata


async def register_endpoint(request: web.Request) -> web.Response:
    state = auth_state(request)
    try:
        body = await read_limited_body(request)
        try:
            data = load_json(body)
        except ValueError:
            raise _metadata_error("the registration request must be a JSON object") from None
        metadata = validate_registration(
            data, tuple(state.settings.allowed_redirect_hosts), tuple(state.settings.allowed_redirect_schemes)
        )
    except OAuthError as exc:
        state.metrics.oauth_registrations.labels("error").inc()
        log.info("oauth.registration_refused", error=exc.error, reason=exc.description)
        return exc.response()
    client_id = "mcp-" + new_secret(18)
    secret = new_secret(32) if metadata["token_endpoint_auth_method"] != "none" else None
    issued_at = int(time.time())
    address = client_address(request)
    saved = await state.store.call(
        AuthStore.register_client,
        {
            "client_id": client_id,
            "kind": "dcr",
            "secret_hash": sha256_hex(secret) if secret else None,
            "auth_method": metadata["token_endpoint_auth_method"],
            "redirect_uris": metadata["redirect_uris"],
            "grant_types": metadata["grant_types"],
            "client_name": metadata.get("client_name"),
            "metadata": metadata,
            "created_at": issued_at,
        },
        address,
        state.settings.registrations_per_hour,
    )
    if not saved:
        state.metrics.oauth_registrations.labels("error").inc()
        log.warning("oauth.registration_rate_limited", address=address)
        return OAuthError(
            "invalid_client_metadata",
            "too many registrations from this address; try again later",
            status=429,
            headers={"Retry-After": "3600"},
        ).response()
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
