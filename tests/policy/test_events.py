"""Decision and alert event payloads (sync.md §1.4-1.5, rules.md §3.5).

The first test reproduces the ``decision`` and ``temp_alert`` payloads of the shared
vectors (``events.json``) through ``decide``; the others check each field's rule and
that every payload fits the canonical profile and the 4096-byte event cap.
"""

from __future__ import annotations

import copy
from typing import Any

from edge.credentials import Verification, code_hash
from edge.policy.engine import DecisionInputs, GateBinding, Temperature, decide
from edge.policy.events import alert_events, alert_payloads, decision_payload, guard_reasons
from sync.canonical import check_profile
from sync.events import build_event, pid
from sync.timefmt import format_ms, parse_ms
from tests.conftest import load_vector
from tests.policy.conftest import DRIVER_SUB, NOW, ROSTER_KEY, STAFF_SUB, World, staff
from tests.policy.test_engine import dcc_claims, fake_verification

PID_KEY = bytes(range(32))


def assert_event_ok(kind: str, payload: dict[str, Any]) -> None:
    check_profile(payload)
    at = {"wall": "2022-05-10T08:00:00.000Z", "clock": "synced", "boot": "0" * 36, "mono_ms": 1}
    build_event(device_id="gate-f0012-s1", seq=1, kind=kind, at=at, payload=payload, prev_hash="0" * 64)


def _verification(claims: dict[str, Any], kid: str) -> Verification:
    checks = dict.fromkeys(
        ("prefix", "base45", "zlib", "cose", "cwt", "kid", "signature", "schema", "not_expired", "valid_from"), True
    )
    return Verification(True, "health", checks, None, claims, kid=kid)


def test_reproduces_the_decision_and_temp_alert_vectors(world: World):
    vec = load_vector("events.json")
    decision_vec = next(e for e in vec["events"] if e["kind"] == "decision")["event"]
    alert_vec = next(e for e in vec["events"] if e["kind"] == "temp_alert")["event"]
    key = bytes.fromhex(vec["pid"]["key_hex"])
    sub = vec["pid"]["id"]
    now = parse_ms(decision_vec["at"]["wall"])
    last_test = now - 1260 * 60_000

    def mutate(parts: dict[str, Any]) -> None:
        parts["roster"]["staff"].append(staff(sub, zones=["A"], last_test=None))

    bundle = world.bundle(mutate=mutate, version=42)
    claims = {"iss": "HA-410400", "sub": sub, "iat": "2022-04-12T00:00:00.000Z", "exp": "2022-04-13T00:00:00.000Z",
              "kid": "0abe3115ee5f59b0", "alg": "EdDSA", "id": "59ed080034398593",
              "revocation_hash": "230648e36de79c4feca5e9ba5c78d69d", "firm": "F0012", "name": "张*三",
              "role": "staff", "colour": "green", "flags": [],
              "last_test": format_ms(last_test)}
    inputs = DecisionInputs(
        now_ms=now, lane="person",
        gate=GateBinding(device_id="gate-fc-0007", venue_id="411322-0031-01", zone="A", door="east", firm_id="F0012"),
        bundle=bundle, freshness="fresh", clock_state="synced",
        credential=_verification(claims, "0abe3115ee5f59b0"),
        temperature=Temperature(3790, now + 15_000, 2), thermometer_status="ok",
    )
    d = decide(inputs)
    assert d.reason_ids == ("fever",)
    payload = decision_payload(d, inputs, pid_key=key, pid_kid=1)
    assert payload == decision_vec["payload"]
    alerts = alert_payloads(d, inputs, 2, pid_key=key, pid_kid=1)
    assert alerts == [("temp_alert", alert_vec["payload"])]
    assert_event_ok("decision", payload)
    assert_event_ok("temp_alert", alerts[0][1])


def test_admit_payload_fields(world: World):
    inputs = world.inputs(credential=world.health())
    d = decide(inputs)
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert p["venue"] == {"venue_id": "V0012-01", "zone": "production", "door": "south-1"}
    assert (p["lane"], p["mode"], p["bundle"], p["outcome"], p["alert"]) == (
        "person", "normal", {"version": 7, "state": "fresh"}, "admit", "none")
    assert p["credential"]["kind"] == "health" and p["credential"]["status"] == "valid"
    assert p["credential"]["kid"] == world.issuer.keyid
    assert p["subject"] == {"pid": pid(PID_KEY, "SUB", STAFF_SUB), "pid_kid": 1, "name_m": "张*三", "role": "staff",
                            "firm_id": "F0012", "whitelisted": True}
    assert p["health"] == {"code": "green", "test_age_min": 1548, "flags": []}
    assert p["temp"] == {"body_centi_c": 3650, "status": "ok"}
    assert p["reasons"] == [] and "pass" not in p
    assert_event_ok("decision", p)
    assert alert_payloads(d, inputs, 9, pid_key=PID_KEY) == []


