"""A full disk on the gate (sync.md §1.8, §6.4): every case end to end with the real store, agent and server.

1. budget (no root): ``max_db_mb = 2``, server unreachable, appends until the full-disk procedure
   has run several times; then the server comes back: its holes are the gate's ``dropped`` rows,
   each confirmed by its ``gap`` event, ``data_lost`` raised, head = stored + inside holes;
2. acks flowing: only acknowledged events go, every ``gap`` says ``acked: true``, no hole;
3. ``on_full = "refer_all"`` in the real gate process: nothing removed, decisions referred,
   held events written once space returns (``test_refer_all.py``);
4. real ENOSPC on a size-capped tmpfs created by the test (root only, skipped with the reason
   otherwise): ``reserve.bin`` is given up, then recreated; no append fails;
5. a lost ack, then a full disk: the fault proxy eats the reply to a committed batch, the store
   then drops those events; the server trims the skip, no ``chain_conflict``, G1-G3 hold.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.store.events import EventStore
from tests.crash import figures
from tests.crash.writer import item
from tests.reliability.livegate import LiveGate, chain_figures, gap_events, gate_holes

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveGate]:
    g = LiveGate(tmp_path, store={"max_db_mb": 2})
    yield g
    g.close()


def fill_until_full(live: LiveGate, store: EventStore, runs: int, *, between: object = None) -> tuple[int, int]:
    """Append until the full-disk procedure has run ``runs`` times; returns (appends, procedure runs).

    ``between`` is called every 50 appends (the agent catching up).
    """
    seen = appends = 0
    sizes = [1, 1, 3, 8, 20]
    while seen < runs:
        live.write(store, sizes[appends % len(sizes)], batch=sizes[appends % len(sizes)])
        appends += 1
        if store.full:          # this append ran the procedure of §1.8 (it succeeded: it returned)
            seen += 1
        if callable(between) and appends % 50 == 0:
            between()
        assert appends < 20_000, "the store never filled"
    return appends, seen


def drain(live: LiveGate, agent: object, timeout_s: float = 90) -> None:
    assert agent.run_until(lambda: agent.drained() and live.acked() == agent.outbox.head_seq(),  # type: ignore[attr-defined]
                           timeout_s=timeout_s), "the agent did not drain"


def test_budget_full_with_the_server_down_declares_every_loss(live: LiveGate) -> None:
    store = live.store()
    appends, runs = fill_until_full(live, store, 4)     # nothing acked: no agent runs (server "down")
    holes = gate_holes(store)
    gaps = gap_events(store)
    assert holes and all(h[3] == "disk_full" for h in holes)
    assert all(g["acked"] is False and g["cause"] == "disk_full" for g in gaps) and len(gaps) >= runs
    by_seq = {g["seq"]: g for g in gaps}
    for f, t, last_hash, _cause, gap_seq in holes:      # every hole is described by its gap event
        g = by_seq[gap_seq]
        assert (g["from_seq"], g["to_seq"], g["last_hash"], g["count"]) == (f, t, last_hash, t - f + 1)
    assert store.verify_chain().ok
    assert store.outbox().acked_seq == 0                # nothing unacknowledged left without its hole
    # the server comes back
    agent = live.agent()
    drain(live, agent)
    server = live.holes()
    assert [h[:5] for h in server] == holes and all(h[5] for h in server), (server, holes)   # confirmed
    alerts = live.rows("SELECT kind, seq FROM alerts WHERE device_id = :d AND kind = 'data_lost'")
    # one data_lost per gap event that reached the server (an older one survives a merge, informational)
    stored_gaps = {g["seq"] for g in gaps if store.get(g["seq"]) is not None}
    assert {h[4] for h in holes} <= stored_gaps and sorted(a.seq for a in alerts) == sorted(stored_gaps)
    fig, problems = chain_figures(live, store, "disk_full_budget")
    fig.update(appends=appends, full_procedure_runs=runs)
    figures.report(fig)
    assert not problems, problems
    assert fig["gaps_declared"] == sum(t - f + 1 for f, t, *_ in holes) > 0
    assert fig["events_stored"] + fig["gaps_declared"] == store.head().last_seq


def test_full_with_acks_flowing_removes_only_acknowledged_events(live: LiveGate) -> None:
    store = live.store()
    agent = live.agent()
    agent.start()

    def let_it_catch_up() -> None:
        head = store.head().last_seq
        agent.run_until(lambda: agent.outbox.state().acked_seq >= head, timeout_s=30)

    fill_until_full(live, store, 3, between=let_it_catch_up)
    gaps = gap_events(store)
    assert gaps and all(g["acked"] is True for g in gaps), gaps
    assert gate_holes(store) == []                      # no unacknowledged event was removed
    ob = store.outbox()
    assert ob.pruned_through > 0 and store.get(1) is None
    drain(live, agent)
    assert live.holes() == []
    assert live.rows("SELECT count(*) AS n FROM alerts WHERE device_id = :d AND kind = 'data_lost'")[0].n == 0
    fig, problems = chain_figures(live, store, "disk_full_acked")
    figures.report(fig)
    assert not problems, problems
    assert fig["events_stored"] == store.head().last_seq and fig["gaps_declared"] == 0


def test_lost_ack_then_full_disk_is_trimmed_not_a_conflict(live: LiveGate) -> None:
    from tests.faultproxy import FaultProxy

    store = live.store()
    with FaultProxy(live.h.url, seed=3, default_p=0.0) as proxy:
        agent = live.agent(proxy.url)
        agent.start()
        agent.run_until(lambda: agent.drained(), timeout_s=30)      # first heartbeat and the binding event
        gate_acked = store.outbox().acked_seq
        live.write(store, 40, batch=8)
        proxy.force("drop_response", path_contains="/events")       # the server commits, the gate never hears
        for route in ("/heartbeat", "/state"):
            proxy.force("drop_request", path_contains=route, times=5)
        agent.run_until(lambda: proxy.stats().get("fault.drop_response", 0) == 1, timeout_s=30)
        agent.close()
    server_had = live.acked()
    assert server_had == gate_acked + 40 and store.outbox().acked_seq == gate_acked
    fill_until_full(live, store, 1)                      # step 3 drops from the first unacked seq on
    (f, t, *_), = gate_holes(store)
    assert f == gate_acked + 1 and t > server_had, "the dropped range must reach past what the server holds"
    agent = live.agent()
    drain(live, agent)
    (sf, st, _lh, cause, _g, confirmed), = live.holes()
    assert (sf, st, cause, confirmed) == (server_had + 1, t, "disk_full", True)     # trimmed (§3.5)
    kinds = {r.kind for r in live.rows("SELECT kind FROM alerts WHERE device_id = :d")}
    assert "chain_conflict" not in kinds and "data_lost" in kinds
    fig, problems = chain_figures(live, store, "lost_ack_then_full")
    figures.report(fig)
    assert not problems, problems


# -- real ENOSPC ------------------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size_mb: int) -> str | None:
    """Mount a size-capped tmpfs at ``path``; None when done, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a size-capped tmpfs (sync.md §6.4 case 4)"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    why = _mount_tmpfs(mnt, 24)
    if why is not None:
        pytest.skip(why)
    try:
        yield mnt
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


