"""A local HTTP server that behaves like Klaviyo's API, serving a simulated brand.

Built from the ground-truth simulator, so a backfill through it can be compared with the truth
(`GET /_sim/brand`). Entry points: `create_sim_app(SimServerConfig(...))` (an ASGI app),
`run_in_thread(config)` (uvicorn on a free loopback port), and the `klaviyo_sim` Typer command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sendflowr.klaviyo_sim.app import SimApp, create_sim_app
    from sendflowr.klaviyo_sim.brand import Brand, build_brand
    from sendflowr.klaviyo_sim.command import klaviyo_sim, run_in_thread
    from sendflowr.klaviyo_sim.config import SimServerConfig
    from sendflowr.klaviyo_sim.webhooks import sign_webhook

# Exports load on first use (PEP 562), so importing one light submodule (the CLI's command)
# does not build the whole server.
_EXPORTS = {
    "SimApp": "app",
    "create_sim_app": "app",
    "Brand": "brand",
    "build_brand": "brand",
    "klaviyo_sim": "command",
    "run_in_thread": "command",
    "SimServerConfig": "config",
    "sign_webhook": "webhooks",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Brand",
    "SimApp",
    "SimServerConfig",
    "build_brand",
    "create_sim_app",
    "klaviyo_sim",
    "run_in_thread",
    "sign_webhook",
]
