"""HTTP observability: request id, access log, HTTP metrics, and /metrics.

`setup_observability(app)` is called by `create_app` before any route is added:
- one middleware gives every request an id (a sane incoming `X-Request-ID`, else a new one), binds
  it to structlog's context so every log line of that request carries it, echoes it back, counts
  the request by route template / method / status class, and writes one access line;
- `/metrics` (Prometheus text format) is served on a separate listener
  (METRICS_HOST:METRICS_PORT, loopback by default; port 0 disables it) and, only when
  METRICS_TOKEN is set, on the main port to requests bearing that token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging as stdlib_logging  # plain `logging` would be shadowed by the app.obs.logging submodule
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import keys
from .heap import frozen_startup_heap
from .metrics import HTTP_METHODS, Metrics, loop_lag_probe, multiprocess_metrics, status_class

__all__ = [
    "METRICS_SOCKET",
    "REQUEST_ID_HEADER",
    "metrics_response",
    "request_id_of",
    "setup_observability",
    "status_class",
]

# WORKERS>1: the METRICS_PORT socket the supervisor bound; every worker serves it (whichever accepts answers).
METRICS_SOCKET = web.AppKey("metrics_socket", socket.socket)
# WORKERS>1: how often each worker writes its scrape-time gauges (pool, sessions) for the others to read.
SHARED_GAUGES_INTERVAL_SECONDS = 1.0

REQUEST_ID_HEADER = "X-Request-ID"
# Bounded length and charset: an id is echoed into headers and logs, so nothing else gets through.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}")
UNMATCHED_ROUTE = "unmatched"
CLIENT_CLOSED = 499  # nginx's convention for "client went away before the answer"

log = structlog.get_logger(__name__)
access_log = structlog.get_logger("access")
_ACCESS_STDLIB_LOGGER = stdlib_logging.getLogger("access")


def _structlog_context_var(name: str) -> contextvars.ContextVar[Any]:
    """structlog's own context variable for `name` (the one bind_contextvars(name=...) sets), from the token of
    one binding undone at once: setting it directly skips bind_contextvars' per-call lookups."""
    tokens = structlog.contextvars.bind_contextvars(**{name: ...})
    structlog.contextvars.reset_contextvars(**tokens)
    return tokens[name].var


_REQUEST_ID_VAR = _structlog_context_var("request_id")


def _incoming_or_new_request_id(value: str | None) -> str:
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    # The shape of uuid4().hex (32 random lowercase hex digits) at a quarter of its cost.
    return os.urandom(16).hex()


def request_id_of(request: web.Request) -> str | None:
    """The id the middleware gave this request (None outside the middleware)."""
    return request.get(keys.REQUEST_ID)


