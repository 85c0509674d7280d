"""Load generator for MCP `tools/call` driven by wrk (Debian's `wrk`), with the same report as load.py.

A Python load generator takes a core of its own on a 2-core machine and flattens the differences between
servers; wrk, written in C with one event-loop thread, drives thousands of calls per second from a small
share of one core. This script opens the MCP session the way a client does (`initialize`, then
`notifications/initialized`, keeping `Mcp-Session-Id`), checks one call answers correctly, then lets wrk
send the same `tools/call` back to back over N keep-alive connections, all in that one session. A Lua
script counts every answer that is not HTTP 200 with a JSON-RPC result, or that is a tool error, as an
error (wrk only sees bytes; this is the same check load.py makes, done on the raw text). Prints one JSON
object on stdout with the keys load.py prints.

`--mcp-mode stateless` sends the 2026-07-28 envelope instead of opening a session. Several `--url`s (nodes
without a balancer) run one wrk per endpoint at the same time, the connections split evenly between them,
each with its own session; calls add up, and each latency percentile is the worst of the endpoints' (wrk
reports percentiles, not its histogram, so they cannot be merged exactly; the nodes are alike).

    python bench/wrk_load.py --url http://127.0.0.1:8101/mcp --query "SELECT 1" -c 8 --duration 10 --warmup 2
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # bench/ is not a package: load.py is also run as a script
    CallFailed,
    Client,
    load_arguments,
    parse_load_arguments,
    request_message,
)

# Per-thread counters are read back in done() through the thread objects setup() kept.
LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; bytes = 0; answered = 0; sample = "" end
function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered >= limit and not limited then
    -- wrk's main thread sleeps for the whole -d; the runner interrupts it (SIGINT) when it reads this line
    limited = true; io.write("WRK_LIMIT\n"); io.flush(); wrk.thread:stop()
  end
  bytes = bytes + #body
  if status ~= 200 or not body:find('"result"', 1, true) or body:find('"isError"%s*:%s*true') then
    bad = bad + 1
    if sample == "" then sample = tostring(status) .. " " .. body:sub(1, 200) end
  end
end
function done(summary, latency, requests)
  local bad, bytes, answered, sample = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("bad"); bytes = bytes + t:get("bytes"); answered = answered + t:get("answered")
    if sample == "" then sample = t:get("sample") end
  end
  sample = sample:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end)
  local e = summary.errors
  io.write("WRK_JSON ", string.format(
    '{"requests":%d,"duration_us":%d,"bad":%d,"bytes":%d,"answered":%d,' ..
    '"socket_errors":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"sample":"%s"}',
    summary.requests, summary.duration, bad, bytes, answered,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, sample), "\n")
end
"""


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


