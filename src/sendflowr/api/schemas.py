"""Request and response bodies (pydantic, so they appear in the OpenAPI document)."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from sendflowr.events import CanonicalEvent

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
UID_PATTERN = r"^sf_[0-9a-f]{16}$"
INTENT_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"  # sendflowr.intents.INTENT_ID
OPTIONAL_INTENT_ID_PATTERN = r"^$|^[a-z0-9][a-z0-9_.-]{0,99}$"
KLAVIYO_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# ESP and external ids are opaque, but printable and without quotes, braces, spaces or
# control characters: no real ESP or CRM id needs them, and refusing them keeps injection
# strings and path tricks out of every store and log.
OPAQUE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+=/-]{0,127}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENTIFIER_VALUE = {
    "universal_id": (re.compile(UID_PATTERN), "a universal id is sf_ and 16 hex digits"),
    "klaviyo_id": (re.compile(KLAVIYO_ID_PATTERN), "a Klaviyo id is 1-64 of A-Z a-z 0-9 _ -"),
}


EARLIEST: datetime = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: datetime = datetime(2100, 1, 1, tzinfo=UTC)


def check_instant(v: datetime | None) -> datetime | None:
    """A window bound SendFlowr can compute with: in [2000-01-01, 2100-01-01), so no date
    arithmetic on it can overflow (year 1, 9999 and epoch overflows are refused here)."""
    if v is None:
        return v
    aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise ValueError(f"{v.isoformat()} is outside [2000-01-01, 2100-01-01)")
    return v


def has_invisible(value: str) -> bool:
    """Control characters (NUL...), and invisible format characters (bidi overrides,
    zero-width joiners) that make two identifiers look alike."""
    return bool(_CONTROL.search(value)) or any(
        unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in value if ord(ch) > 0x7F
    )


def check_email_lengths(value: str) -> str:
    """RFC 5321 limits: 64 characters before the @, 254 in all."""
    if len(value) > 254:
        raise ValueError("an email address has at most 254 characters")
    local = value.rpartition("@")[0]
    if len(local) > 64:
        raise ValueError("the part of an email address before the @ has at most 64 characters")
    return value


def check_identifier_value(kind: str, value: str) -> str:
    """The value of an identifier given as (type, value): no control characters, and the
    shape its type needs (emails and phones are checked where they are parsed)."""
    if has_invisible(value):
        raise ValueError("must not contain control or invisible formatting characters")
    if kind == "email":
        check_email_lengths(value)
    if kind in _IDENTIFIER_VALUE:
        pattern, why = _IDENTIFIER_VALUE[kind]
        if not pattern.match(value):
            raise ValueError(why)
    elif kind.startswith(("external", "esp:", "ext:")) and not re.match(OPAQUE_ID_PATTERN, value):
        raise ValueError(
            "an ESP or external id is 1-128 of A-Z a-z 0-9 _ . : @ + = / - (starting with a "
            "letter or digit)"
        )
    return value


class BackendState(BaseModel):
    port: str
    backend: str
    state: Literal["ok", "degraded", "down"]
    detail: str = ""
    info: dict[str, str | int | float] = {}


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    backends: list[BackendState]


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TENANT_PATTERN, description="slug: a-z, 0-9, '_' and '-'")
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", description="IANA time zone of the brand, e.g. Europe/Warsaw")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v


class TenantOut(BaseModel):
    id: str
    name: str
    timezone: str
    created_at: datetime


class EventCountsOut(BaseModel):
    tenant: str
    total: int
    by_type: dict[str, int]


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=10_000,
        description="canonical events (schemas/canonical_event.v1.json)",
    )


def invisible_characters(event: CanonicalEvent) -> list[tuple[list[str], str]]:
    """The id fields of a canonical event that hold control or invisible characters (NUL,
    bidi overrides...), as (loc, message): such ids are refused at the API, not stored."""
    ids = event.identifiers
    fields: list[tuple[list[str], str | None]] = [
        (["esp_event_id"], event.esp_event_id),
        (["campaign_id"], event.campaign_id),
        (["flow_id"], event.flow_id),
        (["message_id"], event.message_id),
        (["identifiers", "esp_profile_id"], ids.esp_profile_id),
        (["identifiers", "anonymous_id"], ids.anonymous_id),
    ]
    for key, value in ids.external_ids.items():
        fields += [
            (["identifiers", "external_ids"], key),
            (["identifiers", "external_ids", key], value),
        ]
    return [
        (loc, "must not contain control or invisible formatting characters")
        for loc, value in fields
        if value is not None and has_invisible(value)
    ]


class IngestOut(BaseModel):
    received: int
    stored: int
    profiles_updated: int


class GenerateOut(BaseModel):
    tenant: str
    generated: int
    stored: int
    rejected: int
    profiles: int
    seconds: float


class IdentifierOut(BaseModel):
    type: str = Field(description="email (keyed hash), phone, esp:<name>, ext:<name> or anon")
    value: str


class MergeOut(BaseModel):
    id: int
    status: Literal["merged", "refused", "split"]
    survivor: str
    merged: str | None
    identifiers: list[IdentifierOut]
    reason: str
    occurrences: int
    source_event_id: str
    created_at: datetime
    split_at: datetime | None


class ProfileOut(BaseModel):
    tenant: str
    universal_id: str
    identifiers: list[IdentifierOut]
    aliases: list[str] = Field(description="universal ids merged into this person")
    created_at: datetime
    recent_merges: list[MergeOut]


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, max_length=200, description="who undoes the merge")


class SplitOut(BaseModel):
    merge: MergeOut
    restored_universal_id: str
    identifiers_moved_back: list[IdentifierOut]
    events_moved: int


class IdentifierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        max_length=64,
        description="email, phone, klaviyo_id, esp:<name>, external:<name>, anonymous, "
        "universal_id",
    )
    value: str = Field(min_length=1, max_length=320)

    @field_validator("value")
    @classmethod
    def _value(cls, v: str, info: ValidationInfo) -> str:
        return check_identifier_value(str(info.data.get("type", "")), v)


class DecideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN)
    identifier: IdentifierIn
    send_after: datetime | None = Field(None, description="default: now")
    send_before: datetime | None = Field(None, description="default: send_after + 24 hours")
    latency_estimate_seconds: int | None = Field(
        None, ge=0, le=86_400, description="default: the tenant's ESP latency"
    )
    intent_id: str = Field("", pattern=OPTIONAL_INTENT_ID_PATTERN)
    channel: Literal["email", "sms", "push"] = "email"
    include_curve: bool = Field(
        False,
        description="also return the scored curve the minute was chosen from (`curve`); "
        "the decision is made and recorded (explanation row) either way",
    )

    _window = field_validator("send_after", "send_before")(check_instant)


class LegacyDecideIn(BaseModel):
    """The request shape of the original notes (POST /timing-decision)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, pattern=TENANT_PATTERN, description="default: demo tenant")
    email: str | None = Field(None, max_length=320)
    klaviyo_id: str | None = Field(None, pattern=KLAVIYO_ID_PATTERN)
    send_after: datetime | None = None
    send_before: datetime | None = None
    latency_estimate_seconds: int | None = Field(None, ge=0, le=86_400)

    _window = field_validator("send_after", "send_before")(check_instant)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return None if v is None else check_identifier_value("email", v)


