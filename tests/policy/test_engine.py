"""decide(): every stage-0 row, stage 1 combination and reasons, stage 2, digests, purity.

Credentials are minted and verified with the real ``edge.credentials``; the bundle is
an ``InMemoryBundle`` of the shipped default rules (see conftest).
"""

from __future__ import annotations

import base64
import copy
from dataclasses import replace
from typing import Any

import pytest

from edge.credentials import Verification, code_hash
from edge.policy.engine import (
    Decision,
    DecisionInputs,
    GateBinding,
    RuleSet,
    Temperature,
    decide,
    inputs_digest,
    reason_list,
)
from edge.policy.errors import NotJudged
from tests.policy.conftest import (
    DRIVER_SUB,
    LOGISTICS_SUB,
    LOOP_SUB,
    NIGHT_SUB,
    NOW,
    ROSTER_KEY,
    STAFF_SUB,
    VISITOR_SUB,
    World,
    rules_json,
    settings_json,
)

H = 3_600_000


def fake_verification(kind: str, claims: dict[str, Any] | None, **checks: Any) -> Verification:
    """A Verification as edge.credentials builds it, for kinds we cannot mint here (HC1)."""
    base = dict.fromkeys(
        ("prefix", "base45", "zlib", "cose", "cwt", "kid", "signature", "schema", "not_expired", "valid_from"), True
    )
    base.update(checks)
    ok = all(v is True for v in base.values())
    return Verification(ok, kind, base, None if ok else "签名无效 / Invalid signature", claims)


def dcc_claims(**over: Any) -> dict[str, Any]:
    claims = {
        "iss": "DE", "iat": "2022-05-09T07:00:00.000Z", "exp": "2022-06-09T07:00:00.000Z", "kid": "abcd",
        "alg": "ES256", "revocation_hash": "0f" * 16, "key_usage": True, "dcc_type": "t",
        "dcc": {"ver": "1.3.0", "nam": {"fn": "Tester", "fnt": "TESTER", "gn": "Anna", "gnt": "ANNA"},
                "dob": "1990-01-01",
                "t": [{"tg": "840539006", "tt": "LP6464-4", "sc": "2022-05-09T06:12:00Z", "tr": "260415000",
                       "tc": "Testzentrum", "co": "DE", "is": "RKI", "ci": "URN:UVCI:01:DE:TEST#1"}]},
    }
    claims.update(over)
    return claims


# ---------------------------------------------------------------------------- stage 1 basics


def test_green_staff_is_admitted(world: World):
    d = decide(world.inputs(credential=world.health()))
    assert (d.outcome, d.stage, d.failures, d.reasons, d.alert) == ("ADMIT", 1, (), (), "none")
    assert d.kind == "health" and not d.overridable and d.lockout_s == 0
    assert d.rules_digest == "r" * 64 and d.settings_digest == "s" * 64
    assert len(d.inputs_digest) == 64
    f = d.facts
    assert f is not None
    assert (f.subject, f.role, f.firm_id, f.whitelisted, f.colour, f.mode, f.body_centi_c) == (
        STAFF_SUB, "staff", "F0012", True, "green", "normal", 3650)
    assert f.test_age_min == 25 * 60 + 48


def test_roster_code_decides_like_a_health_code(world: World):
    d = decide(world.inputs(opaque=True, opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY)))
    assert (d.outcome, d.kind) == ("ADMIT", "roster")


def test_whitelist_protection_and_meltdown(world: World):
    protected = world.health(colour="yellow", last_test="2022-05-09T22:00:00.000Z")
    assert decide(world.inputs(credential=protected)).outcome == "ADMIT"

    def melt(parts: dict[str, Any]) -> None:
        parts["firms"]["firms"][0].update(whitelisted=False, meltdown=True, meltdown_at="2022-05-10T06:00:00.000Z")

    d = decide(world.inputs(bundle=world.bundle(mutate=melt), credential=protected))
    assert (d.outcome, d.reason_ids) == ("DENY", ("code-colour",))
    assert d.reasons[0].en == "Code not green and whitelist protection does not apply"
    assert d.overridable  # code-colour has override guard

    contact = world.health(colour="red", flags=["close_contact"], last_test="2022-05-09T22:00:00.000Z")
    d = decide(world.inputs(credential=contact))
    # reasons: deny failures by alert (contact-risk upstream before code-colour none)
    assert (d.outcome, d.reason_ids, d.alert) == ("DENY", ("contact-risk", "code-colour"), "upstream")
    assert not d.overridable and d.lockout_s == 60  # contact-risk: override none


