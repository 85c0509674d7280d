"""CPU time per call inside our server process: a measurement that holds on a busy machine.

calls/s and latency move with whatever else runs on the cores; the CPU time our server process spends per
answered call (utime + stime from /proc over a wrk run) moves much less, so it is how a lever is judged
when the machine is not quiet. One server at a time, ours only, short runs:

    .venv/bin/python bench/cpu.py                          # SELECT 1 and the 20-row join, c=8, 3 x 5 s
    .venv/bin/python bench/cpu.py --ours-ref HEAD          # as committed (compare with the working tree)
    .venv/bin/python bench/cpu.py --queries select1 --rounds 5 --duration 8
    .venv/bin/python bench/cpu.py --server ours-w1         # one process with its sessions in Redis (its own
                                                           # redis-server; Redis's CPU counts as the server's)

Prints one line per round and the median µs/call per query, with the event-loop lag the server measured
(mssql_mcp_event_loop_lag_seconds during the runs, to its buckets' resolution), the time the loop was blocked
(mssql_mcp_event_loop_blocked_seconds: the lag less its wait for a CPU) and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import run
from run import QUERIES, measure, serving


def loop_thread_cpu_seconds(pid: int) -> float:
    """utime + stime of the server's main thread, the one running the event loop (its tid is the pid)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / run.CLK_TCK


async def main_async(args: argparse.Namespace) -> int:
    db = Path(args.database).resolve()
    run._ensure_database(db)
    with tempfile.TemporaryDirectory(prefix="mcp-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        if args.ours_path:
            run.OURS_SNAPSHOT = Path(args.ours_path).resolve()  # a directory holding an app/ package
            print(f"ours from {run.OURS_SNAPSHOT}")
        elif args.ours_ref:
            run.OURS_SNAPSHOT, commit = run._snapshot_app(args.ours_ref, tmp / "snapshot")
            print(f"ours as committed at {commit}")
        with run._redis_if_needed([args.server], tmp) as redis:
            await _measure_all(args, db, tmp, redis)
    return 0


async def _measure_all(args: argparse.Namespace, db: Path, tmp: Path, redis: run.RedisServer | None) -> None:
    # The loop thread's share is read from the serving process: one process per deployment (WORKERS=1).
    async with serving(run.spec_for(args.server), db, tmp, redis, args.mcp_mode) as server:
        for query_key in args.queries:
            per_call: list[float] = []
            loop_per_call: list[float] = []
            lag_bounds: list[float | None] = []
            blocked_bounds: list[float | None] = []
            for round_no in range(args.rounds):
                assert server.proc is not None
                loop0 = loop_thread_cpu_seconds(server.proc.pid)
                before = (await run.loop_reading(server)).histograms
                report = await measure(server, query_key, args.concurrency, args)
                after = (await run.loop_reading(server)).histograms
                lag = run.LOOP_LAG_HISTOGRAM
                blocked = run.LOOP_BLOCKED_HISTOGRAM
                lag_bounds.append(run.lag_bound_ms(before.get(lag), after.get(lag)))
                blocked_bounds.append(run.lag_bound_ms(before.get(blocked), after.get(blocked)))
                loop_us = 1e6 * (loop_thread_cpu_seconds(server.proc.pid) - loop0) / max(report["calls_total"], 1)
                us = 1000 * report["server_cpu_ms_per_call"]
                per_call.append(us)
                loop_per_call.append(loop_us)
                print(
                    f"  {query_key:14} round {round_no + 1}: {us:7.0f} µs/call  (loop thread {loop_us:5.0f})  "
                    f"{report['calls_per_s']:6.0f} calls/s  errors {report['errors']}  "
                    f"other cpu {report['other_cpu_pct']:.0f}%  load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
            if args.profile:
                raw = run.PROFILES / f"cpu-{query_key}-{args.profile_mode}.txt"
                await measure(server, query_key, args.concurrency, args, profile_to=raw)
                print(run.profiling.summarize(raw, top=args.top), flush=True)
            lag_text, blocked_text = (_worst_text(bounds) for bounds in (lag_bounds, blocked_bounds))
            print(
                f"{query_key:14} median {statistics.median(per_call):7.0f} µs/call "
                f"(min {min(per_call):.0f}), loop thread median {statistics.median(loop_per_call):5.0f} "
                f"(min {min(loop_per_call):.0f})  loop lag {lag_text}, blocked {blocked_text}",
                flush=True,
            )


def _worst_text(bounds: list[float | None]) -> str:
    measured = [bound for bound in bounds if bound is not None]
    return f"<= {max(measured):g} ms" if measured else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=run._csv(str), default=list(QUERIES))
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ours-ref", default="")
    parser.add_argument("--ours-path", default="", help="a directory with an app/ package to run instead")
    parser.add_argument(
        "--server",
        default="ours",
        help="which deployment of ours (bench/topology.py) with one serving process: ours (default), ours-w1 "
        "(sessions in Redis), ours-n1 (behind nginx)",
    )
    parser.add_argument("--mcp-mode", choices=["session", "stateless"], default="session")
    parser.add_argument("--profile", action="store_true", help="one more run per query under py-spy")
    parser.add_argument("--profile-mode", choices=["gil", "all"], default="all")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--database", default=str(run.BENCH / "demo.db"))
    args = parser.parse_args(argv)
    try:
        topology = run.topology_of(args.server)
    except (KeyError, ValueError):
        topology = None
    if topology is None or topology.workers != 1 or topology.nodes != 1:
        parser.error("--server: ours, ours-w1 or ours-n1 (one serving process; run.py measures the others)")
    args.load = "wrk"
    args.quiet_wait = 0.0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
