"""structlog set-up, secret redaction and the audit line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from app.core import Principal
from app.obs.audit import audit_tool_call, fingerprint_sql, normalise_sql
from app.obs.logging import configure_logging, scrub_text, unconfigure_logging
from app.settings import load_settings

SECRETS = (
    "hunter2-pass",
    "tok.en-value-123",
    "client-secret-xyz",
    "verifier-abcdefgh",
    "refresh-777777",
    "Zm9vOmJhcmJheg",
)


def settings(**overrides):
    return load_settings(environ={}, env_file=None, db_backend="sqlite", sqlite_path="unused.db", **overrides)


def test_json_lines_with_level_logger_timestamp(captured_logs) -> None:
    structlog.get_logger("app.example").info("hello", answer=42)
    [line] = captured_logs.lines()
    assert line["event"] == "hello" and line["answer"] == 42
    assert line["level"] == "info" and line["logger"] == "app.example"
    assert line["timestamp"].endswith("Z")


def test_secret_keys_are_redacted_at_any_depth(captured_logs) -> None:
    log = structlog.get_logger("app.example")
    log.info(
        "login",
        username="alice",
        password="hunter2-pass",
        client_secret="client-secret-xyz",
        headers={"Authorization": "Bearer tok.en-value-123", "Accept": "application/json"},
        form=[{"code_verifier": "verifier-abcdefgh", "refresh_token": "refresh-777777"}],
        Access_Token="tok.en-value-123",
        empty_password="",
    )
    [line] = captured_logs.lines()
    assert line["username"] == "alice"
    assert line["password"] == "***" and line["client_secret"] == "***" and line["Access_Token"] == "***"
    assert line["headers"] == {"Authorization": "***", "Accept": "application/json"}
    assert line["form"] == [{"code_verifier": "***", "refresh_token": "***"}]
    assert line["empty_password"] == ""  # nothing to hide; shows the field was empty
    for secret in SECRETS:
        assert secret not in captured_logs.text


def test_secret_fragments_in_strings_are_redacted(captured_logs) -> None:
    log = structlog.get_logger("app.example")
    log.warning("connect failed: DRIVER={ODBC Driver 18};SERVER=db;UID=sa;PWD=hunter2-pass;Encrypt=yes")
    log.warning("odbc", dsn="Server=db;Password={hunter2-pass};Database=x")
    log.info("callback", url="https://app/cb?code=verifier-abcdefgh&state=ok&client_secret=client-secret-xyz")
    log.info("header Authorization: Bearer tok.en-value-123 seen")
    log.info("basic Authorization: Basic Zm9vOmJhcmJheg== seen")
    text = captured_logs.text
    for secret in SECRETS:
        assert secret not in text
    lines = captured_logs.lines()
    assert "UID=sa;PWD=***;Encrypt=yes" in lines[0]["event"]
    assert lines[1]["dsn"] == "Server=db;Password=***;Database=x"
    assert lines[2]["url"] == "https://app/cb?code=***&state=ok&client_secret=***"


def test_stdlib_logging_goes_through_structlog(captured_logs) -> None:
    logging.getLogger("aiohttp.server").error("Error handling request from %s: PWD=%s", "10.0.0.1", "hunter2-pass")
    [line] = captured_logs.lines()
    assert line["logger"] == "aiohttp.server" and line["level"] == "error"
    assert line["event"] == "Error handling request from 10.0.0.1: PWD=***"


def test_exceptions_are_rendered_and_redacted(captured_logs) -> None:
    try:
        raise ValueError("cannot connect with PWD=hunter2-pass")
    except ValueError:
        structlog.get_logger("app.example").exception("boom")
        logging.getLogger("aiohttp.web").exception("stdlib boom")
    lines = captured_logs.lines()
    assert [line["event"] for line in lines] == ["boom", "stdlib boom"]
    for line in lines:
        assert "ValueError: cannot connect with PWD=***" in line["exception"]
    assert "hunter2-pass" not in captured_logs.text


def test_level_from_settings() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_level="WARNING", log_format="json"), stream=stream)
    try:
        structlog.get_logger("x").info("dropped")
        logging.getLogger("y").info("dropped too")
        structlog.get_logger("x").warning("kept")
    finally:
        unconfigure_logging()
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["kept"]


def test_console_format_for_development() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_format="console"), stream=stream)
    try:
        structlog.get_logger("x").info("hello console", password="hunter2-pass", dsn="UID=a;PWD=hunter2-pass")
    finally:
        unconfigure_logging()
    text = stream.getvalue()
    assert "hello console" in text and not text.lstrip().startswith("{")
    assert "hunter2-pass" not in text


@pytest.mark.parametrize(("isatty", "expected_json"), [(False, True), (True, False)])
def test_auto_format_is_console_only_on_a_terminal(isatty: bool, expected_json: bool) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return isatty

    stream = Stream()
    configure_logging(settings(log_format="auto"), stream=stream)
    try:
        structlog.get_logger("x").info("which format")
    finally:
        unconfigure_logging()
    assert stream.getvalue().startswith("{") is expected_json


def test_configure_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(settings(log_format="json"), stream=first)
    configure_logging(settings(log_format="json"), stream=second)
    try:
        structlog.get_logger("x").info("once")
    finally:
        unconfigure_logging()
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Driver=x;Uid=u;Pwd={a;b};Server=s", "Driver=x;Uid=u;Pwd=***;Server=s"),
        ("GET /cb?state=1&code=abc HTTP/1.1", "GET /cb?state=1&code=*** HTTP/1.1"),
        ("nothing to see", "nothing to see"),
        ("a basic idea", "a basic idea"),
    ],
)
def test_scrub_text(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


ALICE = Principal(subject="u-1", username="alice", role="reader", client_id="client-abc")


def test_audit_line(captured_logs) -> None:
    audit_tool_call(
        principal=ALICE,
        tool="execute_sql",
        outcome="ok",
        duration_seconds=0.01234,
        audit={"sql": "SELECT * FROM orders WHERE id = 42", "rows": 1, "bytes": 120},
        settings=settings(),
    )
    [line] = captured_logs.events("tool_call")
    assert line["logger"] == "audit" and line["level"] == "info"
    assert line["user"] == "alice" and line["subject"] == "u-1" and line["client"] == "client-abc"
    assert line["tool"] == "execute_sql" and line["outcome"] == "ok"
    assert line["rows"] == 1 and line["bytes"] == 120 and line["duration_ms"] == 12.34
    assert line["fingerprint"] == fingerprint_sql("select *  from orders where id = 7")
    assert "sql" not in line and "42" not in json.dumps(line["fingerprint"])


def test_audit_sql_text_only_when_enabled(captured_logs) -> None:
    audit_tool_call(
        principal=ALICE,
        tool="execute_sql",
        outcome="refused",
        duration_seconds=0.001,
        audit={"sql": "DELETE FROM orders", "fingerprint": "f" * 16, "reason": "not_a_query"},
        settings=settings(audit_sql_text=True),
    )
    [line] = captured_logs.events("tool_call")
    assert line["sql"] == "DELETE FROM orders" and line["fingerprint"] == "f" * 16
    assert line["outcome"] == "refused" and line["reason"] == "not_a_query"
    assert line["rows"] is None


def test_fingerprint_ignores_literals_comments_and_spacing() -> None:
    a = "SELECT name FROM customers WHERE city = 'Paris' AND id > 10 -- find them"
    b = "select name\n  from customers where city='Berlin' and id>2000;"
    assert normalise_sql(a) == "select name from customers where city = ? and id > ?"
    assert fingerprint_sql(a) == fingerprint_sql(b) != fingerprint_sql("SELECT name FROM products")
    assert len(fingerprint_sql(a)) == 16
