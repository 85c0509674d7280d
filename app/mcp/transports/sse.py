"""Legacy HTTP+SSE transport (protocol 2024-11-05): GET `{prefix}/sse` + POST `{prefix}/messages`."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ...settings import Settings
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

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """GET {prefix}/sse: open the event stream and announce where to POST messages."""
        if not self.origins.allowed(request):
            return forbidden_origin()
        _, sse_ok = accepts(request)
        if not sse_ok:
            return http_error(406, "Not Acceptable: the SSE endpoint needs Accept: text/event-stream")
        principal = await authenticate(request, [])
        try:
            session = self.sessions.create(TRANSPORT, "2024-11-05", owner=principal)
        except TooManySessions:
            log.warning("mcp_sessions_exhausted", max_sessions=self.sessions.max_sessions)
            return http_error(503, "Too many open MCP sessions; retry later", headers={"Retry-After": "5"})

        def drop_stream(outbox: Outbox) -> None:
            # The client stopped reading: end the session (its running calls too) rather than queue more.
            note_stream_dropped(self.server, TRANSPORT, "events", outbox)
            self.sessions.drop(session)
            abort_connection(request)

        outbox = session.stream = new_outbox(self.settings, drop_stream)
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
            self.sessions.remove(session)  # the stream is the session: cancel anything still running
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
        session = self.sessions.get(session_id, principal)  # another user's session: None, as unknown
        if session is None or session.record.transport != TRANSPORT or session.stream is None or session.stream.closed:
            if self.sessions.was_dropped(session_id, principal):
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
        for message in messages:
            self.server.observe(message)
            env = CallEnv(
                principal=principal,
                base_url=url,
                settings=self.settings,
                session=session.record,  # opened by the stream: initialize negotiates on it
                emit=session.send,
                cancel=session.cancel,
            )
            if message.kind == "notification":
                await self.server.handle_notification(message, env)
            elif message.kind == "request":
                self._start(message, env, session)
            else:  # the client answers a request of ours (sampling, elicitation, roots)
                self.server.handle_response(message, env)
        self.sessions.save(session)
        return web.Response(status=202, text="Accepted")

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
            self.sessions.save(session)  # initialize and logging/setLevel change the record
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
