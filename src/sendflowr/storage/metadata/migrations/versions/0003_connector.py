"""ESP connector: accounts (encrypted credentials), OAuth states, backfill jobs and units,
sync checkpoints, webhook replay guard, campaign/flow/metric catalogue

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def _tenant(table: str, *, primary: bool = True) -> sa.Column[str]:
    return sa.Column(
        "tenant",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{table}_tenant_tenants"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "esp_accounts",
        _tenant("esp_accounts"),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("auth_kind", sa.String(16), nullable=False),
        sa.Column("credentials", sa.Text, nullable=True),
        sa.Column("webhook_secret", sa.Text, nullable=True),
        sa.Column("flow_webhook_secret", sa.Text, nullable=True),
        sa.Column("api_url", sa.String(300), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("account_id", sa.String(100), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "esp", name="pk_esp_accounts"),
    )
    op.create_table(
        "oauth_states",
        sa.Column("state_hash", sa.String(64), nullable=False),
        _tenant("oauth_states"),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("code_verifier", sa.Text, nullable=False),
        sa.Column("redirect_uri", sa.String(500), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("state_hash", name="pk_oauth_states"),
    )
    op.create_table(
        "backfill_jobs",
        sa.Column("id", _ID, autoincrement=True),
        _tenant("backfill_jobs"),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("range_start", _TS, nullable=False),
        sa.Column("range_end", _TS, nullable=False),
        sa.Column("total_units", sa.Integer, nullable=False),
        sa.Column("done_units", sa.Integer, nullable=False),
        sa.Column("failed_units", sa.Integer, nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("cancel_requested", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(100), nullable=True),
        sa.Column("heartbeat_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backfill_jobs"),
    )
    op.create_index("ix_backfill_jobs_tenant_created", "backfill_jobs", ["tenant", "created_at"])
    op.create_index("ix_backfill_jobs_status", "backfill_jobs", ["status"])
    op.create_table(
        "backfill_units",
        sa.Column(
            "job_id",
            sa.BigInteger,
            sa.ForeignKey(
                "backfill_jobs.id",
                ondelete="CASCADE",
                name="fk_backfill_units_job_id_backfill_jobs",
            ),
            nullable=False,
        ),
        sa.Column("metric_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("metric_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("pages", sa.Integer, nullable=False),
        sa.Column("next_url", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "metric_id", "day", name="pk_backfill_units"),
    )
    op.create_index("ix_backfill_units_job_status", "backfill_units", ["job_id", "status"])
    op.create_table(
        "sync_checkpoints",
        _tenant("sync_checkpoints"),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("metric_id", sa.String(64), nullable=False),
        sa.Column("synced_until", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "esp", "metric_id", name="pk_sync_checkpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        _tenant("webhook_deliveries"),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "signature", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_received", "webhook_deliveries", ["received_at"])
    op.create_table(
        "esp_catalog",
        _tenant("esp_catalog"),
        sa.Column("esp", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("esp_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("status", sa.String(50), nullable=True),
        sa.Column("channel", sa.String(32), nullable=True),
        sa.Column("sent_at", _TS, nullable=True),
        sa.Column("raw", sa.JSON, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "esp", "kind", "esp_id", name="pk_esp_catalog"),
    )


def downgrade() -> None:
    for table in (
        "esp_catalog",
        "webhook_deliveries",
        "sync_checkpoints",
        "backfill_units",
        "backfill_jobs",
        "oauth_states",
        "esp_accounts",
    ):
        op.drop_table(table)
