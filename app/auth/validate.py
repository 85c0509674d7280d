"""The checks of /authorize, /token, /register and /revoke requests, as pure functions over plain values.

No HTTP here (no aiohttp, no request objects): a handler parses the request into plain values, calls
these, and renders what they return or raise. `OAuthError` is an RFC 6749 error for the client (a JSON
body, or at /authorize an error redirect); `PageError` is an error page for the person, used while the
client or its redirect URI is still in doubt (RFC 6749 §4.1.2.1: then nothing is sent anywhere).
PKCE uses authlib's RFC 7636 helpers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oauth2.rfc7636.challenge import CODE_CHALLENGE_PATTERN, CODE_VERIFIER_PATTERN

from .params import (
    GRANT_TYPES,
    SUPPORTED_SCOPES,
    TOKEN_AUTH_METHODS,
    OAuthError,
    PageError,
    grant_scopes,
    is_cimd_client_id,
    normalize_url,
    parse_scope,
    sha256_hex,
)
from .records import AuthorizationCode, AuthorizationRequest, Client, CodeRedemption, Rotated, Rotation
from .redirects import RedirectUriError, check_redirect_uri, redirect_host_label, redirect_matches

Query = Mapping[str, Sequence[str]]  # every value of each query parameter, in order
GrantType = Literal["authorization_code", "refresh_token"]

MAX_STATE_LENGTH = 2048
MAX_REDIRECT_URIS = 10
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="mssql-mcp"'}
_TEXT_FIELDS = ("client_name", "software_id", "software_version")
_URL_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")


def _first(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


# -- PKCE (RFC 7636, S256 only) --------------------------------------------------------------------------
def challenge_well_formed(challenge: str) -> bool:
    # fullmatch: authlib's patterns end in `$`, which would also accept a trailing newline with `match`.
    return CODE_CHALLENGE_PATTERN.fullmatch(challenge) is not None


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Whether `verifier` is well formed and BASE64URL(SHA256(verifier)) equals `challenge` (compared in
    constant time)."""
    if CODE_VERIFIER_PATTERN.fullmatch(verifier) is None:
        return False
    return hmac.compare_digest(str(create_s256_code_challenge(verifier)), challenge)


# -- /authorize ------------------------------------------------------------------------------------------
def authorize_client_id(query: Query) -> str:
    """The client the request names (PageError while that is in doubt)."""
    for name in ("client_id", "redirect_uri"):
        if len(query.get(name, ())) > 1:
            raise PageError("Invalid request", f"The parameter {name} was given more than once.")
    client_id = _first(query, "client_id") or ""
    if not client_id:
        raise PageError("Invalid request", "The request does not name a client (client_id is missing).")
    return client_id


def authorize_redirect_uri(
    query: Query, client: Client, allowed_hosts: Sequence[str], allowed_schemes: Sequence[str]
) -> tuple[str, bool]:
    """(redirect URI, whether the request gave it): registered for the client and allowed here."""
    registered = client.redirect_uris
    redirect_uri = _first(query, "redirect_uri")
    if redirect_uri is None:
        if len(registered) != 1:
            raise PageError("Invalid request", "The request does not say where to return (redirect_uri).")
        redirect_uri, given = registered[0], False
    else:
        given = True
        if not redirect_matches(redirect_uri, registered):
            raise PageError("Invalid request", "The return address (redirect_uri) is not registered for this app.")
    try:
        check_redirect_uri(redirect_uri, allowed_hosts, allowed_schemes)
    except RedirectUriError as exc:
        raise PageError("Invalid request", f"The return address is not allowed: {exc}.") from None
    return redirect_uri, given


def authorize_state(query: Query) -> str | None:
    state = _first(query, "state")
    if state is not None and len(state) > MAX_STATE_LENGTH:
        raise PageError("Invalid request", "The state parameter is too long.")
    return state


def client_label(client: Client) -> tuple[str, str]:
    """(display name, note) for the consent page; names chosen by a client are marked as such."""
    if is_cimd_client_id(client.client_id):
        host = urlsplit(client.client_id).hostname or "?"
        return client.client_name or host, f"This app is identified by its web address at {host}."
    name = client.client_name or "An unnamed app"
    return name, "The app chose this name itself when it registered; check where you will be sent back to."


