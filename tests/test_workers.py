"""WORKERS=N as an operator runs it: `python -m app serve` in its own process group, real redis-server, loopback.

Workers are told apart by pid from /proc (the supervisor's children) and by their CPU time, never by anything a
caller of the port could read; the supervisor's log lines name them (`worker`, `pid`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from app.workers import fd_table_slots, metrics_root, reserve_fd_table
from tests.fixtures.calls import MODERN, MODERN_META
from tests.fixtures.databases import free_port
from tests.fixtures.served import ROOT, Served, serve, server_env

pytestmark = pytest.mark.integration


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _get_many(url: str, count: int, concurrency: int = 16, *, fresh_connections: bool = True) -> list[int]:
    """`count` GETs, `concurrency` at a time; a new connection per request spreads them over the workers."""
    statuses: list[int] = []
    queue = iter(range(count))
    connector = aiohttp.TCPConnector(force_close=fresh_connections, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def loop() -> None:
            for _ in queue:
                async with session.get(url) as response:
                    await response.read()
                    statuses.append(response.status)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return statuses


def scrape(served: Served) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name}{{{labels}}} not in the scrape"
    return float(found.group(1))


HEALTH_2XX = 'method="GET",route="/health",status="2xx"'


def test_two_workers_serve_one_port_and_one_scrape_counts_every_request(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url) as served:
        workers = served.workers()
        assert len(workers) == 2, workers
        for pid in workers:  # the supervisor names each worker it started
            assert re.search(rf'"worker":\d,"pid":{pid},"event":"worker_ready"', served.log())
        before_cpu = {pid: cpu_ticks(pid) for pid in workers}
        before = scrape(served)
        requests = 1200
        statuses = asyncio.run(_get_many(served.url + "/health", requests))
        assert statuses == [200] * requests
        used = {pid: cpu_ticks(pid) - before_cpu[pid] for pid in workers}
        total = sum(used.values())
        # Both processes did a real share of the work (an idle worker uses next to no CPU).
        assert all(ticks >= max(3, total * 0.1) for ticks in used.values()), used

        after = scrape(served)
        counted = sample(after, "mssql_mcp_http_requests_total", HEALTH_2XX)
        counted_before = sample(before, "mssql_mcp_http_requests_total", HEALTH_2XX) if HEALTH_2XX in before else 0
        assert counted - counted_before == requests
        assert (
            sample(after, "mssql_mcp_http_request_duration_seconds_count", 'method="GET",route="/health"') >= requests
        )
        # Gauges: one pool per worker, summed; the database is up in every live worker.
        assert sample(after, "mssql_mcp_pool_size") == 2 * 2
        served.wait_for(lambda: sample(scrape(served), "mssql_mcp_database_up") == 1, 5, "database_up in both")
        assert sample(after, "mssql_mcp_build_info", 'version="1.0.0"') == 1
        assert sample(after, "process_resident_memory_bytes") > 0
        assert after.count("\nmssql_mcp_http_requests_in_flight ") == 1  # one series for the service
        assert 'pid="' not in after  # counters summed, gauges per their multiprocess mode: no per-pid series


def test_a_killed_worker_is_replaced_while_the_other_keeps_answering(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url) as served:
        workers = served.workers()
        victim = workers[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        statuses = asyncio.run(_get_many(served.url + "/health", 200, concurrency=4))
        assert statuses == [200] * 200
        served.wait_for(
            lambda: len(served.workers()) == 2 and victim not in served.workers(), 5, "a replacement worker"
        )
        new_pid = (set(served.workers()) - set(workers)).pop()
        served.wait_for(lambda: f'"pid":{new_pid},"event":"worker_ready"' in served.log(), 5, "the new worker ready")
        assert time.monotonic() - killed_at < 5
        assert re.search(rf'"pid":{victim},"status":"killed by SIGKILL","restart_in_seconds":0\.0', served.log())
        assert asyncio.run(_get_many(served.url + "/health", 100)) == [200] * 100


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": MODERN}


def _mcp_call(method: str, params: dict[str, object]) -> tuple[dict[str, str], str]:
    """A stateless (2026-07-28) MCP request: headers and body; no session to share between workers."""
    headers = {**MCP_HEADERS, "Content-Type": "application/json", "Mcp-Method": method}
    if method == "tools/call":
        headers["Mcp-Name"] = str(params["name"])
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": MODERN_META}})
    return headers, body


# A read the demo database takes about a second over (SQLite counts a recursive CTE up).
SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000000) SELECT count(*) AS n FROM c"
)


def test_sighup_rolls_the_workers_under_load_without_a_failed_request(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url, ALLOW_UNAUTH_METHODS="true") as served:
        before = served.workers()
        headers, body = _mcp_call("tools/list", {})

        async def load_through_restart() -> tuple[int, list[str]]:
            answered = 0
            failures: list[str] = []
            done = asyncio.Event()

            async def client(fresh: bool, post: bool) -> None:
                nonlocal answered
                connector = aiohttp.TCPConnector(force_close=fresh)
                async with aiohttp.ClientSession(connector=connector) as session:
                    while not done.is_set():
                        try:
                            if post:  # not idempotent: no client retries it on a closed keep-alive connection
                                request = session.post(served.url + "/mcp", data=body, headers=headers)
                            else:
                                request = session.get(served.url + "/health")
                            async with request as response:
                                text = await response.text()
                            if response.status == 200 and (not post or '"tools"' in text):
                                answered += 1
                            else:
                                failures.append(f"{response.status} {text[:200]}")
                        except aiohttp.ClientError as exc:
                            failures.append(repr(exc))

            clients = [asyncio.create_task(client(fresh=i % 2 == 0, post=i % 4 < 2)) for i in range(8)]
            await asyncio.sleep(0.5)
            for _ in range(2):
                rolls = served.log().count('"event":"rolling_restart_done"')
                served.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 60
                while served.log().count('"event":"rolling_restart_done"') == rolls and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            done.set()
            await asyncio.gather(*clients)
            return answered, failures

        answered, failures = asyncio.run(load_through_restart())
        assert served.log().count('"event":"rolling_restart_done"') == 2
        assert failures == []
        assert answered > 500
        after = served.workers()
        assert len(after) == 2 and not set(after) & set(before), (before, after)


def test_sigterm_lets_in_flight_calls_finish_stops_every_worker_and_exits_0(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    extra = {"ALLOW_UNAUTH_METHODS": "true", "ALLOW_UNAUTH_TOOLS_CALL": "true"}
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url, **extra) as served:
        workers = served.workers()
        headers, body = _mcp_call("tools/call", {"name": "execute_sql", "arguments": {"query": SLOW_QUERY}})

        async def calls_across_sigterm() -> list[str]:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def call() -> str:
                    async with session.post(served.url + "/mcp", data=body, headers=headers) as response:
                        assert response.status == 200
                        return await response.text()

                calls = [asyncio.create_task(call()) for _ in range(4)]  # two pool connections per worker
                deadline = time.monotonic() + 20
                while sample(await asyncio.to_thread(scrape, served), "mssql_mcp_http_requests_in_flight") < 4:
                    assert time.monotonic() < deadline, "the calls never all ran"
                    await asyncio.sleep(0.05)
                served.proc.send_signal(signal.SIGTERM)  # while all four are being answered
                return await asyncio.gather(*calls)

        started = time.monotonic()
        answers = asyncio.run(calls_across_sigterm())
        assert all('"rows":[[3000000]]' in answer for answer in answers), answers
        assert served.proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 30  # the calls' own time, far from the 60 s shutdown limit
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # reaped by the supervisor
        assert '"event":"workers_stopped"' in served.log()
        with pytest.raises(OSError):  # nobody listens any more
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()


def test_workers_without_redis_is_one_line_and_exit_2(tmp_path: Path, demo_db_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=server_env(tmp_path, demo_db_path, free_port(), 0, WORKERS="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "configuration error: WORKERS=2: needs REDIS_URL (the workers share sessions through Redis)"
    )


def test_an_invalid_policy_at_start_exits_2_with_its_line(tmp_path: Path, demo_db_path: Path, redis_url: str) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text("roles: [reader]\n")
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=server_env(
            tmp_path, demo_db_path, free_port(), 0, WORKERS="2", REDIS_URL=redis_url, ACCESS_POLICY_FILE=str(policy)
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "configuration error: " in done.stderr and "Traceback" not in done.stderr
    assert "listening on" not in done.stdout


def test_sighup_with_an_invalid_policy_keeps_the_workers_and_a_crashing_restart_backs_off(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text('roles:\n  reader:\n    tables:\n      allow: ["*"]\n')
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url, ACCESS_POLICY_FILE=str(policy)) as served:
        before = served.workers()
        policy.write_text("roles: [reader]\n")  # invalid from now on: a new worker cannot start
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for(lambda: '"event":"rolling_restart_stopped"' in served.log(), 20, "the roll to stop")
        assert served.workers() == before  # the running workers keep serving with the policy they loaded
        assert "configuration error: " in served.log()
        assert asyncio.run(_get_many(served.url + "/health", 50)) == [200] * 50

        # A worker that dies now cannot come back: its restarts back off instead of spinning.
        os.kill(before[0], signal.SIGKILL)

        def delays() -> list[float]:
            return [float(d) for d in re.findall(r'"restart_in_seconds":([\d.]+)', served.log())]

        served.wait_for(lambda: max(delays(), default=0) >= 2.0, 60, "the back-off to reach 2 s")
        tries = delays()
        assert tries[0] == 0.0  # a worker that had been serving comes back at once
        assert len(tries) <= 6 and tries == sorted(tries), tries  # then 0.5, 1, 2 s ...: a handful, not hundreds
        assert asyncio.run(_get_many(served.url + "/health", 50)) == [200] * 50  # the other worker serves on

        policy.write_text('roles:\n  reader:\n    tables:\n      allow: ["*"]\n')  # fixed: the next try starts
        served.wait_for(lambda: len(served.workers()) == 2, 20, "the worker back after the fix")


def test_workers_die_with_their_supervisor(tmp_path: Path, demo_db_path: Path, redis_url: str) -> None:
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url) as served:
        workers = served.workers()
        os.kill(served.proc.pid, signal.SIGKILL)
        served.proc.wait(timeout=10)
        deadline = time.monotonic() + 90  # each worker drains and stops gracefully on the kernel's SIGTERM
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        # The killed supervisor's metrics directory goes at the next start of any supervisor.
        # In memory where the machine has /dev/shm (metrics never wait for a disk).
        root = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        assert metrics_root() == root
        stale = list(Path(root).glob(f"mssql-mcp-metrics-{served.proc.pid}-*"))
        assert stale
    with serve(tmp_path / "again", demo_db_path, WORKERS="2", REDIS_URL=redis_url):
        assert not any(path.exists() for path in stale)


def test_one_mcp_session_is_served_by_both_workers(tmp_path: Path, demo_db_path: Path, redis_url: str) -> None:
    """Sessions live in Redis: each request on a new connection, so both workers take part in one session."""
    with serve(tmp_path, demo_db_path, WORKERS="2", REDIS_URL=redis_url, ALLOW_UNAUTH_METHODS="true") as served:
        workers = served.workers()
        before_cpu = {pid: cpu_ticks(pid) for pid in workers}

        async def session_calls() -> list[str]:
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as http:
                init = {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                }
                async with http.post(served.url + "/mcp", json=init, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    session_id = response.headers["Mcp-Session-Id"]
                headers |= {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
                notice = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                async with http.post(served.url + "/mcp", json=notice, headers=headers) as response:
                    assert response.status == 202, await response.text()

                async def tools_list(n: int) -> str:
                    body = {"jsonrpc": "2.0", "id": n, "method": "tools/list"}
                    async with http.post(served.url + "/mcp", json=body, headers=headers) as response:
                        return f"{response.status} {await response.text()}"

                answers: list[str] = []
                for batch in range(10):
                    answers += await asyncio.gather(*(tools_list(batch * 40 + i) for i in range(1, 41)))
                return answers

        answers = asyncio.run(session_calls())
        assert all(answer.startswith("200 ") and '"execute_sql"' in answer for answer in answers), answers[:3]
        used = {pid: cpu_ticks(pid) - before_cpu[pid] for pid in workers}
        assert all(ticks >= 2 for ticks in used.values()), used
        # One session for the whole service, not one per worker that saw it.
        assert sample(scrape(served), "mssql_mcp_sessions_active", 'transport="streamable_http"') == 1
        active = 'state="active",transport="streamable_http"'
        served.wait_for(lambda: sample(scrape(served), "mssql_mcp_sessions", active) == 1, 20, "the sessions gauge")


def test_a_busy_port_is_the_same_one_line_with_workers(tmp_path: Path, demo_db_path: Path, redis_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve"],
            cwd=ROOT,
            env=server_env(tmp_path, demo_db_path, port, 0, WORKERS="2", REDIS_URL=redis_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"cannot listen on 127.0.0.1:{port}: address already in use (is another server using it? set HOST and PORT)"
    )
    assert "listening on" not in done.stdout


def _fd_table_size(pid: int) -> int:
    """The kernel's descriptor-table size of a process (FDSize in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("FDSize:"):
            return int(line.split()[1])
    raise AssertionError(f"no FDSize for {pid}")


