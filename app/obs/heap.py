"""Keep the cyclic garbage collector off the event loop's critical path (issue 10).

Under load a full (generation 2) collection ran about once a second and walked every object the process had
made since start-up (sqlglot's dialect tables, aiohttp, the tool schemas, ...): 30-66 ms of loop-thread CPU
inside whichever task step it interrupted, the event-loop lag the bench reported. Those objects live as long
as the process, so at start-up (before the server listens) they are moved to the collector's permanent
generation (`gc.freeze`, CPython's documented tool for this): later collections walk only what calls made.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator


def freeze_heap() -> None:
    """Collect what start-up left as garbage, then exempt every surviving object from later collections."""
    gc.collect()
    gc.freeze()


@contextlib.asynccontextmanager
async def frozen_startup_heap() -> AsyncIterator[None]:
    """Freeze the heap while the app starts (an aiohttp cleanup context: it runs before the site listens, so
    the one full collection it costs is not on any call's path); on shutdown give the objects back to the
    collector, so a process that runs several apps in a row (the tests) can still free them."""
    freeze_heap()
    try:
        yield
    finally:
        gc.unfreeze()