def test_logistics_24h_versus_general_48h(world: World):
    staff = world.health()  # tested 25 h 48 min ago: within 48 h
    assert decide(world.inputs(credential=staff)).outcome == "ADMIT"
    logistics = world.health(LOGISTICS_SUB, role="logistics")  # same test time, 24 h window
    d = decide(world.inputs(credential=logistics))
    assert (d.outcome, d.reason_ids, d.alert) == ("DENY", ("nat-window",), "upstream")
    assert d.reasons[0].zh == "核酸检测超时（距上次26小时，限24小时）"
    assert d.reasons[0].en == "Test overdue (26 h since the last one, limit 24 h)"


def test_emergency_mode_admits_only_the_closed_loop_roster(world: World):
    def emergency(parts: dict[str, Any]) -> None:
        parts["mode"]["mode"] = "emergency"

    b = world.bundle(mutate=emergency)
    loop = world.health(LOOP_SUB, role="closed_loop", last_test="2022-05-09T22:00:00.000Z")
    assert decide(world.inputs(bundle=b, credential=loop)).outcome == "ADMIT"
    ordinary = world.health(last_test="2022-05-09T22:00:00.000Z")
    d = decide(world.inputs(bundle=b, credential=ordinary))
    assert (d.outcome, d.reason_ids) == ("DENY", ("emergency-closed-loop",))
    assert d.facts is not None and d.facts.mode == "emergency"
    visitor = world.health(VISITOR_SUB, role="visitor", last_test="2022-05-09T22:00:00.000Z")
    d = decide(world.inputs(bundle=b, credential=visitor))
    assert "emergency-closed-loop" in d.reason_ids and d.outcome == "DENY"


def test_fever_after_remeasure_and_unconfirmed(world: World):
    cred = world.health()
    d = decide(world.inputs(credential=cred, temperature=Temperature(3750, NOW + 20_000, 2)))
    assert (d.outcome, d.reason_ids, d.alert, d.overridable, d.lockout_s) == ("DENY", ("fever",), "urgent", False, 60)
    assert d.reasons[0].zh == "复测体温异常：禁止进入，请到南门临时留观点"
    assert d.reasons[0].en == "Fever on re-measure: no entry. Go to the south-gate observation point"
    d = decide(world.inputs(credential=cred, temperature=Temperature(3750, NOW - 1000, 1)))
    assert (d.outcome, d.reason_ids, d.overridable) == ("REFER", ("fever-unconfirmed",), True)


def test_missing_or_stale_thermometer_refers(world: World):
    cred = world.health()
    d = decide(world.inputs(credential=cred, temperature=None, thermometer_status="fault"))
    assert (d.outcome, d.reason_ids) == ("REFER", ("thermometer",))
    # older than temperature_max_age_s (20 s): treated as no reading
    d = decide(world.inputs(credential=cred, temperature=Temperature(3650, NOW - 21_000, 1)))
    assert (d.outcome, d.reason_ids) == ("REFER", ("thermometer",))
    assert d.facts is not None and d.facts.body_centi_c is None
    d = decide(world.inputs(credential=cred, temperature=Temperature(3650, "2022-05-10T07:59:40.000Z", 1)))
    assert d.outcome == "ADMIT"  # exactly 20 s old is still fresh


def test_unregistered_visitor_is_denied_with_the_prompt(world: World):
    stranger = world.health("00112233445566778899aabbccddeeff", role="visitor")
    d = decide(world.inputs(credential=stranger))
    assert (d.outcome, d.reason_ids) == ("DENY", ("visitor-registration",))
    assert d.reasons[0].zh == "未报备或不在报备时段。请通过“豫事办”向到访单位报备"
    assert d.reasons[0].en == "Not pre-registered for now. Register with the host firm in the Yushiban app"
    assert reason_list(d) == [{"id": "visitor-registration", **d.reasons[0].as_dict()}]


