"""The public base URL of a request: configured, or derived from a trusted proxy's headers."""

from __future__ import annotations

import functools
import ipaddress

from aiohttp import web

from . import keys


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # Parsed once per settings value: this runs on every authenticated request.
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


@functools.lru_cache(maxsize=1024)  # asked on every MCP call (base URL, bearer check) for a few peer addresses
def address_is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    """Whether `address` lies in one of the TRUSTED_PROXIES entries (bad addresses are not trusted)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(trusted))


def peer_is_trusted(request: web.Request) -> bool:
    """Whether the directly connected peer is a trusted proxy whose forwarding headers count."""
    return address_is_trusted(request.remote or "", request.app[keys.SETTINGS].trusted_proxies)


def base_url(request: web.Request) -> str:
    """Scheme://host[/environment-path], without a trailing slash.

    PUBLIC_BASE_URL wins. Otherwise X-Forwarded-Proto/Host and X-Environment-Path are used only
    when the peer is in TRUSTED_PROXIES, so a client cannot forge the issuer or resource URL.
    """
    settings = request.app[keys.SETTINGS]
    if settings.public_base_url:
        return settings.public_base_url + settings.environment_path
    scheme, host, prefix = request.scheme, request.host, settings.environment_path
    if peer_is_trusted(request):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
        forwarded_prefix = request.headers.get("X-Environment-Path", "").strip().strip("/")
        if forwarded_prefix:
            prefix = f"/{forwarded_prefix}"
    return f"{scheme}://{host}{prefix}"
