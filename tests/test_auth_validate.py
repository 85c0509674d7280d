"""The auth package's seams: request checks as pure functions (no HTTP), typed store records, the store's
protocol, authlib's PKCE helpers, and an import graph without cycles or cycle-dodging lazy imports."""

from __future__ import annotations

import ast
import base64
import dataclasses
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import pytest

from app.auth.params import OAuthError, PageError, sha256_hex
from app.auth.records import (
    AuthorizationCode,
    AuthorizationRequest,
    AuthStorage,
    Client,
    CodeRedemption,
    RotationRefused,
    UpstreamSignIn,
)
from app.auth.store import AuthStore, store_path
from app.auth.validate import (
    authorization_request,
    authorize_client_id,
    authorize_redirect_uri,
    authorize_state,
    check_client_authentication,
    check_redeemed_code,
    check_rotation,
    client_credentials,
    grant_type_of,
    refreshed_scope,
    requested_refresh_scope,
    revocation_params,
    token_audience,
    verifier_matches,
)

AUTH = Path(__file__).resolve().parent.parent / "app" / "auth"
ALLOWED = ("claude.ai",)
REDIRECT = "https://claude.ai/api/mcp/auth_callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
BASE = "https://mcp.example.com"
KNOWN = {BASE, BASE + "/mcp", BASE + "/sse", BASE + "/chatgpt/mcp", BASE + "/chatgpt/sse"}


def _client(**changes: Any) -> Client:
    client = Client(
        client_id="mcp-abc",
        kind="dcr",
        auth_method="none",
        redirect_uris=(REDIRECT,),
        grant_types=("authorization_code", "refresh_token"),
        metadata={},
        client_name="App",
    )
    return dataclasses.replace(client, **changes)


def _query(**params: str | list[str]) -> dict[str, list[str]]:
    return {name: value if isinstance(value, list) else [value] for name, value in params.items()}


def _good_query(**changes: str | list[str]) -> dict[str, list[str]]:
    params: dict[str, str | list[str]] = {
        "client_id": "mcp-abc",
        "response_type": "code",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "scope": "mcp:read",
        "resource": BASE + "/mcp",
        "state": "s1",
    }
    params.update(changes)
    return _query(**params)


def _authorize(query: dict[str, list[str]], client: Client | None = None) -> AuthorizationRequest:
    return authorization_request(
        query,
        client or _client(),
        redirect_uri=REDIRECT,
        redirect_uri_given=False,
        state="s1",
        issuer=BASE,
        realm="",
        known_resources=KNOWN,
    )


