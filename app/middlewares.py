"""Cross-cutting HTTP behaviour. STUB: owned by the MCP/transport helper."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)
