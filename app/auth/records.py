"""The auth store's records and its public surface, as types (no SQL, no HTTP).

Everything `AuthStore` returns or takes is one of these frozen records, so a caller reads `user.role`
instead of guessing a dict key, and a second backend (issue 11: PostgreSQL for several nodes) has an
exact contract to implement: `AuthStorage` below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

if TYPE_CHECKING:
    from ..settings import Settings

ClientKind = Literal["dcr", "cimd"]  # registered (RFC 7591) or a Client ID Metadata Document URL
ThrottleVerdict = Literal["ok", "locked", "slowed"]
RefreshRefusal = Literal["unknown", "client_mismatch", "expired", "revoked", "user_gone", "reused"]


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password_hash: str | None  # None: signs in upstream only (OpenID Connect)
    role: str
    source: str  # "local" or "oidc"
    email: str | None
    token_version: int  # bumped by a password change: older tokens stop working
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class UserListing:
    """A user as `users list` shows them: no password hash, no token version."""

    id: str
    username: str
    role: str
    source: str
    email: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    kind: ClientKind
    auth_method: str  # token_endpoint_auth_method: none, client_secret_post, client_secret_basic
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    metadata: Mapping[str, Any]  # as registered / fetched (returned to the client by /register)
    client_name: str | None = None
    secret_hash: str | None = None  # SHA-256 of the secret of a confidential client
    created_at: float = field(default_factory=time.time)
    fetched_at: float | None = None  # metadata-document clients: when the document was read
    last_used_at: float | None = None  # last authorization (registered clients never used expire)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A checked /authorize request, as the sign-in and consent pages remember it."""

    client_id: str
    redirect_uri: str
    redirect_uri_given: bool  # the token request must then repeat it (RFC 6749 §4.1.3)
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    issuer: str
    realm: str
    client_name: str
    client_note: str
    redirect_host: str

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "redirect_uri_given": self.redirect_uri_given,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "scopes": list(self.scopes),
            "resources": list(self.resources),
            "issuer": self.issuer,
            "realm": self.realm,
            "client_name": self.client_name,
            "client_note": self.client_note,
            "redirect_host": self.redirect_host,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        return cls(
            client_id=data["client_id"],
            redirect_uri=data["redirect_uri"],
            redirect_uri_given=bool(data["redirect_uri_given"]),
            state=data["state"],
            code_challenge=data["code_challenge"],
            scopes=tuple(data["scopes"]),
            resources=tuple(data["resources"]),
            issuer=data["issuer"],
            realm=data["realm"],
            client_name=data["client_name"],
            client_note=data["client_note"],
            redirect_host=data["redirect_host"],
        )


