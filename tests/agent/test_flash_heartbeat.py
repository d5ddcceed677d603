"""Flash copies (sync.md §3.6), heartbeats (§4.2) and the gate-status contract."""

from __future__ import annotations

import httpx

from edge.clock import boottime_ms
from edge.store.state import StateDB
from sync.agent.flash import FLASH_KEY
from sync.agent.gate_status import (
    CameraStatus,
    GateStatus,
    ThermometerStatus,
    read_gate_status,
    write_gate_status,
)
from tests.agent.conftest import decision, fever, fill


def _writer(gate):
    state = StateDB(gate.data_dir)
    return state, gate.writer(), gate.clock(state)


def test_flash_arrives_ahead_of_a_backlog(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 1200)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    agent.start()
    agent.tick()                         # first batch of the backlog
    d = store.append("decision", decision(1, alert="urgent"), clock.read().at())
    f = store.append("temp_alert", fever(d.seq), clock.read().at())
    store.append("decision", decision(2), clock.read().at())  # not urgent: no copy
    # let the flash scan see the rows
    agent.flasher._next_scan = 0
    agent.tick()
    assert server.flashed.keys() == {d.seq, f.seq}
    assert server.acked_seq < d.seq                  # the ordered upload is still far behind
    assert agent.state.kv_get(FLASH_KEY) == str(agent.outbox.head_seq())
    assert agent.run_until(agent.drained, timeout_s=60)
    assert server.events[f.seq][0] == server.flashed[f.seq]   # same event, same hash
    store.close()
    state.close()


def test_flash_gives_up_after_three_tries_and_upload_still_carries_it(gate, make_agent):
    state, store, clock = _writer(gate)
    server = gate.fake_server()
    t = {"now": 1000.0}
    server.refuse = lambda req, doc: httpx.Response(503) if req.url.path.endswith("/flash") else None
    agent = make_agent(server.transport(), mono=lambda: t["now"])
    agent.start()
    f = store.append("temp_alert", fever(None), clock.read().at())
    for _ in range(6):
        agent.flasher.step()
        t["now"] += 10
    assert agent.flasher.given_up == 1 and not agent.flasher.pending
    assert len(server.requests("flash")) == 3
    assert int(agent.state.kv_get(FLASH_KEY)) >= f.seq
    assert agent.uploader.step().outcome == "sent"
    assert f.seq in server.events
    store.close()
    state.close()


def test_old_alerts_in_a_backlog_are_not_flashed(gate, make_agent):
    state, store, clock = _writer(gate)
    at = clock.read().at()
    stale = {**at, "boot": "11111111-2222-3333-4444-555555555555", "wall": "2026-11-20T08:00:00.000Z"}
    store.append("temp_alert", fever(None), stale)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    agent.start()
    agent.flasher.step()
    assert server.flashed == {}
    store.close()
    state.close()


def _status(**kw):
    base = dict(pid=4242, boot="", boottime_ms=boottime_ms(), software="0.1.0",
                thermometer=ThermometerStatus(status="ok", protocol="gy-mcu90614", last_reading_age_s=0.4),
                camera=CameraStatus(status="ok", fps=14.8), storage_level="ok", decisions_today=312, mode="normal")
    base.update(kw)
    return GateStatus(**base)


def test_heartbeat_is_built_from_real_status(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 7)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    write_gate_status(state, _status(boot=clock.boot))
    agent.start()
    agent.tick()
    hb = server.heartbeats[-1]
    assert hb["thermometer"] == {"status": "ok", "protocol": "gy-mcu90614", "last_reading_age_s": 0.4}
    assert hb["camera"] == {"status": "ok", "fps": 14.8}
    assert hb["decisions_today"] == 312 and hb["software"] == {"gate": "0.1.0", "agent": "0.1.0"}
    assert hb["clock"]["state"] == "synced" and hb["clock"]["ntp_synced"] is True
    assert hb["backlog"]["head_seq"] == agent.outbox.head_seq()
    assert hb["storage"]["level"] == "ok" and hb["storage"]["budget_bytes"] == 1024 << 20
    assert hb["bundle"] == {"version": 0, "sha256": None, "keys_version": None, "state": "none",
                            "issued_at": None, "last_check_ok_at": None, "mode": "normal"}
    assert hb["gate"]["running"] is True and hb["at"]["clock"] == "synced"
    store.close()
    state.close()


def test_heartbeat_says_unknown_when_the_gate_is_not_reporting(gate, make_agent):
    state, store, clock = _writer(gate)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    write_gate_status(state, _status(boot=clock.boot, boottime_ms=boottime_ms() - 120_000))
    agent.start()
    agent.tick()
    hb = server.heartbeats[-1]
    assert hb["thermometer"]["status"] == "unknown" and hb["camera"]["status"] == "unknown"
    assert hb["gate"]["running"] is False and hb["gate"]["status_age_s"] >= 120
    store.close()
    state.close()


def test_gate_status_contract_garbage_and_other_boot(gate):
    state = StateDB(gate.data_dir)
    assert read_gate_status(state, boot="b", boottime_ms=0).reason == "absent"
    state.kv_set("gate_status", "{not json")
    assert read_gate_status(state, boot="b", boottime_ms=0).reason == "invalid"
    state.kv_set("gate_status", '{"v": 1, "pid": 1}')
    assert read_gate_status(state, boot="b", boottime_ms=0).reason == "invalid"
    write_gate_status(state, _status(boot="other"))
    assert read_gate_status(state, boot="b", boottime_ms=boottime_ms()).reason == "other_boot"
    write_gate_status(state, _status(boot="b", boottime_ms=1000))
    r = read_gate_status(state, boot="b", boottime_ms=2000)
    assert r.running and r.age_s == 1.0
    # unknown keys from a newer gate are ignored
    state.kv_set("gate_status", _status(boot="b", boottime_ms=1000).model_dump_json()[:-1] + ',"new":1}')
    assert read_gate_status(state, boot="b", boottime_ms=2000).running
    state.close()


def test_heartbeat_answer_poll_bundle_now_and_ack(gate, make_agent):
    state, store, clock = _writer(gate)
    server = gate.fake_server(poll_bundle_now=True)
    polled = []
    agent = make_agent(server.transport(), bundle_update=lambda f: polled.append(f.current("0" * 32)))
    agent.start()
    agent.poller.stop()
    agent.poller.poll_now = lambda: polled.append("now")  # type: ignore[method-assign]
    agent.heartbeat()
    assert "now" in polled
    store.close()
    state.close()


def test_heartbeat_triggered_by_storage_level_change_and_not_retried(gate, make_agent):
    state, store, clock = _writer(gate)
    server = gate.fake_server()
    t = {"now": 0.0}
    agent = make_agent(server.transport(), mono=lambda: t["now"])
    agent.start()
    agent.tick()
    n = len(server.heartbeats)
    t["now"] += 10
    write_gate_status(state, _status(boot=clock.boot, storage_level="error"))
    agent.due.storage = 0
    agent.tick()
    assert len(server.heartbeats) == n + 1 and server.heartbeats[-1]["storage"]["level"] == "error"
    # a failing heartbeat is not retried before the next interval
    server.refuse = lambda req, doc: httpx.Response(500) if req.url.path.endswith("/heartbeat") else None
    t["now"] += agent.cfg.sync.heartbeat_s + 1
    agent.tick()
    failed = agent.heartbeats_failed
    t["now"] += 1
    agent.tick()
    assert agent.heartbeats_failed == failed == 1
    store.close()
    state.close()
