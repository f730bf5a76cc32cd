"""Which ESPs an intent can be bound to: for each, its dispatcher, the shape of a binding and
the capacity the planner may book a minute.

This is the one place that lists ESPs. Timing, planning and the executor ask it by the name in
an intent's binding, so adding an ESP adds an entry here and a dispatcher, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sendflowr.connectors.klaviyo.constants import ESP as KLAVIYO
from sendflowr.execution import webhook_esp
from sendflowr.execution.base import Dispatcher
from sendflowr.execution.klaviyo_esp import CEILING_PER_MINUTE, KlaviyoDispatcher
from sendflowr.intents import validate_klaviyo_binding
from sendflowr.runtime import Runtime

DEFAULT_WEBHOOK_RPM: Final = 600
DEFAULT_WEBHOOK_BATCH: Final = 100


@dataclass(frozen=True, slots=True)
class EspKind:
    name: str
    validate_binding: Callable[[Mapping[str, Any]], dict[str, Any]]
    # sends a minute the ESP accepts, from the account's credentials and the binding
    ceiling: Callable[[Mapping[str, Any], Mapping[str, Any]], int]


def _webhook_ceiling(credentials: Mapping[str, Any], binding: Mapping[str, Any]) -> int:
    rpm = int(credentials.get("requests_per_minute", DEFAULT_WEBHOOK_RPM))
    return rpm * int(binding.get("max_batch", DEFAULT_WEBHOOK_BATCH))


ESPS: Final[dict[str, EspKind]] = {
    KLAVIYO: EspKind(KLAVIYO, validate_klaviyo_binding, lambda _c, _b: CEILING_PER_MINUTE),
    webhook_esp.ESP: EspKind(webhook_esp.ESP, webhook_esp.validate_binding, _webhook_ceiling),
}


def capacity_per_minute(
    runtime: Runtime, tenant: str, esp: str, binding: Mapping[str, Any]
) -> tuple[int, int]:
    """(ceiling, plannable): the ESP's sends a minute for this account and binding, and the
    share of it the planner books (settings.esp_capacity_share), leaving room for retries."""
    credentials = runtime.accounts.credentials(tenant, esp)
    ceiling = ESPS[esp].ceiling(credentials, binding)
    return ceiling, max(1, int(ceiling * runtime.settings.esp_capacity_share))


def dispatchers(runtime: Runtime) -> dict[str, Dispatcher]:
    return {KLAVIYO: KlaviyoDispatcher(runtime), webhook_esp.ESP: webhook_esp.WebhookDispatcher()}
