"""Which redirect URIs a client may register and use.

https on an allowed host (or one of its subdomains), loopback on any port over http(s) for native clients
(Claude Code, MCP Inspector, VS Code), or a private-use scheme the operator allows (Cursor). Everything
that could make a URL mean something other than what it looks like is refused outright: userinfo,
fragments, backslashes, control characters, percent-encoding or non-ASCII in the host, raw IPs other than
loopback, lookalike hosts such as `chatgpt.com.evil.com`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_REDIRECT_URI_LENGTH = 2000


class RedirectUriError(ValueError):
    pass


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Schemes that can never be a private-use redirect: they name the web, files or script (RFC 8252 §7.1 asks
# for a scheme the app owns, ideally a reverse domain name such as com.example.app).
_NEVER_PRIVATE_SCHEMES = frozenset(
    {
        "http",
        "https",
        "javascript",
        "data",
        "file",
        "blob",
        "about",
        "vbscript",
        "ftp",
        "ws",
        "wss",
        "mailto",
        "chrome",
        "view-source",
    }
)


def _check_private_use(parts: SplitResult, scheme: str, allowed_schemes: Iterable[str]) -> None:
    allowed = {s.strip().lower().rstrip(":/") for s in allowed_schemes if s.strip()}
    if scheme in _NEVER_PRIVATE_SCHEMES or scheme not in allowed:
        raise RedirectUriError(
            f"redirect URI scheme {scheme}: is not allowed (https, loopback, or a private-use "
            "scheme listed in ALLOWED_REDIRECT_SCHEMES)"
        )
    if not parts.path and not parts.netloc:
        raise RedirectUriError("redirect URI needs a path after its scheme")


def check_redirect_uri(uri: str, allowed_hosts: Iterable[str], allowed_schemes: Iterable[str] = ()) -> None:
    """Raise RedirectUriError (message safe to show) unless `uri` may be registered.

    `allowed_schemes` are private-use schemes of native apps (RFC 8252 §7.1, e.g. Cursor's `cursor:`);
    their redirects go to an app on the user's machine, and PKCE binds the code to that app's request."""
    if not isinstance(uri, str) or not uri:
        raise RedirectUriError("redirect URI must be a non-empty string")
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        raise RedirectUriError("redirect URI is too long")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c in "\\" for c in uri):
        raise RedirectUriError("redirect URI contains whitespace, control characters or backslashes")
    if "#" in uri:
        raise RedirectUriError("redirect URI must not contain a fragment")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise RedirectUriError("redirect URI is not a valid URL") from None
    if "@" in parts.netloc:
        raise RedirectUriError("redirect URI must not contain user information")
    # A percent sign in the authority is an encoded delimiter or a lookalike (evil.com%2f.chatgpt.com,
    # %2e, %40, %5c, %3f, %23) that browsers and servers decode differently; non-ASCII hosts can fold
    # into delimiters under IDNA (U+FF0F). Registered hosts are plain ASCII names.
    if "%" in parts.netloc or not parts.netloc.isascii():
        raise RedirectUriError("redirect URI host must not contain percent-encoding or non-ASCII characters")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme and scheme not in {"https", "http"}:
        return _check_private_use(parts, scheme, allowed_schemes)
    if not scheme or not host:
        raise RedirectUriError("redirect URI must be an absolute https URL")
    if _is_loopback(host):
        return  # loopback redirects never leave the user's machine (RFC 8252 §7.3)
    if scheme != "https":
        raise RedirectUriError("redirect URI must use https unless it is on loopback")
    for allowed in allowed_hosts:
        allowed = allowed.strip().lower().rstrip(".")
        if allowed and (host == allowed or host.endswith("." + allowed)):
            return
    raise RedirectUriError(f"redirect host {host} is not allowed (ALLOWED_REDIRECT_HOSTS)")


def redirect_matches(requested: str, registered: Iterable[str]) -> bool:
    """Exact match, except that a loopback redirect may use any port (RFC 8252 §7.3)."""
    registered = list(registered)
    if requested in registered:
        return True
    try:
        req = urlsplit(requested)
        req_host = (req.hostname or "").lower()
        req.port  # noqa: B018
    except ValueError:
        return False
    if not _is_loopback(req_host) or "@" in req.netloc or "#" in requested:
        return False
    for uri in registered:
        try:
            reg = urlsplit(uri)
            reg.port  # noqa: B018
        except ValueError:
            continue
        if (
            reg.scheme == req.scheme
            and (reg.hostname or "").lower() == req_host
            and reg.path == req.path
            and reg.query == req.query
        ):
            return True
    return False


def redirect_host_label(uri: str) -> str:
    """What the consent page shows as the destination: the host (with port for loopback)."""
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if _is_loopback(host) and parts.port:
        return f"{host}:{parts.port} (this computer)"
    if _is_loopback(host):
        return f"{host} (this computer)"
    if parts.scheme.lower() not in {"http", "https"}:
        return f"the {parts.scheme.lower()}: app on this computer"
    return host
