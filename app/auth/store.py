"""The authorization server's own state: users, clients, pending sign-ins, codes, refresh tokens, keys.

One SQLite file in DATA_DIR (our state, not the database we serve), through the stdlib `sqlite3` module.
`AuthStore` is synchronous (the CLI uses it directly); the service wraps it in `AsyncAuthStore`, which runs
every call on one dedicated thread so the event loop never waits on disk and the connection is never
shared between threads. Every read-modify-write runs in a `BEGIN IMMEDIATE` transaction, so two
processes (the service and `mssql-mcp users ...`) can use the file at the same time.
Secrets are stored only as hashes: client secrets, codes and refresh tokens as SHA-256 (they are
high-entropy random strings), passwords as argon2. Private signing keys are stored encrypted (the
caller encrypts them with the state key, which never lives in DATA_DIR: see app/auth/statekey.py), and
`secure_delete` plus a WAL checkpoint after a migration keep no plaintext copy in freed pages or the WAL.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Protocol, TypeVar

from . import rows as from_row
from .records import (
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

if TYPE_CHECKING:
    pass

T = TypeVar("T")
P = ParamSpec("P")

SCHEMA_VERSION = 2  # the users.role rebuild (_migrate_roles) is detected from the table itself
KNOWN_ADDRESS_SECONDS = 30 * 86400  # a user's own recent sign-in address is exempt from the per-user ceiling

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT,
    role TEXT NOT NULL CHECK (role <> ''),  -- reader, writer, admin or a role the access policy names
    source TEXT NOT NULL DEFAULT 'local',
    email TEXT,
    token_version INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                 -- 'dcr' (registered) or 'cimd' (metadata document URL)
    secret_hash TEXT,
    auth_method TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,        -- JSON list
    grant_types TEXT NOT NULL,          -- JSON list
    client_name TEXT,
    metadata TEXT NOT NULL,             -- JSON object as registered / fetched
    created_at REAL NOT NULL,
    fetched_at REAL,
    last_used_at REAL                   -- last authorization (registered clients never used expire)
);
CREATE TABLE IF NOT EXISTS registrations (address TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS registrations_address ON registrations(address, at);
CREATE TABLE IF NOT EXISTS auth_requests (
    id TEXT PRIMARY KEY,
    browser_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    params TEXT NOT NULL,               -- JSON: the validated authorization request
    user_id TEXT,
    upstream TEXT,                      -- JSON: upstream OpenID Connect state while signing in there
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_uri_given INTEGER NOT NULL,
    code_challenge TEXT NOT NULL,
    scope TEXT NOT NULL,
    resources TEXT NOT NULL,            -- JSON list
    issuer TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    family_id TEXT
);
CREATE TABLE IF NOT EXISTS token_families (
    family_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    token_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL,
    revoked_reason TEXT
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES token_families(family_id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    resources TEXT NOT NULL,
    issuer TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family_id);
CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS login_throttle (
    key TEXT PRIMARY KEY,               -- 'pair:<user>|<address>', 'addr:<address>' or 'user:<user>'
    failures INTEGER NOT NULL,          -- attempts counted in the window (reserved before the check)
    window_start REAL NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0,
    next_slot_at REAL NOT NULL DEFAULT 0  -- user keys over the ceiling: next attempt admitted then
);
DROP TABLE IF EXISTS login_failures;
CREATE TABLE IF NOT EXISTS login_known (
    key TEXT PRIMARY KEY,               -- 'pair:<user>|<address>' that signed in successfully
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_pem TEXT NOT NULL,          -- encrypted with the state key, 'enc:v1:...' (plain PEM in v1)
    created_at REAL NOT NULL,
    retired_at REAL,
    signs_from REAL                     -- signs from then on (NULL: since created_at), see key_states
);
"""


class StoreError(RuntimeError):
    pass


class UserExists(StoreError):
    pass


def store_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "auth.db"


