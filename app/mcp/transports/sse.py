"""Legacy HTTP+SSE transport (protocol 2024-11-05): GET `{prefix}/sse` + POST `{prefix}/messages`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ...core import Principal
from ...settings import Settings
from ...state.redisstate import RedisUnavailable
from ...urls import base_url
from ..jsonrpc import INVALID_REQUEST, JsonRpcError, Message, loads, parse_message
from ..server import BATCH_VERSIONS, CallEnv, McpServer
from ..session import TooManySessions
from .common import (
    BodyTooLarge,
    OriginPolicy,
    abort_connection,
    accepts,
    authenticate,
    forbidden_origin,
    http_error,
    new_outbox,
    note_stream_dropped,
    open_sse,
    pump_stream,
    read_body,
    rpc_error_response,
    too_large,
)
from .outbox import Outbox
from .relay import principal_fields, principal_from
from .sessions import Session, SessionManager

log = structlog.get_logger(__name__)
TRANSPORT = "sse"


class LegacySse:
    def __init__(
        self, server: McpServer, sessions: SessionManager, settings: Settings, origins: OriginPolicy, prefix: str
    ) -> None:
        self.server = server
        self.sessions = sessions
        self.settings = settings
        self.origins = origins
        self.prefix = prefix
        self.max_body = settings.max_request_bytes
        self.keepalive_seconds = 15.0
        self.poll_seconds = 1.0  # how often an idle stream checks whether its client is still there
        self._relayed_tasks: set[asyncio.Task[None]] = set()
        if sessions.relay is not None:
            # A POST for one of this worker's streams arrived at another worker, which checked it.
            sessions.relay.on("messages", self._relayed)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET {prefix}/sse: open the event stream and announce where to POST messages."""
        if not self.origins.allowed(request):
            return forbidden_origin()
        _, sse_ok = accepts(request)
        if not sse_ok:
            return http_error(406, "Not Acceptable: the SSE endpoint needs Accept: text/event-stream")
        principal = await authenticate(request, [])
        try:
            await self.sessions.make_room()
        except TooManySessions:
            log.warning("mcp_sessions_exhausted", max_sessions=self.sessions.max_sessions)
            return http_error(503, "Too many open MCP sessions; retry later", headers={"Retry-After": "5"})
        session = self.sessions.new(TRANSPORT, "2024-11-05", owner=principal)
        session.record.stream_worker = self.sessions.worker_id  # POSTs on other workers are relayed here

        def drop_stream(outbox: Outbox) -> None:
            # The client stopped reading: end the session (its running calls too) rather than queue more.
            note_stream_dropped(self.server, TRANSPORT, "events", outbox)
            self.sessions.mark_dropped(session)  # its POSTs get 410 from now on; removed below
            session.close()
            abort_connection(request)

        outbox = session.stream = new_outbox(self.settings, drop_stream)
        await self.sessions.add(session)  # Redis down: RedisUnavailable, answered 503 (add_mcp_routes)
        # Path-absolute, so it resolves against the origin the client connected to, and includes the
        # public path prefix (ENVIRONMENT_PATH) when the service is published under one.
        public_path = urlsplit(base_url(request)).path.rstrip("/")
        endpoint = f"{public_path}{self.prefix}/messages?session_id={session.id}"
        response: web.StreamResponse | None = None
        try:
            response = await open_sse(request)
            await response.write(f"event: endpoint\ndata: {endpoint}\n\n".encode())
            await pump_stream(request, response, outbox, keepalive=self.keepalive_seconds, poll=self.poll_seconds)
        except ConnectionResetError:
            pass
        finally:
            # The stream is the session: cancel anything still running. Redis down: its record expires.
            with contextlib.suppress(RedisUnavailable):
                await self.sessions.remove(session)
        return response if response is not None else web.Response(status=499)

    async def message(self, request: web.Request) -> web.Response:
        """POST {prefix}/messages?session_id=...: accept messages; answers travel on the stream."""
        if not self.origins.allowed(request):
            return forbidden_origin()
        if request.content_type != "application/json":
            return http_error(415, "Unsupported Media Type: Content-Type must be application/json")
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            return too_large(self.max_body)
        session_id = request.query.get("session_id") or request.query.get("sessionId")
        try:
            payload = loads(body)
            items = payload if isinstance(payload, list) else [payload]
            if not items:
                raise JsonRpcError(INVALID_REQUEST, "Invalid request: empty JSON-RPC batch")
            messages = [parse_message(item) for item in items]
        except JsonRpcError as exc:
            await authenticate(request, [])
            return rpc_error_response(400, exc)
        principal = await authenticate(request, [m.method for m in messages if m.kind != "response"])
        if not session_id:
            return http_error(400, "Bad Request: the session_id query parameter is required")
        session = await self.sessions.get(session_id, principal)  # another user's session: None, as unknown
        streaming_here = session is not None and session.stream is not None and not session.stream.closed
        worker = session.record.stream_worker if session is not None else None
        streaming_elsewhere = worker is not None and worker != self.sessions.worker_id
        if session is None or session.record.transport != TRANSPORT or not (streaming_here or streaming_elsewhere):
            if await self.sessions.was_dropped_anywhere(session_id, principal):
                return http_error(
                    410,
                    "Gone: the event stream of this session was dropped because the client "
                    "stopped reading it; open a new SSE stream",
                )
            return http_error(404, "Session not found or expired: open a new SSE stream")
        version = session.record.protocol_version
        if isinstance(payload, list) and version not in BATCH_VERSIONS:
            return http_error(400, f"Invalid request: JSON-RPC batches are not supported in protocol version {version}")
        url = base_url(request)
        if not streaming_here and worker is not None and self.sessions.relay is not None:
            # Checked here (the session exists, this caller may use it); its stream's worker runs it.
            await self.sessions.save(session)  # an anonymous session claimed just now
            delivered = await self.sessions.relay.send(
                worker, "messages", session=session.id, principal=principal_fields(principal), base_url=url, items=items
            )
            if not delivered:  # that worker is gone, and the stream with it
                await self.sessions.remove(session)
                return http_error(
                    404,
                    "Session not found or expired: its event stream closed (its server stopped); open a new SSE stream",
                )
            return web.Response(status=202, text="Accepted")
        await self._dispatch(session, principal, url, messages)
        return web.Response(status=202, text="Accepted")

    def _relayed(self, relayed: dict[str, Any]) -> None:
        session = self.sessions.local(str(relayed.get("session")))
        if session is None or session.stream is None or session.stream.closed:
            return  # the stream ended meanwhile; the client's POST was answered 202 already
        try:
            messages = [parse_message(item) for item in relayed.get("items") or ()]
        except JsonRpcError:
            return  # the worker that took the POST parsed them
        principal = principal_from(relayed["principal"])
        task = asyncio.get_running_loop().create_task(
            self._dispatch(session, principal, str(relayed.get("base_url", "")), messages)
        )
        self._relayed_tasks.add(task)
        task.add_done_callback(self._relayed_tasks.discard)

    async def _dispatch(self, session: Session, principal: Principal, url: str, messages: list[Message]) -> None:
        """Handle one POST's messages for a session whose stream is on this worker."""
        for message in messages:
            self.server.observe(message)
            env = CallEnv(
                principal=principal,
                base_url=url,
                settings=self.settings,
                session=session.record,  # opened by the stream: initialize negotiates on it
                emit=session.send,
                cancel=self.sessions.canceller(session),
            )
            if message.kind == "notification":
                await self.server.handle_notification(message, env)
            elif message.kind == "request":
                self._start(message, env, session)
            else:  # the client answers a request of ours (sampling, elicitation, roots)
                self.server.handle_response(message, env)
        await self.sessions.save_quietly(session)

    def _start(self, message: Message, env: CallEnv, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(message, env, session))
        if message.id is not None:
            previous = session.inflight.get(message.id)
            if previous is not None and not previous.done():
                previous.cancel()  # a reused id supersedes the old request
        session.track(message.id, task)

    async def _answer(self, message: Message, env: CallEnv, session: Session) -> None:
        try:
            answer = await self.server.handle_request(message, env)
        except asyncio.CancelledError:
            return  # cancelled by the client: no response is sent (spec)
        except TooManySessions:  # pragma: no cover - SSE sessions exist before initialize
            return
        finally:
            task = asyncio.current_task()
            if task is not None:
                session.untrack(message.id, task)
            await self.sessions.save_quietly(session)  # initialize and logging/setLevel change the record
        session.send(answer)

    async def head(self, request: web.Request) -> web.Response:
        return web.Response(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-transform",
                "Allow": "GET, POST, HEAD, OPTIONS",
            },
        )
