"""Streamed CSV downloads, safe to open in a spreadsheet.

A text cell that starts with = + - @ (or a tab or carriage return) would be run as a formula by
Excel, LibreOffice or Sheets (CSV injection); such cells get a leading apostrophe. Numbers and
booleans are written by us and left alone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

T = TypeVar("T")

EXPORT_PAGE = 1_000  # rows per event-store query while a CSV streams
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# The OpenAPI entry of a CSV route's 200 answer (there is no JSON body to describe).
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV with a header row (UTF-8), sent as an attachment",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def cell(value: Any) -> str | int | float:
    """One value as a CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def paged(first: list[T], after: Callable[[T], list[T]], page_size: int) -> Iterator[T]:
    """The rows of `first` (read before the answer starts, so a store fault is still a 503),
    then of each next page, asked for with the last row seen, until a page of fewer than
    `page_size` rows."""
    rows = first
    while True:
        yield from rows
        if len(rows) < page_size:
            return
        rows = after(rows[-1])


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """The header, then one encoded line per row (values through `cell`), as produced."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")

    def line(values: Sequence[Any]) -> bytes:
        buf.seek(0)
        buf.truncate()
        writer.writerow(values)
        return buf.getvalue().encode()

    yield line([cell(h) for h in header])
    for row in rows:
        yield line([cell(v) for v in row])


def csv_response(filename: str, lines: Iterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        lines,
        media_type=CSV_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )
