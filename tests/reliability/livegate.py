"""One enrolled gate beside a real server, for the disk-full and clock tests.

``LiveGate`` starts the real server app on loopback (``ServerHarness``: uvicorn in a thread,
SQLite or PostgreSQL, the real clock), creates the device, enrols a gate data directory
with a real one-time code, and hands out the gate's parts: an ``EventStore`` with the
store settings under test, the shared ``TrustedClock``, and the real sync ``Agent`` (run
in this process, ticked by the test, optionally through the fault proxy).

``chain_figures`` checks G1-G3 on the server's rows against what the gate promised and
returns the numbers of sync.md §6.7.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from edge.clock import TrustedClock
from edge.config import GateConfig
from edge.store.events import Appended, EventStore
from edge.store.state import StateDB
from sync.agent.core import Agent
from sync.agent.enroll import enroll
from sync.agent.notify import Notifier
from sync.events import genesis, hash_body
from sync.timefmt import utc_now_ms
from tests.crash.writer import item
from tests.server.harness import ServerHarness

DEVICE = "gate-rel-01"
HOST = {"cpu_temp_centi_c": 4500, "load1": 0.1, "throttled": None}


class RealClock:
    """The server's clock: real time."""

    def __call__(self) -> int:
        return utc_now_ms()


class LiveGate:
    def __init__(self, tmp: Path, *, db_url: str | None = None, store: dict[str, Any] | None = None,
                 sync: dict[str, Any] | None = None, device_id: str = DEVICE, data_dir: Path | None = None,
                 server_key: Any = None) -> None:
        self.tmp = tmp
        self.device_id = device_id
        self.h = ServerHarness(db_url or f"sqlite:///{tmp / 'server.db'}", tmp, clock=RealClock(),  # type: ignore[arg-type]
                               server_key=server_key)
        self.data = data_dir or tmp / "gate"
        self.data.mkdir(parents=True, exist_ok=True)
        self._store_kw = {"reserve_mb": 0, **(store or {})}
        self._sync_kw = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "poll_bundle_s": 3600, **(sync or {})}
        self.cfg = self.config()
        enroll(self.cfg, server_url=self.h.url, code=self.h.add_device(device_id))
        self.state = StateDB(self.data)
        self.clock = TrustedClock(self.state, ntp=lambda: True)
        self.rng = random.Random(5)
        self.n = 0
        self.last_decision: int | None = None
        self.committed: dict[int, str] = {}
        self._closers: list[Any] = []

    def config(self, server_url: str | None = None) -> GateConfig:
        return GateConfig.model_validate({
            "gate": {"device_id": self.device_id, "data_dir": str(self.data)},
            "store": self._store_kw,
            "sync": {"server_url": server_url or self.h.url, **self._sync_kw},
        })

    def store(self, **kw: Any) -> EventStore:
        s = self.cfg.store
        args = {"max_db_mb": s.max_db_mb, "reserve_mb": s.reserve_mb, "on_full": s.on_full, **kw}
        store = EventStore(self.data, self.device_id, **args)
        self._closers.append(store.close)
        return store

    def agent(self, server_url: str | None = None) -> Agent:
        a = Agent(self.config(server_url), notifier=Notifier(env={}), ntp=lambda: True, host=HOST,
                  rng=random.Random(3), bundle_update=None)
        self._closers.append(a.close)
        return a

    def write(self, store: EventStore, n: int, *, batch: int = 1) -> list[Appended]:
        """Append ``n`` mixed events (the crash writer's mix); every return is remembered as committed."""
        out: list[Appended] = []
        while len(out) < n:
            at = self.clock.read().at()
            items = []
            for _ in range(min(batch, n - len(out))):
                self.n += 1
                kind, payload = item(self.rng, self.n, self.last_decision)
                items.append((kind, payload, at))
            got = store.append_many(items)
            for (kind, _, _), r in zip(items, got, strict=True):
                self.committed[r.seq] = r.hash
                if kind == "decision":
                    self.last_decision = r.seq
            out += got
        return out

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c()
            except Exception:  # noqa: S110 - best effort at teardown
                pass
        self.state.close()
        self.h.close()

    # -- the server's side -----------------------------------------------------------------------

    def rows(self, sql: str, **params: Any) -> list[Any]:
        return self.h.rows(sql, d=self.device_id, **params)

    def holes(self) -> list[tuple[int, int, str, str, int | None, bool]]:
        return [(r.from_seq, r.to_seq, r.last_hash, r.cause, r.gap_seq, bool(r.confirmed)) for r in self.rows(
            "SELECT * FROM event_holes WHERE device_id = :d ORDER BY from_seq")]

    def acked(self) -> int:
        return int(self.rows("SELECT acked_seq FROM devices WHERE device_id = :d")[0].acked_seq)


