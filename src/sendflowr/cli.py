"""The `sendflowr` command line (Typer; rich for tables and progress bars)."""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sendflowr import __version__
from sendflowr.events import json_schema
from sendflowr.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="sendflowr",
    help="SendFlowr: send-time intelligence for email service providers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    # soft_wrap: a setting error stays one line per problem whatever the terminal width.
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(str(exc))


def _runtime(settings: Settings):  # type: ignore[no-untyped-def]  # imported lazily: start-up cost
    from sendflowr.runtime import Runtime

    try:
        return Runtime.open(settings)
    except (NotImplementedError, RuntimeError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"sendflowr {__version__}")
        raise typer.Exit()


@app.command()
def run(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings.port, 8001).")] = None,
    demo: Annotated[
        bool,
        typer.Option(
            help="Start the demo: a local Klaviyo simulator with a simulated brand, connected "
            "by API key, live events by signed webhook, and a backfill while it has no data."
        ),
    ] = True,
) -> None:
    """Run the API service with every backend from settings (migrations applied first)."""
    import uvicorn

    from sendflowr.api import create_app

    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # health checks read the revision
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per outbound request
    bind_host, bind_port = host or settings.host, port or settings.port
    if "public_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"public_url": f"http://{bind_host}:{bind_port}"})
    # The embedded demo may generate its own development encryption key under data_dir.
    try:
        from sendflowr.runtime import Runtime

        rt = Runtime.open(settings, create_secret_key=demo)
    except (NotImplementedError, RuntimeError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    stop_sim = None
    try:
        if demo and settings.demo_profiles > 0:
            from sendflowr.demo_klaviyo import start_demo_klaviyo

            sim = start_demo_klaviyo(rt)
            stop_sim = sim.stop
            console.print(f"Klaviyo simulator for tenant '{sim.tenant}' on {sim.url}")
            if sim.backfill_job is not None:
                console.print(
                    f"backfill {sim.backfill_job} queued: follow it at "
                    f"/api/connector/backfill/status/{sim.tenant}"
                )
        console.print(
            f"SendFlowr on http://{bind_host}:{bind_port}  (API docs: /docs, health: /health)"
        )
        uvicorn.run(
            create_app(settings, runtime=rt),
            host=bind_host,
            port=bind_port,
            log_level=settings.log_level,
        )
    finally:
        if stop_sim is not None:
            stop_sim()
        rt.close()


@app.command()
def migrate(
    status: Annotated[bool, typer.Option("--status", help="Only show what has run.")] = False,
) -> None:
    """Apply the event-store and metadata migrations (idempotent)."""
    from sendflowr.storage.events import open_event_store
    from sendflowr.storage.metadata import open_metadata_store

    settings = _settings()
    try:
        events = open_event_store(settings.event_store)
    except (NotImplementedError, RuntimeError) as exc:
        _fail(str(exc))
    metadata = open_metadata_store(settings.metadata)
    try:
        applied_events = [] if status else events.migrate()
        applied_meta = [] if status else metadata.migrate()
        table = Table(title="migrations")
        table.add_column("store")
        table.add_column("migration")
        table.add_column("applied at")
        for m in events.applied_migrations():
            mark = " (now)" if m.id in applied_events else ""
            table.add_row(f"events ({events.backend})", m.id + mark, m.applied_at.isoformat())
        for pending in events.pending_migrations():
            table.add_row(f"events ({events.backend})", pending, "pending")
        rev = metadata.current_revision()
        table.add_row(
            f"metadata ({metadata.backend})",
            f"{rev or '-'}{' (now)' if applied_meta else ''}",
            "head" if rev == metadata.head_revision() else "pending",
        )
        console.print(table)
    except Exception as exc:
        _fail(f"migration failed: {str(exc).splitlines()[0]}", code=1)
    finally:
        events.close()
        metadata.close()


@app.command()
def simulate(
    profiles: Annotated[int, typer.Option(min=1, max=2_000_000, help="Simulated people.")] = 5000,
    days: Annotated[int, typer.Option(min=1, max=730, help="Days of history.")] = 90,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same events).")] = 42,
    tenant: Annotated[str, typer.Option(help="Tenant id written on every event.")] = "demo",
    machine_open_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of Apple Mail Privacy Protection users.")
    ] = 0.45,
    out: Annotated[
        Path | None, typer.Option(help="Write events.jsonl and truth.json to this directory.")
    ] = None,
    load: Annotated[bool, typer.Option(help="Push the events through the pipeline.")] = False,
) -> None:
    """Run the ground-truth simulator: personas, a biased brand schedule, machine opens."""
    import dataclasses

    from sendflowr.simulate import SimConfig
    from sendflowr.simulate import simulate as run_simulation

    settings = _settings()
    if not 0 < len(tenant) <= 63 or not tenant.replace("-", "").replace("_", "").isalnum():
        _fail(f"--tenant: {tenant!r} must be 1-63 characters of a-z, 0-9, '_' and '-'")
    rt = _runtime(settings) if load else None
    try:
        from sendflowr.runtime import load_hash_key

        cfg = dataclasses.replace(
            SimConfig(),
            tenant=tenant,
            profiles=profiles,
            days=days,
            seed=seed,
            machine_open_share=machine_open_share,
            hash_key=load_hash_key(settings),
        )
        if load:
            from datetime import UTC, datetime

            from sendflowr.demo import recent_start

            cfg = dataclasses.replace(cfg, start=recent_start(datetime.now(UTC), days))
        with console.status("simulating..."):
            sim = run_simulation(cfg)
        by_type = Counter(e.event_type.value for e in sim.events)
        machine = sum(1 for e in sim.events if e.is_machine_open)
        table = Table(title=f"{len(sim.events):,} events, {len(sim.profiles):,} profiles")
        table.add_column("event type")
        table.add_column("count", justify="right")
        for name, n in sorted(by_type.items()):
            table.add_row(name, f"{n:,}")
        table.add_row("(machine opens)", f"{machine:,}")
        console.print(table)
        if out is not None:
            from sendflowr.simulate.output import write_simulation

            write_simulation(sim, out)
            console.print(f"wrote {out}/events.jsonl and {out}/truth.json")
        if rt is not None:
            from sendflowr.demo import ingest
            from sendflowr.storage.metadata.store import Tenant

            rt.metadata.ensure_tenant(Tenant(tenant, f"Simulated brand {tenant}", cfg.brand_tz))
            with _progress() as progress:
                task = progress.add_task("ingesting", total=len(sim.events))
                result = ingest(
                    rt, sim.events, "simulate", lambda d, t: progress.update(task, completed=d)
                )
            console.print(f"stored {result.stored:,} events, rejected {len(result.rejected):,}")
    finally:
        if rt is not None:
            rt.close()


