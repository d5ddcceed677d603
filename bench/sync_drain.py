"""Backlog drain benchmark (sync.md §6.8 item 1): a gate database pre-filled with N events, the real
server on loopback (its own process), the real agent; seconds until ``acked_seq`` reaches the head.

    .venv/bin/python bench/sync_drain.py [--events 100000] [--database URL] [--no-rate-limit]

The mix is the spec's: 85 % decision, 5 % override, 3 % temp_alert, 2 % sentinel_alert, 5 % other,
with realistic payloads of about 750 canonical bytes. The events carry an ``at`` from an earlier
boot, as a backlog does after hours offline, so no flash copies are sent (sync.md §3.6). Prints one
JSON line: machine, Python and SQLite versions, seconds, events/s, batches, bytes on the wire,
server and agent CPU seconds, and the load average (other work on the machine slows it). Targets (reported, never asserted): ≤ 60 s on a developer machine with the
SQLite server; ≤ 300 s from a Pi 4 to a server on the same LAN.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config import GateConfig  # noqa: E402
from edge.store.events import EventStore  # noqa: E402
from sync.agent.core import Agent  # noqa: E402
from sync.agent.enroll import enroll  # noqa: E402
from sync.agent.notify import Notifier  # noqa: E402
from sync.canonical import canonical  # noqa: E402
from sync.keys import generate_key, write_key_file  # noqa: E402
from sync.timefmt import format_ms, utc_now_ms  # noqa: E402

DEVICE = "gate-bench-01"
VENUE = {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}
OLD_BOOT = "0b5e0b5e-0000-4000-8000-000000000001"
SURNAMES = "张王李赵刘陈杨黄吴周"


def _subject(rng: random.Random) -> dict[str, Any]:
    return {"pid": f"{rng.getrandbits(128):032x}", "pid_kid": 1, "name_m": rng.choice(SURNAMES) + "*" +
            rng.choice(SURNAMES), "role": rng.choice(["staff", "visitor", "driver"]), "firm_id": f"F{rng.randrange(10_000):04d}",
            "whitelisted": rng.random() < 0.9}


def payload(kind: str, rng: random.Random, seq_hint: int) -> dict[str, Any]:
    if kind == "decision":
        outcome = rng.choices(["admit", "deny", "refer"], [90, 6, 4])[0]
        return {"venue": VENUE, "lane": "person", "mode": "normal", "bundle": {"version": 42, "state": "fresh"},
                "outcome": outcome, "alert": "none",
                "credential": {"kid": f"{rng.getrandbits(64):016x}", "kind": "health", "status": "valid"},
                "subject": _subject(rng),
                "health": {"code": "green", "test_age_min": rng.randrange(30, 4000), "flags": []},
                "temp": {"body_centi_c": rng.randrange(3580, 3760), "status": "ok"},
                "reasons": [] if outcome == "admit" else ["fever", "pre-temp-high"]}
    if kind == "override":
        return {"decision_seq": max(1, seq_hint - 1), "from": "refer", "to": "admit", "guard": "guard-07",
                "reason": "checked_by_hand", "note": "核验纸质证明 paper proof checked at the booth window",
                "subject": _subject(rng), "venue": VENUE}
    if kind == "temp_alert":
        return {"cause": "fever", "decision_seq": max(1, seq_hint - 1), "body_centi_c": rng.randrange(3730, 3950),
                "threshold_centi_c": 3730, "subject": _subject(rng), "venue": VENUE,
                "observation_point": {"zh": "南门临时留观点", "en": "the south-gate observation point"}}
    if kind == "sentinel_alert":
        return {"decision_seq": max(1, seq_hint - 1), "flags": ["test_overdue", "unreported_arrival"],
                "subject": _subject(rng), "venue": VENUE}
    return {"venue": VENUE, "code": f"GOODS-{rng.getrandbits(96):024x}-{'Z' * 300}", "format": "QRCode",
            "delivery_seq": None, "plate": "豫A12345", "result": "recorded"}


def prefill(store: EventStore, n: int, *, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    kinds = rng.choices(["decision", "override", "temp_alert", "sentinel_alert", "material_scan"],
                        [85, 5, 3, 2, 5], k=n)
    wall0 = utc_now_ms() - 6 * 3_600_000
    sizes = 0
    done = 0
    while done < n:
        chunk = []
        for i in range(done, min(n, done + 1000)):
            at = {"wall": format_ms(wall0 + i * 200), "clock": "synced", "boot": OLD_BOOT, "mono_ms": 1000 + i * 200}
            p = payload(kinds[i], rng, i)
            chunk.append((kinds[i], p, at))
        for r, (k, p, at) in zip(store.append_many(chunk), chunk, strict=True):
            if r.seq % 97 == 0:
                sizes += len(canonical({"v": 1, "device_id": DEVICE, "seq": r.seq, "kind": k, "at": at,
                                        "payload": p, "prev_hash": "0" * 64}))
        done += len(chunk)
    samples = max(1, n // 97)
    return {"avg_canonical_bytes": round(sizes / samples), "mix": {k: kinds.count(k) for k in set(kinds)}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def checkpoint(*args: str, env: dict[str, str] | None = None) -> str:
    exe = Path(sys.executable).with_name("checkpoint")
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True, env=env, cwd=REPO)
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--database", default=None, help="server database URL (default: SQLite in a temp dir)")
    ap.add_argument("--no-rate-limit", action="store_true", help="turn the server's rate limits off")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ck-drain-"))
    srv_dir = tmp / "server"
    srv_dir.mkdir()
    write_key_file(srv_dir / "server.key", generate_key("server", "bench server"))
    port = free_port()
    toml = [f'data_dir = "{srv_dir}"', f'listen = "127.0.0.1:{port}"', "publisher_key_files = []",
            'log_level = "WARNING"', "background_jobs = false"]
    if args.database:
        toml.append(f'database = "{args.database}"')
    if args.no_rate_limit:
        toml += ["[rate_limit]", "enabled = false"]
    (srv_dir / "server.toml").write_text("\n".join(toml) + "\n")
    scfg = ["--config", str(srv_dir / "server.toml")]
    checkpoint("server", "migrate", *scfg)
    checkpoint("server", "site-add", *scfg, "--site", "bench-site", "--name", "Bench site")
    code = checkpoint("server", "device", "add", *scfg, "--device", DEVICE, "--site", "bench-site",
                      "--venue-id", VENUE["venue_id"], "--zone", "A", "--door", "east").strip().splitlines()[0]
    server = subprocess.Popen([str(Path(sys.executable).with_name("checkpoint")), "server", "run", *scfg],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent: Agent | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        gate_dir = tmp / "gate"
        cfg = GateConfig.model_validate({"gate": {"device_id": DEVICE, "data_dir": str(gate_dir)},
                                         "store": {"reserve_mb": 0}, "sync": {"server_url": url},
                                         "log": {"level": "WARNING"}})
        enroll(cfg, server_url=url, code=code)
        t0 = time.monotonic()
        with EventStore(gate_dir, DEVICE) as store:
            info = prefill(store, args.events)
            head = store.head().last_seq
        fill_s = time.monotonic() - t0
        agent = Agent(cfg, bundle_update=None, notifier=Notifier(env={}), ntp=lambda: True,
                      host={"cpu_temp_centi_c": None, "load1": None, "throttled": None})
        cpu0 = cpu_s(server.pid)
        own0 = time.process_time()
        t0 = time.monotonic()
        agent.start()
        while agent.outbox.state().acked_seq < head:
            agent.tick()
            if agent.outbox.state().state in ("conflict", "revoked", "blocked"):
                raise SystemExit(f"drain stopped: {agent.outbox.state()}")
            if agent.due.upload > time.monotonic():
                time.sleep(min(0.05, agent.due.upload - time.monotonic()))
        seconds = time.monotonic() - t0
        server_cpu = cpu_s(server.pid) - cpu0
        agent_cpu = time.process_time() - own0
        c = agent.client
        result = {
            "bench": "sync_drain", "events": head, "seconds": round(seconds, 2),
            "events_per_s": round(head / seconds), "batches": agent.uploader.batches_ok,
            "requests": c.requests, "wire_bytes_sent": c.bytes_sent, "wire_bytes_received": c.bytes_received,
            "backoffs": agent.uploader.backoff.failures, "server_cpu_s": round(server_cpu, 2),
            "agent_cpu_s": round(agent_cpu, 2), "load1_after": round(os.getloadavg()[0], 2),
            "server_db": "postgresql" if args.database and args.database.startswith("postgresql") else "sqlite",
            "rate_limit": not args.no_rate_limit, "prefill_s": round(fill_s, 1), **info,
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine(),
                        "kernel": platform.release()},
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        }
        print(json.dumps(result, ensure_ascii=False))
    finally:
        if agent is not None:
            agent.close()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
