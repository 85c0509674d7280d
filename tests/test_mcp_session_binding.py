"""MCP sessions belong to the principal that opened them: the same user through the same OAuth client.

Real tokens from the real /token endpoint (sign-in pages included), the real app on a loopback port.
Another user's token on a session id gets exactly what an unknown id gets (404), for POST, GET and
DELETE on Streamable HTTP and for legacy SSE messages; the owner's refreshed token keeps working.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.fixtures.auth import OAuth
from tests.fixtures.sse import legacy_sse_stream

ACCEPT_BOTH = "application/json, text/event-stream"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "binding-test", "version": "1"},
    },
}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _headers(token: str | None, session_id: str | None = None, accept: str = ACCEPT_BOTH) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    return headers


async def _refresh(oauth: OAuth, client: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _initialize(oauth: OAuth, token: str | None, path: str = "/mcp") -> str:
    resp = await oauth.http.post(path, data=json.dumps(INITIALIZE), headers=_headers(token))
    assert resp.status == 200, await resp.text()
    session_id = resp.headers["Mcp-Session-Id"]
    resp = await oauth.http.post(
        path,
        data=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        headers=_headers(token, session_id),
    )
    assert resp.status == 202
    return session_id


async def _answer(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    text = await resp.text()
    return resp.status, json.loads(text) if resp.content_type == "application/json" else text


@pytest.fixture
async def signed_in(make_oauth: Any) -> dict[str, Any]:
    oauth = await make_oauth()
    claude = await oauth.register(client_name="Claude")
    other_client = await oauth.register(client_name="Another connector")
    return {
        "oauth": oauth,
        "client": claude,
        "alice": await oauth.tokens_for(claude, "alice"),
        "rita": await oauth.tokens_for(claude, "rita"),
        "alice_elsewhere": await oauth.tokens_for(other_client, "alice"),
    }


async def test_another_users_token_gets_404_on_a_streamable_session(signed_in: dict[str, Any]) -> None:
    oauth: OAuth = signed_in["oauth"]
    alice, rita = signed_in["alice"]["access_token"], signed_in["rita"]["access_token"]
    session_id = await _initialize(oauth, alice)
    unknown_post = await _answer(
        await oauth.http.post(
            "/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(rita, "no-such-session-" + "x" * 20)
        )
    )
    assert unknown_post[0] == 404

    for intruder in (rita, signed_in["alice_elsewhere"]["access_token"]):
        post = await _answer(
            await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(intruder, session_id))
        )
        assert post == unknown_post  # same status, same body: the session's existence is not revealed
        get = await oauth.http.get("/mcp", headers=_headers(intruder, session_id, accept="text/event-stream"))
        assert get.status == 404 and (await get.json())["error"]["message"] == unknown_post[1]["error"]["message"]
        delete = await oauth.http.delete("/mcp", headers=_headers(intruder, session_id))
        assert delete.status == 404
        cancel = await oauth.http.post(
            "/mcp",
            headers=_headers(intruder, session_id),
            data=json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}),
        )
        assert cancel.status == 404
        batch = await oauth.http.post("/mcp", data=json.dumps([TOOLS_LIST]), headers=_headers(intruder, session_id))
        assert batch.status == 404

    # The owner, with a refreshed token (new jti, same user and client), still has the session.
    refreshed = await _refresh(oauth, signed_in["client"], signed_in["alice"])
    assert refreshed["access_token"] != alice
    status, payload = await _answer(
        await oauth.http.post(
            "/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(refreshed["access_token"], session_id)
        )
    )
    assert status == 200 and payload["result"]["tools"], payload
    async with oauth.http.get(
        "/mcp", headers=_headers(refreshed["access_token"], session_id, accept="text/event-stream")
    ) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
    delete = await oauth.http.delete("/mcp", headers=_headers(refreshed["access_token"], session_id))
    assert delete.status == 204
    gone = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(alice, session_id))
    assert gone.status == 404


def _sse_stream(oauth: OAuth, token: str) -> Any:
    """Open GET /sse as the holder of `token`; yields (messages URL, queue of JSON-RPC messages)."""
    return legacy_sse_stream(oauth.http, "/sse", {"Authorization": f"Bearer {token}"})


async def test_another_users_token_gets_404_on_a_legacy_sse_session(signed_in: dict[str, Any]) -> None:
    oauth: OAuth = signed_in["oauth"]
    alice, rita = signed_in["alice"]["access_token"], signed_in["rita"]["access_token"]
    async with _sse_stream(oauth, alice) as (messages_url, inbox):
        unknown = await oauth.http.post(
            "/messages?session_id=no-such-session", data=json.dumps(TOOLS_LIST), headers=_headers(rita)
        )
        for intruder in (rita, signed_in["alice_elsewhere"]["access_token"]):
            resp = await oauth.http.post(messages_url, data=json.dumps(TOOLS_LIST), headers=_headers(intruder))
            assert resp.status == unknown.status == 404
            assert await resp.json() == await unknown.json()
            # The seed's alias (POST /sse?session_id=) is guarded the same way.
            alias = messages_url.replace("/messages", "/sse")
            resp = await oauth.http.post(alias, data=json.dumps(TOOLS_LIST), headers=_headers(intruder))
            assert resp.status == 404
        assert inbox.empty()  # nothing the intruders sent reached alice's stream

        refreshed = await _refresh(oauth, signed_in["client"], signed_in["alice"])
        for body in (INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, TOOLS_LIST):
            resp = await oauth.http.post(
                messages_url, data=json.dumps(body), headers=_headers(refreshed["access_token"])
            )
            assert resp.status == 202, await resp.text()
        answers = [await asyncio.wait_for(inbox.get(), 5) for _ in range(2)]
        assert [a["id"] for a in answers] == [1, 2] and answers[1]["result"]["tools"]


async def test_a_session_opened_without_a_token_is_claimed_by_the_first_signed_in_user(make_oauth: Any) -> None:
    # The testing switch: methods other than tools/call without a token; sign-in comes at the first call.
    oauth = await make_oauth(allow_unauth_methods=True)
    client = await oauth.register()
    alice = (await oauth.tokens_for(client, "alice"))["access_token"]
    rita = (await oauth.tokens_for(client, "rita"))["access_token"]
    session_id = await _initialize(oauth, None)
    resp = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(None, session_id))
    assert resp.status == 200
    resp = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(alice, session_id))
    assert resp.status == 200  # alice signed in on her session: it is hers now
    for intruder in (rita, None):
        resp = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(intruder, session_id))
        assert resp.status == 404

    # Opened by a signed-in user: a caller without a token never gets in, even with the switch on.
    owned = await _initialize(oauth, alice)
    resp = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(None, owned))
    assert resp.status == 404


async def test_concurrent_first_use_of_an_anonymous_session_has_one_winner(make_oauth: Any) -> None:
    oauth = await make_oauth(allow_unauth_methods=True)
    client = await oauth.register()
    tokens = {name: (await oauth.tokens_for(client, name))["access_token"] for name in ("alice", "rita")}
    session_id = await _initialize(oauth, None)
    callers = ["alice", "rita"] * 10

    async def post(name: str) -> int:
        resp = await oauth.http.post("/mcp", data=json.dumps(TOOLS_LIST), headers=_headers(tokens[name], session_id))
        return resp.status

    statuses = await asyncio.gather(*(post(name) for name in callers))
    by_user = {name: {s for n, s in zip(callers, statuses, strict=True) if n == name} for name in tokens}
    assert sorted(map(sorted, by_user.values())) == [[200], [404]], by_user  # one owner, the other shut out
