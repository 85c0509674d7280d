"""What the protocol knows about a handshake-era MCP session (Streamable HTTP `Mcp-Session-Id` or legacy
HTTP+SSE): its record, who owns it, and how the protocol reaches every open session.

The record is what a session store holds, and all a shared store (Redis, issue 11) shares: id, owner,
negotiated version, client capabilities, log level, subscriptions, and which worker holds its open stream.
What lives only in this process (running calls, the stream and its outbox) belongs to the transports
(`app.mcp.transports.sessions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

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
    # The worker (RedisState.worker_id) holding this session's open stream, so other workers relay to it.
    stream_worker: str | None = None
    # The JSON a shared store last held for this record: an unchanged record is not written back.
    stored: bytes | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> bytes:
        """The shared part as JSON. Times are left out: they are this process's monotonic clock, and a
        shared store keeps last use itself (key TTL, an index by last use)."""
        return orjson.dumps(
            {
                "id": self.id,
                "transport": self.transport,
                "protocol_version": self.protocol_version,
                "client_info": self.client_info,
                "client_capabilities": self.client_capabilities,
                "initialized": self.initialized,
                "log_level": self.log_level,
                "subscriptions": sorted(self.subscriptions),
                "owner": [self.owner.subject, self.owner.client_id] if self.owner is not None else None,
                "stream_worker": self.stream_worker,
            }
        )

    def update_from(self, other: SessionRecord) -> None:
        """Take another copy's state (a shared store's newer one), keeping this object (calls hold it)."""
        for name in SHARED_FIELDS:
            setattr(self, name, getattr(other, name))
        self.last_seen, self.stored = other.last_seen, other.stored

    @classmethod
    def from_json(cls, data: bytes | str, *, last_seen: float | None = None) -> SessionRecord:
        """A record from `to_json` (last used now unless `last_seen` says otherwise)."""
        fields = orjson.loads(data)
        owner = fields.get("owner")
        now = time.monotonic()
        return cls(
            id=str(fields["id"]),
            transport=str(fields["transport"]),
            protocol_version=str(fields["protocol_version"]),
            created=now,
            last_seen=now if last_seen is None else last_seen,
            client_info=dict(fields.get("client_info") or {}),
            client_capabilities=dict(fields.get("client_capabilities") or {}),
            initialized=bool(fields.get("initialized")),
            log_level=fields.get("log_level"),
            subscriptions=set(fields.get("subscriptions") or ()),
            owner=SessionOwner(str(owner[0]), owner[1]) if owner else None,
            stream_worker=fields.get("stream_worker"),
            stored=data if isinstance(data, bytes) else data.encode(),
        )

    def admits(self, principal: Principal) -> bool:
        """Whether `principal` may use this session; the first signed-in user claims an anonymous one.

        Claiming keeps the testing flow (ALLOW_UNAUTH_METHODS: initialize without a token, sign in at
        the first tools/call) working; once owned, anyone else, anonymous callers included, is refused.
        """
        owner = self.owner
        if owner is None:
            if principal.authenticated:
                self.owner = SessionOwner(principal.subject, principal.client_id)
            return True
        # The same test as SessionOwner.of(principal) == owner, without building an owner on every call.
        return principal.authenticated and principal.subject == owner.subject and principal.client_id == owner.client_id


SHARED_FIELDS = (
    "transport",
    "protocol_version",
    "client_info",
    "client_capabilities",
    "initialized",
    "log_level",
    "subscriptions",
    "owner",
    "stream_worker",
)


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