def test_registered_visitor_uses_the_window_containing_now(world: World):
    visitor = world.health(VISITOR_SUB, role="visitor", firm=None)
    d = decide(world.inputs(credential=visitor))
    assert d.outcome == "ADMIT", d.reason_ids  # R-0501 (production, today), not R-OLD (canteen)
    later = decide(world.inputs(credential=visitor, now_ms=NOW + 3 * H,
                                temperature=Temperature(3650, NOW + 3 * H, 1)))  # after R-0501 ended
    assert (later.outcome, later.reason_ids) == ("DENY", ("visitor-registration",))


def test_team_shift_from_the_teams_row(world: World):
    night = world.health(NIGHT_SUB)
    d = decide(world.inputs(credential=night))  # 16:00 local; shift 22:00-06:00
    assert (d.outcome, d.reason_ids) == ("DENY", ("team-shift",))
    ok = decide(world.inputs(credential=night, now_ms=NOW + 7 * H, temperature=Temperature(3650, NOW + 7 * H, 1)))
    assert ok.outcome == "ADMIT"  # 23:00 local


def test_sentinel_flag_refers_with_upstream_alert(world: World):
    d = decide(world.inputs(credential=world.health(flags=["medicine_purchase"])))
    assert (d.outcome, d.reason_ids, d.alert, d.overridable) == ("REFER", ("sentinel",), "upstream", True)


def test_positive_case_is_urgent_and_names_the_observation_point(world: World):
    d = decide(world.inputs(credential=world.health(flags=["positive", "medicine_purchase"])))
    assert d.outcome == "DENY" and d.alert == "urgent"
    assert d.reason_ids == ("positive-case", "sentinel")
    assert d.reasons[0].zh == "阳性标记：禁止进入，请立即到南门临时留观点留观"
    assert not d.overridable and d.lockout_s == 60


def test_clock_states(world: World):
    cred = world.health()
    assert decide(world.inputs(credential=cred, clock_state="floor")).outcome == "ADMIT"

    def strict(parts: dict[str, Any]) -> None:
        parts["settings"]["policy"]["require_trusted_clock"] = True

    d = decide(world.inputs(bundle=world.bundle(mutate=strict), credential=cred, clock_state="untrusted"))
    assert (d.outcome, d.reason_ids) == ("REFER", ("clock-trusted",))


# ---------------------------------------------------------------------------- green lane


def test_truck_pass_green_lane_with_itinerary_star_is_admitted(world: World):
    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics", flags=["itinerary_star"],
                          last_test="2022-05-09T02:00:00.000Z")
    pass_ = world.pass_()
    for first, second in ((pass_, driver), (driver, pass_)):
        d = decide(world.inputs(lane="green_lane", gate=world.green_gate(), credential=first, partner=second,
                                temperature=None))
        assert (d.outcome, d.kind, d.reason_ids) == ("ADMIT", "pass", ())
        assert d.facts is not None and d.facts.firm_id == "F0077" and d.facts.whitelisted is True


def test_green_lane_pass_firm_melted_down_is_denied(world: World):
    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics", last_test="2022-05-09T02:00:00.000Z")
    pass_ = world.pass_(firm="F0099")
    d = decide(world.inputs(lane="green_lane", gate=world.green_gate(), credential=pass_, partner=driver))
    assert (d.outcome, d.reason_ids) == ("DENY", ("green-lane",))
    assert d.reasons[0].zh == "不符合绿色通道条件（通行证/白名单/绿码/行程/48小时核酸）"


