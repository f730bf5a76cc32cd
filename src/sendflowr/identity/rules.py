"""Identity rules: what one event's identifiers do to the graph (pure).

Two identifiers seen on the same event link their profiles; the older universal id survives.
A link that would break a per-kind limit is refused and reported, never silently applied, so one
shared address cannot collapse thousands of people into one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from sendflowr.identity.identifiers import Identifier, sort_by_priority

# At most this many identifiers of one kind per person ("esp:*" and "ext:*" per namespace).
DEFAULT_LIMITS: Final[Mapping[str, int]] = {"email": 5, "esp": 1, "phone": 3, "ext": 3, "anon": 50}


@dataclass(frozen=True, slots=True)
class Limits:
    per_family: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    per_kind: Mapping[str, int] = field(default_factory=dict)  # overrides, e.g. "ext:shopify"

    def limit(self, kind: str) -> int:
        if kind in self.per_kind:
            return self.per_kind[kind]
        return self.per_family.get(kind.split(":", 1)[0], 10)

    def violation(
        self, identifiers: frozenset[Identifier], adding: Iterable[Identifier] | None = None
    ) -> str | None:
        """Why this set of identifiers cannot be one person, or None when it can. With
        `adding`, only the kinds being added are judged: a person already over a lowered
        limit for one kind can still gain identifiers of other kinds."""
        counts: dict[str, int] = {}
        for i in identifiers:
            counts[i.kind] = counts.get(i.kind, 0) + 1
        judged = sorted(counts) if adding is None else sorted({i.kind for i in adding})
        for kind in judged:
            limit = self.limit(kind)
            if counts[kind] > limit:
                return f"would give one person {counts[kind]} '{kind}' identifiers (limit {limit})"
        return None


class GraphView(Protocol):
    """What the rules need to know about the current graph."""

    def owner(self, identifier: Identifier) -> str | None:
        """The (root) universal id holding this identifier, if any."""

    def identifiers_of(self, universal_id: str) -> frozenset[Identifier]: ...

    def age(self, universal_id: str) -> int:
        """Creation order: lower is older."""


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    other_universal_id: str | None = None  # a profile that was not merged
    identifier: Identifier | None = None  # an identifier that was not attached


@dataclass(frozen=True, slots=True)
class Plan:
    universal_id: str
    created: bool = False
    attach: tuple[Identifier, ...] = ()
    merge: tuple[str, ...] = ()  # universal ids merged into `universal_id`, oldest first
    refused: tuple[Refusal, ...] = ()

    @property
    def changes_graph(self) -> bool:
        return self.created or bool(self.attach) or bool(self.merge)


def plan(
    graph: GraphView,
    identifiers: Sequence[Identifier],
    limits: Limits,
    new_universal_id: Callable[[Identifier], str],
) -> Plan:
    """Decide what an event with these (usable, non-blocked) identifiers does."""
    if not identifiers:
        raise ValueError("an event needs at least one usable identifier")
    ordered = sort_by_priority(set(identifiers))
    owners: list[str] = []
    for ident in ordered:
        uid = graph.owner(ident)
        if uid is not None and uid not in owners:
            owners.append(uid)
    refused: list[Refusal] = []
    if not owners:
        # A new person; the identifiers beyond a kind's limit stay unattached.
        survivor, created = new_universal_id(ordered[0]), True
        held: frozenset[Identifier] = frozenset()
    else:
        by_age = sorted(owners, key=graph.age)
        survivor, created = by_age[0], False
        held = graph.identifiers_of(survivor)
    merged: list[str] = []
    if not created:
        for other in sorted(owners, key=graph.age)[1:]:
            theirs = graph.identifiers_of(other)
            combined = held | theirs
            why = limits.violation(combined, theirs - held)
            if why is None:
                merged.append(other)
                held = combined
            else:
                refused.append(Refusal(f"merge refused: {why}", other_universal_id=other))
    attach: list[Identifier] = []
    for ident in ordered:
        if graph.owner(ident) is not None:
            continue
        combined = held | {ident}
        why = limits.violation(combined, (ident,))
        if why is None:
            attach.append(ident)
            held = combined
        else:
            refused.append(Refusal(f"identifier not linked: {why}", identifier=ident))
    return Plan(survivor, created, tuple(attach), tuple(merged), tuple(refused))
