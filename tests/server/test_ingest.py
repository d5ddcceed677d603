"""Batch ingest (sync.md §3.2-3.5) on SQLite and PostgreSQL, with signed requests and signed answers."""

from __future__ import annotations

import json

from tests.conftest import load_vector
from tests.server.harness import T0, ServerHarness, decision, fever, key_from_seed


def test_reproduces_the_signed_answer_of_the_test_vectors(server: ServerHarness) -> None:
    vec = load_vector("events.json")["upload"]
    key = key_from_seed("device", vec["device_key_seed_input"])
    assert key.public == vec["device_public_key"]
    assert server.server_key.public == vec["server_public_key"]
    gate = server.gate("gate-fc-0007", key)
    r = server.client.post("/v1/devices/gate-fc-0007/events", content=vec["body"].encode(),
                           headers={**vec["headers"], "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json() == vec["response"]
    gate.check_ack(r.json(), vec["headers"]["X-Checkpoint-Nonce"])
    rows = server.rows("SELECT seq, kind, result, temp_centi_c, pid, name_m, venue_id, zone, door, day, clock "
                       "FROM events ORDER BY seq")
    assert [(r.seq, r.kind, r.result) for r in rows] == [(1, "device_start", "boot"), (2, "decision", "deny"),
                                                         (3, "temp_alert", "fever")]
    assert rows[1].temp_centi_c == 3790 and rows[1].pid == "9347d5ebaf1bb363fbbcbfd205ae7d8a"
    assert rows[1].name_m == "张*三" and (rows[1].venue_id, rows[1].zone, rows[1].door) == ("411322-0031-01", "A", "east")
    assert rows[1].day == "2022-04-12" and rows[0].clock == "floor"
    # The stored body is the canonical text that was hashed (sync.md §5.2).
    body = server.rows("SELECT body FROM events WHERE seq = 2")[0].body
    assert body == load_vector("events.json")["events"][1]["canonical"]
    alerts = server.rows("SELECT kind, severity, seq, provisional FROM alerts ORDER BY id")
    assert [(a.kind, a.severity, a.seq) for a in alerts] == [("fever", "critical", 3)]


def test_resent_batch_is_a_no_op_with_duplicates_counted(server: ServerHarness) -> None:
    gate = server.gate()
    for i in range(5):
        gate.chain.append("decision", decision("admit" if i % 2 else "deny"))
    r1 = gate.upload_range(1, 5)
    assert r1.status_code == 200 and r1.json()["stored"] == 5
    assert gate.check_ack(r1.json()) == (5, gate.chain.hash_of(5))
    r2 = gate.upload_range(1, 5)  # the answer was lost: the same batch again, with a new nonce
    assert r2.status_code == 200, r2.text
    assert (r2.json()["stored"], r2.json()["duplicates"], r2.json()["received"]) == (0, 5, 5)
    assert gate.check_ack(r2.json()) == (5, gate.chain.hash_of(5))
    gate.chain.append("decision", decision())
    r3 = gate.upload_range(3, 6)  # overlap, then one new event
    assert r3.status_code == 200 and (r3.json()["stored"], r3.json()["duplicates"]) == (1, 3)
    assert [r.seq for r in server.rows("SELECT seq FROM events ORDER BY seq")] == [1, 2, 3, 4, 5, 6]
    assert server.rows("SELECT acked_seq FROM devices")[0].acked_seq == 6


def test_gap_answers_409_with_the_expected_seq(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(8):
        gate.chain.append("decision", decision())
    assert gate.upload_range(1, 3).status_code == 200
    r = gate.upload_range(6, 8)
    assert r.status_code == 409
    doc = r.json()
    assert doc["error"] == "seq_gap" and doc["expected_seq"] == 4
    assert gate.check_ack(doc) == (3, gate.chain.hash_of(3))
    assert gate.upload_range(4, 8).status_code == 200
    assert server.rows("SELECT count(*) AS n FROM events")[0].n == 8


def test_tampered_batch_is_refused_and_stores_nothing(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(4):
        gate.chain.append("decision", decision())
    batch = gate.batch(1, 4)
    batch["events"][2] = {**batch["events"][2], "payload": {**batch["events"][2]["payload"], "outcome": "admit"}}
    batch["events"][2]["payload"]["outcome"] = "deny" if batch["events"][2]["payload"]["outcome"] == "admit" else "admit"
    r = gate.upload(batch)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_batch" and r.json()["seq"] == 3 and "hash" in r.json()["detail"]
    gate.check_time(r.json())
    assert server.rows("SELECT count(*) AS n FROM events")[0].n == 0
    assert server.rows("SELECT acked_seq FROM devices")[0].acked_seq == 0

    # Each structural check names its seq: broken link, wrong head, forged head_sig, wrong device.
    batch = gate.batch(1, 4)
    batch["events"][1]["prev_hash"] = "0" * 64
    r = gate.upload(batch)
    assert r.status_code == 400 and r.json()["seq"] == 2
    batch = gate.batch(1, 4)
    batch["head_sig"] = gate.key.sign(b"something else").hex()
    assert gate.upload(batch).json()["detail"] == "head_sig does not verify"
    batch = gate.batch(1, 4)
    batch["last_seq"] = 3
    assert gate.upload(batch).status_code == 400
    batch = gate.batch(1, 4)
    batch["events"] = batch["events"][:1] + batch["events"][2:]
    r = gate.upload(batch)
    assert r.status_code == 400 and "consecutive" in r.json()["detail"]
    assert gate.upload_range(1, 4).status_code == 200


def test_fork_is_a_conflict_kept_both_ways_until_an_admin_clears_it(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(3):
        gate.chain.append("decision", decision())
    assert gate.upload_range(1, 3).status_code == 200
    good = list(gate.chain.events)
    # The gate's database is replaced by another history from seq 2 on (e.g. a restored image).
    gate.chain.events = good[:1]
    gate.chain.append("decision", decision("deny"))
    gate.chain.append("decision", decision("refer"))
    gate.chain.append("decision", decision("admit"))
    r = gate.upload_range(2, 4)
    assert r.status_code == 409
    doc = r.json()
    assert doc["error"] == "conflict" and doc["conflict_seq"] == 2
    assert gate.check_ack(doc) == (3, good[2]["hash"])
    assert [(c.seq, c.hash) for c in server.rows("SELECT seq, hash FROM event_conflicts ORDER BY seq")] == [
        (2, gate.chain.hash_of(2)), (3, gate.chain.hash_of(3)), (4, gate.chain.hash_of(4))]
    alert = server.rows("SELECT kind, severity, seq FROM alerts WHERE kind = 'chain_conflict'")
    assert [(a.kind, a.severity, a.seq) for a in alert] == [("chain_conflict", "critical", 2)]
    # Stored events stay as they were; every later upload is refused.
    assert [r.hash for r in server.rows("SELECT hash FROM events ORDER BY seq")] == [e["hash"] for e in good]
    gate.chain.events = good
    gate.chain.append("decision", decision())
    assert gate.upload_range(4, 4).json()["error"] == "conflict"
    state = gate.request("GET", "state").json()
    assert state["conflict"] is True and state["conflict_seq"] == 2
    # An admin clears it; the gate continuing from the stored head H is accepted again.
    assert server.admin("POST", "/v1/admin/devices/gate-fc-0007/clear-conflict").status_code == 200
    r = gate.upload_range(4, 4)
    assert r.status_code == 200, r.text
    assert gate.check_ack(r.json()) == (4, gate.chain.hash_of(4))
    assert server.rows("SELECT status FROM alerts WHERE kind = 'chain_conflict'")[0].status == "resolved"


def test_fork_at_the_next_seq_is_a_conflict(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", decision())
    assert gate.upload_range(1, 1).status_code == 200
    other = server.gate("gate-fc-0008")
    for _ in range(2):
        other.chain.append("decision", decision())
    # seq 2 whose prev_hash is not the stored hash of seq 1: a fork.
    gate.chain.append("decision", decision())
    batch = gate.batch(2, 2)
    ev = dict(batch["events"][0], prev_hash="ab" * 32)
    from sync.events import event_hash
    from sync.signing import head_text

    ev["hash"] = event_hash(ev)
    batch.update(events=[ev], prev_hash="ab" * 32, head_hash=ev["hash"],
                 head_sig=gate.key.sign(head_text(gate.device_id, 2, ev["hash"])).hex())
    r = gate.upload(batch)
    assert r.status_code == 409 and r.json()["error"] == "conflict" and r.json()["conflict_seq"] == 2


def test_declared_hole_is_stored_and_confirmed_by_its_gap_event(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(10):
        gate.chain.append("decision", decision())
    assert gate.upload_range(1, 3).status_code == 200
    # Events 4..7 were dropped on a full disk; seq 11 is the gap event describing the hole.
    gap = {"cause": "disk_full", "acked": False, "from_seq": 4, "to_seq": 7, "count": 4,
           "first_wall": "2022-04-12T00:31:06.004Z", "last_wall": "2022-04-12T00:31:06.004Z",
           "last_hash": gate.chain.hash_of(7)}
    gate.chain.append("gap", gap)
    skip = {"from_seq": 4, "to_seq": 7, "cause": "disk_full", "last_hash": gate.chain.hash_of(7), "gap_seq": 11}
    r = gate.upload(gate.batch(4, 11, skip=skip))
    assert r.status_code == 200, r.text
    assert gate.check_ack(r.json()) == (11, gate.chain.hash_of(11))
    assert r.json()["stored"] == 4  # 8, 9, 10 and the gap event 11
    hole = server.rows("SELECT from_seq, to_seq, cause, gap_seq, confirmed FROM event_holes")
    assert [(h.from_seq, h.to_seq, h.cause, h.gap_seq, bool(h.confirmed)) for h in hole] == [
        (4, 7, "disk_full", 11, True)]
    assert [r.seq for r in server.rows("SELECT seq FROM events ORDER BY seq")] == [1, 2, 3, 8, 9, 10, 11]
    # One data_lost alert, keyed on the gap seq, not raised a second time by the gap event itself.
    assert [(a.kind, a.seq) for a in server.rows("SELECT kind, seq FROM alerts ORDER BY id")] == [("data_lost", 11)]
    assert server.rows("SELECT holes FROM devices")[0].holes == 1
    # The same skip batch again: duplicate, nothing new.
    r = gate.upload(gate.batch(4, 11, skip=skip))
    assert r.status_code == 200 and r.json()["stored"] == 0


def test_gap_event_that_does_not_describe_the_hole_raises_hole_unconfirmed(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(6):
        gate.chain.append("decision", decision())
    gate.chain.append("gap", {"cause": "disk_full", "acked": False, "from_seq": 2, "to_seq": 3, "count": 2,
                              "first_wall": None, "last_wall": None, "last_hash": gate.chain.hash_of(3)})
    skip = {"from_seq": 1, "to_seq": 4, "cause": "disk_full", "last_hash": gate.chain.hash_of(4), "gap_seq": 7}
    r = gate.upload(gate.batch(1, 7, skip=skip))
    assert r.status_code == 200, r.text
    assert server.rows("SELECT confirmed FROM event_holes")[0].confirmed in (False, 0)
    kinds = {a.kind for a in server.rows("SELECT kind FROM alerts")}
    assert kinds == {"data_lost", "hole_unconfirmed"}


def test_lost_ack_then_full_disk_trims_the_skip_without_a_false_conflict(server: ServerHarness) -> None:
    """sync.md §3.5 / §6.4 item 5: the server holds 1..6, the gate never got the ack and dropped 4..9."""
    gate = server.gate()
    for _ in range(12):
        gate.chain.append("decision", decision())
    assert gate.upload_range(1, 6).status_code == 200  # committed; the gate "never heard back"
    skip = {"from_seq": 1, "to_seq": 9, "cause": "disk_full", "last_hash": gate.chain.hash_of(9), "gap_seq": None}
    r = gate.upload(gate.batch(1, 12, skip=skip))
    assert r.status_code == 200, r.text
    assert gate.check_ack(r.json()) == (12, gate.chain.hash_of(12))
    holes = server.rows("SELECT from_seq, to_seq FROM event_holes")
    assert [(h.from_seq, h.to_seq) for h in holes] == [(7, 9)]
    assert server.rows("SELECT count(*) AS n FROM event_conflicts")[0].n == 0
    assert not server.rows("SELECT id FROM alerts WHERE kind = 'chain_conflict'")
    # A skip wholly at or below C is a duplicate.
    r = gate.upload(gate.batch(1, 9, skip={**skip}))
    assert r.status_code == 200 and r.json()["acked_seq"] == 12 and r.json()["stored"] == 0


def test_server_lost_skip_raises_a_critical_alert(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(5):
        gate.chain.append("decision", decision())
    skip = {"from_seq": 1, "to_seq": 3, "cause": "server_lost", "last_hash": gate.chain.hash_of(3), "gap_seq": None}
    r = gate.upload(gate.batch(1, 5, skip=skip))
    assert r.status_code == 200, r.text
    assert [(a.kind, a.severity) for a in server.rows("SELECT kind, severity FROM alerts")] == [
        ("server_data_lost", "critical")]


def test_gzip_body_and_derived_alerts(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("device_start", {"software": "0.1.0", "reason": "restart", "unclean": True,
                                       "quick_check": "ok", "db_schema": 1})
    gate.chain.append("decision", decision("deny", temp=3790))
    gate.chain.append("temp_alert", fever(2))
    gate.chain.append("sentinel_alert", {"decision_seq": 2, "flags": ["test_overdue"], "subject": None,
                                         "venue": {"venue_id": "v-2", "zone": "B", "door": None}})
    gate.chain.append("decision", decision("refer", alert="urgent", name_m="张三"))
    gate.chain.append("override", {"decision_seq": 5, "from": "refer", "to": "admit", "guard": "g1",
                                   "reason": "manual_check", "note": "called 13800000000", "subject": None,
                                   "venue": {"venue_id": "v-2", "zone": "B", "door": None}})
    gate.chain.append("mystery_kind", {"anything": [1, 2, {"x": None}]})
    gate.chain.append("venue_bound", {"venue": {"venue_id": "v-9", "zone": "Z", "door": "north"}, "firm_id": "F9",
                                      "source": "venue_code", "kid": "00" * 8, "venue_name": None, "by": "admin1"})
    r = gate.upload(gate.batch(1, 8), gzip_body=True)
    assert r.status_code == 200, r.text
    kinds = sorted((a.kind, a.seq) for a in server.rows("SELECT kind, seq FROM alerts"))
    assert kinds == [("decision_alert", 5), ("fever", 3), ("pii_unmasked", 5), ("pii_unmasked", 6), ("sentinel", 4),
                     ("unclean_restart", 1)]
    rows = {r.seq: r for r in server.rows("SELECT seq, kind, result, venue_id, zone FROM events")}
    assert rows[7].kind == "mystery_kind" and rows[7].result is None  # stored, no alert (sync.md §1.5)
    assert (rows[4].result, rows[4].venue_id, rows[4].zone) == ("sentinel", "v-2", "B")
    assert rows[6].result == "admit"
    dev = server.rows("SELECT venue_id, zone, door, firm_id FROM devices")[0]
    assert (dev.venue_id, dev.zone, dev.door, dev.firm_id) == ("v-9", "Z", "north", "F9")


def test_payload_problems_never_reject_a_batch(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", {"venue": "not an object", "subject": {"name_m": "x" * 300, "pid": 5},
                                   "temp": {"body_centi_c": 10**12}, "outcome": ["?"]})
    gate.chain.append("decision", decision(venue={"venue_id": "v" * 40, "zone": "z" * 40, "door": 7}))
    r = gate.upload_range(1, 2)
    assert r.status_code == 200, r.text
    row = server.rows("SELECT venue_id, name_m, pid, temp_centi_c, result FROM events WHERE seq = 1")[0]
    assert row.venue_id == "411322-0031-01" and row.name_m == "x" * 64 and row.pid is None
    assert row.temp_centi_c is None and row.result is None
    assert server.rows("SELECT venue_id FROM events WHERE seq = 2")[0].venue_id == "v" * 32


def test_garbage_truncated_and_oversize_bodies_get_4xx_and_store_nothing(server: ServerHarness) -> None:
    gate = server.gate()
    for _ in range(3):
        gate.chain.append("decision", decision())
    body = json.dumps(gate.batch(1, 3)).encode()
    cases = [b"", b"\xff\xfe garbage", body[: len(body) // 2], b"[]", b'{"device_id": 1}', b"null",
             body.replace(b'"first_seq": 1', b'"first_seq": 1.0'), body[:-1] + b',"first_seq":1}',
             b"\xef\xbb\xbf" + body, json.dumps({**gate.batch(1, 3), "extra": 1}).encode()]
    for raw in cases:
        r = gate.upload(raw)
        assert r.status_code == 400, (raw[:40], r.status_code, r.text)
        assert r.json()["error"] == "bad_batch"
    big = b'{"x":"' + b"a" * (1024 * 1024 + 10) + b'"}'
    r = gate.upload(big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    # A gzip bomb: small on the wire, more than 2 MiB inflated.
    import gzip as gz

    bomb = b'{"pad":"' + b"0" * (3 * 1024 * 1024) + b'"}'
    path = "/v1/devices/gate-fc-0007/events"
    hdrs = gate.sign_headers("POST", path, bomb)
    r = server.client.post(path, content=gz.compress(bomb), headers={**hdrs, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    r = server.client.post(path, content=b"not gzip", headers={**gate.sign_headers("POST", path, b"x"),
                                                                "Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = server.client.post(path, content=body, headers={**gate.sign_headers("POST", path, body),
                                                         "Content-Encoding": "br"})
    assert r.status_code == 415
    # Too many events in one batch.
    for _ in range(501):
        gate.chain.append("device_stop", {"reason": "signal", "uptime_s": 1})
    r = gate.upload_range(1, 504)
    assert r.status_code == 413 and r.json()["max_events"] == 500
    assert server.rows("SELECT count(*) AS n FROM events")[0].n == 0


def test_flash_alert_is_provisional_until_the_ordered_upload(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", decision("deny", temp=3790))
    ev = gate.chain.append("temp_alert", fever(1))
    r = gate.request("POST", "flash", json.dumps({"events": [ev]}).encode())
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [2]
    gate.check_time(r.json())
    a = server.rows("SELECT kind, provisional, seq FROM alerts")
    assert [(x.kind, bool(x.provisional), x.seq) for x in a] == [("fever", True, 2)]
    assert server.rows("SELECT count(*) AS n FROM events")[0].n == 0  # flash never stores events
    assert server.rows("SELECT acked_seq FROM devices")[0].acked_seq == 0
    # Again (a retry): still one alert.
    assert gate.request("POST", "flash", json.dumps({"events": [ev]}).encode()).status_code == 200
    assert gate.upload_range(1, 2).status_code == 200
    a = server.rows("SELECT kind, provisional FROM alerts")
    assert [(x.kind, bool(x.provisional)) for x in a] == [("fever", False)]
    # Not urgent, tampered, or more than 10: refused item by item or as a whole.
    plain = gate.chain.append("decision", decision())
    bad = dict(ev, payload={**ev["payload"], "body_centi_c": 3600})
    r = gate.request("POST", "flash", json.dumps({"events": [plain, bad]}).encode())
    assert r.json()["accepted"] == [] and len(r.json()["rejected"]) == 2
    r = gate.request("POST", "flash", json.dumps({"events": [ev] * 11}).encode())
    assert r.status_code == 413
    r = gate.request("POST", "flash", b'{"events": 5}')
    assert r.status_code == 400


def test_flash_with_another_hash_than_the_upload_is_a_chain_conflict(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", decision("deny", temp=3790))
    ev = gate.chain.append("temp_alert", fever(1))
    from sync.events import event_hash

    forged = dict(ev, payload={**ev["payload"], "body_centi_c": 3999})
    forged["hash"] = event_hash(forged)
    assert gate.request("POST", "flash", json.dumps({"events": [forged]}).encode()).json()["accepted"] == [2]
    assert gate.upload_range(1, 2).status_code == 200
    kinds = sorted(a.kind for a in server.rows("SELECT kind FROM alerts"))
    assert kinds == ["chain_conflict", "fever"]


def test_state_and_heartbeat_carry_signed_acks(server: ServerHarness) -> None:
    gate = server.gate()
    gate.chain.append("decision", decision())
    gate.upload_range(1, 1)
    r = gate.request("GET", "state")
    assert r.status_code == 200
    doc = r.json()
    assert gate.check_ack(doc) == (1, gate.chain.hash_of(1))
    assert (doc["status"], doc["conflict"], doc["holes"]) == ("active", False, 0)
    hb = {"at": {"wall": "2022-04-12T08:00:00.000Z", "clock": "synced", "boot": "b", "mono_ms": 5},
          "software": {"gate": "0.1.0", "agent": "0.1.0"}, "uptime_s": 10.5,
          "bundle": {"version": 3, "sha256": "ab" * 32, "keys_version": 1, "state": "fresh"},
          "clock": {"state": "synced", "ntp_synced": True, "offset_ms": -120.5},
          "backlog": {"events": 12000, "head_seq": 1, "acked_seq": 1, "oldest_unacked_at": None,
                      "upload_state": "ok"},
          "storage": {"level": "warn"}, "thermometer": {"status": "ok"}, "camera": {"status": "absent", "fps": 0.0}}
    r = gate.request("POST", "heartbeat", json.dumps(hb).encode())
    assert r.status_code == 200, r.text
    doc = r.json()
    assert gate.check_ack(doc) == (1, gate.chain.hash_of(1))
    assert doc["poll_bundle_now"] is False
    dev = server.rows("SELECT hb_backlog, hb_clock, hb_clock_offset_ms, hb_storage_level, hb_camera, "
                      "hb_bundle_version FROM devices")[0]
    assert (dev.hb_backlog, dev.hb_clock, dev.hb_clock_offset_ms, dev.hb_storage_level, dev.hb_camera,
            dev.hb_bundle_version) == (12000, "synced", -120, "warn", "absent", 3)
    kinds = sorted(a.kind for a in server.rows("SELECT kind FROM alerts WHERE status = 'open'"))
    assert kinds == ["backlog", "storage", "unknown_manifest"]
    # Back to normal: the state alerts resolve, and a second bad heartbeat does not duplicate them.
    hb2 = {**hb, "backlog": {"events": 0}, "storage": {"level": "ok"}}
    hb2.pop("bundle")
    gate.request("POST", "heartbeat", json.dumps(hb2).encode())
    assert sorted(a.kind for a in server.rows("SELECT kind FROM alerts WHERE status = 'open'")) == [
        "unknown_manifest"]
    assert server.rows("SELECT count(*) AS n FROM heartbeats")[0].n == 2
    for raw in (b"", b"[1]", b"{bad", b'{"a": NaN}'):
        assert gate.request("POST", "heartbeat", raw).status_code == 400


def test_time_is_signed_even_on_errors(server: ServerHarness) -> None:
    gate = server.gate()
    r = gate.request("GET", "state", time_s=T0 // 1000 - 3600)
    assert r.status_code == 401 and r.json()["error"] == "clock_skew"
    assert gate.check_time(r.json()) == T0
