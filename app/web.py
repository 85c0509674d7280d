"""create_app(settings): the one place the service is assembled (used by __main__ and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from . import __version__, keys
from .auth import setup_auth
from .core import SURFACES, Toolset
from .db.database import Database
from .health import add_health_routes
from .mcp.server import McpServer
from .mcp.transports import add_mcp_routes
from .middlewares import error_middleware
from .obs import setup_observability
from .obs.metrics import Metrics
from .settings import Settings
from .tools import (
    DatabaseResources,
    add_record_routes,
    build_instructions,
    catalog_prompts,
    catalog_resources,
    chatgpt_tools,
    claude_tools,
    watch_catalog,
)


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = app[keys.DATABASE]
    await database.start()  # never fails because the database is down: /health reports degraded
    yield
    await database.close()


def _mcp_servers(app: web.Application, resources: DatabaseResources) -> dict[str, McpServer]:
    """One MCP server per surface (app.core.SURFACES), keyed by its URL prefix."""
    settings, database, metrics = app[keys.SETTINGS], app[keys.DATABASE], app[keys.METRICS]
    toolsets = {"claude": claude_tools(database, settings), "chatgpt": chatgpt_tools(database, settings, metrics)}
    # Prompts name the steps in the surface's own tools; ChatGPT developer mode may get the SQL tools too.
    steps: dict[str, Toolset] = {"claude": "claude", "chatgpt": "chatgpt"}
    if settings.chatgpt_include_claude_tools:
        toolsets["chatgpt"] = toolsets["chatgpt"] + toolsets["claude"]
        steps["chatgpt"] = "claude"
    # Every surface offers the same catalog resources and prompts (ChatGPT ignores them today; MCP
    # Inspector and other clients pointed at /chatgpt/mcp can use them).
    return {
        surface.prefix: McpServer(
            name=surface.server_name,
            version=__version__,
            tools=toolsets[surface.toolset],
            metrics=metrics,
            instructions=build_instructions(settings, surface.toolset),
            resources=resources,
            prompts=catalog_prompts(database, settings, resources, steps[surface.toolset]),
        )
        for surface in SURFACES
    }


def _catalog_watch_ctx(resources: DatabaseResources) -> Callable[[web.Application], AsyncIterator[None]]:
    """resources/list_changed and resources/updated notifications on every surface (app.tools.resources)."""

    async def watch(app: web.Application) -> AsyncIterator[None]:
        servers = list(app[keys.MCP_SERVERS].values())
        task = asyncio.get_running_loop().create_task(watch_catalog(resources, servers))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return watch


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_request_bytes)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    # Outermost: request id, access log and HTTP metrics see every response, error pages included.
    setup_observability(app)
    app.middlewares.append(error_middleware)

    app[keys.DATABASE] = Database(settings, app[keys.METRICS])
    app.cleanup_ctx.append(_database_ctx)

    setup_auth(app)  # OAuth routes, state store, and app[keys.AUTHENTICATOR] for the MCP endpoints

    resources = catalog_resources(app[keys.DATABASE], settings)  # one catalog provider for both surfaces
    app[keys.MCP_SERVERS] = _mcp_servers(app, resources)
    app.cleanup_ctx.append(_catalog_watch_ctx(resources))
    for prefix, server in app[keys.MCP_SERVERS].items():
        add_mcp_routes(app, prefix, server)
    add_health_routes(app)
    add_record_routes(app)
    return app
