"""What the protocol knows about a handshake-era MCP session (Streamable HTTP `Mcp-Session-Id` or legacy
HTTP+SSE): its record, who owns it, and how the protocol reaches every open session.

The record is what a session store must hold, and all a shared store (issue 11) would need to share: id,
owner, negotiated version, client capabilities, log level, subscriptions. What lives only in this process
(running calls, the stream and its outbox) belongs to the transports (`app.mcp.transports.sessions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import Principal


@dataclass(frozen=True)
class SessionOwner:
    """Who a session belongs to: the signed-in user and the OAuth client they signed in through.

    A refreshed access token (new jti, same user and client) is the same owner. The surface (Claude at
    `/mcp`, ChatGPT at `/chatgpt/mcp`) needs no field: each surface has its own session manager, and the
    bearer check admits only tokens whose audience is that surface.
    """

    subject: str
    client_id: str | None

    @classmethod
    def of(cls, principal: Principal) -> SessionOwner | None:
        """None for a caller without a token (the ALLOW_UNAUTH_* testing switches)."""
        return cls(principal.subject, principal.client_id) if principal.authenticated else None


@dataclass(eq=False)
class SessionRecord:
    """The stored part of a session: plain data, the same on every node that could serve it."""

    id: str
    transport: str  # "streamable_http" | "sse": which endpoint may use it (and the metrics label)
    protocol_version: str
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    client_info: dict[str, Any] = field(default_factory=dict)
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    initialized: bool = False
    log_level: str | None = None  # set by logging/setLevel; None sends no notifications/message
    subscriptions: set[str] = field(default_factory=set)  # resources/subscribe URIs
    # Set from the principal that created the session; None while only anonymous callers used it.
    owner: SessionOwner | None = None

    def admits(self, principal: Principal) -> bool:
        """Whether `principal` may use this session; the first signed-in user claims an anonymous one.

        Claiming keeps the testing flow (ALLOW_UNAUTH_METHODS: initialize without a token, sign in at
        the first tools/call) working; once owned, anyone else, anonymous callers included, is refused.
        """
        caller = SessionOwner.of(principal)
        if self.owner is None:
            if caller is not None:
                self.owner = caller
            return True
        return caller == self.owner


class TooManySessions(Exception):
    """No room for another session (every one has an open stream or a running call)."""


class SessionNotifier(Protocol):
    """How the protocol sends a notification to open sessions; the transports' session manager is one."""

    def notify_all(self, message: dict[str, Any]) -> int:
        """Queue `message` on every session with an open stream; how many took it."""
        ...

    def notify_subscribers(self, uri: str, message: dict[str, Any]) -> int:
        """Queue `message` on every open session subscribed to `uri`; how many took it."""
        ...

    def subscribed_uris(self) -> set[str]:
        """Every URI some open session subscribed to."""
        ...
