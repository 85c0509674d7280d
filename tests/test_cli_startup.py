"""Start-up as an operator meets it: a port already in use is one line on stderr, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", ""), "DB_BACKEND": "sqlite", "SQLITE_PATH": str(tmp_path / "x.db"),
            "HOST": "127.0.0.1", "PORT": str(port), "METRICS_PORT": "0", "DATA_DIR": str(tmp_path),
            "LOG_FORMAT": "json",
        }
        done = subprocess.run([sys.executable, "-m", "app", "serve"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "listening on" not in done.stdout  # the banner only follows a successful bind
