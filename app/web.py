"""create_app(settings): the one place the service is assembled (used by __main__ and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Literal

from aiohttp import web

from . import __version__, keys
from .admin import add_admin_routes
from .auth.setup import setup_auth
from .core import SURFACES, Toolset
from .db.database import Database
from .health import add_health_routes
from .mcp.resources import Prompt, ResourceProvider
from .mcp.server import McpServer
from .mcp.tools import Tool
from .mcp.transports import add_mcp_routes
from .middlewares import error_middleware
from .obs import setup_observability
from .obs.metrics import Metrics
from .settings import Settings
from .state.redisstate import RedisState
from .tools import (
    ChatGptTools,
    DatabaseResources,
    add_record_routes,
    build_instructions,
    catalog_prompts,
    catalog_resources,
    chatgpt_tools,
    claude_tools,
    watch_catalog,
)


class _Default(enum.Enum):
    CATALOG = "catalog"


# create_app's default for `resources` and `prompts`: the database catalog's (None means "offer none").
CATALOG: Literal[_Default.CATALOG] = _Default.CATALOG


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    database = app[keys.DATABASE]
    await database.start()  # never fails because the database is down: /health reports degraded
    yield
    await database.close()


def _database_toolsets(app: web.Application) -> tuple[dict[Toolset, list[Tool]], dict[Toolset, Toolset]]:
    """The service's own tool sets, and for each the tool set its prompts name the steps in."""
    settings, database, metrics = app[keys.SETTINGS], app[keys.DATABASE], app[keys.METRICS]
    # One ChatGPT tool set per app: its fetch cache serves both MCP and the record pages.
    # With REDIS_URL the fetch cache is shared: search on one node, fetch of its ids on another.
    app[keys.CHATGPT_TOOLS] = chatgpt = ChatGptTools(database, settings, metrics, redis=app.get(keys.REDIS))
    toolsets: dict[Toolset, list[Tool]] = {
        "claude": claude_tools(database, settings),
        "chatgpt": chatgpt_tools(chatgpt),
    }
    # Prompts name the steps in the surface's own tools; ChatGPT developer mode may get the SQL tools too.
    steps: dict[Toolset, Toolset] = {"claude": "claude", "chatgpt": "chatgpt"}
    if settings.chatgpt_include_claude_tools:
        toolsets["chatgpt"] = toolsets["chatgpt"] + toolsets["claude"]
        steps["chatgpt"] = "claude"
    return toolsets, steps


def _mcp_servers(
    app: web.Application,
    toolsets: Mapping[Toolset, Sequence[Tool]],
    resources: ResourceProvider | None,
    prompts_for: Callable[[Toolset], Sequence[Prompt]],
) -> dict[str, McpServer]:
    """One MCP server per surface (app.core.SURFACES), keyed by its URL prefix."""
    settings, metrics = app[keys.SETTINGS], app[keys.METRICS]
    return {
        surface.prefix: McpServer(
            name=surface.server_name,
            version=__version__,
            tools=list(toolsets.get(surface.toolset, ())),
            metrics=metrics,
            instructions=build_instructions(settings, surface.toolset),
            resources=resources,
            prompts=list(prompts_for(surface.toolset)),
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


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    redis = app[keys.REDIS]
    await redis.start()
    yield
    await redis.close()


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    toolsets: Mapping[Toolset, Sequence[Tool]] | None = None,
    resources: ResourceProvider | Literal[_Default.CATALOG] | None = CATALOG,
    prompts: Sequence[Prompt] | Literal[_Default.CATALOG] = CATALOG,
) -> web.Application:
    """The whole service. A test may serve tool sets of its own on every surface: `toolsets` maps a
    surface's tool set ("claude", "chatgpt") to its tools (a tool set left out serves none); `resources`
    and `prompts` replace the catalog's (`resources=None` / `prompts=()`: offer none)."""
    app = web.Application(client_max_size=settings.max_request_bytes)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    # Outermost: request id, access log and HTTP metrics see every response, error pages included.
    setup_observability(app)
    app.middlewares.append(error_middleware)

    if settings.redis_url:
        # First in, last out: everything that shares state through Redis can use it until it stops.
        app[keys.REDIS] = RedisState(settings.redis_url)
        app.cleanup_ctx.append(_redis_ctx)
    app[keys.DATABASE] = Database(settings, app[keys.METRICS])
    app.cleanup_ctx.append(_database_ctx)

    setup_auth(app)  # OAuth routes, state store, and app[keys.AUTHENTICATOR] for the MCP endpoints

    # The ChatGPT tool set is built even when a test brings its own tools: the record pages read it.
    served, steps = _database_toolsets(app)
    if toolsets is not None:
        served, steps = {toolset: list(tools) for toolset, tools in toolsets.items()}, {}
    # Every surface offers the same resources and prompts (ChatGPT ignores them today; MCP Inspector and
    # other clients pointed at /chatgpt/mcp can use them), from one catalog provider.
    catalog = catalog_resources(app[keys.DATABASE], settings)

    def prompts_for(toolset: Toolset) -> Sequence[Prompt]:
        if prompts is CATALOG:  # worded for the tools the surface's steps name
            return catalog_prompts(app[keys.DATABASE], settings, catalog, steps.get(toolset, toolset))
        return prompts

    app[keys.MCP_SERVERS] = _mcp_servers(app, served, catalog if resources is CATALOG else resources, prompts_for)
    if resources is CATALOG:  # the catalog is watched only when it is served
        app.cleanup_ctx.append(_catalog_watch_ctx(catalog))
    app[keys.MCP_ENDPOINTS] = {
        prefix: add_mcp_routes(app, prefix, server) for prefix, server in app[keys.MCP_SERVERS].items()
    }
    add_health_routes(app)
    add_record_routes(app)
    add_admin_routes(app)  # the operator console at /admin (app.admin)
    return app
