"""The HTTP side every OAuth endpoint shares: bounded request bodies, the caller's address, the issuer of a
request, and JSON error responses. The plain-value pieces (scopes, resources, parsing) are in params.py."""

from __future__ import annotations

from typing import Any

from aiohttp import StreamReader, web

from .. import keys
from ..urls import address_is_trusted, base_url
from .params import MAX_OAUTH_BODY, NO_STORE, OAuthError, parse_form, parse_json_params


def error_response(exc: OAuthError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers={**NO_STORE, **exc.headers})


def issuer_for(request: web.Request, realm: str) -> str:
    return base_url(request) + realm


async def read_at_most(stream: StreamReader, limit: int) -> bytes:
    """The whole body of an aiohttp StreamReader, or limit + 1 bytes when it is longer.

    `StreamReader.read(n)` returns whatever has arrived so far (one TCP segment), not n bytes: a body
    split across segments would be cut short. Read until EOF or past the limit.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def read_limited_body(request: web.Request, limit: int = MAX_OAUTH_BODY) -> bytes:
    """The whole request body (every TCP segment of it), refusing bodies longer than `limit` with 413."""
    if request.content_length is not None and request.content_length > limit:
        raise OAuthError("invalid_request", "request body too large", status=413)
    body = await read_at_most(request.content, limit)
    if len(body) > limit:
        raise OAuthError("invalid_request", "request body too large", status=413)
    return body


async def read_params(
    request: web.Request, *, repeatable: frozenset[str] = frozenset(), allow_json: bool = True
) -> dict[str, Any]:
    body = await read_limited_body(request)
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        return parse_form(body, repeatable=repeatable)
    if allow_json and (ctype == "application/json" or ctype.endswith("+json")):
        return parse_json_params(body, repeatable=repeatable)
    raise OAuthError(
        "invalid_request", "use application/x-www-form-urlencoded" + (" or application/json" if allow_json else "")
    )


def client_address(request: web.Request) -> str:
    """The caller's address for throttling: the peer, or the nearest untrusted X-Forwarded-For hop when the
    peer is a trusted proxy (so one client cannot pose as many by forging the header)."""
    peer = request.remote or "unknown"
    trusted = request.app[keys.SETTINGS].trusted_proxies
    if not address_is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not address_is_trusted(hop, trusted):
            return hop[:64]
    return peer
