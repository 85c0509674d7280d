"""SQL Server's FOR JSON / FOR XML results, joined into the one document they are.

SQL Server sends `SELECT ... FOR JSON` (and FOR XML without TYPE) as a single column named
`JSON_F52E2B61-18A1-11d1-B105-00805F49916B` (or `XML_...`), split over rows of about 2,033 characters. Read
row by row, the caps would cut mid-document and the model would see fragments that are not JSON. So the
fragments are joined into one value first, and the byte cap applies to the joined document: one that does not
fit is not shown, and the result says it was cut (truncated_reason "max_bytes", too_long_column).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyodbc

from .types import QueryResult

# The GUID SQL Server (and its TDS clients) use for the single result column of FOR JSON / FOR XML.
FOR_JSON_GUID = "F52E2B61-18A1-11D1-B105-00805F49916B"
DOCUMENT_COLUMNS = frozenset({f"JSON_{FOR_JSON_GUID}", f"XML_{FOR_JSON_GUID}"})
FRAGMENTS_PER_FETCH = 256  # ~0.5 MB of fragments a round trip


def is_document_result(description: Sequence[Sequence[Any]] | None) -> bool:
    """One column, named like SQL Server's FOR JSON / FOR XML result column."""
    return description is not None and len(description) == 1 and str(description[0][0]).upper() in DOCUMENT_COLUMNS


def collect_document(
    cursor: pyodbc.Cursor, session: Any, max_rows: int, max_bytes: int, *, marks_over_cap: bool = False
) -> QueryResult:
    """Join the fragment rows into one row with one value, reading no more than the byte cap needs (the rest is
    discarded when the worker closes the cursor). With `marks_over_cap` each row ends with the server's
    byte-cap marker (ReadPlan): once it is set the document is over the cap."""
    column = str(cursor.description[0][0])
    parts: list[str] = []
    length = 0
    over = False
    while not over:
        batch = cursor.fetchmany(FRAGMENTS_PER_FETCH)
        if not batch:
            break
        session.rows_returned = True
        for raw in batch:
            fragment = raw[0]
            if marks_over_cap and raw[-1]:
                over = True
                break
            if fragment is None:
                continue
            text = fragment if isinstance(fragment, str) else str(fragment)
            parts.append(text)
            length += len(text)
            if length + 2 > max_bytes:  # JSON text is never shorter than the raw text: surely over the cap
                over = True
                break
    empty = len("[]")
    if not parts and not over:
        return QueryResult(columns=[column], rows=[], result_bytes=empty)
    document, rows_cut = _row_capped(column, "".join(parts), max_rows)
    row = [document]
    cost = len(json.dumps(row)) + 1
    if over or empty + cost > max_bytes:
        return QueryResult(
            columns=[column],
            rows=[],
            truncated=True,
            truncated_reason="max_bytes",
            too_long_column=column,
            result_bytes=empty,
        )
    return QueryResult(
        columns=[column],
        rows=[row],
        result_bytes=empty + cost,
        truncated=rows_cut,
        truncated_reason="max_rows" if rows_cut else None,
    )


def _row_capped(column: str, document: str, max_rows: int) -> tuple[str, bool]:
    """The row cap's TOP (max_rows + 1) sits in the SELECT under FOR JSON, so a JSON array with max_rows + 1
    objects means the table had more: keep max_rows of them and say the result was cut (as for plain rows)."""
    if not column.upper().startswith("JSON_"):
        return document, False
    try:
        parsed = json.loads(document)
    except ValueError:
        return document, False
    if isinstance(parsed, dict) and len(parsed) == 1:  # ROOT('name'): {"name": [...]}
        ((root, items),) = parsed.items()
        if isinstance(items, list) and len(items) > max_rows:
            return _compact({root: items[:max_rows]}), True
        return document, False
    if not isinstance(parsed, list) or len(parsed) <= max_rows:
        return document, False
    return _compact(parsed[:max_rows]), True


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
