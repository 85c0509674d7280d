"""orjson on the hot path (issue 10) writes exactly what the standard library wrote before."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import struct
import uuid
from decimal import Decimal
from typing import Any

import pytest

from app.db.execute import json_size
from app.db.serialize import serialize_row
from app.mcp.jsonrpc import RawJson, dumps, dumps_value

STDLIB = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, "é☃😀", None, True, False], "c": {"d": 'x"y\n\t\x7f\\'}},
        {"when": dt.datetime(2024, 1, 2, 3, 4, 5), "day": dt.date(2024, 1, 2), "at": dt.time(3, 4)},
        {"id": uuid.UUID(int=7), "point": Point(1), "set": {1}, "tuple": (1, 2), "bytes": b"xy"},
        {1: "int key", "big": 2**70, "neg": -(2**80)},
        "\ud800 lone surrogate",
        "".join(chr(i) for i in range(0x3000)) + "\U0001f600",  # every escape the encoders make, and none more
        {"floats": [0.1, 1e16, 1e22, -0.0, 123.45, 2.5e300]},
        [{"deep": [[[[1]]]]}],
    ],
)
def test_dumps_value_matches_the_standard_encoder(value: Any) -> None:
    assert dumps_value(value) == STDLIB.encode(value)


def test_dumps_splices_a_raw_result() -> None:
    message = {"jsonrpc": "2.0", "id": 7, "result": RawJson('{"x":[1,2]}')}
    assert json.loads(dumps(message)) == {"jsonrpc": "2.0", "id": 7, "result": {"x": [1, 2]}}
    assert json.loads(dumps([message, {"jsonrpc": "2.0", "id": "a", "result": {}}]))[1]["id"] == "a"


def _random_float(rng: random.Random) -> float:
    choice = rng.random()
    if choice < 0.3:
        value: float = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
    elif choice < 0.6:
        value = rng.random() * 10 ** rng.randint(-30, 30)
    else:
        value = round(rng.uniform(-1e7, 1e7), rng.randint(0, 8))
    return value


def test_json_size_is_the_length_of_json_dumps() -> None:
    """The byte cap is defined as len(json.dumps(row)); json_size must give that number for every row."""
    rng = random.Random(10)
    alphabet = [chr(i) for i in range(128)] + ["é", "☃", "😀", "\u2028"]
    for _ in range(20_000):
        row: list[Any] = []
        for _ in range(rng.randint(0, 6)):
            kind = rng.randrange(6)
            if kind == 0:
                row.append(None if rng.random() < 0.5 else rng.random() < 0.5)
            elif kind == 1:
                row.append(rng.randint(-(2**70), 2**70) if rng.random() < 0.1 else rng.randint(-(2**63), 2**63 - 1))
            elif kind in (2, 3):
                row.append(_random_float(rng))
            else:
                row.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
        row = serialize_row(row)  # NaN / infinity become strings, as every real row's do
        assert json_size(row) == len(json.dumps(row)), row


def test_json_size_of_typical_values() -> None:
    rows = [
        serialize_row([1, "2024-06-01", Decimal("12.50"), 1234.56, None, True]),
        serialize_row(["e-mail", "0.00001", 1e-05, 9.4e-05, 1e-7]),
        serialize_row(["Zoë", "naïve ☃"]),
        [],
    ]
    for row in rows:
        assert json_size(row) == len(json.dumps(row))
