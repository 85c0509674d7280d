"""Signing key rotation (issue 11) on both auth store backends: `mssql-mcp keys rotate` publishes the new
key in JWKS at once, nodes sign with it only after the publish delay, tokens signed before keep working,
the old key is retired once its tokens have expired, and a second node (another create_app on the same
store) learns a rotation without a restart. Time is moved by ageing the stored rows (the tests' clock)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from app import keys
from app.auth.keyring import rotate_signing_key
from app.auth.records import AuthStorage
from app.auth.signing import key_states, token_kid
from app.auth.state import AuthState
from app.auth.store import AuthStore, store_path
from app.settings import Settings
from tests.fixtures.auth import build_app

pytestmark = pytest.mark.timeout(120)

BASE = "https://mcp.example.test"


@pytest.fixture(params=["sqlite", "postgres"])
def node_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    """Settings every node shares: the SQLite file in one DATA_DIR, or one PostgreSQL database."""
    if request.param == "sqlite":
        return make_settings(public_base_url=BASE)
    return make_settings(public_base_url=BASE, state_database_url=request.getfixturevalue("state_url"))


def _age_keys(settings: Settings, seconds: float) -> None:
    """Move every key's times `seconds` into the past, as if that much time had gone by."""
    sql = (
        f"UPDATE signing_keys SET created_at = created_at - {seconds},"
        f" signs_from = COALESCE(signs_from, created_at) - {seconds}"
    )
    if settings.state_database_url:
        engine = sa.create_engine(settings.state_database_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as c:
            c.execute(sa.text(sql))
        engine.dispose()
    else:
        with AuthStore(store_path(settings.data_dir)) as store:
            store.conn.execute(sql)


async def _node(aiohttp_client: Any, settings: Settings, *, reload_seconds: float | None = None) -> Any:
    app = build_app(settings)
    if reload_seconds is not None:
        app[keys.AUTH_STORE].key_reload_seconds = reload_seconds
    return await aiohttp_client(app)


def _state(client: Any) -> AuthState:
    return client.server.app[keys.AUTH_STORE]


async def _mint(state: AuthState) -> str:
    """An access token as /token issues it, signed by this node's current key."""

    def family(store: AuthStorage) -> tuple[str, int, str]:
        user = store.get_user_by_name("tester") or store.add_user("tester", None, "writer")
        fid = store.create_family(client_id="c", user_id=user.id, token_version=user.token_version, ttl=3600)
        return user.id, user.token_version, fid

    user_id, version, fid = await state.store.call(family)
    now = int(time.time())
    claims = {"iss": BASE, "sub": user_id, "aud": BASE + "/mcp", "iat": now, "nbf": now, "exp": now + 600}
    claims |= {"jti": uuid.uuid4().hex, "client_id": "c", "scope": "mcp:read", "sid": fid, "ver": version}
    return state.keys.sign(claims)


async def _accepted(client: Any, token: str) -> bool:
    resp = await client.post("/_test/mcp", json={}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status in {200, 401}, await resp.text()
    return resp.status == 200


async def _jwks_kids(client: Any) -> list[str]:
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert all("d" not in key for key in jwks["keys"])  # never the private part
    return sorted(key["kid"] for key in jwks["keys"])


async def _eventually(check: Callable[[], Any], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_rotation_publishes_first_signs_later_and_retires_after_the_tokens_expire(
    node_settings: Settings, aiohttp_client: Any
) -> None:
    first = await _node(aiohttp_client, node_settings, reload_seconds=0.2)
    second = await _node(aiohttp_client, node_settings)  # default 30 s reload: learns new kids on demand
    old_token = await _mint(_state(first))
    old_kid = token_kid(old_token)
    assert await _accepted(first, old_token) and await _accepted(second, old_token)

    state = _state(first)
    assert state.state_key is not None
    key_id = state.state_key
    new = await state.store.call(lambda s: rotate_signing_key(s, key_id, 0.8))
    new_kid = new["kid"]

    # Published at once (after the node's reload), not signing yet: both keys in JWKS, tokens still old.
    async def both_published() -> bool:
        return await _jwks_kids(first) == sorted([old_kid or "", new_kid])

    await _eventually(both_published)
    assert token_kid(await _mint(state)) == old_kid
    assert await _accepted(first, old_token) and await _accepted(second, old_token)

    # After the publish delay the new key signs; the second node accepts it without a restart.
    await asyncio.sleep(max(0.0, new["signs_from"] - time.time()) + 0.05)
    new_token = await _mint(state)
    assert token_kid(new_token) == new_kid
    assert await _accepted(second, new_token) and await _accepted(first, new_token)
    assert await _jwks_kids(second) == sorted([old_kid or "", new_kid])
    assert await _accepted(second, old_token)  # the old key is still published: its tokens live on

    # Once every token the old key signed has expired (a TTL after it stopped signing), it is retired.
    rows = await state.store.call(lambda s: s.signing_keys())
    assert key_states(rows, time.time(), node_settings.access_token_ttl_seconds)[old_kid or ""] == "published"
    _age_keys(node_settings, node_settings.access_token_ttl_seconds + 1)

    async def only_new() -> bool:
        return await _jwks_kids(first) == [new_kid]

    await _eventually(only_new)
    every = await state.store.call(lambda s: s.signing_keys(include_retired=True))
    assert {r["kid"]: r["retired_at"] is not None for r in every} == {old_kid: True, new_kid: False}
    assert not await _accepted(first, old_token)
    assert await _accepted(first, new_token)
    await _state(second).reload_keys()  # the periodic reload, without waiting 30 s
    assert await _jwks_kids(second) == [new_kid]
    assert await _accepted(second, new_token)


def test_key_states_follow_the_times_alone() -> None:
    def row(kid: str, signs_from: float, retired_at: float | None = None) -> Any:
        return {
            "kid": kid,
            "alg": "ES256",
            "private_pem": "",
            "created_at": signs_from - 1,
            "signs_from": signs_from,
            "retired_at": retired_at,
        }

    rows = [row("a", 0), row("b", 100)]
    assert key_states(rows, 50, 60) == {"a": "signing", "b": "published"}
    assert key_states(rows, 120, 60) == {"a": "published", "b": "signing"}
    assert key_states(rows, 160, 60) == {"a": "retired", "b": "signing"}
    assert key_states([row("a", 0, retired_at=5), row("b", 3)], 4, 60) == {"a": "retired", "b": "signing"}


def test_a_sqlite_store_from_before_rotation_gains_the_column(tmp_path: Any) -> None:
    path = store_path(tmp_path)
    with AuthStore(path) as store:
        store.conn.execute("ALTER TABLE signing_keys DROP COLUMN signs_from")  # the schema before rotation
        store.conn.execute(
            "INSERT INTO signing_keys(kid, alg, private_pem, created_at) VALUES ('old', 'ES256', 'enc:v1:x', 100)"
        )
    with AuthStore(path) as store:
        (row,) = store.signing_keys()
        assert row["signs_from"] == row["created_at"] == 100  # it signed from the moment it was made
