"""No secret and no plaintext email in anything SendFlowr logs, over a full run against the
Klaviyo simulator on loopback: connect by API key and by OAuth, backfill, signed webhooks and a
flow action, decisions by email, an intent scheduled to recipients by email and fired, an
erasure. Every log record of the process is captured (root logger at DEBUG, so httpx, httpcore,
uvicorn, asyncio and SendFlowr's own loggers all emit), with tracebacks, plus whatever reached
the process's stderr; account list/get responses are checked too."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.api import create_app
from sendflowr.connectors.klaviyo.backfill import BackfillRunner, RunnerOptions
from sendflowr.connectors.klaviyo.webhooks import sign
from sendflowr.execution.executor import Executor, ExecutorOptions
from sendflowr.execution.registry import dispatchers
from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.klaviyo_sim.brand import TRIGGER_METRIC
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, ADMIN_KEY, HASH_KEY
from tests.factories import klaviyo_webhook_item

pytestmark = pytest.mark.network

API_KEY = "pk_sim_" + "5ec7e7" * 6
CLIENT_ID = "sim-client-logs"
CLIENT_SECRET = "sim-client-secret-0123456789"
FERNET = generate_key()
WEBHOOK_SECRET = "whsec_logs_0123456789abcdef"
FLOW_SECRET = "flow_logs_0123456789abcdef"
PUBLIC_URL = "http://testserver"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # with the traceback, when there is one


@pytest.fixture
def capture() -> Iterator[_Capture]:
    root = logging.getLogger()
    handler = _Capture()
    levels = {
        name: logging.getLogger(name).level
        for name in (
            "",
            "uvicorn",
            "uvicorn.error",
            "uvicorn.access",
            "httpx",
            "httpcore",
            "sendflowr",
        )
    }
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    base_url, stop = run_in_thread(
        SimServerConfig(
            tenant="simbrand",
            profiles=40,
            days=10,
            api_keys=(API_KEY,),
            oauth_client_id=CLIENT_ID,
            oauth_client_secret=CLIENT_SECRET,
            rate_limits=False,
        )
    )
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture
def rt(settings: Settings, sim_url: str) -> Iterator[Runtime]:
    keyed = settings.model_copy(
        update={
            "secret_key": SecretStr(FERNET),
            "backfill_worker": False,
            "executor": False,
            "public_url": PUBLIC_URL,
            "klaviyo_client_id": CLIENT_ID,
            "klaviyo_client_secret": SecretStr(CLIENT_SECRET),
            "klaviyo_api_url": sim_url,
            "klaviyo_authorize_url": sim_url + "/oauth/authorize",
        }
    )
    runtime = Runtime.open(keyed)
    try:
        yield runtime
    finally:
        runtime.events._command(f"DROP DATABASE IF EXISTS `{runtime.events.database}`")
        runtime.close()


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _webhook_item(n: int, email: str) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    uuid = f"10000000-0000-0000-0000-{n:012d}"
    return klaviyo_webhook_item(f"logs-evt{n}", f"logsprof{n}", {"email": email}, at, uuid=uuid)


def _deliver(api: TestClient, tenant: str, items: list[dict[str, Any]]) -> httpx.Response:
    raw = orjson.dumps({"data": items, "meta": {}})
    ts = str(int(time.time()))
    r: httpx.Response = api.post(
        f"/api/webhook/klaviyo/{tenant}",
        content=raw,
        headers={
            "Klaviyo-Timestamp": ts,
            "Klaviyo-Signature": sign(WEBHOOK_SECRET, raw, ts),
            "Klaviyo-Webhook-Id": "wh-logs",
            "Content-Type": "application/json",
        },
    )
    return r


def _oauth_connect(api: TestClient, tenant: str) -> None:
    r = api.get("/api/connector/oauth/authorize", params={"tenant": tenant}, follow_redirects=False)
    assert r.status_code == 302, r.text
    consent = httpx.get(r.headers["location"], follow_redirects=False, timeout=10)
    assert consent.status_code == 302, consent.text
    back = urlsplit(consent.headers["location"])
    done = api.get(f"{back.path}?{back.query}")
    assert done.status_code == 200, done.text


def test_a_full_run_logs_no_secret_and_no_plaintext_email(
    rt: Runtime, sim_url: str, capture: _Capture, capfd: pytest.CaptureFixture[str]
) -> None:
    emails = [f"Person.{i}+news@Example-Shop.test" for i in range(6)]
    shown: list[str] = []  # response bodies that must not carry secrets either
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as api:
        for tenant in ("acme", "oauthco"):
            _ok(api.post("/api/tenants", json={"id": tenant, "name": tenant}), 201)
        # Connect: an API key (checked at the simulator), then webhook secrets; OAuth too.
        _ok(
            api.put(
                "/api/tenants/acme/accounts/klaviyo", json={"api_key": API_KEY, "api_url": sim_url}
            )
        )
        _ok(
            api.post(
                "/api/tenants/acme/accounts/klaviyo/webhook-secret", json={"secret": WEBHOOK_SECRET}
            ),
            201,
        )
        _ok(
            api.post(
                "/api/tenants/acme/accounts/klaviyo/flow-webhook-secret",
                json={"secret": FLOW_SECRET},
            ),
            201,
        )
        _oauth_connect(api, "oauthco")
        oauth = rt.accounts.credentials("oauthco", "klaviyo")
        for tenant in ("acme", "oauthco"):
            shown.append(api.get(f"/api/tenants/{tenant}/accounts").text)
            shown.append(api.get(f"/api/tenants/{tenant}/accounts/klaviyo").text)

        # Backfill from the simulator (its profiles' addresses travel in every page).
        job = _ok(api.post("/api/connector/backfill/acme?days=30"), 202)
        runner = BackfillRunner(rt, RunnerOptions(concurrency=2, page_size=100))
        claimed = runner.claim(job["job_id"])
        assert claimed is not None
        final = asyncio.run(runner.run(claimed))
        assert final.status == "completed", final.error
        assert final.events > 0

        # Signed webhooks, one with an unusable item (a dead letter), and a flow action.
        _ok(_deliver(api, "acme", [_webhook_item(i, e) for i, e in enumerate(emails)]))
        broken = _webhook_item(99, emails[0])
        broken["payload"]["data"]["attributes"]["datetime"] = "not a time"
        broken["payload"]["data"]["attributes"].pop("timestamp")
        _deliver(api, "acme", [broken])
        _ok(
            api.post(
                "/api/webhook/klaviyo/acme/flow",
                json={
                    "id": "flow-logs-1",
                    "event": "Received Email",
                    "profile": {"email": emails[1], "id": "logsprof1"},
                    "flow_id": "F1",
                },
                headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET},
            )
        )
        _deliver(api, "acme", [_webhook_item(7, emails[2])])  # a replay-free second delivery
        assert (
            api.post(
                "/api/webhook/klaviyo/acme", content=b"{}", headers={"Klaviyo-Signature": "0" * 64}
            ).status_code
            == 401
        )

        # Decisions by email: known people, a stranger, a malformed address.
        for email in (emails[0], "stranger.person@elsewhere.test"):
            _ok(
                api.post(
                    "/timing/decide",
                    json={"tenant": "acme", "identifier": {"type": "email", "value": email}},
                )
            )
        bad = api.post(
            "/timing/decide",
            json={"tenant": "acme", "identifier": {"type": "email", "value": "broken@@x.test"}},
        )
        assert bad.status_code == 422
        shown.append(bad.text)

        # An intent scheduled to recipients by email, fired at the simulator.
        _ok(
            api.post(
                "/api/tenants/acme/intents",
                json={
                    "intent_id": "letter",
                    "name": "Letter",
                    "description": "",
                    "window_seconds": 3600,
                    "latency_seconds": 0,
                    "binding": {"esp": "klaviyo", "metric_name": TRIGGER_METRIC},
                },
            ),
            201,
        )
        now = datetime.now(UTC)
        schedule = _ok(
            api.post(
                "/api/intents/letter/schedule",
                json={
                    "tenant": "acme",
                    "audience": {"recipients": [{"type": "email", "value": e} for e in emails[:4]]},
                    "send_after": now.isoformat(),
                    "send_before": (now + timedelta(minutes=2)).isoformat(),
                },
            ),
            201,
        )
        executor = Executor(rt, dispatchers(rt), options=ExecutorOptions())
        late = datetime.now(UTC) + timedelta(minutes=5)
        executor.clock = lambda: late
        assert asyncio.run(executor.run_once()).sent == 4
        shown.append(
            api.get(f"/api/schedules/{schedule['schedule_id']}", params={"tenant": "acme"}).text
        )

        # Erase one of them.
        person = _ok(
            api.get(
                "/api/identity/resolve",
                params={"tenant": "acme", "type": "email", "value": emails[0]},
            )
        )
        erased = _ok(
            api.delete(f"/api/identity/{person['universal_id']}", params={"tenant": "acme"})
        )
        assert erased["removed"]["events"] >= 1
        assert erased["removed"]["triggers"] == 1
        assert erased["removed"]["dead_letters"] == 1
        shown.append(api.get("/api/tenants/acme/accounts").text)

    err = capfd.readouterr().err
    logged = "\n".join(capture.lines)
    assert len(capture.lines) > 20  # the capture did capture (httpx alone logs every request)
    assert any(line.startswith("INFO httpx") for line in capture.lines)
    secrets = {
        "the Klaviyo API key": API_KEY,
        "the key's random part": API_KEY[7:],
        "the OAuth access token": oauth["access_token"],
        "the OAuth refresh token": oauth["refresh_token"],
        "the OAuth client secret": CLIENT_SECRET,
        "the webhook secret": WEBHOOK_SECRET,
        "the flow secret": FLOW_SECRET,
        "the Fernet key": FERNET,
        "the hash key": HASH_KEY,
    }
    for where, text in (("logs", logged), ("stderr", err), *(("a response", s) for s in shown)):
        for what, value in secrets.items():
            assert value not in text, f"{what} appears in {where}"
        for email in emails:
            assert email.lower() not in text.lower(), f"{email} appears in {where}"
    for where, text in (("logs", logged), ("stderr", err)):
        found = EMAIL_RE.findall(text)
        assert not found, f"plaintext addresses in {where}: {sorted(set(found))[:5]}"


@pytest.mark.slow
def test_the_demo_service_at_debug_logs_no_secret_and_no_email(tmp_path: Path) -> None:
    """`sendflowr run` (the embedded demo: a simulated Klaviyo connected by API key, signed
    webhooks, a backfill) as its own process at log level debug: its stdout and stderr carry
    no secret and no address while it serves a decision by email."""
    hash_key = "hk-demo-logs-0123456789abcdef"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SENDFLOWR_DATA_DIR": str(tmp_path / "var"),
        "SENDFLOWR_LOG_LEVEL": "debug",
        "SENDFLOWR_HASH_KEY": hash_key,
        "SENDFLOWR_DEMO_PROFILES": "30",
        "SENDFLOWR_ADMIN_API_KEY": ADMIN_KEY,
    }
    env.pop("SENDFLOWR_SECRET_KEY", None)
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sendflowr", "run", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=fo,
            stderr=fe,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120  # a start-up bound, not a speed assertion
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, err.read_text()[-2000:]
                assert time.monotonic() < deadline, "the demo did not start"
                time.sleep(0.5)
            tenant = "demo"
            while (
                not httpx.get(
                    f"{base}/api/connector/backfill/status/{tenant}", headers=auth, timeout=5
                )
                .json()
                .get("finished_at")
            ):
                assert time.monotonic() < deadline, "the demo backfill did not finish"
                time.sleep(0.5)
            decided = httpx.post(
                f"{base}/timing/decide",
                headers=auth,
                timeout=10,
                json={
                    "tenant": tenant,
                    "identifier": {"type": "email", "value": "Visitor@Demo-Shop.test"},
                },
            )
            assert decided.status_code == 200, decided.text
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = out.read_text() + err.read_text()
    assert "DEBUG" in text  # it did log at debug
    from sendflowr.secrets import load_secret_box
    from sendflowr.settings import parse_metadata_url
    from sendflowr.storage.metadata.accounts import AccountStore
    from sendflowr.storage.metadata.store import MetadataStore

    fernet = (tmp_path / "var" / "secret.key").read_text().strip()
    meta = MetadataStore(parse_metadata_url(f"sqlite:///{tmp_path / 'var' / 'meta.db'}"))
    try:
        accounts = AccountStore(meta, load_secret_box(fernet, tmp_path / "var"))
        api_key = accounts.credentials(tenant, "klaviyo")["api_key"]
        webhook = accounts.webhook_secret(tenant, "klaviyo")
    finally:
        meta.close()
    for what, value in (
        ("the Fernet key", fernet),
        ("the hash key", hash_key),
        ("the Klaviyo API key", api_key),
        ("the webhook secret", webhook),
        ("the operator API key", ADMIN_KEY),
    ):
        assert value, what
        assert value not in text, f"{what} appears in the demo's output"
    found = EMAIL_RE.findall(text)
    assert not found, f"plaintext addresses in the demo's output: {sorted(set(found))[:5]}"
