"""Operator signal: open sessions split into active and idle (`mssql_mcp_sessions{transport, state}`).

A session abandoned by its client stays open until MCP_SESSION_IDLE_SECONDS (an hour by default); the
split shows how many of the open ones were used within MCP_SESSION_ACTIVE_SECONDS.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ACCEPT_BOTH = "application/json, text/event-stream"


async def _initialize(client: TestClient, path: str = "/mcp") -> str:
    response = await client.post(
        path,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers={"Accept": ACCEPT_BOTH},
    )
    assert response.status == 200, await response.text()
    return response.headers["Mcp-Session-Id"]


def _scrape(metrics: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the sessions metrics as {(name, sorted labels): value}, through the text format."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("mssql_mcp_sessions")
        for sample in family.samples
    }


def _sessions(scraped: dict, transport: str, state: str) -> float:
    return scraped[("mssql_mcp_sessions", (("state", state), ("transport", transport)))]


def _open(scraped: dict, transport: str) -> float:
    return scraped[("mssql_mcp_sessions_active", (("transport", transport),))]


async def test_active_and_idle_sessions_are_counted_apart(aiohttp_client: Any, mcp_test_app: Any) -> None:
    test_app = mcp_test_app(session_active_seconds=120)
    client = await aiohttp_client(test_app.app)
    claude = test_app.endpoints[""].sessions
    chatgpt = test_app.endpoints["/chatgpt"].sessions
    assert claude.active_seconds == chatgpt.active_seconds == 120  # the setting reaches both tables

    scraped = _scrape(test_app.metrics)
    for transport in ("streamable_http", "sse"):  # zeros before any session, not gaps
        assert _sessions(scraped, transport, "active") == _sessions(scraped, transport, "idle") == 0

    first, second = await _initialize(client), await _initialize(client)
    await _initialize(client, "/chatgpt/mcp")
    scraped = _scrape(test_app.metrics)
    assert _sessions(scraped, "streamable_http", "active") == 3
    assert _sessions(scraped, "streamable_http", "idle") == 0
    assert _open(scraped, "streamable_http") == 3

    # Nobody used `first` for longer than the active window: still open, now idle.
    (await claude.get(first)).record.last_seen = time.monotonic() - 121
    scraped = _scrape(test_app.metrics)
    assert _sessions(scraped, "streamable_http", "active") == 2
    assert _sessions(scraped, "streamable_http", "idle") == 1
    assert _open(scraped, "streamable_http") == 3  # the open-sessions gauge keeps its meaning

    # A request on it makes it active again.
    response = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
        headers={"Accept": ACCEPT_BOTH, "Mcp-Session-Id": first, "MCP-Protocol-Version": "2025-11-25"},
    )
    assert response.status == 200
    assert _sessions(_scrape(test_app.metrics), "streamable_http", "active") == 3

    # An open server->client stream is in use however long ago the client last posted.
    stream = await client.get(
        "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": second, "MCP-Protocol-Version": "2025-11-25"}
    )
    assert stream.status == 200
    (await claude.get(second)).record.last_seen = time.monotonic() - 3600
    scraped = _scrape(test_app.metrics)
    assert _sessions(scraped, "streamable_http", "active") == 3
    assert _sessions(scraped, "streamable_http", "idle") == 0
    stream.close()

    # Forgotten sessions leave both counts.
    await claude.close_all()
    await chatgpt.close_all()
    scraped = _scrape(test_app.metrics)
    assert _sessions(scraped, "streamable_http", "active") == _sessions(scraped, "streamable_http", "idle") == 0
    assert _open(scraped, "streamable_http") == 0


async def test_counts_by_state_against_the_clock() -> None:
    from app.mcp.transports.sessions import SessionManager

    store = SessionManager(idle_seconds=3600, active_seconds=300)
    fresh = await store.create("streamable_http", "2025-11-25")
    stale = await store.create("streamable_http", "2025-11-25")
    legacy = await store.create("sse", "2024-11-05")
    now = time.monotonic()
    fresh.record.last_seen = now - 299
    stale.record.last_seen = now - 301
    legacy.record.last_seen = now - 1000
    assert store.counts_by_state(now) == {
        ("streamable_http", "active"): 1,
        ("streamable_http", "idle"): 1,
        ("sse", "idle"): 1,
    }
    await store.close_all()


async def test_prometheus_sees_active_and_idle_sessions(demo_db_path: Any, tmp_path: Any, prometheus_factory) -> None:
    """The real app on its metrics port, scraped by a real Prometheus: the split and the open total agree."""
    import aiohttp
    from aiohttp import web

    from app import keys
    from app.settings import load_settings
    from app.web import create_app
    from tests.fixtures.obs import free_tcp_port

    metrics_port = free_tcp_port()
    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="sqlite",
        sqlite_path=str(demo_db_path),
        data_dir=str(tmp_path / "data"),
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        allow_unauth_methods=True,
        log_format="json",
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            session_ids = []
            for path in ("/mcp", "/mcp", "/chatgpt/mcp"):
                async with http.post(
                    url + path,
                    headers={"Accept": ACCEPT_BOTH},
                    json={
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": "t", "version": "1"},
                        },
                    },
                ) as response:
                    assert response.status == 200, await response.text()
                    session_ids.append(response.headers["Mcp-Session-Id"])
        claude_sessions = app[keys.MCP_ENDPOINTS][""].sessions
        (await claude_sessions.get(session_ids[0])).record.last_seen -= settings.session_active_seconds + 1  # abandoned

        prometheus = await prometheus_factory(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "sessions",
                        "scrape_interval": "1s",
                        "scrape_timeout": "900ms",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )

        def value(expected: float):
            return lambda result: bool(result) and float(result[0]["value"][1]) == expected

        await prometheus.wait_for('sum(mssql_mcp_sessions{job="sessions",state="active"})', value(2))
        await prometheus.wait_for('sum(mssql_mcp_sessions{job="sessions",state="idle"})', value(1))
        await prometheus.wait_for('sum(mssql_mcp_sessions_active{job="sessions"})', value(3))
    finally:
        await runner.cleanup()
