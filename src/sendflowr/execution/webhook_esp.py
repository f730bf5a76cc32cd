"""The webhook ESP: due sends POSTed, HMAC-signed, to a URL the tenant configured.

The second ESP binding, and the proof that execution is portable: any system that can verify
an HMAC receives SendFlowr's sends. Moving an intent from Klaviyo to this ESP changes its
binding (`{"event": ..., "max_batch": ...}`) and nothing else.

Credentials (stored encrypted by the AccountStore under esp "webhook", auth kind "hmac"):
`url`, `secret`, `requests_per_minute`, `timeout_seconds`.

Signature: `X-SendFlowr-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>` with
the unix seconds in `X-SendFlowr-Timestamp`. A receiver verifies with `verify` (constant-time,
timestamp tolerance, several `v1=` values accepted so a secret can be rotated).

Outcomes of one POST: 2xx -> every send ok; 429, 5xx, timeouts and transport errors ->
retryable (with `Retry-After` when given); 3xx and other 4xx -> failed for good. Redirects are
never followed. The dispatcher never raises for the receiver's behaviour and never logs or
returns the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
from aiolimiter import AsyncLimiter

from sendflowr import __version__
from sendflowr.errors import InvalidInputError
from sendflowr.execution.base import Send, SendResult

log = logging.getLogger("sendflowr.execution.webhook")

ESP: Final = "webhook"
AUTH_KIND: Final = "hmac"
PAYLOAD_TYPE: Final = "sendflowr.sends"

TIMESTAMP_HEADER: Final = "X-SendFlowr-Timestamp"
SIGNATURE_HEADER: Final = "X-SendFlowr-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SIGNATURE_VERSION: Final = "v1"

URL_MAX_LENGTH: Final = 500
SECRET_MIN_LENGTH: Final = 32
SECRET_MAX_LENGTH: Final = 256
REQUESTS_PER_MINUTE_MIN: Final = 1
REQUESTS_PER_MINUTE_MAX: Final = 100_000
DEFAULT_REQUESTS_PER_MINUTE: Final = 600
TIMEOUT_MIN: Final = 1
TIMEOUT_MAX: Final = 60
DEFAULT_TIMEOUT_SECONDS: Final = 10
EVENT_MAX_LENGTH: Final = 100
MAX_BATCH_MIN: Final = 1
MAX_BATCH_MAX: Final = 1000
DEFAULT_MAX_BATCH: Final = 100
DEFAULT_TOLERANCE_SECONDS: Final = 300
ERROR_BODY_CHARS: Final = 200
_READ_AT_MOST: Final = 4096  # bytes of a response body ever read
_MAX_RETRY_AFTER: Final = 86_400.0

_EVENT_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]+")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")

Loc = Sequence[str | int]


# -- validation ------------------------------------------------------------------------------
def _err(loc: Loc, field: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": [*loc, field], "msg": msg, "type": kind}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(
    raw: Mapping[str, Any],
    field: str,
    low: int,
    high: int,
    default: int,
    loc: Loc,
    errors: list[dict[str, Any]],
) -> int:
    value = raw.get(field)
    if value is None:
        return default
    if not _is_int(value):
        errors.append(_err(loc, field, "must be an integer", "int_type"))
        return default
    if not low <= value <= high:
        errors.append(_err(loc, field, f"must be between {low} and {high}", "out_of_range"))
        return default
    result: int = value
    return result


def _extra(
    raw: Mapping[str, Any], allowed: set[str], loc: Loc, errors: list[dict[str, Any]]
) -> None:
    for key in raw:
        if key not in allowed:
            errors.append(_err(loc, str(key), "unknown field", "extra_forbidden"))


def _url_problem(url: str) -> str | None:
    if not url:
        return "must not be empty"
    if len(url) > URL_MAX_LENGTH:
        return f"has at most {URL_MAX_LENGTH} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "holds no spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an absolute http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@): use the signing secret"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def validate_credentials(raw: Mapping[str, Any], *, loc: Loc = ()) -> dict[str, Any]:
    """Checked, normalised credentials `{url, secret, requests_per_minute, timeout_seconds}`.

    Raises InvalidInputError listing every bad field (`loc` is prefixed to each field's
    location, e.g. `("body",)`). No message ever repeats the secret.
    """
    errors: list[dict[str, Any]] = []
    _extra(raw, {"url", "secret", "requests_per_minute", "timeout_seconds"}, loc, errors)

    url = raw.get("url")
    if url is None:
        errors.append(_err(loc, "url", "Field required", "missing"))
    elif not isinstance(url, str):
        errors.append(_err(loc, "url", "must be a string", "string_type"))
    elif (problem := _url_problem(url)) is not None:
        errors.append(_err(loc, "url", f"the URL {problem}", "invalid_url"))

    secret = raw.get("secret")
    if secret is None:
        errors.append(_err(loc, "secret", "Field required", "missing"))
    elif not isinstance(secret, str):
        errors.append(_err(loc, "secret", "must be a string", "string_type"))
    elif not SECRET_MIN_LENGTH <= len(secret) <= SECRET_MAX_LENGTH:
        errors.append(
            _err(
                loc,
                "secret",
                f"a signing secret has {SECRET_MIN_LENGTH} to {SECRET_MAX_LENGTH} characters",
                "invalid_secret",
            )
        )
    elif any(c.isspace() or not c.isprintable() for c in secret):
        errors.append(
            _err(
                loc,
                "secret",
                "a signing secret holds no spaces or control characters",
                "invalid_secret",
            )
        )

    rpm = _int_in(
        raw,
        "requests_per_minute",
        REQUESTS_PER_MINUTE_MIN,
        REQUESTS_PER_MINUTE_MAX,
        DEFAULT_REQUESTS_PER_MINUTE,
        loc,
        errors,
    )

    timeout: float = DEFAULT_TIMEOUT_SECONDS
    raw_timeout = raw.get("timeout_seconds")
    if raw_timeout is not None:
        if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
            errors.append(_err(loc, "timeout_seconds", "must be a number", "float_type"))
        elif not (math.isfinite(raw_timeout) and TIMEOUT_MIN <= raw_timeout <= TIMEOUT_MAX):
            errors.append(
                _err(
                    loc,
                    "timeout_seconds",
                    f"must be between {TIMEOUT_MIN} and {TIMEOUT_MAX} seconds",
                    "out_of_range",
                )
            )
        else:
            timeout = raw_timeout

    if errors:
        raise InvalidInputError(errors)
    return {
        "url": url,
        "secret": secret,
        "requests_per_minute": rpm,
        "timeout_seconds": timeout,
    }


def validate_binding(raw: Mapping[str, Any], *, loc: Loc = ()) -> dict[str, Any]:
    """Checked, normalised binding `{event, max_batch}`; InvalidInputError names each bad
    field (`loc` prefixed, e.g. `("body", "binding")`)."""
    errors: list[dict[str, Any]] = []
    _extra(raw, {"event", "max_batch"}, loc, errors)
    event = raw.get("event")
    if event is None:
        errors.append(_err(loc, "event", "Field required", "missing"))
    elif not isinstance(event, str):
        errors.append(_err(loc, "event", "must be a string", "string_type"))
    elif not 1 <= len(event) <= EVENT_MAX_LENGTH:
        errors.append(
            _err(loc, "event", f"has 1 to {EVENT_MAX_LENGTH} characters", "invalid_event")
        )
    elif _EVENT_RE.fullmatch(event) is None:
        errors.append(
            _err(
                loc,
                "event",
                "holds only letters, digits and _ . : -",
                "invalid_event",
            )
        )
    max_batch = _int_in(
        raw, "max_batch", MAX_BATCH_MIN, MAX_BATCH_MAX, DEFAULT_MAX_BATCH, loc, errors
    )
    if errors:
        raise InvalidInputError(errors)
    return {"event": event, "max_batch": max_batch}


# -- signatures ------------------------------------------------------------------------------
class SignatureError(ValueError):
    """A delivery's signature does not check out; `reason` says why (never the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 keyed by `secret` over `f"{timestamp}."` + body."""
    return f"{SIGNATURE_VERSION}={_mac(secret, str(timestamp).encode(), body)}"


