"""OAuth Client ID Metadata Documents: an https `client_id` names a JSON document describing the client.

The document is fetched with a size and time limit, without following redirects, and - unless
CIMD_ALLOW_PRIVATE_ADDRESSES is on - without reaching loopback, private, link-local or other non-global
addresses (checked on the addresses the connection actually uses, so DNS rebinding cannot slip past).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from .common import read_at_most
from .params import GRANT_TYPES, load_json
from .records import Client
from .redirects import RedirectUriError, check_redirect_uri

log = structlog.get_logger(__name__)

MAX_DOCUMENT_BYTES = 8 * 1024  # the draft suggests documents stay within a few kilobytes
FETCH_TIMEOUT_SECONDS = 5.0
MIN_CACHE_SECONDS, DEFAULT_CACHE_SECONDS, MAX_CACHE_SECONDS = 60, 300, 86400
MAX_CLIENT_ID_LENGTH = 2000


class CimdError(Exception):
    """The document could not be used; the message is safe to show the user."""


def client_id_url_problem(url: str) -> str | None:
    if len(url) > MAX_CLIENT_ID_LENGTH:
        return "client_id URL is too long"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        return "client_id URL contains invalid characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "client_id is not a valid URL"
    if parts.scheme != "https" or not parts.hostname:
        return "client_id URL must use https"
    if parts.username is not None or "@" in parts.netloc:
        return "client_id URL must not contain user information"
    if "%" in parts.netloc or not parts.netloc.isascii():
        return "client_id URL host must not contain percent-encoding or non-ASCII characters"
    if "#" in url:
        return "client_id URL must not contain a fragment"
    if parts.path in {"", "/"}:
        return "client_id URL must have a path"
    if any(segment in {".", ".."} for segment in parts.path.split("/")):
        return "client_id URL must not contain dot segments"
    return None


def _address_allowed(address: str, allow_private: bool) -> bool:
    if allow_private:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses every non-global address."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        safe = [r for r in results if _address_allowed(r["host"], self._allow_private)]
        if not safe or len(safe) != len(results):
            raise OSError(f"{host} resolves to a private or loopback address")
        return safe

    async def close(self) -> None:
        await self._inner.close()


def _cache_seconds(cache_control: str | None) -> int:
    match = re.search(r"max-age=(\d+)", cache_control or "")
    if cache_control and ("no-store" in cache_control or "no-cache" in cache_control):
        return MIN_CACHE_SECONDS
    if not match:
        return DEFAULT_CACHE_SECONDS
    return max(MIN_CACHE_SECONDS, min(MAX_CACHE_SECONDS, int(match.group(1))))


def validate_document(
    url: str, doc: Any, allowed_hosts: tuple[str, ...], allowed_schemes: tuple[str, ...] = ()
) -> Client:
    """The client record for a fetched document, or CimdError."""
    if not isinstance(doc, dict):
        raise CimdError("client metadata document is not a JSON object")
    if doc.get("client_id") != url:
        raise CimdError("client metadata document names a different client_id than its URL")
    if "client_secret" in doc or "client_secret_expires_at" in doc:
        raise CimdError("client metadata document must not contain a client secret")
    method = doc.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise CimdError(
            "client metadata documents are supported for public clients only (token_endpoint_auth_method none)"
        )
    redirect_uris = doc.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris or len(redirect_uris) > 20:
        raise CimdError("client metadata document needs a redirect_uris list")
    for uri in redirect_uris:
        try:
            check_redirect_uri(uri, allowed_hosts, allowed_schemes)
        except RedirectUriError as exc:
            raise CimdError(str(exc)) from None
    grant_types = doc.get("grant_types", list(GRANT_TYPES))
    if (
        not isinstance(grant_types, list)
        or not all(isinstance(g, str) for g in grant_types)
        or "authorization_code" not in grant_types
    ):
        raise CimdError("client metadata document grant_types must include authorization_code")
    response_types = doc.get("response_types", ["code"])
    if response_types != ["code"]:
        raise CimdError('client metadata document response_types must be ["code"]')
    name = doc.get("client_name")
    client_name = name.strip()[:200] if isinstance(name, str) and name.strip() else None
    return Client(
        client_id=url,
        kind="cimd",
        secret_hash=None,
        auth_method="none",
        redirect_uris=tuple(redirect_uris),
        grant_types=tuple(g for g in grant_types if g in GRANT_TYPES),
        client_name=client_name,
        metadata={
            k: v
            for k, v in doc.items()
            if k
            in {
                "client_id",
                "client_name",
                "client_uri",
                "logo_uri",
                "redirect_uris",
                "grant_types",
                "response_types",
                "token_endpoint_auth_method",
                "scope",
                "software_id",
                "software_version",
                "application_type",
            }
        },
    )


class CimdFetcher:
    def __init__(
        self, *, allow_private: bool, allowed_hosts: tuple[str, ...], allowed_schemes: tuple[str, ...] = ()
    ) -> None:
        self.allow_private = allow_private
        self.allowed_hosts = allowed_hosts
        self.allowed_schemes = allowed_schemes
        self._session: aiohttp.ClientSession | None = None
        self._memo: dict[str, tuple[float, Client]] = {}

    async def start(self) -> None:
        # The default context honours SSL_CERT_FILE, which is how tests trust their own CA.
        context = ssl.create_default_context()
        connector = aiohttp.TCPConnector(
            resolver=_PublicOnlyResolver(self.allow_private), ssl=context, limit=10, force_close=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS),
            headers={"Accept": "application/json", "User-Agent": "mssql-mcp-oauth"},
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def cached(self, url: str) -> Client | None:
        hit = self._memo.get(url)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    async def fetch(self, url: str) -> Client:
        """The validated client record for `url` (from the short-lived cache when fresh)."""
        hit = self.cached(url)
        if hit is not None:
            return hit
        problem = client_id_url_problem(url)
        if problem:
            raise CimdError(problem)
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
            literal = True
        except ValueError:
            literal = False
        if literal and not _address_allowed(host.strip("[]"), self.allow_private):
            raise CimdError("client_id URL points at a private or loopback address")
        if self._session is None:
            raise CimdError("client metadata documents are not available right now")
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise CimdError(f"client metadata document answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > MAX_DOCUMENT_BYTES:
                    raise CimdError("client metadata document is too large")
                body = await read_at_most(resp.content, MAX_DOCUMENT_BYTES)
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise CimdError("client metadata document is too large")
                ttl = _cache_seconds(resp.headers.get("Cache-Control"))
        except CimdError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("oauth.cimd_fetch_failed", client_id=url, error=type(exc).__name__)
            raise CimdError("client metadata document could not be fetched") from None
        try:
            doc = load_json(body)
        except ValueError:
            raise CimdError("client metadata document is not valid JSON") from None
        record = replace(validate_document(url, doc, self.allowed_hosts, self.allowed_schemes), fetched_at=time.time())
        if len(self._memo) > 1000:
            self._memo.clear()
        self._memo[url] = (time.monotonic() + ttl, record)
        return record
