"""End to end: a real Prometheus scrapes the running app while real MCP and OAuth traffic flows.

The app runs on a real TCP port (create_app + web.AppRunner) with its separate metrics listener;
Prometheus (Debian package) scrapes that listener every second and loads our alert rules. The test
signs in through the OAuth pages (one failed login first), calls tools with the official `mcp` SDK
client (a success, an error, a refused write, ChatGPT search/fetch twice for the cache), then
evaluates every dashboard panel's query through Prometheus's HTTP API and reads the audit lines.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import json
import secrets
import shutil
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from app.settings import Settings, load_settings
from app.web import create_app
from tests.fixtures.obs import CapturedLogs, PrometheusServer, free_tcp_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES_DIR = ROOT / "grafana" / "prometheus" / "rules"
JOB = "mssql-mcp"
PASSWORD = "correct horse battery staple 42"
CLIENT_SECRET_MARK = "client_secret"


@dataclass
class LiveApp:
    url: str
    metrics_port: int
    app: web.Application
    settings: Settings


@pytest.fixture
async def obs_live_app(tmp_path: Path, demo_db_path: Path) -> AsyncIterator[LiveApp]:
    metrics_port = free_tcp_port()
    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="sqlite",
        sqlite_path=str(demo_db_path),
        data_dir=str(tmp_path / "data"),
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        host="127.0.0.1",
        log_format="json",
        log_level="DEBUG",
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield LiveApp(url=f"http://127.0.0.1:{port}", metrics_port=metrics_port, app=app, settings=settings)
    finally:
        await runner.cleanup()


def _add_user(settings: Settings, username: str, role: str) -> None:
    from app.auth.cli import users_main

    out = io.StringIO()
    code = users_main(
        settings, ["add", username, "--role", role, "--password-stdin"], stdin=io.StringIO(PASSWORD + "\n"), stdout=out
    )
    assert code == 0, out.getvalue()


class _FormParser(html.parser.HTMLParser):
    """Hidden inputs of the first form of a page (login and consent pages)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self.forms = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms += 1
        elif tag == "input" and self.forms == 1 and values.get("type") == "hidden" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


def _hidden_fields(page: str) -> dict[str, str]:
    parser = _FormParser()
    parser.feed(page)
    assert parser.fields, page[:500]
    return parser.fields


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Tokens:
    access: str
    refresh: str
    client_id: str
    client_secret: str | None


async def sign_in(
    http: aiohttp.ClientSession, server: str, username: str, *, fail_first: bool, realm: str = ""
) -> Tokens:
    """Dynamic registration, login page (optionally a wrong password first), consent, code, token, refresh.

    Each MCP prefix is its own resource with its own issuer (`realm`): `/mcp` at the root, `/chatgpt/mcp`
    under `/chatgpt`, so a client signs in once per endpoint it uses.
    """
    base = f"{server}{realm}"
    redirect_uri = "http://127.0.0.1:9/callback"
    async with http.post(
        f"{base}/register",
        json={
            "client_name": "obs live test",
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_post",
        },
    ) as response:
        assert response.status == 201, await response.text()
        client = await response.json()
    verifier, challenge = _pkce()
    query = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st4te",
        "resource": f"{base}/mcp",
    }
    async with http.get(f"{base}/authorize", params=query) as response:
        assert response.status == 200, await response.text()
        fields = _hidden_fields(await response.text())
    if fail_first:
        async with http.post(
            f"{base}/authorize", data={**fields, "username": username, "password": "wrong password 123"}
        ) as response:
            assert response.status == 401
            fields = _hidden_fields(await response.text())
    async with http.post(f"{base}/authorize", data={**fields, "username": username, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        fields = _hidden_fields(await response.text())
    async with http.post(f"{base}/authorize", data={**fields, "decision": "allow"}, allow_redirects=False) as response:
        assert response.status in (302, 303), await response.text()
        location = urllib.parse.urlsplit(response.headers["Location"])
    code = urllib.parse.parse_qs(location.query)["code"][0]
    credentials = {"client_id": client["client_id"]}
    if client.get("client_secret"):
        credentials["client_secret"] = client["client_secret"]
    async with http.post(
        f"{base}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "resource": f"{base}/mcp",
            **credentials,
        },
    ) as response:
        assert response.status == 200, await response.text()
        first = await response.json()
    # A made-up code is refused (a token endpoint error on the dashboard).
    async with http.post(
        f"{base}/token",
        data={
            "grant_type": "authorization_code",
            "code": "made-up-code",
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            **credentials,
        },
    ) as response:
        assert response.status == 400
    async with http.post(
        f"{base}/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"], **credentials}
    ) as response:
        assert response.status == 200, await response.text()
        second = await response.json()
    return Tokens(
        access=second["access_token"],
        refresh=second["refresh_token"],
        client_id=client["client_id"],
        client_secret=client.get("client_secret"),
    )


