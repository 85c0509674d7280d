"""The two tool sets. STUB: owned by the tools helper."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def claude_tools(database: Any, settings: Any) -> list:
    return []


def chatgpt_tools(database: Any, settings: Any, metrics: Any) -> list:
    return []


def build_instructions(settings: Any, toolset: str) -> str:
    return ""


def add_record_routes(app: web.Application) -> None:
    pass
