"""One audit line per tool call: who ran what, how much came back, how it ended.

Called by the MCP layer after every tools/call. Tools put `fingerprint`, `sql` (optional), `rows`
and `bytes` into `ctx.audit`. The SQL text is logged only when AUDIT_SQL_TEXT is on; otherwise
the fingerprint (a hash of the statement with literals removed) lets an operator group and find
statements without storing the values users searched for.

The last RECENT_AUDIT_SIZE lines are also kept in memory (`recent_audit`) for the operator console at
/admin: the same fields as the log line (SQL text only under AUDIT_SQL_TEXT), nothing else. Like the log
stream it belongs to the process, and it starts empty on every restart.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core import Principal
from .logging import per_call_logger

if TYPE_CHECKING:
    from ..settings import Settings

AUDIT_LOGGER = "audit"

# Extra keys a tool may add to ctx.audit that are safe and useful in the audit line.
# `tables`: the qualified names the statement read (the policy check's tables_read, issue 14).
_PASSTHROUGH = ("table", "tables", "truncated", "truncated_reason", "reason", "error_code", "statement_type", "id")

_STRING_LITERAL = re.compile(r"N?'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_WHITESPACE = re.compile(r"\s+")
_OPERATOR = re.compile(r"\s*([=<>!]+|[,()])\s*")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)

RECENT_AUDIT_SIZE = 1000
# Appended on the event loop, read by the console on the same loop; deque bounds it (oldest dropped).
_recent: deque[Mapping[str, Any]] = deque(maxlen=RECENT_AUDIT_SIZE)


def recent_audit() -> list[Mapping[str, Any]]:
    """The recent audit lines, newest first (each with `at`, seconds since the epoch)."""
    return list(reversed(_recent))


def normalise_sql(sql: str) -> str:
    """Statement shape: comments dropped, literals replaced by ?, whitespace collapsed, lower-cased."""
    text = _COMMENT.sub(" ", sql)
    text = _STRING_LITERAL.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _OPERATOR.sub(r" \1 ", text)  # "id>2" and "id > 2" are the same statement
    return _WHITESPACE.sub(" ", text).strip().rstrip(";").strip().lower()


@functools.lru_cache(maxsize=2048)  # assistants repeat statements; five regex passes per call add up
def fingerprint_sql(sql: str) -> str:
    """Short stable id of a statement's shape: the same query with other values gets the same id."""
    return hashlib.sha256(normalise_sql(sql).encode()).hexdigest()[:16]


def audit_tool_call(
    *,
    principal: Principal,
    tool: str,
    outcome: str,
    duration_seconds: float,
    audit: dict[str, Any],
    settings: Settings | None,
) -> None:
    audit = audit or {}
    sql = audit.get("sql")
    fingerprint = audit.get("fingerprint") or (fingerprint_sql(sql) if isinstance(sql, str) and sql else None)
    fields: dict[str, Any] = {
        "user": principal.username,
        "subject": principal.subject,
        "role": principal.role,
        "client": principal.client_id,
        "tool": tool,
        "outcome": outcome,
        "duration_ms": round(duration_seconds * 1000.0, 2),
        "fingerprint": fingerprint,
        "rows": audit.get("rows"),
        "bytes": audit.get("bytes"),
    }
    if sql and settings is not None and settings.audit_sql_text:
        fields["sql"] = sql
    for key in _PASSTHROUGH:
        if key in audit:
            fields[key] = audit[key]
    per_call_logger(AUDIT_LOGGER).info("tool_call", **fields)
    _recent.append({"at": time.time(), **fields})
