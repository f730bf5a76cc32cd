"""Capacity-aware planning of one campaign: who is sent at which minute (pure numpy).

Two steps, so memory stays bounded by the caller's chunk size:

1. `top_minutes(candidates, values, k)` keeps, for each row of a chunk, its k best whole
   minutes of the window (best first, ties to the earlier minute); `concat` joins chunks.
2. `plan(cands, latency_s, capacity, booked, window_first, window_last)` gives every person a
   target minute so that no trigger minute is booked above `capacity`.

top_minutes: exact under linear interpolation
---------------------------------------------
The engine scores the kinks `candidates` of a piecewise-linear curve; a whole minute between
two kinks is worth the linear interpolation of its neighbours, computed exactly as np.interp
computes it (`slope * (t - c_j) + v_j`; a kink is its own value), so the result equals the
brute force over every minute of the window bit for bit. Order: value descending, then minute.

Only a neighbourhood of each row's best minutes is evaluated. Rank minutes by (value desc,
minute asc). The k consecutive minutes centred on the row's best kink all rank at or above
(their minimum value T, their last minute t_T), so the row's k best do too: only minutes worth
>= T can qualify. The computed value is monotone within a segment between two kinks (one
slope; rounding is monotone), which gives T from the window's two ends and the kinks inside
it, and makes the qualifying minutes of a segment a run from its better end whose length
follows from the slope in closed form (with a rounding margin; flat segments keep their
earliest minutes). Those runs, typically a little over k minutes a row, are evaluated and
sorted per row; all of it is vectorised over the chunk, the grid's interpolation weights
(segment and offset of each minute) are computed once. Rows whose runs would be long (exact
ties over a long stretch) and windows of fewer than 4k minutes go to the brute force.

plan
----
Trigger minute of a target t: floor((t - latency_s) / 60) * 60. For whole-minute targets this
is a bijection (t minus the latency rounded up to whole minutes), so each trigger minute's room,
clip(capacity - booked[trigger], 0, capacity), is the room of exactly one target minute.

0. If the room over [window_first, window_last] is smaller than the audience: CapacityError.
1. Deferred acceptance by regret (vectorised, one round at a time; no loop over people). Every
   unplaced person proposes to the next candidate on their list. Each minute keeps, among the
   people it holds and its new proposers, the `room` who would lose most if turned away and
   turns the rest away (holders first on equal regret, then the lower row). Regret = value
   here minus value at the person's next candidate whose minute still has room (holders'
   regrets are refreshed when their minute is contested, as minutes fill up); 0 at the last
   candidate, whose fallback is valued like it (see 3). The turned-away move down their lists;
   positions only advance, so it ends after at most N * k proposals (in practice ~k rounds).
2. Polish: cancel negative cycles. Graph: a node per full minute plus FREE (all minutes with
   room, and the fallback). Edge x -> y: the least loss of moving one person from x to one of
   their candidates at y; FREE -> y also has the empty move (y keeps one person fewer), cost
   0. Only people at full minutes or away from their first choice can take part; their lists
   are read once per change of the set of full minutes (value at each full minute, best
   minute with room), so a round is a pass over (people x full minutes). A negative cycle
   (Bellman-Ford on this small graph) is a set of moves that keeps every full minute full and
   raises the total value; it is applied at once to as many people as keep its marginal cost
   negative (each edge's movers sorted by loss). This is cycle cancelling for the min-cost
   flow: when no negative cycle is left the assignment is optimal for the candidate lists
   (Plan.optimal). Step 1 alone is not (regret looks one step ahead: a chain of displacements
   can cost more than it saves); from its near-optimal start the polish needs tens of cycles.
   It stops early, Plan.optimal False, when the next step would exceed `budget` cells read
   (default POLISH_BUDGET, about 1.5 s at a million people). Measured (bench/bench_planner.py,
   1,000,000 people sharing one best minute, 142,500 a minute, k = 16, one core): total loss
   2.9% above the optimum after step 1 (1.1 s), 0.8% with the default budget (2.6 s), optimal
   with an unlimited one (7.6 s). Why not an auction: identical rows (everyone without
   history shares one curve) start epsilon price wars; cycle cancelling moves them in bulk.
3. People whose preferred minute has room are put back there (only ties can leave them
   elsewhere after step 2). People turned away by all k candidates take the free minutes
   nearest their preferred minute (1-D matching in rounds: each asks for the nearest minute
   with room, ties earlier; a minute keeps the nearest, then earliest-preferring, up to its
   room). A minute off their list (the list being the window's k best) is worth at most their
   last candidate's value: the plan records that value and flags them `approximate` (a minute
   that is on their list after all gets its known value).

Guarantees:
- Never above capacity: step 1 keeps at most `room` at every minute; a cycle keeps each full
  minute's count and fills a minute with room only up to its room; step 3 uses only room left.
  `room` counts `booked`.
- Everybody is placed (total room >= audience, checked first), or CapacityError.
- Nobody whose preferred minute has room in the plan is moved.
- Loss accounting: per person value(preferred) - value(assigned), summed in float64
  (Plan.total_loss); for `approximate` people it is a lower bound of their true loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

MINUTE: Final = 60
DEFAULT_K: Final = 64
_BRUTE_ROW_FACTOR: Final = 8  # a row with more than this many times k survivors: brute force
_BRUTE_CELLS: Final = 1 << 22  # rows x minutes evaluated at once by the brute force
POLISH_BUDGET: Final = 10**8  # cells the cycle-cancelling polish may read (~1.5 s at 1M)


class CapacityError(ValueError):
    """The window's free capacity cannot take the whole audience."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """Each person's k best whole minutes, best first; minute -1 / value -inf pad a row."""

    minutes: IntArray  # (n, k) target minutes, unix seconds
    values: Float32Array  # (n, k) expected engagement

    def __post_init__(self) -> None:
        if self.minutes.ndim != 2 or self.minutes.shape != self.values.shape:
            raise ValueError(
                f"minutes {self.minutes.shape} and values {self.values.shape} must be the same "
                "(n, k) shape"
            )

    def __len__(self) -> int:
        return int(self.minutes.shape[0])

    @property
    def k(self) -> int:
        return int(self.minutes.shape[1])


def concat(parts: Sequence[Candidates]) -> Candidates:
    """Join chunks of `top_minutes` (same k) in order."""
    if not parts:
        return Candidates(np.empty((0, 0), np.int64), np.empty((0, 0), np.float32))
    ks = {p.k for p in parts}
    if len(ks) != 1:
        raise ValueError(f"chunks have different k: {sorted(ks)}")
    return Candidates(
        np.concatenate([p.minutes for p in parts]).astype(np.int64, copy=False),
        np.concatenate([p.values for p in parts]).astype(np.float32, copy=False),
    )


# --------------------------------------------------------------------------- top_minutes


@dataclass(frozen=True, slots=True)
class _Grid:
    first: int  # unix seconds of the window's first minute
    minutes: int  # whole minutes in the window
    kink: IntArray  # (C,) minute index of each candidate
    seg: IntArray  # (M,) segment of each minute; the last minute is its own (slope 0)
    dx: FloatArray  # (M,) seconds from the segment's left kink


def _grid(candidates: IntArray) -> _Grid:
    c = candidates
    if c.ndim != 1 or len(c) == 0:
        raise ValueError("candidates must be a non-empty 1-D array")
    if np.any(c % MINUTE != 0):
        raise ValueError("candidates must be whole minutes (unix seconds divisible by 60)")
    if np.any(np.diff(c) <= 0):
        raise ValueError("candidates must be strictly ascending")
    first = int(c[0])
    m = int((c[-1] - first) // MINUTE) + 1
    minute = first + MINUTE * np.arange(m, dtype=np.int64)
    seg = np.searchsorted(c, minute, side="right").astype(np.int64) - 1
    dx = (minute - c[seg]).astype(np.float64)
    kink = (c - first) // MINUTE
    return _Grid(first, m, kink.astype(np.int64), seg, dx)


def _slopes(values: FloatArray, candidates: IntArray) -> FloatArray:
    """(n, C) slope per second of each segment, as np.interp computes it; 0 after the last."""
    out = np.zeros(values.shape, np.float64)
    if values.shape[1] > 1:
        out[:, :-1] = (values[:, 1:] - values[:, :-1]) / (candidates[1:] - candidates[:-1])
    return out


def _eval_flat(
    rows: IntArray, g: IntArray, slope: FloatArray, values: FloatArray, grid: _Grid
) -> FloatArray:
    """Value of minute index g for row `rows` (flat, paired arrays)."""
    width = values.shape[1]
    s = grid.seg[g]
    flat = rows * width + s
    out: FloatArray = slope.ravel()[flat] * grid.dx[g] + values.ravel()[flat]
    return out


def _top_k_dense(vals: FloatArray, idx: IntArray, k: int) -> tuple[IntArray, FloatArray]:
    """Per row, the k best of `vals` (columns in ascending minute order): value desc, ties to
    the earlier column. Returns (minute index, value), padded with -1 / -inf."""
    n, w = vals.shape
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    top_v = np.take_along_axis(vals, order, axis=1)
    top_g = np.take_along_axis(idx, order, axis=1)
    if w < k:
        top_v = np.concatenate([top_v, np.full((n, k - w), -np.inf)], axis=1)
        top_g = np.concatenate([top_g, np.full((n, k - w), -1, np.int64)], axis=1)
    top_g[top_v == -np.inf] = -1
    return top_g, top_v


def _brute(
    rows: IntArray, slope: FloatArray, values: FloatArray, grid: _Grid, k: int
) -> tuple[IntArray, FloatArray]:
    """Every minute of the window for `rows`, in row blocks of bounded size."""
    m = grid.minutes
    out_g = np.empty((len(rows), k), np.int64)
    out_v = np.empty((len(rows), k), np.float64)
    step = max(1, _BRUTE_CELLS // m)
    all_g = np.arange(m, dtype=np.int64)
    for lo in range(0, len(rows), step):
        r = rows[lo : lo + step]
        vals = slope[r][:, grid.seg] * grid.dx + values[r][:, grid.seg]
        idx = np.broadcast_to(all_g, vals.shape)
        out_g[lo : lo + step], out_v[lo : lo + step] = _top_k_dense(vals, idx, k)
    return out_g, out_v


def _threshold(
    slope: FloatArray, values: FloatArray, grid: _Grid, k: int
) -> tuple[FloatArray, IntArray]:
    """A lower bound (T, g_T) on each row's k-th best minute: the k consecutive minutes
    centred on the row's best kink all rank at or above (their minimum, their last minute).

    The computed value is monotone within a segment (one slope, rounding is monotone) and a
    kink is its own value, so that minimum is the smaller end or a kink inside."""
    n = values.shape[0]
    rows = np.arange(n, dtype=np.int64)
    best = np.argmax(values, axis=1)  # the first maximum: the earliest
    lo = np.clip(grid.kink[best] - k // 2, 0, grid.minutes - k)
    hi = lo + (k - 1)
    t = np.minimum(
        _eval_flat(rows, lo, slope, values, grid), _eval_flat(rows, hi, slope, values, grid)
    )
    first = np.searchsorted(grid.kink, lo, side="right")
    stop = np.searchsorted(grid.kink, hi, side="left")
    width = values.shape[1]
    for off in range(int((stop - first).max(initial=0))):
        j = first + off
        inside = j < stop
        t = np.where(inside, np.minimum(t, values[rows, np.minimum(j, width - 1)]), t)
    return t, hi


def _blocks(
    slope: FloatArray, values: FloatArray, grid: _Grid, t: FloatArray, g_t: IntArray, k: int
) -> tuple[IntArray, IntArray, IntArray]:
    """The minute-ordered blocks (row, start, length) that hold every minute of a row ranked at
    or above (t, g_t): its kinks that do, and the run from the better end of each segment
    whose better end is near t. Rows ascending, blocks in minute order within a row."""
    c = values.shape[1]
    kink = grid.kink
    tt = t[:, None]
    eps = np.finfo(np.float64).eps
    # rounding margin: the error of slope * dx + v is a few ulps of the values involved
    scale = np.maximum(np.abs(values.max(axis=1)), np.abs(values.min(axis=1))) + np.abs(t)
    margin = 8.0 * eps * scale
    kink_in = values >= tt
    seg_in = np.maximum(values[:, :-1], values[:, 1:]) >= (t - margin)[:, None]
    busy = np.flatnonzero(
        np.count_nonzero(kink_in, axis=1) + np.count_nonzero(seg_in, axis=1) > 2 * k + 8
    )
    if busy.size:  # rows flat at t past g_t would keep all of it: drop that exactly
        vb, tb, gb = values[busy], t[busy, None], g_t[busy, None]
        kink_in[busy] &= ~((vb == tb) & (kink[None, :] > gb))
        left = vb[:, :-1]
        seg_in[busy] &= ~((left == vb[:, 1:]) & (left == tb) & (kink[None, :-1] >= gb))
    # blocks in (row, minute) order: kink j sorts as 2j, the segment after it as 2j + 1
    kinks = np.flatnonzero(kink_in)
    segs = np.flatnonzero(seg_in)
    rk, jk = np.divmod(kinks, c)
    rs, js = np.divmod(segs, max(c - 1, 1))
    key = np.concatenate([rk * (2 * c) + 2 * jk, rs * (2 * c) + 2 * js + 1])
    order = np.argsort(key, kind="stable")  # two sorted runs: a merge
    row = np.concatenate([rk, rs])[order]

    vk, tk = values[rk, jk], t[rk]
    len_k = ((vk > tk) | ((vk == tk) & (kink[jk] <= g_t[rk]))).astype(np.int64)
    left, right = values[rs, js], values[rs, js + 1]
    step = slope[rs, js] * MINUTE  # value change per minute
    tr, mr = t[rs], margin[rs]
    interior = kink[js + 1] - kink[js] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        down = np.minimum(np.floor((left - tr + mr) / -step) + 1.0, k)  # step < 0: from the left
        up = np.floor((right - tr + mr) / step) + 1.0  # step > 0: from the right
    flat = np.where(  # step == 0: every interior minute equals left; ties go earlier
        left > tr, k, np.where(left == tr, g_t[rs] - kink[js], 0)
    ).astype(np.float64)
    n_run = np.where(step < 0, down, np.where(step > 0, up, flat))
    n_run = np.clip(np.nan_to_num(n_run, nan=0.0, posinf=0.0, neginf=0.0), 0, interior)
    len_s = n_run.astype(np.int64)
    start_s = np.where(step > 0, kink[js + 1] - len_s, kink[js] + 1)
    start = np.concatenate([kink[jk], start_s])[order]
    length = np.concatenate([len_k, len_s])[order]
    return row, start, length


def _local(
    slope: FloatArray, values: FloatArray, grid: _Grid, k: int
) -> tuple[IntArray, FloatArray, IntArray]:
    """The top k of every row whose survivors stay few; also the rows left to brute force."""
    n = values.shape[0]
    t, g_t = _threshold(slope, values, grid, k)
    row, start, length = _blocks(slope, values, grid, t, g_t, k)
    per_row = np.bincount(row, weights=length, minlength=n).astype(np.int64)
    fast = per_row <= _BRUTE_ROW_FACTOR * k
    if not fast.all():
        sel = fast[row]
        row, start, length = row[sel], start[sel], length[sel]
        per_row = np.where(fast, per_row, 0)
    total = int(per_row.sum())
    before = np.cumsum(length) - length
    g = np.repeat(start - before, length) + np.arange(total, dtype=np.int64)
    row_of = np.repeat(row, length)
    vals = _eval_flat(row_of, g, slope, values, grid)
    # dense (rows, width), each row in minute order; minutes ranked below (t, g_t) may stay,
    # the k of them that rank above outrank them anyway
    width = max(int(per_row.max(initial=0)), k)
    col = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    flat = row_of * width + col
    dense_v = np.full((n, width), -np.inf)
    dense_g = np.full((n, width), -1, np.int64)
    dense_v.ravel()[flat] = vals
    dense_g.ravel()[flat] = g
    out_g, out_v = _top_k_dense(dense_v, dense_g, k)
    return out_g, out_v, np.flatnonzero(~fast)


def top_minutes(candidates: npt.ArrayLike, values: npt.ArrayLike, k: int = DEFAULT_K) -> Candidates:
    """Each row's k best whole minutes in [candidates[0], candidates[-1]].

    `candidates`: (C,) ascending target minutes (unix seconds, whole minutes), shared by all
    rows; `values`: (n, C) the value at each, finite. Between two candidates the value is the
    linear interpolation. Sorted best first, ties to the earlier minute; rows of a window with
    fewer than k minutes are padded with minute -1 and value -inf.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    c = np.asarray(candidates, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    grid = _grid(c)
    if v.ndim != 2 or v.shape[1] != len(c):
        raise ValueError(f"values must be (n, {len(c)}), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    n = v.shape[0]
    if n == 0:
        return Candidates(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
    slope = _slopes(v, c)
    if grid.minutes <= 4 * k:
        g, val = _brute(np.arange(n, dtype=np.int64), slope, v, grid, k)
    else:
        g, val, rest = _local(slope, v, grid, k)
        if len(rest):
            g[rest], val[rest] = _brute(rest, slope, v, grid, k)
    minutes = np.where(g >= 0, grid.first + MINUTE * g, -1)
    return Candidates(minutes.astype(np.int64), val.astype(np.float32))


# --------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class Plan:
    """One target minute per person (rows in the order of the candidates)."""

    target: IntArray  # assigned target minute, unix seconds
    preferred: IntArray  # best candidate minute in the window
    value: Float32Array  # expected engagement at the target (approximate: see below)
    preferred_value: Float32Array
    moved: BoolArray  # target != preferred
    approximate: BoolArray  # placed outside its k candidates; value is their k-th (an upper bound)
    latency_s: int
    optimal: bool  # no move (chain or cycle) of people between their candidates gains value

    @property
    def moved_count(self) -> int:
        return int(self.moved.sum())

    @property
    def total_loss(self) -> float:
        """Sum over people of value(preferred) - value(assigned); a lower bound when some are
        approximate."""
        return float(
            np.sum(self.preferred_value.astype(np.float64) - self.value.astype(np.float64))
        )

    @property
    def max_shift_seconds(self) -> int:
        if len(self.target) == 0:
            return 0
        return int(np.max(np.abs(self.target - self.preferred)))

    @property
    def trigger(self) -> IntArray:
        """Trigger minute per person: floor((target - latency) / 60) * 60."""
        return trigger_minute(self.target, self.latency_s)

    def load(self) -> dict[int, int]:
        """Trigger minute -> triggers this plan books there."""
        minutes, counts = np.unique(self.trigger, return_counts=True)
        return dict(zip(minutes.tolist(), counts.tolist(), strict=True))


def trigger_minute(target: IntArray, latency_s: int) -> IntArray:
    """The trigger-minute bucket of target minutes."""
    out: IntArray = (target - latency_s) // MINUTE * MINUTE
    return out


def _free_room(
    first: int, slots: int, latency_s: int, capacity: int, booked: Mapping[int, int]
) -> IntArray:
    """Room per target minute of the window: capacity minus what its trigger minute holds."""
    trig = trigger_minute(first + MINUTE * np.arange(slots, dtype=np.int64), latency_s)
    room = np.full(slots, capacity, np.int64)
    if booked:
        keys = np.fromiter(booked.keys(), np.int64, len(booked))
        counts = np.fromiter(booked.values(), np.int64, len(booked))
        pos = (keys - int(trig[0])) // MINUTE  # a key off the minute counts in its minute
        on = (pos >= 0) & (pos < slots)
        np.add.at(room, pos[on], -counts[on])
    clipped: IntArray = np.clip(room, 0, capacity)
    return clipped


@dataclass(frozen=True, slots=True)
class _Lists:
    """The candidate lists as `plan` reads them: entries outside the window are skipped."""

    minutes: IntArray  # (n, k)
    values: Float32Array  # (n, k)
    first: int  # window_first
    last: int  # window_last

    def slot(self, rows: IntArray, col: IntArray) -> IntArray:
        """The window slot of each entry, -1 outside the window. (A minute off the whole
        minute counts in its minute here; plan refuses such a target at the end.)"""
        off = self.minutes[rows, col] - self.first
        out: IntArray = np.where((off >= 0) & (off <= self.last - self.first), off // MINUTE, -1)
        return out

    def next_inside(
        self, rows: IntArray, col: IntArray, closed: BoolArray | None = None
    ) -> IntArray:
        """The first column after `col` inside the window (and, given `closed` per slot, at a
        slot not closed); k when none."""
        k = self.minutes.shape[1]
        nxt = col + 1
        todo = np.flatnonzero(nxt < k)
        while todo.size:
            s = self.slot(rows[todo], nxt[todo])
            ok = s >= 0
            if closed is not None:
                ok[ok] = ~closed[s[ok]]
            todo = todo[~ok]
            nxt[todo] += 1
            todo = todo[nxt[todo] < k]
        return nxt


def _contest(slots: IntArray, prio: FloatArray, room: IntArray, n_slots: int) -> BoolArray:
    """Per minute, keep the `room` entries of highest priority, ties to the earlier entry
    (callers list the current holders first, each part by ascending row)."""
    keys = slots.astype(np.uint16) if n_slots <= np.iinfo(np.uint16).max else slots
    order = np.argsort(keys, kind="stable")  # 16-bit keys: a radix sort
    s = slots[order]
    head = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[head[1:], len(s)]
    ok = np.zeros(len(s), bool)
    if len(head) > 32:  # many minutes: one sort of all entries
        by_prio = order[np.argsort(-prio[order], kind="stable")]
        order = by_prio[np.argsort(keys[by_prio], kind="stable")]
        rank = np.arange(len(s)) - np.repeat(head, ends - head)
        ok[order] = rank < room[s]
        return ok
    for lo, hi in zip(head.tolist(), ends.tolist(), strict=True):
        members = order[lo:hi]  # entry order kept (stable)
        r = int(room[s[lo]])
        if hi - lo <= r:
            ok[members] = True
        elif r > 0:
            pr = prio[members]
            thr = -np.partition(-pr, r - 1)[r - 1]  # the r-th highest priority
            above = pr > thr
            ok[members[above]] = True
            ok[members[np.flatnonzero(pr == thr)[: r - int(above.sum())]]] = True
    return ok


def _defer(lists: _Lists, start: IntArray, room: IntArray) -> IntArray:
    """Deferred acceptance by regret. Returns each person's column in their list; k for those
    every candidate turned away."""
    n, k = lists.minutes.shape
    n_slots = len(room)
    pos = start.copy()  # the column proposed to / held
    scan = start + 1  # columns in (pos, scan) are outside the window or at full minutes
    held = np.full(n, n_slots, np.int64)  # slot held; n_slots: none
    prio = np.zeros(n, np.float64)
    load = np.zeros(n_slots + 1, np.int64)
    weakest = np.full(n_slots, np.inf)  # a lower bound of the holders' least regret
    flags = np.zeros(n_slots + 1, bool)

    def regret(who: IntArray, p: IntArray) -> FloatArray:
        """Loss if turned away: down to the next candidate whose minute has room (0 for the
        last one: its fallback is valued like it). Minutes only fill up, so the search
        resumes where it last stopped."""
        closed = load[:n_slots] >= room
        q = lists.next_inside(who, np.maximum(scan[who], p + 1) - 1, closed)
        scan[who] = q
        v = lists.values[who, p].astype(np.float64)
        out: FloatArray = v - np.where(q < k, lists.values[who, np.minimum(q, k - 1)], v)
        return out

    active = np.flatnonzero(pos < k)
    while active.size:
        # skip candidates at full minutes whose weakest holder would lose at least as much
        p = pos[active]
        s = lists.slot(active, p)
        r = regret(active, p)
        idx = np.flatnonzero((load[s] >= room[s]) & (r <= weakest[s]))
        while idx.size:
            d = active[idx]
            pos[d] = lists.next_inside(d, pos[d])
            idx = idx[pos[d] < k]
            d = active[idx]
            s[idx] = lists.slot(d, pos[d])
            r[idx] = regret(d, pos[d])
            idx = idx[(load[s[idx]] >= room[s[idx]]) & (r[idx] <= weakest[s[idx]])]
        alive = pos[active] < k
        active, s, r = active[alive], s[alive], r[alive]
        if not active.size:
            break
        # minutes whose proposers fit in the room left need no contest
        demand = np.bincount(s, minlength=n_slots)
        fits = demand[s] <= room[s] - load[s]
        if fits.any():
            a, sa = active[fits], s[fits]
            held[a] = sa
            prio[a] = r[fits]
            load[:n_slots] += np.bincount(sa, minlength=n_slots)
            np.minimum.at(weakest, sa, r[fits])
        contested = ~fits
        if not contested.any():
            break
        ca, cs, cr = active[contested], s[contested], r[contested]
        flags[:] = False
        flags[cs] = True
        holders = np.flatnonzero(flags[held])  # held == n_slots reads the last (False) flag
        if holders.size:  # what holders would lose has grown as minutes filled
            prio[holders] = regret(holders, pos[holders])
        people = np.concatenate([holders, ca])
        slots = np.concatenate([held[holders], cs])
        pr = np.concatenate([prio[holders], cr])
        ok = _contest(slots, pr, room, n_slots)
        win, lose = people[ok], people[~ok]
        held[win] = slots[ok]
        prio[win] = pr[ok]
        held[lose] = n_slots
        pos[lose] = lists.next_inside(lose, pos[lose])
        load[cs] = 0
        load[:n_slots] += np.bincount(slots[ok], minlength=n_slots) * flags[:n_slots]
        weakest[cs] = np.inf
        np.minimum.at(weakest, slots[ok], pr[ok])
        lose.sort()
        active = lose[pos[lose] < k]
    return pos


def _negative_cycle(cost: FloatArray, tol: float) -> list[int] | None:
    """A cycle of negative total cost in a dense graph (inf: no edge), by Bellman-Ford from a
    virtual source joined to every node; None when there is none."""
    v = cost.shape[0]
    dist = np.zeros(v)
    pred = np.full(v, -1, np.int64)
    cols = np.arange(v)
    updated = -1
    for _ in range(v + 1):
        via = dist[:, None] + cost
        src = np.argmin(via, axis=0)
        best = via[src, cols]
        upd = best < dist - tol
        if not upd.any():
            return None
        dist[upd] = best[upd]
        pred[upd] = src[upd]
        updated = int(np.flatnonzero(upd)[0])
    node = updated
    for _ in range(v):  # walk back into the cycle
        node = int(pred[node])
    cycle = [node]
    nxt = int(pred[node])
    while nxt != node:
        cycle.append(nxt)
        nxt = int(pred[nxt])
    cycle.reverse()  # edges cycle[i] -> cycle[i + 1]
    return cycle


def _slots_of(lists: _Lists, who: IntArray, room: IntArray) -> IntArray:
    """(len(who), k) slot of every candidate; -1 outside the window or at a full-booked slot."""
    off = (lists.minutes[who] - lists.first) // MINUTE
    np.clip(off, -1, len(room), out=off)
    # code[off + 1]: the slot itself, -1 before / after the window and where nothing fits
    code = np.concatenate([[-1], np.where(room > 0, np.arange(len(room)), -1), [-1]])
    out: IntArray = code[off + 1]
    return out


@dataclass(frozen=True, slots=True)
class _Reduced:
    """Candidate lists seen through the full minutes: per person, the value (and column) at
    each full minute, and their best minute with room."""

    full: BoolArray  # (slots,) the full minutes this was built for
    index: IntArray  # (n,) row in the arrays below, -1 when not covered
    at_full: Float32Array  # (m, F) value at each full minute, -inf when not a candidate
    col_full: npt.NDArray[np.int32]  # (m, F) its column
    best_open: FloatArray  # (m,) value at the best candidate minute with room, -inf none
    col_open: IntArray  # (m,) its column, -1 none


_MAX_CELLS: Final = 1 << 25  # people x full minutes the polish may hold


def _reduce(lists: _Lists, room: IntArray, full: BoolArray, who: IntArray) -> _Reduced:
    n, k = lists.minutes.shape
    n_full = int(full.sum())
    fid = np.append(np.where(full, np.cumsum(full) - 1, -1), -1)  # slot -1 reads -1
    at_full = np.full((len(who), n_full), -np.inf, np.float32)
    col_full = np.zeros((len(who), n_full), np.int32)
    best_open = np.full(len(who), -np.inf)
    col_open = np.full(len(who), -1, np.int64)
    step = max(1, (1 << 20) // k)
    for lo in range(0, len(who), step):
        r = who[lo : lo + step]
        sl = _slots_of(lists, r, room)
        vals = lists.values[r]
        f = fid[sl]
        hit_r, hit_c = np.nonzero(f >= 0)
        hit_f = f[hit_r, hit_c]
        at_full[lo + hit_r, hit_f] = vals[hit_r, hit_c]
        col_full[lo + hit_r, hit_f] = hit_c
        if np.count_nonzero(np.isfinite(at_full[lo : lo + len(r)])) != len(hit_r):
            for j in range(k - 1, -1, -1):  # a repeated minute: its first column wins
                hit = np.flatnonzero(f[:, j] >= 0)
                at_full[lo + hit, f[hit, j]] = vals[hit, j]
                col_full[lo + hit, f[hit, j]] = j
        open_ = (sl >= 0) & (f < 0)
        j = np.argmax(open_, axis=1)  # lists are sorted: the first is the best
        has = open_[np.arange(len(r)), j]
        best_open[lo : lo + step] = np.where(has, vals[np.arange(len(r)), j], -np.inf)
        col_open[lo : lo + step] = np.where(has, j, -1)
    index = np.full(n, -1, np.int64)
    index[who] = np.arange(len(who))
    return _Reduced(full, index, at_full, col_full, best_open, col_open)


def _edge_row(
    edge: FloatArray, v: int, members: IntArray, cur: FloatArray, out_value: FloatArray,
    red: _Reduced,
) -> None:  # fmt: skip
    """Recompute the edges out of node v from the people now at it (indices into the
    reduced rows; `cur` and `out_value` in the same order)."""
    free = red.at_full.shape[1]
    edge[v] = np.inf
    if members.size:
        c = cur[members]
        if free:
            edge[v, :free] = (c[:, None] - red.at_full[members]).min(axis=0)
        into = red.best_open[members]
        if v < free:
            into = np.maximum(into, out_value[members])
        edge[v, free] = (c - into).min()
    if v == free:
        edge[free, :free] = np.minimum(edge[free, :free], 0.0)  # the empty move
    else:
        edge[v, v] = np.inf


def _improve(
    lists: _Lists, room: IntArray, pos: IntArray, first: IntArray, out_value: FloatArray,
    budget: int,
) -> tuple[IntArray, bool]:  # fmt: skip
    """Cancel negative cycles of moves until none is left (optimal: True) or the work budget
    (cells read) would be exceeded.

    Graph: one node per full minute plus FREE (every minute with room, and the fallback,
    valued at the last candidate's value). Edge x -> y: the least loss of moving one person
    now at x to y; FREE -> y is also the empty move (y keeps one person fewer), cost 0. A
    negative cycle is a set of moves that keeps every full minute full and raises the total
    value; it is applied to as many people as keep its marginal cost negative. With no
    negative cycle left the assignment is optimal for the candidate lists. After a cycle only
    the edges out of its nodes change; a change of the set of full minutes rebuilds."""
    n, k = lists.minutes.shape
    n_slots = len(room)
    pos = pos.copy()
    tol = 1e-12
    work = 0

    def current(who: IntArray) -> tuple[IntArray, FloatArray]:
        placed = pos[who] < k
        col = np.minimum(pos[who], k - 1)
        slot = np.where(placed, (lists.minutes[who, col] - lists.first) // MINUTE, -1)
        val = np.where(placed, lists.values[who, col].astype(np.float64), out_value[who])
        return slot, val

    cur_slot, cur_val = current(np.arange(n, dtype=np.int64))
    load = np.bincount(cur_slot[cur_slot >= 0], minlength=n_slots)
    while True:  # one pass per set of full minutes
        full = (load >= room) & (room > 0)
        free = int(full.sum())  # the FREE node; full minutes are 0 .. free - 1
        size = free + 1
        nid = np.append(np.where(full, np.cumsum(full) - 1, free), free)  # [-1] reads FREE
        # people at their first choice with room cannot gain: they take part in no cycle
        rel = np.flatnonzero((nid[cur_slot] < free) | (pos != first))
        cost = n + len(rel) * (k + size) + size**3
        if work + cost > budget or len(rel) * free > _MAX_CELLS:
            return pos, False
        work += cost
        red = _reduce(lists, room, full, rel)  # rows in the order of rel
        x = nid[cur_slot[rel]]
        cur = cur_val[rel]
        # all edges at once: people grouped by node, least loss per group
        by_node = np.argsort(x.astype(np.uint16) if size < 1 << 16 else x, kind="stable")
        bounds = np.searchsorted(x[by_node], np.arange(size + 1))
        present = np.flatnonzero(bounds[1:] > bounds[:-1])
        edge = np.full((size, size), np.inf)
        if free:
            loss = cur[by_node, None] - red.at_full[by_node]
            edge[present, :free] = np.minimum.reduceat(loss, bounds[present], axis=0)
        into_free = np.where(x < free, np.maximum(red.best_open, out_value[rel]), red.best_open)
        edge[present, free] = np.minimum.reduceat(
            (cur - into_free)[by_node], bounds[present]
        )  # fmt: skip
        edge[free, :free] = np.minimum(edge[free, :free], 0.0)  # the empty move
        edge[np.arange(free), np.arange(free)] = np.inf

        out_rel = out_value[rel]

        while True:  # cancel cycles while the set of full minutes stays
            if edge[free, free] < -tol:  # someone gains by moving to a minute with room
                cycle: list[int] | None = [free]
            else:
                graph = edge.copy()
                graph[free, free] = np.inf
                cycle = _negative_cycle(graph, tol)
            if cycle is None:
                return pos, True
            members = {v: np.flatnonzero(x == v) for v in cycle}
            moved = _move_along(
                cycle, {v: rel[m] for v, m in members.items()}, lists, red, out_value, pos,
                cur_val, room - load, tol,
            )  # fmt: skip
            if moved is None:
                return pos, False  # (only rounding could leave the cycle without a mover)
            before = cur_slot[moved]
            cur_slot[moved], cur_val[moved] = current(moved)
            load -= np.bincount(before[before >= 0], minlength=n_slots)
            load += np.bincount(cur_slot[moved][cur_slot[moved] >= 0], minlength=n_slots)
            if not np.array_equal((load >= room) & (room > 0), full):
                break  # rebuild for the new set of full minutes
            i = red.index[moved]
            x[i] = nid[cur_slot[moved]]
            cur[i] = cur_val[moved]
            cost = len(rel) * 2 * len(cycle) + sum(len(m) for m in members.values()) * size
            cost += len(moved) * size + size**3
            if work + cost > budget:
                return pos, False
            work += cost
            for v in cycle:
                _edge_row(edge, v, np.flatnonzero(x == v), cur, out_rel, red)


def _edge_movers(
    x: int, y: int, who: IntArray, lists: _Lists, red: _Reduced, out_value: FloatArray,
    cur_val: FloatArray, spare: IntArray, limit: int,
) -> tuple[IntArray, IntArray, FloatArray, bool]:  # fmt: skip
    """The people at node x who can move to node y, cheapest first: (who, column they move to,
    loss, whether the list was cut at `limit`)."""
    k = lists.minutes.shape[1]
    free = red.at_full.shape[1]
    ri = red.index[who]
    if y < free:
        v = red.at_full[ri, y].astype(np.float64)
        dest = red.col_full[ri, y].astype(np.int64)
    else:
        v, dest = red.best_open[ri], red.col_open[ri]
        if x != free:  # the fallback is a way into FREE as well
            to_out = out_value[who] >= v
            dest = np.where(to_out, k, dest)
            v = np.where(to_out, out_value[who], v)
    c = cur_val[who] - v
    keep = np.flatnonzero(np.isfinite(c) & ((x != free) | (c < 0)))
    cut = len(keep) > limit
    if cut:  # only the cheapest can move this time
        keep = keep[np.argpartition(c[keep], limit - 1)[:limit]]
    keep = keep[np.argsort(c[keep], kind="stable")]
    who, dest, c = who[keep], dest[keep], c[keep]
    if y == free:  # a minute with room takes at most its room
        z = np.full(len(who), -1, np.int64)
        into = dest < k
        z[into] = (lists.minutes[who[into], dest[into]] - lists.first) // MINUTE
        by_z = np.argsort(z, kind="stable")
        zs = z[by_z]
        head = np.flatnonzero(np.r_[True, zs[1:] != zs[:-1]])
        rank = np.empty(len(z), np.int64)
        rank[by_z] = np.arange(len(z)) - np.repeat(head, np.diff(np.r_[head, len(z)]))
        fits = (z < 0) | (rank < spare[np.maximum(z, 0)])
        who, dest, c = who[fits], dest[fits], c[fits]
    return who, dest, c, cut


def _move_along(
    cycle: list[int], at: dict[int, IntArray], lists: _Lists, red: _Reduced,
    out_value: FloatArray, pos: IntArray, cur_val: FloatArray, spare: IntArray, tol: float,
) -> IntArray | None:  # fmt: skip
    """Move as many people along `cycle` as keep its marginal cost negative (`pos` in place);
    returns who moved, None when nobody could."""
    free = red.at_full.shape[1]
    limit = 1 << 13
    while True:
        edges = [
            _edge_movers(
                x, cycle[(i + 1) % len(cycle)], at[x], lists, red, out_value, cur_val, spare,
                limit,
            )
            for i, x in enumerate(cycle)
        ]  # fmt: skip
        # FREE -> full minute: people who gain first, then as many empty moves as needed
        virtual = [x == free and cycle[(i + 1) % len(cycle)] != free for i, x in enumerate(cycle)]
        real = [len(e[2]) for e, v in zip(edges, virtual, strict=True) if not v]
        t_max = min(real) if real else 0
        if t_max == 0:
            return None
        marginal = np.zeros(t_max)
        for (_, _, c, _), v in zip(edges, virtual, strict=True):
            m = min(len(c), t_max) if v else t_max
            marginal[:m] += c[:m]
        t = int(np.count_nonzero(marginal < -tol))
        if t == 0:
            return None
        if t < t_max or not any(e[3] for e in edges):
            break
        limit *= 8  # every listed mover moved: look further down the lists
    for who, dest, _, _ in edges:
        pos[who[:t]] = dest[:t]
    return np.concatenate([e[0][:t] for e in edges])


def _settle(lists: _Lists, room: IntArray, pos: IntArray, first: IntArray) -> None:
    """Put people whose preferred minute has room back there (in place; never a loss)."""
    n, k = lists.minutes.shape
    rows = np.arange(n, dtype=np.int64)
    pref = (lists.minutes[rows, first] - lists.first) // MINUTE
    while True:
        placed = pos < k
        col = np.minimum(pos, k - 1)
        cur = (lists.minutes[rows, col] - lists.first) // MINUTE
        spare = room - np.bincount(cur[placed], minlength=len(room))
        back = np.flatnonzero((pos != first) & (spare[pref] > 0))
        if not back.size:
            return
        s = pref[back]
        order = np.argsort(s, kind="stable")
        ss = s[order]
        head = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        rank = np.arange(len(ss)) - np.repeat(head, np.diff(np.r_[head, len(ss)]))
        go = back[order][rank < spare[ss]]
        pos[go] = first[go]


def _nearest(pref: IntArray, room: IntArray) -> IntArray:
    """Slot for each of `pref` (preferred slots): nearest with room, in rounds. Each round a
    person asks for the nearest slot with room left (ties earlier); a slot keeps the nearest
    askers (then earlier preference, then lower row) up to its room."""
    room = room.copy()
    out = np.full(len(pref), -1, np.int64)
    left = np.arange(len(pref), dtype=np.int64)
    big = np.iinfo(np.int64).max
    while left.size:
        open_ = np.flatnonzero(room > 0)
        if not open_.size:
            raise AssertionError("no room left for the fallback (capacity was checked)")
        p = pref[left]
        j = np.searchsorted(open_, p)
        after = open_[np.minimum(j, len(open_) - 1)]
        before = open_[np.maximum(j - 1, 0)]
        d_after = np.where(j < len(open_), after - p, big)
        d_before = np.where(j > 0, p - before, big)
        ask = np.where(d_before <= d_after, before, after)
        dist = np.minimum(d_before, d_after)
        order = np.lexsort((left, p, dist, ask))
        s = ask[order]
        head = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        rank = np.arange(len(s)) - np.repeat(head, np.diff(np.r_[head, len(s)]))
        ok = rank < room[s]
        got = left[order][ok]
        out[got] = s[ok]
        np.subtract.at(room, s[ok], 1)
        left = np.sort(left[order][~ok])
    return out


def _ends(lists: _Lists) -> tuple[IntArray, IntArray]:
    """Each row's first and last column inside the window (k and -1 when none)."""
    n, k = lists.minutes.shape
    first = np.full(n, k, np.int64)
    last = np.full(n, -1, np.int64)
    for out, cols in ((first, range(k)), (last, range(k - 1, -1, -1))):
        todo = np.arange(n, dtype=np.int64)
        for j in cols:
            if not todo.size:
                break
            ok = lists.slot(todo, np.full(len(todo), j, np.int64)) >= 0
            out[todo[ok]] = j
            todo = todo[~ok]
    return first, last


def plan(
    cands: Candidates,
    latency_s: int,
    capacity: int,
    booked: Mapping[int, int],
    window_first: int,
    window_last: int,
    *,
    budget: int = POLISH_BUDGET,
) -> Plan:
    """Assign every person a target minute in [window_first, window_last] so that no trigger
    minute (floor((target - latency_s) / 60) * 60) holds more than `capacity` triggers,
    counting `booked` (trigger minute -> triggers other campaigns hold there).

    Candidates outside the window are skipped; every person needs at least one inside.
    Raises CapacityError when the window's free room is smaller than the audience.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 a minute, got {capacity}")
    if window_first % MINUTE or window_last % MINUTE:
        raise ValueError("window_first and window_last must be whole minutes")
    if window_last < window_first:
        raise ValueError("window_last is before window_first")
    n = len(cands)
    slots = (window_last - window_first) // MINUTE + 1
    room = _free_room(window_first, slots, latency_s, capacity, booked)
    free = int(room.sum())
    if free < n:
        need = -(-n // capacity)
        raise CapacityError(
            f"the audience of {n} people does not fit: the ESP takes {capacity} triggers a "
            f"minute and the window's {slots} minutes have room for {free} (after "
            f"{slots * capacity - free} already booked); {n} people need at least {need} "
            f"minutes at {capacity} a minute"
        )
    if n == 0:
        e_i, e_f, e_b = np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, bool)
        return Plan(e_i, e_i, e_f, e_f, e_b, e_b, int(latency_s), True)
    values = np.asarray(cands.values, np.float32)
    if cands.k > 1 and not np.all(values[:, 1:] <= values[:, :-1]):
        raise ValueError("candidate values must be sorted best first (and not NaN)")
    lists = _Lists(np.asarray(cands.minutes, np.int64), values, window_first, window_last)
    first, last = _ends(lists)
    if np.any(first == cands.k):
        bad = int(np.flatnonzero(first == cands.k)[0])
        raise ValueError(f"row {bad} has no candidate minute in the window")
    rows = np.arange(n, dtype=np.int64)
    pref_value = values[rows, first]
    last_value = values[rows, last]
    if not (np.all(np.isfinite(pref_value)) and np.all(np.isfinite(last_value))):
        raise ValueError("candidate values in the window must be finite")
    preferred = lists.minutes[rows, first]

    pos = _defer(lists, first, room)
    pos, optimal = _improve(lists, room, pos, first, last_value.astype(np.float64), budget)
    _settle(lists, room, pos, first)
    placed = pos < cands.k
    col = np.minimum(pos, cands.k - 1)
    target = np.where(placed, lists.minutes[rows, col], -1)
    value = np.where(placed, values[rows, col], last_value)
    approximate = ~placed
    if approximate.any():
        out = np.flatnonzero(approximate)
        taken = np.bincount((target[placed] - window_first) // MINUTE, minlength=slots)
        got = window_first + MINUTE * _nearest(
            (preferred[out] - window_first) // MINUTE, room - taken
        )
        target[out] = got
        # if the minute is one of the person's candidates after all, its value is known
        match = lists.minutes[out] == got[:, None]
        known = match.any(axis=1)
        if known.any():
            j = np.argmax(match[known], axis=1)
            value[out[known]] = values[out[known], j]
            approximate[out[known]] = False
    if np.any(target % MINUTE):
        raise ValueError("candidate minutes must be whole minutes")
    return Plan(
        target=target.astype(np.int64),
        preferred=preferred.astype(np.int64),
        value=value.astype(np.float32),
        preferred_value=pref_value.astype(np.float32),
        moved=target != preferred,
        approximate=approximate,
        latency_s=int(latency_s),
        optimal=optimal,
    )
