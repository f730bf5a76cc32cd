"""`sendflowr run`'s demo: a local Klaviyo simulator connected like a real account.

The demo brand lives in the simulator; SendFlowr connects to it with a private API key,
subscribes to its live events (signed webhooks) and, while it has no data yet, queues a real
backfill that the API process's worker runs, so a new user watches the backfill progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.connectors.klaviyo.factory import open_client
from sendflowr.connectors.klaviyo.registration import register_webhook
from sendflowr.klaviyo_sim import SimServerConfig
from sendflowr.klaviyo_sim.command import run_in_thread
from sendflowr.klaviyo_sim.config import new_api_key
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

log = logging.getLogger("sendflowr.demo")


@dataclass(frozen=True, slots=True)
class DemoKlaviyo:
    url: str
    tenant: str
    backfill_job: int | None
    stop: Callable[[], None]


@dataclass(frozen=True, slots=True)
class DemoSimulator:
    url: str
    api_key: str
    config: SimServerConfig
    stop: Callable[[], None]


def start_demo_simulator(settings: Settings, live_per_minute: float = 60.0) -> DemoSimulator:
    """Start the simulated Klaviyo account of the demo brand (in a thread, on a free port)."""
    key = new_api_key()
    config = SimServerConfig(
        tenant=settings.demo_tenant,
        profiles=max(1, settings.demo_profiles),
        days=settings.demo_days,
        api_keys=(key,),
        live_events_per_minute=live_per_minute,
    )
    url, stop = run_in_thread(config)
    return DemoSimulator(url=url, api_key=key, config=config, stop=stop)


def with_demo_oauth(settings: Settings, simulator: DemoSimulator) -> Settings:
    """The settings with the simulator as the deployment's Klaviyo, OAuth app included, unless
    they name a Klaviyo of their own: the dashboard's "Connect with Klaviyo" then works in the
    demo (the simulator consents at once and issues real tokens for its account)."""
    if settings.klaviyo_client_id or "klaviyo_api_url" in settings.model_fields_set:
        return settings
    return settings.model_copy(
        update={
            "klaviyo_api_url": simulator.url,
            "klaviyo_authorize_url": simulator.url + "/oauth/authorize",
            "klaviyo_client_id": simulator.config.oauth_client_id,
            "klaviyo_client_secret": SecretStr(simulator.config.oauth_client_secret),
        }
    )


def start_demo_klaviyo(
    runtime: Runtime, live_per_minute: float = 60.0, simulator: DemoSimulator | None = None
) -> DemoKlaviyo:
    """Start the simulator (unless given), connect the demo tenant to it, register the webhook
    and queue a backfill when the tenant has no events yet."""
    settings = runtime.settings
    tenant = settings.demo_tenant
    owned = simulator is None
    sim = simulator or start_demo_simulator(settings, live_per_minute)
    url, stop, key, config = sim.url, sim.stop, sim.api_key, sim.config
    try:
        brand_tz = config.sim_config().brand_tz
        runtime.metadata.ensure_tenant(Tenant(tenant, "Demo brand (simulated Klaviyo)", brand_tz))
        runtime.accounts.connect(tenant, ESP, "api_key", {"api_key": key}, api_url=url)

        async def register() -> None:
            async with open_client(runtime, tenant) as client:
                await register_webhook(runtime, tenant, client)

        try:
            asyncio.run(register())
        except Exception as exc:  # the demo works without live events
            log.warning("demo webhook not registered: %s", exc)
        job_id = None
        latest = runtime.backfills.latest_job(tenant, ESP)
        active = latest is not None and latest.status in ("queued", "in_progress")
        if runtime.events.count_events(tenant) == 0 and not active:
            now = datetime.now(UTC)
            # recent_start() may begin up to a week before `days` ago.
            span = timedelta(days=settings.demo_days + 8)
            job_id = runtime.backfills.create_job(tenant, ESP, "backfill", now - span, now).id
    except BaseException:
        if owned:  # a simulator the caller gave is the caller's to stop
            stop()
        raise
    return DemoKlaviyo(url=url, tenant=tenant, backfill_job=job_id, stop=stop)
