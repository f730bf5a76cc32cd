"""Klaviyo's query language: `filter`, `sort`, `page[size]` and opaque `page[cursor]` tokens.

Filters are function calls (`equals(metric_id,"X")`, `greater-or-equal(datetime,2024-...)`,
`has(profile)`, `any(id,["a","b"])`) joined by commas or `and(...)`; strings may be single-
or double-quoted; datetimes are bare ISO 8601 (an offset, `Z`, or none for UTC).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

from sendflowr.klaviyo_sim.errors import ApiError, bad_parameter

COMPARISONS: Final = frozenset({"greater-or-equal", "greater-than", "less-or-equal", "less-than"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Bare:
    """An unquoted value (a datetime, a number, true/false/null, or a field name)."""

    text: str


Value = str | Bare | tuple["Value", ...]


@dataclass(frozen=True, slots=True)
class Condition:
    op: str
    field: str
    values: tuple[Value, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def fail(self, why: str) -> ApiError:
        return bad_parameter("filter", f"Invalid filter {self.text!r}: {why} at position {self.i}.")

    def peek(self) -> str:
        while self.i < len(self.text) and self.text[self.i] == " ":
            self.i += 1
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.i += 1

    def name(self) -> str:
        self.peek()
        start = self.i
        while self.i < len(self.text) and (
            self.text[self.i].isalnum() or self.text[self.i] in "-_.$"
        ):
            self.i += 1
        if start == self.i:
            raise self.fail("expected a name")
        return self.text[start : self.i]

    def expression(self) -> list[Condition]:
        out = self.call()
        while self.peek() == ",":
            self.i += 1
            out.extend(self.call())
        return out

    def call(self) -> list[Condition]:
        op = self.name()
        self.expect("(")
        if op == "and":
            out = self.expression()
            self.expect(")")
            return out
        if op in ("or", "not"):
            raise self.fail(f"{op}() is not supported here")
        field = self.name()
        values: list[Value] = []
        while self.peek() == ",":
            self.i += 1
            values.append(self.value())
        self.expect(")")
        return [Condition(op, field, tuple(values))]

    def value(self) -> Value:
        ch = self.peek()
        if ch in ("'", '"'):
            return self.quoted(ch)
        if ch == "[":
            self.i += 1
            items: list[Value] = []
            if self.peek() != "]":
                items.append(self.value())
                while self.peek() == ",":
                    self.i += 1
                    items.append(self.value())
            self.expect("]")
            return tuple(items)
        start = self.i
        while self.i < len(self.text) and self.text[self.i] not in ",)]":
            self.i += 1
        text = self.text[start : self.i].strip()
        if not text:
            raise self.fail("expected a value")
        return Bare(text)

    def quoted(self, quote: str) -> str:
        self.i += 1
        out: list[str] = []
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch == "\\" and self.i + 1 < len(self.text):
                out.append(self.text[self.i + 1])
                self.i += 2
                continue
            if ch == quote:
                self.i += 1
                return "".join(out)
            out.append(ch)
            self.i += 1
        raise self.fail("unterminated string")


def parse_filter(text: str | None) -> list[Condition]:
    """The conditions of a `filter` parameter (empty when absent); 400 naming `filter`."""
    if text is None or not text.strip():
        return []
    parser = _Parser(text)
    conditions = parser.expression()
    if parser.peek():
        raise parser.fail("unexpected text")
    return conditions


def check_allowed(conditions: list[Condition], allowed: Mapping[str, frozenset[str]]) -> None:
    """400 unless every (field, operator) is one the endpoint supports."""
    for c in conditions:
        ops = allowed.get(c.field)
        if ops is None:
            raise bad_parameter("filter", f"'{c.field}' is not a valid field for this filter.")
        if c.op not in ops:
            raise bad_parameter(
                "filter", f"'{c.op}' is not a valid operator for '{c.field}' (allowed: "
                + ", ".join(sorted(ops)) + ")."
            )  # fmt: skip
        expected = 0 if c.op == "has" else 1
        if len(c.values) != expected:
            raise bad_parameter("filter", f"{c.op}({c.field}, ...) takes {expected} value(s).")


def as_string(c: Condition) -> str:
    value = c.values[0]
    if isinstance(value, tuple):
        raise bad_parameter("filter", f"{c.op}({c.field}, ...) takes one value, not a list.")
    return value.text if isinstance(value, Bare) else value


def as_strings(c: Condition) -> list[str]:
    value = c.values[0]
    if not isinstance(value, tuple):
        raise bad_parameter("filter", f"{c.op}({c.field}, ...) takes a list of values.")
    out = []
    for v in value:
        if isinstance(v, tuple):
            raise bad_parameter("filter", "lists cannot be nested.")
        out.append(v.text if isinstance(v, Bare) else v)
    return out


def as_datetime_ms(c: Condition) -> int:
    """A datetime value as UTC milliseconds (no offset = UTC)."""
    text = as_string(c)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        hint = " (a '+' in a query string must be sent as %2B)" if " " in text else ""
        raise bad_parameter(
            "filter", f"{text!r} is not a valid ISO 8601 datetime for '{c.field}'{hint}."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _ONE_MS


def as_int(c: Condition) -> int:
    text = as_string(c)
    try:
        return int(text)
    except ValueError:
        raise bad_parameter("filter", f"{text!r} is not an integer for '{c.field}'.") from None


def seconds_bounds(op: str, ms: int) -> tuple[int | None, int | None]:
    """The half-open range [lo, hi) of whole seconds satisfying `second <op> ms/1000`."""
    floor_s = ms // 1000
    ceil_s = -(-ms // 1000)
    if op == "greater-or-equal":
        return ceil_s, None
    if op == "greater-than":
        return floor_s + 1, None
    if op == "less-than":
        return None, ceil_s
    return None, floor_s + 1  # less-or-equal


def parse_sort(value: str | None, allowed: frozenset[str], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise bad_parameter(
            "sort", f"'{value}' is not a valid sort; use one of: " + ", ".join(sorted(allowed))
        )
    return value


def parse_page_size(value: str | None, maximum: int, default: int) -> int:
    if value is None:
        return default
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= maximum:
        raise bad_parameter(
            "page[size]", f"Page size must be an integer between 1 and {maximum}, got {value!r}."
        )
    return size


def fingerprint(*parts: object) -> bytes:
    """8 bytes naming a query (path, filter conditions, sort): cursors are bound to it."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()


