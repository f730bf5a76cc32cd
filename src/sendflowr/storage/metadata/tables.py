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

# -- ESP connector (migration 0003) ----------------------------------------------------------

esp_accounts = Table(
    "esp_accounts",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("esp", String(32), primary_key=True),
    Column("auth_kind", String(16), nullable=False),  # api_key | oauth
    Column("credentials", Text, nullable=True),  # Fernet token of a JSON object
    Column("webhook_secret", Text, nullable=True),  # Fernet token
    Column("flow_webhook_secret", Text, nullable=True),  # Fernet token
    Column("api_url", String(300), nullable=True),  # overrides settings (a simulator)
    Column("status", String(16), nullable=False),  # connected | disconnected | error
    Column("last_error", Text, nullable=True),
    Column("account_id", String(100), nullable=True),  # the ESP's own account id
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

oauth_states = Table(
    "oauth_states",
    metadata,
    Column("state_hash", String(64), primary_key=True),  # sha256 of the state sent out
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("esp", String(32), nullable=False),
    Column("code_verifier", Text, nullable=False),  # Fernet token
    Column("redirect_uri", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

backfill_jobs = Table(
    "backfill_jobs",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("esp", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # backfill | incremental
    # queued | in_progress | completed | failed | cancelled
    Column("status", String(16), nullable=False),
    Column("range_start", DateTime(timezone=True), nullable=False),
    Column("range_end", DateTime(timezone=True), nullable=False),
    Column("total_units", Integer, nullable=False),
    Column("done_units", Integer, nullable=False),
    Column("failed_units", Integer, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("error", Text, nullable=True),
    Column("cancel_requested", Integer, nullable=False),
    Column("worker", String(100), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Index("ix_backfill_jobs_tenant_created", "tenant", "created_at"),
    Index("ix_backfill_jobs_status", "status"),
)

backfill_units = Table(
    "backfill_units",
    metadata,
    Column(
        "job_id", BigInteger, ForeignKey("backfill_jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("metric_id", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD (UTC), or "catalog"
    Column("metric_name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # queued | in_progress | completed | failed
    Column("events", BigInteger, nullable=False),
    Column("pages", Integer, nullable=False),
    Column("next_url", Text, nullable=True),  # checkpoint: the page to fetch next
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_backfill_units_job_status", "job_id", "status"),
)

sync_checkpoints = Table(
    "sync_checkpoints",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("esp", String(32), primary_key=True),
    Column("metric_id", String(64), primary_key=True),
    Column("synced_until", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("signature", String(64), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_webhook_deliveries_received", "received_at"),
)

esp_catalog = Table(
    "esp_catalog",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("esp", String(32), primary_key=True),
    Column("kind", String(16), primary_key=True),  # campaign | flow | metric
    Column("esp_id", String(100), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("status", String(50), nullable=True),
    Column("channel", String(32), nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("raw", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# -- intents, schedules and triggers (migration 0004) ----------------------------------------

intents = Table(
    "intents",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("intent_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("window_seconds", Integer, nullable=False),  # default decision window
    Column("latency_seconds", Integer, nullable=True),  # None: the tenant's ESP latency
    Column("hot_path_signals", JSON, nullable=False),  # [{event_type, within_seconds}]
    Column("suppression_sources", JSON, nullable=False),  # ["unsubscribed", ...]
    Column("frequency_cap_group", String(100), nullable=True),
    Column("esp", String(32), nullable=False),  # the bound ESP
    Column("binding", JSON, nullable=False),  # what the ESP call means, per ESP
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

intent_history = Table(
    "intent_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("intent_id", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # created | updated | deleted
    Column("actor", String(200), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changes", JSON, nullable=False),  # {field: [before, after]}
    Index("ix_intent_history_tenant_intent", "tenant", "intent_id", "version"),
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("intent_id", String(100), nullable=False),
    Column("esp", String(32), nullable=False),  # the ESP whose capacity was planned for
    Column("status", String(16), nullable=False),  # scheduled | cancelled
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("latency_seconds", Integer, nullable=False),
    Column("audience", Integer, nullable=False),
    Column("capacity_per_minute", Integer, nullable=False),
    Column("summary", JSON, nullable=False),  # planner figures: moved, loss, first/last minute
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_schedules_tenant_created", "tenant", "created_at"),
)

triggers = Table(
    "triggers",
    metadata,
    Column("decision_id", String(36), primary_key=True),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column(
        "schedule_id", String(40), ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False
    ),
    Column("intent_id", String(100), nullable=False),
    Column("universal_id", String(40), nullable=False),
    Column("recipient_type", String(32), nullable=False),  # how the ESP addresses the person
    Column("recipient_value", String(320), nullable=False),
    Column("esp", String(32), nullable=False),  # capacity is booked against this ESP
    Column("trigger_minute", BigInteger, nullable=False),  # unix minute of trigger_at
    Column("trigger_at", DateTime(timezone=True), nullable=False),
    Column("target_at", DateTime(timezone=True), nullable=False),
    # scheduled | sending | sent | failed | cancelled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("worker", String(100), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("sent_via", String(32), nullable=True),  # the ESP that was actually called
    Column("error", Text, nullable=True),
    Column("explanation_ref", String(40), nullable=False),
    Column("promoted", Integer, nullable=False),  # 1 when a hot-path signal moved it earlier
    Index("ix_triggers_status_minute", "status", "trigger_minute"),
    Index("ix_triggers_tenant_esp_minute", "tenant", "esp", "trigger_minute"),
    Index("ix_triggers_tenant_person", "tenant", "universal_id", "status"),
    Index("ix_triggers_schedule_status", "schedule_id", "status"),
)

# -- data-subject erasures (migration 0006) --------------------------------------------------

identity_erasures = Table(
    "identity_erasures",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # keyed HMAC of tenant + universal id: proves an id was erased, names nobody
    Column("subject_hash", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("removed", JSON, nullable=False),  # per-store counts, no personal data
    Index("ix_identity_erasures_tenant_subject", "tenant", "subject_hash"),
    Index("ix_identity_erasures_tenant_id", "tenant", "id"),  # latest per tenant (0008)
)

# -- tenant policies and breakers (migration 0005) -------------------------------------------

tenant_policies = Table(
    "tenant_policies",
    metadata,
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("config", JSON, nullable=False),  # quiet hours, cap, breakers, cool-off, exploration
    Column("version", Integer, nullable=False),
    Column("breaker_reason", Text, nullable=True),  # set: the tenant breaker is tripped
    Column("breaker_actor", String(200), nullable=True),
    Column("breaker_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tenant_policy_history = Table(
    "tenant_policy_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # updated | tripped | reset
    Column("actor", String(200), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("changes", JSON, nullable=False),  # {field: [before, after]}
    Index("ix_tenant_policy_history_tenant", "tenant", "id"),
)

# -- API keys (migration 0007) ---------------------------------------------------------------

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(24), primary_key=True),  # the public part of the key: sfk_<id>_<secret>
    # NULL: an operator key, valid on every tenant
    Column("tenant", String(63), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True),
    Column("name", String(200), nullable=False),
    Column("scope", String(8), nullable=False),  # read | write | admin
    Column("secret_hash", String(64), nullable=False),  # HMAC-SHA256 of the secret, hex
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_api_keys_tenant", "tenant"),
)

# -- leases (migration 0009) -----------------------------------------------------------------

# A named lock shared by every process on this metadata store (storage/metadata/leases.py):
# held by `holder` until `expires_at`, renewed while held, free once expired (a dead holder).
leases = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),  # e.g. archive-erasure:<tenant>
    Column("holder", String(100), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
