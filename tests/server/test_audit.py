"""Trace queries, the daily report, the CSV export and the alert list (sync.md §5.3-5.5)."""

from __future__ import annotations

import csv
import io
import json

from sync.events import pid as make_pid
from sync.timefmt import parse_ms
from tests.server.harness import VENUE, ServerHarness, decision, fever

SUB = "99402d8da8317fc267036c4775b68b39"


def _day(h: ServerHarness) -> tuple[str, str]:
    return "2022-04-12T00:00:00Z", "2022-04-13T00:00:00+00:00"


def _fill(h: ServerHarness) -> tuple[str, str]:
    """Two gates at two venues; one person (SUB) passes both; a fever; an override; a gap."""
    pid = make_pid(h.state.pid_keys[1], "SUB", SUB)
    a = h.gate("gate-a-01")
    b = h.gate("gate-b-01", site_id="fc-plant-1")
    base = parse_ms("2022-04-12T01:00:00.000Z")  # 09:00 in Shanghai
    a.chain.append("decision", decision("admit", pid=pid), wall_ms=base)
    a.chain.append("decision", decision("deny", pid="11" * 16, name_m="ZHAO SAN", temp=3790), wall_ms=base + 60_000)
    a.chain.append("temp_alert", fever(2), wall_ms=base + 60_001)
    a.chain.append("override", {"decision_seq": 2, "from": "deny", "to": "admit", "guard": "g1",
                                "reason": "manual_check", "note": "rang 13800000000 =SUM(A1)", "venue": VENUE,
                                "subject": {"pid": "11" * 16, "pid_kid": 1, "name_m": "Z*** S**", "role": "visitor",
                                            "firm_id": None, "whitelisted": None}}, wall_ms=base + 120_000)
    a.chain.append("decision", decision("refer", pid=None, name_m="=HYPERLINK(1)"), wall_ms=base + 180_000,
                   clock="floor")
    other_venue = {"venue_id": "411322-0031-02", "zone": "B", "door": None}
    b.chain.append("decision", decision("admit", pid=pid, venue=other_venue), wall_ms=base + 3_600_000)
    b.chain.append("gap", {"cause": "disk_full", "acked": False, "from_seq": None, "to_seq": None, "count": 3,
                           "first_wall": None, "last_wall": None, "last_hash": None}, wall_ms=base + 3_600_001)
    # Next local day (2022-04-13 00:30 Shanghai = 2022-04-12T16:30Z): not in the 12th's report.
    b.chain.append("decision", decision("deny", pid=pid, venue=other_venue), wall_ms=parse_ms("2022-04-12T16:30:00.000Z"))
    assert a.upload_range(1, 5).status_code == 200
    assert b.upload_range(1, 3).status_code == 200
    return pid, other_venue["venue_id"]


