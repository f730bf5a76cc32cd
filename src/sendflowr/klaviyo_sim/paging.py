"""Cursor pagination over small in-memory collections (offset cursors bound to the query)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sendflowr.klaviyo_sim.filters import NEXT, Condition, fingerprint
from sendflowr.klaviyo_sim.state import Ctx

T = TypeVar("T")


def query_fingerprint(ctx: Ctx, conditions: Sequence[Condition], sort: str) -> bytes:
    return fingerprint(ctx.operation, ctx.params, sorted(map(repr, conditions)), sort)


def page_of(
    ctx: Ctx, items: Sequence[T], size: int, query: bytes
) -> tuple[Sequence[T], str | None, str | None]:
    """The page `page[cursor]` names (or the first) and its next/prev links."""
    token = ctx.query.get("page[cursor]")
    offset = 0
    if token:
        offset, _direction = ctx.state.cursors.decode(token, query)
        offset = max(0, min(offset, len(items)))
    chunk = items[offset : offset + size]
    next_url = prev_url = None
    if offset + size < len(items):
        next_url = ctx.link(ctx.state.cursors.encode(query, offset + size, NEXT))
    if offset > 0:
        prev_url = ctx.link(ctx.state.cursors.encode(query, max(0, offset - size), NEXT))
    return chunk, next_url, prev_url
