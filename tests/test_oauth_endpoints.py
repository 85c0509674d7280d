"""The OAuth endpoints and the bearer check on the real app, driven over HTTP.

A tiny route (`/_test/mcp`, `/chatgpt/_test/mcp`) calls the app's Authenticator exactly as the MCP
transports do, so the resource-server side is tested without depending on the MCP layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from app import keys
from app.auth.store import store_path
from app.settings import Settings
from app.web import create_app
from tests.fixtures.auth import (
    CLAUDE_CB,
    DEFAULT_PASSWORD,
    LOOPBACK_CB,
    OAuth,
    basic,
    build_app,
    create_user,
    hidden_fields,
    mint_token,
    pkce,
    redirect_params,
)

# -- discovery -------------------------------------------------------------------------------------


async def test_discovery_at_root_and_under_chatgpt_names_the_right_issuer(oauth: OAuth) -> None:
    base = oauth.base
    for path, issuer in [
        ("/.well-known/oauth-authorization-server", base),
        ("/.well-known/openid-configuration", base),
        ("/.well-known/oauth-authorization-server/chatgpt", base + "/chatgpt"),
        ("/.well-known/openid-configuration/chatgpt", base + "/chatgpt"),
        ("/chatgpt/.well-known/oauth-authorization-server", base + "/chatgpt"),
        ("/chatgpt/.well-known/openid-configuration", base + "/chatgpt"),
    ]:
        resp = await oauth.http.get(path)
        assert resp.status == 200, path
        doc = await resp.json()
        assert doc["issuer"] == issuer, path
        assert doc["authorization_endpoint"] == issuer + "/authorize"
        assert doc["token_endpoint"] == issuer + "/token"
        assert doc["registration_endpoint"] == issuer + "/register"
        assert doc["revocation_endpoint"] == issuer + "/revoke"
        assert doc["response_types_supported"] == ["code"]
        assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert {"none", "client_secret_post", "client_secret_basic"} <= set(
            doc["token_endpoint_auth_methods_supported"]
        )
        assert doc["client_id_metadata_document_supported"] is True
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert doc["scopes_supported"] == ["mcp:read", "mcp:write"]
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    jwks = await (await oauth.http.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["kty"] == "EC" and "d" not in jwks["keys"][0]


async def test_protected_resource_metadata_for_every_endpoint(oauth: OAuth) -> None:
    base = oauth.base
    for path, resource, server in [
        ("/.well-known/oauth-protected-resource", base, base),
        ("/.well-known/oauth-protected-resource/mcp", base + "/mcp", base),
        ("/.well-known/oauth-protected-resource/sse", base + "/sse", base),
        ("/.well-known/oauth-protected-resource/chatgpt/mcp", base + "/chatgpt/mcp", base + "/chatgpt"),
        ("/.well-known/oauth-protected-resource/chatgpt/sse", base + "/chatgpt/sse", base + "/chatgpt"),
    ]:
        doc = await (await oauth.http.get(path)).json()
        assert doc["resource"] == resource and doc["authorization_servers"][0] == server, path
        assert doc["bearer_methods_supported"] == ["header"]
        assert "mcp:read" in doc["scopes_supported"]
    resp = await oauth.http.get("/.well-known/oauth-protected-resource/nope")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_seed_quirk_redirects(oauth: OAuth) -> None:
    base = oauth.base
    for path, target in [
        ("/.well-known/oauth-authorization-server/chatgpt/sse", "/chatgpt/.well-known/oauth-authorization-server"),
        ("/.well-known/openid-configuration/chatgpt/sse", "/chatgpt/.well-known/openid-configuration"),
        ("/.well-known/oauth-authorization-server/mcp", "/.well-known/oauth-authorization-server"),
        ("/chatgpt/sse/.well-known/oauth-authorization-server", "/chatgpt/.well-known/oauth-authorization-server"),
        ("/chatgpt/sse/.well-known/openid-configuration", "/chatgpt/.well-known/openid-configuration"),
        ("/chatgpt/sse/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/chatgpt/sse"),
        ("/mcp/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"),
    ]:
        resp = await oauth.http.get(path, allow_redirects=False)
        assert resp.status == 307 and resp.headers["Location"] == base + target, path
        followed = await oauth.http.get(path)
        assert followed.status == 200


async def test_issuer_follows_trusted_proxy_headers_only(make_oauth: Callable[..., Any]) -> None:
    trusted = await make_oauth()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "db.example.com", "X-Environment-Path": "/prod"}
    doc = await (await trusted.http.get("/.well-known/oauth-authorization-server/chatgpt", headers=headers)).json()
    assert doc["issuer"] == "https://db.example.com/prod/chatgpt"
    prm = await (await trusted.http.get("/.well-known/oauth-protected-resource/mcp", headers=headers)).json()
    assert prm == {
        **prm,
        "resource": "https://db.example.com/prod/mcp",
        "authorization_servers": ["https://db.example.com/prod"],
    }
    # A proxy forwarding the root well-known path unchanged leaves its prefix in the path.
    prm = await (await trusted.http.get("/.well-known/oauth-protected-resource/prod/mcp", headers=headers)).json()
    assert prm["resource"] == "https://db.example.com/prod/mcp"
    untrusted = await make_oauth(trusted_proxies=())
    doc = await (await untrusted.http.get("/.well-known/oauth-authorization-server", headers=headers)).json()
    assert doc["issuer"] == untrusted.base
    configured = await make_oauth(public_base_url="https://mcp.example.org")
    doc = await (await configured.http.get("/.well-known/oauth-authorization-server", headers=headers)).json()
    assert doc["issuer"] == "https://mcp.example.org"


# -- registration ----------------------------------------------------------------------------------


async def test_registration_returns_credentials_and_stores_only_a_hash(oauth: OAuth) -> None:
    client = await oauth.register(
        redirect_uris=[
            "https://chatgpt.com/connector_platform_oauth_redirect",
            "https://chatgpt.com/connector/oauth/x1",
        ]
    )
    assert client["client_id"] and client["client_secret"] and client["client_secret_expires_at"] == 0
    assert client["token_endpoint_auth_method"] == "client_secret_basic"
    public = await oauth.register(token_endpoint_auth_method="none", redirect_uris=[CLAUDE_CB])
    assert "client_secret" not in public
    path = store_path(oauth.settings.data_dir)
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT secret_hash FROM clients WHERE client_id = ?", (client["client_id"],)).fetchone()
    assert stored[0] == hashlib.sha256(client["client_secret"].encode()).hexdigest()
    for file in path.parent.glob(path.name + "*"):  # the database and its WAL
        assert client["client_secret"].encode() not in file.read_bytes()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"redirect_uris": ["https://chatgpt.com.evil.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://evil.com/chatgpt.com"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://claude.ai@evil.com/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://claude.ai/api/mcp/auth_callback"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://claude.ai/api/mcp/auth_callback#x"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://claude.ai/api/mcp/auth_callback"}, "invalid_redirect_uri"),
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": [CLAUDE_CB], "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"redirect_uris": [CLAUDE_CB], "grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"redirect_uris": [CLAUDE_CB], "response_types": ["token"]}, "invalid_client_metadata"),
        ({"redirect_uris": [CLAUDE_CB], "token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({"redirect_uris": [CLAUDE_CB], "client_name": 42}, "invalid_client_metadata"),
        ([CLAUDE_CB], "invalid_client_metadata"),
    ],
)
async def test_registration_errors_are_rfc7591_shaped(oauth: OAuth, body: Any, error: str) -> None:
    resp = await oauth.http.post("/register", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"] == error


async def test_registration_rejects_malformed_and_oversized_bodies(oauth: OAuth) -> None:
    for body in (b"{not json", b"[" * 60_000, b"\xff\xfe"):
        resp = await oauth.http.post("/register", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_client_metadata"
    big = json.dumps({"redirect_uris": [CLAUDE_CB], "client_name": "x" * 200_000})
    resp = await oauth.http.post("/register", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"] == "invalid_request"


# -- authorize: sign-in and consent ----------------------------------------------------------------


async def test_login_and_consent_pages(oauth: OAuth) -> None:
    client = await oauth.register(client_name="<script>alert(1)</script> Connector")
    _, challenge = pkce()
    html = await oauth.login_page(oauth.authorize_query(client, challenge))
    assert "name=username" in html and "name=password" in html and "<script>" not in html
    assert "&lt;script&gt;" in html
    resp = await oauth.post_form("", hidden_fields(html), action="login", username="alice", password=DEFAULT_PASSWORD)
    consent = await resp.text()
    assert resp.status == 200 and resp.headers["X-Frame-Options"] == "DENY"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Connector" in consent
    assert "127.0.0.1:43123" in consent and "alice" in consent
    assert "change data" in consent  # a writer is offered mcp:write
    resp = await oauth.post_form("", hidden_fields(consent), action="consent", decision="allow")
    location = resp.headers["Location"]
    assert resp.status == 303 and location.startswith(LOOPBACK_CB + "?")
    params = redirect_params(location)
    assert params["state"] == "st-123" and params["iss"] == oauth.base and params["code"]


async def test_reader_is_offered_read_access_only(oauth: OAuth) -> None:
    client = await oauth.register()
    tokens = await oauth.tokens_for(client, "rita")
    assert tokens["scope"] == "mcp:read"
    body = await (await oauth.call(tokens["access_token"])).json()
    assert body["role"] == "reader" and body["scopes"] == ["mcp:read"]


async def test_deny_sends_access_denied_back(oauth: OAuth) -> None:
    client = await oauth.register()
    _, challenge = pkce()
    html = await oauth.login_page(oauth.authorize_query(client, challenge, "/chatgpt"))
    resp = await oauth.post_form(
        "/chatgpt", hidden_fields(html), action="login", username="alice", password=DEFAULT_PASSWORD
    )
    resp = await oauth.post_form("/chatgpt", hidden_fields(await resp.text()), action="consent", decision="deny")
    params = redirect_params(resp.headers["Location"])
    assert resp.status == 303 and params["error"] == "access_denied"
    assert params["iss"] == oauth.base + "/chatgpt" and params["state"] == "st-123"


async def test_authorize_never_redirects_to_an_unchecked_uri(oauth: OAuth) -> None:
    client = await oauth.register()
    _, challenge = pkce()
    for query in [
        {"client_id": "unknown-client"},
        {"client_id": client["client_id"], "redirect_uri": "https://evil.example/cb"},
        {"client_id": client["client_id"], "redirect_uri": "http://127.0.0.1:43123/other"},
        {"client_id": ""},
    ]:
        params = {"response_type": "code", "code_challenge": challenge, "code_challenge_method": "S256", **query}
        resp = await oauth.http.get("/authorize?" + urlencode(params), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers
        assert "text/html" in resp.headers["Content-Type"]
    resp = await oauth.http.get(f"/authorize?client_id={client['client_id']}&client_id=x", allow_redirects=False)
    assert resp.status == 400 and "Location" not in resp.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"resource": "https://other.example/mcp"}, "invalid_target"),
        ({"scope": 'mcp:read "bad'}, "invalid_scope"),
        ({"prompt": "none"}, "login_required"),
    ],
)
async def test_authorize_errors_go_back_to_the_registered_redirect(
    oauth: OAuth, change: dict[str, Any], error: str
) -> None:
    client = await oauth.register()
    _, challenge = pkce()
    resp = await oauth.http.get(oauth.authorize_query(client, challenge, **change), allow_redirects=False)
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith(LOOPBACK_CB + "?")
    params = redirect_params(location)
    assert params["error"] == error and params["state"] == "st-123" and params["iss"] == oauth.base


async def test_loopback_redirect_may_use_another_port(oauth: OAuth) -> None:
    client = await oauth.register()
    other_port = "http://127.0.0.1:50001/callback"
    code, verifier, params = await oauth.code_for(client, "alice", redirect_uri=other_port)
    assert params["location"].startswith(other_port + "?")
    resp = await oauth.token(
        client,
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": LOOPBACK_CB},
    )
    assert resp.status == 400  # the code is bound to the redirect actually used
    code, verifier, _ = await oauth.code_for(client, "alice", redirect_uri=other_port)
    resp = await oauth.token(
        client,
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": other_port},
    )
    assert resp.status == 200


async def test_forms_need_the_csrf_token_and_the_browser_cookie(oauth: OAuth) -> None:
    client = await oauth.register()
    _, challenge = pkce()
    fields = hidden_fields(await oauth.login_page(oauth.authorize_query(client, challenge)))
    resp = await oauth.post_form(
        "", {**fields, "csrf_token": "forged"}, action="login", username="alice", password=DEFAULT_PASSWORD
    )
    assert resp.status == 403
    oauth.http.session.cookie_jar.clear()
    resp = await oauth.post_form("", fields, action="login", username="alice", password=DEFAULT_PASSWORD)
    assert resp.status == 403
    resp = await oauth.post_form("", {"request_id": "nope", "csrf_token": "x"}, action="login")
    assert resp.status == 400
    resp = await oauth.http.post("/authorize", data=b"{}", headers={"Content-Type": "application/json"})
    assert resp.status == 415


async def test_failed_sign_ins_are_throttled_per_user_and_per_address(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth(login_max_failures=3, login_lockout_seconds=60)
    client = await oauth.register()

    async def attempt(username: str, password: str, address: str) -> int:
        _, challenge = pkce()
        fields = hidden_fields(await oauth.login_page(oauth.authorize_query(client, challenge)))
        resp = await oauth.http.post(
            "/authorize",
            data={**fields, "action": "login", "username": username, "password": password},
            headers={"X-Forwarded-For": address},
            allow_redirects=False,
        )
        return resp.status

    for _ in range(3):
        assert await attempt("alice", "wrong-password", "203.0.113.1") == 401
    # Locked for this user from this address: even the right password is refused.
    assert await attempt("alice", DEFAULT_PASSWORD, "203.0.113.1") == 429
    # The same user from another address is not locked out by someone else's guesses.
    assert await attempt("alice", DEFAULT_PASSWORD, "203.0.113.2") == 200
    # Other users from the first address are unaffected (its own bound is LOGIN_ADDRESS_MAX_FAILURES).
    assert await attempt("rita", DEFAULT_PASSWORD, "203.0.113.1") == 200
    metrics = oauth.http.app[keys.METRICS]
    assert metrics.login_failures.labels("bad_password")._value.get() == 3
    assert metrics.login_failures.labels("throttled")._value.get() == 1


# -- token endpoint --------------------------------------------------------------------------------


async def test_code_exchange_issues_a_bound_jwt_and_a_refresh_token(oauth: OAuth) -> None:
    client = await oauth.register()
    code, verifier, _ = await oauth.code_for(client, "alice")
    resp = await oauth.token(
        client,
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": LOOPBACK_CB},
    )
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    tokens = await resp.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["refresh_token"].startswith("rt_") and tokens["scope"] == "mcp:read mcp:write"
    header, claims = (
        json.loads(base64.urlsafe_b64decode(part + "==")) for part in tokens["access_token"].split(".")[:2]
    )
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    assert claims["aud"] == oauth.base + "/mcp" and claims["iss"] == oauth.base
    assert claims["exp"] - claims["iat"] == 3600
    body = await (await oauth.call(tokens["access_token"])).json()
    assert body == {
        "username": "alice",
        "role": "writer",
        "scopes": ["mcp:read", "mcp:write"],
        "authenticated": True,
        "client_id": client["client_id"],
    }
    # Bound to the Claude endpoints: refused on the ChatGPT prefix.
    resp = await oauth.call(tokens["access_token"], "/chatgpt/_test/mcp")
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_token_endpoint_accepts_json_and_client_secret_post(oauth: OAuth) -> None:
    client = await oauth.register(token_endpoint_auth_method="client_secret_post")
    code, verifier, _ = await oauth.code_for(client, "alice", realm="/chatgpt")
    resp = await oauth.http.post(
        "/chatgpt/token",
        json={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": LOOPBACK_CB,
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    assert (await oauth.call(token, "/chatgpt/_test/mcp")).status == 200
    assert (await oauth.call(token, "/_test/mcp")).status == 401


async def test_public_client_with_pkce_only(oauth: OAuth) -> None:
    client = await oauth.register(token_endpoint_auth_method="none")
    tokens = await oauth.tokens_for(client, "alice")
    assert (await oauth.call(tokens["access_token"])).status == 200
    resp = await oauth.http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "client_id": client["client_id"],
            "client_secret": "made-up",
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"


async def test_codes_are_single_use_and_reuse_revokes_what_they_gave(oauth: OAuth) -> None:
    client = await oauth.register()
    code, verifier, _ = await oauth.code_for(client, "alice")
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": LOOPBACK_CB}
    first = await (await oauth.token(client, data)).json()
    resp = await oauth.token(client, data)
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    assert (await oauth.call(first["access_token"])).status == 401
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert resp.status == 400


async def test_expired_code_is_refused(oauth: OAuth) -> None:
    client = await oauth.register()
    code, verifier, _ = await oauth.code_for(client, "alice")
    with sqlite3.connect(store_path(oauth.settings.data_dir)) as db:
        db.execute("UPDATE auth_codes SET expires_at = ?", (time.time() - 1,))
    resp = await oauth.token(client, {"grant_type": "authorization_code", "code": code, "code_verifier": verifier})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"code_verifier": "x" * 43}, 400, "invalid_grant"),
        ({"code_verifier": None}, 400, "invalid_request"),
        ({"code": "made-up"}, 400, "invalid_grant"),
        ({"code": None}, 400, "invalid_request"),
        ({"redirect_uri": "http://127.0.0.1:43123/elsewhere"}, 400, "invalid_grant"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": None}, 400, "invalid_request"),
        ({"resource": "https://other.example/mcp"}, 400, "invalid_target"),
    ],
)
async def test_token_request_errors(oauth: OAuth, change: dict[str, Any], status: int, error: str) -> None:
    client = await oauth.register()
    code, verifier, _ = await oauth.code_for(client, "alice")
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": LOOPBACK_CB}
    data = {k: v for k, v in {**data, **change}.items() if v is not None}
    resp = await oauth.token(client, data)
    assert resp.status == status
    assert (await resp.json())["error"] == error
    assert resp.headers["Cache-Control"] == "no-store"


async def test_client_authentication_failures_are_invalid_client_401(oauth: OAuth) -> None:
    client = await oauth.register()
    data = {"grant_type": "refresh_token", "refresh_token": "rt_whatever"}
    for headers, body in [
        (basic("unknown-client", "x"), data),
        (basic(client["client_id"], "wrong-secret"), data),
        ({"Authorization": "Basic !!notbase64"}, data),
        ({"Authorization": "Bearer abc"}, data),
        ({}, {**data, "client_id": "unknown-client"}),
        ({}, {**data, "client_id": client["client_id"]}),  # confidential client without its secret
        ({}, data),
    ]:
        resp = await oauth.http.post("/token", data=body, headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"] == "invalid_client"
    resp = await oauth.http.post(
        "/token", data={**data, "client_secret": "x"}, headers=basic(client["client_id"], client["client_secret"])
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_request"


async def test_token_endpoint_rejects_malformed_bodies(oauth: OAuth) -> None:
    for body, ctype, status in [
        (b"{bad json", "application/json", 400),
        (b"[1,2]", "application/json", 400),
        (b"[" * 60_000, "application/json", 400),  # nesting deep enough to exhaust a recursive parser
        (b"grant_type=refresh_token&grant_type=authorization_code", "application/x-www-form-urlencoded", 400),
        (b"<xml/>", "text/xml", 400),
        (b"\xff\xfe\xfd", "application/x-www-form-urlencoded", 400),
        (b"grant_type=refresh_token&refresh_token=" + b"a" * 70_000, "application/x-www-form-urlencoded", 413),
    ]:
        resp = await oauth.http.post("/token", data=body, headers={"Content-Type": ctype})
        assert resp.status == status, body[:40]
        assert (await resp.json())["error"] == "invalid_request"


async def test_refresh_rotates_and_reuse_revokes_the_family(make_oauth: Callable[..., Any]) -> None:
    oauth = await make_oauth(refresh_reuse_leeway_seconds=0)  # no leeway: the very next reuse counts
    client = await oauth.register()
    first = await oauth.tokens_for(client, "alice")
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    second = await resp.json()
    assert resp.status == 200 and second["refresh_token"] != first["refresh_token"]
    assert (await oauth.call(second["access_token"])).status == 200
    # The old refresh token is presented again (stolen copy): everything of this sign-in stops working.
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert resp.status == 400
    assert (await oauth.call(second["access_token"])).status == 401
    assert (await oauth.call(first["access_token"])).status == 401
    assert oauth.http.app[keys.METRICS].oauth_refresh_reuse._value.get() == 1


async def test_refresh_can_narrow_but_not_widen(oauth: OAuth) -> None:
    client = await oauth.register()
    tokens = await oauth.tokens_for(client, "rita")
    resp = await oauth.token(
        client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "mcp:read mcp:write"}
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_scope"
    resp = await oauth.token(
        client,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "resource": oauth.base + "/chatgpt/mcp",
        },
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_target"
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": "rt_made-up"})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"


# -- revocation ------------------------------------------------------------------------------------


async def test_revoking_a_refresh_token_ends_the_sign_in(oauth: OAuth) -> None:
    client = await oauth.register()
    tokens = await oauth.tokens_for(client, "alice")
    resp = await oauth.http.post(
        "/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        headers=basic(client["client_id"], client["client_secret"]),
    )
    assert resp.status == 200
    assert (await oauth.call(tokens["access_token"])).status == 401
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"


async def test_revoking_an_access_token(oauth: OAuth) -> None:
    client = await oauth.register(token_endpoint_auth_method="none")
    other = await oauth.register(token_endpoint_auth_method="none")
    tokens = await oauth.tokens_for(client, "alice")
    # Another client cannot revoke it (and learns nothing: still 200).
    resp = await oauth.http.post("/revoke", data={"token": tokens["access_token"], "client_id": other["client_id"]})
    assert resp.status == 200
    assert (await oauth.call(tokens["access_token"])).status == 200
    resp = await oauth.http.post("/revoke", data={"token": tokens["access_token"], "client_id": client["client_id"]})
    assert resp.status == 200
    resp = await oauth.call(tokens["access_token"])
    assert resp.status == 401 and "revoked" in resp.headers["WWW-Authenticate"]
    for data, status in [
        ({"token": "garbage", "client_id": client["client_id"]}, 200),
        ({"client_id": client["client_id"]}, 400),
        ({"token": "x", "client_id": "unknown"}, 401),
        ({"token": "x", "client_id": client["client_id"], "token_type_hint": "id_token"}, 400),
    ]:
        assert (await oauth.http.post("/revoke", data=data)).status == status


# -- the bearer check ------------------------------------------------------------------------------


async def test_no_token_gets_a_discovery_challenge(oauth: OAuth) -> None:
    resp = await oauth.call(None)
    challenge = resp.headers["WWW-Authenticate"]
    assert resp.status == 401
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{oauth.base}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert 'scope="mcp:read mcp:write"' in challenge and "error=" not in challenge
    resp = await oauth.call(None, "/chatgpt/_test/mcp")
    assert "/.well-known/oauth-protected-resource/chatgpt/mcp" in resp.headers["WWW-Authenticate"]


async def test_tokens_that_must_be_refused(oauth: OAuth, tmp_path: Any) -> None:
    s, base = oauth.settings, oauth.base
    good = mint_token(s, base, username="alice")
    assert (await oauth.call(good)).status == 200
    foreign_settings = s.replace(data_dir=str(tmp_path / "elsewhere"))
    cases = {
        "expired": mint_token(s, base, username="alice", ttl=-120),
        "forged (another server's key)": mint_token(foreign_settings, base, username="alice"),
        "tampered": good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB"),
        "wrong audience": mint_token(s, base, username="alice", resource="https://elsewhere.example/mcp"),
        "other prefix": mint_token(s, base, username="alice", resource=base + "/chatgpt/mcp"),
        "wrong issuer": mint_token(s, "https://evil.example", username="alice", resource=base + "/mcp"),
        "not a jwt": "opaque-token",
    }
    for name, token in cases.items():
        resp = await oauth.call(token)
        assert resp.status == 401, name
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], name
        assert "resource_metadata=" in resp.headers["WWW-Authenticate"], name
    resp = await oauth.http.post("/_test/mcp?access_token=" + good, json={})
    assert resp.status == 401 and 'error="invalid_request"' in resp.headers["WWW-Authenticate"]
    resp = await oauth.http.post("/_test/mcp", json={}, headers={"Authorization": "Basic " + good})
    assert resp.status == 401
    resp = await oauth.call(mint_token(s, base, username="alice", scope="profile"))
    assert resp.status == 403
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert 'scope="mcp:read"' in resp.headers["WWW-Authenticate"]
    reasons = oauth.http.app[keys.METRICS].bearer_rejections
    assert reasons.labels("expired")._value.get() == 1 and reasons.labels("wrong_audience")._value.get() == 2


async def test_removed_users_and_changed_passwords_stop_tokens(oauth: OAuth) -> None:
    from app.auth.cli import users_main

    client = await oauth.register()
    alice = await oauth.tokens_for(client, "alice")
    rita = await oauth.tokens_for(client, "rita")
    import io

    users_main(
        oauth.settings,
        ["passwd", "alice", "--password-stdin"],
        stdin=io.StringIO("brand-new-pass\n"),
        stdout=io.StringIO(),
    )
    assert (await oauth.call(alice["access_token"])).status == 401
    resp = await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": alice["refresh_token"]})
    assert resp.status == 400
    users_main(oauth.settings, ["remove", "rita"], stdout=io.StringIO())
    assert (await oauth.call(rita["access_token"])).status == 401


async def test_role_drop_takes_effect_on_the_next_request(oauth: OAuth) -> None:
    import io

    from app.auth.cli import users_main

    client = await oauth.register()
    tokens = await oauth.tokens_for(client, "alice")
    assert (await (await oauth.call(tokens["access_token"])).json())["role"] == "writer"
    users_main(oauth.settings, ["role", "alice", "reader"], stdout=io.StringIO())
    assert (await (await oauth.call(tokens["access_token"])).json())["role"] == "reader"
    refreshed = await (
        await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    ).json()
    assert refreshed["scope"] == "mcp:read"


@pytest.mark.parametrize(
    ("flags", "allowed", "refused"),
    [
        (
            {"allow_unauth_methods": True},
            [["initialize"], ["tools/list"], []],
            [["tools/call"], ["tools/list", "tools/call"]],
        ),
        ({"allow_unauth_tools_call": True}, [["tools/call"]], [["initialize"], []]),
        ({"allow_unauth_methods": True, "allow_unauth_tools_call": True}, [["tools/call", "initialize"], []], []),
    ],
)
async def test_unauthenticated_switches_keep_their_seed_meaning(
    make_oauth: Callable[..., Any],
    captured_logs: Any,
    flags: dict[str, bool],
    allowed: list[list[str]],
    refused: list[list[str]],
) -> None:
    oauth = await make_oauth(**flags)
    warnings = captured_logs.events("auth.UNAUTHENTICATED_ACCESS_ENABLED")
    assert warnings and all(w["level"] == "warning" for w in warnings)
    assert len(warnings) == len(flags)
    for methods in allowed:
        resp = await oauth.call(None, methods=methods)
        assert resp.status == 200, methods
        assert (await resp.json())["authenticated"] is False
    for methods in refused:
        assert (await oauth.call(None, methods=methods)).status == 401, methods
    # A token that is presented is still checked.
    assert (await oauth.call("not-a-token", methods=["initialize"])).status == 401


# -- persistence and logs ---------------------------------------------------------------------------


async def test_restart_keeps_clients_users_keys_and_refresh_tokens(
    auth_settings: Callable[..., Settings], aiohttp_client: Any
) -> None:
    settings = auth_settings()
    create_user(settings, "alice", role="writer")
    first = OAuth(await aiohttp_client(build_app(settings)), settings)
    client = await first.register()
    tokens = await first.tokens_for(client, "alice")
    await first.http.close()
    second = OAuth(await aiohttp_client(build_app(settings)), settings)
    # Tokens are bound to the URL; the restarted server listens on a new port, so re-mint the check
    # against the same keys by refreshing at the new server (the client and the family are remembered).
    resp = await second.http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(client["client_id"], client["client_secret"]),
    )
    assert resp.status == 200, await resp.text()
    refreshed = await resp.json()
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    # Keys survived: the JWKS is the same and a token signed before the restart still verifies.
    jwks_first_kid = json.loads(base64.urlsafe_b64decode(tokens["access_token"].split(".")[0] + "=="))["kid"]
    jwks = await (await second.http.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]] == [jwks_first_kid]
    # The user can sign in again, for the same registered client.
    await second.tokens_for(client, "alice")


async def test_nothing_secret_reaches_the_logs(
    oauth: OAuth, captured_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await oauth.register()
    code, verifier, _ = await oauth.code_for(client, "alice")
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": LOOPBACK_CB,
    }
    tokens = await (await oauth.token(client, exchange)).json()
    await oauth.token(client, exchange)
    await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    await oauth.token(client, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    _, challenge = pkce()
    fields = hidden_fields(await oauth.login_page(oauth.authorize_query(client, challenge)))
    await oauth.post_form("", fields, action="login", username="alice", password="typo-" + DEFAULT_PASSWORD)
    await oauth.post_form("", fields, action="login", username=DEFAULT_PASSWORD, password=DEFAULT_PASSWORD)
    await oauth.call(tokens["access_token"])
    await oauth.http.post("/_test/mcp?access_token=" + tokens["access_token"], json={})
    await oauth.http.post(
        "/revoke", data={"token": tokens["access_token"]}, headers=basic(client["client_id"], client["client_secret"])
    )
    secrets_used = [
        DEFAULT_PASSWORD,
        client["client_secret"],
        code,
        verifier,
        tokens["access_token"],
        tokens["refresh_token"],
        fields["csrf_token"],
    ]
    for text in (captured_logs.text, caplog.text):
        assert "oauth.token_issued" in text
        for secret in secrets_used:
            assert secret not in text
        assert tokens["access_token"].split(".")[2] not in text


async def test_upstream_settings_are_validated(auth_settings: Callable[..., Settings]) -> None:
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match="OIDC_CLIENT_ID"):
        create_app(auth_settings(oidc_provider="google"))
    with pytest.raises(SettingsError, match="OIDC_ALLOWED"):
        create_app(auth_settings(oidc_provider="google", oidc_client_id="id", oidc_client_secret="secret"))
    with pytest.raises(SettingsError, match="OIDC_PROVIDER"):
        create_app(
            auth_settings(
                oidc_provider="http://idp.example.com",
                oidc_client_id="id",
                oidc_client_secret="secret",
                oidc_allowed_domains=("example.com",),
            )
        )
    app = create_app(
        auth_settings(
            oidc_provider="microsoft",
            oidc_tenant="contoso.onmicrosoft.com",
            oidc_client_id="id",
            oidc_client_secret="secret",
            oidc_allowed_domains=("contoso.com",),
        )
    )
    assert app[keys.AUTH_STORE].oidc.issuer == "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    assert urlsplit(app[keys.AUTH_STORE].oidc.issuer).scheme == "https"
