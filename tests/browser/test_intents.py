"""The intents page on the demo tenant: the API's errors on the fields they name, create, bind
to a Klaviyo metric and campaign from the catalogue, history, delete with confirmation."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, allow_console_errors, shot

INTENT = "browser-welcome"
TRIGGER = "SendFlowr Send"  # the demo account's flow-trigger metric
# Elements reaching past the viewport's right edge, outside a scrolling table box.
WIDER_THAN_THE_SCREEN = """() => [...document.querySelectorAll('body *')]
    .filter((e) => !e.closest('.table-wrap') && e.getClientRects().length
        && e.getBoundingClientRect().right > window.innerWidth + 1)
    .map((e) => `${e.tagName.toLowerCase()}#${e.id}.${e.className}`
        + ` ${Math.round(e.getBoundingClientRect().right)}px`)"""


def test_create_fix_bind_and_delete_an_intent(
    page: Page, server: Server, api: httpx.Client
) -> None:
    allow_console_errors(page, "status of 422")  # the bad values below, on purpose
    campaigns = api.get(f"/api/tenants/{server.tenant}/catalog", params={"kind": "campaign"})
    assert campaigns.status_code == 200, campaigns.text
    first = campaigns.json()["items"][0]  # the demo backfill stored the account's campaigns

    page.goto(server.url + f"/ui/intents?tenant={server.tenant}")
    expect(page.get_by_role("heading", name=f"Intents of {server.tenant}")).to_be_visible()
    form = page.locator("#intent-form")
    expect(form.get_by_label("Trigger metric", exact=True)).to_contain_text(TRIGGER)

    # 1. a window longer than two weeks: the API's error sits on that field and in the summary
    form.get_by_label("Intent id").fill(INTENT)
    form.get_by_label("Name", exact=True).fill("Browser welcome")
    form.get_by_label("Decision window (seconds)").fill("2000000")
    form.get_by_role("button", name="Add signal").click()
    form.get_by_label("Within (seconds)").fill("1800")
    form.get_by_label("unsubscribed").check()
    form.get_by_label("Trigger metric", exact=True).select_option("__other__")
    form.get_by_label("Metric name (typed)").fill("No Such Metric")
    form.get_by_role("button", name="Create intent").click()
    window = form.get_by_label("Decision window (seconds)")
    expect(window).to_have_attribute("aria-invalid", "true")
    expect(form.locator("#f-window-error")).to_contain_text("less than or equal to 1209600")
    expect(form.get_by_role("alert")).to_contain_text("Decision window")
    shot(page, "intents-invalid-window")

    # 2. the window fixed, the typed metric is checked against the Klaviyo account
    window.fill("21600")
    form.get_by_role("button", name="Create intent").click()
    metric = form.get_by_label("Trigger metric", exact=True)
    expect(metric).to_have_attribute("aria-invalid", "true")
    expect(form.locator("#f-metric-error")).to_contain_text("no metric 'No Such Metric'")
    expect(window).not_to_have_attribute("aria-invalid", "true")

    # 3. the metric chosen from the account's list: created, and listed
    metric.select_option(TRIGGER)
    form.get_by_role("button", name="Create intent").click()
    expect(page.get_by_role("status")).to_contain_text(f"Intent {INTENT} created")
    row = page.locator("#intent-list").get_by_role("row").filter(has_text=INTENT)
    expect(row).to_contain_text("site_visit ≤ 30 min")
    expect(row).to_contain_text("unsubscribed")
    expect(row).to_contain_text(f"metric {TRIGGER}")

    # 4. edit: bind it to a campaign from the catalogue
    page.get_by_role("button", name=f"Edit {INTENT}").click()
    expect(page.get_by_role("heading", name=f"Edit intent {INTENT}")).to_be_visible()
    expect(form.get_by_label("Intent id")).to_have_attribute("readonly", "")
    form.get_by_label("Campaign (optional)").select_option(first["id"])
    form.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_contain_text(f"Intent {INTENT} saved (version 2)")
    expect(row).to_contain_text(f"campaign {first['name']} ({first['id']})")
    stored = api.get(f"/api/tenants/{server.tenant}/intents/{INTENT}").json()
    assert stored["binding"] == {
        "esp": "klaviyo",
        "metric_name": TRIGGER,
        "campaign_id": first["id"],
    }
    assert stored["window_seconds"] == 21600
    assert stored["hot_path_signals"] == [{"event_type": "site_visit", "within_seconds": 1800}]

    # 5. its history: created, then the campaign bound
    page.get_by_role("button", name=f"History of {INTENT}").click()
    history = page.locator("#history")
    expect(history.get_by_role("row")).to_have_count(3)  # header + two versions
    expect(history.get_by_role("row").nth(1)).to_contain_text(f"campaign id {first['id']}")
    expect(history).to_contain_text("created")
    shot(page, "intents-1280")

    # 6. delete asks first: Escape keeps it, Delete removes it
    page.get_by_role("button", name=f"Delete {INTENT}").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Delete intent {INTENT}?")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(row).to_be_visible()
    page.get_by_role("button", name=f"Delete {INTENT}").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text(f"Intent {INTENT} deleted")
    expect(row).to_have_count(0)
    assert api.get(f"/api/tenants/{server.tenant}/intents/{INTENT}").status_code == 404


def test_the_intents_page_at_390_px(mobile_page: Page, server: Server, api: httpx.Client) -> None:
    page = mobile_page
    body = {
        "intent_id": "browser-mobile",
        "name": "Mobile check",
        "hot_path_signals": [{"event_type": "product_view", "within_seconds": 600}],
        "binding": {"esp": "klaviyo", "metric_name": TRIGGER},
    }
    created = api.post(f"/api/tenants/{server.tenant}/intents", json=body)
    assert created.status_code == 201, created.text
    try:
        page.goto(server.url + f"/ui/intents?tenant={server.tenant}")
        expect(page.get_by_role("row").filter(has_text="browser-mobile")).to_contain_text(
            "product_view ≤ 10 min"
        )
        page.get_by_role("button", name="Edit browser-mobile").click()
        expect(page.get_by_label("Signal", exact=True)).to_have_value("product_view")
        # the page itself never scrolls sideways (wide tables scroll in their own box)
        wide = page.evaluate(WIDER_THAN_THE_SCREEN)
        assert not wide, f"wider than the 390 px screen: {wide}"
        shot(page, "intents-390")
    finally:
        api.delete(f"/api/tenants/{server.tenant}/intents/browser-mobile")


def test_a_bad_intent_id_is_shown_on_the_id_field(page: Page, server: Server) -> None:
    allow_console_errors(page, "status of 422")
    page.goto(server.url + f"/ui/intents?tenant={server.tenant}")
    form = page.locator("#intent-form")
    expect(form.get_by_label("Trigger metric", exact=True)).to_contain_text(TRIGGER)
    form.get_by_label("Intent id").fill("Not An Id!")
    form.get_by_label("Name", exact=True).fill("x")
    form.get_by_label("Trigger metric", exact=True).select_option(TRIGGER)
    form.get_by_role("button", name="Create intent").click()
    expect(form.get_by_label("Intent id")).to_have_attribute("aria-invalid", "true")
    expect(form.locator("#f-id-error")).to_contain_text(re.compile("lower-case"))
