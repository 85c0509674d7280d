"""Who is calling: produced by the bearer check, read by tools and audit logs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    subject: str  # stable user id ("anonymous" when auth is off)
    username: str
    role: str = "reader"  # "reader" | "writer"
    client_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    authenticated: bool = True

    @property
    def can_write(self) -> bool:
        return self.role == "writer"


# Callers let in by ALLOW_UNAUTH_TOOLS_CALL read only: a testing switch must never open writes to anyone.
ANONYMOUS = Principal(subject="anonymous", username="anonymous", role="reader", authenticated=False)
