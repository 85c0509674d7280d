"""Every web.AppKey in one place: typed application state, no module globals.

The value classes are imported for the type checker only: most of their modules import this one, so a
runtime import would be a cycle. With postponed annotations the key's type lives in its annotation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .auth.bearer import Authenticator
    from .auth.state import AuthState
    from .cors import CorsRoutes
    from .db.database import Database
    from .mcp.server import McpServer
    from .mcp.transports import McpEndpoints
    from .obs.metrics import Metrics
    from .settings import Settings
    from .state.redisstate import RedisState
    from .tools.chatgpt import ChatGptTools

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
DATABASE: web.AppKey[Database] = web.AppKey("database")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
# MCP servers by URL prefix: "" (Claude tool set) and "/chatgpt" (ChatGPT tool set).
MCP_SERVERS: web.AppKey[dict[str, McpServer]] = web.AppKey("mcp_servers")
# What create_app wired for each prefix (transports and their timings: tests tune them through it).
MCP_ENDPOINTS: web.AppKey[dict[str, McpEndpoints]] = web.AppKey("mcp_endpoints")
# Anything an area needs to keep per app gets its own key below.
# Which CORS policy each route path has (app.cors: filled by auth and the MCP transports).
CORS_ROUTES: web.AppKey[CorsRoutes] = web.AppKey("cors_routes")
AUTH_STORE: web.AppKey[AuthState] = web.AppKey("auth_store")
# The one ChatGPT tool set per app: MCP serves it and the record pages read its fetch cache.
CHATGPT_TOOLS: web.AppKey[ChatGptTools] = web.AppKey("chatgpt_tools")
# Per-request id (honoured X-Request-ID or generated), set by app.obs's middleware; also bound to logs.
# The shared Redis (REDIS_URL), absent when the service keeps its ephemeral state in this process.
REDIS: web.AppKey[RedisState] = web.AppKey("redis")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
