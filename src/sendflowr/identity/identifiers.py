"""Identifiers: their kinds, normalisation, blocked values and priority (pure).

An identifier is a (kind, value) pair scoped to a tenant. Kinds:
- `email`: the keyed hash of the trimmed, lower-cased address (plaintext never travels);
- `phone`: E.164, parsed with `phonenumbers` (unparseable numbers are refused, not guessed);
- `esp:<name>`: an ESP's profile id, e.g. `esp:klaviyo`;
- `ext:<name>`: an external id, e.g. `ext:shopify`;
- `anon`: an anonymous id (cookie, device).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import phonenumbers

from sendflowr.events import Identifiers
from sendflowr.identity.hashing import hash_email

EMAIL: Final = "email"
PHONE: Final = "phone"
ANON: Final = "anon"
ESP_PREFIX: Final = "esp:"
EXT_PREFIX: Final = "ext:"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Values that identify nobody: placeholders systems write when they know nothing.
DEFAULT_BLOCKED_VALUES: Final = frozenset(
    {"", "null", "none", "nil", "undefined", "anonymous", "unknown", "n/a", "0", "-1"}
)
DEFAULT_BLOCKED_PATTERNS: Final = (r"^0+$", r"^-+$", r"^[\s.]+$")


class IdentifierError(ValueError):
    """An identifier was refused; `field` names it and the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Identifier(NamedTuple):
    """A tuple, so hashing and comparing it (done millions of times) runs in C."""

    kind: str
    value: str

    @property
    def family(self) -> str:
        """The kind without its namespace: email, phone, esp, ext or anon."""
        return self.kind.split(":", 1)[0]


_FAMILY_PRIORITY: Final = {"email": 0, "esp": 1, "phone": 2, "ext": 3, "anon": 4}


@functools.cache
def kind_priority(kind: str) -> int:
    """Lower is more trusted: emails outlive ESP ids, which outlive phones, and so on."""
    return _FAMILY_PRIORITY.get(kind.split(":", 1)[0], 9)


@dataclass(frozen=True, slots=True)
class Blocklist:
    values: frozenset[str] = DEFAULT_BLOCKED_VALUES
    patterns: tuple[str, ...] = DEFAULT_BLOCKED_PATTERNS
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        combined = "|".join(f"(?:{p})" for p in self.patterns) or r"(?!)"
        object.__setattr__(self, "_compiled", (re.compile(combined),))

    def blocks(self, value: str) -> bool:
        v = value.strip().lower()
        return v in self.values or self._compiled[0].search(v) is not None


def normalise_phone(raw: str, default_region: str | None = None) -> str:
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise IdentifierError("phone", f"cannot be parsed ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise IdentifierError("phone", f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def namespaced(prefix: str, name: str) -> str:
    if not _NAME.match(name):
        raise IdentifierError("type", f"{name!r} is not a valid namespace (a-z, 0-9, '_')")
    return prefix + name


def parse_lookup(
    id_type: str, value: str, hash_key: bytes, blocklist: Blocklist | None = None
) -> Identifier:
    """An identifier named by an operator or API client: `type` as in the API
    (email, phone, klaviyo_id, esp:<name>, external:<name>, anonymous)."""
    blocklist = blocklist or Blocklist()
    if blocklist.blocks(value):
        raise IdentifierError("value", f"{value[:40]!r} is a blocked placeholder value")
    match id_type:
        case "email":
            try:
                return Identifier(EMAIL, hash_email(hash_key, value))
            except ValueError as exc:
                raise IdentifierError("value", str(exc)) from None
        case "phone":
            try:
                return Identifier(PHONE, normalise_phone(value))
            except IdentifierError as exc:
                raise IdentifierError("value", exc.reason) from None
        case "klaviyo_id":
            return Identifier(ESP_PREFIX + "klaviyo", value.strip())
        case "anonymous" | "anon":
            return Identifier(ANON, value.strip())
        case _ if id_type.startswith("esp:"):
            return Identifier(namespaced(ESP_PREFIX, id_type[4:]), value.strip())
        case _ if id_type.startswith(("external:", "ext:")):
            return Identifier(namespaced(EXT_PREFIX, id_type.split(":", 1)[1]), value.strip())
        case _:
            raise IdentifierError(
                "type",
                f"unknown identifier type {id_type!r}; expected email, phone, klaviyo_id, "
                "esp:<name>, external:<name> or anonymous",
            )


@dataclass(frozen=True, slots=True)
class EventIdentifiers:
    usable: tuple[Identifier, ...]  # in priority order
    blocked: tuple[Identifier, ...]


def from_event(esp: str, ids: Identifiers, blocklist: Blocklist) -> EventIdentifiers:
    """The identifiers a canonical event carries, blocked placeholders set aside."""
    found: list[Identifier] = []
    if ids.email_hash:
        found.append(Identifier(EMAIL, ids.email_hash))
    if ids.esp_profile_id:
        found.append(Identifier(ESP_PREFIX + esp, ids.esp_profile_id))
    if ids.phone:
        found.append(Identifier(PHONE, ids.phone))
    for name, value in sorted(ids.external_ids.items()):
        found.append(Identifier(EXT_PREFIX + name.lower(), value))
    if ids.anonymous_id:
        found.append(Identifier(ANON, ids.anonymous_id))
    blocked = [i for i in found if i.kind != EMAIL and blocklist.blocks(i.value)]
    # Stripped like parse_lookup strips, so " abc" on an event is found as "abc".
    usable = [Identifier(i.kind, i.value.strip()) for i in found if i not in blocked]
    return EventIdentifiers(tuple(sort_by_priority(usable)), tuple(blocked))


def _priority_key(i: Identifier) -> tuple[int, str, str]:
    return (kind_priority(i.kind), i.kind, i.value)


def sort_by_priority(identifiers: Iterable[Identifier]) -> list[Identifier]:
    return sorted(identifiers, key=_priority_key)


def count_by_limit_key(identifiers: Sequence[Identifier] | frozenset[Identifier]) -> dict[str, int]:
    """Counts per limit key: ESP ids are limited per ESP, external ids per namespace."""
    out: dict[str, int] = {}
    for i in identifiers:
        out[i.kind] = out.get(i.kind, 0) + 1
    return out
