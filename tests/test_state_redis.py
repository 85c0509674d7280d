"""The shared Redis connection (`app.state.redisstate`) against a real redis-server: commands, the
up/down flag, pub/sub that survives a Redis restart, and /health reporting it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from app.settings import SettingsError, load_settings
from app.state.redisstate import RedisState, RedisUnavailable
from tests.fixtures.redis import RedisServer

pytestmark = pytest.mark.integration


async def _eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_commands_and_pubsub_survive_a_restart(redis_server: RedisServer, redis_url: str) -> None:
    got: list[bytes] = []
    state = RedisState(redis_url)
    state.subscribe(state.worker_channel, got.append)
    await state.start()
    try:
        assert state.available and state.listening
        await state.run(lambda c: c.set(state.key("probe"), b"1"))
        assert await state.run(lambda c: c.get(state.key("probe"))) == b"1"
        assert await state.publish(state.worker_channel, b"hello") == 1
        await _eventually(lambda: got == [b"hello"])

        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await state.run(lambda c: c.get(state.key("probe")))
        # Known down: the next command fails at once instead of waiting for a time-out.
        with pytest.raises(RedisUnavailable, match="try again"):
            await state.run(lambda c: c.get(state.key("probe")))
        assert time.monotonic() - started < 3
        assert state.status()["status"] == "unavailable"

        redis_server.start()
        await _eventually(lambda: state.available and state.listening)
        assert await state.publish(state.worker_channel, b"again") == 1
        await _eventually(lambda: got == [b"hello", b"again"])
    finally:
        if not redis_server.is_running():
            redis_server.start()
        await state.close()


async def test_a_down_redis_at_start_does_not_stop_the_service(redis_server: RedisServer) -> None:
    state = RedisState("redis://127.0.0.1:1/0", command_timeout=0.3)
    state.subscribe("x", lambda _: None)
    await state.start()
    try:
        assert not state.available
        assert "last_error" in state.status()
    finally:
        await state.close()


async def test_health_reports_redis_and_degrades_while_it_is_down(
    redis_server: RedisServer, redis_url: str, make_settings: Any, start_live_server: Any
) -> None:
    server = await start_live_server(make_settings(redis_url=redis_url, public_base_url="http://127.0.0.1"))
    async with aiohttp.ClientSession() as http:

        async def health() -> dict[str, Any]:
            async with http.get(server.endpoint("/health")) as response:
                assert response.status == 200
                return dict(await response.json())

        body = await health()
        assert body["status"] == "healthy" and body["redis"] == {"status": "ok"}
        redis_server.stop()
        try:
            deadline = time.monotonic() + 10
            while (body := await health())["redis"]["status"] == "ok" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert body["status"] == "degraded" and body["redis"] == {"status": "unavailable"}  # no host in public
        finally:
            redis_server.start()
        deadline = time.monotonic() + 10
        while (body := await health())["status"] != "healthy" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert body["status"] == "healthy"


def test_settings_need_redis_for_workers_and_hide_the_url() -> None:
    with pytest.raises(SettingsError, match="WORKERS=2: needs REDIS_URL"):
        load_settings({"WORKERS": "2", "PUBLIC_BASE_URL": "https://mcp.example.com"}, require_database=False)
    with pytest.raises(SettingsError) as caught:
        load_settings({"REDIS_URL": "http://:secret@h/0", "PUBLIC_BASE_URL": "https://x"}, require_database=False)
    assert "secret" not in str(caught.value)
    with pytest.raises(SettingsError, match="PUBLIC_BASE_URL"):
        load_settings({"REDIS_URL": "redis://h:6379/0"}, require_database=False)
    settings = load_settings(
        {"WORKERS": "2", "REDIS_URL": "redis://h:6379/0", "PUBLIC_BASE_URL": "https://x"}, require_database=False
    )
    assert settings.workers == 2
