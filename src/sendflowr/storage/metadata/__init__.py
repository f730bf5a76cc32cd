"""The metadata port: tenants, dead letters and (later) accounts, identity, intents, schedules.

SQLAlchemy 2 over SQLite (embedded) or PostgreSQL (scale); Alembic migrations for both.
"""

from sendflowr.storage.metadata.store import MetadataStore, open_metadata_store

__all__ = ["MetadataStore", "open_metadata_store"]