def authorization_request(
    query: Query,
    client: Client,
    *,
    redirect_uri: str,
    redirect_uri_given: bool,
    state: str | None,
    issuer: str,
    realm: str,
    known_resources: Collection[str],
) -> AuthorizationRequest:
    """The rest of the request, once its redirect URI is trusted; OAuthError goes back to that URI."""
    for name, values in query.items():
        if name != "resource" and len(values) > 1:
            raise OAuthError("invalid_request", f"parameter {name[:40]} given more than once")
    if _first(query, "response_type") != "code":
        raise OAuthError("unsupported_response_type", "only response_type=code is supported")
    if "authorization_code" not in client.grant_types:
        raise OAuthError("unauthorized_client", "this client may not use the authorization code grant")
    challenge = _first(query, "code_challenge") or ""
    if not challenge:
        raise OAuthError("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
    if _first(query, "code_challenge_method") != "S256":
        raise OAuthError("invalid_request", "only code_challenge_method=S256 is supported")
    if not challenge_well_formed(challenge):
        raise OAuthError("invalid_request", "malformed code_challenge")
    if _first(query, "request") is not None or _first(query, "request_uri") is not None:
        raise OAuthError("request_not_supported", "request objects are not supported")
    if _first(query, "prompt") == "none":
        raise OAuthError("login_required", "this server always asks the user to sign in")
    scopes = parse_scope(_first(query, "scope"))
    resources: list[str] = []
    for raw in query.get("resource", ()):
        normalized = normalize_url(raw)
        if normalized is None or normalized not in known_resources:
            raise OAuthError("invalid_target", "resource is not a resource of this server")
        if normalized not in resources:
            resources.append(normalized)
    name, note = client_label(client)
    return AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        redirect_uri_given=redirect_uri_given,
        state=state,
        code_challenge=challenge,
        scopes=tuple(scopes),
        resources=tuple(resources),
        issuer=issuer,
        realm=realm,
        client_name=name,
        client_note=note,
        redirect_host=redirect_host_label(redirect_uri),
    )


# -- /token ----------------------------------------------------------------------------------------------
def grant_type_of(params: Mapping[str, Any]) -> GrantType:
    grant = params.get("grant_type") or ""
    if not grant:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant == "authorization_code":
        return "authorization_code"
    if grant == "refresh_token":
        return "refresh_token"
    raise OAuthError("unsupported_grant_type", "supported grants: authorization_code, refresh_token")


def code_exchange_params(params: Mapping[str, Any]) -> tuple[str, str]:
    """(code, code_verifier) of an authorization_code grant."""
    code, verifier = params.get("code"), params.get("code_verifier")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    if not verifier:
        raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
    return code, verifier


