"""MCP clients other than ChatGPT and Claude register and sign in with the redirect URIs they really use.

VS Code registers its web relay and a loopback port, Cursor its own private-use scheme (RFC 8252 §7.1),
MCP Inspector a loopback callback. Schemes the operator did not allow, and schemes that name the web,
files or script, are refused at registration.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.fixtures.auth import DEFAULT_PASSWORD, OAuth, hidden_fields, pkce

CLIENTS = {
    "VS Code": ["https://vscode.dev/redirect", "http://127.0.0.1:33418/"],
    "VS Code Insiders": ["https://insiders.vscode.dev/redirect"],
    "Cursor": ["cursor://anysphere.cursor-mcp/oauth/callback"],
    "MCP Inspector": ["http://localhost:6274/oauth/callback"],
}


@pytest.mark.parametrize("name", sorted(CLIENTS))
async def test_client_registers_with_its_redirect_uris(oauth: OAuth, name: str) -> None:
    client = await oauth.register(client_name=name, redirect_uris=CLIENTS[name], token_endpoint_auth_method="none")
    assert client["redirect_uris"] == CLIENTS[name]


@pytest.mark.parametrize(
    "uri",
    [
        "javascript:alert(1)",
        "data:text/html,hi",
        "file:///etc/passwd",
        "vscode://evil/callback",
        "cursor:",
        "cursor://user@host/cb",
        "cursor://evil.com%2f.x/cb",
        "CHROME://settings",
    ],
)
async def test_other_schemes_are_refused(oauth: OAuth, uri: str) -> None:
    resp = await oauth.http.post(
        "/register", json={"redirect_uris": [uri], "client_name": "x", "token_endpoint_auth_method": "none"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_redirect_uri"


async def test_no_private_use_scheme_when_the_operator_allows_none(make_oauth: Any) -> None:
    oauth = await make_oauth(allowed_redirect_schemes=())
    resp = await oauth.http.post(
        "/register",
        json={"redirect_uris": CLIENTS["Cursor"], "client_name": "Cursor", "token_endpoint_auth_method": "none"},
    )
    assert resp.status == 400 and "ALLOWED_REDIRECT_SCHEMES" in (await resp.json())["error_description"]


async def test_cursor_signs_in_and_gets_its_code_on_its_own_scheme(oauth: OAuth) -> None:
    redirect = CLIENTS["Cursor"][0]
    client = await oauth.register(client_name="Cursor", redirect_uris=[redirect], token_endpoint_auth_method="none")
    verifier, challenge = pkce()
    query = oauth.authorize_query(client, challenge, redirect_uri=redirect)
    html = await oauth.login_page(query)
    resp = await oauth.post_form("", hidden_fields(html), action="login", username="rita", password=DEFAULT_PASSWORD)
    consent = await resp.text()
    assert "cursor: app on this computer" in consent
    resp = await oauth.post_form("", hidden_fields(consent), action="consent", decision="allow")
    assert resp.status == 303
    location = urlsplit(resp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    code = parse_qs(location.query)["code"][0]
    token = await oauth.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect,
            "client_id": client["client_id"],
        },
    )
    assert token.status == 200, await token.text()
    assert (await token.json())["token_type"].lower() == "bearer"