class AlternativeOut(BaseModel):
    target_minute_utc: datetime
    score: float


class SuppressionOut(BaseModel):
    policy: str = Field(
        description="unsubscribed, bounced, spam_complaint, tenant_breaker, esp_error_rate, "
        "or the window policies that left no minute (quiet_hours, recent_order, "
        "frequency_cap, joined by '+')"
    )
    reason: str


class CurvePointOut(BaseModel):
    minute_utc: datetime = Field(description="a candidate target (delivery) minute")
    score: float = Field(description="P(engagement within the horizon) if delivered then")
    allowed: bool = Field(description="false where a send policy refuses the minute")


class DecisionCurveOut(BaseModel):
    """The engine's scores over the window (timing/curve.py): every quarter hour, the window's
    ends and policy boundaries; linear between points."""

    horizon_seconds: int = Field(description="a score is P(engagement within this long)")
    points: list[CurvePointOut]


class DecisionOut(BaseModel):
    decision_id: str
    tenant: str
    universal_id: str
    intent_id: str
    suppressed: bool = Field(False, description="true: a policy forbids a send; no target")
    suppression: SuppressionOut | None = None
    target_minute_utc: datetime | None = Field(description="null when suppressed")
    trigger_timestamp_utc: datetime | None = Field(description="null when suppressed")
    latency_estimate_seconds: int
    confidence_score: float | None = Field(ge=0.0, le=1.0, description="null when suppressed")
    window: list[datetime]
    alternatives: list[AlternativeOut] = Field(description="allowed minutes; [] if suppressed")
    fallback_level: Literal["personal", "audience", "global"]
    context_weights: dict[str, float]
    policies: list[str] = Field([], description="policies that moved or suppressed the decision")
    exploration: bool = Field(False, description="placed by the randomised exploration rule")
    model_version: str
    explanation_ref: str
    curve: DecisionCurveOut | None = Field(
        None, description="with include_curve: the scores the minute was chosen from"
    )


