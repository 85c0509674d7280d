"""OAuth parameters as plain values: scopes, realms, resource URLs, strict form and JSON bodies, errors.

Nothing here knows about HTTP requests (no aiohttp): the endpoint handlers parse a request into plain
values and the checks in app/auth/validate.py work on those.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..core import SURFACES

SCOPE_READ = "mcp:read"
SCOPE_WRITE = "mcp:write"
SUPPORTED_SCOPES = (SCOPE_READ, SCOPE_WRITE)

# Each surface (app.core.SURFACES) has its own issuer identity, so discovery under its prefix returns an
# issuer that matches its URL.
REALMS = tuple(surface.realm for surface in SURFACES)
MCP_PATHS = ("/mcp", "/sse")

TOKEN_AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
GRANT_TYPES = ("authorization_code", "refresh_token")

# OAuth request bodies are tiny; refusing big ones early keeps parsing cheap and predictable.
MAX_OAUTH_BODY = 64 * 1024
MAX_PARAM_LENGTH = 4096

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 §5.2-shaped error; handlers turn it into a JSON response (or, at /authorize, an error
    redirect to the client)."""

    def __init__(
        self, error: str, description: str = "", status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description or error)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class PageError(Exception):
    """Show the person an error page and send nothing to the client (its redirect URI is in doubt, or the
    sign-in form could not be verified); the message is safe to show."""

    def __init__(self, title: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.title = title
        self.message = message
        self.status = status


def is_cimd_client_id(client_id: str) -> bool:
    """An https client_id names a Client ID Metadata Document (app/auth/cimd.py)."""
    return client_id.startswith("https://")


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def sha256_hex(value: str) -> str:
    """Lookup hash for high-entropy secrets (codes, refresh tokens, client secrets): no salt needed."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def realm_of_path(path: str) -> str:
    for realm in REALMS:
        if realm and (path == realm or path.startswith(realm + "/")):
            return realm
    return ""


def normalize_url(url: str) -> str | None:
    """Canonical form for comparing resource identifiers: lower-case scheme/host, no default port, no
    trailing slash, no fragment. None when it is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"} or not parts.hostname or parts.fragment or parts.username is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and not ((scheme == "https" and port == 443) or (scheme == "http" and port == 80)):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host, path, parts.query, ""))


def server_resources(base: str) -> set[str]:
    """Every resource identifier this server answers to: the origin (whole server) and each MCP endpoint."""
    out = {normalize_url(base) or base}
    for realm in REALMS:
        for path in MCP_PATHS:
            out.add(normalize_url(base + realm + path) or base + realm + path)
    return out


def accepted_audiences(base: str, request_path: str) -> frozenset[str]:
    """Audiences valid at an MCP endpoint: the origin, or either endpoint (/mcp, /sse) of the same prefix."""
    return _audiences(base, realm_of_path(request_path))


@functools.lru_cache(maxsize=256)
def _audiences(base: str, realm: str) -> frozenset[str]:
    return frozenset({normalize_url(base) or base, *(normalize_url(base + realm + p) or "" for p in MCP_PATHS)})


def mcp_endpoint_of_path(request_path: str) -> str:
    """The MCP endpoint path (e.g. /chatgpt/sse) a request belongs to, for resource metadata links."""
    realm = realm_of_path(request_path)
    rest = request_path[len(realm) :]
    return realm + ("/sse" if rest.startswith("/sse") or rest.startswith("/messages") else "/mcp")


def parse_scope(raw: str | None) -> list[str]:
    if raw is None:
        return []
    items = raw.split(" ")
    for item in items:
        # RFC 6749 §3.3 scope-token syntax: printable ASCII except space, quote and backslash.
        if item and not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in item):
            raise OAuthError("invalid_scope", "malformed scope")
    return [item for item in items if item]


def scopes_for_role(role: str) -> list[str]:
    return [SCOPE_READ, SCOPE_WRITE] if role == "writer" else [SCOPE_READ]


def grant_scopes(requested: Iterable[str], role: str) -> list[str]:
    """Requested scopes the user's role allows; unknown scopes (openid, offline_access, ...) are ignored
    rather than refused because connectors add them freely. Nothing usable requested means the role's
    full set: ChatGPT re-connects without any scope parameter."""
    allowed = scopes_for_role(role)
    wanted = [s for s in SUPPORTED_SCOPES if s in set(requested)]
    granted = [s for s in wanted if s in allowed]
    if SCOPE_WRITE in granted and SCOPE_READ not in granted:
        granted.insert(0, SCOPE_READ)  # writing without reading is never useful
    return granted or allowed


def parse_form(body: bytes, *, repeatable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """x-www-form-urlencoded, strict: UTF-8, bounded, a parameter at most once (RFC 6749 §3.1) except the
    ones listed in `repeatable` (RFC 8707 `resource`), which come back as lists."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "malformed form body") from None
    out: dict[str, Any] = {}
    for name, value in pairs:
        if len(value) > MAX_PARAM_LENGTH:
            raise OAuthError("invalid_request", f"parameter {name[:40]} is too long")
        if name in repeatable:
            out.setdefault(name, []).append(value)
        elif name in out:
            raise OAuthError("invalid_request", f"parameter {name[:40]} given more than once")
        else:
            out[name] = value
    return out


def load_json(body: bytes) -> Any:
    """json.loads for untrusted bytes: every way it can fail (bad UTF-8, bad JSON, absurd nesting) is a
    ValueError, so a hostile body can never turn into a server error."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("malformed JSON") from None


def parse_json_params(body: bytes, *, repeatable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A JSON object of string values (the seed's /token accepted JSON): same shape as parse_form."""
    try:
        data = load_json(body)
    except ValueError:
        raise OAuthError("invalid_request", "malformed JSON body") from None
    if not isinstance(data, dict):
        raise OAuthError("invalid_request", "the JSON body must be an object")
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name in repeatable and isinstance(value, list) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
            continue
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise OAuthError("invalid_request", f"parameter {str(name)[:40]} must be a string")
        value = str(value)
        if len(value) > MAX_PARAM_LENGTH:
            raise OAuthError("invalid_request", f"parameter {str(name)[:40]} is too long")
        out[name] = [value] if name in repeatable else value
    return out
