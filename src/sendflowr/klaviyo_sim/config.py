"""How a simulated Klaviyo account is set up: its brand, credentials, OAuth client and limits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sendflowr.demo import recent_start
from sendflowr.simulate import SimConfig


def new_api_key() -> str:
    """A private key in Klaviyo's style (`pk_` + hex), marked as the simulator's."""
    return "pk_sim_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class SimServerConfig:
    """Everything the simulated Klaviyo server needs; the defaults behave like Klaviyo.

    `start=None` picks a Monday such that the `days` of history end before now
    (`sendflowr.demo.recent_start`). `base_url=None` builds links from each request's own
    scheme and host.
    """

    # The brand (the ground-truth simulator's parameters).
    tenant: str = "demo"
    profiles: int = 2000
    days: int = 60
    seed: int = 42
    start: datetime | None = None
    # Credentials: private API keys, and the one OAuth client the sim knows.
    api_keys: tuple[str, ...] = field(default_factory=lambda: (new_api_key(),))
    oauth_client_id: str = "sim-client"
    oauth_client_secret: str = "sim-client-secret"  # noqa: S105 - a simulator's public default
    # Redirect URIs the client may use; empty = any http(s) URI (convenient for local tests).
    oauth_redirect_uris: tuple[str, ...] = ()
    deny_consent: bool = False  # the user clicks "Deny" on every authorize
    authorization_code_lifetime_seconds: float = 300.0
    access_token_lifetime_seconds: int = 3600
    # Rate limits: Klaviyo's published limits per (credential, operation), scaled.
    rate_limits: bool = True
    rate_limit_scale: float = 1.0
    base_url: str | None = None
    # Live events generated in the background (per minute; 0 = only on POST /_sim/live).
    live_events_per_minute: float = 0.0
    webhook_timeout_seconds: float = 5.0
    # Seconds a campaign send job stays "processing" before it is "complete".
    send_job_seconds: float = 0.0
    # /_sim/* answers loopback clients only unless this is set.
    allow_remote_control: bool = False

    def __post_init__(self) -> None:
        if not self.api_keys and not self.oauth_client_id:
            raise ValueError("api_keys or an OAuth client is needed, or nothing can authenticate")
        if self.rate_limit_scale <= 0:
            raise ValueError("rate_limit_scale: must be positive")
        if self.profiles < 1 or self.days < 1:
            raise ValueError("profiles and days must be at least 1")

    def sim_config(self, now: datetime | None = None) -> SimConfig:
        """The ground-truth simulator's configuration for this brand."""
        start = self.start or recent_start(now or datetime.now(UTC), self.days)
        return SimConfig(
            tenant=self.tenant, profiles=self.profiles, days=self.days, seed=self.seed, start=start
        )