def test_no_pid_key_no_pid(world: World):
    inputs = world.inputs(credential=world.health())
    p = decision_payload(decide(inputs), inputs, pid_key=None)
    assert p["subject"]["pid"] is None and p["subject"]["pid_kid"] is None


def test_sentinel_and_overdue_go_to_a_sentinel_alert(world: World):
    from tests.policy.conftest import LOGISTICS_SUB

    inputs = world.inputs(credential=world.health(LOGISTICS_SUB, role="logistics",
                                                  flags=["medicine_purchase", "unreported_arrival"]))
    d = decide(inputs)
    assert set(d.reason_ids) == {"nat-window", "sentinel"}
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert p["alert"] == "none"  # both reported by the sentinel_alert
    assert p["health"]["flags"] == ["medicine_purchase", "unreported_arrival"]
    (alert,) = alert_payloads(d, inputs, 11, pid_key=PID_KEY)
    kind, body = alert
    assert kind == "sentinel_alert"
    assert body == {"decision_seq": 11, "flags": ["test_overdue", "unreported_arrival", "medicine_purchase"],
                    "subject": p["subject"], "venue": p["venue"]}
    assert_event_ok(kind, body)


def test_other_alerts_stay_on_the_decision(world: World):
    inputs = world.inputs(credential=world.health(flags=["positive"]))
    d = decide(inputs)
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert (p["outcome"], p["alert"], p["reasons"]) == ("deny", "urgent", ["positive-case"])
    assert alert_payloads(d, inputs, 3, pid_key=PID_KEY) == []
    inputs = world.inputs(credential=world.health(colour="red", flags=["close_contact"]))
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["alert"] == "upstream"


def test_rule_error_raises_upstream(world: World):
    def broken(parts: dict[str, Any]) -> None:
        del parts["settings"]["policy"]["fever_centi_c"]  # cannot load: check it is refused instead

    import pytest

    from edge.policy.errors import RuleSetError

    with pytest.raises(RuleSetError, match="fever_centi_c"):
        world.bundle(mutate=broken)

    from tests.policy.test_engine import BROKEN, _with_rules

    inputs = world.inputs(bundle=_with_rules(world, [BROKEN]), credential=world.health())
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert (p["outcome"], p["alert"], p["reasons"]) == ("refer", "upstream", ["broken-compare:error"])


def test_stage0_payloads(world: World):
    # no bundle
    inputs = world.inputs(bundle=None, credential=world.health())
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["bundle"] == {"version": 0, "state": "expired"} and p["reasons"] == ["pre-no-bundle"]
    assert p["subject"]["pid"] == pid(PID_KEY, "SUB", STAFF_SUB)  # authentic claims still name the person
    assert_event_ok("decision", p)
    # opaque code not on the roster
    inputs = world.inputs(opaque=True, opaque_code_hash=code_hash("NOPE", ROSTER_KEY))
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["credential"] == {"kind": "opaque", "status": "not_found"} and p["subject"]["pid"] is None
    # no code at all
    inputs = world.inputs()
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["credential"] == {"kind": "none", "status": "none"}
    # roster hit
    inputs = world.inputs(opaque=True, opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY))
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["credential"] == {"kind": "roster", "status": "valid"}
    assert p["subject"]["pid"] == pid(PID_KEY, "SUB", STAFF_SUB) and p["subject"]["name_m"] == "张*三"
    assert_event_ok("decision", p)


def test_forged_code_names_nobody(world: World):
    forged = fake_verification("health", {"sub": STAFF_SUB, "name": "张*三", "role": "staff", "firm": "F0012",
                                          "colour": "green", "flags": ["positive"]}, signature=False)
    inputs = world.inputs(credential=forged)
    d = decide(inputs)
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert (p["outcome"], p["alert"], p["reasons"]) == ("deny", "upstream", ["pre-bad-signature"])
    assert p["credential"]["status"] == "bad_signature"
    assert p["subject"] == {"pid": None, "pid_kid": None, "name_m": None, "role": None, "firm_id": None,
                            "whitelisted": None}
    assert p["health"] == {"code": "unknown", "test_age_min": None, "flags": []}


def test_revoked_status(world: World):
    cred = world.health()

    def revoke(parts: dict[str, Any]) -> None:
        parts["revocations"]["entries"].append(
            {"hash": cred.claims["revocation_hash"], "until": "2022-05-11T07:00:00.000Z", "reason": "lost"})

    inputs = world.inputs(bundle=world.bundle(mutate=revoke), credential=cred)
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["credential"]["status"] == "revoked" and p["outcome"] == "deny"


