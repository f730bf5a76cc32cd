"""A local HTTP server that behaves like Klaviyo's API, serving a simulated brand.

Built from the ground-truth simulator, so a backfill through it can be compared with the truth
(`GET /_sim/brand`). Entry points: `create_sim_app(SimServerConfig(...))` (an ASGI app),
`run_in_thread(config)` (uvicorn on a free loopback port), and the `klaviyo_sim` Typer command.
"""

from sendflowr.klaviyo_sim.app import SimApp, create_sim_app
from sendflowr.klaviyo_sim.brand import Brand, build_brand
from sendflowr.klaviyo_sim.command import klaviyo_sim, run_in_thread
from sendflowr.klaviyo_sim.config import SimServerConfig
from sendflowr.klaviyo_sim.webhooks import sign_webhook

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
