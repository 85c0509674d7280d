"""Issue 11's acceptance: three node processes on one PostgreSQL and one Redis, behind a proxy that sends
every request to the next node (tests/fixtures/scaleout.py). Each test is one bullet of the first
"Done when" line; the last test is the second line (Redis stopped and restarted mid-run).

Which node served what is read from the proxy's log, so "on another node" is asserted, not assumed.
Clients are real: the official `mcp` SDK (streamable HTTP and legacy SSE, its OAuth client driving our
sign-in pages through `Browser`), and raw aiohttp where a test needs status codes and timings."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import AnyUrl

from app.auth.cli import users_main
from tests.fixtures.auth import (
    DEFAULT_PASSWORD,
    LOOPBACK_CB,
    Browser,
    MemoryTokenStorage,
    basic,
    create_user,
    pkce,
    redirect_params,
)
from tests.fixtures.scaleout import Cluster, Served

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODES = {0, 1, 2}
CLAUDE_CALLS: dict[str, dict[str, Any]] = {
    "list_tables": {},
    "describe_table": {"table_name": "customers"},
    "execute_sql": {"query": "SELECT COUNT(*) AS n FROM orders"},
    "get_table_sample": {"table_name": "products", "limit": 3},
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}
CHATGPT_CB = "https://chatgpt.com/connector_platform_oauth_redirect"
# "Returns within ~2 s" while Redis is down: its command limit is 1 s, plus a loaded 2-core machine.
DOWN_REPLY_SECONDS = 2.5


# -- signing in ---------------------------------------------------------------------------------------


@dataclass
class SignIn:
    provider: Any
    browser: Browser
    storage: MemoryTokenStorage


def sdk_sign_in(cluster: Cluster, username: str, endpoint: str = "/mcp", redirect_uri: str = LOOPBACK_CB) -> SignIn:
    """The SDK's OAuthClientProvider for `endpoint` behind the proxy; `Browser` plays the person.

    Like a careful client (RFC 9207), the callback checks the authorization response's `iss` against the
    authorization server's metadata before the SDK redeems the code; that request also means the token
    exchange cannot land on the node that showed the authorize page (strict round robin over three)."""
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    browser, storage = Browser(username), MemoryTokenStorage()

    async def redirect_handler(url: str) -> None:
        await browser.authorize(url)

    async def callback_handler() -> AuthorizationCodeResult:
        assert browser.last_redirect is not None
        params = redirect_params(browser.last_redirect)
        realm = "/chatgpt" if endpoint.startswith("/chatgpt/") else ""
        metadata_url = cluster.url + "/.well-known/oauth-authorization-server" + realm
        async with aiohttp.ClientSession() as http, http.get(metadata_url) as resp:
            assert resp.status == 200, await resp.text()
            assert params.get("iss") == (await resp.json())["issuer"]
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl(redirect_uri)],
        client_name="scale-out SDK client",
        grant_types=["authorization_code", "refresh_token"],
    )
    provider = OAuthClientProvider(cluster.url + endpoint, metadata, storage, redirect_handler, callback_handler)
    return SignIn(provider, browser, storage)


async def raw_sign_in(http: aiohttp.ClientSession, cluster: Cluster, username: str) -> tuple[dict[str, Any], Any]:
    """Registration, sign-in and code exchange with plain HTTP: (the client, the token response)."""
    async with http.post(
        cluster.url + "/register",
        json={
            "redirect_uris": [LOOPBACK_CB],
            "client_name": "scale-out raw client",
            "grant_types": ["authorization_code", "refresh_token"],
        },
    ) as resp:
        assert resp.status == 201, await resp.text()
        client = await resp.json()
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": LOOPBACK_CB,
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "mcp:read mcp:write",
        "resource": cluster.url + "/mcp",
    }
    params = redirect_params(await Browser(username).authorize(cluster.url + "/authorize?" + urlencode(query)))
    tokens = await token_request(
        http,
        cluster,
        client,
        {
            "grant_type": "authorization_code",
            "code": params["code"],
            "code_verifier": verifier,
            "redirect_uri": LOOPBACK_CB,
        },
    )
    assert tokens[0] == 200, tokens[1]
    return client, tokens[1]


async def token_request(
    http: aiohttp.ClientSession, cluster: Cluster, client: dict[str, Any], data: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(
        cluster.url + "/token", data=data, headers=basic(client["client_id"], client["client_secret"])
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def bearer_status(http: aiohttp.ClientSession, cluster: Cluster, token: str) -> int:
    """What /mcp says to an initialize with this access token (200 accepted, 401 refused)."""
    async with http.post(
        cluster.url + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    ) as resp:
        await resp.read()
        return resp.status


# -- reading the proxy's log --------------------------------------------------------------------------


def sign_in_steps(served: Iterable[Served], realm: str = "") -> tuple[Served, Served, Served, Served]:
    """(authorize page, login form post, consent form post, code exchange) of the one sign-in in `served`."""
    served = list(served)
    pages = [s for s in served if s.path == realm + "/authorize" and s.method == "GET"]
    posts = [s for s in served if s.path == realm + "/authorize" and s.method == "POST"]
    exchanges = [s for s in served if s.path == realm + "/token" and s.method == "POST"]
    assert len(pages) == 1 and len(posts) == 2 and len(exchanges) == 1, [(s.method, s.path) for s in served]
    return pages[0], posts[0], posts[1], exchanges[0]


def assert_sign_in_spread(served: Iterable[Served], realm: str = "") -> None:
    page, login, consent, exchange = sign_in_steps(served, realm)
    # Each step reads state the previous one wrote on another node (pending sign-in, consent, code).
    assert page.node != login.node != consent.node != exchange.node
    assert len({page.node, consent.node, exchange.node}) == 3, (page.node, consent.node, exchange.node)
    assert all(s.status in (200, 303) for s in (page, login, consent, exchange))


def tool_calls(served: Iterable[Served]) -> list[Served]:
    return [s for s in served if s.tool is not None]


# -- the flows (also run again after Redis comes back) -----------------------------------------------


@contextlib.asynccontextmanager
async def claude_session(cluster: Cluster, sign_in: SignIn) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(auth=sign_in.provider, timeout=30) as http,
        Client(streamable_http_client(cluster.url + "/mcp", http_client=http), mode="legacy") as client,
    ):
        yield client


async def call_every_claude_tool(client: Client, times: int) -> None:
    for _ in range(times):
        for name, arguments in CLAUDE_CALLS.items():
            result = await client.call_tool(name, arguments)
            assert not result.is_error, (name, result.content)


async def sdk_flow(cluster: Cluster, times: int) -> None:
    """Sign in (every step on another node), list tools, call every Claude tool `times` times, one session."""
    mark, retried = cluster.proxy.mark(), cluster.proxy.retried
    sign_in = sdk_sign_in(cluster, "alice")
    async with claude_session(cluster, sign_in) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert set(CLAUDE_CALLS) <= names
        await call_every_claude_tool(client, times)
    served = cluster.proxy.since(mark)
    assert_sign_in_spread(served)
    assert len(sign_in.browser.pages) == 2  # signed in once: one login page, one consent page
    calls = tool_calls(served)
    assert len(calls) == times * len(CLAUDE_CALLS)
    assert len({s.session_id for s in calls}) == 1 and calls[0].session_id  # one session throughout
    for name in CLAUDE_CALLS:  # and every tool was served by every node
        assert {s.node for s in calls if s.tool == name} == NODES, name
    assert cluster.proxy.retried == retried  # no node was skipped


async def legacy_sse_flow(cluster: Cluster, times: int) -> None:
    """A legacy SSE stream open on one node; its POSTs go to every node; every reply comes on the stream."""
    mark = cluster.proxy.mark()
    sign_in = sdk_sign_in(cluster, "rita", endpoint="/sse")
    async with Client(sse_client(cluster.url + "/sse", auth=sign_in.provider), mode="legacy") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert set(CLAUDE_CALLS) <= names
        await call_every_claude_tool(client, times)
    served = cluster.proxy.since(mark)
    streams = [s for s in served if s.path == "/sse" and s.method == "GET" and s.status == 200]
    assert len(streams) == 1, [(s.method, s.path, s.status) for s in served]  # never reconnected
    stream_node = streams[0].node
    posts = [s for s in served if s.method == "POST" and s.seq > streams[0].seq and s.rpc_methods]
    calls = tool_calls(posts)
    assert len(calls) == times * len(CLAUDE_CALLS)
    assert {s.node for s in posts} == NODES  # including both nodes that do not hold the stream
    assert any(s.node != stream_node for s in calls)
    # A relayed reply can reach the stream before the relaying node's 202 reaches the client, and the client
    # may leave as soon as it has the reply: the proxy then logs no status for that last POST. Every other
    # POST was answered 202.
    assert all(s.status == 202 for s in posts[:-1]), [(s.node, s.status) for s in posts]
    assert posts[-1].status in (202, None), posts[-1]


async def chatgpt_flow(cluster: Cluster) -> None:
    """search on one node, fetch of every id it returned (a query result included) on another."""
    mark = cluster.proxy.mark()
    sign_in = sdk_sign_in(cluster, "alice", endpoint="/chatgpt/mcp", redirect_uri=CHATGPT_CB)
    ids: dict[str, int] = {}  # id -> the node whose search returned it
    async with (
        httpx2.AsyncClient(auth=sign_in.provider, timeout=30) as http,
        Client(streamable_http_client(cluster.url + "/chatgpt/mcp", http_client=http), mode="legacy") as client,
    ):
        for query in (
            "SELECT customer_id, city FROM customers WHERE customer_id <= 3 ORDER BY customer_id",
            "Sydney",
            "list tables",
        ):
            before = cluster.proxy.mark()
            result = await client.call_tool("search", {"query": query})
            assert not result.is_error, result.content
            (search,) = tool_calls(cluster.proxy.since(before))
            for found in result.structured_content["results"][:4]:
                ids.setdefault(found["id"], search.node)
        assert any(i.startswith("query:") for i in ids) and any(i.startswith("table:") for i in ids), ids
        for record_id, search_node in ids.items():
            # Twice in a row: consecutive requests go to different nodes, so at least one fetch is
            # served by a node other than the one that ran the search.
            nodes = set()
            for _ in range(2):
                before = cluster.proxy.mark()
                result = await client.call_tool("fetch", {"id": record_id})
                assert not result.is_error, (record_id, result.content)
                assert result.structured_content["id"] == record_id and result.structured_content["text"]
                nodes |= {s.node for s in tool_calls(cluster.proxy.since(before))}
            assert nodes - {search_node}, (record_id, search_node, nodes)
    assert_sign_in_spread(cluster.proxy.since(mark), realm="/chatgpt")


async def refresh_revoke_flow(cluster: Cluster) -> None:
    """Refresh on one node, revoke on a second, the revoked token refused on the third within a second."""
    proxy = cluster.proxy
    async with aiohttp.ClientSession() as http:
        client, tokens = await raw_sign_in(http, cluster, "alice")
        mark = proxy.mark()
        status, refreshed = await token_request(
            http, cluster, client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        )
        assert status == 200, refreshed
        (refresh,) = proxy.since(mark)
        # The new token works on every node (and any node that caches "valid" now holds it).
        for _ in NODES:
            assert await bearer_status(http, cluster, refreshed["access_token"]) == 200
        mark = proxy.mark()
        async with http.post(
            cluster.url + "/revoke",
            data={"token": refreshed["refresh_token"], "token_type_hint": "refresh_token"},
            headers=basic(client["client_id"], client["client_secret"]),
        ) as resp:
            assert resp.status == 200, await resp.text()
        revoked_at = time.monotonic()
        (revoke,) = proxy.since(mark)
        assert len({refresh.node, revoke.node, proxy.next_node()}) == 3  # the next request: the third node
        await expect_refused_everywhere(http, cluster, refreshed["access_token"], since=revoked_at)
        status, body = await token_request(
            http, cluster, client, {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]}
        )
        assert status == 400 and body["error"] == "invalid_grant"


# -- the tests ----------------------------------------------------------------------------------------


async def test_sdk_client_signs_in_across_nodes_and_calls_every_tool_20_times(scaleout: Cluster) -> None:
    await sdk_flow(scaleout, times=20)


async def test_legacy_sse_stream_on_one_node_posts_on_the_others(scaleout: Cluster) -> None:
    await legacy_sse_flow(scaleout, times=4)


async def test_chatgpt_search_on_one_node_fetch_on_another(scaleout: Cluster) -> None:
    await chatgpt_flow(scaleout)


async def test_refresh_revoke_and_refusal_on_three_nodes(scaleout: Cluster) -> None:
    await refresh_revoke_flow(scaleout)


async def test_a_node_killed_mid_session_the_session_continues(scaleout: Cluster) -> None:
    proxy = scaleout.proxy
    sign_in = sdk_sign_in(scaleout, "alice")
    async with claude_session(scaleout, sign_in) as client:
        await call_every_claude_tool(client, 1)
        retried_before = proxy.retried
        victim = scaleout.nodes[proxy.next_node()]  # the node the next request goes to
        victim.kill()  # SIGKILL to its process group: no goodbye, connections just fail
        mark = proxy.mark()
        await call_every_claude_tool(client, 3)
        served = proxy.since(mark)
    calls = tool_calls(served)
    assert len(calls) == 3 * len(CLAUDE_CALLS)
    assert len({s.session_id for s in calls}) == 1
    assert {s.node for s in calls} == NODES - {victim.index}
    assert proxy.retried - retried_before == 1  # the one request that met the dead node went on
    assert [s.retried_from for s in served if s.retried_from is not None] == [victim.index]
    assert all(s.status is not None and s.status < 400 for s in served), [(s.path, s.status) for s in served]


async def test_cli_revocation_reaches_every_node_within_a_second(scaleout: Cluster) -> None:
    """`mssql-mcp users passwd` (run against the shared state, on no node) signs the user out everywhere."""
    username = f"carol-{uuid.uuid4().hex[:6]}"
    create_user(scaleout.settings, username)
    async with aiohttp.ClientSession() as http:
        _, tokens = await raw_sign_in(http, scaleout, username)
        for _ in NODES:
            assert await bearer_status(http, scaleout, tokens["access_token"]) == 200
        out = io.StringIO()
        code = users_main(
            scaleout.settings,
            ["passwd", username, "--password-stdin"],
            stdin=io.StringIO(DEFAULT_PASSWORD + "\n"),
            stdout=out,
        )
        assert code == 0, out.getvalue()
        await expect_refused_everywhere(http, scaleout, tokens["access_token"], since=time.monotonic())


async def expect_refused_everywhere(http: aiohttp.ClientSession, cluster: Cluster, token: str, since: float) -> None:
    """Every node refuses `token` within one second of `since`, and keeps refusing it."""
    refused: dict[int, float] = {}
    while len(refused) < len(NODES) and time.monotonic() - since < 1.0:
        before = cluster.proxy.mark()
        if await bearer_status(http, cluster, token) == 401:
            (check,) = cluster.proxy.since(before)
            refused.setdefault(check.node, time.monotonic() - since)
    assert set(refused) == NODES, f"nodes that refused the revoked token within a second: {refused}"
    for _ in NODES:
        assert await bearer_status(http, cluster, token) == 401


async def test_redis_stopped_and_restarted_mid_run(scaleout: Cluster) -> None:
    """While Redis is down: clear 503s in one line, each within ~2 s, on every node; after it is back:
    every flow of the suite works again, without restarting anything."""
    proxy, redis = scaleout.proxy, scaleout.redis
    retried = proxy.retried
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        client, tokens = await raw_sign_in(http, scaleout, "alice")
        token = tokens["access_token"]
        session_id = await open_session(http, scaleout, token)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "list_tables", "arguments": {}}}
        # A busy moment first: concurrent new sessions, so every node holds several Redis connections
        # when Redis goes away (recovery must not depend on how many were pooled).
        assert await asyncio.gather(*(bearer_status(http, scaleout, token) for _ in range(24))) == [200] * 24
        mark = proxy.mark()
        redis.stop()
        try:
            # Four probes a round, so round robin puts each probe on every node over three rounds.
            for _ in NODES:
                await expect_clear_unavailable(http, "POST", scaleout.url + "/mcp", json=INITIALIZE, token=token)
                await expect_clear_unavailable(http, "GET", scaleout.url + "/sse", token=token)
                await expect_clear_unavailable(http, "GET", scaleout.url + "/authorize?" + authorize_query(client))
                # A call on a session opened before: served, or refused as clearly as a new session.
                await expect_clear_unavailable(
                    http, "POST", scaleout.url + "/mcp", json=call, token=token, session_id=session_id, may_work=True
                )
            for node in scaleout.nodes:
                started = time.monotonic()
                health = await node_health(http, node.url)
                assert time.monotonic() - started < DOWN_REPLY_SECONDS
                assert health["status"] == "degraded" and health["redis"]["status"] != "ok", health
        finally:
            redis.start()
        probes = proxy.since(mark)
        for method, path in (("POST", "/mcp"), ("GET", "/sse"), ("GET", "/authorize")):
            assert {s.node for s in probes if (s.method, s.path) == (method, path)} == NODES, (method, path)
        await wait_for_redis_everywhere(http, scaleout)
        # Back as busy as before: every concurrent request is served (no connection left over from
        # before the restart may count as "Redis is down" again).
        statuses = await asyncio.gather(*(bearer_status(http, scaleout, token) for _ in range(24)))
        assert statuses == [200] * 24, statuses
    # Full recovery: every flow of the suite, as before.
    await sdk_flow(scaleout, times=3)
    await legacy_sse_flow(scaleout, times=1)
    await chatgpt_flow(scaleout)
    await refresh_revoke_flow(scaleout)
    assert proxy.retried == retried


async def open_session(http: aiohttp.ClientSession, cluster: Cluster, token: str) -> str:
    """A Streamable HTTP session by hand (initialize, initialized): its id."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    async with http.post(cluster.url + "/mcp", json=INITIALIZE, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        session_id = resp.headers["Mcp-Session-Id"]
        await resp.read()
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(
        cluster.url + "/mcp", json=initialized, headers={**headers, "Mcp-Session-Id": session_id}
    ) as resp:
        assert resp.status == 202, await resp.text()
    return session_id


