"""Load-time checks (rules.md §2.1, §2.3) and the in-memory BundleView.

Each bad rule or setting is refused with a ``RuleSetError`` whose message names the
rule id and the field (the bundle code reports it as ``part_invalid``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edge.errors import EdgeError
from edge.policy.bundle_view import BundleView, InMemoryBundle
from edge.policy.engine import RuleSet
from edge.policy.errors import BundleDataError, RuleSetError
from edge.policy.settings import POLICY_KEYS, check_policy, check_settings
from tests.conftest import load_vector, vectors_path
from tests.policy.conftest import STAFF_SUB, World, rules_json, settings_json

POLICY = settings_json()["policy"]
GOOD = {
    "id": "custom-rule", "version": "1.2.3",
    "description": {"zh": "自定义", "en": "Custom"},
    "applies_to": {"kinds": ["health"], "lanes": ["person"]},
    "outcome": "refer",
    "logic": {"===": [{"var": "payload.colour"}, "green"]},
}


def load(*rules: dict[str, Any], policy: Any = None) -> RuleSet:
    return RuleSet.from_parts(list(rules), POLICY if policy is None else policy)


def test_default_rules_load():
    rs = RuleSet.from_parts(rules_json(), POLICY)
    assert [r.id for r in rs] == [
        "positive-case", "contact-risk", "code-known", "code-colour", "nat-record", "role-window", "nat-window",
        "fever", "fever-unconfirmed", "thermometer", "visitor-registration", "zone", "team-shift",
        "emergency-closed-loop", "sentinel", "green-lane", "clock-trusted"]
    assert all(r.version == "1.0.0" for r in rs)
    table = {r.id: (r.outcome, r.alert, r.override) for r in rs}
    assert table["positive-case"] == ("deny", "urgent", "none")
    assert table["contact-risk"] == ("deny", "upstream", "none")
    assert table["fever"] == ("deny", "urgent", "none")
    assert table["nat-window"] == ("deny", "upstream", "guard")
    assert table["sentinel"] == ("refer", "upstream", "guard")
    assert {i for i, (o, _a, _v) in table.items() if o == "refer"} == {
        "code-known", "nat-record", "role-window", "fever-unconfirmed", "thermometer", "sentinel", "clock-trusted"}


def test_defaults_apply_when_optional_fields_are_absent():
    (rule,) = load(GOOD)
    assert (rule.alert, rule.override, rule.reason) == ("none", "guard", rule.description)
    assert rule.valid_from_ms is None and rule.valid_until_ms is None


BAD_RULES = [
    ({**GOOD, "id": "Custom"}, "field id"),
    ({**GOOD, "id": "x"}, "field id"),
    ({**GOOD, "id": "a" * 49}, "field id"),
    ({**GOOD, "id": 7}, "field id"),
    ({**GOOD, "id": "pre-check"}, "reserved"),
    ({**GOOD, "id": "gate-open"}, "reserved"),
    ({**GOOD, "colour": "x"}, "field colour: unknown field"),
    ({k: v for k, v in GOOD.items() if k != "version"}, "field version: missing"),
    ({k: v for k, v in GOOD.items() if k != "logic"}, "field logic: missing"),
    ({k: v for k, v in GOOD.items() if k != "applies_to"}, "field applies_to: missing"),
    ({**GOOD, "version": "1.0"}, "field version"),
    ({**GOOD, "version": "01.0.0"}, "field version"),
    ({**GOOD, "description": "text"}, "field description"),
    ({**GOOD, "description": {"zh": "x"}}, "field description"),
    ({**GOOD, "description": {"zh": "x", "en": ""}}, "field description.en"),
    ({**GOOD, "reason": {"zh": "x", "en": "y", "fr": "z"}}, "field reason"),
    ({**GOOD, "applies_to": {"kinds": ["health"]}}, "field applies_to"),
    ({**GOOD, "applies_to": {"kinds": [], "lanes": ["person"]}}, "field applies_to.kinds"),
    ({**GOOD, "applies_to": {"kinds": ["venue"], "lanes": ["person"]}}, "field applies_to.kinds"),
    ({**GOOD, "applies_to": {"kinds": ["health"], "lanes": ["truck"]}}, "field applies_to.lanes"),
    ({**GOOD, "outcome": "admit"}, "field outcome"),
    ({**GOOD, "alert": "loud"}, "field alert"),
    ({**GOOD, "override": "admin"}, "field override"),
    ({**GOOD, "valid_from": "2022-05-10"}, "field valid_from"),
    ({**GOOD, "valid_until": "2022-05-10T00:00:00Z"}, "field valid_until"),
    ({**GOOD, "valid_from": "2022-05-10T00:00:00.000Z", "valid_until": "2022-05-09T00:00:00.000Z"}, "field valid_until"),
    ({**GOOD, "logic": True}, "field logic"),
    ({**GOOD, "logic": [{"var": "payload.colour"}]}, "field logic"),
    ({**GOOD, "logic": {"or": [True, False]}}, 'unrecognised operator: "or"'),
    ({**GOOD, "logic": {"if": [True, 1]}}, "takes 3 operands"),
    ({**GOOD, "logic": {"plusTime": [{"var": "external.now"}, {"var": "x"}, "day"]}}, "amount"),
    ({**GOOD, "logic": {"var": "colour"}}, "must start with payload. or external."),
    ({**GOOD, "logic": {"var": ""}}, "must start with payload. or external."),
    ({**GOOD, "logic": {"var": "payload"}}, "must start with payload. or external."),
    ({**GOOD, "logic": {"var": "payload.colour.x"}}, "has no fields"),
    ({**GOOD, "logic": {"var": "payload.name"}}, "no field payload.name"),
    ({**GOOD, "logic": {"var": "external.person.name"}}, "no field external.person.name"),
    ({**GOOD, "logic": {"var": "external.person.zones.x"}}, "list of strings"),
    ({**GOOD, "logic": {"var": "external.settings.no_such_key"}}, "not in the settings part"),
    ({**GOOD, "logic": {"var": "external.settings.test_window_h.normal.intern"}}, "not in the settings part"),
    ({**GOOD, "logic": {"var": "external.derived.age"}}, "no field external.derived.age"),
    ({**GOOD, "logic": {"reduce": [{"var": "payload.flags"}, {"var": "payload.colour"}, False]}}, "inside a reduce lambda"),
    ({**GOOD, "logic": {"reduce": [{"var": "accumulator"}, True, False]}}, "must start with payload."),
]


@pytest.mark.parametrize(("rule", "fragment"), BAD_RULES, ids=lambda x: str(x)[:60])
def test_bad_rule_is_refused_naming_rule_and_field(rule, fragment):
    with pytest.raises(RuleSetError) as info:
        load(GOOD | {"id": "first-ok"}, rule)
    msg = str(info.value)
    assert fragment in msg
    assert msg.startswith("rule ")
    assert isinstance(info.value, EdgeError) and isinstance(info.value, ValueError)


GOOD_PATHS = [
    "payload.dcc.v.0.dt",
    "payload.dcc.anything.at.all",
    "payload.flags.0",
    "payload.pass.nbf",
    "external.person.shift.start_min",
    "external.settings.test_window_h.normal.staff",
    "external.settings.override_reasons.0.code",
    "external.settings.observation_point.zh",
    "external.person",
    "external.settings",
    "external.preregistration.zones.3",
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_allowed_paths(path):
    load({**GOOD, "logic": {"!": [{"var": path}]}})


def test_lambda_paths_and_nested_reduce():
    logic = {"reduce": [
        {"var": "payload.flags"},
        {"if": [{"var": "accumulator"}, True,
                {"reduce": [{"var": "current.items"}, {"var": "current"}, {"var": "accumulator"}]}]},
        False,
    ]}
    load({**GOOD, "logic": logic})


def test_duplicate_ids_and_shapes():
    with pytest.raises(RuleSetError, match="rule custom-rule field id: duplicate id"):
        load(GOOD, GOOD)
    with pytest.raises(RuleSetError, match="array"):
        RuleSet.from_parts({"rules": []}, POLICY)
    with pytest.raises(RuleSetError, match="rule #2: must be an object"):
        load(GOOD, "text")  # type: ignore[arg-type]
    assert len(RuleSet.from_parts([], POLICY)) == 0


def test_deep_and_huge_rule_sets():
    deep: Any = True
    for _ in range(200):
        deep = {"!": [deep]}
    with pytest.raises(RuleSetError, match="deeper than 128"):
        load({**GOOD, "logic": deep})
    many = [{**GOOD, "id": f"rule-{i}"} for i in range(3000)]
    assert len(RuleSet.from_parts(many, POLICY)) == 3000


# ---------------------------------------------------------------------------- settings


def test_default_settings_match_the_spec_and_the_bundle_vector():
    settings = settings_json()
    check_settings(settings)
    assert settings["part"] == "settings" and settings["schema"] == 1
    assert set(POLICY_KEYS) <= set(settings["policy"])
    vector_part = load_vector("bundles", "parts", "d1b431c3aee36f226138ebd08e94bf87cfb9f997f8dd984145ee12461b44e511")
    assert vector_part["policy"] == settings["policy"]
    assert vector_part["freshness"] == settings["freshness"] and vector_part["clock"] == settings["clock"]


def _policy(**changes: Any) -> dict[str, Any]:
    p = copy.deepcopy(POLICY)
    for key, value in changes.items():
        if value is KeyError:
            del p[key]
        else:
            p[key] = value
    return p


BAD_POLICIES = [
    (_policy(fever_centi_c=KeyError), "policy.fever_centi_c: missing"),
    (_policy(fever_centi_c=373), "policy.fever_centi_c"),
    (_policy(fever_centi_c=37.3), "policy.fever_centi_c"),
    (_policy(fever_centi_c=True), "policy.fever_centi_c"),
    (_policy(protected_window_h=0), "policy.protected_window_h"),
    (_policy(green_lane_window_h=721), "policy.green_lane_window_h"),
    (_policy(test_window_h={"normal": {"staff": 48}}), "test_window_h.emergency: missing"),
    (_policy(test_window_h={"normal": {"staff": 0}, "emergency": {"staff": 24}}), "test_window_h.normal.staff"),
    (_policy(test_window_h={"normal": {"Staff": 4}, "emergency": {}}), "must match"),
    (_policy(test_window_h=[]), "test_window_h"),
    (_policy(temperature_required="yes"), "temperature_required"),
    (_policy(require_trusted_clock=0), "require_trusted_clock"),
    (_policy(shift_zones="production"), "shift_zones"),
    (_policy(shift_zones=[""]), "shift_zones"),
    (_policy(shift_grace_min=-1), "shift_grace_min"),
    (_policy(observation_point="south gate"), "observation_point"),
    (_policy(register_hint={"zh": "x", "en": ""}), "register_hint.en"),
    (_policy(temperature_max_age_s=0), "temperature_max_age_s"),
    (_policy(remeasure_wait_s=10_000), "remeasure_wait_s"),
    (_policy(pair_window_s=None), "pair_window_s"),
    (_policy(override_reasons=[]), "override_reasons"),
    (_policy(override_reasons=[{"code": "Bad Code", "zh": "x", "en": "y"}]), "override_reasons.0.code"),
    (_policy(override_reasons=[{"code": "a", "zh": "x", "en": "y"}, {"code": "a", "zh": "x", "en": "y"}]), "duplicate"),
    (_policy(override_reasons=[{"code": "a", "zh": "x"}]), "override_reasons.0"),
    ("not an object", "must be an object"),
]


@pytest.mark.parametrize(("policy", "fragment"), BAD_POLICIES, ids=lambda x: str(x)[:50])
def test_bad_policy_is_refused(policy, fragment):
    with pytest.raises(RuleSetError, match=None) as info:
        check_policy(policy)
    assert fragment in str(info.value)
    with pytest.raises(RuleSetError):
        RuleSet.from_parts([GOOD], policy)


def test_unknown_policy_keys_are_allowed_and_readable_by_rules():
    policy = _policy(night_curfew_min=1320)
    load({**GOOD, "logic": {"<": [{"var": "external.settings.night_curfew_min"}, 1440]}}, policy=policy)


def test_settings_sections():
    good = settings_json()
    for path, value, fragment in (
        (("freshness", "stale_after_s"), 0, "stale_after_s"),
        (("freshness", "expires_after_s"), 3600, "expires_after_s"),
        (("clock", "skew_warn_s"), "120", "skew_warn_s"),
    ):
        bad = copy.deepcopy(good)
        bad[path[0]][path[1]] = value
        with pytest.raises(RuleSetError, match=fragment):
            check_settings(bad)
    with pytest.raises(RuleSetError, match="clock"):
        check_settings({k: v for k, v in good.items() if k != "clock"})


# ---------------------------------------------------------------------------- bundle view


def test_in_memory_bundle_lookups(world: World):
    b = world.bundle()
    assert isinstance(b, BundleView)
    assert b.version == 7 and b.rules_digest == "r" * 64 and len(b.rules) == 17
    assert b.policy is b.settings["policy"] and b.mode["mode"] == "normal"
    assert b.roster_key == bytes(range(32))
    assert b.person_by_sub(STAFF_SUB)["role"] == "staff"
    assert b.person_by_sub("0" * 32) is None
    assert b.team("F0012", "A")["start_min"] == 480 and b.team("F0012", "Z") is None
    assert b.firm("F0012")["whitelisted"] is True and b.firm("nope") is None
    assert [v["ref"] for v in b.visitors("1f2e3d4c5b6a79880f1e2d3c4b5a6978", "F0012")] == ["R-OLD", "R-0501"]
    assert b.visitors("1f2e3d4c5b6a79880f1e2d3c4b5a6978", "F0077") == []
    assert not b.is_revoked("00" * 16)
    assert len(b.trust.entries) == 1  # an edge.credentials.Trust


def test_bundle_vector_parts_load():
    """The bundle helper's test vector parts (manifest-2: emergency, meltdown, a revocation) load here too."""
    root = vectors_path("bundles")
    manifest = json.loads((root / "docs" / "manifest-2.json").read_text(encoding="utf-8"))
    signed = manifest["signed"]
    parts = {name: json.loads((root / "parts" / e["sha256"]).read_bytes()) for name, e in signed["parts"].items()}
    digests = {name: e["sha256"] for name, e in signed["parts"].items()}
    b = InMemoryBundle.from_parts(parts, version=signed["version"], rules_digest=digests["rules"],
                                  settings_digest=digests["settings"])
    assert b.mode["mode"] == "emergency"
    assert b.firm("F002")["meltdown"] is True
    assert b.is_revoked("7649b8b3c6c3ea11dde085befa44ca05")
    assert b.person_by_code("f51561d9e613952d5c935ba036e86f47")["sub"] == "d496589655ceadf9c3c61da4abc63fc2"
    assert b.team("F001", "B")["start_min"] == 1320


