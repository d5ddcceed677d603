"""The guard console in headless Chromium against the real gate process (console.md §1, §4).

Screenshots go to test-artifacts/console/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gate.conftest import GUARD_PIN
from tests.gate.harness import RELAY, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
KIOSK = {"width": 800, "height": 480}
PHONE = {"width": 390, "height": 844}


def person(world, key):
    return next(p for p in world.people if p.key == key)


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


@pytest.fixture
def page_for(browser) -> Iterator[Any]:
    contexts = []

    def make(url: str, viewport: dict[str, int] = KIOSK) -> Any:
        ctx = browser.new_context(viewport=viewport, locale="zh-CN")
        contexts.append(ctx)
        page = ctx.new_page()
        page.requests = []                                   # type: ignore[attr-defined]
        page.on("request", lambda req: page.requests.append(req.url))
        page.goto(url)
        page.wait_for_selector("#st-link.ok", state="attached", timeout=15_000)   # stream connected
        return page

    yield make
    for c in contexts:
        c.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_sideways_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_deny_reaches_panel_in_both_languages_then_override_is_logged(make_gate, page_for, world):
    g = make_gate(console=True, thermometer=True)
    page = page_for(g.app.console.url)
    g.sim.present(34.0, 25.0)
    time.sleep(0.8)
    view = g.decide(world.health_code(person(world, "expired-test")))
    g.sim.absent()
    assert view["outcome"] == "deny"
    page.wait_for_selector("#panel.outcome-deny")
    panel = page.inner_text("#panel")
    assert "禁止通行" in panel and "DENY" in panel and "✕" in panel
    assert "核酸检测超时" in panel and "Test overdue" in panel
    assert "赵*明" in panel
    assert "禁止通行" in page.inner_text("#live")               # announced (aria-live)
    shot(page, "deny-kiosk-zh")

    page.click("#btn-override")
    page.wait_for_selector("#modal:not([hidden])")
    page.get_by_role("button", name="准许通行 / ADMIT").click()
    page.get_by_role("button", name="现场出示有效核酸证明 / Valid test result shown").click()
    page.fill("#modal textarea", "paper result seen")
    page.get_by_role("button", name="门岗一 Guard 1 (guard-1)").click()
    for digit in GUARD_PIN:
        page.click(f'#modal .pad button[data-key="{digit}"]')
    shot(page, "override-dialog")
    page.click("#modal-ok")
    page.wait_for_selector("#modal", state="hidden", timeout=15_000)
    wait_until(lambda: g.events("override"))
    ov = g.events("override")[-1]["payload"]
    assert (ov["decision_seq"], ov["to"], ov["guard"], ov["reason"], ov["note"]) == (
        view["seq"], "admit", "guard-1", "test_shown", "paper result seen")
    wait_until(lambda: [bool(s.state) for s in g.pin(RELAY).states] == [False, True, False])
    page.wait_for_selector("#panel.outcome-admit")
    assert "已人工改判" in page.inner_text("#panel")
    shot(page, "overridden")


def test_wrong_pin_is_shown_and_admit_refused_for_positive_case(make_gate, page_for, world):
    from tests.console.test_gate_console import POSITIVE

    g = make_gate(console=True)
    page = page_for(g.app.console.url)
    view = g.decide(world.health_code(POSITIVE))
    assert view["overridable"] is False
    page.wait_for_selector("#panel.outcome-deny")
    page.click("#btn-override")
    page.wait_for_selector("#modal:not([hidden])")
    assert "不可人工放行" in page.inner_text("#modal") and "Cannot be overridden" in page.inner_text("#modal")
    assert page.get_by_role("button", name="准许通行 / ADMIT").count() == 0
    shot(page, "not-overridable")
    page.click("#modal-cancel")
    page.click("#btn-manual")
    page.get_by_role("button", name="禁止通行 / DENY").click()
    page.get_by_role("button", name="人工核验无误 / Checked by hand").click()
    page.get_by_role("button", name="门岗一 Guard 1 (guard-1)").click()
    for digit in "000000":
        page.click(f'#modal .pad button[data-key="{digit}"]')
    page.click("#modal-ok")
    page.wait_for_selector("#modal-error:not([hidden])")
    assert "Wrong PIN: 4 tries left" in page.inner_text("#modal-error")
    shot(page, "wrong-pin")


def test_status_bar_reflects_stopped_thermometer(make_gate, page_for):
    g = make_gate(console=True, thermometer=True)
    page = page_for(g.app.console.url)
    page.wait_for_selector("#st-thermometer.ok", timeout=15_000)
    g.sim.silence(60)
    page.wait_for_selector("#st-thermometer.bad", timeout=20_000)
    text = page.inner_text("#st-thermometer")
    assert "离线" in text and "Offline" in text
    assert "Thermometer offline" in page.inner_text("#banners")
    shot(page, "thermometer-stopped")


@pytest.mark.parametrize(("viewport", "name"), [(KIOSK, "kiosk"), (PHONE, "phone")])
def test_layouts_have_no_sideways_scroll(make_gate, page_for, world, viewport, name):
    g = make_gate(console=True)
    page = page_for(g.app.console.url, viewport)
    for key in ("red-contact", "expired-test", "visitor"):
        g.decide(world.health_code(person(world, key)))
        time.sleep(1.1)                                          # out of view long enough to decide again
    page.wait_for_function("document.querySelectorAll('#history-list li').length >= 2")
    assert no_sideways_scroll(page)
    size = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.word [lang=zh]')).fontSize)")
    assert size >= 64
    panel_h = page.evaluate("document.querySelector('#panel').getBoundingClientRect().height")
    assert panel_h >= viewport["height"] / 2
    for sel in ("#btn-override", "#btn-manual", "#btn-setup", "#btn-lang"):
        box = page.locator(sel).bounding_box()
        assert box["width"] >= 48 and box["height"] >= 48, sel
    shot(page, f"layout-{name}-zh")
    page.click("#btn-lang")
    assert page.evaluate("document.documentElement.lang") == "en"
    size_en = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.word [lang=en]')).fontSize)")
    assert size_en >= 64 and no_sideways_scroll(page)
    shot(page, f"layout-{name}-en")
    page.click("#btn-override")
    page.wait_for_selector("#modal:not([hidden])")
    assert no_sideways_scroll(page)
    shot(page, f"override-dialog-{name}")


def test_language_choice_is_kept(make_gate, page_for):
    g = make_gate(console=True)
    page = page_for(g.app.console.url)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.click("#btn-lang")
    page.reload()
    page.wait_for_selector("#st-link.ok", state="attached")
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.evaluate("localStorage.getItem('ck_lang')") == "en"


def test_no_request_leaves_the_origin(make_gate, page_for, world):
    g = make_gate(console=True)
    page = page_for(g.app.console.url)
    g.decide(world.health_code(person(world, "visitor")))
    page.wait_for_selector("#panel.outcome-deny")
    origin = g.app.console.url.rstrip("/")
    assert page.requests
    assert all(u.startswith(origin + "/") for u in page.requests), page.requests
    assert any(u.endswith("/static/app.js") for u in page.requests)


def test_post_without_token_from_a_page_is_refused(make_gate, page_for):
    g = make_gate(console=True)
    page = page_for(g.app.console.url)
    status = page.evaluate("""async () => (await fetch('/api/setup', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({account: 'admin', pin: '13579135'})})).status""")
    assert status == 403
