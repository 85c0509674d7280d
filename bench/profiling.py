"""Where a Python server's CPU time goes under load: py-spy samples, summarized per function and module.

`run.py --profile` attaches py-spy (installed by `make bench-profiler` into bench/.peers/prof) to a server
during an extra, unreported load run and writes the raw collapsed stacks plus a summary next to them. The
summary can also be made from a saved raw file:

    python bench/profiling.py bench/.peers/profiles/ours-select1-c32.txt
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(__file__).resolve().parent / ".peers" / "prof" / "bin" / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


async def record(pid: int, duration: float, out: Path, rate: int = 250, gil_only: bool = True) -> None:
    """Sample `pid` for `duration` seconds into collapsed-stack text. `gil_only`: only the thread holding the
    GIL, i.e. where the interpreter's one core goes (what limits a Python server's throughput); otherwise
    every non-idle thread, including workers blocked in the database driver."""
    if not PY_SPY.exists():
        raise RuntimeError(f"py-spy is not installed at {PY_SPY} (make bench-profiler)")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        str(PY_SPY),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(duration)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--full-filenames",
        "--nonblocking",
        "--output",
        str(out),
        *(["--gil"] if gil_only else []),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=duration + 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


def _short(path: str) -> str:
    """A module-ish name: the path below site-packages, or below the checkout, or the stdlib file."""
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    return path


def _parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in raw.splitlines():
        frames_text, _, count = line.rpartition(" ")
        if not frames_text or not count.isdigit():
            continue
        frames = []
        for frame in frames_text.split(";"):
            match = _FRAME.match(frame)
            if match:
                frames.append((match["func"], _short(match["file"])))
            else:
                frames.append((frame, "?"))
        stacks.append((frames, int(count)))
    return stacks


def summarize(raw_path: Path, top: int = 25) -> str:
    stacks = _parse(raw_path.read_text())
    total = sum(count for _, count in stacks) or 1
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_mod: Counter[str] = Counter()
    for frames, count in stacks:
        leaf_func, leaf_file = frames[-1]
        self_fn[f"{leaf_func} ({leaf_file})"] += count
        self_mod[leaf_file] += count
        for name in {f"{func} ({file})" for func, file in frames}:
            incl_fn[name] += count

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"### {title}", "", "| % of samples | where |", "|---:|---|"]
        rows += [f"| {100 * n / total:5.1f} | `{name}` |" for name, n in counter.most_common(top)]
        return [*rows, ""]

    lines = [f"## {raw_path.name}: {total} samples", ""]
    lines += table("Self time by module (file)", self_mod)
    lines += table("Self time by function", self_fn)
    lines += table("Inclusive time by function (on the stack)", incl_fn)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="+", type=Path, help="py-spy --format raw output files")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.raw:
        print(summarize(path, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