def _parts(world: World) -> dict[str, Any]:
    return copy.deepcopy(world.parts)


BAD_PARTS = [
    (lambda p: p.pop("rules"), RuleSetError, "part rules"),
    (lambda p: p.pop("settings"), RuleSetError, "part settings"),
    (lambda p: p["settings"]["policy"].pop("fever_centi_c"), RuleSetError, "fever_centi_c"),
    (lambda p: p["rules"]["rules"].append({"id": "x"}), RuleSetError, "rule"),
    (lambda p: p["roster"].update(roster_key="XYZ"), BundleDataError, "roster_key"),
    (lambda p: p["roster"].update(staff="all"), BundleDataError, "staff must be an array"),
    (lambda p: p["roster"]["staff"].append({"name": "x"}), BundleDataError, "staff[4].sub"),
    (lambda p: p["roster"]["staff"].append("text"), BundleDataError, "staff[4]"),
    (lambda p: p["firms"]["firms"].append({"name": "no id"}), BundleDataError, "firms[3].id"),
    (lambda p: p["preregistrations"]["visitors"].append({"sub": "X"}), BundleDataError, "visitors[2].sub"),
    (lambda p: p["revocations"]["entries"].append({"hash": "short"}), BundleDataError, "entries[0].hash"),
    (lambda p: p["mode"].update(mode="panic"), BundleDataError, "part mode"),
    (lambda p: p.update(firms=[1, 2]), BundleDataError, "part firms"),
    (lambda p: p.update(trust={"no": "keys"}), BundleDataError, "part trust"),
]


