"""The auth store on PostgreSQL (`STATE_DATABASE_URL`): the same `AuthStorage` contract as the SQLite
`AuthStore`, for several nodes sharing one database.

SQLAlchemy Core over psycopg 3, plain SQL text. Each read-modify-write is one transaction at READ
COMMITTED, and where two nodes could interleave it takes a lock first, so parallel requests on
different nodes see each other's result exactly as the SQLite store's one writer does:
- a refresh token, a code, a user being changed: `SELECT ... FOR UPDATE` on its row (a second request
  waits, then reads the row as the first left it);
- sign-in throttling and registration limits count rows that may not exist yet, so they take a
  transaction-level advisory lock on the counter's key (`pg_advisory_xact_lock`), in sorted order;
- upserts use `INSERT ... ON CONFLICT`.
The schema is migrated with Alembic on open (`app/state/migrate.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ..auth import rows as from_row
from ..auth.records import (
    AuthorizationRequest,
    AuthStorage,
    BearerRecord,
    Client,
    ClientListing,
    CodeRedemption,
    GrantListing,
    LoginAdmission,
    LoginPolicy,
    PendingSignIn,
    RefreshToken,
    Rotated,
    Rotation,
    RotationRefused,
    SigningKeyRow,
    ThrottleCounter,
    UpstreamSignIn,
    User,
    UserListing,
)
from ..auth.store import KNOWN_ADDRESS_SECONDS, StoreError, UserExists
from ..settings import SettingsError
from . import migrate

Row = Mapping[str, Any]
CONNECT_TIMEOUT_SECONDS = 10  # libpq waits forever by default; a start-up must fail, not hang


class StateDatabaseError(SettingsError):
    """The state database cannot be reached or used at start-up: one line (a SettingsError, so the
    service and `mssql-mcp users` print it and stop instead of a traceback). Never shows the password."""


def engine_url(url: str) -> sa.URL:
    """`postgresql://...` (as operators write it) with the psycopg 3 driver named for SQLAlchemy."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql+psycopg")


