"""How our server is deployed for a benchmark run: workers, nodes, the balancer in front, the Redis they share.

A server key of ours names a deployment (`--servers` in bench/run.py):

    ours            today's default: one process, in-process state (WORKERS=1, no Redis)
    ours-w2         WORKERS=2 on one port (sessions and relay in Redis)
    ours-n2         two nodes (separate `serve` processes, each its own DATA_DIR and port, WORKERS=1, one Redis)
                    behind nginx (Debian's) on loopback: a round-robin upstream, so each request goes to the
                    next node
    ours-n2-split   the same two nodes without a balancer: wrk sends half the connections to each node

Only loopback; the runner starts and stops every process here (redis-server and nginx included).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

FRONTS = ("direct", "nginx", "split")
_VARIANT = re.compile(r"^ours(?:-w(?P<workers>\d+)|-n(?P<nodes>\d+)(?P<split>-split)?)?$")
MAX_WORKERS = 64  # the WORKERS setting's bound
MAX_NODES = 8  # each node is a process of its own on this machine
NO_PERSISTENCE = ("--save", "", "--appendonly", "no", "--daemonize", "no")


@dataclass(frozen=True)
class Topology:
    workers: int = 1  # WORKERS of each node
    nodes: int = 1
    front: str = "direct"  # direct: the node's own port; nginx: round-robin upstream; split: wrk per node
    redis: bool = False  # REDIS_URL set (shared sessions, relay): every deployment but the plain default

    @property
    def title(self) -> str:
        if self.nodes > 1 or self.front != "direct":
            via = "nginx round-robin" if self.front == "nginx" else "wrk per node"
            return f"ours, {self.nodes} node{'s' if self.nodes > 1 else ''} ({via})"
        if self.redis:
            return f"ours, WORKERS={self.workers}"
        return "ours (aiohttp)"

    @property
    def label(self) -> str:
        """Short name for the scaling table."""
        if self.nodes > 1 or self.front != "direct":
            return f"{self.nodes} node{'s' if self.nodes > 1 else ''}" + (" (split)" if self.front == "split" else "")
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}" + ("" if self.redis else " (no Redis)")

    @property
    def shares_sessions(self) -> bool:
        """Whether one client's requests reach more than one process (its session must be shared)."""
        return self.workers > 1 or (self.nodes > 1 and self.front == "nginx")


def parse_variant(key: str) -> Topology | None:
    """The deployment a server key of ours names (None: not one of ours). Raises ValueError when out of range."""
    match = _VARIANT.match(key)
    if match is None:
        return None
    if match["workers"]:
        workers = int(match["workers"])
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"{key}: WORKERS must be 1..{MAX_WORKERS}")
        return Topology(workers=workers, redis=True)
    if match["nodes"]:
        nodes = int(match["nodes"])
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"{key}: nodes must be 1..{MAX_NODES}")
        return Topology(nodes=nodes, front="split" if match["split"] else "nginx", redis=True)
    return Topology()


# --- redis-server ----------------------------------------------------------------------------------


class RedisServer:
    """Our own redis-server on loopback (never the system service): no persistence, stopped at the end."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server; `make deps` installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), *NO_PERSISTENCE],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                self._client().ping()
                return
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not ready after {timeout:.0f}s: {self._log_tail()}") from None
                time.sleep(0.05)

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def flush(self) -> None:
        """Every deployment starts from an empty Redis (no session or key of the previous one)."""
        client = self._client()
        try:
            client.flushall()
        finally:
            client.close()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " ".join((self.workdir / "redis.log").read_text(errors="replace").splitlines()[-5:])
        return ""

    def stop(self) -> None:
        stop_process_group(self.proc)


# --- nginx -----------------------------------------------------------------------------------------


def nginx_config(listen_port: int, upstream_ports: list[int], prefix: Path) -> str:
    """A round-robin balancer on loopback, as the appliance's nginx proxies to its nodes: HTTP/1.1 keep-alive
    to the upstreams, no buffering (SSE streams flow), no access log (it would cost nginx CPU per call)."""
    servers = "\n".join(f"        server 127.0.0.1:{port};" for port in upstream_ports)
    return f"""# generated by bench/topology.py
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream mcp_nodes {{
{servers}
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://mcp_nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def start_nginx(listen_port: int, upstream_ports: list[int], prefix: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        raise RuntimeError("nginx not found (apt-get install nginx-light, or use ours-nN-split)")
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(listen_port, upstream_ports, prefix))
    log = (prefix / "nginx.out").open("wb")
    # -e: the start-up error log goes to the prefix too, not /var/log/nginx.
    proc = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(prefix), "-e", str(prefix / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return proc


def stop_process_group(
    proc: subprocess.Popen[bytes] | None, grace: float = 10.0, first_signal: signal.Signals = signal.SIGTERM
) -> None:
    """`first_signal` (SIGTERM unless told) to the process's own group (it and every child it forked), SIGKILL
    after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first_signal)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
