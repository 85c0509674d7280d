"""Sign-in and token races, registration bounds and whole-body reads, against the real app on a real port.

Concurrency is real: many HTTP requests in flight at once (asyncio.gather) against the app's TCP server.
The caller's address comes from X-Forwarded-For (loopback is a trusted proxy by default).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from app import keys
from app.auth.store import AuthStore, store_path
from tests.fixtures.auth import (
    DEFAULT_PASSWORD,
    LOOPBACK_CB,
    DocumentServer,
    OAuth,
    hidden_fields,
    pkce,
    redirect_params,
)

# -- sign-in throttling ----------------------------------------------------------------------------


async def _pending_login(oauth: OAuth, client: dict[str, Any]) -> dict[str, str]:
    """One pending sign-in (its form fields); the TestClient keeps the browser cookie."""
    _, challenge = pkce()
    return hidden_fields(await oauth.login_page(oauth.authorize_query(client, challenge)))


async def _sign_in(oauth: OAuth, fields: dict[str, str], username: str, password: str, address: str) -> int:
    resp = await oauth.http.post(
        "/authorize",
        data={**fields, "action": "login", "username": username, "password": password},
        headers={"X-Forwarded-For": address},
        allow_redirects=False,
    )
    await resp.read()
    return resp.status


async def test_a_burst_of_wrong_passwords_evaluates_at_most_the_limit(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth(login_max_failures=5, login_lockout_seconds=300)
    client = await oauth.register()
    fields = await _pending_login(oauth, client)
    attacker = "203.0.113.10"
    attempts = [f"wrong-{n}" for n in range(101)]
    attempts.insert(80, DEFAULT_PASSWORD)  # the right one, in the middle of the burst
    statuses = await asyncio.gather(*(_sign_in(oauth, fields, "alice", pw, attacker) for pw in attempts))
    metrics = oauth.http.app[keys.METRICS]
    evaluated = [s for s in statuses if s != 429]
    assert len(evaluated) <= 5, statuses
    assert statuses[80] == 429  # the right password arrived while the pair was locked
    assert metrics.login_failures.labels("bad_password")._value.get() == 5
    assert metrics.login_failures.labels("throttled")._value.get() == len(attempts) - 5
    # Still locked afterwards, right password or not.
    assert await _sign_in(oauth, fields, "alice", DEFAULT_PASSWORD, attacker) == 429
    # The same user from their own address is not locked out by the attacker.
    assert await _sign_in(oauth, await _pending_login(oauth, client), "alice", DEFAULT_PASSWORD, "198.51.100.20") == 200


async def test_the_per_user_ceiling_slows_a_distributed_guesser_and_lets_the_user_in(
    make_oauth: Callable[..., Any],
) -> None:
    oauth = await make_oauth(login_max_failures=5, login_user_slow_after=8, login_user_slow_seconds=3)
    client = await oauth.register()
    fields = await _pending_login(oauth, client)
    # Eight addresses, one wrong guess each: no pair is locked, the user reaches the ceiling.
    statuses = await asyncio.gather(*(_sign_in(oauth, fields, "alice", "wrong", f"192.0.2.{n}") for n in range(8)))
    assert statuses == [401] * 8
    # Now a distributed burst: at most one attempt per slot is admitted (evaluated), the rest wait.
    started = time.monotonic()
    statuses = await asyncio.gather(
        *(_sign_in(oauth, fields, "alice", "wrong", f"192.0.2.{n}") for n in range(100, 130))
    )
    slots = 1 + int((time.monotonic() - started) / 3)
    assert statuses.count(401) <= slots and statuses.count(429) >= 30 - slots
    # The user from their own address: slowed, told to wait, never locked.
    own = await _pending_login(oauth, client)
    resp = await oauth.http.post(
        "/authorize",
        data={**own, "action": "login", "username": "alice", "password": DEFAULT_PASSWORD},
        headers={"X-Forwarded-For": "198.51.100.7"},
        allow_redirects=False,
    )
    assert resp.status == 429 and "Wait" in await resp.text()
    wait = int(resp.headers["Retry-After"])
    assert 1 <= wait <= 3
    await asyncio.sleep(wait + 0.2)
    assert await _sign_in(oauth, own, "alice", DEFAULT_PASSWORD, "198.51.100.7") == 200
    # From now on that address is known for alice: the guessers keep the ceiling up, she is not slowed.
    await asyncio.gather(*(_sign_in(oauth, fields, "alice", "wrong", f"192.0.2.{n}") for n in range(200, 210)))
    assert await _sign_in(oauth, await _pending_login(oauth, client), "alice", "wrong", "192.0.2.250") == 429
    assert await _sign_in(oauth, await _pending_login(oauth, client), "alice", DEFAULT_PASSWORD, "198.51.100.7") == 200
    # Other users are never slowed by alice's ceiling.
    assert await _sign_in(oauth, await _pending_login(oauth, client), "rita", DEFAULT_PASSWORD, "192.0.2.1") == 200


# -- refresh races ---------------------------------------------------------------------------------


async def _refresh(oauth: OAuth, client: dict[str, Any], refresh_token: str) -> tuple[int, dict[str, Any]]:
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": refresh_token})
    return resp.status, await resp.json()


@pytest.mark.parametrize("parallel", [2, 10])
async def test_concurrent_refreshes_within_the_leeway_all_succeed(
    make_oauth: Callable[..., Any], parallel: int
) -> None:
    oauth = await make_oauth()  # REFRESH_REUSE_LEEWAY_SECONDS default: 10
    client = await oauth.register()
    first = await oauth.tokens_for(client, "alice")
    results = await asyncio.gather(*(_refresh(oauth, client, first["refresh_token"]) for _ in range(parallel)))
    assert [status for status, _ in results] == [200] * parallel, results
    new_refresh = {body["refresh_token"] for _, body in results}
    assert len(new_refresh) == parallel  # each caller got its own valid pair, all in the same family
    for _, body in results:
        assert (await oauth.call(body["access_token"])).status == 200
    assert (await oauth.call(first["access_token"])).status == 200  # nothing revoked
    assert oauth.http.app[keys.METRICS].oauth_refresh_reuse._value.get() == 0
    # Every chain keeps working.
    for token in new_refresh:
        status, body = await _refresh(oauth, client, token)
        assert status == 200, body


async def test_a_refresh_after_the_leeway_is_reuse_and_revokes_the_family(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth(refresh_reuse_leeway_seconds=1)
    client = await oauth.register()
    first = await oauth.tokens_for(client, "alice")
    results = await asyncio.gather(*(_refresh(oauth, client, first["refresh_token"]) for _ in range(2)))
    assert [status for status, _ in results] == [200, 200]
    await asyncio.sleep(1.3)
    status, body = await _refresh(oauth, client, first["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant" and "revoked" in body["error_description"]
    assert oauth.http.app[keys.METRICS].oauth_refresh_reuse._value.get() == 1
    for _, pair in results:
        assert (await oauth.call(pair["access_token"])).status == 401
        assert (await _refresh(oauth, client, pair["refresh_token"]))[0] == 400


async def test_the_leeway_is_for_the_same_client_only(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth()
    client, other = await oauth.register(), await oauth.register()
    first = await oauth.tokens_for(client, "alice")
    assert (await _refresh(oauth, client, first["refresh_token"]))[0] == 200
    status, body = await _refresh(oauth, other, first["refresh_token"])
    assert status == 400 and "another client" in body["error_description"]


# -- request bodies in several TCP segments --------------------------------------------------------


async def _split_post(
    oauth: OAuth, path: str, body: bytes, content_type: str, extra_headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST with the head and the first half of the body in one write, the rest after a pause."""
    host, port = oauth.http.server.host, oauth.http.server.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    for name, value in (extra_headers or {}).items():
        head += f"{name}: {value}\r\n"
    writer.write(head.encode() + b"\r\n" + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(body[len(body) // 2 :])
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_split_bodies_are_read_whole_on_every_oauth_endpoint(oauth: OAuth) -> None:
    # /register (JSON)
    body = json.dumps(
        {
            "redirect_uris": [LOOPBACK_CB],
            "client_name": "Split client",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }
    ).encode()
    status, answer = await _split_post(oauth, "/register", body, "application/json")
    assert status == 201, answer
    client = json.loads(answer)
    # the sign-in form
    verifier, challenge = pkce()
    fields = hidden_fields(await oauth.login_page(oauth.authorize_query(client, challenge)))
    cookie = "; ".join(f"{c.key}={c.value}" for c in oauth.http.session.cookie_jar)
    form = urlencode({**fields, "action": "login", "username": "alice", "password": DEFAULT_PASSWORD}).encode()
    status, answer = await _split_post(
        oauth, "/authorize", form, "application/x-www-form-urlencoded", {"Cookie": cookie}
    )
    assert status == 200 and b"Allow" in answer, answer[:300]
    resp = await oauth.post_form("", hidden_fields(answer.decode()), action="consent", decision="allow")
    code = redirect_params(resp.headers["Location"])["code"]
    # /token (form)
    form = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": LOOPBACK_CB,
            "client_id": client["client_id"],
        }
    ).encode()
    status, answer = await _split_post(oauth, "/token", form, "application/x-www-form-urlencoded")
    assert status == 200, answer
    tokens = json.loads(answer)
    # /revoke (form): the refresh token really is revoked
    form = urlencode({"token": tokens["refresh_token"], "client_id": client["client_id"]}).encode()
    status, answer = await _split_post(oauth, "/revoke", form, "application/x-www-form-urlencoded")
    assert status == 200, answer
    assert (await oauth.call(tokens["access_token"])).status == 401


async def test_metadata_document_sent_in_two_chunks_is_read_whole(
    make_oauth: Callable[..., Any], cimd_server: DocumentServer
) -> None:
    oauth = await make_oauth(cimd_allow_private=True)
    url = cimd_server.url + "/chunked/client.json"
    cimd_server.serve_json(
        "/chunked/client.json",
        {
            "client_id": url,
            "client_name": "Chunked Client",
            "redirect_uris": [LOOPBACK_CB],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        headers={"X-Test-Chunk-Pause": "0.3"},
    )
    _, challenge = pkce()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": url,
            "redirect_uri": LOOPBACK_CB,
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    html = await oauth.login_page("/authorize?" + query)
    assert "Chunked Client" in html


# -- registration bounds ---------------------------------------------------------------------------


async def _register_from(oauth: OAuth, address: str, **metadata: Any) -> Any:
    body = {"redirect_uris": [LOOPBACK_CB], "client_name": "Rate test", **metadata}
    return await oauth.http.post("/register", json=body, headers={"X-Forwarded-For": address})


async def test_registrations_per_address_per_hour(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth(registrations_per_hour=3)
    # Ten at once from one address: exactly three get through (the count and the insert are one step).
    responses = await asyncio.gather(*(_register_from(oauth, "203.0.113.50") for _ in range(10)))
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] * 3 + [429] * 7
    refused = next(r for r in responses if r.status == 429)
    assert (await refused.json())["error"] == "invalid_client_metadata" and refused.headers["Retry-After"]
    # Another address is not affected.
    assert (await _register_from(oauth, "203.0.113.51")).status == 201


async def test_unused_registered_clients_expire(oauth: OAuth) -> None:
    unused, used = await oauth.register(), await oauth.register()
    await oauth.tokens_for(used, "alice")
    # A day and a bit later (UNUSED_CLIENT_SECONDS default 86400):
    with sqlite3.connect(store_path(oauth.settings.data_dir)) as db:
        db.execute("UPDATE clients SET created_at = created_at - 90000")
    _, challenge = pkce()
    resp = await oauth.http.get(oauth.authorize_query(unused, challenge), allow_redirects=False)
    assert resp.status == 400 and "not registered" in await resp.text()
    await oauth.login_page(oauth.authorize_query(used, challenge))  # a used client stays
    state = oauth.http.app[keys.AUTH_STORE]
    await state.store.call(AuthStore.cleanup, unused_client_seconds=oauth.settings.unused_client_seconds)
    assert await state.store.call(AuthStore.get_client, unused["client_id"]) is None
    assert await state.store.call(AuthStore.get_client, used["client_id"]) is not None


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.com%2f.chatgpt.com/cb",
        "https://evil.com%2F.chatgpt.com/cb",
        "https://evil%2ecom.chatgpt.com/cb",
        "https://evil.com%40chatgpt.com/cb",
        "https://evil.com%5c.chatgpt.com/cb",
        "https://evil.com%3f.chatgpt.com/cb",
        "https://evil.com%23.chatgpt.com/cb",
        "https://chatgpt.com%25/cb",
        "https://evil.com\\.chatgpt.com/cb",
        "https://evil.com@chatgpt.com/cb",
        "https://user:pw@chatgpt.com/cb",
        "https://evil.com\uff0f.chatgpt.com/cb",
        "http://127.0.0.1%2f@evil.com/cb",
    ],
)
async def test_redirect_uris_with_encoded_delimiters_in_the_host_are_refused(oauth: OAuth, uri: str) -> None:
    resp = await oauth.http.post("/register", json={"redirect_uris": [uri], "client_name": "x"})
    assert resp.status == 400, uri
    assert (await resp.json())["error"] == "invalid_redirect_uri"


async def test_plain_redirect_uris_still_register(oauth: OAuth) -> None:
    for uri in (
        "https://chatgpt.com/connector_platform_oauth_redirect",
        "https://claude.ai/api/mcp/auth_callback",
        "http://127.0.0.1:33418/callback?x=%2F",
    ):  # percent-encoding outside the host is fine
        resp = await oauth.http.post("/register", json={"redirect_uris": [uri]})
        assert resp.status == 201, (uri, await resp.text())
