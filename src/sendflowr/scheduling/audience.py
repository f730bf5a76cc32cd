"""An audience as the ESP and the identity graph both know it: who to address, and who it is.

Each recipient keeps the identifier it was given (the ESP call addresses the person by it) and
gets the universal id it resolves to; a stranger gets the id they will have when first seen, so
nobody is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sendflowr.connectors.klaviyo.normalize import EXTERNAL_ID_NAMESPACE
from sendflowr.errors import InvalidInputError
from sendflowr.identity.identifiers import Identifier, IdentifierError, parse_lookup
from sendflowr.identity.store import IdentityGraphStore

ADDRESSABLE: Final = ("email", "klaviyo_id", "phone", "external_id")
MAX_ERRORS: Final = 1000


@dataclass(frozen=True, slots=True)
class Recipient:
    type: str  # email | klaviyo_id | phone | external_id
    value: str


@dataclass(frozen=True, slots=True)
class ResolvedAudience:
    recipients: list[Recipient]  # deduplicated by universal id, first kept
    universal_ids: list[str]
    known: list[bool]
    duplicates: int  # recipients dropped because an earlier one is the same person


def _lookup_type(r: Recipient) -> str:
    # the ESP's external id: the namespace the Klaviyo connector files it under
    return f"external:{EXTERNAL_ID_NAMESPACE}" if r.type == "external_id" else r.type


def resolve(
    identity: IdentityGraphStore,
    hash_key: bytes,
    tenant: str,
    recipients: Sequence[Recipient],
    loc: tuple[str | int, ...] = ("body", "audience", "recipients"),
) -> ResolvedAudience:
    """Resolve every recipient; any bad one rejects the whole audience (each listed, up to
    1,000), so a schedule is never silently partial."""
    idents: list[Identifier] = []
    errors: list[dict[str, Any]] = []
    for i, r in enumerate(recipients):
        if r.type not in ADDRESSABLE:
            errors.append(
                {"loc": [*loc, i, "type"], "msg": f"one of {list(ADDRESSABLE)}", "type": "enum"}
            )
            continue
        try:
            idents.append(parse_lookup(_lookup_type(r), r.value, hash_key, identity.blocklist))
        except IdentifierError as exc:
            errors.append({"loc": [*loc, i, exc.field], "msg": exc.reason, "type": "value_error"})
        if len(errors) >= MAX_ERRORS:
            break
    if errors:
        raise InvalidInputError(errors)
    owners = identity.owners(tenant, idents)
    aliases = identity.alias_map(tenant)
    seen: set[str] = set()
    out_r: list[Recipient] = []
    uids: list[str] = []
    known: list[bool] = []
    for r, ident in zip(recipients, idents, strict=True):
        owner = owners.get(ident)
        if owner is not None:
            uid, is_known = aliases.get(owner, owner), True
        else:
            uid, is_known = identity.new_universal_id(tenant, ident), False
        if uid in seen:
            continue
        seen.add(uid)
        out_r.append(Recipient(r.type, r.value.strip()))
        uids.append(uid)
        known.append(is_known)
    return ResolvedAudience(out_r, uids, known, len(recipients) - len(out_r))
