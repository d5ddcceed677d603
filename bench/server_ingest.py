"""Server ingest ratio (sync.md §6.8 item 2): the real server against a raw SQLite insert, same run.

    .venv/bin/python bench/server_ingest.py [--events 100000] [--gates 8] [--no-postgres]

- raw: the prebuilt rows (derived columns and canonical bodies computed beforehand) inserted with
  ``sqlite3.executemany`` into the server's own ``events`` table (same columns and indexes, WAL,
  ``synchronous=FULL``), 500 rows per transaction → ``raw_eps``;
- server: the same events uploaded over HTTP to ``checkpoint server run`` (one process, SQLite) by
  ``--gates`` simulated gates in parallel, 500 events per signed batch → ``server_eps``;
- ``ratio = server_eps / raw_eps`` (goal ≥ 0.5, floor 0.35: never asserted, only printed);
- PostgreSQL (a throw-away cluster with the default durable settings) with 1 and 4 server
  processes, against the same raw SQLite figure.

The gates' bodies are serialised before the clock starts; signing (one Ed25519 signature per request)
happens while sending, as on a gate. Prints one JSON line with the machine, Python and SQLite versions,
the load average before and after, and the same comparison per CPU second (``raw_cpu_eps``,
``server_cpu_eps``, ``cpu_ratio``), which a busy machine disturbs less than wall-clock rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from sync.events import build_event, genesis  # noqa: E402
from sync.keys import KeyFile, generate_key  # noqa: E402
from sync.server.derive import derived_columns  # noqa: E402
from sync.signing import enroll_text, head_text, new_nonce, request_text  # noqa: E402
from sync.timefmt import format_ms, utc_now_ms  # noqa: E402

VENUE = {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}
SURNAMES = "张王李赵刘陈杨黄吴周"
BOOT = "0b5e0b5e-0000-4000-8000-000000000001"
BATCH = 500


def _subject(rng: random.Random) -> dict[str, Any]:
    return {"pid": f"{rng.getrandbits(128):032x}", "pid_kid": 1,
            "name_m": rng.choice(SURNAMES) + "*" + rng.choice(SURNAMES), "role": rng.choice(["staff", "visitor"]),
            "firm_id": f"F{rng.randrange(10_000):04d}", "whitelisted": rng.random() < 0.9}


def payload(kind: str, rng: random.Random, seq: int) -> dict[str, Any]:
    """The mix of §6.8 item 1 (about 750 canonical bytes per event)."""
    if kind == "decision":
        outcome = rng.choices(["admit", "deny", "refer"], [90, 6, 4])[0]
        return {"venue": VENUE, "lane": "person", "mode": "normal", "bundle": {"version": 42, "state": "fresh"},
                "outcome": outcome, "alert": "none",
                "credential": {"kid": f"{rng.getrandbits(64):016x}", "kind": "health", "status": "valid"},
                "subject": _subject(rng), "health": {"code": "green", "test_age_min": rng.randrange(30, 4000),
                                                     "flags": []},
                "temp": {"body_centi_c": rng.randrange(3580, 3760), "status": "ok"},
                "reasons": [] if outcome == "admit" else ["fever", "pre-temp-high"]}
    if kind == "override":
        return {"decision_seq": max(1, seq - 1), "from": "refer", "to": "admit", "guard": "guard-07",
                "reason": "checked_by_hand", "note": "核验纸质证明 paper proof checked at the booth window",
                "subject": _subject(rng), "venue": VENUE}
    if kind == "temp_alert":
        return {"cause": "fever", "decision_seq": max(1, seq - 1), "body_centi_c": rng.randrange(3730, 3950),
                "threshold_centi_c": 3730, "subject": _subject(rng), "venue": VENUE,
                "observation_point": {"zh": "南门临时留观点", "en": "the south-gate observation point"}}
    if kind == "sentinel_alert":
        return {"decision_seq": max(1, seq - 1), "flags": ["test_overdue"], "subject": _subject(rng), "venue": VENUE}
    return {"venue": VENUE, "code": f"GOODS-{rng.getrandbits(96):024x}-{'Z' * 200}", "format": "QRCode",
            "delivery_seq": None, "plate": "豫A12345", "result": "recorded"}


class Gate:
    def __init__(self, device_id: str, n: int, seed: int, start_ms: int) -> None:
        self.device_id = device_id
        self.key: KeyFile = generate_key("device", device_id)
        rng = random.Random(seed)
        self.events: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        prev = genesis(device_id)
        kinds = rng.choices(["decision", "override", "temp_alert", "sentinel_alert", "material_scan"],
                            [85, 5, 3, 2, 5], k=n)
        for i, kind in enumerate(kinds, start=1):
            at = {"wall": format_ms(start_ms + i * 1000), "clock": "synced", "boot": BOOT, "mono_ms": i * 1000}
            ev, body, h = build_event(device_id=device_id, seq=i, kind=kind, at=at, payload=payload(kind, rng, i),
                                      prev_hash=prev)
            ev["hash"] = h
            self.events.append(ev)
            self.bodies.append(body)
            prev = h
        self.batches: list[bytes] = []
        for lo in range(0, n, BATCH):
            evs = self.events[lo:lo + BATCH]
            first, last = evs[0], evs[-1]
            doc = {"device_id": device_id, "first_seq": first["seq"], "last_seq": last["seq"],
                   "prev_hash": first["prev_hash"], "skip": None, "events": evs, "head_hash": last["hash"],
                   "head_sig": self.key.sign(head_text(device_id, last["seq"], last["hash"])).hex()}
            self.batches.append(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())

    def upload_all(self, base: str, errors: list[str]) -> None:
        path = f"/v1/devices/{self.device_id}/events"
        with httpx.Client(base_url=base, timeout=120) as client:
            for body in self.batches:
                while True:
                    nonce = new_nonce()
                    t = int(time.time())
                    sig = self.key.sign(request_text("POST", path, self.device_id, t, nonce, body)).hex()
                    r = client.post(path, content=body, headers={
                        "Content-Type": "application/json", "X-Checkpoint-Device": self.device_id,
                        "X-Checkpoint-Time": str(t), "X-Checkpoint-Nonce": nonce, "X-Checkpoint-Signature": sig})
                    if r.status_code == 429:
                        time.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status_code != 200 or r.json()["stored"] != len(json.loads(body)["events"]):
                        errors.append(f"{self.device_id}: {r.status_code} {r.text[:200]}")
                        return
                    break


# -- raw ------------------------------------------------------------------------------------------------------

def raw_insert(gates: list[Gate], path: Path) -> tuple[float, float]:
    """The server's events table (schema from sync.server.tables), plain sqlite3, 500 rows per transaction."""
    from sqlalchemy import create_engine

    from sync.server.tables import events, metadata

    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine, tables=[events])
    engine.dispose()
    cols = [c.name for c in events.columns]
    rows: list[tuple[Any, ...]] = []
    now = utc_now_ms()
    for g in gates:
        for ev, body in zip(g.events, g.bodies, strict=True):
            d = derived_columns(ev, site_id="bench-site", tz="Asia/Shanghai", device_venue=VENUE, received_ms=now)
            d.update(device_id=g.device_id, seq=ev["seq"], prev_hash=ev["prev_hash"], hash=ev["hash"],
                     body=body.decode())
            rows.append(tuple(d[c] for c in cols))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    sql = f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[lo:lo + BATCH])
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    conn.close()
    return len(rows) / elapsed, len(rows) / cpu


