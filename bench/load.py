"""Closed-loop load generator for MCP `tools/call` over Streamable HTTP.

N workers share one aiohttp connector (one keep-alive connection each). Every worker behaves like an MCP
client: `initialize` (+ `notifications/initialized`, keeping `Mcp-Session-Id` when the server hands one
out), then back-to-back `tools/call` POSTs until the run ends. `--mcp-mode stateless` speaks the 2026-07-28
envelope instead (no session: every request carries its `_meta` and the mirrored `Mcp-Method`/`Mcp-Name`
headers), which any worker or node answers without shared session state. Each answer is checked: HTTP 200, a JSON-RPC
result for our id (JSON body or an SSE stream), `isError` not set, and non-empty content; anything else is
counted as an error, never as a call. Calls that start during the warm-up or finish after the measured
window are not counted. Prints one JSON object on stdout.

    python bench/load.py --url http://127.0.0.1:8101/mcp --query "SELECT 1" -c 8 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

PROTOCOL_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"  # the per-request envelope: no initialize, no Mcp-Session-Id
ACCEPT = "application/json, text/event-stream"
MCP_MODES = ("session", "stateless")
# The envelope's _meta, the same on every request of a stateless client.
STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "mcp-bench", "version": "1.0"},
}
# Request params key each 2026-07-28 method mirrors into the Mcp-Name header.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class CallFailed(Exception):
    """The server answered, but not with a successful tool result."""


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    completed: int = 0  # successful calls including warm-up and tail: for CPU cost per call
    bytes_received: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message[:300])


def _messages(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in a response body: one JSON document, or the `data:` of each SSE event."""
    if content_type.startswith("text/event-stream"):
        messages: list[dict[str, Any]] = []
        data: list[str] = []
        for line in [*body.decode().splitlines(), ""]:
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:  # a blank line ends an event
                messages.append(json.loads("\n".join(data)))
                data = []
        return messages
    document = json.loads(body)
    return document if isinstance(document, list) else [document]


def _result_for(request_id: int, messages: list[dict[str, Any]]) -> dict[str, Any]:
    for message in messages:
        if message.get("id") == request_id:
            if "error" in message:
                raise CallFailed(f"JSON-RPC error: {json.dumps(message['error'])}")
            return message["result"]
    raise CallFailed(f"no response for id {request_id} in {len(messages)} message(s)")


def stateless_request(request_id: int, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 request: the JSON-RPC message with its `_meta`, and the headers that mirror it."""
    headers = {"MCP-Protocol-Version": STATELESS_VERSION, "Mcp-Method": method}
    if (key := NAME_BEARING.get(method)) and isinstance(params.get(key), str):
        headers["Mcp-Name"] = params[key]
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": STATELESS_META}}
    return message, headers


def request_message(
    request_id: int, method: str, params: dict[str, Any], mcp_mode: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON-RPC request in `mcp_mode`, and the headers it needs beyond the client's (stateless: the mirrors)."""
    if mcp_mode == "stateless":
        return stateless_request(request_id, method, params)
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, {}


class Client:
    """One MCP client: its own session id (if any) and request ids, sharing the HTTP connector."""

    def __init__(self, http: aiohttp.ClientSession, url: str, mcp_mode: str = "session") -> None:
        self.http = http
        self.url = url
        self.mcp_mode = mcp_mode
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        self.next_id = 0

    async def post(
        self, payload: dict[str, Any], extra_headers: dict[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {**self.headers, **extra_headers} if extra_headers else self.headers
        async with self.http.post(self.url, data=json.dumps(payload).encode(), headers=headers) as resp:
            return resp, await resp.read()

    async def request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self.next_id += 1
        request_id = self.next_id
        resp, body = await self.post(*request_message(request_id, method, params, self.mcp_mode))
        if resp.status != 200:
            raise CallFailed(f"HTTP {resp.status}: {body[:200]!r}")
        result = _result_for(request_id, _messages(body, resp.headers.get("Content-Type", "")))
        if method == "initialize" and (session_id := resp.headers.get("Mcp-Session-Id")):
            self.headers["Mcp-Session-Id"] = session_id
        return result, len(body)

    async def initialize(self) -> dict[str, Any]:
        if self.mcp_mode == "stateless":  # no handshake: discover checks the server speaks the envelope
            result, _ = await self.request("server/discover", {})
            if STATELESS_VERSION not in result.get("supportedVersions", ()):
                raise CallFailed(f"server does not support {STATELESS_VERSION}: {result.get('supportedVersions')}")
            return {**result, "protocolVersion": STATELESS_VERSION}
        result, _ = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcp-bench", "version": "1.0"},
            },
        )
        self.headers["MCP-Protocol-Version"] = result.get("protocolVersion", PROTOCOL_VERSION)
        resp, body = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if resp.status not in (200, 202, 204):
            raise CallFailed(f"notifications/initialized: HTTP {resp.status}: {body[:200]!r}")
        return result

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> int:
        result, size = await self.request("tools/call", {"name": tool, "arguments": arguments})
        if result.get("isError"):
            raise CallFailed(f"tool error: {json.dumps(result.get('content'))[:300]}")
        if not result.get("content") and result.get("structuredContent") is None:
            raise CallFailed("empty tool result")
        return size


async def _worker(
    client: Client, tool: str, arguments: dict[str, Any], window: tuple[float, float], stats: Stats
) -> None:
    measure_start, measure_end = window
    while (started := time.perf_counter()) < measure_end:
        try:
            size = await client.call_tool(tool, arguments)
        except (TimeoutError, CallFailed, aiohttp.ClientError, ValueError, KeyError) as exc:
            if started >= measure_start:
                stats.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)  # a refusing server must not turn the loop into a busy spin
            continue
        finished = time.perf_counter()
        stats.completed += 1
        if started >= measure_start and finished <= measure_end:
            stats.latencies.append(finished - started)
            stats.bytes_received += size


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list, in milliseconds."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index] * 1000


