"""bench/instructions.py: instructions per call from two callgrind runs (the counting itself needs valgrind
and minutes, so it runs by hand; this checks how the runs' listings become per-call figures)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is not a package: its scripts import each other by name

import instructions  # noqa: E402

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
