"""Client ID Metadata Documents: an https client_id whose document the server fetches (from a real TLS
server on loopback), with size/time limits and the private-address guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.fixtures.auth import LOOPBACK_CB, DocumentServer, OAuth, hidden_fields, pkce, redirect_params


def document(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": url,
        "client_name": "Metadata Client",
        "redirect_uris": [LOOPBACK_CB],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        **extra,
    }


def authorize_url(oauth: OAuth, client_id: str, challenge: str) -> str:
    return "/authorize?" + urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": LOOPBACK_CB,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": oauth.base + "/mcp",
        }
    )


async def test_metadata_document_client_signs_in_without_registration(
    make_oauth: Callable[..., Any], cimd_server: DocumentServer
) -> None:
    oauth = await make_oauth(cimd_allow_private=True)
    client_id = cimd_server.serve_json("/oauth/client.json", None)
    cimd_server.serve_json("/oauth/client.json", document(client_id))
    verifier, challenge = pkce()
    html = await oauth.login_page(authorize_url(oauth, client_id, challenge))
    assert "Metadata Client" in html
    resp = await oauth.post_form(
        "", hidden_fields(html), action="login", username="alice", password="correct-horse-battery"
    )
    consent = await resp.text()
    assert "identified by its web address at 127.0.0.1" in consent
    resp = await oauth.post_form("", hidden_fields(consent), action="consent", decision="allow")
    code = redirect_params(resp.headers["Location"])["code"]
    resp = await oauth.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": LOOPBACK_CB,
            "client_id": client_id,
        },
    )
    assert resp.status == 200, await resp.text()
    tokens = await resp.json()
    assert (await oauth.call(tokens["access_token"])).status == 200
    # Refresh works for the document client too (it is public: client_id only).
    resp = await oauth.http.post(
        "/token", data={"grant_type": "refresh_token", "client_id": client_id, "refresh_token": tokens["refresh_token"]}
    )
    assert resp.status == 200
    # The document is cached: a second authorization does not fetch it again.
    hits = len(cimd_server.hits)
    await oauth.login_page(authorize_url(oauth, client_id, challenge))
    assert len(cimd_server.hits) == hits


@pytest.mark.parametrize(
    ("name", "setup", "message"),
    [
        ("wrong client_id", lambda url: (200, document("https://127.0.0.1/elsewhere.json")), "different client_id"),
        ("secret inside", lambda url: (200, document(url, client_secret="x")), "client secret"),
        ("bad redirect", lambda url: (200, document(url, redirect_uris=["https://evil.example/cb"])), "not allowed"),
        (
            "confidential",
            lambda url: (200, document(url, token_endpoint_auth_method="client_secret_basic")),
            "public clients",
        ),
        ("not found", lambda url: (404, {"error": "nope"}), "HTTP 404"),
        ("redirected", lambda url: (302, {}), "HTTP 302"),
        ("too big", lambda url: (200, document(url, client_name="x" * 20_000)), "too large"),
        ("not an object", lambda url: (200, ["a"]), "not a JSON object"),
    ],
)
async def test_unusable_documents_get_an_error_page(
    make_oauth: Callable[..., Any],
    cimd_server: DocumentServer,
    name: str,
    setup: Callable[[str], tuple[int, Any]],
    message: str,
) -> None:
    oauth = await make_oauth(cimd_allow_private=True)
    url = cimd_server.url + "/client.json"
    status, doc = setup(url)
    cimd_server.serve_json(
        "/client.json", doc, status=status, headers={"Location": "https://127.0.0.1/x"} if status == 302 else None
    )
    _, challenge = pkce()
    resp = await oauth.http.get(authorize_url(oauth, url, challenge), allow_redirects=False)
    assert resp.status == 400, name
    assert "Location" not in resp.headers
    assert message in await resp.text(), name


async def test_slow_document_servers_time_out(
    make_oauth: Callable[..., Any], cimd_server: DocumentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.auth.cimd.FETCH_TIMEOUT_SECONDS", 0.3)
    oauth = await make_oauth(cimd_allow_private=True)
    url = cimd_server.url + "/slow.json"
    cimd_server.serve_json("/slow.json", document(url), headers={"X-Test-Delay": "1.5"})
    _, challenge = pkce()
    resp = await oauth.http.get(authorize_url(oauth, url, challenge), allow_redirects=False)
    assert resp.status == 400 and "could not be fetched" in await resp.text()


async def test_private_addresses_are_not_fetched_unless_allowed(
    make_oauth: Callable[..., Any], cimd_server: DocumentServer
) -> None:
    oauth = await make_oauth()  # CIMD_ALLOW_PRIVATE_ADDRESSES off (the default)
    _, challenge = pkce()
    for host in ("127.0.0.1", "localhost"):
        port = cimd_server.url.rsplit(":", 1)[1]
        url = f"https://{host}:{port}/client.json"
        cimd_server.serve_json("/client.json", document(url))
        resp = await oauth.http.get(authorize_url(oauth, url, challenge), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers
    assert cimd_server.hits == []  # the guard stopped the connection before it was made
    for bad in ("http://127.0.0.1/client.json", "https://example.com/", "https://user@example.com/c.json"):
        resp = await oauth.http.get(authorize_url(oauth, bad, challenge), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers


async def test_token_endpoint_refuses_documents_never_seen_at_authorize(oauth: OAuth) -> None:
    resp = await oauth.http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "rt_x",
            "client_id": "https://client.example/never-used.json",
        },
    )
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"
