"""The operator's first run, in a real browser: sign in, add a brand, connect it to Klaviyo by
OAuth (the demo simulator's consent), start a backfill and watch it reach 100%."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, allow_console_errors, shot, sign_in


def test_pages_need_a_session_and_a_valid_key(browser_page_anonymous: Page, server: Server) -> None:
    page = browser_page_anonymous
    page.goto(server.url + "/ui/backfill?tenant=demo")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("API key").fill("sfk_nope_notakey")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("API key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/backfill\?tenant=demo$"))  # back where it was going
    shot(page, "login-redirected")


def test_the_api_refuses_a_session_request_without_the_csrf_token(
    browser_page_anonymous: Page, server: Server
) -> None:
    page = browser_page_anonymous  # this test makes the console report a 403 on purpose
    sign_in(page, server)
    status = page.evaluate(
        """async () => (await fetch('/api/tenants', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({id: 'csrf-probe', name: 'x'})})).status"""
    )
    assert status == 403
    listed = page.evaluate(
        "async () => (await (await fetch('/api/tenants')).json()).map(t => t.id)"
    )
    assert "csrf-probe" not in listed
    assert "demo" in listed


def test_add_a_tenant_connect_it_by_oauth_and_backfill_it(
    page: Page, server: Server, api: httpx.Client
) -> None:
    allow_console_errors(page, "status of 422")  # the bad id below, on purpose
    page.goto(server.url + "/ui/tenants")
    expect(page.get_by_role("cell", name=re.compile("^demo"))).to_be_visible()
    form = page.locator("#add-tenant")
    # A bad id: the API's error is shown on the field it names.
    form.get_by_label("Id").fill("Not A Slug")
    form.get_by_label("Name").fill("Acme Outdoor")
    form.get_by_role("button", name="Add tenant").click()
    expect(form.locator(".field-error")).to_contain_text(re.compile("pattern|match", re.I))
    expect(form.get_by_label("Id")).to_have_attribute("aria-invalid", "true")
    shot(page, "tenants-invalid-id")
    form.get_by_label("Id").fill("acme")
    form.get_by_label("Time zone").fill("Europe/Paris")
    form.get_by_role("button", name="Add tenant").click()
    expect(page.get_by_role("status")).to_contain_text("Tenant acme added")
    expect(page.get_by_role("heading", name="Connect acme to Klaviyo")).to_be_visible()
    shot(page, "tenants-added")

    page.get_by_role("link", name="Connect with Klaviyo (OAuth)").click()
    expect(page.get_by_role("heading", name="Klaviyo connected")).to_be_visible()
    shot(page, "oauth-connected")
    account = api.get("/api/tenants/acme/accounts/klaviyo").json()
    assert (account["status"], account["auth_kind"]) == ("connected", "oauth")

    page.get_by_role("link", name=re.compile("Back to the SendFlowr dashboard")).click()
    expect(page).to_have_url(re.compile(r"/ui/backfill\?tenant=acme"))
    expect(page.locator("#tenant-name")).to_have_text("acme")
    page.get_by_label("History to fetch").nth(1).select_option("7")
    page.get_by_role("button", name="Start backfill").click()
    expect(page.get_by_role("status")).to_contain_text("queued")
    bar = page.get_by_role("progressbar", name="Backfill progress of acme").last
    expect(bar).to_be_visible()
    shot(page, "backfill-running")
    expect(bar).to_have_attribute("value", "100", timeout=240_000)
    expect(page.locator("#detail .badge")).to_have_text("completed")
    shot(page, "backfill-done")
    job = api.get("/api/connector/backfill/status/acme").json()
    assert job["status"] == "completed"
    assert job["events"] > 0
    assert api.get("/api/events/acme/counts").json()["total"] == job["events"]


def test_tenants_and_backfill_fit_a_phone(mobile_page: Page, server: Server) -> None:
    for slug in ("tenants", "backfill"):
        mobile_page.goto(f"{server.url}/ui/{slug}?tenant=demo")
        expect(mobile_page.get_by_role("heading", level=1)).to_be_visible()
        expect(mobile_page.get_by_role("table").first).to_be_visible()
        overflow = mobile_page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{slug} scrolls sideways by {overflow}px at 390px"
        shot(mobile_page, f"{slug}-390")