class ExplanationOut(BaseModel):
    explanation_ref: str
    decision_id: str
    tenant: str
    universal_id: str
    intent_id: str
    created_at: datetime
    model_version: str
    suppressed: bool = False
    suppression: SuppressionOut | None = None
    target_minute_utc: datetime | None = Field(description="null when suppressed")
    trigger_timestamp_utc: datetime | None = Field(description="null when suppressed")
    confidence_score: float | None = Field(description="null when suppressed")
    model_confidence: float | None = Field(
        None,
        description="the engine's confidence before the tenant's calibration map (equal to "
        "confidence_score when the tenant has no map yet); null when suppressed",
    )
    fallback_level: str
    context_weights: dict[str, float]
    machine_opens_excluded: int
    policies: list[str]
    exploration: bool
    evidence: dict[str, Any]
    details: dict[str, Any]
    summary: str = Field(description="the explanation in words")


class CalibrationPointOut(BaseModel):
    stated: float = Field(description="the engine's confidence (a bin's mean)")
    calibrated: float = Field(description="what the tenant's past sends at it came to")


class CalibrationOut(BaseModel):
    tenant: str
    calibrated: bool = Field(description="false: too few past sends with an outcome yet")
    min_decisions: int = Field(description="past sends with an outcome a map needs")
    window_days: int = Field(description="decisions targeted this many days back are read")
    horizon_seconds: int = Field(description="an engagement this soon after the target counts")
    decisions: int | None = Field(description="past sends the map was fitted on")
    observed_rate: float | None = Field(description="share of them engaged within the horizon")
    brier_before: float | None = Field(description="Brier score of the model's confidence")
    brier_after: float | None = Field(description="Brier score through the map")
    points: list[CalibrationPointOut] = Field(
        description="the map: linear between points, flat beyond them"
    )
    summary: str = Field(description="the map in words")


class BatchDecideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN)
    recipients: list[IdentifierIn] = Field(min_length=1, max_length=100_000)
    send_after: datetime | None = None
    send_before: datetime | None = None
    latency_estimate_seconds: int | None = Field(None, ge=0, le=86_400)
    intent_id: str = Field("", pattern=OPTIONAL_INTENT_ID_PATTERN)
    channel: Literal["email", "sms", "push"] = "email"

    _window = field_validator("send_after", "send_before")(check_instant)


class BatchItemOut(BaseModel):
    index: int
    universal_id: str
    decision_id: str
    suppressed: bool = False
    suppression: SuppressionOut | None = None
    target_minute_utc: datetime | None = Field(description="null when suppressed")
    trigger_timestamp_utc: datetime | None = Field(description="null when suppressed")
    confidence_score: float | None = Field(ge=0.0, le=1.0, description="null when suppressed")
    fallback_level: Literal["personal", "audience", "global"]
    policies: list[str] = []
    exploration: bool = False
    explanation_ref: str


class BatchDecisionOut(BaseModel):
    tenant: str
    intent_id: str
    window: list[datetime]
    latency_estimate_seconds: int
    model_version: str
    suppressed: dict[str, int] = Field({}, description="suppressed recipients per policy")
    decisions: list[BatchItemOut]


# -- send policies -----------------------------------------------------------------------------
HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class QuietHoursIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=HHMM_PATTERN, description="local HH:MM quiet hours begin")
    end: str = Field(
        pattern=HHMM_PATTERN, description="local HH:MM they end (exclusive); may be next day"
    )

    @field_validator("end")
    @classmethod
    def _not_empty(cls, v: str, info: Any) -> str:
        if info.data.get("start") == v:
            raise ValueError("must differ from start (quiet hours of no length)")
        return v


class FrequencyCapIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=1_000, description="at most this many sends per person ...")
    period_hours: float = Field(
        gt=0, le=2_160, description="... in any rolling period of this many hours"
    )


class EspBreakerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float = Field(0.5, gt=0, le=1, description="trips above this share of failed calls")
    min_calls: int = Field(20, ge=1, le=1_000_000, description="over at least this many calls")
    window_minutes: int = Field(60, ge=1, le=10_080, description="due in this look-back")


PersonBreaker = Literal["unsubscribed", "bounced", "spam_complaint"]


class PolicyIn(BaseModel):
    """A tenant's send policies (PUT replaces them; absent fields take their defaults)."""

    model_config = ConfigDict(extra="forbid")

    quiet_hours: QuietHoursIn | None = Field(None, description="in the recipient's local time")
    frequency_cap: FrequencyCapIn | None = Field(None, description="across all intents")
    breakers: list[PersonBreaker] = Field(
        ["bounced", "spam_complaint", "unsubscribed"],
        description="person events that suppress every later send",
    )
    order_cooloff_hours: float = Field(
        0, ge=0, le=720, description="no send this long after an order (0: off)"
    )
    exploration_share: float = Field(
        0, ge=0, le=0.5, description="share of decisions placed at a random allowed minute"
    )
    esp_error_breaker: EspBreakerIn = Field(default_factory=EspBreakerIn)
    version: int | None = Field(
        None, ge=0, le=2**63 - 1, description="the version this change is based on (409 when stale)"
    )


