"""`/health` and `/chatgpt/health`: liveness plus a cheap picture of the database and the MCP endpoints.

Answers from in-memory state only (`Database.status()` never touches the pool), so it stays instant
while every connection is busy or the database is down. Routes are registered without
ENVIRONMENT_PATH; the reverse proxy strips that prefix.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from . import __version__, keys

log = structlog.get_logger(__name__)


def _database_status(app: web.Application) -> dict[str, Any]:
    database = app.get(keys.DATABASE)
    status = getattr(database, "status", None)
    if status is None:
        return {"status": "unknown"}
    try:
        return status()
    except Exception:  # health must answer even when the status code has a bug
        log.exception("database_status_failed")
        return {"status": "unknown"}


def _health_handler(prefix: str):
    async def health(request: web.Request) -> web.Response:
        app = request.app
        database = _database_status(app)
        server = app.get(keys.MCP_SERVERS, {}).get(prefix)
        body: dict[str, Any] = {
            "status": "ok" if database.get("status") == "ok" else "degraded",
            "version": __version__,
            "database": database,
            "protocolVersions": server.protocol_versions if server is not None else [],
            "endpoint": f"{prefix}/mcp",
            "tools": server.tool_names if server is not None else [],
        }
        # Always 200: a degraded database is reported, not a reason for a load balancer to kill the service.
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return health


def add_health_routes(app: web.Application) -> None:
    prefixes = list(app.get(keys.MCP_SERVERS, {}) or {"": None})
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/health", _health_handler(prefix))  # HEAD is added by aiohttp
