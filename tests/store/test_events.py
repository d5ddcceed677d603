"""The event log: the worked example byte for byte, group commit, tamper detection, crashes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.errors import StoreCorrupt, StoreUnavailable, WrongDevice
from edge.store.events import EventStore
from sync.canonical import CanonicalError
from sync.events import EventTooLarge, genesis
from tests.conftest import load_vector

DEV = "gate-test-01"
BOOT = "3f6c1d2e-8a4b-4c5d-9e0f-1a2b3c4d5e6f"


def at(n: int = 0, wall: str = "2026-11-23T08:00:00.000Z") -> dict:
    return {"wall": wall, "clock": "synced", "boot": BOOT, "mono_ms": n}


@pytest.fixture
def store(tmp_path: Path):
    s = EventStore(tmp_path, DEV)
    yield s
    s.close()


def test_worked_example_reproduces_byte_for_byte(tmp_path: Path) -> None:
    vec = load_vector("events.json")
    with EventStore(tmp_path, vec["device_id"]) as s:
        assert s.head().genesis == vec["genesis"]
        for item in vec["events"]:
            ev = item["event"]
            got = s.append(ev["kind"], ev["payload"], ev["at"])
            assert got.seq == ev["seq"]
            assert got.hash == ev["hash"]
            row = s.get(got.seq)
            assert row is not None and row.body == item["canonical"]
            assert row.event() == ev
        assert s.verify_chain().ok


def test_first_event_links_to_genesis(store: EventStore) -> None:
    store.append("device_start", {"x": 1}, at())
    body = json.loads(store.get(1).body)  # type: ignore[union-attr]
    assert body["prev_hash"] == genesis(DEV)
    assert body["v"] == 1 and body["device_id"] == DEV


def test_ten_thousand_appends_from_threads_verify(store: EventStore) -> None:
    def work(k: int) -> None:
        for i in range(1250):
            store.append("decision", {"k": k, "i": i}, at(i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = store.verify_chain()
    assert report.ok, report
    assert report.checked == 10_000 and store.head().last_seq == 10_000
    seqs = [e.seq for e in store.iter_all()]
    assert seqs == list(range(1, 10_001))


def test_append_many_is_one_unit_and_ordered(store: EventStore) -> None:
    res = store.append_many([("decision", {"i": i}, at(i)) for i in range(5)])
    assert [r.seq for r in res] == [1, 2, 3, 4, 5]
    assert [json.loads(store.get(i).body)["payload"]["i"] for i in range(1, 6)] == list(range(5))  # type: ignore[union-attr]


def test_invalid_events_fail_alone_and_use_no_seq(store: EventStore) -> None:
    store.append("decision", {"ok": 1}, at())
    with pytest.raises(CanonicalError):
        store.append("decision", {"temp": 37.5}, at())
    with pytest.raises(CanonicalError):
        store.append("decision", {"BadKey": 1}, at())
    with pytest.raises(EventTooLarge):
        store.append("override", {"note": "x" * 5000}, at())
    with pytest.raises(ValueError):
        store.append("decision", {"ok": 1}, {"wall": "x"})
    with pytest.raises(ValueError):
        store.append("Not A Kind", {}, at())
    assert store.append("decision", {"ok": 2}, at()).seq == 2
    assert store.verify_chain().ok


def _tamper(path: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


@pytest.fixture
def filled(tmp_path: Path):
    s = EventStore(tmp_path, DEV)
    s.append_many([("decision", {"n": i, "name_m": "张*三"}, at(i)) for i in range(1, 41)])
    yield s
    s.close()


def test_edited_payload_byte_names_its_seq(filled: EventStore) -> None:
    body = filled.get(17).body  # type: ignore[union-attr]
    edited = body.replace('"n":17', '"n":18')
    assert edited != body
    _tamper(filled.path, "UPDATE events SET body = ? WHERE seq = 17", (edited,))
    r = filled.verify_chain()
    assert not r.ok and r.first_bad_seq == 17 and "hash" in (r.problem or "")


def test_edited_and_rehashed_row_is_caught_at_the_next_link(filled: EventStore) -> None:
    from sync.events import hash_body

    body = filled.get(17).body.replace('"n":17', '"n":99')  # type: ignore[union-attr]
    _tamper(filled.path, "UPDATE events SET body = ?, hash = ? WHERE seq = 17", (body, hash_body(body.encode())))
    r = filled.verify_chain()
    assert not r.ok and r.first_bad_seq == 18 and "prev_hash" in (r.problem or "")


def test_deleted_row_names_its_seq(filled: EventStore) -> None:
    _tamper(filled.path, "DELETE FROM events WHERE seq = 23")
    r = filled.verify_chain()
    assert not r.ok and r.first_bad_seq == 23


def test_deleted_first_and_last_rows_are_named(tmp_path: Path, filled: EventStore) -> None:
    _tamper(filled.path, "DELETE FROM events WHERE seq = 40")
    r = filled.verify_chain()
    assert not r.ok and r.first_bad_seq == 40
    _tamper(filled.path, "DELETE FROM events WHERE seq = 1")
    assert filled.verify_chain().first_bad_seq == 1


def test_swapped_rows_name_the_first(filled: EventStore) -> None:
    a, b = filled.get(5), filled.get(9)
    assert a and b
    conn = sqlite3.connect(filled.path)
    conn.execute("UPDATE events SET body = ?, hash = ? WHERE seq = 5", (b.body, b.hash))
    conn.execute("UPDATE events SET body = ?, hash = ? WHERE seq = 9", (a.body, a.hash))
    conn.commit()
    conn.close()
    r = filled.verify_chain()
    assert not r.ok and r.first_bad_seq == 5


def test_wrong_device_is_refused(tmp_path: Path) -> None:
    EventStore(tmp_path, DEV).close()
    with pytest.raises(WrongDevice):
        EventStore(tmp_path, "gate-other-02")


def test_corrupt_file_refused_or_set_aside(tmp_path: Path) -> None:
    (tmp_path / "events.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt):
        EventStore(tmp_path, DEV)
    with EventStore(tmp_path, DEV, recover_corrupt=True) as s:
        assert s.recovered_from is not None and s.recovered_from.exists()
        assert s.head().rebase_pending
        assert s.append("device_start", {}, at()).seq == 1


def test_a_locked_database_holds_events_in_memory_then_flushes(store: EventStore) -> None:
    store.append("decision", {"i": 0}, at())
    store._conn.execute("PRAGMA busy_timeout=50")
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            store.append("decision", {"i": 1}, at())
        assert store.append_or_hold("decision", {"i": 1}, at()) is None
        assert store.append_or_hold("decision", {"i": 2}, at()) is None
        assert store.held == 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    last = store.append_or_hold("decision", {"i": 3}, at())
    assert last is not None and last.seq == 4 and store.held == 0
    assert [json.loads(e.body)["payload"]["i"] for e in store.iter_all()] == [0, 1, 2, 3]


def test_memory_queue_overflow_is_declared_by_a_gap(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.store.events as mod

    monkeypatch.setattr(mod, "MEMORY_QUEUE_MAX", 3)
    store._conn.execute("PRAGMA busy_timeout=20")
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(5):
            assert store.append_or_hold("decision", {"i": i}, at(i)) is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush_held() is not None
    rows = [json.loads(e.body) for e in store.iter_all()]
    assert rows[0]["kind"] == "gap" and rows[0]["payload"]["cause"] == "memory_overflow"
    assert rows[0]["payload"]["count"] == 2 and rows[0]["payload"]["from_seq"] is None
    assert [r["payload"]["i"] for r in rows[1:]] == [2, 3, 4]


# -- full disk (sync.md §1.8) ----------------------------------------------------------------------


def _fill(store: EventStore, n: int) -> list[int]:
    out = []
    for i in range(n):
        out.append(store.append("decision", {"i": i, "pad": "p" * 900}, at(i)).seq)
    return out


def test_full_budget_drops_oldest_unacked_behind_a_gap(tmp_path: Path) -> None:
    with EventStore(tmp_path, DEV, max_db_mb=2, reserve_mb=0) as s:
        seqs = _fill(s, 6000)  # about 6 MB of events into a 2 MB budget: every append returns
        assert seqs == list(range(1, len(seqs) + 1)) or len(set(seqs)) == len(seqs)
        holes = s.holes()
        assert holes, "the budget never filled"
        gaps = [json.loads(e.body) for e in s.iter_all() if e.kind == "gap"]
        assert gaps and all(g["payload"]["cause"] == "disk_full" and not g["payload"]["acked"] for g in gaps)
        last_gap = gaps[-1]["payload"]
        assert (last_gap["from_seq"], last_gap["to_seq"]) == (holes[0].from_seq, holes[0].to_seq)
        assert len(holes) == 1, "holes touching each other must be merged"
        assert holes[0].from_seq == 1
        r = s.verify_chain()
        assert r.ok, r
        stored = sum(1 for _ in s.iter_all())
        declared = sum(h.to_seq - h.from_seq + 1 for h in holes)
        assert stored + declared == s.head().last_seq


def test_full_budget_prunes_acknowledged_first(tmp_path: Path) -> None:
    from edge.store.outbox import Outbox

    with EventStore(tmp_path, DEV, max_db_mb=2, reserve_mb=0) as s:
        first = _fill(s, 1200)
        with Outbox(tmp_path) as ob:
            ob.set_acked(first[-1], s.get(first[-1]).hash, "2026-11-23T08:00:00.000Z", wall="2026-11-23T08:00:00.000Z")  # type: ignore[union-attr]
        _fill(s, 900)
        assert s.holes() == [], "no unacknowledged event may go while acknowledged ones remain"
        gaps = [json.loads(e.body)["payload"] for e in s.iter_all() if e.kind == "gap"]
        assert gaps and all(g["acked"] for g in gaps)
        assert s.verify_chain().ok


def test_refer_all_never_removes_unacknowledged(tmp_path: Path) -> None:
    with EventStore(tmp_path, DEV, max_db_mb=2, reserve_mb=0, on_full="refer_all") as s:
        with pytest.raises(StoreUnavailable):
            _fill(s, 6000)
        assert s.full and s.holes() == []
        n = s.head().last_seq
        assert [e.seq for e in s.iter_all()] == list(range(1, n + 1))
        assert s.append_or_hold("decision", {"i": -1}, at()) is None and s.held == 1


# -- crashes ---------------------------------------------------------------------------------------


def _run_writer(
    tmp_path: Path, seed: int, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("writer.py")), str(tmp_path), DEV, str(seed),
         *([str(log)] if log else [])],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {}),
                                                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_sigkill_mid_batch_leaves_a_valid_gapless_chain(tmp_path: Path) -> None:
    """At least 50 kills (issue 3): each a forked writer killed by SIGKILL among its appends."""
    rng = random.Random(int(os.environ.get("CHECKPOINT_TEST_SEED", "4711")))
    committed: dict[int, str] = {}
    kills = 0
    log = tmp_path / "committed.log"
    runs = int(os.environ.get("CHECKPOINT_STORE_KILLS", "52"))
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("writer.py")), "--serve"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        for i in range(runs):
            # a new store every 10 kills: each kill is followed by a whole-chain check, which would
            # otherwise grow with everything the earlier kills left (quadratic, most of the time)
            data = tmp_path / f"store-{i // 10}"
            if i % 10 == 0:
                data.mkdir()
                committed = {}
            log.write_text("")
            server.stdin.write(f"{data} {DEV} {rng.randrange(1 << 30)} {log}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            deadline = time.monotonic() + 60
            while "READY" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.005)  # wait for the store to be open, so the kill lands among appends
            time.sleep(rng.uniform(0.02, 0.3))
            os.kill(pid, signal.SIGKILL)
            status = int(server.stdout.readline().split()[1])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"run {i}: status {status}"
            kills += 1
            for line in log.read_text().splitlines():
                if line.count(" ") != 2:
                    continue  # a line cut by the kill
                if line.startswith("COMMITTED "):
                    _, seq, h = line.split()
                    committed[int(seq)] = h
            with EventStore(data, DEV, max_db_mb=64) as s:
                r = s.verify_chain()
                assert r.ok, f"after kill {i}: {r}"
                head = s.head().last_seq
                stored = {e.seq: e.hash for e in s.iter_all()}
                assert list(stored) == list(range(1, head + 1))
                lost = [seq for seq, h in committed.items() if stored.get(seq) != h]
                assert not lost, f"after kill {i}: committed events changed or gone: {lost[:5]}"
    finally:
        server.kill()
        server.communicate()
    assert kills == runs and committed


@pytest.mark.parametrize("point", ["store.before_commit", "store.after_commit"])
def test_crash_point_between_insert_and_commit_is_all_or_nothing(tmp_path: Path, point: str) -> None:
    for n in (1, 2, 5):
        proc = _run_writer(tmp_path, n, env={"CHECKPOINT_CRASHPOINTS": f"{point}:{n}"})
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        with EventStore(tmp_path, DEV, max_db_mb=64) as s:
            assert s.verify_chain().ok
            last = max((int(x.split()[1]) for x in out.splitlines() if x.startswith("COMMITTED")), default=0)
            head = s.head().last_seq
            if point == "store.before_commit":
                assert head == last, "a batch killed before COMMIT must leave no trace"
            else:
                assert head >= last