def test_dcc_subject_is_a_keyed_hash_and_a_masked_name(world: World):
    inputs = world.inputs(credential=fake_verification("dcc", dcc_claims()))
    d = decide(inputs)
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert p["credential"]["kind"] == "dcc"
    assert p["subject"]["pid"] == pid(PID_KEY, "DCC", "TESTER/ANNA/1990-01-01")
    assert p["subject"]["name_m"] == "T***** A***"
    assert p["subject"]["role"] == "visitor" and p["health"]["code"] == "unknown"
    text = repr(p)
    assert "Tester" not in text and "1990" not in text and "ANNA" not in text
    assert_event_ok("decision", p)


def test_green_lane_payloads(world: World):
    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics", flags=["itinerary_star"],
                          last_test="2022-05-09T02:00:00.000Z", name="王*")
    pass_ = world.pass_()
    inputs = world.inputs(lane="green_lane", gate=world.green_gate(), credential=pass_, partner=driver,
                          temperature=None, thermometer_status="absent")
    d = decide(inputs)
    p = decision_payload(d, inputs, pid_key=PID_KEY)
    assert p["outcome"] == "admit" and p["credential"]["kind"] == "pass" and p["credential"]["status"] == "valid"
    assert p["pass"] == {"pass_id": "HA2022050800123", "plate": "豫D12345", "status": "valid"}
    assert p["subject"]["pid"] == pid(PID_KEY, "SUB", DRIVER_SUB)
    assert (p["subject"]["firm_id"], p["subject"]["role"], p["subject"]["name_m"]) == ("F0077", "logistics", "王*")
    assert p["temp"] == {"body_centi_c": None, "status": "absent"}
    assert p["venue"] == {"venue_id": "V-G4-0417", "zone": "checkpoint", "door": None}
    assert_event_ok("decision", p)
    # a lone health code at the green lane: no pass
    inputs = world.inputs(lane="green_lane", gate=world.green_gate(), credential=driver, temperature=None)
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["pass"] == {"pass_id": None, "plate": None, "status": "none"} and p["reasons"] == ["pre-unpaired"]
    # a lone pass names the driver it was issued to
    inputs = world.inputs(lane="green_lane", gate=world.green_gate(), credential=pass_, temperature=None)
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert p["subject"]["pid"] == pid(PID_KEY, "SUB", DRIVER_SUB) and p["pass"]["plate"] == "豫D12345"


def test_temperature_status_from_the_thermometer(world: World):
    cred = world.health()
    for status, expect in (("stale", "stale"), ("fault", "fault"), ("absent", "absent"), ("ok", "absent")):
        inputs = world.inputs(credential=cred, temperature=None, thermometer_status=status)
        p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
        assert p["temp"] == {"body_centi_c": None, "status": expect}
    old = world.inputs(credential=cred, temperature=Temperature(3650, NOW - 60_000, 1))
    p = decision_payload(decide(old), old, pid_key=PID_KEY)
    assert p["temp"] == {"body_centi_c": None, "status": "absent"}  # too old for the rules: not used


def test_alert_events_from_a_built_payload(world: World):
    inputs = world.inputs(credential=world.health(), temperature=Temperature(3800, NOW + 10_000, 2))
    d = decide(inputs)
    payload = decision_payload(d, inputs, pid_key=PID_KEY)
    events = alert_events(d, payload, decision_seq=None, policy=inputs.bundle.policy)
    assert [k for k, _ in events] == ["temp_alert"]
    body = events[0][1]
    assert body["decision_seq"] is None and body["body_centi_c"] == 3800 and body["threshold_centi_c"] == 3730
    assert body["observation_point"] == {"zh": "南门临时留观点", "en": "the south-gate observation point"}
    assert_event_ok("temp_alert", body)
    assert guard_reasons(d) == [{"id": "fever", "zh": d.reasons[0].zh, "en": d.reasons[0].en}]


def test_long_values_are_cut_to_the_event_limits(world: World):
    def long_names(parts: dict[str, Any]) -> None:
        parts["roster"]["staff"][0]["name"] = "长*" * 40

    inputs = world.inputs(bundle=world.bundle(mutate=long_names), opaque=True,
                          opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY),
                          gate=GateBinding(device_id="g-1", venue_id="V" * 80, zone="Z" * 80, door="D" * 80))
    p = decision_payload(decide(inputs), inputs, pid_key=PID_KEY)
    assert len(p["subject"]["name_m"]) == 32
    assert all(len(p["venue"][k]) == 32 for k in ("venue_id", "zone", "door"))
    assert_event_ok("decision", copy.deepcopy(p))
