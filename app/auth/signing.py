"""JWT access tokens: ES256 keys kept in the auth store (so tokens survive restarts), signing and checking.

Uses joserfc, the JOSE library of the authlib project (authlib's own `authlib.jose` is deprecated in its
favour and authlib depends on it).
"""

from __future__ import annotations

import secrets
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


class SigningKeys:
    def __init__(self, rows: Sequence[SigningKeyRow]) -> None:
        if not rows:
            raise ValueError("no signing key")
        self._keys = [
            ECKey.import_key(row["private_pem"], parameters={"kid": row["kid"], "alg": row["alg"], "use": "sig"})
            for row in rows
        ]
        self._active = self._keys[-1]  # the newest key signs; older ones still verify
        self._keyset = KeySet(list[Key](self._keys))
        # A signature never changes its verdict: remember recent good tokens (a client sends the same
        # one on every request) and skip the ECDSA check, the most expensive part of the bearer check.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": ALG, "typ": TOKEN_TYPE, "kid": self._active.kid}
        return jwt.encode(header, claims, self._active, algorithms=[ALG])

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
