"""Short passes of the event loop, so a timer or a waiting request is never held up for long (issue 10).

The loop runs, in each pass, every callback that was ready when the pass began. Under load that is one step
of every request in flight, and a request's step can run to its end without waiting for anything (an inline
SQLite read never leaves the loop): at 32 requests in flight a pass took 10-40 ms, and so did any timer, a
keep-alive ping or a cancel that fell due during it. So work asks for its turn first: once a pass has run
for `budget` seconds, the next one waits for a later pass.

Waiting is first come, first served, and the clock restarts at the head of each pass. A waiter takes a
ticket and steps aside (`sleep(0)`) until a pass in which it holds the first ticket and the clock has time;
nobody asking anew goes ahead of a ticket. The clock restarts in `_next_pass`, a callback chained from pass to
pass while there is demand: each run schedules the next before anything else is queued, so it runs first in
its pass and every ask in a pass sees that pass's clock. (Restarted anywhere else, a clock started late in
one pass was still running in the next, and waiters released by a future lined up behind newer ones:
measured, some requests waited 100-2,000 ms at 32 connections.)

Where to ask: Database._read, before a read (an inline SQLite read never leaves the loop); what a request
does before it (aiohttp's parsing, the MCP envelope, the guard) is small. An ask in the HTTP middleware too
changed neither the lag nor the tail. This module imports nothing from the service's areas.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

# Measured under wrk at 32 connections (SELECT 1 and a 20-row join, one process): with 2 ms the loop-lag probe
# saw at most 5-6 ms (13 ms in 2 of 816 probes on a slow, stolen-from machine), with 3 ms up to 9 ms, without a
# budget 10-40 ms; throughput did not change.
PASS_BUDGET_SECONDS = 0.002


class LoopPass:
    """The time the current pass of the event loop has run, and the tickets of the work waiting."""

    def __init__(self, budget: float = PASS_BUDGET_SECONDS) -> None:
        self.budget = budget
        self._started: float | None = None  # None: this pass's clock has not started
        self._waiting: deque[int] = deque()  # tickets, first come first
        self._next_ticket = 0
        self._asked = False  # the clock ran since the last _next_pass: keeps the chain going
        self._chained = False  # a _next_pass is scheduled

    def spent(self) -> bool:
        """Whether new work must wait: this pass has had its share, or others are waiting already."""
        if self._waiting:
            return True
        return self._clock_spent()

    async def turn(self) -> None:
        """Wait for a pass with time for this one, behind everyone who waited before. Callers check spent()
        first, so a request in a short pass does not make a coroutine at all."""
        if not self.spent():
            return
        ticket = self._next_ticket
        self._next_ticket += 1
        self._waiting.append(ticket)
        try:
            while True:
                self._chain()
                await asyncio.sleep(0)
                if self._waiting[0] == ticket and not self._clock_spent():
                    self._waiting.popleft()
                    return
        except asyncio.CancelledError:
            self._waiting.remove(ticket)
            raise

    def _clock_spent(self) -> bool:
        now = time.perf_counter()
        started = self._started
        if started is None:
            self._started = now
            self._asked = True
            self._chain()
            return False
        return now - started >= self.budget

    def _chain(self) -> None:
        if not self._chained:
            self._chained = True
            asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        """First in each pass while there is demand (it schedules its successor before anything else can be
        queued in this pass): the clock restarts."""
        self._started = None
        if self._asked or self._waiting:
            self._asked = False
            asyncio.get_running_loop().call_soon(self._next_pass)
        else:
            self._chained = False  # a quiet pass: the next ask starts the chain again
