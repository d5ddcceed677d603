"""``on_full = "refer_all"`` in the real gate process (sync.md §1.8 step 5, §6.4 case 3, G8).

The gate's event log is at its budget with nothing acknowledged (the server was away). The
gate keeps deciding: every would-be ADMIT becomes REFER ("check by hand"), events wait in the
memory queue, nothing unacknowledged is removed. Then the server comes back: the real agent
uploads and gets acks, the gate's next retry makes room from acknowledged events only (a
``gap`` with ``acked: true``), writes what it held, and admits again. The server ends with
every seq, no hole.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.demo import DemoWorld
from edge.errors import StoreUnavailable
from tests.crash import figures
from tests.gate.conftest import bundle_dir, installed, world  # noqa: F401  (fixtures)
from tests.gate.harness import RELAY, Harness, wait_until
from tests.reliability.livegate import LiveGate, chain_figures, gap_events, gate_holes

pytestmark = pytest.mark.slow
STORE = {"max_db_mb": 2, "on_full": "refer_all"}


def test_refer_all_refers_holds_and_recovers_without_removing_unacknowledged(
        tmp_path: Path, world: DemoWorld, installed: Callable[[str], Path],  # noqa: F811
        mock_pins: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.app

    monkeypatch.setattr(edge.app, "FLUSH_HELD_S", 0.5)   # sync.md says 10 s; the rhythm is not under test
    data = tmp_path / "gate"
    shutil.copytree(installed("gate-test-01"), data)
    # the server signs with the key the gate's keys document names (the demo fleet's)
    live = LiveGate(tmp_path, store=STORE, device_id="gate-test-01", data_dir=data, server_key=world.keys["server"])
    gate: Harness | None = None
    try:
        filler = live.store()
        with pytest.raises(StoreUnavailable):            # fill the budget: nothing is acked, nothing may go
            while True:
                live.write(filler, 20, batch=20)
        fails = 0
        while fails < 3:                                 # down to the last bytes: even a small event fails
            try:
                got = filler.append("device_stop", {"reason": "signal", "uptime_s": 1}, live.clock.read().at())
                live.committed[got.seq] = got.hash
                fails = 0
            except StoreUnavailable:
                fails += 1
        head_before = filler.head().last_seq
        filler.close()
        gate = Harness(world, None, data, mock_pins, thermometer=True, console=False, store=STORE)
        gate.start()                                     # starts although device_start cannot be written
        green = next(p for p in world.people if p.key == "green-staff")
        gate.sim.present(34.2, 25.0)
        time.sleep(0.8)
        view = gate.decide(world.health_code(green))
        gate.sim.absent()
        assert view["outcome"] == "refer" and view["reasons"][0]["id"] == "gate-storage-full", view
        assert view["seq"] is None and gate.app.store is not None and gate.app.store.held >= 2
        assert [bool(s.state) for s in gate.pin(RELAY).states] == [False]      # never opened
        wait_until(lambda: any("check everyone by hand" in b["en"] for b in gate.app.status()["banners"]))
        assert gate.app.store.head().last_seq == head_before and gate_holes(gate.app.store) == []
        # the server is back: the agent uploads, acks arrive, the gate's retry frees acked events only
        agent = live.agent()
        assert agent.run_until(lambda: agent.outbox.state().acked_seq >= head_before, timeout_s=60), (
            agent.outbox.state(), live.acked(), head_before, agent.uploader.last_error)
        wait_until(lambda: gate.app.store.held == 0, timeout=30)
        gate.sim.present(34.2, 25.0)
        time.sleep(0.8)
        view = gate.decide(world.health_code(green))
        gate.sim.absent()
        assert view["outcome"] == "admit" and view["seq"] is not None, view
        store = gate.app.store
        gaps = gap_events(store)
        assert gaps and all(g["acked"] is True for g in gaps), gaps
        assert gate_holes(store) == []
        decisions = [e for e in gate.events("decision")]
        assert [d["payload"]["outcome"] for d in decisions][-2:] == ["refer", "admit"]
        assert agent.run_until(lambda: agent.drained() and live.acked() == store.head().last_seq, timeout_s=60)
        live.committed = {}                              # the gate process, not this test, appended them
        fig, problems = chain_figures(live, store, "disk_full_refer_all")
        figures.report(fig)
        assert not problems, problems
        assert fig["gaps_declared"] == 0 and fig["events_stored"] == store.head().last_seq
    finally:
        if gate is not None:
            gate.stop()
        live.close()
