"""`sendflowr klaviyo-sim` (the command function) and `run_in_thread` for tests and demos."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

# The server's modules (the brand, the app, uvicorn) are imported when a function runs, not
# when the CLI registers this command: every `sendflowr` command imports this module.
if TYPE_CHECKING:
    import httpx

    from sendflowr.klaviyo_sim.brand import Brand
    from sendflowr.klaviyo_sim.config import SimServerConfig


def klaviyo_sim(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    profiles: Annotated[int, typer.Option(help="Simulated profiles in the brand.")] = 2000,
    days: Annotated[int, typer.Option(help="Days of history; it ends before now.")] = 60,
    seed: Annotated[int, typer.Option(help="Simulator seed (same seed, same brand).")] = 42,
    tenant: Annotated[str, typer.Option(help="The brand's slug (account name).")] = "demo",
    start: Annotated[
        datetime | None,
        typer.Option(help="First day of history (UTC); default: a Monday so it ends before now."),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="Private API key to accept (repeatable); default: a new pk_sim_... key."),
    ] = None,
    client_id: Annotated[str, typer.Option(help="OAuth client id.")] = "sim-client",
    client_secret: Annotated[str, typer.Option(help="OAuth client secret.")] = "sim-client-secret",  # noqa: S107 - the simulator's public default
    access_token_lifetime: Annotated[
        int, typer.Option(help="OAuth access token lifetime in seconds.")
    ] = 3600,
    deny_consent: Annotated[
        bool, typer.Option(help="Every OAuth authorize redirects with error=access_denied.")
    ] = False,
    no_rate_limits: Annotated[
        bool, typer.Option("--no-rate-limits", help="Never answer 429 (limits still reported).")
    ] = False,
    rate_limit_scale: Annotated[
        float, typer.Option(help="Multiply Klaviyo's published rate limits by this factor.")
    ] = 1.0,
    live_per_minute: Annotated[
        float, typer.Option(help="Live events generated per minute and sent to webhooks.")
    ] = 0.0,
    base_url: Annotated[
        str | None, typer.Option(help="Public base URL for links (default: from each request).")
    ] = None,
) -> None:
    """A local HTTP server that behaves like Klaviyo's API, serving a simulated brand."""
    import uvicorn

    from sendflowr.klaviyo_sim.app import create_sim_app
    from sendflowr.klaviyo_sim.config import SimServerConfig, new_api_key
    from sendflowr.klaviyo_sim.faults import quiet_truncations

    config = SimServerConfig(
        tenant=tenant,
        profiles=profiles,
        days=days,
        seed=seed,
        start=None if start is None else start.replace(tzinfo=start.tzinfo or UTC),
        api_keys=tuple(api_key) if api_key else (new_api_key(),),
        oauth_client_id=client_id,
        oauth_client_secret=client_secret,
        access_token_lifetime_seconds=access_token_lifetime,
        deny_consent=deny_consent,
        rate_limits=not no_rate_limits,
        rate_limit_scale=rate_limit_scale,
        live_events_per_minute=live_per_minute,
        base_url=base_url,
    )
    typer.echo(f"Building the simulated brand {tenant!r} ({profiles} profiles, {days} days)...")
    began = time.perf_counter()
    app = create_sim_app(config)
    summary = app.state.brand.summary()
    shown = base_url or f"http://{host}:{port}"
    typer.echo(
        f"{summary['events']} events, {summary['profiles']} profiles, "
        f"{summary['first_datetime']} to {summary['last_datetime']} "
        f"(built in {time.perf_counter() - began:.1f} s)"
    )
    typer.echo(f"Klaviyo API:  {shown}/api/  (revision header required)")
    for key in config.api_keys:
        typer.echo(f"API key:      Authorization: Klaviyo-API-Key {key}")
    typer.echo(f"OAuth:        {shown}/oauth/authorize, client {client_id} / {client_secret}")
    typer.echo(f"Controls:     {shown}/_sim/brand, /_sim/stats, /_sim/faults, /_sim/live")
    quiet_truncations()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def run_in_thread(
    config: SimServerConfig,
    *,
    brand: Brand | None = None,
    clock: Callable[[], float] = time.time,
    webhook_transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve the sim with uvicorn on a free 127.0.0.1 port in a background thread.

    Returns (base URL, stop); the keyword arguments are `create_sim_app`'s."""
    import uvicorn

    from sendflowr.klaviyo_sim.app import create_sim_app
    from sendflowr.klaviyo_sim.faults import quiet_truncations

    app = create_sim_app(config, brand=brand, clock=clock, webhook_transport=webhook_transport)
    quiet_truncations()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Klaviyo simulator did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


__all__ = ["klaviyo_sim", "run_in_thread"]
