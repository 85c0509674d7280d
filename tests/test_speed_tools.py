"""The per-call work after the driver (issue 10): rows serialized by a function chosen once per result from the
column types give exactly serialize_row's values, whatever the driver really returns in a column, and the
result of a read is what it was."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from decimal import Decimal
from typing import Any

import pytest

from app.db.execute import rows_json_size
from app.db.serialize import rows_serializer, serialize_row
from tests.fixtures.databases import open_database

TYPE_CODES: list[Any] = [int, str, bool, float, dt.datetime, dt.date, dt.time, Decimal, bytearray, uuid.UUID, None, "x"]


class LaterDatetime(dt.datetime):
    """A driver's datetime subclass: not the fast path's exact type, still written as ISO 8601."""


def _value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            7,
            -(2**70),
            True,
            "Zoë",
            "",
            2.5,
            float("nan"),
            float("inf"),
            float("-inf"),
            -0.0,
            1e308,
            dt.datetime(2024, 6, 30, 7, 57, 48),
            dt.datetime(2024, 6, 30, 7, 57, 48, 5, tzinfo=dt.UTC),
            LaterDatetime(2024, 1, 2, 3, 4, 5),
            dt.date(2024, 6, 1),
            dt.time(12, 0, 15, 290),
            Decimal("12.50"),
            Decimal("1E+3"),
            Decimal("NaN"),
            b"\x00\xff",
            bytearray(b"ab"),
            uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
            dt.timedelta(days=1, seconds=5),
            object.__new__(object),
        ]
    )


def test_generated_serializers_write_what_serialize_row_writes() -> None:
    rng = random.Random(10)
    for _ in range(2000):
        width = rng.randrange(1, 7)
        codes = tuple(rng.choice(TYPE_CODES) for _ in range(width))
        drop_last = rng.random() < 0.5
        rows = [tuple(_value(rng) for _ in range(width + drop_last)) for _ in range(rng.randrange(4))]
        expected = [serialize_row(row[:-1] if drop_last else row) for row in rows]
        got = rows_serializer(codes, drop_last=drop_last)(rows)
        assert [[str(v) if type(v) is object else v for v in row] for row in got] == [
            [str(v) if type(v) is object else v for v in row] for row in expected
        ]
        assert json.dumps(got) == json.dumps(expected)


def test_unhashable_or_many_type_codes_fall_back_to_serialize_row() -> None:
    rows = [(1, 2.5, float("nan"), dt.date(2024, 1, 1))]
    assert rows_serializer(([], {}, int, float))(rows) == [serialize_row(rows[0])]
    wide = [(*range(300), 0)]
    assert rows_serializer((int,) * 300, drop_last=True)(wide) == [list(range(300))]


@pytest.mark.parametrize("width", [1, 3, 8])
def test_rows_of_one_width_are_sized_as_counted(width: int) -> None:
    rng = random.Random(width)
    rows = [[rng.choice(["é", 1, None, 2.5, "x" * rng.randrange(9)]) for _ in range(width)] for _ in range(30)]
    assert rows_json_size(rows, width) == rows_json_size(rows) == sum(len(json.dumps(row)) for row in rows)


async def test_a_read_serializes_every_column_type_as_before(sqlite_db) -> None:
    sql = (
        "SELECT o.id, c.created_at, c.name, o.note, 9e999 AS big, -9e999 AS small, 0.5 AS half, "
        "CAST(NULL AS REAL) AS empty, x'00ff' AS raw FROM orders AS o JOIN customers AS c "
        "ON c.id = o.customer_id ORDER BY o.id"
    )
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        result = await database.read(sql)
    assert result.columns == ["id", "created_at", "name", "note", "big", "small", "half", "empty", "raw"]
    assert len(result.rows) == 5
    first = result.rows[0]
    assert first[0] == 1 and first[2] == "Ada Lovelace" and first[3] is None
    assert first[4:] == ["Infinity", "-Infinity", 0.5, None, "0x00FF"]
    assert isinstance(first[1], str) and first[1] == "2024-01-05T10:00:00"
    assert result.rows[3][3] == "it's; tricky -- note"
    assert result.result_bytes == 2 + sum(len(json.dumps(row)) + 1 for row in result.rows)
