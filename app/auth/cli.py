"""`mssql-mcp users add|remove|list|passwd|role` and the demo user.

Users live in the auth store the running service uses (the SQLite file in DATA_DIR, or PostgreSQL when
STATE_DATABASE_URL is set), so changes apply at once: removing a user or changing a password stops that
user's tokens on every node. Passwords are typed at a prompt
(twice) or read from standard input with --password-stdin, never taken from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import redis

from ..settings import Settings
from ..state.authredis import revocation_message, revocations_channel
from ..state.backend import opened_backend
from .passwords import hash_password, password_problem, verify_password
from .records import AuthStorage
from .statekey import StateKey, StateKeyError, is_encrypted, load_state_key
from .store import UserExists

ROLES = ("reader", "writer", "admin")  # admin: signs in to the operator console at /admin (reads like a reader)
DEMO_USERNAME = "demo"
DEMO_PASSWORD_FILE = "demo-password.txt"
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,63}")


STDIN_HELP = (
    "read the password from the first line of standard input instead of prompting (needed without a "
    "terminal: ssh without -t, Ansible, cron)"
)


class CliError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mssql-mcp users", description="Manage the people who can sign in.")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument(
        "--role",
        choices=ROLES,
        default="reader",
        help="reader: read-only queries; writer: may also change data when READ_ONLY_MODE=false; "
        "admin: reads like a reader and manages users and clients at /admin",
    )
    add.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)
    remove = sub.add_parser("remove", help="delete a user and stop their tokens")
    remove.add_argument("username")
    lst = sub.add_parser("list", help="list users")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    passwd = sub.add_parser("passwd", help="set a new password (signs the user out everywhere)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true", help=STDIN_HELP)
    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)
    return parser


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        if not line:
            raise CliError("--password-stdin: standard input is empty; give the password as its first line")
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        if not _have_terminal():
            raise CliError(
                "no terminal to ask for the password: pass it on standard input with "
                "--password-stdin (e.g. `... --password-stdin < file`, one line)"
            )
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat password: ") != password:
                raise CliError("the passwords do not match")
        except (EOFError, KeyboardInterrupt):
            raise CliError("no password given") from None
    problem = password_problem(password)
    if problem:
        raise CliError(problem)
    return password


def _have_terminal() -> bool:
    """Whether getpass can prompt without echo: it talks to /dev/tty, whatever stdin is.

    Without one (ssh without -t, Ansible, cron, `< /dev/null`) getpass would warn, echo the password and
    end in EOFError; the caller is told about --password-stdin instead.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def username_problem(username: str) -> str | None:
    """Why a new username is not acceptable, or None (the CLI and the operator console share the rule)."""
    if not _USERNAME.fullmatch(username):
        return "a username is 1-64 characters: letters, digits and . _ @ + -"
    return None


def _check_username(username: str) -> str:
    problem = username_problem(username)
    if problem:
        raise CliError(problem)
    return username


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def users_main(
    settings: Settings, argv: list[str], *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage
        return int(exc.code or 0)
    try:
        with opened_backend(settings) as store:
            code = _run(store, args, stdin, stdout)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if code == 0 and args.action in SIGNS_OUT and settings.redis_url:
        _broadcast_revocation(settings.redis_url)
    return code


SIGNS_OUT = frozenset({"passwd", "role", "remove"})  # commands that change what a live token may do


def _broadcast_revocation(redis_url: str) -> None:
    """Tell running servers (REDIS_URL) to drop the bearer checks they reuse: the change applies at once
    instead of within their few seconds of reuse."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0) as client:
            client.publish(revocations_channel(), revocation_message())
    except (redis.RedisError, OSError):
        print("note: Redis is unreachable; running servers apply this within a few seconds", file=sys.stderr)


def _run(store: AuthStorage, args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    if args.action == "list":
        users = store.list_users()
        if args.json:
            fields = ("username", "role", "source", "created_at")
            print(json.dumps([{name: getattr(u, name) for name in fields} for u in users]), file=stdout)
        elif not users:
            print("no users yet: add one with `mssql-mcp users add NAME --role reader|writer`", file=stdout)
        else:
            width = max(8, *(len(u.username) for u in users))
            print(f"{'USERNAME':<{width}}  ROLE    SOURCE  CREATED", file=stdout)
            for u in users:
                print(f"{u.username:<{width}}  {u.role:<6}  {u.source:<6}  {_when(u.created_at)}", file=stdout)
        return 0
    username = _check_username(args.username)
    if args.action == "add":
        password = _read_password(args.password_stdin, stdin)
        try:
            store.add_user(username, hash_password(password), args.role)
        except UserExists:
            raise CliError(f"user {username} already exists (use passwd or role to change it)") from None
        print(f"added {username} ({args.role})", file=stdout)
        return 0
    if args.action == "remove":
        if not store.remove_user(username):
            raise CliError(f"no user {username}")
        print(f"removed {username}; their tokens no longer work", file=stdout)
        return 0
    if args.action == "passwd":
        if store.get_user_by_name(username) is None:
            raise CliError(f"no user {username}")
        store.set_password(username, hash_password(_read_password(args.password_stdin, stdin)))
        print(f"new password set for {username}; existing sign-ins were revoked", file=stdout)
        return 0
    if args.action == "role":
        if not store.set_role(username, args.role):
            raise CliError(f"no user {username}")
        print(f"{username} is now a {args.role}", file=stdout)
        return 0
    raise CliError(f"unknown action {args.action}")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def ensure_demo_user(settings: Settings) -> str:
    """Create the demo sign-in user when auth is on; return a line to print (its credentials), or ''.

    The random password is kept in DATA_DIR/demo-password.txt (mode 600) and reused on the next run,
    encrypted with the state key (app/auth/statekey.py) like the signing keys: the demo user is a writer,
    so the file must not hand that role to anyone who can read DATA_DIR.
    """
    if not settings.auth_enabled:
        return ""
    state_key = load_state_key(settings)
    password_file = Path(settings.data_dir) / DEMO_PASSWORD_FILE
    password = _read_demo_password(password_file, state_key)
    with opened_backend(settings) as store:
        user = store.get_user_by_name(DEMO_USERNAME)
        usable = bool(password) and password_problem(password) is None
        if user is not None and usable and verify_password(user.password_hash, password):
            if not is_encrypted(password_file.read_text(encoding="utf-8").strip()):
                _write_private(password_file, state_key.encrypt(DEMO_PASSWORD_FILE, password))  # older plain file
            return f"Sign in as {DEMO_USERNAME} / {password}"
        if not usable:
            password = secrets.token_urlsafe(12)
        if user is None:
            store.add_user(DEMO_USERNAME, hash_password(password), "writer")
        else:  # someone changed it: make the file and the user agree again
            store.set_password(DEMO_USERNAME, hash_password(password))
        _write_private(password_file, state_key.encrypt(DEMO_PASSWORD_FILE, password))
    return f"Sign in as {DEMO_USERNAME} / {password}"


def _read_demo_password(path: Path, state_key: StateKey) -> str:
    """The stored demo password, '' when there is none or it cannot be opened (a new one is made)."""
    if not path.is_file():
        return ""
    stored = path.read_text(encoding="utf-8").strip()
    if not is_encrypted(stored):
        return stored
    try:
        return state_key.decrypt(DEMO_PASSWORD_FILE, stored)
    except StateKeyError:
        return ""
