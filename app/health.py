"""`/health` and `/chatgpt/health`: liveness plus a cheap picture of the database and the MCP endpoints.

Answers from in-memory state only (`Database.status()` never touches the pool), so it stays instant
while every connection is busy or the database is down. Routes are registered without
ENVIRONMENT_PATH; the reverse proxy strips that prefix.

`status` is the seed system's `healthy` / `degraded` / `unhealthy`, and the seed's other fields
(transport, oauth, database_name, mcp_version, read_only, compatible_with) are there too, so monitoring
written for it keeps working. Anyone may ask, so the public answer carries only fields that say nothing
about where the database is or how it failed: status, dialect, database name and pool counts. The
details (`last_error`, which holds the driver's text with host, port and user) go only to a request
with the METRICS_TOKEN bearer or a valid access token for this surface.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from . import __version__, keys
from .core import surface_by_prefix
from .mcp.server import HANDSHAKE_VERSIONS
from .obs import bearer_matches

if TYPE_CHECKING:
    from .mcp.server import McpServer
    from .settings import Settings

log = structlog.get_logger(__name__)

# Database status fields anyone may see; everything else (last_error, ...) needs the details check.
PUBLIC_DATABASE_FIELDS = ("status", "dialect", "name", "pool")
PUBLIC_POOL_FIELDS = ("size", "in_use", "idle", "waiting", "healthy")


def database_name(settings: Settings) -> str | None:
    """The configured database's name only: never a host, port, user or directory."""
    name: str | None = None
    raw = settings.odbc_connection_string
    if raw:
        for part in raw.split(";"):
            key, _, value = part.partition("=")
            if key.strip().lower() in ("database", "dbq", "initial catalog"):
                name = value.strip().strip("{}")
    else:
        name = {
            "mssql": settings.mssql_database,
            "postgres": settings.pg_database,
            "sqlite": settings.sqlite_path,
        }.get(settings.db_backend)
    if not name:
        return None
    if "/" in name or "\\" in name or name.startswith("file:"):  # a file path (SQLite): its file name
        name = PurePath(name.split("?", 1)[0].replace("\\", "/")).name
    return name or None


def _database_status(app: web.Application) -> dict[str, Any]:
    database = app.get(keys.DATABASE)
    if database is None:
        return {"status": "unknown"}
    try:
        result = dict(database.status())
    except Exception:  # health must answer even when the status code has a bug
        log.exception("database_status_failed")
        return {"status": "unknown"}
    settings = app.get(keys.SETTINGS)
    name = database_name(settings) if settings is not None else None
    if name is not None:
        result.setdefault("name", name)
    return result


def _public(database: dict[str, Any]) -> dict[str, Any]:
    shown = {key: database[key] for key in PUBLIC_DATABASE_FIELDS if key in database}
    pool = shown.get("pool")
    if isinstance(pool, dict):
        shown["pool"] = {key: pool[key] for key in PUBLIC_POOL_FIELDS if isinstance(pool.get(key), int)}
    return shown


async def may_see_details(request: web.Request) -> bool:
    """The METRICS_TOKEN bearer, or an access token the MCP endpoint of this surface would accept."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return False  # no bearer at all: the public answer, without counting a rejected token
    settings = request.app.get(keys.SETTINGS)
    metrics_token = settings.metrics_token if settings is not None else ""
    if metrics_token and bearer_matches(request, metrics_token):
        return True
    authenticator = request.app.get(keys.AUTHENTICATOR)
    if authenticator is None:
        return False
    try:
        principal = await authenticator.authenticate(request, [])
    except web.HTTPException:  # a bad token is not an error here: the public answer it is
        return False
    return bool(principal.authenticated)


def overall_status(database: dict[str, Any]) -> str:
    """The seed's vocabulary: healthy (the database answers), degraded (the service answers and keeps
    retrying the database), unhealthy (the database refuses the configured login or TLS settings, which
    retrying will not fix: an operator must act)."""
    state = database.get("status")
    if state == "ok":
        return "healthy"
    return "unhealthy" if state == "misconfigured" else "degraded"


def _health_handler(prefix: str):
    async def health(request: web.Request) -> web.Response:
        app = request.app
        database = _database_status(app)
        servers: dict[str, McpServer] = app.get(keys.MCP_SERVERS, {})
        server = servers.get(prefix)
        surface = surface_by_prefix(prefix)
        settings = app.get(keys.SETTINGS)
        versions = server.protocol_versions if server is not None else []
        details = await may_see_details(request)
        redis = app.get(keys.REDIS)
        redis_status = redis.status() if redis is not None else None
        status = overall_status(database)
        if redis_status is not None and redis_status["status"] != "ok" and status == "healthy":
            status = "degraded"  # calls on open sessions may work; new sessions and sign-ins are refused
        body: dict[str, Any] = {
            "status": status,
            "version": __version__,
            "database": database if details else _public(database),
            "protocolVersions": versions,
            "endpoint": f"{prefix}/mcp",
            "tools": server.tool_names if server is not None else [],
            # The seed's fields, so monitoring written for it keeps working.
            "transport": "streamable-http, sse",
            "oauth": "enabled" if settings is None or settings.auth_enabled else "disabled",
            "database_name": database.get("name"),
            "mcp_version": _newest_handshake_version(versions),
            "read_only": settings.read_only_mode if settings is not None else True,
            "compatible_with": surface.compatible_with if surface else "MCP clients",
        }
        if redis_status is not None:
            body["redis"] = redis_status if details else {"status": redis_status["status"]}
        # Always 200: a degraded database is reported, not a reason for a load balancer to kill the service.
        return web.json_response(body, headers={"Cache-Control": "no-store", "Vary": "Authorization"})

    return health


def _newest_handshake_version(versions: list[str]) -> str | None:
    """The newest version negotiated with `initialize` (the seed reported one version; the stateless
    2026-07-28 envelope is listed in protocolVersions)."""
    handshake = [v for v in versions if v in HANDSHAKE_VERSIONS]
    return max(handshake) if handshake else None


def add_health_routes(app: web.Application) -> None:
    servers: dict[str, McpServer] = app.get(keys.MCP_SERVERS, {})
    prefixes = list(servers) or [""]
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/health", _health_handler(prefix))  # HEAD is added by aiohttp
