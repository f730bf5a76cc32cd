"""Struct fields as columns, worked out once per batch (pure, no I/O).

The ingest path reads the same events column-wise three times: the batch decoder's checks,
identity resolution (the identifier columns) and the Arrow conversion. `columns` transposes a
sequence of msgspec structs in one C-level pass (`msgspec.structs.astuple` under `zip`);
`remember` keeps the last few results of the process, so a later `columns` call over the very
same struct objects, in the same order, reuses them instead of transposing again. Process-wide
rather than per thread, so that `forget` (a data-subject erasure) drops every thread's copies
of the identifiers. Reuse is decided by object identity, element by element, so it is never
stale for a different batch; a struct changed in place after `remember` (the decoder
normalises `event_id` and `occurred_at` before it remembers) would be, so remember only
finished structs.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import msgspec

Columns = Mapping[str, tuple[Any, ...]]

# The events of a batch and their identifiers, for a few batches in flight at once
# (concurrent webhook deliveries), with room to spare.
_KEEP: Final = 6
# (structs, their columns), newest first; replaced as a whole (one atomic store), never changed.
_recent: list[tuple[Sequence[msgspec.Struct], Columns]] = []


def columns(structs: Sequence[msgspec.Struct]) -> Columns:
    """Field name -> that field's values, in order. The structs must share one field layout
    (a subclass that only narrows field types has its parent's)."""
    for source, cols in _recent:
        if source is structs or (
            len(source) == len(structs) and all(map(operator.is_, source, structs))
        ):
            return cols
    if not structs:
        return {}
    layouts = {cast(type[msgspec.Struct], t).__struct_fields__ for t in set(map(type, structs))}
    if len(layouts) != 1:
        raise TypeError(f"structs of {len(layouts)} different field layouts")
    (fields,) = layouts
    return dict(zip(fields, zip(*map(msgspec.structs.astuple, structs), strict=True), strict=True))


def remember(structs: Sequence[msgspec.Struct], cols: Columns) -> None:
    """Keep `cols` as the columns of `structs` (the process's last few batches)."""
    global _recent
    # A copy: a list changed afterwards must not pass for the structs these columns are of.
    _recent = [(tuple(structs), cols), *_recent[: _KEEP - 1]]


def forget() -> None:
    """Drop what is remembered (the structs it holds on to)."""
    global _recent
    _recent = []