def test_green_lane_halves_alone_are_unpaired(world: World):
    gate = world.green_gate()
    pass_ = world.pass_()
    d = decide(world.inputs(lane="green_lane", gate=gate, credential=pass_))
    assert (d.outcome, d.stage, d.reason_ids, d.pairing) == ("REFER", 0, ("pre-unpaired",), ("pass", DRIVER_SUB))
    assert d.reasons[0].en == "Driver's code missing: scan the driver's health code"
    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics")
    d = decide(world.inputs(lane="green_lane", gate=gate, credential=driver))
    assert (d.reason_ids, d.pairing) == (("pre-unpaired",), ("health", DRIVER_SUB))
    assert d.reasons[0].en == "Pass missing: scan the truck's pass"
    # a DCC has no sub: it can never pair, referred at once
    dcc = fake_verification("dcc", dcc_claims())
    d = decide(world.inputs(lane="green_lane", gate=gate, credential=dcc))
    assert (d.reason_ids, d.pairing) == (("pre-unpaired",), None)
    # a pass with someone else's health code
    other = world.health(STAFF_SUB)
    d = decide(world.inputs(lane="green_lane", gate=gate, credential=pass_, partner=other))
    assert d.reason_ids == ("pre-unpaired",) and d.pairing is None
    # an opaque badge at the green lane
    d = decide(world.inputs(lane="green_lane", gate=gate, opaque=True,
                            opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY)))
    assert d.reason_ids == ("pre-unpaired",)


# ---------------------------------------------------------------------------- stage 0 rows


def test_stage0_no_bundle(world: World):
    cred = world.health()
    for inputs in (world.inputs(bundle=None, credential=cred), world.inputs(credential=cred, freshness="none")):
        d = decide(inputs)
        assert (d.outcome, d.stage, d.reason_ids, d.overridable) == ("REFER", 0, ("pre-no-bundle",), True)
        assert d.reasons[0].zh == "无规则，请人工核验"


def test_stage0_unknown_code(world: World):
    for inputs in (
        world.inputs(opaque=True, opaque_code_hash=code_hash("NOT-ON-ROSTER", ROSTER_KEY)),
        world.inputs(opaque=True, opaque_code_hash=None),
        world.inputs(),
    ):
        d = decide(inputs)
        assert (d.outcome, d.reason_ids) == ("REFER", ("pre-unknown-code",))


def test_stage0_bad_signature_denies_with_upstream_alert(world: World):
    text = world.mint("health", {"iss": "HA", "sub": STAFF_SUB, "name": "张*三", "role": "staff", "colour": "green"},
                      key=world.other)
    # a trust entry with the other key's kid but the issuer's public key: kid found, signature fails
    forged_trust = {"keys": [{"kid": base64.b64encode(bytes.fromhex(world.other.keyid)).decode(),
                              "public_key": base64.b64encode(world.issuer.spki_der()).decode()}]}
    v = world.verify(text, trust=forged_trust)
    assert v.checks["signature"] is False
    d = decide(world.inputs(credential=v))
    assert (d.outcome, d.stage, d.reason_ids, d.alert, d.overridable) == ("DENY", 0, ("pre-bad-signature",), "upstream", False)
    assert (d.reasons[0].zh, d.reasons[0].en) == ("签名无效", "Invalid signature")


def test_stage0_revoked(world: World):
    cred = world.health()

    def revoke(parts: dict[str, Any]) -> None:
        parts["revocations"]["entries"].append(
            {"hash": cred.claims["revocation_hash"], "until": "2022-05-11T07:00:00.000Z", "reason": "lost"})

    d = decide(world.inputs(bundle=world.bundle(mutate=revoke), credential=cred))
    assert (d.outcome, d.reason_ids, d.overridable) == ("DENY", ("pre-revoked",), False)
    assert d.reasons[0].en == "Credential revoked"


def test_stage0_revoked_pass_half(world: World):
    pass_ = world.pass_()
    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics")

    def revoke(parts: dict[str, Any]) -> None:
        parts["revocations"]["entries"].append(
            {"hash": pass_.claims["revocation_hash"], "until": "2022-05-16T00:00:00.000Z", "reason": "fraud"})

    d = decide(world.inputs(bundle=world.bundle(mutate=revoke), lane="green_lane", gate=world.green_gate(),
                            credential=driver, partner=pass_))
    assert d.reason_ids == ("pre-revoked",)


def test_stage0_expired(world: World):
    text = world.mint("health", {"iss": "HA", "sub": STAFF_SUB, "name": "张*三", "role": "staff", "colour": "green"},
                      now_ms=NOW - 30 * H, expires_in_s=3600)
    v = world.verify(text)
    assert v.checks["not_expired"] is False
    d = decide(world.inputs(credential=v))
    assert (d.outcome, d.reason_ids) == ("DENY", ("pre-expired",))
    assert d.reasons[0].zh == "凭证已过期，请刷新后重扫"


