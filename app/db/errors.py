"""Turn pyodbc exceptions into the layer's errors, by SQLSTATE rather than by exception class.

pyodbc raises whatever class the ODBC state maps to, and that mapping is not stable across drivers:
after a PostgreSQL restart psqlODBC first raises a plain `pyodbc.Error` with 57P01 and then an
`OperationalError` with 08S01. So every decision here (dead connection, timeout, cancel) looks at
the SQLSTATE and, for drivers that report a generic HY000, at the start of the driver's own text (never at
words inside a server's message, which can quote user data).
"""

from __future__ import annotations

import re

import pyodbc

# Connection exceptions (class 08), and PostgreSQL's "admin shutdown / crash shutdown / cannot connect now".
_DEAD_STATES = frozenset({"57P01", "57P02", "57P03", "HYT01"})
# How a driver's *own* diagnostic starts when the link is gone but the SQLSTATE says little (HY000, 01000,
# none at all). Only the start of the driver's text is compared, never the whole message: a server's message
# ("[SQL Server]...", "ERROR: ...") can quote user data (a value, a table name, a RAISERROR text), so a
# phrase anywhere in it must not make a healthy connection look dead (issue 15, item 12).
_DEAD_DRIVER_PREFIXES = (
    "communication link failure",  # Microsoft drivers
    "tcp provider:",
    "ssl provider:",
    "session provider:",
    "shared memory provider:",
    "named pipes provider:",
    "server closed the connection",  # libpq text relayed by psqlODBC
    "could not send data",
    "could not receive data",
    "no connection to the server",
    "ssl connection has been closed",
    "terminating connection",
    "the connection is broken",
    "attempt to use a closed connection",  # pyodbc itself, no SQLSTATE
)
# Tags of the last bracket that mark a server's message rather than the driver's own text.
_SERVER_TAGS = frozenset({"sql server"})
# SQLSTATEs of a deadlock victim or a serialization failure: SQL Server 1205 and PostgreSQL report 40001,
# PostgreSQL's deadlock_detected is 40P01. The transaction was rolled back; a read can simply run again.
DEADLOCK_STATES = frozenset({"40001", "40P01"})
# 57014: PostgreSQL query_canceled (both statement_timeout and cancel requests);
# HYT00: ODBC query timeout (SQL Server's cursor timeout); HY008: operation cancelled (SQLCancel).
TIMEOUT_STATES = frozenset({"HYT00"})
CANCEL_STATES = frozenset({"57014", "HY008"})

_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]\s*)+")
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_SUFFIX = re.compile(r"(?:\s*\(-?\d+\))*\s*\((?:SQL\w+)\)\s*$")
_NOISE = re.compile(r";?\s*Error while executing the query(?:\s*\(-?\d+\))*", re.IGNORECASE)
_CODES = re.compile(r"(?:\s*\(-?\d+\))+\s*$")
_RECORD_SPLIT = re.compile(r";\s*(?=\[[0-9A-Z]{5}\])")


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE pyodbc put in args[0], if it looks like one."""
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], str) and len(args[0]) == 5:
        return args[0]
    return None


def raw_message(exc: BaseException) -> str:
    args = exc.args
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


def driver_text(exc: BaseException) -> str | None:
    """The first diagnostic record's text when the driver (or pyodbc) wrote it itself, lower-cased and without
    its bracketed prefixes; None when it is a server's message ("[...][SQL Server]...") that may hold user
    data. psqlODBC relays server errors as "ERROR: ..." / "FATAL: ...", which no driver prefix starts with."""
    record = _RECORD_SPLIT.split(raw_message(exc))[0]
    prefix = _PREFIX.match(record)
    if prefix is not None:
        tags = [tag.strip().lower() for tag in _BRACKETS.findall(prefix.group(0))]
        if tags and tags[-1] in _SERVER_TAGS:
            return None
        record = record[prefix.end() :]
    return " ".join(record.split()).lower()


def _driver_says(exc: BaseException, prefixes: tuple[str, ...]) -> bool:
    text = driver_text(exc)
    return text is not None and text.startswith(prefixes)


def is_dead_connection(exc: BaseException) -> bool:
    """True when the connection cannot be used any more and must be replaced: by SQLSTATE, else by the start
    of the driver's own diagnostic (never by words inside a server's message)."""
    if not isinstance(exc, pyodbc.Error):
        return False
    state = sqlstate_of(exc)
    if state is not None and (state.startswith("08") or state in _DEAD_STATES):
        return True
    return _driver_says(exc, _DEAD_DRIVER_PREFIXES)


def is_deadlock(exc: BaseException) -> bool:
    """The statement was chosen as a deadlock victim (or hit a serialization failure) and rolled back."""
    return isinstance(exc, pyodbc.Error) and sqlstate_of(exc) in DEADLOCK_STATES


def is_tls_failure(exc: BaseException) -> bool:
    """Microsoft ODBC Driver 17/18 could not set up TLS (untrusted or mismatched certificate, no common
    protocol): SQLSTATE 08001 with the driver's own "SSL Provider:" text. A configuration error, like a refused
    login: it does not heal by retrying every few seconds."""
    return sqlstate_of(exc) == "08001" and _driver_says(exc, ("ssl provider:",))


def is_server_timeout(exc: BaseException) -> bool:
    """A time limit enforced by the server or driver (not our watchdog)."""
    state = sqlstate_of(exc)
    if state in TIMEOUT_STATES:
        return True
    # PostgreSQL's fixed text for statement_timeout; the server writes it, no user data can be in it.
    return state == "57014" and "canceling statement due to statement timeout" in raw_message(exc).lower()


def is_cancel(exc: BaseException) -> bool:
    state = sqlstate_of(exc)
    if state in CANCEL_STATES:
        return True
    # SQLite: sqlite3_interrupt() -> HY000 "[SQLite]interrupted", the driver's own text.
    return _driver_says(exc, ("interrupted",))
