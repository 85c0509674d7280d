"""The event-loop lag probe (issue 10): a blocked loop shows up in mssql_mcp_event_loop_lag_*."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from app.obs.metrics import Metrics, loop_lag_probe


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_a_blocked_loop_is_measured_as_lag() -> None:
    metrics = Metrics()
    async with loop_lag_probe(metrics):
        await asyncio.sleep(0.15)  # the probe is sleeping its 100 ms
        time.sleep(0.08)  # hold the loop: the probe wakes about this late
        await asyncio.sleep(0.15)
    worst = _sample(metrics, "mssql_mcp_event_loop_lag_max_seconds")
    assert 0.02 <= worst < 1.0
    assert _sample(metrics, "mssql_mcp_event_loop_lag_seconds_count") >= 2
    text = generate_latest(metrics.registry).decode()
    assert "mssql_mcp_event_loop_lag_seconds_bucket" in text


async def test_the_probe_stops_with_its_context() -> None:
    metrics = Metrics()
    async with loop_lag_probe(metrics):
        await asyncio.sleep(0.25)
    count = _sample(metrics, "mssql_mcp_event_loop_lag_seconds_count")
    await asyncio.sleep(0.25)
    assert _sample(metrics, "mssql_mcp_event_loop_lag_seconds_count") == count
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag-probe"]