def test_stage0_dcc_key_usage(world: World):
    d = decide(world.inputs(credential=fake_verification("dcc", dcc_claims(key_usage=False))))
    assert (d.outcome, d.reason_ids) == ("DENY", ("pre-dcc-key-usage",))
    d = decide(world.inputs(credential=fake_verification("dcc", dcc_claims(key_usage=None))))
    assert (d.outcome, d.reason_ids) == ("REFER", ("pre-unverified",))


def test_stage0_unverified_unknown_issuer(world: World):
    v = world.verify(world.mint("health", {"iss": "HA", "sub": STAFF_SUB, "name": "张*三", "role": "staff",
                                            "colour": "green"}), trust={"keys": []})
    assert v.checks["kid"] is False and v.checks["signature"] is None
    d = decide(world.inputs(credential=v))
    assert (d.outcome, d.reason_ids, d.overridable) == ("REFER", ("pre-unverified",), True)
    assert d.reasons[0].en == "Unknown or unauthorised issuer"


def test_stage0_unreadable_and_garbage_verifications(world: World):
    from edge.credentials import verify
    from sync.timefmt import from_ms

    for text in ("CK1:!!!", "CK1:", "HC1:" + "A" * 100, "CK1:" + "0" * 9000):
        v = verify(text, world.trust, from_ms(NOW))
        d = decide(world.inputs(credential=v))
        assert d.outcome == "REFER" and d.reason_ids == ("pre-unverified",), text[:10]

    class Odd:
        ok = True
        kind = "health"
        checks = "not a dict"
        error = 42
        claims = ["not", "a", "dict"]

    d = decide(world.inputs(credential=Odd()))
    assert d.reason_ids == ("pre-unverified",)
    assert d.reasons[0].en == "Credential not verified: check by hand"
    d = decide(world.inputs(credential=object()))
    assert d.reason_ids == ("pre-unverified",)


def test_stage0_venue_and_material_are_not_judged(world: World):
    venue = world.verify(world.mint("venue", {"iss": "F0012", "venue_id": "V0012-01", "venue_name": "南门",
                                              "zone": "production", "firm": "F0012"}))
    assert venue.ok and venue.kind == "venue"
    with pytest.raises(NotJudged) as info:
        decide(world.inputs(credential=venue))
    assert info.value.kind == "venue" and isinstance(info.value, ValueError)


def test_stage0_pass_at_person_gate(world: World):
    d = decide(world.inputs(credential=world.pass_()))
    assert (d.outcome, d.reason_ids, d.kind) == ("REFER", ("pre-pass-at-person-gate",), "pass")
    assert d.reasons[0].zh == "通行证请在绿色通道核验"


def test_stage0_no_rule(world: World):
    only_green = [r for r in rules_json() if r["id"] == "green-lane"]

    def mutate(parts: dict[str, Any]) -> None:
        parts["rules"]["rules"] = only_green

    d = decide(world.inputs(bundle=world.bundle(mutate=mutate), credential=world.health()))
    assert (d.outcome, d.stage, d.reason_ids) == ("REFER", 0, ("pre-no-rule",))

    def windowed(parts: dict[str, Any]) -> None:
        rules = rules_json()
        for r in rules:
            r["valid_from"] = "2022-06-01T00:00:00.000Z"  # pre-announced, not yet in force
        parts["rules"]["rules"] = rules

    d = decide(world.inputs(bundle=world.bundle(mutate=windowed), credential=world.health()))
    assert d.reason_ids == ("pre-no-rule",)


def test_stage0_row_order_signature_before_revocation(world: World):
    bad = fake_verification("health", {"revocation_hash": "ab" * 16, "sub": STAFF_SUB}, signature=False)

    def revoke(parts: dict[str, Any]) -> None:
        parts["revocations"]["entries"].append({"hash": "ab" * 16, "until": "2022-06-01T00:00:00.000Z", "reason": "lost"})

    d = decide(world.inputs(bundle=world.bundle(mutate=revoke), credential=bad))
    assert d.reason_ids == ("pre-bad-signature",)


