"""What resources, prompts and completions are, independent of any transport (app.mcp <-> app.tools).

McpServer serves `resources/*`, `prompts/*` and `completion/complete` from a ResourceProvider and a
list of Prompt objects; app.tools supplies the database-aware ones, the tests supply fixtures.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import Principal
from .tools import ToolContext

COMPLETION_LIMIT = 100  # the spec's cap on completion values per response


class ResourceNotFound(Exception):
    """No resource has this URI (answered as -32602 with `data.uri`, SEP-2164)."""

    def __init__(self, uri: str, message: str | None = None) -> None:
        super().__init__(message or f"Resource not found: {uri}")
        self.uri = uri


class PromptArgumentsInvalid(Exception):
    """prompts/get arguments the prompt cannot use (answered as -32602 with this message)."""


def _described(
    out: dict[str, Any], title: str | None, description: str | None, mime_type: str | None
) -> dict[str, Any]:
    """The optional fields resources and templates share, only where they are set."""
    for key, value in (("title", title), ("description", description), ("mimeType", mime_type)):
        if value:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Resource:
    uri: str
    name: str
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    size: int | None = None

    def describe(self) -> dict[str, Any]:
        out = _described({"uri": self.uri, "name": self.name}, self.title, self.description, self.mime_type)
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True, slots=True)
class ResourceTemplate:
    uri_template: str  # RFC 6570 level 1, e.g. mssql://tables/{schema}/{table}
    name: str
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None

    def describe(self) -> dict[str, Any]:
        return _described(
            {"uriTemplate": self.uri_template, "name": self.name}, self.title, self.description, self.mime_type
        )


@dataclass(frozen=True, slots=True)
class ResourceContents:
    """One item of a resources/read answer: text or binary (sent base64-encoded as `blob`)."""

    uri: str
    mime_type: str | None = None
    text: str | None = None
    blob: bytes | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": self.uri}
        if self.mime_type:
            out["mimeType"] = self.mime_type
        if self.blob is not None:
            out["blob"] = base64.b64encode(self.blob).decode("ascii")
        else:
            out["text"] = self.text or ""
        return out


class ResourceProvider(Protocol):
    """The resources one MCP endpoint offers. `caller` is who asks (the server passes the request's
    principal; None is the service itself, e.g. a change watcher): a provider may show each caller only
    what it may see (the catalog's resources follow the access policy of the caller's role)."""

    # How long a client may reuse resources/list and resources/read answers (SEP-2549 ttlMs).
    ttl_ms: int
    # Whether resources/subscribe is offered (the provider then calls McpServer.resource_updated).
    subscribable: bool

    async def list_resources(self, *, caller: Principal | None = None) -> Sequence[Resource]: ...

    def list_templates(self) -> Sequence[ResourceTemplate]: ...

    async def read(self, uri: str, *, caller: Principal | None = None) -> Sequence[ResourceContents]:
        """The contents of `uri`; raises ResourceNotFound when no resource has it."""
        ...

    async def complete(
        self,
        uri_template: str,
        argument: str,
        value: str,
        context: Mapping[str, str],
        *,
        caller: Principal | None = None,
    ) -> Sequence[str]:
        """Candidate values for one template variable (McpServer filters, ranks and caps them)."""
        ...


# (validated arguments, the request's context: caller, client capabilities, input responses) -> messages.
PromptRenderer = Callable[[dict[str, str], ToolContext], Awaitable[list[dict[str, Any]]]]
ArgumentCompleter = Callable[[str, str, Mapping[str, str]], Awaitable[Sequence[str]]]
# The same, also told who asks (catalog completions show only what the caller's role may read).
CallerCompleter = Callable[[str, str, Mapping[str, str], Principal], Awaitable[Sequence[str]]]


@dataclass(frozen=True, slots=True)
class PromptArgument:
    name: str
    description: str
    required: bool = False
    title: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description, "required": self.required}
        if self.title:
            out["title"] = self.title
        return out


@dataclass
class Prompt:
    name: str
    title: str
    description: str
    # Returns the prompt's messages ({"role": ..., "content": {...}}) for validated arguments.
    render: PromptRenderer
    arguments: list[PromptArgument] = field(default_factory=list)
    # (argument name, typed prefix, other arguments so far) -> candidates; None offers no completions.
    complete: ArgumentCompleter | None = None
    # Preferred over `complete` when set: a completer told the caller.
    caller_complete: CallerCompleter | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "title": self.title, "description": self.description}
        if self.arguments:
            out["arguments"] = [argument.describe() for argument in self.arguments]
        return out


def text_message(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": {"type": "text", "text": text}}


def rank_completions(candidates: Iterable[str], value: str, limit: int = COMPLETION_LIMIT) -> dict[str, Any]:
    """The `completion` object: case-insensitive prefix matches, exact-case matches first, then
    alphabetical (what a person typing expects), at most `limit` with `total` and `hasMore`."""
    typed = value.casefold()
    seen: set[str] = set()
    matches: list[str] = []
    for candidate in candidates:
        if candidate not in seen and candidate.casefold().startswith(typed):
            seen.add(candidate)
            matches.append(candidate)
    matches.sort(key=lambda c: (not c.startswith(value), c.casefold(), c))
    return {"values": matches[:limit], "total": len(matches), "hasMore": len(matches) > limit}
