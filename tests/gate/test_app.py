"""The gate process end to end: pictures in, events and pin states out (real store, bundle, clock,
decoder, credentials and policy; mock pins; the thermometer simulator on a pty)."""

from __future__ import annotations

import json
import time

import pytest

from edge.app import GateApp, run_marker_path
from edge.errors import StoreUnavailable
from tests.gate.harness import AMBER, BEAM, BUTTON, GREEN, RED, RELAY, wait_until


def person(world, key):
    return next(p for p in world.people if p.key == key)


def levels(pin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


# -- start and stop -----------------------------------------------------------------------------


def test_start_writes_device_start_and_stop_writes_device_stop(make_gate):
    g = make_gate()
    marker = run_marker_path(g.cfg.data_dir)
    assert marker.exists()
    assert g.stop() == 0
    assert not marker.exists()
    starts = [e for e in g.events() if e["kind"] in ("device_start", "device_stop")]
    assert [e["kind"] for e in starts] == ["device_start", "device_stop"]
    assert starts[0]["payload"]["unclean"] is False and starts[0]["payload"]["quick_check"] == "skipped"
    assert starts[1]["payload"]["reason"] == "shutdown"
    assert g.app.store is not None


def test_unclean_restart_runs_quick_check(make_gate):
    g = make_gate(start=False)
    run_marker_path(g.cfg.data_dir).write_text("1234\n")          # left by a killed process
    g.start()
    start = g.events("device_start")[-1]["payload"]
    assert start["unclean"] is True and start["quick_check"] == "ok"


# -- decisions: log, then act ---------------------------------------------------------------------


def test_admit_logs_then_pulses_relay(make_gate, world):
    g = make_gate(thermometer=True)
    seen_at_pulse: list[int] = []
    original = g.app.turnstile.admit

    def spy(*a, **kw):
        seen_at_pulse.append(g.app.store.head().last_seq)
        return original(*a, **kw)

    g.app.turnstile.admit = spy  # type: ignore[method-assign]
    g.sim.present(34.2, 25.0)
    time.sleep(0.8)
    view = g.decide(world.health_code(person(world, "green-staff")))
    assert view["outcome"] == "admit", view
    decisions = g.events("decision")
    assert decisions[-1]["seq"] == view["seq"]
    assert seen_at_pulse == [view["seq"]]              # the event was committed before the relay moved
    wait_until(lambda: levels(g.pin(RELAY)) == [False, True, False])
    wait_until(lambda: True in levels(g.pin(GREEN)))


def test_no_temperature_refers_when_required(make_gate, world):
    g = make_gate()                                    # thermometer disabled, the bundle requires one
    view = g.decide(world.health_code(person(world, "green-staff")))
    assert view["outcome"] == "refer" and "thermometer" in [r["id"] for r in view["reasons"]]
    assert view["temp"] == {"body_centi_c": None, "status": "absent"}
    assert levels(g.pin(RELAY)) == [False]


def test_deny_never_touches_relay_and_shows_reasons(make_gate, world):
    g = make_gate()
    view = g.decide(world.health_code(person(world, "red-contact")))
    assert view["outcome"] == "deny"
    assert "contact-risk" in [r["id"] for r in view["reasons"]]
    assert all(r["zh"] and r["en"] and r["zh"] != r["en"] for r in view["reasons"])
    assert view["overridable"] is False
    assert view["subject"]["name_m"] == "王*"
    assert levels(g.pin(RELAY)) == [False]
    wait_until(lambda: True in levels(g.pin(RED)))
    ev = g.events("decision")[-1]
    assert ev["payload"]["outcome"] == "deny" and ev["payload"]["venue"] is not None


def test_unknown_code_refers(make_gate):
    g = make_gate()
    view = g.decide("HELLO-GARBAGE-1")
    assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "pre-unknown-code"
    assert view["credential"]["kind"] in ("opaque", "roster", "none")
    assert levels(g.pin(RELAY)) == [False]
    wait_until(lambda: True in levels(g.pin(AMBER)))


def test_no_bundle_refers_everything(make_gate, world):
    g = make_gate(bundle=False)
    view = g.decide(world.health_code(person(world, "green-staff")))
    assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "pre-no-bundle"
    assert g.events("decision")[-1]["payload"]["bundle"] == {"version": 0, "state": "expired"}
    st = g.app.status()
    assert st["bundle"]["state"] == "none"
    assert any("No rules" in b["en"] for b in st["banners"])


def test_store_failure_still_acts_and_holds_event(make_gate, world, monkeypatch):
    g = make_gate()
    store = g.app.store

    def broken(items):
        raise StoreUnavailable("disk I/O error (injected)")

    monkeypatch.setattr(store, "append_many", broken)
    view = g.decide(world.health_code(person(world, "red-contact")))
    assert view["seq"] is None and view["outcome"] == "deny"
    wait_until(lambda: True in levels(g.pin(RED)))                # acted although the log failed
    assert store.held >= 1
    monkeypatch.undo()
    g.app._next_flush = 0
    wait_until(lambda: store.held == 0, timeout=15)
    assert g.events("decision")[-1]["payload"]["outcome"] == "deny"


# -- the thermometer and the re-measure rule ------------------------------------------------------


def test_measured_temperature_goes_into_the_decision(make_gate, world):
    g = make_gate(thermometer=True)
    g.sim.present(34.2, 25.0)
    time.sleep(0.8)
    view = g.decide(world.health_code(person(world, "green-staff")))
    g.sim.absent()
    assert view["outcome"] == "admit", view
    assert view["temp"] == {"body_centi_c": 3640, "status": "ok"}


def test_fever_asks_again_and_denies_when_confirmed(make_gate, world):
    g = make_gate(thermometer=True)
    g.sim.present(35.5, 25.0)
    time.sleep(0.8)
    mark = g.show(world.health_code(person(world, "fever")))
    g.wait("prompt", mark, kind="remeasure", remaining_s=3)
    wait_until(lambda: True in levels(g.pin(AMBER)))              # amber + two beeps: measure again
    g.sim.absent()
    time.sleep(0.4)
    g.sim.present(35.5, 25.0)
    view = g.wait("decision", mark, timeout=10)
    g.sim.absent()
    assert view["outcome"] == "deny" and view["reasons"][0]["id"] == "fever"
    assert view["temp"]["body_centi_c"] == 3790 and view["overridable"] is False
    wait_until(lambda: g.events("temp_alert"))                     # written right after the decision
    alert = g.events("temp_alert")[-1]["payload"]
    assert alert["cause"] == "fever" and alert["decision_seq"] == view["seq"] and alert["body_centi_c"] == 3790
    wait_until(lambda: sum(levels(g.pin(RED))) >= 3)              # red blinking (fever pattern)
    assert levels(g.pin(RELAY)) == [False]


def test_fever_not_remeasured_refers(make_gate, world):
    g = make_gate(thermometer=True)
    g.sim.present(35.5, 25.0)
    time.sleep(0.8)
    mark = g.show(world.health_code(person(world, "fever")))
    g.wait("prompt", mark, kind="remeasure", remaining_s=3)
    view = g.wait("decision", mark, timeout=10)                   # stays in front: no new episode
    g.sim.absent()
    assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "fever-unconfirmed"


def test_codes_queue_while_a_remeasure_is_pending(make_gate, world):
    g = make_gate(thermometer=True)
    g.sim.present(35.5, 25.0)
    time.sleep(0.8)
    mark = g.show(world.health_code(person(world, "fever")))
    g.wait("prompt", mark, kind="remeasure", remaining_s=3)
    g.show("HELLO-QUEUED-1")
    time.sleep(0.5)
    assert not [d for ev, d in g.messages[mark:] if ev == "decision"]     # queued, not decided
    first = g.wait("decision", mark, timeout=10)
    assert first["reasons"][0]["id"] == "fever-unconfirmed"
    second = g.wait("decision", mark, timeout=10, seq=first["seq"] + 1)
    assert second["reasons"][0]["id"] == "pre-unknown-code"


def test_thermometer_stopped_shows_in_status_and_alerts(make_gate):
    g = make_gate(thermometer=True)
    wait_until(lambda: g.app.status()["thermometer"]["state"] == "ok")
    g.sim.silence(30)
    wait_until(lambda: g.app.status()["thermometer"]["state"] in ("stale", "fault"), timeout=15)
    assert any(b["en"] == "Thermometer offline" for b in g.app.status()["banners"])
    wait_until(lambda: g.events("temp_alert"), timeout=15)
    assert g.events("temp_alert")[-1]["payload"]["cause"] == "sensor_fault"


# -- green lane -------------------------------------------------------------------------------------


def test_pass_and_driver_code_make_one_decision(make_gate, world):
    from edge.demo import DRIVER

    g = make_gate(lane="green_lane")
    mark = g.show(world.pass_code())
    g.wait("prompt", mark, kind="pair")
    g.push.clear()
    view = g.decide(world.health_code(DRIVER))
    assert view["credential"]["kind"] == "pass" and view["pass"]["plate"] == "豫A·D1234"
    assert view["outcome"] == "admit", view
    assert len(g.events("decision")) == 1


def test_lone_pass_refers_after_the_window(make_gate, world):
    g = make_gate(lane="green_lane")
    mark = g.show(world.pass_code())
    view = g.wait("decision", mark, timeout=10)
    assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "pre-unpaired"
    assert "driver" in view["reasons"][0]["en"].lower()


def test_material_scan_is_logged_against_the_delivery(make_gate, world):
    from edge.demo import DRIVER

    g = make_gate(lane="green_lane")
    g.show(world.pass_code())
    time.sleep(0.5)
    truck = g.decide(world.health_code(DRIVER))
    g.show(world.material_code())
    wait_until(lambda: g.events("material_scan"), timeout=10)
    scan = g.events("material_scan")[-1]["payload"]
    assert scan == {"venue": scan["venue"], "code": "GOODS-7731-0001", "format": "QRCode",
                    "delivery_seq": truck["seq"], "plate": "豫A·D1234", "result": "recorded"}


def test_pass_at_person_gate_refers(make_gate, world):
    g = make_gate()
    view = g.decide(world.pass_code())
    assert view["reasons"][0]["id"] == "pre-pass-at-person-gate"


# -- guard button and beam ----------------------------------------------------------------------------


def test_button_overrides_recent_overridable_deny(make_gate, world):
    g = make_gate()
    view = g.decide(world.health_code(person(world, "expired-test")))
    assert view["outcome"] == "deny" and view["overridable"] is True, view
    g.pin(RELAY).clear_states()
    g.pin(BUTTON).drive_low()
    g.pin(BUTTON).drive_high()
    wait_until(lambda: g.events("override"))
    ov = g.events("override")[-1]["payload"]
    assert (ov["decision_seq"], ov["from"], ov["to"], ov["guard"], ov["reason"]) == (
        view["seq"], "deny", "admit", "button", "hardware_button")
    wait_until(lambda: levels(g.pin(RELAY)) == [False, True, False])


def test_button_refused_within_60s_of_positive_case_deny(make_gate, world):
    from edge.demo import HOST_FIRM, DemoPerson

    g = make_gate()
    positive = DemoPerson("positive", "阳性", "positive", "陈*", "staff", HOST_FIRM, "red", flags=("positive",),
                          on_roster=False)
    view = g.decide(world.health_code(positive))
    assert view["reasons"][0]["id"] == "positive-case" and view["overridable"] is False
    g.pin(RED).clear_states()
    mark = g.mark()
    g.pin(BUTTON).drive_low()
    g.pin(BUTTON).drive_high()
    g.wait("prompt", mark, kind="override", en="Cannot be overridden")
    assert levels(g.pin(RELAY)) == [False]
    assert g.events("override") == []
    wait_until(lambda: True in levels(g.pin(RED)))


def test_button_without_recent_decision_opens_by_hand(make_gate):
    g = make_gate()
    g.pin(BUTTON).drive_low()
    g.pin(BUTTON).drive_high()
    wait_until(lambda: g.events("decision"))
    d = g.events("decision")[-1]["payload"]
    assert d["outcome"] == "admit" and d["reasons"] == ["gate-manual-open"] and d["credential"]["kind"] == "none"
    wait_until(lambda: levels(g.pin(RELAY)) == [False, True, False])


def test_beam_second_passage_is_a_tailgate_decision(make_gate, world):
    g = make_gate(gpio={"beam": BEAM, "pulse_s": 5.0})
    g.pin(BUTTON).drive_low()           # a manual open admits one person
    g.pin(BUTTON).drive_high()
    wait_until(lambda: g.app.turnstile.credits == 1)
    beam = g.pin(BEAM)
    for _ in range(2):
        beam.drive_low()
        time.sleep(0.08)
        beam.drive_high()
    wait_until(lambda: len(g.events("decision")) == 2)
    tail = g.events("decision")[-1]["payload"]
    assert tail["outcome"] == "deny" and tail["reasons"] == ["gate-tailgate"] and tail["credential"]["kind"] == "none"
    assert g.app.turnstile.passages == 1 and g.app.turnstile.tailgates == 1


# -- crash: the relay ends de-energised --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fail_secure", "fail_safe"])
def test_loop_crash_leaves_relay_de_energised_and_exits_non_zero(make_gate, mode):
    env = {"WATCHDOG_USEC": "400000", "CHECKPOINT_TEST_FAULT": "raise-loop-after:4", "PYTEST_CURRENT_TEST": "x"}
    g = make_gate(gpio={"lock_mode": mode, "pulse_s": 30.0}, env=env)
    g.pin(BUTTON).drive_low()                                    # open: the relay is mid-pulse ...
    g.pin(BUTTON).drive_high()
    wait_until(lambda: g.app.turnstile is None or g.app.turnstile.relay.closed or g.app.turnstile.relay.released)
    g.thread.join(15)                                            # ... when the loop raises
    assert g.exit_code == 70
    energised_level = True                                       # relay_active_high
    assert bool(g.pin(RELAY).state) != energised_level           # de-energised, in both modes
    assert run_marker_path(g.cfg.data_dir).exists()              # unclean: the next start says so


def test_test_fault_ignored_outside_tests():
    from edge.app import TestFault

    assert TestFault.from_env({"CHECKPOINT_TEST_FAULT": "hang-loop-after:2"}) is None
    assert TestFault.from_env({"CHECKPOINT_TEST_FAULT": "hang-loop-after:2", "CHECKPOINT_TESTING": "1"}) == \
        TestFault("hang-loop", 2)
    assert TestFault.from_env({"CHECKPOINT_TEST_FAULT": "explode", "CHECKPOINT_TESTING": "1"}) is None


# -- clock warnings ------------------------------------------------------------------------------------


def test_clock_behind_floor_writes_clock_warning(make_gate):
    g = make_gate(start=False)
    from edge.clock import TrustedClock
    from edge.store.state import StateDB

    with StateDB(g.cfg.data_dir) as state:
        TrustedClock(state).raise_floor(int(time.time() * 1000) + 3_600_000, "test")
    g.app._ntp = lambda: False
    g.start()
    wait_until(lambda: g.events("clock_warning"), timeout=10)
    w = g.events("clock_warning")[-1]["payload"]
    assert w["cause"] == "behind_floor" and w["to"] == "floor"
    assert g.app.status()["clock"]["state"] == "floor"


def test_gate_app_is_a_console_backend(make_gate):
    from edge.console.web import ConsoleBackend

    g = make_gate()
    backend: ConsoleBackend = g.app
    st = backend.status()
    assert set(st) >= {"gate", "mode", "bundle", "clock", "camera", "thermometer", "storage", "upload", "setup"}
    assert json.dumps(st)
    assert isinstance(g.app, GateApp)


def test_gate_status_for_the_agent(make_gate, world):
    from edge.clock import boot_id, boottime_ms
    from sync.agent.gate_status import read_gate_status

    g = make_gate(thermometer=True)
    read = read_gate_status(g.app.state, boot=boot_id(), boottime_ms=boottime_ms())
    assert read.running and read.status.camera.status in ("ok", "no_frames")
    assert read.status.thermometer.status in ("ok", "stale") and read.status.decisions_today == 0
    g.decide("HELLO-STATUS-1")
    g.app._gs_next = 0
    wait_until(lambda: read_gate_status(g.app.state, boot=boot_id(), boottime_ms=boottime_ms())
               .status.decisions_today == 1)


def test_refer_all_when_storage_fails(make_gate, world, monkeypatch):
    g = make_gate(thermometer=True, store={"on_full": "refer_all"})
    monkeypatch.setattr(g.app.store, "append_many", lambda items: (_ for _ in ()).throw(
        StoreUnavailable("database or disk is full (injected)")))
    g.sim.present(34.2, 25.0)
    time.sleep(0.8)
    first = g.decide("HELLO-HELD-1")                         # held in memory: now every admit is referred
    assert first["seq"] is None
    view = g.decide(world.health_code(person(world, "green-staff")))
    g.sim.absent()
    assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "gate-storage-full"
    wait_until(lambda: any("check everyone by hand" in b["en"] for b in g.app.status()["banners"]))
    assert g.app.store.held == 2
    assert [bool(s.state) for s in g.pin(RELAY).states] == [False]


def test_banner_when_a_newer_bundle_does_not_apply(make_gate):
    import json as _json

    g = make_gate()
    g.app.state.kv_set("bundle.pending", _json.dumps({"id": "ab" * 32, "polls": 2, "reason": "bad_signature"}))
    wait_until(lambda: any(b["en"] == "Rules update failed: bad_signature" for b in g.app.status()["banners"]))


def test_restart_replays_last_decisions_and_keeps_the_lockout(make_gate, world, mock_pins):
    from edge.demo import HOST_FIRM, DemoPerson
    from tests.gate.harness import Harness

    g = make_gate()
    g.decide("HELLO-RESTART-1")
    positive = DemoPerson("positive", "阳性", "positive", "陈*", "staff", HOST_FIRM, "red", flags=("positive",),
                          on_roster=False)
    view = g.decide(world.health_code(positive))
    assert g.stop() == 0
    h = Harness(world, None, g.cfg.data_dir, mock_pins)          # the same data directory, a new process
    h.start()
    try:
        views = h.app.recent_views()
        assert [v["seq"] for v in views][-2:] == [view["seq"] - 1, view["seq"]]
        last = views[-1]
        assert last["reasons"][0]["id"] == "positive-case" and "Positive" in last["reasons"][0]["en"]
        assert last["overridable"] is False and views[-2]["reasons"][0]["en"] == "Unknown code: check by hand"
        mark = h.mark()
        h.pin(BUTTON).drive_low()
        h.pin(BUTTON).drive_high()
        h.wait("prompt", mark, kind="override", en="Cannot be overridden")
    finally:
        h.stop()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "oversize"])
def test_hostile_codes_are_referred_or_denied_never_crash(make_gate, world, kind):
    good = world.health_code(person(world, "green-staff"))
    text = {"truncated": good[: len(good) // 2], "garbage": "CK1:%%%%!!!!" + "Z" * 40,
            "oversize": "CK1:" + "A" * 1800}[kind]
    g = make_gate()
    view = g.decide(text)
    assert view["outcome"] in ("refer", "deny")
    assert view["subject"]["name_m"] is None                      # nothing unverified names a person
    assert text not in json.dumps(g.events())                     # the raw text is never stored
    assert g.app.ready.is_set() and g.thread.is_alive()