def check_redeemed_code(
    redemption: CodeRedemption, *, client_id: str, redirect_uri: str | None, verifier: str, now: float
) -> AuthorizationCode:
    """The code, if this exchange may use it."""
    code = redemption.code
    if code is None:
        raise OAuthError("invalid_grant", "unknown or expired authorization code")
    if redemption.reused:
        raise OAuthError("invalid_grant", "authorization code was already used")
    if code.client_id != client_id:
        raise OAuthError("invalid_grant", "authorization code was issued to another client")
    if code.expires_at <= now:
        raise OAuthError("invalid_grant", "authorization code expired")
    if (code.redirect_uri_given or redirect_uri is not None) and redirect_uri != code.redirect_uri:
        raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request")
    if not verifier_matches(verifier, code.code_challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    return code


def token_audience(
    requested: Sequence[str], granted: Sequence[str], *, known: Collection[str], origin: str
) -> list[str]:
    """The audience for a new access token: what is asked for now (RFC 8707), within what was granted."""
    asked = []
    for raw in requested:
        normalized = normalize_url(raw)
        if normalized is None or normalized not in known:
            raise OAuthError("invalid_target", "resource is not a resource of this server")
        if granted and normalized not in granted:
            raise OAuthError("invalid_target", "resource was not part of the authorization")
        asked.append(normalized)
    if asked:
        return list(dict.fromkeys(asked))
    if granted:
        return list(granted)
    # No resource anywhere (a pre-2025-06-18 client): the token is for this whole server.
    return [normalize_url(origin) or origin]


def refresh_token_param(params: Mapping[str, Any], client: Client) -> str:
    token = params.get("refresh_token")
    if not token:
        raise OAuthError("invalid_request", "refresh_token is required")
    if "refresh_token" not in client.grant_types:
        raise OAuthError("unauthorized_client", "this client may not use refresh tokens")
    return str(token)


def requested_refresh_scope(raw: str | None, granted_scope: str) -> list[str] | None:
    """The narrower scope a refresh asks for (None: keep the granted one); never more than granted."""
    if not raw:
        return None
    wanted = parse_scope(raw)
    if any(s not in granted_scope.split() for s in wanted):
        raise OAuthError("invalid_scope", "scope exceeds what was granted")
    return wanted


def refreshed_scope(granted_scope: str, wanted: Sequence[str] | None, role: str) -> str:
    granted = granted_scope.split()
    if wanted is not None:
        granted = [s for s in granted if s in wanted]
    # The user's role may have dropped since: never keep write access a reader no longer has.
    allowed = grant_scopes(granted, role)
    return " ".join(s for s in granted if s in allowed)


_REFRESH_REFUSALS = {
    "unknown": "unknown refresh token",
    "client_mismatch": "refresh token was issued to another client",
    "expired": "refresh token expired",
    "revoked": "refresh token was revoked",
    "user_gone": "the user no longer exists or changed their password",
    "reused": "refresh token was already used; the session has been revoked",
}


def check_rotation(rotation: Rotation) -> Rotated:
    if isinstance(rotation, Rotated):
        return rotation
    raise OAuthError("invalid_grant", _REFRESH_REFUSALS.get(rotation.outcome, "invalid refresh token"))


# -- client authentication (RFC 6749 §2.3) at /token and /revoke -----------------------------------------
@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    secret: str | None
    basic: bool  # sent as HTTP Basic: a refusal then carries a Basic challenge


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


def client_credentials(authorization: str | None, params: Mapping[str, Any]) -> ClientCredentials:
    """`client_secret_basic` (the Authorization header), `client_secret_post`, or a public client's
    client_id alone; exactly one method."""
    basic = authorization is not None
    basic_id = basic_secret = None
    if authorization is not None:
        basic_id, basic_secret = _basic_credentials(authorization)
    body_id = params.get("client_id")
    body_secret = params.get("client_secret")
    if basic and body_secret is not None:
        raise OAuthError("invalid_request", "use only one client authentication method")
    if basic and body_id is not None and body_id != basic_id:
        raise _invalid_client("client_id does not match the credentials", basic)
    client_id = basic_id if basic else body_id
    if not client_id:
        raise _invalid_client("client authentication is required (client_id)", basic)
    return ClientCredentials(client_id, basic_secret if basic else body_secret, basic)


def check_client_authentication(client: Client | None, credentials: ClientCredentials) -> Client:
    """The client, if the credentials authenticate it (public clients must send no secret)."""
    if client is None:
        raise _invalid_client("unknown client", credentials.basic)
    secret = credentials.secret
    if client.auth_method == "none":
        if secret:
            raise _invalid_client("this client is public and must not send a secret", credentials.basic)
        return client
    if not secret or not client.secret_hash or not hmac.compare_digest(sha256_hex(secret), client.secret_hash):
        raise _invalid_client("client authentication failed", credentials.basic)
    return client


# -- /revoke (RFC 7009) ----------------------------------------------------------------------------------
def revocation_params(params: Mapping[str, Any]) -> tuple[str, str | None]:
    """(token, token_type_hint)."""
    token = params.get("token")
    if not token:
        raise OAuthError("invalid_request", "token is required")
    hint = params.get("token_type_hint")
    if hint is not None and hint not in {"access_token", "refresh_token"}:
        raise OAuthError("unsupported_token_type", "token_type_hint must be access_token or refresh_token")
    return str(token), hint


# -- /register (RFC 7591) --------------------------------------------------------------------------------
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
    data: Any, allowed_hosts: Sequence[str], allowed_schemes: Sequence[str] = ()
) -> dict[str, Any]:
    """The client metadata to store and return (without id/secret) from a registration request, or
    OAuthError (RFC 7591 §3.2.2: invalid_redirect_uri / invalid_client_metadata)."""
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
