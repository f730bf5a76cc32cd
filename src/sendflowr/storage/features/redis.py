"""Feature cache on Redis (redis-py): one value per (tenant, universal id), shared by every API,
consumer and worker process.

Keys: `<prefix><tenant>:g` holds the tenant's generation (a random token) and
`<prefix><tenant>:p:<universal id>` a profile: `b"<generation>:" + ProfileFeatures.to_bytes()`.
An entry whose generation is not the tenant's current one is not there (a miss). Replacing the
generation (one SET, atomic) therefore empties the tenant at once; the old entries are deleted
afterwards or expire (`feature_cache_ttl_seconds`). A token is never reused and a missing
generation key matches nothing (the next write creates a fresh one), so an evicted or deleted
generation key can only empty the cache, never bring old entries back. Keep it out of reach of
eviction: `volatile-lru` with a TTL on entries, or `allkeys-lru` (the key is read on every
lookup, so it is the last one LRU evicts).

Writes that decide correctness are server-side Lua, one round trip per chunk:
- put: stamps the current generation on each value;
- fold: compare-and-set. The profiles are read with MGET, folded here, and written back only if
  each one is still byte-for-byte what was read (SHA-1) and the generation unchanged; otherwise
  the entry is deleted. A concurrent fold, invalidation or bump therefore never loses an update:
  the profile is rebuilt from the event store (where the batch already is) on its next read.

Degraded mode. Redis being down (refused, timed out, loading) is never an error to a caller:
reads are misses (the caller rebuilds from the event store), writes are skipped, and for
`retry_seconds` after a failure Redis is not called at all (no request waits for a timeout
twice). A skipped fold, invalidation or clear leaves entries that may be stale once Redis is
back (it may have kept them: persistence, a network partition), so the tenant is marked dirty;
before this process uses Redis again - and from a background thread, in case no call comes -
it gives those tenants new generations and re-sends the skipped invalidations (an erased person's
entry is deleted, not just hidden). A process that dies while dirty cannot do this: set a TTL
to bound that case, or run `sendflowr features rebuild`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sendflowr.metrics import FEATURE_CACHE_FAILURES, observe_feature_lookups
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.health import BackendHealth
from sendflowr.timing.features import (
    BatchColumns,
    FeatureTable,
    FoldContext,
    ProfileFeatures,
    apply_batch,
    restrict,
)

log = logging.getLogger("sendflowr.features.redis")

CHUNK: Final = 1_000  # keys per MGET / script call (a script blocks Redis while it runs)
MAX_PENDING: Final = 100_000  # skipped invalidations remembered for re-sending

_PUT: Final = """
redis.call('SET', KEYS[1], ARGV[2], 'NX')
local g = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  if ttl > 0 then
    redis.call('SET', KEYS[i], g .. ':' .. ARGV[i + 1], 'EX', ttl)
  else
    redis.call('SET', KEYS[i], g .. ':' .. ARGV[i + 1])
  end
end
return #KEYS - 1
"""

# ARGV: expected generation, ttl, then per key: sha1 of the value read, new body ('' = delete)
_FOLD_CAS: Final = """
local g = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
local written, conflicts = 0, 0
for j = 1, #KEYS - 1 do
  local k = KEYS[j + 1]
  local old = redis.call('GET', k)
  local new = ARGV[2 + 2 * j]
  if g ~= ARGV[1] or not old or redis.sha1hex(old) ~= ARGV[1 + 2 * j] then
    if old then
      redis.call('UNLINK', k)
      conflicts = conflicts + 1
    end
  elseif new == '' then
    redis.call('UNLINK', k)
  else
    if ttl > 0 then
      redis.call('SET', k, g .. ':' .. new, 'EX', ttl)
    else
      redis.call('SET', k, g .. ':' .. new)
    end
    written = written + 1
  end