@pytest.mark.parametrize(("mutate", "error", "fragment"), BAD_PARTS, ids=lambda x: getattr(x, "__name__", str(x))[:30])
def test_bad_parts_are_refused(world: World, mutate, error, fragment):
    parts = _parts(world)
    mutate(parts)
    with pytest.raises(error, match=None) as info:
        InMemoryBundle.from_parts(parts)
    assert fragment in str(info.value)


def test_minimal_parts_default_sensibly(world: World):
    b = InMemoryBundle.from_parts({"rules": rules_json(), "settings": settings_json()})
    assert b.mode == {"mode": "normal"} and b.roster_key is None
    assert b.person_by_sub(STAFF_SUB) is None and b.firm("F0012") is None and not b.is_revoked("ab" * 16)
    with pytest.raises(BundleDataError):
        InMemoryBundle.from_parts("parts")  # type: ignore[arg-type]


def test_oversize_roster_loads(world: World):
    parts = _parts(world)
    parts["roster"]["staff"] = [
        {**parts["roster"]["staff"][0], "sub": f"{i:032x}", "codes": [f"{i + 1:032x}"]} for i in range(20_000)
    ]
    b = InMemoryBundle.from_parts(parts)
    assert b.person_by_sub(f"{19_999:032x}") is not None and b.person_by_code(f"{20_000:032x}") is not None


def test_rules_json_on_disk_is_the_bundle_rules_array(repo: Path):
    doc = json.loads((repo / "config" / "rules" / "rules.json").read_text(encoding="utf-8"))
    assert isinstance(doc, list) and len(doc) == 17
