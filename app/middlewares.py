"""Cross-cutting HTTP behaviour: every failure becomes a clean HTTP answer, never a traceback."""

from __future__ import annotations

import asyncio
import json

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from . import keys
from .obs import CLIENT_CLOSED

log = structlog.get_logger(__name__)

# Endpoints whose clients are programs: their errors are JSON (JSON-RPC shaped for MCP endpoints).
_MCP_SUFFIXES = ("/mcp", "/sse", "/messages")
_API_SUFFIXES = ("/health", "/metrics")
_API_PREFIXES = ("/.well-known/",)


def _is_mcp(path: str) -> bool:
    return path.endswith(_MCP_SUFFIXES)


def _is_api(path: str) -> bool:
    return _is_mcp(path) or path.endswith(_API_SUFFIXES) or path.startswith(_API_PREFIXES)


def _json_error(
    request: web.Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object]
    if _is_mcp(request.path):
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    else:
        body = {"error": message, "status": status}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def disconnected(request: web.Request) -> bool:
    """Whether the client's connection is gone (or going): nothing written to it arrives any more."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _limit(request: web.Request) -> int | None:
    settings = request.app.get(keys.SETTINGS)
    return settings.max_request_bytes if settings is not None else None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = _limit(request)
        shown = f": the limit is {limit} bytes" if limit else ""
        return _json_error(request, 413, f"Request body too large{shown}")
    except web.HTTPException as exc:
        # Responses built on purpose (auth's 401 with WWW-Authenticate and a body, redirects) pass
        # through; aiohttp's bare defaults ("404: Not Found") become JSON on API paths.
        if exc.status >= 400 and _is_api(request.path) and exc.content_type != "application/json":
            keep = {k: v for k, v in exc.headers.items() if k.lower() not in {"content-type", "content-length"}}
            return _json_error(request, exc.status, exc.reason, headers=keep)
        raise
    except ConnectionResetError:
        if disconnected(request):
            # The client went away before its request was read or answered: nobody is left to answer,
            # and it is not the server's failure (aiohttp would log it as one, with a traceback).
            return web.Response(status=CLIENT_CLOSED)
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        if _is_api(request.path):
            return _json_error(request, 500, "Internal server error")
        return web.Response(status=500, text="500 Internal Server Error", content_type="text/plain")
