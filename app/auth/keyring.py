"""Signing key rotation: the store-side steps shared by the nodes and `mssql-mcp keys`.

A rotation stores a new key that is published (JWKS, accepted) at once and signs only after a publish
delay, so every node (which re-reads the keys every KEY_RELOAD_SECONDS) and every client's JWKS cache
knows it before the first token it signs. The key it replaces stays published until the access tokens
it signed have expired, then it is retired (whoever notices first marks it: a node or the command).
The times alone decide each key's state (`signing.key_states`), so every node agrees without messages.
"""

from __future__ import annotations

import time

from .records import AuthStorage, SigningKeyRow
from .signing import generate_key, key_states
from .statekey import StateKey, is_plain, open_signing_keys

DEFAULT_PUBLISH_SECONDS = 300.0  # well past a node's reload and a client's usual JWKS cache
KEY_RELOAD_SECONDS = 30.0  # how often a node re-reads the keys (and at once for a token with an unknown kid)
UNKNOWN_KID_RELOAD_SECONDS = 1.0  # at most one extra reload a second, however many forged kids arrive


def retire_expired_keys(store: AuthStorage, token_ttl: float, now: float | None = None) -> list[str]:
    """Retire the keys whose tokens have all expired; returns their kids."""
    now = time.time() if now is None else now
    states = key_states(store.signing_keys(), now, token_ttl)
    due = [kid for kid, state in states.items() if state == "retired"]
    if due:
        store.retire_signing_keys(due, now)
    return due


def live_signing_keys(store: AuthStorage, state_key: StateKey, token_ttl: float) -> list[SigningKeyRow]:
    """What a node verifies and signs with: the keys not retired, decrypted (the first key made if none)."""
    retire_expired_keys(store, token_ttl)
    rows = store.signing_keys()
    if not rows or any(is_plain(row["private_pem"]) for row in rows):
        return open_signing_keys(store, state_key)  # first start or an old store: make or encrypt (locks)
    # The usual periodic reload: a plain read, no lock.
    return [SigningKeyRow(**{**row, "private_pem": state_key.decrypt(row["kid"], row["private_pem"])}) for row in rows]


def rotate_signing_key(store: AuthStorage, state_key: StateKey, publish_seconds: float) -> SigningKeyRow:
    """Store a new key, published now and signing `publish_seconds` from now; returns its row (encrypted)."""
    open_signing_keys(store, state_key)  # the state key must open the keys in use before we add one
    kid, alg, pem = generate_key()
    store.add_signing_key(kid, alg, state_key.encrypt(kid, pem), time.time() + publish_seconds)
    return next(row for row in store.signing_keys() if row["kid"] == kid)