NEXT: Final = 0
PREV: Final = 1
_LAYOUT: Final = struct.Struct("!B8sqB")  # version, query fingerprint, position, direction
_TAG: Final = 6


class CursorCodec:
    """Opaque `page[cursor]` tokens: a query fingerprint, a position and a direction, with a
    short MAC so a token edited or taken from another query is refused (400)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, "sha256").digest()[:_TAG]

    def encode(self, query: bytes, position: int, direction: int) -> str:
        payload = _LAYOUT.pack(1, query, position, direction)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def decode(self, token: str, query: bytes) -> tuple[int, int]:
        """(position, direction) of a token made for `query`; 400 otherwise."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raw = b""
        payload, tag = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        if len(raw) != _LAYOUT.size + _TAG or not hmac.compare_digest(tag, self._mac(payload)):
            raise bad_parameter("page[cursor]", "Invalid page cursor.")
        _version, fp, position, direction = _LAYOUT.unpack(payload)
        if fp != query:
            raise bad_parameter(
                "page[cursor]",
                "This cursor belongs to another query: keep filter and sort unchanged "
                "while following links.next.",
            )
        return position, direction


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Field(Generic[T]):
    """A filterable attribute of a small collection: how to read it and what kind it is."""

    get: Callable[[T], object]
    kind: str = "str"  # "str", "bool" or "datetime" (whole seconds)


def _compare(op: str, value: object, c: Condition, kind: str) -> bool:
    if kind == "datetime":
        if not isinstance(value, int):
            return False
        ms = as_datetime_ms(c)
        if op == "equals":
            return value * 1000 == ms
        lo, hi = seconds_bounds(op, ms)
        return (lo is None or value >= lo) and (hi is None or value < hi)
    if kind == "bool":
        text = as_string(c).lower()
        if text not in ("true", "false"):
            raise bad_parameter("filter", f"'{c.field}' takes true or false.")
        return value == (text == "true")
    if op == "any":
        return value in as_strings(c)
    text = as_string(c)
    if not isinstance(value, str):
        return False
    if op == "equals":
        return value == text
    if op == "contains":
        return text in value
    if op == "starts-with":
        return value.startswith(text)
    if op == "ends-with":
        return value.endswith(text)
    raise bad_parameter("filter", f"'{op}' is not supported for '{c.field}'.")


def filter_objects(
    items: Sequence[T], conditions: Sequence[Condition], fields: Mapping[str, Field[T]]
) -> list[T]:
    """The items meeting every condition (conditions already checked by `check_allowed`)."""
    out = list(items)
    for c in conditions:
        spec = fields.get(c.field)
        if spec is None:  # accepted by the endpoint but not held by the sim: matches nothing
            return []
        out = [x for x in out if _compare(c.op, spec.get(x), c, spec.kind)]
    return out


def sort_objects(items: list[T], sort: str, keys: Mapping[str, Callable[[T], Any]]) -> list[T]:
    name = sort.lstrip("-")
    return sorted(items, key=keys[name], reverse=sort.startswith("-"))