# ---------------------------------------------------------------------------- DCC


def test_dcc_test_certificate_is_referred_by_code_known_only(world: World):
    d = decide(world.inputs(credential=fake_verification("dcc", dcc_claims())))
    assert (d.outcome, d.kind, d.reason_ids) == ("REFER", "dcc", ("code-known",))
    assert d.facts is not None and d.facts.subject is None and d.facts.role == "visitor"


def test_dcc_without_negative_naat_has_no_test(world: World):
    claims = dcc_claims()
    claims["dcc"] = copy.deepcopy(claims["dcc"])
    claims["dcc"]["t"][0]["tt"] = "LP217198-3"  # rapid antigen: not a NAAT
    d = decide(world.inputs(credential=fake_verification("dcc", claims)))
    assert set(d.reason_ids) == {"code-known", "nat-record"}


# ---------------------------------------------------------------------------- stage 2


def test_stage2_expired_bundle_keeps_only_roster_health_admits(world: World):
    staff = world.health()
    d = decide(world.inputs(credential=staff, freshness="expired"))
    assert (d.outcome, d.stage) == ("ADMIT", 1)
    visitor = world.health(VISITOR_SUB, role="visitor", firm=None)
    d = decide(world.inputs(credential=visitor, freshness="expired"))
    assert (d.outcome, d.stage, d.reason_ids, d.overridable) == ("REFER", 2, ("pre-bundle-expired",), True)
    assert d.reasons[0].zh == "规则已过期，请人工核验"
    roster = decide(world.inputs(opaque=True, opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY), freshness="expired"))
    assert (roster.outcome, roster.reason_ids) == ("REFER", ("pre-bundle-expired",))
    deny = decide(world.inputs(credential=world.health(flags=["positive"]), freshness="expired"))
    assert (deny.outcome, deny.stage) == ("DENY", 1)
    stale = decide(world.inputs(credential=visitor, freshness="stale"))
    assert stale.outcome == "ADMIT"


# ---------------------------------------------------------------------------- errors, ordering


def _with_rules(world: World, extra: list[dict[str, Any]]) -> Any:
    def mutate(parts: dict[str, Any]) -> None:
        parts["rules"]["rules"] = rules_json() + extra

    return world.bundle(mutate=mutate)


BROKEN = {
    "id": "broken-compare", "version": "1.0.0",
    "description": {"zh": "坏规则", "en": "A broken rule"},
    "applies_to": {"kinds": ["health"], "lanes": ["person"]},
    "outcome": "deny", "alert": "none", "override": "guard",
    "logic": {"<": [{"var": "payload.colour"}, 3]},
}


def test_rule_error_refers_never_admits(world: World):
    d = decide(world.inputs(bundle=_with_rules(world, [BROKEN]), credential=world.health()))
    assert (d.outcome, d.reason_ids, d.alert, d.overridable) == ("REFER", ("broken-compare:error",), "upstream", True)
    assert d.reasons[0].zh == "规则执行错误，请人工核验（broken-compare）"
    assert d.reasons[0].en == "Rule error: check by hand (broken-compare)"
    (failure,) = d.failures
    assert failure.outcome == "error" and failure.rule == "broken-compare" and "integers" in failure.detail


def test_a_non_boolean_result_is_an_error(world: World):
    rule = {**BROKEN, "id": "returns-string", "logic": {"var": "payload.colour"}}
    d = decide(world.inputs(bundle=_with_rules(world, [rule]), credential=world.health()))
    assert d.reason_ids == ("returns-string:error",) and "not a boolean" in d.failures[0].detail


def test_reason_order_deny_then_refer_then_errors(world: World):
    urgent_refer = {**BROKEN, "id": "urgent-refer", "outcome": "refer", "alert": "urgent",
                    "logic": {"===": [{"var": "payload.colour"}, "green"]}}
    cred = world.health(colour="yellow", flags=["medicine_purchase", "close_contact"])
    d = decide(world.inputs(bundle=_with_rules(world, [BROKEN, urgent_refer]), credential=cred))
    assert d.outcome == "DENY" and d.alert == "urgent"
    assert d.reason_ids == ("contact-risk", "code-colour", "urgent-refer", "sentinel", "broken-compare:error")
    assert [f.outcome for f in d.failures] == ["deny", "deny", "refer", "refer", "error"]