class AuthStore(AuthStorage):
    """Synchronous SQLite store; not thread-safe by itself (AsyncAuthStore confines it to one thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def open(self) -> AuthStore:
        if self._conn is not None:
            return self
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # only created private; never chmod'ed
        if not self.path.exists():
            # Create the file private before SQLite writes anything into it.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed: no old copy of a secret survives
        self._conn = conn
        # Statement by statement inside one transaction (executescript would commit on its own).
        with self._tx() as c:
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                c.execute(statement)
            self._migrate(c)
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        return self

    @staticmethod
    def _migrate(c: sqlite3.Connection) -> None:
        """Bring a version 1 or 2 store up to date (idempotent)."""
        AuthStore._migrate_roles(c)
        if "signs_from" not in {row["name"] for row in c.execute("PRAGMA table_info(signing_keys)")}:
            c.execute("ALTER TABLE signing_keys ADD COLUMN signs_from REAL")  # key rotation (NULL: since created)
        columns = {row["name"] for row in c.execute("PRAGMA table_info(clients)")}
        if "last_used_at" not in columns:
            c.execute("ALTER TABLE clients ADD COLUMN last_used_at REAL")
            # Clients that already signed someone in count as used, so the expiry of unused
            # registrations never drops a working connector.
            c.execute(
                "UPDATE clients SET last_used_at = ? WHERE client_id IN (SELECT client_id FROM token_families)",
                (time.time(),),
            )

    @staticmethod
    def _migrate_roles(c: sqlite3.Connection) -> None:
        """Version 2 allowed only reader and writer: rebuild `users` without that list (the console's admin
        role and policy roles are checked by the code that sets them). Nothing references `users` by a
        foreign key, so the copy-and-rename keeps every row and id as it was."""
        (sql,) = c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'").fetchone()
        if "'writer')" not in sql:
            return
        new_table = _SCHEMA.split("CREATE TABLE IF NOT EXISTS users", 1)[1].split(";", 1)[0]
        c.execute("CREATE TABLE users_v3" + new_table)
        c.execute(
            "INSERT INTO users_v3 SELECT id, username, password_hash, role, source, email, token_version,"
            " created_at, updated_at FROM users"
        )
        c.execute("DROP TABLE users")
        c.execute("ALTER TABLE users_v3 RENAME TO users")

    def open_reader(self) -> AuthStore:
        """A read-only connection to an existing store, for tiny lookups on the calling thread. In WAL mode
        readers do not wait for writers; the short busy timeout bounds the rare case when they must."""
        conn = sqlite3.connect(self.path, timeout=0.05, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=50")
        self._conn = conn
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> AuthStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("auth store is not open")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- users -----------------------------------------------------------------------------------
    def add_user(
        self, username: str, password_hash: str | None, role: str, *, source: str = "local", email: str | None = None
    ) -> User:
        now = time.time()
        user_id = uuid.uuid4().hex
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO users(id, username, password_hash, role, source, email, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (user_id, username, password_hash, role, source, email, now, now),
                )
        except sqlite3.IntegrityError:
            raise UserExists(username) from None
        user = self.get_user(user_id)
        if user is None:  # only if another process removed it in between
            raise StoreError(f"user {username} vanished right after it was added")
        return user

    def get_user(self, user_id: str) -> User | None:
        return from_row.user(self.conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())

    def get_user_by_name(self, username: str) -> User | None:
        return from_row.user(self.conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone())

    def list_users(self) -> list[UserListing]:
        rows = self.conn.execute(
            "SELECT id, username, role, source, email, created_at, updated_at FROM users"
            " ORDER BY username COLLATE NOCASE"
        ).fetchall()
        return [UserListing(**dict(r)) for r in rows]

    def remove_user(self, username: str) -> bool:
        with self._tx() as c:
            user = c.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if user is None:
                return False
            self._revoke_user_families(c, user["id"], "user removed")
            c.execute("DELETE FROM auth_codes WHERE user_id = ?", (user["id"],))
            c.execute("DELETE FROM users WHERE id = ?", (user["id"],))
        return True

    def set_password(self, username: str, password_hash: str) -> bool:
        """New password; every token issued before it stops working (version bump + families revoked)."""
        with self._tx() as c:
            user = c.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
            if user is None:
                return False
            c.execute(
                "UPDATE users SET password_hash = ?, token_version = token_version + 1, updated_at = ? WHERE id = ?",
                (password_hash, time.time(), user["id"]),
            )
            self._revoke_user_families(c, user["id"], "password changed")
        return True

    def set_role(self, username: str, role: str) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE users SET role = ?, updated_at = ? WHERE username = ?", (role, time.time(), username)
            )
            return cur.rowcount == 1

    def upsert_upstream_user(self, email: str, role: str) -> User:
        """A user signed in through OpenID Connect: found by e-mail (as username) or created."""
        existing = self.get_user_by_name(email)
        if existing is not None:
            return existing
        try:
            return self.add_user(email, None, role, source="oidc", email=email)
        except UserExists:  # created by a parallel sign-in a moment ago
            user = self.get_user_by_name(email)
            if user is None:
                raise StoreError(f"user {email} vanished right after it was added") from None
            return user

    @staticmethod
    def _revoke_user_families(c: sqlite3.Connection, user_id: str, reason: str) -> None:
        c.execute(
            "UPDATE token_families SET revoked_at = ?, revoked_reason = ? WHERE user_id = ? AND revoked_at IS NULL",
            (time.time(), reason, user_id),
        )

    # -- clients ---------------------------------------------------------------------------------
    def save_client(self, client: Client) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO clients(client_id, kind, secret_hash, auth_method, redirect_uris, grant_types,"
                " client_name, metadata, created_at, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(client_id) DO UPDATE SET kind = excluded.kind, secret_hash = excluded.secret_hash,"
                " auth_method = excluded.auth_method, redirect_uris = excluded.redirect_uris,"
                " grant_types = excluded.grant_types, client_name = excluded.client_name,"
                " metadata = excluded.metadata, fetched_at = excluded.fetched_at",
                (
                    client.client_id,
                    client.kind,
                    client.secret_hash,
                    client.auth_method,
                    json.dumps(list(client.redirect_uris)),
                    json.dumps(list(client.grant_types)),
                    client.client_name,
                    json.dumps(dict(client.metadata)),
                    client.created_at,
                    client.fetched_at,
                ),
            )

    def register_client(self, client: Client, address: str, max_per_hour: int) -> bool:
        """Save a dynamically registered client unless `address` already registered `max_per_hour` in the
        last hour (False). The count and the insert are one transaction, so parallel requests cannot
        slip past the bound."""
        now = time.time()
        with self._tx() as c:
            (recent,) = c.execute(
                "SELECT COUNT(*) FROM registrations WHERE address = ? AND at > ?", (address, now - 3600)
            ).fetchone()
            if recent >= max_per_hour:
                return False
            c.execute("INSERT INTO registrations(address, at) VALUES (?, ?)", (address, now))
        self.save_client(client)
        return True

    def get_client(self, client_id: str) -> Client | None:
        return from_row.client(self.conn.execute("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone())

    def list_clients(self) -> list[ClientListing]:
        """Every client, most recently used first, with its count of active grants (the operator console)."""
        rows = self.conn.execute(
            "SELECT c.client_id, c.kind, c.client_name, c.redirect_uris, c.created_at, c.last_used_at,"
            " (SELECT COUNT(*) FROM token_families f WHERE f.client_id = c.client_id AND f.revoked_at IS NULL"
            "  AND f.expires_at > ?) AS active_grants"
            " FROM clients c ORDER BY COALESCE(c.last_used_at, c.created_at) DESC",
            (time.time(),),
        ).fetchall()
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
        """Cut a client off: every token family it holds is revoked (its access tokens fail the bearer check
        on their next request, its refresh tokens are refused), its unredeemed codes are dropped, and the
        registration is forgotten, so it must register and be signed in again. Returns the families revoked,
        or -1 for an unknown client."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone() is None:
                return -1
            revoked = c.execute(
                "UPDATE token_families SET revoked_at = ?, revoked_reason = ? WHERE client_id = ?"
                " AND revoked_at IS NULL",
                (time.time(), reason, client_id),
            ).rowcount
            c.execute("DELETE FROM auth_codes WHERE client_id = ? AND used_at IS NULL", (client_id,))
            c.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))
        return revoked

    def mark_client_used(self, client_id: str, at: float) -> None:
        """An authorization was made for the client (create_code does this itself; the Redis store of
        issue 11 keeps codes elsewhere and calls it)."""
        with self._tx() as c:
            c.execute("UPDATE clients SET last_used_at = ? WHERE client_id = ?", (at, client_id))

    # -- pending authorization requests (the login and consent pages) -----------------------------
    def create_auth_request(
        self, request_id: str, browser_hash: str, csrf: str, params: AuthorizationRequest, ttl: float
    ) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO auth_requests(id, browser_hash, csrf, params, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, browser_hash, csrf, json.dumps(params.to_json()), now, now + ttl),
            )

    def get_auth_request(self, request_id: str) -> PendingSignIn | None:
        return from_row.pending(
            self.conn.execute(
                "SELECT * FROM auth_requests WHERE id = ? AND expires_at > ?", (request_id, time.time())
            ).fetchone()
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
                c.execute("UPDATE auth_requests SET csrf = ? WHERE id = ?", (csrf, request_id))
            if user_id is not None:
                c.execute("UPDATE auth_requests SET user_id = ? WHERE id = ?", (user_id, request_id))
            if upstream is not None:
                c.execute(
                    "UPDATE auth_requests SET upstream = ? WHERE id = ?", (json.dumps(upstream.to_json()), request_id)
                )

    def find_auth_request_by_upstream_state(self, state_hash: str) -> PendingSignIn | None:
        row = self.conn.execute(
            "SELECT id FROM auth_requests WHERE json_extract(upstream, '$.state_hash') = ? AND expires_at > ?",
            (state_hash, time.time()),
        ).fetchone()
        return self.get_auth_request(row["id"]) if row else None

    def delete_auth_request(self, request_id: str) -> bool:
        with self._tx() as c:
            return c.execute("DELETE FROM auth_requests WHERE id = ?", (request_id,)).rowcount == 1

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
        """Store a code, deleting the pending request in the same transaction (False if it was gone)."""
        now = time.time()
        with self._tx() as c:
            if (
                consume_request is not None
                and c.execute("DELETE FROM auth_requests WHERE id = ?", (consume_request,)).rowcount != 1
            ):
                return False
            c.execute(
                "INSERT INTO auth_codes(code_hash, client_id, user_id, redirect_uri, redirect_uri_given,"
                " code_challenge, scope, resources, issuer, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    code_hash,
                    client_id,
                    user_id,
                    redirect_uri,
                    int(redirect_uri_given),
                    code_challenge,
                    scope,
                    json.dumps(list(resources)),
                    issuer,
                    now,
                    now + ttl,
                ),
            )
            c.execute("UPDATE clients SET last_used_at = ? WHERE client_id = ?", (now, client_id))
        return True

    def consume_code(self, code_hash: str) -> CodeRedemption:
        """The code, marked used. A code presented twice revokes what the first exchange produced
        (RFC 6749 §4.1.2): the family id recorded on it."""
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT * FROM auth_codes WHERE code_hash = ?", (code_hash,)).fetchone()
            if row is None:
                return CodeRedemption(None, reused=False)
            code = from_row.code(row)
            if code.used_at is not None:
                if code.family_id:
                    c.execute(
                        "UPDATE token_families SET revoked_at = ?, revoked_reason = 'code reused'"
                        " WHERE family_id = ? AND revoked_at IS NULL",
                        (now, code.family_id),
                    )
                return CodeRedemption(code, reused=True)
            c.execute("UPDATE auth_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
            return CodeRedemption(code, reused=False)

    def attach_family_to_code(self, code_hash: str, family_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE auth_codes SET family_id = ? WHERE code_hash = ?", (family_id, code_hash))

    # -- token families and refresh tokens --------------------------------------------------------
    def create_family(self, *, client_id: str, user_id: str, token_version: int, ttl: float) -> str:
        family_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO token_families(family_id, client_id, user_id, token_version, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (family_id, client_id, user_id, token_version, now, now + ttl),
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
            c.execute(
                "INSERT INTO refresh_tokens(token_hash, family_id, client_id, user_id, scope, resources, issuer,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token_hash, family_id, client_id, user_id, scope, json.dumps(list(resources)), issuer, now, now + ttl),
            )

    def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        return from_row.refresh(
            self.conn.execute("SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
        )

    def rotate_refresh_token(
        self, old_hash: str, new_hash: str, client_id: str, ttl: float, reuse_leeway: float = 0.0
    ) -> Rotation:
        """Spend a refresh token and mint its successor in one transaction (the store's one thread and
        BEGIN IMMEDIATE serialise concurrent refreshes, so each sees the other's result).

        Returns `Rotated` (the spent token, its user and family, whether within the leeway) or a
        `RotationRefused` whose outcome is "unknown",
        "client_mismatch", "expired", "revoked", "user_gone", or "reused" - a spent token presented again
        more than `reuse_leeway` seconds after it was first spent, which revokes the whole family so a
        stolen copy and the legitimate one both stop working. Within the leeway the same client gets
        another successor in the same family (hosted connectors refresh in parallel); the leeway is
        counted from the first use, so presenting the token again never extends it.
        """
        now = time.time()
        with self._tx() as c:
            token = from_row.refresh(
                c.execute("SELECT * FROM refresh_tokens WHERE token_hash = ?", (old_hash,)).fetchone()
            )
            if token is None:
                return RotationRefused("unknown")
            if token.client_id != client_id:
                return RotationRefused("client_mismatch")
            family = from_row.family(
                c.execute("SELECT * FROM token_families WHERE family_id = ?", (token.family_id,)).fetchone()
            )
            if family is None or family.revoked_at is not None:
                return RotationRefused("revoked")
            within_leeway = token.used_at is not None and now - token.used_at <= reuse_leeway
            if token.used_at is not None and not within_leeway:
                c.execute(
                    "UPDATE token_families SET revoked_at = ?, revoked_reason = 'refresh token reused'"
                    " WHERE family_id = ?",
                    (now, token.family_id),
                )
                return RotationRefused("reused")
            if token.expires_at <= now or family.expires_at <= now:
                return RotationRefused("expired")
            user = from_row.user(c.execute("SELECT * FROM users WHERE id = ?", (token.user_id,)).fetchone())
            if user is None or user.token_version != family.token_version:
                return RotationRefused("user_gone")
            if not within_leeway:
                c.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, old_hash))
            c.execute(
                "INSERT INTO refresh_tokens(token_hash, family_id, client_id, user_id, scope, resources, issuer,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_hash,
                    token.family_id,
                    client_id,
                    token.user_id,
                    token.scope,
                    json.dumps(list(token.resources)),
                    token.issuer,
                    now,
                    min(now + ttl, family.expires_at),
                ),
            )
            return Rotated(token, user, family, within_leeway)

    def revoke_family(self, family_id: str, reason: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE token_families SET revoked_at = ?, revoked_reason = ? WHERE family_id = ?"
                " AND revoked_at IS NULL",
                (time.time(), reason, family_id),
            )

    def active_grants(self) -> list[GrantListing]:
        """Token families neither revoked nor expired, by user name then newest first (the operator console)."""
        rows = self.conn.execute(
            "SELECT f.family_id, f.user_id, u.username, f.client_id, c.client_name, f.created_at, f.expires_at"
            " FROM token_families f JOIN users u ON u.id = f.user_id LEFT JOIN clients c ON c.client_id = f.client_id"
            " WHERE f.revoked_at IS NULL AND f.expires_at > ?"
            " ORDER BY u.username COLLATE NOCASE, f.created_at DESC",
            (time.time(),),
        ).fetchall()
        return [GrantListing(**dict(r)) for r in rows]

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO revoked_tokens(jti, expires_at) VALUES (?, ?)", (jti, expires_at))

    def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None:
        """Everything the bearer check needs in one read: the user, and whether the token was revoked."""
        row = self.conn.execute(
            "SELECT u.id, u.username, u.role, u.token_version,"
            " EXISTS(SELECT 1 FROM revoked_tokens WHERE jti = ?) AS jti_revoked,"
            " (SELECT revoked_at FROM token_families WHERE family_id = ?) AS family_revoked_at"
            " FROM users u WHERE u.id = ?",
            (jti, family_id or "", user_id),
        ).fetchone()
        if row is None:
            return None
        return BearerRecord(
            id=row["id"],
            username=row["username"],
            role=row["role"],
            token_version=row["token_version"],
            jti_revoked=bool(row["jti_revoked"]),
            family_revoked_at=row["family_revoked_at"],
        )

    # -- sign-in throttling -----------------------------------------------------------------------
    def reserve_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> LoginAdmission:
        """Admit one password check, or refuse it, in one transaction: verdict "ok", "locked" (until
        then) or "slowed" (until the next attempt time).

        An admitted attempt is counted as a failure *before* the password is checked (and released by
        `release_login_attempt` when it was right), so however many attempts arrive at once, at most
        `policy.max_failures` wrong passwords are ever evaluated per user and address in a window.
        Three counters: the (user, address) pair locks; the address alone locks at a higher bound
        (one address spraying many user names); the user alone never locks but, past
        `policy.user_slow_after` failures from all addresses, admits one attempt per
        `policy.user_slow_seconds`, so a distributed guesser is slowed and the real user still gets in.
        An address this user signed in from within `KNOWN_ADDRESS_SECONDS` is not slowed at all (the
        guesser cannot take the user's slots there); its own pair lock still applies.
        """
        now = time.time()
        user = username.lower()
        keys = (f"pair:{user}|{address}", f"addr:{address}", f"user:{user}")
        with self._tx() as c:
            pair, addr, per_user = (self._throttle_counter(c, key, policy, now) for key in keys)
            for counter in (pair, addr):
                if counter.locked_until > now:
                    return LoginAdmission("locked", counter.locked_until)
            known = (
                c.execute(
                    "SELECT 1 FROM login_known WHERE key = ? AND at > ?", (keys[0], now - KNOWN_ADDRESS_SECONDS)
                ).fetchone()
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
                c.execute(
                    "INSERT INTO login_throttle(key, failures, window_start, locked_until, next_slot_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET failures = excluded.failures,"
                    " window_start = excluded.window_start, locked_until = excluded.locked_until,"
                    " next_slot_at = excluded.next_slot_at",
                    (key, counter.failures, counter.window_start, counter.locked_until, counter.next_slot_at),
                )
        return LoginAdmission("ok", 0.0)

    @staticmethod
    def _throttle_counter(c: sqlite3.Connection, key: str, policy: LoginPolicy, now: float) -> ThrottleCounter:
        row = c.execute(
            "SELECT failures, window_start, locked_until, next_slot_at FROM login_throttle WHERE key = ?", (key,)
        ).fetchone()
        fresh = ThrottleCounter(failures=0, window_start=now)
        if row is None:
            return fresh
        counter = ThrottleCounter(
            failures=row["failures"],
            window_start=row["window_start"],
            locked_until=row["locked_until"],
            next_slot_at=row["next_slot_at"],
        )
        lock_over = 0 < counter.locked_until <= now
        window_over = counter.locked_until <= now and counter.window_start + policy.lockout_seconds <= now
        return fresh if lock_over or window_over else counter

    def release_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> None:
        """The reserved attempt had the right password: forget the pair's failures and un-count it
        from the address and user totals."""
        user = username.lower()
        with self._tx() as c:
            c.execute("DELETE FROM login_throttle WHERE key = ?", (f"pair:{user}|{address}",))
            c.execute(
                "INSERT INTO login_known(key, at) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET at = excluded.at",
                (f"pair:{user}|{address}", time.time()),
            )
            c.execute(
                "UPDATE login_throttle SET failures = MAX(failures - 1, 0) WHERE key IN (?, ?)",
                (f"addr:{address}", f"user:{user}"),
            )
            c.execute(
                "UPDATE login_throttle SET locked_until = 0 WHERE key = ? AND failures < ?",
                (f"addr:{address}", policy.address_max_failures),
            )

    # -- signing keys ----------------------------------------------------------------------------
    # The store keeps `private_pem` as the caller hands it over: encrypted text (app/auth/statekey.py).
    def signing_keys(self, *, include_retired: bool = False) -> list[SigningKeyRow]:
        where = "" if include_retired else " WHERE retired_at IS NULL"
        rows = self.conn.execute(f"SELECT * FROM signing_keys{where} ORDER BY created_at").fetchall()
        return [from_row.signing_key(r) for r in rows]

    def add_signing_key(self, kid: str, alg: str, private_pem: str, signs_from: float) -> None:
        """A rotated-in key: published at once, signing from `signs_from`."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO signing_keys(kid, alg, private_pem, created_at, signs_from) VALUES (?, ?, ?, ?, ?)",
                (kid, alg, private_pem, time.time(), signs_from),
            )

    def retire_signing_keys(self, kids: Sequence[str], at: float) -> int:
        """Mark keys retired (they leave JWKS); idempotent, so every node may do it. Returns how many."""
        with self._tx() as c:
            changed = 0
            for kid in kids:
                cur = c.execute(
                    "UPDATE signing_keys SET retired_at = ? WHERE kid = ? AND retired_at IS NULL", (at, kid)
                )
                changed += cur.rowcount
        return changed

    def ensure_signing_key(self, make: Callable[[], tuple[str, str, str]]) -> list[SigningKeyRow]:
        """Create the first signing key if there is none (atomically, in case two processes start together)."""
        with self._tx() as c:
            if c.execute("SELECT 1 FROM signing_keys WHERE retired_at IS NULL").fetchone() is None:
                kid, alg, pem = make()
                c.execute(
                    "INSERT INTO signing_keys(kid, alg, private_pem, created_at) VALUES (?, ?, ?, ?)",
                    (kid, alg, pem, time.time()),
                )
        return self.signing_keys()

    def encrypt_plain_signing_keys(self, is_plain: Callable[[str], bool], encrypt: Callable[[str, str], str]) -> int:
        """Migrate keys stored in the clear (schema v1) to `encrypt(kid, pem)`; returns how many. Afterwards
        the file is rewritten (VACUUM) and the WAL truncated, so no page still holds the plain PEM."""
        with self._tx() as c:
            rows = c.execute("SELECT kid, private_pem FROM signing_keys").fetchall()
            plain = [(encrypt(r["kid"], r["private_pem"]), r["kid"]) for r in rows if is_plain(r["private_pem"])]
            c.executemany("UPDATE signing_keys SET private_pem = ? WHERE kid = ?", plain)
        if plain:
            self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(plain)

    # -- maintenance -----------------------------------------------------------------------------
    def cleanup(self, *, unused_client_seconds: float = 86400.0) -> None:
        """Forget what can no longer be used (runs periodically), and registered clients never used for
        an authorization within `unused_client_seconds` of registering."""
        now = time.time()
        with self._tx() as c:
            c.execute("DELETE FROM auth_requests WHERE expires_at <= ?", (now,))
            c.execute("DELETE FROM auth_codes WHERE expires_at <= ?", (now - 3600,))
            c.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?", (now,))
            c.execute("DELETE FROM token_families WHERE expires_at <= ?", (now,))
            c.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?", (now,))
            c.execute(
                "DELETE FROM login_throttle WHERE locked_until <= ? AND next_slot_at <= ? AND window_start <= ?",
                (now, now, now - 86400),
            )
            c.execute("DELETE FROM registrations WHERE at <= ?", (now - 3600,))
            c.execute("DELETE FROM login_known WHERE at <= ?", (now - KNOWN_ADDRESS_SECONDS,))
            # Metadata-document clients too: an unused one is only a cached copy, fetched again when needed.
            c.execute(
                "DELETE FROM clients WHERE last_used_at IS NULL AND created_at <= ?", (now - unused_client_seconds,)
            )


class StorageBackend(AuthStorage, Protocol):
    """An `AuthStorage` with a life cycle: `AuthStore` (SQLite) or `app.state.pgstore.PgAuthStore`."""

    def open(self) -> object: ...
    def close(self) -> None: ...


class AsyncAuthStore:
    """Runs auth store calls off the event loop: `await store.call(lambda s: s.get_user(user_id))`.

    `s` is the backend, typed as the `AuthStorage` Protocol, so a call is checked against the contract
    whichever backend runs it. SQLite runs on one dedicated thread (its connection is never shared);
    a thread-safe backend (PostgreSQL's connection pool) gets `threads` of them.

    The one exception is SQLite's bearer check lookup (an indexed read of a few rows, ~20 µs): it runs
    on the event loop's own read-only connection, because a thread hop per MCP request costs more than
    the query. If that read ever has to wait, it falls back to the thread.
    """

    def __init__(self, backend: StorageBackend | str | os.PathLike[str], *, threads: int = 1) -> None:
        self.sync: StorageBackend = AuthStore(backend) if isinstance(backend, (str, os.PathLike)) else backend
        # The SQLite file, also under the Redis layer of issue 11 (app.state.authredis wraps it as `durable`).
        durable = getattr(self.sync, "durable", self.sync)
        self.sqlite: AuthStore | None = durable if isinstance(durable, AuthStore) else None
        self.threads = 1 if self.sqlite is not None else threads
        self._executor: ThreadPoolExecutor | None = None
        self._reader: AuthStore | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="auth-store")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.sync.open)

    async def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None:
        if self.sqlite is None:
            return await self.call(lambda s: s.bearer_lookup(user_id, jti, family_id))
        try:
            if self._reader is None:
                self._reader = AuthStore(self.sqlite.path).open_reader()
            return self._reader.bearer_lookup(user_id, jti, family_id)
        except sqlite3.OperationalError:
            return await self.call(lambda s: s.bearer_lookup(user_id, jti, family_id))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        await asyncio.get_running_loop().run_in_executor(executor, self.sync.close)
        executor.shutdown(wait=True)

    async def call(self, method: Callable[Concatenate[AuthStorage, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`method(backend, *args, **kwargs)` run on the store's thread(s): usually a lambda over the
        `AuthStorage` Protocol; a function taking the store first (e.g. `open_signing_keys`) works too."""
        if self._executor is None:
            raise StoreError("auth store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(method, self.sync, *args, **kwargs))
