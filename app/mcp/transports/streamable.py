"""Streamable HTTP (`{prefix}/mcp`): handshake-era sessions and the 2026-07-28 stateless envelope."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from ...core import ANONYMOUS, Principal
from ...middlewares import disconnected
from ...settings import Settings
from ...urls import base_url
from ..jsonrpc import (
    MODERN_HTTP_STATUS,
    REQUEST_CANCELLED,
    JsonRpcError,
    Message,
    loads,
    parse_message,
)
from ..server import (
    BATCH_VERSIONS,
    MODERN_VERSIONS,
    SUPPORTED_VERSIONS,
    CallEnv,
    McpServer,
    is_modern_request,
    unsupported_version,
)
from ..session import SessionRecord, TooManySessions
from .common import (
    KEEPALIVE,
    SESSION_HEADER,
    VERSION_HEADER,
    BodyTooLarge,
    OriginPolicy,
    abort_connection,
    accepts,
    authenticate,
    forbidden_origin,
    http_error,
    json_body,
    new_outbox,
    note_stream_dropped,
    open_sse,
    pump_stream,
    read_body,
    rpc_error_response,
    sse_event,
    start_eagerly,
    too_large,
)
from .outbox import Outbox
from .sessions import Session, SessionManager

log = structlog.get_logger(__name__)
TRANSPORT = "streamable_http"


class StreamableHttp:
    """aiohttp handlers for one MCP endpoint; protocol decisions stay in McpServer."""

    def __init__(self, server: McpServer, sessions: SessionManager, settings: Settings, origins: OriginPolicy) -> None:
        self.server = server
        self.sessions = sessions
        self.settings = settings
        self.origins = origins
        self.max_body = settings.max_request_bytes
        # A call still running after this long is switched to an SSE response (when the client
        # accepts one) so keep-alive comments can hold proxies open; notifications switch it at once.
        self.sse_after_seconds = 5.0
        self.keepalive_seconds = 15.0
        self.poll_seconds = 0.5  # how often a running call checks for a vanished client
        if sessions.relay is not None:
            sessions.relay.on("response", self._relayed_response)

    def _relayed_response(self, relayed: dict[str, Any]) -> None:
        session = self.sessions.local(str(relayed.get("session")))
        request_id = relayed.get("id")
        if session is None or not isinstance(request_id, str) or not isinstance(relayed.get("params"), dict):
            return  # not a session this worker serves, or not an answer to one of our (string) ids
        message = Message(kind="response", method="", params=relayed["params"], id=request_id)
        env = CallEnv(principal=ANONYMOUS, base_url="", settings=self.settings, session=session.record)
        self.server.handle_response(message, env)

    # -- POST ----------------------------------------------------------------------------------
    async def post(self, request: web.Request) -> web.StreamResponse:
        if not self.origins.allowed(request):
            return forbidden_origin()
        if request.content_type != "application/json":
            return http_error(415, "Unsupported Media Type: Content-Type must be application/json")
        json_ok, sse_ok = accepts(request)
        if not (json_ok or sse_ok):
            return http_error(406, "Not Acceptable: Accept must include application/json or text/event-stream")
        try:
            body = await read_body(request, self.max_body)
        except BodyTooLarge:
            return too_large(self.max_body)
        header_version = request.headers.get(VERSION_HEADER)
        if header_version is not None:
            header_version = header_version.strip()
        try:
            payload = loads(body)
            if isinstance(payload, list):
                return await self._batch(request, payload, header_version)
            message = parse_message(payload)
        except JsonRpcError as exc:
            await authenticate(request, [])  # an anonymous caller learns nothing from a malformed body
            return rpc_error_response(400, exc)
        self.server.observe(message)
        if is_modern_request(payload, header_version):
            return await self._modern(request, message, json_ok, sse_ok)
        return await self._legacy(request, message, header_version, json_ok, sse_ok)

    async def _legacy(
        self, request: web.Request, message: Message, header_version: str | None, json_ok: bool, sse_ok: bool
    ) -> web.StreamResponse:
        methods = [message.method] if message.kind != "response" else []
        principal = await authenticate(request, methods)
        if header_version is not None and header_version not in SUPPORTED_VERSIONS:
            return rpc_error_response(400, unsupported_version(header_version), message.id)
        session: Session | None = None
        initializing = message.kind == "request" and message.method == "initialize"
        if not initializing:
            session_or_error = await self._session(request, principal)
            if isinstance(session_or_error, web.Response):
                return session_or_error
            session = session_or_error
        env = self._env(request, principal, session)
        if initializing:
            try:
                await self.sessions.make_room()
            except TooManySessions:
                return self._exhausted()

            def open_session(version: str) -> SessionRecord:
                nonlocal session
                session = self.sessions.new(TRANSPORT, version, owner=principal)  # owned before its id is known
                return session.record  # stored below, once initialize has filled it in

            env.open_session = open_session
        try:
            if message.kind == "notification":
                await self.server.handle_notification(message, env)
                return web.Response(status=202)
            if message.kind == "response":  # the client answers a request of ours (sampling, elicitation, roots)
                relay = self.sessions.relay
                if not self.server.handle_response(message, env) and relay is not None and session is not None:
                    # The call that asked may run on another worker: it takes the answer there.
                    await relay.broadcast("response", session=session.id, id=message.id, params=message.params)
                return web.Response(status=202)
            if message.method == "tools/call":
                return await self._run_call(request, message, env, json_ok, sse_ok, session)
            try:
                answer = await self.server.handle_request(message, env)
            except TooManySessions:
                return self._exhausted()
            if initializing and session is not None:
                await self.sessions.add(session)  # Redis down: RedisUnavailable, answered 503 (add_mcp_routes)
        finally:
            if session is not None and not initializing:
                if message.method == "tools/call":
                    await self.sessions.save_quietly(session)  # its answer may have gone out already
                else:
                    await self.sessions.save(session)
        headers = {SESSION_HEADER: session.id} if initializing and session is not None else None
        return await self._single(request, answer, json_ok, headers=headers)

    def _exhausted(self) -> web.Response:
        log.warning("mcp_sessions_exhausted", max_sessions=self.sessions.max_sessions)
        return http_error(503, "Too many open MCP sessions; retry later", headers={"Retry-After": "5"})

    def _env(self, request: web.Request, principal: Principal, session: Session | None) -> CallEnv:
        env = CallEnv(principal=principal, base_url=base_url(request), settings=self.settings)
        if session is not None:
            env.session, env.cancel = session.record, self.sessions.canceller(session)
        return env

    async def _modern(self, request: web.Request, message: Message, json_ok: bool, sse_ok: bool) -> web.StreamResponse:
        principal = await authenticate(request, [message.method] if message.kind != "response" else [])
        if message.kind == "notification":
            return web.Response(status=202)  # 2026-07-28 defines no client notifications on HTTP
        if message.kind == "response":
            return http_error(400, "Invalid request: clients must not send JSON-RPC responses")
        try:
            envelope = self.server.check_envelope(message, request.headers)
        except JsonRpcError as exc:
            return rpc_error_response(MODERN_HTTP_STATUS.get(exc.code, 400), exc, message.id)
        env = self._env(request, principal, None)
        env.envelope = envelope
        if message.method == "tools/call":
            return await self._run_call(request, message, env, json_ok, sse_ok, None)
        answer = await self.server.handle_request(message, env)
        return await self._single(request, answer, json_ok, status=_modern_status(answer))

    async def _single(
        self,
        request: web.Request,
        answer: dict[str, Any],
        json_ok: bool,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        if json_ok:
            return json_body(answer, status=status, headers=headers)
        response = await open_sse(request, headers)  # the client accepts only text/event-stream
        await response.write(sse_event(answer))
        await response.write_eof()
        return response

    async def _session(self, request: web.Request, principal: Principal) -> Session | web.Response:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return http_error(400, f"Bad Request: the {SESSION_HEADER} header is required (send initialize first)")
        # Another user's session is None here, and gets the same 404 as an unknown id.
        session = await self.sessions.get(session_id.strip(), principal)
        if session is None or session.record.transport != TRANSPORT:
            return http_error(404, "Session not found or expired: send initialize to start a new session")
        return session

    # -- tools/call: the only method that may run long, stream progress, or be cancelled ---------
    async def _run_call(
        self,
        request: web.Request,
        message: Message,
        env: CallEnv,
        json_ok: bool,
        sse_ok: bool,
        session: Session | None,
    ) -> web.StreamResponse:
        task: asyncio.Future[dict[str, Any]] | None = None

        def drop_stream(full: Outbox) -> None:
            # The client is not reading this response's event stream: stop the call, drop the connection.
            note_stream_dropped(self.server, TRANSPORT, "call", full)
            if task is not None:
                task.cancel()
            abort_connection(request)

        outbox = new_outbox(self.settings, drop_stream)
        if sse_ok:
            env.emit = outbox.put
        elif session is not None:
            env.emit = self.sessions.sender(session)  # the session's GET stream, if one is open (any worker)
        # Started at once: a call that needs no wait (a quick read on the loop) is answered without a task.
        task = start_eagerly(self.server.handle_request(message, env))
        if not task.done():
            if outbox.overflowed:  # its first step flooded the stream, before drop_stream could see the task
                task.cancel()
            task.add_done_callback(lambda _task: outbox.wake())
        request_id = message.id
        if session is not None and not task.done():
            session.track(request_id, task)
        try:
            return await self._respond(
                request, task, outbox, json_ok, sse_ok, request_id=request_id, modern=env.envelope is not None
            )
        finally:
            if not task.done():
                task.cancel()  # client went away or this handler was cancelled: stop the query
            if session is not None:
                session.untrack(request_id, task)

    async def _respond(
        self,
        request: web.Request,
        task: asyncio.Future[dict[str, Any]],
        outbox: Outbox,
        json_ok: bool,
        sse_ok: bool,
        *,
        request_id: Any,
        modern: bool,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        switch_at = loop.time() + self.sse_after_seconds
        if not task.done():
            await asyncio.sleep(0)  # a quick tool finishes in its first step: no timer, no waiter
        while not task.done():
            if sse_ok and (outbox or not json_ok or loop.time() >= switch_at):
                return await self._stream(request, task, outbox)
            timeout = self.poll_seconds if not sse_ok else max(0.0, min(self.poll_seconds, switch_at - loop.time()))
            await outbox.wait(timeout)
            if outbox.overflowed:
                return web.Response(status=499)
            if not task.done() and disconnected(request):
                task.cancel()  # 2026-07-28: closing the request is its cancellation; also stops abandoned work
                log.info("mcp_client_went_away", modern=modern)
                return web.Response(status=499)
        if sse_ok and outbox:
            return await self._stream(request, task, outbox)  # notifications raced the result: keep order
        if task.cancelled():
            cancelled = JsonRpcError(REQUEST_CANCELLED, "Request cancelled by the client")
            return rpc_error_response(200, cancelled, request_id)
        answer = task.result()
        if json_ok:
            return json_body(answer, status=_modern_status(answer) if modern else 200)
        return await self._stream(request, task, outbox)

    async def _stream(
        self, request: web.Request, task: asyncio.Future[dict[str, Any]], outbox: Outbox
    ) -> web.StreamResponse:
        response = await open_sse(request)
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        try:
            while True:
                while outbox:
                    await response.write(outbox.take())
                    last_write = loop.time()
                if task.done():
                    break
                await outbox.wait(min(self.keepalive_seconds, self.poll_seconds))
                if task.done() or outbox:
                    continue
                if disconnected(request):
                    task.cancel()
                    return response
                if loop.time() - last_write >= self.keepalive_seconds:
                    await response.write(KEEPALIVE)
                    last_write = loop.time()
            if not task.cancelled():  # a cancelled request gets no response (spec), just the end of stream
                await response.write(sse_event(task.result()))
            await response.write_eof()
        except ConnectionResetError:
            task.cancel()
        return response

    # -- batches (2025-03-26 only) ----------------------------------------------------------------
    async def _batch(self, request: web.Request, payload: list[Any], header_version: str | None) -> web.Response:
        principal = await authenticate(
            request,
            [
                item.get("method", "")
                for item in payload
                if isinstance(item, dict) and isinstance(item.get("method"), str)
            ],
        )
        if header_version in MODERN_VERSIONS:
            return http_error(400, "Invalid request: JSON-RPC batches are not allowed in protocol 2026-07-28")
        if not payload:
            return http_error(400, "Invalid request: empty JSON-RPC batch")
        session_or_error = await self._session(request, principal)
        if isinstance(session_or_error, web.Response):
            return session_or_error
        session = session_or_error
        if session.record.protocol_version not in BATCH_VERSIONS:
            return http_error(
                400,
                f"Invalid request: JSON-RPC batches are not supported in protocol version "
                f"{session.record.protocol_version} (only 2025-03-26)",
            )
        answers: list[dict[str, Any]] = []
        requests: list[Message] = []
        for item in payload:
            try:
                message = parse_message(item)
            except JsonRpcError as exc:
                answers.append({"jsonrpc": "2.0", "id": exc.request_id, "error": exc.error_object()})
                continue
            self.server.observe(message)
            if message.kind == "request" and message.method == "initialize":
                return http_error(400, "Invalid request: initialize must not be part of a JSON-RPC batch")
            if message.kind == "notification":
                await self.server.handle_notification(message, self._env(request, principal, session))
            elif message.kind == "request":
                requests.append(message)
        if requests:
            loop = asyncio.get_running_loop()
            tasks = []
            for message in requests:
                task = loop.create_task(self.server.handle_request(message, self._env(request, principal, session)))
                session.track(message.id, task)
                tasks.append(task)
            try:
                results = await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                for message, task in zip(requests, tasks, strict=True):
                    if not task.done():
                        task.cancel()
                    session.untrack(message.id, task)
            for message, result in zip(requests, results, strict=True):
                if isinstance(result, BaseException):
                    result = {
                        "jsonrpc": "2.0",
                        "id": message.id,
                        "error": JsonRpcError(REQUEST_CANCELLED, "Request cancelled by the client").error_object(),
                    }
                answers.append(result)
        await self.sessions.save(session)
        if not answers:
            return web.Response(status=202)
        return json_body(answers)

    # -- GET: the server->client stream of a session --------------------------------------------
    async def get(self, request: web.Request) -> web.StreamResponse:
        if not self.origins.allowed(request):
            return forbidden_origin()
        version = (request.headers.get(VERSION_HEADER) or "").strip()
        if version in MODERN_VERSIONS:
            return http_error(
                405, "Method Not Allowed: protocol 2026-07-28 has no GET stream", headers={"Allow": "POST"}
            )
        _, sse_ok = accepts(request)
        if not sse_ok:
            return http_error(406, "Not Acceptable: the GET stream needs Accept: text/event-stream")
        principal = await authenticate(request, [])
        session_or_error = await self._session(request, principal)
        if isinstance(session_or_error, web.Response):
            return session_or_error
        session = session_or_error
        if session.stream is not None and not session.stream.closed:
            return http_error(409, "Conflict: this session already has an open GET stream")

        def drop_stream(full: Outbox) -> None:
            # The client stopped reading its GET stream: drop that stream (the session stays; it may reopen).
            note_stream_dropped(self.server, TRANSPORT, "get", full)
            abort_connection(request)

        outbox = session.stream = new_outbox(self.settings, drop_stream)
        worker = self.sessions.worker_id
        if worker is not None:  # shared sessions: notifications from any worker are relayed here
            session.record.stream_worker = worker
            try:
                await self.sessions.save(session)
            except BaseException:
                session.stream = None
                raise
        response = await open_sse(request)
        try:
            await pump_stream(request, response, outbox, keepalive=self.keepalive_seconds, poll=self.poll_seconds)
        except ConnectionResetError:
            pass
        finally:
            if session.stream is outbox:
                session.stream = None
                if worker is not None and session.record.stream_worker == worker:
                    session.record.stream_worker = None
                    await self.sessions.save_quietly(session)
        return response

    # -- DELETE: end a session --------------------------------------------------------------------
    async def delete(self, request: web.Request) -> web.Response:
        if not self.origins.allowed(request):
            return forbidden_origin()
        version = (request.headers.get(VERSION_HEADER) or "").strip()
        if version in MODERN_VERSIONS and not request.headers.get(SESSION_HEADER):
            return http_error(405, "Method Not Allowed: protocol 2026-07-28 has no sessions", headers={"Allow": "POST"})
        principal = await authenticate(request, [])
        session_or_error = await self._session(request, principal)
        if isinstance(session_or_error, web.Response):
            return session_or_error
        await self.sessions.remove(session_or_error)
        log.debug("mcp_session_deleted", transport=TRANSPORT)
        return web.Response(status=204)


def _modern_status(answer: dict[str, Any]) -> int:
    error = answer.get("error")
    if error is None:
        return 200
    return MODERN_HTTP_STATUS.get(error.get("code"), 200)
