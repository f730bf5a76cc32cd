"""Table definitions (SQLAlchemy Core). Migrations in ./migrations must match these."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("source", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_dead_letters_tenant_created", "tenant", "created_at"),
)

# -- identity graph (migration 0002) ---------------------------------------------------------

identity_versions = Table(
    "identity_versions",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

identity_profiles = Table(
    "identity_profiles",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("universal_id", String(19), nullable=False),
    Column("merged_into", String(19), nullable=True),
    Column("source_event_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "universal_id", name="uq_identity_profiles_tenant_uid"),
    Index("ix_identity_profiles_merged_into", "tenant", "merged_into"),
)

identity_identifiers = Table(
    "identity_identifiers",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(40), primary_key=True),
    Column("value", String(256), primary_key=True),
    Column("universal_id", String(19), nullable=False),
    Column("source_event_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_identity_identifiers_uid", "tenant", "universal_id"),
)

identity_merges = Table(
    "identity_merges",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False),  # merged | refused | split
    Column("survivor", String(19), nullable=False),
    Column("merged", String(19), nullable=True),  # refused: the profile not merged, if any
    Column("identifiers", JSON, nullable=False),  # merged: moved; refused: the identifier
    Column("absorbed", JSON, nullable=False),  # merged: profiles folded in (for a split)
    Column("reason", Text, nullable=False),
    Column("refusal_key", String(64), nullable=True),
    Column("occurrences", BigInteger, nullable=False),
    Column("source_event_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("split_at", DateTime(timezone=True), nullable=True),
    Column("split_by", String(200), nullable=True),
    UniqueConstraint("tenant", "refusal_key", name="uq_identity_merges_refusal"),
    Index("ix_identity_merges_tenant_created", "tenant", "created_at"),
)
