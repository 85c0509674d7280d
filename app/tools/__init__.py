"""The two tool sets (Claude: SQL tools; ChatGPT: search/fetch), server instructions, record pages.

web.create_app calls these four functions; everything else in this package is internal.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..mcp.tools import Tool
from .chatgpt import build_chatgpt_tools
from .claude import build_claude_tools
from .instructions import build_instructions as _build_instructions
from .records import add_record_routes as _add_record_routes

__all__ = ["add_record_routes", "build_instructions", "chatgpt_tools", "claude_tools"]


def claude_tools(database: Any, settings: Any) -> list[Tool]:
    """list_tables, describe_table, execute_sql, get_table_sample."""
    return build_claude_tools(database, settings)


def chatgpt_tools(database: Any, settings: Any, metrics: Any) -> list[Tool]:
    """search and fetch (OpenAI's deep-research contract)."""
    return build_chatgpt_tools(database, settings, metrics)


def build_instructions(settings: Any, toolset: str) -> str:
    """`initialize` instructions for toolset "claude" or "chatgpt"; the first 512 characters stand alone."""
    return _build_instructions(settings, toolset)


def add_record_routes(app: web.Application) -> None:
    """GET /chatgpt/records/{id} and /records/{id}: the pages behind search/fetch urls (bearer-protected)."""
    _add_record_routes(app)
