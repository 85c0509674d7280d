"""The bounded queue of encoded SSE frames between the protocol (producers) and one HTTP stream writer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any


class Outbox:
    """Encoded SSE frames waiting for an HTTP stream writer; one consumer, any number of producers.

    Lighter than asyncio.Queue and it can be woken without an item (task finished, session closed),
    which is what the transports wait on. Frames are encoded when they are queued, so the queue knows
    its size in bytes: a client that stops reading fills it up to `max_messages` / `max_bytes`, and
    then the outbox *overflows*: it empties, closes (further puts return False) and calls
    `on_overflow` once, so the transport can drop that client's stream instead of growing forever.
    """

    __slots__ = (
        "_encode",
        "_items",
        "_waiter",
        "closed",
        "max_bytes",
        "max_messages",
        "on_overflow",
        "overflowed",
        "queued_bytes",
    )

    def __init__(
        self,
        encode: Callable[[Any], bytes],
        *,
        max_messages: int | None = None,
        max_bytes: int | None = None,
        on_overflow: Callable[[Outbox], None] | None = None,
    ) -> None:
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._encode = encode
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.closed = False
        self.overflowed = False
        self.on_overflow = on_overflow

    def put(self, message: Any) -> bool:
        """Queue one message; False when the outbox is closed or this message made it overflow."""
        if self.closed:
            return False
        frame = self._encode(message)
        too_many = self.max_messages is not None and len(self._items) >= self.max_messages
        # An empty queue always takes one frame, so a single large answer never counts as a stall.
        too_big = self.max_bytes is not None and bool(self._items) and self.queued_bytes + len(frame) > self.max_bytes
        if too_many or too_big:
            self._overflow()
            return False
        self._items.append(frame)
        self.queued_bytes += len(frame)
        self.wake()
        return True

    def _overflow(self) -> None:
        self.overflowed = True
        callback, self.on_overflow = self.on_overflow, None
        if callback is not None:
            callback(self)  # sees the queue as it was (for the log line), before it is dropped
        self._items.clear()
        self.queued_bytes = 0
        self.close()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.wake()

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def take(self, max_bytes: int = 65_536) -> bytes:
        """Dequeue frames up to about `max_bytes` (at least one) as one chunk to write; b"" when empty.

        Taking a bounded chunk (not everything) keeps what the writer holds outside the queue small,
        so the queue's limits bound the stream's memory even while the writer is stuck in a write.
        """
        chunks: list[bytes] = []
        size = 0
        while self._items and (not chunks or size + len(self._items[0]) <= max_bytes):
            frame = self._items.popleft()
            chunks.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return b"".join(chunks)

    async def wait(self, timeout: float | None) -> None:
        """Return when an item arrives, wake() is called, the outbox closes, or `timeout` passes."""
        if self._items or self.closed:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        handle = loop.call_later(timeout, _set_done, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()
            self._waiter = None


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
