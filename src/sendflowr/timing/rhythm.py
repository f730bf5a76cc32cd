"""A person's UTC offset estimated from their rhythm, when the ESP gives no zone (pure numpy).

People keep local hours: the shape of someone's week, read in UTC, is a local shape shifted by
their offset. For every whole quarter hour from UTC-12 to UTC+14 the person's weighted activity
is scored by its log-likelihood under a reference local shape moved by that offset (the
global prior, or an audience curve of people whose zone is known); the posterior over offsets
(flat prior) gives the estimate and a confidence: its mass within an hour of the estimate.

How to call it, e.g. for quiet hours when the ESP has no zone for a person:

    est = estimate_utc_offset(profile.bins, frame_offset_s=tenant_offset_s)
    if est is not None and est.confident:
        zone = est.offset_s  # a fixed offset: the engine accepts ZoneInfo | int

`profile.bins` is the person's activity profile (local-week bins in the tenant's zone; that
zone's UTC offset is `frame_offset_s`; pass 0 for a profile built in UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from sendflowr.timing.activity import BIN_MINUTES, BINS, FloatArray, global_prior

QUARTER_S: Final = BIN_MINUTES * 60
OFFSETS_S: Final = np.arange(-12 * 3_600, 14 * 3_600 + 1, QUARTER_S, dtype=np.int64)
MIN_EVIDENCE: Final = 5.0  # weighted engagements below which there is no estimate
MIN_CONFIDENCE: Final = 0.6


@dataclass(frozen=True, slots=True)
class OffsetEstimate:
    offset_s: int  # estimated UTC offset (local = utc + offset)
    confidence: float  # posterior mass within an hour of it
    evidence: float  # weighted engagements it rests on

    @property
    def confident(self) -> bool:
        return self.confidence >= MIN_CONFIDENCE and self.evidence >= MIN_EVIDENCE


def estimate_utc_offset(
    bins: npt.NDArray[np.float32] | FloatArray,
    frame_offset_s: int = 0,
    reference: FloatArray | None = None,
    min_evidence: float = MIN_EVIDENCE,
) -> OffsetEstimate | None:
    """The person's UTC offset from their week curve `bins` (local bins of a frame whose UTC
    offset is `frame_offset_s`); None below `min_evidence` weighted engagements.

    `reference`: a local-week shape (BINS values; default the global prior). It is smoothed
    toward uniform a little so no offset is ruled out by one odd engagement.
    """
    x = np.asarray(bins, np.float64)
    evidence = float(x.sum())
    if evidence < min_evidence or evidence <= 0:
        return None
    ref = global_prior() if reference is None else np.asarray(reference, np.float64)
    ref = ref / ref.sum()
    log_ref = np.log(0.95 * ref + 0.05 / BINS)
    # person's bins in UTC: frame bin b is UTC bin b - frame_shift
    frame_shift = frame_offset_s // QUARTER_S
    # candidate offset o: the person's local bin = UTC bin + o = frame bin - frame_shift + o
    shifts = (OFFSETS_S // QUARTER_S - frame_shift) % BINS
    idx = (np.arange(BINS)[None, :] + shifts[:, None]) % BINS
    ll = log_ref[idx] @ x  # (offsets,)
    post = np.exp(ll - ll.max())
    post /= post.sum()
    best = int(np.argmax(post))
    near = np.abs(OFFSETS_S - OFFSETS_S[best]) <= 3_600
    return OffsetEstimate(int(OFFSETS_S[best]), float(post[near].sum()), evidence)
