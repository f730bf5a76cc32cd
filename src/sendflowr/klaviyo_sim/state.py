"""The running sim's state, and the per-request context handlers receive."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from sendflowr.connectors.klaviyo.constants import JSON_API, RATE_LIMITS
from sendflowr.klaviyo_sim import resources
from sendflowr.klaviyo_sim import webhooks as wh
from sendflowr.klaviyo_sim.brand import Brand
from sendflowr.klaviyo_sim.config import SimServerConfig
from sendflowr.klaviyo_sim.errors import ApiError, bad_body
from sendflowr.klaviyo_sim.faults import Faults
from sendflowr.klaviyo_sim.filters import CursorCodec
from sendflowr.klaviyo_sim.live import LiveGenerator
from sendflowr.klaviyo_sim.oauth import OAuthServer
from sendflowr.klaviyo_sim.ratelimit import RateLimiter
from sendflowr.klaviyo_sim.stats import Stats

MAX_BODY: Final = 5 * 1024 * 1024  # Klaviyo refuses payloads over 5 MB


@dataclass(slots=True)
class SimState:
    config: SimServerConfig
    brand: Brand
    clock: Callable[[], float]
    webhook_transport: httpx.AsyncBaseTransport | None = None
    api_keys: frozenset[str] = field(init=False)
    limiter: RateLimiter = field(init=False)
    oauth: OAuthServer = field(init=False)
    faults: Faults = field(default_factory=Faults)
    stats: Stats = field(default_factory=Stats)
    cursors: CursorCodec = field(default_factory=lambda: CursorCodec(secrets.token_bytes(16)))
    webhooks: dict[str, wh.Webhook] = field(default_factory=dict)
    send_jobs: dict[str, float] = field(default_factory=dict)  # campaign id -> created at
    live: LiveGenerator = field(init=False)
    public_base: str = "http://127.0.0.1"

    def __post_init__(self) -> None:
        cfg = self.config
        self.api_keys = frozenset(cfg.api_keys)
        self.limiter = RateLimiter(
            RATE_LIMITS, self.clock, enabled=cfg.rate_limits, scale=cfg.rate_limit_scale
        )
        self.oauth = OAuthServer(
            cfg.oauth_client_id,
            cfg.oauth_client_secret,
            self.clock,
            redirect_uris=cfg.oauth_redirect_uris,
            code_lifetime=cfg.authorization_code_lifetime_seconds,
            access_lifetime=cfg.access_token_lifetime_seconds,
            deny_consent=cfg.deny_consent,
        )
        self.live = LiveGenerator(self.brand, cfg.seed, secrets.token_hex(3))
        if cfg.base_url:
            self.public_base = cfg.base_url.rstrip("/")

    def add_live_events(self, n: int) -> list[int]:
        return self.live.generate(n, int(self.clock()))

    async def deliver(self, ordinals: Sequence[int]) -> list[wh.Outcome]:
        """Send the events to every webhook subscribed to their topics; outcomes recorded."""
        batches = wh.plan(self.brand, list(self.webhooks.values()), ordinals)
        if not batches:
            return []
        timestamp = int(self.clock())
        async with httpx.AsyncClient(
            transport=self.webhook_transport, timeout=self.config.webhook_timeout_seconds
        ) as client:
            outcomes = await asyncio.gather(
                *(
                    wh.deliver(
                        client,
                        hook,
                        wh.delivery_body(self.brand, hook, batch, self.public_base, timestamp),
                        timestamp,
                        len(batch),
                    )
                    for hook, batch in batches
                )
            )
        for o in outcomes:
            self.stats.record_delivery(o.webhook_id, o.events, o.status, o.error)
        return list(outcomes)


@dataclass(slots=True)
class Ctx:
    """One request as a handler sees it."""

    request: Request
    state: SimState
    params: dict[str, str]
    operation: tuple[str, str]

    @property
    def query(self) -> QueryParams:
        return self.request.query_params

    @property
    def brand(self) -> Brand:
        return self.state.brand

    @property
    def base(self) -> str:
        if self.state.config.base_url:
            return self.state.config.base_url.rstrip("/")
        url = self.request.url
        return f"{url.scheme}://{url.netloc}"

    def self_url(self) -> str:
        qs = self.request.url.query
        return self.base + self.request.url.path + (f"?{qs}" if qs else "")

    def link(self, cursor: str) -> str:
        """This request's URL with `page[cursor]` set (every other parameter kept)."""
        items = [(k, v) for k, v in self.query.multi_items() if k != "page[cursor]"]
        items.append(("page[cursor]", cursor))
        return f"{self.base}{self.request.url.path}?{urlencode(items)}"

    def respond(self, doc: resources.Json, status: int = 200) -> Response:
        return Response(resources.finish(doc, self.base), status_code=status, media_type=JSON_API)

    async def json_body(self) -> Any:
        body = await self.request.body()
        if len(body) > MAX_BODY:
            raise ApiError(413, "The request body is larger than 5 MB.")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise bad_body("/", f"The body is not valid JSON: {exc}") from None


Handler = Callable[[Ctx], Awaitable[Response]]
