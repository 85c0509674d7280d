"""What a tool is, independent of any transport (the contract between app.mcp and app.tools)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import ANONYMOUS, Principal


class InputRequired(Exception):
    """Raised by a tool (or prompt) that needs the client's input first (2026-07-28 InputRequiredResult).

    `input_requests` maps keys of your choice to `{"method": "elicitation/create" | "sampling/createMessage"
    | "roots/list", "params": {...}}`; the client answers them all and calls again, and the handler then
    finds the answers in `ToolContext.input_responses` and `state` (any JSON value, signed by the server so
    the client cannot alter it) in `ToolContext.request_state`. Only ask for what
    `ToolContext.client_capabilities` declares: anything else is refused with -32021.
    """

    def __init__(self, input_requests: dict[str, dict[str, Any]], state: Any = None) -> None:
        super().__init__("input required")
        self.input_requests = input_requests
        self.state = state


class ToolError(Exception):
    """A failure the model should see as an `isError` tool result (message is shown verbatim)."""

    def __init__(self, message: str, outcome: str = "error") -> None:
        super().__init__(message)
        self.outcome = outcome  # metrics label, one of app.core.TOOL_OUTCOMES


async def _no_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    return None


async def _no_log(level: str, data: Any) -> None:
    return None


@dataclass
class ToolContext:
    principal: Principal = ANONYMOUS
    base_url: str = "http://127.0.0.1:8008"  # public base URL, for links such as fetch's `url`
    session_id: str | None = None
    request_id: str | None = None
    # Sends notifications/progress when the client gave a progressToken; otherwise a no-op.
    report_progress: Callable[[float, float | None, str | None], Awaitable[None]] = _no_progress
    # Sends notifications/message at or above the client's logging level; otherwise a no-op.
    log: Callable[[str, Any], Awaitable[None]] = _no_log
    # Filled by the tool for the audit line: statement fingerprint / text, rows and bytes returned.
    audit: dict[str, Any] = field(default_factory=dict)
    # What the client declared (session or 2026-07-28 `_meta`), e.g. {"sampling": {}, "elicitation": {}}.
    client_capabilities: dict[str, Any] = field(default_factory=dict)
    # A retried 2026-07-28 request: the client's answers to an InputRequired, and its verified state.
    input_responses: dict[str, Any] | None = None
    request_state: Any = None


@dataclass
class ToolResult:
    """A result given as MCP content blocks (text, image, audio, resource...) instead of one JSON object."""

    content: list[dict[str, Any]]
    structured: dict[str, Any] | None = None
    is_error: bool = False


# A handler returns a JSON object: the MCP layer sends it as one text content (json.dumps) and as
# structuredContent; or a ToolResult with content blocks of its own. It raises ToolError or an
# app.core.SafeError (the database's errors are) for an isError result.
ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[dict[str, Any] | ToolResult]]


@dataclass
class Tool:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    handler: ToolHandler
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    # Sent as the tool's `_meta`, e.g. {"anthropic/maxResultSizeChars": N} so Claude Code keeps
    # results up to our byte cap inline instead of spilling them to a file.
    meta: dict[str, Any] | None = None
    # Client capabilities the tool relies on (e.g. {"sampling": {}}); a caller that did not declare
    # them gets MissingRequiredClientCapabilityError (-32021) instead of a call.
    required_client_capabilities: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        if self.output_schema:
            out["outputSchema"] = self.output_schema
        if self.annotations:
            out["annotations"] = {"title": self.title, **self.annotations}
        if self.meta:
            out["_meta"] = self.meta
        return out