def authorize_query(client: dict[str, Any]) -> str:
    _, challenge = pkce()
    return urlencode(
        {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": LOOPBACK_CB,
            "state": "st-down",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "mcp:read",
        }
    )


async def expect_clear_unavailable(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    json: Any = None,
    session_id: str | None = None,
    may_work: bool = False,
) -> None:
    """The request is answered within ~2 s with a 503 that says, in one line, that the service is
    unavailable for now (an HTML page for the sign-in pages); `may_work`: a 200 is fine too."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"} if token else {}
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    started = time.monotonic()
    async with http.request(method, url, json=json, headers=headers, allow_redirects=False) as resp:
        text = await asyncio.wait_for(resp.text(), DOWN_REPLY_SECONDS)
        status = resp.status
    elapsed = time.monotonic() - started
    what = f"{method} {url.split('?')[0]}"
    assert elapsed < DOWN_REPLY_SECONDS, f"{what} took {elapsed:.1f} s while Redis was down"
    if may_work and status == 200:
        return
    assert status == 503, f"{what}: {status} {text[:300]}"
    assert "Traceback" not in text and "unavailable" in text.lower(), f"{what}: {text[:300]}"
    if "html" not in resp.headers.get("Content-Type", ""):
        assert len(text.strip().splitlines()) == 1, f"{what}: not one line: {text[:300]}"


async def node_health(http: aiohttp.ClientSession, node_url: str) -> dict[str, Any]:
    async with http.get(node_url + "/health") as resp:
        return dict(await resp.json(content_type=None))


async def wait_for_redis_everywhere(http: aiohttp.ClientSession, cluster: Cluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for node in cluster.nodes:
        while (health := await node_health(http, node.url)).get("redis", {}).get("status") != "ok":
            assert time.monotonic() < deadline, f"node {node.index} did not see Redis come back: {health}"
            await asyncio.sleep(0.1)
