"""Stored rows to typed records, for every auth store backend (SQLite rows and SQLAlchemy mappings alike).

Column names are the records' field names; only the columns a backend stores encoded (JSON lists, nested
records, 0/1 flags) are spelled out here.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .records import (
    AuthorizationCode,
    AuthorizationRequest,
    Client,
    PendingSignIn,
    RefreshToken,
    SigningKeyRow,
    TokenFamily,
    UpstreamSignIn,
    User,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class Row(Protocol):
    """What both backends' rows offer: values by column name (sqlite3.Row, SQLAlchemy's RowMapping)."""

    def __getitem__(self, column: str, /) -> Any: ...


R = TypeVar("R", bound="DataclassInstance")


def record(cls: type[R], row: Row, **decoded: object) -> R:
    """`cls` from a row whose column names are its field names; `decoded` gives the encoded fields."""
    return cls(**{f.name: decoded[f.name] if f.name in decoded else row[f.name] for f in fields(cls)})


def _json_tuple(row: Row, column: str) -> tuple[str, ...]:
    return tuple(json.loads(row[column]))


def user(row: Row | None) -> User | None:
    return None if row is None else record(User, row)


def client(row: Row | None) -> Client | None:
    if row is None:
        return None
    return record(
        Client,
        row,
        redirect_uris=_json_tuple(row, "redirect_uris"),
        grant_types=_json_tuple(row, "grant_types"),
        metadata=json.loads(row["metadata"]),
    )


def pending(row: Row | None) -> PendingSignIn | None:
    if row is None:
        return None
    return record(
        PendingSignIn,
        row,
        params=AuthorizationRequest.from_json(json.loads(row["params"])),
        upstream=UpstreamSignIn.from_json(json.loads(row["upstream"])) if row["upstream"] else None,
    )


def code(row: Row) -> AuthorizationCode:
    return record(
        AuthorizationCode,
        row,
        redirect_uri_given=bool(row["redirect_uri_given"]),
        resources=_json_tuple(row, "resources"),
    )


def family(row: Row | None) -> TokenFamily | None:
    return None if row is None else record(TokenFamily, row)


def refresh(row: Row | None) -> RefreshToken | None:
    return None if row is None else record(RefreshToken, row, resources=_json_tuple(row, "resources"))


def signing_key(row: Row) -> SigningKeyRow:
    return SigningKeyRow(
        kid=row["kid"],
        alg=row["alg"],
        private_pem=row["private_pem"],
        created_at=row["created_at"],
        retired_at=row["retired_at"],
        # Keys from before rotation existed (NULL) signed from the moment they were made.
        signs_from=row["created_at"] if row["signs_from"] is None else row["signs_from"],
    )
