"""Start-up as an operator meets it: a bad setting or a port already in use is one line on stderr, not a
traceback; the demo prints where everything is, metrics included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DB_BACKEND": "sqlite",
            "SQLITE_PATH": str(tmp_path / "x.db"),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "METRICS_PORT": "0",
            "DATA_DIR": str(tmp_path),
            "LOG_FORMAT": "json",
        }
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "listening on" not in done.stdout  # the banner only follows a successful bind


def test_demo_prints_its_urls_and_serves_metrics_on_loopback(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "demo", "--database", str(tmp_path / "demo.db")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(5)]
        assert any(f"http://127.0.0.1:{port}/mcp" in line for line in banner), banner
        assert any(f"Metrics: http://127.0.0.1:{metrics_port}/metrics" in line for line in banner), banner
        assert any(line.startswith("Sign in as demo") for line in banner), banner
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                    assert b"mssql_mcp_build_info" in resp.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_command_line_stops_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "DB_BACKEND": "sqlite",
            "SQLITE_PATH": "/x.db",
            "PORT": "eighty",
            "MSSQL_PASSWORD": "hunter2",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: PORT: expected an integer (got 'eighty')"
    assert "hunter2" not in result.stdout + result.stderr
