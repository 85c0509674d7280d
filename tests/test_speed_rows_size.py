"""A batch of result rows sized by one encoding (issue 10) gives exactly the numbers row-by-row sizing gave:
`len(json.dumps(row))` per row, non-ASCII, DEL and characters past U+FFFF included, and the byte cap cuts at
the same row."""

from __future__ import annotations

import json
import random

import pytest

from app.db.execute import json_size, rows_json_size
from tests.fixtures.databases import open_database

ALPHABET = ["a", "Z", " ", '"', "\\", "\n", "\x01", "\x7f", "é", "ß", "€", "\u2028", "日本", "😀", "𝄞", "e-", "/"]


def _value(rng: random.Random) -> object:
    kind = rng.randrange(6)
    if kind == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(12)))
    if kind == 1:
        return rng.randrange(-(2**63), 2**63)
    if kind == 2:
        return rng.choice([0.5, 1e16, 1e-5, 2.5e-7, 123.456, -0.0, 1e300, 0.1 + 0.2])
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    return rng.randrange(2**64, 2**80)  # past 64 bits: orjson cannot write it, json.dumps measures


def test_sizes_match_the_standard_encoder_on_random_rows() -> None:
    rng = random.Random(10)
    for _ in range(3000):
        rows = [[_value(rng) for _ in range(rng.randrange(5))] for _ in range(rng.randrange(6))]
        expected = [len(json.dumps(row)) for row in rows]
        assert [json_size(row) for row in rows] == expected
        together = rows_json_size(rows)
        assert together is None or together == sum(expected)


def test_non_ascii_rows_are_sized_in_one_pass() -> None:
    rows = [["Zoë", 1, 2.5], ["😀 𝄞", None, True], ["\x7fplain", "日本語", ""]]
    assert rows_json_size(rows) == sum(len(json.dumps(row)) for row in rows)
    assert rows_json_size([]) == 0 and rows_json_size([[]]) == len(json.dumps([]))


@pytest.mark.parametrize("cap", [60, 200, 1000, 100_000])
async def test_a_read_reports_and_cuts_as_row_by_row_sizing_did(sqlite_db, cap) -> None:
    sql = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) "
        "SELECT i, 'Zoë ' || i AS name, char(128512) || i AS emoji, i * 0.25 AS q FROM n"
    )
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db), max_result_bytes=cap) as database:
        result = await database.read(sql)
    size, kept = 2, 0
    for i in range(1, 41):
        row = [i, f"Zoë {i}", f"😀{i}", i * 0.25]
        cost = len(json.dumps(row)) + 1
        if size + cost > cap:
            break
        size, kept = size + cost, kept + 1
    assert result.row_count == kept and result.result_bytes == size
    assert result.truncated == (kept < 40)
    assert result.truncated_reason == ("max_bytes" if kept < 40 else None)
