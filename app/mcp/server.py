"""STUB: owned by the MCP helper."""

from __future__ import annotations

from typing import Any

from .tools import Tool


class McpServer:
    def __init__(self, *, name: str, version: str, instructions: str, tools: list[Tool],
                 metrics: Any = None) -> None:
        self.name, self.version, self.instructions, self.tools = name, version, instructions, tools
