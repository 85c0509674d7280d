"""Citation links opened by a person (issue 13): a record url without a session leads to sign-in and back,
the row is a table whose foreign keys link to related records, and a user without access gets a clear page.

The browser test drives Debian's chromium through Playwright (make test installs both); the cookie checks
below it use aiohttp's client and run everywhere."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from app.auth.browser import CSRF_COOKIE, SESSION_COOKIE
from app.settings import Settings
from app.web import create_app
from tests.fixtures.app import LiveServer
from tests.fixtures.auth import DEFAULT_PASSWORD, create_user, hidden_fields

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _need_browser() -> Any:
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (make test installs it: APT_PACKAGES)")
    import playwright.async_api  # a declared test dependency: missing it is an error, not a skip

    return playwright.async_api


async def _sign_in(page: Any, username: str) -> None:
    await page.fill("#username", username)
    await page.fill("#password", DEFAULT_PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()


async def test_a_citation_link_signs_in_and_follows_related_records(
    start_live_server: Callable[..., Awaitable[LiveServer]], auth_settings: Callable[..., Settings]
) -> None:
    playwright_api = _need_browser()
    settings = auth_settings(records_roles=("writer",))
    create_user(settings, "rita", role="writer")
    create_user(settings, "reggie", role="reader")
    server = await start_live_server(settings, signed_in_as=None)
    record = f"{server.url}/chatgpt/records/row:orders:1"
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(record)
            assert "/chatgpt/records/signin" in page.url  # no session: the sign-in page, not a JSON 401
            assert await page.is_visible("#password")
            await _sign_in(page, "rita")
            assert page.url == record
            assert await page.text_content("#record-id") == "row:orders:1"
            assert await page.text_content("#source-table") == "orders"
            assert await page.is_visible("table.record")
            customer_link = page.locator("a.related[href*='row:customers:']").first
            target = await customer_link.get_attribute("href")
            await customer_link.click()
            await page.wait_for_load_state()
            assert page.url == target  # the session carries over: no second sign-in
            assert (await page.text_content("#record-id") or "").startswith("row:customers:")
            assert "email" in (await page.text_content("table.record") or "")

            # a reader, whose role may not open record pages here, gets a page that says so
            other = await (await browser.new_context()).new_page()
            await other.goto(record)
            await _sign_in(other, "reggie")
            body = await other.text_content("body") or ""
            assert "No access" in body and "reggie" in body and not body.lstrip().startswith("{")
            assert "customer_id" not in body
        finally:
            await browser.close()


@pytest.fixture
async def signed_client(aiohttp_client: Callable[..., Any], auth_settings: Callable[..., Settings]) -> TestClient:
    settings = auth_settings()
    create_user(settings, "rita", role="reader")
    return await aiohttp_client(create_app(settings))


async def _signin(
    client: TestClient, next_path: str, headers: dict[str, str] | None = None, password: str = DEFAULT_PASSWORD
) -> Any:
    page = await client.get(f"/chatgpt/records/signin?next={next_path}", headers=headers)
    fields = hidden_fields(await page.text())
    # sent explicitly: behind https the form's cookie is Secure, which this plain-http client would not send
    return await client.post(
        "/chatgpt/records/signin",
        allow_redirects=False,
        headers=headers,
        cookies={CSRF_COOKIE: fields["csrf_token"]},
        data={**fields, "next": next_path, "username": "rita", "password": password},
    )


async def test_browser_redirect_cookie_flags_and_api_clients(signed_client: TestClient) -> None:
    client = signed_client
    browser_accept = {"Accept": "text/html,application/xhtml+xml"}
    redirect = await client.get("/chatgpt/records/table:customers", headers=browser_accept, allow_redirects=False)
    assert redirect.status == 303
    location = urlsplit(redirect.headers["Location"])
    assert location.path == "/chatgpt/records/signin"
    assert parse_qs(location.query)["next"] == ["/chatgpt/records/table:customers"]
    api = await client.get("/chatgpt/records/table:customers", headers={"Accept": "application/json"})
    assert api.status == 401 and "Bearer" in api.headers["WWW-Authenticate"]  # API clients: still JSON/401

    wrong = await _signin(client, "/chatgpt/records/table:customers", password="nope")
    assert wrong.status == 401 and "Wrong username or password" in await wrong.text()
    done = await _signin(
        client, "/chatgpt/records/table:customers", headers={"X-Forwarded-Proto": "https"}
    )  # behind a TLS proxy (loopback is trusted)
    assert done.status == 303 and done.headers["Location"].endswith("/chatgpt/records/table:customers")
    cookie = done.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["secure"]
    assert 0 < int(cookie["max-age"]) <= 900
    page = await client.get(
        "/chatgpt/records/table:customers", headers=browser_accept, cookies={SESSION_COOKIE: cookie.value}
    )
    assert page.status == 200 and "customer_id" in await page.text()


async def test_signin_refuses_forged_forms_and_foreign_next(signed_client: TestClient) -> None:
    client = signed_client
    forged = await client.post(
        "/chatgpt/records/signin",
        allow_redirects=False,
        data={"csrf_token": "x" * 32, "username": "rita", "password": DEFAULT_PASSWORD},
    )
    assert forged.status == 403 and "could not be verified" in await forged.text()
    client.session.cookie_jar.clear()
    offsite = await _signin(client, "https://evil.example/x")
    assert offsite.status == 200 and "Signed in" in await offsite.text()  # signed in, but sent nowhere
    assert "evil.example" not in offsite.headers.get("Location", "")
    tampered = await client.get(
        "/chatgpt/records/table:customers",
        allow_redirects=False,
        headers={"Accept": "text/html"},
        cookies={SESSION_COOKIE: "v1:AAAA"},
    )
    assert tampered.status == 303  # an unreadable cookie is no session
