"""JWT access tokens: ES256 keys kept in the auth store (so tokens survive restarts), signing and checking.

Uses joserfc, the JOSE library of the authlib project (authlib's own `authlib.jose` is deprecated in its
favour and authlib depends on it).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet

from .records import SigningKeyRow

ALG = "ES256"
TOKEN_TYPE = "at+jwt"
VERIFIED_CACHE_SIZE = 4096  # RFC 9068: tells access tokens apart from any other JWT signed with the same keys


class TokenInvalid(Exception):
    """The token is not one of ours or is damaged; `reason` is a bounded metrics label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate_key() -> tuple[str, str, str]:
    """(kid, alg, private PEM) for a new P-256 key."""
    kid = secrets.token_urlsafe(12)
    key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": ALG, "use": "sig"})
    return kid, ALG, key.as_pem(private=True).decode("ascii")


def _schedule_order(row: SigningKeyRow) -> tuple[float, float]:
    return (row["signs_from"], row["created_at"])


def key_states(rows: Sequence[SigningKeyRow], now: float, token_ttl: float) -> dict[str, str]:
    """Each key's state at `now` (kid -> 'signing', 'published' or 'retired'), from the times alone.

    Rotation (`mssql-mcp keys rotate`) stores a new key whose `signs_from` lies a publish delay ahead: until
    then it is only published (in JWKS, accepted), so every node and every client's JWKS cache has it before
    the first token it signs. From `signs_from` on it signs; the key before it stopped signing then and stays
    published until every access token it signed has expired (`token_ttl` later), then it is retired."""
    live = sorted((r for r in rows if r["retired_at"] is None), key=_schedule_order)
    states = {r["kid"]: "retired" for r in rows if r["retired_at"] is not None}
    started = [r for r in live if r["signs_from"] <= now] or live[:1]
    for index, row in enumerate(live):
        if row is started[-1]:
            states[row["kid"]] = "signing"
        elif row["signs_from"] > now:
            states[row["kid"]] = "published"  # not signing yet
        else:
            stopped_at = live[index + 1]["signs_from"]  # its successor started signing then
            states[row["kid"]] = "retired" if now >= stopped_at + token_ttl else "published"
    return states


class SigningKeys:
    def __init__(self, rows: Sequence[SigningKeyRow]) -> None:
        """`rows`: the keys not retired, private PEM decrypted."""
        if not rows:
            raise ValueError("no signing key")
        ordered = sorted(rows, key=_schedule_order)
        self._keys = [
            ECKey.import_key(row["private_pem"], parameters={"kid": row["kid"], "alg": row["alg"], "use": "sig"})
            for row in ordered
        ]
        # (signs_from, key): a key published ahead of its time signs only from then on.
        self._schedule = [(row["signs_from"], key) for row, key in zip(ordered, self._keys, strict=True)]
        self.kids = frozenset(row["kid"] for row in ordered)
        self.schedule_id = self.schedule_of(rows)
        self._keyset = KeySet(list[Key](self._keys))
        # A signature never changes its verdict: remember recent good tokens (a client sends the same
        # one on every request) and skip the ECDSA check, the most expensive part of the bearer check.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()

    @staticmethod
    def schedule_of(rows: Sequence[SigningKeyRow]) -> frozenset[tuple[str, float]]:
        """What decides signing and checking: a reload that finds the same keeps its verified-token cache."""
        return frozenset((row["kid"], row["signs_from"]) for row in rows)

    def signer(self, now: float | None = None) -> ECKey:
        """The key that signs now: the one that started signing last (the oldest if none has started)."""
        now = time.time() if now is None else now
        started = [key for signs_from, key in self._schedule if signs_from <= now]
        return started[-1] if started else self._schedule[0][1]

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.signer()
        header = {"alg": ALG, "typ": TOKEN_TYPE, "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=[ALG])

    def verify(self, token: str) -> dict[str, Any]:
        """Signature and header checks only; claims (exp, iss, aud) are the caller's job."""
        if not token or len(token) > 8192 or token.count(".") != 2:
            raise TokenInvalid("malformed")
        hit = self._verified.get(token)
        if hit is not None:
            self._verified.move_to_end(token)
            return dict(hit)
        try:
            decoded = jwt.decode(token, self._keyset, algorithms=[ALG])
        except JoseError as exc:
            name = type(exc).__name__
            # A key we never had (InvalidKeyId) is as untrustworthy as a bad signature: a forgery.
            raise TokenInvalid("bad_signature" if "Signature" in name or "KeyId" in name else "malformed") from None
        except (ValueError, TypeError, KeyError):
            raise TokenInvalid("malformed") from None
        if decoded.header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("malformed")
        claims = dict(decoded.claims)
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return dict(claims)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self._keys]}


def token_kid(token: str) -> str | None:
    """The kid a compact JWS names in its header, without checking anything (None when unreadable)."""
    head = token.split(".", 1)[0]
    if not head or len(head) > 1024:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, TypeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