class QuietHoursOut(BaseModel):
    start: str
    end: str


class FrequencyCapOut(BaseModel):
    count: int
    period_hours: float


class EspBreakerOut(BaseModel):
    rate: float
    min_calls: int
    window_minutes: int


class TenantBreakerOut(BaseModel):
    reason: str
    tripped_by: str
    tripped_at: datetime


class EspStateOut(BaseModel):
    esp: str
    sent: int
    failed: int
    error_rate: float
    tripped: bool


class BreakerStateOut(BaseModel):
    tenant: str
    tenant_breaker: TenantBreakerOut | None = Field(description="null: not tripped")
    esp: list[EspStateOut] = Field(description="recent calls per ESP, and whether they trip")
    suppressing: bool = Field(description="true: every decision of the tenant is suppressed")


class PolicyOut(BaseModel):
    tenant: str
    version: int = Field(description="0: never configured (the defaults)")
    updated_at: datetime | None
    quiet_hours: QuietHoursOut | None
    frequency_cap: FrequencyCapOut | None
    breakers: list[str]
    order_cooloff_hours: float
    exploration_share: float
    esp_error_breaker: EspBreakerOut
    tenant_breaker: TenantBreakerOut | None


class BreakerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="shown in every suppression")


class PolicyChangeOut(BaseModel):
    version: int
    action: Literal["updated", "tripped", "reset"]
    actor: str
    changed_at: datetime
    changes: dict[str, list[Any]]


# -- tenant settings and ESP accounts --------------------------------------------------------
def _http_url(v: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password")
    return v.rstrip("/")


class TenantSettingsIn(BaseModel):
    """Per-brand settings; a field given as null goes back to the default."""

    model_config = ConfigDict(extra="forbid")

    notification_url: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that receives the brand's connector notifications",
    )
    esp_latency_seconds: int | None = Field(
        None, ge=0, le=3600, description="seconds the ESP takes from trigger to delivery"
    )

    @field_validator("notification_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)


class TenantPatchIn(BaseModel):
    """Only the fields present change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, description="IANA time zone of the brand")
    settings: TenantSettingsIn | None = None

    @field_validator("name", "settings")
    @classmethod
    def _not_null(cls, v: object) -> object:
        if v is None:
            raise ValueError("may not be null")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str:
        if v is None:
            raise ValueError("may not be null")
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v


class TenantSettingsOut(BaseModel):
    notification_url: str | None = None
    esp_latency_seconds: int | None = None


class TenantDetailOut(TenantOut):
    settings: TenantSettingsOut


API_KEY_MIN_LENGTH = 10
API_KEY_MAX_LENGTH = 128


class KlaviyoApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(
        description="a Klaviyo private API key (starts with pk_); stored encrypted, never shown"
    )
    api_url: str | None = Field(
        None,
        max_length=2048,
        description="Klaviyo's API base URL, overriding the deployment's (e.g. a simulator)",
    )

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if not key.startswith("pk_"):
            raise ValueError("a Klaviyo private API key starts with 'pk_'")
        if not API_KEY_MIN_LENGTH <= len(key) <= API_KEY_MAX_LENGTH:
            raise ValueError(
                f"a Klaviyo private API key has {API_KEY_MIN_LENGTH} to {API_KEY_MAX_LENGTH} "
                "characters"
            )
        if not all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
            raise ValueError("a Klaviyo private API key holds only letters, digits, '_' and '-'")
        return v

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)


class AccountOut(BaseModel):
    """A connected ESP account: never a secret."""

    tenant: str
    esp: str
    auth_kind: Literal["api_key", "oauth", "hmac"]
    status: Literal["connected", "disconnected", "error"]
    account_id: str | None = Field(description="the ESP's id for the account")
    api_url: str | None = Field(description="API base URL override; null: the deployment's")
    last_error: str | None
    has_webhook_secret: bool
    has_flow_webhook_secret: bool
    created_at: datetime
    updated_at: datetime


class WebhookSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: SecretStr = Field(description="use this secret (16 to 256 characters)")

    @field_validator("secret")
    @classmethod
    def _length(cls, v: SecretStr) -> SecretStr:
        if not 16 <= len(v.get_secret_value()) <= 256:
            raise ValueError("a webhook secret has 16 to 256 characters")
        if any(c.isspace() or not c.isprintable() for c in v.get_secret_value()):
            raise ValueError("a webhook secret holds no spaces or control characters")
        return v


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="shown once: store it in Klaviyo now")
    flow: bool = Field(description="true: the secret for flow webhook actions")