def _route_label(request: web.Request) -> str:
    """The route template ("/records/{id}"), never the raw path: bounded label values."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical or UNMATCHED_ROUTE


def _make_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def observability_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = _incoming_or_new_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[keys.REQUEST_ID] = request_id
        # Each aiohttp request runs in its own task, so this binding is private to this request.
        request_id_token = _REQUEST_ID_VAR.set(request_id)
        started = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        metrics.http_request_started()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.http_request_finished()
            route = _route_label(request)
            method = request.method if request.method in HTTP_METHODS else "other"
            requests, duration = metrics.http_series(route, method, status)
            requests.inc()
            duration.observe(elapsed)
            # rel_url.path only: query strings may carry codes or tokens.
            # Successful requests at debug: nginx already logs every request, tool calls get an audit
            # line, and formatting a line per request is most of a cheap call's CPU time.
            if status >= 500:
                line = access_log.warning
            elif status >= 400:
                line = access_log.info
            elif _ACCESS_STDLIB_LOGGER.isEnabledFor(stdlib_logging.DEBUG):
                line = access_log.debug
            else:
                line = None
            if line is not None:
                line(
                    "http_request",
                    method=request.method,
                    path=request.rel_url.path[:512],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000.0, 2),
                    bytes=_response_bytes(response),
                    remote=request.remote,
                    user_agent=(request.headers.get("User-Agent") or "")[:200] or None,
                )
            _REQUEST_ID_VAR.reset(request_id_token)

    return observability_middleware


def _response_bytes(response: web.StreamResponse | None) -> int | None:
    if response is None:
        return None
    if response.prepared:  # streamed by the handler (SSE): what was written so far
        return response.body_length
    return response.content_length


async def _echo_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # on_response_prepare also sees responses built by outer middlewares and raised HTTP errors.
    request_id = request.get(keys.REQUEST_ID)
    if request_id and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = request_id


def _refresh_scrape_time_gauges(app: web.Application) -> None:
    """Pool gauges straight from the pool at scrape time, so they are never stale."""
    database = app.get(keys.DATABASE)
    if database is None:
        return
    try:
        info = database.status()
    except Exception:  # a scrape must not fail because the database layer did
        log.debug("pool_status_failed", exc_info=True)
        return
    metrics = app[keys.METRICS]
    pool = info.get("pool") or {}
    for field, gauge in (
        ("size", metrics.pool_size),
        ("in_use", metrics.pool_in_use),
        ("waiting", metrics.pool_waiting),
    ):
        value = pool.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            gauge.set(value)


async def _shared_gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    """WORKERS>1: a scrape is answered by one worker from every worker's files, so each worker writes its
    scrape-time gauges every second instead of only when it is the one scraped."""
    metrics = app[keys.METRICS]

    async def refresh() -> None:
        while True:
            _refresh_scrape_time_gauges(app)
            # The files hold only set() values: write what the pool's callback gauge reads now.
            for family in metrics.db_up.collect():
                for sample in family.samples:
                    metrics.db_up.set(sample.value)
            if metrics.session_states_gauge is not None:
                for (transport, state), n in metrics.session_states.totals().items():
                    metrics.session_states_gauge.labels(transport, state).set(n)
            await asyncio.sleep(SHARED_GAUGES_INTERVAL_SECONDS)

    task = asyncio.get_running_loop().create_task(refresh(), name="shared-gauges")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def metrics_response(app: web.Application) -> web.Response:
    """The Prometheus text exposition of the app's registry."""
    _refresh_scrape_time_gauges(app)
    body = generate_latest(app[keys.METRICS].exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def bearer_matches(request: web.Request, expected: str) -> bool:
    """The request carries `Authorization: Bearer <expected>` (compared in constant time)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return False
    return hmac.compare_digest(credentials.strip().encode(), expected.encode())


async def _main_port_metrics(request: web.Request) -> web.Response:
    if not bearer_matches(request, request.app[keys.SETTINGS].metrics_token):
        raise web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'}, text="metrics need a bearer token\n"
        )
    return metrics_response(request.app)


async def _metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve /metrics on METRICS_HOST:METRICS_PORT with its own runner, for the app's lifetime."""
    settings = app[keys.SETTINGS]
    runner: web.AppRunner | None = None
    if settings.metrics_port:

        async def handle(request: web.Request) -> web.Response:
            return metrics_response(app)

        listener = web.Application()
        listener.router.add_get("/metrics", handle)
        runner = web.AppRunner(listener, access_log=None, handle_signals=False)
        await runner.setup()
        inherited = app.get(METRICS_SOCKET)
        site: web.BaseSite = (
            web.SockSite(runner, inherited)
            if inherited is not None
            else web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        )
        try:
            await site.start()
        except OSError as exc:
            # Losing metrics must not take the database service down with it: say so loudly.
            log.error("metrics_listener_failed", host=settings.metrics_host, port=settings.metrics_port, error=str(exc))
            await runner.cleanup()
            runner = None
        else:
            log.info("metrics_listener_started", url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()


async def _preinitialise(app: web.Application) -> None:
    """Zero-valued series for the served dialect and every tool, so panels show 0, not 'no data'."""
    metrics, settings = app[keys.METRICS], app[keys.SETTINGS]
    database = app.get(keys.DATABASE)
    metrics.preinitialise_dialect(database.dialect_name if database is not None else settings.db_backend)
    servers = app.get(keys.MCP_SERVERS, {})
    names = {tool.name for server in servers.values() for tool in server.tools}
    metrics.preinitialise_tools(sorted(names))


def setup_observability(app: web.Application) -> None:
    metrics: Metrics = app[keys.METRICS]
    settings = app[keys.SETTINGS]
    app.middlewares.append(_make_middleware(metrics))
    app.on_response_prepare.append(_echo_request_id)
    app.on_startup.append(_preinitialise)
    app.cleanup_ctx.append(_metrics_listener_ctx)
    app.cleanup_ctx.append(lambda app: loop_lag_probe(app[keys.METRICS]))  # mssql_mcp_event_loop_lag_*
    app.cleanup_ctx.append(lambda app: frozen_startup_heap())  # full GCs off the loop's critical path
    if multiprocess_metrics():
        app.cleanup_ctx.append(_shared_gauges_ctx)
    if settings.metrics_token:
        app.router.add_get("/metrics", _main_port_metrics)