@dataclass(frozen=True, slots=True)
class UpstreamSignIn:
    """What a pending sign-in at the OpenID Connect provider needs when the browser comes back."""

    state_hash: str  # SHA-256 of the `state` sent to the provider (the callback finds the request by it)
    nonce: str
    verifier: str  # PKCE code verifier for the provider's token endpoint
    redirect_uri: str

    def to_json(self) -> dict[str, str]:
        return {
            "state_hash": self.state_hash,
            "nonce": self.nonce,
            "verifier": self.verifier,
            "redirect_uri": self.redirect_uri,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpstreamSignIn:
        return cls(
            state_hash=data["state_hash"],
            nonce=data["nonce"],
            verifier=data["verifier"],
            redirect_uri=data["redirect_uri"],
        )


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """An authorization request between the first page and the consent decision."""

    id: str
    browser_hash: str  # SHA-256 of the browser cookie that started it
    csrf: str  # the current form's token (a fresh one per step)
    params: AuthorizationRequest
    user_id: str | None  # set once the person signed in
    upstream: UpstreamSignIn | None  # set while they sign in at the upstream provider
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    code_hash: str
    client_id: str
    user_id: str
    redirect_uri: str
    redirect_uri_given: bool
    code_challenge: str
    scope: str
    resources: tuple[str, ...]
    issuer: str
    created_at: float
    expires_at: float
    used_at: float | None
    family_id: str | None  # the token family the first exchange made (revoked when the code is reused)


@dataclass(frozen=True, slots=True)
class TokenFamily:
    """Every refresh and access token of one sign-in: revoked together."""

    family_id: str
    client_id: str
    user_id: str
    token_version: int
    created_at: float
    expires_at: float
    revoked_at: float | None
    revoked_reason: str | None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token_hash: str
    family_id: str
    client_id: str
    user_id: str
    scope: str
    resources: tuple[str, ...]
    issuer: str
    created_at: float
    expires_at: float
    used_at: float | None


@dataclass(frozen=True, slots=True)
class Rotated:
    """A refresh token was spent and its successor stored."""

    token: RefreshToken  # the spent token, as it was
    user: User
    family: TokenFamily
    within_leeway: bool  # spent before, by the same client, within the reuse leeway
    outcome: Literal["ok"] = "ok"


@dataclass(frozen=True, slots=True)
class RotationRefused:
    outcome: RefreshRefusal


Rotation = Rotated | RotationRefused


@dataclass(frozen=True, slots=True)
class CodeRedemption:
    code: AuthorizationCode | None  # None: unknown code
    reused: bool  # presented before: what the first exchange produced has been revoked


@dataclass(frozen=True, slots=True)
class BearerRecord:
    """Everything the bearer check needs about a token's user, in one read."""

    id: str
    username: str
    role: str
    token_version: int
    jti_revoked: bool
    family_revoked_at: float | None


@dataclass(frozen=True, slots=True)
class ClientListing:
    """A client as the operator console lists it: who it is, where it sends people, when it was last used."""

    client_id: str
    kind: ClientKind
    client_name: str | None
    redirect_uris: tuple[str, ...]
    created_at: float
    last_used_at: float | None
    active_grants: int  # token families not revoked and not expired


@dataclass(frozen=True, slots=True)
class GrantListing:
    """An active grant (a token family: one sign-in of one user in one client and its refreshes)."""

    family_id: str
    user_id: str
    username: str
    client_id: str
    client_name: str | None
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ThrottleCounter:
    """One sign-in throttle counter: a (user, address) pair, an address, or a user."""

    failures: int  # attempts counted in the window (reserved before the check)
    window_start: float
    locked_until: float = 0.0
    next_slot_at: float = 0.0  # user counters over the ceiling: the next attempt is admitted then


@dataclass(frozen=True, slots=True)
class LoginAdmission:
    """The throttle's answer before a password is checked."""

    verdict: ThrottleVerdict
    until: float = 0.0  # locked or slowed: when another attempt may come


@dataclass(frozen=True)
class LoginPolicy:
    """Sign-in throttling bounds (LOGIN_* settings)."""

    max_failures: int = 5  # per user and address, then locked for lockout_seconds
    lockout_seconds: float = 300.0  # also the counting window
    address_max_failures: int = 20  # per address over all user names, then locked
    user_slow_after: int = 20  # per user over all addresses, then one attempt per user_slow_seconds
    user_slow_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginPolicy:
        return cls(
            max_failures=settings.login_max_failures,
            lockout_seconds=settings.login_lockout_seconds,
            address_max_failures=settings.login_address_max_failures,
            user_slow_after=settings.login_user_slow_after,
            user_slow_seconds=settings.login_user_slow_seconds,
        )


class SigningKeyRow(TypedDict):
    """A signing key as stored. A TypedDict rather than a dataclass: the statekey layer hands on a copy
    with the PEM decrypted (`{**row, "private_pem": ...}`), and the secrets tests read rows by key."""

    kid: str
    alg: str
    private_pem: str  # encrypted with the state key ('enc:v1:...'); plain PEM once opened
    created_at: float
    retired_at: float | None
    signs_from: float  # signs from then on (a rotated-in key is published a delay before); see key_states


class AuthStorage(Protocol):
    """The auth store's public surface: what a second backend implements (`AuthStore` is SQLite).

    Every method is synchronous and each read-modify-write is one transaction; `AsyncAuthStore` runs
    them off the event loop.
    """

    # users
    def add_user(
        self, username: str, password_hash: str | None, role: str, *, source: str = ..., email: str | None = ...
    ) -> User: ...
    def get_user(self, user_id: str) -> User | None: ...
    def get_user_by_name(self, username: str) -> User | None: ...
    def list_users(self) -> list[UserListing]: ...
    def remove_user(self, username: str) -> bool: ...
    def set_password(self, username: str, password_hash: str) -> bool: ...
    def set_role(self, username: str, role: str) -> bool: ...
    def upsert_upstream_user(self, email: str, role: str) -> User: ...

    # clients
    def save_client(self, client: Client) -> None: ...
    def register_client(self, client: Client, address: str, max_per_hour: int) -> bool: ...
    def get_client(self, client_id: str) -> Client | None: ...
    def list_clients(self) -> list[ClientListing]: ...
    def revoke_client(self, client_id: str, reason: str) -> int: ...
    def mark_client_used(self, client_id: str, at: float) -> None: ...

    # pending sign-ins
    def create_auth_request(
        self, request_id: str, browser_hash: str, csrf: str, params: AuthorizationRequest, ttl: float
    ) -> None: ...
    def get_auth_request(self, request_id: str) -> PendingSignIn | None: ...
    def update_auth_request(
        self,
        request_id: str,
        *,
        csrf: str | None = ...,
        user_id: str | None = ...,
        upstream: UpstreamSignIn | None = ...,
    ) -> None: ...
    def find_auth_request_by_upstream_state(self, state_hash: str) -> PendingSignIn | None: ...
    def delete_auth_request(self, request_id: str) -> bool: ...

    # codes, token families, refresh tokens, revocation
    def create_code(
        self,
        code_hash: str,
        *,
        client_id: str,
        user_id: str,
        redirect_uri: str,
        redirect_uri_given: bool,
        code_challenge: str,
        scope: str,
        resources: Sequence[str],
        issuer: str,
        ttl: float,
        consume_request: str | None = ...,
    ) -> bool: ...
    def consume_code(self, code_hash: str) -> CodeRedemption: ...
    def attach_family_to_code(self, code_hash: str, family_id: str) -> None: ...
    def create_family(self, *, client_id: str, user_id: str, token_version: int, ttl: float) -> str: ...
    def add_refresh_token(
        self,
        token_hash: str,
        *,
        family_id: str,
        client_id: str,
        user_id: str,
        scope: str,
        resources: Sequence[str],
        issuer: str,
        ttl: float,
    ) -> None: ...
    def get_refresh_token(self, token_hash: str) -> RefreshToken | None: ...
    def rotate_refresh_token(
        self, old_hash: str, new_hash: str, client_id: str, ttl: float, reuse_leeway: float = ...
    ) -> Rotation: ...
    def revoke_family(self, family_id: str, reason: str) -> None: ...
    def active_grants(self) -> list[GrantListing]: ...
    def revoke_jti(self, jti: str, expires_at: float) -> None: ...
    def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None: ...

    # sign-in throttling
    def reserve_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> LoginAdmission: ...
    def release_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> None: ...

    # signing keys (stored encrypted by the caller) and maintenance
    def signing_keys(self, *, include_retired: bool = False) -> list[SigningKeyRow]: ...
    def add_signing_key(self, kid: str, alg: str, private_pem: str, signs_from: float) -> None: ...
    def retire_signing_keys(self, kids: Sequence[str], at: float) -> int: ...
    def ensure_signing_key(self, make: Callable[[], tuple[str, str, str]]) -> list[SigningKeyRow]: ...
    def encrypt_plain_signing_keys(
        self, is_plain: Callable[[str], bool], encrypt: Callable[[str, str], str]
    ) -> int: ...
    def cleanup(self, *, unused_client_seconds: float = ...) -> None: ...
