"""Per-call observability on its fast paths (issue 10) writes what the general paths wrote.

The audit line goes through a logger assembled once per configure_logging (structlog's native WriteLogger in
JSON mode), redaction skips the per-name test for names it knows are plain, request ids come from
os.urandom, and the HTTP metrics' labelled children are resolved once.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest

from app.core import Principal
from app.obs import _incoming_or_new_request_id
from app.obs import logging as obs_logging
from app.obs.audit import audit_tool_call, recent_audit
from app.obs.logging import configure_logging, per_call_logger, redact_secrets, unconfigure_logging
from app.obs.metrics import HTTP_SERIES_CACHED, Metrics
from app.settings import load_settings

ALICE = Principal(subject="u-1", username="alice", role="reader", client_id="client-abc")
AUDIT = {
    "sql": "SELECT * FROM orders WHERE note = 'password=hunter2'",
    "rows": 3,
    "bytes": 120,
    "tables": ["main.orders"],
    "statement_type": "select",
    "truncated": False,
    "reason": "token=abc123 was seen",
}


def settings(**overrides: Any) -> Any:
    return load_settings(environ={}, env_file=None, db_backend="sqlite", sqlite_path="unused.db", **overrides)


@pytest.fixture
def configured() -> Iterator[Any]:
    """configure_logging(format, level) into a StringIO; the stream is returned."""

    def configure(log_format: str = "json", log_level: str = "INFO", **overrides: Any) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(settings(log_format=log_format, log_level=log_level, **overrides), stream=stream)
        return stream

    yield configure
    unconfigure_logging()


def _audit(**overrides: Any) -> None:
    audit_tool_call(
        principal=ALICE,
        tool="execute_sql",
        outcome="ok",
        duration_seconds=0.01234,
        audit=dict(AUDIT),
        settings=settings(audit_sql_text=True, **overrides),
    )


def _stdlib_chain_line(request_id: str) -> None:
    """The audit line's fields sent through the configured stdlib chain, as audit_tool_call did before."""
    fields = {k: v for k, v in recent_audit()[0].items() if k != "at"}
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        structlog.get_logger("audit").info("tool_call", **fields)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_audit_line_is_the_stdlib_chains_line(configured: Any, log_format: str) -> None:
    stream = configured(log_format)
    tokens = structlog.contextvars.bind_contextvars(request_id="rid-1")
    try:
        _audit()
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    _stdlib_chain_line("rid-1")
    fast, general = stream.getvalue().splitlines()
    timestamp = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z")
    assert timestamp.sub("T", fast) == timestamp.sub("T", general)  # same fields, values, order and text
    if log_format == "json":
        line = json.loads(fast)
        assert list(line)[-5:] == ["event", "request_id", "level", "logger", "timestamp"]
        assert line["sql"] == "SELECT * FROM orders WHERE note = 'password=***"  # redacted as ever
        assert line["reason"] == "token=abc123 was seen" and line["tables"] == ["main.orders"]


def test_the_audit_line_follows_a_new_configuration(configured: Any) -> None:
    first = configured("json")
    _audit()
    second = configured("json")
    _audit()
    assert len(first.getvalue().splitlines()) == 1 and len(second.getvalue().splitlines()) == 1
    quiet = configured("json", log_level="WARNING")
    _audit()
    assert quiet.getvalue() == ""  # LOG_LEVEL above info drops the audit line, as before
    assert recent_audit()[0]["tool"] == "execute_sql"  # the console's copy is kept regardless


def test_without_configure_logging_the_audit_line_uses_structlogs_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    unconfigure_logging()
    assert per_call_logger("audit") is not per_call_logger("audit")  # structlog's lazy proxy, one per call
    _audit()
    assert "tool_call" in capsys.readouterr().out


@pytest.mark.parametrize(
    "event",
    [
        {"user": "alice", "password": "hunter2", "note": "x"},
        {"event": "e", "headers": {"Authorization": "Bearer abcdefghij"}, "n": 1, "empty": [], "none": None},
        {"event": "e", "query": "a?code=secret123&x=1", "count": 2, "ok": True, "ratio": 0.5},
        {"event": "e", "client_secret": "", "token": None, "api_key": 7, "items": ("a=b c", {"pwd": "p"})},
        {"event": "e", "dsn": "Driver=x;PWD={s3cret};Server=y", "size": 10},
    ],
)
def test_redaction_is_the_same_once_names_are_known(event: dict[str, Any]) -> None:
    reference = obs_logging._redact_with_names(dict(event))
    assert redact_secrets(None, "info", dict(event)) == reference  # names learnt here
    assert redact_secrets(None, "info", dict(event)) == reference  # and the short path now
    assert not (obs_logging._PLAIN_NAMES & {"password", "client_secret", "token", "api_key"})


def test_new_request_ids_have_uuid4_hex_shape_and_differ() -> None:
    ids = {_incoming_or_new_request_id(None) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)
    assert _incoming_or_new_request_id("edge-42") == "edge-42"
    assert re.fullmatch(r"[0-9a-f]{32}", _incoming_or_new_request_id("has space"))


def test_http_series_count_what_labels_counted() -> None:
    metrics = Metrics()
    for status in (200, 200, 404, 503, 499):
        requests, duration = metrics.http_series("/mcp", "POST", status)
        requests.inc()
        duration.observe(0.002)
    sample = metrics.registry.get_sample_value
    assert sample("mssql_mcp_http_requests_total", {"route": "/mcp", "method": "POST", "status": "2xx"}) == 2
    assert sample("mssql_mcp_http_requests_total", {"route": "/mcp", "method": "POST", "status": "4xx"}) == 2
    assert sample("mssql_mcp_http_requests_total", {"route": "/mcp", "method": "POST", "status": "5xx"}) == 1
    assert sample("mssql_mcp_http_request_duration_seconds_count", {"route": "/mcp", "method": "POST"}) == 5
    assert metrics.http_series("/mcp", "POST", 200)[0] is metrics.http_requests.labels("/mcp", "POST", "2xx")
    for status in range(HTTP_SERIES_CACHED + 10):
        metrics.http_series("/x", "GET", status)
    assert len(metrics._http_series) == HTTP_SERIES_CACHED  # bounded
    assert b'status="5xx"' in generate_latest(metrics.registry)


def test_requests_in_flight_are_counted_for_the_scrape() -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    metrics.http_request_started()
    metrics.http_request_started()
    assert sample("mssql_mcp_http_requests_in_flight") == 2
    metrics.http_request_finished()
    metrics.http_request_finished()
    assert sample("mssql_mcp_http_requests_in_flight") == 0
