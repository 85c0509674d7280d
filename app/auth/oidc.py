"""Optional upstream sign-in with OpenID Connect (Google, Microsoft Entra ID, or any issuer).

The login page gets a "Sign in with ..." button. The user signs in at the provider (authorization code
flow with PKCE and a nonce, built with authlib's OAuth 2 helpers); the ID token is checked with joserfc
against the provider's keys; only verified e-mail addresses on OIDC_ALLOWED_DOMAINS / OIDC_ALLOWED_EMAILS
get in. They become users with OIDC_DEFAULT_ROLE (an existing user with the same name keeps their role),
then see the same consent page as after a local sign-in.

This module is the provider's client (discovery, the authorization URL, the code exchange, the ID token
check); the browser's side of the flow (the button and the callback) is app/auth/upstream.py.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import aiohttp
import structlog
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization

from ..settings import SettingsError
from .common import read_at_most
from .params import load_json, sha256_hex
from .records import UpstreamSignIn

if TYPE_CHECKING:
    from ..settings import Settings

log = structlog.get_logger(__name__)

_ISSUERS = {
    "google": ("https://accounts.google.com", "Google"),
    "microsoft": ("https://login.microsoftonline.com/{tenant}/v2.0", "Microsoft"),
}
_MAX_DOC_BYTES = 256 * 1024


class UpstreamError(Exception):
    """Sign-in at the provider failed; the message is safe to show."""


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class UpstreamOidc:
    def __init__(
        self,
        *,
        issuer: str,
        label: str,
        client_id: str,
        client_secret: str,
        allowed_domains: tuple[str, ...],
        allowed_emails: tuple[str, ...],
        default_role: str,
        multi_tenant: bool = False,
    ) -> None:
        self.issuer = issuer
        self.label = label
        self.client_id = client_id
        self._client_secret = client_secret
        self.allowed_domains = tuple(d.lower().lstrip("@") for d in allowed_domains)
        self.allowed_emails = tuple(e.lower() for e in allowed_emails)
        self.default_role = default_role
        self.multi_tenant = multi_tenant  # Entra "common"/"organizations": issuer carries the tenant id
        self._session: aiohttp.ClientSession | None = None
        self._discovery: dict[str, Any] | None = None
        self._jwks: tuple[float, KeySet] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamOidc | None:
        provider = (settings.oidc_provider or "").strip()
        if not provider:
            return None
        if not settings.oidc_client_id:
            raise SettingsError("OIDC_CLIENT_ID: required when OIDC_PROVIDER is set")
        if not settings.oidc_client_secret:
            raise SettingsError("OIDC_CLIENT_SECRET: required when OIDC_PROVIDER is set")
        if not settings.oidc_allowed_domains and not settings.oidc_allowed_emails:
            # Otherwise anyone with an account at the provider could sign in.
            raise SettingsError("OIDC_ALLOWED_DOMAINS or OIDC_ALLOWED_EMAILS: required when OIDC_PROVIDER is set")
        multi_tenant = False
        if provider.lower() in _ISSUERS:
            template, label = _ISSUERS[provider.lower()]
            tenant = (settings.oidc_tenant or "common").strip()
            issuer = template.format(tenant=tenant)
            multi_tenant = provider.lower() == "microsoft" and tenant in {"common", "organizations", "consumers"}
        elif provider.startswith("https://") or _loopback_http(provider):
            issuer, label = provider.rstrip("/"), urlsplit(provider).hostname or provider
        else:
            raise SettingsError("OIDC_PROVIDER: expected google, microsoft or an https issuer URL")
        return cls(
            issuer=issuer,
            label=label,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            allowed_domains=settings.oidc_allowed_domains,
            allowed_emails=settings.oidc_allowed_emails,
            default_role=settings.oidc_default_role,
            multi_tenant=multi_tenant,
        )

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), trust_env=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._session is None:
            raise UpstreamError("upstream sign-in is not available right now")
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                body = await read_at_most(resp.content, _MAX_DOC_BYTES)
                if resp.status != 200 or len(body) > _MAX_DOC_BYTES:
                    raise UpstreamError(f"{self.label} answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise UpstreamError(f"{self.label} could not be reached") from None
        try:
            data = load_json(body)
        except ValueError:
            raise UpstreamError(f"{self.label} sent an unreadable answer") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"{self.label} sent an unreadable answer")
        return data

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            doc = await self._get_json(self.issuer + "/.well-known/openid-configuration")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(name), str):
                    raise UpstreamError(f"{self.label}'s discovery document lacks {name}")
            self._discovery = doc
        return self._discovery

    async def _keyset(self, refresh: bool = False) -> KeySet:
        if self._jwks is None or refresh or self._jwks[0] < time.monotonic():
            data = await self._get_json((await self.discovery())["jwks_uri"])
            try:
                # The provider's JSON as it came: import_key_set checks its shape itself (errors caught here).
                self._jwks = (time.monotonic() + 3600, KeySet.import_key_set(cast(KeySetSerialization, data)))
            except (JoseError, ValueError, TypeError, KeyError):
                raise UpstreamError(f"{self.label}'s signing keys are unreadable") from None
        return self._jwks[1]

    async def authorization_url(self, callback_url: str) -> tuple[str, UpstreamSignIn]:
        """Where the "Sign in with ..." button sends the browser, and what the callback will need."""
        doc = await self.discovery()
        upstream_state, nonce, verifier = generate_token(40), generate_token(40), generate_token(64)
        location = prepare_grant_uri(
            doc["authorization_endpoint"],
            self.client_id,
            "code",
            redirect_uri=callback_url,
            scope="openid email profile",
            state=upstream_state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
            prompt="select_account",
        )
        pending = UpstreamSignIn(
            state_hash=sha256_hex(upstream_state), nonce=nonce, verifier=verifier, redirect_uri=callback_url
        )
        return str(location), pending

    def email_allowed(self, email: str) -> bool:
        email = email.lower()
        domain = email.rpartition("@")[2]
        return email in self.allowed_emails or domain in self.allowed_domains

    async def exchange(self, code: str, upstream: UpstreamSignIn) -> str:
        doc = await self.discovery()
        if self._session is None:
            raise UpstreamError("upstream sign-in is not available right now")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": upstream.redirect_uri,
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "code_verifier": upstream.verifier,
        }
        try:
            async with self._session.post(doc["token_endpoint"], data=form, allow_redirects=False) as resp:
                body = await read_at_most(resp.content, _MAX_DOC_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise UpstreamError(f"{self.label} could not be reached") from None
        try:
            data = load_json(body)
        except ValueError:
            data = {}
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("id_token"), str):
            log.warning("auth.upstream_token_failed", provider=self.label, status=status)
            raise UpstreamError(f"{self.label} did not confirm the sign-in")
        return data["id_token"]

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        keyset = await self._keyset()
        try:
            try:
                token = jwt.decode(id_token, keyset, algorithms=["RS256", "ES256", "PS256"])
            except JoseError:
                token = jwt.decode(id_token, await self._keyset(refresh=True), algorithms=["RS256", "ES256", "PS256"])
        except (JoseError, ValueError, TypeError):
            raise UpstreamError(f"{self.label}'s answer could not be verified") from None
        claims = dict(token.claims)
        expected_issuer = self.issuer
        if self.multi_tenant and isinstance(claims.get("tid"), str):
            expected_issuer = f"https://login.microsoftonline.com/{claims['tid']}/v2.0"
        aud = claims.get("aud")
        now = time.time()
        if (
            claims.get("iss") != expected_issuer
            or not (aud == self.client_id or (isinstance(aud, list) and self.client_id in aud))
            or not isinstance(claims.get("exp"), int | float)
            or claims["exp"] + 60 < now
            or claims.get("nonce") != nonce
        ):
            raise UpstreamError(f"{self.label}'s answer could not be verified")
        return claims

    def email_of(self, claims: dict[str, Any]) -> str:
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise UpstreamError(f"{self.label} did not share an e-mail address")
        if claims.get("email_verified") is False or (claims.get("email_verified") is None and self.label == "Google"):
            raise UpstreamError(f"{self.label} has not verified this e-mail address")
        return email.strip().lower()
