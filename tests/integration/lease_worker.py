"""Helpers of test_erasure_lease.py that a child process imports (kept light: no app, no
fixtures), so spawning a process that erases costs little more than the erasure."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from sendflowr.archive.store import RawArchive, RowMatcher
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, PHONE, Identifier
from sendflowr.identity.matching import PersonMatcher
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.leases import LeaseStore
from sendflowr.storage.metadata.store import MetadataStore

# Ann and Bob as in tests/contract/test_archive_erasure.py (its rows are the ones written).
ANN_EMAIL, ANN_KLAVIYO, ANN_PHONE = "ann@example.com", "01HANN0000000000000000000A", "+14155550101"


def ann(key: bytes) -> PersonMatcher:
    return PersonMatcher(
        [
            Identifier(EMAIL, hash_email(key, ANN_EMAIL)),
            Identifier(ESP_PREFIX + "klaviyo", ANN_KLAVIYO),
            Identifier(PHONE, ANN_PHONE),
        ],
        key,
    )


def bob(key: bytes) -> PersonMatcher:
    return PersonMatcher([Identifier(ESP_PREFIX + "klaviyo", "01HBOB")], key)


class Gated:
    """A matcher that, on its first use, says it is inside the pass and waits for `go`."""

    def __init__(
        self, inner: RowMatcher, entered: Callable[[], object], go: Callable[[], object]
    ) -> None:
        self.inner, self.entered, self.go = inner, entered, go
        self.gated = False

    def candidates(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        if not self.gated:
            self.gated = True
            self.entered()
            self.go()
        return self.inner.candidates(column)

    def names(self, payload: str | None) -> bool:
        return self.inner.names(payload)


def archive(url: str, leases: LeaseStore | None, **options: Any) -> RawArchive:
    out = RawArchive(url, leases=leases, **options)
    out.erase_wait_seconds = 20
    return out


def dir_archive(directory: str, leases: LeaseStore | None) -> RawArchive:
    """An archive on a directory through fsspec's dir:: filesystem: to the archive it is not a
    local disk, so an erasure takes the object-store path (new part, then remove the old)."""
    options = {"target_options": {"auto_mkdir": True}}
    out = archive("dir://", leases, path=directory, target_protocol="file", **options)
    assert not out._local
    return out


def erase_in_process(
    meta_url: str, directory: str, who: str, flags: str, key: bytes, lease: bool = True
) -> None:
    """Run in a child process: erase `who` (through the lease, or without one when `lease` is
    false); ann is held inside the pass until flags/go exists."""
    store = MetadataStore(parse_metadata_url(meta_url))
    target = dir_archive(directory, LeaseStore(store) if lease else None)
    flag = Path(flags)
    (flag / f"{who}.started").touch()

    def entered() -> None:
        (flag / f"{who}.inside").touch()

    def go() -> None:
        while not (flag / "go").exists():
            time.sleep(0.02)

    matcher = Gated(ann(key), entered, go) if who == "ann" else bob(key)
    target.erase_rows("acme", matcher)
    (flag / f"{who}.done").touch()
    store.close()
