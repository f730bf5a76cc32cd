"""Struct fields as columns, worked out once per batch (pure, no I/O).

The ingest path reads the same events column-wise three times: the batch decoder's checks,
identity resolution (the identifier columns) and the Arrow conversion. `columns` transposes a
sequence of msgspec structs in one C-level pass (`msgspec.structs.astuple` under `zip`);
`remember` keeps the last few results of this thread, so a later `columns` call over the very
same struct objects, in the same order, reuses them instead of transposing again. Reuse is
decided by object identity, element by element, so it is never stale for a different batch;
a struct changed in place after `remember` (the decoder normalises `event_id` and
`occurred_at` before it remembers) would be, so remember only finished structs.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import msgspec

Columns = Mapping[str, tuple[Any, ...]]

_KEEP: Final = 4  # the events of a batch and their identifiers, with room to spare
_local = threading.local()


def columns(structs: Sequence[msgspec.Struct]) -> Columns:
    """Field name -> that field's values, in order. The structs must share one field layout
    (a subclass that only narrows field types has its parent's)."""
    recent: list[tuple[Sequence[msgspec.Struct], Columns]] = getattr(_local, "recent", [])
    for source, cols in recent:
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
    """Keep `cols` as the columns of `structs` (this thread's last few batches)."""
    recent: list[tuple[Sequence[msgspec.Struct], Columns]] = getattr(_local, "recent", [])
    # A copy: a list changed afterwards must not pass for the structs these columns are of.
    _local.recent = [(tuple(structs), cols), *recent[: _KEEP - 1]]


def forget() -> None:
    """Drop what this thread remembers (the structs it holds on to)."""
    _local.recent = []
