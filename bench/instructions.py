"""Instructions per `tools/call`, counted by callgrind: a measure of our server's cost that the machine's noise
does not move (issue 10).

On a shared 2-core machine the same code measures 20-40% apart between minutes, so a change of a few percent
cannot be seen in calls per second. Valgrind's callgrind counts the instructions the server runs instead. The
server runs twice under callgrind, started as `make bench` starts it (bench/run.py's RunningServer); wrk sends
it `--warm` calls in the first run and `--warm` + `--calls` in the second. The difference of the two totals,
divided by the difference of the calls wrk saw answered (`calls_counted`: wrk may answer a few more than
asked), leaves start-up out. It is given per shared object (libsqlite3, the interpreter,
libc, the ODBC driver, ...) and for the top functions. Kernel time is not counted, and neither are cache
misses: two cells with the same count can still differ in speed. Start-up is not quite the same from run to
run (about +-100 million instructions), which moves the figure per call by some 100,000 at 1,000 calls: the
default 2,000 is enough to compare changes of a few percent.

    .venv/bin/python bench/instructions.py --query recent_orders -c 8 --calls 2000

Each run takes about a minute plus the calls at some 50x their usual cost (about 4 minutes for 2,000 joins).
Needs `valgrind` (Debian's package, with callgrind_annotate).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# bench/ is not a package: run.py's server machinery is imported by name.
from run import QUERIES, SERVERS, VENV_BIN, ServerSpec, _ensure_database, _wrk_calls, serving  # noqa: E402
from topology import Topology  # noqa: E402

CALLGRIND = ["valgrind", "--tool=callgrind"]
START_TIMEOUT = 300.0  # seconds: start-up under callgrind takes about a minute, more on a busy machine
STOP_GRACE = 300.0  # seconds after SIGINT: callgrind writes its profile as the server exits

# "  1,234,567 (12.3%)  file:function [object]" in callgrind_annotate's flat (exclusive) listing.
_LINE = re.compile(r"^\s*(?P<count>[\d,]+)\s+(?:\([^)]*\)\s+)?(?P<name>\S.*?:.*?)(?:\s+\[(?P<object>[^\]]+)\])?\s*$")


def per_function(annotate_output: str) -> dict[tuple[str, str], int]:
    """(object file name, function) -> instructions, from `callgrind_annotate --inclusive=no` output."""
    counts: dict[tuple[str, str], int] = collections.Counter()
    for line in annotate_output.splitlines():
        match = _LINE.match(line)
        if match is None or "PROGRAM TOTALS" in line:
            continue
        obj = Path(match["object"]).name if match["object"] else "?"
        function = match["name"].rsplit(":", 1)[-1]
        counts[(obj, function)] += int(match["count"].replace(",", ""))
    return counts


def per_call(first: dict[tuple[str, str], int], second: dict[tuple[str, str], int], calls: int) -> dict[str, object]:
    """What `calls` more calls cost: instructions per call in total, per object and for the top functions."""
    keys = set(first) | set(second)
    delta = {key: second.get(key, 0) - first.get(key, 0) for key in keys}
    objects: dict[str, int] = collections.Counter()
    for (obj, _), count in delta.items():
        objects[obj] += count
    top = sorted(delta.items(), key=lambda item: -item[1])[:25]
    return {
        "instructions_per_call": round(sum(delta.values()) / calls),
        "per_object": {obj: round(n / calls) for obj, n in sorted(objects.items(), key=lambda i: -i[1]) if n > 0},
        "top_functions": [{"object": o, "function": f, "per_call": round(n / calls)} for (o, f), n in top],
    }


def callgrind_spec(out: Path, key: str) -> ServerSpec:
    """Our server as `make bench` starts it (bench/run.py's environment), under callgrind writing to `out`."""
    base = SERVERS["ours"]

    def env(port: int, db: Path, tmp: Path) -> dict[str, str]:
        # Under callgrind a call takes some 50x longer: its inline budget and time limit must not cut it.
        return {**base.env(port, db, tmp), "SQLITE_INLINE_READ_MS": "20", "QUERY_TIMEOUT_SECONDS": "60"}

    def command(port: int, db: Path) -> list[str]:
        return [*CALLGRIND, f"--callgrind-out-file={out}", str(VENV_BIN / "python"), "-m", "app", "serve"]

    return ServerSpec(key, f"ours under callgrind ({key})", base.arg_name, command, env, Topology())


async def counted_run(
    query: str, concurrency: int, calls: int, db: Path, tmp: Path
) -> tuple[dict[tuple[str, str], int], int]:
    """Serve under callgrind, send `calls` calls, stop the server; its instructions per function and the
    calls wrk saw answered (`calls_total`: it may answer a few more than asked)."""
    out = tmp / f"callgrind.{calls}"
    spec = callgrind_spec(out, f"server.{calls}")
    # Start-up under callgrind takes a minute or more, and the profile is written on exit: long bounds both ways.
    async with serving(
        spec, db, tmp, start_timeout=START_TIMEOUT, stop_grace=STOP_GRACE, stop_signal=signal.SIGINT
    ) as server:
        # Calls cost some 50x their usual time: the run is bounded to max(an hour, 1 s a call), each call to 60 s.
        report = await _wrk_calls(
            server, query, concurrency, calls, min_seconds=3600, calls_per_second=1, call_timeout=60
        )
        if report["errors"]:
            raise SystemExit(f"{report['errors']} calls failed under callgrind: {report['error_samples'][:1]}")
    annotate = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)], capture_output=True, text=True
    )
    return per_function(annotate.stdout), int(report["calls_total"])


async def counted_runs(
    query: str, concurrency: int, warm: int, calls: int, db: Path
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], int]:
    """The two runs (`warm`, then `warm` + `calls` calls): both listings and the calls the second answered
    beyond the first, which the difference is divided by."""
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        first, first_calls = await counted_run(query, concurrency, warm, db, tmp)
        second, second_calls = await counted_run(query, concurrency, warm + calls, db, tmp)
    return first, second, second_calls - first_calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", choices=sorted(QUERIES), default="recent_orders")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000, help="calls counted (the second run's extra ones)")
    parser.add_argument("--warm", type=int, default=200, help="calls in both runs (left out with start-up)")
    parser.add_argument("--database", default=str(BENCH / "demo.db"))
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("needs valgrind and callgrind_annotate (Debian: apt-get install valgrind)")
    db = Path(args.database)
    if not db.exists():
        _ensure_database(db)
    try:
        first, second, counted = asyncio.run(
            counted_runs(args.query, args.concurrency, args.warm, args.calls, db.resolve())
        )
    except RuntimeError as exc:  # the server did not start, or wrk_load.py failed: its words, no traceback
        raise SystemExit(f"under callgrind: {exc}") from None
    if counted <= 0:
        raise SystemExit(f"the second run answered {counted} calls more than the first: nothing to divide by")
    # "calls" is what was asked; "calls_counted" what wrk saw answered beyond the first run (the divisor).
    result = {"query": args.query, "concurrency": args.concurrency, "calls": args.calls, "calls_counted": counted}
    result.update(per_call(first, second, counted))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
