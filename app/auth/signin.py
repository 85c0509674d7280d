"""Checking a username and password, the one way every sign-in form does it (OAuth login, record pages).

The attempt is reserved before the password is checked (counted as a failure until it proves right), in
one store transaction, so a burst of parallel guesses cannot all be evaluated (store.reserve_login_attempt).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from .passwords import verify_password
from .records import LoginPolicy, ThrottleVerdict, User
from .state import AuthState

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SignInCheck:
    user: User | None  # the signed-in user, or None
    throttled: ThrottleVerdict | None = None  # "locked" or "slowed" when refused before checking
    until: float = 0.0  # with `throttled`: when another attempt may come


async def check_password(
    state: AuthState, username: str, password: str, address: str, *, event_prefix: str
) -> SignInCheck:
    """Throttle, then verify; metrics and one log line per refusal (`{event_prefix}.login_throttled` /
    `.login_failed`). A right password gives its reserved attempt back."""
    policy = LoginPolicy.from_settings(state.settings)
    admission = await state.store.call(lambda s: s.reserve_login_attempt(username, address, policy))
    if admission.verdict != "ok":
        state.metrics.login_failures.labels("throttled").inc()
        log.warning(f"{event_prefix}.login_throttled", address=address, verdict=admission.verdict)
        return SignInCheck(None, admission.verdict, admission.until)
    user = await state.store.call(lambda s: s.get_user_by_name(username))
    # argon2 takes tens of milliseconds: off the event loop, and off the store's thread too.
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    if not ok or user is None:
        reason = "unknown_user" if user is None else "bad_password"
        state.metrics.login_failures.labels(reason).inc()  # already counted by the reservation
        log.warning(
            f"{event_prefix}.login_failed", reason=reason, username=user.username if user else None, address=address
        )
        return SignInCheck(None)
    await state.store.call(lambda s: s.release_login_attempt(username, address, policy))
    return SignInCheck(user)
