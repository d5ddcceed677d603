"""Publish → applied latency of the one-key emergency switch (bundles.md §4.3): the real server on
loopback (its own process, server flow), N real gate agents with the real poll rhythm.

    .venv/bin/python bench/bundle_switch.py [--gates 20] [--poll-s 30] [--rounds 1]

Set-up: root, publisher and server keys; keys document 1 (2 of 3 roots) uploaded with
``POST /v1/admin/keys``; a site with N enrolled gates (each its own data directory, ``device.key``
and trusted clock); a first bundle from the default rules (``POST /v1/admin/sources``), applied by
every gate. Then each round: ``POST /v1/admin/mode`` (normal ↔ emergency) and, per gate, the time
until its bundle pointer names the new mode. The gates poll as bundles.md §4.3 says: a random
0.6–0.9 × ``poll_bundle_s`` after each poll, so the wait part of the latency is spread over the
interval and the rest is fetch + verify + switch (manifest ≤ 64 KiB, the 4 KiB mode part).
Prints one JSON line with p50 / p99 / max and the apply time alone (fetch, verify, switch);
target: every gate applied within ``poll_bundle_s`` (30 s). Never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config import GateConfig  # noqa: E402
from edge.store.state import StateDB  # noqa: E402
from sync.agent.core import Agent  # noqa: E402
from sync.agent.enroll import enroll  # noqa: E402
from sync.agent.notify import Notifier  # noqa: E402
from sync.bundle import keys_body, sign_document  # noqa: E402
from sync.keys import generate_key, write_key_file  # noqa: E402
from sync.timefmt import utc_now_ms  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checkpoint(*args: str) -> str:
    exe = Path(sys.executable).with_name("checkpoint")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=True, cwd=REPO).stdout


def _timed(update: Any, out: list[tuple[float, str]]) -> Any:
    def run(fetcher: Any) -> Any:
        t0 = time.monotonic()
        res = update(fetcher)
        out.append((time.monotonic() - t0, str(getattr(res, "status", ""))))
        return res

    return run


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gates", type=int, default=20)
    ap.add_argument("--poll-s", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="ck-switch-"))
    srv = tmp / "server"
    srv.mkdir()
    roots = [generate_key("root", f"bench root {i}") for i in range(3)]
    publisher, server_key = generate_key("publisher", "bench publisher"), generate_key("server", "bench server")
    write_key_file(srv / "server.key", server_key)
    write_key_file(srv / "publisher.key", publisher)
    port = free_port()
    (srv / "server.toml").write_text("\n".join([
        f'data_dir = "{srv}"', f'listen = "127.0.0.1:{port}"', f'server_key_file = "{srv / "server.key"}"',
        f'publisher_key_files = ["{srv / "publisher.key"}"]', 'log_level = "WARNING"', "[rate_limit]",
        "enabled = false"]) + "\n")
    scfg = ["--config", str(srv / "server.toml")]
    checkpoint("server", "migrate", *scfg)
    checkpoint("server", "site-add", *scfg, "--site", "bench-site", "--name", "Bench site")
    token = checkpoint("server", "token", "create", *scfg, "--role", "admin", "--name", "bench").split()[-1]
    codes = []
    for i in range(args.gates):
        out = checkpoint("server", "device", "add", *scfg, "--device", f"gate-sw-{i:02d}", "--site", "bench-site",
                         "--venue-id", f"V-{i:02d}", "--zone", "A", "--door", "east")
        codes.append(out.strip().splitlines()[0])
    server = subprocess.Popen([str(Path(sys.executable).with_name("checkpoint")), "server", "run", *scfg],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agents: list[Agent] = []
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        now = utc_now_ms()
        keys1 = sign_document("keys", keys_body(previous=None, fleet="bench-fleet", root=roots,
                                                publisher=[publisher], server=[server_key],
                                                issued_at_ms=now - 3_600_000), roots[:2])
        r = admin.post("/v1/admin/keys", content=keys1, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        src = REPO / "config" / "rules"
        files = [("files", ("rules.json", (src / "rules.json").read_bytes())),
                 ("files", ("settings.json", (src / "settings.json").read_bytes())),
                 ("files", ("trust.json", b'{"keys":[]}')),
                 ("files", ("roster.json", json.dumps({"roster_key": "ab" * 32, "staff": [], "teams": []}).encode())),
                 ("files", ("firms.json", b"[]")), ("files", ("preregistrations.json", b"[]")),
                 ("files", ("revocations.json", b"[]")),
                 ("files", ("mode.json", json.dumps({"mode": "normal", "since": "2026-11-01T00:00:00.000Z",
                                                     "reason": "bench", "set_by": "bench"}).encode()))]
        r = admin.post("/v1/admin/sources", data={"site": "bench-site", "note": "bench"}, files=files)
        assert r.status_code == 201, r.text
        dirs = []
        polls: list[tuple[float, str]] = []
        for i, code in enumerate(codes):
            d = tmp / f"gate-{i:02d}"
            cfg = GateConfig.model_validate({
                "gate": {"device_id": f"gate-sw-{i:02d}", "data_dir": str(d)}, "store": {"reserve_mb": 0},
                "sync": {"server_url": url, "allow_plain_http": True, "poll_bundle_s": args.poll_s,
                         "heartbeat_s": 600}, "log": {"level": "WARNING"}})
            enroll(cfg, server_url=url, code=code)
            agent = Agent(cfg, notifier=Notifier(env={}), ntp=lambda: True,
                          host={"cpu_temp_centi_c": None, "load1": None, "throttled": None})
            if agent.poller is not None:  # time each poll that switches (fetch + verify + switch)
                agent.poller.update = _timed(agent.poller.update, polls)
            agent.start()
            agents.append(agent)
            dirs.append(d)
        states = [StateDB(d, readonly=True) for d in dirs]

        def modes() -> list[str | None]:
            out = []
            for s in states:
                row = s.read_row("bundle")
                out.append(row["mode"] if row else None)
            return out

        deadline = time.monotonic() + 120
        while any(m != "normal" for m in modes()) and time.monotonic() < deadline:
            for a in agents:
                a.tick()
            time.sleep(0.05)
        polls.clear()
        latencies: list[float] = []
        apply_s: list[float] = []
        mode = "normal"
        for _ in range(args.rounds):
            mode = "emergency" if mode == "normal" else "normal"
            t0 = time.monotonic()
            r = admin.post("/v1/admin/mode", json={"site": "bench-site", "mode": mode, "reason": "bench"})
            assert r.status_code == 201, r.text
            seen: dict[int, float] = {}
            while len(seen) < len(states) and time.monotonic() - t0 < 4 * args.poll_s:
                for i, m in enumerate(modes()):
                    if i not in seen and m == mode:
                        seen[i] = time.monotonic() - t0
                for a in agents:
                    a.tick()
                time.sleep(0.02)
            latencies += list(seen.values())
            apply_s += [took for took, status in polls if status == "applied"]
            polls.clear()
        result = {
            "bench": "bundle_switch", "gates": args.gates, "rounds": args.rounds, "poll_bundle_s": args.poll_s,
            "applied": len(latencies), "expected": args.gates * args.rounds,
            "publish_to_applied_s": {"p50": pct(latencies, 50), "p99": pct(latencies, 99),
                                     "max": round(max(latencies), 3)} if latencies else None,
            "within_interval": sum(1 for x in latencies if x <= args.poll_s),
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine()},
            "python": platform.python_version(),
        }
        if apply_s:
            result["poll_with_switch_s"] = {"p50": pct(apply_s, 50), "p99": pct(apply_s, 99),
                                        "max": round(max(apply_s), 3)}
        print(json.dumps(result))
    finally:
        for a in agents:
            a.close()
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