def test_placeholders_render_string_int_or_question_mark(world: World):
    rule = {**BROKEN, "id": "placeholders", "logic": False,
            "reason": {"zh": "{{external.gate.zone}}|{{external.derived.test_age_h}}|{{external.firm}}|{{nope.x}}|{{}}",
                       "en": "{{payload.flags}} {{external.clock.trusted}} {x} {{payload.subject}}"}}
    rule["logic"] = {"!": [True]}
    d = decide(world.inputs(bundle=_with_rules(world, [rule]), credential=world.health()))
    assert d.reasons[0].zh == "production|26|?|?|?"
    assert d.reasons[0].en == f"? ? {{x}} {STAFF_SUB}"


def test_rule_valid_window(world: World):
    rule = {**BROKEN, "id": "from-june", "logic": {"!": [True]}, "valid_from": "2022-06-01T00:00:00.000Z"}
    b = _with_rules(world, [rule])
    assert decide(world.inputs(bundle=b, credential=world.health())).outcome == "ADMIT"
    later = NOW + 30 * 24 * H
    cred = world.verify(world.mint("health", {"iss": "HA", "sub": STAFF_SUB, "name": "张*三", "role": "staff",
                                              "colour": "green", "last_test": "2022-06-09T00:00:00.000Z"},
                                   now_ms=later - H), at_ms=later)
    d = decide(world.inputs(bundle=b, credential=cred, now_ms=later, temperature=Temperature(3650, later, 1)))
    assert d.reason_ids == ("from-june",)
    rule_until = {**BROKEN, "id": "until-now", "logic": {"!": [True]}, "valid_until": "2022-05-10T08:00:00.000Z"}
    d = decide(world.inputs(bundle=_with_rules(world, [rule_until]), credential=world.health()))
    assert d.outcome == "ADMIT"  # valid_until is exclusive


# ---------------------------------------------------------------------------- digests, purity, timing


def test_inputs_digest_covers_inputs_not_settings(world: World):
    cred = world.health()
    a = decide(world.inputs(credential=cred))
    b = decide(world.inputs(credential=cred))
    assert a.inputs_digest == b.inputs_digest
    c = decide(world.inputs(credential=cred, temperature=Temperature(3660, NOW - 2000, 1)))
    assert c.inputs_digest != a.inputs_digest

    def other_hint(parts: dict[str, Any]) -> None:
        parts["settings"]["policy"]["register_hint"] = {"zh": "另一个", "en": "another"}

    e = decide(world.inputs(bundle=world.bundle(mutate=other_hint), credential=cred))
    assert e.inputs_digest == a.inputs_digest  # settings are fixed per bundle: their digest is settings_digest


