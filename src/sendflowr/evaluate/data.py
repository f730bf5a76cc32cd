"""Loading activity events for the replay: the evaluation's only I/O.

Formats:
- `konect`: KONECT edge lists, `sender recipient [weight [unix_ts]]` per line, `%` lines are
  headers; the sender is the user and the 4th column the time. A directory is accepted if it
  holds exactly one `out.*` file.
- `csv`: a header naming `user_id` and `unix_ts`, optionally `tz` (the user's IANA zone).

The parsers take lines, so they are pure and testable without files; errors name the line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from sendflowr.evaluate.replay import ActivityEvents, IntArray

Format = Literal["konect", "csv"]


def _int(text: str, what: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"line {line}: {what} {text!r} is not an integer") from None


def _encode(labels: list[str], *, numeric: bool) -> tuple[IntArray, tuple[str, ...]]:
    # numeric ids sort as numbers so codes follow the source's own numbering
    raw = np.array([int(x) for x in labels], np.int64) if numeric else np.array(labels, dtype=str)
    uniq, codes = np.unique(raw, return_inverse=True)
    return codes.astype(np.int64), tuple(str(u) for u in uniq)


def parse_konect(lines: Iterable[str]) -> ActivityEvents:
    users: list[str] = []
    stamps: list[int] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("%"):
            continue
        cols = text.split()
        if len(cols) < 4:
            raise ValueError(
                f"line {number}: expected 'sender recipient weight unix_ts', got {len(cols)} "
                "column(s); this KONECT network may have no timestamps"
            )
        _int(cols[0], "sender", number)
        users.append(cols[0])
        stamps.append(_int(cols[3], "unix_ts", number))
    return _events(users, stamps, None, numeric=True)


def parse_csv(lines: Iterable[str]) -> ActivityEvents:
    reader = csv.reader(iter(lines))
    header = next(reader, None)
    if header is None:
        raise ValueError("line 1: empty file, expected a header with user_id,unix_ts")
    names = [h.strip() for h in header]
    missing = [c for c in ("user_id", "unix_ts") if c not in names]
    if missing:
        raise ValueError(f"line 1: header lacks column(s) {', '.join(missing)}")
    iu, it = names.index("user_id"), names.index("unix_ts")
    iz = names.index("tz") if "tz" in names else None
    users: list[str] = []
    stamps: list[int] = []
    zone_of: dict[str, str] = {}
    for row in reader:
        number = reader.line_num
        if not row:
            continue
        if len(row) != len(names):
            raise ValueError(f"line {number}: {len(row)} fields, header has {len(names)}")
        user = row[iu].strip()
        if not user:
            raise ValueError(f"line {number}: empty user_id")
        users.append(user)
        stamps.append(_int(row[it].strip(), "unix_ts", number))
        if iz is not None:
            _check_zone(zone_of, user, row[iz].strip(), number)
    return _events(users, stamps, zone_of if iz is not None else None, numeric=False)


def _check_zone(zone_of: dict[str, str], user: str, zone: str, line: int) -> None:
    known = zone_of.get(user)
    if not zone:
        raise ValueError(f"line {line}: empty tz for user {user!r}")
    if known is None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"line {line}: unknown time zone {zone!r}") from None
        zone_of[user] = zone
    elif known != zone:
        raise ValueError(f"line {line}: user {user!r} has zone {zone!r} here but {known!r} before")


def _events(
    users: list[str], stamps: list[int], zone_of: dict[str, str] | None, *, numeric: bool
) -> ActivityEvents:
    if not users:
        raise ValueError("no events in the input")
    codes, labels = _encode(users, numeric=numeric)
    zones = None if zone_of is None else tuple(zone_of[label] for label in labels)
    return ActivityEvents(codes, np.array(stamps, np.int64), labels, zones)


def _resolve(path: Path, fmt: Format) -> Path:
    if fmt != "konect" or not path.is_dir():
        return path
    found = sorted(p for p in path.glob("out.*") if p.is_file())
    if len(found) != 1:
        raise ValueError(f"{path}: expected exactly one out.* file, found {len(found)}")
    return found[0]


def load_events(path: str | Path, fmt: Format) -> ActivityEvents:
    """Read activity events from a file in the given format (see the module docstring)."""
    if fmt not in ("konect", "csv"):
        raise ValueError(f"unknown format {fmt!r}; expected 'konect' or 'csv'")
    source = _resolve(Path(path), fmt)
    with source.open(encoding="utf-8", newline="") as handle:
        try:
            return parse_konect(handle) if fmt == "konect" else parse_csv(handle)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
