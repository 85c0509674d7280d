"""The ChatGPT fetch cache in Redis (issue 11): three `create_app` nodes (own DATA_DIRs, one PostgreSQL
state database, one real Redis) on the demo database. `search` on node A, `fetch` of its ids (a query
result id too, which lives only in the cache) on node B, the record page of that id on node C; Redis
stopped: a clear "search again in a moment", quickly; restarted: everything works again by itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app import keys
from app.auth.signing import SigningKeys
from app.auth.statekey import load_state_key, open_signing_keys
from app.core import Principal
from app.mcp.tools import ToolContext, ToolError
from app.settings import Settings
from app.state.backend import opened_backend
from app.tools.doccache import RedisDocumentCache
from app.web import create_app
from tests.fixtures.databases import free_port
from tests.fixtures.redis import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STATE_KEY = "chatgpt-nodes-share-this-state-key-0123456789"
QUERY = "SELECT * FROM customers WHERE customer_id <= 3 ORDER BY customer_id"  # whole rows: cached too
READER = Principal(subject="u-1", username="rita", role="reader", scopes=frozenset({"mcp:read"}), authenticated=True)


def chatgpt_token(settings: Settings, base_url: str) -> str:
    """A token as /chatgpt/token would issue it, for a reader, in the shared PostgreSQL state."""
    with opened_backend(settings) as store:
        user = store.get_user_by_name("rita") or store.add_user("rita", None, "reader")
        family = store.create_family(client_id="c", user_id=user.id, token_version=user.token_version, ttl=3600)
        signing = SigningKeys(open_signing_keys(store, load_state_key(settings)))
    now = int(time.time())
    claims = {
        "iss": base_url + "/chatgpt",
        "sub": user.id,
        "aud": base_url + "/chatgpt/mcp",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "client_id": "c",
        "scope": "mcp:read",
        "sid": family,
        "ver": user.token_version,
    }
    return signing.sign(claims)


@dataclass
class Nodes:
    urls: list[str]
    apps: list[web.Application]
    token: str

    def ctx(self) -> ToolContext:
        return ToolContext(principal=READER, base_url=self.urls[0])

    async def search(self, n: int, query: str) -> list[dict[str, Any]]:
        out = await self.apps[n][keys.CHATGPT_TOOLS].search({"query": query}, self.ctx())
        return out["results"]

    async def fetch(self, n: int, record_id: str) -> dict[str, Any]:
        return await self.apps[n][keys.CHATGPT_TOOLS].fetch({"id": record_id}, self.ctx())

    def hits(self, n: int) -> float:
        return self.apps[n][keys.METRICS].cache_hits._value.get()

    async def record_page(self, n: int, record_id: str) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.urls[n]}/chatgpt/records/{record_id}", headers=headers) as resp,
        ):
            return resp.status, await resp.json()


@pytest.fixture
async def nodes(
    state_url: str, redis_url: str, make_settings: Callable[..., Settings], aiohttp_server: Any, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Nodes]]]:
    async def make() -> Nodes:
        ports = [free_port() for _ in range(3)]
        public = f"http://127.0.0.1:{ports[0]}"
        apps, settings = [], None
        for n, port in enumerate(ports):
            settings = make_settings(
                data_dir=str(tmp_path / f"node{n}"),
                state_database_url=state_url,
                redis_url=redis_url,
                public_base_url=public,
                state_encryption_key=STATE_KEY,
            )
            app = create_app(settings)
            await aiohttp_server(app, port=port)
            apps.append(app)
        assert settings is not None
        return Nodes([f"http://127.0.0.1:{p}" for p in ports], apps, chatgpt_token(settings, public))

    yield make


async def test_search_on_one_node_fetch_on_another_record_page_on_a_third(
    nodes: Callable[[], Awaitable[Nodes]],
) -> None:
    cluster = await nodes()
    assert all(isinstance(app[keys.CHATGPT_TOOLS].documents, RedisDocumentCache) for app in cluster.apps)
    results = await cluster.search(0, QUERY)
    query_id = results[0]["id"]
    assert query_id.startswith("query:")
    row_ids = [r["id"] for r in results[1:] if r["id"].startswith("row:")]
    assert row_ids, results

    before = cluster.hits(1)
    fetched = await cluster.fetch(1, query_id)  # only in the cache: node 1 never ran it
    assert fetched["metadata"]["row_count"] == 3
    for row_id in row_ids:
        assert (await cluster.fetch(1, row_id))["id"] == row_id
    assert cluster.hits(1) - before == 1 + len(row_ids)  # every one of them from the shared cache

    status, page = await cluster.record_page(2, query_id)
    assert status == 200, page
    assert page["id"] == query_id and page["text"] == fetched["text"]
    assert page["url"] == f"{cluster.urls[0]}/chatgpt/records/{query_id}"

    # The memory caches stay empty: the nodes share Redis, not copies.
    assert all(len(app[keys.CHATGPT_TOOLS].cache) == 0 for app in cluster.apps)


async def test_redis_stopped_a_clear_error_then_it_works_again(
    nodes: Callable[[], Awaitable[Nodes]], redis_server: RedisServer
) -> None:
    cluster = await nodes()
    query_id = (await cluster.search(0, QUERY))[0]["id"]
    table_id = next(r["id"] for r in await cluster.search(0, "list tables") if r["id"].startswith("table:"))

    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match="search again in a moment"):
            await cluster.fetch(1, query_id)
        with pytest.raises(ToolError, match="search again in a moment"):
            await cluster.search(2, QUERY)  # its query id could not be fetched: say so now
        status, page = await cluster.record_page(2, query_id)
        assert status == 503 and "search again in a moment" in page["error"], page
        # Tables and rows are re-read from the database: they keep working without the cache.
        assert (await cluster.fetch(1, table_id))["id"] == table_id
        assert time.monotonic() - started < 10  # no hang
    finally:
        redis_server.start()

    async def up() -> bool:
        return all(app[keys.REDIS].available for app in cluster.apps)

    deadline = time.monotonic() + 15
    while not await up():
        assert time.monotonic() < deadline, "Redis not back in time"
        await asyncio.sleep(0.05)
    query_id = (await cluster.search(2, QUERY))[0]["id"]
    assert (await cluster.fetch(0, query_id))["id"] == query_id
    status, _ = await cluster.record_page(1, query_id)
    assert status == 200
