"""Request id, HTTP metrics (route templates, status classes), access log and the /metrics endpoints."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from app import keys
from app.obs import setup_observability, status_class
from app.obs.metrics import Metrics
from app.settings import load_settings
from tests.fixtures.obs import free_tcp_port

stdlib_log = logging.getLogger("tests.obs.handler")


def make_obs_app(**overrides: Any) -> web.Application:
    """A small app with only the observability layer, so these tests don't depend on other areas."""
    settings = load_settings(
        environ={}, env_file=None, db_backend="sqlite", sqlite_path="unused.db", **{"metrics_port": 0, **overrides}
    )
    app = web.Application()
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    setup_observability(app)

    async def item(request: web.Request) -> web.Response:
        structlog.get_logger("tests.obs").info("structlog_in_handler", item=request.match_info["id"])
        stdlib_log.info("stdlib in handler")
        await asyncio.sleep(0.01)
        return web.json_response({"id": request.match_info["id"], "request_id": request[keys.REQUEST_ID]})

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such thing")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("kaboom")

    app.router.add_get("/items/{id}", item)
    app.router.add_get("/missing", missing)
    app.router.add_get("/boom", boom)
    app.router.add_route("*", "/any", item_any)
    return app


async def item_any(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def sample(app: web.Application, name: str, **labels: str) -> float:
    return app[keys.METRICS].registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (101, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (302, "3xx"),
        (404, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (99, "5xx"),
        (600, "5xx"),
    ],
)
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected


async def test_request_id_generated_echoed_and_on_every_log_line(aiohttp_client, captured_logs) -> None:
    client = await aiohttp_client(make_obs_app())
    response = await client.get("/items/7")
    body = await response.json()
    request_id = response.headers["X-Request-ID"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert body["request_id"] == request_id

    lines = [
        line for line in captured_logs.lines() if line.get("logger") in {"tests.obs", "tests.obs.handler", "access"}
    ]
    assert {line["event"] for line in lines} == {"structlog_in_handler", "stdlib in handler", "http_request"}
    assert all(line["request_id"] == request_id for line in lines), lines


async def test_sane_incoming_request_id_is_honoured(aiohttp_client, captured_logs) -> None:
    client = await aiohttp_client(make_obs_app())
    incoming = "nginx-0f3a9c2e-42:edge/1"
    response = await client.get("/items/1", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming
    assert captured_logs.events("http_request", request_id=incoming)


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", "semi;colon", "<script>", "-leading-dash", "ünïcode"])
async def test_insane_incoming_request_id_is_replaced(aiohttp_client, incoming: str) -> None:
    client = await aiohttp_client(make_obs_app())
    response = await client.get("/items/1", headers={"X-Request-ID": incoming})
    echoed = response.headers["X-Request-ID"]
    assert echoed != incoming and len(echoed) == 32


async def test_request_id_also_on_error_responses(aiohttp_client) -> None:
    client = await aiohttp_client(make_obs_app())
    for path in ("/missing", "/nowhere", "/boom"):
        response = await client.get(path, headers={"X-Request-ID": "abc-123"})
        assert response.status >= 400
        assert response.headers["X-Request-ID"] == "abc-123", path


async def test_concurrent_requests_keep_their_own_id(aiohttp_client, captured_logs) -> None:
    client = await aiohttp_client(make_obs_app())

    async def one(i: int) -> None:
        response = await client.get(f"/items/{i}", headers={"X-Request-ID": f"req-{i}"})
        assert (await response.json())["request_id"] == f"req-{i}"

    await asyncio.gather(*(one(i) for i in range(20)))
    for line in captured_logs.events("structlog_in_handler"):
        assert line["request_id"] == f"req-{line['item']}"


async def test_http_metrics_use_route_templates_and_status_classes(aiohttp_client) -> None:
    app = make_obs_app()
    client = await aiohttp_client(app)
    for i in range(3):
        assert (await client.get(f"/items/{i}")).status == 200
    assert (await client.get("/missing")).status == 404
    assert (await client.get("/boom")).status == 500
    for path in ("/random/a", "/random/b", "/random/c"):
        assert (await client.get(path)).status == 404
    assert (await client.post("/items/1")).status == 405
    assert (await client.request("PROPFIND", "/any")).status == 200

    total = "mssql_mcp_http_requests_total"
    assert sample(app, total, route="/items/{id}", method="GET", status="2xx") == 3
    assert sample(app, total, route="/missing", method="GET", status="4xx") == 1
    assert sample(app, total, route="/boom", method="GET", status="5xx") == 1
    # Unknown paths and wrong methods share one label value: a scanner cannot mint series.
    assert sample(app, total, route="unmatched", method="GET", status="4xx") == 3
    assert sample(app, total, route="unmatched", method="POST", status="4xx") == 1
    assert sample(app, total, route="/any", method="other", status="2xx") == 1
    assert sample(app, "mssql_mcp_http_request_duration_seconds_count", route="/items/{id}", method="GET") == 3
    assert sample(app, "mssql_mcp_http_request_duration_seconds_sum", route="/items/{id}", method="GET") >= 0.03
    assert sample(app, "mssql_mcp_http_requests_in_flight") == 0

    labels = {s.labels.get("route") for m in app[keys.METRICS].registry.collect() for s in m.samples if s.name == total}
    assert labels == {"/items/{id}", "/missing", "/boom", "unmatched", "/any"}


async def test_access_log_has_no_query_string(aiohttp_client, captured_logs) -> None:
    client = await aiohttp_client(make_obs_app())
    response = await client.get("/items/5?access_token=sekrit-token-value&code=auth-code-value")
    assert response.status == 200
    [line] = captured_logs.events("http_request")
    assert line["path"] == "/items/5"
    assert line["route"] == "/items/{id}"
    assert line["status"] == 200 and line["method"] == "GET"
    assert line["duration_ms"] >= 10
    assert line["logger"] == "access" and line["level"] == "debug"  # successes only at LOG_LEVEL=DEBUG
    assert "sekrit" not in captured_logs.text and "auth-code-value" not in captured_logs.text


async def test_metrics_not_on_main_port_without_token(aiohttp_client) -> None:
    client = await aiohttp_client(make_obs_app())
    assert (await client.get("/metrics")).status == 404


async def test_metrics_on_main_port_need_the_token(aiohttp_client) -> None:
    client = await aiohttp_client(make_obs_app(metrics_token="s3cret-scrape-token"))
    response = await client.get("/metrics")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for header in (
        "Bearer wrong",
        "Bearer s3cret-scrape-token-and-more",
        "Basic s3cret-scrape-token",
        "s3cret-scrape-token",
    ):
        assert (await client.get("/metrics", headers={"Authorization": header})).status == 401, header
    assert (await client.get("/metrics?token=s3cret-scrape-token")).status == 401

    response = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert "mssql_mcp_build_info{version=" in text
    assert 'mssql_mcp_http_requests_total{method="GET",route="/metrics",status="4xx"}' in text


async def test_separate_metrics_listener(aiohttp_client) -> None:
    port = free_tcp_port()
    app = make_obs_app(metrics_port=port, metrics_host="127.0.0.1")
    client = await aiohttp_client(app)
    assert (await client.get("/items/1")).status == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
        async with session.get(f"http://127.0.0.1:{port}/other") as response:
            assert response.status == 404
    assert 'mssql_mcp_http_requests_total{method="GET",route="/items/{id}",status="2xx"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    # Scrapes on the separate listener are not HTTP traffic of the service.
    assert "/metrics" not in text.split("mssql_mcp_http_requests_total", 1)[1].split("# HELP", 1)[0]

    await client.close()  # the listener goes away with the app
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


async def test_metrics_listener_disabled_with_port_zero(aiohttp_client, captured_logs) -> None:
    await aiohttp_client(make_obs_app(metrics_port=0))
    assert not captured_logs.events("metrics_listener_started")
    assert not captured_logs.events("metrics_listener_failed")


async def test_metrics_listener_port_taken_does_not_stop_the_service(aiohttp_client, captured_logs) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        client = await aiohttp_client(make_obs_app(metrics_port=port))
        assert (await client.get("/items/1")).status == 200
        [line] = captured_logs.events("metrics_listener_failed")
        assert line["port"] == port and line["level"] == "error"


class _PoolStatus:
    """Stands in for the database layer's status() so this test needs only the obs layer."""

    dialect_name = "sqlite"

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "dialect": "sqlite",
            "pool": {"size": 4, "in_use": 3, "idle": 1, "waiting": 2, "healthy": 4},
            "last_error": None,
        }


async def test_pool_gauges_refreshed_at_scrape_time(aiohttp_client) -> None:
    app = make_obs_app(metrics_token="t0ken-for-scrape")
    app[keys.DATABASE] = _PoolStatus()
    client = await aiohttp_client(app)
    text = await (await client.get("/metrics", headers={"Authorization": "Bearer t0ken-for-scrape"})).text()
    assert "mssql_mcp_pool_size 4.0" in text
    assert "mssql_mcp_pool_in_use 3.0" in text
    assert "mssql_mcp_pool_waiting 2.0" in text
    # Pre-initialised at start-up for the served dialect: zeros rather than gaps on dashboards.
    assert 'mssql_mcp_query_timeouts_total{dialect="sqlite"} 0.0' in text
