"""Thin aiohttp adapters. STUB: owned by the MCP helper."""

from aiohttp import web


def add_mcp_routes(app: web.Application, prefix: str, server: object) -> None:
    pass
