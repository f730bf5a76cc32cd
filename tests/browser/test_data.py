"""The data viewer in a real browser, on the demo tenant's backfilled data: the figures match
what the API says, the chart is drawn, orders page, and the CSV downloads carry data."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, shot

DATA = "/api/connector/backfill/data"


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _figures(page: Page, currencies: list[str]) -> dict[str, str]:
    """The summary cards' exact values (data-value) and their shown text."""
    out: dict[str, str] = {}
    names = ["Orders", "Machine-open share"]
    for c in currencies:
        names += [f"Revenue ({c})", f"Average order value ({c})"]
    for name in names:
        card = page.get_by_role("group", name=name, exact=True)
        expect(card).to_be_visible()
        out[name] = str(card.get_attribute("data-value"))
        out[name + " text"] = card.inner_text()
    return out


def _expected(summary: dict[str, Any]) -> dict[str, str]:
    out = {
        "Orders": str(summary["orders"]),
        "Machine-open share": str(summary["machine_open_share"]),
        "Machine-open share text": f"{100 * summary['machine_open_share']:.1f}%",
    }
    for r in summary["revenue"]:
        out[f"Revenue ({r['currency']})"] = str(r["revenue"])
        out[f"Revenue ({r['currency']}) text"] = f"{r['revenue']:,.2f}"
        aov = f"Average order value ({r['currency']})"
        out[aov] = str(r["average_order_value"])
        out[aov + " text"] = f"{r['average_order_value']:,.2f}"
    return out


def _shows(figures: dict[str, str], summary: dict[str, Any]) -> bool:
    for key, value in _expected(summary).items():
        if key.endswith(" text"):
            if value not in figures.get(key, ""):
                return False
        elif float(figures.get(key, "nan")) != float(value):  # JS writes 550.0 as "550"
            return False
    return True


def test_data_viewer_shows_revenue_chart_tables_and_exports(
    page: Page, server: Server, api: httpx.Client
) -> None:
    def summary() -> dict[str, Any]:
        body: dict[str, Any] = api.get(f"{DATA}/{server.tenant}/summary").json()
        return body

    # The demo keeps sending live events: the page shows the summary of a moment between
    # the API's answers just before and just after it loaded.
    before = summary()
    assert before["orders"] > 0, "the demo brand has orders"
    page.goto(server.url + f"/ui/data?tenant={server.tenant}")
    figures = _figures(page, [r["currency"] for r in before["revenue"]])
    after = summary()
    assert _shows(figures, before) or _shows(figures, after), (figures, before, after)

    # the chart is drawn, with its text alternative
    chart = page.get_by_role("img", name=re.compile("Events per UTC day"))
    expect(chart).to_be_visible()
    expect(chart.locator("canvas")).to_have_count(1)
    types = page.get_by_role("table", name=re.compile("events over"))
    opened = types.get_by_role("row", name=re.compile(r"^opened")).inner_text()
    assert any(f"{s['events_by_type']['opened']:,}" in opened for s in (before, after))

    # the tenant's confidence map, as the API says it
    calibration = api.get("/timing/calibration", params={"tenant": server.tenant}).json()
    expect(page.locator("#calibration-summary")).to_have_text(calibration["summary"])
    expect(page.get_by_role("table", name=re.compile("The map, bin by bin"))).to_have_count(
        1 if calibration["points"] else 0
    )

    # top campaigns as the API ranks them
    top = api.get(f"{DATA}/{server.tenant}/top", params={"kind": "campaign"}).json()["items"]
    assert all(i["name"] for i in top), "the catalog names every campaign of the demo"
    assert top, "the demo's events name campaigns"
    campaigns = page.get_by_role("table", name=re.compile("Top campaigns"))
    expect(campaigns.get_by_role("row").nth(1)).to_contain_text(top[0]["name"])

    # orders, page by page
    orders = page.get_by_role("table", name="Orders, newest first")
    total = int(figures["Orders"])
    shown = min(20, total)
    expect(orders.get_by_role("row")).to_have_count(1 + shown)
    info = page.locator("#orders-info")
    expect(info).to_have_text(f"1 to {shown} of {total:,}")
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    shot(page, "data-1280")

    # the orders CSV: a header row and every order
    with page.expect_download() as download:
        page.get_by_role("link", name="Download orders (CSV)").click()
    path = download.value.path()
    assert download.value.suggested_filename == f"{server.tenant}-orders.csv"
    rows = _csv_rows(path.read_text(encoding="utf-8"))
    assert rows[0][:3] == ["occurred_at", "esp_event_id", "order_id"]
    listed = api.get(f"{DATA}/{server.tenant}/orders", params={"limit": 1000}).json()["orders"]
    exported = [row[1] for row in rows[1:]]
    assert len(exported) >= total >= 1
    # the same orders as the API lists, newest first (one may have landed in between)
    assert exported == [o["esp_event_id"] for o in listed][-len(exported) :]

    with page.expect_download() as decisions:
        page.get_by_role("link", name="Download decisions (CSV)").click()
    header = _csv_rows(decisions.value.path().read_text(encoding="utf-8"))[0]
    assert header[:3] == ["created_at", "explanation_ref", "decision_id"]