end
return {written, conflicts}
"""


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _token() -> str:
    return uuid.uuid4().hex


def _split(raw: bytes) -> tuple[bytes, bytes]:
    gen, _, body = raw.partition(b":")
    return gen, body


class RedisFeatureCache(FeatureCache):
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sf:f:",
        ttl_seconds: int = 0,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retry_seconds: float = 1.0,
    ) -> None:
        # One quick retry (no backoff): a pooled connection to a Redis that restarted fails once
        # and reconnects; a longer wait would be a request waiting on a dead cache.
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.retry_seconds = retry_seconds
        self._put = self.client.register_script(_PUT)
        self._cas = self.client.register_script(_FOLD_CAS)
        self._lock = threading.Lock()
        self._recovering = threading.Lock()
        self._down_until = 0.0
        self._last_error = ""
        self._dirty: set[str] = set()  # tenants whose writes were skipped during an outage
        self._pending: dict[str, set[str]] = {}  # invalidations skipped during an outage
        self._clears: set[str] = set()  # tenants whose clear_tenant was skipped
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- keys --------------------------------------------------------------------------------
    def _gen_key(self, tenant: str) -> str:
        return f"{self.prefix}{tenant}:g"

    def _key(self, tenant: str, uid: str) -> str:
        return f"{self.prefix}{tenant}:p:{uid}"

    # -- the interface -----------------------------------------------------------------------
    def get_many(self, tenant: str, universal_ids: Iterable[str]) -> dict[str, ProfileFeatures]:
        ids = list(dict.fromkeys(universal_ids))
        if not ids:
            return {}
        raw = self._read(tenant, ids, "get")
        if raw is None:
            observe_feature_lookups(self.backend, 0, 0, len(ids))
            return {}
        out: dict[str, ProfileFeatures] = {}
        for uid, (_, body) in raw.items():
            try:
                out[uid] = ProfileFeatures.from_bytes(body)
            except ValueError:  # another format version: a miss, rebuilt and overwritten
                continue
        observe_feature_lookups(self.backend, len(out), len(ids) - len(out))
        return out

    def put_many(self, tenant: str, features: Mapping[str, ProfileFeatures]) -> None:
        if not features or not self._ready():
            return
        items = list(features.items())
        gk = self._gen_key(tenant)
        try:
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(items), CHUNK):
                part = items[i : i + CHUNK]
                self._put(
                    keys=[gk, *(self._key(tenant, u) for u, _ in part)],
                    args=[self.ttl, _token(), *(f.to_bytes() for _, f in part)],
                    client=pipe,
                )
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc, "put")  # nothing becomes stale: the entry is simply not cached

    def put_table(self, tenant: str, universal_ids: Sequence[str], table: FeatureTable) -> None:
        """The bulk rebuild: pipelined SETs, CHUNK a round trip, stamped with the generation read
        first (were it bumped meanwhile, these entries are misses: safe)."""
        if not universal_ids or not self._ready():
            return
        try:
            gk = self._gen_key(tenant)
            opening = self.client.pipeline(transaction=False)
            opening.set(gk, _token(), nx=True)
            opening.get(gk)
            gen = opening.execute()[1]
            head = (gen.encode() if isinstance(gen, str) else bytes(gen)) + b":"
            for start in range(0, len(universal_ids), CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for i in range(start, min(start + CHUNK, len(universal_ids))):
                    key = self._key(tenant, universal_ids[i])
                    pipe.set(key, head + table.row(i).to_bytes(), ex=self.ttl or None)
                pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc, "put_table")

    def fold(self, tenant: str, cols: BatchColumns, ctx: FoldContext) -> int:
        """Read the batch's cached profiles (one round trip), fold them here, compare-and-set
        them back (one round trip); see the module docstring."""
        raw = self._read(tenant, cols.profiles, "fold")
        if raw is None:
            self._mark_dirty(tenant)
            return 0
        present: dict[str, ProfileFeatures] = {}
        for uid, (_, body) in raw.items():
            try:
                present[uid] = ProfileFeatures.from_bytes(body)
            except ValueError:
                continue
        if not present:
            return 0
        read_gen = {uid: gen for uid, (gen, _) in raw.items() if uid in present}
        digest = {
            uid: hashlib.sha1(gen + b":" + body, usedforsecurity=False).hexdigest()
            for uid, (gen, body) in raw.items()
            if uid in present
        }
        updated, dropped = apply_batch(present, restrict(cols, set(present)), ctx)
        changes: list[tuple[str, bytes]] = [(u, f.to_bytes()) for u, f in updated.items()]
        changes += [(u, b"") for u in dropped]
        gk = self._gen_key(tenant)
        written = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            by_gen: dict[bytes, list[tuple[str, bytes]]] = {}
            for uid, body in changes:
                by_gen.setdefault(read_gen[uid], []).append((uid, body))
            for gen, group in by_gen.items():
                for i in range(0, len(group), CHUNK):
                    part = group[i : i + CHUNK]
                    args: list[Any] = [gen, self.ttl]
                    for uid, body in part:
                        args += [digest[uid], body]
                    self._cas(
                        keys=[gk, *(self._key(tenant, u) for u, _ in part)], args=args, client=pipe
                    )
            for result in pipe.execute():
                written += int(result[0])
        except redis.RedisError as exc:
            self._failed(exc, "fold")
            self._mark_dirty(tenant)
            return 0
        return written

    def invalidate(self, tenant: str, universal_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(universal_ids))
        if not ids:
            return
        if self._ready():
            try:
                pipe = self.client.pipeline(transaction=False)
                for part in _chunks(ids):
                    pipe.unlink(*(self._key(tenant, u) for u in part))
                pipe.execute()
                return
            except redis.RedisError as exc:
                self._failed(exc, "invalidate")
        else:
            FEATURE_CACHE_FAILURES.labels(self.backend, "invalidate").inc()
        with self._lock:
            pending = self._pending.setdefault(tenant, set())
            if sum(len(p) for p in self._pending.values()) + len(ids) <= MAX_PENDING:
                pending.update(ids)  # beyond that the generation bump still hides them
        self._mark_dirty(tenant)

    def clear_tenant(self, tenant: str) -> None:
        """A new generation (every entry is a miss at once), then SCAN + UNLINK the tenant's
        profile keys; never FLUSHDB (the Redis may be shared)."""
        if not self._ready():
            FEATURE_CACHE_FAILURES.labels(self.backend, "clear_tenant").inc()
            self._mark_dirty(tenant, clear=True)
            return
        try:
            self.client.set(self._gen_key(tenant), _token())
            self._sweep(tenant)
        except redis.RedisError as exc:
            self._failed(exc, "clear_tenant")
            self._mark_dirty(tenant, clear=True)

    def _sweep(self, tenant: str) -> None:
        match = _glob_escape(f"{self.prefix}{tenant}:p:") + "*"
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=match, count=CHUNK):
            batch.append(key)
            if len(batch) >= CHUNK:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)

    def health(self) -> BackendHealth:
        """PING (the client's short timeouts). Down is reported as `degraded`: decisions are
        still served, their features rebuilt from the event store."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self._failed(exc, "ping")
            return BackendHealth(
                "feature_cache",
                self.backend,
                "degraded",
                f"redis unreachable ({self._last_error}); features are rebuilt from the event "
                "store for every decision",
            )
        with self._lock:
            self._down_until = 0.0
        if not self._recover():
            return BackendHealth("feature_cache", self.backend, "degraded", self._last_error)
        return BackendHealth("feature_cache", self.backend, "ok", info={"prefix": self.prefix})

    def degraded(self) -> bool:
        with self._lock:
            return time.monotonic() < self._down_until or bool(self._dirty)

    def close(self) -> None:
        self._closed.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout=5)
        self.client.close()

    # -- reads -------------------------------------------------------------------------------
    def _read(
        self, tenant: str, ids: Sequence[str], operation: str
    ) -> dict[str, tuple[bytes, bytes]] | None:
        """uid -> (generation, body) of the entries of the current generation; None when Redis
        is unavailable. Each MGET also reads the generation, so a chunk is consistent."""
        if not self._ready():
            FEATURE_CACHE_FAILURES.labels(self.backend, operation).inc()
            return None
        gk = self._gen_key(tenant)
        try:
            pipe = self.client.pipeline(transaction=False)
            for part in _chunks(ids):
                pipe.mget([gk, *(self._key(tenant, u) for u in part)])
            replies: list[list[bytes | None]] = pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc, operation)
            return None
        out: dict[str, tuple[bytes, bytes]] = {}
        for part, values in zip(_chunks(ids), replies, strict=True):
            current = values[0]
            if current is None:  # no generation yet (or it was evicted): nothing is valid
                continue
            for uid, raw in zip(part, values[1:], strict=True):
                if raw is not None:
                    gen, body = _split(raw)
                    if gen == current:
                        out[uid] = (gen, body)
        return out

    # -- outage bookkeeping ------------------------------------------------------------------
    def _ready(self) -> bool:
        """False while in the back-off after a failure; otherwise true once any tenant made
        dirty by an outage has been invalidated."""
        with self._lock:
            if time.monotonic() < self._down_until:
                return False
            clean = not self._dirty and not self._pending
        return clean or self._recover()

    def _failed(self, exc: Exception, operation: str) -> None:
        FEATURE_CACHE_FAILURES.labels(self.backend, operation).inc()
        with self._lock:
            first = time.monotonic() >= self._down_until
            self._down_until = time.monotonic() + self.retry_seconds
            self._last_error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            log.error("feature cache: unexpected Redis error in %s", operation, exc_info=exc)
        elif first:
            log.warning(
                "feature cache: Redis unavailable (%s) in %s; serving degraded for %.1f s",
                self._last_error,
                operation,
                self.retry_seconds,
            )

    def _mark_dirty(self, tenant: str, *, clear: bool = False) -> None:
        with self._lock:
            self._dirty.add(tenant)
            if clear:
                self._clears.add(tenant)
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._watcher = threading.Thread(
                target=self._watch, name="feature-cache-recovery", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        while not self._closed.wait(max(self.retry_seconds, 0.2)):
            with self._lock:
                if not self._dirty and not self._pending and not self._clears:
                    return
                waiting = time.monotonic() < self._down_until
            if not waiting and self._recover():
                return

    def _recover(self) -> bool:
        """A new generation for every dirty tenant; re-send the skipped invalidations and
        clears (a deleted tenant's entries are deleted, not just hidden)."""
        with self._recovering:
            with self._lock:
                dirty = set(self._dirty)
                pending = {t: set(ids) for t, ids in self._pending.items()}
                clears = set(self._clears)
            if not dirty and not pending:
                return True
            try:
                pipe = self.client.pipeline(transaction=False)
                for tenant in sorted(dirty):
                    pipe.set(self._gen_key(tenant), _token())
                for tenant, ids in pending.items():
                    for part in _chunks(sorted(ids)):
                        pipe.unlink(*(self._key(tenant, u) for u in part))
                pipe.execute()
                for tenant in sorted(clears):
                    self._sweep(tenant)
            except redis.RedisError as exc:
                self._failed(exc, "recover")
                return False
            with self._lock:
                self._dirty -= dirty
                self._clears -= clears
                for tenant, ids in pending.items():
                    left = self._pending.get(tenant, set()) - ids
                    if left:
                        self._pending[tenant] = left
                    else:
                        self._pending.pop(tenant, None)
            log.warning(
                "feature cache: Redis is back; emptied %d tenant(s) whose updates were skipped",
                len(dirty),
            )
            return True
