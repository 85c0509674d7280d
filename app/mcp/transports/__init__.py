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
from ..server import McpServer
from .common import CORS_ALLOW_HEADERS, OriginPolicy, cors_headers
from .sse import LegacySse
from .streamable import StreamableHttp

__all__ = ["McpEndpoints", "add_mcp_routes"]


@dataclass
class McpEndpoints:
    """What add_mcp_routes wired for one prefix (tests tune timings through it)."""

    prefix: str
    server: McpServer
    streamable: StreamableHttp
    sse: LegacySse


def add_mcp_routes(app: web.Application, prefix: str, server: McpServer) -> McpEndpoints:
    settings = app[keys.SETTINGS]
    server.sessions.max_sessions = settings.max_sessions
    server.sessions.idle_seconds = settings.session_idle_seconds
    server.sessions.active_seconds = settings.session_active_seconds
    if server.metrics is not None:
        server.metrics.session_states.watch(server.sessions.counts_by_state)
    origins = OriginPolicy(settings)
    streamable = StreamableHttp(server, settings, origins)
    legacy = LegacySse(server, settings, origins, prefix)
    mcp_path, sse_path, messages_path = f"{prefix}/mcp", f"{prefix}/sse", f"{prefix}/messages"
    paths = {mcp_path, sse_path, messages_path}

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

    def options_for(allow: str):
        async def options(request: web.Request) -> web.Response:
            headers = {
                "Allow": allow,
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "86400",
            }
            if not origins.allowed(request):
                headers.pop("Access-Control-Allow-Methods")
                headers.pop("Access-Control-Allow-Headers")
            return web.Response(status=200, headers=headers)

        return options

    app.router.add_post(mcp_path, streamable.post)
    app.router.add_get(mcp_path, streamable.get, allow_head=False)
    app.router.add_route("HEAD", mcp_path, head_mcp)
    app.router.add_delete(mcp_path, streamable.delete)
    app.router.add_route("OPTIONS", mcp_path, options_for("GET, POST, DELETE, OPTIONS"))
    app.router.add_get(sse_path, legacy.stream, allow_head=False)
    app.router.add_route("HEAD", sse_path, legacy.head)
    app.router.add_post(sse_path, post_sse)
    app.router.add_route("OPTIONS", sse_path, options_for("GET, POST, HEAD, OPTIONS"))
    app.router.add_post(messages_path, legacy.message)
    app.router.add_route("OPTIONS", messages_path, options_for("POST, OPTIONS"))

    async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        # Browser-based MCP clients need CORS on every answer, errors and 401s included.
        if request.path in paths and "Origin" in request.headers and origins.allowed(request):
            for name, value in cors_headers(request).items():
                response.headers.setdefault(name, value)

    async def close_sessions(_app: web.Application) -> None:
        # Before aiohttp waits for handlers: ends open SSE streams so shutdown is not held up.
        server.sessions.close_all()

    app.on_response_prepare.append(add_cors)
    app.on_shutdown.append(close_sessions)
    return McpEndpoints(prefix, server, streamable, legacy)
