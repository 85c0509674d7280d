"""Instructions per `tools/call`, counted by callgrind: a measure of our server's cost that the machine's noise
does not move (issue 10).

On a shared 2-core machine the same code measures 20-40% apart between minutes, so a change of a few percent
cannot be seen in calls per second. Valgrind's callgrind counts the instructions the server runs instead. The
server runs twice under callgrind, as `make bench` starts it (bench/run.py's environment); wrk sends it
`--warm` calls in the first run and `--warm` + `--calls` in the second. The difference of the two totals,
divided by `--calls`, leaves start-up out. It is given per shared object (libsqlite3, the interpreter,
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
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import QUERIES, ROOT, VENV_BIN, _ensure_database, _free_port, _ours_env  # noqa: E402

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


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server under callgrind exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the server under callgrind did not answer {url} within {timeout:.0f} s")


def counted_run(query: str, concurrency: int, calls: int, db: Path, tmp: Path) -> dict[tuple[str, str], int]:
    """Serve under callgrind, send `calls` calls, stop the server; its instructions per function."""
    port = _free_port()
    out = tmp / f"callgrind.{calls}"
    env = {**os.environ, **_ours_env(port, db, tmp)}
    # Under callgrind a call takes some 50x longer: its inline budget and time limit must not cut it.
    env.update(SQLITE_INLINE_READ_MS="20", QUERY_TIMEOUT_SECONDS="60")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(VENV_BIN / "python"), "-m", "app"]
    with open(tmp / f"server.{calls}.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=300)
            load = [sys.executable, str(BENCH / "wrk_load.py"), "--url", f"http://127.0.0.1:{port}/mcp"]
            load += ["--query", QUERIES[query], "-c", str(concurrency), "--calls", str(calls)]
            load += ["--duration", "3600", "--warmup", "0", "--timeout", "60"]
            report = json.loads(subprocess.run(load, capture_output=True, check=True, text=True).stdout)
            if report["errors"]:
                raise SystemExit(f"{report['errors']} calls failed under callgrind: {report['error_samples'][:1]}")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
    annotate = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(out)], capture_output=True, text=True
    )
    return per_function(annotate.stdout)


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
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        first = counted_run(args.query, args.concurrency, args.warm, db, tmp)
        second = counted_run(args.query, args.concurrency, args.warm + args.calls, db, tmp)
    result = {"query": args.query, "concurrency": args.concurrency, "calls": args.calls}
    result.update(per_call(first, second, args.calls))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