# -- the real server ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(database: str, workers: int, tmp: Path, gates: list[Gate]) -> dict[str, Any]:
    port = free_port()
    data = tmp / f"server-{workers}-{port}"
    config = data / "server.toml"
    data.mkdir(parents=True)
    config.write_text(f'data_dir = "{data}"\ndatabase = "{database}"\nlisten = "127.0.0.1:{port}"\n'
                      f'workers = {workers}\nlog_level = "WARNING"\nbackground_jobs = false\n')
    cli = [sys.executable, "-m", "edge.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*cli, "server", "migrate", "--config", str(config)], check=True, env=env, cwd=REPO,
                   capture_output=True)
    token = subprocess.run([*cli, "server", "token", "create", "--config", str(config), "--role", "admin",
                            "--name", "bench"], check=True, env=env, cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    proc = subprocess.Popen([*cli, "server", "run", "--config", str(config)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.2)
        admin = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{base}/v1/admin/sites", json={"site_id": "bench-site", "name": "bench"}, headers=admin)
        for g in gates:
            r = httpx.post(f"{base}/v1/admin/devices", headers=admin, json={
                "device_id": g.device_id, "site_id": "bench-site", "venue": VENUE})
            code = r.json()["enrollment_code"]
            r = httpx.post(f"{base}/v1/enroll", json={"code": code, "public_key": g.key.public,
                                                       "proof": g.key.sign(enroll_text(code, g.key.public)).hex()})
            assert r.status_code == 200, r.text
        cpu0 = _cpu_of(proc.pid)
        errors: list[str] = []
        threads = [threading.Thread(target=g.upload_all, args=(base, errors)) for g in gates]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        cpu = _cpu_of(proc.pid) - cpu0
        if errors:
            raise RuntimeError("; ".join(errors[:3]))
        n = sum(len(g.events) for g in gates)
        stored = httpx.get(f"{base}/v1/fleet/devices", headers=admin).json()
        assert sum(d["acked_seq"] for d in stored) == n
        return {"eps": round(n / elapsed), "seconds": round(elapsed, 2), "server_cpu_s": round(cpu, 2)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cpu_of(pid: int) -> float:
    """User+system CPU seconds of a process and its children (workers), from procfs."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--gates", type=int, default=8)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    per_gate = args.events // args.gates
    start = utc_now_ms() - 86_400_000
    t0 = time.perf_counter()
    gates = [Gate(f"gate-bench-{i:02d}", per_gate, seed=i, start_ms=start) for i in range(args.gates)]
    build_s = time.perf_counter() - t0
    n = per_gate * args.gates
    avg_bytes = sum(len(b) for g in gates for b in g.bodies) // n
    tmp = Path(tempfile.mkdtemp(prefix="ckbench"))
    out: dict[str, Any] = {
        "bench": "server_ingest", "machine": f"{platform.processor() or platform.machine()} {os.cpu_count()} cpu",
        "kernel": platform.release(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "events": n, "gates": args.gates, "batch": BATCH, "avg_event_bytes": avg_bytes,
        "build_s": round(build_s, 1), "load_before": os.getloadavg()[0],
    }
    try:
        raw, raw_cpu = raw_insert(gates, tmp / "raw.db")
        out["raw_eps"] = round(raw)
        out["raw_cpu_eps"] = round(raw_cpu)
        srv = run_server(f"sqlite:///{tmp / 'server.db'}", 1, tmp, gates)
        out["server_eps"] = srv["eps"]
        out["server_seconds"] = srv["seconds"]
        out["server_cpu_s"] = srv["server_cpu_s"]
        out["ratio"] = round(srv["eps"] / raw, 3)
        # Per CPU second of the inserting process: the same comparison, less exposed to other load on the box.
        out["server_cpu_eps"] = round(n / srv["server_cpu_s"]) if srv["server_cpu_s"] else None
        out["cpu_ratio"] = round(out["server_cpu_eps"] / raw_cpu, 3) if out["server_cpu_eps"] else None
        if not args.no_postgres:
            from tests.pg import PostgresServer, find_bindir

            bindir = find_bindir()
            if bindir is None:
                out["postgresql"] = "skipped: no PostgreSQL server programs"
            else:
                pg = PostgresServer(bindir, durable=True)
                try:
                    url = pg.start()
                    for workers in (1, 4):
                        from sync.server.db import Database

                        db = Database(url)
                        db.create_schema()
                        db.truncate_all()
                        db.dispose()
                        r = run_server(url, workers, tmp, gates)
                        out[f"pg{workers}_eps"] = r["eps"]
                        out[f"pg{workers}_ratio"] = round(r["eps"] / raw, 3)
                        out[f"pg{workers}_server_cpu_s"] = r["server_cpu_s"]
                finally:
                    pg.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_after"] = os.getloadavg()[0]
    out["bench_cpu_s"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_utime, 1)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
