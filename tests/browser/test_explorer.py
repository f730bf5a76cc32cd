"""The decision explorer in a real browser, on the demo brand: look a simulated person up by
email and by universal id, see their identifiers, their local-time heat map and a decision with
its curve and explanation; an unknown person gets a clear message."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from sendflowr.klaviyo_sim.config import SimServerConfig
from tests.browser.conftest import DEMO_PROFILES, Server, allow_console_errors, shot


def _email(i: int) -> str:
    """A simulated person's address (simulate/groundtruth.py names them so)."""
    seed = SimServerConfig(profiles=DEMO_PROFILES).seed
    return f"p{i:06d}.s{seed}n{DEMO_PROFILES}@sim.sendflowr.test"


@pytest.fixture(scope="module")
def someone(api: httpx.Client, server: Server) -> dict[str, Any]:
    """A demo person with human engagement to show: their email, id and engagement grid."""
    for i in range(60):
        r = api.get(
            "/api/identity/resolve",
            params={"tenant": server.tenant, "type": "email", "value": _email(i)},
        )
        if r.status_code != 200:
            continue
        uid = r.json()["universal_id"]
        e = api.get(f"/timing/engagement/{uid}", params={"tenant": server.tenant})
        assert e.status_code == 200, e.text
        if e.json()["totals"]["engagements"] >= 3:
            return {"email": _email(i), "uid": uid, "engagement": e.json()}
    pytest.fail("no simulated person with three human engagements among the first 60")


def _check_person(page: Page, who: dict[str, Any]) -> None:
    expect(page.locator("#person-uid")).to_have_text(who["uid"])
    heat = page.locator("table.heatmap")
    expect(heat).to_be_visible()
    expect(heat.locator("caption")).to_contain_text(who["engagement"]["zone"])
    expect(heat.locator("tbody tr")).to_have_count(7)
    expect(heat.locator("tbody tr").first.locator("th")).to_have_text("Monday")
    # every non-empty cell of the API's grid is shown with its count
    grid = who["engagement"]["grid"]
    filled = [(d, hr, n) for d, row in enumerate(grid) for hr, n in enumerate(row) if n]
    assert filled
    for d, hr, n in filled:
        cell = heat.locator("tbody tr").nth(d).locator("td").nth(hr)
        expect(cell).to_have_attribute("data-value", str(n))
    expect(heat.locator("td[data-value]:not([data-value='0'])")).to_have_count(len(filled))


def _decide_and_check(page: Page) -> None:
    page.get_by_role("button", name="Decide").click()
    box = page.locator("#decision")
    expect(box.get_by_text("Target minute")).to_be_visible()
    expect(box.locator("#curve canvas").first).to_be_visible()
    expect(page.locator("#explanation")).to_contain_text(re.compile(r"Target \d{4}-\d\d-\d\d"))
    expect(box.get_by_text("Fallback level")).to_be_visible()


def test_look_up_by_email_see_heatmap_and_decision(
    page: Page, server: Server, someone: dict[str, Any]
) -> None:
    page.goto(server.url + "/ui/explorer?tenant=demo")
    page.get_by_label("Identifier type").select_option("email")
    page.get_by_label("Identifier", exact=True).fill(someone["email"])
    page.get_by_role("button", name="Look up").click()
    _check_person(page, someone)
    expect(page.get_by_role("cell", name="email", exact=True)).to_be_visible()
    _decide_and_check(page)
    # the page shows the decision the API recorded
    ref_text = page.locator("#decision .hint").first.inner_text()
    decision_id = re.search(r"Decision ([0-9a-f-]{36})", ref_text)
    assert decision_id, ref_text
    shot(page, "explorer-1280")


def test_look_up_by_universal_id_at_phone_width(
    mobile_page: Page, server: Server, someone: dict[str, Any]
) -> None:
    page = mobile_page
    page.goto(server.url + "/ui/explorer?tenant=demo")
    page.get_by_label("Identifier type").select_option("universal_id")
    page.get_by_label("Identifier", exact=True).fill(someone["uid"])
    page.get_by_role("button", name="Look up").click()
    _check_person(page, someone)
    _decide_and_check(page)
    # the page fits the phone's width (wide tables scroll inside their own box)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390 + 1, width
    shot(page, "explorer-390")


def test_zone_picker_and_unknown_person(
    page: Page, server: Server, someone: dict[str, Any]
) -> None:
    allow_console_errors(page, "status of 404", "status of 422")  # provoked below
    page.goto(server.url + f"/ui/explorer?tenant=demo&uid={someone['uid']}")
    expect(page.locator("#person-uid")).to_have_text(someone["uid"])
    page.get_by_label("Time zone").fill("Asia/Tokyo")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.heatmap caption")).to_contain_text("Asia/Tokyo")
    page.get_by_label("Time zone").fill("Mars/Olympus")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#zone-form .field-error")).to_contain_text("unknown IANA time zone")
    expect(page.get_by_label("Time zone")).to_have_attribute("aria-invalid", "true")
    # a window the API refuses: the reason next to the field it names
    page.get_by_label("Send after").fill("2030-01-10T09:00")
    page.get_by_label("Send before").fill("2030-01-01T09:00")
    page.get_by_role("button", name="Decide").click()
    expect(page.locator("#decide-form .field-error")).to_contain_text("after send_after")
    # nobody with that address
    page.get_by_label("Identifier type").select_option("email")
    page.get_by_label("Identifier", exact=True).fill("nobody.here@example.com")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("alert")).to_contain_text("No person with email")
    expect(page.locator("#person")).to_be_hidden()
    shot(page, "explorer-unknown")
