"""Kill -9 harness for bundle updates (bundles.md §3.6): old or new fully in force, never a mix.

Run as ``python -m tests.bundles.crash_harness --dir DIR --runs N --seed S``; prints one
JSON object. The harness process imports everything once, builds a fleet (keys
rotations every few versions, rosters of different sizes, mode changes), then for
every run forks a child that starts the updater and polls for the next update, and
kills it with SIGKILL: half the runs at a named crash point (``sync.crashpoints``,
armed in the child), half after a random delay. A second forked child then runs the
start-up steps and checks, as a gate process would see it:

- the pointer names either the version in force before the run or the new one (never
  another), the version and keys version never go down;
- the bundle file it names opens, holds that manifest, and its content (mode, roster
  key, staff count) is exactly that version's: never a mix of two bundles;
- every part file of the manifest in force is present and hashes right (not corrupt);
- the switch's event exists once the start-up ran, and the event chain verifies.

The harness itself never opens a database, so forking it is safe.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sync import crashpoints
from tests.bundles.helpers import T0, Fleet, Gate, make_key

POINTS = [
    "bundle.k6.before", "bundle.k6.committed", "bundle.k6.event",
    "bundle.m10.part_written", "bundle.m10.part_stored", "bundle.m11.validated",
    "bundle.m12.before_commit", "bundle.m12.built", "bundle.m13.before", "bundle.m13.committed",
    "bundle.m13.event", "bundle.m15.done", "store.before_commit", "store.after_commit",
]
STEP_MS = 60_000


def _roster(fleet: Fleet, n: int, key: str) -> dict[str, Any]:
    import hashlib

    staff = [{"sub": hashlib.md5(f"{key}-{i}".encode()).hexdigest(), "codes": [hashlib.md5(f"c{key}{i}".encode()).hexdigest()],
              "name": f"W*{i % 100}", "role": "staff", "firm": "F001", "team": "A", "zones": ["Z1", "Z2"],
              "closed_loop": False, "colour": "green", "flags": [], "last_test": "2026-11-30T08:00:00.000Z"}
             for i in range(n)]
    return dict(fleet.sources["roster"], roster_key=key * 32, staff=staff)


def build_fleet(versions: int, rng: random.Random) -> tuple[Fleet, list[dict[str, Any]]]:
    """The fleet and, per version, what must be in force: id, keys version, mode, roster key, staff count."""
    fleet = Fleet()
    rosters = [_roster(fleet, 3, "a1"), _roster(fleet, 150, "b2"), _roster(fleet, 60, "c3")]
    plan: list[dict[str, Any]] = []
    for v in range(1, versions + 1):
        t = T0 + v * STEP_MS
        if v > 1 and v % 7 == 0:  # a keys rotation before this version: the child runs K then M
            roots = [make_key(f"crash-root-{v}-{i}", "root") for i in range(3)]
            fleet.rotate(roots=roots, issued_at_ms=t - 30_000)
        roster = rosters[rng.randrange(len(rosters))]
        mode = rng.choice(["normal", "emergency"])
        m = fleet.publish(server_time_ms=t, validity_s=14 * 86_400, mode=mode, changes={"roster": roster})
        plan.append({"version": v, "id": m.id, "keys_version": m.keys_version, "mode": mode,
                     "roster_key": roster["roster_key"], "staff": len(roster["staff"]), "t": t})
    return fleet, plan


def _gate(data_dir: Path, now_ms: int) -> Gate:
    g = Gate(data_dir, floor="2026-11-01T00:00:00.000Z")
    g.clock.set(now_ms, "synced")
    return g


def child_update(data_dir: Path, fleet: Fleet, target: dict[str, Any], point: str | None) -> None:
    """In a forked child: start-up, then one poll that should apply ``target``."""
    if point:
        os.environ["CHECKPOINT_CRASHPOINTS"] = f"{point}:1"
    crashpoints.reload()
    g = _gate(data_dir, target["t"] + 20_000)  # start-up already ran in the check child (the restart)
    m = fleet.manifests[target["id"]]
    from sync.bundle import parse_manifest

    manifest = parse_manifest(m)
    f = fleet.fetcher(server_time_ms=target["t"] + 10_000)
    f.keys_docs = {n: d for n, d in f.keys_docs.items() if n <= target["keys_version"]}  # not yet published
    f.current_doc = lambda nonce: fleet.statement(nonce, server_time_ms=target["t"] + 10_000, manifest=manifest)
    res = g.updater.poll(f)
    if res.status != "applied":
        print(json.dumps({"child_error": res.status, "detail": str(res.rejection or res.detail)}), file=sys.stderr)
        os._exit(3)
    os._exit(0)


def child_check(data_dir: Path, plan: dict[int, dict[str, Any]], old: int, new: int, out: Path) -> None:
    """In a forked child: start-up as a restarted gate would, then check every invariant."""
    crashpoints.reload()
    result: dict[str, Any] = {"ok": False}
    try:
        g = _gate(data_dir, plan[new]["t"] + 40_000)
        report = g.updater.startup()
        p = g.pointer()
        if p is None:
            raise AssertionError("no bundle in force")
        if p.version not in (old, new):
            raise AssertionError(f"version {p.version} in force, expected {old} or {new}")
        want = plan[p.version]
        if p.manifest_id != want["id"] or p.keys_version != want["keys_version"]:
            raise AssertionError("the pointer's id or keys version is not that version's")
        if report.corrupt or p.corrupt:
            raise AssertionError(f"corrupt after restart: {report.corrupt}")
        from edge.bundles import SQLiteBundle

        with SQLiteBundle(data_dir / "bundles" / p.bundle_file, manifest_id=p.manifest_id) as view:
            got = (view.version, view.mode["mode"], view.roster_key.hex() if view.roster_key else None,
                   view.counts["staff"])
        expect = (p.version, want["mode"], want["roster_key"], want["staff"])
        if got != expect:
            raise AssertionError(f"a mix: bundle file holds {got}, the pointer's version is {expect}")
        keys = g.updater.keys()
        if keys is None or keys.version < plan[old]["keys_version"]:
            raise AssertionError("keys version went down")
        applied = g.events_of("bundle_applied")
        if not applied or applied[-1]["version"] != p.version or p.applied_seq is None:
            raise AssertionError("the switch's bundle_applied event is missing after start-up")
        if g.state.read_row("keys")["applied_seq"] is None:
            raise AssertionError("the keys_applied event is missing after start-up")
        if new % 10 == 0 or new == max(plan):
            chain = g.events.verify_chain()
            if not chain.ok:
                raise AssertionError(f"event chain broken: {chain.problem}")
        result = {"ok": True, "version": p.version, "keys_version": keys.version}
        g.close()
    except Exception as exc:  # report, never hang the harness
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(result))
    os._exit(0)


def _fork(fn: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        finally:
            os._exit(70)
    return pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=220)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    # SIGKILL loses nothing the kernel already has, so fsync adds only time here: use tmpfs when there is one.
    shm = Path("/dev/shm")
    work = args.dir or Path(tempfile.mkdtemp(prefix="bundle-crash-", dir=shm if shm.is_dir() else None))
    data_dir = work / "gate"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    # A kill usually leaves the old version, so the plan needs about one version per two runs.
    fleet, plan_list = build_fleet(args.runs // 2 + 20, rng)
    plan = {p["version"]: p for p in plan_list}

    def init() -> None:
        g = _gate(data_dir, T0)
        g.updater.install_anchor(fleet.keys_docs[1])
        g.close()
        os._exit(0)

    pid = _fork(init)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    current = 0
    stats: dict[str, Any] = {"runs": 0, "killed": 0, "completed": 0, "old": 0, "new": 0, "by_point": {},
                             "timed_kills": 0, "failures": [], "seconds": 0.0}
    durations: list[float] = []
    started = time.monotonic()
    check_file = work / "check.json"
    for run in range(args.runs):
        target = current + 1
        if target not in plan:
            break
        rotation = plan[target]["keys_version"] > plan[max(current, 1)]["keys_version"]
        k6 = [p for p in POINTS if p.startswith("bundle.k6")]
        points = ([*k6, *k6, *POINTS] if rotation  # K is short: aim at it more often when there is one
                  else [p for p in POINTS if p not in k6])
        point = rng.choice(points) if run % 2 == 0 and run > 0 else None
        if rotation and run > 0 and not any(p in stats["by_point"] for p in k6):
            point = rng.choice(k6)  # make sure a keys update is killed at least once
        timed = point is None and run > 0
        t0 = time.monotonic()
        pid = _fork(child_update, data_dir, fleet, plan[target], point)
        killed = False
        if timed:
            typical = sorted(durations)[len(durations) // 2] if durations else 0.3
            time.sleep(rng.uniform(0, typical * 1.2))
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == -signal.SIGKILL:
            stats["killed"] += 1
            stats["timed_kills"] += int(timed and killed)
            if point:
                stats["by_point"][point] = stats["by_point"].get(point, 0) + 1
        elif code == 0:
            stats["completed"] += 1
            if not timed:
                durations.append(time.monotonic() - t0)
        else:
            stats["failures"].append({"run": run, "error": f"update child exited {code}", "point": point})
        check_file.unlink(missing_ok=True)
        pid = _fork(child_check, data_dir, plan, max(current, 1), target, check_file)
        os.waitpid(pid, 0)
        try:
            res = json.loads(check_file.read_text())
        except (OSError, ValueError):
            res = {"ok": False, "error": "check child wrote nothing"}
        stats["runs"] += 1
        if not res.get("ok"):
            stats["failures"].append({"run": run, "point": point, "timed": timed, **res})
            break
        if res["version"] == target:
            stats["new"] += 1
            current = target
        else:
            stats["old"] += 1
            if current == 0:
                current = res["version"]
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["final_version"] = current
    stats["final_keys_version"] = plan[max(current, 1)]["keys_version"]
    print(json.dumps(stats, sort_keys=True))
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not stats["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
