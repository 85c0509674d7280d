"""GET /records/{id}: the pages behind search/fetch urls (served by the real app on the demo DB)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app import keys
from app.mcp.tools import ToolContext
from app.settings import Settings
from app.tools.chatgpt import ChatGptTools
from app.web import create_app

OPEN = {"allow_unauth_methods": True, "allow_unauth_tools_call": True}


@pytest.fixture
def client_for(aiohttp_client: Callable[..., Any], demo_settings: Callable[..., Settings]) -> Callable[..., Any]:
    async def make(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(demo_settings(**overrides)))

    return make


async def _customer_id(client: TestClient) -> str:
    tools: ChatGptTools = client.app[keys.CHATGPT_TOOLS]
    out = await tools.search({"query": "SELECT * FROM customers WHERE customer_id = 1"}, ToolContext())
    return out["results"][1]["id"]


async def test_record_page_html(client_for: Callable[..., Any]) -> None:
    client = await client_for(**OPEN)
    record_id = await _customer_id(client)
    response = await client.get(f"/records/{record_id}")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert "customer_id=1" in page and "<th>email</th>" in page and "<table class=record>" in page
    assert record_id in page and "source table" in page
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    # the same page under the ChatGPT prefix
    assert (await client.get(f"/chatgpt/records/{record_id}")).status == 200


async def test_record_page_json_matches_fetch(client_for: Callable[..., Any]) -> None:
    client = await client_for(**OPEN)
    tools: ChatGptTools = client.app[keys.CHATGPT_TOOLS]
    record_id = await _customer_id(client)
    response = await client.get(f"/chatgpt/records/{record_id}", headers={"Accept": "application/json"})
    assert response.status == 200 and response.content_type == "application/json"
    body = await response.json()
    assert list(body) == ["id", "title", "text", "url", "metadata"]
    fetched = await tools.fetch({"id": record_id}, ToolContext(base_url=str(client.make_url("")).rstrip("/")))
    assert body == fetched
    assert body["url"].endswith(f"/chatgpt/records/{record_id}")
    plain = await (await client.get(f"/records/{record_id}", headers={"Accept": "application/json"})).json()
    assert plain["url"] == body["url"].replace("/chatgpt/records/", "/records/")  # each page names itself
    assert (await client.get(f"/records/{record_id}?format=json")).content_type == "application/json"


async def test_record_page_escapes_html(client_for: Callable[..., Any], writable_demo_db: Path) -> None:
    with sqlite3.connect(writable_demo_db) as conn:
        conn.execute(
            "UPDATE customers SET first_name = '<script>alert(1)</script>', last_name = 'O''Brien & \"Co\"'"
            " WHERE customer_id = 1"
        )
    client = await client_for(sqlite_path=str(writable_demo_db), **OPEN)
    page = await (await client.get(f"/records/{await _customer_id(client)}")).text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "O&#x27;Brien &amp; &quot;Co&quot;" in page


async def test_record_page_unknown_and_malformed_ids(client_for: Callable[..., Any]) -> None:
    client = await client_for(**OPEN)
    missing = await client.get("/records/row:customers:999999")
    assert missing.status == 404 and "No row of" in await missing.text()
    malformed = await client.get("/records/not-an-id", headers={"Accept": "application/json"})
    assert malformed.status == 400 and "is not a valid id" in (await malformed.json())["error"]
    expired = await client.get("/records/query:~0123456789abcdef0123")
    assert expired.status == 404


async def test_record_page_needs_the_mcp_bearer_token(client_for: Callable[..., Any]) -> None:
    client = await client_for()  # auth on (the default)
    response = await client.get("/records/table:customers")
    assert response.status == 401
    assert "Bearer" in response.headers.get("WWW-Authenticate", "")
    assert "customer_id" not in await response.text()


async def test_record_page_accepts_a_chatgpt_token(
    client_for: Callable[..., Any], mint_access_token: Callable[..., str]
) -> None:
    client = await client_for()  # auth on
    base = str(client.make_url("")).rstrip("/")
    token = mint_access_token(
        client.app[keys.SETTINGS],
        base,
        username="rita",
        role="reader",
        scope="mcp:read",
        resource=base + "/chatgpt/mcp",
    )
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    response = await client.get("/chatgpt/records/table:customers", headers=headers)
    assert response.status == 200  # a reader may open records: they are reads
    assert (await response.json())["url"] == f"{base}/chatgpt/records/table:customers"
    # The token's audience is the ChatGPT endpoint, so the Claude-side page refuses it.
    assert (await client.get("/records/table:customers", headers=headers)).status == 401
    assert (
        await client.get("/chatgpt/records/table:customers", headers={"Authorization": "Bearer not-a-token"})
    ).status == 401
