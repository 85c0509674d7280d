"""`mssql-mcp keys list|rotate`: the token signing keys in the auth store (SQLite in DATA_DIR, or PostgreSQL
when STATE_DATABASE_URL is set), shared by every node. Never prints key material."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from ..settings import Settings
from ..state.backend import opened_backend
from .keyring import DEFAULT_PUBLISH_SECONDS, KEY_RELOAD_SECONDS, retire_expired_keys, rotate_signing_key
from .records import AuthStorage
from .signing import key_states
from .statekey import StateKey, StateKeyError, key_file_path, load_state_key
from .store import store_path


class KeysCliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mssql-mcp keys",
        description="The keys that sign access tokens. A rotation publishes the new key in JWKS at once and "
        "signs with it after a publish delay; the old key stays published until the tokens it signed have "
        "expired (ACCESS_TOKEN_TTL_SECONDS), then it is retired. Every node picks changes up by itself.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    lst = sub.add_parser("list", help="kid, created, state (signing / published / retired) of every key")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    rotate = sub.add_parser("rotate", help="add a new signing key (published now, signing after the delay)")
    rotate.add_argument(
        "--publish-seconds",
        type=float,
        default=DEFAULT_PUBLISH_SECONDS,
        metavar="N",
        help=f"seconds between publishing the new key and signing with it (default {DEFAULT_PUBLISH_SECONDS:g}; "
        f"keep it above a node's key reload, {KEY_RELOAD_SECONDS:g} s, and clients' JWKS caching)",
    )
    return parser


def _when(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state_key(settings: Settings) -> StateKey:
    """The service's state key; never generated here (a new one could not open the stored keys)."""
    if not settings.state_encryption_key:
        path, _ = key_file_path(settings)
        if not path.is_file():
            raise KeysCliError(
                f"state encryption key missing: no STATE_ENCRYPTION_KEY and no key file at {path}; "
                "run this with the same STATE_ENCRYPTION_KEY(_FILE) as the service"
            )
    return load_state_key(settings)


def keys_main(settings: Settings, argv: list[str], *, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage
        return int(exc.code or 0)
    try:
        if not settings.state_database_url and not store_path(settings.data_dir).is_file():
            raise KeysCliError(
                f"no auth store at {store_path(Path(settings.data_dir))}: start the service once "
                "(or set DATA_DIR / STATE_DATABASE_URL to the service's)"
            )
        state_key = _state_key(settings) if args.action == "rotate" else None
        with opened_backend(settings) as store:
            return _run(store, settings, args, state_key, stdout)
    except (KeysCliError, StateKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(
    store: AuthStorage, settings: Settings, args: argparse.Namespace, state_key: StateKey | None, stdout: TextIO
) -> int:
    ttl = float(settings.access_token_ttl_seconds)
    if args.action == "rotate":
        if args.publish_seconds < 0:
            raise KeysCliError("--publish-seconds must be 0 or more")
        if state_key is None:
            raise KeysCliError("state encryption key missing")
        row = rotate_signing_key(store, state_key, args.publish_seconds)
        print(f"added key {row['kid']}: published now, signing from {_when(row['signs_from'])}", file=stdout)
        return 0
    retire_expired_keys(store, ttl)
    rows = store.signing_keys(include_retired=True)
    states = key_states(rows, datetime.now(UTC).timestamp(), ttl)
    if args.json:
        listing = [
            {
                "kid": row["kid"],
                "state": states[row["kid"]],
                "created_at": row["created_at"],
                "signs_from": row["signs_from"],
                "retired_at": row["retired_at"],
            }
            for row in rows
        ]
        print(json.dumps(listing), file=stdout)
    elif not rows:
        print("no signing keys yet: the service makes the first one when it starts", file=stdout)
    else:
        width = max(len(row["kid"]) for row in rows)
        print(f"{'KID':<{width}}  STATE      CREATED                  SIGNS FROM               RETIRED", file=stdout)
        for row in rows:
            print(
                f"{row['kid']:<{width}}  {states[row['kid']]:<9}  {_when(row['created_at']):<23}  "
                f"{_when(row['signs_from']):<23}  {_when(row['retired_at'])}",
                file=stdout,
            )
    return 0