def test_real_enospc_uses_and_recreates_reserve_bin(tmp_path: Path, small_fs: Path) -> None:
    """A file system that fills up under the database (other files ate it): the first SQLITE_FULL gives
    up ``reserve.bin``, checkpoints the WAL into the room and drops the oldest unacknowledged events
    behind a gap; with the reserve gone, further appends wait in the memory queue (§1.6) and the gate
    keeps deciding; once space returns the held events are written and the agent recreates the reserve."""
    data = small_fs / "gate"
    live = LiveGate(tmp_path, store={"max_db_mb": 1024, "reserve_mb": 1}, data_dir=data)
    try:
        agent = live.agent()
        assert agent.storage.ensure_reserve()
        assert (data / "reserve.bin").stat().st_size == 1 << 20
        store = live.store()
        ballast = small_fs / "ballast"
        free = shutil.disk_usage(small_fs).free
        with ballast.open("wb") as f:                    # leave 16 MiB: a database big enough that one WAL of frames matters
            f.write(b"\0" * max(0, free - (16 << 20)))
        appends, runs = fill_until_full(live, store, 1)  # every append returns: ENOSPC is handled inside
        assert not (data / "reserve.bin").exists(), "reserve.bin is what the store gives up first"
        (f, t, _lh, cause, _g), = gate_holes(store)
        assert (f, cause) == (1, "disk_full")            # nothing acked yet: the oldest unacknowledged go
        # the reserve is spent and the file system still full: the gate holds events in memory, never fails
        held_kinds = 0
        for _ in range(3000):
            at = live.clock.read().at()
            live.n += 1
            kind, payload = item(live.rng, live.n, None)
            got = store.append_or_hold(kind, payload, at)
            if got is None:
                held_kinds += 1
                if held_kinds >= 20:
                    break
            else:
                live.committed[got.seq] = got.hash
        assert store.held >= 20, "the file system never filled again"
        assert store.quick_check() == "ok" and store.verify_chain().ok
        ballast.unlink()                                 # space returns
        last = store.flush_held()
        assert last is not None and store.held == 0
        assert agent.storage.ensure_reserve() and (data / "reserve.bin").stat().st_size == 1 << 20
        live.write(store, 20, batch=10)                  # and the gate writes normally again
        assert not store.full
        drain(live, agent)
        fig, problems = chain_figures(live, store, "disk_full_enospc")
        fig.update(appends=appends, full_procedure_runs=runs, held_then_written=held_kinds, fs_mb=24)
        figures.report(fig)
        assert not problems, problems
    finally:
        live.close()
