"""Erasures of one tenant's raw archive take turns across processes: a lease in the shared
metadata store (storage/metadata/leases.py, migration 0009), on SQLite and PostgreSQL.

On an object store an erasure writes each file's new part and then removes the old one; two
erasures at once each rewrite from what they read, so the second puts back the rows the first
removed (or skips a file the first removed). The tests hold one erasure inside its pass and
start a second from another archive instance with its own metadata engine (what another
process has), or from another process: the second waits for the lease, and both people are
gone. Without the lease the same schedule loses an erasure (checked, so the test can fail)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.archive.store import ArchiveUnavailableError, RawArchive, RowMatcher
from sendflowr.errors import UnavailableError
from sendflowr.runtime import Runtime
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.leases import LeaseBusyError, LeaseStore
from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.storage.metadata.tables import leases as leases_table
from tests.conftest import ADMIN_HEADERS, HASH_KEY
from tests.contract.test_archive_erasure import ANN_ROWS, BOB, T0, item
from tests.integration.lease_worker import Gated, ann, bob, dir_archive, erase_in_process
from tests.integration.lease_worker import archive as _archive

KEY = HASH_KEY.encode()
CAT = [item(7, profile="01HCAT", email="cat@example.com")]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/meta.db"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def stores(meta_url: str) -> Iterator[Callable[[], MetadataStore]]:
    """Opens metadata stores on one database, each with its own engine (as another process
    would have); the first migrates."""
    opened: list[MetadataStore] = []

    def open_one() -> MetadataStore:
        s = MetadataStore(parse_metadata_url(meta_url))
        if not opened:
            s.migrate()
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()


# -- the lease itself ------------------------------------------------------------------------


def test_one_holder_at_a_time_until_released_or_expired(
    stores: Callable[[], MetadataStore],
) -> None:
    one, two = LeaseStore(stores()), LeaseStore(stores())
    assert one.try_acquire("x", "h1", 30)
    assert not two.try_acquire("x", "h2", 30)
    assert one.try_acquire("x", "h1", 30)  # its own: renewed
    assert two.try_acquire("y", "h2", 30)  # another name is another lease
    two.release("x", "h2")  # not h2's: nothing happens
    assert not two.try_acquire("x", "h2", 30)
    one.release("x", "h1")
    assert one.current("x") is None
    assert two.try_acquire("x", "h2", 30)
    # A holder that died: its lease expires and is taken over, and it cannot renew it back.
    assert one.try_acquire("z", "dead", 0.3)
    assert not two.try_acquire("z", "h2", 30)
    time.sleep(0.6)
    assert two.try_acquire("z", "h2", 30)
    assert not one.renew("z", "dead", 30)
    current = two.current("z")
    assert current is not None
    assert current[0] == "h2"
    assert current[1] > datetime.now(UTC) + timedelta(seconds=20)


def test_of_many_at_once_exactly_one_takes_it(stores: Callable[[], MetadataStore]) -> None:
    contenders = [LeaseStore(stores()) for _ in range(6)]

    def contend(
        i: int, store: LeaseStore, name: str, start: threading.Barrier, won: list[str]
    ) -> None:
        start.wait()
        if store.try_acquire(name, f"h{i}", 30):
            won.append(f"h{i}")

    for round_ in range(5):
        start = threading.Barrier(len(contenders))
        won: list[str] = []
        name = f"race-{round_}"
        threads = [
            threading.Thread(target=contend, args=(i, st, name, start, won))
            for i, st in enumerate(contenders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1, won
        current = contenders[0].current(name)
        assert current is not None
        assert current[0] == won[0]


def test_a_held_lease_is_renewed_past_its_ttl_and_released_after(
    stores: Callable[[], MetadataStore],
) -> None:
    one, two = LeaseStore(stores()), LeaseStore(stores())
    with one.hold("x", ttl=0.6, wait=0) as lease:
        started = time.monotonic()
        while time.monotonic() - started < 1.8:  # three times the ttl
            assert not two.try_acquire("x", "h2", 30)
            time.sleep(0.1)
        assert not lease.lost
    assert one.current("x") is None  # released
    assert two.try_acquire("x", "h2", 30)


def test_busy_after_the_bounded_wait_is_503_with_retry_after(
    stores: Callable[[], MetadataStore],
) -> None:
    one, two = LeaseStore(stores()), LeaseStore(stores())
    with one.hold("x", ttl=30, wait=0):
        started = time.monotonic()
        with pytest.raises(LeaseBusyError) as busy, two.hold("x", wait=0.3):
            pytest.fail("held twice")
        assert time.monotonic() - started >= 0.3  # it waited
        assert isinstance(busy.value, UnavailableError)
        assert busy.value.status == 503
        assert busy.value.retry_after_seconds >= 1
    with two.hold("x", wait=0.3) as lease:  # free again
        assert not lease.lost


def test_a_lease_taken_over_is_seen_as_lost(stores: Callable[[], MetadataStore]) -> None:
    one, two = LeaseStore(stores()), LeaseStore(stores())
    with one.hold("x", ttl=0.6, wait=0) as lease:
        s = two.metadata
        with s.engine.begin() as conn:  # what an expiry and a takeover leave behind
            conn.execute(leases_table.update().values(holder="thief"))
        deadline = time.monotonic() + 3
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.lost
    current = two.current("x")
    assert current is not None
    assert current[0] == "thief"  # a holder that lost its lease does not delete another's


# -- two erasures of one archive -------------------------------------------------------------


def _write(archive: RawArchive) -> None:
    for i, rows in enumerate(([BOB[0], *ANN_ROWS, BOB[1]], [ANN_ROWS[0], *CAT, BOB[0]])):
        archive.write(
            tenant="acme",
            esp="klaviyo",
            source="klaviyo-webhook",
            kind="klaviyo-webhook-item",
            payloads=rows,
            received_at=T0 + timedelta(seconds=i),
        )


def _payloads(archive: RawArchive) -> list[str]:
    return sorted(str(r["payload"]) for r in archive.rows(archive.files(tenant="acme")))


def _race(first: RawArchive, second: RawArchive) -> tuple[bool, list[Any]]:
    """Erase ann through `first`, held inside its pass while `second` erases bob; returns
    whether `second` finished while `first` was held, and any errors."""
    inside, go = threading.Event(), threading.Event()
    errors: list[Any] = []

    def run(archive: RawArchive, matcher: RowMatcher) -> None:
        try:
            archive.erase_rows("acme", matcher)
        except Exception as exc:
            errors.append(exc)

    held = Gated(ann(KEY), inside.set, lambda: go.wait(30))
    t1 = threading.Thread(target=run, args=(first, held))
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=run, args=(second, bob(KEY)))
    t2.start()
    t2.join(1.5)
    overlapped = not t2.is_alive()
    go.set()
    t1.join(30)
    t2.join(30)
    return overlapped, errors


def test_two_erasures_of_one_tenant_take_turns(stores: Callable[[], MetadataStore]) -> None:
    url = f"memory://sendflowr-lease-{uuid.uuid4().hex[:8]}/raw"
    first = _archive(url, LeaseStore(stores()))
    second = _archive(url, LeaseStore(stores()))  # its own engine and in-process locks
    try:
        _write(first)
        overlapped, errors = _race(first, second)
        assert errors == []
        assert not overlapped  # the second waited for the first's lease
        left = _payloads(first)
        assert left == sorted(CAT)  # ann and bob both gone, cat intact
        assert LeaseStore(stores()).current("archive-erasure:acme") is None  # released
    finally:
        first.fs.rm(first.root, recursive=True)


def test_without_the_lease_the_same_race_loses_an_erasure() -> None:
    """The control: the schedule above, with no lease, brings erased rows back."""
    url = f"memory://sendflowr-lease-{uuid.uuid4().hex[:8]}/raw"
    first, second = _archive(url, None), _archive(url, None)
    try:
        _write(first)
        overlapped, errors = _race(first, second)
        assert errors == []
        assert overlapped
        left = _payloads(first)
        assert left != sorted(CAT)
        assert any(p in left for p in ANN_ROWS)  # ann's erasure lost its file to bob's
    finally:
        first.fs.rm(first.root, recursive=True)


def test_an_erasure_that_lost_its_lease_stops_before_the_next_file(
    stores: Callable[[], MetadataStore],
) -> None:
    url = f"memory://sendflowr-lease-{uuid.uuid4().hex[:8]}/raw"
    meta = stores()
    archive = _archive(url, LeaseStore(meta, ttl=0.6))
    try:
        _write(archive)
        before = _payloads(archive)

        def steal() -> None:
            with meta.engine.begin() as conn:
                conn.execute(leases_table.update().values(holder="thief"))
            time.sleep(0.6)  # past a renewal: the holder has seen it

        with pytest.raises(ArchiveUnavailableError, match="lost its lease"):
            archive.erase_rows("acme", Gated(ann(KEY), steal, lambda: None))
        assert _payloads(archive) == before  # no file was rewritten
    finally:
        archive.fs.rm(archive.root, recursive=True)


# -- across processes ------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [True, False], ids=["lease", "no-lease"])
def test_two_processes_erasing_take_turns(
    stores: Callable[[], MetadataStore], meta_url: str, tmp_path: Path, lease: bool
) -> None:
    """Two processes erasing one tenant of an archive on the object-store path (`dir_archive`),
    each with its own metadata engine: the second waits for the first's lease, and both people
    are gone. Without the lease (the control) the second finishes meanwhile and ann's erasure
    is lost."""
    stores()  # migrated
    archive_dir = str(tmp_path / "archive")
    Path(archive_dir).mkdir()
    _write(dir_archive(archive_dir, None))
    flags = tmp_path / "flags"
    flags.mkdir()
    spawn = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []

    def wait_for(name: str) -> None:
        deadline = time.monotonic() + 60
        while not (flags / name).exists():
            assert time.monotonic() < deadline, f"no {name} in 60 s"
            alive = all(p.is_alive() for p in procs)
            # a process that wrote the flag and exited between the two checks has not died
            assert alive or (flags / name).exists(), "an erasure process died"
            time.sleep(0.02)

    try:
        for who in ("ann", "bob"):
            args = (meta_url, archive_dir, who, str(flags), KEY, lease)
            procs.append(spawn.Process(target=erase_in_process, args=args))
            procs[-1].start()
            wait_for(f"{who}.started" if who == "bob" else "ann.inside")
        # bob's erasure has started; with ann held inside her pass it waits for the lease
        # (3 s without finishing), and without one it finishes meanwhile (however long a
        # loaded machine takes: the control must not fail for being slow).
        if lease:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not (flags / "bob.done").exists():
                time.sleep(0.02)
            assert not (flags / "bob.done").exists()
        else:
            wait_for("bob.done")
        (flags / "go").touch()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    left = _payloads(dir_archive(archive_dir, None))
    if lease:
        assert left == sorted(CAT)
    else:
        assert any(p in left for p in ANN_ROWS)  # the race the lease prevents


# -- the API -----------------------------------------------------------------------------------


def test_the_erasure_route_answers_503_with_retry_after_while_another_erases(
    runtime: Runtime,
) -> None:
    assert runtime.archive is not None
    assert runtime.archive.leases is not None  # the runtime's archive has them
    runtime.archive.erase_wait_seconds = 0.3
    app = create_app(runtime.settings, runtime=runtime)
    with TestClient(app, headers=ADMIN_HEADERS) as c:
        assert c.post("/api/tenants", json={"id": "acme", "name": "A"}).status_code == 201
        event = {
            "tenant": "acme",
            "esp": "klaviyo",
            "esp_event_id": "e1",
            "event_type": "opened",
            "occurred_at": "2026-01-01T00:00:00Z",
            "identifiers": {"esp_profile_id": "K-ann"},
        }
        assert c.post("/api/events", json={"events": [event]}).status_code == 200
        uid = c.get(
            "/api/identity/resolve",
            params={"tenant": "acme", "type": "esp:klaviyo", "value": "K-ann"},
        ).json()["universal_id"]
        other = LeaseStore(runtime.metadata)
        assert other.try_acquire("archive-erasure:acme", "another-process", 30)
        r = c.delete(f"/api/identity/{uid}", params={"tenant": "acme"})
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["detail"][0]["type"] == "busy"
        # Nothing was erased: the person is still there, and the retry finishes the job.
        assert c.get(f"/api/identity/{uid}", params={"tenant": "acme"}).status_code == 200
        other.release("archive-erasure:acme", "another-process")
        r = c.delete(f"/api/identity/{uid}", params={"tenant": "acme"})
        assert r.status_code == 200, r.text
    with runtime.metadata.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(leases_table)).scalar() == 0
