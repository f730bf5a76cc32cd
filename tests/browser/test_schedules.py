"""The campaign schedules page in a real browser on the demo tenant: schedule a small campaign
from an intent (errors of the API shown on the form), watch its triggers reach `sent` through
the executor and the Klaviyo simulator, and cancel another one after confirming."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, allow_console_errors, shot

INTENT = "browser-letter"


def _intent(api: httpx.Client, server: Server) -> None:
    resp = api.post(
        f"/api/tenants/{server.tenant}/intents",
        json={
            "intent_id": INTENT,
            "name": "Browser letter",
            "latency_seconds": 0,
            "binding": {"esp": "klaviyo", "metric_name": "SendFlowr Send"},
        },
    )
    assert resp.status_code in (201, 409), resp.text


def _fits_the_width(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_schedule_a_small_campaign_and_watch_it_dispatch(
    page: Page, server: Server, api: httpx.Client
) -> None:
    _intent(api, server)
    allow_console_errors(page, "status of 422")  # the empty audience below, on purpose
    page.goto(server.url + f"/ui/schedules?tenant={server.tenant}")
    form = page.locator("#new")
    form.get_by_label("Intent").select_option(INTENT)
    form.get_by_label("Window length").select_option("180")  # 3 minutes from now
    form.get_by_role("button", name="Schedule").click()
    audience = form.get_by_label("Email addresses (one a line)")
    expect(audience).to_have_attribute("aria-invalid", "true")
    expect(form.locator(".field-error")).to_contain_text("the audience is empty")

    audience.fill("ana@browser.test\nbo@browser.test\ncy@browser.test")
    form.get_by_role("button", name="Schedule").click()
    notice = page.get_by_role("status").filter(has_text="scheduled")
    expect(notice).to_contain_text("3 trigger(s) for 3 recipient(s)")
    expect(form.locator(".field-error")).to_have_count(0)
    found = re.search(r"Campaign (sch_\w+) scheduled", notice.inner_text())
    assert found, notice.inner_text()
    sid = found.group(1)
    expect(page.locator("#detail-id")).to_have_text(sid)  # the new campaign is shown
    expect(page.get_by_role("heading", name=f"Campaign {sid}")).to_be_visible()
    expect(page.locator("#timeline")).to_have_attribute("aria-label", re.compile("Triggers per"))
    expect(page.locator("#capacity-note")).to_contain_text("ESP capacity booked by the planner")
    shot(page, "schedules-planned")

    # The executor fires the triggers within the 3-minute window; the page polls.
    sent = page.locator("#detail-counts .stat.sent .value")
    expect(sent).to_have_text("3", timeout=300_000)
    expect(page.locator("#detail-counts .stat.failed .value")).to_have_text("0")
    row = (
        page.get_by_role("row")
        .filter(has_text=INTENT)
        .filter(has=page.get_by_role("button", name=f"Show campaign {sid}"))
    )
    expect(row.locator(".badge.sent")).to_have_text("3 sent")
    expect(page.get_by_role("button", name="Cancel the campaign")).to_be_hidden()
    expect(page.locator("#late")).to_contain_text("No trigger is late")
    out = api.get(f"/api/schedules/{sid}", params={"tenant": server.tenant}).json()
    assert out["triggers"] == {"sent": 3}
    assert _fits_the_width(page)
    shot(page, "schedules-sent")


def test_cancel_a_campaign_after_confirming_on_a_phone(
    mobile_page: Page, server: Server, api: httpx.Client
) -> None:
    _intent(api, server)
    start = datetime.now(UTC) + timedelta(hours=2)
    resp = api.post(
        f"/api/intents/{INTENT}/schedule",
        json={
            "tenant": server.tenant,
            "audience": {
                "recipients": [
                    {"type": "email", "value": f"later{i}@browser.test"} for i in range(4)
                ]
            },
            "send_after": start.isoformat(),
            "send_before": (start + timedelta(hours=1)).isoformat(),
        },
    )
    assert resp.status_code == 201, resp.text
    sid = resp.json()["schedule_id"]
    page = mobile_page
    page.goto(server.url + f"/ui/schedules?tenant={server.tenant}&schedule={sid}")
    expect(page.locator("#detail-counts .stat.scheduled .value")).to_have_text("4")
    cancel = page.get_by_role("button", name="Cancel the campaign")
    cancel.click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("4 trigger(s) not yet sent")
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    assert api.get(f"/api/schedules/{sid}", params={"tenant": server.tenant}).json()[
        "triggers"
    ] == {"scheduled": 4}
    cancel.click()
    shot(page, "schedules-confirm-mobile")
    page.get_by_role("alertdialog").get_by_role("button", name="Yes, cancel it").click()
    expect(page.get_by_role("status").filter(has_text="cancelled")).to_contain_text(
        "4 trigger(s) will not be sent"
    )
    expect(page.locator("#detail-counts .stat.cancelled .value")).to_have_text("4")
    assert api.get(f"/api/schedules/{sid}", params={"tenant": server.tenant}).json()[
        "triggers"
    ] == {"cancelled": 4}
    assert _fits_the_width(page)
    shot(page, "schedules-cancelled-mobile")
