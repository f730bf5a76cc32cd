"""The health page in a real browser: a card per backend of GET /health, each ok, the overall
state, refreshed every few seconds; at 1280 and 390 px."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, shot


def _label(port: str) -> str:
    text = port.replace("_", " ").replace("-", " ")
    return text[:1].upper() + text[1:]


def test_every_backend_is_shown_ok_and_refreshed(
    page: Page, mobile_page: Page, server: Server
) -> None:
    report = httpx.get(server.url + "/health", timeout=30).json()
    assert report["status"] == "ok", report
    assert report["backends"]
    for p, name in ((page, "health"), (mobile_page, "health-mobile")):
        p.goto(server.url + "/ui/health")
        expect(p.locator("#overall .badge")).to_have_text("ok")
        expect(p.locator("#overall")).to_contain_text(
            f"every backend is ok ({len(report['backends'])})"
        )
        cards = p.locator("#backends > section")
        expect(cards).to_have_count(len(report["backends"]))
        for b in report["backends"]:
            card = p.get_by_role("region", name=f"{_label(b['port'])}: ok")
            expect(card).to_be_visible()
            expect(card).to_contain_text(b["backend"])
        # it asks again on its own
        with p.expect_request(lambda r: r.url.endswith("/health"), timeout=15_000):
            pass
        assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        shot(p, name)
