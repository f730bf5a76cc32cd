"""Async client for Klaviyo's REST API (revision `constants.REVISION`).

Every call goes through one path (`_request`): the per-operation rate limiter
(`ratelimit.RateLimiter`), the auth header, a timeout, one retry loop (`retry.RetryPolicy`:
5xx, 429, timeouts, connection errors and unreadable success bodies; never another 4xx), and
error mapping to the `KlaviyoError` hierarchy. Error messages and log lines never contain the
API key or tokens: they are built from the method, the path and Klaviyo's error details, and
every known secret is redacted from them before they are raised or logged.

Collections follow `links.next` until it is null. A `next` already visited in the same
iteration, or one pointing to another scheme, host or port than `base_url` (or to another
path), raises `KlaviyoProtocolError`: pagination never loops and never sends credentials to a
foreign host. The same check applies to a persisted `cursor_url` when the backfill resumes.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import quote

import httpx
from tenacity import RetryCallState

from sendflowr.connectors.klaviyo import jsonapi
from sendflowr.connectors.klaviyo.constants import API_BASE_URL, JSON_API, MAX_PAGE_SIZE, REVISION
from sendflowr.connectors.klaviyo.jsonapi import ErrorDetail, JsonApiError, Resource
from sendflowr.connectors.klaviyo.ratelimit import RateLimiter
from sendflowr.connectors.klaviyo.retry import RetryPolicy, retrying
from sendflowr.connectors.klaviyo.wire import (
    DecodedPage,
    EventRecord,
    ProfileRecord,
    ShapeError,
    decode_events_page,
)

log = logging.getLogger("sendflowr.connectors.klaviyo")

EVENTS_PATH: Final = "/api/events"
BULK_EVENTS_MAX: Final = 1000  # events per POST /api/event-bulk-create-jobs (spec)
BULK_PAYLOAD_MAX_BYTES: Final = 4_500_000  # the spec allows 5 MB; keep a margin for framing
_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9_\-.:]{1,128}$")
_REDACTED: Final = "[redacted]"

Sleep = Callable[[float], Awaitable[None]]


# --- errors -----------------------------------------------------------------------------------


class KlaviyoError(Exception):
    """A Klaviyo call failed. The text never contains credentials."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        errors: tuple[ErrorDetail, ...] = (),
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.errors = errors
        self.attempts = 1
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        head = " ".join(
            part
            for part in (
                self.method,
                self.path,
                f"HTTP {self.status}" if self.status is not None else None,
            )
            if part
        )
        text = f"{head}: {self.message}" if head else self.message
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        return text


class KlaviyoAuthError(KlaviyoError):
    """401 or 403: the key or token is wrong, revoked or lacks a scope."""


class KlaviyoNotFound(KlaviyoError):
    """404."""


class KlaviyoBadRequest(KlaviyoError):
    """Any other 4xx; `detail` and `parameter` come from Klaviyo's first JSON:API error."""

    @property
    def detail(self) -> str | None:
        return self.errors[0].detail if self.errors else None

    @property
    def parameter(self) -> str | None:
        return self.errors[0].source_parameter if self.errors else None

    @property
    def pointer(self) -> str | None:
        return self.errors[0].source_pointer if self.errors else None


class KlaviyoRateLimited(KlaviyoError):
    """429, still after every retry; `retry_after` is the server's last Retry-After."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class KlaviyoUnavailable(KlaviyoError):
    """5xx, a timeout or a broken connection, still after every retry."""

    retryable = True


class KlaviyoProtocolError(KlaviyoError):
    """The response is not what Klaviyo's API promises (bad JSON:API, bad links)."""


# --- auth -------------------------------------------------------------------------------------


class TokenProvider(Protocol):
    """Supplies OAuth access tokens; `refresh` obtains a new one (after a 401)."""

    async def token(self) -> str: ...

    async def refresh(self) -> str: ...


