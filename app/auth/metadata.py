"""Discovery documents: RFC 8414 authorization server metadata (and its OpenID alias) and RFC 9728
protected resource metadata, at every URL ChatGPT, Claude and the MCP SDKs try.

There are two issuers, one per MCP prefix: `{base}` for the Claude endpoints and `{base}/chatgpt` for the
ChatGPT ones. Each document's `issuer` is the one its URL names (RFC 8414 §3.3), whether it was fetched
path-inserted (`/.well-known/oauth-authorization-server/chatgpt`) or appended
(`/chatgpt/.well-known/oauth-authorization-server`). The base URL comes from `app.urls.base_url`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..core import SURFACES, surface_by_prefix
from ..cors import PUBLIC, allow_cors
from ..urls import base_url
from .params import (
    GRANT_TYPES,
    MCP_PATHS,
    REALMS,
    SUPPORTED_SCOPES,
    TOKEN_AUTH_METHODS,
    realm_of_path,
)
from .state import auth_state

AS_DOCS = ("oauth-authorization-server", "openid-configuration")
PRM_DOC = "oauth-protected-resource"
MCP_ENDPOINTS = tuple(realm + path for realm in REALMS for path in MCP_PATHS)  # /mcp, /sse, /chatgpt/mcp, ...
JWKS_PATH = "/.well-known/jwks.json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-cache"})


def _not_found() -> web.Response:
    return _json({"error": "not_found", "error_description": "no metadata document at this URL"}, status=404)


def authorization_server_metadata(request: web.Request, realm: str) -> dict[str, Any]:
    base = base_url(request)
    issuer = base + realm
    state = auth_state(request)
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "revocation_endpoint": f"{issuer}/revoke",
        "jwks_uri": base + JWKS_PATH,
        "scopes_supported": list(SUPPORTED_SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }
    if state.settings.public_base_url:
        doc["service_documentation"] = base + "/health"
    return doc


def protected_resource_metadata(request: web.Request, endpoint: str) -> dict[str, Any]:
    """`endpoint` is "" for the whole server or one of MCP_ENDPOINTS; `resource` is then exactly the URL a
    user enters, and the first authorization server is the issuer for that prefix."""
    base = base_url(request)
    realm = realm_of_path(endpoint)
    surface = surface_by_prefix(realm)
    name = "MSSQL MCP Server" + (surface.title_suffix if surface else "")
    return {
        "resource": base + endpoint,
        "authorization_servers": [base + realm],
        "scopes_supported": list(SUPPORTED_SCOPES),
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    }


def resource_metadata_url(request: web.Request, endpoint: str) -> str:
    """Where the WWW-Authenticate challenge sends clients: reachable through the same prefix as the MCP
    endpoint itself (so it works behind a proxy that publishes the service under a path)."""
    return base_url(request) + "/.well-known/" + PRM_DOC + endpoint


def _strip_public_prefix(request: web.Request, tail: str) -> str:
    # A proxy that forwards /.well-known/* unchanged leaves its own path prefix inside the tail.
    prefix = urlsplit(base_url(request)).path.rstrip("/")
    if prefix and (tail == prefix or tail.startswith(prefix + "/")):
        return tail[len(prefix) :]
    return tail


def _redirect(location: str) -> web.Response:
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-cache"})


def _as_handler(doc: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tail = _strip_public_prefix(request, request.match_info.get("tail", "")).rstrip("/")
        if tail in REALMS:
            return _json(authorization_server_metadata(request, tail))
        if tail in MCP_ENDPOINTS:
            # The seed's quirk: clients that insert the MCP endpoint's path get the right issuer's document.
            return _redirect(base_url(request) + realm_of_path(tail) + "/.well-known/" + doc)
        return _not_found()

    return handler


async def prm_handler(request: web.Request) -> web.StreamResponse:
    tail = _strip_public_prefix(request, request.match_info.get("tail", "")).rstrip("/")
    if tail == "" or tail in MCP_ENDPOINTS:
        return _json(protected_resource_metadata(request, tail))
    if tail in REALMS:
        # The resource path without /mcp (ChatGPT tries it): the document of that prefix's MCP endpoint.
        return _redirect(base_url(request) + f"/.well-known/{PRM_DOC}{tail}/mcp")
    return _not_found()


def _realm_as_handler(realm: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return _json(authorization_server_metadata(request, realm))

    return handler


def _redirect_handler(path: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return _redirect(base_url(request) + path)

    return handler


async def jwks_handler(request: web.Request) -> web.StreamResponse:
    return _json(auth_state(request).keys.jwks())


def add_metadata_routes(app: web.Application) -> None:
    routes: list[tuple[str, Handler]] = []
    for doc in AS_DOCS:
        routes.append((f"/.well-known/{doc}{{tail:.*}}", _as_handler(doc)))
        for realm in REALMS:
            if realm:
                routes.append((f"{realm}/.well-known/{doc}", _realm_as_handler(realm)))
        for endpoint in MCP_ENDPOINTS:  # quirk: appended after the endpoint path
            routes.append(
                (f"{endpoint}/.well-known/{doc}", _redirect_handler(realm_of_path(endpoint) + "/.well-known/" + doc))
            )
        for realm in REALMS:  # clients that derive discovery from the token endpoint's URL
            routes.append((f"{realm}/token/.well-known/{doc}", _realm_as_handler(realm)))
    routes.append((f"/.well-known/{PRM_DOC}{{tail:.*}}", prm_handler))
    for endpoint in MCP_ENDPOINTS:
        routes.append((f"{endpoint}/.well-known/{PRM_DOC}", _redirect_handler(f"/.well-known/{PRM_DOC}{endpoint}")))
    for surface in SURFACES:
        if surface.prefix:  # "{prefix}/.well-known/..." guessed from the surface's own URL
            routes.append(
                (
                    f"{surface.prefix}/.well-known/{PRM_DOC}",
                    _redirect_handler(f"/.well-known/{PRM_DOC}{surface.mcp_path}"),
                )
            )
    routes.append((JWKS_PATH, jwks_handler))
    for path, handler in routes:
        # Browser-based MCP clients (the Inspector) read discovery cross-origin; app.cors.PUBLIC: any origin.
        app.router.add_get(path, handler)
        allow_cors(app, path, PUBLIC, methods="GET, OPTIONS")
