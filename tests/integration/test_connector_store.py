"""Accounts (encrypted), OAuth states, webhook replay guard, backfill jobs and catalogue, on
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sendflowr.errors import ConflictError, NotFoundError
from sendflowr.secrets import SecretBox, SecretDecryptError, SecretsUnavailableError, generate_key
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.accounts import AccountStore, OAuthStateError
from sendflowr.storage.metadata.backfill import BackfillStore
from sendflowr.storage.metadata.catalog import CatalogItem, CatalogStore
from sendflowr.storage.metadata.store import MetadataStore, Tenant
from sendflowr.storage.metadata.tables import esp_accounts, oauth_states

KEY = generate_key()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def meta(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    url = (
        f"sqlite:///{tmp_path}/meta.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = MetadataStore(parse_metadata_url(url))
    store.migrate()
    store.create_tenant(Tenant("brand", "Brand", "UTC"))
    store.create_tenant(Tenant("other", "Other", "UTC"))
    yield store
    store.close()


def test_credentials_are_encrypted_at_rest_and_never_in_the_record(meta: MetadataStore) -> None:
    accounts = AccountStore(meta, SecretBox.from_string(KEY))
    account = accounts.connect("brand", "klaviyo", "api_key", {"api_key": "pk_live_SECRET123"})
    assert account.status == "connected"
    assert "pk_live_SECRET123" not in repr(account)
    with meta.engine.connect() as conn:
        raw = conn.execute(sa.select(esp_accounts.c.credentials)).scalar()
    assert raw is not None
    assert "SECRET123" not in raw
    assert accounts.credentials("brand", "klaviyo") == {"api_key": "pk_live_SECRET123"}

    accounts.set_webhook_secret("brand", "klaviyo", "whsec")
    assert accounts.webhook_secret("brand", "klaviyo") == "whsec"
    assert accounts.webhook_secret("brand", "klaviyo", flow=True) is None

    accounts.disconnect("brand", "klaviyo")
    with pytest.raises(ConflictError):
        accounts.credentials("brand", "klaviyo")
    with pytest.raises(NotFoundError):
        accounts.get("other", "klaviyo")


def test_no_key_refuses_to_store(meta: MetadataStore) -> None:
    accounts = AccountStore(meta, SecretBox(None))
    with pytest.raises(SecretsUnavailableError, match="SENDFLOWR_SECRET_KEY"):
        accounts.connect("brand", "klaviyo", "api_key", {"api_key": "pk"})
    assert accounts.list() == []


def test_key_rotation(meta: MetadataStore) -> None:
    old = AccountStore(meta, SecretBox.from_string(KEY))
    old.connect("brand", "klaviyo", "api_key", {"api_key": "pk_1"})
    old.set_webhook_secret("brand", "klaviyo", "s1")
    new_key = generate_key()
    both = AccountStore(meta, SecretBox.from_string(f"{new_key},{KEY}"))
    assert both.credentials("brand", "klaviyo") == {"api_key": "pk_1"}
    assert both.rotate_secrets() == 2
    only_new = AccountStore(meta, SecretBox.from_string(new_key))
    assert only_new.credentials("brand", "klaviyo") == {"api_key": "pk_1"}
    assert only_new.webhook_secret("brand", "klaviyo") == "s1"
    with pytest.raises(SecretDecryptError):
        AccountStore(meta, SecretBox.from_string(KEY)).credentials("brand", "klaviyo")


def test_oauth_state_is_single_use_and_expires(meta: MetadataStore) -> None:
    accounts = AccountStore(meta, SecretBox.from_string(KEY))
    state = accounts.create_oauth_state("brand", "klaviyo", "verifier-abc", "http://x/cb")
    with meta.engine.connect() as conn:
        stored = conn.execute(sa.select(oauth_states.c.state_hash)).scalar()
    assert stored != state
    got = accounts.consume_oauth_state(state)
    assert (got.tenant, got.code_verifier, got.redirect_uri) == (
        "brand",
        "verifier-abc",
        "http://x/cb",
    )
    with pytest.raises(OAuthStateError, match="used already"):
        accounts.consume_oauth_state(state)
    with pytest.raises(OAuthStateError, match="unknown"):
        accounts.consume_oauth_state("forged")
    expired = accounts.create_oauth_state(
        "brand", "klaviyo", "v", "http://x/cb", ttl=timedelta(seconds=-1)
    )
    with pytest.raises(OAuthStateError, match="expired"):
        accounts.consume_oauth_state(expired)


def test_oauth_state_race_has_one_winner(meta: MetadataStore) -> None:
    accounts = AccountStore(meta, SecretBox.from_string(KEY))
    state = accounts.create_oauth_state("brand", "klaviyo", "v", "http://x/cb")
    wins: list[str] = []
    errors: list[Exception] = []

    def take() -> None:
        try:
            wins.append(accounts.consume_oauth_state(state).tenant)
        except OAuthStateError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(errors)) == (1, 5)


def test_webhook_replay_guard(meta: MetadataStore) -> None:
    accounts = AccountStore(meta, SecretBox.from_string(KEY))
    keep = timedelta(minutes=15)
    assert accounts.record_delivery("brand", "a" * 64, keep)
    assert not accounts.record_delivery("brand", "a" * 64, keep)
    assert accounts.record_delivery("other", "a" * 64, keep)


def test_backfill_job_lifecycle(meta: MetadataStore) -> None:
    jobs = BackfillStore(meta)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    job = jobs.create_job("brand", "klaviyo", "backfill", start, start + timedelta(days=2))
    assert job.status == "queued"
    with pytest.raises(ConflictError, match="queued or running"):
        jobs.create_job("brand", "klaviyo", "backfill", start, start + timedelta(days=2))

    claimed = jobs.claim_job("w1", stale_after=timedelta(seconds=60))
    assert claimed is not None
    assert (claimed.id, claimed.status) == (job.id, "in_progress")
    assert jobs.claim_job("w2", stale_after=timedelta(seconds=60)) is None
    # A worker that stopped heartbeating loses the job to the next one.
    assert jobs.claim_job("w2", stale_after=timedelta(seconds=-1)) is not None
    assert not jobs.heartbeat(job.id, "w1")
    assert jobs.heartbeat(job.id, "w2")

    jobs.add_units(
        job.id, [("m1", "Opened Email", "2026-01-01"), ("m1", "Opened Email", "2026-01-02")]
    )
    jobs.add_units(job.id, [("m1", "Opened Email", "2026-01-01")])  # planning twice is harmless
    units = jobs.units(job.id)
    assert [u.day for u in units] == ["2026-01-02", "2026-01-01"]
    assert jobs.get_job(job.id).total_units == 2

    jobs.page_done(units[0], 100, "http://sim/next", finished=False)
    jobs.page_done(units[0], 20, None, finished=True)
    jobs.unit_failed(units[1], "HTTP 500 three times")
    got = jobs.get_job(job.id)
    assert (got.events, got.done_units, got.failed_units) == (120, 1, 1)
    assert got.progress == 1.0
    [progress] = jobs.metric_progress(job.id)
    assert (progress.events, progress.done_days, progress.failed_days) == (120, 1, 1)
    assert progress.errors == ["2026-01-01: HTTP 500 three times"]

    jobs.finish_job(job.id, "failed", "1 day failed")
    retried = jobs.retry("brand")
    assert (retried.status, retried.failed_units, retried.done_units) == ("queued", 0, 1)
    assert [u.status for u in jobs.units(job.id, ["queued"])] == ["queued"]
    cancelled = jobs.request_cancel("brand")
    assert cancelled.status == "cancelled"
    assert jobs.clear("brand") == 1
    assert jobs.latest_job("brand") is None


def test_checkpoints_only_move_forward(meta: MetadataStore) -> None:
    jobs = BackfillStore(meta)
    t1 = datetime(2026, 1, 2, tzinfo=UTC)
    assert jobs.checkpoint("brand", "klaviyo", "m1") is None
    jobs.set_checkpoint("brand", "klaviyo", "m1", t1)
    jobs.set_checkpoint("brand", "klaviyo", "m1", t1 - timedelta(days=1))
    assert jobs.checkpoint("brand", "klaviyo", "m1") == t1


def test_catalog(meta: MetadataStore) -> None:
    catalog = CatalogStore(meta)
    catalog.upsert(
        "brand",
        "klaviyo",
        [
            CatalogItem("campaign", "c1", "Spring sale", "Sent", "email"),
            CatalogItem("flow", "f1", "Welcome", "live"),
        ],
    )
    catalog.upsert("brand", "klaviyo", [CatalogItem("campaign", "c1", "Spring sale!", "Sent")])
    assert catalog.counts("brand") == {"campaign": 1, "flow": 1}
    assert catalog.names("brand", "campaign") == {"c1": "Spring sale!"}
