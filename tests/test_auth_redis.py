"""Sign-in state in Redis (issue 11): three `create_app` nodes with their own DATA_DIRs on one real
PostgreSQL (durable state) and one real Redis (pending sign-ins, codes, throttling, revocation broadcast).

Every step of a sign-in may land on another node; a code redeemed on two nodes at once succeeds once;
wrong passwords spread over the nodes lock out at the configured count; a revocation on one node is
refused on another within a second although every node reuses bearer lookups; Redis stopped: clear
503 answers (never a traceback), and sign-in works again by itself once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import httpx2
import pytest
from aiohttp import web

from app import keys
from app.auth.store import store_path
from app.settings import Settings
from app.state.authredis import RedisAuthStorage
from tests.fixtures.auth import (
    DEFAULT_PASSWORD,
    LOOPBACK_CB,
    Browser,
    MemoryTokenStorage,
    basic,
    build_app,
    create_user,
    hidden_fields,
    pkce,
    redirect_params,
    sdk_oauth,
)
from tests.fixtures.databases import free_port
from tests.fixtures.redis import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STATE_KEY = "three-nodes-share-this-state-key-0123456789"


@dataclass
class Cluster:
    """Three nodes; `public` is PUBLIC_BASE_URL (node 0's own address), the others are reached directly."""

    urls: list[str]
    apps: list[web.Application]
    settings: Settings
    http: aiohttp.ClientSession  # one browser: its cookies on 127.0.0.1 go to every node

    @property
    def public(self) -> str:
        return self.urls[0]

    def node(self, n: int) -> str:
        return self.urls[n % len(self.urls)]

    async def register(self, n: int = 0) -> dict[str, Any]:
        body = {
            "redirect_uris": [LOOPBACK_CB],
            "client_name": "Test client",
            "grant_types": ["authorization_code", "refresh_token"],
        }
        async with self.http.post(self.node(n) + "/register", json=body) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    def authorize_url(self, n: int, client: dict[str, Any], challenge: str, realm: str = "") -> str:
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": LOOPBACK_CB,
            "state": "st-1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "mcp:read mcp:write",
            "resource": f"{self.public}{realm}/mcp",
        }
        return f"{self.node(n)}{realm}/authorize?{urlencode(query)}"

    async def form(self, n: int, fields: dict[str, str], realm: str = "") -> aiohttp.ClientResponse:
        resp = await self.http.post(f"{self.node(n)}{realm}/authorize", data=fields, allow_redirects=False)
        await resp.read()
        return resp

    async def code(
        self, client: dict[str, Any], *, nodes: tuple[int, int, int] = (0, 1, 2), username: str = "alice"
    ) -> tuple[str, str]:
        """Authorize on nodes[0], the login form on nodes[1], the consent form on nodes[2]."""
        verifier, challenge = pkce()
        async with self.http.get(self.authorize_url(nodes[0], client, challenge), allow_redirects=False) as resp:
            html = await resp.text()
            assert resp.status == 200, html
        login = await self.form(
            nodes[1], {**hidden_fields(html), "action": "login", "username": username, "password": DEFAULT_PASSWORD}
        )
        consent_html = await login.text()
        assert login.status == 200, consent_html
        consent = await self.form(nodes[2], {**hidden_fields(consent_html), "action": "consent", "decision": "allow"})
        assert consent.status == 303, await consent.text()
        return redirect_params(consent.headers["Location"])["code"], verifier

    async def token(self, n: int, client: dict[str, Any], data: dict[str, str]) -> tuple[int, dict[str, Any]]:
        headers = basic(client["client_id"], client["client_secret"])
        async with self.http.post(self.node(n) + "/token", data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    async def exchange(self, n: int, client: dict[str, Any], code: str, verifier: str) -> tuple[int, dict[str, Any]]:
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
        return await self.token(n, client, {**data, "redirect_uri": LOOPBACK_CB})

    async def call(self, n: int, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.post(self.node(n) + "/_test/mcp", json={"methods": ["tools/call"]}, headers=headers) as r:
            await r.read()
            return r.status


@pytest.fixture
async def cluster(
    state_url: str, redis_url: str, auth_settings: Callable[..., Settings], aiohttp_server: Any, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def make(**overrides: Any) -> Cluster:
        ports = [free_port() for _ in range(3)]
        public = f"http://127.0.0.1:{ports[0]}"
        apps, first = [], None
        for n, port in enumerate(ports):
            settings = auth_settings(
                data_dir=str(tmp_path / f"node{n}"),
                state_database_url=state_url,
                redis_url=redis_url,
                public_base_url=public,
                state_encryption_key=STATE_KEY,
                refresh_reuse_leeway_seconds=0,
                **overrides,
            )
            if n == 0:
                first = settings
                create_user(settings, "alice", role="writer")  # the CLI: PostgreSQL, seen by every node
            app = build_app(settings)
            await aiohttp_server(app, port=port)
            apps.append(app)
        assert first is not None
        http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(http)
        return Cluster([f"http://127.0.0.1:{p}" for p in ports], apps, first, http)

    yield make
    for http in sessions:
        await http.close()


async def _eventually(predicate: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until `predicate()` holds (AssertionError after `timeout`)."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_every_step_of_a_sign_in_on_another_node(cluster: Callable[..., Awaitable[Cluster]]) -> None:
    c = await cluster()
    assert all(isinstance(app[keys.AUTH_STORE].store.sync, RedisAuthStorage) for app in c.apps)
    client = await c.register(1)
    code, verifier = await c.code(client, nodes=(0, 1, 2))
    status, tokens = await c.exchange(2, client, code, verifier)  # token exchange on the third node
    assert status == 200, tokens
    assert [await c.call(n, tokens["access_token"]) for n in range(3)] == [200, 200, 200]
    status, refreshed = await c.token(
        1, client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert status == 200, refreshed
    # Nothing of the sign-in went to a node's own DATA_DIR (SQLite) or stayed in PostgreSQL's ephemeral tables.
    for app in c.apps:
        assert not store_path(app[keys.SETTINGS].data_dir).exists()


class NodeHoppingBrowser(Browser):
    """The person's browser, with a load balancer in front: the authorization URL opens on node 1, the
    login form posts to node 2 and the consent form to node 0."""

    def __init__(self, username: str, nodes: list[str]) -> None:
        super().__init__(username)
        self.nodes = nodes

    async def authorize(self, authorization_url: str) -> str:
        url = urlsplit(authorization_url)
        on = [urlsplit(node)._replace(path=url.path, query="", fragment="").geturl() for node in self.nodes]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(on[1] + "?" + url.query, allow_redirects=False) as resp:
                html = await resp.text()
                assert resp.status == 200, html
            login = {**hidden_fields(html), "action": "login", "username": self.username, "password": self.password}
            async with http.post(on[2], data=login, allow_redirects=False) as resp:
                html = await resp.text()
                assert resp.status == 200, html
            self.pages.append(html)
            consent = {**hidden_fields(html), "action": "consent", "decision": "allow"}
            async with http.post(on[0], data=consent, allow_redirects=False) as resp:
                assert resp.status == 303, await resp.text()
                self.last_redirect = resp.headers["Location"]
        return self.last_redirect


async def test_the_official_sdk_client_signs_in_across_nodes(cluster: Callable[..., Awaitable[Cluster]]) -> None:
    """The SDK's OAuthClientProvider discovers and registers through node 0 (PUBLIC_BASE_URL), the browser
    steps land on nodes 1, 2 and 0, the SDK exchanges the code; its token then works on every node."""
    c = await cluster()
    storage = MemoryTokenStorage()
    provider = sdk_oauth(c.public + "/mcp", NodeHoppingBrowser("alice", c.urls), storage=storage)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        resp = await http.post(c.public + "/_test/mcp", json={"methods": ["tools/call"]})
        assert resp.status_code == 200, resp.text
    assert storage.tokens is not None and storage.tokens.refresh_token
    assert [await c.call(n, storage.tokens.access_token) for n in range(3)] == [200, 200, 200]


async def test_a_code_redeemed_on_two_nodes_at_once_succeeds_once_and_the_replay_revokes_it(
    cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    c = await cluster()
    client = await c.register()
    for _ in range(3):  # the race is real: run it a few times
        code, verifier = await c.code(client)
        results = await asyncio.gather(c.exchange(1, client, code, verifier), c.exchange(2, client, code, verifier))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 400], results
        (issued,) = [body for status, body in results if status == 200]
        (refused,) = [body for status, body in results if status == 400]
        assert refused["error"] == "invalid_grant"
        # RFC 6749 §4.1.2: the replay revokes what the first exchange produced, on every node.
        await _eventually(lambda t=issued["access_token"]: _refused_everywhere(c, t), timeout=1.0)
        status, body = await c.token(
            0, client, {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
        )
        assert status == 400 and body["error"] == "invalid_grant"


async def _refused_everywhere(c: Cluster, token: str) -> bool:
    return [await c.call(n, token) for n in range(3)] == [401, 401, 401]


async def test_wrong_passwords_over_three_nodes_lock_out_at_the_configured_count(
    cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    c = await cluster(login_max_failures=4)
    client = await c.register()
    _verifier, challenge = pkce()
    async with c.http.get(c.authorize_url(0, client, challenge), allow_redirects=False) as resp:
        fields = hidden_fields(await resp.text())
    statuses = []
    for attempt in range(6):  # round robin over the nodes
        resp = await c.form(attempt, {**fields, "action": "login", "username": "alice", "password": "wrong-one"})
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 401, 429, 429], statuses
    # Locked on every node, even with the right password.
    resp = await c.form(2, {**fields, "action": "login", "username": "alice", "password": DEFAULT_PASSWORD})
    assert resp.status == 429 and resp.headers["Retry-After"]


async def test_revoked_on_one_node_refused_on_another_within_a_second(
    cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    c = await cluster()
    client = await c.register()
    caches = [app[keys.AUTH_STORE].bearer_cache for app in c.apps]
    assert all(cache is not None and cache.usable for cache in caches)

    # A refresh token revoked (its whole family) on node 1, while node 2 reuses its lookups.
    code, verifier = await c.code(client)
    _, tokens = await c.exchange(0, client, code, verifier)
    for _ in range(3):
        assert await c.call(2, tokens["access_token"]) == 200
    assert caches[2] is not None and len(caches[2]) == 1  # the bearer cache is on and holds this token
    headers = basic(client["client_id"], client["client_secret"])
    async with c.http.post(c.node(1) + "/revoke", data={"token": tokens["refresh_token"]}, headers=headers) as resp:
        assert resp.status == 200
    assert await _eventually(lambda: _refused(c, 2, tokens["access_token"]), timeout=1.0) < 1.0

    # An access token revoked by its jti on node 1: refused on node 2 too.
    code, verifier = await c.code(client)
    _, tokens = await c.exchange(0, client, code, verifier)
    assert await c.call(2, tokens["access_token"]) == 200
    async with c.http.post(
        c.node(1) + "/revoke",
        data={"token": tokens["access_token"], "token_type_hint": "access_token"},
        headers=headers,
    ) as resp:
        assert resp.status == 200
    assert await _eventually(lambda: _refused(c, 2, tokens["access_token"]), timeout=1.0) < 1.0

    # A password change through the store on node 0 (as the operator console does it) signs alice out on 2.
    code, verifier = await c.code(client)
    _, tokens = await c.exchange(0, client, code, verifier)
    assert await c.call(2, tokens["access_token"]) == 200
    from app.auth.passwords import hash_password

    new_hash = hash_password("another-horse-battery")
    await c.apps[0][keys.AUTH_STORE].store.call(lambda s: s.set_password("alice", new_hash))
    assert await _eventually(lambda: _refused(c, 2, tokens["access_token"]), timeout=1.0) < 1.0


async def _refused(c: Cluster, n: int, token: str) -> bool:
    return await c.call(n, token) == 401


async def test_mssql_mcp_users_on_any_machine_reaches_every_nodes_bearer_cache(
    cluster: Callable[..., Awaitable[Cluster]],
) -> None:
    """`mssql-mcp users passwd` runs in a process of its own: it broadcasts too, so no node keeps reusing
    the signed-out token's lookup."""
    import io

    from app.auth.cli import users_main

    c = await cluster()
    client = await c.register()
    code, verifier = await c.code(client)
    _, tokens = await c.exchange(0, client, code, verifier)
    assert [await c.call(n, tokens["access_token"]) for n in range(3)] == [200, 200, 200]
    out = io.StringIO()
    argv = ["passwd", "alice", "--password-stdin"]
    assert users_main(c.settings, argv, stdin=io.StringIO("brand-new-pass-1\n"), stdout=out) == 0, out.getvalue()
    for n in range(3):
        assert await _eventually(lambda n=n: _refused(c, n, tokens["access_token"]), timeout=1.0) < 1.0


async def test_redis_stopped_clear_errors_then_sign_in_recovers_by_itself(
    cluster: Callable[..., Awaitable[Cluster]], redis_server: RedisServer
) -> None:
    c = await cluster()
    client = await c.register()
    code, verifier = await c.code(client)
    _, tokens = await c.exchange(0, client, code, verifier)
    verifier, challenge = pkce()
    async with c.http.get(c.authorize_url(0, client, challenge), allow_redirects=False) as resp:
        pending_fields = hidden_fields(await resp.text())
    # Busy first: every node's store threads hold pooled Redis connections when Redis goes away.
    assert await _authorize_burst(c, client, challenge) == [200] * 12

    redis_server.stop()
    try:
        started = time.monotonic()
        async with c.http.get(c.authorize_url(1, client, challenge), allow_redirects=False) as resp:
            page = await resp.text()
            assert resp.status == 503 and resp.headers["Retry-After"], page
            assert "unavailable for a moment" in page and "Traceback" not in page
        resp = await c.form(2, {**pending_fields, "action": "login", "username": "alice", "password": DEFAULT_PASSWORD})
        assert resp.status == 503 and "Traceback" not in await resp.text()
        status, body = await c.token(
            1, client, {"grant_type": "authorization_code", "code": "x" * 43, "code_verifier": "y" * 43}
        )
        assert status == 503 and body["error"] == "temporarily_unavailable", body
        async with c.http.post(c.node(2) + "/register", json={"redirect_uris": [LOOPBACK_CB]}) as resp:
            assert resp.status == 503 and (await resp.json())["error"] == "temporarily_unavailable"
        assert time.monotonic() - started < 10  # no hang: each answer is immediate or within the 1 s limit
        # The bearer check needs only the durable store: tokens keep working (looked up every time).
        assert [await c.call(n, tokens["access_token"]) for n in range(3)] == [200, 200, 200]
        for app in c.apps:
            cache = app[keys.AUTH_STORE].bearer_cache
            assert cache is not None and not cache.usable and len(cache) == 0
    finally:
        redis_server.start()

    async def all_up() -> bool:
        return all(app[keys.REDIS].available and app[keys.REDIS].listening for app in c.apps)

    await _eventually(all_up, timeout=15)
    # As busy as before: no connection pooled before the restart makes a request fail.
    assert await _authorize_burst(c, client, challenge) == [200] * 12
    code, verifier = await c.code(client, nodes=(2, 0, 1))
    status, fresh = await c.exchange(1, client, code, verifier)
    assert status == 200, fresh
    assert await c.call(0, fresh["access_token"]) == 200


async def _authorize_burst(c: Cluster, client: dict[str, Any], challenge: str) -> list[int]:
    async def one(n: int) -> int:
        async with c.http.get(c.authorize_url(n, client, challenge), allow_redirects=False) as resp:
            await resp.read()
            return resp.status

    return list(await asyncio.gather(*(one(n) for n in range(12))))


async def test_without_redis_the_store_is_the_durable_backend_alone(auth_settings: Callable[..., Settings]) -> None:
    from app.web import create_app

    app = create_app(auth_settings())
    state = app[keys.AUTH_STORE]
    assert state.bearer_cache is None and not isinstance(state.store.sync, RedisAuthStorage)
    with contextlib.suppress(KeyError):
        assert app.get(keys.REDIS) is None


# -- the Redis store's own rules, directly (SQLite durable store + real Redis, no HTTP) ----------------


@pytest.fixture
async def redis_storage(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisAuthStorage]:
    from app.auth.store import AuthStore
    from app.state.authredis import BearerCache
    from app.state.redisstate import RedisState

    redis_state = RedisState(redis_url)
    redis_state.subscribe("unused", lambda _data: None)  # a listener, so the bearer cache may answer
    await redis_state.start()
    storage = RedisAuthStorage(AuthStore(tmp_path / "auth.db"), redis_state, BearerCache(redis_state)).open()
    try:
        yield storage
    finally:
        storage.close()
        await redis_state.close()


def _client(client_id: str) -> Any:
    from app.auth.records import Client

    return Client(client_id, "dcr", "none", (LOOPBACK_CB,), ("authorization_code",), {})


def _code(storage: RedisAuthStorage, code_hash: str, client_id: str, user_id: str) -> bool:
    return storage.create_code(
        code_hash,
        client_id=client_id,
        user_id=user_id,
        redirect_uri=LOOPBACK_CB,
        redirect_uri_given=True,
        code_challenge="c",
        scope="mcp:read",
        resources=[],
        issuer="http://127.0.0.1",
        ttl=60,
    )


async def test_a_replay_before_the_family_is_attached_still_revokes_it(redis_storage: RedisAuthStorage) -> None:
    storage = redis_storage
    storage.save_client(_client("c1"))
    user = storage.add_user("erin", None, "reader")
    assert _code(storage, "h1", "c1", user.id)
    first = storage.consume_code("h1")
    assert first.code is not None and not first.reused and first.code.resources == ()
    replay = storage.consume_code("h1")  # the first exchange has not attached its family yet
    assert replay.code is not None and replay.reused
    family = storage.create_family(client_id="c1", user_id=user.id, token_version=1, ttl=60)
    storage.attach_family_to_code("h1", family)  # sees the replay: what it made is revoked at once
    record = storage.bearer_lookup(user.id, "jti", family)
    assert record is not None and record.family_revoked_at is not None
    assert storage.consume_code("missing").code is None


async def test_a_client_cut_off_loses_its_unredeemed_codes(redis_storage: RedisAuthStorage) -> None:
    storage = redis_storage
    storage.save_client(_client("c2"))
    user = storage.add_user("frank", None, "reader")
    assert _code(storage, "h2", "c2", user.id)
    assert storage.get_client("c2") is not None
    assert storage.revoke_client("c2", "console") == 0
    assert storage.consume_code("h2").code is None  # as the SQL stores delete it


async def test_a_pending_sign_in_is_used_once_and_found_by_its_upstream_state(
    redis_storage: RedisAuthStorage,
) -> None:
    from app.auth.records import AuthorizationRequest, UpstreamSignIn

    storage = redis_storage
    params = AuthorizationRequest("c3", LOOPBACK_CB, True, None, "ch", ("mcp:read",), (), "iss", "", "n", "", "h")
    storage.create_auth_request("r1", "bh", "csrf1", params, 60)
    pending = storage.get_auth_request("r1")
    assert pending is not None and pending.params == params and pending.user_id is None
    storage.update_auth_request("r1", csrf="csrf2", user_id="u1", upstream=UpstreamSignIn("sh", "n", "v", "cb"))
    found = storage.find_auth_request_by_upstream_state("sh")
    assert found is not None and found.csrf == "csrf2" and found.user_id == "u1"
    storage.save_client(_client("c3"))
    consumed = storage.create_code(
        "h3",
        client_id="c3",
        user_id="u1",
        redirect_uri=LOOPBACK_CB,
        redirect_uri_given=True,
        code_challenge="c",
        scope="mcp:read",
        resources=[],
        issuer="iss",
        ttl=60,
        consume_request="r1",
    )
    assert consumed and storage.get_auth_request("r1") is None
    again = storage.create_code(
        "h4",
        client_id="c3",
        user_id="u1",
        redirect_uri=LOOPBACK_CB,
        redirect_uri_given=True,
        code_challenge="c",
        scope="mcp:read",
        resources=[],
        issuer="iss",
        ttl=60,
        consume_request="r1",
    )
    assert not again  # the pending sign-in was used: a second consent post gets no code
    client = storage.get_client("c3")
    assert client is not None and client.last_used_at is not None  # the durable store heard of the use
