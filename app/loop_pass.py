"""Short passes of the event loop, so a timer or a waiting request is never held up for long (issue 10).

The loop runs, in each pass, every callback that was ready when the pass began. Under load that is one step
of every request in flight, and a request's step can run to its end without waiting for anything (an inline
SQLite read never leaves the loop): at 32 requests in flight a pass took 10-40 ms, and so did any timer, a
keep-alive ping or a cancel that fell due during it. So work asks for its turn first: once a pass has run
for `budget` seconds, the next one waits for a later pass.

Waiting is first come, first served. A waiter holds a future in a line; once per pass the line is released
(`_next_pass`, chained from pass to pass while anyone waits), and the released run in the order they came:
each goes ahead while the pass has time, the rest keep their places at the head of the line. Nobody asking
anew goes ahead of anyone in line. (A plain `sleep(0)` waiter lines up again at its own place in the pass,
behind whoever finished and came back meanwhile: measured, some waited 100-1,000 ms at 32 connections.)

Where to ask: Database._read, before a read (an inline SQLite read never leaves the loop); what a request
does before it (aiohttp's parsing, the MCP envelope, the guard) is small. An ask in the HTTP middleware too
changed neither the lag nor the tail. This module imports nothing from the service's areas.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

# Measured under wrk at 32 connections (SELECT 1 and a 20-row join, one process): with 2 ms the loop-lag probe
# saw at most 5-6 ms, with 3 ms up to 9 ms, without a budget up to 40 ms; throughput did not change.
PASS_BUDGET_SECONDS = 0.002


class LoopPass:
    """The time the current pass of the event loop has run, and the line of work waiting for a later one."""

    def __init__(self, budget: float = PASS_BUDGET_SECONDS) -> None:
        self.budget = budget
        self._started: float | None = None  # None: this pass's clock has not started
        self._line: deque[asyncio.Future[None]] = deque()  # waiting, first come first
        self._released: set[asyncio.Future[None]] = set()  # let go by _next_pass, not yet run
        self._kept: list[asyncio.Future[None]] = []  # released but out of time again: head of the line
        self._chained = False  # a _next_pass is scheduled

    def spent(self) -> bool:
        """Whether new work must wait: this pass has had its share, or others are waiting already."""
        if self._line or self._released or self._kept:
            return True
        return self._clock_spent()

    async def turn(self) -> None:
        """Wait in line until a pass has time for this one. Callers check spent() first, so a request in a
        short pass does not make a coroutine at all."""
        if not self.spent():
            return
        loop = asyncio.get_running_loop()
        place: asyncio.Future[None] = loop.create_future()
        self._line.append(place)
        while True:
            self._chain(loop)
            try:
                await place
            except asyncio.CancelledError:
                self._forget(place)
                raise
            self._released.discard(place)
            if not self._clock_spent():
                return
            place = loop.create_future()  # out of time again: keep this place at the head of the line
            self._kept.append(place)

    def _clock_spent(self) -> bool:
        now = time.perf_counter()
        started = self._started
        if started is None:
            self._started = now
            self._chain(asyncio.get_running_loop())
            return False
        return now - started >= self.budget

    def _chain(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._chained:
            self._chained = True
            loop.call_soon(self._next_pass)

    def _forget(self, place: asyncio.Future[None]) -> None:
        self._released.discard(place)
        for where in (self._line, self._kept):
            if place in where:
                where.remove(place)

    def _next_pass(self) -> None:
        """First in each pass while anyone waits: restart the clock and let the line go, in order."""
        self._started = None
        line = [*self._kept, *self._line]
        self._kept.clear()
        self._line.clear()
        for place in line:
            if not place.done():  # a cancelled waiter's place is done
                place.set_result(None)
                self._released.add(place)
        if self._released:
            asyncio.get_running_loop().call_soon(self._next_pass)
        else:
            self._chained = False