class EventFormat(enum.StrEnum):
    konect = "konect"
    csv = "csv"


@app.command()
def evaluate(
    events: Annotated[
        Path, typer.Option(help="Activity log: a KONECT out.* file (or its folder), or a CSV.")
    ],
    format: Annotated[
        EventFormat, typer.Option("--format", help="konect, or csv with user_id,unix_ts[,tz]")
    ] = EventFormat.konect,
    tz: Annotated[
        str | None,
        typer.Option(help="IANA zone of everyone (csv: omit to use its per-user tz column)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the random baseline and bootstrap.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """EWH@60 replay (../shared/EVALUATION.md section 1): SendFlowr's timing engine against the
    random, global_hour and user_hour baselines, with the calibration of its confidence."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from sendflowr.evaluate import baselines, run_evaluation
    from sendflowr.evaluate.data import load_events
    from sendflowr.evaluate.sendflowr_policy import sendflowr_policy

    if not events.exists():
        _fail(f"--events: no such file or folder {str(events)!r}")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            _fail(f"--tz: unknown IANA time zone {tz!r}")
    try:
        loaded = load_events(events, format.value)
    except (ValueError, OSError) as exc:
        _fail(f"--events: {exc}")
    zones: str | tuple[str, ...]
    if tz is not None:
        zones = tz
    elif loaded.zones is not None:
        zones = loaded.zones
    else:
        _fail("--tz: required (the file has no per-user tz column)")
    with console.status("replaying..."):
        policies = {**baselines(), "sendflowr": sendflowr_policy()}
        report = run_evaluation(loaded, zones, policies, seed=seed)
    table = Table(title=f"EWH@60 over {report['windows']:,} windows (seed {seed})")
    for col in ("policy", "EWH@60", "95% CI", "successes", "Brier"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for name, r in report["policies"].items():
        calibration = r.get("calibration")
        table.add_row(
            name,
            f"{r['ewh']:.3f}",
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            f"{r['successes']:,}",
            f"{calibration['brier']:.3f}" if calibration else "-",
        )
    console.print(table)
    text = json.dumps(report, indent=2) + "\n"
    if out is not None:
        out.write_text(text)
        console.print(f"wrote {out}")


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the canonical event JSON Schema."""
    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


@app.command()
def backfill(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Tenant to backfill (repeatable).")
    ] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all", help="Every tenant with a connected Klaviyo account.")
    ] = False,
    days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Days of history (default 90).")
    ] = None,
    years: Annotated[int | None, typer.Option(min=1, max=10, help="Years of history.")] = None,
    incremental: Annotated[
        bool, typer.Option(help="Only what is new since the last completed backfill.")
    ] = False,
) -> None:
    """Backfill Klaviyo history with a progress bar; resumes an interrupted job where it
    stopped (also one left by a killed process)."""
    import asyncio
    from datetime import UTC, datetime

    from sendflowr.connectors.klaviyo.backfill import (
        BackfillRunner,
        incremental_range,
        plan_range,
    )
    from sendflowr.connectors.klaviyo.constants import ESP
    from sendflowr.errors import SendFlowrError
    from sendflowr.storage.metadata.backfill import Job

    if not tenant and not all_tenants:
        _fail("name a tenant with --tenant, or use --all")
    settings = _settings()
    rt = _runtime(settings)
    try:
        targets = list(tenant or [])
        if all_tenants:
            targets += [
                a.tenant for a in rt.accounts.list() if a.esp == ESP and a.status == "connected"
            ]
        if not targets:
            _fail("no tenant has a connected Klaviyo account")
        failed = False
        for name in dict.fromkeys(targets):
            try:
                rt.metadata.get_tenant(name)
                rt.accounts.get(name, ESP)
                latest = rt.backfills.latest_job(name, ESP)
                if latest is not None and latest.status in ("queued", "in_progress"):
                    job = latest
                    console.print(f"{name}: resuming job {job.id}")
                else:
                    now = datetime.now(UTC)
                    if incremental:
                        start, end = incremental_range(rt, name, now)
                    else:
                        start, end = plan_range(
                            now, days_back=days or (None if years else 90), years_back=years
                        )
                    job = rt.backfills.create_job(
                        name, ESP, "incremental" if incremental else "backfill", start, end
                    )
            except (SendFlowrError, LookupError) as exc:
                err_console.print(f"[red]{name}:[/] {exc}", highlight=False)
                failed = True
                continue
            with _progress() as progress:
                bar = progress.add_task(f"{name}: planning", total=None)

                def show(j: Job, bar: TaskID = bar, name: str = name) -> None:
                    progress.update(
                        bar,
                        total=j.total_units or None,
                        completed=j.done_units + j.failed_units,
                        description=f"{name}: {j.events:,} events",
                    )

                runner = BackfillRunner(rt, on_progress=show)
                claimed = runner.claim(job.id)
                if claimed is None:
                    err_console.print(f"{name}: job {job.id} is running in another live process")
                    failed = True
                    continue
                final = asyncio.run(runner.run(claimed))
            colour = "green" if final.status == "completed" else "red"
            console.print(
                f"{name}: [{colour}]{final.status}[/] - {final.events:,} events, "
                f"{final.done_units}/{final.total_units} units"
                + (f" - {final.error}" if final.error else ""),
                highlight=False,
            )
            failed = failed or final.status != "completed"
    finally:
        rt.close()
    if failed:
        raise typer.Exit(1)


def _klaviyo_sim_command() -> None:
    from sendflowr.klaviyo_sim.command import klaviyo_sim

    app.command("klaviyo-sim")(klaviyo_sim)


_klaviyo_sim_command()

webhooks_app = typer.Typer(help="Klaviyo webhook subscriptions.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("register")
def webhooks_register(
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", "-t", help="Tenant (repeatable).")
    ] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all", help="Every tenant with a connected Klaviyo account.")
    ] = False,
) -> None:
    """Subscribe SendFlowr's webhook receiver to each tenant's Klaviyo engagement events
    (settings.public_url must be reachable from Klaviyo)."""
    import asyncio

    from sendflowr.connectors.klaviyo.client import KlaviyoError
    from sendflowr.connectors.klaviyo.constants import ESP
    from sendflowr.connectors.klaviyo.factory import open_client
    from sendflowr.connectors.klaviyo.registration import register_webhook
    from sendflowr.errors import SendFlowrError

    if not tenant and not all_tenants:
        _fail("name a tenant with --tenant, or use --all")
    settings = _settings()
    rt = _runtime(settings)
    failed = False
    try:
        targets = list(tenant or [])
        if all_tenants:
            targets += [
                a.tenant for a in rt.accounts.list() if a.esp == ESP and a.status == "connected"
            ]
        for name in dict.fromkeys(targets):

            async def one(name: str = name) -> str:
                async with open_client(rt, name) as client:
                    reg = await register_webhook(rt, name, client)
                verb = "created" if reg.created else "already registered"
                return f"{name}: webhook {reg.webhook_id} {verb} -> {reg.endpoint_url}"

            try:
                console.print(asyncio.run(one()), highlight=False)
            except (SendFlowrError, KlaviyoError, LookupError, ValueError) as exc:
                err_console.print(f"[red]{name}:[/] {exc}", highlight=False)
                failed = True
    finally:
        rt.close()
    if failed:
        raise typer.Exit(1)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Fire what is due now, then exit.")] = False,
    poll: Annotated[
        float | None,
        typer.Option(min=0.05, max=60, help="Seconds between looks for due triggers."),
    ] = None,
    claim: Annotated[
        int, typer.Option(min=1, max=100_000, help="Triggers claimed per pass.")
    ] = 5_000,
    lease: Annotated[
        float,
        typer.Option(
            "--lease-seconds",
            min=1,
            max=3600,
            help="How long a claim lasts; a dead worker's claims are taken over after it.",
        ),
    ] = 120.0,
) -> None:
    """Fire due intent triggers at their bound ESPs until interrupted (SIGINT/SIGTERM). Run as
    many as you like: they never fire the same trigger twice, and one killed mid-send is
    picked up by the others when its lease runs out."""
    import asyncio
    import signal
    from datetime import timedelta

    from sendflowr.execution.executor import Executor, ExecutorOptions
    from sendflowr.execution.registry import dispatchers

    settings = _settings()
    runtime = _runtime(settings)
    options = ExecutorOptions(
        claim_limit=claim,
        poll_seconds=poll or settings.executor_poll_seconds,
        lease=timedelta(seconds=lease),
    )

    async def main() -> None:
        executor = Executor(runtime, dispatchers(runtime), options=options)
        console.print(f"worker {executor.worker}: firing due triggers", highlight=False)
        try:
            if once:
                tally = await executor.run_once()
            else:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                tally = await executor.run(stop)
        finally:
            await executor.aclose()
        console.print(
            f"claimed {tally.claimed}, sent {tally.sent}, to retry {tally.retried}, "
            f"failed {tally.failed}",
            highlight=False,
        )

    try:
        asyncio.run(main())
    finally:
        runtime.close()


@app.command()
def health() -> None:
    """Open every backend from settings and report its state (exit 1 if any is down)."""
    settings = _settings()
    rt = _runtime(settings)
    try:
        states = rt.health()
    finally:
        rt.close()
    table = Table(title="backends")
    for col in ("port", "backend", "state", "detail"):
        table.add_column(col)
    for h in states:
        colour = {"ok": "green", "degraded": "yellow", "down": "red"}[h.state]
        table.add_row(h.port, h.backend, f"[{colour}]{h.state}[/]", h.detail)
    console.print(table)
    if any(h.state == "down" for h in states):
        raise typer.Exit(1)


def main() -> None:
    app()