# -- /authorize -------------------------------------------------------------------------------------------
def test_a_good_authorization_request_becomes_a_typed_record() -> None:
    request = _authorize(_good_query(resource=[BASE + "/mcp", BASE + "/mcp/"]))
    assert request.client_id == "mcp-abc" and request.code_challenge == CHALLENGE
    assert request.scopes == ("mcp:read",) and request.resources == (BASE + "/mcp",)  # normalised, once
    assert request.client_name == "App" and "chose this name itself" in request.client_note
    assert request.redirect_host == "claude.ai"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"code_challenge": CHALLENGE + "\n"}, "invalid_request"),  # authlib's pattern ends in `$`
        ({"request": "eyJ..."}, "request_not_supported"),
        ({"prompt": "none"}, "login_required"),
        ({"scope": 'mcp:read "x'}, "invalid_scope"),
        ({"resource": "https://elsewhere.example.com/mcp"}, "invalid_target"),
        ({"scope": ["mcp:read", "mcp:write"]}, "invalid_request"),  # a parameter twice
    ],
)
def test_authorization_errors_go_back_to_the_client(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(OAuthError) as exc:
        _authorize(_good_query(**changes))
    assert exc.value.error == error


def test_a_client_without_the_code_grant_is_refused() -> None:
    with pytest.raises(OAuthError) as exc:
        _authorize(_good_query(), _client(grant_types=("refresh_token",)))
    assert exc.value.error == "unauthorized_client"


def test_while_the_client_is_in_doubt_only_an_error_page_is_shown() -> None:
    for query in (_query(), _query(client_id=["a", "b"]), _query(client_id="a", redirect_uri=["x", "y"])):
        with pytest.raises(PageError):
            authorize_client_id(query)
    assert authorize_client_id(_query(client_id="mcp-abc")) == "mcp-abc"
    two = _client(redirect_uris=(REDIRECT, "http://127.0.0.1:5000/cb"))
    with pytest.raises(PageError, match="where to return"):
        authorize_redirect_uri(_query(), two, ALLOWED, ())
    with pytest.raises(PageError, match="not registered"):
        authorize_redirect_uri(_query(redirect_uri="https://claude.ai/other"), _client(), ALLOWED, ())
    with pytest.raises(PageError, match="not allowed"):
        authorize_redirect_uri(_query(), _client(), ("chatgpt.com",), ())
    assert authorize_redirect_uri(_query(), _client(), ALLOWED, ()) == (REDIRECT, False)
    assert authorize_redirect_uri(_query(redirect_uri=REDIRECT), _client(), ALLOWED, ()) == (REDIRECT, True)
    loopback = _client(redirect_uris=("http://127.0.0.1:5000/cb",))
    assert authorize_redirect_uri(_query(redirect_uri="http://127.0.0.1:6001/cb"), loopback, ALLOWED, ())[1]
    with pytest.raises(PageError, match="too long"):
        authorize_state(_query(state="x" * 2049))


# -- PKCE with authlib's helpers ---------------------------------------------------------------------------
def test_pkce_verifier_checks() -> None:
    assert verifier_matches(VERIFIER, CHALLENGE)  # RFC 7636 Appendix B
    assert not verifier_matches(VERIFIER[:-1] + "l", CHALLENGE)
    assert not verifier_matches(VERIFIER + "\n", CHALLENGE)  # `$` would accept a trailing newline
    assert not verifier_matches("short", "short")
    assert not verifier_matches("é" * 43, CHALLENGE)  # not in the unreserved set: refused, no exception
    own = base64.urlsafe_b64encode(hashlib.sha256(b"v" * 64).digest()).decode().rstrip("=")
    assert verifier_matches("v" * 64, own)


# -- /token ------------------------------------------------------------------------------------------------
def _code(**changes: Any) -> AuthorizationCode:
    code = AuthorizationCode(
        code_hash="h",
        client_id="mcp-abc",
        user_id="u",
        redirect_uri=REDIRECT,
        redirect_uri_given=False,
        code_challenge=CHALLENGE,
        scope="mcp:read",
        resources=(BASE + "/mcp",),
        issuer=BASE,
        created_at=time.time(),
        expires_at=time.time() + 60,
        used_at=None,
        family_id=None,
    )
    return dataclasses.replace(code, **changes)


def test_grant_types() -> None:
    assert grant_type_of({"grant_type": "authorization_code"}) == "authorization_code"
    assert grant_type_of({"grant_type": "refresh_token"}) == "refresh_token"
    for params, error in (({}, "invalid_request"), ({"grant_type": "password"}, "unsupported_grant_type")):
        with pytest.raises(OAuthError) as exc:
            grant_type_of(params)
        assert exc.value.error == error


def test_a_redeemed_code_is_checked_against_the_exchange() -> None:
    def redeem(redemption: CodeRedemption, **overrides: Any) -> AuthorizationCode:
        args: dict[str, Any] = {"client_id": "mcp-abc", "redirect_uri": None, "verifier": VERIFIER, "now": time.time()}
        return check_redeemed_code(redemption, **{**args, **overrides})

    assert redeem(CodeRedemption(_code(), reused=False)).user_id == "u"
    refusals = [
        (CodeRedemption(None, reused=False), {}, "unknown or expired"),
        (CodeRedemption(_code(), reused=True), {}, "already used"),
        (CodeRedemption(_code(), reused=False), {"client_id": "other"}, "another client"),
        (CodeRedemption(_code(expires_at=0), reused=False), {}, "expired"),
        (CodeRedemption(_code(redirect_uri_given=True), reused=False), {}, "redirect_uri"),
        (CodeRedemption(_code(), reused=False), {"redirect_uri": "https://claude.ai/x"}, "redirect_uri"),
        (CodeRedemption(_code(), reused=False), {"verifier": "x" * 43}, "code_verifier"),
    ]
    for redemption, overrides, message in refusals:
        with pytest.raises(OAuthError, match=message) as exc:
            redeem(redemption, **overrides)
        assert exc.value.error == "invalid_grant"


def test_token_audience_stays_within_the_grant() -> None:
    granted = [BASE + "/mcp"]
    assert token_audience([], granted, known=KNOWN, origin=BASE) == granted
    assert token_audience([BASE + "/mcp/", BASE + "/mcp"], granted, known=KNOWN, origin=BASE) == granted
    assert token_audience([], [], known=KNOWN, origin=BASE + "/") == [BASE]  # an old client: the whole server
    for requested in ([BASE + "/sse"], ["https://elsewhere.example.com/mcp"]):
        with pytest.raises(OAuthError) as exc:
            token_audience(requested, granted, known=KNOWN, origin=BASE)
        assert exc.value.error == "invalid_target"


def test_refresh_scope_only_narrows_and_follows_the_role() -> None:
    assert requested_refresh_scope(None, "mcp:read mcp:write") is None
    assert requested_refresh_scope("mcp:read", "mcp:read mcp:write") == ["mcp:read"]
    with pytest.raises(OAuthError) as exc:
        requested_refresh_scope("mcp:write", "mcp:read")
    assert exc.value.error == "invalid_scope"
    assert refreshed_scope("mcp:read mcp:write", None, "writer") == "mcp:read mcp:write"
    assert refreshed_scope("mcp:read mcp:write", None, "reader") == "mcp:read"  # the role dropped since
    assert refreshed_scope("mcp:read mcp:write", ["mcp:read"], "writer") == "mcp:read"


def test_a_refused_rotation_names_its_reason() -> None:
    for outcome, message in (("reused", "session has been revoked"), ("user_gone", "no longer exists")):
        with pytest.raises(OAuthError, match=message) as exc:
            check_rotation(RotationRefused(outcome))
        assert exc.value.error == "invalid_grant"


# -- client authentication and revocation ------------------------------------------------------------------
def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_client_credentials_take_exactly_one_method() -> None:
    assert client_credentials(None, {"client_id": "a"}).secret is None
    assert client_credentials(_basic("a", "s"), {}).basic
    assert client_credentials(None, {"client_id": "a", "client_secret": "s"}).secret == "s"
    with pytest.raises(OAuthError, match="only one"):
        client_credentials(_basic("a", "s"), {"client_secret": "s"})
    for header, params in ((_basic("a", "s"), {"client_id": "b"}), ("Bearer x", {}), (None, {})):
        with pytest.raises(OAuthError) as exc:
            client_credentials(header, params)
        assert exc.value.error == "invalid_client" and exc.value.status == 401


def test_client_authentication() -> None:
    public = _client()
    confidential = _client(auth_method="client_secret_basic", secret_hash=sha256_hex("s3cret"))
    assert check_client_authentication(public, client_credentials(None, {"client_id": "mcp-abc"})) is public
    good = client_credentials(_basic("mcp-abc", "s3cret"), {})
    assert check_client_authentication(confidential, good) is confidential
    refusals = [
        (None, good),
        (public, client_credentials(None, {"client_id": "mcp-abc", "client_secret": "x"})),
        (confidential, client_credentials(_basic("mcp-abc", "wrong"), {})),
        (confidential, client_credentials(None, {"client_id": "mcp-abc"})),
    ]
    for client, credentials in refusals:
        with pytest.raises(OAuthError) as exc:
            check_client_authentication(client, credentials)
        assert exc.value.error == "invalid_client"
    with pytest.raises(OAuthError) as exc:
        check_client_authentication(None, good)
    assert exc.value.headers.get("WWW-Authenticate", "").startswith("Basic")  # Basic callers get a challenge


def test_revocation_params() -> None:
    assert revocation_params({"token": "t"}) == ("t", None)
    assert revocation_params({"token": "t", "token_type_hint": "refresh_token"}) == ("t", "refresh_token")
    for params, error in (({}, "invalid_request"), ({"token": "t", "token_type_hint": "id"}, "unsupported_token_type")):
        with pytest.raises(OAuthError) as exc:
            revocation_params(params)
        assert exc.value.error == error


# -- typed records and the store's protocol ----------------------------------------------------------------
def test_a_pending_request_keeps_the_json_shape_of_the_previous_version() -> None:
    """Pending sign-ins live 15 minutes: one stored by the version before an upgrade must still load."""
    previous = {
        "client_id": "mcp-abc",
        "redirect_uri": REDIRECT,
        "redirect_uri_given": True,
        "state": None,
        "code_challenge": CHALLENGE,
        "scopes": ["mcp:read"],
        "resources": [],
        "issuer": BASE,
        "realm": "/chatgpt",
        "client_name": "App",
        "client_note": "note",
        "redirect_host": "claude.ai",
    }
    request = AuthorizationRequest.from_json(json.loads(json.dumps(previous)))
    assert request.realm == "/chatgpt" and request.scopes == ("mcp:read",)
    assert request.to_json() == previous
    upstream = {"state_hash": "h", "nonce": "n", "verifier": "v", "redirect_uri": BASE + "/oauth/upstream/callback"}
    assert UpstreamSignIn.from_json(upstream).to_json() == upstream


def test_store_round_trips_records(tmp_path: Path) -> None:
    with AuthStore(store_path(tmp_path)) as store:
        store.save_client(_client(metadata={"client_name": "App"}))
        client = store.get_client("mcp-abc")
        assert client is not None and client.redirect_uris == (REDIRECT,) and client.metadata == {"client_name": "App"}
        user = store.add_user("dora", None, "reader")
        store.create_auth_request("r1", "b", "c", _authorize(_good_query()), 60)
        store.update_auth_request("r1", user_id=user.id, upstream=UpstreamSignIn("sh", "n", "v", "cb"))
        pending = store.find_auth_request_by_upstream_state("sh")
        assert pending is not None and pending.user_id == user.id and pending.upstream is not None
        assert pending.params == _authorize(_good_query()) and pending.upstream.nonce == "n"
        with pytest.raises(dataclasses.FrozenInstanceError):
            user.role = "writer"  # type: ignore[misc]  # records are read-only: that is the point


def test_the_store_implements_its_protocol() -> None:
    members = [name for name in vars(AuthStorage) if not name.startswith("_")]
    assert len(members) > 25
    for name in members:
        protocol_signature = inspect.signature(getattr(AuthStorage, name))
        store_signature = inspect.signature(getattr(AuthStore, name))
        assert list(protocol_signature.parameters) == list(store_signature.parameters), name


# -- import graph ------------------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) of every import in a file, relative ones as written."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append(("." * child.level + (child.module or ""), child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def test_no_import_in_auth_hides_inside_a_function() -> None:
    """A lazy import is how the authorize -> state -> oidc -> authorize cycle used to hide."""
    lazy = [f"{p.name}:{line} {module}" for p in AUTH.glob("*.py") for module, line, inner in _imports(p) if inner]
    assert lazy == []


def test_the_checks_know_nothing_about_http() -> None:
    for name in ("validate.py", "params.py", "records.py", "redirects.py"):
        modules = [module for module, _, _ in _imports(AUTH / name)]
        assert not any(m.startswith("aiohttp") for m in modules), name
        # ... and import nothing of the package that does (only these pure modules).
        local = {m.lstrip(".") for m in modules if m.startswith(".") and not m.startswith("..")}
        assert local <= {"params", "records", "redirects"}, (name, local)
