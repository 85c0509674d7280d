"""The start-up heap is frozen out of the cyclic collector while the server starts (issue 10): full collections
under load then walk only what calls made, instead of holding the event loop for 30-66 ms each."""

from __future__ import annotations

import gc

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.obs.heap import frozen_startup_heap


async def test_the_heap_is_frozen_while_the_app_runs_and_given_back_on_shutdown() -> None:
    gc.unfreeze()
    frozen_while_serving: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        frozen_while_serving.append(gc.get_freeze_count())
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(lambda app: frozen_startup_heap())
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/")).status == 200
    assert frozen_while_serving and frozen_while_serving[0] > 1000  # the imported modules, at least
    assert gc.get_freeze_count() == 0
