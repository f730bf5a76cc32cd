"""Typed settings: SENDFLOWR_* environment variables, then an optional TOML file, then defaults.

Every port's backend is chosen by a URL. A bad URL fails at start-up with one line naming the
setting (`SettingsError`), never later in a request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "SENDFLOWR_CONFIG"
MIN_EXPLANATION_RETENTION_DAYS = 200
DEFAULT_CONFIG_FILE = Path("sendflowr.toml")


class SettingsError(ValueError):
    """A setting is wrong; the message is one line per problem, naming the setting."""


@dataclass(frozen=True, slots=True)
class EventStoreURL:
    kind: Literal["chdb", "clickhouse"]
    path: Path | None = None  # chdb: data directory
    database: str = "sendflowr"
    host: str = ""
    port: int = 8123
    username: str = "default"
    password: str = ""
    secure: bool = False


@dataclass(frozen=True, slots=True)
class MetadataURL:
    kind: Literal["sqlite", "postgresql"]
    sqlalchemy_url: str


@dataclass(frozen=True, slots=True)
class BusURL:
    kind: Literal["inline", "kafka"]
    bootstrap: str = ""


@dataclass(frozen=True, slots=True)
class CacheURL:
    kind: Literal["memory", "redis"]
    url: str = ""


def _db_name(raw: str) -> str:
    name = raw.strip("/") or "sendflowr"
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r} may hold only letters, digits and '_'")
    return name


def parse_event_store_url(raw: str) -> EventStoreURL:
    parts = urlsplit(raw)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    match parts.scheme:
        case "chdb":
            # chdb://var/events is relative (netloc 'var'); chdb:///abs/path is absolute.
            path = unquote(parts.netloc + parts.path)
            if not path:
                raise ValueError("chdb:// needs a directory, e.g. chdb://var/events")
            db = _db_name(query.get("database", "sendflowr"))
            return EventStoreURL("chdb", path=Path(path), database=db)
        case "clickhouse" | "clickhouses":
            if not parts.hostname:
                raise ValueError(
                    "clickhouse:// needs a host, e.g. clickhouse://user:pass@host:8123/db"
                )
            try:
                port = parts.port or 8123
            except ValueError:
                raise ValueError("the port is not a number") from None
            return EventStoreURL(
                "clickhouse",
                database=_db_name(parts.path),
                host=parts.hostname,
                port=port,
                username=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                secure=parts.scheme == "clickhouses",
            )
        case _:
            raise ValueError(
                f"unknown scheme {parts.scheme or raw!r}; expected chdb://DIR or "
                "clickhouse://user:pass@host:8123/db"
            )


def parse_metadata_url(raw: str) -> MetadataURL:
    parts = urlsplit(raw)
    match parts.scheme:
        case "sqlite":
            if not raw.startswith("sqlite:///") or len(raw) <= len("sqlite:///"):
                raise ValueError(
                    "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
                )
            return MetadataURL("sqlite", raw)
        case "postgresql" | "postgres" | "postgresql+psycopg":
            if not parts.hostname and "host=" not in parts.query:
                raise ValueError("postgresql:// needs a host, e.g. postgresql://user@host:5432/db")
            try:
                _ = parts.port
            except ValueError:
                raise ValueError("the port is not a number") from None
            rest = raw.split("://", 1)[1]
            return MetadataURL("postgresql", f"postgresql+psycopg://{rest}")
        case _:
            raise ValueError(
                f"unknown scheme {parts.scheme or raw!r}; expected sqlite:///path.db or "
                "postgresql://user:pass@host:5432/db"
            )


def parse_bus_url(raw: str) -> BusURL:
    if raw == "inline":
        return BusURL("inline")
    parts = urlsplit(raw)
    if parts.scheme == "kafka":
        hosts = parts.netloc
        if not hosts:
            raise ValueError("kafka:// needs host:port[,host:port...], e.g. kafka://localhost:9092")
        for hp in hosts.split(","):
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{hp!r} is not host:port")
        return BusURL("kafka", bootstrap=hosts)
    raise ValueError(f"unknown bus {raw!r}; expected 'inline' or kafka://host:9092")


def parse_cache_url(raw: str) -> CacheURL:
    if raw == "memory":
        return CacheURL("memory")
    parts = urlsplit(raw)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("redis:// needs a host, e.g. redis://localhost:6379/0")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("the port is not a number") from None
        return CacheURL("redis", raw)
    raise ValueError(f"unknown feature cache {raw!r}; expected 'memory' or redis://host:6379/0")


class Settings(BaseSettings):
    """All of SendFlowr's configuration. Environment: SENDFLOWR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="SENDFLOWR_", extra="forbid", frozen=True)

    event_store_url: str = Field("chdb://var/events", description="chdb://DIR or clickhouse://")
    metadata_url: str = Field("sqlite:///var/meta.db", description="sqlite:/// or postgresql://")
    bus_url: str = Field("inline", description="inline or kafka://host:9092")
    kafka_topic_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]{0,200}$",
        description="prepended to the topic names (email-events, timing-decisions, ...)",
    )
    kafka_partitions: int = Field(
        12, ge=1, le=10_000, description="partitions of a topic created at start-up"
    )
    kafka_replication_factor: int = Field(
        1, ge=1, le=16, description="replicas of a topic created at start-up"
    )
    kafka_publish_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="longest wait for the broker's acknowledgement (then 503)"
    )
    kafka_consumer_group: str = Field(
        "sendflowr-consumer", min_length=1, description="consumer group of `sendflowr consumer`"
    )
    kafka_batch_size: int = Field(
        20_000, ge=1, le=1_000_000, description="most messages the consumer processes at once"
    )
    kafka_batch_timeout_seconds: float = Field(
        0.5, gt=0, le=60, description="longest wait for a batch to fill"
    )
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1_000, le=300_000, description="consumer group session timeout"
    )
    kafka_store_retry_seconds: float = Field(
        60.0,
        ge=0,
        le=3_600,
        description="how long the consumer retries a failed store write before it stops",
    )
    kafka_client_config: dict[str, str] = Field(
        default_factory=dict,
        description='extra librdkafka properties, e.g. {"security.protocol": "SASL_SSL"}',
    )
    feature_cache_url: str = Field("memory", description="memory or redis://host:6379/0")
    feature_cache_prefix: str = Field(
        "sf:f:",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9:_.-]+$",
        description="Redis key prefix of the feature cache (keys: <prefix><tenant>:...)",
    )
    feature_cache_ttl_seconds: int = Field(
        0, ge=0, le=365 * 86_400, description="Redis feature entries expire after this; 0 never"
    )
    explanation_retention_days: int = Field(
        400,
        ge=0,
        le=36_500,
        description="decision explanations (timing_explanations) are deleted this many days "
        "after they were made, by the table's TTL; 0 keeps them for ever. At least "
        f"{MIN_EXPLANATION_RETENTION_DAYS}: the confidence map is fitted on 180 days of past "
        "decisions, targeted up to 14 days after they were made",
    )
    intake_linger_ms: int = Field(
        200,
        ge=0,
        le=5_000,
        description="under load (deliveries less than this apart), an accepted batch's write "
        "waits until the batch is this old so concurrent ones share it (one chDB part, one "
        "archive file); the 2xx comes after the write. 0: write at once",
    )
    malloc_mmap_threshold_kib: int = Field(
        128,
        ge=0,
        le=32 * 1024,
        description="glibc: blocks this large (KiB) get their own mapping, returned to the "
        "system when freed (`run`, `worker` and `consumer` set it at start-up; glibc's own "
        "default moves up and keeps freed numpy temporaries in its heap). 0: glibc's default",
    )
    api_worker_threads: int = Field(
        8,
        ge=1,
        le=1_000,
        description="threads the API runs blocking work on (decisions, webhook deliveries, "
        "store reads); a request finding them all busy waits for one. Python runs one of them "
        "at a time, and more of them mostly hand the GIL to each other (anyio's default is 40)",
    )
    api_delivery_threads: int = Field(
        32,
        ge=1,
        le=1_000,
        description="threads the signed webhook receivers run on, apart from "
        "api_worker_threads: a delivery keeps its thread until its events are durable (its "
        "group write), so deliveries in flight wait here instead of taking the threads "
        "decisions and reads run on",
    )
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="Python's cyclic garbage collector runs after this many more allocations "
        "than frees (`run`, `worker` and `consumer` set it at start-up; Python's default, 700, "
        "means hundreds of collections a second under webhook load). 0: Python's default",
    )
    feature_cache_warmup: bool = Field(
        True,
        description="memory cache: `sendflowr run` rebuilds every tenant's people from the event "
        "store in the background at start-up, so first decisions need no store read",
    )
    feature_cache_socket_timeout_seconds: float = Field(
        0.5, gt=0, le=60, description="Redis read/write timeout: longer is an outage (degraded)"
    )
    feature_cache_connect_timeout_seconds: float = Field(
        0.5, gt=0, le=60, description="Redis connect timeout"
    )
    feature_cache_retry_seconds: float = Field(
        1.0,
        ge=0,
        le=300,
        description="after a Redis failure, serve degraded (no Redis calls) this long, then retry",
    )
    data_dir: Path = Field(Path("var"), description="where embedded state and keys live")
    hash_key: SecretStr | None = Field(
        None, description="key for hashing emails; generated under data_dir when unset"
    )
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    demo_tenant: str = Field("demo", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    demo_profiles: int = Field(2000, ge=0, le=1_000_000)
    demo_days: int = Field(60, ge=1, le=730)
    max_future_skew_seconds: int = Field(
        86_400, ge=0, description="events dated further ahead than this are rejected"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    identity_blocked_values: list[str] = Field(
        default_factory=list, description="extra placeholder values that identify nobody"
    )
    identity_blocked_patterns: list[str] = Field(
        default_factory=list, description="extra regexes (searched in the lower-cased value)"
    )
    identity_limits: dict[str, int] = Field(
        default_factory=dict,
        description='per-person limits by kind or family, e.g. {"email": 5, "esp": 1}',
    )

    secret_key: SecretStr | None = Field(
        None,
        description=(
            "Fernet key(s) encrypting ESP credentials at rest, comma-separated, newest first "
            "(older keys still decrypt: rotation); credentials are refused without one"
        ),
    )
    admin_api_key: SecretStr | None = Field(
        None,
        min_length=24,
        description=(
            "the bootstrap operator key (admin on every tenant), sent as "
            "'Authorization: Bearer <key>'; `sendflowr run` generates one under data_dir "
            "when unset"
        ),
    )
    rate_limit_read: str = Field(
        "6000/minute", description="requests per API key for read keys (limits notation)"
    )
    rate_limit_write: str = Field(
        "6000/minute", description="requests per API key for write keys (limits notation)"
    )
    rate_limit_admin: str = Field(
        "1200/minute", description="requests per API key for admin keys (limits notation)"
    )
    rate_limit_storage_url: str | None = Field(
        None,
        description=(
            "where rate-limit counters live: memory:// or redis://host:6379/N; unset: the "
            "feature cache's Redis when it is redis://, else memory (per process)"
        ),
    )
    metrics_public: bool = Field(
        False, description="serve /metrics without a key (only on a private scrape network)"
    )
    public_url: str = Field(
        "http://127.0.0.1:8001",
        description="how ESPs and browsers reach this service (OAuth redirect, webhooks)",
    )
    klaviyo_api_url: str = Field(
        "https://a.klaviyo.com", description="Klaviyo's API (a local simulator in development)"
    )
    klaviyo_authorize_url: str = Field(
        "https://www.klaviyo.com/oauth/authorize", description="Klaviyo's OAuth consent page"
    )
    klaviyo_client_id: str | None = Field(None, description="OAuth app client id")
    klaviyo_client_secret: SecretStr | None = Field(None, description="OAuth app client secret")
    klaviyo_scopes: str = Field(
        "accounts:read events:read events:write metrics:read profiles:read campaigns:read "
        "flows:read lists:read segments:read webhooks:read webhooks:write",
        description="OAuth scopes requested, space-separated",
    )
    backfill_concurrency: int = Field(
        4, ge=1, le=64, description="(metric, day) units fetched at once per backfill"
    )
    backfill_worker: bool = Field(
        True, description="run queued backfills inside the API process (embedded default)"
    )
    sync_interval_seconds: int = Field(
        0, ge=0, description="incremental Klaviyo sync every N seconds (0: off)"
    )
    webhook_tolerance_seconds: int = Field(
        300, ge=1, le=3600, description="webhook timestamps further from now are refused"
    )
    esp_capacity_share: float = Field(
        0.95,
        gt=0,
        le=1,
        description="share of an ESP's sends-a-minute ceiling the scheduler books per minute",
    )
    executor: bool = Field(
        True, description="fire due intent triggers inside the API process (embedded default)"
    )
    executor_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="how often the executor looks for due triggers"
    )
    raw_archive_url: str | None = Field(
        None,
        description=(
            "where every accepted raw ESP payload is also kept as Parquet (a directory or an "
            "fsspec URL such as s3://bucket/prefix); unset: DATA_DIR/archive; '' or 'off': none"
        ),
    )

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            from sendflowr.secrets import parse_keys

            parse_keys(v.get_secret_value())
        return v

    @field_validator("explanation_retention_days")
    @classmethod
    def _check_retention(cls, v: int) -> int:
        if 0 < v < MIN_EXPLANATION_RETENTION_DAYS:
            raise ValueError(
                f"{v} days is too short: 0 (keep for ever) or at least "
                f"{MIN_EXPLANATION_RETENTION_DAYS} (the confidence map reads 180 days of "
                "decisions targeted up to 14 days after they were made)"
            )
        return v

    @field_validator("rate_limit_read", "rate_limit_write", "rate_limit_admin")
    @classmethod
    def _check_rate_limit(cls, v: str) -> str:
        from limits import parse_many

        try:
            parse_many(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate limit such as '600/minute'") from None
        return v

    @field_validator("public_url", "klaviyo_api_url", "klaviyo_authorize_url")
    @classmethod
    def _check_http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("identity_blocked_patterns")
    @classmethod
    def _check_patterns(cls, v: list[str]) -> list[str]:
        import re

        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return v

    @field_validator("identity_limits")
    @classmethod
    def _check_limits(cls, v: dict[str, int]) -> dict[str, int]:
        for kind, limit in v.items():
            if limit < 1:
                raise ValueError(f"limit for {kind!r} must be at least 1, got {limit}")
        return v

    @field_validator("event_store_url", "metadata_url", "bus_url", "feature_cache_url")
    @classmethod
    def _check_url(cls, v: str, info: ValidationInfo) -> str:
        _URL_PARSERS[str(info.field_name)](v)
        return v

    @property
    def event_store(self) -> EventStoreURL:
        return parse_event_store_url(self.event_store_url)

    @property
    def metadata(self) -> MetadataURL:
        return parse_metadata_url(self.metadata_url)

    @property
    def bus(self) -> BusURL:
        return parse_bus_url(self.bus_url)

    @property
    def feature_cache(self) -> CacheURL:
        return parse_cache_url(self.feature_cache_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _config_file()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


_URL_PARSERS: dict[str, Callable[[str], object]] = {
    "event_store_url": parse_event_store_url,
    "metadata_url": parse_metadata_url,
    "bus_url": parse_bus_url,
    "feature_cache_url": parse_cache_url,
}


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SettingsError(f"{CONFIG_ENV}: no such file {explicit!r}")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise SettingsError with one line per bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            reason = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"SENDFLOWR_{field.upper()} ({field}): {reason}")
        raise SettingsError("\n".join(lines)) from None
    except SettingsError:  # already one line naming the setting (a missing config file)
        raise
    except ValueError as exc:  # a malformed TOML file
        raise SettingsError(f"{CONFIG_ENV}: {exc}") from None
