"""The auth store's behaviour on both backends (SQLite in DATA_DIR, PostgreSQL via STATE_DATABASE_URL),
its Alembic migrations from an empty database, and parallel requests from two "nodes" (two
AsyncAuthStores on the same PostgreSQL), against a real PostgreSQL 15 on loopback."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.auth.cli import users_main
from app.auth.passwords import verify_password
from app.auth.records import AuthorizationRequest, Client, LoginAdmission, LoginPolicy, UpstreamSignIn
from app.auth.statekey import StateKey, open_signing_keys
from app.auth.store import AsyncAuthStore, AuthStore, StorageBackend, UserExists, store_path
from app.settings import SettingsError, load_settings
from app.state import migrate
from app.state.backend import opened_backend, storage_backend
from app.state.pgstore import PgAuthStore

pytestmark = pytest.mark.timeout(120)

Age = Callable[[str, str, float], None]  # (table, column, seconds): move a time column into the past


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StorageBackend, Age]]:
    """An open store of each backend, and a way to age its rows (the tests' clock)."""
    if request.param == "sqlite":
        with AuthStore(store_path(tmp_path)) as sqlite_store:

            def age_sqlite(table: str, column: str, seconds: float) -> None:
                sqlite_store.conn.execute(f"UPDATE {table} SET {column} = {column} - ?", (seconds,))

            yield sqlite_store, age_sqlite
        return
    url = request.getfixturevalue("state_url")
    with PgAuthStore(url) as pg_store:

        def age_pg(table: str, column: str, seconds: float) -> None:
            with pg_store.engine.begin() as c:
                c.execute(sa.text(f"UPDATE {table} SET {column} = {column} - :s"), {"s": seconds})

        yield pg_store, age_pg


def _family_with_token(store: StorageBackend, token_hash: str = "h1") -> tuple[str, str]:
    user = store.add_user("bob", "h", "writer")
    family = store.create_family(client_id="c", user_id=user.id, token_version=1, ttl=3600)
    store.add_refresh_token(
        token_hash,
        family_id=family,
        client_id="c",
        user_id=user.id,
        scope="mcp:read",
        resources=["https://x/mcp"],
        issuer="i",
        ttl=3600,
    )
    return user.id, family


def _client(client_id: str = "c1", **extra: Any) -> Client:
    return Client(
        client_id=client_id,
        kind="dcr",
        auth_method="none",
        redirect_uris=("http://127.0.0.1/cb",),
        grant_types=("authorization_code", "refresh_token"),
        metadata={"client_name": "Test"},
        client_name="Test",
        **extra,
    )


def _params() -> AuthorizationRequest:
    return AuthorizationRequest(
        client_id="c1",
        redirect_uri="http://127.0.0.1/cb",
        redirect_uri_given=True,
        state="st",
        code_challenge="ch",
        scopes=("mcp:read",),
        resources=("https://x/mcp",),
        issuer="https://x",
        realm="",
        client_name="Test",
        client_note="",
        redirect_host="127.0.0.1",
    )


def _code(store: StorageBackend, code_hash: str, user_id: str, consume_request: str | None = None) -> bool:
    return store.create_code(
        code_hash,
        client_id="c1",
        user_id=user_id,
        redirect_uri="http://127.0.0.1/cb",
        redirect_uri_given=True,
        code_challenge="ch",
        scope="mcp:read",
        resources=["https://x/mcp"],
        issuer="https://x",
        ttl=60,
        consume_request=consume_request,
    )


# -- the same behaviour on both backends ------------------------------------------------------------


def test_users_are_found_regardless_of_case_and_unique(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    alice = store.add_user("alice", "hash", "reader")
    assert store.get_user_by_name("ALICE") == alice and store.get_user(alice.id) == alice
    with pytest.raises(UserExists):
        store.add_user("Alice", "other", "writer")
    store.add_user("Bob", None, "writer", source="oidc", email="b@x")
    assert [u.username for u in store.list_users()] == ["alice", "Bob"]
    assert store.upsert_upstream_user("carol@x", "reader").source == "oidc"
    assert store.upsert_upstream_user("CAROL@x", "writer").role == "reader"  # found, not re-created
    assert store.set_role("ALICE", "writer") and store.get_user(alice.id).role == "writer"
    assert not store.set_role("nobody", "writer")


def test_a_password_change_or_removal_revokes_the_users_families(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    user_id, family = _family_with_token(store)
    assert store.set_password("bob", "new-hash")
    user = store.get_user(user_id)
    assert user is not None and user.token_version == 2 and user.password_hash == "new-hash"
    assert store.rotate_refresh_token("h1", "h2", "c", 3600).outcome == "revoked"
    record = store.bearer_lookup(user_id, "jti", family)
    assert record is not None and record.family_revoked_at is not None and not record.jti_revoked
    assert store.remove_user("bob") and store.get_user(user_id) is None
    assert not store.remove_user("bob") and not store.set_password("bob", "x")
    assert store.bearer_lookup(user_id, "jti", family) is None


def test_throttle_locks_the_pair_after_max_reservations_and_expires(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=100)
    for _ in range(3):
        assert store.reserve_login_attempt("A", "x", policy) == LoginAdmission("ok", 0.0)
    admission = store.reserve_login_attempt("a", "x", policy)
    assert admission.verdict == "locked" and admission.until > time.time()
    assert store.reserve_login_attempt("a", "y", policy).verdict == "ok"
    age("login_throttle", "locked_until", 61)
    assert store.reserve_login_attempt("a", "x", policy).verdict == "ok"


def test_a_right_password_releases_its_reservation(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=100)
    for _ in range(2):
        store.reserve_login_attempt("a", "x", policy)
    store.release_login_attempt("a", "x", policy)
    for _ in range(3):
        assert store.reserve_login_attempt("a", "x", policy).verdict == "ok"
    assert store.reserve_login_attempt("a", "x", policy).verdict == "locked"


def test_the_per_user_ceiling_slows_and_never_locks(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    policy = LoginPolicy(
        max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=4, user_slow_seconds=30
    )
    for n in range(4):
        assert store.reserve_login_attempt("a", f"10.0.0.{n}", policy).verdict == "ok"
    admission = store.reserve_login_attempt("a", "10.0.0.9", policy)
    assert admission.verdict == "slowed" and admission.until > time.time()
    assert store.reserve_login_attempt("b", "10.0.0.9", policy).verdict == "ok"
    age("login_throttle", "next_slot_at", 31)
    assert store.reserve_login_attempt("a", "10.0.0.9", policy).verdict == "ok"
    assert store.reserve_login_attempt("a", "10.0.0.9", policy).verdict == "slowed"
    store.release_login_attempt("a", "10.0.0.5", policy)
    assert store.reserve_login_attempt("a", "10.0.0.5", policy).verdict == "ok"
    assert store.reserve_login_attempt("a", "10.0.0.6", policy).verdict == "slowed"


def test_the_address_bound_locks_an_address_spraying_user_names(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=4, user_slow_after=100)
    for n in range(4):
        assert store.reserve_login_attempt(f"user{n}", "x", policy).verdict == "ok"
    assert store.reserve_login_attempt("user9", "x", policy).verdict == "locked"
    assert store.reserve_login_attempt("user9", "y", policy).verdict == "ok"


def test_refresh_within_the_leeway_mints_a_sibling_and_revokes_nothing(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    _family_with_token(store)
    assert store.rotate_refresh_token("h1", "h2", "c", 3600, 10).within_leeway is False
    assert store.rotate_refresh_token("h1", "h3", "c", 3600, 10).within_leeway is True
    assert store.rotate_refresh_token("h1", "h3b", "other", 3600, 10).outcome == "client_mismatch"
    assert store.rotate_refresh_token("h2", "h4", "c", 3600, 10).outcome == "ok"
    assert store.rotate_refresh_token("h3", "h5", "c", 3600, 10).outcome == "ok"
    successor = store.get_refresh_token("h5")
    assert successor is not None and successor.resources == ("https://x/mcp",) and successor.used_at is None
    age("refresh_tokens", "used_at", 11)
    assert store.rotate_refresh_token("h1", "h6", "c", 3600, 10).outcome == "reused"
    assert store.rotate_refresh_token("h4", "h7", "c", 3600, 10).outcome == "revoked"


def test_refresh_rotation_and_reuse_revokes_family(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    _family_with_token(store)
    assert store.rotate_refresh_token("h1", "h2", "other-client", 3600).outcome == "client_mismatch"
    assert store.rotate_refresh_token("h1", "h2", "c", 3600).outcome == "ok"
    assert store.rotate_refresh_token("h1", "h3", "c", 3600).outcome == "reused"
    assert store.rotate_refresh_token("h2", "h4", "c", 3600).outcome == "revoked"
    assert store.rotate_refresh_token("nope", "h5", "c", 3600).outcome == "unknown"


def test_an_expired_refresh_token_is_refused(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    _family_with_token(store)
    age("refresh_tokens", "expires_at", 3601)
    assert store.rotate_refresh_token("h1", "h2", "c", 3600).outcome == "expired"


def test_a_code_is_single_use_and_its_reuse_revokes_the_family(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    user = store.add_user("dora", "h", "reader")
    store.save_client(_client())
    store.create_auth_request("r1", "browser", "csrf", _params(), ttl=600)
    assert _code(store, "code1", user.id, consume_request="r1")
    assert store.get_auth_request("r1") is None
    assert not _code(store, "code2", user.id, consume_request="r1")  # the request was consumed already
    first = store.consume_code("code1")
    assert first.code is not None and not first.reused and first.code.resources == ("https://x/mcp",)
    assert first.code.redirect_uri_given is True
    family = store.create_family(client_id="c1", user_id=user.id, token_version=1, ttl=3600)
    store.attach_family_to_code("code1", family)
    again = store.consume_code("code1")
    assert again.reused and again.code is not None and again.code.family_id == family
    record = store.bearer_lookup(user.id, "j", family)
    assert record is not None and record.family_revoked_at is not None
    assert store.consume_code("unknown").code is None
    client = store.get_client("c1")
    assert client is not None and client.last_used_at is not None


def test_pending_sign_ins_update_and_are_found_by_upstream_state(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    store.create_auth_request("r1", "browser", "csrf", _params(), ttl=600)
    upstream = UpstreamSignIn(state_hash="sh", nonce="n", verifier="v", redirect_uri="https://x/cb")
    store.update_auth_request("r1", csrf="csrf2", user_id="u1", upstream=upstream)
    pending = store.get_auth_request("r1")
    assert pending is not None and pending.csrf == "csrf2" and pending.user_id == "u1"
    assert pending.params == _params() and pending.upstream == upstream
    assert store.find_auth_request_by_upstream_state("sh") == pending
    assert store.find_auth_request_by_upstream_state("other") is None
    age("auth_requests", "expires_at", 601)
    assert store.get_auth_request("r1") is None and store.find_auth_request_by_upstream_state("sh") is None
    assert store.delete_auth_request("r1") and not store.delete_auth_request("r1")


def test_registrations_per_address_and_the_console_listings(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    assert store.register_client(_client("c1"), "10.0.0.1", 2)
    assert store.register_client(_client("c2"), "10.0.0.1", 2)
    assert not store.register_client(_client("c3"), "10.0.0.1", 2)
    assert store.register_client(_client("c3"), "10.0.0.2", 2)
    assert store.get_client("c3") == _client("c3", created_at=store.get_client("c3").created_at)
    user = store.add_user("erin", "h", "reader")
    family = store.create_family(client_id="c2", user_id=user.id, token_version=1, ttl=3600)
    listing = {c.client_id: c.active_grants for c in store.list_clients()}
    assert listing == {"c1": 0, "c2": 1, "c3": 0}
    grants = store.active_grants()
    assert [(g.family_id, g.username, g.client_name) for g in grants] == [(family, "erin", "Test")]
    assert store.revoke_client("c2", "by test") == 1
    assert store.get_client("c2") is None and store.active_grants() == []
    assert store.revoke_client("c2", "again") == -1


def test_revoked_access_tokens_and_families(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    user_id, family = _family_with_token(store)
    store.revoke_jti("jti-1", time.time() + 60)
    store.revoke_jti("jti-1", time.time() + 60)  # twice: no error
    record = store.bearer_lookup(user_id, "jti-1", family)
    assert record is not None and record.jti_revoked and record.family_revoked_at is None
    store.revoke_family(family, "signed out")
    record = store.bearer_lookup(user_id, "jti-2", None)
    assert record is not None and not record.jti_revoked and record.family_revoked_at is None
    assert store.bearer_lookup(user_id, "jti-2", family).family_revoked_at is not None


def test_one_signing_key_is_made_and_kept_encrypted(backend: tuple[StorageBackend, Age]) -> None:
    store, _ = backend
    key = StateKey.from_secret("k" * 40, "test")
    first = open_signing_keys(store, key)
    assert len(first) == 1 and "PRIVATE KEY" in first[0]["private_pem"]
    assert open_signing_keys(store, key) == first
    (stored,) = store.signing_keys()
    assert stored["private_pem"].startswith("enc:v1:")


def test_cleanup_forgets_what_can_no_longer_be_used(backend: tuple[StorageBackend, Age]) -> None:
    store, age = backend
    _family_with_token(store)
    store.create_auth_request("r1", "b", "c", _params(), ttl=600)
    store.revoke_jti("j", time.time() + 60)
    store.save_client(_client("never-used"))
    for table, column in (
        ("refresh_tokens", "expires_at"),
        ("token_families", "expires_at"),
        ("auth_requests", "expires_at"),
        ("revoked_tokens", "expires_at"),
        ("clients", "created_at"),
    ):
        age(table, column, 90000)
    store.cleanup()
    assert store.get_refresh_token("h1") is None and store.get_auth_request("r1") is None
    assert store.get_client("never-used") is None


# -- PostgreSQL only: migrations, the CLI, parallel nodes -------------------------------------------


def test_migrations_build_the_schema_from_an_empty_database_once(state_url: str) -> None:
    engine = sa.create_engine(PgAuthStore(state_url).url)
    try:
        assert migrate.current_revision(engine) is None
        errors: list[BaseException] = []

        def run() -> None:
            try:
                migrate.upgrade(engine)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]  # three nodes starting together
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert migrate.current_revision(engine) == migrate.head_revision() is not None
        tables = set(sa.inspect(engine).get_table_names())
        assert {"users", "clients", "token_families", "refresh_tokens", "signing_keys", "login_throttle"} <= tables
        migrate.upgrade(engine)  # nothing left to do
    finally:
        engine.dispose()


def test_state_database_url_needs_public_base_url_and_a_postgresql_url(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="PUBLIC_BASE_URL: required when STATE_DATABASE_URL"):
        load_settings({"STATE_DATABASE_URL": "postgresql://u:secret@h/db"}, None, require_database=False)
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {"STATE_DATABASE_URL": "mysql://u:secret@h/db", "PUBLIC_BASE_URL": "https://x"},
            None,
            require_database=False,
        )
    assert "secret" not in str(refused.value)
    settings = load_settings({"DATA_DIR": str(tmp_path)}, None, require_database=False)
    assert isinstance(storage_backend(settings), AuthStore)


def _cli(settings: Any, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = users_main(settings, list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_users_cli_manages_users_in_postgresql(
    state_url: str, auth_settings: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = auth_settings(state_database_url=state_url, public_base_url="https://mcp.example")
    assert _cli(settings, "add", "alice", "--role", "writer", "--password-stdin", stdin="s3cret-pass!\n")[0] == 0
    assert _cli(settings, "add", "ALICE", "--password-stdin", stdin="another-pass\n")[0] == 1
    assert "already exists" in capsys.readouterr().err
    code, out = _cli(settings, "list")
    assert code == 0 and "alice" in out and "writer" in out
    assert _cli(settings, "passwd", "alice", "--password-stdin", stdin="new-pass-123\n")[0] == 0
    assert _cli(settings, "role", "alice", "reader")[0] == 0
    with opened_backend(settings) as store:
        assert isinstance(store, PgAuthStore)
        alice = store.get_user_by_name("alice")
        assert alice is not None and alice.role == "reader" and alice.token_version == 2
        assert verify_password(alice.password_hash, "new-pass-123")
    assert not store_path(settings.data_dir).exists()  # nothing went to the SQLite file
    assert _cli(settings, "remove", "alice")[0] == 0
    assert _cli(settings, "remove", "alice")[0] == 1
    assert _cli(settings, "list", "--json")[1].strip() == "[]"


@pytest.fixture
async def two_nodes(state_url: str) -> Any:
    """Two AsyncAuthStores on one PostgreSQL database: what two service nodes hold."""
    nodes = [AsyncAuthStore(PgAuthStore(state_url), threads=4) for _ in range(2)]
    for node in nodes:
        await node.open()
    yield nodes
    for node in nodes:
        await node.close()


async def test_ten_parallel_refreshes_of_one_token_on_two_nodes(two_nodes: list[AsyncAuthStore]) -> None:
    first, second = two_nodes
    await first.call(lambda s: _family_with_token(s))

    async def refresh(n: int, leeway: float) -> str:
        node = two_nodes[n % 2]
        result = await node.call(lambda s: s.rotate_refresh_token("h1", f"next-{leeway}-{n}", "c", 3600, leeway))
        return result.outcome

    # No leeway: exactly one spends it; every other one is reuse (and revokes the family).
    outcomes = await asyncio.gather(*(refresh(n, 0.0) for n in range(10)))
    assert sorted(outcomes).count("ok") == 1, outcomes
    assert set(outcomes) <= {"ok", "reused", "revoked"}
    assert await second.call(lambda s: s.rotate_refresh_token("next-0.0-0", "x", "c", 3600)) is not None
    family = (await first.call(lambda s: s.get_refresh_token("h1"))).family_id
    record = await second.call(lambda s: s.bearer_lookup(s.get_refresh_token("h1").user_id, "j", family))
    assert record is not None and record.family_revoked_at is not None


async def test_ten_parallel_refreshes_within_the_leeway_all_succeed(two_nodes: list[AsyncAuthStore]) -> None:
    first, _ = two_nodes
    await first.call(lambda s: _family_with_token(s))

    async def refresh(n: int) -> Any:
        return await two_nodes[n % 2].call(lambda s: s.rotate_refresh_token("h1", f"next-{n}", "c", 3600, 30))

    results = await asyncio.gather(*(refresh(n) for n in range(10)))
    assert [r.outcome for r in results] == ["ok"] * 10
    assert sum(1 for r in results if not r.within_leeway) == 1  # one spent it, nine are its siblings


async def test_101_parallel_wrong_passwords_on_two_nodes_evaluate_at_most_the_limit(
    two_nodes: list[AsyncAuthStore],
) -> None:
    policy = LoginPolicy(max_failures=5, lockout_seconds=300, address_max_failures=1000, user_slow_after=1000)

    async def attempt(n: int) -> str:
        admission = await two_nodes[n % 2].call(lambda s: s.reserve_login_attempt("alice", "10.1.1.1", policy))
        return admission.verdict

    verdicts = await asyncio.gather(*(attempt(n) for n in range(101)))
    assert verdicts.count("ok") == policy.max_failures, verdicts
    assert verdicts.count("locked") == 101 - policy.max_failures


async def test_a_code_redeemed_twice_in_parallel_on_two_nodes_succeeds_once(two_nodes: list[AsyncAuthStore]) -> None:
    first, second = two_nodes
    user = await first.call(lambda s: s.add_user("dora", "h", "reader"))
    for n in range(5):  # a few rounds: the race has to be met, not dodged
        assert await first.call(lambda s, n=n: _code(s, f"code-{n}", user.id))
        redemptions = await asyncio.gather(
            first.call(lambda s, n=n: s.consume_code(f"code-{n}")),
            second.call(lambda s, n=n: s.consume_code(f"code-{n}")),
        )
        assert sorted(r.reused for r in redemptions) == [False, True]


async def test_registrations_from_two_nodes_respect_the_hourly_bound(two_nodes: list[AsyncAuthStore]) -> None:
    async def register(n: int) -> bool:
        return await two_nodes[n % 2].call(lambda s: s.register_client(_client(f"c{n}"), "10.0.0.7", 5))

    accepted = await asyncio.gather(*(register(n) for n in range(20)))
    assert accepted.count(True) == 5


async def test_two_nodes_starting_together_share_one_signing_key(two_nodes: list[AsyncAuthStore]) -> None:
    key = StateKey.from_secret("s" * 40, "test")
    rows = await asyncio.gather(*(node.call(open_signing_keys, key) for node in two_nodes))
    assert rows[0] == rows[1] and len(rows[0]) == 1


def test_start_up_problems_with_the_state_database_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.__main__ import main

    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STATE_DATABASE_URL", "postgresql://someone:pw-not-shown@127.0.0.1:1/state")
    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    monkeypatch.delenv("BASE_URL", raising=False)
    assert main(["users", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PUBLIC_BASE_URL: required when STATE_DATABASE_URL is set" in err
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://mcp.example")
    started = time.monotonic()
    assert main(["users", "list"]) == 2  # nothing listens on port 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STATE_DATABASE_URL: cannot use PostgreSQL at 127.0.0.1:1/state" in err
    assert "pw-not-shown" not in err and time.monotonic() - started < 15


def test_the_postgresql_store_implements_the_whole_protocol_itself() -> None:
    from app.auth.records import AuthStorage

    contract = {name for name in vars(AuthStorage) if not name.startswith("_") and callable(vars(AuthStorage)[name])}
    assert len(contract) > 30
    missing = sorted(name for name in contract if name not in vars(PgAuthStore))  # not the Protocol's stubs
    assert missing == []