def test_data_viewer_fits_a_phone(mobile_page: Page, server: Server, api: httpx.Client) -> None:
    page = mobile_page
    summary = api.get(f"{DATA}/{server.tenant}/summary").json()
    page.goto(server.url + f"/ui/data?tenant={server.tenant}")
    currency = summary["revenue"][0]["currency"]
    expect(page.get_by_role("group", name=f"Revenue ({currency})")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("Events per UTC day"))).to_be_visible()
    expect(page.get_by_role("table", name="Orders, newest first")).to_be_visible()
    # wide tables scroll inside their box; the page itself does not scroll sideways
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1
    shot(page, "data-390")


def test_a_tenant_without_events_gets_words_not_blank_charts(
    page: Page, server: Server, api: httpx.Client
) -> None:
    r = api.post("/api/tenants", json={"id": "data-empty", "name": "No Data Yet"})
    assert r.status_code in (201, 409), r.text
    page.goto(server.url + "/ui/data?tenant=data-empty")
    expect(page.get_by_text("No events yet: connect Klaviyo and run a backfill.")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("Events per UTC day"))).to_have_count(0)
    expect(page.get_by_role("heading", name="Summary")).to_be_hidden()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download orders (CSV)").click()
    assert len(_csv_rows(download.value.path().read_text(encoding="utf-8"))) == 1  # header
    shot(page, "data-empty")


def test_orders_page_by_page_and_by_day(page: Page, server: Server, api: httpx.Client) -> None:
    tenant = "data-paging"
    r = api.post("/api/tenants", json={"id": tenant, "name": "Paging Brand"})
    assert r.status_code in (201, 409), r.text
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    events = [
        {
            "tenant": tenant,
            "esp": "klaviyo",
            "esp_event_id": f"paging-order-{i}",
            "event_type": "ordered",
            "occurred_at": (start + timedelta(hours=i)).isoformat(),
            "identifiers": {"esp_profile_id": f"P{i % 5}"},
            "properties": {"$value": 10.0 + i, "Currency": "EUR", "OrderId": f"ord-{i}"},
        }
        for i in range(25)  # 12:00 on Jan 5 to 12:00 on Jan 6
    ]
    r = api.post("/api/events", json={"events": events})
    assert r.status_code == 200, r.text
    page.goto(server.url + f"/ui/data?tenant={tenant}")
    info = page.locator("#orders-info")
    expect(info).to_have_text("1 to 20 of 25")
    orders = page.get_by_role("table", name="Orders, newest first")
    expect(orders.get_by_role("row").nth(1)).to_contain_text("ord-24")  # newest first
    page.get_by_role("button", name="Next").click()
    expect(info).to_have_text("21 to 25 of 25")
    expect(orders.get_by_role("row")).to_have_count(1 + 5)
    expect(orders.get_by_role("row").nth(5)).to_contain_text("ord-0")
    expect(page.get_by_role("button", name="Next")).to_be_disabled()
    page.get_by_role("button", name="Previous").click()
    expect(info).to_have_text("1 to 20 of 25")
    # one UTC day: Jan 5 has the orders of 12:00 to 23:00
    page.get_by_label("Day (UTC)").fill("2026-01-05")
    page.get_by_role("button", name="Show orders").click()
    expect(info).to_have_text("1 to 12 of 12")
    expect(page.get_by_role("table", name="Orders of 2026-01-05 (UTC)")).to_be_visible()
    link = page.get_by_role("link", name="Download orders (CSV)")
    expect(link).to_have_attribute("href", re.compile(r"orders\.csv\?date=2026-01-05$"))
    with page.expect_download() as download:
        link.click()
    rows = _csv_rows(download.value.path().read_text(encoding="utf-8"))
    assert len(rows) == 1 + 12
    page.get_by_role("button", name="All days").click()
    expect(info).to_have_text("1 to 20 of 25")
    revenue = page.get_by_role("group", name="Revenue (EUR)")
    expect(revenue).to_contain_text("550.00")
    assert float(revenue.get_attribute("data-value") or "nan") == sum(10.0 + i for i in range(25))
    shot(page, "data-paging")
