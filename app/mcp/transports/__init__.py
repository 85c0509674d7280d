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

from dataclasses import dataclass

from aiohttp import web

from ... import keys
from ...cors import allow_cors, credentialed
from ..server import McpServer
from .common import OriginPolicy
from .sessions import SessionManager
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

    sessions = SessionManager(
        max_sessions=settings.max_sessions,
        idle_seconds=settings.session_idle_seconds,
        active_seconds=settings.session_active_seconds,
        on_count=count_session,
    )
    server.attach_sessions(sessions)  # resources notifications reach this prefix's open sessions
    if metrics is not None:
        metrics.session_states.watch(sessions.counts_by_state)
    origins = OriginPolicy(settings)
    streamable = StreamableHttp(server, sessions, settings, origins)
    legacy = LegacySse(server, sessions, settings, origins, prefix)
    mcp_path, sse_path, messages_path = f"{prefix}/mcp", f"{prefix}/sse", f"{prefix}/messages"

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
    app.router.add_post(mcp_path, streamable.post)
    app.router.add_get(mcp_path, streamable.get, allow_head=False)
    app.router.add_route("HEAD", mcp_path, head_mcp)
    app.router.add_delete(mcp_path, streamable.delete)
    allow_cors(app, mcp_path, cors, methods="GET, POST, DELETE, OPTIONS")
    app.router.add_get(sse_path, legacy.stream, allow_head=False)
    app.router.add_route("HEAD", sse_path, legacy.head)
    app.router.add_post(sse_path, post_sse)
    allow_cors(app, sse_path, cors, methods="GET, POST, HEAD, OPTIONS")
    app.router.add_post(messages_path, legacy.message)
    allow_cors(app, messages_path, cors, methods="POST, OPTIONS")

    async def close_sessions(_app: web.Application) -> None:
        # Before aiohttp waits for handlers: ends open SSE streams so shutdown is not held up.
        sessions.close_all()

    app.on_shutdown.append(close_sessions)
    return McpEndpoints(prefix, server, sessions, streamable, legacy)
