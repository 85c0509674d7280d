"""The Redis part of the auth state (REDIS_URL): what every node must see at once and nobody must keep.

`RedisAuthStorage` is an `AuthStorage` that keeps the durable records (users, clients, token families,
refresh tokens, the jti denylist, signing keys) in the SQLite or PostgreSQL backend it wraps, and the
ephemeral ones in Redis, so any node can serve any step of a sign-in:

- pending sign-ins (the login and consent pages) and authorization codes, with today's lifetimes; a code
  is spent by one Lua script, so two nodes redeeming it at once get one success, and the replay revokes
  the family the first exchange made (even when it arrives before that family was attached);
- sign-in throttling counters and registrations per address, updated by Lua scripts, so wrong passwords
  spread over several nodes lock out at the same count as on one node;
- revocation broadcasts: every revocation is published on one channel, and every worker drops what its
  `BearerCache` holds for it at once.

It runs on the auth store's threads (AsyncAuthStore), so it uses `RedisState.sync_client()`. A Redis
failure raises `RedisUnavailable` (a SafeError with text safe to show); the endpoints turn it into a
clear page or a 503 `temporarily_unavailable`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import structlog

from ..auth.records import (
    AuthorizationCode,
    AuthorizationRequest,
    BearerRecord,
    Client,
    ClientListing,
    CodeRedemption,
    GrantListing,
    LoginAdmission,
    LoginPolicy,
    PendingSignIn,
    RefreshToken,
    Rotation,
    RotationRefused,
    SigningKeyRow,
    UpstreamSignIn,
    User,
    UserListing,
)
from ..auth.store import KNOWN_ADDRESS_SECONDS, StorageBackend
from .redisstate import RedisState, RedisUnavailable

if TYPE_CHECKING:
    from redis.commands.core import Script

log = structlog.get_logger(__name__)

T = TypeVar("T")

# A bearer lookup is reused this long at most, even if a revocation message were lost: the broadcast is
# what makes the cache safe, this bound is the backstop (e.g. `mssql-mcp users` run on a VM without Redis).
BEARER_CACHE_SECONDS = 5.0
BEARER_CACHE_MAX_ENTRIES = 20_000
BEARER_CACHE_WATCH_SECONDS = 0.05  # how often the cache checks that the revocation listener is connected
# A spent (or expired) code is remembered this long after its lifetime, so a replay is still recognised
# and revokes what the first exchange produced (the SQL stores keep the row an hour too).
CODE_REPLAY_SECONDS = 3600
REGISTRATION_WINDOW_SECONDS = 3600

SYNC_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
    OSError,
)

BearerKey = tuple[str, str, str]  # (user id, jti, family id or "")


# --- revocation messages ------------------------------------------------------------------------------
def revocations_channel() -> str:
    return RedisState.key("auth", "revocations")


def revocation_message(*, family: str | None = None, jti: str | None = None) -> bytes:
    """One revocation: a token family, an access token (jti), or neither (drop everything: a user's
    password or role changed, a user was removed, a client was cut off)."""
    body: dict[str, str] = {}
    if family:
        body["family"] = family
    if jti:
        body["jti"] = jti
    return json.dumps(body or {"all": "1"}).encode()


class BearerCache:
    """Bearer lookups (`AuthStorage.bearer_lookup`) reused for a few seconds, per process.

    Safe only because every revocation reaches `drop` at once (published through Redis); so it answers
    only while the revocation listener is connected, and forgets everything the moment it is not (a
    message may have been missed). A lookup that was under way while something was revoked is not kept
    (the generation moved on).
    """

    def __init__(
        self,
        redis_state: RedisState,
        *,
        seconds: float = BEARER_CACHE_SECONDS,
        max_entries: int = BEARER_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_state
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()  # drops also come from the auth store's threads
        self._entries: dict[BearerKey, tuple[float, BearerRecord]] = {}
        self._generation = 0

    @property
    def usable(self) -> bool:
        return self.seconds > 0 and self.redis.available and self.redis.listening

    @property
    def generation(self) -> int:
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: BearerKey) -> BearerRecord | None:
        if not self.usable:
            self.clear()
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            with self._lock:
                self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: BearerKey, record: BearerRecord, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self.usable:
                return
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # rare (that many live tokens in a few seconds): start over
            self._entries[key] = (self._clock() + self.seconds, record)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def drop(self, message: bytes) -> None:
        """Forget what a revocation message names (everything, for a message it cannot read)."""
        try:
            body = json.loads(message)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        family, jti = body.get("family"), body.get("jti")
        if not isinstance(family, str) and not isinstance(jti, str):
            self.clear()
            return
        with self._lock:
            self._generation += 1
            for key in [k for k in self._entries if (family and k[2] == family) or (jti and k[1] == jti)]:
                del self._entries[key]


# --- Lua: each runs atomically in Redis ----------------------------------------------------------------
# KEYS: code, pending request ('' for none). ARGV: lifetime in ms, then the code's hash fields.
_CREATE_CODE = """
if KEYS[2] ~= '' and redis.call('DEL', KEYS[2]) ~= 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: code. ARGV: now, the client cut-off key prefix. Returns false (unknown) or {data, used_at, family}.
_CONSUME_CODE = """
local h = redis.call('HMGET', KEYS[1], 'data', 'client_id', 'created_at', 'used_at', 'family_id')
if not h[1] then return false end
if h[4] then
  redis.call('HSET', KEYS[1], 'reused', '1')
  return {h[1], h[4], h[5] or ''}
end
local cut = redis.call('GET', ARGV[2] .. h[2])
if cut and tonumber(cut) >= tonumber(h[3]) then return false end
redis.call('HSET', KEYS[1], 'used_at', ARGV[1])
return {h[1], '', ''}
"""

