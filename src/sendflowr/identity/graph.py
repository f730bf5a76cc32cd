"""An in-memory identity graph that applies plans and records what changed (pure).

The store loads the part of the graph a batch touches into a `Graph`, runs the rules event by
event against it, then persists the recorded changes in one transaction. Property tests use it
directly as the serial reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sendflowr.identity.identifiers import Identifier
from sendflowr.identity.rules import Limits, Plan, Refusal, plan


@dataclass(frozen=True, slots=True)
class Created:
    universal_id: str
    source_event_id: str


@dataclass(frozen=True, slots=True)
class Attached:
    universal_id: str
    identifier: Identifier
    source_event_id: str


@dataclass(frozen=True, slots=True)
class Merged:
    survivor: str
    merged: str
    moved: tuple[Identifier, ...]
    source_event_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    universal_id: str
    refusal: Refusal
    source_event_id: str


Change = Created | Attached | Merged | Refused


@dataclass
class Graph:
    owner_of: dict[Identifier, str] = field(default_factory=dict)
    members: dict[str, set[Identifier]] = field(default_factory=dict)
    ages: dict[str, int] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    _next_age: itertools.count[int] = field(default_factory=lambda: itertools.count(1 << 62))

    # -- GraphView --------------------------------------------------------------------------
    def owner(self, identifier: Identifier) -> str | None:
        return self.owner_of.get(identifier)

    def identifiers_of(self, universal_id: str) -> frozenset[Identifier]:
        return frozenset(self.members.get(universal_id, ()))

    def age(self, universal_id: str) -> int:
        return self.ages[universal_id]

    # -- loading ----------------------------------------------------------------------------
    def add_profile(self, universal_id: str, age: int, identifiers: Iterable[Identifier]) -> None:
        self.ages[universal_id] = age
        held = self.members.setdefault(universal_id, set())
        for ident in identifiers:
            held.add(ident)
            self.owner_of[ident] = universal_id

    # -- applying ---------------------------------------------------------------------------
    def resolve(
        self,
        identifiers: Sequence[Identifier],
        limits: Limits,
        new_universal_id: Callable[[Identifier], str],
        source_event_id: str,
    ) -> Plan:
        # Fast path, the common case: every identifier already belongs to one person.
        first = self.owner_of.get(identifiers[0])
        if first is not None and all(self.owner_of.get(i) == first for i in identifiers[1:]):
            return Plan(first)
        p = plan(self, identifiers, limits, new_universal_id)
        self.apply(p, source_event_id)
        return p

    def apply(self, p: Plan, source_event_id: str) -> None:
        uid = p.universal_id
        if p.created:
            if uid in self.ages:
                raise ValueError(f"universal id {uid} exists already; refusing to reuse it")
            self.ages[uid] = next(self._next_age)
            self.members[uid] = set()
            self.changes.append(Created(uid, source_event_id))
        for other in p.merge:
            moved = tuple(sorted(self.members.pop(other, set())))
            for ident in moved:
                self.owner_of[ident] = uid
            self.members[uid].update(moved)
            self.changes.append(Merged(uid, other, moved, source_event_id))
        for ident in p.attach:
            self.owner_of[ident] = uid
            self.members[uid].add(ident)
            self.changes.append(Attached(uid, ident, source_event_id))
        for refusal in p.refused:
            self.changes.append(Refused(uid, refusal, source_event_id))

    def split(
        self, survivor: str, merged: str, moved: Iterable[Identifier], age: int
    ) -> list[Identifier]:
        """Undo a merge: the identifiers it moved that `survivor` still holds go back to
        `merged`. Returns them."""
        back = [i for i in moved if self.owner_of.get(i) == survivor]
        self.ages.setdefault(merged, age)
        held = self.members.setdefault(merged, set())
        for ident in back:
            self.members[survivor].discard(ident)
            held.add(ident)
            self.owner_of[ident] = merged
        return back

    def partition(self) -> set[frozenset[Identifier]]:
        """The people, as sets of identifiers (universal ids aside)."""
        return {frozenset(m) for m in self.members.values() if m}
