"""The raw archive (Parquet, local or fsspec) and its replay into the event store."""

from sendflowr.archive.hook import keep_accepted
from sendflowr.archive.store import (
    ARCHIVE_SCHEMA,
    ArchiveFile,
    ArchiveUnavailableError,
    RawArchive,
    open_archive,
)

__all__ = [
    "ARCHIVE_SCHEMA",
    "ArchiveFile",
    "ArchiveUnavailableError",
    "RawArchive",
    "keep_accepted",
    "open_archive",
]
