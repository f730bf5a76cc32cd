"""Simulator configuration and the ground truth kept for each simulated profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from sendflowr.simulate.personas import PERSONA_NAMES

DEFAULT_PERSONA_MIX: Final[tuple[tuple[str, float], ...]] = (
    ("early_bird", 0.14),
    ("commuter", 0.18),
    ("lunch_checker", 0.14),
    ("evening_reader", 0.16),
    ("night_owl", 0.08),
    ("weekend_only", 0.05),
    ("erratic", 0.10),
    ("office_hours", 0.15),
)

# Mostly US, as for a typical US brand with some international customers.
DEFAULT_TIME_ZONES: Final[tuple[tuple[str, float], ...]] = (
    ("America/New_York", 0.35),
    ("America/Chicago", 0.20),
    ("America/Los_Angeles", 0.20),
    ("Europe/London", 0.10),
    ("Europe/Berlin", 0.07),
    ("Asia/Tokyo", 0.04),
    ("Australia/Sydney", 0.04),
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    tenant: str = "demo"
    esp: str = "klaviyo"
    seed: int = 42
    profiles: int = 5000
    days: int = 90
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    # The brand's biased schedule: these weekdays (Monday=0) at this minute of day, brand time.
    brand_tz: str = "America/New_York"
    send_weekdays: tuple[int, ...] = (1, 3)
    send_minute_of_day: int = 600
    # Apple Mail Privacy Protection: share of recipients whose mail is fetched at delivery.
    machine_open_share: float = 0.45
    # Per-profile open probability ~ Beta with this mean and concentration (alpha + beta).
    open_probability: float = 0.35
    open_concentration: float = 6.0
    click_probability: float = 0.12  # given a real open, Beta-distributed per profile too
    click_concentration: float = 20.0
    order_probability: float = 0.08  # given a click
    bounce_rate: float = 0.004  # hard bounces per send; stops all later sends
    unsubscribe_rate: float = 0.002  # per real open
    spam_complaint_rate: float = 0.0002  # per delivered email
    latency_median_seconds: float = 45.0
    latency_sigma: float = 0.6  # lognormal
    open_horizon_hours: float = 72.0  # an email not seen within this is never opened
    currency: str = "USD"
    order_value_median: float = 60.0
    discount_share: float = 0.25  # orders with a discount code
    persona_mix: tuple[tuple[str, float], ...] = DEFAULT_PERSONA_MIX
    time_zones: tuple[tuple[str, float], ...] = DEFAULT_TIME_ZONES
    hash_key: bytes = b"sendflowr-simulator"
    # Personal shift of the persona's curve, clipped at 3 sd; weekend_only stays within the
    # weekend for shifts up to 2.5 h, so keep this at or below 50.
    phase_shift_sd_minutes: float = 40.0
    activity_sigma: float = 0.4  # lognormal sigma of the personal activity scale (median 1)
    signup_share: float = 0.1  # profiles that sign up during the period (and get the welcome flow)
    welcome_delay_minutes: float = 5.0
    site_visit_rate: float = 0.005  # spontaneous site visits per inbox check
    browse_abandonment_share: float = 0.5  # visits with a product view that trigger the flow
    browse_abandonment_delay_minutes: float = 60.0
    browse_abandonment_cooldown_days: float = 7.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start: must be timezone-aware")
        if self.profiles < 1 or self.days < 1:
            raise ValueError("profiles and days must be at least 1")
        if not self.send_weekdays or any(not 0 <= d <= 6 for d in self.send_weekdays):
            raise ValueError("send_weekdays: weekdays are 0 (Monday) to 6 (Sunday)")
        if not 0 <= self.send_minute_of_day < 1440:
            raise ValueError("send_minute_of_day: must be in [0, 1440)")
        for name in (
            "machine_open_share",
            "open_probability",
            "click_probability",
            "order_probability",
            "bounce_rate",
            "unsubscribe_rate",
            "spam_complaint_rate",
            "signup_share",
            "discount_share",
            "browse_abandonment_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a probability, got {value}")
        for name, _ in self.persona_mix:
            if name not in PERSONA_NAMES:
                raise ValueError(f"persona_mix: unknown persona {name!r}")
        for zone, _ in (*self.time_zones, (self.brand_tz, 1.0)):
            ZoneInfo(zone)  # raises for an unknown zone
        if sum(w for _, w in self.persona_mix) <= 0 or sum(w for _, w in self.time_zones) <= 0:
            raise ValueError("persona_mix and time_zones need positive weights")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True, slots=True)
class TrueProfile:
    """One simulated person and the parameters of their true behaviour."""

    index: int
    email: str
    email_hash: str
    esp_profile_id: str
    persona: str
    tz: str
    shift_minutes: int  # the persona's curve is moved this much later in local time
    scale: float  # multiplies the persona's rate
    p_open: float  # opens an email at the first inbox check after delivery with this probability
    p_click: float  # given a real open
    is_mpp: bool  # Apple Mail Privacy Protection: machine open at every delivery
    signup_ms: int | None  # UTC ms of signup during the period; None if subscribed before it
