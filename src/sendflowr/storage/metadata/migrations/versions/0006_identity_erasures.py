"""data-subject erasures: an audit row per erasure, without personal data

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "identity_erasures",
        sa.Column("id", _ID, autoincrement=True),
        sa.Column(
            "tenant",
            sa.String(63),
            sa.ForeignKey(
                "tenants.id", ondelete="CASCADE", name="fk_identity_erasures_tenant_tenants"
            ),
            nullable=False,
        ),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_erasures"),
    )
    op.create_index(
        "ix_identity_erasures_tenant_subject", "identity_erasures", ["tenant", "subject_hash"]
    )


def downgrade() -> None:
    op.drop_index("ix_identity_erasures_tenant_subject", table_name="identity_erasures")
    op.drop_table("identity_erasures")