async def run(
    urls: list[str],
    tool: str,
    arguments: dict[str, Any],
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float,
    mcp_mode: str = "session",
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        # Several URLs (nodes without a balancer): the clients are spread over them in turn.
        clients = [Client(http, urls[i % len(urls)], mcp_mode) for i in range(concurrency)]
        init = await asyncio.gather(*(c.initialize() for c in clients))
        stats = Stats()
        cpu0 = time.process_time()
        now = time.perf_counter()
        window = (now + warmup, now + warmup + duration)
        await asyncio.gather(*(_worker(c, tool, arguments, window, stats) for c in clients))
        client_cpu = time.process_time() - cpu0
    ordered = sorted(stats.latencies)
    calls = len(ordered)
    return {
        "url": urls[0] if len(urls) == 1 else urls,
        "tool": tool,
        "arguments": arguments,
        "concurrency": concurrency,
        "duration_s": duration,
        "warmup_s": warmup,
        "mcp_mode": mcp_mode,
        "server": init[0].get("serverInfo", {}),
        "protocol_version": init[0].get("protocolVersion"),
        "session_ids": any("Mcp-Session-Id" in c.headers for c in clients),
        "calls": calls,
        "calls_total": stats.completed,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "calls_per_s": calls / duration,
        "p50_ms": _percentile(ordered, 50),
        "p95_ms": _percentile(ordered, 95),
        "p99_ms": _percentile(ordered, 99),
        "max_ms": ordered[-1] * 1000 if ordered else float("nan"),
        "mean_response_bytes": stats.bytes_received / calls if calls else 0,
        "client_cpu_s": client_cpu,
        "client_cpu_ms_per_call": 1000 * client_cpu / max(stats.completed, 1),
    }


def load_arguments(description: str) -> argparse.ArgumentParser:
    """The command line every load generator here shares (load.py and wrk_load.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--url",
        action="append",
        required=True,
        help="Streamable HTTP endpoint, e.g. http://127.0.0.1:8101/mcp; repeat it to split the connections "
        "evenly over several endpoints (nodes without a balancer)",
    )
    parser.add_argument("--tool", default="execute_sql")
    parser.add_argument("--arg-name", default="query", help="the tool argument carrying the SQL (DBHub: sql)")
    parser.add_argument("--query", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument(
        "--mcp-mode",
        choices=MCP_MODES,
        default="session",
        help="session: initialize and keep Mcp-Session-Id (handshake era); stateless: the 2026-07-28 envelope",
    )
    return parser


def parse_load_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    for url in args.url:
        host = URL(url).host or ""
        if not (host.startswith("127.") or host in {"localhost", "::1", "[::1]"}):
            parser.error("only loopback targets are allowed")  # load is only ever sent to this machine
    if args.concurrency < len(args.url):
        parser.error("--concurrency must be at least the number of --url endpoints")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_load_arguments(load_arguments(__doc__.splitlines()[0]), argv)
    report = asyncio.run(
        run(
            args.url,
            args.tool,
            {args.arg_name: args.query},
            args.concurrency,
            args.duration,
            args.warmup,
            args.timeout,
            args.mcp_mode,
        )
    )
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
