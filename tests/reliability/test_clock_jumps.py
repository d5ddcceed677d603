"""Clock jumps under libfaketime (sync.md §6.5, bundles.md §5, G7): the real gate process and the real
agent with a faked wall clock, the real server on the real one.

One run, in phases (the faked clock is moved by rewriting the ``FAKETIME_TIMESTAMP_FILE``):

1. start in 1970: the gate counts from its floor (``at.clock = floor``, ``behind_floor``); a credential
   issued today is valid although the system clock says 1970; the agent's first request is
   refused with ``401 clock_skew`` and corrected at once by the signed time;
2. +1 year: a valid credential stays valid (the anchor, not the system clock); the agent's
   request time is unaffected (it counts from the signed time on the monotonic clock);
3. −1 year: a credential that expired two days ago (real time) is refused as ``expired``
   although the system clock calls it valid; a bundle that expired in real time is refused
   by ``checkpoint gate import`` run under the same clock;
4. back to real time while a backlog of batches is being uploaded (an NTP step mid-batch).

Then: the server's rows are exactly the gate's chain (seqs, hashes, acks as without jumps),
``clock_warning`` events are there, no event carries a faked date, at most one
``clock_skew`` per jump, the clock state is shown (``floor`` on what was decided before the first
signed time, then ``synced`` with the system clock's offset of a year in the heartbeats) and the
heartbeats kept their rhythm. Skipped with the reason when libfaketime is not installed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.demo import DemoWorld, qr_image
from edge.store.schema import connect
from sync.timefmt import parse_ms, utc_now_ms
from tests.crash import figures
from tests.crash.harness import REPO, child_env
from tests.gate.conftest import bundle_dir, installed, world  # noqa: F401  (fixtures)
from tests.reliability.livegate import LiveGate, chain_figures

pytestmark = pytest.mark.slow
SHIM = Path(__file__).resolve().parent / "faketime_shim"
DEVICE = "gate-clock-01"
DAY_MS = 86_400_000


def libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


class Faked:
    """The faked wall clock of the gate's processes: an offset in days from real time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set_days(self, days: int) -> None:
        self.path.write_text(f"{'+' if days >= 0 else '-'}{abs(days)}d\n")
        time.sleep(1.5)  # FAKETIME_CACHE_DURATION=1: every process has re-read it after this


def gate_events(data: Path, kind: str | None = None) -> list[dict[str, Any]]:
    conn = connect(data / "events.db", "reader")
    try:
        rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [e for e in (json.loads(r[0]) for r in rows) if kind is None or e["kind"] == kind]


def health_claims(w: DemoWorld, key: str) -> dict[str, Any]:
    p = next(p for p in w.people if p.key == key)
    return {"iss": "HA-410100", "sub": w.sub(p.key), "name": p.name, "role": p.role, "firm": p.firm,
            "colour": p.colour, "flags": list(p.flags)}


