"""Optional upstream OpenID Connect sign-in, against a small provider run by the test on loopback."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.fixtures.auth import LOOPBACK_CB, OAuth, hidden_fields, pkce, redirect_params


@dataclass
class Provider:
    url: str
    key: ECKey
    claims: dict[str, Any] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    authorize_params: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    key = ECKey.generate_key("P-256", parameters={"kid": "up1", "alg": "ES256"})
    app = web.Application()
    state = Provider(url="", key=key)

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": state.url,
                "authorization_endpoint": state.url + "/authorize",
                "token_endpoint": state.url + "/token",
                "jwks_uri": state.url + "/jwks",
            }
        )

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        state.token_requests.append({k: str(v) for k, v in form.items()})
        if form.get("code") != "upstream-code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": state.url,
            "aud": "upstream-client",
            "iat": now,
            "exp": now + 300,
            "nonce": state.authorize_params.get("nonce"),
            "sub": "u-1",
            **state.claims,
        }
        return web.json_response(
            {
                "id_token": jwt.encode({"alg": "ES256", "kid": "up1"}, claims, key),
                "access_token": "upstream-access",
                "token_type": "Bearer",
            }
        )

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.as_dict(private=False)]})

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_post("/token", token)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def start_upstream(oauth: OAuth, provider: Provider) -> tuple[str, str, dict[str, Any]]:
    """Login page -> "Sign in with ..." -> the redirect to the provider; returns (callback URL, verifier,
    the registered client)."""
    client = await oauth.register()
    verifier, challenge = pkce()
    html = await oauth.login_page(oauth.authorize_query(client, challenge))
    assert "Sign in with 127.0.0.1" in html
    resp = await oauth.post_form("", hidden_fields(html), action="upstream")
    assert resp.status == 303
    location = resp.headers["Location"]
    assert location.startswith(provider.url + "/authorize?")
    params = redirect_params(location)
    provider.authorize_params = params
    assert params["client_id"] == "upstream-client" and params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256" and "openid" in params["scope"].split()
    assert params["redirect_uri"] == oauth.base + "/oauth/upstream/callback"
    return f"/oauth/upstream/callback?code=upstream-code&state={params['state']}", verifier, client


@pytest.fixture
def upstream_oauth(make_oauth: Callable[..., Any], provider: Provider) -> Callable[..., Any]:
    async def make(**overrides: Any) -> OAuth:
        return await make_oauth(
            oidc_provider=provider.url,
            oidc_client_id="upstream-client",
            oidc_client_secret="upstream-secret",
            oidc_allowed_domains=("example.com",),
            **overrides,
        )

    return make


async def test_upstream_sign_in_leads_to_the_same_consent(
    upstream_oauth: Callable[..., Any], provider: Provider
) -> None:
    oauth = await upstream_oauth()
    provider.claims = {"email": "Erin@Example.com", "email_verified": True}
    callback, verifier, client = await start_upstream(oauth, provider)
    resp = await oauth.http.get(callback, allow_redirects=False)
    consent = await resp.text()
    assert resp.status == 200, consent
    assert "erin@example.com" in consent
    action = re.search(r"<form method=post action='([^']+)'", consent).group(1)
    assert urljoin(oauth.base + callback, action) == oauth.base + "/authorize"  # back to the issuer's endpoint
    sent = provider.token_requests[-1]
    assert sent["client_secret"] == "upstream-secret"
    digest = base64.urlsafe_b64encode(hashlib.sha256(sent["code_verifier"].encode()).digest()).decode().rstrip("=")
    assert digest == provider.authorize_params["code_challenge"]
    resp = await oauth.post_form("", hidden_fields(consent), action="consent", decision="allow")
    assert resp.status == 303
    code = redirect_params(resp.headers["Location"])["code"]
    resp = await oauth.token(
        client,
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": LOOPBACK_CB},
    )
    tokens = await resp.json()
    me = await (await oauth.call(tokens["access_token"])).json()
    assert me["username"] == "erin@example.com" and me["role"] == "reader"  # OIDC_DEFAULT_ROLE
    # A callback state can be used once only.
    resp = await oauth.http.get(callback, allow_redirects=False)
    assert resp.status == 400


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"email": "mallory@evil.example", "email_verified": True}, "may not sign in"),
        ({"email": "erin@example.com", "email_verified": False}, "not verified"),
        ({"email": "erin@example.com", "email_verified": True, "aud": "someone-else"}, "could not be verified"),
        ({"email": "erin@example.com", "email_verified": True, "nonce": "replayed"}, "could not be verified"),
        ({"email_verified": True}, "did not share an e-mail"),
    ],
)
async def test_upstream_sign_in_refusals(
    upstream_oauth: Callable[..., Any], provider: Provider, claims: dict[str, Any], message: str
) -> None:
    oauth = await upstream_oauth()
    provider.claims = claims
    callback, _, _ = await start_upstream(oauth, provider)
    resp = await oauth.http.get(callback, allow_redirects=False)
    assert resp.status == 403 and "Location" not in resp.headers
    assert message in await resp.text()


async def test_upstream_callback_needs_the_starting_browser(
    upstream_oauth: Callable[..., Any], provider: Provider
) -> None:
    oauth = await upstream_oauth()
    provider.claims = {"email": "erin@example.com", "email_verified": True}
    callback, _, _ = await start_upstream(oauth, provider)
    oauth.http.session.cookie_jar.clear()
    resp = await oauth.http.get(callback, allow_redirects=False)
    assert resp.status == 403
    resp = await oauth.http.get("/oauth/upstream/callback?code=x&state=unknown", allow_redirects=False)
    assert resp.status == 400
