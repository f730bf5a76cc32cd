"""Intents with their ESP binding and change history; schedules (campaigns) and their durable
triggers

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
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
        "intents",
        _tenant("intents"),
        sa.Column("intent_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("latency_seconds", sa.Integer, nullable=True),
        sa.Column("hot_path_signals", sa.JSON, nullable=False),
        sa.Column("suppression_sources", sa.JSON, nullable=False),
        sa.Column("frequency_cap_group", sa.String(100), nullable=True),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("binding", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "intent_id", name="pk_intents"),
    )
    op.create_table(
        "intent_history",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        _tenant("intent_history"),
        sa.Column("intent_id", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("changed_at", _TS, nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_intent_history"),
    )
    op.create_index(
        "ix_intent_history_tenant_intent", "intent_history", ["tenant", "intent_id", "version"]
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(40), nullable=False),
        _tenant("schedules"),
        sa.Column("intent_id", sa.String(100), nullable=False),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("window_end", _TS, nullable=False),
        sa.Column("latency_seconds", sa.Integer, nullable=False),
        sa.Column("audience", sa.Integer, nullable=False),
        sa.Column("capacity_per_minute", sa.Integer, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
    )
    op.create_index("ix_schedules_tenant_created", "schedules", ["tenant", "created_at"])
    op.create_table(
        "triggers",
        sa.Column("decision_id", sa.String(36), nullable=False),
        _tenant("triggers"),
        sa.Column(
            "schedule_id",
            sa.String(40),
            sa.ForeignKey(
                "schedules.id", ondelete="CASCADE", name="fk_triggers_schedule_id_schedules"
            ),
            nullable=False,
        ),
        sa.Column("intent_id", sa.String(100), nullable=False),
        sa.Column("universal_id", sa.String(40), nullable=False),
        sa.Column("recipient_type", sa.String(32), nullable=False),
        sa.Column("recipient_value", sa.String(320), nullable=False),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("trigger_minute", sa.BigInteger, nullable=False),
        sa.Column("trigger_at", _TS, nullable=False),
        sa.Column("target_at", _TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(100), nullable=True),
        sa.Column("lease_until", _TS, nullable=True),
        sa.Column("sent_at", _TS, nullable=True),
        sa.Column("sent_via", sa.String(32), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("explanation_ref", sa.String(40), nullable=False),
        sa.Column("promoted", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_triggers"),
    )
    op.create_index("ix_triggers_status_minute", "triggers", ["status", "trigger_minute"])
    op.create_index(
        "ix_triggers_tenant_esp_minute", "triggers", ["tenant", "esp", "trigger_minute"]
    )
    op.create_index("ix_triggers_tenant_person", "triggers", ["tenant", "universal_id", "status"])
    op.create_index("ix_triggers_schedule_status", "triggers", ["schedule_id", "status"])


def downgrade() -> None:
    for table in ("triggers", "schedules", "intent_history", "intents"):
        op.drop_table(table)
