"""kill -9 of the gate's appender while the full-disk procedure runs (sync.md §1.8, §6.2, G1, G4).

No test in CI arms ``store.mid_full_procedure`` (the kill -9 harness writes far below its
budget), so this loop does: the crash harness's writer (``tests/crash/writer.py``, the
stand-in for the gate process) appends as fast as it can into one data directory with a
2 MiB budget and nothing acknowledged, so every few hundred events the procedure of §1.8
drops the oldest unacknowledged events behind a ``gap`` event and a ``dropped`` row. Each
life of the writer ends with SIGKILL, either at the crash point (``store.mid_full_procedure:n``)
or at a random moment once it has hit the full budget; then it starts again on the same
files. After every kill:

- the chain verifies (``EventStore.verify_chain``, holes bridged) and ``quick_check`` is ok;
- every ``COMMITTED`` event is stored with its hash or inside a declared hole (nothing
  removed without a trace: G1 on the gate's side);
- every ``dropped`` row has its ``gap`` event at ``gap_seq`` (or that gap event is inside a
  later hole), and the head never went down.

    .venv/bin/python -m bench.soak.full_kill                  # 200 kills
    .venv/bin/python -m bench.soak.full_kill --kills 20       # a quick look

One JSON line, then a summary; exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.soak._common import REPO, emit, machine, quiet_logging, say, seed_arg, stop_on_sigterm

DEVICE = "gate-full-01"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="full_kill", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=200, help="writer lives, each ended by SIGKILL (default 200)")
    ap.add_argument("--seed", type=int, default=None, help="default: $CHECKPOINT_TEST_SEED, else random")
    ap.add_argument("--max-db-mb", type=int, default=2, help="the store's budget (default 2)")
    ap.add_argument("--armed-p", type=float, default=0.5,
                    help="share of lives ended at the crash point rather than at a random moment")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.kills < 1:
        ap.error("--kills must be at least 1")
    return args


def committed(log: Path, problems: list[str]) -> dict[int, str]:
    """Every ``COMMITTED <seq> <hash>`` line printed whole. A kill can cut the last line of a life
    (the writer's buffer is flushed in pieces during a large batch): such an event may be committed,
    but its line was never finished, so it promises nothing (sync.md §6.7, ``events_stored``)."""
    out: dict[int, str] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "COMMITTED" and len(parts[2]) == 64:
            seq, h = int(parts[1]), parts[2]
            if out.get(seq, h) != h:
                problems.append(f"seq {seq} committed twice with different hashes")
            out[seq] = h
    return out


def check(data: Path, log: Path, last_head: int, problems: list[str], n: int) -> dict[str, int]:
    from edge.store.events import EventStore

    store = EventStore(data, DEVICE, max_db_mb=10_000)  # a larger budget: opening must not run the procedure
    try:
        report = store.verify_chain()
        qc = store.quick_check()
        head = store.head().last_seq
        holes = store.holes()
    finally:
        store.close()
    conn = sqlite3.connect(f"file:{data / 'events.db'}?mode=ro", uri=True)
    try:
        rows = {int(s): str(h) for s, h in conn.execute("SELECT seq, hash FROM events")}
        kinds = {int(s): str(k) for s, k in conn.execute("SELECT seq, kind FROM events WHERE kind = 'gap'")}
    finally:
        conn.close()
    in_hole: set[int] = set()
    for h in holes:
        in_hole.update(range(h.from_seq, h.to_seq + 1))
    if not report.ok:
        problems.append(f"kill {n}: chain broken at {report.first_bad_seq}: {report.problem}")
    if qc != "ok":
        problems.append(f"kill {n}: quick_check {qc}")
    if head < last_head:
        problems.append(f"kill {n}: head went down {last_head} -> {head}")
    lost = [s for s, h in committed(log, problems).items() if rows.get(s) != h and s not in in_hole]
    if lost:
        problems.append(f"kill {n}: {len(lost)} committed events neither stored nor in a hole, first {lost[:5]}")
    for h in holes:
        if kinds.get(h.gap_seq) != "gap" and h.gap_seq not in in_hole:
            problems.append(f"kill {n}: hole {h.from_seq}..{h.to_seq} without its gap event at {h.gap_seq}")
    return {"head": head, "rows": len(rows), "holes": len(holes), "in_holes": len(in_hole), "gap_events": len(kinds)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    quiet_logging()
    seed = seed_arg(args.seed)
    rng = random.Random(seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="full-kill-"))
    data, log, out = work / "gate", work / "committed.log", work / "writer.log"
    data.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CHECKPOINT_CRASHPOINTS", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    problems: list[str] = []
    armed_fired = timed = exits = 0
    last: dict[str, int] = {"head": 0}
    t0 = time.monotonic()
    say(f"full_kill: seed {seed}, {args.kills} kills, budget {args.max_db_mb} MiB, work dir {work}")
    proc: subprocess.Popen[bytes] | None = None
    try:
        for n in range(1, args.kills + 1):
            armed = rng.random() < args.armed_p
            e = dict(env)
            if armed:
                e["CHECKPOINT_CRASHPOINTS"] = f"store.mid_full_procedure:{rng.randint(1, 4)}"
            fulls_before = log.read_text().count("FULL") if log.exists() else 0
            with out.open("ab") as o:
                proc = subprocess.Popen([sys.executable, "-m", "tests.crash.writer", str(data), DEVICE,
                                         str(seed * 100_000 + n), str(log), "--rate", "0", "--max-db-mb",
                                         str(args.max_db_mb)], stdout=o, stderr=subprocess.STDOUT, env=e, cwd=REPO,
                                        start_new_session=True)
            end = time.monotonic() + 120
            if armed:
                rc = proc.wait(timeout=180)
                if rc == -signal.SIGKILL:
                    armed_fired += 1
                else:
                    problems.append(f"kill {n}: the writer exited {rc} before its crash point fired")
                    exits += 1
            else:
                # wait until this life has run the procedure at least once, then kill at a random moment
                while time.monotonic() < end and proc.poll() is None and \
                        (log.read_text().count("FULL") if log.exists() else 0) <= fulls_before:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    timed += 1
                rc = proc.wait(timeout=60)
                if rc != -signal.SIGKILL:
                    problems.append(f"kill {n}: the writer exited {rc} by itself")
                    exits += 1
            proc = None
            last = check(data, log, last["head"], problems, n)
            if n % 25 == 0:
                say(f"full_kill: {n}/{args.kills} kills, head {last['head']}, {last['holes']} holes, "
                    f"{len(problems)} problems, {time.monotonic() - t0:.0f} s")
            if len(problems) >= 20:
                break
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    commits = committed(log, problems) if log.exists() else {}
    fig: dict[str, Any] = {"test": "full_kill", "seed": seed, "kills": armed_fired + timed,
                           "at_crashpoint": armed_fired, "at_random_moment": timed, "unexpected_exits": exits,
                           "events_committed": len(commits), "head": last.get("head"), "rows": last.get("rows"),
                           "holes": last.get("holes"), "events_in_holes": last.get("in_holes"),
                           "gap_events": last.get("gap_events"), "problems": len(problems),
                           "full_procedure_runs": log.read_text().count("FULL") if log.exists() else 0,
                           "seconds": round(time.monotonic() - t0, 1)}
    fig["lost"] = sum(1 for p in problems if "neither stored" in p)
    fig["ok"] = not problems
    fig["machine"] = machine()
    emit(fig)
    print(f"full-disk kill loop, seed {seed}: {fig['kills']} kills ({armed_fired} at store.mid_full_procedure, "
          f"{timed} at a random moment after a full-disk run) in {fig['seconds']:.0f} s")
    print(f"  committed {fig['events_committed']}, stored {fig['rows']}, inside declared holes "
          f"{fig['events_in_holes']}, gap events {fig['gap_events']}, full-disk runs {fig['full_procedure_runs']}")
    if problems:
        print(f"FAILED (files kept in {work}):")
        for p in problems[:10]:
            print("  " + p)
        return 1
    print("after every kill: chain verifies, nothing committed removed without a hole and its gap event")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
