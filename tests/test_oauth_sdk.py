"""End to end with the official `mcp` SDK client: OAuthClientProvider discovers, registers (or uses a Client
ID Metadata Document), runs PKCE through our sign-in and consent pages, exchanges and refreshes tokens,
and calls tools on the running app with the unauthenticated switches off."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app import keys
from app.settings import Settings
from tests.fixtures.auth import (
    Browser,
    DocumentServer,
    MemoryTokenStorage,
    create_user,
    mint_token,
    sdk_oauth,
)

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}


@pytest.fixture
async def secured_server(
    make_settings: Callable[..., Settings], start_live_server: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def start(**overrides: Any) -> Any:
        settings = make_settings(**overrides)
        create_user(settings, "alice", role="writer")
        create_user(settings, "rita", role="reader")
        return await start_live_server(settings, signed_in_as=None)

    return start


async def call_tool(url: str, http: httpx2.AsyncClient, tool: str, arguments: dict[str, Any]) -> Any:
    async with Client(streamable_http_client(url, http_client=http)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert tool in names
        return await client.call_tool(tool, arguments)


async def test_sdk_client_signs_in_with_dynamic_registration_and_calls_tools(
    secured_server: Callable[..., Awaitable[Any]],
) -> None:
    server = await secured_server()
    browser, storage = Browser("rita"), MemoryTokenStorage()
    provider = sdk_oauth(server.url + "/mcp", browser, storage=storage)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        result = await call_tool(server.url + "/mcp", http, "list_tables", {})
        assert not result.is_error and result.structured_content["count"] > 0
        # A reader can read, and writes are refused by role (not by a second sign-in).
        result = await call_tool(server.url + "/mcp", http, "execute_sql", {"query": "SELECT 1 AS one"})
        assert not result.is_error
    assert len(browser.pages) == 2  # one login page, one consent page: signed in exactly once
    assert storage.client_info.client_secret and storage.tokens.refresh_token
    assert storage.tokens.scope == "mcp:read"
    metrics = server.app[keys.METRICS]
    assert metrics.oauth_registrations.labels("ok")._value.get() == 1
    assert metrics.oauth_tokens.labels("authorization_code")._value.get() == 1


async def test_sdk_client_on_the_chatgpt_endpoint(secured_server: Callable[..., Awaitable[Any]]) -> None:
    server = await secured_server()
    browser = Browser("alice")
    provider = sdk_oauth(
        server.url + "/chatgpt/mcp", browser, redirect_uri="https://chatgpt.com/connector_platform_oauth_redirect"
    )
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        result = await call_tool(server.url + "/chatgpt/mcp", http, "search", {"query": "list tables"})
        assert not result.is_error
    # The authorization response came from the ChatGPT issuer, back to ChatGPT's callback.
    assert browser.last_redirect.startswith("https://chatgpt.com/connector_platform_oauth_redirect?")
    assert f"iss={server.url.replace(':', '%3A').replace('/', '%2F')}%2Fchatgpt" in browser.last_redirect


async def test_sdk_client_with_a_client_id_metadata_document(
    secured_server: Callable[..., Awaitable[Any]], cimd_server: DocumentServer
) -> None:
    server = await secured_server(cimd_allow_private=True)
    redirect_uri = "http://127.0.0.1:33418/callback"
    url = cimd_server.url + "/mcp-client.json"
    cimd_server.serve_json(
        "/mcp-client.json",
        {
            "client_id": url,
            "client_name": "CIMD SDK client",
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
    )
    browser = Browser("alice")
    provider = sdk_oauth(server.url + "/mcp", browser, redirect_uri=redirect_uri, client_metadata_url=url)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        result = await call_tool(server.url + "/mcp", http, "list_tables", {})
        assert not result.is_error
    assert "CIMD SDK client" in browser.pages[0]
    assert cimd_server.hits == ["/mcp-client.json"]
    assert server.app[keys.METRICS].oauth_registrations.labels("ok")._value.get() == 0  # no DCR


async def test_sdk_refresh_rotation_and_reuse_detection(secured_server: Callable[..., Awaitable[Any]]) -> None:
    server = await secured_server(refresh_reuse_leeway_seconds=0)  # the replay below comes at once
    browser, storage = Browser("alice"), MemoryTokenStorage()
    provider = sdk_oauth(server.url + "/mcp", browser, storage=storage)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        await call_tool(server.url + "/mcp", http, "list_tables", {})
        first = storage.tokens
        provider.context.token_expiry_time = 1.0  # pretend the access token ran out
        result = await call_tool(server.url + "/mcp", http, "list_tables", {})
        assert not result.is_error
    second = storage.tokens
    assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
    assert len(browser.pages) == 2  # refreshed silently, no second sign-in
    assert server.app[keys.METRICS].oauth_tokens.labels("refresh_token")._value.get() == 1
    # Someone replays the spent refresh token: the whole sign-in is revoked.
    client = storage.client_info
    async with httpx2.AsyncClient(timeout=30) as raw:
        resp = await raw.post(
            server.url + "/token",
            data={"grant_type": "refresh_token", "refresh_token": first.refresh_token},
            auth=(client.client_id, client.client_secret),
        )
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
        resp = await raw.post(
            server.url + "/mcp",
            json=INITIALIZE,
            headers={**MCP_HEADERS, "Authorization": f"Bearer {second.access_token}"},
        )
        assert resp.status_code == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_mcp_endpoints_refuse_bad_tokens(secured_server: Callable[..., Awaitable[Any]]) -> None:
    server = await secured_server()
    settings, base = server.app[keys.SETTINGS], server.url
    good = mint_token(settings, base, username="alice")
    bad = {
        "expired": mint_token(settings, base, username="alice", ttl=-120),
        "wrong audience": mint_token(settings, base, username="alice", resource=base + "/chatgpt/mcp"),
        "forged": good[:-8] + ("A" * 8 if not good.endswith("A" * 8) else "B" * 8),
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        resp = await http.post(
            base + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {good}"}
        )
        assert resp.status_code == 200
        resp = await http.post(base + "/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert resp.status_code == 401
        assert (
            f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in resp.headers["WWW-Authenticate"]
        )
        for name, token in bad.items():
            resp = await http.post(
                base + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            )
            assert resp.status_code == 401, name
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], name
        resp = await http.post(base + "/mcp?access_token=" + good, json=INITIALIZE, headers=MCP_HEADERS)
        assert resp.status_code == 401
        # Revoked through RFC 7009 by the client it was issued to: refused from then on.
        reg = (
            await http.post(
                base + "/register",
                json={"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"},
            )
        ).json()
        token = mint_token(settings, base, username="alice", client_id=reg["client_id"])
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        assert (await http.post(base + "/mcp", json=INITIALIZE, headers=headers)).status_code == 200
        resp = await http.post(base + "/revoke", data={"token": token, "client_id": reg["client_id"]})
        assert resp.status_code == 200
        assert (await http.post(base + "/mcp", json=INITIALIZE, headers=headers)).status_code == 401


async def test_seed_checks_on_chatgpt_sse(secured_server: Callable[..., Awaitable[Any]]) -> None:
    server = await secured_server()
    async with httpx2.AsyncClient(timeout=10) as http:
        resp = await http.options(
            server.url + "/chatgpt/sse",
            headers={
                "Origin": "https://chatgpt.com",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert resp.status_code < 300
        resp = await http.head(server.url + "/chatgpt/sse")
        assert resp.status_code in (200, 204, 401)
        resp = await http.get(server.url + "/chatgpt/sse", headers={"Accept": "text/event-stream"})
        assert resp.status_code == 401
        challenge = resp.headers["WWW-Authenticate"]
        assert f'resource_metadata="{server.url}/.well-known/oauth-protected-resource/chatgpt/sse"' in challenge
        prm = (await http.get(server.url + "/.well-known/oauth-protected-resource/chatgpt/sse")).json()
        assert prm["resource"] == server.url + "/chatgpt/sse"
        assert prm["authorization_servers"] == [server.url + "/chatgpt"]
        doc = (await http.get(server.url + "/chatgpt/.well-known/oauth-authorization-server")).json()
        assert doc["issuer"] == server.url + "/chatgpt"
        reg = await http.post(
            server.url + "/chatgpt/register",
            json={"redirect_uris": ["https://chatgpt.com/connector_platform_oauth_redirect"], "client_name": "ChatGPT"},
        )
        assert reg.status_code == 201 and reg.json()["client_id"] and reg.json()["client_secret"]


async def test_restart_keeps_clients_users_keys_and_refresh_tokens(
    make_settings: Callable[..., Settings], aiohttp_server: Any
) -> None:
    from app.web import create_app

    settings = make_settings()
    create_user(settings, "alice", role="writer")
    first = await aiohttp_server(create_app(settings), host="127.0.0.1")
    port = first.port
    url = f"http://127.0.0.1:{port}/mcp"
    browser, storage = Browser("alice"), MemoryTokenStorage()
    provider = sdk_oauth(url, browser, storage=storage)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        await call_tool(url, http, "list_tables", {})
        await first.close()
        # A new process on the same DATA_DIR and address: nothing the client holds is lost.
        second = await aiohttp_server(create_app(settings), host="127.0.0.1", port=port)
        result = await call_tool(url, http, "list_tables", {})  # same access token: the signing key survived
        assert not result.is_error
        before = storage.tokens
        provider.context.token_expiry_time = 1.0
        result = await call_tool(url, http, "list_tables", {})  # refresh token and client survived
        assert not result.is_error and storage.tokens.refresh_token != before.refresh_token
    assert len(browser.pages) == 2  # never asked to sign in again
    assert second.app[keys.METRICS].oauth_tokens.labels("refresh_token")._value.get() == 1
