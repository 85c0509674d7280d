"""Every value a driver returns, as a JSON-ready value that round-trips through `json.dumps`.

Choices (documented in docs/database.md):
- int, str, bool, None pass through (NULL -> null). Integers stay numbers even beyond 2**53.
- Decimal -> string in plain notation ("12345678901234567890.0123456789"): exact, never rounded by
  a float parser. NaN stays "NaN".
- float -> number; NaN and +/-infinity, which JSON cannot carry, -> "NaN", "Infinity", "-Infinity".
- datetime/date/time -> ISO 8601 (`isoformat()`; offsets kept when the driver supplies them).
- timedelta -> ISO 8601 duration ("P1DT3600S").
- bytes/bytearray/memoryview -> "0x" + upper-case hex: the T-SQL binary literal form, so a model can
  paste it back into a WHERE clause.
- UUID -> canonical string.
- anything else -> str(value).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any


def decimal_to_json(value: Decimal) -> str:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    text = str(value)
    return format(value, "f") if "E" in text or "e" in text else text


def float_to_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def binary_to_json(value: bytes | bytearray | memoryview) -> str:
    return "0x" + bytes(value).hex().upper()


def timedelta_to_json(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    seconds = value.seconds + value.microseconds / 1_000_000
    secs = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{sign}P{value.days}DT{secs}S"


def _iso(value: dt.date | dt.time) -> str:
    return value.isoformat()


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    Decimal: decimal_to_json,
    float: float_to_json,
    dt.datetime: _iso,
    dt.date: _iso,
    dt.time: _iso,
    dt.timedelta: timedelta_to_json,
    bytes: binary_to_json,
    bytearray: binary_to_json,
    memoryview: binary_to_json,
    uuid.UUID: str,
}
_PASS_THROUGH = frozenset({int, str, bool, type(None)})


def to_json_value(value: Any) -> Any:
    kind = type(value)
    if kind in _PASS_THROUGH:
        return value
    converter = _CONVERTERS.get(kind)
    if converter is not None:
        return converter(value)
    for base, conv in _CONVERTERS.items():  # subclasses (e.g. a driver's datetime subclass)
        if isinstance(value, base):
            return conv(value)
    if isinstance(value, int | str):
        return value
    return str(value)


def serialize_row(row: Sequence[Any]) -> list[Any]:
    """One result row as a JSON-ready list (hot path: plain values are not touched)."""
    passthrough = _PASS_THROUGH
    return [v if type(v) in passthrough else to_json_value(v) for v in row]


RowsSerializer = Callable[[Sequence[Sequence[Any]]], list[list[Any]]]

# How a column of a given driver type code is written in a generated serializer (see rows_serializer): a
# value of the expected type takes the inline path, anything else (NULL, an output converter's value, a
# driver that answers with another type) goes through to_json_value, so the output is serialize_row's.
# `v - v == 0.0` is math.isfinite without a call: infinities and NaN give NaN.
_INLINE_PLAIN = "(v{i} if type(v{i}) in plain else convert(v{i}))"
_INLINE_BY_TYPE: dict[Any, str] = {
    float: "(v{i} if type(v{i}) is float and v{i} - v{i} == 0.0 else convert(v{i}))",
    dt.datetime: "(v{i}.isoformat() if type(v{i}) is datetime else convert(v{i}))",
    dt.date: "(v{i}.isoformat() if type(v{i}) is date else convert(v{i}))",
    dt.time: "(v{i}.isoformat() if type(v{i}) is time else convert(v{i}))",
}
_GENERATED_MAX_COLUMNS = 256  # wider results use serialize_row per row


def rows_serializer(type_codes: tuple[Any, ...], *, drop_last: bool = False) -> RowsSerializer:
    """A function turning a batch of driver rows with these column type codes (`cursor.description[i][1]`)
    into serialize_row's lists, chosen once per result instead of a type lookup per value. With `drop_last`
    the rows carry one more column (the byte-cap marker), which is left out. Any value of an unexpected type
    still gets to_json_value: the type codes only pick the fast path."""
    try:
        return _generated_serializer(type_codes, drop_last)
    except TypeError:  # unhashable type codes (not pyodbc's): no fast path
        return _per_row_serializer(drop_last)


def _per_row_serializer(drop_last: bool) -> RowsSerializer:
    if drop_last:
        return lambda rows: [serialize_row(row[:-1]) for row in rows]
    return lambda rows: [serialize_row(row) for row in rows]


@lru_cache(maxsize=256)
def _generated_serializer(type_codes: tuple[Any, ...], drop_last: bool) -> RowsSerializer:
    width = len(type_codes)
    if width == 0 or width > _GENERATED_MAX_COLUMNS:
        return _per_row_serializer(drop_last)
    # Like namedtuple and dataclasses, the function is generated: unpacking each row into locals and one
    # list display per row is about twice as fast as a loop over values. Its text holds only column indexes
    # and the fixed snippets above, never anything from the database.
    values = ", ".join(_INLINE_BY_TYPE.get(code, _INLINE_PLAIN).format(i=i) for i, code in enumerate(type_codes))
    targets = "".join(f"v{i}, " for i in range(width)) + ("_marker, " if drop_last else "")
    source = f"def serialize_rows(rows):\n    return [[{values}] for {targets}in rows]\n"
    namespace: dict[str, Any] = {
        "plain": _PASS_THROUGH,
        "convert": to_json_value,
        "datetime": dt.datetime,
        "date": dt.date,
        "time": dt.time,
    }
    exec(compile(source, f"<rows_serializer {width}>", "exec"), namespace)  # the fixed text above
    generated: RowsSerializer = namespace["serialize_rows"]
    return generated