def test_who_was_at_a_venue(server: ServerHarness) -> None:
    _fill(server)
    frm, to = _day(server)
    r = server.auditor("GET", "/v1/trace/venue", params={"venue_id": VENUE["venue_id"], "from": frm, "to": to})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [(i["seq"], i["kind"], i["result"]) for i in doc["items"]] == [
        (1, "decision", "admit"), (2, "decision", "deny"), (4, "override", "admit"), (5, "decision", "refer")]
    assert doc["untrusted_time_items"] == 1 and doc["next_cursor"] is None
    assert doc["items"][1]["temp_centi_c"] == 3790 and doc["items"][1]["name_m"] == "ZHAO SAN"
    assert doc["from"] == "2022-04-12T00:00:00.000Z"
    # Keyset pages: two rows at a time, same rows in the same order.
    seen, cursor = [], None
    while True:
        params = {"venue_id": VENUE["venue_id"], "from": frm, "to": to, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = server.auditor("GET", "/v1/trace/venue", params=params).json()
        seen += [i["seq"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [1, 2, 4, 5]
    # Offsets are honoured: 09:00+08:00 is 01:00Z.
    r = server.auditor("GET", "/v1/trace/venue", params={"venue_id": VENUE["venue_id"],
                                                         "from": "2022-04-12T09:01:30+08:00", "to": to})
    assert [i["seq"] for i in r.json()["items"]] == [4, 5]
    for bad in ({"from": "yesterday", "to": to}, {"from": to, "to": frm}, {"from": "2022-04-12T00:00:00", "to": to},
                {"from": frm, "to": to, "limit": 0}, {"from": frm, "to": to, "cursor": "!!"}):
        r = server.auditor("GET", "/v1/trace/venue", params={"venue_id": "v", **bad})
        assert r.status_code == 422, (bad, r.text)


def test_where_was_a_person_by_sub_or_pid(server: ServerHarness) -> None:
    pid, venue_b = _fill(server)
    frm, to = _day(server)
    r = server.auditor("POST", "/v1/trace/person", json={"id_type": "SUB", "id": SUB, "from": frm, "to": to})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["device_id"], i["venue_id"]) for i in items] == [
        ("gate-a-01", VENUE["venue_id"]), ("gate-b-01", venue_b), ("gate-b-01", venue_b)]
    assert items[0]["name_m"] is None  # the person query needs no name (§5.3)
    assert server.auditor("POST", "/v1/trace/person", json={"pid": pid, "from": frm, "to": to}).json()["items"] == items
    # The id itself is never stored: the audit log names the pid.
    logs = server.rows("SELECT route, params FROM audit_log ORDER BY id")
    assert [x.route for x in logs] == ["/v1/trace/person", "/v1/trace/person"]
    assert SUB not in logs[0].params and pid in logs[0].params
    for bad in ({"id_type": "SUB", "id": "NOT-HEX", "from": frm, "to": to}, {"from": frm, "to": to},
                {"pid": pid, "id_type": "SUB", "id": SUB, "from": frm, "to": to},
                {"id_type": "CN-ID", "id": "110101199003077777", "from": frm, "to": to}):
        r = server.auditor("POST", "/v1/trace/person", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert "110101199003077777" not in r.text  # an id number is never echoed back


def test_daily_report_counts_in_the_site_time_zone(server: ServerHarness) -> None:
    _fill(server)
    r = server.auditor("GET", "/v1/reports/daily", params={"site_id": "fc-plant-1", "day": "2022-04-12"})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert {k: rep[k] for k in ("checked", "people", "admitted", "denied", "referred", "fevers", "overrides",
                                "sentinel_alerts", "data_gaps", "devices_reporting", "untrusted_time")} == {
        "checked": 4, "people": 2, "admitted": 2, "denied": 1, "referred": 1, "fevers": 1, "overrides": 1,
        "sentinel_alerts": 0, "data_gaps": 1, "devices_reporting": 2, "untrusted_time": 1}
    assert rep["tz"] == "Asia/Shanghai" and rep["pending_devices"] == ["gate-a-01", "gate-b-01"]
    nxt = server.auditor("GET", "/v1/reports/daily", params={"site_id": "fc-plant-1", "day": "2022-04-13"}).json()
    assert (nxt["checked"], nxt["denied"]) == (1, 1)
    r = server.auditor("GET", "/v1/reports/daily", params={"site_id": "fc-plant-1", "day": "2022-04-12",
                                                           "format": "csv"})
    assert r.status_code == 200 and r.text.startswith("\ufeffsite_id,day,tz,checked")
    assert server.auditor("GET", "/v1/reports/daily", params={"site_id": "nope-site", "day": "2022-04-12"}
                          ).status_code == 404
    assert server.auditor("GET", "/v1/reports/daily", params={"site_id": "fc-plant-1", "day": "2022-13-45"}
                          ).status_code == 422
    from sync.server.audit import hourly_series

    with server.state.db.read() as conn:
        series = hourly_series(conn, "fc-plant-1", "2022-04-12")
    assert len(series) == 24
    assert series[9] == {"hour": 9, "decisions": 3, "denials": 1, "fevers": 1}
    assert series[10] == {"hour": 10, "decisions": 1, "denials": 0, "fevers": 0}


def test_csv_export_is_masked_and_safe_for_spreadsheets(server: ServerHarness) -> None:
    _fill(server)
    frm, to = _day(server)
    r = server.auditor("GET", "/v1/export/events.csv", params={"site_id": "fc-plant-1", "from": frm, "to": to,
                                                               "kinds": "decision,override,temp_alert"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv") and r.content.startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in r.content
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [(x["device_id"], x["seq"]) for x in rows] == [
        ("gate-a-01", "1"), ("gate-a-01", "2"), ("gate-a-01", "3"), ("gate-a-01", "4"), ("gate-a-01", "5"),
        ("gate-b-01", "1"), ("gate-b-01", "3")]
    assert "pid" not in rows[0]
    first = rows[0]
    assert first["at"] == "2022-04-12T09:00:00.000+08:00" and first["name_m"] == "张*三"
    assert rows[1]["temp_c"] == "37.90" and rows[1]["reasons"] == "fever"
    assert rows[3]["note"] == "rang *********** =SUM(A1)"
    assert "13800000000" not in r.text
    assert rows[4]["name_m"].startswith("'")  # formula injection defused
    # A window over 31 days, or no site/venue, is refused.
    assert server.auditor("GET", "/v1/export/events.csv", params={"site_id": "fc-plant-1",
                                                                  "from": "2022-01-01T00:00:00Z", "to": to}
                          ).status_code == 422
    assert server.auditor("GET", "/v1/export/events.csv", params={"from": frm, "to": to}).status_code == 422
    assert server.auditor("GET", "/v1/export/events.csv", params={"site_id": "no-site", "from": frm, "to": to}
                          ).status_code == 404
    r = server.admin("GET", "/v1/export/events.csv", params={"venue_id": VENUE["venue_id"], "from": frm, "to": to,
                                                             "include_pid": 1, "kinds": "decision"})
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 3 and rows[0]["pid"] == make_pid(server.state.pid_keys[1], "SUB", SUB)
    assert {x.route for x in server.rows("SELECT route FROM audit_log")} == {"/v1/export/events.csv"}


def test_alerts_list_and_ack(server: ServerHarness) -> None:
    _fill(server)
    r = server.auditor("GET", "/v1/alerts", params={"status": "open"})
    kinds = sorted(a["kind"] for a in r.json()["items"])
    # pii_unmasked: a full latin name (seq 2), a phone number in a note (4), a formula as name (5).
    assert kinds == ["data_lost", "fever", "pii_unmasked", "pii_unmasked", "pii_unmasked"]
    fever_alert = next(a for a in r.json()["items"] if a["kind"] == "fever")
    assert fever_alert["venue"] == VENUE and fever_alert["event"]["seq"] == 3
    assert "37.90" in fever_alert["summary"] and "south-gate" in fever_alert["summary"]
    r = server.auditor("POST", f"/v1/alerts/{fever_alert['id']}/ack")
    assert r.status_code == 200 and r.json()["status"] == "acked" and r.json()["acked_by"] == "test-auditor"
    r = server.auditor("GET", "/v1/alerts", params={"status": "open", "min_severity": "critical"})
    assert r.json()["items"] == []
    page = server.auditor("GET", "/v1/alerts", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = server.auditor("GET", "/v1/alerts", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert len(rest["items"]) == 3
    assert server.auditor("POST", "/v1/alerts/99999/ack").status_code == 404


def test_fleet_view_orders_worst_first(server: ServerHarness) -> None:
    ok = server.gate("gate-ok-01")
    bad = server.gate("gate-bad-01")
    server.gate("gate-quiet-01")
    ok.request("POST", "heartbeat", json.dumps({"clock": {"state": "synced"}, "storage": {"level": "ok"}}).encode())
    bad.request("POST", "heartbeat", json.dumps({"clock": {"state": "floor"}, "storage": {"level": "ok"}}).encode())
    server.clock.advance(1000)  # quiet goes offline; the others stay stale
    ok.request("POST", "heartbeat", b"{}")
    bad.request("POST", "heartbeat", json.dumps({"clock": {"state": "floor"}}).encode())
    rows = server.auditor("GET", "/v1/fleet/devices").json()
    assert [r["device_id"] for r in rows] == ["gate-quiet-01", "gate-bad-01", "gate-ok-01"]
    assert [r["health"] for r in rows] == ["offline", "online", "online"]
    d = server.auditor("GET", "/v1/fleet/devices/gate-bad-01").json()
    assert len(d["heartbeats"]) == 2 and d["holes_list"] == [] and d["keyid"] == bad.key.keyid
    assert server.auditor("GET", "/v1/fleet/devices/gate-nope-01").status_code == 404
