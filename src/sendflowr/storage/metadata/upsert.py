"""INSERT ... ON CONFLICT for both metadata backends (SQLite and PostgreSQL speak the same)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def _insert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def upsert(
    conn: Connection,
    table: sa.Table,
    values: Mapping[str, Any],
    keys: Sequence[str],
    update: Sequence[str] | None = None,
) -> None:
    """Insert `values`; on a key conflict update the `update` columns (default: all others)."""
    stmt = _insert(conn, table).values(**values)
    columns = update if update is not None else [c for c in values if c not in keys]
    if columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing()
    conn.execute(stmt)


def insert_ignore(conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> int:
    """Insert unless the key exists; returns 1 when a row was inserted, else 0."""
    first_key = next(iter(table.primary_key.columns))
    stmt = _insert(conn, table).values(**values).on_conflict_do_nothing().returning(first_key)
    # RETURNING, not rowcount: psycopg reports no rowcount for INSERT ... ON CONFLICT.
    return 1 if conn.execute(stmt).first() is not None else 0
