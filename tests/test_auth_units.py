"""Auth building blocks: redirect allowlist, resource URLs, CIMD rules, the state store, the users CLI."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from app.auth.cimd import CimdError, _address_allowed, client_id_url_problem, validate_document
from app.auth.cli import DEMO_PASSWORD_FILE, ensure_demo_user, users_main
from app.auth.params import OAuthError, grant_scopes, normalize_url, parse_form, parse_json_params
from app.auth.passwords import verify_password
from app.auth.records import LoginAdmission
from app.auth.redirects import RedirectUriError, check_redirect_uri, redirect_matches
from app.auth.store import AuthStore, LoginPolicy, store_path
from app.auth.validate import verifier_matches

ALLOWED = ("chatgpt.com", "openai.com", "claude.ai", "claude.com", "anthropic.com")


@pytest.mark.parametrize(
    "uri",
    [
        "https://chatgpt.com/connector/oauth/abc123",
        "https://chatgpt.com/connector_platform_oauth_redirect",
        "https://claude.ai/api/mcp/auth_callback",
        "https://claude.com/api/mcp/auth_callback",
        "https://platform.openai.com/callback",
        "http://localhost:6274/oauth/callback",
        "http://127.0.0.1:33418/callback",
        "http://[::1]:8080/cb",
        "https://127.0.0.1/cb",
    ],
)
def test_redirect_allowlist_accepts_connector_and_loopback_callbacks(uri: str) -> None:
    check_redirect_uri(uri, ALLOWED)


@pytest.mark.parametrize(
    "uri",
    [
        "https://chatgpt.com.evil.com/cb",  # lookalike suffix
        "https://evil.com/chatgpt.com",  # allowed host only in the path
        "https://evilchatgpt.com/cb",  # no dot boundary
        "https://chatgpt.com@evil.com/cb",  # userinfo
        "https://evil.com\\@chatgpt.com/cb",  # backslash trick
        "http://chatgpt.com/cb",  # not https, not loopback
        "https://chatgpt.com/cb#frag",  # fragment
        "javascript:alert(1)",
        "cursor://anysphere/callback",
        "https://chatgpt.com /cb",
        "https:///cb",
        "http://192.168.1.10/cb",
        "http://localhost.evil.com/cb",
        "",
        "https://chatgpt.com:99999/cb",
    ],
)
def test_redirect_allowlist_refuses_escapes(uri: str) -> None:
    with pytest.raises(RedirectUriError):
        check_redirect_uri(uri, ALLOWED)


def test_redirect_matching_is_exact_except_loopback_port() -> None:
    registered = ["http://127.0.0.1:5000/callback", "https://claude.ai/api/mcp/auth_callback"]
    assert redirect_matches("http://127.0.0.1:61234/callback", registered)
    assert not redirect_matches("http://127.0.0.1:61234/other", registered)
    assert not redirect_matches("https://claude.ai/api/mcp/auth_callback/x", registered)
    assert not redirect_matches("https://claude.ai:444/api/mcp/auth_callback", registered)
    assert redirect_matches("https://claude.ai/api/mcp/auth_callback", registered)


def test_resource_urls_compare_in_canonical_form() -> None:
    assert normalize_url("HTTPS://Host.Example:443/mcp/") == "https://host.example/mcp"
    assert normalize_url("http://127.0.0.1:8008/chatgpt/mcp") == "http://127.0.0.1:8008/chatgpt/mcp"
    assert normalize_url("https://host/mcp#x") is None
    assert normalize_url("ftp://host/mcp") is None
    assert normalize_url("https://user@host/mcp") is None


def test_scopes_follow_the_role() -> None:
    assert grant_scopes(["mcp:read", "mcp:write"], "reader") == ["mcp:read"]
    assert grant_scopes(["mcp:read", "mcp:write"], "writer") == ["mcp:read", "mcp:write"]
    assert grant_scopes([], "writer") == ["mcp:read", "mcp:write"]  # ChatGPT reconnects without scope
    assert grant_scopes(["openid", "offline_access"], "reader") == ["mcp:read"]
    assert grant_scopes(["mcp:write"], "writer") == ["mcp:read", "mcp:write"]


def test_form_and_json_parsing_are_strict() -> None:
    assert parse_form(b"a=1&resource=x&resource=y", repeatable=frozenset({"resource"})) == {
        "a": "1",
        "resource": ["x", "y"],
    }
    with pytest.raises(OAuthError) as exc:
        parse_form(b"code=1&code=2")
    assert exc.value.error == "invalid_request"
    with pytest.raises(OAuthError):
        parse_form(b"\xff\xfe=1")
    with pytest.raises(OAuthError):
        parse_json_params(b"[1, 2]")
    with pytest.raises(OAuthError):
        parse_json_params(b'{"code": {"nested": true}}')
    assert parse_json_params(b'{"grant_type": "refresh_token"}') == {"grant_type": "refresh_token"}


def test_pkce_s256_matches_rfc7636_example() -> None:
    # RFC 7636 Appendix B
    verifier, challenge = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert verifier_matches(verifier, challenge)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://app.example.com/oauth/client.json", True),
        ("https://app.example.com/", False),
        ("https://app.example.com", False),
        ("http://app.example.com/client.json", False),
        ("https://user@app.example.com/client.json", False),
        ("https://app.example.com/a/../client.json", False),
        ("https://app.example.com/client.json#x", False),
    ],
)
def test_client_id_metadata_url_rules(url: str, ok: bool) -> None:
    assert (client_id_url_problem(url) is None) is ok


def test_client_id_metadata_document_validation() -> None:
    url = "https://app.example.com/client.json"
    good = {
        "client_id": url,
        "client_name": "App",
        "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
        "token_endpoint_auth_method": "none",
    }
    record = validate_document(url, good, ALLOWED)
    assert record.auth_method == "none" and record.client_name == "App"
    for bad in (
        {**good, "client_id": "https://other.example.com/client.json"},
        {**good, "client_secret": "s3cret"},
        {**good, "token_endpoint_auth_method": "client_secret_basic"},
        {**good, "redirect_uris": ["https://evil.com/cb"]},
        {**good, "redirect_uris": []},
        {**good, "grant_types": ["client_credentials"]},
        ["not", "an", "object"],
    ):
        with pytest.raises(CimdError):
            validate_document(url, bad, ALLOWED)


def test_cimd_address_filter_blocks_private_ranges() -> None:
    for address in (
        "127.0.0.1",
        "10.0.0.5",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
    ):
        assert not _address_allowed(address, False), address
    assert _address_allowed("93.184.216.34", False)
    assert _address_allowed("127.0.0.1", True)


# -- store -----------------------------------------------------------------------------------------


def test_store_file_is_private_and_survives_reopen(tmp_path: Any) -> None:
    path = store_path(tmp_path / "state")
    with AuthStore(path) as store:
        store.add_user("alice", "hash", "reader")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with AuthStore(path) as store:
        assert store.get_user_by_name("ALICE").username == "alice"  # case-insensitive names


def test_throttle_locks_the_pair_after_max_reservations_and_expires(tmp_path: Any) -> None:
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=100)
    with AuthStore(store_path(tmp_path)) as store:
        for _ in range(3):  # each admitted attempt is counted before its password is checked
            assert store.reserve_login_attempt("A", "x", policy) == LoginAdmission("ok", 0.0)
        admission = store.reserve_login_attempt("a", "x", policy)
        verdict, until = admission.verdict, admission.until
        assert verdict == "locked" and until > time.time()
        assert store.reserve_login_attempt("a", "y", policy).verdict == "ok"  # another address: not locked
        store.conn.execute("UPDATE login_throttle SET locked_until = ?", (time.time() - 1,))
        assert store.reserve_login_attempt("a", "x", policy).verdict == "ok"


def test_a_right_password_releases_its_reservation(tmp_path: Any) -> None:
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=100)
    with AuthStore(store_path(tmp_path)) as store:
        for _ in range(2):
            store.reserve_login_attempt("a", "x", policy)
        store.release_login_attempt("a", "x", policy)  # the pair starts over
        for _ in range(3):
            assert store.reserve_login_attempt("a", "x", policy).verdict == "ok"
        assert store.reserve_login_attempt("a", "x", policy).verdict == "locked"


def test_the_per_user_ceiling_slows_and_never_locks(tmp_path: Any) -> None:
    policy = LoginPolicy(
        max_failures=3, lockout_seconds=60, address_max_failures=100, user_slow_after=4, user_slow_seconds=30
    )
    with AuthStore(store_path(tmp_path)) as store:
        for n in range(4):  # four addresses, one failure each: no pair is locked
            assert store.reserve_login_attempt("a", f"10.0.0.{n}", policy).verdict == "ok"
        admission = store.reserve_login_attempt("a", "10.0.0.9", policy)
        verdict, next_slot = admission.verdict, admission.until
        assert verdict == "slowed" and next_slot > time.time()
        assert store.reserve_login_attempt("b", "10.0.0.9", policy).verdict == "ok"  # other users unaffected
        store.conn.execute("UPDATE login_throttle SET next_slot_at = ?", (time.time() - 1,))
        assert store.reserve_login_attempt("a", "10.0.0.9", policy).verdict == "ok"  # the next slot is admitted
        assert store.reserve_login_attempt("a", "10.0.0.9", policy).verdict == "slowed"
        store.release_login_attempt("a", "10.0.0.5", policy)  # alice signed in from 10.0.0.5 once
        assert store.reserve_login_attempt("a", "10.0.0.5", policy).verdict == "ok"  # known address: never slowed
        assert store.reserve_login_attempt("a", "10.0.0.6", policy).verdict == "slowed"


def test_the_address_bound_locks_an_address_spraying_user_names(tmp_path: Any) -> None:
    policy = LoginPolicy(max_failures=3, lockout_seconds=60, address_max_failures=4, user_slow_after=100)
    with AuthStore(store_path(tmp_path)) as store:
        for n in range(4):
            assert store.reserve_login_attempt(f"user{n}", "x", policy).verdict == "ok"
        assert store.reserve_login_attempt("user9", "x", policy).verdict == "locked"
        assert store.reserve_login_attempt("user9", "y", policy).verdict == "ok"


def test_refresh_within_the_leeway_mints_a_sibling_and_revokes_nothing(tmp_path: Any) -> None:
    with AuthStore(store_path(tmp_path)) as store:
        user = store.add_user("bob", "h", "writer")
        family = store.create_family(client_id="c", user_id=user.id, token_version=1, ttl=3600)
        store.add_refresh_token(
            "h1",
            family_id=family,
            client_id="c",
            user_id=user.id,
            scope="mcp:read",
            resources=[],
            issuer="i",
            ttl=3600,
        )
        assert store.rotate_refresh_token("h1", "h2", "c", 3600, 10).within_leeway is False
        assert store.rotate_refresh_token("h1", "h3", "c", 3600, 10).within_leeway is True  # within the leeway
        assert store.rotate_refresh_token("h1", "h3b", "other", 3600, 10).outcome == "client_mismatch"
        assert store.rotate_refresh_token("h2", "h4", "c", 3600, 10).outcome == "ok"  # both siblings live
        assert store.rotate_refresh_token("h3", "h5", "c", 3600, 10).outcome == "ok"
        # Leeway counts from the first use: once it is over the old token is reuse.
        store.conn.execute("UPDATE refresh_tokens SET used_at = used_at - 11 WHERE token_hash = 'h1'")
        assert store.rotate_refresh_token("h1", "h6", "c", 3600, 10).outcome == "reused"
        assert store.rotate_refresh_token("h4", "h7", "c", 3600, 10).outcome == "revoked"


def test_refresh_rotation_and_reuse_revokes_family(tmp_path: Any) -> None:
    with AuthStore(store_path(tmp_path)) as store:
        user = store.add_user("bob", "h", "writer")
        family = store.create_family(client_id="c", user_id=user.id, token_version=1, ttl=3600)
        store.add_refresh_token(
            "h1",
            family_id=family,
            client_id="c",
            user_id=user.id,
            scope="mcp:read",
            resources=[],
            issuer="i",
            ttl=3600,
        )
        assert store.rotate_refresh_token("h1", "h2", "other-client", 3600).outcome == "client_mismatch"
        assert store.rotate_refresh_token("h1", "h2", "c", 3600).outcome == "ok"
        assert store.rotate_refresh_token("h1", "h3", "c", 3600).outcome == "reused"
        assert store.rotate_refresh_token("h2", "h4", "c", 3600).outcome == "revoked"  # the whole family is gone
        assert store.rotate_refresh_token("nope", "h5", "c", 3600).outcome == "unknown"


def test_writes_are_transactional(tmp_path: Any) -> None:
    with AuthStore(store_path(tmp_path)) as store:
        user = store.add_user("carol", "h", "reader")
        family = store.create_family(client_id="c", user_id=user.id, token_version=1, ttl=3600)
        # The second insert collides: the first must roll back with it.
        with pytest.raises(sqlite3.IntegrityError), store._tx() as c:
            c.execute(
                "INSERT INTO refresh_tokens(token_hash, family_id, client_id, user_id, scope, resources,"
                " issuer, created_at, expires_at) VALUES ('x', ?, 'c', ?, '', '[]', 'i', 0, 9e9)",
                (family, user.id),
            )
            c.execute(
                "INSERT INTO users(id, username, role, created_at, updated_at) VALUES (?, 'carol', 'reader', 0, 0)",
                (user.id,),
            )
        assert store.get_refresh_token("x") is None


# -- users CLI and the demo user -------------------------------------------------------------------


def _cli(settings: Any, *argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = users_main(settings, list(argv), stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_users_cli_manages_users(auth_settings: Any, capsys: pytest.CaptureFixture[str]) -> None:
    settings = auth_settings()
    assert _cli(settings, "add", "alice", "--role", "writer", "--password-stdin", stdin="s3cret-pass!\n")[0] == 0
    assert _cli(settings, "add", "alice", "--password-stdin", stdin="another-pass\n")[0] == 1
    assert "already exists" in capsys.readouterr().err
    assert _cli(settings, "add", "bob", "--password-stdin", stdin="short\n")[0] == 1
    assert "at least 8" in capsys.readouterr().err
    assert _cli(settings, "add", "bad name", "--password-stdin", stdin="long-enough\n")[0] == 1
    code, out = _cli(settings, "list")
    assert code == 0 and "alice" in out and "writer" in out and "s3cret" not in out
    with AuthStore(store_path(settings.data_dir)) as store:
        old_hash = store.get_user_by_name("alice").password_hash
        assert old_hash.startswith("$argon2id$") and verify_password(old_hash, "s3cret-pass!")
    assert _cli(settings, "passwd", "alice", "--password-stdin", stdin="new-pass-123\n")[0] == 0
    assert _cli(settings, "role", "alice", "reader")[0] == 0
    with AuthStore(store_path(settings.data_dir)) as store:
        alice = store.get_user_by_name("alice")
        assert verify_password(alice.password_hash, "new-pass-123") and alice.role == "reader"
        assert alice.token_version == 2
    assert _cli(settings, "remove", "alice")[0] == 0
    assert _cli(settings, "remove", "alice")[0] == 1
    assert '"username"' not in _cli(settings, "list", "--json")[1]


def test_users_cli_prompts_twice_for_the_password(auth_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = auth_settings()
    answers = iter(["prompted-pass", "prompted-pass"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    monkeypatch.setattr("app.auth.cli._have_terminal", lambda: True)  # as at a terminal, also in CI
    assert _cli(settings, "add", "dave")[0] == 0
    answers = iter(["prompted-pass", "different-pass"])
    assert _cli(settings, "passwd", "dave")[0] == 1


def test_demo_user_is_created_once_with_a_stored_password(auth_settings: Any) -> None:
    settings = auth_settings()
    line = ensure_demo_user(settings)
    assert line.startswith("Sign in as demo / ")
    password = line.rsplit(" ", 1)[1]
    assert ensure_demo_user(settings) == line  # reused on the next run
    password_file = os.path.join(settings.data_dir, DEMO_PASSWORD_FILE)
    assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
    with AuthStore(store_path(settings.data_dir)) as store:
        assert verify_password(store.get_user_by_name("demo").password_hash, password)
    assert ensure_demo_user(settings.replace(allow_unauth_methods=True, allow_unauth_tools_call=True)) == ""
    # The writer's password is not in DATA_DIR in the clear (the file is encrypted with the state key).
    assert password not in Path(password_file).read_text(encoding="utf-8")


def test_a_plain_demo_password_file_of_an_older_version_is_encrypted(auth_settings: Any) -> None:
    settings = auth_settings()
    password = ensure_demo_user(settings).rsplit(" ", 1)[1]
    password_file = os.path.join(settings.data_dir, DEMO_PASSWORD_FILE)
    with open(password_file, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")  # what the previous version wrote
    assert ensure_demo_user(settings).endswith(password)
    assert password not in Path(password_file).read_text(encoding="utf-8")


def test_a_version_1_store_is_migrated_and_keeps_its_used_clients(tmp_path: Any) -> None:
    path = store_path(tmp_path)
    with sqlite3.connect(path) as db:  # the v1 tables this migration touches
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE clients (client_id TEXT PRIMARY KEY, kind TEXT NOT NULL, secret_hash TEXT,"
            " auth_method TEXT NOT NULL, redirect_uris TEXT NOT NULL, grant_types TEXT NOT NULL, client_name TEXT,"
            " metadata TEXT NOT NULL, created_at REAL NOT NULL, fetched_at REAL);"
            "CREATE TABLE token_families (family_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, user_id TEXT NOT NULL,"
            " token_version INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL,"
            " revoked_reason TEXT);"
            "CREATE TABLE login_failures (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, window_start REAL NOT NULL,"
            " locked_until REAL NOT NULL DEFAULT 0);"
            "INSERT INTO clients VALUES ('used', 'dcr', NULL, 'none', '[]', '[]', NULL, '{}', 1, NULL);"
            "INSERT INTO clients VALUES ('never', 'dcr', NULL, 'none', '[]', '[]', NULL, '{}', 1, NULL);"
            "INSERT INTO token_families VALUES ('f', 'used', 'u', 1, 1, 9999999999, NULL, NULL);"
        )
    with AuthStore(path) as store:
        assert store.get_client("used").last_used_at is not None
        assert store.get_client("never").last_used_at is None
        store.cleanup(unused_client_seconds=3600)
        assert store.get_client("used") is not None and store.get_client("never") is None
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "login_throttle" in tables and "login_failures" not in tables
        assert store.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
