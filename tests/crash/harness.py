"""The kill -9 harness of sync.md §6.2, shared by ``tests/crash`` (short) and ``bench/soak`` (long).

Processes on 127.0.0.1, each a real process started as systemd would start it:

- the **writer** (``python -m tests.crash.writer``): ``EventStore.append`` in a loop with
  mixed kinds, ``COMMITTED <seq> <hash>`` after each return, in its own log file;
- the **agent**: ``checkpoint sync run --config gate.toml``;
- the **server**: ``checkpoint server run --config server.toml`` on SQLite or PostgreSQL;
- optionally the fault proxy of §6.3 (``tests/faultproxy.py``) between agent and server.

Per iteration: run for a random 0.2-2 s; pick a victim (writer, agent, server or all) and
SIGKILL it, either then or through the crash point it was armed with when it last started
(``CHECKPOINT_CRASHPOINTS=name:n``: it kills itself at the n-th hit); restart it (armed
again with probability ``arm_p``); sample the server's ``acked_seq`` with a signed
``GET …/state`` and check G3, G4 and G5 on the gate's database. A process that dies at its
crash point between iterations is restarted at once and counted too.

Then: faults off, writer stopped, the agent drains (``drain_limit_s``), everything stops
with SIGTERM, and the checks of §6.2 run on the server's database and the gate's: every
``COMMITTED`` seq stored with the same hash (G1); rows exactly 1…``acked_seq``, no seq or
hash twice, the chain verifies from genesis, no holes, no conflicts (G2, G3); samples never
decreased (G3); gate ≤ server at every sample (G5); the gate held every seq above the
server's ack (G4); after the drain the server's ``acked_seq`` is the gate's head (G6).

``run_crash`` returns the numbers of §6.7 as a dict (and the problems it found); the
caller prints them as one JSON line. ``CHECKPOINT_TEST_SEED`` fixes the seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edge.cli"]
DEVICE = "gate-crash-01"
SITE = "crash-site"
VENUE = {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}

CRASHPOINTS = {
    "writer": ["store.before_commit", "store.after_commit"],
    "agent": ["agent.before_post", "agent.after_post", "agent.after_response_before_ack", "agent.after_ack"],
    "server": ["server.after_verify", "server.before_commit", "server.after_commit_before_response",
               "server.webhook_after_post"],
}
# how many hits before the point fires (the writer commits many times a second)
HITS = {"writer": (5, 300), "agent": (1, 6), "server": (1, 6)}
VICTIMS = ("writer", "agent", "server", "all")
_HASH = re.compile(r"[0-9a-f]{64}")
_UPLOAD = re.compile(r"upload device=\S+ seq=(\d+)\.\.(\d+) status=(\d+) acked=(\d+) stored=(\d+) dup=(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CHECKPOINT_CRASHPOINTS", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


@dataclass
class CrashConfig:
    """One run. ``db_url`` is ``sqlite:///…`` or a PostgreSQL URL (the tables are emptied first)."""

    db_url: str
    base: Path
    iterations: int = 8
    seed: int = 0
    phases: tuple[str, ...] = ("direct",)   # "direct" and/or "faultproxy", iterations split evenly
    proxy_p: float = 0.05
    arm_p: float = 0.5
    writer_rate: float = 150.0
    drain_limit_s: float = 120.0
    victims: tuple[str, ...] = VICTIMS
    backoff_cap_s: float = 2.0
    backoff_base_s: float = 0.5
    batch_max_events: int = 500
    proxy_delay_s: tuple[float, float] = (0.1, 5.0)
    name: str = "crash"

    @property
    def backend(self) -> str:
        return "sqlite" if self.db_url.startswith("sqlite") else "postgresql"

    @property
    def proxy(self) -> bool:
        return "faultproxy" in self.phases

    def phase_of(self, i: int) -> str:
        """The phase of iteration ``i`` (0-based)."""
        per = max(1, -(-self.iterations // len(self.phases)))
        return self.phases[min(i // per, len(self.phases) - 1)]


class Proc:
    """One role's process across its restarts (log file appended, one banner per start)."""

    def __init__(self, role: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.role, self.argv, self.log, self.env = role, argv, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.armed: str | None = None
        self.starts = 0
        self.stopped = False

    def start(self, arm: str | None = None) -> None:
        self.armed = arm
        self.starts += 1
        self.stopped = False
        with self.log.open("ab") as f:
            f.write(f"=== start {self.starts} armed={arm or '-'} ===\n".encode())
        out = self.log.open("ab")
        env = dict(self.env)
        if arm:
            env["CHECKPOINT_CRASHPOINTS"] = arm
        try:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        finally:
            out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_at_crashpoint(self) -> bool:
        """Dead by its own SIGKILL (an armed crash point fired)."""
        return self.proc is not None and self.proc.poll() == -signal.SIGKILL

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)

    def stop(self, timeout: float = 30) -> int | None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        return self.wait(timeout)

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class WebhookSink:
    """Receives the server's alert webhooks (so ``server.webhook_after_post`` has something to hit).

    With ``keep``, every body is also kept (``bodies``) and written to ``keep/webhook-NN.json``
    (the privacy canaries scan them)."""

    def __init__(self, keep: Path | None = None) -> None:
        self.received: Counter[int] = Counter()
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if keep is not None:
                    sink.bodies.append(body)
                    (keep / f"webhook-{len(sink.bodies):02d}.json").write_bytes(body)
                with contextlib.suppress(ValueError, TypeError):
                    sink.received[int(self.headers.get("X-Checkpoint-Webhook-Id"))] += 1
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Sample:
    gate_acked: int
    server_acked: int
    head: int


@dataclass
class CrashRun:
    cfg: CrashConfig
    rng: random.Random = field(init=False)
    procs: dict[str, Proc] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    proxy: Any = None
    sink: WebhookSink | None = None
    _db: Any = None
    iterations_by_phase: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)
        b = self.cfg.base
        self.server_dir, self.gate_dir, self.logs = b / "server", b / "gate", b / "logs"
        for d in (self.server_dir, self.gate_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.server_url = f"http://127.0.0.1:{self.port}"
        self.committed_log = self.logs / "committed.log"

    # -- set-up -----------------------------------------------------------------------------------

    def setup(self) -> None:
        from edge.config import GateConfig
        from sync.agent.enroll import enroll
        from sync.server.db import Database
        from sync.server.enrollment import create_device
        from sync.server.tables import sites, webhooks
        from sync.timefmt import utc_now_ms

        c = self.cfg
        (self.server_dir / "server.toml").write_text(
            f'data_dir = "{self.server_dir}"\ndatabase = "{c.db_url}"\nlisten = "127.0.0.1:{self.port}"\n'
            'log_format = "json"\nlog_level = "INFO"\n')
        db = Database(c.db_url)
        try:
            db.create_schema()
            if c.backend == "postgresql":
                db.truncate_all()
            with db.write() as conn:
                conn.execute(sites.insert().values(site_id=SITE, name="crash site", tz="Asia/Shanghai",
                                                   created_ms=utc_now_ms()))
                code = create_device(conn, device_id=DEVICE, site_id=SITE, venue=VENUE, firm_id="F0012",
                                     label="crash harness", now_ms=utc_now_ms())["enrollment_code"]
                self.sink = WebhookSink()
                conn.execute(webhooks.insert().values(url=self.sink.url, secret="crash-harness-secret-0123",
                                                      kinds="[]", min_severity="info", enabled=True,
                                                      created_by="harness", created_ms=utc_now_ms()))
        finally:
            db.dispose()
        env = child_env()
        self.procs["server"] = Proc("server", [*CLI, "server", "run", "--config", str(self.server_dir / "server.toml")],
                                    self.logs / "server.log", env)
        self.start("server", arm=False)
        self.wait_server()
        gate_cfg = GateConfig.model_validate({"gate": {"device_id": DEVICE, "data_dir": str(self.gate_dir)},
                                             "store": {"reserve_mb": 1}, "sync": {"server_url": self.server_url}})
        enroll(gate_cfg, server_url=self.server_url, code=code)
        if c.proxy:
            from tests.faultproxy import FaultProxy

            self.proxy = FaultProxy(self.server_url, seed=c.seed, default_p=c.proxy_p, delay_s=c.proxy_delay_s).start()
        self.phase = c.phase_of(0)
        self.write_gate_config()
        self.procs["agent"] = Proc("agent", [*CLI, "sync", "run", "--config", str(self.gate_dir / "gate.toml")],
                                   self.logs / "agent.log", env)
        self.procs["writer"] = Proc(
            "writer", [sys.executable, "-m", "tests.crash.writer", str(self.gate_dir), DEVICE, str(c.seed),
                       str(self.committed_log), "--rate", str(c.writer_rate)], self.logs / "writer.log", env)
        self.start("agent", arm=False)
        self.start("writer", arm=False)
        self.identity = self._identity()

    def write_gate_config(self) -> None:
        """gate.toml for the current phase; the agent reads it at its next start."""
        upstream = self.proxy.url if self.phase == "faultproxy" else self.server_url
        (self.gate_dir / "gate.toml").write_text(
            f'[gate]\ndevice_id = "{DEVICE}"\ndata_dir = "{self.gate_dir}"\n'
            '[store]\nreserve_mb = 1\n'
            f'[sync]\nserver_url = "{upstream}"\npoll_bundle_s = 3600\nbackoff_base_s = {self.cfg.backoff_base_s}\n'
            f'backoff_cap_s = {self.cfg.backoff_cap_s}\nbatch_max_events = {self.cfg.batch_max_events}\n'
            '[log]\nlevel = "INFO"\nformat = "json"\n')

    def _identity(self) -> Any:
        from sync.agent.enroll import load_device_key
        from sync.identity import load_identity

        ident = load_identity(self.gate_dir / "identity")
        assert ident is not None
        return ident, load_device_key(self.gate_dir / "identity")

    def start(self, role: str, *, arm: bool = True) -> None:
        point = None
        if arm and self.rng.random() < self.cfg.arm_p:
            lo, hi = HITS[role]
            point = f"{self.rng.choice(CRASHPOINTS[role])}:{self.rng.randint(lo, hi)}"
        self.procs[role].start(point)

    def wait_server(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            srv = self.procs["server"]
            if not srv.alive():
                if srv.died_at_crashpoint():
                    self._restart_fired("server")
                    continue
                raise RuntimeError(f"server exited {srv.proc.returncode if srv.proc else None}:\n{srv.tail()}")
            try:
                if httpx.get(f"{self.server_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.procs['server'].tail()}")

    # -- reading both sides ------------------------------------------------------------------------

    def gate_snapshot(self) -> dict[str, int]:
        """One read transaction on the gate's events.db: head, ack, prune mark, rows above it, holes."""
        from edge.store.schema import connect

        conn = connect(self.gate_dir / "events.db", "reader")
        try:
            conn.execute("BEGIN")
            next_seq = conn.execute("SELECT next_seq FROM meta WHERE id = 1").fetchone()[0]
            acked, pruned = conn.execute("SELECT acked_seq, pruned_through FROM outbox WHERE id = 1").fetchone()
            rows = conn.execute("SELECT count(*) FROM events WHERE seq > ?", (pruned,)).fetchone()[0]
            holes = conn.execute("SELECT count(*) FROM dropped").fetchone()[0]
            conn.execute("COMMIT")
        finally:
            conn.close()
        return {"head": next_seq - 1, "acked": acked, "pruned": pruned, "rows_above_pruned": rows, "holes": holes}

    def server_state(self, timeout: float = 120) -> int:
        """The server's ``acked_seq`` from a signed ``GET …/state`` (ack signature verified)."""
        from sync.keys import verify_ed25519
        from sync.signing import ack_text, new_nonce, request_text

        ident, key = self.identity
        path = f"/v1/devices/{DEVICE}/state"
        end = time.monotonic() + timeout
        last = ""
        while time.monotonic() < end:
            self.revive()
            nonce = new_nonce()
            t = int(time.time())
            sig = key.sign(request_text("GET", path, DEVICE, t, nonce, b"")).hex()
            try:
                r = httpx.get(self.server_url + path, timeout=10, headers={
                    "X-Checkpoint-Device": DEVICE, "X-Checkpoint-Time": str(t), "X-Checkpoint-Nonce": nonce,
                    "X-Checkpoint-Signature": sig})
                if r.status_code == 200:
                    d = r.json()
                    if not verify_ed25519(ident.server_key, ack_text(DEVICE, nonce, d["acked_seq"], d["acked_hash"]),
                                          d["ack_sig"]):
                        raise AssertionError("state answer with an ack signature that does not verify")
                    return int(d["acked_seq"])
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"no device state from the server within {timeout} s: {last}")

    def server_acked_db(self) -> int:
        """The server's committed ``acked_seq``, read from its database (works while the server restarts)."""
        from sqlalchemy import text

        if self._db is None:
            from sync.server.db import Database

            self._db = Database(self.cfg.db_url)
        with self._db.read() as conn:
            return int(conn.execute(text("SELECT acked_seq FROM devices WHERE device_id = :d"), {"d": DEVICE}).scalar())

    def sample(self) -> None:
        """G3, G4, G5 at this moment; the server's side read from its database (what ``GET …/state``
        answers, without one more signed request per iteration; the drain uses the signed answer)."""
        self.revive()
        g = self.gate_snapshot()        # the gate first: its ack can only be ≤ the server's later value
        s = self.server_acked_db()
        prev = self.samples[-1].server_acked if self.samples else 0
        n = len(self.samples) + 1
        if s < prev:
            self.problems.append(f"G3: server acked_seq went down {prev} -> {s} at sample {n}")
        if g["acked"] > s:
            self.problems.append(f"G5: gate acked_seq {g['acked']} above the server's {s} at sample {n}")
        if g["pruned"] > g["acked"]:
            self.problems.append(f"G4: gate pruned through {g['pruned']} beyond its ack {g['acked']}")
        if g["rows_above_pruned"] != g["head"] - g["pruned"] or g["holes"]:
            self.problems.append(f"G4: gate holds {g['rows_above_pruned']} rows above {g['pruned']} up to "
                                 f"{g['head']} ({g['holes']} holes) at sample {n}")
        self.samples.append(Sample(g["acked"], s, g["head"]))

    # -- killing -----------------------------------------------------------------------------------

    def _restart_fired(self, role: str) -> None:
        p = self.procs[role]
        self.kills[role] += 1
        self.fired[(p.armed or "?").split(":")[0]] += 1
        self.start(role)

    def revive(self) -> None:
        """Restart every process that died at its crash point (and fail loudly on any other exit)."""
        for role, p in self.procs.items():
            if p.alive() or p.proc is None or p.stopped:
                continue
            if p.died_at_crashpoint():
                self._restart_fired(role)
                if role == "server":
                    self.wait_server()
            else:
                raise RuntimeError(f"{role} exited with {p.proc.returncode} (not a kill):\n{p.tail()}")

    def kill(self, victim: str) -> None:
        roles = ["writer", "agent", "server"] if victim == "all" else [victim]
        # An armed victim gets a moment to die at its own crash point first (that is the kill).
        armed = [r for r in roles if self.procs[r].armed and self.procs[r].alive()]
        end = time.monotonic() + (2.0 if armed else 0.0)
        while armed and time.monotonic() < end and any(self.procs[r].alive() for r in armed):
            time.sleep(0.05)
        for r in roles:
            p = self.procs[r]
            if not p.alive() and p.died_at_crashpoint():
                self.fired[(p.armed or "?").split(":")[0]] += 1
            else:
                p.kill()
        self.kills[victim] += 1
        for r in sorted(roles, key=lambda r: r != "server"):  # the server first
            self.start(r)
        if "server" in roles:
            self.wait_server()  # "run for 0.2-2 s" means with everything running again (§6.2 step 2)

    def iterate(self, i: int = 0) -> None:
        end = time.monotonic() + self.rng.uniform(0.2, 2.0)
        while time.monotonic() < end:
            self.revive()
            time.sleep(0.05)
        victim = self.rng.choice(self.cfg.victims)
        phase = self.cfg.phase_of(i)
        if phase != self.phase:
            # a new phase: the agent's next life talks to the server directly or through the proxy
            self.phase = phase
            self.write_gate_config()
            if victim not in ("agent", "all"):
                victim = "agent"
        self.iterations_by_phase[phase] += 1
        self.kill(victim)
        self.sample()

    # -- the end -----------------------------------------------------------------------------------

    def drain(self) -> float:
        """Faults off, writer stopped, crash points disarmed; seconds until the server holds the head."""
        if self.proxy is not None:
            self.proxy.faults_off()
        self.procs["writer"].stop()
        for role in ("server", "agent"):
            p = self.procs[role]
            if p.armed or not p.alive():
                if not p.alive() and p.died_at_crashpoint():
                    self.kills[role] += 1
                    self.fired[(p.armed or "?").split(":")[0]] += 1
                else:
                    p.kill()
                    if p.armed:
                        self.kills[role] += 1
                p.start(None)
                if role == "server":
                    self.wait_server()
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.cfg.drain_limit_s:
            g = self.gate_snapshot()
            if g["acked"] == g["head"] and self.server_state() == g["head"]:
                return time.monotonic() - t0
            for role in ("server", "agent"):
                if not self.procs[role].alive():
                    raise RuntimeError(f"{role} died during the drain:\n{self.procs[role].tail()}")
            time.sleep(0.2)
        g = self.gate_snapshot()
        self.problems.append(f"G6: not drained within {self.cfg.drain_limit_s} s: gate head {g['head']}, gate ack "
                             f"{g['acked']}, server ack {self.server_state()}")
        return time.monotonic() - t0

    def stop(self) -> None:
        for role in ("writer", "agent", "server"):
            p = self.procs.get(role)
            if p is not None and p.alive():
                rc = p.stop()
                if role != "writer" and rc not in (0, -signal.SIGKILL):
                    self.problems.append(f"{role} did not stop cleanly on SIGTERM: exit {rc}\n{p.tail(20)}")
        if self.proxy is not None:
            self.proxy.stop()

    def kill_all(self) -> None:
        for p in self.procs.values():
            p.kill()
        if self.proxy is not None:
            self.proxy.stop()
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        if self._db is not None:
            self._db.dispose()
            self._db = None

    # -- the checks of §6.2 and the figures of §6.7 ----------------------------------------------

    def committed(self) -> dict[int, str]:
        """The ``COMMITTED`` lines printed whole. A kill can cut a life's last line (the writer's buffer
        is flushed in pieces during a large batch) and the next life's ``READY`` then continues it:
        a cut line promised nothing (§6.7), and must neither count as lost nor break the parse."""
        out: dict[int, str] = {}
        for line in self.committed_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "COMMITTED" and parts[1].isdigit() and _HASH.fullmatch(parts[2]):
                seq, h = int(parts[1]), parts[2]
                if out.get(seq, h) != h:
                    self.problems.append(f"writer logged seq {seq} twice with different hashes")
                out[seq] = h
        return out

    def server_log(self) -> dict[str, int]:
        sent = dup = uploads = 0
        statuses: Counter[str] = Counter()
        errors = 0
        for line in (self.logs / "server.log").read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                if "Traceback" in line:
                    errors += 1
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if doc.get("level") in ("error", "critical"):
                errors += 1
            m = _UPLOAD.search(doc.get("msg", ""))
            if m:
                uploads += 1
                first, last, status = int(m.group(1)), int(m.group(2)), m.group(3)
                statuses[status] += 1
                sent += last - first + 1
                dup += int(m.group(6))
        return {"upload_requests": uploads, "events_sent": sent, "duplicates_received": dup, "errors": errors,
                **{f"status_{k}": v for k, v in statuses.items()}}

    def check(self, drain_s: float) -> dict[str, Any]:
        from sqlalchemy import text

        from sync.events import genesis, hash_body
        from sync.server.db import Database

        committed = self.committed()
        db = Database(self.cfg.db_url)
        try:
            with db.read() as conn:
                rows = conn.execute(text("SELECT seq, hash, prev_hash, body FROM events WHERE device_id = :d "
                                         "ORDER BY seq"), {"d": DEVICE}).all()
                holes = conn.execute(text("SELECT from_seq, to_seq FROM event_holes WHERE device_id = :d"),
                                     {"d": DEVICE}).all()
                conflicts = conn.execute(text("SELECT count(*) FROM event_conflicts WHERE device_id = :d"),
                                         {"d": DEVICE}).scalar()
                dev = conn.execute(text("SELECT acked_seq, acked_hash, conflict FROM devices WHERE device_id = :d"),
                                   {"d": DEVICE}).one()
                chain_alerts = conn.execute(text("SELECT count(*) FROM alerts WHERE device_id = :d AND kind = "
                                                 "'chain_conflict'"), {"d": DEVICE}).scalar()
                deliveries = conn.execute(text("SELECT alert_id, status FROM alert_deliveries")).all()
        finally:
            db.dispose()
        stored = {int(r.seq): r.hash for r in rows}
        in_hole = set()
        for h in holes:
            in_hole.update(range(int(h.from_seq), int(h.to_seq) + 1))
        acked = int(dev.acked_seq)
        # G2: exactly 1..acked_seq minus holes, one row per seq, one seq per hash
        dup_hash = len(rows) - len({r.hash for r in rows})
        dup_seq = len(rows) - len(stored)
        missing = [s for s in range(1, acked + 1) if s not in stored and s not in in_hole]
        extra = [s for s in stored if s > acked]
        # G3: the chain verifies from genesis (holes bridged by their last_hash)
        prev, bad_chain = genesis(DEVICE), []
        for r in rows:
            body = json.loads(r.body)
            if hash_body(r.body.encode()) != r.hash or body.get("seq") != r.seq or r.prev_hash != prev \
                    or body.get("prev_hash") != prev:
                bad_chain.append(int(r.seq))
            prev = r.hash
        if rows and acked == rows[-1].seq and dev.acked_hash != rows[-1].hash:
            bad_chain.append(acked)
        lost = [s for s, h in committed.items() if stored.get(s) != h and s not in in_hole]
        g = self.gate_snapshot()
        gate_rows = self._gate_rows()
        log = self.server_log()
        if lost:
            self.problems.append(f"G1: {len(lost)} committed events not on the server, first {sorted(lost)[:5]}")
        if dup_seq or dup_hash:
            self.problems.append(f"G2: duplicated rows: {dup_seq} seqs, {dup_hash} hashes")
        if missing or extra:
            self.problems.append(f"G2: rows are not exactly 1..{acked}: missing {missing[:5]}, beyond {extra[:5]}")
        if bad_chain:
            self.problems.append(f"G3: chain does not verify at seqs {bad_chain[:5]}")
        if holes or conflicts or dev.conflict or chain_alerts:
            self.problems.append(f"holes {len(holes)}, conflicts {conflicts}, flag {dev.conflict}, "
                                 f"chain_conflict alerts {chain_alerts}")
        if acked != g["head"] or g["acked"] != g["head"]:
            self.problems.append(f"G6: server ack {acked}, gate ack {g['acked']}, gate head {g['head']}")
        if gate_rows != {s: h for s, h in stored.items()}:
            diff = set(gate_rows.items()) ^ set(stored.items())
            self.problems.append(f"gate and server rows differ at {sorted(s for s, _ in diff)[:5]}")
        delivered = {int(d.alert_id) for d in deliveries if d.status == "delivered"}
        received = dict(self.sink.received) if self.sink is not None else {}
        unseen = sorted(delivered - set(received))
        if unseen:
            self.problems.append(f"webhooks marked delivered but never received: alerts {unseen[:5]}")
        if log["errors"]:
            self.problems.append(f"server log has {log['errors']} error lines or tracebacks")
        proxy = self.proxy.stats() if self.proxy is not None else None
        if proxy is not None:
            upstream_5xx = sum(v for k, v in proxy.items() if k.startswith("upstream.5"))
            if upstream_5xx:
                self.problems.append(f"the server answered {upstream_5xx} requests with 5xx")
        figures: dict[str, Any] = {
            "test": self.cfg.name, "backend": self.cfg.backend, "seed": self.cfg.seed,
            "iterations": self.cfg.iterations, "phases": dict(self.iterations_by_phase),
            "kills": {v: self.kills[v] for v in (*VICTIMS,)}, "kills_total": sum(self.kills.values()),
            "crashpoints_fired": dict(sorted(self.fired.items())),
            "events_committed": len(committed),
            "events_sent": log["events_sent"],
            "events_acked": g["acked"], "events_stored": len(rows),
            "duplicates_received": log["duplicates_received"],
            "duplicates_stored": dup_seq + dup_hash, "gaps_declared": len(in_hole), "gaps_undeclared": len(missing),
            "conflicts": int(conflicts or 0), "lost": len(lost), "max_drain_s": round(drain_s, 1),
            "samples": len(self.samples), "upload_requests": log["upload_requests"],
            "webhooks": {"alerts": len(deliveries), "delivered": len(delivered),
                         "pending": sum(1 for d in deliveries if d.status == "pending"),
                         "posts_received": sum(received.values())},
        }
        if proxy is not None:
            figures["faultproxy"] = {
                "requests": proxy.get("requests", 0), "events_sent": proxy.get("events_sent", 0),
                "duplicates_received": proxy.get("duplicates_received", 0),
                "faults": {k.removeprefix("fault."): v for k, v in sorted(proxy.items()) if k.startswith("fault.")}}
        figures["ok"] = not self.problems
        return figures

    def _gate_rows(self) -> dict[int, str]:
        from edge.store.schema import connect

        conn = connect(self.gate_dir / "events.db", "reader")
        try:
            return {int(s): str(h) for s, h in conn.execute("SELECT seq, hash FROM events")}
        finally:
            conn.close()


def run_crash(cfg: CrashConfig, *, progress: Any = None) -> tuple[dict[str, Any], list[str]]:
    """One whole run (module docstring); returns ``(figures, problems)``. Never leaves a process behind."""
    run = CrashRun(cfg)
    try:
        run.setup()
        t0 = time.monotonic()
        for i in range(cfg.iterations):
            run.iterate(i)
            if progress is not None and (i + 1) % 25 == 0:
                progress(f"{cfg.name}: {i + 1}/{cfg.iterations} iterations, {sum(run.kills.values())} kills, "
                         f"{time.monotonic() - t0:.0f} s, server acked {run.samples[-1].server_acked}")
        drain_s = run.drain()
        run.stop()
        figures = run.check(drain_s)
    except BaseException:
        run.kill_all()
        raise
    finally:
        run.kill_all()
    figures["ok"] = not run.problems
    return figures, run.problems


def run_batches(cfg: CrashConfig, batches: int, *, progress: Any = None,
                timeout_s: float = 7200) -> tuple[dict[str, Any], list[str]]:
    """sync.md §6.3: ``batches`` upload requests through the fault proxy, no kills, the same checks.

    The writer keeps a backlog waiting (``cfg.writer_rate``) and the agent sends batches of at most
    ``cfg.batch_max_events``; once the proxy has seen ``batches`` upload requests the faults stop,
    the agent drains and every invariant of the kill -9 run is checked.
    """
    run = CrashRun(cfg)
    try:
        run.setup()
        assert run.proxy is not None and run.phase == "faultproxy", "run_batches needs phases=('faultproxy',)"
        t0 = time.monotonic()
        last = 0.0
        while run.proxy.stats().get("route.events", 0) < batches:
            if time.monotonic() - t0 > timeout_s:
                run.problems.append(f"only {run.proxy.stats().get('route.events', 0)} batches in {timeout_s} s")
                break
            run.revive()
            time.sleep(0.2)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                run.sample()
                if progress is not None and time.monotonic() - t0 > 30:
                    progress(f"{cfg.name}: {run.proxy.stats().get('route.events', 0)}/{batches} batches, "
                             f"{time.monotonic() - t0:.0f} s, server acked {run.samples[-1].server_acked}")
        run.sample()
        drain_s = run.drain()
        run.stop()
        figures = run.check(drain_s)
        figures["batches"] = run.proxy.stats().get("route.events", 0)
        figures["seconds"] = round(time.monotonic() - t0, 1)
    except BaseException:
        run.kill_all()
        raise
    finally:
        run.kill_all()
    figures["ok"] = not run.problems
    return figures, run.problems


def seed_from_env(default: int | None = None) -> int:
    raw = os.environ.get("CHECKPOINT_TEST_SEED")
    if raw:
        return int(raw)
    return default if default is not None else random.SystemRandom().randrange(1, 1_000_000)


def tail_logs(base: Path, n: int = 30) -> str:
    out = []
    for name in ("server.log", "agent.log", "writer.log"):
        p = base / "logs" / name
        if p.exists():
            lines = p.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {name}\n" + "\n".join(lines))
    return "\n".join(out)


def sqlite_quick_check(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA quick_check").fetchone()[0])
    finally:
        conn.close()
