"""The `sendflowr` command line (Typer; rich for tables and progress bars)."""

from __future__ import annotations

import enum
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

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

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

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


def _tune_process(settings: Settings) -> None:
    """For a long-running process: freed large blocks go back to the system instead of staying
    in glibc's heap (sendflowr/allocator), and Python's cyclic collector runs less often
    (sendflowr/gcpause)."""
    from sendflowr.allocator import fix_mmap_threshold
    from sendflowr.gcpause import set_gen0_threshold

    fix_mmap_threshold(settings.malloc_mmap_threshold_kib)
    set_gen0_threshold(settings.gc_gen0_threshold)


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
    """Run the API service with every backend from settings (migrations applied first).

    Without SENDFLOWR_ADMIN_API_KEY, an operator API key is generated into DATA_DIR/admin.key
    on the first start and printed once."""
    import uvicorn

    from sendflowr.api import create_app

    settings = _settings()
    _tune_process(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # health checks read the revision
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per outbound request
    bind_host, bind_port = host or settings.host, port or settings.port
    if "public_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"public_url": f"http://{bind_host}:{bind_port}"})
    from sendflowr.api.auth import ensure_admin_key

    try:
        settings, new_admin_key, admin_key_file = ensure_admin_key(settings)
    except OSError as exc:
        _fail(f"cannot keep the operator key under {settings.data_dir}: {exc}")
    if new_admin_key is not None:  # printed once, to the console only (never logged)
        console.print(
            f"Operator API key (admin on every tenant; shown once, kept in {admin_key_file}):\n"
            f"  {new_admin_key}\n"
            f"Send it as 'Authorization: Bearer <key>'.",
            highlight=False,
            soft_wrap=True,
        )
    elif admin_key_file is not None:
        console.print(f"Operator API key: in {admin_key_file}", highlight=False)
    simulator = None
    if demo and settings.demo_profiles > 0:
        from sendflowr.demo_klaviyo import start_demo_simulator, with_demo_oauth

        simulator = start_demo_simulator(settings)
        settings = with_demo_oauth(settings, simulator)
    # The embedded demo may generate its own development encryption key under data_dir.
    try:
        from sendflowr.runtime import Runtime

        rt = Runtime.open(settings, create_secret_key=demo)
    except (NotImplementedError, RuntimeError, OSError) as exc:
        if simulator is not None:
            simulator.stop()
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    stop_sim = simulator.stop if simulator is not None else None
    try:
        if simulator is not None:
            from sendflowr.demo_klaviyo import start_demo_klaviyo

            sim = start_demo_klaviyo(rt, simulator=simulator)
            console.print(f"Klaviyo simulator for tenant '{sim.tenant}' on {sim.url}")
            if sim.backfill_job is not None:
                console.print(
                    f"backfill {sim.backfill_job} queued: follow it at "
                    f"/api/connector/backfill/status/{sim.tenant}"
                )
        if settings.feature_cache_warmup and rt.features.in_process:
            _warm_in_background(rt)
        from sendflowr.gcpause import freeze_startup_objects

        freeze_startup_objects()
        console.print(
            f"SendFlowr on http://{bind_host}:{bind_port}  (dashboard: /ui/, API docs: /docs, "
            "health: /health)"
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


def _warm_in_background(rt: Runtime) -> None:
    """Warm the in-process feature cache while the server starts serving (Runtime.warm_features);
    a failure only means first decisions read the store, as without it."""
    import threading

    def warm() -> None:
        try:
            rt.warm_features()
        except Exception:
            logging.getLogger("sendflowr.features").exception("feature cache warm-up failed")

    threading.Thread(target=warm, name="feature-warmup", daemon=True).start()


@app.command()
def migrate(
    status: Annotated[bool, typer.Option("--status", help="Only show what has run.")] = False,
) -> None:
    """Apply the event-store and metadata migrations (idempotent) and the explanation
    retention (SENDFLOWR_EXPLANATION_RETENTION_DAYS)."""
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
        if not status:
            events.set_explanation_retention(settings.explanation_retention_days)
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
        kept = events.explanation_retention()
        console.print(
            f"decision explanations are kept {kept} days" if kept else
            "decision explanations are kept for ever"
        )  # fmt: skip
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
        Path | None,
        typer.Option(help="Activity log: a KONECT out.* file (or its folder), or a CSV."),
    ] = None,
    format: Annotated[
        EventFormat, typer.Option("--format", help="konect, or csv with user_id,unix_ts[,tz]")
    ] = EventFormat.konect,
    tz: Annotated[
        str | None,
        typer.Option(help="IANA zone of everyone (csv: omit to use its per-user tz column)."),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Seeds the random baseline, bootstrap and simulation.")
    ] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    simulated: Annotated[
        bool,
        typer.Option(
            "--simulated", help="Oracle share in the ground-truth simulator (section 2) instead."
        ),
    ] = False,
    profiles: Annotated[int, typer.Option(min=20, help="--simulated: audience size.")] = 2_000,
    days: Annotated[int, typer.Option(min=7, help="--simulated: days of history.")] = 90,
    windows: Annotated[
        int, typer.Option(min=1, max=28, help="--simulated: decision days after the history.")
    ] = 7,
) -> None:
    """EWH@60 replay (../shared/EVALUATION.md section 1): SendFlowr's timing engine against the
    random, global_hour and user_hour baselines, with the calibration of its confidence; or,
    with --simulated, the oracle share of section 2."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from sendflowr.evaluate import baselines, run_evaluation
    from sendflowr.evaluate.data import load_events
    from sendflowr.evaluate.sendflowr_policy import sendflowr_policy

    if simulated:
        if events is not None:
            _fail("--events: not used with --simulated (the simulator makes the history)")
        _evaluate_simulated(seed, profiles, days, windows, out)
        return
    if events is None:
        _fail("--events: required (or --simulated)")
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


def _evaluate_simulated(
    seed: int, profiles: int, days: int, windows: int, out: Path | None
) -> None:
    from sendflowr.evaluate.simulated import SimulatedSetup, run_simulated, shares_table

    with console.status("simulating and deciding..."):
        report = run_simulated(SimulatedSetup(seed, profiles, days, windows))
    table = Table(
        title=f"Oracle share, {profiles:,} profiles, {days} days of history, "
        f"{windows} window(s) (seed {seed})"
    )
    table.add_column("policy")
    for run in report["runs"]:
        table.add_column(run, justify="right")
    for name, shares in shares_table(report):
        table.add_row(name, *(f"{x:.3f}" for x in shares))
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
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
    years: Annotated[
        int | None, typer.Option(min=1, max=10, help="Calendar years of history (not with --days).")
    ] = None,
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
    if days is not None and years is not None:
        _fail("--days, --years: give one of them, not both")
    if incremental and (days is not None or years is not None):
        _fail("--incremental: it continues from the last completed backfill; drop --days/--years")
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
                            now,
                            days_back=90 if days is None and years is None else days,
                            years_back=years,
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


@app.command()
def replay(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    since: Annotated[
        str | None, typer.Option(help="First UTC day received (YYYY-MM-DD), inclusive.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Last UTC day received (YYYY-MM-DD), inclusive.")
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(help="Archive URL or directory (default: SENDFLOWR_RAW_ARCHIVE_URL)."),
    ] = None,
) -> None:
    """Rebuild the event store from the raw archive: every archived payload goes through the
    normalisers, identity and the store again. Idempotent: replaying twice stores nothing
    twice."""
    from datetime import date

    from sendflowr.archive.replay import replay as run_replay
    from sendflowr.archive.store import RawArchive, archive_url

    def day(name: str, value: str | None) -> date | None:
        try:
            return date.fromisoformat(value) if value is not None else None
        except ValueError:
            _fail(f"--{name}: {value!r} is not a date (YYYY-MM-DD)")

    first, last = day("since", since), day("until", until)
    if first is not None and last is not None and first > last:
        _fail("--since is after --until")
    settings = _settings()
    url = archive or archive_url(settings.raw_archive_url, Path(settings.data_dir))
    if url is None:
        _fail("SENDFLOWR_RAW_ARCHIVE_URL (raw_archive_url): the raw archive is switched off")
    source = RawArchive(url)
    rt = _runtime(settings)
    try:
        with _progress() as progress:
            bar = progress.add_task("replaying files", total=None)

            def show(done: int, total: int, rows: int) -> None:
                progress.update(
                    bar, total=total, completed=done, description=f"replaying: {rows:,} rows"
                )

            result = run_replay(rt, source, tenant=tenant, since=first, until=last, progress=show)
    finally:
        rt.close()
    console.print(
        f"{result.files:,} files, {result.rows:,} rows: {result.stored:,} events stored, "
        f"{result.rejected:,} rejected",
        highlight=False,
    )
    for reason in result.errors:
        err_console.print(f"  rejected {reason}", highlight=False, soft_wrap=True)
    if result.rejected:
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
    _tune_process(settings)
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
def consumer(
    batch: Annotated[
        int | None,
        typer.Option(min=1, max=1_000_000, help="Most messages a batch (default: settings)."),
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            "--idle-exit",
            min=0.1,
            help="Exit once no message arrived for this many seconds (drain and stop).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve Prometheus /metrics (incl. lag) here."),
    ] = None,
) -> None:
    """Run the pipeline over the Kafka events topic in a consumer group until SIGINT/SIGTERM:
    poll a batch, store it, then commit its offsets. Run as many as there are partitions;
    exit status 1 when a store write kept failing (nothing of that batch is committed)."""
    import dataclasses
    import signal
    import threading

    from sendflowr.consumer import ConsumerStoppedError, open_consumer

    settings = _settings()
    _tune_process(settings)
    if settings.bus.kind != "kafka":
        _fail("SENDFLOWR_BUS_URL (bus_url): the consumer needs kafka://host:port")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = _runtime(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        worker = open_consumer(runtime.pipeline, runtime.bus)
        if metrics_port is not None:
            from sendflowr.metrics import start_metrics_server

            start_metrics_server(runtime, metrics_port, settings.host)
        if batch is not None:
            worker.options = dataclasses.replace(worker.options, batch_size=batch)
        console.print(
            f"consumer of {worker.topic} in group {worker.options.group}", highlight=False
        )
        from sendflowr.gcpause import freeze_startup_objects

        freeze_startup_objects()
        tally = worker.run(stop, idle_exit_s=idle_exit)
    except ConsumerStoppedError as exc:
        err_console.print(f"[bold red]stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        runtime.close()
    console.print(
        f"batches {tally.batches}, messages {tally.messages}, stored {tally.stored}, "
        f"dead-lettered {tally.dead_lettered}",
        highlight=False,
    )


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


keys_app = typer.Typer(
    help="API keys: per-tenant keys (read, write, admin) and operator keys (--all-tenants).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _key_store(settings: Settings):  # type: ignore[no-untyped-def]  # imported lazily
    from sendflowr.runtime import load_hash_key
    from sendflowr.storage.metadata import open_metadata_store
    from sendflowr.storage.metadata.keys import KeyStore

    try:
        meta = open_metadata_store(settings.metadata)
        meta.migrate()
        return KeyStore(meta, load_hash_key(settings))
    except (RuntimeError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


class KeyScope(enum.StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


@keys_app.command("create")
def keys_create(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="The tenant the key acts on.")
    ] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants", help="An operator key, valid on every tenant.")
    ] = False,
    scope: Annotated[
        KeyScope, typer.Option(help="read, write or admin (each includes the one before).")
    ] = KeyScope.read,
    name: Annotated[str, typer.Option(help="What the key is for.")] = "cli",
) -> None:
    """Create a key and print it once (only a keyed hash of it is stored)."""
    from sendflowr.errors import SendFlowrError

    if (tenant is None) == (not all_tenants):
        _fail("give either --tenant T or --all-tenants")
    store = _key_store(_settings())
    try:
        made = store.create(tenant, name, scope.value)
    except SendFlowrError as exc:
        _fail(exc.message)
    finally:
        store.metadata.close()
    who = f"tenant {tenant}" if tenant else "every tenant (operator)"
    err_console.print(f"key {made.key.id}: {made.key.scope} on {who}; shown once:")
    console.print(made.plaintext, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants", help="Only the operator keys.")
    ] = False,
) -> None:
    """List keys with their tenant, scope and last use (never the keys themselves)."""
    store = _key_store(_settings())
    try:
        keys = store.list(tenant, operators=all_tenants)
    finally:
        store.metadata.close()
    table = Table(title="API keys")
    for col in ("id", "tenant", "scope", "name", "created", "last used", "revoked"):
        table.add_column(col, no_wrap=col in ("id", "tenant", "scope"))
    for k in keys:
        table.add_row(
            k.id,
            k.tenant or "(all tenants)",
            k.scope,
            k.name,
            k.created_at.isoformat(timespec="seconds"),
            k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "",
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (or the whole sfk_<id>_... key).")],
) -> None:
    """Revoke a key at once (it stays listed as revoked)."""
    from sendflowr.errors import SendFlowrError

    if key_id.startswith("sfk_"):
        key_id = key_id.removeprefix("sfk_").split("_", 1)[0]

    store = _key_store(_settings())
    try:
        key = store.revoke(key_id, None, any_tenant=True)
    except SendFlowrError as exc:
        _fail(exc.message)
    finally:
        store.metadata.close()
    console.print(f"revoked {key.id} ({key.tenant or 'operator'}, {key.scope})", highlight=False)


features_app = typer.Typer(help="The per-person timing feature cache.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("rebuild")
def features_rebuild(
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", help="Tenant to rebuild (repeatable; default: all)."),
    ] = None,
) -> None:
    """Rebuild tenants' timing features from the event store: one columnar query per tenant,
    folded in the tenant's time zone, written to the feature cache."""
    from zoneinfo import ZoneInfo

    from sendflowr.storage.features.rebuild import rebuild_tenant

    settings = _settings()
    rt = _runtime(settings)
    try:
        if tenant:
            known = {t.id: t for t in rt.metadata.list_tenants()}
            missing = [t for t in tenant if t not in known]
            if missing:
                _fail(f"--tenant: no tenant {', '.join(map(repr, missing))}")
            targets = [known[t] for t in dict.fromkeys(tenant)]
        else:
            targets = rt.metadata.list_tenants()
        table = Table(title=f"feature rebuild ({rt.features.backend} cache)")
        for col in ("tenant", "zone", "events", "profiles", "query s", "fold s", "write s"):
            table.add_column(col)
        for t in targets:
            r = rebuild_tenant(rt.events, rt.features, rt.identity, t.id, ZoneInfo(t.timezone))
            table.add_row(
                t.id,
                t.timezone,
                f"{r.events:,}",
                f"{r.profiles:,}",
                f"{r.read_s:.2f}",
                f"{r.fold_s:.2f}",
                f"{r.write_s:.2f}",
            )
        console.print(table)
        if rt.features.backend == "memory":
            console.print(
                "The memory cache lives in one process: this rebuilt and checked the features "
                "here; a running server warms its own cache at start-up "
                "(SENDFLOWR_FEATURE_CACHE_WARMUP) and fills it as it decides.",
                highlight=False,
            )
    finally:
        rt.close()


def main() -> None:
    app()
