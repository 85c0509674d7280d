"""bench/: the deployments it measures (workers, nodes, nginx), its command line and its scaling report.

Fast checks of the runner's own logic; the benchmark itself is `make bench` (bench/README.md). The nginx
configuration is checked by the real nginx (`nginx -t`) when it is installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is not a package: its scripts import each other by name

import load  # noqa: E402
import run  # noqa: E402
import topology  # noqa: E402
import wrk_load  # noqa: E402


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ours", topology.Topology()),
        ("ours-w2", topology.Topology(workers=2, redis=True)),
        ("ours-w4", topology.Topology(workers=4, redis=True)),
        ("ours-n1", topology.Topology(nodes=1, front="nginx", redis=True)),
        ("ours-n2", topology.Topology(nodes=2, front="nginx", redis=True)),
        ("ours-n2-split", topology.Topology(nodes=2, front="split", redis=True)),
        ("dbhub", None),
        ("ours-x2", None),
    ],
)
def test_server_keys_name_deployments(key: str, expected: topology.Topology | None) -> None:
    assert topology.parse_variant(key) == expected


def test_deployment_titles_and_sharing() -> None:
    assert run.spec_for("ours").title == "ours (aiohttp)"
    assert run.spec_for("ours-w2").title == "ours, WORKERS=2"
    assert run.spec_for("ours-n2").title == "ours, 2 nodes (nginx round-robin)"
    assert run.spec_for("ours-n2-split").topology == topology.Topology(nodes=2, front="split", redis=True)
    # Only deployments that send one client's requests to several processes need shared sessions.
    deployments = [topology.parse_variant(k) for k in ("ours", "ours-w2", "ours-n2", "ours-n2-split")]
    assert [d.shares_sessions for d in deployments if d is not None] == [False, True, True, False]
    assert run.spec_for("sdk").topology is None


def test_default_run_measures_every_deployment_and_the_peers() -> None:
    args = run.parse_args([])
    assert args.servers == ["ours", "ours-w2", "ours-w4", "ours-n1", "ours-n2", "sdk", "dbhub"]
    assert args.ours_mcp == "auto" and args.max_other_cpu == 10.0 and args.max_load_before == 0.3
    assert args.max_steal == 10.0
    # The full run stays under about 10 minutes on a quiet machine; the 100,000-call memory check adds ~2.5.
    assert run.estimated_minutes(args) < 9
    assert run.estimated_minutes(run.parse_args(["--memory-calls", "100000"])) < 11


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--servers", "ours,nobody"], "unknown server or query: nobody"),
        (["--servers", "ours-w0"], "WORKERS must be 1..64"),
        (["--servers", "ours-n9"], "nodes must be 1..8"),
        (["--servers", "ours,ours"], "each server once"),
        (["--servers", "ours-n2-split", "--concurrency", "1"], "at least one connection per node"),
        (["--profile", "--profile-servers", "ours-w2"], "py-spy profiles one process"),
    ],
)
def test_command_line_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_each_node_gets_its_own_data_dir_and_the_shared_redis(tmp_path: Path) -> None:
    redis = topology.RedisServer(6390, tmp_path / "redis")  # never started: only its URL is used
    server = run.RunningServer(run.spec_for("ours-n2"), tmp_path / "demo.db", tmp_path, redis, "session")
    first, second = server._node_env(0), server._node_env(1)
    assert first["DATA_DIR"] != second["DATA_DIR"]
    assert first["REDIS_URL"] == second["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    # Every node names the balancer as its public address (one issuer for all of them).
    assert first["PUBLIC_BASE_URL"] == second["PUBLIC_BASE_URL"] == f"http://127.0.0.1:{server.port}"
    assert server.port not in server.node_ports and server.load_urls == [server.url]
    assert first["WORKERS"] == "1" and first["METRICS_PORT"] == "0"
    assert first["PORT"] == str(server.node_ports[0]) and second["PORT"] == str(server.node_ports[1])

    workers = run.RunningServer(run.spec_for("ours-w4"), tmp_path / "demo.db", tmp_path, redis, "stateless")
    env = workers._node_env(0)
    assert env["WORKERS"] == "4" and env["METRICS_PORT"] != "0"  # the listener that reports every worker
    assert workers.url == workers.node_urls[0] and workers.mcp_mode == "stateless"

    split = run.RunningServer(run.spec_for("ours-n2-split"), tmp_path / "demo.db", tmp_path, redis, "session")
    assert split.load_urls == split.node_urls and len(split.load_urls) == 2

    plain = run.RunningServer(run.spec_for("ours"), tmp_path / "demo.db", tmp_path, redis, "session")
    assert "REDIS_URL" not in plain._node_env(0) and "PUBLIC_BASE_URL" not in plain._node_env(0)
    peer = run.RunningServer(run.spec_for("dbhub"), tmp_path / "demo.db", tmp_path, redis, "stateless")
    assert peer.mcp_mode == "session"  # the peers are driven as they are used


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="no nginx")
def test_nginx_config_is_valid_round_robin(tmp_path: Path) -> None:
    config = topology.nginx_config(18080, [18081, 18082], tmp_path)
    assert "server 127.0.0.1:18081;" in config and "server 127.0.0.1:18082;" in config
    assert "listen 127.0.0.1:18080;" in config and "proxy_buffering off;" in config
    (tmp_path / "nginx.conf").write_text(config)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    checked = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


def test_stateless_requests_mirror_the_envelope_in_headers() -> None:
    message, headers = load.stateless_request(7, "tools/call", {"name": "execute_sql", "arguments": {"query": "1"}})
    assert headers == {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "execute_sql"}
    meta = message["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert meta["io.modelcontextprotocol/clientCapabilities"] == {}
    assert message["id"] == 7 and message["params"]["arguments"] == {"query": "1"}
    body, extra = wrk_load._call("execute_sql", {"query": "1"}, "session")
    assert extra == {} and '"_meta"' not in body


def test_split_load_adds_calls_and_keeps_the_worst_latency() -> None:
    assert wrk_load.split_connections(8, 2) == [4, 4]
    assert wrk_load.split_connections(8, 3) == [3, 3, 2]

    def one(answered: int, p99: int, sample: str = "") -> dict[str, Any]:
        return {
            "requests": answered,
            "bad": 0,
            "bytes": 100 * answered,
            "answered": answered,
            "socket_errors": 0,
            "duration_us": 5_000_000 + answered,
            "p50_us": p99 // 4,
            "p95_us": p99 // 2,
            "p99_us": p99,
            "max_us": 2 * p99,
            "sample": sample,
        }

    merged = wrk_load.merge_runs([one(1000, 9000), one(1200, 7000, "404 gone")])
    assert merged["answered"] == 2200 and merged["bytes"] == 220_000
    assert merged["p99_us"] == 9000 and merged["max_us"] == 18000 and merged["duration_us"] == 5_001_200
    assert merged["sample"] == "404 gone"


def test_loop_lag_over_workers_and_nodes() -> None:
    text = (
        "# HELP mssql_mcp_event_loop_lag_seconds lag\n"
        'mssql_mcp_event_loop_lag_seconds_bucket{le="0.005",worker="1"} 10.0\n'
        'mssql_mcp_event_loop_lag_seconds_bucket{le="0.005",worker="2"} 5.0\n'
        'mssql_mcp_event_loop_lag_seconds_bucket{le="+Inf",worker="1"} 10.0\n'
        'mssql_mcp_event_loop_lag_seconds_bucket{le="+Inf",worker="2"} 6.0\n'
        "mssql_mcp_event_loop_lag_max_seconds 0.012\n"
    )
    assert run._samples(text, "mssql_mcp_event_loop_lag_max_seconds") == [("", 0.012)]
    assert len(run._samples(text, "mssql_mcp_event_loop_lag_seconds_bucket")) == 4
    # One scrape of two endpoints: both parsers read the same texts; workers' buckets are summed per endpoint.
    texts = {"a": text, "b": "mssql_mcp_event_loop_lag_max_seconds 0.02\n"}
    assert run._loop_lag_max(texts) == 0.02
    assert run._loop_histograms(texts) == {run.LOOP_LAG_HISTOGRAM: {"a": {0.005: 15.0, float("inf"): 16.0}}}
    assert run._loop_lag_max({"a": "other_metric 1\n"}) is None
    before = {"a": {0.005: 10.0, float("inf"): 10.0}, "b": {0.005: 1.0, 0.01: 1.0, float("inf"): 1.0}}
    after = {"a": {0.005: 20.0, float("inf"): 20.0}, "b": {0.005: 1.0, 0.01: 2.0, float("inf"): 2.0}}
    assert run.lag_bound_ms(before, after) == 10.0  # node b's one lag between 5 and 10 ms is the worst
    restarted = {"a": {0.005: 2.0, float("inf"): 3.0}}  # counts went down: that endpoint says nothing
    assert run.lag_bound_ms(before, restarted) is None
    assert run.lag_bound_ms(None, after) is None


def _cell(calls: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "calls_per_s": calls,
        "p99_ms": p99,
        "server_cpu_ms_per_call": 0.5,
        "server_cpu_pct": 150.0,
        "other_cpu_pct": 2.0,
        "loadavg_1m": 0.4,
        "errors": 0,
        **extra,
    }


def test_scaling_table_gives_ratios_to_dbhub_one_worker_and_one_node() -> None:
    args = argparse.Namespace(queries=["select1"], concurrency=[8])
    best = {
        ("ours", "select1", 8): _cell(1600, 11.0),
        ("ours-w2", "select1", 8): _cell(3200, 8.0, redis_cpu_pct=12.0),
        ("ours-n1", "select1", 8): _cell(1400, 12.0, nginx_cpu_pct=9.0, redis_cpu_pct=8.0),
        ("ours-n2", "select1", 8): _cell(2800, 10.0, nginx_cpu_pct=15.0, redis_cpu_pct=12.0),
        ("dbhub", "select1", 8): _cell(1600, 12.0),
    }
    servers = ["ours", "ours-w2", "ours-w4", "ours-n1", "ours-n2", "dbhub"]
    info = {"nproc": 2, "ours_mcp_mode": "session", "ours_mcp_mode_reason": "shared"}
    text = "\n".join(run.render_scaling(info, args, best, servers))
    assert "MCP in **session** mode" in text
    assert "| 1 worker (no Redis) | 1,600 | 1.00x |  | 1.00x | 11.0 |" in text
    assert "| 2 workers | 3,200 | 2.00x |  | 2.00x | 8.0 | 0.50 | 150 |  | 12 | 2 | 0.40 | 0 |" in text
    assert "| 4 workers | not measured |" in text
    assert "| 2 nodes | 2,800 | 1.75x | 2.00x | 1.75x | 10.0 | 0.50 | 150 | 15 | 12 |" in text
    assert "| DBHub (reference) | 1,600 |" in text
    assert "`select1` c=8: met: WORKERS=2 2.00x DBHub's calls/s; p99 8.0 ms vs DBHub 12.0 ms" in text
    # One deployment of ours: nothing to compare, no section.
    assert run.render_scaling(info, args, best, ["ours", "dbhub"]) == []


def test_cpu_per_call_measures_one_serving_process(capsys: pytest.CaptureFixture[str]) -> None:
    import cpu

    for key in ("ours-w2", "ours-n2", "dbhub", "ours-w0"):
        with pytest.raises(SystemExit):
            cpu.main(["--server", key])
        assert "one serving process" in capsys.readouterr().err


def _fake_mcp_app(seen: list[dict[str, Any]]) -> Any:
    """The smallest Streamable HTTP endpoint wrk_load.py can drive: a session from initialize, results for calls."""
    import json

    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        message = json.loads(await request.read())
        seen.append({"headers": dict(request.headers), "method": message.get("method")})
        if "id" not in message:
            return web.Response(status=202)
        if message["method"] == "initialize":
            result: dict[str, Any] = {"protocolVersion": "2025-11-25", "serverInfo": {"name": "fake"}}
            return web.json_response(
                {"jsonrpc": "2.0", "id": message["id"], "result": result}, headers={"Mcp-Session-Id": "s1"}
            )
        result = {"content": [{"type": "text", "text": "1"}]}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    return app


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="no wrk")
async def test_wrk_stops_after_a_count_and_splits_over_endpoints(aiohttp_server: Any) -> None:
    import asyncio

    seen: list[dict[str, Any]] = []
    first, second = await aiohttp_server(_fake_mcp_app(seen)), await aiohttp_server(_fake_mcp_app(seen))
    urls = [f"http://127.0.0.1:{first.port}/mcp", f"http://127.0.0.1:{second.port}/mcp"]
    wrk = shutil.which("wrk") or "wrk"

    def counted() -> dict[str, Any]:
        return wrk_load.run(urls[:1], "execute_sql", {"query": "SELECT 1"}, 4, 30, 0, 5, wrk, calls_limit=300)

    loop = asyncio.get_running_loop()
    began = loop.time()
    report = await loop.run_in_executor(None, counted)  # the servers answer on this loop meanwhile
    assert report["calls"] == 300 and report["errors"] == 0
    assert loop.time() - began < 15  # stopped at the count, not after the 30 s bound
    assert all(entry["headers"].get("Mcp-Session-Id") == "s1" for entry in seen if entry["method"] == "tools/call")

    def split() -> dict[str, Any]:
        return wrk_load.run(urls, "execute_sql", {"query": "SELECT 1"}, 4, 1, 0, 5, wrk)

    seen.clear()
    report = await loop.run_in_executor(None, split)
    assert report["load_generator"] == "wrk x 2" and report["errors"] == 0 and report["calls"] > 0
    hosts = {entry["headers"]["Host"] for entry in seen if entry["method"] == "tools/call"}
    assert hosts == {f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"}  # both endpoints got load


def test_loop_lag_is_judged_per_deployment() -> None:
    info = {
        "loop_lag": [
            ("ours", 0, "select1", 8, 5.0),
            ("ours", 1, "recent_orders", 32, 10.0),
            ("ours-w4", 0, "recent_orders", 32, 100.0),
        ],
        "loop_blocked": [
            ("ours-w4", 0, "recent_orders", 32, 5.0),
            ("ours-w4", 0, "select1", 32, 25.0),
        ],
        "loop_lag_since_start_ms": 66.0,
    }
    text = "\n".join(run.render_loop_lag(info))
    # Without the blocked time, the lag decides.
    assert (
        "- ours (aiohttp): met: lag at most 10 ms in 2 runs (worst: round 2, `recent_orders` c=32)"
        " (blocked time not exported)" in text
    )
    # With it, the blocked time decides and the lag is shown beside it.
    assert (
        "- ours, WORKERS=4: NOT met: blocked at most 25 ms in 2 runs (worst: round 1, `select1` c=32);"
        " lag at most 100 ms in 1 run (worst: round 1, `recent_orders` c=32)" in text
    )
    info["loop_blocked"] = [("ours-w4", 0, "recent_orders", 32, 5.0)]
    assert "- ours, WORKERS=4: met: blocked at most 5 ms in 1 run" in "\n".join(run.render_loop_lag(info))
    assert "start-up included: 66.0 ms" in text
    assert run.render_loop_lag({})[-1].startswith("- not measured")


def test_a_run_stolen_from_by_other_virtual_machines_counts_as_busy() -> None:
    # A run at 57% steal was reported as quiet (other CPU 9%): it measured the host, not the servers.
    args = run.parse_args([])
    assert not run.disturbed({"other_cpu_pct": 9.0, "steal_pct": 2.0}, args)
    assert run.disturbed({"other_cpu_pct": 9.0, "steal_pct": 57.0}, args)
    assert run.disturbed({"other_cpu_pct": 12.0, "steal_pct": 0.0}, args)
