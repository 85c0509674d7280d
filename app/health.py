"""/health and /chatgpt/health. STUB: owned by the MCP/transport helper."""

from aiohttp import web


def add_health_routes(app: web.Application) -> None:
    pass
