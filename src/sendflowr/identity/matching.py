"""Does a stored payload name a person? One matcher for every store erasure has to search by
content (dead letters, the raw archive).

A payload names the person when it holds
- an email-like string whose keyed hash (trimmed, lower-cased: `hash_email`) is one of their
  email hashes - the plaintext address in any case, with any surrounding whitespace;
- a string value equal (after trimming) to one of their identifiers: an email hash itself (a
  canonical event carries `email_hash`), an ESP profile id, a phone, an external or anonymous
  id;
- a string value that is one of their phones once spaces, dots, dashes and brackets are
  dropped ("+1 (415) 555-0101" names +14155550101).

`names` decides for one payload. `candidates` is the cheap, vectorised over-approximation for
a whole Arrow column (pyarrow substring and regex kernels), so Python only looks at rows that
may match: an archive of 100,000 rows is searched in well under a second.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, PHONE, Identifier

EMAILISH = re.compile(r"[^\s\"'<>()\[\]{},;:@\\]+@[^\s\"'<>()\[\]{},;:@\\]+")
_FIRST_EMAILISH = f"(?P<email>{EMAILISH.pattern})"  # the same in RE2, for Arrow
_PHONE_NOISE = re.compile(r"[\s().\-]")
_PHONE_GAP = r"[\s().\-]*"


class PersonMatcher:
    """The identifiers of one person, ready to search payloads for them."""

    def __init__(self, identifiers: Iterable[Identifier], hash_key: bytes) -> None:
        ids = list(identifiers)
        self.email_hashes = frozenset(i.value for i in ids if i.kind == EMAIL)
        # Every identifier value a string may equal (email hashes included: pseudonymous, still
        # the person's).
        self.values = frozenset(i.value.strip() for i in ids if i.value.strip())
        self.phones = frozenset(i.value for i in ids if i.kind == PHONE)
        self._key = hash_key
        self._hashed: dict[str, bool] = {}  # email-like string -> is one of theirs

    @property
    def empty(self) -> bool:
        return not self.values

    # -- one payload ---------------------------------------------------------------------------
    def names(self, payload: str | None) -> bool:
        if not payload:
            return False
        if self.email_hashes and any(self._is_theirs(c) for c in EMAILISH.findall(payload)):
            return True
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return any(v in payload for v in self.values)
        for s in strings(parsed):
            if s.strip() in self.values:
                return True
            if self.phones and "+" in s and _PHONE_NOISE.sub("", s) in self.phones:
                return True
        return False

    def _is_theirs(self, candidate: str) -> bool:
        known = self._hashed.get(candidate)
        if known is None:
            try:
                known = hash_email(self._key, candidate) in self.email_hashes
            except ValueError:
                known = False
            self._hashed[candidate] = known
        return known

    # -- a column at once ------------------------------------------------------------------------
    def candidates(self, column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
        """A boolean mask (null rows: false) that is true for every row `names` could accept,
        and for few others."""
        mask = pa.array([False] * len(column), pa.bool_())
        if self.empty or not len(column):
            return mask
        texts = column.fill_null("")
        for needle in self._needles():
            mask = pc.or_(mask, pc.match_substring(texts, needle))
        for phone in self.phones:
            pattern = _PHONE_GAP.join(re.escape(ch) for ch in phone)
            mask = pc.or_(mask, pc.match_substring_regex(texts, pattern))
        if self.email_hashes:
            mask = pc.or_(mask, self._email_candidates(texts))
        return mask

    def _needles(self) -> set[str]:
        """Substrings a payload holding one of the values must contain: the value itself and
        its JSON-escaped forms (orjson keeps non-ASCII, json.dumps escapes it)."""
        out: set[str] = set()
        for v in self.values:
            out.add(v)
            out.add(orjson.dumps(v).decode()[1:-1])
            out.add(json.dumps(v)[1:-1])
        return out

    def _email_candidates(self, texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Rows holding an address variant that hashes to theirs. The email-like strings are
        found by Arrow's regex kernel (the first of each row; Python's `findall` only for rows
        with more than one '@'), each distinct one is hashed once (cached), and the rows are
        then found by substring."""
        first = pc.struct_field(pc.extract_regex(texts, _FIRST_EMAILISH), [0])
        found = set(pc.unique(pc.drop_null(first)).to_pylist())
        for text in pc.filter(texts, pc.greater(pc.count_substring(texts, "@"), 1)).to_pylist():
            found.update(EMAILISH.findall(text))
        mask = pa.array([False] * len(texts), pa.bool_())
        for v in sorted(c for c in found if self._is_theirs(c)):
            mask = pc.or_(mask, pc.match_substring(texts, v))
        return mask


def strings(value: Any) -> Iterator[str]:
    """Every string value in parsed JSON (not the keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