def test_serving_processes_grow_their_descriptor_table_before_serving(
    tmp_path: Path, demo_db_path: Path, redis_url: str
) -> None:
    """Grown later, under load, each doubling put the event loop to sleep for 7-25 ms (app.workers.reserve_fd_table):
    every serving process starts with the table grown, one worker or several."""
    wanted = fd_table_slots()  # 4096, or the open-files limit (the server's, inherited from this process)
    with serve(tmp_path / "two", demo_db_path, WORKERS="2", REDIS_URL=redis_url) as served:
        assert [_fd_table_size(pid) >= wanted for pid in served.workers()] == [True, True]
    with serve(tmp_path / "one", demo_db_path) as served:
        assert _fd_table_size(served.proc.pid) >= wanted


def test_reserving_the_table_leaves_a_descriptor_already_in_its_top_slot_open() -> None:
    """A descriptor the process inherited in the slot reserve_fd_table reaches for is not closed by it."""
    top = fd_table_slots() - 1
    read_end, write_end = os.pipe()
    try:
        os.dup2(write_end, top, inheritable=False)
        reserve_fd_table()
        os.write(top, b"still open")
        assert os.read(read_end, 16) == b"still open"
        assert _fd_table_size(os.getpid()) >= top + 1
    finally:
        with contextlib.suppress(OSError):
            os.close(top)
        os.close(read_end)
        os.close(write_end)
