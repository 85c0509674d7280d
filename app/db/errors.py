"""Turn pyodbc exceptions into the layer's errors, by SQLSTATE rather than by exception class.

pyodbc raises whatever class the ODBC state maps to, and that mapping is not stable across drivers:
after a PostgreSQL restart psqlODBC first raises a plain `pyodbc.Error` with 57P01 and then an
`OperationalError` with 08S01. So every decision here (dead connection, timeout, cancel) looks at
the SQLSTATE and, for drivers that report a generic HY000, at the message text.
"""

from __future__ import annotations

import re

import pyodbc

# Connection exceptions (class 08), and PostgreSQL's "admin shutdown / crash shutdown / cannot connect now".
_DEAD_STATES = frozenset({"57P01", "57P02", "57P03", "HYT01"})
# Phrases drivers use when the link is gone but the SQLSTATE says little (HY000, 01000, none at all).
_DEAD_PHRASES = (
    "communication link failure",
    "server closed the connection",
    "connection is closed",
    "closed connection",
    "connection not open",
    "no connection to the server",
    "could not send data",
    "could not receive data",
    "terminating connection",
    "connection reset",
    "broken pipe",
    "ssl connection has been closed",
    "tcp provider",
    "physical connection is not usable",
    "the connection is broken",
    "connection was forcibly closed",
    "connection is dead",
)
# 57014: PostgreSQL query_canceled (both statement_timeout and cancel requests);
# HYT00: ODBC query timeout (SQL Server's cursor timeout); HY008: operation cancelled (SQLCancel).
TIMEOUT_STATES = frozenset({"HYT00"})
CANCEL_STATES = frozenset({"57014", "HY008"})

_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]\s*)+")
_SUFFIX = re.compile(r"(?:\s*\(-?\d+\))*\s*\((?:SQL\w+)\)\s*$")
_NOISE = re.compile(r";?\s*Error while executing the query(?:\s*\(-?\d+\))*", re.IGNORECASE)
_CODES = re.compile(r"(?:\s*\(-?\d+\))+\s*$")
_RECORD_SPLIT = re.compile(r";\s*(?=\[[0-9A-Z]{5}\])")


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE pyodbc put in args[0], if it looks like one."""
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], str) and len(args[0]) == 5:
        return args[0]
    return None


def raw_message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    if args and isinstance(args[0], str):
        return args[0]
    return str(exc)


def clean_message(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The driver's diagnostic without vendor prefixes, API names and native codes; secrets masked.

    "[42P01] ERROR: relation \"x\" does not exist;\\nError while executing the query (1) (SQLExecDirectW)"
    becomes 'ERROR: relation "x" does not exist'. pyodbc joins several diagnostic records with "; ".
    """
    parts: list[str] = []
    for record in _RECORD_SPLIT.split(raw_message(exc)):
        text = _PREFIX.sub("", record)
        text = _NOISE.sub("", text)
        text = _SUFFIX.sub("", text)
        text = _CODES.sub("", text)
        text = " ".join(text.split()).rstrip(";").strip()
        if text and text not in parts:
            parts.append(text)
    message = "; ".join(parts) or "database error"
    return redact(message, secrets)


def redact(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def is_dead_connection(exc: BaseException) -> bool:
    """True when the connection cannot be used any more and must be replaced."""
    if not isinstance(exc, pyodbc.Error):
        return False
    state = sqlstate_of(exc)
    if state is not None and (state.startswith("08") or state in _DEAD_STATES):
        return True
    text = raw_message(exc).lower()
    return any(phrase in text for phrase in _DEAD_PHRASES)


def is_server_timeout(exc: BaseException) -> bool:
    """A time limit enforced by the server or driver (not our watchdog)."""
    state = sqlstate_of(exc)
    if state in TIMEOUT_STATES:
        return True
    return state == "57014" and "statement timeout" in raw_message(exc).lower()


def is_cancel(exc: BaseException) -> bool:
    state = sqlstate_of(exc)
    if state in CANCEL_STATES:
        return True
    return "interrupted" in raw_message(exc).lower()  # SQLite: sqlite3_interrupt() -> HY000 "interrupted"