class Auth(abc.ABC):
    """How requests are authorised. Implementations never expose secrets in repr."""

    @abc.abstractmethod
    async def authorization(self) -> str:
        """The Authorization header value for the next request."""

    async def refresh_after_unauthorized(self, sent: str) -> bool:
        """A request sent with `sent` got a 401; True when retrying it once may succeed."""
        return False

    @abc.abstractmethod
    def secrets(self) -> tuple[str, ...]:
        """Every secret that must be redacted from messages."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"


class ApiKeyAuth(Auth):
    """A private API key: `Authorization: Klaviyo-API-Key <key>`."""

    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        if not key or not key.strip() or any(c in key for c in "\r\n"):
            raise ValueError("the Klaviyo API key is empty or malformed")
        self._key = key.strip()

    async def authorization(self) -> str:
        return f"Klaviyo-API-Key {self._key}"

    def secrets(self) -> tuple[str, ...]:
        return (self._key,)


class BearerAuth(Auth):
    """OAuth: `Authorization: Bearer <token>`; one refresh per 401, shared by concurrent calls."""

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider
        self._lock = asyncio.Lock()
        self._seen: deque[str] = deque(maxlen=16)

    def _remember(self, token: str) -> str:
        if token not in self._seen:
            self._seen.append(token)
        return f"Bearer {token}"

    async def authorization(self) -> str:
        return self._remember(await self._provider.token())

    async def refresh_after_unauthorized(self, sent: str) -> bool:
        async with self._lock:
            current = self._remember(await self._provider.token())
            if current != sent:  # another caller refreshed while this request was in flight
                return True
            self._remember(await self._provider.refresh())
            return True

    def secrets(self) -> tuple[str, ...]:
        return tuple(self._seen)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    return text


def _redact_detail(detail: ErrorDetail, secrets: Sequence[str]) -> ErrorDetail:
    return dataclasses.replace(
        detail,
        **{
            name: _redact(value, secrets)
            for name in ("code", "title", "detail", "source_pointer", "source_parameter")
            if isinstance(value := getattr(detail, name), str)
        },
    )


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    timezone: str | None
    preferred_currency: str | None
    locale: str | None
    organization_name: str | None
    test_account: bool | None


@dataclass(frozen=True, slots=True)
class Metric:
    id: str
    name: str
    integration_name: str | None = None
    integration_category: str | None = None


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    name: str
    endpoint_url: str
    enabled: bool
    topic_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookTopic:
    id: str


class EventsPage:
    """One page of GET /api/events.

    `records` are its events (each with its bytes as received: `wire.EventRecord`) and
    `profile_records` its included profiles by id; `events` and `profiles` are the same as
    resource dicts, decoded on first use. `url` re-reads this page and `next_url` (None at
    the end) reads the next one; both are safe to persist as a backfill checkpoint
    (`events_page(cursor_url=...)`).
    """

    __slots__ = ("_events", "_profiles", "next_url", "profile_records", "records", "url")

    def __init__(
        self,
        records: list[EventRecord],
        profile_records: dict[str, ProfileRecord],
        next_url: str | None,
        url: str,
    ) -> None:
        self.records = records
        self.profile_records = profile_records
        self.next_url = next_url
        self.url = url
        self._events: list[Resource] | None = None
        self._profiles: dict[str, Resource] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def events(self) -> list[Resource]:
        if self._events is None:
            self._events = [r.resource() for r in self.records]
        return self._events

    @property
    def profiles(self) -> dict[str, Resource]:
        if self._profiles is None:
            self._profiles = {pid: p.resource() for pid, p in self.profile_records.items()}
        return self._profiles


@dataclass(frozen=True, slots=True)
class ProfileRef:
    """Who an event written to Klaviyo is about: at least one of these."""

    email: str | None = None
    id: str | None = None
    phone_number: str | None = None
    external_id: str | None = None

    def __post_init__(self) -> None:
        if not (self.email or self.id or self.phone_number or self.external_id):
            raise ValueError("a profile needs an email, id, phone_number or external_id")

    def resource(self) -> dict[str, Any]:
        attributes = {
            k: v
            for k, v in (
                ("email", self.email),
                ("phone_number", self.phone_number),
                ("external_id", self.external_id),
            )
            if v
        }
        out: dict[str, Any] = {"type": "profile", "attributes": attributes}
        if self.id:
            out["id"] = self.id
        return out


@dataclass(frozen=True, slots=True)
class BulkEvent:
    """One event for `bulk_create_events`."""

    metric_name: str
    profile: ProfileRef
    properties: Mapping[str, Any]
    unique_id: str
    time: datetime | None = None
    value: float | None = None
    value_currency: str | None = None


@dataclass(frozen=True, slots=True)
class _Result:
    document: dict[str, Any] | None
    url: httpx.URL
    page: DecodedPage | None = None  # GET /api/events, decoded by `wire`


@dataclass(slots=True)
class _Visited:
    keys: set[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=set)

    @staticmethod
    def key(url: httpx.URL) -> tuple[str, tuple[tuple[str, str], ...]]:
        return url.path, tuple(sorted(url.params.multi_items()))

    def add(self, url: httpx.URL) -> bool:
        """False when `url` was already visited."""
        key = self.key(url)
        if key in self.keys:
            return False
        self.keys.add(key)
        return True


# --- formatting helpers -----------------------------------------------------------------------


def filter_datetime(at: datetime) -> str:
    """A filter bound: UTC, ISO 8601 with offset, whole seconds rounded up.

    Klaviyo stores event times to the second, so for an integer event time t,
    t >= start <=> t >= ceil(start) and t < end <=> t < ceil(end): rounding both bounds up
    selects exactly the events of [start, end).
    """
    if at.tzinfo is None:
        raise ValueError("filter datetimes must be timezone-aware")
    at = at.astimezone(UTC)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def events_filter(metric_id: str, start: datetime, end: datetime) -> str:
    """and(equals(metric_id,"X"),greater-or-equal(datetime,S),less-than(datetime,E))."""
    _check_id("metric_id", metric_id)
    lo, hi = filter_datetime(start), filter_datetime(end)
    if lo >= hi:
        raise ValueError(f"empty window: start {lo} is not before end {hi}")
    return (
        f'and(equals(metric_id,"{metric_id}"),'
        f"greater-or-equal(datetime,{lo}),less-than(datetime,{hi}))"
    )


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not _SAFE_ID.match(value):
        raise ValueError(f"{name}: {value!r} is not a Klaviyo id")
    return value


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("event times must be timezone-aware")
    return at.astimezone(UTC).isoformat()


def _event_attributes(
    metric_name: str,
    properties: Mapping[str, Any],
    unique_id: str,
    time: datetime | None,
    value: float | None,
    value_currency: str | None,
) -> dict[str, Any]:
    if not metric_name or len(metric_name) >= 128:
        raise ValueError("metric_name must be 1 to 127 characters")
    attributes: dict[str, Any] = {
        "properties": dict(properties),
        "metric": {"data": {"type": "metric", "attributes": {"name": metric_name}}},
        "unique_id": unique_id,
    }
    if time is not None:
        attributes["time"] = _iso(time)
    if value is not None:
        attributes["value"] = value
    if value_currency is not None:
        attributes["value_currency"] = value_currency
    return attributes


def _port(url: httpx.URL) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


# --- the client -------------------------------------------------------------------------------


class KlaviyoClient:
    """Klaviyo's REST API over httpx. Use as `async with KlaviyoClient(auth) as k: ...`."""

    def __init__(
        self,
        auth: Auth,
        *,
        base_url: str = API_BASE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = "sendflowr-klaviyo/0.1",
    ) -> None:
        base = httpx.URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if base.userinfo or base.query:
            raise ValueError("base_url must not carry credentials or a query")
        self._auth = auth
        self._base = base
        self._prefix = base.path.rstrip("/")
        self._policy = retry or RetryPolicy()
        self._sleep = sleep
        self._limiter = rate_limiter or RateLimiter(clock=clock, sleep=sleep)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"revision": REVISION, "accept": JSON_API, "user-agent": user_agent},
            follow_redirects=False,
            trust_env=transport is None,
        )

    @property
    def base_url(self) -> str:
        return str(self._base)

    @property
    def rate_limiter(self) -> RateLimiter:
        return self._limiter

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={self.base_url!r}, auth={self._auth!r})"

    # --- plumbing -----------------------------------------------------------------------------

    def _url(self, path: str, params: Mapping[str, str] | None = None) -> httpx.URL:
        return httpx.URL(
            self._base.copy_with(path=self._prefix + path, query=None),
            params=dict(params) if params else None,
        )

    def _api_path(self, url: httpx.URL) -> str:
        path = url.path
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :]
        return path

    def _resolve_link(self, link: str, expected_path: str, what: str) -> httpx.URL:
        """A link Klaviyo gave us (or a persisted one), refused unless it stays on base_url."""
        try:
            url = self._base.join(link)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise KlaviyoProtocolError(f"{what} is not a URL", path=expected_path) from None
        if (
            url.scheme != self._base.scheme
            or url.host != self._base.host
            or _port(url) != _port(self._base)
            or url.userinfo
        ):
            raise KlaviyoProtocolError(
                f"{what} points to {url.scheme}://{url.host}:{_port(url)}, not to "
                f"{self._base.scheme}://{self._base.host}:{_port(self._base)}; refusing to send "
                "credentials there",
                path=expected_path,
            )
        if self._api_path(url) != expected_path:
            raise KlaviyoProtocolError(
                f"{what} leaves the collection (path {self._api_path(url)!r})", path=expected_path
            )
        return url

    def _secrets(self, extra: Sequence[str]) -> tuple[str, ...]:
        return (*self._auth.secrets(), *extra)

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        authorization: str,
        api_path: str,
        secrets: Sequence[str],
    ) -> httpx.Response:
        headers = {"authorization": authorization}
        if content is not None:
            headers["content-type"] = JSON_API
        try:
            return await self._http.request(method, url, content=content, headers=headers)
        except httpx.TransportError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            reason = _redact(text, self._secrets(secrets))
            raise KlaviyoUnavailable(reason, method=method, path=api_path) from None

    def _check_response(
        self,
        method: str,
        api_path: str,
        response: httpx.Response,
        expect_body: bool,
        secrets: Sequence[str],
        events_page: bool = False,
    ) -> dict[str, Any] | DecodedPage | None:
        status = response.status_code
        retry_after = self._limiter.observe(method, api_path, status, response.headers)
        where: dict[str, Any] = {"method": method, "path": api_path, "status": status}
        if 200 <= status < 300:
            if not expect_body or status == 204:
                return None
            content_type = response.headers.get("content-type", "")
            try:
                if events_page:
                    return decode_events_page(response.content, content_type)
                return jsonapi.decode_document(response.content, content_type)
            except ShapeError:
                raise  # not retried: the same page would come back the same
            except JsonApiError as exc:
                raise KlaviyoProtocolError(
                    _redact(str(exc), self._secrets(secrets)), retryable=True, **where
                ) from None
        hidden = self._secrets(secrets)
        errors = tuple(_redact_detail(e, hidden) for e in jsonapi.error_details(response.content))
        message = "; ".join(e.describe() for e in errors) or response.reason_phrase or "error"
        if status == 429:
            raise KlaviyoRateLimited(message, retry_after=retry_after, errors=errors, **where)
        if status >= 500:
            raise KlaviyoUnavailable(message, errors=errors, **where)
        if status in (401, 403):
            raise KlaviyoAuthError(message, errors=errors, **where)
        if status == 404:
            raise KlaviyoNotFound(message, errors=errors, **where)
        if status < 400:
            raise KlaviyoProtocolError(f"unexpected {message}", errors=errors, **where)
        raise KlaviyoBadRequest(message, errors=errors, **where)

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        expect_body: bool,
        secrets: Sequence[str],
        events_page: bool = False,
    ) -> _Result:
        api_path = self._api_path(url)
        await self._limiter.acquire(method, api_path)
        authorization = await self._auth.authorization()
        response = await self._send(method, url, content, authorization, api_path, secrets)
        if response.status_code == 401 and await self._auth.refresh_after_unauthorized(
            authorization
        ):
            self._limiter.observe(method, api_path, 401, response.headers)
            await self._limiter.acquire(method, api_path)
            authorization = await self._auth.authorization()
            response = await self._send(method, url, content, authorization, api_path, secrets)
        decoded = self._check_response(
            method, api_path, response, expect_body, secrets, events_page
        )
        if isinstance(decoded, DecodedPage):
            return _Result(None, url, decoded)
        return _Result(decoded, url)

    def _log_retry(self, method: str, url: httpx.URL) -> Callable[[RetryCallState], None]:
        api_path = self._api_path(url)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "klaviyo %s %s failed on attempt %d (%s); retrying in %.2fs",
                method,
                api_path,
                state.attempt_number,
                exc.message if isinstance(exc, KlaviyoError) else type(exc).__name__,
                state.upcoming_sleep,
            )

        return before_sleep

    async def _request(
        self,
        method: str,
        url: httpx.URL,
        *,
        body: Mapping[str, Any] | None = None,
        expect_body: bool = True,
        secrets: Sequence[str] = (),
        events_page: bool = False,
    ) -> _Result:
        content = jsonapi.encode(body) if body is not None else None
        attempt_number = 0
        try:
            async for attempt in retrying(
                self._policy,
                is_retryable=lambda e: isinstance(e, KlaviyoError) and e.retryable,
                retry_after_of=lambda e: (
                    e.retry_after if isinstance(e, KlaviyoRateLimited) else None
                ),
                sleep=self._sleep,
                before_sleep=self._log_retry(method, url),
            ):
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    return await self._attempt(
                        method, url, content, expect_body, secrets, events_page
                    )
        except KlaviyoError as exc:
            exc.attempts = attempt_number
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        result = await self._request("GET", self._url(path, params))
        assert result.document is not None
        return result.document

    def _protocol(self, exc: JsonApiError, path: str) -> KlaviyoProtocolError:
        return KlaviyoProtocolError(_redact(str(exc), self._auth.secrets()), path=path)

    async def _pages(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every page of a collection, following links.next with the loop and origin guards."""
        url = self._url(path, params)
        visited = _Visited()
        visited.add(url)
        while True:
            result = await self._request("GET", url)
            assert result.document is not None
            yield result.document
            try:
                link = jsonapi.next_link(result.document)
            except JsonApiError as exc:
                raise self._protocol(exc, path) from None
            if link is None:
                return
            url = self._resolve_link(link, path, "links.next")
            if not visited.add(url):
                raise KlaviyoProtocolError(
                    "links.next repeats a page already read in this iteration", path=path
                )

    async def _resources(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[Resource]:
        async for doc in self._pages(path, params):
            try:
                resources = jsonapi.primary_resources(doc)
            except JsonApiError as exc:
                raise self._protocol(exc, path) from None
            for resource in resources:
                yield resource

    async def _one(self, path: str, params: Mapping[str, str] | None = None) -> Resource:
        doc = await self._get(path, params)
        try:
            return jsonapi.primary_resource(doc)
        except JsonApiError as exc:
            raise self._protocol(exc, path) from None

    # --- reads --------------------------------------------------------------------------------

    async def get_account(self) -> Account:
        """The account the credentials belong to (GET /api/accounts)."""
        async for res in self._resources("/api/accounts"):
            attrs = res.get("attributes") or {}
            contact = attrs.get("contact_information")
            contact = contact if isinstance(contact, dict) else {}

            def text(v: Any) -> str | None:
                return v if isinstance(v, str) else None

            test = attrs.get("test_account")
            return Account(
                id=res["id"],
                timezone=text(attrs.get("timezone")),
                preferred_currency=text(attrs.get("preferred_currency")),
                locale=text(attrs.get("locale")),
                organization_name=text(contact.get("organization_name")),
                test_account=test if isinstance(test, bool) else None,
            )
        raise KlaviyoProtocolError("no account in the response", path="/api/accounts")

    async def list_metrics(self) -> list[Metric]:
        """Every metric of the account (GET /api/metrics, all pages)."""
        out: list[Metric] = []
        async for res in self._resources("/api/metrics"):
            attrs = res.get("attributes") or {}
            integration = attrs.get("integration")
            integration = integration if isinstance(integration, dict) else {}
            name = attrs.get("name")
            iname, icat = integration.get("name"), integration.get("category")
            out.append(
                Metric(
                    id=res["id"],
                    name=name if isinstance(name, str) else "",
                    integration_name=iname if isinstance(iname, str) else None,
                    integration_category=icat if isinstance(icat, str) else None,
                )
            )
        return out

    def iter_campaigns(self, channel: str = "email") -> AsyncIterator[Resource]:
        """Campaigns of one channel; Klaviyo requires the `messages.channel` filter."""
        if not re.fullmatch(r"[a-z_-]{1,32}", channel):
            raise ValueError(f"channel: {channel!r} is not a Klaviyo channel")
        params = {
            "filter": f"equals(messages.channel,'{channel}')",
            "page[size]": str(MAX_PAGE_SIZE["/api/campaigns"]),
        }
        return self._resources("/api/campaigns", params)

    async def get_campaign(self, campaign_id: str) -> Resource:
        """One campaign (GET /api/campaigns/{id}); KlaviyoNotFound when there is none."""
        return await self._one(f"/api/campaigns/{quote(_check_id('campaign_id', campaign_id))}")

    def iter_flows(self) -> AsyncIterator[Resource]:
        return self._resources("/api/flows", {"page[size]": str(MAX_PAGE_SIZE["/api/flows"])})

    async def get_profile(self, profile_id: str) -> Resource:
        return await self._one(f"/api/profiles/{quote(_check_id('profile_id', profile_id))}")

    def iter_list_profiles(self, list_id: str) -> AsyncIterator[Resource]:
        path = f"/api/lists/{quote(_check_id('list_id', list_id))}/profiles"
        return self._resources(path, {"page[size]": str(MAX_PAGE_SIZE["/api/lists/{id}/profiles"])})

    def iter_segment_profiles(self, segment_id: str) -> AsyncIterator[Resource]:
        path = f"/api/segments/{quote(_check_id('segment_id', segment_id))}/profiles"
        size = MAX_PAGE_SIZE["/api/segments/{id}/profiles"]
        return self._resources(path, {"page[size]": str(size)})

    # --- events: the backfill's hot path -------------------------------------------------------

    def events_url(
        self,
        *,
        metric_id: str,
        start: datetime,
        end: datetime,
        page_size: int = MAX_PAGE_SIZE[EVENTS_PATH],
        include_profile: bool = True,
        profile_fields: Sequence[str] | None = None,
        event_fields: Sequence[str] | None = None,
    ) -> str:
        """The first page's URL for one metric over [start, end), oldest first.

        `event_fields` and `profile_fields` (sparse fieldsets: `fields[event]`,
        `fields[profile]`) ask for only those attributes; None asks for all."""
        if not 1 <= page_size <= MAX_PAGE_SIZE[EVENTS_PATH]:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE[EVENTS_PATH]}")
        params = {
            "filter": events_filter(metric_id, start, end),
            "sort": "datetime",
            "page[size]": str(page_size),
        }
        if event_fields:
            params["fields[event]"] = ",".join(event_fields)
        if include_profile:
            params["include"] = "profile"
            if profile_fields:
                params["fields[profile]"] = ",".join(profile_fields)
        return str(self._url(EVENTS_PATH, params))

    async def _events_page(self, url: httpx.URL) -> EventsPage:
        try:
            result = await self._request("GET", url, events_page=True)
        except ShapeError as exc:
            raise self._protocol(exc, EVENTS_PATH) from None
        decoded = result.page
        assert decoded is not None
        link = decoded.next_link
        next_url = None
        if link is not None:
            nxt = self._resolve_link(link, EVENTS_PATH, "links.next")
            if _Visited.key(nxt) == _Visited.key(url):
                raise KlaviyoProtocolError("links.next is this page again", path=EVENTS_PATH)
            next_url = str(nxt)
        return EventsPage(decoded.events, decoded.profiles, next_url, str(url))

    def _start_url(
        self,
        cursor_url: str | None,
        *,
        metric_id: str,
        start: datetime,
        end: datetime,
        page_size: int,
        include_profile: bool,
        profile_fields: Sequence[str] | None,
        event_fields: Sequence[str] | None,
    ) -> httpx.URL:
        """The persisted cursor when resuming (checked like any `links.next`), else page one."""
        first = self.events_url(
            metric_id=metric_id,
            start=start,
            end=end,
            page_size=page_size,
            include_profile=include_profile,
            profile_fields=profile_fields,
            event_fields=event_fields,
        )
        return self._resolve_link(cursor_url or first, EVENTS_PATH, "cursor_url")

    async def events_page(
        self,
        *,
        metric_id: str,
        start: datetime,
        end: datetime,
        cursor_url: str | None = None,
        page_size: int = MAX_PAGE_SIZE[EVENTS_PATH],
        include_profile: bool = True,
        profile_fields: Sequence[str] | None = None,
        event_fields: Sequence[str] | None = None,
    ) -> EventsPage:
        """One page of GET /api/events for one metric over [start, end), oldest first.

        With `cursor_url` (a persisted `next_url`), that page is read instead; it must point
        to base_url's GET /api/events like any `links.next`.
        """
        url = self._start_url(
            cursor_url,
            metric_id=metric_id,
            start=start,
            end=end,
            page_size=page_size,
            include_profile=include_profile,
            profile_fields=profile_fields,
            event_fields=event_fields,
        )
        return await self._events_page(url)

    async def iter_events(
        self,
        *,
        metric_id: str,
        start: datetime,
        end: datetime,
        cursor_url: str | None = None,
        page_size: int = MAX_PAGE_SIZE[EVENTS_PATH],
        include_profile: bool = True,
        profile_fields: Sequence[str] | None = None,
        event_fields: Sequence[str] | None = None,
    ) -> AsyncIterator[EventsPage]:
        """Every page of the window (from `cursor_url` when resuming), guarded against loops."""
        url = self._start_url(
            cursor_url,
            metric_id=metric_id,
            start=start,
            end=end,
            page_size=page_size,
            include_profile=include_profile,
            profile_fields=profile_fields,
            event_fields=event_fields,
        )
        visited = _Visited()
        visited.add(url)
        while True:
            page = await self._events_page(url)
            yield page
            if page.next_url is None:
                return
            url = httpx.URL(page.next_url)
            if not visited.add(url):
                raise KlaviyoProtocolError(
                    "links.next repeats a page already read in this iteration", path=EVENTS_PATH
                )

    # --- writes -------------------------------------------------------------------------------

    async def create_event(
        self,
        metric_name: str,
        profile: ProfileRef,
        properties: Mapping[str, Any],
        unique_id: str,
        time: datetime | None = None,
        *,
        value: float | None = None,
        value_currency: str | None = None,
    ) -> None:
        """POST /api/events (202: accepted for processing)."""
        attributes = _event_attributes(
            metric_name, properties, unique_id, time, value, value_currency
        )
        attributes["profile"] = {"data": profile.resource()}
        body = {"data": {"type": "event", "attributes": attributes}}
        await self._request("POST", self._url(EVENTS_PATH), body=body, expect_body=False)

    async def bulk_create_events(
        self, items: Iterable[BulkEvent], *, backfill: bool = False
    ) -> int:
        """POST /api/event-bulk-create-jobs, at most 1,000 events (and ~4.5 MB) per request.

        Events are grouped by profile within each request, in input order. Returns the number
        of jobs submitted.
        """
        jobs = 0
        for chunk in _bulk_chunks(items):
            groups: dict[ProfileRef, list[dict[str, Any]]] = {}
            for item in chunk:
                groups.setdefault(item.profile, []).append(
                    {
                        "type": "event",
                        "attributes": _event_attributes(
                            item.metric_name,
                            item.properties,
                            item.unique_id,
                            item.time,
                            item.value,
                            item.value_currency,
                        ),
                    }
                )
            entries = []
            for profile, events in groups.items():
                attributes: dict[str, Any] = {
                    "profile": {"data": profile.resource()},
                    "events": {"data": events},
                }
                if backfill:
                    attributes["backfill"] = True
                entries.append({"type": "event-bulk-create", "attributes": attributes})
            body = {
                "data": {
                    "type": "event-bulk-create-job",
                    "attributes": {"events-bulk-create": {"data": entries}},
                }
            }
            await self._request(
                "POST", self._url("/api/event-bulk-create-jobs"), body=body, expect_body=False
            )
            jobs += 1
        return jobs

    async def create_webhook(
        self,
        name: str,
        endpoint_url: str,
        secret_key: str,
        topic_ids: Sequence[str],
        *,
        description: str | None = None,
    ) -> Webhook:
        """POST /api/webhooks. `secret_key` signs deliveries; it is redacted from errors."""
        attributes: dict[str, Any] = {
            "name": name,
            "endpoint_url": endpoint_url,
            "secret_key": secret_key,
        }
        if description is not None:
            attributes["description"] = description
        body = {
            "data": {
                "type": "webhook",
                "attributes": attributes,
                "relationships": {
                    "webhook-topics": {
                        "data": [{"type": "webhook-topic", "id": t} for t in topic_ids]
                    }
                },
            }
        }
        result = await self._request(
            "POST", self._url("/api/webhooks"), body=body, secrets=(secret_key,)
        )
        assert result.document is not None
        try:
            return _webhook(jsonapi.primary_resource(result.document))
        except JsonApiError as exc:
            raise self._protocol(exc, "/api/webhooks") from None

    async def list_webhooks(self) -> list[Webhook]:
        return [
            _webhook(r)
            async for r in self._resources("/api/webhooks", {"include": "webhook-topics"})
        ]

    async def delete_webhook(self, webhook_id: str) -> None:
        path = f"/api/webhooks/{quote(_check_id('webhook_id', webhook_id))}"
        await self._request("DELETE", self._url(path), expect_body=False)

    async def list_webhook_topics(self) -> list[WebhookTopic]:
        return [WebhookTopic(r["id"]) async for r in self._resources("/api/webhook-topics")]


def _webhook(res: Resource) -> Webhook:
    attrs = res.get("attributes") or {}
    name, url, enabled = attrs.get("name"), attrs.get("endpoint_url"), attrs.get("enabled")
    return Webhook(
        id=res["id"],
        name=name if isinstance(name, str) else "",
        endpoint_url=url if isinstance(url, str) else "",
        enabled=enabled if isinstance(enabled, bool) else False,
        topic_ids=tuple(jsonapi.relationship_ids(res, "webhook-topics")),
    )


def _bulk_chunks(items: Iterable[BulkEvent]) -> Iterable[list[BulkEvent]]:
    """Consecutive chunks of at most BULK_EVENTS_MAX events and ~BULK_PAYLOAD_MAX_BYTES."""
    chunk: list[BulkEvent] = []
    size = 0
    for item in items:
        # Rough size: the properties dominate; 512 bytes covers the envelope and profile.
        item_size = len(jsonapi.encode(dict(item.properties))) + 512
        if chunk and (len(chunk) >= BULK_EVENTS_MAX or size + item_size > BULK_PAYLOAD_MAX_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


__all__ = [
    "Account",
    "ApiKeyAuth",
    "Auth",
    "BearerAuth",
    "BulkEvent",
    "EventsPage",
    "KlaviyoAuthError",
    "KlaviyoBadRequest",
    "KlaviyoClient",
    "KlaviyoError",
    "KlaviyoNotFound",
    "KlaviyoProtocolError",
    "KlaviyoRateLimited",
    "KlaviyoUnavailable",
    "Metric",
    "ProfileRef",
    "TokenProvider",
    "Webhook",
    "WebhookTopic",
    "events_filter",
    "filter_datetime",
]