async def _open_session(
    url: str, tool: str, arguments: dict[str, Any], mcp_mode: str
) -> tuple[dict[str, str], dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        client = Client(http, url, mcp_mode)
        init = await client.initialize()
        await client.call_tool(tool, arguments)  # fail here, with the server's words, not as N wrk errors
        return dict(client.headers), init


def _call(tool: str, arguments: dict[str, Any], mcp_mode: str) -> tuple[str, dict[str, str]]:
    """The body wrk sends on every request, and the headers it needs beyond the session's."""
    message, headers = request_message(1, "tools/call", {"name": tool, "arguments": arguments}, mcp_mode)
    return json.dumps(message), headers


def split_connections(concurrency: int, endpoints: int) -> list[int]:
    """Connections per endpoint, as even as possible (8 over 3: 3, 3, 2)."""
    return [concurrency // endpoints + (i < concurrency % endpoints) for i in range(endpoints)]


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One wrk summary for runs made at the same time against several endpoints: counts add up; the duration
    is the longest; each latency percentile is the worst endpoint's (an upper bound of the merged one)."""
    merged = {key: sum(r[key] for r in runs) for key in ("requests", "bad", "bytes", "answered", "socket_errors")}
    merged["duration_us"] = max(r["duration_us"] for r in runs)
    for key in ("p50_us", "p95_us", "p99_us", "max_us"):
        merged[key] = max(r[key] for r in runs)
    merged["sample"] = next((r["sample"] for r in runs if r["sample"]), "")
    return merged


def _script(headers: dict[str, str], body: str, limit: int = 0) -> str:
    """The request wrk repeats; with `limit`, its thread stops after that many answers (0: run for the duration)."""
    lines = [f"limit = {int(limit)}", 'wrk.method = "POST"', f"wrk.body = {_lua_string(body)}"]
    lines += [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + LUA


def _run_wrk(wrk: str, script: Path, url: str, concurrency: int, seconds: float, timeout: float) -> dict[str, Any]:
    cmd = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(script),
        url,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            lines = []
            assert proc.stdout is not None
            for line in proc.stdout:  # wrk prints little: a banner, WRK_LIMIT (count-bounded runs), its summary
                lines.append(line)
                if line.startswith("WRK_LIMIT"):
                    proc.send_signal(signal.SIGINT)  # ends the -d sleep: wrk joins its thread and reports
            proc.wait(timeout=timeout + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr is not None else ""
    for line in lines:
        if line.startswith("WRK_JSON "):
            return json.loads(line.removeprefix("WRK_JSON "))
    raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr[-1000:] or ''.join(lines)[-1000:]}")


def _run_wrks(
    wrk: str, scripts: list[Path], urls: list[str], connections: list[int], seconds: float, timeout: float
) -> dict[str, Any]:
    if len(urls) == 1:
        return _run_wrk(wrk, scripts[0], urls[0], connections[0], seconds, timeout)
    with ThreadPoolExecutor(len(urls)) as pool:  # one wrk per endpoint, all at once
        runs = pool.map(
            lambda i: _run_wrk(wrk, scripts[i], urls[i], connections[i], seconds, timeout), range(len(urls))
        )
        return merge_runs(list(runs))


def run(
    urls: list[str],
    tool: str,
    arguments: dict[str, Any],
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float,
    wrk: str,
    mcp_mode: str = "session",
    calls_limit: int = 0,
) -> dict[str, Any]:
    """One load run; with `calls_limit`, it stops after about that many answers (no warm-up; `duration` bounds
    it), which is how the memory check makes its first 1,000 calls and then the rest."""
    if calls_limit:
        if len(urls) != 1:
            raise ValueError("--calls needs exactly one --url")
        warmup = 0.0
    sessions = [asyncio.run(_open_session(url, tool, arguments, mcp_mode)) for url in urls]
    headers, init = sessions[0]
    body, call_headers = _call(tool, arguments, mcp_mode)
    connections = split_connections(concurrency, len(urls))
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        scripts = [Path(tmp) / f"call-{i}.lua" for i in range(len(urls))]
        for script, (session_headers, _) in zip(scripts, sessions, strict=True):
            script.write_text(_script({**session_headers, **call_headers}, body, calls_limit))
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        warm = _run_wrks(wrk, scripts, urls, connections, warmup, timeout) if warmup > 0 else {"answered": 0}
        measured = _run_wrks(wrk, scripts, urls, connections, duration, timeout)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    seconds = measured["duration_us"] / 1e6
    errors = measured["bad"] + measured["socket_errors"]
    calls = max(0, measured["answered"] - measured["bad"])
    calls_total = calls + max(0, warm["answered"] - warm.get("bad", 0))
    return {
        "url": urls[0] if len(urls) == 1 else urls,
        "tool": tool,
        "arguments": arguments,
        "concurrency": concurrency,
        "duration_s": seconds,
        "warmup_s": warmup,
        "load_generator": "wrk" if len(urls) == 1 else f"wrk x {len(urls)}",
        "mcp_mode": mcp_mode,
        "server": init.get("serverInfo", {}),
        "protocol_version": init.get("protocolVersion"),
        "session_ids": "Mcp-Session-Id" in headers,
        "calls": calls,
        "calls_total": calls_total,
        "errors": errors,
        "error_samples": [measured["sample"]] if measured["sample"] else [],
        "calls_per_s": calls / seconds if seconds else 0.0,
        # wrk's percentiles cover every answer of the measured run (errors too; a run with errors is suspect).
        "p50_ms": measured["p50_us"] / 1000,
        "p95_ms": measured["p95_us"] / 1000,
        "p99_ms": measured["p99_us"] / 1000,
        "max_ms": measured["max_us"] / 1000,
        "mean_response_bytes": measured["bytes"] / measured["answered"] if measured["answered"] else 0,
        "client_cpu_s": client_cpu,
        "client_cpu_ms_per_call": 1000 * client_cpu / max(calls_total, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = load_arguments(__doc__.splitlines()[0])
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")
    parser.add_argument(
        "--calls",
        type=int,
        default=0,
        help="stop after about this many answers (plus those in flight; no warm-up; --duration bounds the run)",
    )
    args = parse_load_arguments(parser, argv)
    if not shutil.which(args.wrk):
        parser.error(f"{args.wrk} not found (apt-get install wrk; `make bench` installs it)")
    try:
        report = run(
            args.url,
            args.tool,
            {args.arg_name: args.query},
            args.concurrency,
            args.duration,
            args.warmup,
            args.timeout,
            args.wrk,
            args.mcp_mode,
            args.calls,
        )
    except (CallFailed, aiohttp.ClientError, RuntimeError, ValueError) as exc:
        print(f"wrk_load: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
