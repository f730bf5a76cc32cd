"""Short-lived in-process copies of the metadata rows every timing decision reads.

A single decision over HTTP used to read the tenant row, the tenant's send policies and the
ESP call counts of the last minutes from the metadata database, each time: three queries of a
request's seven, a sixth of its CPU at 200 decisions a second. These rows change rarely (an
operator edits a tenant or its policies) or only matter in aggregate (the ESP breaker looks at
minutes of calls), so the decision path reads them through this cache instead.

What a caller can rely on:
- a change made through this process (MetadataStore.update_tenant / delete_tenant,
  PolicyStore.put / trip / reset, TriggerStore recording sends and failures) is seen by this
  process's next decision: the writer calls `forget` after its commit;
- a change made by another process (the scale deployment runs several) is seen within
  `ttl_s` (HOT_TTL_S, 2 seconds);
- nothing but the decision path reads through it: the API's tenant and policy routes, the
  executor and the CLI read the database.

cachetools' TTLCache does the expiry and the size bound; it is not thread-safe, so a lock
guards it (the load itself runs outside the lock: two threads that miss together both read,
and the later result is kept).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Final, TypeVar

from cachetools import TTLCache

HOT_TTL_S: Final = 2.0
HOT_MAX_ENTRIES: Final = 10_000

T = TypeVar("T")


class HotReads:
    def __init__(
        self,
        ttl_s: float = HOT_TTL_S,
        maxsize: int = HOT_MAX_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._cache: TTLCache[tuple[str, str, Hashable], object] = TTLCache(
            maxsize, ttl_s, timer=timer
        )
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}  # per tenant: bumped by forget()
        self._kind_epochs: dict[str, int] = {}  # per kind: bumped by forget_kind()

    def get(self, kind: str, tenant: str, load: Callable[[], T], key: Hashable = None) -> T:
        """The cached value of (kind, tenant, key), loaded on a miss. A value loaded while
        `forget(tenant)` or `forget_kind(kind)` ran is returned to its caller but not kept."""
        full = (kind, tenant, key)
        with self._lock:
            try:
                return self._cache[full]  # type: ignore[return-value]
            except KeyError:
                epoch = self._epoch(kind, tenant)
        value = load()
        with self._lock:
            if self._epoch(kind, tenant) == epoch:
                self._cache[full] = value
        return value

    def forget(self, tenant: str) -> None:
        """Drop everything cached for the tenant (after a write to its rows commits)."""
        with self._lock:
            self._epochs[tenant] = self._epochs.get(tenant, 0) + 1
            for full in [k for k in self._cache if k[1] == tenant]:
                self._cache.pop(full, None)

    def forget_kind(self, kind: str) -> None:
        """Drop one kind of row for every tenant (a write that may touch many tenants: the
        executor recording sends and failures drops the ESP call counts)."""
        with self._lock:
            self._kind_epochs[kind] = self._kind_epochs.get(kind, 0) + 1
            for full in [k for k in self._cache if k[0] == kind]:
                self._cache.pop(full, None)

    def _epoch(self, kind: str, tenant: str) -> tuple[int, int]:
        return self._epochs.get(tenant, 0), self._kind_epochs.get(kind, 0)
