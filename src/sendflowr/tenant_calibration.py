"""A tenant's confidence map, fitted on its past decisions and what followed them.

The decisions come from `timing_explanations` (the engine's confidence before any map, so a
map is never fitted on its own output); what followed comes from the events the audience
build already read (`EngagementArrays`): a decision counts when the person was delivered a
message between its trigger and 30 minutes after its target (the send it timed, by whichever
ESP or caller made it), and it came true when a real engagement (not a machine open) of
theirs followed before the target plus the horizon (flagged machine opens, and engagements
within seconds of the person's latest delivery, are not). People are matched as they are
now: a decision's id and each stored event's id are taken to the person they were merged
into, so the events of a merged person count for the decisions made for either id. The fit
itself is pure: `timing.calibration`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from sendflowr.events import EventType
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.storage.events.base import EngagementArrays, EventStore
from sendflowr.storage.features.rebuild import resolve_aliases
from sendflowr.timing.calibration import (
    DELIVERED_WITHIN_S,
    MAX_DECISIONS,
    Calibration,
    decision_outcomes,
    fit_calibration,
)
from sendflowr.timing.features import ENGAGEMENT_WEIGHTS


def tenant_calibration(
    events: EventStore,
    identity: IdentityGraphStore,
    tenant: str,
    arrays: EngagementArrays,
    since: int,
    now: int,
    horizon_s: int,
    machine_open_s: float,
) -> Calibration | None:
    """The map for `tenant` from its decisions targeted since `since` whose outcome is known
    by `now` (UTC seconds), or None (too few acted on: confidences stand as stated). The
    merged ids (`identity.alias_map`) are read only when there are decisions to match."""
    until = now - horizon_s - DELIVERED_WITHIN_S
    if until <= since or len(arrays) == 0:
        return None
    past = events.decision_confidences(
        tenant, datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC),
        MAX_DECISIONS,
    )  # fmt: skip
    if len(past) == 0:
        return None
    aliases = identity.alias_map(tenant)
    # everyone as the person they are now: stored ids and decisions' ids to their survivor
    code = {u: i for i, u in enumerate(arrays.universal_ids)}  # stored ids are distinct
    root_code = np.arange(len(code), dtype=np.int64)
    for merged in aliases.keys() & code.keys():  # few: the ids merged away
        root_code[code[merged]] = code.setdefault(resolve_aliases(aliases, merged), len(code))
    decided = [code.get(resolve_aliases(aliases, u), -1) for u in past.universal_ids]
    person = np.array(decided, np.int64)[past.uid_code]
    event_person = root_code[arrays.uid_code]
    kind = np.asarray(arrays.event_types, dtype=object)
    delivery = (kind == EventType.RECEIVED.value)[arrays.type_code]
    engagement = np.isin(kind, list(ENGAGEMENT_WEIGHTS))[arrays.type_code] & ~arrays.is_machine_open
    acted, engaged = decision_outcomes(
        person, past.trigger_ms // 1000, past.target_ms // 1000,
        event_person, arrays.utc_ms // 1000, delivery, engagement, horizon_s,
        machine_open_s=machine_open_s,
    )  # fmt: skip
    return fit_calibration(past.model_confidence[acted], engaged[acted])
