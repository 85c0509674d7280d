"""The operator console at /admin (issue 14) through aiohttp's client: sign-in and who gets in, each action,
the CSRF check on every form, clear errors for bad input, and revocations that end tokens at once.

The real-browser test (sign-in, an OAuth client revoked, its next MCP call refused) is test_admin_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app import keys
from app.admin.session import SESSION_COOKIE, SIGNIN_CSRF_COOKIE
from app.auth.browser import CSRF_COOKIE as RECORDS_CSRF_COOKIE
from app.auth.passwords import verify_password
from app.auth.records import Client
from app.auth.store import AuthStore, store_path
from app.settings import Settings
from app.web import create_app
from tests.fixtures.auth import DEFAULT_PASSWORD, create_user, hidden_fields, mint_token
from tests.fixtures.calls import MODERN, MODERN_META

pytestmark = pytest.mark.integration

NEW_PASSWORD = "another-long-passphrase"


@dataclass
class Console:
    client: TestClient
    settings: Settings
    base_url: str

    def store(self) -> AuthStore:
        return AuthStore(store_path(self.settings.data_dir))

    async def sign_in(self, username: str, password: str = DEFAULT_PASSWORD, **headers: str) -> Any:
        page = await self.client.get("/admin", headers=headers)
        token = hidden_fields(await page.text())["csrf_token"]
        return await self.client.post(
            "/admin/signin",
            allow_redirects=False,
            headers=headers,
            cookies={SIGNIN_CSRF_COOKIE: token},  # sent explicitly: behind https the cookie is Secure
            data={"csrf_token": token, "next": "/admin", "username": username, "password": password},
        )

    async def csrf(self, path: str = "/admin/users") -> str:
        page = await self.client.get(path)
        assert page.status == 200, await page.text()
        return hidden_fields(await page.text())["csrf_token"]

    async def post(self, path: str, *, csrf: bool = True, **data: str) -> Any:
        form = dict(data)
        if csrf:
            form["csrf_token"] = await self.csrf()
        return await self.client.post(path, data=form, allow_redirects=False)

    async def mcp_status(self, token: str, tool: str = "list_tables") -> int:
        response = await self.client.post(
            "/mcp",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "MCP-Protocol-Version": MODERN,
                "Mcp-Method": "tools/call",
                "Mcp-Name": tool,
            },
            data=json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": tool, "arguments": {}, "_meta": MODERN_META},
                }
            ),
        )
        await response.read()
        return response.status


@pytest.fixture
async def console(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any], auth_settings: Callable[..., Settings]
) -> Console:
    settings = auth_settings(login_max_failures=3)
    create_user(settings, "ada", role="admin")
    create_user(settings, "rita", role="reader")
    server: TestServer = await aiohttp_server(create_app(settings))  # started: signing keys exist
    client: TestClient = await aiohttp_client(server)
    return Console(client, settings, str(server.make_url("")).rstrip("/"))


@pytest.fixture
async def admin(console: Console) -> Console:
    response = await console.sign_in("ada")
    assert response.status == 303, await response.text()
    return console


def _register_client(console: Console, client_id: str, name: str, redirect: str) -> None:
    with console.store() as store:
        store.save_client(
            Client(
                client_id=client_id,
                kind="dcr",
                auth_method="none",
                redirect_uris=(redirect,),
                grant_types=("authorization_code", "refresh_token"),
                metadata={"client_name": name},
                client_name=name,
            )
        )
        store.conn.execute("UPDATE clients SET last_used_at = created_at WHERE client_id = ?", (client_id,))


# -- who gets in -------------------------------------------------------------------------------


async def test_without_a_session_every_page_is_the_signin_form_with_the_page_headers(console: Console) -> None:
    for path in ("/admin", "/admin/users", "/admin/clients", "/admin/grants", "/admin/audit", "/admin/policy"):
        page = await console.client.get(path)
        body = await page.text()
        assert page.status == 200 and "id=password" in body and "Operator console" in body, path
        assert "ada" not in body and "rita" not in body  # nothing of the console before sign-in
        assert "script-src" not in page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert "name=viewport" in body
    signin = (await console.client.get("/admin")).cookies[SIGNIN_CSRF_COOKIE]
    assert signin["httponly"] and signin["samesite"] == "Strict" and signin["path"] == "/admin"


async def test_an_admin_signs_in_with_a_strict_session_cookie_on_admin(console: Console) -> None:
    wrong = await console.sign_in("ada", password="not-the-password")
    assert wrong.status == 401 and "Wrong username or password" in await wrong.text()
    done = await console.sign_in("ada", **{"X-Forwarded-Proto": "https"})  # behind a TLS proxy on loopback
    assert done.status == 303 and done.headers["Location"] == "/admin"
    cookie = done.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["secure"] and cookie["path"] == "/admin"
    assert 0 < int(cookie["max-age"]) <= 3600
    plain = await console.sign_in("ada")
    assert not plain.cookies[SESSION_COOKIE]["secure"]  # plain http on loopback: no Secure flag
    page = await console.client.get("/admin")
    body = await page.text()
    assert page.status == 200 and "Sign out" in body and "id=db-status>ok<" in body and "id=pool" in body


async def test_a_non_admin_gets_403_and_no_session(console: Console) -> None:
    refused = await console.sign_in("rita")
    body = await refused.text()
    assert refused.status == 403 and "No access" in body and "rita" in body and "reader" in body
    assert SESSION_COOKIE not in refused.cookies
    page = await console.client.get("/admin/users")
    assert page.status == 200 and "id=password" in await page.text()  # still just the sign-in form

    # signed in on the record pages as a reader: /admin answers 403 instead of asking again
    form = await console.client.get("/chatgpt/records/signin?next=/chatgpt/records/table:customers")
    fields = hidden_fields(await form.text())
    records = await console.client.post(
        "/chatgpt/records/signin",
        allow_redirects=False,
        cookies={RECORDS_CSRF_COOKIE: fields["csrf_token"]},
        data={**fields, "next": "/chatgpt/records/table:customers", "username": "rita", "password": DEFAULT_PASSWORD},
    )
    assert records.status == 303
    again = await console.client.get("/admin")
    assert again.status == 403 and "rita" in await again.text()


async def test_signin_is_throttled_and_needs_its_csrf_token(console: Console) -> None:
    forged = await console.client.post(
        "/admin/signin", data={"csrf_token": "x" * 32, "username": "ada", "password": DEFAULT_PASSWORD}
    )
    assert forged.status == 403 and SESSION_COOKIE not in forged.cookies
    for _ in range(3):  # LOGIN_MAX_FAILURES=3 in this app
        assert (await console.sign_in("ada", password="wrong-password-here")).status == 401
    throttled = await console.sign_in("ada")
    assert throttled.status == 429 and "Too many failed sign-ins" in await throttled.text()
    assert int(throttled.headers["Retry-After"]) > 0


async def test_a_session_ends_when_the_admin_is_demoted_or_removed(admin: Console) -> None:
    create_user(admin.settings, "bea", role="admin")
    with admin.store() as store:
        store.set_role("ada", "writer")
    demoted = await admin.client.get("/admin/users")
    assert demoted.status == 403 and "writer" in await demoted.text()
    assert demoted.cookies[SESSION_COOKIE].value == ""  # the cookie is dropped
    admin.client.session.cookie_jar.clear()
    assert (await admin.sign_in("bea")).status == 303
    with admin.store() as store:
        store.remove_user("bea")
    gone = await admin.client.get("/admin/users")
    assert gone.status == 200 and "id=password" in await gone.text()


async def test_signing_out_needs_the_token_and_ends_the_session(admin: Console) -> None:
    assert (await admin.post("/admin/signout", csrf=False)).status == 403
    assert "Sign out" in await (await admin.client.get("/admin")).text()  # still signed in
    out = await admin.post("/admin/signout")
    assert out.status == 303
    assert "id=password" in await (await admin.client.get("/admin")).text()


# -- CSRF on every form ------------------------------------------------------------------------

ACTIONS = [
    ("/admin/users/add", {"username": "eve", "role": "admin", "password": NEW_PASSWORD}),
    ("/admin/users/remove", {"username": "rita"}),
    ("/admin/users/role", {"username": "rita", "role": "admin"}),
    ("/admin/users/password", {"username": "rita", "password": NEW_PASSWORD}),
    ("/admin/clients/revoke", {"client_id": "client-one"}),
    ("/admin/grants/revoke", {"family_id": "FAMILY"}),
]


@pytest.mark.parametrize(("path", "data"), ACTIONS, ids=[path for path, _ in ACTIONS])
async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    admin: Console, path: str, data: dict[str, str]
) -> None:
    _register_client(admin, "client-one", "Client One", "https://one.example/cb")
    token = mint_token(admin.settings, admin.base_url, username="rita", client_id="client-one", resource=admin.base_url)
    with admin.store() as store:
        (family,) = [g.family_id for g in store.active_grants() if g.username == "rita"]
        before = (store.list_users(), store.list_clients(), store.active_grants())
        rita_hash = store.get_user_by_name("rita").password_hash  # type: ignore[union-attr]  # created above
    data = {k: (family if v == "FAMILY" else v) for k, v in data.items()}
    for forged in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 32}):
        response = await admin.client.post(path, data={**data, **forged}, allow_redirects=False)
        assert response.status == 403, (forged, await response.text())
        assert "could not be verified" in await response.text() and "Nothing was changed" in await response.text()
    with admin.store() as store:
        after = (store.list_users(), store.list_clients(), store.active_grants())
        assert store.get_user_by_name("rita").password_hash == rita_hash  # type: ignore[union-attr]
    assert before == after
    assert await admin.mcp_status(token) == 200
    # the same form with the page's token goes through
    assert (await admin.post(path, **data)).status == 303


async def test_a_form_posted_without_a_session_is_refused(console: Console) -> None:
    token = await console.client.get("/admin")  # the sign-in form's token is not a console token
    signin_token = hidden_fields(await token.text())["csrf_token"]
    response = await console.client.post(
        "/admin/users/add",
        data={"csrf_token": signin_token, "username": "mallory", "role": "admin", "password": NEW_PASSWORD},
    )
    assert response.status == 403
    with console.store() as store:
        assert store.get_user_by_name("mallory") is None


# -- users -------------------------------------------------------------------------------------


async def test_users_add_change_role_reset_password_and_remove(admin: Console) -> None:
    added = await admin.post("/admin/users/add", username="carl", role="writer", password=NEW_PASSWORD)
    assert added.status == 303 and added.headers["Location"] == "/admin/users"
    page = await admin.client.get("/admin/users")
    body = await page.text()
    assert "User carl added as writer." in body and "class=notice" in body
    assert "class=notice" not in await (await admin.client.get("/admin/users")).text()  # shown once
    users = re.search(r"<table id=users>.*?</table>", body, re.S)
    assert users and "carl" in users.group(0) and "rita" in users.group(0)

    assert (await admin.post("/admin/users/role", username="carl", role="admin")).status == 303
    carl_token = mint_token(admin.settings, admin.base_url, username="carl", resource=admin.base_url)
    assert await admin.mcp_status(carl_token) == 200
    assert (await admin.post("/admin/users/password", username="carl", password=NEW_PASSWORD + "!")).status == 303
    with admin.store() as store:
        carl = store.get_user_by_name("carl")
        assert carl is not None and carl.role == "admin"
        assert verify_password(carl.password_hash, NEW_PASSWORD + "!")
    assert await admin.mcp_status(carl_token) == 401  # a new password signs the user out everywhere
    removed = await admin.post("/admin/users/remove", username="carl")
    assert removed.status == 303
    assert "User carl removed" in await (await admin.client.get("/admin/users")).text()
    with admin.store() as store:
        assert store.get_user_by_name("carl") is None


@pytest.mark.parametrize(
    ("path", "data", "status", "message"),
    [
        ("/admin/users/add", {"username": "rita", "role": "reader", "password": NEW_PASSWORD}, 409, "already exists"),
        ("/admin/users/add", {"username": "new", "role": "reader", "password": "short"}, 400, "at least"),
        ("/admin/users/add", {"username": "bad name!", "role": "reader", "password": NEW_PASSWORD}, 400, "1-64"),
        ("/admin/users/add", {"username": "new", "role": "root", "password": NEW_PASSWORD}, 400, "Unknown role"),
        ("/admin/users/remove", {"username": "nobody"}, 404, "No user named nobody"),
        ("/admin/users/role", {"username": "nobody", "role": "writer"}, 404, "No user named nobody"),
        ("/admin/users/password", {"username": "nobody", "password": NEW_PASSWORD}, 404, "No user named nobody"),
        ("/admin/users/password", {"username": "rita", "password": " padded password "}, 400, "spaces"),
        ("/admin/users/remove", {"username": "ada"}, 409, "your own account"),
        ("/admin/users/role", {"username": "ADA", "role": "reader"}, 409, "your own account"),
        ("/admin/clients/revoke", {"client_id": "nope"}, 404, "No such client"),
        ("/admin/grants/revoke", {"family_id": "nope"}, 404, "No such active grant"),
    ],
)
async def test_bad_input_gets_a_clear_message_and_no_traceback(
    admin: Console, path: str, data: dict[str, str], status: int, message: str
) -> None:
    response = await admin.post(path, **data)
    body = await response.text()
    assert response.status == status, body
    assert message in body and "class=error" in body
    assert "Traceback" not in body and "Error:" not in body
    assert "Sign out" in body  # the console page again, not a bare error
    with admin.store() as store:
        assert {u.username for u in store.list_users()} == {"ada", "rita"}
        assert store.get_user_by_name("rita").role == "reader"  # type: ignore[union-attr]  # created by the fixture


async def test_a_malformed_form_body_is_refused_without_a_traceback(admin: Console) -> None:
    response = await admin.client.post(
        "/admin/users/add", data=b"\xff\xfe=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status == 403 and "Traceback" not in await response.text()


# -- clients and grants ------------------------------------------------------------------------


async def test_revoking_a_client_ends_its_tokens_at_once(admin: Console) -> None:
    _register_client(admin, "client-one", "Client <One>", "https://one.example/cb")
    _register_client(admin, "client-two", "Client Two", "https://two.example/cb")
    one = mint_token(admin.settings, admin.base_url, username="rita", client_id="client-one", resource=admin.base_url)
    two = mint_token(admin.settings, admin.base_url, username="rita", client_id="client-two", resource=admin.base_url)
    assert await admin.mcp_status(one) == 200 and await admin.mcp_status(two) == 200
    body = await (await admin.client.get("/admin/clients")).text()
    assert "Client &lt;One&gt;" in body and "one.example" in body and "Client <One>" not in body
    assert "client-one" in body and "client-two" in body
    revoked = await admin.post("/admin/clients/revoke", client_id="client-one")
    assert revoked.status == 303
    assert "1 grant ended" in await (await admin.client.get("/admin/clients")).text()
    assert await admin.mcp_status(one) == 401  # cut off on its very next call
    assert await admin.mcp_status(two) == 200  # other clients are untouched
    with admin.store() as store:
        assert [c.client_id for c in store.list_clients()] == ["client-two"]


async def test_grants_per_user_are_listed_and_revoked(admin: Console) -> None:
    _register_client(admin, "client-one", "Client One", "https://one.example/cb")
    first = mint_token(admin.settings, admin.base_url, username="rita", client_id="client-one", resource=admin.base_url)
    second = mint_token(
        admin.settings, admin.base_url, username="rita", client_id="client-one", resource=admin.base_url
    )
    body = await (await admin.client.get("/admin/grants")).text()
    grants = re.search(r"<table id=grants>.*?</table>", body, re.S)
    assert grants and grants.group(0).count("rita") == 2 and "Client One" in grants.group(0)
    with admin.store() as store:
        families = [g.family_id for g in store.active_grants()]
    first_family = families[-1]  # newest first: the first token's family is the older one
    assert (await admin.post("/admin/grants/revoke", family_id=first_family)).status == 303
    assert await admin.mcp_status(first) == 401 and await admin.mcp_status(second) == 200
    assert "Grant of rita in Client One revoked." in await (await admin.client.get("/admin/grants")).text()


# -- audit, policy, database -------------------------------------------------------------------


async def test_recent_audit_lines_filter_by_user_tool_and_outcome(admin: Console) -> None:
    create_user(admin.settings, "audra", role="reader")
    token = mint_token(admin.settings, admin.base_url, username="audra", resource=admin.base_url)
    assert await admin.mcp_status(token, "list_tables") == 200
    assert await admin.mcp_status(token, "describe_table") == 200  # without its argument: invalid
    page = await admin.client.get("/admin/audit", params={"user": "audra"})
    audit = re.search(r"<table id=audit>.*?</table>", await page.text(), re.S)
    assert audit and "list_tables" in audit.group(0) and "describe_table" in audit.group(0)
    only_ok = await (await admin.client.get("/admin/audit", params={"user": "audra", "outcome": "ok"})).text()
    assert "list_tables" in only_ok and "<code>describe_table</code>" not in only_ok
    by_tool = await (await admin.client.get("/admin/audit", params={"user": "AUDRA", "tool": "describe_table"})).text()
    assert "<code>describe_table</code>" in by_tool and "<code>list_tables</code>" not in by_tool
    nobody = await (await admin.client.get("/admin/audit", params={"user": "nobody-at-all"})).text()
    assert "No tool calls match." in nobody


async def test_audit_lines_never_show_sql_text_unless_audit_sql_text(admin: Console) -> None:
    create_user(admin.settings, "sully", role="reader")
    token = mint_token(admin.settings, admin.base_url, username="sully", resource=admin.base_url)
    response = await admin.client.post(
        "/mcp",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "execute_sql",
        },
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {
                    "name": "execute_sql",
                    "arguments": {"query": "SELECT 'secret-literal-42' AS x"},
                    "_meta": MODERN_META,
                },
            }
        ),
    )
    assert response.status == 200
    body = await (await admin.client.get("/admin/audit", params={"user": "sully"})).text()
    assert "execute_sql" in body and "secret-literal-42" not in body


async def test_the_policy_page_says_none_is_configured(admin: Console) -> None:
    body = await (await admin.client.get("/admin/policy")).text()
    assert "id=policy-none" in body and "No policy configured" in body


async def test_the_policy_page_shows_what_each_role_may_read(
    aiohttp_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    auth_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        """
