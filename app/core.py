"""The service's shared vocabulary: who is calling, how a tool call ended, and which surfaces exist.

Every area (auth, db, mcp, obs, tools, web) may import this module; it imports nothing from them, so
no area has to depend on another just to name a caller or a surface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# --- the caller -------------------------------------------------------------------------------------
Role = str  # "reader", "writer", or an operator-named role


@dataclass(frozen=True)
class Principal:
    """Who is calling: produced by the bearer check, read by tools, the database's write gate and audit."""

    subject: str  # stable user id ("anonymous" when auth is off)
    username: str
    role: Role = "reader"
    client_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True

    @property
    def can_write(self) -> bool:
        return self.role == "writer"


# Callers let in by ALLOW_UNAUTH_TOOLS_CALL read only: a testing switch must never open writes to anyone.
ANONYMOUS = Principal(subject="anonymous", username="anonymous", role="reader", authenticated=False)


def unauthenticated_allowed(methods: Sequence[str], *, allow_methods: bool, allow_tools_call: bool) -> bool:
    """The one rule for a request without a token (the seed's testing switches): ALLOW_UNAUTH_METHODS
    admits everything but tools/call (GET streams, with no methods, included), ALLOW_UNAUTH_TOOLS_CALL
    admits tools/call; a batch passes only if every method in it does. Both off (the default): none."""
    if not methods:
        return allow_methods
    return all(allow_tools_call if method == "tools/call" else allow_methods for method in methods)


# --- how a tool call ended ----------------------------------------------------------------------------
ToolOutcome = Literal["ok", "error", "refused", "timeout", "cancelled", "busy", "unavailable", "invalid"]
# The metrics label values of mssql_mcp_tool_calls_total{outcome}: a fixed set keeps the label bounded.
TOOL_OUTCOMES: tuple[ToolOutcome, ...] = (
    "ok",
    "error",
    "refused",
    "timeout",
    "cancelled",
    "busy",
    "unavailable",
    "invalid",
)


def known_outcome(value: str) -> ToolOutcome:
    """`value` if it is one of TOOL_OUTCOMES, else "error" (an unknown label must not grow the metric)."""
    for outcome in TOOL_OUTCOMES:
        if outcome == value:
            return outcome
    return "error"


class SafeError(Exception):
    """An error whose message was written for the caller (no driver text, no secrets): shown as is."""


# --- surfaces -------------------------------------------------------------------------------------------
Toolset = Literal["claude", "chatgpt"]


@dataclass(frozen=True)
class Surface:
    """One published MCP server: its URL prefix, tool set and OAuth realm, and the paths hung below it."""

    name: str  # short id used in logs and metrics labels
    prefix: str  # URL prefix: "" or "/chatgpt"
    toolset: Toolset
    server_name: str  # MCP serverInfo.name
    compatible_with: str  # /health's seed field: which assistant this surface is for
    title_suffix: str = ""  # added to the OAuth metadata's display name

    # Each realm has its own issuer identity and token audience, so discovery under a prefix returns an
    # issuer that matches its URL and a token for one surface is refused by the other.
    @property
    def realm(self) -> str:
        return self.prefix

    @property
    def mcp_path(self) -> str:
        return f"{self.prefix}/mcp"

    @property
    def sse_path(self) -> str:
        return f"{self.prefix}/sse"

    @property
    def health_path(self) -> str:
        return f"{self.prefix}/health"

    @property
    def records_path(self) -> str:
        return f"{self.prefix}/records"

    def owns(self, path: str) -> bool:
        """Whether `path` lies below this surface's prefix (the root surface owns what no other does)."""
        return path.startswith(self.prefix + "/") if self.prefix else True


CLAUDE = Surface(name="claude", prefix="", toolset="claude", server_name="mssql-mcp", compatible_with="Claude")
CHATGPT = Surface(
    name="chatgpt",
    prefix="/chatgpt",
    toolset="chatgpt",
    server_name="mssql-mcp-chatgpt",
    compatible_with="ChatGPT Deep Research",
    title_suffix=" (ChatGPT)",
)
# Root surface first; a new surface is one entry here.
SURFACES: tuple[Surface, ...] = (CLAUDE, CHATGPT)
# ChatGPT's search results link to record pages under this surface (its tokens carry its audience).
RECORDS_SURFACE = CHATGPT


def surface_of(path: str) -> Surface:
    """The surface a request path belongs to: the longest matching prefix, else the root surface."""
    for surface in sorted(SURFACES, key=lambda s: len(s.prefix), reverse=True):
        if surface.prefix and surface.owns(path):
            return surface
    return SURFACES[0]


def surface_by_prefix(prefix: str) -> Surface | None:
    return next((s for s in SURFACES if s.prefix == prefix), None)