async def mcp_traffic(base: str, token: str, chatgpt_token: str) -> dict[str, bool]:
    """Tool calls through the official SDK client; returns tool name -> isError."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    outcomes: dict[str, bool] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{base}/mcp", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        assert "execute_sql" in tools, tools
        ok = await session.call_tool("execute_sql", {"query": "SELECT customer_id, last_name FROM customers LIMIT 5"})
        outcomes["execute_sql:ok"] = bool(ok.is_error)
        bad = await session.call_tool("execute_sql", {"query": "SELECT * FROM no_such_table_xyz"})
        outcomes["execute_sql:error"] = bool(bad.is_error)
        refused = await session.call_tool("execute_sql", {"query": "DELETE FROM customers"})
        outcomes["execute_sql:refused"] = bool(refused.is_error)
        sample = await session.call_tool("get_table_sample", {"table_name": "products", "limit": 3})
        outcomes["get_table_sample:ok"] = bool(sample.is_error)
    headers = {"Authorization": f"Bearer {chatgpt_token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{base}/chatgpt/mcp", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        found = await session.call_tool("search", {"query": "customers"})
        outcomes["search:ok"] = bool(found.is_error)
        results = json.loads(found.content[0].text)["results"]
        assert results, found
        for _ in range(2):  # the second fetch of the same id is a cache hit
            fetched = await session.call_tool("fetch", {"id": results[0]["id"]})
            outcomes["fetch:ok"] = bool(fetched.is_error)
    return outcomes


def _scrape_config(live: LiveApp) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in sorted(RULES_DIR.glob("*.yml"))],
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "static_configs": [{"targets": [f"127.0.0.1:{live.metrics_port}"]}],
            }
        ],
    }


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m").replace("$job", JOB).replace("$instance", ".+")
                out.append((path.name, f"{panel['title']} [{target['legendFormat']}]", expr))
    assert out
    return out


async def _wait_for_scrapes(prometheus: PrometheusServer, count: int) -> None:
    """Wait until Prometheus has taken `count` more scrapes of the app."""
    expr = f'count_over_time(up{{job="{JOB}"}}[5m])'
    start = await prometheus.wait_for(expr, bool)
    target = float(start[0]["value"][1]) + count
    await prometheus.wait_for(expr, lambda r: bool(r) and float(r[0]["value"][1]) >= target)


@pytest.fixture
def require_prometheus() -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("the Debian 'prometheus' package is required (make system-deps)")


async def test_prometheus_scrapes_the_live_app_and_loads_the_rules(
    obs_live_app: LiveApp, prometheus_factory, require_prometheus
) -> None:
    prometheus = await prometheus_factory(_scrape_config(obs_live_app))
    await prometheus.wait_for(f'up{{job="{JOB}"}} == 1', bool)
    async with aiohttp.ClientSession() as http:
        for path in ("/health", "/no/such/page"):
            async with http.get(obs_live_app.url + path, headers={"X-Request-ID": "live-1"}) as response:
                assert response.headers["X-Request-ID"] == "live-1"
    await _wait_for_scrapes(prometheus, 2)
    result = await prometheus.query(f'sum by (status) (mssql_mcp_http_requests_total{{job="{JOB}",route="unmatched"}})')
    assert {r["metric"]["status"]: float(r["value"][1]) for r in result}.get("4xx", 0) >= 1
    assert await prometheus.query(f'mssql_mcp_build_info{{job="{JOB}"}}')

    groups = (await prometheus.api("/api/v1/rules"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 9 and all(rule["health"] in {"ok", "unknown"} for rule in rules), rules
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    assert firing == [], firing  # a healthy app fires nothing


async def test_every_dashboard_panel_returns_data_and_audit_lines_are_written(
    obs_live_app: LiveApp, prometheus_factory, captured_logs: CapturedLogs, require_prometheus
) -> None:
    _add_user(obs_live_app.settings, "alice", "writer")
    prometheus = await prometheus_factory(_scrape_config(obs_live_app))
    await prometheus.wait_for(f'up{{job="{JOB}"}} == 1', bool)
    await _wait_for_scrapes(prometheus, 1)  # a baseline sample before the traffic, so rate() sees it

    jar = aiohttp.CookieJar(unsafe=True)  # the sign-in pages bind a cookie to 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        tokens = await sign_in(http, obs_live_app.url, "alice", fail_first=True)
        chatgpt_tokens = await sign_in(http, obs_live_app.url, "alice", fail_first=False, realm="/chatgpt")
        async with http.post(
            f"{obs_live_app.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        ) as response:
            assert response.status == 401  # no token: a bearer rejection
    outcomes = await mcp_traffic(obs_live_app.url, tokens.access, chatgpt_tokens.access)
    assert outcomes == {
        "execute_sql:ok": False,
        "execute_sql:error": True,
        "execute_sql:refused": True,
        "get_table_sample:ok": False,
        "search:ok": False,
        "fetch:ok": False,
    }, outcomes

    await _wait_for_scrapes(prometheus, 3)
    empty = []
    for dashboard, title, expr in _panel_queries():
        if not await prometheus.query(expr):
            empty.append(f"{dashboard}: {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # Values a user would check on the dashboard after this traffic.
    async def value(expr: str) -> float:
        result = await prometheus.query(expr)
        assert result, expr
        return float(result[0]["value"][1])

    assert await value(f'sum(mssql_mcp_oauth_tokens_issued_total{{job="{JOB}"}})') == 4
    assert await value(f'sum(mssql_mcp_login_failures_total{{job="{JOB}",reason="bad_password"}})') == 1
    assert await value(f'sum(mssql_mcp_tool_calls_total{{job="{JOB}",outcome!="ok"}})') >= 2
    assert await value(f'sum(mssql_mcp_guard_refusals_total{{job="{JOB}"}})') >= 1
    assert await value(f'sum(mssql_mcp_fetch_cache_hits_total{{job="{JOB}"}})') >= 1

    # The audit trail: one line per tool call with the right user, tool and outcome.
    audit = captured_logs.events("tool_call")
    seen = [(line["tool"], line["outcome"]) for line in audit]
    assert ("execute_sql", "ok") in seen and ("execute_sql", "refused") in seen, seen
    assert ("execute_sql", "error") in seen, seen
    assert {"get_table_sample", "search", "fetch"} <= {tool for tool, _ in seen}
    assert len(audit) == 7, seen
    chatgpt_tools = {"search", "fetch"}
    for line in audit:
        client = chatgpt_tokens.client_id if line["tool"] in chatgpt_tools else tokens.client_id
        assert line["logger"] == "audit" and line["user"] == "alice" and line["client"] == client
        assert line["request_id"] and isinstance(line["duration_ms"], int | float)
    ok_sql = next(line for line in audit if line["tool"] == "execute_sql" and line["outcome"] == "ok")
    assert ok_sql["rows"] == 5 and ok_sql["bytes"] > 0 and ok_sql["fingerprint"]
    assert "sql" not in ok_sql  # AUDIT_SQL_TEXT is off

    # Nothing secret anywhere in the whole log output of the session.
    text = captured_logs.text
    for signed_in in (tokens, chatgpt_tokens):
        for secret in (
            PASSWORD,
            "wrong password 123",
            signed_in.access,
            signed_in.refresh,
            signed_in.client_secret or "x" * 40,
        ):
            assert secret not in text
    assert not any(line.get(CLIENT_SECRET_MARK) not in (None, "***") for line in captured_logs.lines())
