"""Live events: new events "now" for existing profiles, appended to the brand."""

from __future__ import annotations

import copy

import numpy as np

from sendflowr.events import EventType, derive_event_id
from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim.brand import Brand


class LiveGenerator:
    """Draws metrics in the brand's historical proportions and profiles uniformly; each new
    event copies a recent event's properties of the same metric. Ids carry a per-run nonce,
    so events from two runs of the sim never share an id."""

    def __init__(self, brand: Brand, seed: int, nonce: str) -> None:
        self.brand = brand
        self._rng = np.random.default_rng(seed)
        self._nonce = nonce
        self._count = 0
        counts = np.bincount(
            brand.events.metric[: brand.history_events], minlength=len(brand.metrics)
        ).astype(np.float64)
        present = np.array([m.code in brand.templates for m in brand.metrics])
        weights = np.where(present, counts, 0.0)
        if weights.sum() <= 0:
            weights = present.astype(np.float64)
        self._p = weights / weights.sum() if weights.sum() > 0 else None

    def generate(self, n: int, now: int) -> list[int]:
        """Append `n` events at time `now` (unix seconds); returns their ordinals."""
        brand, store = self.brand, self.brand.events
        if n <= 0 or self._p is None:
            return []
        metrics = self._rng.choice(len(brand.metrics), n, p=self._p).tolist()
        profiles = self._rng.integers(0, len(brand.profiles), n).tolist()
        coins = self._rng.random(n).tolist()
        ids, rendered = [], []
        for m_code, p_idx, coin in zip(metrics, profiles, coins, strict=True):
            metric = brand.metrics[m_code]
            profile = brand.profiles[p_idx]
            ident = f"sim-live-{brand.tenant}-{self._nonce}-{self._count:08d}"
            self._count += 1
            props = copy.deepcopy(brand.templates[m_code])
            props["$event_id"] = ident
            if metric.event_type is EventType.OPENED:
                machine = profile.is_mpp and coin < 0.5
                props["machine_open"] = props["Apple Privacy Open"] = machine
            if "OrderId" in props:
                props["OrderId"] = ident + "-order"
            ids.append(ident)
            rendered.append(
                resources.render(
                    resources.event(
                        ident, now, derive_event_id("klaviyo", ident), props, profile.id, metric.id
                    )
                )
            )
        first = len(store)
        store.extend(ids, [now] * n, metrics, profiles, rendered)
        for p_idx in set(profiles):
            profile = brand.profiles[p_idx]
            profile.last_event = now if profile.last_event is None else max(profile.last_event, now)
            brand.rerender_profile(profile)
        return list(range(first, first + n))
