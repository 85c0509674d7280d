"""The two tool sets (Claude: SQL tools; ChatGPT: search/fetch), catalog resources and prompts, server
instructions, record pages.

web.create_app calls these functions; everything else in this package is internal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..mcp.resources import Prompt
from ..mcp.tools import Tool
from .chatgpt import ChatGptTools, build_chatgpt_tools
from .claude import build_claude_tools
from .instructions import build_instructions as _build_instructions
from .prompts import DatabasePrompts
from .records import add_record_routes as _add_record_routes
from .resources import CATALOG_WATCH_SECONDS, DatabaseResources
from .resources import watch_catalog as _watch_catalog

if TYPE_CHECKING:
    from ..db.database import Database
    from ..settings import Settings

__all__ = [
    "ChatGptTools",
    "DatabaseResources",
    "add_record_routes",
    "build_instructions",
    "catalog_prompts",
    "catalog_resources",
    "chatgpt_tools",
    "claude_tools",
    "watch_catalog",
]


def claude_tools(database: Database, settings: Settings) -> list[Tool]:
    """list_tables, describe_table, execute_sql, get_table_sample."""
    return build_claude_tools(database, settings)


def chatgpt_tools(tool_set: ChatGptTools) -> list[Tool]:
    """search and fetch (OpenAI's deep-research contract) over one ChatGptTools, which also serves the
    record pages (create_app builds one per app and hands it to both)."""
    return build_chatgpt_tools(tool_set)


def catalog_resources(database: Database, settings: Settings) -> DatabaseResources:
    """The catalog as MCP resources: an overview and one description per table (app.tools.resources)."""
    return DatabaseResources(database, settings)


def catalog_prompts(database: Database, settings: Settings, resources: DatabaseResources, toolset: str) -> list[Prompt]:
    """explore_database, write_query, explain_table, review_query (app.tools.prompts), worded for the tools
    of toolset "claude" (the SQL tools) or "chatgpt" (search/fetch)."""
    return DatabasePrompts(database, settings, resources, toolset).prompts()


async def watch_catalog(
    resources: DatabaseResources, servers: Sequence[Any], interval_seconds: float = CATALOG_WATCH_SECONDS
) -> None:
    """Until cancelled: notifications/resources/list_changed when tables or views come or go, and
    notifications/resources/updated when a subscribed resource's content changes, on every server."""
    await _watch_catalog(resources, servers, interval_seconds)


def build_instructions(settings: Settings, toolset: str) -> str:
    """`initialize` instructions for toolset "claude" or "chatgpt"; the first 512 characters stand alone."""
    return _build_instructions(settings, toolset)


def add_record_routes(app: web.Application) -> None:
    """GET /chatgpt/records/{id} and /records/{id}: the pages behind search/fetch urls (bearer-protected)."""
    _add_record_routes(app)