# KEYS: code. ARGV: family id. 0: no such code, 1: attached, 2: attached but the code was replayed meanwhile.
_ATTACH_FAMILY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'family_id', ARGV[1])
if redis.call('HGET', KEYS[1], 'reused') then return 2 end
return 1
"""

# KEYS: pending request, upstream index. ARGV: csrf, user id, upstream JSON, upstream state hash ('' = keep).
_UPDATE_REQUEST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'csrf', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'user_id', ARGV[2]) end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'upstream', ARGV[3])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl) end
end
return 1
"""

# The same rules as AuthStore.reserve_login_attempt (read its docstring), on Redis hashes.
# KEYS: pair, address, user, known pair. ARGV: now, max_failures, lockout_seconds, address_max_failures,
# user_slow_after, user_slow_seconds, known_address_seconds, keep_seconds.
_RESERVE_LOGIN = """
local now = tonumber(ARGV[1])
local max_failures, lockout, address_max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slow_after, slow_seconds = tonumber(ARGV[5]), tonumber(ARGV[6])
local known_seconds, keep = tonumber(ARGV[7]), tonumber(ARGV[8])
local function load(key)
  local v = redis.call('HMGET', key, 'failures', 'window_start', 'locked_until', 'next_slot_at')
  local fresh = {failures = 0, window_start = now, locked_until = 0, next_slot_at = 0}
  if not v[1] then return fresh end
  local c = {failures = tonumber(v[1]), window_start = tonumber(v[2]), locked_until = tonumber(v[3]),
             next_slot_at = tonumber(v[4])}
  local lock_over = c.locked_until > 0 and c.locked_until <= now
  local window_over = c.locked_until <= now and c.window_start + lockout <= now
  if lock_over or window_over then return fresh end
  return c
end
local pair, address, user = load(KEYS[1]), load(KEYS[2]), load(KEYS[3])
if pair.locked_until > now then return {'locked', tostring(pair.locked_until)} end
if address.locked_until > now then return {'locked', tostring(address.locked_until)} end
local known_at = redis.call('GET', KEYS[4])
local known = known_at and tonumber(known_at) > now - known_seconds
if not known and user.failures >= slow_after and user.next_slot_at > now then
  return {'slowed', tostring(user.next_slot_at)}
end
pair.failures = pair.failures + 1
if pair.failures >= max_failures then pair.locked_until = now + lockout end
address.failures = address.failures + 1
if address.failures >= address_max then address.locked_until = now + lockout end
user.failures = user.failures + 1
user.window_start = now
if user.failures >= slow_after then user.next_slot_at = now + slow_seconds end
for i, c in ipairs({pair, address, user}) do
  redis.call('HSET', KEYS[i], 'failures', tostring(c.failures), 'window_start', tostring(c.window_start),
             'locked_until', tostring(c.locked_until), 'next_slot_at', tostring(c.next_slot_at))
  redis.call('EXPIRE', KEYS[i], keep)
end
return {'ok', '0'}
"""