def _mac(secret: str, timestamp: bytes, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Check a delivery; raises SignatureError with the reason.

    `signature_header` may carry several comma-separated `v1=<hex>` values (a sender signing
    with an old and a new secret while rotating): one match suffices. Values of other
    versions are ignored. The comparison is constant-time.
    """
    if timestamp_header is None or not timestamp_header.strip():
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    text = timestamp_header.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise SignatureError(f"malformed {TIMESTAMP_HEADER} header: expected unix seconds")
    timestamp = int(text)  # the MAC is over the header's text, exactly as sent
    if signature_header is None or not signature_header.strip():
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    candidates: list[str] = []
    for part in signature_header.split(","):
        version, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(
                f"malformed {SIGNATURE_HEADER} header: expected comma-separated v1=<hex> values"
            )
        if version.strip() != SIGNATURE_VERSION:
            continue
        value = value.strip().lower()
        if _HEX64_RE.fullmatch(value) is None:
            raise SignatureError(
                f"malformed {SIGNATURE_HEADER} header: a v1 value is 64 hex characters"
            )
        candidates.append(value)
    if not candidates:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: no v1= value")
    if timestamp < now - tolerance_seconds:
        raise SignatureError(
            f"timestamp too old: more than {tolerance_seconds:g} s before the receiver's clock"
        )
    if timestamp > now + tolerance_seconds:
        raise SignatureError(
            f"timestamp too new: more than {tolerance_seconds:g} s after the receiver's clock"
        )
    expected = _mac(secret, text.encode(), body)
    matched = False
    for candidate in candidates:  # no early exit: the time taken does not depend on position
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature mismatch")


# -- payload ---------------------------------------------------------------------------------
def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def iso_minute(at: datetime) -> str:
    return _utc(at).strftime("%Y-%m-%dT%H:%M:00Z")


def iso_second(at: datetime) -> str:
    return _utc(at).strftime("%Y-%m-%dT%H:%M:%SZ")


def idempotency_key(decision_ids: Sequence[str]) -> str:
    """sha256 hex of the sorted decision ids joined by newlines."""
    return hashlib.sha256("\n".join(sorted(decision_ids)).encode()).hexdigest()


def payload(tenant: str, intent_id: str, event: str, sends: Sequence[Send]) -> dict[str, Any]:
    return {
        "type": PAYLOAD_TYPE,
        "tenant": tenant,
        "intent_id": intent_id,
        "event": event,
        "sends": [
            {
                "decision_id": s.decision_id,
                "universal_id": s.universal_id,
                "recipient": {"type": s.recipient_type, "value": s.recipient_value},
                "target_minute_utc": iso_minute(s.target_at),
                "trigger_timestamp_utc": iso_second(s.trigger_at),
                "explanation_ref": s.explanation_ref,
            }
            for s in sends
        ],
    }


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent
    or unreadable. Capped at one day."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            at = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        seconds = at.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


# -- the dispatcher --------------------------------------------------------------------------
def _pacer(requests_per_minute: int) -> AsyncLimiter:
    """At most `requests_per_minute`, with bursts of at most one second's worth."""
    burst = max(1, requests_per_minute // 60)
    return AsyncLimiter(burst, burst * 60.0 / requests_per_minute)


async def _read_head(resp: httpx.Response) -> bytes:
    """The first bytes of an error response's body; whatever arrived when reading fails."""
    head = b""
    try:
        async for chunk in resp.aiter_bytes():
            head += chunk
            if len(head) >= _READ_AT_MOST:
                break
    except httpx.HTTPError:
        pass
    return head


def _all(sends: Sequence[Send], **fields: Any) -> list[SendResult]:
    return [SendResult(decision_id=s.decision_id, **fields) for s in sends]


class WebhookDispatcher:
    """Sends batches of due sends as signed POSTs (one httpx client per dispatcher)."""

    esp: str = ESP

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=DEFAULT_TIMEOUT_SECONDS,
            headers={"User-Agent": f"SendFlowr/{__version__}"},
        )
        self._clock = clock
        self._pacers: dict[tuple[str, str], tuple[int, AsyncLimiter]] = {}

    def max_batch(self, binding: Mapping[str, Any]) -> int:
        try:
            size: int = validate_binding(binding)["max_batch"]
        except InvalidInputError:
            return DEFAULT_MAX_BATCH  # send() refuses the batch with the reason
        return size

    def _pacer_for(self, tenant: str, url: str, requests_per_minute: int) -> AsyncLimiter:
        key = (tenant, url)
        found = self._pacers.get(key)
        if found is None or found[0] != requests_per_minute:
            found = (requests_per_minute, _pacer(requests_per_minute))
            self._pacers[key] = found
        return found[1]

    async def send(
        self,
        tenant: str,
        binding: Mapping[str, Any],
        credentials: Mapping[str, Any],
        sends: Sequence[Send],
    ) -> list[SendResult]:
        """One result per send, in order. More than `max_batch` sends, or sends of several
        intents, go as several POSTs."""
        if not sends:
            return []
        try:
            bound = validate_binding(binding)
        except InvalidInputError as exc:
            return _all(sends, ok=False, error=f"invalid webhook binding: {exc.message}")
        try:
            creds = validate_credentials(credentials)
        except InvalidInputError as exc:  # messages never repeat the secret
            return _all(sends, ok=False, error=f"invalid webhook credentials: {exc.message}")

        results: dict[str, SendResult] = {}
        groups: dict[str, list[Send]] = {}
        for s in sends:
            groups.setdefault(s.intent_id, []).append(s)
        size = bound["max_batch"]
        for intent_id, group in groups.items():
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                for result in await self._post(tenant, intent_id, bound, creds, chunk):
                    results[result.decision_id] = result
        return [results[s.decision_id] for s in sends]

    async def _post(
        self,
        tenant: str,
        intent_id: str,
        binding: Mapping[str, Any],
        creds: Mapping[str, Any],
        sends: Sequence[Send],
    ) -> list[SendResult]:
        url: str = creds["url"]
        secret: str = creds["secret"]
        host = urlsplit(url).netloc
        body = orjson.dumps(payload(tenant, intent_id, binding["event"], sends))
        await self._pacer_for(tenant, url, creds["requests_per_minute"]).acquire()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            IDEMPOTENCY_HEADER: idempotency_key([s.decision_id for s in sends]),
        }
        timeout: float = creds["timeout_seconds"]
        head = b""
        try:
            async with (
                asyncio.timeout(timeout),  # the whole exchange, not each read
                self._client.stream(
                    "POST", url, content=body, headers=headers, timeout=timeout
                ) as resp,
            ):
                status = resp.status_code
                retry_after_header = resp.headers.get("Retry-After")
                if not 200 <= status < 300:
                    head = await _read_head(resp)
        except (httpx.TimeoutException, TimeoutError) as exc:
            return self._failed(tenant, host, sends, f"timeout ({type(exc).__name__})", True)
        except httpx.TransportError as exc:
            return self._failed(
                tenant, host, sends, f"transport error ({type(exc).__name__})", True
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return self._failed(tenant, host, sends, f"request error ({type(exc).__name__})", False)

        if 200 <= status < 300:
            log.debug(
                "tenant %s: webhook %s accepted %d sends of intent %s (HTTP %d)",
                tenant,
                host,
                len(sends),
                intent_id,
                status,
            )
            return _all(sends, ok=True)
        text = head.decode("utf-8", errors="replace")[:ERROR_BODY_CHARS]
        text = text.replace(secret, "[redacted]")
        error = f"HTTP {status}: {text}"
        if status == 429 or 500 <= status < 600:
            retry_after = parse_retry_after(retry_after_header, now=self._clock())
            return self._failed(tenant, host, sends, error, True, retry_after)
        return self._failed(tenant, host, sends, error, False)

    @staticmethod
    def _failed(
        tenant: str,
        host: str,
        sends: Sequence[Send],
        error: str,
        retryable: bool,
        retry_after: float | None = None,
    ) -> list[SendResult]:
        log.warning(
            "tenant %s: webhook %s did not take %d sends (%s%s)",
            tenant,
            host,
            len(sends),
            "retryable, " if retryable else "",
            error if len(error) <= 80 else error[:80] + "...",
        )
        return _all(sends, ok=False, error=error, retryable=retryable, retry_after=retry_after)

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = [
    "AUTH_KIND",
    "ESP",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "WebhookDispatcher",
    "idempotency_key",
    "parse_retry_after",
    "payload",
    "sign",
    "validate_binding",
    "validate_credentials",
    "verify",
]
