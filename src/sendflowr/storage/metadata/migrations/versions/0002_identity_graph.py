"""identity graph: profiles, identifiers, merge log, per-tenant version

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _tenant_fk(name: str) -> sa.ForeignKey:
    return sa.ForeignKey("tenants.id", ondelete="CASCADE", name=name)


def upgrade() -> None:
    op.create_table(
        "identity_versions",
        sa.Column("tenant", sa.String(63), _tenant_fk("fk_identity_versions_tenant_tenants")),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_identity_versions"),
    )
    op.create_table(
        "identity_profiles",
        sa.Column("seq", _ID, autoincrement=True),
        sa.Column(
            "tenant",
            sa.String(63),
            _tenant_fk("fk_identity_profiles_tenant_tenants"),
            nullable=False,
        ),
        sa.Column("universal_id", sa.String(19), nullable=False),
        sa.Column("merged_into", sa.String(19), nullable=True),
        sa.Column("source_event_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_identity_profiles"),
        sa.UniqueConstraint("tenant", "universal_id", name="uq_identity_profiles_tenant_uid"),
    )
    op.create_index(
        "ix_identity_profiles_merged_into", "identity_profiles", ["tenant", "merged_into"]
    )
    op.create_table(
        "identity_identifiers",
        sa.Column("tenant", sa.String(63), _tenant_fk("fk_identity_identifiers_tenant_tenants")),
        sa.Column("kind", sa.String(40)),
        sa.Column("value", sa.String(256)),
        sa.Column("universal_id", sa.String(19), nullable=False),
        sa.Column("source_event_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "kind", "value", name="pk_identity_identifiers"),
    )
    op.create_index(
        "ix_identity_identifiers_uid", "identity_identifiers", ["tenant", "universal_id"]
    )
    op.create_table(
        "identity_merges",
        sa.Column("id", _ID, autoincrement=True),
        sa.Column(
            "tenant", sa.String(63), _tenant_fk("fk_identity_merges_tenant_tenants"), nullable=False
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("survivor", sa.String(19), nullable=False),
        sa.Column("merged", sa.String(19), nullable=True),
        sa.Column("identifiers", sa.JSON, nullable=False),
        sa.Column("absorbed", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("refusal_key", sa.String(64), nullable=True),
        sa.Column("occurrences", sa.BigInteger, nullable=False),
        sa.Column("source_event_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("split_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("split_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_identity_merges"),
        sa.UniqueConstraint("tenant", "refusal_key", name="uq_identity_merges_refusal"),
    )
    op.create_index(
        "ix_identity_merges_tenant_created", "identity_merges", ["tenant", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("identity_merges")
    op.drop_table("identity_identifiers")
    op.drop_table("identity_profiles")
    op.drop_table("identity_versions")
