"""Tenant send policies (quiet hours, frequency cap, breakers, cool-off, exploration), the
operator's tenant breaker, and their change history

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def _tenant(table: str) -> sa.Column[str]:
    return sa.Column(
        "tenant",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{table}_tenant_tenants"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "tenant_policies",
        _tenant("tenant_policies"),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("breaker_reason", sa.Text, nullable=True),
        sa.Column("breaker_actor", sa.String(200), nullable=True),
        sa.Column("breaker_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_tenant_policies"),
    )
    op.create_table(
        "tenant_policy_history",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        _tenant("tenant_policy_history"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("changed_at", _TS, nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenant_policy_history"),
    )
    op.create_index("ix_tenant_policy_history_tenant", "tenant_policy_history", ["tenant", "id"])


def downgrade() -> None:
    for table in ("tenant_policy_history", "tenant_policies"):
        op.drop_table(table)
