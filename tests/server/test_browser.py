"""The dashboard in headless Chromium: login, fleet, a gate, alerts, the trace form, the daily report and
the emergency switch with its confirmation (sync.md §5.8; issue 10 item 4).

Screenshots go to test-artifacts/server/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.events import pid as make_pid
from sync.timefmt import parse_ms
from tests.server.harness import VENUE, ServerHarness, decision, fever
from tests.server.test_bundles import Fleet, fetch_verified, sources, upload_sources

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "server"
SUB = "99402d8da8317fc267036c4775b68b39"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[tuple[ServerHarness, Fleet, Any]]:
    from tests.server.harness import key_from_seed

    fleet = Fleet(key_from_seed("server", "checkpoint test server key v1"))
    h = ServerHarness(db_url, tmp_path, server_key=fleet.server_key, publisher_keys=[fleet.publisher])
    assert h.admin("POST", "/v1/admin/keys", content=fleet.keys1).status_code == 201
    assert upload_sources(h, sources()).status_code == 201
    pid = make_pid(h.state.pid_keys[1], "SUB", SUB)
    a = h.gate("gate-east-01")
    b = h.gate("gate-west-02")
    c = h.gate("gate-north-03")
    base = parse_ms("2022-04-12T00:00:00.000Z")  # 08:00 in Shanghai
    for i in range(40):
        outcome = "deny" if i % 7 == 0 else "refer" if i % 11 == 0 else "admit"
        a.chain.append("decision", decision(outcome, pid=pid if i == 3 else f"{i:032x}"), wall_ms=base + i * 900_000)
    a.chain.append("decision", decision("deny", pid=pid, temp=3790), wall_ms=base + 3_600_000 + 5)
    a.chain.append("temp_alert", fever(41), wall_ms=base + 3_600_000 + 6)
    for i in range(12):
        b.chain.append("decision", decision("admit", venue={"venue_id": "411322-0031-02", "zone": "B", "door": None}),
                       wall_ms=base + 7_200_000 + i * 600_000)
    assert a.upload_range(1, 42).status_code == 200
    assert b.upload_range(1, 12).status_code == 200
    hb = {"clock": {"state": "synced", "offset_ms": 12}, "storage": {"level": "ok"}, "camera": {"status": "ok"},
          "thermometer": {"status": "ok"}, "backlog": {"events": 0}, "software": {"gate": "0.1.0", "agent": "0.1.0"},
          "bundle": {"version": 1, "state": "fresh"}}
    h.clock.ms = parse_ms("2022-04-12T06:00:00.000Z")  # c stays silent: offline
    a.request("POST", "heartbeat", json.dumps(hb).encode())
    b.request("POST", "heartbeat", json.dumps({**hb, "clock": {"state": "floor"}, "backlog": {"events": 3210}}).encode())
    from sync.server.jobs import run_checks

    run_checks(h.state)  # gate-north-03: device_offline
    yield h, fleet, {"a": a, "b": b, "c": c, "pid": pid}
    h.close()


def login(browser: Any, h: ServerHarness, token: str) -> Any:
    # localhost, not 127.0.0.1: Chromium keeps Secure cookies only for secure contexts, and localhost is one.
    base = h.url.replace("127.0.0.1", "localhost")
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    scripts: list[str] = []
    page.on("request", lambda req: scripts.append(req.url) if not req.url.startswith(base) else None)
    page.goto(f"{base}/dashboard")
    assert "/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    page.external = scripts  # type: ignore[attr-defined]
    page.base = base  # type: ignore[attr-defined]
    return page


def test_dashboard_trace_report_and_emergency_switch(browser: Any, site: Any) -> None:
    h, fleet, w = site
    page = browser.new_page()
    page.goto(h.url.replace("127.0.0.1", "localhost") + "/dashboard")
    assert "/login" in page.url
    page.fill("#token", "ck_" + "x" * 43)
    page.click("button[type=submit]")
    assert "令牌无效" in page.inner_text("main") and "invalid" in page.inner_text("main")
    shot(page, "01-login-refused")
    page.close()

    page = login(browser, h, h.admin_token)
    cookie = next(c for c in page.context.cookies() if c["name"] == "ck_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    # Fleet: worst first (the silent gate is offline), health pills, backlog, bundle columns.
    rows = page.locator("#fleet tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-device") for i in range(3)] == [
        "gate-north-03", "gate-west-02", "gate-east-01"]
    assert "offline" in rows.nth(0).inner_text() and "3210" in rows.nth(1).inner_text()
    assert page.inner_text("#count-offline") == "1" and page.inner_text("#count-online") == "2"
    assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "30"
    shot(page, "02-fleet")
    page.click("a[href='/dashboard/devices/gate-east-01']")
    assert "gate-east-01" in page.inner_text("h1")
    assert "fever" in page.inner_text("main") and "37.90" in page.inner_text("main")
    shot(page, "03-gate")
    page.click("a[href='/dashboard/alerts']")
    assert page.locator("#alerts tbody tr").count() == 2
    assert "device_offline" in page.inner_text("#alerts") and "fever" in page.inner_text("#alerts")
    shot(page, "04-alerts")
    first_ack = page.locator("#alerts button").first
    first_ack.click()
    assert "acked" in h.client.get("/v1/alerts", headers=h.auth()).text

    # Trace: who was at the venue; then where was the person (by sub), both through the form.
    page.click("a[href='/dashboard/trace']")
    page.fill("#venue_id", VENUE["venue_id"])
    page.fill("#venue_from", "2022-04-12T08:00")
    page.fill("#venue_to", "2022-04-12T10:00")
    page.click("#venue-submit")
    result = page.inner_text("#trace-result")
    assert "gate-east-01" in result and "张*三" in result and "37.90 °C" in result
    assert page.locator("#trace-result tbody tr").count() == 9  # 08:00-09:45 every 15 min, plus the fever deny
    shot(page, "05-trace-venue")
    page.fill("#person_id", SUB)
    page.locator("#person-form input[name=from]").fill("2022-04-12T00:00")
    page.locator("#person-form input[name=to]").fill("2022-04-12T23:59")
    page.click("#person-submit")
    result = page.inner_text("#trace-result")
    assert page.locator("#trace-result tbody tr").count() == 2 and "411322-0031-01" in result
    assert SUB not in page.url
    shot(page, "06-trace-person")
    logs = h.rows("SELECT route, params FROM audit_log ORDER BY id")
    assert [x.route for x in logs] == ["/dashboard/trace venue", "/dashboard/trace person"]
    assert SUB not in logs[1].params and w["pid"] in logs[1].params

    # Daily report with its server-side chart.
    page.click("a[href='/dashboard/report']")
    page.fill("input[name=day]", "2022-04-12")
    page.click("#report-form button")
    assert page.inner_text("#fig-checked") == "53" and page.inner_text("#fig-fevers") == "1"
    assert page.inner_text("#fig-denied") == "7"
    assert page.locator("svg.chart rect.bar.decisions").count() == 24
    assert page.locator("svg.chart rect.bar.fevers[height='0.0']").count() == 23
    shot(page, "07-report")

    # The emergency switch: nothing happens before the confirmation.
    page.click("a[href='/dashboard/mode']")
    assert "normal" in page.inner_text("#scopes")
    page.select_option("#mode-select", "emergency")
    page.fill("#mode-reason", "positive case at the east gate")
    page.click("#mode-submit")
    assert page.locator("#confirm-box").is_visible()
    shot(page, "08-mode-confirm")
    assert fetch_verified(h, w["a"], fleet)[1].version == 1  # not yet published
    page.click("#confirm-switch")
    assert "v2" in page.inner_text("#mode-done") and "emergency" in page.inner_text("#scopes")
    shot(page, "09-mode-done")
    _, manifest, parts = fetch_verified(h, w["a"], fleet)
    mode = json.loads(parts["mode"])
    assert manifest.version == 2 and mode["mode"] == "emergency"
    assert mode["reason"] == "positive case at the east gate" and mode["set_by"] == "test-admin"
    assert page.external == []  # type: ignore[attr-defined]  # no external assets
    page.click("header button")  # log out
    page.goto(page.base + "/dashboard")  # type: ignore[attr-defined]
    assert "/login" in page.url
    page.context.close()

    # An auditor sees everything but cannot switch the mode.
    page = login(browser, h, h.auditor_token)
    assert page.locator("a[href='/dashboard/mode']").count() == 0
    page.goto(page.base + "/dashboard/mode")  # type: ignore[attr-defined]
    assert "只有管理员" in page.inner_text("main")
    shot(page, "10-auditor-no-switch")
    page.context.close()