def test_inputs_digest_matches_the_spec_serialisation():
    import hashlib
    import json

    data = {"payload": {"b": 1.5, "a": "é"}, "external": {"settings": {"x": 1}, "now": "t"}}
    expected = hashlib.sha256(
        json.dumps({"payload": {"b": 1.5, "a": "é"}, "external": {"now": "t"}}, ensure_ascii=False,
                   sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert inputs_digest(data) == expected


def test_decide_does_not_touch_the_bundle(world: World):
    b = world.bundle()
    before = copy.deepcopy((b.person_by_sub(STAFF_SUB), b.firm("F0012"), b.policy, b.visitors(VISITOR_SUB, "F0012")))
    for cred in (world.health(), world.health(VISITOR_SUB, role="visitor"), world.health(colour="red")):
        decide(world.inputs(bundle=b, credential=cred))
    after = (b.person_by_sub(STAFF_SUB), b.firm("F0012"), b.policy, b.visitors(VISITOR_SUB, "F0012"))
    assert before == after


def test_elapsed_from_the_injected_timer(world: World):
    ticks = iter([1_000_000, 1_250_000])
    d = decide(world.inputs(credential=world.health()), timer=lambda: next(ticks))
    assert d.elapsed_us == 250
    assert decide(world.inputs(credential=world.health())).elapsed_us == 0


def test_decision_is_frozen_and_reasons_index_like_dicts(world: World):
    d = decide(world.inputs(credential=world.health(flags=["medicine_purchase"])))
    assert isinstance(d, Decision)
    with pytest.raises(AttributeError):
        d.outcome = "ADMIT"  # type: ignore[misc]
    assert d.reasons[0]["zh"] == d.reasons[0].zh
    with pytest.raises(KeyError):
        d.reasons[0]["fr"]


def test_inputs_are_validated(world: World):
    with pytest.raises(ValueError, match="lane"):
        world.inputs(lane="truck")
    with pytest.raises(ValueError, match="freshness"):
        world.inputs(freshness="old")
    with pytest.raises(ValueError, match="clock_state"):
        world.inputs(clock_state="ok")
    with pytest.raises(ValueError, match="now_ms"):
        world.inputs(now_ms="2022")
    with pytest.raises(ValueError, match="time zone"):
        GateBinding(device_id="g", venue_id="v", zone="z", tz="Mars/Olympus")
    with pytest.raises(ValueError):
        Temperature(36.5, NOW, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Temperature(3650, NOW, 3)
    with pytest.raises(ValueError):
        Temperature(3650, "yesterday", 1)


def test_logistics_roster_role_wins_over_credential(world: World):
    cred = world.health(LOGISTICS_SUB, role="staff")  # the code says staff; the firm's roster says logistics
    d = decide(world.inputs(credential=cred))
    assert d.reason_ids == ("nat-window",) and d.facts is not None and d.facts.role == "logistics"


def test_ruleset_selection_and_lookup():
    rs = RuleSet.from_parts(rules_json(), settings_json()["policy"])
    assert len(rs) == 17 and rs.get("fever") is not None and rs.get("nope") is None
    ids = [r.id for r in rs.select("pass", "green_lane", NOW)]
    assert ids == ["positive-case", "contact-risk", "sentinel", "green-lane", "clock-trusted"]
    assert "visitor-registration" not in [r.id for r in rs.select("dcc", "person", NOW)]
    assert rs.select("venue", "person", NOW) == ()


def test_decision_replace_keeps_types(world: World):
    d = decide(world.inputs(credential=world.health()))
    assert replace(d, elapsed_us=5).elapsed_us == 5


def test_inputs_are_a_frozen_dataclass(world: World):
    inputs = world.inputs(credential=world.health())
    assert isinstance(inputs, DecisionInputs)
    with pytest.raises(AttributeError):
        inputs.lane = "green_lane"  # type: ignore[misc]


def _walk_dicts(value: Any, path: str = "") -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    if isinstance(value, dict):
        out.append((path, list(value)))
        for k, v in value.items():
            if path + "." + k not in (".external.settings", ".payload.dcc"):
                out += _walk_dicts(v, path + "." + k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _walk_dicts(v, f"{path}.{i}")
    return out


def test_built_data_is_key_sorted_and_the_fast_digest_equals_the_spec_digest(world: World):
    from edge.policy.engine import _digest_of_built_data, evaluation_data

    driver = world.health(DRIVER_SUB, firm="F0077", role="logistics", last_test="2022-05-09T02:00:00.000Z")
    scans = [
        world.inputs(credential=world.health()),
        world.inputs(credential=world.health(VISITOR_SUB, role="visitor", firm=None)),
        world.inputs(credential=world.health(NIGHT_SUB), temperature=None),
        world.inputs(credential=world.health(LOOP_SUB, role="closed_loop"), temperature=Temperature(3800, NOW, 2)),
        world.inputs(opaque=True, opaque_code_hash=code_hash("EMP-004211", ROSTER_KEY)),
        world.inputs(lane="green_lane", gate=world.green_gate(), credential=world.pass_(), partner=driver),
        world.inputs(credential=fake_verification("dcc", dcc_claims())),
    ]
    for inputs in scans:
        data = evaluation_data(inputs)
        assert data is not None
        for path, keys in _walk_dicts(data):
            assert keys == sorted(keys), path
        assert _digest_of_built_data(data) == inputs_digest(data)
        assert decide(inputs).inputs_digest == inputs_digest(data)
    assert evaluation_data(world.inputs(bundle=None, credential=world.health())) is None