class Tx:
    """One connection inside a transaction: `one`/`all` return rows as mappings, `run` the row count."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection

    def run(self, sql: str, **params: Any) -> int:
        return self.connection.execute(sa.text(sql), params).rowcount

    def one(self, sql: str, **params: Any) -> Row | None:
        row = self.connection.execute(sa.text(sql), params).mappings().first()
        return dict(row) if row is not None else None

    def all(self, sql: str, **params: Any) -> list[Row]:
        return [dict(r) for r in self.connection.execute(sa.text(sql), params).mappings()]

    def lock(self, *keys: str) -> None:
        """Advisory locks held until the transaction ends; sorted, so two transactions never deadlock."""
        for key in sorted(set(keys)):
            self.run("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", key=key)


class PgAuthStore(AuthStorage):
    """Thread-safe (a connection pool): `AsyncAuthStore` may run several calls at once on it."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = engine_url(url)
        self.pool_size = pool_size
        self._engine: sa.Engine | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def open(self) -> PgAuthStore:
        """Connect and migrate the schema; an unreachable or refusing server is one line naming it."""
        if self._engine is None:
            engine = sa.create_engine(
                self.url,
                pool_size=self.pool_size,
                max_overflow=2,
                pool_pre_ping=True,  # a connection the server dropped (restart, failover) is replaced
                pool_recycle=1800,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
            )
            try:
                migrate.upgrade(engine)
            except sa.exc.OperationalError as exc:
                engine.dispose()
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
                where = f"{self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database or ''}"
                raise StateDatabaseError(f"STATE_DATABASE_URL: cannot use PostgreSQL at {where}: {reason}") from None
            self._engine = engine
        return self

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> PgAuthStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            raise StoreError("auth store is not open")
        return self._engine

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            yield Tx(connection)

    @contextmanager
    def _read(self) -> Iterator[Tx]:
        with self.engine.connect() as connection:
            yield Tx(connection)

    # -- users -----------------------------------------------------------------------------------
    def add_user(
        self, username: str, password_hash: str | None, role: str, *, source: str = "local", email: str | None = None
    ) -> User:
        now = time.time()
        user_id = uuid.uuid4().hex
        try:
            with self._tx() as c:
                c.run(
                    "INSERT INTO users(id, username, password_hash, role, source, email, created_at, updated_at)"
                    " VALUES (:id, :username, :password_hash, :role, :source, :email, :now, :now)",
                    id=user_id,
                    username=username,
                    password_hash=password_hash,
                    role=role,
                    source=source,
                    email=email,
                    now=now,
                )
        except sa.exc.IntegrityError:
            raise UserExists(username) from None
        user = self.get_user(user_id)
        if user is None:  # only if another node removed it in between
            raise StoreError(f"user {username} vanished right after it was added")
        return user

    def get_user(self, user_id: str) -> User | None:
        with self._read() as c:
            return from_row.user(c.one("SELECT * FROM users WHERE id = :id", id=user_id))

    def get_user_by_name(self, username: str) -> User | None:
        with self._read() as c:
            return from_row.user(c.one("SELECT * FROM users WHERE lower(username) = lower(:u)", u=username))

    def list_users(self) -> list[UserListing]:
        with self._read() as c:
            rows = c.all(
                "SELECT id, username, role, source, email, created_at, updated_at FROM users ORDER BY lower(username)"
            )
        return [UserListing(**r) for r in rows]

    def remove_user(self, username: str) -> bool:
        with self._tx() as c:
            user = c.one("SELECT id FROM users WHERE lower(username) = lower(:u) FOR UPDATE", u=username)
            if user is None:
                return False
            self._revoke_user_families(c, user["id"], "user removed")
            c.run("DELETE FROM auth_codes WHERE user_id = :id", id=user["id"])
            c.run("DELETE FROM users WHERE id = :id", id=user["id"])
        return True

    def set_password(self, username: str, password_hash: str) -> bool:
        """New password; every token issued before it stops working (version bump + families revoked)."""
        with self._tx() as c:
            user = c.one("SELECT id FROM users WHERE lower(username) = lower(:u) FOR UPDATE", u=username)
            if user is None:
                return False
            c.run(
                "UPDATE users SET password_hash = :h, token_version = token_version + 1, updated_at = :now"
                " WHERE id = :id",
                h=password_hash,
                now=time.time(),
                id=user["id"],
            )
            self._revoke_user_families(c, user["id"], "password changed")
        return True

    def set_role(self, username: str, role: str) -> bool:
        with self._tx() as c:
            return (
                c.run(
                    "UPDATE users SET role = :role, updated_at = :now WHERE lower(username) = lower(:u)",
                    role=role,
                    now=time.time(),
                    u=username,
                )
                == 1
            )

    def upsert_upstream_user(self, email: str, role: str) -> User:
        """A user signed in through OpenID Connect: found by e-mail (as username) or created."""
        existing = self.get_user_by_name(email)
        if existing is not None:
            return existing
        try:
            return self.add_user(email, None, role, source="oidc", email=email)
        except UserExists:  # created by a parallel sign-in (perhaps on another node) a moment ago
            user = self.get_user_by_name(email)
            if user is None:
                raise StoreError(f"user {email} vanished right after it was added") from None
            return user

    @staticmethod
    def _revoke_user_families(c: Tx, user_id: str, reason: str) -> None:
        c.run(
            "UPDATE token_families SET revoked_at = :now, revoked_reason = :reason"
            " WHERE user_id = :id AND revoked_at IS NULL",
            now=time.time(),
            reason=reason,
            id=user_id,
        )

    # -- clients ---------------------------------------------------------------------------------
    def save_client(self, client: Client) -> None:
        with self._tx() as c:
            self._save_client(c, client)

    @staticmethod
    def _save_client(c: Tx, client: Client) -> None:
        c.run(
            "INSERT INTO clients(client_id, kind, secret_hash, auth_method, redirect_uris, grant_types,"
            " client_name, metadata, created_at, fetched_at) VALUES (:client_id, :kind, :secret_hash,"
            " :auth_method, :redirect_uris, :grant_types, :client_name, :metadata, :created_at, :fetched_at)"
            " ON CONFLICT (client_id) DO UPDATE SET kind = excluded.kind, secret_hash = excluded.secret_hash,"
            " auth_method = excluded.auth_method, redirect_uris = excluded.redirect_uris,"
            " grant_types = excluded.grant_types, client_name = excluded.client_name,"
            " metadata = excluded.metadata, fetched_at = excluded.fetched_at",
            client_id=client.client_id,
            kind=client.kind,
            secret_hash=client.secret_hash,
            auth_method=client.auth_method,
            redirect_uris=json.dumps(list(client.redirect_uris)),
            grant_types=json.dumps(list(client.grant_types)),
            client_name=client.client_name,
            metadata=json.dumps(dict(client.metadata)),
            created_at=client.created_at,
            fetched_at=client.fetched_at,
        )

    def register_client(self, client: Client, address: str, max_per_hour: int) -> bool:
        """Save a dynamically registered client unless `address` already registered `max_per_hour` in the
        last hour (False). The address's lock makes count-then-insert atomic across nodes."""
        now = time.time()
        with self._tx() as c:
            c.lock(f"register:{address}")
            recent = c.one(
                "SELECT COUNT(*) AS n FROM registrations WHERE address = :a AND at > :since",
                a=address,
                since=now - 3600,
            )
            if recent is not None and recent["n"] >= max_per_hour:
                return False
            c.run("INSERT INTO registrations(address, at) VALUES (:a, :now)", a=address, now=now)
            self._save_client(c, client)
        return True

    def get_client(self, client_id: str) -> Client | None:
        with self._read() as c:
            return from_row.client(c.one("SELECT * FROM clients WHERE client_id = :id", id=client_id))

    def list_clients(self) -> list[ClientListing]:
        """Every client, most recently used first, with its count of active grants (the operator console)."""
        with self._read() as c:
            rows = c.all(
                "SELECT c.client_id, c.kind, c.client_name, c.redirect_uris, c.created_at, c.last_used_at,"
                " (SELECT COUNT(*) FROM token_families f WHERE f.client_id = c.client_id AND f.revoked_at IS NULL"
                "  AND f.expires_at > :now) AS active_grants"
                " FROM clients c ORDER BY COALESCE(c.last_used_at, c.created_at) DESC",
                now=time.time(),
            )
        return [
            ClientListing(
                client_id=r["client_id"],
                kind=r["kind"],
                client_name=r["client_name"],
                redirect_uris=tuple(json.loads(r["redirect_uris"])),
                created_at=r["created_at"],
                last_used_at=r["last_used_at"],
                active_grants=r["active_grants"],
            )
            for r in rows
        ]

    def revoke_client(self, client_id: str, reason: str) -> int:
        """Cut a client off (see AuthStore.revoke_client); the families revoked, or -1 for an unknown client."""
        with self._tx() as c:
            if c.one("SELECT 1 FROM clients WHERE client_id = :id FOR UPDATE", id=client_id) is None:
                return -1
            revoked = c.run(
                "UPDATE token_families SET revoked_at = :now, revoked_reason = :reason WHERE client_id = :id"
                " AND revoked_at IS NULL",
                now=time.time(),
                reason=reason,
                id=client_id,
            )
            c.run("DELETE FROM auth_codes WHERE client_id = :id AND used_at IS NULL", id=client_id)
            c.run("DELETE FROM clients WHERE client_id = :id", id=client_id)
        return revoked

    def mark_client_used(self, client_id: str, at: float) -> None:
        """See AuthStore.mark_client_used (the Redis store of issue 11 calls it when it stores a code)."""
        with self._tx() as c:
            c.run("UPDATE clients SET last_used_at = :at WHERE client_id = :id", at=at, id=client_id)

    # -- pending authorization requests ----------------------------------------------------------
    def create_auth_request(
        self, request_id: str, browser_hash: str, csrf: str, params: AuthorizationRequest, ttl: float
    ) -> None:
        now = time.time()
        with self._tx() as c:
            c.run(
                "INSERT INTO auth_requests(id, browser_hash, csrf, params, created_at, expires_at)"
                " VALUES (:id, :b, :csrf, :params, :now, :exp)",
                id=request_id,
                b=browser_hash,
                csrf=csrf,
                params=json.dumps(params.to_json()),
                now=now,
                exp=now + ttl,
            )

    def get_auth_request(self, request_id: str) -> PendingSignIn | None:
        with self._read() as c:
            return from_row.pending(
                c.one(
                    "SELECT * FROM auth_requests WHERE id = :id AND expires_at > :now", id=request_id, now=time.time()
                )
            )

    def update_auth_request(
        self,
        request_id: str,
        *,
        csrf: str | None = None,
        user_id: str | None = None,
        upstream: UpstreamSignIn | None = None,
    ) -> None:
        with self._tx() as c:
            if csrf is not None:
                c.run("UPDATE auth_requests SET csrf = :v WHERE id = :id", v=csrf, id=request_id)
            if user_id is not None:
                c.run("UPDATE auth_requests SET user_id = :v WHERE id = :id", v=user_id, id=request_id)
            if upstream is not None:
                c.run(
                    "UPDATE auth_requests SET upstream = :v, upstream_state_hash = :h WHERE id = :id",
                    v=json.dumps(upstream.to_json()),
                    h=upstream.state_hash,
                    id=request_id,
                )

    def find_auth_request_by_upstream_state(self, state_hash: str) -> PendingSignIn | None:
        with self._read() as c:
            return from_row.pending(
                c.one(
                    "SELECT * FROM auth_requests WHERE upstream_state_hash = :h AND expires_at > :now",
                    h=state_hash,
                    now=time.time(),
                )
            )

    def delete_auth_request(self, request_id: str) -> bool:
        with self._tx() as c:
            return c.run("DELETE FROM auth_requests WHERE id = :id", id=request_id) == 1

    # -- authorization codes ---------------------------------------------------------------------
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
        consume_request: str | None = None,
    ) -> bool:
        """Store a code, deleting the pending request in the same transaction (False if it was gone: a
        parallel DELETE of the same row waits for the first and then deletes nothing)."""
        now = time.time()
        with self._tx() as c:
            if (
                consume_request is not None
                and c.run("DELETE FROM auth_requests WHERE id = :id", id=consume_request) != 1
            ):
                return False
            c.run(
                "INSERT INTO auth_codes(code_hash, client_id, user_id, redirect_uri, redirect_uri_given,"
                " code_challenge, scope, resources, issuer, created_at, expires_at) VALUES (:code_hash,"
                " :client_id, :user_id, :redirect_uri, :given, :challenge, :scope, :resources, :issuer, :now, :exp)",
                code_hash=code_hash,
                client_id=client_id,
                user_id=user_id,
                redirect_uri=redirect_uri,
                given=redirect_uri_given,
                challenge=code_challenge,
                scope=scope,
                resources=json.dumps(list(resources)),
                issuer=issuer,
                now=now,
                exp=now + ttl,
            )
            c.run("UPDATE clients SET last_used_at = :now WHERE client_id = :id", now=now, id=client_id)
        return True

    def consume_code(self, code_hash: str) -> CodeRedemption:
        """The code, marked used; a code presented twice revokes what the first exchange produced. The row
        lock makes a parallel second redemption wait and then see the code used."""
        now = time.time()
        with self._tx() as c:
            row = c.one("SELECT * FROM auth_codes WHERE code_hash = :h FOR UPDATE", h=code_hash)
            if row is None:
                return CodeRedemption(None, reused=False)
            code = from_row.code(row)
            if code.used_at is not None:
                if code.family_id:
                    c.run(
                        "UPDATE token_families SET revoked_at = :now, revoked_reason = 'code reused'"
                        " WHERE family_id = :f AND revoked_at IS NULL",
                        now=now,
                        f=code.family_id,
                    )
                return CodeRedemption(code, reused=True)
            c.run("UPDATE auth_codes SET used_at = :now WHERE code_hash = :h", now=now, h=code_hash)
            return CodeRedemption(code, reused=False)

    def attach_family_to_code(self, code_hash: str, family_id: str) -> None:
        with self._tx() as c:
            c.run("UPDATE auth_codes SET family_id = :f WHERE code_hash = :h", f=family_id, h=code_hash)

    # -- token families and refresh tokens --------------------------------------------------------
    def create_family(self, *, client_id: str, user_id: str, token_version: int, ttl: float) -> str:
        family_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as c:
            c.run(
                "INSERT INTO token_families(family_id, client_id, user_id, token_version, created_at, expires_at)"
                " VALUES (:f, :client_id, :user_id, :v, :now, :exp)",
                f=family_id,
                client_id=client_id,
                user_id=user_id,
                v=token_version,
                now=now,
                exp=now + ttl,
            )
        return family_id

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
    ) -> None:
        now = time.time()
        with self._tx() as c:
            self._insert_refresh(c, token_hash, family_id, client_id, user_id, scope, resources, issuer, now, now + ttl)

    @staticmethod
    def _insert_refresh(
        c: Tx,
        token_hash: str,
        family_id: str,
        client_id: str,
        user_id: str,
        scope: str,
        resources: Sequence[str],
        issuer: str,
        now: float,
        expires_at: float,
    ) -> None:
        c.run(
            "INSERT INTO refresh_tokens(token_hash, family_id, client_id, user_id, scope, resources, issuer,"
            " created_at, expires_at) VALUES (:h, :f, :client_id, :user_id, :scope, :resources, :issuer, :now, :exp)",
            h=token_hash,
            f=family_id,
            client_id=client_id,
            user_id=user_id,
            scope=scope,
            resources=json.dumps(list(resources)),
            issuer=issuer,
            now=now,
            exp=expires_at,
        )

    def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        with self._read() as c:
            return from_row.refresh(c.one("SELECT * FROM refresh_tokens WHERE token_hash = :h", h=token_hash))

    def rotate_refresh_token(
        self, old_hash: str, new_hash: str, client_id: str, ttl: float, reuse_leeway: float = 0.0
    ) -> Rotation:
        """Spend a refresh token and mint its successor in one transaction (semantics: see
        AuthStore.rotate_refresh_token). The token's row lock serialises parallel refreshes from any
        node: the second waits, then reads `used_at` as the first set it."""
        with self._tx() as c:
            token = from_row.refresh(c.one("SELECT * FROM refresh_tokens WHERE token_hash = :h FOR UPDATE", h=old_hash))
            now = time.time()  # after the lock: the leeway is measured from when this request may act
            if token is None:
                return RotationRefused("unknown")
            if token.client_id != client_id:
                return RotationRefused("client_mismatch")
            family = from_row.family(c.one("SELECT * FROM token_families WHERE family_id = :f", f=token.family_id))
            if family is None or family.revoked_at is not None:
                return RotationRefused("revoked")
            within_leeway = token.used_at is not None and now - token.used_at <= reuse_leeway
            if token.used_at is not None and not within_leeway:
                c.run(
                    "UPDATE token_families SET revoked_at = :now, revoked_reason = 'refresh token reused'"
                    " WHERE family_id = :f",
                    now=now,
                    f=token.family_id,
                )
                return RotationRefused("reused")
            if token.expires_at <= now or family.expires_at <= now:
                return RotationRefused("expired")
            user = from_row.user(c.one("SELECT * FROM users WHERE id = :id", id=token.user_id))
            if user is None or user.token_version != family.token_version:
                return RotationRefused("user_gone")
            if not within_leeway:
                c.run("UPDATE refresh_tokens SET used_at = :now WHERE token_hash = :h", now=now, h=old_hash)
            self._insert_refresh(
                c,
                new_hash,
                token.family_id,
                client_id,
                token.user_id,
                token.scope,
                token.resources,
                token.issuer,
                now,
                min(now + ttl, family.expires_at),
            )
            return Rotated(token, user, family, within_leeway)

    def revoke_family(self, family_id: str, reason: str) -> None:
        with self._tx() as c:
            c.run(
                "UPDATE token_families SET revoked_at = :now, revoked_reason = :reason WHERE family_id = :f"
                " AND revoked_at IS NULL",
                now=time.time(),
                reason=reason,
                f=family_id,
            )

    def active_grants(self) -> list[GrantListing]:
        """Token families neither revoked nor expired, by user name then newest first (the operator console)."""
        with self._read() as c:
            rows = c.all(
                "SELECT f.family_id, f.user_id, u.username, f.client_id, c.client_name, f.created_at, f.expires_at"
                " FROM token_families f JOIN users u ON u.id = f.user_id"
                " LEFT JOIN clients c ON c.client_id = f.client_id"
                " WHERE f.revoked_at IS NULL AND f.expires_at > :now"
                " ORDER BY lower(u.username), f.created_at DESC",
                now=time.time(),
            )
        return [GrantListing(**r) for r in rows]

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        with self._tx() as c:
            c.run(
                "INSERT INTO revoked_tokens(jti, expires_at) VALUES (:j, :e) ON CONFLICT (jti) DO NOTHING",
                j=jti,
                e=expires_at,
            )

    def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None:
        """Everything the bearer check needs in one read: the user, and whether the token was revoked."""
        with self._read() as c:
            row = c.one(
                "SELECT u.id, u.username, u.role, u.token_version,"
                " EXISTS(SELECT 1 FROM revoked_tokens WHERE jti = :jti) AS jti_revoked,"
                " (SELECT revoked_at FROM token_families WHERE family_id = :f) AS family_revoked_at"
                " FROM users u WHERE u.id = :id",
                jti=jti,
                f=family_id or "",
                id=user_id,
            )
        return None if row is None else BearerRecord(**row)

    # -- sign-in throttling -----------------------------------------------------------------------
    def reserve_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> LoginAdmission:
        """Admit one password check, or refuse it (semantics: see AuthStore.reserve_login_attempt). The
        three counters' advisory locks make read-decide-write atomic across nodes, so however many
        attempts arrive at once on however many nodes, at most `policy.max_failures` wrong passwords are
        evaluated per user and address in a window."""
        user = username.lower()
        keys = (f"pair:{user}|{address}", f"addr:{address}", f"user:{user}")
        with self._tx() as c:
            c.lock(*(f"throttle:{key}" for key in keys))
            now = time.time()
            pair, addr, per_user = (self._throttle_counter(c, key, policy, now) for key in keys)
            for counter in (pair, addr):
                if counter.locked_until > now:
                    return LoginAdmission("locked", counter.locked_until)
            known = (
                c.one(
                    "SELECT 1 FROM login_known WHERE key = :k AND at > :since",
                    k=keys[0],
                    since=now - KNOWN_ADDRESS_SECONDS,
                )
                is not None
            )
            if not known and per_user.failures >= policy.user_slow_after and per_user.next_slot_at > now:
                return LoginAdmission("slowed", per_user.next_slot_at)
            pair = replace(pair, failures=pair.failures + 1)
            if pair.failures >= policy.max_failures:
                pair = replace(pair, locked_until=now + policy.lockout_seconds)
            addr = replace(addr, failures=addr.failures + 1)
            if addr.failures >= policy.address_max_failures:
                addr = replace(addr, locked_until=now + policy.lockout_seconds)
            # The ceiling lasts while failures keep coming: the user's window restarts with each one.
            per_user = replace(per_user, failures=per_user.failures + 1, window_start=now)
            if per_user.failures >= policy.user_slow_after:
                per_user = replace(per_user, next_slot_at=now + policy.user_slow_seconds)
            for key, counter in zip(keys, (pair, addr, per_user), strict=True):
                c.run(
                    "INSERT INTO login_throttle(key, failures, window_start, locked_until, next_slot_at)"
                    " VALUES (:k, :f, :w, :l, :n) ON CONFLICT (key) DO UPDATE SET failures = excluded.failures,"
                    " window_start = excluded.window_start, locked_until = excluded.locked_until,"
                    " next_slot_at = excluded.next_slot_at",
                    k=key,
                    f=counter.failures,
                    w=counter.window_start,
                    l=counter.locked_until,
                    n=counter.next_slot_at,
                )
        return LoginAdmission("ok", 0.0)

    @staticmethod
    def _throttle_counter(c: Tx, key: str, policy: LoginPolicy, now: float) -> ThrottleCounter:
        row = c.one(
            "SELECT failures, window_start, locked_until, next_slot_at FROM login_throttle WHERE key = :k", k=key
        )
        fresh = ThrottleCounter(failures=0, window_start=now)
        if row is None:
            return fresh
        counter = ThrottleCounter(**row)
        lock_over = 0 < counter.locked_until <= now
        window_over = counter.locked_until <= now and counter.window_start + policy.lockout_seconds <= now
        return fresh if lock_over or window_over else counter

    def release_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> None:
        """The reserved attempt had the right password: forget the pair's failures and un-count it
        from the address and user totals."""
        user = username.lower()
        pair, addr, per_user = f"pair:{user}|{address}", f"addr:{address}", f"user:{user}"
        with self._tx() as c:
            c.lock(*(f"throttle:{key}" for key in (pair, addr, per_user)))
            c.run("DELETE FROM login_throttle WHERE key = :k", k=pair)
            c.run(
                "INSERT INTO login_known(key, at) VALUES (:k, :at) ON CONFLICT (key) DO UPDATE SET at = excluded.at",
                k=pair,
                at=time.time(),
            )
            c.run(
                "UPDATE login_throttle SET failures = GREATEST(failures - 1, 0) WHERE key IN (:a, :u)",
                a=addr,
                u=per_user,
            )
            c.run(
                "UPDATE login_throttle SET locked_until = 0 WHERE key = :a AND failures < :limit",
                a=addr,
                limit=policy.address_max_failures,
            )

    # -- signing keys (every node reads the same rows, so every node signs and verifies alike) ------
    def signing_keys(self, *, include_retired: bool = False) -> list[SigningKeyRow]:
        where = "" if include_retired else " WHERE retired_at IS NULL"
        with self._read() as c:
            rows = c.all(f"SELECT * FROM signing_keys{where} ORDER BY created_at")
        return [from_row.signing_key(r) for r in rows]

    def add_signing_key(self, kid: str, alg: str, private_pem: str, signs_from: float) -> None:
        """A rotated-in key: published at once (every node reads it on its next reload), signing from `signs_from`."""
        with self._tx() as c:
            c.run(
                "INSERT INTO signing_keys(kid, alg, private_pem, created_at, signs_from)"
                " VALUES (:kid, :alg, :pem, :now, :signs_from)",
                kid=kid,
                alg=alg,
                pem=private_pem,
                now=time.time(),
                signs_from=signs_from,
            )

    def retire_signing_keys(self, kids: Sequence[str], at: float) -> int:
        """Mark keys retired (they leave JWKS); idempotent, so every node may do it. Returns how many."""
        changed = 0
        with self._tx() as c:
            for kid in kids:
                changed += c.run(
                    "UPDATE signing_keys SET retired_at = :at WHERE kid = :kid AND retired_at IS NULL", at=at, kid=kid
                )
        return changed

    def ensure_signing_key(self, make: Callable[[], tuple[str, str, str]]) -> list[SigningKeyRow]:
        """Create the first signing key if there is none (the lock: two nodes starting together make one)."""
        with self._tx() as c:
            c.lock("signing_keys")
            if c.one("SELECT 1 FROM signing_keys WHERE retired_at IS NULL") is None:
                kid, alg, pem = make()
                c.run(
                    "INSERT INTO signing_keys(kid, alg, private_pem, created_at) VALUES (:kid, :alg, :pem, :now)",
                    kid=kid,
                    alg=alg,
                    pem=pem,
                    now=time.time(),
                )
        return self.signing_keys()

    def encrypt_plain_signing_keys(self, is_plain: Callable[[str], bool], encrypt: Callable[[str, str], str]) -> int:
        """Keys stored in the clear, encrypted (`encrypt(kid, pem)`); returns how many. This backend only
        ever stores encrypted keys, so this finds none unless rows were copied in by hand."""
        with self._tx() as c:
            c.lock("signing_keys")
            rows = c.all("SELECT kid, private_pem FROM signing_keys FOR UPDATE")
            plain = [(r["kid"], encrypt(r["kid"], r["private_pem"])) for r in rows if is_plain(r["private_pem"])]
            for kid, sealed in plain:
                c.run("UPDATE signing_keys SET private_pem = :pem WHERE kid = :kid", pem=sealed, kid=kid)
        return len(plain)

    # -- maintenance -----------------------------------------------------------------------------
    def cleanup(self, *, unused_client_seconds: float = 86400.0) -> None:
        """Forget what can no longer be used (each node runs it periodically; the deletes are idempotent)."""
        now = time.time()
        with self._tx() as c:
            c.run("DELETE FROM auth_requests WHERE expires_at <= :now", now=now)
            c.run("DELETE FROM auth_codes WHERE expires_at <= :t", t=now - 3600)
            c.run("DELETE FROM revoked_tokens WHERE expires_at <= :now", now=now)
            c.run("DELETE FROM token_families WHERE expires_at <= :now", now=now)
            c.run("DELETE FROM refresh_tokens WHERE expires_at <= :now", now=now)
            c.run(
                "DELETE FROM login_throttle WHERE locked_until <= :now AND next_slot_at <= :now"
                " AND window_start <= :day",
                now=now,
                day=now - 86400,
            )
            c.run("DELETE FROM registrations WHERE at <= :t", t=now - 3600)
            c.run("DELETE FROM login_known WHERE at <= :t", t=now - KNOWN_ADDRESS_SECONDS)
            c.run("DELETE FROM clients WHERE last_used_at IS NULL AND created_at <= :t", t=now - unused_client_seconds)
