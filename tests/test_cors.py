"""app.cors: one CORS mechanism for the service. Public routes (discovery, /token, ...) answer any origin;
the MCP endpoints answer only allowed origins, with credentials; every answer carries the headers, errors
and event streams included; a path has one policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.cors import PUBLIC, allow_cors, credentialed
from app.settings import load_settings
from app.web import create_app

GOOD, EVIL = "https://claude.ai", "https://evil.example.com"


def _small_app() -> web.Application:
    app = web.Application()

    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPUnauthorized(text="no")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # headers leave before any body: the hook must run at prepare
        await response.write(b": hi\n\n")
        return response

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    app.router.add_get("/public/{tail:.*}", refuse)
    allow_cors(app, "/public/{tail:.*}", PUBLIC, methods="GET, OPTIONS")
    mcp = credentialed(lambda request: request.headers.get("Origin") != EVIL)
    app.router.add_get("/stream", stream)
    allow_cors(app, "/stream", mcp, methods="GET, OPTIONS")
    app.router.add_get("/plain", plain)
    return app


async def test_public_policy_on_errors_and_preflight(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_small_app())
    response = await client.get("/public/a/b")  # a {tail:.*} route: the policy follows the route, not the path
    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Expose-Headers"] == "WWW-Authenticate"
    preflight = await client.options("/public/x", headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Max-Age"] == "86400"


async def test_credentialed_policy_echoes_allowed_origins_only(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_small_app())
    response = await client.get("/stream", headers={"Origin": GOOD})
    assert response.status == 200 and await response.read() == b": hi\n\n"
    assert response.headers["Access-Control-Allow-Origin"] == GOOD
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Mcp-Session-Id" in response.headers["Access-Control-Expose-Headers"]
    assert response.headers["Vary"] == "Origin"
    for headers in ({"Origin": EVIL}, {}):  # a refused origin, and a call that is not from a browser
        other = await client.get("/stream", headers=headers)
        assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options("/stream", headers={"Origin": GOOD})
    assert preflight.status == 200 and preflight.headers["Allow"] == "GET, OPTIONS"
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"
    assert "Mcp-Session-Id" in preflight.headers["Access-Control-Allow-Headers"]
    refused = await client.options("/stream", headers={"Origin": EVIL})
    assert refused.status == 200 and refused.headers["Allow"] == "GET, OPTIONS"
    assert "Access-Control-Allow-Methods" not in refused.headers
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_routes_without_a_policy_get_no_cors(aiohttp_client: Any) -> None:
    client = await aiohttp_client(_small_app())
    response = await client.get("/plain", headers={"Origin": GOOD})
    assert response.status == 200 and "Access-Control-Allow-Origin" not in response.headers
    missing = await client.get("/nowhere", headers={"Origin": GOOD})
    assert missing.status == 404 and "Access-Control-Allow-Origin" not in missing.headers


def test_one_policy_per_path() -> None:
    app = _small_app()
    with pytest.raises(ValueError):
        allow_cors(app, "/stream", PUBLIC, methods="GET, OPTIONS")


async def test_service_uses_one_mechanism(aiohttp_client: Any, demo_db_path: Path, tmp_path: Path) -> None:
    """create_app: OAuth errors carry the public headers; the MCP 401 carries the credentialed ones."""
    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="sqlite",
        sqlite_path=str(demo_db_path),
        metrics_port=0,
        data_dir=str(tmp_path / "state"),
    )
    client = await aiohttp_client(create_app(settings))
    token = await client.post("/token", data={"grant_type": "authorization_code"}, headers={"Origin": EVIL})
    assert token.status in (400, 401) and token.headers["Access-Control-Allow-Origin"] == "*"
    preflight = await client.options("/chatgpt/register", headers={"Origin": EVIL})
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    mcp = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Origin": GOOD})
    assert mcp.status == 401 and mcp.headers["Access-Control-Allow-Origin"] == GOOD
    assert "WWW-Authenticate" in mcp.headers["Access-Control-Expose-Headers"]
    discovery = await client.get("/.well-known/oauth-protected-resource/mcp")
    assert discovery.status == 200 and discovery.headers["Access-Control-Allow-Origin"] == "*"
