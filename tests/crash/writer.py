"""The kill -9 harness's writer (sync.md §6.2): appends mixed kinds in a loop, logs each commit.

    python -m tests.crash.writer DATA_DIR DEVICE_ID SEED LOG [--rate EVENTS_PER_S] [--max-db-mb N]

It stands in for the gate process: events go through ``EventStore.append`` /
``append_many`` with ``at`` from the shared ``TrustedClock``, in the kinds and rough
proportions of sync.md §6.8 (decisions, overrides, fever and sentinel alerts, an
urgent decision now and then so the agent's flash path runs too, material scans).
After each append returns it writes ``COMMITTED <seq> <hash>`` to LOG and flushes,
so the harness knows every event the store promised to keep. ``READY`` is written
once the store is open; ``FULL`` once an append had to run the full-disk procedure
(the disk-full tests use it). The writer never catches ``StoreUnavailable``: an
append that fails is a finding, and the harness sees the exit.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

from edge.clock import TrustedClock
from edge.store.events import EventStore
from edge.store.state import StateDB

VENUE = {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}
NAMES = ["张*三", "李*", "王*明", "欧**明", "Z*** S**"]


def subject(rng: random.Random) -> dict[str, Any]:
    return {"pid": f"{rng.getrandbits(128):032x}", "pid_kid": 1, "name_m": rng.choice(NAMES), "role": "staff",
            "firm_id": "F0012", "whitelisted": rng.random() < 0.8}


def decision(rng: random.Random, n: int, *, alert: str = "none") -> dict[str, Any]:
    outcome = rng.choice(["admit"] * 6 + ["deny", "refer"])
    temp = rng.choice([None, 3620, 3655, 3701])
    return {"venue": VENUE, "lane": "person", "mode": "normal", "bundle": {"version": 1, "state": "fresh"},
            "outcome": outcome, "alert": alert, "credential": {"kind": "health", "status": "valid"},
            "subject": subject(rng), "health": {"code": "green", "test_age_min": rng.randrange(0, 4000), "flags": []},
            "temp": {"body_centi_c": temp, "status": "ok" if temp else "absent"},
            "reasons": [] if outcome == "admit" else [f"rule-{n % 7}"]}


def item(rng: random.Random, n: int, last_decision: int | None) -> tuple[str, dict[str, Any]]:
    roll = rng.random()
    if roll < 0.85:
        return "decision", decision(rng, n)
    if roll < 0.90:
        return "override", {"decision_seq": last_decision or 1, "from": "refer", "to": "admit", "guard": "guard-1",
                            "reason": "checked_by_hand", "note": "x" * rng.randrange(0, 120), "subject": subject(rng),
                            "venue": VENUE}
    if roll < 0.93:
        return "temp_alert", {"cause": "fever", "decision_seq": last_decision, "body_centi_c": 3790,
                              "threshold_centi_c": 3730, "subject": subject(rng), "venue": VENUE,
                              "observation_point": {"zh": "南门临时留观点", "en": "south-gate observation point"}}
    if roll < 0.95:
        return "sentinel_alert", {"decision_seq": last_decision, "flags": ["test_overdue"], "subject": subject(rng),
                                  "venue": VENUE}
    if roll < 0.96:
        return "decision", decision(rng, n, alert="urgent")
    return "material_scan", {"venue": VENUE, "code": f"GOODS-{n:08d}", "format": "QRCode", "delivery_seq": None,
                             "plate": None, "result": "recorded"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("device_id")
    ap.add_argument("seed", type=int)
    ap.add_argument("log")
    ap.add_argument("--rate", type=float, default=150.0, help="events per second, roughly (0 = as fast as it goes)")
    ap.add_argument("--max-db-mb", type=int, default=1024)
    ap.add_argument("--reserve-mb", type=int, default=0)
    ap.add_argument("--count", type=int, default=0, help="stop after this many events (0 = never)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    store = EventStore(args.data_dir, args.device_id, max_db_mb=args.max_db_mb, reserve_mb=args.reserve_mb)
    clock = TrustedClock(StateDB(args.data_dir), ntp=lambda: False)
    out = open(args.log, "a", encoding="utf-8")
    out.write(f"READY {os.getpid()}\n")
    out.flush()
    n = 0
    last_decision: int | None = None
    start = time.monotonic()
    while not args.count or n < args.count:
        size = rng.choice([1, 1, 1, 1, 2, 3, 8, 25])
        at = clock.read().at()
        items = []
        for _ in range(size):
            n += 1
            kind, payload = item(rng, n, last_decision)
            items.append((kind, payload, at))
        results = store.append(*items[0]) if size == 1 else None
        done = [results] if results is not None else store.append_many(items)
        for (kind, _, _), r in zip(items, done, strict=True):
            if kind == "decision":
                last_decision = r.seq
            out.write(f"COMMITTED {r.seq} {r.hash}\n")
        if store.full:
            out.write("FULL\n")
        out.flush()
        if args.rate > 0:
            ahead = n / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    out.write("DONE\n")
    out.close()
    store.close()


if __name__ == "__main__":
    sys.exit(main())