roles:
  reader:
    tables: {allow: ["*"], deny: ["hr.*", "dbo.Payroll"]}
    columns: {deny: ["*.ssn"]}
    max_rows: 50
  analyst:
    tables: {allow: ["sales.*"]}
"""
    )
    settings = auth_settings(access_policy_file=str(policy_file))
    create_user(settings, "ada", role="admin")
    server = await aiohttp_server(create_app(settings))
    console = Console(await aiohttp_client(server), settings, str(server.make_url("")).rstrip("/"))
    assert (await console.sign_in("ada")).status == 303
    body = await (await console.client.get("/admin/policy")).text()
    table = re.search(r"<table id=policy>.*?</table>", body, re.S)
    assert table, body
    for expected in ("reader", "analyst", "writer", "hr.*", "dbo.Payroll", "*.ssn", "sales.*", "50 rows"):
        assert expected in table.group(0), expected
    assert str(policy_file) in body and "No policy configured" not in body
    assert "policy: <a href='/admin/policy'>configured</a>" in await (await console.client.get("/admin")).text()
    create_user(settings, "rita", role="reader")
    assert (await console.post("/admin/users/role", username="rita", role="analyst")).status == 303  # a policy role
    with console.store() as store:
        assert store.get_user_by_name("rita").role == "analyst"  # type: ignore[union-attr]  # created above

    # SIGHUP's reload replaces the policy: the page shows the one in force now
    policy_file.write_text('roles:\n  reader:\n    tables: {deny: ["audit.*"]}\n')
    assert server.app[keys.DATABASE].reload_policy()
    table = re.search(r"<table id=policy>.*?</table>", await (await console.client.get("/admin/policy")).text(), re.S)
    assert table and "audit.*" in table.group(0)
    assert "hr.*" not in table.group(0) and "analyst" not in table.group(0)


# -- the store's admin role ----------------------------------------------------------------------


def test_a_version_2_store_is_migrated_to_accept_the_admin_role(tmp_path: Any) -> None:
    path = tmp_path / "auth.db"
    with AuthStore(path) as store:
        store.add_user("old", None, "writer")
    conn = sqlite3.connect(path)  # put back the version 2 table and its reader/writer-only CHECK
    conn.executescript(
        "CREATE TABLE users_v2 (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE COLLATE NOCASE,"
        " password_hash TEXT, role TEXT NOT NULL CHECK (role IN ('reader', 'writer')),"
        " source TEXT NOT NULL DEFAULT 'local', email TEXT, token_version INTEGER NOT NULL DEFAULT 1,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL);"
        "INSERT INTO users_v2 SELECT * FROM users; DROP TABLE users; ALTER TABLE users_v2 RENAME TO users;"
    )
    conn.close()
    with AuthStore(path) as store:
        old = store.get_user_by_name("old")
        assert old is not None and old.role == "writer"
        assert store.set_role("old", "admin") and store.get_user_by_name("old").role == "admin"  # type: ignore[union-attr]
        store.add_user("new-admin", None, "admin")


@pytest.mark.integration
async def test_signin_while_redis_is_down_is_a_clear_503_then_works(
    aiohttp_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    auth_settings: Callable[..., Settings],
    redis_server: Any,
    redis_url: str,
) -> None:
    """The throttle counters live in Redis (REDIS_URL): while it is away the console says so and recovers."""
    settings = auth_settings(redis_url=redis_url, public_base_url="http://127.0.0.1")
    create_user(settings, "ada", role="admin")
    server: TestServer = await aiohttp_server(create_app(settings))
    console = Console(await aiohttp_client(server), settings, str(server.make_url("")).rstrip("/"))
    redis_server.stop()
    try:
        response = await console.sign_in("ada")
        text = await response.text()
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        assert "Sign-in is unavailable for a moment" in text and "Traceback" not in text
    finally:
        redis_server.start()
    for _ in range(100):  # the monitor notices within a fraction of a second
        response = await console.sign_in("ada")
        if response.status != 503:
            break
        await asyncio.sleep(0.1)
    assert response.status == 303, await response.text()
