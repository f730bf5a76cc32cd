"""Browser tests: Playwright for Python driving Debian's Chromium against a real server.

The `server` fixture runs `sendflowr run` as `make run` does (embedded backends: chDB, SQLite,
the inline bus, the in-process cache; the demo Klaviyo simulator with a small brand) in a
subprocess on a free loopback port, and waits until the demo brand's backfill has finished.
Chromium is the system's (/usr/bin/chromium, `apt-get install chromium`); nothing is downloaded.
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.kafka import free_port

CHROMIUM = os.environ.get("SENDFLOWR_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ADMIN_KEY = "browser-test-operator-key-0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DEMO_TENANT = "demo"
DEMO_PROFILES = 150
DEMO_DAYS = 14
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@dataclass
class Server:
    url: str
    admin_key: str
    tenant: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait(what: str, server: Server, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"sendflowr run exited while waiting for {what}:\n{server.log_tail()}"
            )
        try:
            result = check()  # type: ignore[operator]
            if result is True:
                return
            last = str(result)
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what} ({last}):\n{server.log_tail()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`sendflowr run` with the demo, on a free port; the demo backfill finished."""
    root = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SENDFLOWR_") or k == "SENDFLOWR_TEST_CHROMIUM"
    }
    env.update(
        SENDFLOWR_DATA_DIR=str(root / "var"),
        SENDFLOWR_EVENT_STORE_URL=f"chdb://{root}/events",
        SENDFLOWR_METADATA_URL=f"sqlite:///{root}/meta.db",
        SENDFLOWR_ADMIN_API_KEY=ADMIN_KEY,
        SENDFLOWR_DEMO_PROFILES=str(DEMO_PROFILES),
        SENDFLOWR_DEMO_DAYS=str(DEMO_DAYS),
        SENDFLOWR_LOG_LEVEL="warning",
    )
    log = root / "server.log"
    exe = shutil.which("sendflowr", path=str(Path(sys.executable).parent)) or "sendflowr"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [exe, "run", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    srv = Server(f"http://127.0.0.1:{port}", ADMIN_KEY, DEMO_TENANT, root / "var", log, process)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        _wait(
            "the service to answer /health",
            srv,
            lambda: httpx.get(srv.url + "/health", timeout=5).status_code == 200,
            180,
        )

        def demo_done() -> bool | str:
            r = httpx.get(
                f"{srv.url}/api/connector/backfill/status/{DEMO_TENANT}",
                headers=headers,
                timeout=10,
            )
            if r.status_code != 200:
                return f"{r.status_code} {r.text[:200]}"
            job = r.json()
            if job["status"] == "failed":
                raise RuntimeError(f"the demo backfill failed: {job['error']}")
            return job["status"] == "completed" or f"{job['status']} {job['progress_percent']}%"

        _wait("the demo backfill", srv, demo_done, 600)
        yield srv
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=60,
    ) as client:
        yield client


# Module scope, not session: while Playwright's sync API is open, its event loop counts as
# running in this thread, and every later test's asyncio.run() would fail. Each browser module
# opens and closes its own (Chromium starts in about a second); the server stays up.
@pytest.fixture(scope="module")
def playwright_() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does it)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_: Playwright) -> Iterator[Browser]:
    b = playwright_.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot kept as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


_ALLOWED: dict[int, list[str]] = {}


def allow_console_errors(page: Page, *fragments: str) -> None:
    """Let console errors containing one of `fragments` pass: Chromium logs every 4xx a page
    fetched ("Failed to load resource: ... 422"), including the ones a test provokes on purpose
    to see the page show the API's error."""
    _ALLOWED.setdefault(id(page), []).extend(fragments)


def sign_in(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/login")
    page.get_by_label("API key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/tenants*")


def _page(browser: Browser, server: Server, width: int, height: int) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        sign_in(page, server)
        yield page
    finally:
        context.close()
    allowed = _ALLOWED.pop(id(page), [])
    errors = [e for e in errors if not any(f in e for f in allowed)]
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    yield from _page(browser, server, 1280, 900)


@pytest.fixture
def browser_page_anonymous(browser: Browser) -> Iterator[Page]:
    """A page that has not signed in."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def mobile_page(browser: Browser, server: Server) -> Iterator[Page]:
    yield from _page(browser, server, 390, 844)
