"""KlaviyoClient's HTTP behaviour, with httpx.MockTransport standing in for Klaviyo.

Every request the client sends here is validated against Klaviyo's official OpenAPI file
(`spec_validate.validate_request`), and every mock response against the response schema, so
the requests are ones Klaviyo accepts and the fixtures are shaped like what Klaviyo returns.
Time is faked: sleeps advance a fake clock, so retries and pauses cost no real time.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.validation.request.exceptions import (
    InvalidRequestBody,
    MissingRequiredParameter,
    RequestBodyValidationError,
    SecurityValidationError,
)

from sendflowr.connectors.klaviyo.client import (
    ApiKeyAuth,
    BearerAuth,
    BulkEvent,
    KlaviyoAuthError,
    KlaviyoBadRequest,
    KlaviyoClient,
    KlaviyoError,
    KlaviyoNotFound,
    KlaviyoProtocolError,
    KlaviyoRateLimited,
    KlaviyoUnavailable,
    ProfileRef,
    events_filter,
    filter_datetime,
)
from sendflowr.connectors.klaviyo.constants import JSON_API, REVISION
from sendflowr.connectors.klaviyo.normalize import EVENT_FIELDS, PROFILE_FIELDS
from sendflowr.connectors.klaviyo.ratelimit import RateLimiter, path_template
from sendflowr.connectors.klaviyo.retry import RetryPolicy
from tests.klaviyo.spec_validate import (
    FilterError,
    MissingHeaderError,
    event_resource,
    example_of,
    metric_resource,
    profile_resource,
    validate_request,
    validate_response,
)

KEY = "pk_SECRET_0123456789abcdef0123456789"
BASE = "http://127.0.0.1:8765"  # a local simulator's address: validated as if it were Klaviyo
T = TypeVar("T")

START = datetime(2022, 11, 8, tzinfo=UTC)
END = datetime(2022, 11, 9, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


Handler = Callable[[httpx.Request], httpx.Response]

# Responses no object can satisfy: the spec's campaign send_options/tracking_options are a
# oneOf of identical branches (any value matches several), so they are not validated.
UNVALIDATABLE_RESPONSES = frozenset({"/api/campaigns"})


class Mock:
    """Records requests, validates each against the spec, answers with `handler`."""

    def __init__(self, handler: Handler, time: FakeTime, validate_responses: bool = True) -> None:
        self.handler = handler
        self.validate_responses = validate_responses
        self.time = time
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(self.time.now)
        validate_request(request, base_url=BASE)
        response = self.handler(request)
        if (
            self.validate_responses
            and 200 <= response.status_code < 300
            and response.headers.get("content-type") == JSON_API
            and request.url.path not in UNVALIDATABLE_RESPONSES
        ):
            validate_response(request, response, base_url=BASE)
        return response

    def ops(self) -> set[tuple[str, str]]:
        return {(r.method, path_template(r.url.path)) for r in self.requests}


def doc(
    data: Any, *, status: int = 200, included: list[Any] | None = None, next_url: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"data": data}
    if isinstance(data, list):
        body["links"] = {"self": f"{BASE}/api/x", "next": next_url, "prev": None}
        if next_url is None:
            del body["links"]["next"]
        del body["links"]["prev"]
    if included is not None:
        body["included"] = included
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": JSON_API})


def error(
    status: int, detail: str = "bad", parameter: str | None = None, **headers: str
) -> httpx.Response:
    err: dict[str, Any] = {
        "id": "e1",
        "code": "invalid",
        "title": "Invalid input.",
        "detail": detail,
    }
    if parameter:
        err["source"] = {"parameter": parameter}
    return httpx.Response(
        status,
        content=orjson.dumps({"errors": [err]}),
        headers={"content-type": JSON_API, **{k.replace("_", "-"): v for k, v in headers.items()}},
    )


def make_client(
    handler: Handler,
    *,
    auth: Any = None,
    policy: RetryPolicy | None = None,
    time: FakeTime | None = None,
    validate_responses: bool = True,
) -> tuple[KlaviyoClient, Mock, FakeTime]:
    time = time or FakeTime()
    mock = Mock(handler, time, validate_responses)
    client = KlaviyoClient(
        auth or ApiKeyAuth(KEY),
        base_url=BASE,
        transport=httpx.MockTransport(mock),
        retry=policy or RetryPolicy(),
        rate_limiter=RateLimiter(scale=1000, clock=time.clock, sleep=time.sleep),
        sleep=time.sleep,
        clock=time.clock,
    )
    return client, mock, time


def events_handler(pages: int, per_page: int = 2) -> Handler:
    """GET /api/events: `pages` pages linked by page[cursor]=N."""

    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page[cursor]", "0"))
        events = [
            event_resource(f"ev{n}-{i}", profile_id=f"P{n}{i}", properties={"$message": "m1"})
            for i in range(per_page)
        ]
        profiles = [
            profile_resource(f"P{n}{i}", email=f"p{n}{i}@example.com") for i in range(per_page)
        ]
        nxt = None
        if n + 1 < pages:
            nxt = str(request.url.copy_merge_params({"page[cursor]": str(n + 1)}))
        return doc(events, included=profiles, next_url=nxt)

    return handler


# --- the validator itself ------------------------------------------------------------------------


def _req(method: str, path: str, **kw: Any) -> httpx.Request:
    headers = {"revision": REVISION, "authorization": f"Klaviyo-API-Key {KEY}"}
    headers.update(kw.pop("headers", {}))
    return httpx.Request(method, f"{BASE}{path}", headers=headers, **kw)


def test_validator_rejects_invalid_requests() -> None:
    body = {"data": {"type": "event", "attributes": {"properties": {}, "profile": {"data": {}}}}}
    bad = _req(
        "POST", "/api/events", content=orjson.dumps(body), headers={"content-type": JSON_API}
    )
    with pytest.raises(InvalidRequestBody, match="metric"):
        validate_request(bad, base_url=BASE)
    with pytest.raises(MissingRequiredParameter):
        validate_request(_req("GET", "/api/campaigns"), base_url=BASE)  # the channel filter
    with pytest.raises(SecurityValidationError):
        validate_request(
            httpx.Request("GET", f"{BASE}/api/metrics", headers={"revision": REVISION})
        )
    with pytest.raises(MissingHeaderError, match="revision"):
        validate_request(
            httpx.Request("GET", f"{BASE}/api/metrics", headers={"authorization": "x"}),
            base_url=BASE,
        )
    good = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {},
                "metric": {"data": {"type": "metric", "attributes": {"name": "x"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}},
            },
        }
    }
    validate_request(
        _req("POST", "/api/events", content=orjson.dumps(good), headers={"content-type": JSON_API})
    )
    with pytest.raises(RequestBodyValidationError):  # the wrong media type
        validate_request(
            _req(
                "POST",
                "/api/events",
                content=orjson.dumps(good),
                headers={"content-type": "text/plain"},
            )
        )
    with pytest.raises(PathNotFound):
        validate_request(_req("GET", "/api/nope"))
    with pytest.raises(FilterError):
        validate_request(_req("GET", "/api/events", params={"filter": "equals(email,'a')"}))
    with pytest.raises(FilterError):
        validate_request(_req("GET", "/api/events", params={"filter": "equals(metric_id,'a'"}))


def test_the_events_filter_is_documented_syntax() -> None:
    text = events_filter("RESQ6t", START, END)
    assert text == (
        'and(equals(metric_id,"RESQ6t"),greater-or-equal(datetime,2022-11-08T00:00:00+00:00),'
        "less-than(datetime,2022-11-09T00:00:00+00:00))"
    )
    validate_request(_req("GET", "/api/events", params={"filter": text}))


def test_filter_datetimes_are_utc_whole_seconds_rounded_up() -> None:
    from zoneinfo import ZoneInfo

    at = datetime(2022, 11, 8, 2, 0, 0, 1, tzinfo=ZoneInfo("Europe/Warsaw"))
    assert filter_datetime(at) == "2022-11-08T01:00:01+00:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        filter_datetime(datetime(2022, 1, 1))
    with pytest.raises(ValueError, match="empty window"):
        events_filter("RESQ6t", END, START)
    with pytest.raises(ValueError, match="not a Klaviyo id"):
        events_filter('x"),has(profile', START, END)


# --- every method sends spec-valid requests ------------------------------------------------------


def router(request: httpx.Request) -> httpx.Response:
    path, method = request.url.path, request.method
    if path == "/api/accounts":
        acct = example_of("AccountResponseObjectResource")
        acct.update(id="AcC123", links={"self": f"{BASE}/api/accounts/AcC123/"})
        acct["attributes"]["test_account"] = False
        return doc([acct])
    if path == "/api/metrics":
        return doc(
            [
                metric_resource("RESQ6t", "Opened Email"),
                metric_resource("X1", "Placed Order", "Shopify"),
            ]
        )
    if path == "/api/events" and method == "GET":
        return events_handler(1)(request)
    if path in ("/api/events", "/api/event-bulk-create-jobs"):
        return httpx.Response(202)
    if path == "/api/campaigns":
        campaign = example_of("CampaignResponseObjectResource")
        campaign.update(id="C1", relationships={}, links={"self": f"{BASE}/api/campaigns/C1/"})
        campaign["attributes"].update(name="Black Friday", archived=False)
        return doc([campaign])
    if path == "/api/flows":
        flow = example_of("FlowResponseObjectResource")
        flow.update(id="F1", relationships={}, links={"self": f"{BASE}/api/flows/F1/"})
        flow["attributes"].update(name="Welcome", status="live", archived=False)
        return doc([flow])
    if path.startswith("/api/profiles/"):
        return doc(profile_resource(path.rsplit("/", 1)[-1]))
    if path.endswith("/profiles"):
        joined = "2022-11-08T00:00:00+00:00"
        return doc([profile_resource(p, joined_group_at=joined) for p in ("P1", "P2")])
    if path == "/api/webhook-topics":
        topics = ["event:klaviyo.opened_email", "event:klaviyo.clicked_email"]
        return doc(
            [{"type": "webhook-topic", "id": t, "links": {"self": f"{BASE}/t"}} for t in topics]
        )
    if path == "/api/webhooks" and method == "GET":
        hook = example_of("WebhookResponseObjectResource")
        hook["attributes"]["enabled"] = True
        hook["relationships"] = {
            "webhook-topics": {
                "data": [{"type": "webhook-topic", "id": "event:klaviyo.opened_email"}]
            }
        }
        hook["links"] = {"self": f"{BASE}/api/webhooks/{hook['id']}/"}
        return doc([hook])
    if path == "/api/webhooks" and method == "POST":
        sent = orjson.loads(request.content)["data"]
        hook = {
            "type": "webhook",
            "id": "WH1",
            "attributes": {
                "name": sent["attributes"]["name"],
                "endpoint_url": sent["attributes"]["endpoint_url"],
                "enabled": True,
            },
            "relationships": sent["relationships"],
            "links": {"self": f"{BASE}/api/webhooks/WH1/"},
        }
        return doc(hook, status=201)
    if path.startswith("/api/webhooks/") and method == "DELETE":
        return httpx.Response(204)
    return error(404, "no such path")


def test_every_method_sends_requests_the_spec_accepts() -> None:
    async def scenario() -> None:
        client, mock, _ = make_client(router)
        async with client:
            account = await client.get_account()
            assert (account.id, account.timezone, account.organization_name) == (
                "AcC123",
                "US/Eastern",
                "Klaviyo Demo",
            )
            metrics = await client.list_metrics()
            assert [(m.id, m.name, m.integration_name) for m in metrics] == [
                ("RESQ6t", "Opened Email", "Klaviyo"),
                ("X1", "Placed Order", "Shopify"),
            ]
            assert [c["id"] async for c in client.iter_campaigns()] == ["C1"]
            assert [f["id"] async for f in client.iter_flows()] == ["F1"]
            assert (await client.get_profile("01GDDKASAP8TKDDA2GRZDSVP4H"))["type"] == "profile"
            assert [p["id"] async for p in client.iter_list_profiles("Y6nRLr")] == ["P1", "P2"]
            assert [p["id"] async for p in client.iter_segment_profiles("Y6nRLr")] == ["P1", "P2"]
            page = await client.events_page(metric_id="RESQ6t", start=START, end=END)
            assert len(page.events) == 2
            assert [p async for p in client.iter_events(metric_id="RESQ6t", start=START, end=END)]
            await client.events_page(
                metric_id="RESQ6t", start=START, end=END, page_size=10, include_profile=False
            )
            await client.events_page(
                metric_id="RESQ6t", start=START, end=END, profile_fields=["email", "phone_number"]
            )
            # What the backfill asks for (sparse fieldsets: only what the normaliser reads).
            sparse = await client.events_page(
                metric_id="RESQ6t",
                start=START,
                end=END,
                event_fields=EVENT_FIELDS,
                profile_fields=PROFILE_FIELDS,
            )
            assert sparse.url.count("fields%5B") == 2
            await client.create_event(
                "Opened Email",
                ProfileRef(email="sarah.mason@klaviyo-demo.com"),
                {"$message": "m1"},
                "u-1",
                datetime(2022, 11, 8, 1, 2, 3, tzinfo=UTC),
                value=9.99,
                value_currency="USD",
            )
            await client.create_event(
                "Clicked Email", ProfileRef(id="01GDDKASAP8TKDDA2GRZDSVP4H"), {}, "u-2"
            )
            assert (
                await client.bulk_create_events(
                    [
                        BulkEvent(
                            "Placed Order", ProfileRef(email="a@example.com"), {"$value": 5}, "o1"
                        ),
                        BulkEvent(
                            "Placed Order", ProfileRef(phone_number="+15005550006"), {}, "o2"
                        ),
                    ],
                    backfill=True,
                )
                == 1
            )
            hook = await client.create_webhook(
                "SendFlowr",
                "https://hooks.example.com/k",
                "whsec-123456",
                ["event:klaviyo.opened_email"],
            )
            assert hook.id == "WH1"
            assert hook.topic_ids == ("event:klaviyo.opened_email",)
            hooks = await client.list_webhooks()
            assert hooks[0].enabled
            assert hooks[0].topic_ids == ("event:klaviyo.opened_email",)
            await client.delete_webhook("WH1")
            topics = await client.list_webhook_topics()
            assert [t.id for t in topics] == [
                "event:klaviyo.opened_email",
                "event:klaviyo.clicked_email",
            ]
        assert mock.ops() == {
            ("GET", "/api/accounts"),
            ("GET", "/api/metrics"),
            ("GET", "/api/campaigns"),
            ("GET", "/api/flows"),
            ("GET", "/api/profiles/{id}"),
            ("GET", "/api/lists/{id}/profiles"),
            ("GET", "/api/segments/{id}/profiles"),
            ("GET", "/api/events"),
            ("POST", "/api/events"),
            ("POST", "/api/event-bulk-create-jobs"),
            ("POST", "/api/webhooks"),
            ("GET", "/api/webhooks"),
            ("DELETE", "/api/webhooks/{id}"),
            ("GET", "/api/webhook-topics"),
        }
        for r in mock.requests:
            assert r.headers["revision"] == REVISION
            assert r.headers["accept"] == JSON_API
            assert r.headers["authorization"] == f"Klaviyo-API-Key {KEY}"
            if r.content:
                assert r.headers["content-type"] == JSON_API

    run(scenario())


def test_events_page_request_and_result() -> None:
    async def scenario() -> None:
        client, mock, _ = make_client(events_handler(2))
        async with client:
            page = await client.events_page(metric_id="RESQ6t", start=START, end=END)
        params = mock.requests[0].url.params
        assert params["filter"] == events_filter("RESQ6t", START, END)
        assert (params["sort"], params["include"], params["page[size]"]) == (
            "datetime",
            "profile",
            "1000",
        )
        assert [e["id"] for e in page.events] == ["ev0-0", "ev0-1"]
        assert set(page.profiles) == {"P00", "P01"}
        assert page.profiles["P00"]["attributes"]["email"] == "p00@example.com"
        assert page.next_url is not None
        assert "page%5Bcursor%5D=1" in page.next_url
        assert page.url == str(mock.requests[0].url)

    run(scenario())


def test_pagination_follows_next_to_the_end_and_resumes_from_a_cursor() -> None:
    async def scenario() -> None:
        client, mock, _ = make_client(events_handler(4))
        async with client:
            pages = [p async for p in client.iter_events(metric_id="RESQ6t", start=START, end=END)]
            assert len(pages) == 4
            assert pages[-1].next_url is None
            assert [e["id"] for e in pages[3].events] == ["ev3-0", "ev3-1"]
            # a persisted checkpoint: resume at page 2
            checkpoint = pages[1].next_url
            resumed = await client.events_page(
                metric_id="RESQ6t", start=START, end=END, cursor_url=checkpoint
            )
            assert resumed.events[0]["id"] == "ev2-0"
            rest = [
                p
                async for p in client.iter_events(
                    metric_id="RESQ6t", start=START, end=END, cursor_url=checkpoint
                )
            ]
            assert [p.events[0]["id"] for p in rest] == ["ev2-0", "ev3-0"]
        assert len(mock.requests) == 4 + 1 + 2

    run(scenario())


def test_collections_follow_next_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page[cursor]", "0"))
        nxt = str(request.url.copy_merge_params({"page[cursor]": str(n + 1)})) if n < 2 else None
        return doc([metric_resource(f"M{n}", "Opened Email")], next_url=nxt)

    async def scenario() -> None:
        client, mock, _ = make_client(handler)
        async with client:
            assert [m.id for m in await client.list_metrics()] == ["M0", "M1", "M2"]
        assert len(mock.requests) == 3

    run(scenario())


@pytest.mark.parametrize("loop_to", ["self", "first"])
def test_a_repeated_next_raises_instead_of_looping(loop_to: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("page[cursor]", "0"))
        if loop_to == "self":
            nxt = str(request.url)
        else:  # page 2 points back to page 1
            nxt = str(request.url.copy_merge_params({"page[cursor]": "1" if n == 0 else "0"}))
            if n == 1:
                nxt = str(request.url.copy_remove_param("page[cursor]"))
        if request.url.path == "/api/metrics":
            return doc([metric_resource(f"M{n}", "Opened Email")], next_url=nxt)
        return doc([event_resource(f"e{n}")], next_url=nxt)

    async def scenario() -> None:
        client, mock, _ = make_client(handler)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="page"):
                async for _ in client.iter_events(metric_id="RESQ6t", start=START, end=END):
                    pass
            with pytest.raises(KlaviyoProtocolError, match="repeats"):
                async for _ in client._resources("/api/metrics"):
                    pass
        assert len(mock.requests) <= 4

    run(scenario())


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.example/api/events?page%5Bcursor%5D=1",
        "https://127.0.0.1:8765/api/events?page%5Bcursor%5D=1",  # another scheme
        "http://127.0.0.1:8766/api/events?page%5Bcursor%5D=1",  # another port
        "http://user:pw@127.0.0.1:8765/api/events?page%5Bcursor%5D=1",  # credentials in the URL
        "http://127.0.0.1:8765/oauth/token?page%5Bcursor%5D=1",  # leaves the collection
    ],
)
def test_next_and_cursor_urls_never_leave_base_url(foreign: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return doc([event_resource("e1")], next_url=foreign)

    async def scenario() -> None:
        client, mock, _ = make_client(handler)
        async with client:
            with pytest.raises(KlaviyoProtocolError) as info:
                await client.events_page(metric_id="RESQ6t", start=START, end=END)
            assert KEY not in str(info.value)
            with pytest.raises(KlaviyoProtocolError):
                async for _ in client.iter_events(metric_id="RESQ6t", start=START, end=END):
                    pass
            with pytest.raises(KlaviyoProtocolError):
                await client.events_page(
                    metric_id="RESQ6t", start=START, end=END, cursor_url=foreign
                )
        assert all(r.url.host == "127.0.0.1" and r.url.port == 8765 for r in mock.requests)
        assert len(mock.requests) == 2  # the cursor_url was never fetched

    run(scenario())


# --- retries -------------------------------------------------------------------------------------


def sequence(*responses: httpx.Response | Exception) -> Handler:
    items = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler


def test_retries_a_500_then_succeeds() -> None:
    async def scenario() -> None:
        client, mock, time = make_client(
            sequence(error(500, "oops"), error(503), router(_req("GET", "/api/metrics")))
        )
        async with client:
            metrics = await client.list_metrics()
        assert len(metrics) == 2
        assert len(mock.requests) == 3
        assert len(time.sleeps) == 2
        assert all(0 <= s <= 30 for s in time.sleeps)

    run(scenario())


def test_retries_transport_errors_and_gives_up_after_the_bound() -> None:
    async def scenario() -> None:
        ok = router(_req("GET", "/api/metrics"))
        client, mock, _ = make_client(
            sequence(httpx.ConnectError("connection reset"), httpx.ReadTimeout("slow"), ok)
        )
        async with client:
            assert len(await client.list_metrics()) == 2
        assert len(mock.requests) == 3

        client, mock, _ = make_client(sequence(httpx.ConnectError("connection reset")))
        async with client:
            with pytest.raises(KlaviyoUnavailable, match="after 6 attempts") as info:
                await client.list_metrics()
        assert info.value.attempts == 6
        assert len(mock.requests) == 6

    run(scenario())


def test_total_wait_is_bounded() -> None:
    async def scenario() -> None:
        policy = RetryPolicy(
            max_attempts=100, max_total_wait=10.0, initial_backoff=1.0, max_backoff=4.0
        )
        client, mock, time = make_client(sequence(error(502)), policy=policy)
        async with client:
            with pytest.raises(KlaviyoUnavailable):
                await client.list_metrics()
        assert sum(time.sleeps) <= 10.0
        assert 3 <= len(mock.requests) < 100

    run(scenario())


def test_a_429_waits_retry_after_then_succeeds() -> None:
    async def scenario() -> None:
        ok = router(_req("GET", "/api/metrics"))
        client, mock, _ = make_client(sequence(error(429, "throttled", Retry_After="3"), ok))
        async with client:
            assert len(await client.list_metrics()) == 2
        assert mock.times[0] == 0
        assert mock.times[1] >= 3.0

    run(scenario())


def test_a_429_pauses_every_concurrent_caller_of_the_operation() -> None:
    async def scenario() -> None:
        calls = {"n": 0}
        ok = router(_req("GET", "/api/metrics"))

        def handler(request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            return error(429, "throttled", Retry_After="5") if calls["n"] == 1 else ok

        client, mock, _ = make_client(handler)
        async with client:
            results = await asyncio.gather(*(client.list_metrics() for _ in range(8)))
        assert all(len(r) == 2 for r in results)
        # one 429, then each caller once: no retry storm, and nobody went early
        assert len(mock.requests) == 9
        assert all(t >= 5.0 for t in mock.times[1:])

    run(scenario())


def test_a_429_beyond_the_budget_raises_rate_limited() -> None:
    async def scenario() -> None:
        policy = RetryPolicy(max_total_wait=30.0)
        client, mock, _ = make_client(
            sequence(error(429, "slow down", Retry_After="45")), policy=policy
        )
        async with client:
            with pytest.raises(KlaviyoRateLimited) as info:
                await client.list_metrics()
        assert info.value.retry_after == 45.0
        assert len(mock.requests) == 1

        client, mock, _ = make_client(sequence(error(429, "slow down", Retry_After="1")))
        async with client:
            with pytest.raises(KlaviyoRateLimited, match="after 6 attempts"):
                await client.list_metrics()
        assert len(mock.requests) == 6

    run(scenario())


def test_ratelimit_remaining_zero_pauses_before_klaviyo_says_no() -> None:
    async def scenario() -> None:
        first = router(_req("GET", "/api/metrics"))
        first.headers.update(
            {"RateLimit-Limit": "10", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"}
        )
        client, mock, _ = make_client(sequence(first, router(_req("GET", "/api/metrics"))))
        async with client:
            await client.list_metrics()
            await client.list_metrics()
        assert mock.times == [0.0, 7.0]

    run(scenario())


def test_other_4xx_are_not_retried() -> None:
    async def scenario() -> None:
        client, mock, time = make_client(
            sequence(error(400, "page[size] must be at most 1000", parameter="page[size]"))
        )
        async with client:
            with pytest.raises(KlaviyoBadRequest) as info:
                await client.list_metrics()
        assert len(mock.requests) == 1
        assert time.sleeps == []
        assert info.value.detail == "page[size] must be at most 1000"
        assert info.value.parameter == "page[size]"
        assert info.value.status == 400
        assert "page[size]" in str(info.value)

        client, mock, _ = make_client(sequence(error(404, "no profile")))
        async with client:
            with pytest.raises(KlaviyoNotFound):
                await client.get_profile("01GDDKASAP8TKDDA2GRZDSVP4H")
        client, mock, _ = make_client(sequence(error(403, "missing scope events:read")))
        async with client:
            with pytest.raises(KlaviyoAuthError, match="events:read"):
                await client.list_metrics()
        assert len(mock.requests) == 1

    run(scenario())


class Tokens:
    def __init__(self) -> None:
        self.current = "tok-OLD-aaaaaaaaaaaaaaaa"
        self.refreshes = 0

    async def token(self) -> str:
        return self.current

    async def refresh(self) -> str:
        self.refreshes += 1
        self.current = f"tok-NEW-{self.refreshes}-bbbbbbbbbbbbbbbb"
        return self.current


def test_bearer_401_refreshes_once_and_retries() -> None:
    tokens = Tokens()

    def handler(request: httpx.Request) -> httpx.Response:
        if (
            request.headers["authorization"] != f"Bearer {tokens.current}"
            or "OLD" in tokens.current
        ):
            return error(401, "expired token")
        return router(request)

    async def scenario() -> None:
        client, mock, _ = make_client(handler, auth=BearerAuth(tokens))
        async with client:
            assert len(await client.list_metrics()) == 2
        assert tokens.refreshes == 1
        assert [r.headers["authorization"] for r in mock.requests] == [
            "Bearer tok-OLD-aaaaaaaaaaaaaaaa",
            "Bearer tok-NEW-1-bbbbbbbbbbbbbbbb",
        ]

    run(scenario())


def test_bearer_401_twice_raises_auth_error_without_leaking_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = Tokens()

    async def scenario() -> None:
        client, mock, _ = make_client(
            sequence(error(401, "invalid token")), auth=BearerAuth(tokens)
        )
        async with client:
            with pytest.raises(KlaviyoAuthError) as info:
                await client.list_metrics()
        assert tokens.refreshes == 1
        assert len(mock.requests) == 2
        text = str(info.value) + repr(info.value)
        assert "tok-OLD" not in text
        assert "tok-NEW" not in text

    with caplog.at_level(logging.DEBUG):
        run(scenario())
    assert "tok-" not in caplog.text


def test_truncated_or_foreign_bodies_are_protocol_errors_after_retries() -> None:
    async def scenario() -> None:
        good = router(_req("GET", "/api/metrics")).content
        truncated = httpx.Response(
            200, content=good[: len(good) // 2], headers={"content-type": JSON_API}
        )
        client, mock, _ = make_client(sequence(truncated), validate_responses=False)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="not valid JSON") as info:
                await client.list_metrics()
        assert info.value.attempts == 6
        assert len(mock.requests) == 6

        html = httpx.Response(
            200, content=b"<html>maintenance</html>", headers={"content-type": "text/html"}
        )
        client, mock, _ = make_client(
            sequence(html, router(_req("GET", "/api/metrics"))), validate_responses=False
        )
        async with client:
            assert len(await client.list_metrics()) == 2  # retried, then fine

        not_jsonapi = httpx.Response(
            200, content=b'{"items": []}', headers={"content-type": JSON_API}
        )
        client, _, _ = make_client(sequence(not_jsonapi), validate_responses=False)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="no 'data'"):
                await client.list_metrics()
        bad_resource = httpx.Response(
            200, content=b'{"data": [{"id": 1}]}', headers={"content-type": JSON_API}
        )
        client, _, _ = make_client(sequence(bad_resource), validate_responses=False)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="string 'type' and 'id'"):
                await client.list_metrics()

    run(scenario())


def test_events_pages_bad_documents_are_retried_bad_resources_are_not() -> None:
    async def scenario() -> None:
        good = events_handler(1)(_req("GET", "/api/events")).content
        truncated = httpx.Response(
            200, content=good[: len(good) // 2], headers={"content-type": JSON_API}
        )
        client, mock, _ = make_client(sequence(truncated), validate_responses=False)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="not valid JSON") as info:
                await client.events_page(metric_id="RESQ6t", start=START, end=END)
        assert info.value.attempts == 6
        assert len(mock.requests) == 6
        client, mock, _ = make_client(
            sequence(truncated, events_handler(1)(_req("GET", "/api/events"))),
            validate_responses=False,
        )
        async with client:
            page = await client.events_page(metric_id="RESQ6t", start=START, end=END)
        assert [e["id"] for e in page.events] == ["ev0-0", "ev0-1"]  # retried, then fine
        assert [r.raw for r in page.records] == [orjson.dumps(e) for e in page.events]
        bad_resource = httpx.Response(
            200,
            content=b'{"data": [{"type": "event", "id": "e", "attributes": 3}]}',
            headers={"content-type": JSON_API},
        )
        client, mock, _ = make_client(sequence(bad_resource), validate_responses=False)
        async with client:
            with pytest.raises(KlaviyoProtocolError, match="attributes: must be an object"):
                await client.events_page(metric_id="RESQ6t", start=START, end=END)
        assert len(mock.requests) == 1

    run(scenario())


def test_credentials_never_appear_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    leaky: list[httpx.Response | Exception] = [
        error(400, f"bad key Klaviyo-API-Key {KEY}"),
        error(500, f"internal error for {KEY}"),
        httpx.ConnectError(f"reset while sending Authorization: Klaviyo-API-Key {KEY}"),
        error(401, f"key {KEY} revoked"),
        httpx.Response(200, content=f"not json {KEY}".encode(), headers={"content-type": JSON_API}),
    ]

    async def scenario() -> list[KlaviyoError]:
        caught: list[KlaviyoError] = []
        for item in leaky:
            client, _, _ = make_client(
                sequence(item),
                policy=RetryPolicy(max_attempts=2, initial_backoff=0.01),
                validate_responses=False,
            )
            async with client:
                assert KEY not in repr(client)
                with pytest.raises(KlaviyoError) as info:
                    await client.list_metrics()
            caught.append(info.value)
        secret = "whsec-SECRET-98765"
        client, _, _ = make_client(sequence(error(400, f"secret {secret} too short")))
        async with client:
            with pytest.raises(KlaviyoBadRequest) as info:
                await client.create_webhook(
                    "x", "https://h.example.com", secret, ["event:klaviyo.opened_email"]
                )
        assert secret not in str(info.value)
        return caught

    with caplog.at_level(logging.DEBUG):
        errors = run(scenario())
    assert len(errors) == len(leaky)
    for exc in errors:
        rendered = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.errors)
        assert KEY not in rendered
        assert "[redacted]" in str(exc) or isinstance(exc, KlaviyoProtocolError)
    assert KEY not in caplog.text
    assert "retrying" in caplog.text  # the retries were logged, without the key
    assert KEY not in repr(ApiKeyAuth(KEY))


# --- writes --------------------------------------------------------------------------------------


def test_bulk_create_splits_at_1000_events_and_groups_by_profile() -> None:
    async def scenario() -> None:
        client, mock, _ = make_client(lambda r: httpx.Response(202))
        items = [
            BulkEvent(
                "Opened Email",
                ProfileRef(email=f"p{i % 7}@example.com"),
                {"$message": "m1", "i": i},
                f"u{i}",
                START + timedelta(seconds=i),
            )
            for i in range(2500)
        ]
        async with client:
            assert await client.bulk_create_events(items) == 3
        counts = []
        seen: list[int] = []
        for r in mock.requests:
            entries = orjson.loads(r.content)["data"]["attributes"]["events-bulk-create"]["data"]
            assert len(
                {e["attributes"]["profile"]["data"]["attributes"]["email"] for e in entries}
            ) == len(entries)
            n = sum(len(e["attributes"]["events"]["data"]) for e in entries)
            counts.append(n)
            seen += [
                ev["attributes"]["properties"]["i"]
                for e in entries
                for ev in e["attributes"]["events"]["data"]
            ]
        assert counts == [1000, 1000, 500]
        assert sorted(seen) == list(range(2500))

    run(scenario())


def test_create_event_body() -> None:
    async def scenario() -> None:
        client, mock, _ = make_client(lambda r: httpx.Response(202))
        async with client:
            await client.create_event(
                "Placed Order",
                ProfileRef(email="a@example.com", external_id="shop-1"),
                {"$value": 42.5, "items": [{"sku": "A"}]},
                "order-1",
                datetime(2022, 11, 8, 1, 2, 3, tzinfo=UTC),
            )
            with pytest.raises(ValueError, match="timezone-aware"):
                await client.create_event("X", ProfileRef(id="P1"), {}, "u", datetime(2022, 1, 1))
        attrs = orjson.loads(mock.requests[0].content)["data"]["attributes"]
        assert attrs["metric"]["data"]["attributes"]["name"] == "Placed Order"
        assert attrs["profile"]["data"]["attributes"] == {
            "email": "a@example.com",
            "external_id": "shop-1",
        }
        assert attrs["time"] == "2022-11-08T01:02:03+00:00"
        assert attrs["unique_id"] == "order-1"
        with pytest.raises(ValueError, match="needs an email"):
            ProfileRef()

    run(scenario())


def test_client_configuration() -> None:
    async def scenario() -> None:
        client = KlaviyoClient(ApiKeyAuth(KEY), transport=httpx.MockTransport(router))
        async with client:
            assert client.base_url == "https://a.klaviyo.com"
            timeout = client._http.timeout
            assert (timeout.connect, timeout.read) == (5.0, 30.0)
            with pytest.raises(ValueError, match="page_size"):
                await client.events_page(metric_id="RESQ6t", start=START, end=END, page_size=1001)
        custom = KlaviyoClient(ApiKeyAuth(KEY), base_url="http://sim:9000", read_timeout=2.0)
        assert custom._http.timeout.read == 2.0
        await custom.aclose()
        with pytest.raises(ValueError):
            KlaviyoClient(ApiKeyAuth(KEY), base_url="ftp://x")
        with pytest.raises(ValueError):
            ApiKeyAuth(" ")

    run(scenario())
