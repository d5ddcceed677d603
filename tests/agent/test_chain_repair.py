"""Holes and repairs: damaged rows (sync.md §3.4 step 2.5), full-disk holes as skips (§3.5), rebase (§1.9)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from edge.store.events import EventStore
from edge.store.state import StateDB
from tests.agent.conftest import decision, fever, fill


def _writer(gate, **kw):
    state = StateDB(gate.data_dir)
    return state, gate.writer(**kw), gate.clock(state)


def _raw(gate) -> sqlite3.Connection:
    return sqlite3.connect(gate.data_dir / "events.db", isolation_level=None)


def test_bit_flip_in_a_body_becomes_a_declared_corrupt_hole(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 60)
    c = _raw(gate)
    # flip one character of event 20's body (the kind of damage a bad SD card does)
    body = c.execute("SELECT body FROM events WHERE seq = 20").fetchone()[0]
    c.execute("UPDATE events SET body = ? WHERE seq = 20", (body.replace("admit", "admiT", 1),))
    c.close()
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    hole = server.holes[20]
    assert hole["cause"] == "corrupt" and hole["to_seq"] == 20
    gap_seq = hole["gap_seq"]
    gap = server.events[gap_seq][1]
    assert gap["kind"] == "gap"
    assert gap["payload"] | {} == {**gap["payload"], "cause": "corrupt", "acked": False, "from_seq": 20,
                                   "to_seq": 20, "count": 1}
    assert gap["payload"]["last_hash"] == hole["last_hash"] == server.events[21][1]["prev_hash"]
    server.verify_chain()
    assert 20 not in server.events          # nothing damaged was sent
    assert store.verify_chain().ok          # the gate's chain is whole again (hole bridged)
    store.close()
    state.close()


def test_rows_missing_without_a_hole_and_damage_at_the_head(gate, make_agent):
    state, store, clock = _writer(gate)
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)   # the venue_bound event: seq 1
    fill(store, clock, 40)
    c = _raw(gate)
    c.execute("DELETE FROM events WHERE seq BETWEEN 10 AND 12")       # lost rows
    c.execute("UPDATE events SET hash = ? WHERE seq = 41", ("00" * 32,))  # the head row's hash garbled
    c.close()
    assert agent.run_until(agent.drained)
    assert server.holes[10]["to_seq"] == 12 and server.holes[41]["to_seq"] == 41
    server.verify_chain()
    assert store.verify_chain().ok
    store.close()
    state.close()


def test_invalid_utf8_body_does_not_stop_the_upload(gate, make_agent):
    state, store, clock = _writer(gate)
    fill(store, clock, 10)
    c = _raw(gate)
    c.execute("UPDATE events SET body = CAST(X'7b22ff' AS TEXT) WHERE seq = 4")
    c.close()
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    assert server.holes[4]["cause"] == "corrupt"
    server.verify_chain()
    store.close()
    state.close()


def test_full_disk_hole_is_sent_as_a_leading_skip(gate, make_agent):
    state, store, clock = _writer(gate, max_db_mb=2)
    big = "x" * 3000
    at = clock.read().at()
    n = 0
    while not store.holes() and n < 5000:
        store.append("decision", {**decision(n), "reasons": [big]}, at)
        n += 1
    holes = store.holes()
    assert holes and holes[0].cause == "disk_full"
    server = gate.fake_server()
    agent = make_agent(server.transport())
    # the agent's own store also has the 2 MiB budget
    assert agent.run_until(agent.drained, timeout_s=60)
    h = holes[0]
    assert server.holes[h.from_seq]["to_seq"] == h.to_seq
    assert server.holes[h.from_seq]["gap_seq"] == h.gap_seq
    server.verify_chain()
    store.close()
    state.close()


def test_rebase_moves_the_provisional_chain_behind_the_server(gate, make_agent, tmp_path):
    # The server already holds 0..30 from the lost database.
    state, store, clock = _writer(gate)
    fill(store, clock, 30)
    server = gate.fake_server()
    a = make_agent(server.transport())
    assert a.run_until(a.drained)
    a.close()
    store.close()
    c_seq, c_hash = server.acked_seq, server.acked_hash
    # events.db is lost: the gate recovers with a provisional chain (§1.9 step 4)
    db = gate.data_dir / "events.db"
    with open(db, "r+b") as f:
        f.write(b"garbage!" * 512)
    for suffix in ("-wal", "-shm"):
        p = gate.data_dir / f"events.db{suffix}"
        if p.exists():
            os.unlink(p)
    store = EventStore(gate.data_dir, gate.identity.device_id, recover_corrupt=True)
    assert store.head().rebase_pending
    d = store.append("decision", decision(1, alert="urgent"), clock.read().at())
    store.append("temp_alert", fever(d.seq), clock.read().at())
    fill(store, clock, 5, start=100)
    agent = make_agent(server.transport())
    agent.start()
    assert not agent.rebase_pending
    assert agent.run_until(agent.drained)
    server.verify_chain()
    gap = server.events[c_seq + 1][1]
    assert gap["kind"] == "gap" and gap["payload"]["cause"] == "db_lost"
    assert gap["prev_hash"] == c_hash
    assert gap["payload"]["from_seq"] is None and gap["payload"]["count"] is None
    alert = server.events[c_seq + 3][1]
    assert alert["kind"] == "temp_alert" and alert["payload"]["decision_seq"] == c_seq + 2
    # nothing with a provisional seq was ever flashed or uploaded
    assert all(s >= c_seq + 1 for s in server.flashed)
    assert store.verify_chain().ok
    store.close()
    state.close()


def test_rebase_waits_for_the_server_and_uploads_nothing_before(gate, make_agent):
    import httpx

    state, store, clock = _writer(gate)
    store.close()
    db = gate.data_dir / "events.db"
    db.write_bytes(b"not a database at all" * 100)
    store = EventStore(gate.data_dir, gate.identity.device_id, recover_corrupt=True)
    fill(store, clock, 3)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    agent = make_agent(httpx.MockTransport(down))
    for _ in range(3):
        agent.tick()
    assert agent.rebase_pending
    assert agent.outbox.state().acked_seq == 0
    store.close()
    state.close()


CRASH_SCRIPT = r"""
import sys, httpx, random
from tests.agent.conftest import make_gate
from tests.agent.fakeserver import FakeServer
from sync.agent.core import Agent
from sync.agent.notify import Notifier
from pathlib import Path
g = make_gate(Path(sys.argv[1]))
srv = FakeServer(g.identity.device_id, g.device_key.public, g.server_key)
srv.acked_seq = 0
a = Agent(g.cfg, transport=srv.transport(), bundle_update=None, notifier=Notifier(env={}), ntp=lambda: True,
          host={})
