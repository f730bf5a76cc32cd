"""Audience archetypes: a mixture of activity shapes fitted on a tenant's people (pure numpy).

A person with a few engagements says little on their own, but enough to tell which kind of
person they are: an early bird, an evening reader, someone nine hours east of the brand. The
tenant's people's curves (hour of the local week) are fitted by EM as a mixture of K
multinomial shapes; a person's prior curve is then the posterior mixture of those shapes given
their own hours, instead of the audience's single mean curve (which is the same mixture with
the prior weights, so a person without history still gets the audience). Fitted where the
audience is built (production: the tenant's audience, refreshed every few minutes; the
replay: every day), never on what is being predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from sendflowr.timing.activity import BINS, HOURS, FloatArray, quarter_sums

_PER_HOUR: Final = BINS // HOURS
_FLOOR: Final = 0.02  # share of the audience shape mixed into every archetype (no zero hours)


@dataclass(frozen=True, slots=True)
class Archetypes:
    curves: FloatArray  # (K, BINS) each summing to 1: what the engine scores
    log_hourly: FloatArray  # (K, HOURS) log of each shape by hour: the posterior's likelihood
    log_prior: FloatArray  # (K,)

    def __len__(self) -> int:
        return len(self.log_prior)

    def posterior(self, bins: npt.NDArray[np.float32] | FloatArray) -> FloatArray:
        """(rows, K) P(archetype | the row's curve); rows without weight get the prior."""
        hourly = quarter_sums(bins.reshape(len(bins), HOURS, _PER_HOUR)).astype(np.float64)
        ll = hourly @ self.log_hourly.T + self.log_prior[None, :]
        ll -= ll.max(axis=1, keepdims=True)
        p = np.exp(ll)
        out: FloatArray = p / p.sum(axis=1, keepdims=True)
        return out


def fit_archetypes(
    bins: npt.NDArray[np.float32] | FloatArray,
    k: int,
    iterations: int = 40,
    seed: int = 0,
) -> Archetypes | None:
    """EM for a K-shape multinomial mixture over the rows' curves (rows: people). None when
    fewer than two rows have weight. Deterministic for a seed."""
    x15 = np.asarray(bins, np.float64)
    x15 = x15[x15.sum(axis=1) > 0]
    k = min(k, len(x15))
    if k < 2:
        return None
    x = x15.reshape(len(x15), HOURS, _PER_HOUR).sum(axis=2)
    # the floor: the audience shape with a little of every hour (no shape rules an hour out)
    mean = 0.9 * x.sum(axis=0) / x.sum() + 0.1 / HOURS
    # k-means++ style start on normalised curves: spread-out, seeded
    rng = np.random.default_rng(seed)
    norm = x / x.sum(axis=1, keepdims=True)
    first = int(rng.integers(len(norm)))
    centres = [norm[first]]
    d = ((norm - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d.sum()
        pick = (
            int(rng.choice(len(norm), p=d / total)) if total > 0 else int(rng.integers(len(norm)))
        )
        centres.append(norm[pick])
        d = np.minimum(d, ((norm - norm[pick]) ** 2).sum(axis=1))
    shapes = (1 - _FLOOR) * np.array(centres) + _FLOOR * mean
    prior = np.full(k, 1.0 / k)
    resp = np.zeros((len(x), k))
    for _ in range(iterations):
        ll = x @ np.log(shapes).T + np.log(prior)[None, :]
        ll -= ll.max(axis=1, keepdims=True)
        resp = np.exp(ll)
        resp /= resp.sum(axis=1, keepdims=True)
        mass = resp.T @ x
        shapes = mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-300)
        shapes = (1 - _FLOOR) * shapes + _FLOOR * mean
        prior = np.maximum(resp.sum(axis=0), 1e-9)
        prior /= prior.sum()
    fine = resp.T @ x15
    fine_mean = 0.9 * x15.sum(axis=0) / x15.sum() + 0.1 / BINS
    fine = fine / np.maximum(fine.sum(axis=1, keepdims=True), 1e-300)
    curves = (1 - _FLOOR) * fine + _FLOOR * fine_mean
    return Archetypes(curves, np.log(shapes), np.log(prior))
