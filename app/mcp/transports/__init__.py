"""Thin aiohttp adapters for McpServer: Streamable HTTP (+ 2026-07-28 envelope) and legacy HTTP+SSE.

Routes for a prefix P ("" for Claude, "/chatgpt" for ChatGPT):

    POST   P/mcp       Streamable HTTP messages (handshake era with Mcp-Session-Id, or 2026-07-28 envelope)
    GET    P/mcp       server->client SSE stream of a session
    DELETE P/mcp       end a session
    GET    P/sse       legacy HTTP+SSE stream (first event: `endpoint`)
    POST   P/messages  legacy HTTP+SSE messages (?session_id=...)
    POST   P/sse       Streamable HTTP, as the seed system accepted (or legacy messages with ?session_id=)
    HEAD   P/mcp, P/sse (a connector's first probe), OPTIONS on all of them

Routes never include ENVIRONMENT_PATH: the proxy strips it; public URLs add it back (app.urls.base_url).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from ... import keys
from ...cors import allow_cors, credentialed
from ...state.redisstate import RedisUnavailable
from ...state.sessions import RedisSessionStorage
from ..server import McpServer
from .common import OriginPolicy, http_error
from .relay import Relay
from .sessions import SessionManager, SessionStorage
from .sse import LegacySse
from .streamable import StreamableHttp

__all__ = ["McpEndpoints", "SessionManager", "add_mcp_routes"]


@dataclass
class McpEndpoints:
    """What add_mcp_routes wired for one prefix (tests tune timings and look at sessions through it)."""

    prefix: str
    server: McpServer
    sessions: SessionManager
    streamable: StreamableHttp
    sse: LegacySse


def add_mcp_routes(app: web.Application, prefix: str, server: McpServer) -> McpEndpoints:
    settings = app[keys.SETTINGS]
    metrics = server.metrics

    def count_session(transport: str, delta: int) -> None:
        if metrics is not None:
            metrics.mcp_sessions_active.labels(transport).inc(delta)

    # REDIS_URL: session records in Redis and a relay to the other workers, so any worker serves any
    # session; otherwise both stay in this process, exactly as with one worker.
    redis = app.get(keys.REDIS)
    storage: SessionStorage | None = None
    relay: Relay | None = None
    if redis is not None:
        scope = prefix.strip("/") or "mcp"
        storage = RedisSessionStorage(redis, scope, idle_seconds=settings.session_idle_seconds)
        relay = Relay(redis, scope)
    sessions = SessionManager(
        max_sessions=settings.max_sessions,
        idle_seconds=settings.session_idle_seconds,
        active_seconds=settings.session_active_seconds,
        on_count=count_session,
        storage=storage,
        relay=relay,
    )
    server.attach_sessions(sessions)  # resources notifications reach this prefix's open sessions
    if metrics is not None:
        metrics.session_states.watch(sessions.counts_by_state)
    origins = OriginPolicy(settings)
    streamable = StreamableHttp(server, sessions, settings, origins)
    legacy = LegacySse(server, sessions, settings, origins, prefix)
    mcp_path, sse_path, messages_path = f"{prefix}/mcp", f"{prefix}/sse", f"{prefix}/messages"
    guard = _refused_while_redis_is_down if redis is not None else _as_is

    @guard
    async def post_sse(request: web.Request) -> web.StreamResponse:
        # The seed accepted Streamable HTTP on /sse; clients that append ?session_id= mean legacy messages.
        if "session_id" in request.query or "sessionId" in request.query:
            return await legacy.message(request)
        return await streamable.post(request)

    async def head_mcp(request: web.Request) -> web.Response:
        # Connectors probe the URL they were given with HEAD before anything else: say it exists, as for /sse.
        return web.Response(
            status=200, headers={"Allow": "GET, POST, DELETE, OPTIONS", "Content-Type": "application/json"}
        )

    # Browser-based MCP clients need CORS on every answer, errors and 401s included; only allowed Origins.
    cors = credentialed(origins.allowed)
    app.router.add_post(mcp_path, guard(streamable.post))
    app.router.add_get(mcp_path, guard(streamable.get), allow_head=False)
    app.router.add_route("HEAD", mcp_path, head_mcp)
    app.router.add_delete(mcp_path, guard(streamable.delete))
    allow_cors(app, mcp_path, cors, methods="GET, POST, DELETE, OPTIONS")
    app.router.add_get(sse_path, guard(legacy.stream), allow_head=False)
    app.router.add_route("HEAD", sse_path, legacy.head)
    app.router.add_post(sse_path, post_sse)
    allow_cors(app, sse_path, cors, methods="GET, POST, HEAD, OPTIONS")
    app.router.add_post(messages_path, guard(legacy.message))
    allow_cors(app, messages_path, cors, methods="POST, OPTIONS")

    async def close_sessions(_app: web.Application) -> None:
        # Before aiohttp waits for handlers: ends open SSE streams so shutdown is not held up.
        await sessions.close_all()

    app.on_shutdown.append(close_sessions)
    if redis is not None:

        async def maintain(_app: web.Application) -> AsyncIterator[None]:
            # Shared records expire in Redis; this keeps the ones in use here alive and the gauge current.
            task = asyncio.get_running_loop().create_task(sessions.maintain_forever())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(maintain)
    return McpEndpoints(prefix, server, sessions, streamable, legacy)


def _as_is(handler: Handler) -> Handler:
    return handler


def _refused_while_redis_is_down(handler: Handler) -> Handler:
    """Shared sessions cannot be created or found while Redis is down: a clear 503, never a hang."""

    async def refused_while_redis_is_down(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RedisUnavailable as exc:
            return http_error(503, str(exc), headers={"Retry-After": "1"})

    return refused_while_redis_is_down
