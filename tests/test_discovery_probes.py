"""The URLs ChatGPT, Claude and the MCP SDKs probe when a user enters an MCP server URL.

Replayed against the real app with sign-in on, for both MCP URLs: every probe must answer 200, a redirect
or a 401 that points at the protected resource metadata, never 404 or 405 (a 404 on a discovery URL makes
some connectors give up before they even show the sign-in page).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from app.settings import Settings
from app.web import create_app


def _probes(mcp_path: str) -> list[tuple[str, str]]:
    realm = mcp_path.removesuffix("/mcp")
    return [
        ("HEAD", mcp_path),
        ("GET", mcp_path),
        ("POST", mcp_path),
        # RFC 9728: path-inserted, then the root document; ChatGPT also tries the resource path without /mcp.
        ("GET", f"/.well-known/oauth-protected-resource{mcp_path}"),
        ("GET", f"/.well-known/oauth-protected-resource{realm}"),
        ("GET", "/.well-known/oauth-protected-resource"),
        ("GET", f"{mcp_path}/.well-known/oauth-protected-resource"),
        # RFC 8414 and OpenID discovery for the issuer, inserted and appended, and as some clients spell it.
        ("GET", f"/.well-known/oauth-authorization-server{realm}"),
        ("GET", f"/.well-known/openid-configuration{realm}"),
        ("GET", f"{realm}/.well-known/oauth-authorization-server"),
        ("GET", f"{realm}/.well-known/openid-configuration"),
        ("GET", f"/.well-known/oauth-authorization-server{mcp_path}"),
        ("GET", f"{mcp_path}/.well-known/openid-configuration"),
        # Discovery derived from the token endpoint's URL.
        ("GET", f"{realm}/token/.well-known/openid-configuration"),
        ("GET", f"{realm}/token/.well-known/oauth-authorization-server"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", f"{realm}/health"),
        ("HEAD", f"{realm}/sse"),
        ("OPTIONS", mcp_path),
    ]


@pytest.mark.parametrize("mcp_path", ["/mcp", "/chatgpt/mcp"])
async def test_no_discovery_probe_gets_404_or_405(
    aiohttp_client: Any, auth_settings: Callable[..., Settings], mcp_path: str
) -> None:
    client = await aiohttp_client(create_app(auth_settings()))
    seen: dict[str, int] = {}
    for method, path in _probes(mcp_path):
        body = (
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "probe", "version": "1"},
                },
            }
            if method == "POST"
            else None
        )
        resp = await client.request(
            method, path, json=body, allow_redirects=False, headers={"Accept": "application/json, text/event-stream"}
        )
        seen[f"{method} {path}"] = resp.status
        if resp.status == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            assert re.search(r'resource_metadata="[^"]+/\.well-known/oauth-protected-resource', challenge), (
                f"{method} {path}: 401 without a resource_metadata hint: {challenge!r}"
            )
        if resp.status in (301, 302, 303, 307, 308):
            follow = await client.get(resp.headers["Location"].removeprefix(str(client.make_url("")).rstrip("/")))
            assert follow.status == 200, f"{method} {path} -> {resp.headers['Location']}: {follow.status}"
    bad = {probe: status for probe, status in seen.items() if status in (404, 405) or status >= 500}
    assert not bad, bad


@pytest.mark.parametrize("mcp_path", ["/mcp", "/chatgpt/mcp"])
async def test_the_resource_path_without_mcp_leads_to_that_endpoints_document(
    aiohttp_client: Any, auth_settings: Callable[..., Settings], mcp_path: str
) -> None:
    client = await aiohttp_client(create_app(auth_settings()))
    realm = mcp_path.removesuffix("/mcp")
    doc = await (await client.get(f"/.well-known/oauth-protected-resource{realm}")).json()
    # /chatgpt leads to the /chatgpt/mcp document; the root document describes the whole server.
    assert doc["resource"] == str(client.make_url(mcp_path if realm else "")).rstrip("/")
    token_doc = await (await client.get(f"{realm}/token/.well-known/openid-configuration")).json()
    assert token_doc["token_endpoint"].endswith(f"{realm}/token")
    assert token_doc["issuer"] == doc["authorization_servers"][0]
