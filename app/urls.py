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


def _peer_is_trusted(request: web.Request, trusted: tuple[str, ...]) -> bool:
    peer = request.remote or ""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(trusted))


def base_url(request: web.Request) -> str:
    """Scheme://host[/environment-path], without a trailing slash.

    PUBLIC_BASE_URL wins. Otherwise X-Forwarded-Proto/Host and X-Environment-Path are used only
    when the peer is in TRUSTED_PROXIES, so a client cannot forge the issuer or resource URL.
    """
    settings = request.app[keys.SETTINGS]
    if settings.public_base_url:
        return settings.public_base_url + settings.environment_path
    scheme, host, prefix = request.scheme, request.host, settings.environment_path
    if _peer_is_trusted(request, settings.trusted_proxies):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
        forwarded_prefix = request.headers.get("X-Environment-Path", "").strip().strip("/")
        if forwarded_prefix:
            prefix = f"/{forwarded_prefix}"
    return f"{scheme}://{host}{prefix}"
