"""erasure audit: an index on (tenant, id), so a tenant's latest erasure is one index probe

Every process's timing service reads it every few seconds per tenant to notice an erasure
another process ran (decisions.ERASURE_CHECK_S) and drop its cached audience curve.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_identity_erasures_tenant_id", "identity_erasures", ["tenant", "id"])


def downgrade() -> None:
    op.drop_index("ix_identity_erasures_tenant_id", table_name="identity_erasures")