def gate_holes(store: EventStore) -> list[tuple[int, int, str, str, int]]:
    return [(h.from_seq, h.to_seq, h.last_hash, h.cause, h.gap_seq) for h in store.holes()]


def gap_events(store: EventStore) -> list[dict[str, Any]]:
    return [json.loads(e.body)["payload"] | {"seq": e.seq} for e in store.iter_all() if e.kind == "gap"]


def chain_figures(live: LiveGate, store: EventStore, test: str) -> tuple[dict[str, Any], list[str]]:
    """G1-G3 on the server's rows for this gate, and the §6.7 numbers."""
    problems: list[str] = []
    rows = live.rows("SELECT seq, hash, prev_hash, body FROM events WHERE device_id = :d ORDER BY seq")
    holes = live.rows("SELECT from_seq, to_seq, last_hash FROM event_holes WHERE device_id = :d ORDER BY from_seq")
    conflicts = live.rows("SELECT count(*) AS n FROM event_conflicts WHERE device_id = :d")[0].n
    acked = live.acked()
    stored = {int(r.seq): r.hash for r in rows}
    in_hole: set[int] = set()
    for h in holes:
        in_hole.update(range(int(h.from_seq), int(h.to_seq) + 1))
    hole_end = {int(h.to_seq): h.last_hash for h in holes}
    missing = [s for s in range(1, acked + 1) if s not in stored and s not in in_hole]
    prev, bad = genesis(live.device_id), []
    expected = 1
    for r in rows:
        while expected in in_hole and expected < r.seq:
            expected += 1
        if r.seq - 1 in hole_end and r.seq - 1 not in stored:
            prev = hole_end[r.seq - 1]
        body = json.loads(r.body)
        if hash_body(r.body.encode()) != r.hash or r.prev_hash != prev or body.get("prev_hash") != prev:
            bad.append(int(r.seq))
        prev, expected = r.hash, r.seq + 1
    lost = [s for s, h in live.committed.items() if stored.get(s) != h and s not in in_hole]
    head = store.head().last_seq
    if lost:
        problems.append(f"G1: committed events neither stored nor in a declared hole: {sorted(lost)[:5]}")
    if missing:
        problems.append(f"G2: seqs missing without a hole: {missing[:5]}")
    if bad:
        problems.append(f"G3: chain does not verify at {bad[:5]}")
    if conflicts:
        problems.append(f"{conflicts} conflicting rows")
    if acked != head or len(stored) + len(in_hole) != head:
        problems.append(f"G6: server acked {acked}, stored {len(stored)} + in holes {len(in_hole)}, gate head {head}")
    fig = {"test": test, "backend": "sqlite" if live.h.config.is_sqlite else "postgresql",
           "events_committed": len(live.committed), "events_acked": store.outbox().acked_seq,
           "events_stored": len(stored), "duplicates_stored": len(rows) - len({r.hash for r in rows}),
           "gaps_declared": len(in_hole), "gaps_undeclared": len(missing), "conflicts": int(conflicts),
           "lost": len(lost), "holes": len(holes), "ok": not problems}
    return fig, problems
