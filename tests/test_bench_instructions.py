"""bench/instructions.py: instructions per call from two callgrind runs (the counting itself needs valgrind
and minutes, so it runs by hand; this checks how the runs' listings become per-call figures, and that its
server is started and stopped by bench/run.py's machinery with callgrind's bounds, the others' unchanged)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from subprocess import TimeoutExpired
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is not a package: its scripts import each other by name

import instructions  # noqa: E402
import run  # noqa: E402

# Nothing here starts a process: the server and wrk_load.py are stood in for.
pytestmark = pytest.mark.unit

# The shape of `callgrind_annotate --inclusive=no` output, header and all.
FIRST = """\
--------------------------------------------------------------------------------
Profile data file 'callgrind.200' (creator: callgrind-3.19.0)
Events recorded:  Ir
Thresholds:       100
--------------------------------------------------------------------------------
11,748,532,547 (100.0%)  PROGRAM TOTALS
--------------------------------------------------------------------------------
Ir                      file:function
--------------------------------------------------------------------------------
1,000,000 (40.00%)  ???:sqlite3VdbeExec [/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6]
  500,000 (20.00%)  Python/ceval.c:_PyEval_EvalFrameDefault'2 [/root/lib/libpython3.11.so.1.0]
   20,000 ( 1.00%)  ./malloc/./malloc/arena.c:free
"""
SECOND = FIRST.replace("1,000,000 (40.00%)", "3,000,000 (50.00%)").replace("  500,000", "1,500,000")


def test_listing_is_read_per_object_and_function() -> None:
    counts = instructions.per_function(FIRST)
    assert counts == {
        ("libsqlite3.so.0.8.6", "sqlite3VdbeExec"): 1_000_000,
        ("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault'2"): 500_000,
        ("?", "free"): 20_000,
    }  # the totals line and the headers are not functions


def test_per_call_is_the_difference_of_the_runs_over_the_extra_calls() -> None:
    result = instructions.per_call(instructions.per_function(FIRST), instructions.per_function(SECOND), calls=1000)
    assert result["instructions_per_call"] == 3000  # (2,000,000 + 1,000,000) / 1,000; `free` did not change
    assert result["per_object"] == {"libsqlite3.so.0.8.6": 2000, "libpython3.11.so.1.0": 1000}
    top = result["top_functions"]
    assert isinstance(top, list) and top[0] == {
        "object": "libsqlite3.so.0.8.6",
        "function": "sqlite3VdbeExec",
        "per_call": 2000,
    }


def test_per_call_divides_by_the_calls_wrk_answered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def counted_runs(*args: object) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], int]:
        return instructions.per_function(FIRST), instructions.per_function(SECOND), 1000  # 10 more than asked

    monkeypatch.setattr(instructions, "counted_runs", counted_runs)
    monkeypatch.setattr(instructions.shutil, "which", lambda name: f"/usr/bin/{name}")
    (tmp_path / "demo.db").touch()
    assert instructions.main(["--calls", "990", "--database", str(tmp_path / "demo.db")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calls"] == 990 and result["calls_counted"] == 1000
    assert result["instructions_per_call"] == 3000  # 3,000,000 / 1,000 answered, not / 990 asked


def test_the_callgrind_server_is_ours_as_make_bench_starts_it_wrapped_in_valgrind(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.200"
    spec = instructions.callgrind_spec(out, "server.200")
    command = spec.command(8123, tmp_path / "demo.db")
    assert command[:3] == ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    assert command[-3:] == ["-m", "app", "serve"]
    server = run.RunningServer(spec, tmp_path / "demo.db", tmp_path)
    env = server._node_env(0)
    assert env["SQLITE_INLINE_READ_MS"] == "20" and env["QUERY_TIMEOUT_SECONDS"] == "60"
    assert env["PORT"] == str(server.node_ports[0]) and env["DB_BACKEND"] == "sqlite" and env["WORKERS"] == "1"
    assert server.log_path == tmp_path / "server.200.log"  # each run its own log and DATA_DIR


class _Server:
    """A stand-in for a server process that exits on the signals in `exits_on`."""

    pid = 4242

    def __init__(self, exits_on: set[int]) -> None:
        self.exits_on = exits_on
        self.returncode: int | None = None
        self.waits: list[float | None] = []

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        if self.returncode is None:
            raise TimeoutExpired("server", timeout or 0)
        return self.returncode


@pytest.mark.parametrize(
    ("kwargs", "signals", "waits"),
    [
        ({}, [signal.SIGTERM], [10.0]),  # every caller of run.py: as before
        ({"grace": 300.0, "stop_signal": signal.SIGINT}, [signal.SIGINT], [300.0]),  # instructions.py
    ],
)
def test_stop_sends_the_signal_asked_for_and_waits_the_grace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kwargs: dict[str, Any], signals: list[int], waits: list[float]
) -> None:
    sent: list[int] = []
    proc = _Server(exits_on={signals[0]})

    def killpg(pid: int, sig: int) -> None:
        assert pid == proc.pid
        sent.append(sig)
        if sig in proc.exits_on:
            proc.returncode = 0

    monkeypatch.setattr(run.os, "killpg", killpg)
    server = run.RunningServer(run.spec_for("ours"), tmp_path / "demo.db", tmp_path)
    server.procs.append(proc)  # type: ignore[arg-type]
    server.stop(**kwargs)
    assert sent == signals and proc.waits == waits


def test_serving_passes_its_bounds_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[object] = []

    async def start(self: run.RunningServer, timeout: float = 60.0) -> None:
        seen.append(timeout)

    monkeypatch.setattr(run.RunningServer, "start", start)
    monkeypatch.setattr(run.RunningServer, "stop", lambda self, *args: seen.append(args))

    async def serve(**kwargs: Any) -> None:
        async with run.serving(run.spec_for("ours"), tmp_path / "demo.db", tmp_path, **kwargs):
            pass

    asyncio.run(serve())
    asyncio.run(serve(start_timeout=300.0, stop_grace=300.0, stop_signal=signal.SIGINT))
    assert seen == [60.0, (10.0, signal.SIGTERM), 300.0, (300.0, signal.SIGINT)]


@pytest.mark.parametrize(
    ("kwargs", "duration", "timeout"),
    [
        ({}, "60", None),  # the memory check: as before
        ({"min_seconds": 3600, "calls_per_second": 1, "call_timeout": 60}, "3600", "60"),  # under callgrind
    ],
)
def test_wrk_calls_bounds_the_run_as_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kwargs: dict[str, Any], duration: str, timeout: str | None
) -> None:
    argv: list[str] = []

    class Load:
        returncode = 0

        async def communicate(self) -> tuple[bytes, bytes]:
            return b'{"calls": 1000, "calls_total": 1003}', b""

    async def exec_(*cmd: str, **options: object) -> Load:
        argv.extend(cmd)
        return Load()

    monkeypatch.setattr(run.asyncio, "create_subprocess_exec", exec_)
    server = run.RunningServer(run.spec_for("ours"), tmp_path / "demo.db", tmp_path)
    report = asyncio.run(run._wrk_calls(server, "select1", 8, 1000, **kwargs))
    assert report["calls_total"] == 1003
    assert argv[argv.index("--duration") + 1] == duration
    assert (argv[argv.index("--timeout") + 1] if "--timeout" in argv else None) == timeout
