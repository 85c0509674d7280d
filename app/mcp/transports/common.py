"""HTTP plumbing shared by the MCP transports: origin policy, content negotiation, bodies, SSE."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ... import keys
from ...core import Principal
from ...middlewares import disconnected
from ...settings import Settings
from ...urls import base_url, peer_is_trusted
from ..jsonrpc import INVALID_REQUEST, JsonRpcError, RequestId, dumps, dumps_bytes, error_message
from ..server import McpServer
from .outbox import Outbox

log = structlog.get_logger(__name__)
T = TypeVar("T")

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
SSE_HEADERS = {
    "Content-Type": SSE_TYPE,
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}
ALWAYS_ALLOWED_ORIGINS = ("https://chatgpt.com", "https://claude.ai", "https://claude.com")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"


def _origin_of(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


class OriginPolicy:
    """Which browser Origins may talk to the MCP endpoints (DNS-rebinding protection)."""

    def __init__(self, settings: Settings) -> None:
        allowed = {origin.lower() for origin in ALWAYS_ALLOWED_ORIGINS}
        allowed.update(_origin_of(origin) for origin in settings.allowed_origins if origin.strip())
        if settings.public_base_url:
            allowed.add(_origin_of(settings.public_base_url))
        self._allowed = frozenset(allowed)

    def allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser request
        origin = origin.strip().rstrip("/").lower()
        if origin in self._allowed:
            return True
        try:
            parts = urlsplit(origin)
            host = parts.hostname
        except ValueError:
            return False
        if parts.scheme in ("http", "https") and host in LOOPBACK_HOSTS:
            return True
        # Behind a trusted proxy the public origin comes from X-Forwarded-*; never from a bare Host
        # header, which is exactly what a DNS-rebinding page controls.
        if "X-Forwarded-Host" in request.headers and peer_is_trusted(request):
            return origin == _origin_of(base_url(request))
        return False


def accepts(request: web.Request) -> tuple[bool, bool]:
    """(accepts JSON, accepts SSE) from the Accept header; a missing header accepts anything."""
    header = request.headers.get("Accept")
    if not header:
        return True, True
    return _accepted(header)


@functools.lru_cache(maxsize=256)  # a client sends the same Accept header on every call
def _accepted(header: str) -> tuple[bool, bool]:
    types = {part.split(";", 1)[0].strip().lower() for part in header.split(",")}
    wildcard = "*/*" in types
    return (
        wildcard or JSON_TYPE in types or "application/*" in types,
        wildcard or SSE_TYPE in types or "text/*" in types,
    )


def rpc_error_response(
    status: int, error: JsonRpcError, request_id: RequestId | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    rid = request_id if request_id is not None else error.request_id
    return web.Response(
        status=status, body=dumps(error_message(rid, error)).encode(), content_type=JSON_TYPE, headers=headers
    )


def http_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """A transport-level refusal, still with a JSON-RPC error body (id null) so MCP clients can show it."""
    return rpc_error_response(status, JsonRpcError(INVALID_REQUEST, message), headers=headers)


def forbidden_origin() -> web.Response:
    return http_error(403, "Forbidden: this Origin is not allowed to use the MCP endpoint")


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge from None
    if len(body) > limit:
        raise BodyTooLarge
    return body


def too_large(limit: int) -> web.Response:
    return http_error(413, f"Request body too large: the limit is {limit} bytes")


def json_body(message: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps_bytes(message), content_type=JSON_TYPE, headers=headers)


def sse_event(message: Any, event: str = "message") -> bytes:
    return f"event: {event}\ndata: {dumps(message)}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"


async def open_sse(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
    await response.prepare(request)
    return response


def new_outbox(settings: Settings, on_overflow: Callable[[Outbox], None] | None = None) -> Outbox:
    """An outbox of SSE frames bounded by MCP_STREAM_MAX_MESSAGES / MCP_STREAM_MAX_BYTES."""
    return Outbox(
        sse_event,
        max_messages=settings.stream_max_messages,
        max_bytes=settings.stream_max_bytes,
        on_overflow=on_overflow,
    )


def note_stream_dropped(server: McpServer, transport: str, stream: str, outbox: Outbox) -> None:
    """The log line (and metric) for a stream dropped because its client stopped reading."""
    log.warning(
        "mcp_stream_dropped",
        transport=transport,
        stream=stream,
        reason="client_not_reading",
        queued_messages=len(outbox),
        queued_bytes=outbox.queued_bytes,
        max_messages=outbox.max_messages,
        max_bytes=outbox.max_bytes,
    )
    if server.metrics is not None:  # servers built for protocol tests may have none
        server.metrics.mcp_streams_dropped.labels(transport).inc()


def abort_connection(request: web.Request) -> None:
    """Drop the client's connection at once, unsent bytes included.

    A writer stuck in `await response.write()` (the client stopped reading) wakes with
    ConnectionResetError; a graceful close would wait for the client to read first, which is never.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()


async def pump_stream(
    request: web.Request, response: web.StreamResponse, outbox: Outbox, *, keepalive: float, poll: float = 1.0
) -> None:
    """Forward outbox frames as SSE events until the outbox closes or the client goes away.

    `poll` is how often a silent disconnect is looked for (aiohttp does not cancel handlers when
    the client leaves, as run_app is configured by default).
    """
    idle = 0.0
    step = min(keepalive, poll)
    while True:
        while outbox:
            await response.write(outbox.take())
            idle = 0.0
        if outbox.closed or disconnected(request):
            return
        await outbox.wait(step)
        if not outbox and not outbox.closed:
            idle += step
            if idle >= keepalive:
                await response.write(KEEPALIVE)
                idle = 0.0


async def authenticate(request: web.Request, methods: Sequence[str]) -> Principal:
    """The app's bearer check; its HTTP exceptions (401/403 with WWW-Authenticate) propagate unchanged.

    Whether a call without a token may run is the authenticator's decision (app.core.unauthenticated_allowed,
    the one rule). create_app always wires one; an app without it fails closed.
    """
    authenticator = request.app.get(keys.AUTHENTICATOR)
    if authenticator is None:
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Bearer realm="mcp"'}, text='{"error":"invalid_token"}', content_type=JSON_TYPE
        )
    return await authenticator.authenticate(request, methods)


# -- starting a call: its first step runs at once, a task only if it has to wait ------------------------
EAGER_TASKS = sys.version_info >= (3, 12)  # asyncio.Task(eager_start=True)


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run `coro`'s first step now; a call that finishes in it costs no task and no event loop round.

    What comes back is a Task when the call had to wait (cancel() stops it as usual), otherwise a
    finished future. On Python 3.12+ this is asyncio's eager task start. On 3.11 the first step runs in
    a copy of the context like a task's, but asyncio.current_task() is still the caller's during that
    step (a tool must not open asyncio.timeout() or a TaskGroup before its first await).
    """
    loop = asyncio.get_running_loop()
    if EAGER_TASKS:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    context = contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration as finished:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(finished.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # kept for whoever reads the result, as a task would
        failed: asyncio.Future[T] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        return failed
    return loop.create_task(_Resumed(coro, waiting_on), context=context)


class _Resumed(Coroutine[Any, Any, T]):
    """A coroutine already past its first step, as a task's coroutine: the task's first step gets what it
    is waiting on, later steps (and cancellation) reach the coroutine itself."""

    __slots__ = ("_coro", "_started", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            waiting_on, self._waiting_on = self._waiting_on, None
            return waiting_on
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        self._waiting_on = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the old three-argument form

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:  # pragma: no cover - only ever driven by a task
        raise TypeError("_Resumed is driven by its task")
