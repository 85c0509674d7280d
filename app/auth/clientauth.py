"""Client authentication at the token and revocation endpoints (RFC 6749 §2.3): `client_secret_basic`,
`client_secret_post`, or `none` for public clients (which send only their client_id)."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from .common import OAuthError, sha256_hex
from .state import AuthState

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="mssql-mcp"'}


def _invalid_client(description: str, basic: bool) -> OAuthError:
    # 401 tells Claude (and RFC-following clients) to register again when we no longer know them.
    return OAuthError("invalid_client", description, status=401, headers=BASIC_CHALLENGE if basic else None)


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        raise _invalid_client("unsupported client authentication scheme", True)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _invalid_client("malformed Basic credentials", True) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _invalid_client("malformed Basic credentials", True)
    return unquote_plus(client_id), unquote_plus(secret)


async def authenticate_client(request: web.Request, state: AuthState, params: dict[str, Any]) -> dict[str, Any]:
    header = request.headers.get("Authorization")
    basic = header is not None
    basic_id = basic_secret = None
    if header is not None:
        basic_id, basic_secret = _basic_credentials(header)
    body_id = params.get("client_id")
    body_secret = params.get("client_secret")
    if basic and body_secret is not None:
        raise OAuthError("invalid_request", "use only one client authentication method")
    if basic and body_id is not None and body_id != basic_id:
        raise _invalid_client("client_id does not match the credentials", basic)
    client_id = basic_id if basic else body_id
    if not client_id:
        raise _invalid_client("client authentication is required (client_id)", basic)
    client = await state.find_client(client_id)
    if client is None:
        raise _invalid_client("unknown client", basic)
    secret = basic_secret if basic else body_secret
    if client["auth_method"] == "none":
        if secret:
            raise _invalid_client("this client is public and must not send a secret", basic)
        return client
    if (
        not secret
        or not client.get("secret_hash")
        or not hmac.compare_digest(sha256_hex(secret), client["secret_hash"])
    ):
        raise _invalid_client("client authentication failed", basic)
    return client
