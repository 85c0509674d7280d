"""The operator console in a real browser (issue 14's "Done when"): Debian's chromium through Playwright.

A connector signs in through the real OAuth flow (the official SDK's OAuthClientProvider, dynamic
registration, our sign-in and consent pages) and calls a tool; an admin signs in at /admin, sees that
client, revokes it, and the client's next MCP call with its access token gets 401. A non-admin gets 403 on
/admin, and a console form whose CSRF token was taken out is refused without changing anything."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.auth.store import AuthStore, store_path
from app.settings import Settings
from tests.fixtures.app import LiveServer
from tests.fixtures.auth import DEFAULT_PASSWORD, Browser, MemoryTokenStorage, create_user, sdk_oauth
from tests.test_record_pages_browser import BROWSER_ARGS, CHROMIUM, _need_browser

pytestmark = pytest.mark.integration

CONNECTOR = "Quarterly Report Connector"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


async def _sign_in(page: Any, url: str, username: str) -> Any:
    """Open /admin, fill the sign-in form, and return the response to the form's POST."""
    await page.goto(url)
    await page.fill("#username", username)
    await page.fill("#password", DEFAULT_PASSWORD)
    async with page.expect_response(lambda r: r.url.endswith("/admin/signin")) as answer:
        await page.click("button[type=submit]")
    await page.wait_for_load_state()
    return await answer.value


async def _mcp_status(server: LiveServer, access_token: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            server.url + "/mcp",
            json=INITIALIZE,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": "2025-11-25",
            },
        )
    return response.status_code


async def test_an_admin_revokes_a_connector_and_its_next_call_gets_401(
    start_live_server: Callable[..., Awaitable[LiveServer]], auth_settings: Callable[..., Settings]
) -> None:
    playwright_api = _need_browser()
    settings = auth_settings()
    create_user(settings, "ada", role="admin")
    create_user(settings, "rita", role="reader")
    server = await start_live_server(settings, signed_in_as=None)

    # A connector signs rita in through the OAuth flow and uses a tool.
    storage = MemoryTokenStorage()
    provider = sdk_oauth(server.url + "/mcp", Browser("rita"), storage=storage, client_name=CONNECTOR)
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("list_tables", {})
        assert not result.is_error
    access_token = storage.tokens.access_token
    assert await _mcp_status(server, access_token) == 200

    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            # A non-admin gets 403 on /admin.
            reader = await (await browser.new_context()).new_page()
            refused = await _sign_in(reader, server.url + "/admin", "rita")
            assert refused.status == 403
            assert "No access" in (await reader.text_content("body") or "")
            assert not [c for c in await reader.context.cookies() if c["name"] == "mssql_mcp_admin"]

            # The admin signs in and sees the connector with its redirect host and last use.
            page = await (await browser.new_context(viewport={"width": 390, "height": 844})).new_page()  # a phone
            signed_in = await _sign_in(page, server.url + "/admin", "ada")
            assert signed_in.status == 303 and page.url == server.url + "/admin"
            assert await page.text_content("#db-status") == "ok"
            await page.click("a[href='/admin/clients']")
            await page.wait_for_load_state()
            row = page.locator("#clients tbody tr", has_text=CONNECTOR)
            assert await row.count() == 1
            row_text = await row.text_content() or ""
            assert "127.0.0.1" in row_text and "never" not in row_text  # redirect host; used for a sign-in

            # A form without its CSRF token is refused and changes nothing.
            await row.locator("input[name=csrf_token]").evaluate("input => input.remove()")
            async with page.expect_response(lambda r: r.url.endswith("/admin/clients/revoke")) as answer:
                await row.locator("button", has_text="Revoke").click()
            await page.wait_for_load_state()
            assert (await answer.value).status == 403
            assert "could not be verified" in (await page.text_content("body") or "")
            assert await _mcp_status(server, access_token) == 200

            # With the page's own form: revoked, and the connector's next call gets 401.
            await page.goto(server.url + "/admin/clients")
            row = page.locator("#clients tbody tr", has_text=CONNECTOR)
            await row.locator("button", has_text="Revoke").click()
            await page.wait_for_load_state()
            assert page.url == server.url + "/admin/clients"
            assert "Client revoked: 1 grant ended." in (await page.text_content(".notice") or "")
            assert await page.locator("#clients tbody tr", has_text=CONNECTOR).count() == 0
            assert await _mcp_status(server, access_token) == 401
        finally:
            await browser.close()
    with AuthStore(store_path(settings.data_dir)) as store:
        assert not [g for g in store.active_grants() if g.username == "rita"]
