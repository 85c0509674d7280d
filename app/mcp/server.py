"""MCP protocol logic: lifecycle, version negotiation, the 2026-07-28 envelope, tools. No aiohttp here.

Transports parse HTTP, then hand each validated JSON-RPC message to `McpServer.handle_request` /
`handle_notification` with a `CallEnv` describing who is calling and where related notifications
(progress, log messages) should go.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ..core import ANONYMOUS, Principal, SafeError, known_outcome
from ..obs.audit import audit_tool_call
from ..obs.metrics import Metrics
from ..settings import Settings
from .jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    UNSUPPORTED_PROTOCOL_VERSION,
    JsonRpcError,
    Message,
    RawJson,
    RequestId,
    dumps_value,
    encode_value,
    error_message,
    result_message,
)
from .resources import (
    Prompt,
    PromptArgumentsInvalid,
    ResourceNotFound,
    ResourceProvider,
    rank_completions,
)
from .schema import ArgumentSchema
from .session import SessionNotifier, SessionRecord, TooManySessions
from .tools import InputRequired, Tool, ToolContext, ToolError, ToolResult

log = structlog.get_logger(__name__)

HANDSHAKE_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)  # stateless per-request envelope
SUPPORTED_VERSIONS: tuple[str, ...] = (*HANDSHAKE_VERSIONS, *MODERN_VERSIONS)
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[-1]
BATCH_VERSIONS = frozenset({"2025-03-26"})  # the only revision with JSON-RPC batches
# Revisions whose streamable-HTTP POST may omit MCP-Protocol-Version (spec: assume 2025-03-26).
DEFAULT_HEADERLESS_VERSION = "2025-03-26"

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
# Method -> params key mirrored into the Mcp-Name header (2026-07-28).
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LEVEL_RANK = {level: rank for rank, level in enumerate(LOG_LEVELS)}
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical", "exception": "error"}

# Bounded label set for mcp_messages{method}; anything else counts as "other".
KNOWN_METHODS = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "ping",
        "tools/list",
        "tools/call",
        "notifications/cancelled",
        "logging/setLevel",
        "server/discover",
        "notifications/progress",
        "notifications/roots/list_changed",
        "resources/list",
        "resources/templates/list",
        "prompts/list",
        "completion/complete",
        "response",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/get",
    }
)
CACHE_TTL_MS = 300_000  # tools never change while the process runs; 5 minutes keeps clients fresh enough
PAGE_SIZE = 100  # resources/list entries per page (cursor-paged)
MAX_SUBSCRIPTIONS_PER_SESSION = 100  # each subscribed resource is re-read by the provider's watcher
# The `completions` capability (and its name) arrived in 2025-03-26; 2024-11-05 clients are not told.
COMPLETIONS_FROM = "2025-03-26"
# The client capability each InputRequiredResult request method needs (2026-07-28, SEP-2322).
INPUT_REQUEST_CAPABILITIES = {
    "elicitation/create": "elicitation",
    "sampling/createMessage": "sampling",
    "roots/list": "roots",
}
# Handshake era: how long a tool waits for the client to answer one of its requests (a person may be
# answering an elicitation), and how many rounds of questions one call may ask.
CLIENT_REQUEST_TIMEOUT_SECONDS = 300.0
MAX_INPUT_ROUNDS = 10
_NAME_SHOWN = 80  # longest user-supplied name echoed back in an error


@dataclass(slots=True)
class Envelope:
    """The 2026-07-28 per-request `_meta` fields of one request."""

    protocol_version: str
    client_capabilities: dict[str, Any]
    client_info: Any = None
    log_level: str | None = None


@dataclass(slots=True)
class CallEnv:
    """Everything about one incoming exchange that the protocol logic needs; the transport fills it in."""

    principal: Principal = ANONYMOUS
    base_url: str = "http://127.0.0.1:8008"
    settings: Settings | None = None  # for the audit log
    session: SessionRecord | None = None  # handshake-era session, if any
    envelope: Envelope | None = None  # set for 2026-07-28 requests
    # Delivers a notification related to this request (progress, log). None drops them.
    emit: Callable[[dict[str, Any]], Any] | None = None
    # Handshake era, set by a transport whose sessions start at `initialize`: opens one at the negotiated
    # version (may raise TooManySessions). Without it, initialize answers for the session already in `session`.
    open_session: Callable[[str], SessionRecord] | None = None
    # Stops this session's running request with that id (notifications/cancelled); True if one was stopped.
    cancel: Callable[[Any], bool] | None = None


T = TypeVar("T")


def _named(registry: Mapping[str, T], params: dict[str, Any], kind: str) -> T:
    """The tool or prompt `params["name"]` names; invalid params (naming what exists) otherwise."""
    name = params.get("name")
    if not isinstance(name, str):
        raise JsonRpcError(INVALID_PARAMS, f'Invalid params: "name" (the {kind} name) must be a string')
    found = registry.get(name)
    if found is None:
        raise JsonRpcError(
            INVALID_PARAMS, f"Unknown {kind}: {_shown(name)!r}. Available {kind}s: {', '.join(registry) or '(none)'}."
        )
    return found


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _NAME_SHOWN else text[:_NAME_SHOWN] + "..."


def _header(headers: Any, name: str) -> tuple[str | None, bool]:
    """(value stripped of optional whitespace, appears more than once) for a case-insensitive header."""
    values = headers.getall(name, ())
    if not values:
        return None, False
    return values[0].strip(" \t"), len(values) > 1


def decode_header_value(value: str | None) -> str | None:
    """Undo the `=?base64?...?=` sentinel encoding of Mcp-Name / Mcp-Param-* values (None if malformed)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    payload = value[len("=?base64?") : -2]
    try:
        return base64.b64decode(payload, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class McpServer:
    def __init__(
        self,
        *,
        name: str,
        version: str,
        instructions: str,
        tools: list[Tool],
        metrics: Metrics | None = None,
        resources: ResourceProvider | None = None,
        prompts: list[Prompt] | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.name, self.version, self.instructions, self.tools = name, version, instructions, tools
        self.metrics = metrics
        self.resources = resources
        self.prompts = list(prompts or [])
        self._prompts = {prompt.name: prompt for prompt in self.prompts}
        if len(self._prompts) != len(self.prompts):
            raise ValueError("duplicate prompt name")
        self.page_size = max(1, page_size)
        # Signs InputRequiredResult requestState so a client cannot alter it (per process: a retry must
        # reach the same process, which holds for one node; several nodes would need a shared key).
        self._state_key = secrets.token_bytes(32)
        # Handshake era: server->client requests awaiting the client's response, by request id.
        # (session id, future) by request id.
        self._client_requests: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        # Where notifications to open sessions go: the transports' session managers (attach_sessions).
        self._notifiers: list[SessionNotifier] = []
        self._tools: dict[str, Tool] = {}
        self._argument_schemas: dict[str, ArgumentSchema] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            self._tools[tool.name] = tool
            self._argument_schemas[tool.name] = ArgumentSchema(tool.name, tool.input_schema)
        # SEP-2243: arguments whose schema says `x-mcp-header: Name` are mirrored in Mcp-Param-Name.
        self._param_headers: dict[str, list[tuple[str, str]]] = {
            tool.name: [
                (argument, schema["x-mcp-header"])
                for argument, schema in (tool.input_schema.get("properties") or {}).items()
                if isinstance(schema, dict) and isinstance(schema.get("x-mcp-header"), str)
            ]
            for tool in tools
        }
        self._server_info = {"name": name, "version": version}
        self.capabilities: dict[str, Any] = {"tools": {"listChanged": False}, "logging": {}}
        if resources is not None:
            # listChanged: the provider tells us when the catalog changes (handshake-era streams only).
            self.capabilities["resources"] = {"listChanged": True, "subscribe": bool(resources.subscribable)}
        if self.prompts:
            self.capabilities["prompts"] = {"listChanged": False}
        self._completions = resources is not None or any(
            p.complete is not None or p.caller_complete is not None for p in self.prompts
        )
        self._prompts_list = {"prompts": [prompt.describe() for prompt in self.prompts]}
        # tools/list never changes: serialize it once per era.
        self._described_tools = [tool.describe() for tool in tools]
        self._tools_list = RawJson(dumps_value({"tools": self._described_tools}))
        self._serialize_identity()
        self._tool_metrics: dict[tuple[str, str], Any] = {}
        self._message_counters: dict[str, Any] = {}
        self._legacy_methods = {
            "initialize": self._initialize,
            "ping": self._ping,
            "tools/list": self._tools_list_handler,
            "tools/call": self._tools_call,
            "logging/setLevel": self._set_level,
        }
        # 2026-07-28 removed initialize, ping, logging/setLevel and resources/(un)subscribe.
        self._modern_methods = {
            "server/discover": self._discover,
            "tools/list": self._tools_list_handler,
            "tools/call": self._tools_call,
        }
        if resources is not None:
            for methods in (self._legacy_methods, self._modern_methods):
                methods.update(
                    {
                        "resources/list": self._resources_list,
                        "resources/templates/list": self._resource_templates_list,
                        "resources/read": self._resources_read,
                    }
                )
            if resources.subscribable:
                self._legacy_methods.update(
                    {"resources/subscribe": self._subscribe, "resources/unsubscribe": self._unsubscribe}
                )
        if self.prompts:
            for methods in (self._legacy_methods, self._modern_methods):
                methods.update({"prompts/list": self._prompts_list_handler, "prompts/get": self._prompts_get})
        if self._completions:
            for methods in (self._legacy_methods, self._modern_methods):
                methods["completion/complete"] = self._complete

    # -- introspection (health, transports) -----------------------------------------------------
    @property
    def tool_names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    @property
    def protocol_versions(self) -> list[str]:
        return list(SUPPORTED_VERSIONS)

    @property
    def server_info(self) -> dict[str, Any]:
        return self._server_info

    @server_info.setter
    def server_info(self, value: dict[str, Any]) -> None:
        # Results serialized ahead of time carry serverInfo: a new identity re-serializes them.
        self._server_info = value
        self._serialize_identity()

    def _serialize_identity(self) -> None:
        modern_list = {"tools": self._described_tools, "ttlMs": CACHE_TTL_MS, "cacheScope": "private"}
        self._tools_list_modern = RawJson(dumps_value(self._modern_fields(modern_list)))
        self._modern_meta_suffix = dumps_value(self._modern_fields({}))[1:]  # ',"resultType":...}' tail
        self._modern_success_tail = f',"isError":false,{self._modern_meta_suffix}'.encode()

    def _modern_fields(self, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "resultType": "complete", "_meta": {META_SERVER_INFO: self.server_info}}

    def capabilities_for(self, version: str) -> dict[str, Any]:
        """Server capabilities as protocol `version` defines them."""
        if version in MODERN_VERSIONS:
            # Stateless: no logging/setLevel, no subscriptions, no list_changed stream to send on.
            caps: dict[str, Any] = {"tools": {"listChanged": False}}
            if self.resources is not None:
                caps["resources"] = {"listChanged": False}
            if self.prompts:
                caps["prompts"] = {"listChanged": False}
        else:
            caps = dict(self.capabilities)
        if self._completions and version >= COMPLETIONS_FROM:
            caps["completions"] = {}
        return caps

    def attach_sessions(self, notifier: SessionNotifier) -> None:
        """Let the protocol reach the open sessions a transport serves (resources notifications)."""
        self._notifiers.append(notifier)

    # -- metrics ---------------------------------------------------------------------------------
    def observe(self, message: Message) -> None:
        """Count one received message under a bounded method label."""
        if self.metrics is None:
            return
        method = "response" if message.kind == "response" else message.method
        label = method if method in KNOWN_METHODS else "other"
        counter = self._message_counters.get(label)
        if counter is None:
            counter = self._message_counters[label] = self.metrics.mcp_messages.labels(label)
        counter.inc()

    def _observe_tool(self, tool: str, outcome: str, seconds: float) -> None:
        if self.metrics is None:
            return
        pair = self._tool_metrics.get((tool, outcome))
        if pair is None:
            pair = self._tool_metrics[(tool, outcome)] = (
                self.metrics.tool_calls.labels(tool, outcome),
                self.metrics.tool_duration.labels(tool),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    # -- the 2026-07-28 envelope -------------------------------------------------------------------
    def check_envelope(self, message: Message, headers: Any | None) -> Envelope:
        """Validate a 2026-07-28 request's `_meta` and its mirrored HTTP headers, in the spec's order.

        `headers` is a case-insensitive multi-mapping with `getall(name, default)` (None off HTTP).
        Raises JsonRpcError: -32602 malformed envelope, -32020 header mismatch, -32022 unsupported version.
        """
        rid = message.id
        meta = message.params.get("_meta")
        if not isinstance(meta, dict):
            raise JsonRpcError(
                INVALID_PARAMS,
                f"Invalid params: params._meta must be an object carrying "
                f"{META_PROTOCOL_VERSION} and {META_CLIENT_CAPABILITIES}",
                request_id=rid,
            )
        missing = [key for key in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES) if key not in meta]
        if missing:
            raise JsonRpcError(
                INVALID_PARAMS, f"Invalid params: params._meta is missing {', '.join(missing)}", request_id=rid
            )
        version = meta[META_PROTOCOL_VERSION]
        if headers is not None:
            self._check_headers(message, version, headers)
        if not isinstance(version, str):
            raise JsonRpcError(
                INVALID_PARAMS, f"Invalid params: {META_PROTOCOL_VERSION} must be a string", request_id=rid
            )
        if version not in MODERN_VERSIONS:
            raise unsupported_version(version, request_id=rid)
        capabilities = meta[META_CLIENT_CAPABILITIES]
        if not isinstance(capabilities, dict):
            raise JsonRpcError(
                INVALID_PARAMS, f"Invalid params: {META_CLIENT_CAPABILITIES} must be an object", request_id=rid
            )
        level = meta.get(META_LOG_LEVEL)
        return Envelope(version, capabilities, meta.get(META_CLIENT_INFO), level if level in _LEVEL_RANK else None)

    def _check_headers(self, message: Message, version: Any, headers: Any) -> None:
        rid = message.id

        def mismatch(text: str) -> JsonRpcError:
            return JsonRpcError(HEADER_MISMATCH, f"Header mismatch: {text}", request_id=rid)

        header_version, repeated = _header(headers, "mcp-protocol-version")
        if repeated:
            raise mismatch("MCP-Protocol-Version header appears more than once")
        if header_version is None:
            raise mismatch("the MCP-Protocol-Version header is required")
        if header_version != version:
            raise mismatch(
                f"MCP-Protocol-Version header {_shown(header_version)!r} does not match "
                f"_meta protocol version {_shown(version)!r}"
            )
        method, repeated = _header(headers, "mcp-method")
        if repeated:
            raise mismatch("Mcp-Method header appears more than once")
        if method is None:
            raise mismatch("the Mcp-Method header is required")
        if method != message.method:
            raise mismatch(
                f"Mcp-Method header {_shown(method)!r} does not match body method {_shown(message.method)!r}"
            )
        key = NAME_BEARING_METHODS.get(message.method)
        if key is not None:
            body_name = message.params.get(key)
            raw_name, repeated = _header(headers, "mcp-name")
            if repeated:
                raise mismatch("Mcp-Name header appears more than once")
            if body_name is not None:
                if raw_name is None:
                    raise mismatch(f"the Mcp-Name header is required for {message.method}")
                name = decode_header_value(raw_name)
                if name != body_name:
                    raise mismatch(
                        f"Mcp-Name header value {_shown(name)!r} does not match body value {_shown(body_name)!r}"
                    )
        if message.method == "tools/call" and isinstance(message.params.get("name"), str):
            mirrored = self._param_headers.get(message.params["name"], ())
            arguments = message.params.get("arguments")
            for argument, header in mirrored:
                value = arguments.get(argument) if isinstance(arguments, dict) else None
                raw, repeated = _header(headers, f"mcp-param-{header}")
                if repeated:
                    raise mismatch(f"Mcp-Param-{header} header appears more than once")
                if value is None:
                    continue
                if raw is None:
                    raise mismatch(f"the Mcp-Param-{header} header is required when '{argument}' is given")
                decoded = decode_header_value(raw)
                if decoded is None:
                    raise mismatch(f"Mcp-Param-{header} header is not valid =?base64?...?= encoding")
                if decoded != _header_form(value):
                    raise mismatch(
                        f"Mcp-Param-{header} header value {_shown(decoded)!r} does not match argument '{argument}'"
                    )

    # -- dispatch ----------------------------------------------------------------------------------
    async def handle_request(self, message: Message, env: CallEnv) -> dict[str, Any]:
        """Answer one request. Never raises except CancelledError and TooManySessions."""
        methods = self._modern_methods if env.envelope is not None else self._legacy_methods
        handler = methods.get(message.method)
        try:
            if handler is None:
                raise JsonRpcError(METHOD_NOT_FOUND, f"Method not found: {_shown(message.method)}")
            result = await handler(message.params, env, message.id)
        except JsonRpcError as exc:
            return error_message(message.id, exc)
        except SafeError as exc:  # a catalog read for resources/prompts/completions; the text is safe
            return error_message(message.id, JsonRpcError(INTERNAL_ERROR, f"Database error: {exc}"))
        except (asyncio.CancelledError, TooManySessions):
            raise
        except Exception:
            log.exception("mcp_request_failed", method=message.method)
            return error_message(message.id, JsonRpcError(INTERNAL_ERROR, "Internal error"))
        return result_message(message.id, result)

    def handle_response(self, message: Message, env: CallEnv) -> bool:
        """A client's response to one of our requests (sampling, elicitation, roots); False if unknown."""
        key = message.id
        pending = self._client_requests.get(key) if isinstance(key, str) else None
        if pending is None or env.session is None or pending[0] != env.session.id or pending[1].done():
            return False  # unknown, another session's, or already answered: ignored
        del self._client_requests[str(key)]
        pending[1].set_result(message.params)
        return True

    async def handle_notification(self, message: Message, env: CallEnv) -> None:
        session = env.session
        if message.method == "notifications/initialized":
            if session is not None:
                session.initialized = True
        elif message.method == "notifications/cancelled" and env.cancel is not None:
            request_id = message.params.get("requestId")
            if env.cancel(request_id):
                log.info("mcp_request_cancelled", request_id=_shown(request_id))
        # Anything else (progress from the client, roots changes, unknown) is accepted and ignored.

    # -- methods -----------------------------------------------------------------------------------
    async def _initialize(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "protocolVersion" (a string) is required')
        # Answer the client's version when we speak it, else our latest handshake version.
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
        session = env.session
        if env.open_session is not None:
            session = env.session = env.open_session(version)
        elif session is not None:
            session.protocol_version = version  # the transport opened the session before (legacy SSE)
        else:
            raise JsonRpcError(INVALID_REQUEST, "Invalid request: initialize needs a transport with sessions")
        capabilities = params.get("capabilities")
        client_info = params.get("clientInfo")
        session.client_capabilities = capabilities if isinstance(capabilities, dict) else {}
        session.client_info = client_info if isinstance(client_info, dict) else {}
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": self.capabilities_for(version),
            "serverInfo": self.server_info,
        }
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    async def _discover(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        result: dict[str, Any] = {
            # Dual-era: both the envelope version and the handshake versions (same list as -32022 names).
            "supportedVersions": list(SUPPORTED_VERSIONS),
            "capabilities": self.capabilities_for(MODERN_VERSIONS[-1]),
            "serverInfo": self.server_info,
            "ttlMs": CACHE_TTL_MS,
            "cacheScope": "private",
        }
        if self.instructions:
            result["instructions"] = self.instructions
        return self._modern_fields(result)

    async def _ping(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        return {}

    async def _set_level(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        level = params.get("level")
        if level not in _LEVEL_RANK:
            raise JsonRpcError(INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        if env.session is not None:
            env.session.log_level = level
        return {}

    async def _tools_list_handler(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        return self._tools_list_modern if env.envelope is not None else self._tools_list

    # -- resources ---------------------------------------------------------------------------------
    def _cached(self, result: dict[str, Any], env: CallEnv, ttl_ms: int) -> dict[str, Any]:
        """The 2026-07-28 result fields, with SEP-2549 caching hints (answers depend on the caller)."""
        if env.envelope is None:
            return result
        return self._modern_fields({**result, "ttlMs": max(0, int(ttl_ms)), "cacheScope": "private"})

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
        cursor = params.get("cursor")
        start: int | None = 0
        if cursor is not None:
            start = _decode_cursor(cursor)
        if start is None or start > len(items):
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: unknown cursor (list again from the start)")
        end = start + self.page_size
        result: dict[str, Any] = {key: items[start:end]}
        if end < len(items):
            result["nextCursor"] = _encode_cursor(end)
        return result

    async def _resources_list(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        assert self.resources is not None
        described = [resource.describe() for resource in await self.resources.list_resources(caller=env.principal)]
        return self._cached(self._page(described, params, "resources"), env, self.resources.ttl_ms)

    async def _resource_templates_list(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        assert self.resources is not None
        described = [template.describe() for template in self.resources.list_templates()]
        return self._cached(self._page(described, params, "resourceTemplates"), env, CACHE_TTL_MS)

    async def _resources_read(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        assert self.resources is not None
        uri = _required_uri(params)
        try:
            contents = await self.resources.read(uri, caller=env.principal)
        except ResourceNotFound as exc:
            raise JsonRpcError(INVALID_PARAMS, str(exc), {"uri": uri}) from None
        except SafeError as exc:  # the message is safe to show; the resource exists but cannot be read now
            raise JsonRpcError(INTERNAL_ERROR, f"Could not read {_shown(uri)}: {exc}", {"uri": uri}) from None
        if not contents:  # SEP-2164: never an empty contents array
            raise JsonRpcError(INVALID_PARAMS, f"Resource not found: {_shown(uri)}", {"uri": uri})
        result = {"contents": [item.describe() for item in contents]}
        return self._cached(result, env, self.resources.ttl_ms)

    async def _subscribe(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        assert self.resources is not None
        uri = _required_uri(params)
        if env.session is None:
            raise JsonRpcError(INVALID_PARAMS, "Invalid params: resources/subscribe needs a session")
        uris = env.session.subscriptions
        if uri not in uris and len(uris) >= MAX_SUBSCRIPTIONS_PER_SESSION:
            raise JsonRpcError(
                INVALID_PARAMS,
                f"Invalid params: at most {MAX_SUBSCRIPTIONS_PER_SESSION} "
                "subscriptions per session; unsubscribe from some first",
            )
        try:
            await self.resources.read(uri, caller=env.principal)  # only resources that exist can be watched
        except ResourceNotFound as exc:
            raise JsonRpcError(INVALID_PARAMS, str(exc), {"uri": uri}) from None
        uris.add(uri)
        return {}

    async def _unsubscribe(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        uri = _required_uri(params)
        if env.session is not None:
            env.session.subscriptions.discard(uri)
        return {}

    def resource_list_changed(self) -> int:
        """Tell every handshake-era session with an open stream that resources/list changed."""
        note = {"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}
        return sum(notifier.notify_all(note) for notifier in self._notifiers)

    def subscribed_uris(self) -> set[str]:
        """Every URI some open session subscribed to (what the provider's watcher re-reads)."""
        return {uri for notifier in self._notifiers for uri in notifier.subscribed_uris()}

    def resource_updated(self, uri: str) -> int:
        """Send notifications/resources/updated to the sessions subscribed to `uri`."""
        note = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
        return sum(notifier.notify_subscribers(uri, note) for notifier in self._notifiers)

    # -- prompts -----------------------------------------------------------------------------------
    async def _prompts_list_handler(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        return self._cached(self._page(self._prompts_list["prompts"], params, "prompts"), env, CACHE_TTL_MS)

    async def _prompts_get(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        prompt = _named(self._prompts, params, "prompt")
        name = prompt.name
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "arguments" must map argument names to strings')
        missing = [a.name for a in prompt.arguments if a.required and not str(arguments.get(a.name, "")).strip()]
        if missing:
            raise JsonRpcError(INVALID_PARAMS, f"Invalid params: prompt {name} needs {', '.join(missing)}")
        known = {a.name for a in prompt.arguments}
        ctx = self._tool_context(params, env, request_id)
        self._input_round(params, env, f"prompts/get:{name}", ctx)
        try:
            messages = await prompt.render({k: v for k, v in arguments.items() if k in known}, ctx)
        except InputRequired as exc:
            return self._input_required(exc, env, f"prompts/get:{name}")
        except PromptArgumentsInvalid as exc:
            raise JsonRpcError(INVALID_PARAMS, f"Invalid params: {exc}") from None
        except SafeError as exc:
            raise JsonRpcError(INTERNAL_ERROR, f"Prompt {name} could not read the database: {exc}") from None
        result = {"description": prompt.description, "messages": messages}
        return self._modern_fields(result) if env.envelope is not None else result

    # -- completion/complete -----------------------------------------------------------------------
    async def _complete(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "ref" and "argument" objects are required')
        arg_name, value = argument.get("name"), argument.get("value", "")
        if not isinstance(arg_name, str) or not isinstance(value, str):
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: argument "name" and "value" must be strings')
        context = params.get("context")
        given = context.get("arguments") if isinstance(context, dict) else None
        others = {k: v for k, v in given.items() if isinstance(v, str)} if isinstance(given, dict) else {}
        candidates: Any = ()
        kind = ref.get("type")
        if kind == "ref/prompt":
            prompt = self._prompts.get(ref.get("name"))  # type: ignore[arg-type]
            if prompt is None:
                raise JsonRpcError(INVALID_PARAMS, f"Unknown prompt: {_shown(ref.get('name'))!r}")
            if any(a.name == arg_name for a in prompt.arguments):
                if prompt.caller_complete is not None:
                    candidates = await prompt.caller_complete(arg_name, value, others, env.principal)
                elif prompt.complete is not None:
                    candidates = await prompt.complete(arg_name, value, others)
        elif kind == "ref/resource":
            uri = ref.get("uri")
            templates = {t.uri_template for t in self.resources.list_templates()} if self.resources else set()
            if uri not in templates:
                raise JsonRpcError(INVALID_PARAMS, f"Unknown resource template: {_shown(uri)!r}")
            assert self.resources is not None
            candidates = await self.resources.complete(uri, arg_name, value, others, caller=env.principal)
        else:
            raise JsonRpcError(INVALID_PARAMS, 'Invalid params: ref.type must be "ref/prompt" or "ref/resource"')
        result = {"completion": rank_completions(candidates, value)}
        return self._modern_fields(result) if env.envelope is not None else result

    # -- tools -------------------------------------------------------------------------------------
    async def _tools_call(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> Any:
        tool = _named(self._tools, params, "tool")
        name = tool.name
        if tool.required_client_capabilities:
            self._require_client_capabilities(tool, env)
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        ctx = self._tool_context(params, env, request_id)
        self._input_round(params, env, f"tools/call:{name}", ctx)
        modern = env.envelope is not None
        started = time.perf_counter()
        outcome = "ok"
        try:
            problem = self._argument_schemas[name].problem(arguments)
            if problem is not None:
                outcome = "invalid"
                return self._error_result(problem, modern)
            try:
                structured = await self._run_with_input(tool, arguments, ctx, env)
            except InputRequired as exc:
                return self._input_required(exc, env, f"tools/call:{name}")
            except ToolError as exc:
                outcome = known_outcome(exc.outcome)
                return self._error_result(str(exc), modern)
            except SafeError as exc:  # a database error: its class names the outcome (QueryRefused: "refused")
                outcome = known_outcome(getattr(exc, "code", "database_error"))
                return self._error_result(str(exc), modern)
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except JsonRpcError:  # a protocol answer (e.g. -32021 from asking the client), not a tool failure
                outcome = "invalid"
                raise
            except Exception:
                outcome = "error"
                log.exception("tool_failed", tool=name)  # traceback stays in the server log
                return self._error_result(f"Tool {name} failed with an internal error.", modern)
            if isinstance(structured, ToolResult):
                return self._content_result(structured, modern)
            return self._success_result(structured, modern)
        finally:
            elapsed = time.perf_counter() - started
            self._observe_tool(name, outcome, elapsed)
            try:
                audit_tool_call(
                    principal=env.principal,
                    tool=name,
                    outcome=outcome,
                    duration_seconds=elapsed,
                    audit=ctx.audit,
                    settings=env.settings,
                )
            except Exception:
                log.exception("audit_failed", tool=name)

    def _success_result(self, structured: Any, modern: bool) -> RawJson:
        # Splice the one serialization of the structured result into both places it appears, as bytes
        # (what the response sends); the text form below only for what orjson cannot write.
        data = encode_value(structured)
        if data is not None:
            quoted = encode_value(data.decode())  # the same JSON as text: a string of valid UTF-8 always encodes
            assert quoted is not None
            start = b'{"content":[{"type":"text","text":' + quoted + b'}],"structuredContent":' + data
            return RawJson(start + (self._modern_success_tail if modern else b',"isError":false}'))
        text = dumps_value(structured)
        head = f'{{"content":[{{"type":"text","text":{dumps_value(text)}}}],"structuredContent":{text},"isError":false'
        return RawJson(head + (("," + self._modern_meta_suffix) if modern else "}"))

    # -- input from the client: InputRequiredResult (2026-07-28) or server->client requests --------------
    async def _run_with_input(self, tool: Tool, arguments: Any, ctx: ToolContext, env: CallEnv) -> Any:
        """Run the handler; in the handshake era answer its InputRequired by asking the client directly
        (requests on the call's stream) and running it again with the answers."""
        for _ in range(MAX_INPUT_ROUNDS):
            try:
                return await tool.handler(arguments, ctx)
            except InputRequired as exc:
                if env.envelope is not None:
                    raise  # 2026-07-28: the client retries the request with inputResponses
                ctx.input_responses = await self._ask_client(exc, env)
                ctx.request_state = exc.state
        raise ToolError(
            f"Tool {tool.name} kept asking the client for input; giving up after {MAX_INPUT_ROUNDS} rounds."
        )

    async def _ask_client(self, exc: InputRequired, env: CallEnv) -> dict[str, Any]:
        session, emit = env.session, env.emit
        if session is None or emit is None:
            raise ToolError("This tool needs to ask the client a question, which needs a session with a stream.")
        missing = _missing_capabilities(exc.input_requests, session.client_capabilities)
        if missing:
            raise JsonRpcError(
                MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"Missing required client capability: "
                f"{', '.join(missing)} (declare it at initialize to answer this tool's questions)",
                {"requiredCapabilities": missing},
            )
        loop = asyncio.get_running_loop()
        waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        try:
            for key, request in exc.input_requests.items():
                request_id = f"srv-{secrets.token_urlsafe(12)}"  # unguessable: only this client can answer
                future: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._client_requests[request_id] = (session.id, future)
                waiting[key] = (request_id, future)
                sent = emit(
                    {
                        "jsonrpc": "2.0",
                        "id": request_id,
                        "method": request["method"],
                        "params": request.get("params", {}),
                    }
                )
                if sent is False:  # no stream to ask on (JSON-only POST and no GET stream): do not wait
                    raise ToolError(
                        "This tool needs to ask the client a question: accept text/event-stream "
                        "on the call or open the session's GET stream."
                    )
            deadline = loop.time() + CLIENT_REQUEST_TIMEOUT_SECONDS
            done = [await asyncio.wait_for(future, max(0.0, deadline - loop.time())) for _, future in waiting.values()]
        except TimeoutError:
            raise ToolError("The client did not answer this tool's question in time.", outcome="timeout") from None
        finally:
            for request_id, _ in waiting.values():
                self._client_requests.pop(request_id, None)
        answers: dict[str, Any] = {}
        for key, reply in zip(waiting, done, strict=True):
            if "error" in reply:
                error = reply["error"] if isinstance(reply["error"], dict) else {}
                raise ToolError(
                    f"The client refused {exc.input_requests[key].get('method')}: "
                    f"{_shown(error.get('message', 'no reason given'))}"
                )
            answers[key] = reply.get("result") if isinstance(reply.get("result"), dict) else {}
        return answers

    def _input_round(self, params: dict[str, Any], env: CallEnv, bound_to: str, ctx: ToolContext) -> None:
        """Validate a retried request's inputResponses and requestState into `ctx` (-32602 when bad)."""
        if env.envelope is None or ("inputResponses" not in params and "requestState" not in params):
            return
        responses = params.get("inputResponses")
        if "inputResponses" in params and (
            not isinstance(responses, dict) or not all(isinstance(v, dict) for v in responses.values())
        ):
            raise JsonRpcError(
                INVALID_PARAMS,
                "Invalid params: inputResponses must map each input request key to the client's result object",
            )
        ctx.input_responses = responses or {}
        if "requestState" in params:
            ctx.request_state = self._verify_state(params["requestState"], bound_to)

    def _sign_state(self, state: Any, bound_to: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()
        mac = hmac.new(self._state_key, f"{bound_to}\n{payload}".encode(), hashlib.sha256).hexdigest()
        return f"{payload}.{mac}"

    def _verify_state(self, token: Any, bound_to: str) -> Any:
        payload, _, mac = token.rpartition(".") if isinstance(token, str) else ("", "", "")
        expected = hmac.new(self._state_key, f"{bound_to}\n{payload}".encode(), hashlib.sha256).hexdigest()
        if not payload or not hmac.compare_digest(mac, expected):
            raise JsonRpcError(
                INVALID_PARAMS,
                "Invalid params: requestState failed its integrity check "
                "(send the requestState of the last InputRequiredResult unchanged)",
            )
        return json.loads(base64.urlsafe_b64decode(payload.encode()))

    def _input_required(self, exc: InputRequired, env: CallEnv, bound_to: str) -> dict[str, Any]:
        if env.envelope is None:
            raise JsonRpcError(
                INVALID_PARAMS,
                "This request needs input from the client (elicitation, sampling "
                "or roots), which this server asks for in protocol 2026-07-28 only",
            )
        missing = _missing_capabilities(exc.input_requests, env.envelope.client_capabilities)
        unknown = [
            r.get("method") for r in exc.input_requests.values() if r.get("method") not in INPUT_REQUEST_CAPABILITIES
        ]
        if unknown:  # a programming error in the handler: never send the client what it cannot answer
            raise RuntimeError(f"unsupported input request methods: {unknown}")
        if missing:
            raise JsonRpcError(
                MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"Missing required client capability: {', '.join(missing)} (declare it to answer this request's input)",
                {"requiredCapabilities": missing},
            )
        result: dict[str, Any] = {"resultType": "input_required", "inputRequests": exc.input_requests}
        if exc.state is not None:
            result["requestState"] = self._sign_state(exc.state, bound_to)
        result["_meta"] = {META_SERVER_INFO: self.server_info}
        return result

    def _content_result(self, result: ToolResult, modern: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"content": list(result.content), "isError": result.is_error}
        if result.structured is not None:
            out["structuredContent"] = result.structured
        return self._modern_fields(out) if modern else out

    @staticmethod
    def _require_client_capabilities(tool: Tool, env: CallEnv) -> None:
        """-32021 when the tool needs a client capability this caller did not declare."""
        if env.envelope is not None:
            declared = env.envelope.client_capabilities
        else:
            declared = env.session.client_capabilities if env.session is not None else {}
        missing = {
            name: value
            for name, value in tool.required_client_capabilities.items()
            if not isinstance(declared.get(name), dict)
        }
        if missing:
            raise JsonRpcError(
                MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"Missing required client capability: tool {tool.name} needs "
                f"{', '.join(missing)}; declare it in the client capabilities",
                {"requiredCapabilities": missing},
            )

    def _error_result(self, message: str, modern: bool) -> dict[str, Any]:
        result = {"content": [{"type": "text", "text": message}], "isError": True}
        return self._modern_fields(result) if modern else result

    def _tool_context(self, params: dict[str, Any], env: CallEnv, request_id: RequestId | None) -> ToolContext:
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, bool) or not isinstance(token, str | int):
            token = None
        emit = env.emit
        if env.envelope is not None:
            threshold = env.envelope.log_level
            version = env.envelope.protocol_version
        else:
            threshold = env.session.log_level if env.session is not None else None
            version = env.session.protocol_version if env.session is not None else DEFAULT_HEADERLESS_VERSION
        ctx = ToolContext(
            principal=env.principal,
            base_url=env.base_url,
            session_id=env.session.id if env.session is not None else None,
            request_id=None if request_id is None else str(request_id),
        )
        if env.envelope is not None:
            ctx.client_capabilities = env.envelope.client_capabilities
        elif env.session is not None:
            ctx.client_capabilities = env.session.client_capabilities
        if emit is not None and token is not None:
            with_message = version != "2024-11-05"  # progress `message` arrived in 2025-03-26

            async def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
                progress_params: dict[str, Any] = {"progressToken": token, "progress": progress}
                if total is not None:
                    progress_params["total"] = total
                if message is not None and with_message:
                    progress_params["message"] = message
                emit({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress_params})

            ctx.report_progress = report_progress
        if emit is not None and threshold is not None:
            floor = _LEVEL_RANK[threshold]
            logger_name = self.name

            async def send_log(level: str, data: Any) -> None:
                level = _LEVEL_ALIASES.get(level.lower(), level.lower())
                if level not in _LEVEL_RANK:
                    level = "info"
                if _LEVEL_RANK[level] >= floor:
                    emit(
                        {
                            "jsonrpc": "2.0",
                            "method": "notifications/message",
                            "params": {"level": level, "logger": logger_name, "data": data},
                        }
                    )

            ctx.log = send_log
        return ctx


def _missing_capabilities(
    input_requests: dict[str, dict[str, Any]], declared: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The client capabilities (as a ClientCapabilities object) these questions need but were not declared."""
    needed = {INPUT_REQUEST_CAPABILITIES.get(str(request.get("method")), "") for request in input_requests.values()}
    return {capability: {} for capability in sorted(needed) if capability and capability not in declared}


def _header_form(value: Any) -> str:
    """How a mirrored argument reads as a header value (SEP-2243): strings as-is, JSON otherwise."""
    return value if isinstance(value, str) else json.dumps(value)


def _required_uri(params: dict[str, Any]) -> str:
    uri = params.get("uri")
    if not isinstance(uri, str) or not uri:
        raise JsonRpcError(INVALID_PARAMS, 'Invalid params: "uri" (a non-empty string) is required')
    return uri


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode("ascii")


def _decode_cursor(cursor: Any) -> int | None:
    """The offset an opaque cursor stands for, None when it is not one of ours."""
    if not isinstance(cursor, str):
        return None
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    if not text.startswith("o:") or not text[2:].isdigit():
        return None
    return int(text[2:])


def unsupported_version(requested: Any, *, request_id: RequestId | None = None) -> JsonRpcError:
    """-32022 naming every version this server speaks (both eras, so a client can pick either path)."""
    return JsonRpcError(
        UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        {"supported": list(SUPPORTED_VERSIONS), "requested": requested},
        request_id=request_id,
    )


def is_modern_request(body: Mapping[str, Any], header_version: str | None) -> bool:
    """Which era serves a single JSON-RPC object: the 2026-07-28 envelope or the handshake era.

    The header decides when it names a version; otherwise a body carrying the envelope's protocol
    version (or the modern-only server/discover method) is modern.
    """
    if header_version in MODERN_VERSIONS:
        return True
    if header_version in HANDSHAKE_VERSIONS:
        return False
    params = body.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return (isinstance(meta, dict) and META_PROTOCOL_VERSION in meta) or body.get("method") == "server/discover"
