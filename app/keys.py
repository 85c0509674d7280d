"""Every web.AppKey in one place: typed application state, no module globals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .mcp.server import McpServer

SETTINGS = web.AppKey("settings", "Settings")
METRICS = web.AppKey("metrics", "Metrics")
DATABASE = web.AppKey("database", "Database")
AUTHENTICATOR = web.AppKey("authenticator", "Authenticator")
# MCP servers by URL prefix: "" (Claude tool set) and "/chatgpt" (ChatGPT tool set).
MCP_SERVERS = web.AppKey("mcp_servers", dict[str, "McpServer"])
# Anything an area needs to keep per app (auth store, fetch cache, ...) gets its own key below.
AUTH_STORE = web.AppKey("auth_store", Any)
FETCH_CACHE = web.AppKey("fetch_cache", Any)
# Per-request id (honoured X-Request-ID or generated), set by app.obs's middleware; also bound to logs.
REQUEST_ID = web.RequestKey("request_id", str)
