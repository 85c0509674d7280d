"""Two service nodes on one PostgreSQL state database: each `create_app` has its own DATA_DIR and shares
STATE_DATABASE_URL, PUBLIC_BASE_URL and the state key. A person signs in on one node (the real OAuth
flow: registration, sign-in form, consent, code exchange), and every other step happens on the other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.auth.store import store_path
from tests.fixtures.auth import OAuth, basic, build_app, create_user
from tests.fixtures.databases import PostgresServer, free_port

pytestmark = pytest.mark.timeout(120)

STATE_KEY = "two-nodes-share-this-state-key-0123456789"


class Node(OAuth):
    """A node as a client sees it: its resource and issuer are PUBLIC_BASE_URL, not its own address."""

    @property
    def base(self) -> str:
        return str(self.settings.public_base_url)


async def test_sign_in_on_one_node_refresh_and_revoke_across_nodes(
    state_url: str, auth_settings: Callable[..., Any], aiohttp_client: Any, tmp_path: Path
) -> None:
    # The public address is the first node's own (plain http on loopback, so the test client keeps the
    # browser cookies; an https PUBLIC_BASE_URL makes them Secure); the second node is reached directly.
    port = free_port()
    public_base_url = f"http://127.0.0.1:{port}"
    nodes: list[Node] = []
    for n in range(2):
        settings = auth_settings(
            data_dir=str(tmp_path / f"node{n}"),
            state_database_url=state_url,
            public_base_url=public_base_url,
            state_encryption_key=STATE_KEY,
            refresh_reuse_leeway_seconds=0,
        )
        if n == 0:
            create_user(settings, "alice", role="writer")  # `mssql-mcp users add` on any node: same database
        server_kwargs = {"port": port} if n == 0 else {}
        nodes.append(Node(await aiohttp_client(build_app(settings), server_kwargs=server_kwargs), settings))
    first, second = nodes

    # Both nodes publish the same signing key (it lives in PostgreSQL, encrypted with the shared state key).
    jwks = [await (await node.http.get("/.well-known/jwks.json")).json() for node in nodes]
    assert jwks[0] == jwks[1] and jwks[0]["keys"]

    client = await first.register()
    tokens = await first.tokens_for(client, "alice")
    assert (await second.call(tokens["access_token"])).status == 200  # the token works on the other node
    who = await (await second.call(tokens["access_token"])).json()
    assert who["username"] == "alice" and who["client_id"] == client["client_id"]

    resp = await second.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 200, await resp.text()
    refreshed = await resp.json()
    assert (await first.call(refreshed["access_token"])).status == 200
    # The spent refresh token presented on the first node is reuse: the whole sign-in stops, everywhere.
    resp = await first.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    assert (await second.call(refreshed["access_token"])).status == 401

    # A second sign-in, revoked on the first node, is refused on the second.
    tokens = await first.tokens_for(client, "alice")
    resp = await second.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 200
    refreshed = await resp.json()
    resp = await first.http.post(
        "/revoke",
        data={"token": refreshed["refresh_token"], "token_type_hint": "refresh_token"},
        headers=basic(client["client_id"], client["client_secret"]),
    )
    assert resp.status == 200
    assert (await second.call(refreshed["access_token"])).status == 401
    resp = await second.token(client, {"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"

    for node in nodes:  # nothing of the auth state went to a node's own DATA_DIR
        assert not store_path(node.settings.data_dir).exists()


async def test_a_state_database_restart_fails_requests_cleanly_and_the_node_recovers(
    state_url: str,
    postgres_server: PostgresServer,
    auth_settings: Callable[..., Any],
    aiohttp_client: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = auth_settings(
        data_dir=str(tmp_path / "node"),
        state_database_url=state_url,
        public_base_url=f"http://127.0.0.1:{port}",
        state_encryption_key=STATE_KEY,
    )
    create_user(settings, "alice", role="writer")
    node = Node(await aiohttp_client(build_app(settings), server_kwargs={"port": port}), settings)
    client = await node.register()
    tokens = await node.tokens_for(client, "alice")
    assert (await node.call(tokens["access_token"])).status == 200
    postgres_server.stop()
    try:
        resp = await node.call(tokens["access_token"])  # the bearer check cannot read the store
        assert resp.status >= 500 and "Traceback" not in await resp.text()
    finally:
        postgres_server.start()
    # The pool replaces the connections the restart dropped: no error after the database is back.
    assert (await node.call(tokens["access_token"])).status == 200
    resp = await node.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 200, await resp.text()
