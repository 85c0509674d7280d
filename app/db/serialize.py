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