a.start()
print("survived", flush=True)
"""


@pytest.mark.parametrize("point", ["agent.mid_rebase"])
def test_crash_mid_rebase_leaves_the_provisional_chain(gate, tmp_path, point):
    state, store, clock = _writer(gate)
    store.close()
    (gate.data_dir / "events.db").write_bytes(b"x" * 4096)
    store = EventStore(gate.data_dir, gate.identity.device_id, recover_corrupt=True)
    fill(store, clock, 20)
    before = [(e.seq, e.hash) for e in store.iter_all()]
    env = {**os.environ, "CHECKPOINT_CRASHPOINTS": f"{point}:1", "PYTHONPATH": str(os.getcwd())}
    out = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == -9, out.stderr[-2000:]
    assert store.head().rebase_pending
    after = list(store.iter_all())
    # all or nothing: the provisional chain as it was (plus the binding's venue_bound, appended at start)
    assert [(e.seq, e.hash) for e in after[:20]] == before
    assert [e.kind for e in after[20:]] == ["venue_bound"]
    store.close()
    state.close()


@pytest.mark.parametrize("change", ["seq", "device", "not_json"])
def test_rehashed_rows_that_lie_about_seq_or_device_are_damage(gate, make_agent, change):
    """A row whose hash was recomputed after editing still has to name its own seq and this device."""
    from sync.events import hash_body

    state, store, clock = _writer(gate)
    fill(store, clock, 12)
    c = _raw(gate)
    body = c.execute("SELECT body FROM events WHERE seq = 6").fetchone()[0]
    if change == "seq":
        body = body.replace('"seq":6,', '"seq":7,')
    elif change == "device":
        body = body.replace(gate.identity.device_id, "gate-other-99")
    else:  # not JSON at all, yet with the right link: only the server's parse (or a strict check) sees it
        body = body.replace('"payload":{', '"payload":{,', 1)
    c.execute("UPDATE events SET body = ?, hash = ? WHERE seq = 6", (body, hash_body(body.encode())))
    c.close()
    server = gate.fake_server()
    agent = make_agent(server.transport())
    assert agent.run_until(agent.drained)
    assert server.holes[6]["cause"] == "corrupt"
    server.verify_chain()
    store.close()
    state.close()