# KEYS: pair, address, user, known pair. ARGV: now, address_max_failures, known_address_seconds.
_RELEASE_LOGIN = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[3])
for i = 2, 3 do
  local failures = redis.call('HGET', KEYS[i], 'failures')
  if failures then
    local left = math.max(tonumber(failures) - 1, 0)
    redis.call('HSET', KEYS[i], 'failures', tostring(left))
    if i == 2 and left < tonumber(ARGV[2]) then redis.call('HSET', KEYS[i], 'locked_until', '0') end
  end
end
return 1
"""

# KEYS: the address's registrations. ARGV: now, max per window, a unique member, window seconds.
_REGISTER = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def _digest(*parts: str) -> str:
    """A fixed-length, unambiguous key part for values a client chooses (user names, addresses)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisAuthStorage:
    """AuthStorage: durable calls go to `durable`, ephemeral ones to Redis (see the module docstring)."""

    def __init__(self, durable: StorageBackend, redis_state: RedisState, bearer_cache: BearerCache | None) -> None:
        self.durable = durable
        self.redis = redis_state
        self.bearer_cache = bearer_cache
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------------------------
    def open(self) -> RedisAuthStorage:
        self.durable.open()
        return self

    def close(self) -> None:
        self.durable.close()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- Redis plumbing ----------------------------------------------------------------------------------
    def _sync(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                client = self.redis.sync_client()
                self._scripts = {
                    name: client.register_script(source)
                    for name, source in (
                        ("create_code", _CREATE_CODE),
                        ("consume_code", _CONSUME_CODE),
                        ("attach_family", _ATTACH_FAMILY),
                        ("update_request", _UPDATE_REQUEST),
                        ("reserve_login", _RESERVE_LOGIN),
                        ("release_login", _RELEASE_LOGIN),
                        ("register", _REGISTER),
                    )
                }
                self._client = client
            return self._client

    def _run(self, command: Callable[[redis.Redis], T]) -> T:
        """`command(client)`, or RedisUnavailable at once while Redis is known to be down."""
        if not self.redis.available:
            raise RedisUnavailable()
        try:
            return command(self._sync())
        except SYNC_DOWN_ERRORS as exc:
            log.warning("auth.redis_failed", error=type(exc).__name__)
            raise RedisUnavailable() from None

    def _script(self, name: str, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        return self._run(lambda client: self._scripts[name](keys=list(keys), args=list(args), client=client))

    @staticmethod
    def _key(*parts: str) -> str:
        return RedisState.key("auth", *parts)

    def _revoked(self, *, family: str | None = None, jti: str | None = None) -> None:
        """After a revocation is durable: drop it from this worker's cache now, and tell every other one."""
        message = revocation_message(family=family, jti=jti)
        if self.bearer_cache is not None:
            self.bearer_cache.drop(message)
        try:
            self._run(lambda client: client.publish(revocations_channel(), message))
        except RedisUnavailable:
            # The others' caches stop answering while they cannot hear Redis either, and entries live
            # BEARER_CACHE_SECONDS at most: the revocation itself is durable already.
            log.warning("auth.revocation_not_broadcast", family=bool(family), jti=bool(jti))

    # -- users (durable; changes that affect live tokens are broadcast) -----------------------------------
    def add_user(
        self, username: str, password_hash: str | None, role: str, *, source: str = "local", email: str | None = None
    ) -> User:
        return self.durable.add_user(username, password_hash, role, source=source, email=email)

    def get_user(self, user_id: str) -> User | None:
        return self.durable.get_user(user_id)

    def get_user_by_name(self, username: str) -> User | None:
        return self.durable.get_user_by_name(username)

    def list_users(self) -> list[UserListing]:
        return self.durable.list_users()

    def remove_user(self, username: str) -> bool:
        removed = self.durable.remove_user(username)
        if removed:
            self._revoked()
        return removed

    def set_password(self, username: str, password_hash: str) -> bool:
        changed = self.durable.set_password(username, password_hash)
        if changed:
            self._revoked()
        return changed

    def set_role(self, username: str, role: str) -> bool:
        changed = self.durable.set_role(username, role)
        if changed:
            self._revoked()
        return changed

    def upsert_upstream_user(self, email: str, role: str) -> User:
        return self.durable.upsert_upstream_user(email, role)

    # -- clients -------------------------------------------------------------------------------------------
    def save_client(self, client: Client) -> None:
        self.durable.save_client(client)

    def register_client(self, client: Client, address: str, max_per_hour: int) -> bool:
        """The per-address bound is counted in Redis (every node's registrations), the client saved durably."""
        admitted = self._script(
            "register",
            [self._key("registrations", _digest(address))],
            [time.time(), max_per_hour, client.client_id, REGISTRATION_WINDOW_SECONDS],
        )
        if not admitted:
            return False
        self.durable.save_client(client)
        return True

    def get_client(self, client_id: str) -> Client | None:
        return self.durable.get_client(client_id)

    def list_clients(self) -> list[ClientListing]:
        return self.durable.list_clients()

    def revoke_client(self, client_id: str, reason: str) -> int:
        revoked = self.durable.revoke_client(client_id, reason)
        if revoked >= 0:
            # Its codes not yet redeemed die with it (the SQL stores delete them): consume_code compares.
            now = time.time()
            try:
                self._run(
                    lambda client: client.set(self._key("client-cut", client_id), repr(now), ex=CODE_REPLAY_SECONDS * 2)
                )
            except RedisUnavailable:  # the client is cut off durably; a code it holds expires in minutes
                log.warning("auth.client_codes_not_cut", client_id=client_id)
            self._revoked()
        return revoked

    def mark_client_used(self, client_id: str, at: float) -> None:
        self.durable.mark_client_used(client_id, at)

    # -- pending sign-ins (Redis) -----------------------------------------------------------------------
    def create_auth_request(
        self, request_id: str, browser_hash: str, csrf: str, params: AuthorizationRequest, ttl: float
    ) -> None:
        now = time.time()
        key = self._key("request", request_id)
        fields = {
            "browser_hash": browser_hash,
            "csrf": csrf,
            "params": json.dumps(params.to_json()),
            "created_at": repr(now),
            "expires_at": repr(now + ttl),
        }

        def create(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(key, items=[part for pair in fields.items() for part in pair])
            pipe.pexpire(key, max(1, int(ttl * 1000)))
            pipe.execute()

        self._run(create)

    def get_auth_request(self, request_id: str) -> PendingSignIn | None:
        if not request_id:
            return None
        raw = self._run(lambda client: client.hgetall(self._key("request", request_id)))
        if not raw:
            return None
        fields = {str(_text(k)): str(_text(v)) for k, v in raw.items()}
        expires_at = float(fields["expires_at"])
        if expires_at <= time.time():
            return None
        upstream = fields.get("upstream")
        return PendingSignIn(
            id=request_id,
            browser_hash=fields["browser_hash"],
            csrf=fields["csrf"],
            params=AuthorizationRequest.from_json(json.loads(fields["params"])),
            user_id=fields.get("user_id") or None,
            upstream=UpstreamSignIn.from_json(json.loads(upstream)) if upstream else None,
            created_at=float(fields["created_at"]),
            expires_at=expires_at,
        )

    def update_auth_request(
        self,
        request_id: str,
        *,
        csrf: str | None = None,
        user_id: str | None = None,
        upstream: UpstreamSignIn | None = None,
    ) -> None:
        self._script(
            "update_request",
            [
                self._key("request", request_id),
                self._key("upstream-state", upstream.state_hash) if upstream else self._key("upstream-state", "-"),
            ],
            [csrf or "", user_id or "", json.dumps(upstream.to_json()) if upstream else "", request_id],
        )

    def find_auth_request_by_upstream_state(self, state_hash: str) -> PendingSignIn | None:
        request_id = _text(self._run(lambda client: client.get(self._key("upstream-state", state_hash))))
        if request_id is None:
            return None
        pending = self.get_auth_request(request_id)
        if pending is None or pending.upstream is None or pending.upstream.state_hash != state_hash:
            return None
        return pending

    def delete_auth_request(self, request_id: str) -> bool:
        return bool(self._run(lambda client: client.delete(self._key("request", request_id))))

    # -- authorization codes (Redis) ---------------------------------------------------------------------
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
        """Store a code, deleting the pending request in the same script (False if it was gone)."""
        now = time.time()
        data = {
            "code_hash": code_hash,
            "client_id": client_id,
            "user_id": user_id,
            "redirect_uri": redirect_uri,
            "redirect_uri_given": redirect_uri_given,
            "code_challenge": code_challenge,
            "scope": scope,
            "resources": list(resources),
            "issuer": issuer,
            "created_at": now,
            "expires_at": now + ttl,
        }
        fields = ["data", json.dumps(data), "client_id", client_id, "created_at", repr(now)]
        lifetime_ms = int((ttl + CODE_REPLAY_SECONDS) * 1000)
        request_key = self._key("request", consume_request) if consume_request is not None else ""
        created = self._script("create_code", [self._key("code", code_hash), request_key], [lifetime_ms, *fields])
        if not created:
            return False
        self.durable.mark_client_used(client_id, now)
        return True

    def consume_code(self, code_hash: str) -> CodeRedemption:
        """The code, marked used. A code presented twice revokes what the first exchange produced (RFC 6749
        §4.1.2): the family recorded on it, or, when the first exchange has not attached one yet, the
        family it attaches next (attach_family_to_code)."""
        found = self._script(
            "consume_code", [self._key("code", code_hash)], [repr(time.time()), self._key("client-cut", "")]
        )
        if not found:
            return CodeRedemption(None, reused=False)
        data_raw, used_raw, family_raw = (_text(v) or "" for v in found)
        data = json.loads(data_raw)
        code = AuthorizationCode(
            code_hash=data["code_hash"],
            client_id=data["client_id"],
            user_id=data["user_id"],
            redirect_uri=data["redirect_uri"],
            redirect_uri_given=bool(data["redirect_uri_given"]),
            code_challenge=data["code_challenge"],
            scope=data["scope"],
            resources=tuple(data["resources"]),
            issuer=data["issuer"],
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            used_at=float(used_raw) if used_raw else None,
            family_id=family_raw or None,
        )
        if code.used_at is None:
            return CodeRedemption(code, reused=False)
        if code.family_id:
            self.durable.revoke_family(code.family_id, "code reused")
            self._revoked(family=code.family_id)
        return CodeRedemption(code, reused=True)

    def attach_family_to_code(self, code_hash: str, family_id: str) -> None:
        outcome = self._script("attach_family", [self._key("code", code_hash)], [family_id])
        if int(outcome) == 2:  # replayed while this exchange was under way: what it made is revoked too
            self.durable.revoke_family(family_id, "code reused")
            self._revoked(family=family_id)

    # -- token families and refresh tokens (durable) ---------------------------------------------------
    def create_family(self, *, client_id: str, user_id: str, token_version: int, ttl: float) -> str:
        return self.durable.create_family(client_id=client_id, user_id=user_id, token_version=token_version, ttl=ttl)

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
        self.durable.add_refresh_token(
            token_hash,
            family_id=family_id,
            client_id=client_id,
            user_id=user_id,
            scope=scope,
            resources=resources,
            issuer=issuer,
            ttl=ttl,
        )

    def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        return self.durable.get_refresh_token(token_hash)

    def rotate_refresh_token(
        self, old_hash: str, new_hash: str, client_id: str, ttl: float, reuse_leeway: float = 0.0
    ) -> Rotation:
        rotation = self.durable.rotate_refresh_token(old_hash, new_hash, client_id, ttl, reuse_leeway)
        if isinstance(rotation, RotationRefused) and rotation.outcome == "reused":
            spent = self.durable.get_refresh_token(old_hash)
            if spent is not None:
                self._revoked(family=spent.family_id)
            else:
                self._revoked()
        return rotation

    def revoke_family(self, family_id: str, reason: str) -> None:
        self.durable.revoke_family(family_id, reason)
        self._revoked(family=family_id)

    def active_grants(self) -> list[GrantListing]:
        return self.durable.active_grants()

    def revoke_jti(self, jti: str, expires_at: float) -> None:
        self.durable.revoke_jti(jti, expires_at)
        self._revoked(jti=jti)

    def bearer_lookup(self, user_id: str, jti: str, family_id: str | None) -> BearerRecord | None:
        return self.durable.bearer_lookup(user_id, jti, family_id)

    # -- sign-in throttling (Redis) ----------------------------------------------------------------------
    def _throttle_keys(self, username: str, address: str) -> list[str]:
        user = username.lower()
        return [
            self._key("throttle", "pair", _digest(user, address)),
            self._key("throttle", "address", _digest(address)),
            self._key("throttle", "user", _digest(user)),
            self._key("throttle", "known", _digest(user, address)),
        ]

    def reserve_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> LoginAdmission:
        """AuthStore.reserve_login_attempt's rules, counted in Redis for every node at once."""
        keep = int(2 * policy.lockout_seconds + policy.user_slow_seconds) + 60
        verdict, until = self._script(
            "reserve_login",
            self._throttle_keys(username, address),
            [
                repr(time.time()),
                policy.max_failures,
                repr(float(policy.lockout_seconds)),
                policy.address_max_failures,
                policy.user_slow_after,
                repr(float(policy.user_slow_seconds)),
                KNOWN_ADDRESS_SECONDS,
                keep,
            ],
        )
        name = _text(verdict)
        if name == "locked":
            return LoginAdmission("locked", float(_text(until) or 0))
        if name == "slowed":
            return LoginAdmission("slowed", float(_text(until) or 0))
        return LoginAdmission("ok", 0.0)

    def release_login_attempt(self, username: str, address: str, policy: LoginPolicy) -> None:
        self._script(
            "release_login",
            self._throttle_keys(username, address),
            [repr(time.time()), policy.address_max_failures, KNOWN_ADDRESS_SECONDS],
        )

    # -- signing keys and maintenance (durable) ------------------------------------------------------------
    def signing_keys(self, *, include_retired: bool = False) -> list[SigningKeyRow]:
        return self.durable.signing_keys(include_retired=include_retired)

    def add_signing_key(self, kid: str, alg: str, private_pem: str, signs_from: float) -> None:
        self.durable.add_signing_key(kid, alg, private_pem, signs_from)

    def retire_signing_keys(self, kids: Sequence[str], at: float) -> int:
        return self.durable.retire_signing_keys(kids, at)

    def ensure_signing_key(self, make: Callable[[], tuple[str, str, str]]) -> list[SigningKeyRow]:
        return self.durable.ensure_signing_key(make)

    def encrypt_plain_signing_keys(self, is_plain: Callable[[str], bool], encrypt: Callable[[str, str], str]) -> int:
        return self.durable.encrypt_plain_signing_keys(is_plain, encrypt)

    def cleanup(self, *, unused_client_seconds: float = 86400.0) -> None:
        self.durable.cleanup(unused_client_seconds=unused_client_seconds)  # Redis forgets by itself (TTLs)
