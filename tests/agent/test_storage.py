"""Storage levels, pressure pruning, reserve.bin and retention (sync.md §1.7-1.8)."""

from __future__ import annotations

import json

from edge.store.state import StateDB
from sync.timefmt import format_ms
from tests.agent.conftest import decision, fill, make_gate


def test_pressure_prunes_acked_only_with_a_storage_pressure_gap(tmp_path, make_agent):
    gate = make_gate(tmp_path)
    gate.cfg.store.max_db_mb = 2
    state = StateDB(gate.data_dir)
    clock = gate.clock(state)
    store = gate.writer(max_db_mb=2)
    server = gate.fake_server()
    agent = make_agent(server.transport(), g=gate)
    agent.start()
    big = "y" * 2500
    at = clock.read().at()
    # fill to about 85 %, upload everything, then more unacked on top
    while store.storage_bytes()[0] < 0.85 * (2 << 20):
        store.append("decision", {**decision(0), "reasons": [big]}, at)
    assert agent.run_until(agent.drained, timeout_s=60)
    acked = agent.outbox.state().acked_seq
    while store.storage_bytes()[0] < 0.92 * (2 << 20):
        store.append("decision", {**decision(1), "reasons": [big]}, at)
    head_before = agent.outbox.head_seq()
    report = agent.storage.measure()
    assert report.level == "prune"
    agent.storage.check()
    used, budget = store.storage_bytes()
    assert used < 0.8 * budget
    ob = agent.outbox.state()
    assert 0 < ob.pruned_through <= acked
    # every unacknowledged event is still there
    assert [e.seq for e in store.read(acked + 1, 10_000)][: head_before - acked] == list(range(acked + 1,
                                                                                             head_before + 1))
    gap = json.loads(store.get(head_before + 1).body)
    assert gap["kind"] == "gap" and gap["payload"]["cause"] == "storage_pressure"
    assert gap["payload"]["acked"] is True and gap["payload"]["to_seq"] == ob.pruned_through
    assert store.verify_chain().ok
    store.close()
    state.close()


def test_retention_only_while_synced_and_measured_from_the_ack(gate, make_agent):
    state = StateDB(gate.data_dir)
    clock = gate.clock(state)
    store = gate.writer()
    fill(store, clock, 50)
    server = gate.fake_server()
    synced = {"v": False}
    agent = make_agent(server.transport(), ntp=lambda: synced["v"])
    # a clock that is not synced: no anchor yet -> floor state (bundles.md §5.3 row 5)
    agent.clock._db.update_row("clock", lambda old: {"confirmed_ms": None, "confirmed_boot": None})
    agent.server_clock._clock = None   # keep the signed times out of the clock row for this test
    assert agent.run_until(agent.drained)
    agent.outbox.execute("UPDATE acks SET server_time = ?", (format_ms(clock.now() - 8 * 86_400_000),))
    assert agent.clock.read().state != "synced"
    assert agent.storage.retention() == 0
    synced["v"] = True
    agent.clock._ntp = lambda: True
    assert agent.clock.read().state == "synced"
    assert agent.storage.retention() == agent.outbox.head_seq()
    assert agent.outbox.state().pruned_through == agent.outbox.head_seq()
    store.close()
    state.close()


def test_reserve_bin_recreated_when_there_is_room(tmp_path, make_agent):
    gate = make_gate(tmp_path)
    gate.cfg.store.reserve_mb = 1
    server = gate.fake_server()
    agent = make_agent(server.transport(), g=gate)
    reserve = gate.data_dir / "reserve.bin"
    assert not reserve.exists()
    agent.start()
    assert reserve.stat().st_size == 1 << 20 and set(reserve.read_bytes()) == {0}
    reserve.unlink()
    agent.due.storage = 0
    agent.tick()
    assert reserve.exists()


def test_prune_acked_stops_at_a_declared_hole_boundary(gate):
    state = StateDB(gate.data_dir)
    clock = gate.clock(state)
    store = gate.writer()
    fill(store, clock, 30)
    store.declare_corrupt(10, 14, "cd" * 32, clock.read().at())
    from edge.store.outbox import Outbox

    ob = Outbox(gate.data_dir)
    ob.set_acked(25, store.get(25).hash, "2026-11-23T00:00:00.000Z", wall="2026-11-23T00:00:00.000Z")
    deleted, gap = store.prune_acked(12, retention_edge_seq=0, at=clock.read().at())
    assert deleted == 9 and ob.state().pruned_through == 9   # not inside the hole 10..14
    h20 = store.get(20).hash
    deleted, gap = store.prune_acked(20, retention_edge_seq=100, at=clock.read().at())
    assert gap is None and ob.state().pruned_through == 20 and ob.state().pruned_hash == h20
    assert store.verify_chain().ok
    ob.close()
    store.close()
    state.close()



def test_retention_passes_a_hole_longer_than_one_chunk(gate):
    """A disk_full hole can span more seqs than a 5 000-seq prune chunk; retention must not stall on it."""
    from edge.store.outbox import Outbox

    state = StateDB(gate.data_dir)
    clock = gate.clock(state)
    store = gate.writer()
    fill(store, clock, 9_000, batch=1000)
    store.declare_corrupt(100, 7_999, "ef" * 32, clock.read().at())   # stands in for a big declared hole
    fill(store, clock, 10, start=9_000)
    with Outbox(gate.data_dir) as ob:
        head = store.head()
        ob.set_acked(head.last_seq, head.head_hash, "2026-01-01T00:00:00.000Z", wall="2026-01-01T00:00:00.000Z")
        ob.prune_retention(clock.now(), 7)
        assert ob.state().pruned_through == head.last_seq
    assert store.verify_chain().ok
    store.close()
    state.close()
