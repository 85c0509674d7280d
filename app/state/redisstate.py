"""The one connection to Redis (`REDIS_URL`): commands with a short time limit, an up/down flag that
`/health` reports, and a pub/sub listener that reconnects by itself.

Everything that shares ephemeral state through Redis (MCP session records, the stream relay, the fetch
cache, sign-in codes, throttling, revocation broadcasts) goes through a `RedisState`, so there is one
place that decides what "Redis is down" means:

- a command that fails (refused, reset, timed out) marks Redis down and raises `RedisUnavailable`, a
  `SafeError` whose text callers may show as is; while down, commands fail at once instead of waiting
  for a time-out each, so nothing hangs;
- a monitor pings while Redis is down (and now and then while up) and marks it up again, and the
  listener re-subscribes its channels, so the service recovers without a restart.

Channels are fixed at start-up (a worker's own channel and the broadcast channels): the relay addresses
a *worker*, whose id a session record names, so no subscription ever has to be made mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio
import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..core import SafeError

log = structlog.get_logger(__name__)

T = TypeVar("T")

KEY_PREFIX = "mssql-mcp:"
# A command's time limit: loopback or a Memorystore in the same zone answers in well under 1 ms, so a
# second means Redis (or the way to it) is gone, and a caller should hear so instead of waiting.
COMMAND_TIMEOUT_SECONDS = 1.0
PING_WHILE_DOWN_SECONDS = 0.25
PING_WHILE_UP_SECONDS = 5.0
LISTEN_RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0)

# Errors that mean "Redis is unreachable or broken", as opposed to a bug in the caller.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.ReadOnlyError,
    OSError,
    asyncio.TimeoutError,
)

# The listener also treats any other Redis error (a wrong password, ...) as "down, retry".
LISTEN_ERRORS: tuple[type[BaseException], ...] = (*REDIS_DOWN_ERRORS, redis.RedisError)

MessageHandler = Callable[[bytes], None]


class RedisUnavailable(SafeError):
    """Shared state cannot be reached: the text is safe to show a client."""

    def __init__(self, message: str = "shared state (Redis) is unavailable; try again in a few seconds") -> None:
        super().__init__(message)


def new_worker_id() -> str:
    """Names this process on every VM: host, pid, and a nonce (a restarted pid is a new worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisState:
    def __init__(
        self,
        url: str,
        *,
        worker_id: str | None = None,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.url = url
        self.worker_id = worker_id or new_worker_id()
        self.command_timeout = command_timeout
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=command_timeout,
            socket_connect_timeout=command_timeout,
            retry_on_timeout=False,
            health_check_interval=0,
            # A pooled connection opened before a Redis restart fails its first command ("connection
            # closed by server"): one immediate retry on a fresh connection tells that apart from Redis
            # being down, which a refused reconnect then reports as before.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.ConnectionError],
        )
        self._available = False
        self._last_error: str | None = None
        self._down_since: float | None = time.time()
        self._on_change = on_change
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        # Counts (re)subscriptions: a cache that is kept right by broadcasts remembers the number it was
        # filled under, and a different one means messages may have been missed while disconnected.
        self.listen_generation = 0
        self._check_now = asyncio.Event()  # set when a command saw Redis fail: the monitor pings at once
        self._closed = False

    # -- naming ----------------------------------------------------------------------------------
    @staticmethod
    def key(*parts: str) -> str:
        """A key or channel name in this product's namespace (a shared Redis may serve others too)."""
        return KEY_PREFIX + ":".join(parts)

    @property
    def worker_channel(self) -> str:
        """Where other workers send messages for this one (the stream relay)."""
        return self.key("worker", self.worker_id)

    # -- state -------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self._available

    def status(self) -> dict[str, Any]:
        """For /health: "ok" or "unavailable"; `last_error` (may name the host) only for details."""
        result: dict[str, Any] = {"status": "ok" if self._available else "unavailable"}
        if not self._available:
            result["last_error"] = self._last_error or "not connected yet"
            if self._down_since is not None:
                result["down_seconds"] = round(time.time() - self._down_since, 1)
        return result

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        if error is not None:
            self._last_error = f"{type(error).__name__}: {error}"[:300]
        if up == self._available:
            return
        self._available = up
        self._down_since = None if up else time.time()
        if not up:
            self._check_now.set()
        if up:
            log.info("redis.available")
        else:
            log.warning("redis.unavailable", error=self._last_error)
        if self._on_change is not None:
            self._on_change(up)

    # -- commands ------------------------------------------------------------------------------------
    async def run(self, command: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
        """`command(client)` within the time limit; RedisUnavailable when Redis is (or just went) down."""
        if not self._available:
            raise RedisUnavailable()
        try:
            return await asyncio.wait_for(command(self.client), self.command_timeout)
        except REDIS_DOWN_ERRORS as exc:
            self._mark(False, exc)
            raise RedisUnavailable() from None

    async def publish(self, channel: str, data: bytes) -> int:
        """How many subscribers got it (0: nobody listens there, e.g. that worker is gone)."""
        return int(await self.run(lambda client: client.publish(channel, data)))

    def sync_client(self) -> redis.Redis:
        """A blocking client for code that runs on threads (the auth store), with the same time limits."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=self.command_timeout,
            socket_connect_timeout=self.command_timeout,
            retry_on_timeout=False,
        )

    # -- pub/sub -------------------------------------------------------------------------------------
    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call `handler(data)` (on the event loop) for every message on `channel`; register before start().

        Handlers must be quick and must not raise (an exception is logged and the message dropped).
        """
        if self._tasks:
            raise RuntimeError("subscribe() before start(): channels are fixed while listening")
        self._handlers.setdefault(channel, []).append(handler)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self, *, wait_seconds: float = 2.0) -> None:
        """Connect, start the monitor and the listener. Never raises for a down Redis: /health says so."""
        await self._ping()
        self._tasks.append(asyncio.create_task(self._monitor(), name="redis-monitor"))
        if self._handlers:
            self._tasks.append(asyncio.create_task(self._listen(), name="redis-listener"))
            if self._available:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._listening.wait(), wait_seconds)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    @property
    def listening(self) -> bool:
        """True while the pub/sub connection is subscribed (relayed messages reach this worker)."""
        return self._listening.is_set()

    async def _ping(self) -> bool:
        try:
            await asyncio.wait_for(self.client.ping(), self.command_timeout)
        except REDIS_DOWN_ERRORS as exc:
            self._mark(False, exc)
            return False
        except redis.RedisError as exc:  # e.g. a wrong password: down, with the reason for the operator
            self._mark(False, exc)
            return False
        self._mark(True)
        return True

    async def _monitor(self) -> None:
        while not self._closed:
            # A failed command wakes the monitor early, so a blip (a failover, a restart) costs a ping
            # interval of PING_WHILE_DOWN_SECONDS rather than the slow up-state interval.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._check_now.wait(), PING_WHILE_UP_SECONDS if self._available else PING_WHILE_DOWN_SECONDS
                )
            if self._check_now.is_set():
                self._check_now.clear()
                await asyncio.sleep(PING_WHILE_DOWN_SECONDS / 5)  # let the failing peer settle a moment
            await self._ping()

    async def _listen(self) -> None:
        attempt = 0
        while not self._closed:
            pubsub: PubSub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(*self._handlers), self.command_timeout)
                self.listen_generation += 1
                self._listening.set()
                attempt = 0
                while not self._closed:
                    # get_message wakes at least every second, so a dead connection is noticed by the ping.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except LISTEN_ERRORS as exc:
                self._listening.clear()
                self._mark(False, exc)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(LISTEN_RETRY_SECONDS[min(attempt, len(LISTEN_RETRY_SECONDS) - 1)])
            attempt += 1

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        data = message.get("data")
        payload = data if isinstance(data, bytes) else str(data).encode()
        for handler in self._handlers.get(name, ()):
            try:
                handler(payload)
            except Exception:  # one bad message must not stop the listener
                log.exception("redis.handler_failed", channel=name)