def test_clock_jumps_change_no_seq_ack_or_validity(
        tmp_path: Path, world: DemoWorld, installed: Callable[[str], Path],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    lib = libfaketime()
    if lib is None:
        pytest.skip("libfaketime not installed (Debian package faketime)")
    from edge.credentials import mint

    caplog.set_level(logging.INFO, logger="sync.server.routes.devices")
    data = tmp_path / "gate"
    shutil.copytree(installed(DEVICE), data)
    live = LiveGate(tmp_path, device_id=DEVICE, data_dir=data, server_key=world.keys["server"],
                    sync={"heartbeat_s": 2, "backoff_base_s": 0.2, "backoff_cap_s": 2})
    cam = data / "camera"
    cam.mkdir()
    toml = tmp_path / "gate.toml"
    toml.write_text(
        f'[gate]\ndevice_id = "{DEVICE}"\ndata_dir = "{data}"\n'
        f'[camera]\nsource = "folder"\npath = "{cam}"\nimage_hold_s = 0.5\n'
        '[thermometer]\nenabled = false\n[decode]\ndeep_interval_s = 0\n[gpio]\npin_factory = "mock"\n'
        '[console]\nenabled = false\n'
        f'[sync]\nserver_url = "{live.h.url}"\nheartbeat_s = 2\npoll_bundle_s = 3600\nbackoff_base_s = 0.2\n'
        'backoff_cap_s = 2\n[log]\nlevel = "INFO"\nformat = "json"\n')
    stamp = tmp_path / "faketime.rc"
    faked = Faked(stamp)
    real_now = utc_now_ms()
    to_1970 = real_now // DAY_MS
    stamp.write_text(f"-{to_1970}d\n")
    env = child_env(LD_PRELOAD=lib, FAKETIME_TIMESTAMP_FILE=str(stamp), FAKETIME_CACHE_DURATION="1",
                    FAKETIME_DONT_FAKE_MONOTONIC="1", GPIOZERO_PIN_FACTORY="mock")
    env["PYTHONPATH"] = f"{SHIM}{os.pathsep}{env['PYTHONPATH']}"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "edge.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                 env=env, cwd=REPO, start_new_session=True)
        procs[name] = p
        return p

    def tail(name: str) -> str:
        return "\n".join((logs / f"{name}.log").read_text(errors="replace").splitlines()[-30:])

    def wait(cond: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = cond()
            if got:
                return got
            for name, p in procs.items():
                if p.poll() is not None:
                    raise AssertionError(f"{name} exited {p.returncode} while waiting for {what}:\n{tail(name)}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(tail(n) for n in procs))

    shown = 0

    def decide(text: str) -> dict[str, Any]:
        nonlocal shown
        before = len(gate_events(data, "decision"))
        shown += 1
        name = cam / f"{shown:04d}.png"
        import cv2

        cv2.imwrite(str(cam / ".tmp.png"), qr_image(text))
        os.replace(cam / ".tmp.png", name)
        try:
            got = wait(lambda: gate_events(data, "decision")[before:], f"a decision on picture {shown}", 60)
        finally:
            name.unlink(missing_ok=True)
        return got[0]

    try:
        spawn("gate", "gate", "run", "--config", str(toml))
        wait(lambda: gate_events(data, "device_start"), "device_start of the gate in 1970")
        start_ev = gate_events(data, "device_start")[-1]
        # 1. 1970: the floor holds, a credential issued today is valid
        valid_a = decide(world.health_code(next(p for p in world.people if p.key == "green-staff")))
        spawn("agent", "sync", "run", "--config", str(toml))
        wait(lambda: live.acked() >= len(gate_events(data)) - 1, "the agent's first uploads")
        # 2. +1 year
        faked.set_days(365)
        valid_b = decide(world.health_code(next(p for p in world.people if p.key == "yellow-staff")))
        hb_mark = len(live.rows("SELECT id FROM heartbeats WHERE device_id = :d"))
        time.sleep(6)
        hb_year = len(live.rows("SELECT id FROM heartbeats WHERE device_id = :d")) - hb_mark
        # 3. −1 year: expired in real time, valid by the system clock
        faked.set_days(-365)
        expired_text = mint("health", health_claims(world, "green-staff"), world.keys["issuer"],
                            now_ms=real_now - 3 * DAY_MS, expires_in_s=86_400)
        expired_c = decide(expired_text)
        valid_d = decide(world.health_code(next(p for p in world.people if p.key == "expired-test")))
        stale = world.build_bundle(version=7, expires_in_s=-20)   # expired 20 s after it was signed, long ago
        imp = subprocess.run([sys.executable, "-m", "edge.cli", "gate", "import", "--config", str(toml), str(stale)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        # 4. back to real time while a backlog is uploading (an NTP step mid-batch)
        store = live.store()
        live.write(store, 2500, batch=250)
        faked.set_days(0)
        procs["gate"].send_signal(signal.SIGTERM)               # its device_stop is the last event
        assert procs["gate"].wait(30) == 0, f"gate did not stop cleanly:\n{tail('gate')}"
        del procs["gate"]
        wait(lambda: live.acked() == store.head().last_seq and store.outbox().acked_seq == store.head().last_seq,
             "the drain after the step", 120)
        procs["agent"].send_signal(signal.SIGTERM)
        assert procs["agent"].wait(30) == 0, f"agent did not stop cleanly:\n{tail('agent')}"
        # -- what the jumps must not have changed (G7) -------------------------------------------------
        fig, problems = chain_figures(live, store, "clock_jumps")
        assert not problems, problems
        events = gate_events(data)
        assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[-1]["seq"] + 1))
        walls = [parse_ms(e["at"]["wall"]) for e in events]
        assert all(abs(w - real_now) < 2 * DAY_MS for w in walls), "an event carries the faked date"
        # -- what they must show ----------------------------------------------------------------------
        assert start_ev["at"]["clock"] == "floor"
        warnings = Counter(e["payload"]["cause"] for e in events if e["kind"] == "clock_warning")
        assert warnings["behind_floor"] >= 1 and (warnings["skew"] + warnings["step"]) >= 1, warnings
        statuses = [d["payload"]["credential"]["status"] for d in (valid_a, valid_b, expired_c, valid_d)]
        assert statuses == ["valid", "valid", "expired", "valid"], statuses
        assert imp.returncode != 0 and "expired" in (imp.stdout + imp.stderr), imp.stdout + imp.stderr
        skews = sum(1 for r in caplog.records if "error=clock_skew" in r.getMessage())
        assert 1 <= skews <= 4, f"{skews} clock_skew answers for 4 jumps"   # 1970 start, +1 y, −1 y, step
        beats = [json.loads(r.body)["clock"] for r in live.rows("SELECT body FROM heartbeats WHERE device_id = :d")]
        states = Counter(b["state"] for b in beats)
        # shown: the decision made before any signed time says floor; once anchored the fleet view says
        # synced and how far off the system clock is (a year either way)
        assert valid_a["at"]["clock"] == "floor" and states["synced"] >= 1, (valid_a["at"], states)
        offsets = [b.get("offset_ms") for b in beats if b.get("offset_ms") is not None]
        assert max(offsets) > 300 * DAY_MS and min(offsets) < -300 * DAY_MS, offsets
        assert 1 <= hb_year <= 6, f"{hb_year} heartbeats in 6 s at heartbeat_s = 2 after +1 year"
        fig.update(clock_skew_401=skews, clock_warnings=dict(warnings), heartbeat_clock_states=dict(states),
                   credentials=statuses, stale_bundle_import="rejected")
        figures.report(fig)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
        live.close()
