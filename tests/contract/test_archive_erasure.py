"""The raw archive's data-subject erasure (`RawArchive.erase_rows`), run over both backends: a
local directory and an fsspec URL (`memory://`, standing in for an object store).

Rows naming the person go (by email in any case and whitespace, Klaviyo profile id, phone
however formatted, email hash, in the payload or the context, or by event id); everyone
else's rows stay exactly as archived; a file left empty is deleted, an untouched one is not
rewritten; a part written while the erasure runs is never lost, and a second pass finds it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sendflowr.archive.store import ARCHIVE_SCHEMA, RawArchive
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, PHONE, Identifier
from sendflowr.identity.matching import PersonMatcher
from tests.conftest import HASH_KEY

KEY = HASH_KEY.encode()
T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
ANN_EMAIL, ANN_KLAVIYO, ANN_PHONE = "ann@example.com", "01HANN0000000000000000000A", "+14155550101"


def ann() -> PersonMatcher:
    return PersonMatcher(
        [
            Identifier(EMAIL, hash_email(KEY, ANN_EMAIL)),
            Identifier(ESP_PREFIX + "klaviyo", ANN_KLAVIYO),
            Identifier(PHONE, ANN_PHONE),
        ],
        KEY,
    )


def item(n: int, *, profile: str, email: str | None = None, phone: str | None = None) -> str:
    """A Klaviyo webhook `data[]` item as archived: the event and its profile in `included`."""
    attrs: dict[str, Any] = {}
    if email is not None:
        attrs["email"] = email
    if phone is not None:
        attrs["phone_number"] = phone
    return orjson.dumps(
        {
            "external_id": f"evt{n}",
            "topic": "event:klaviyo.opened_email",
            "payload": {
                "data": {
                    "type": "event",
                    "id": f"evt{n}",
                    "attributes": {"timestamp": 1_763_630_000 + n, "event_properties": {}},
                    "relationships": {"profile": {"data": {"type": "profile", "id": profile}}},
                },
                "included": [{"type": "profile", "id": profile, "attributes": attrs}],
            },
        }
    ).decode()


BOB = [item(1, profile="01HBOB", email="bob@example.com", phone="+14155550199"),
       item(2, profile="01HBOB", email="Bob@Example.com")]  # fmt: skip
ANN_ROWS = [
    item(3, profile="01HSTRANGER", email="  Ann@EXAMPLE.com "),  # her address, another case
    item(4, profile=ANN_KLAVIYO),  # her Klaviyo profile id only
    item(5, profile="01HOTHER", phone="+1 (415) 555-0101"),  # her phone, formatted
]


@dataclass
class Arch:
    archive: RawArchive
    local: bool

    def write(self, payloads: list[str], at: datetime = T0, tenant: str = "acme", **kw: Any) -> str:
        kind = kw.pop("kind", "klaviyo-webhook-item")
        [path] = self.archive.write(
            tenant=tenant,
            esp="klaviyo",
            source="klaviyo-webhook",
            kind=kind,
            payloads=payloads,
            event_ids=kw.pop("event_ids", [f"id-{uuid.uuid4().hex}" for _ in payloads]),
            received_at=at,
            **kw,
        )
        return path

    def rows(self, tenant: str = "acme") -> list[dict[str, Any]]:
        return [
            r for f in self.archive.files(tenant=tenant) for r in self.archive.read(f).to_pylist()
        ]

    def stat(self, path: str) -> tuple[dict[str, Any], bytes]:
        return dict(self.archive.fs.info(path)), bytes(self.archive.fs.cat_file(path))


@pytest.fixture(params=["local", "memory"])
def arch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Arch]:
    if request.param == "local":
        yield Arch(RawArchive(str(tmp_path / "archive")), local=True)
        return
    url = f"memory://sendflowr-erase-{uuid.uuid4().hex[:8]}/raw"
    archive = RawArchive(url)
    try:
        yield Arch(archive, local=False)
    finally:
        if archive.fs.exists(archive.root):
            archive.fs.rm(archive.root, recursive=True)


def test_rows_naming_the_person_go_and_everyone_elses_stay_exactly(arch: Arch) -> None:
    mixed = arch.write([BOB[0], *ANN_ROWS, BOB[1]])
    before = arch.rows()
    assert len(before) == 5

    done = arch.archive.erase_rows("acme", ann())
    assert (done.files_rewritten, done.files_deleted, done.rows_removed) == (1, 0, 3)

    after = arch.rows()
    # Bob's rows, every column as archived (payload strings byte-for-byte), in order.
    assert after == [before[0], before[4]]
    assert [r["payload"].encode() for r in after] == [BOB[0].encode(), BOB[1].encode()]
    [f] = arch.archive.files(tenant="acme")
    if arch.local:
        assert f.path == mixed  # replaced in place
        assert not list(Path(mixed).parent.glob("*.tmp"))
    else:
        assert f.path != mixed  # a new part, then the old one removed
        assert not arch.archive.fs.exists(mixed)
        # It keeps the time prefix: replay still reads the day in the order received.
        assert f.path.rsplit("/", 1)[1][:17] == mixed.rsplit("/", 1)[1][:17]
    # Same schema, still zstd.
    with arch.archive.fs.open(f.path, "rb") as fh:
        meta = pq.ParquetFile(fh)
        assert meta.schema_arrow.equals(ARCHIVE_SCHEMA)
        assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    # Nothing of ann is left in any file of the archive.
    for r in after:
        assert "ann@example.com" not in r["payload"].lower()
        assert ANN_KLAVIYO not in r["payload"]
        assert "555-0101" not in r["payload"]


def test_a_file_left_empty_is_deleted_and_untouched_files_are_not_rewritten(arch: Arch) -> None:
    only_ann = arch.write(ANN_ROWS[:2])
    only_bob = arch.write(BOB, at=T0 + timedelta(seconds=1))
    other_day = arch.write([BOB[0]], at=T0 - timedelta(days=3))
    untouched = {p: arch.stat(p) for p in (only_bob, other_day)}

    done = arch.archive.erase_rows("acme", ann())
    assert (done.files_rewritten, done.files_deleted, done.rows_removed) == (0, 1, 2)
    assert not arch.archive.fs.exists(only_ann)
    assert sorted(f.path for f in arch.archive.files(tenant="acme")) == sorted(untouched)
    for path, (info, data) in untouched.items():
        assert arch.stat(path) == (info, data)  # same name, same bytes, same mtime/created

    # Nothing left to erase: a second call touches nothing.
    again = arch.archive.erase_rows("acme", ann())
    assert (again.files_rewritten, again.files_deleted, again.rows_removed) == (0, 0, 0)
    for path, (info, data) in untouched.items():
        assert arch.stat(path) == (info, data)


def test_the_context_the_email_hash_and_the_event_id_name_the_person_too(arch: Arch) -> None:
    # A backfill row: the payload references a profile, the context carries it with the address.
    backfill = orjson.dumps({"type": "event", "id": "bf1", "attributes": {}}).decode()
    profile = {"type": "profile", "id": "01HX", "attributes": {"email": "ANN@example.com"}}
    context = orjson.dumps(
        {"metric_id": "M1", "metric_name": "Opened Email", "included": [profile]}
    ).decode()
    bob_context = context.replace("ANN@example.com", "bob@example.com")
    arch.write([backfill, backfill], kind="klaviyo-event", contexts=[context, bob_context],
               event_ids=["e-bf1", "e-bf2"])  # fmt: skip
    # Canonical events: one carries her email hash only, one only a stored event id of hers.
    canonical = [
        orjson.dumps({"identifiers": {"email_hash": hash_email(KEY, ANN_EMAIL)}}).decode(),
        orjson.dumps({"identifiers": {"anonymous_id": "cookie-1"}}).decode(),
        orjson.dumps({"identifiers": {"anonymous_id": "cookie-2"}}).decode(),
    ]
    arch.write(canonical, kind="canonical", event_ids=["e-c1", "e-c2", "e-c3"],
               at=T0 + timedelta(seconds=1))  # fmt: skip

    done = arch.archive.erase_rows("acme", ann(), event_ids=["e-c2", "e-unknown"])
    assert done.rows_removed == 3
    assert sorted(r["event_id"] for r in arch.rows()) == ["e-bf2", "e-c3"]


def test_only_the_tenant_is_searched(arch: Arch) -> None:
    arch.write(ANN_ROWS, tenant="other")
    arch.write([ANN_ROWS[0], BOB[0]])
    assert arch.archive.erase_rows("acme", ann()).rows_removed == 1
    assert len(arch.rows("other")) == 3
    assert arch.archive.erase_rows("nobody", ann()).rows_removed == 0
    with pytest.raises(ValueError, match="cannot name an archive directory"):
        arch.archive.erase_rows("../acme", ann())


class _WritesMeanwhile:
    """A matcher that, the first time it is asked, lets a webhook archive a new part for the
    tenant (naming the person): a write racing the erasure, made deterministic."""

    def __init__(self, arch: Arch, at: datetime) -> None:
        self.inner = ann()
        self.arch = arch
        self.at = at
        self.written: str | None = None

    def candidates(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        if self.written is None:
            self.written = self.arch.write([ANN_ROWS[0], BOB[1]], at=self.at)
        return self.inner.candidates(column)

    def names(self, payload: str | None) -> bool:
        return self.inner.names(payload)


def test_a_part_written_during_the_erasure_is_kept_and_a_second_pass_erases_it(
    arch: Arch,
) -> None:
    arch.write([ANN_ROWS[1], BOB[0]])
    racing = _WritesMeanwhile(arch, at=T0 + timedelta(seconds=5))
    first = arch.archive.erase_rows("acme", racing)
    assert first.rows_removed == 1
    assert racing.written is not None
    # Not listed by the first pass: not touched by it, and not lost.
    assert arch.archive.fs.exists(racing.written)
    assert racing.written not in first.seen
    assert len(arch.rows()) == 3

    # A later part (received after the cut-off: a person re-created since) is left alone.
    cutoff = T0 + timedelta(seconds=10)
    later = arch.write([ANN_ROWS[2]], at=cutoff + timedelta(seconds=1))
    second = arch.archive.erase_rows("acme", ann(), skip=first.seen, received_before=cutoff)
    assert (second.files_rewritten, second.files_deleted, second.rows_removed) == (1, 0, 1)
    assert sorted(r["payload"] for r in arch.rows()) == sorted([BOB[0], BOB[1], ANN_ROWS[2]])
    assert arch.archive.fs.exists(later)


def test_a_listed_file_skipped_is_not_read(arch: Arch) -> None:
    """`skip` is honoured: what a first pass saw is not searched again."""
    path = arch.write(ANN_ROWS)
    assert arch.archive.erase_rows("acme", ann(), skip={path}).rows_removed == 0
    assert arch.archive.erase_rows("acme", ann()).rows_removed == 3


# -- the matcher (shared with the dead letters) ---------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ('{"email": " ANN@Example.com"}', True),
        ('{"profile": {"id": "01HANN0000000000000000000A "}}', True),
        ('{"phone_number": "+1 415.555.0101"}', True),
        ('{"phone_number": "+1 415 555 0102"}', False),
        ('{"email_hash": "' + hash_email(KEY, ANN_EMAIL) + '"}', True),
        ('{"email": "joann@example.com"}', False),
        ('{"note": "prefix-01HANN0000000000000000000A"}', False),  # a value, not a substring
        ("not json, mailto:Ann@example.com;", True),
        ("not json, id 01HANN0000000000000000000A", True),
        ("", False),
        (None, False),
    ],
)
def test_the_matcher_names(payload: str | None, named: bool) -> None:
    m = ann()
    assert m.names(payload) is named
    column = pa.array([payload], pa.string())
    if named:  # the vectorised prefilter never misses what `names` accepts
        assert m.candidates(column).to_pylist() == [True]


def test_the_prefilter_finds_every_row_names_accepts_in_a_large_column() -> None:
    m = ann()
    rows = [item(n, profile=f"01HP{n % 97}", email=f"p{n % 97}@example.com") for n in range(5_000)]
    rows[1234] = ANN_ROWS[0]
    rows[2345] = ANN_ROWS[1]
    rows[3456] = ANN_ROWS[2]
    rows[4567] = orjson.dumps({"a": "x@y.z", "b": ANN_EMAIL.upper()}).decode()  # two addresses
    mask = m.candidates(pa.array(rows)).to_pylist()
    assert [i for i, hit in enumerate(mask) if hit] == [1234, 2345, 3456, 4567]
    assert [i for i, r in enumerate(rows) if m.names(r)] == [1234, 2345, 3456, 4567]
