"""Privacy canaries (issue 11 deliverable 6; credentials.md §7, sync.md §1.4, console.md §2).

Demo traffic with canary personal data, through the real parts, each its own process as
systemd runs them: ``checkpoint server run`` (SQLite, or the test run's PostgreSQL), two
``checkpoint gate run`` (a person lane and a truck green lane, consoles on, camera folders
as ``checkpoint demo`` feeds them, mock pins) and their ``checkpoint sync run`` agents,
every process logging at DEBUG. The bundle is the demo fleet's (``DemoWorld``) published
through the server's sources flow, with a canary person on the roster and a DCC signing
certificate in the trust part.

What the people carry: a CK1 health code minted from a clear name (the issuer tool must
mask it) and a subject id hashed from a canary id number; an opaque ID-card code (the id
number itself) and a badge, both on the roster; an online health-code URL with an id
number, a phone number and a percent-encoded name (not on the roster: check by hand);
an HC1 (EU DCC) with canary names, date of birth and certificate id, and a forged one;
a ``CK1:`` text that does not decode; a red code of a close contact (deny, urgent alert,
flash copy, webhooks); a truck pass with a canary plate and pass id, paired with the
driver's CK1 code, then a goods code. The guard overrides with a note holding a phone and
an id number, records a manual check, types a wrong PIN once and a note too long; the
admin enters set-up mode and scans the venue code. An admin uploads a roster with a clear
name (refused), auditors export CSV, ask the daily report, trace by venue, by ``sub`` and
by DCC identity (through the API and the dashboard), type an id number where the API takes
none, list alerts and the fleet; a webhook receiver keeps every alert the server sends.

Then every file under the run directory (both gates' data directories with their
-wal/-shm files, the server's database files or a ``pg_dump``, every process's stderr and
stdout, every response body the consoles and the server served, every webhook body) goes
through ``tests.reliability.privacy.Scanner`` (bytes, every encoding, SQLite rows): no canary
may appear outside the places the spec allows it (plates and pass ids: store, console,
exports, credentials.md §7.3; note digits: the hash-chained event as typed, sync.md §1.4,
never a log or an export). A positive control checks that what is allowed was really
found where it is allowed (the scan sees the data), a negative control plants canaries in
scanned files and checks that each is reported.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest

from edge.demo import HOST_FIRM, DemoWorld, qr_image
from tests.crash import figures
from tests.crash.harness import REPO, Proc, WebhookSink, child_env, free_port
from tests.reliability.privacy import Canary, Leak, Scanner

pytestmark = pytest.mark.slow

SITE = "demo-site"
VENUE = {"venue_id": "V0012-01", "zone": "production", "door": "south-1"}
PERSON, TRUCK = "gate-priv-person", "gate-priv-truck"

# -- the canaries -------------------------------------------------------------------------------
NAME = "金丝雀测试员Canaryname"                    # the staff member's clear name, given to the issuer tool
NAME_CJK, NAME_LATIN = "金丝雀测试员", "Canaryname"
DRIVER_NAME = "金丝雀司机Canarydriver"
ID_SUBJECT = "410101199001011234"                  # hashed into the staff member's sub by the issuer
ID_DRIVER = "410104196512300016"                   # hashed into the driver's sub
ID_CARD = "410102198807154321"                     # an ID-card QR: the opaque code text is the id number
BADGE = "EMP-Q7CANARYBADGE-2291"
ID_URL = "410103197702023318"                      # inside the online health-code URL
PHONE_URL = "13957204618"
URL = (f"https://hsm.example.gov.cn/qr?sfzh={ID_URL}&xm={quote(NAME)}&sj={PHONE_URL}"
       "&t=CANARYURLTOKEN9")
DCC_FN, DCC_GN, DCC_FNT, DCC_GNT = NAME_CJK, NAME_LATIN, "JINSIQUECESHIYUAN", "CANARYNAME"
DCC_DOB = "1987-06-15"
DCC_CI = "URN:UVCI:01:XA:CANARY7H3Q9KX2#K"
FORGED_FN, FORGED_GN, FORGED_DOB = "金丝雀伪造", "Canaryforged", "1979-03-08"   # an HC1 signed by nobody trusted
FORGED_CI = "URN:UVCI:01:XA:CANARYFORGED5#Q"
ID_BROKEN = "410106199912120018"
BROKEN = f"CK1:6Q7CANARYBROKEN{ID_BROKEN}"          # CK1 prefix, no valid base45/zlib behind it
RED_NAME = "金丝雀密接Canaryred"                    # close contact who bought fever medicine: deny + alerts
ID_RED = "410105198203030041"
PLATE, PASS_ID = "豫A·CN7Q49", "GL-CANARY-7Q49"
NOTE_PHONE, NOTE_ID, MANUAL_PHONE = "13862047195", "110105198512120027", "15077301942"
GUARD_PIN, ADMIN_PIN, WRONG_PIN = "730419586213", "864209175320", "582019374611"

STORE_AND_SHOWN = frozenset({"gate_store", "server_db", "console", "display", "api"})   # credentials.md §7.3
AS_TYPED = frozenset({"gate_store", "server_db"})                           # sync.md §1.4, override.note


def sub_of(world: DemoWorld, id_number: str) -> str:
    """The issuer's keyed subject id (credentials.md §7.1): the id number never leaves the issuer."""
    return hmac.new(world.subject_key, f"CN-ID:{id_number}".encode(), hashlib.sha256).digest()[:16].hex()


class CanaryWorld(DemoWorld):
    """The demo fleet plus a canary staff member on the roster and a DCC signer in the trust part."""

    def __init__(self, root: Path, **kw: Any) -> None:
        super().__init__(root, **kw)
        from cryptography.hazmat.primitives.asymmetric import ec

        from tests.credentials.conftest import make_dsc

        now = datetime.fromtimestamp(self.now_ms / 1000, UTC)
        self.dsc = make_dsc(ec.generate_private_key(ec.SECP256R1()), not_before=now - timedelta(days=1),
                            not_after=now + timedelta(days=365))

    def sources(self) -> Path:
        from edge.credentials import mask_name

        src = super().sources()
        roster = json.loads((src / "roster.json").read_text(encoding="utf-8"))
        roster["staff"].append({
            "sub": sub_of(self, ID_SUBJECT), "codes": [self.code_hash(ID_CARD), self.code_hash(BADGE)],
            "name": mask_name(NAME), "role": "staff", "firm": HOST_FIRM, "team": None, "zones": ["*"],
            "closed_loop": False, "colour": "green", "flags": [], "last_test": self._time(20)})
        (src / "roster.json").write_text(json.dumps(roster, ensure_ascii=False), encoding="utf-8")
        trust = json.loads((src / "trust.json").read_text(encoding="utf-8"))
        trust["keys"].append({"certificate": base64.b64encode(self.dsc.der).decode()})
        (src / "trust.json").write_text(json.dumps(trust), encoding="utf-8")
        return src

    def canary_health(self, id_number: str, name: str, role: str = "staff", firm: str = HOST_FIRM,
                      colour: str = "green", flags: tuple[str, ...] = ()) -> str:
        return self.mint("health", {"iss": "HA-410100", "sub": sub_of(self, id_number), "name": name, "role": role,
                                    "firm": firm, "colour": colour, "flags": list(flags),
                                    "last_test": self._time(10)}, expires_in_s=86_400)

    def canary_pass(self) -> str:
        from sync.timefmt import format_ms

        return self.mint("pass", {"iss": "HA-TRAFFIC", "sub": sub_of(self, ID_DRIVER), "pass_id": PASS_ID,
                                  "plate": PLATE, "firm": "F0088", "origin": "郑州", "destination": "许昌",
                                  "nbf": format_ms(self.now_ms - 3_600_000),
                                  "exp": format_ms(self.now_ms + 7 * 86_400_000)})

    def canary_hc1(self, *, forged: bool = False) -> str:
        """An EU DCC test certificate; ``forged``: other names, signed by a key in no trust list."""
        from cryptography.hazmat.primitives.asymmetric import ec

        from tests.credentials.conftest import make_hc1

        sc = datetime.fromtimestamp(self.now_ms / 1000 - 10 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        nam = {"fn": DCC_FN, "fnt": DCC_FNT, "gn": DCC_GN, "gnt": DCC_GNT}
        if forged:
            nam = {"fn": FORGED_FN, "gn": FORGED_GN, "fnt": "JINSIQUEWEIZAO", "gnt": "CANARYFORGED"}
        payload = {
            "ver": "1.3.0", "nam": nam, "dob": FORGED_DOB if forged else DCC_DOB,
            "t": [{"tg": "840539006", "tt": "LP6464-4", "nm": "PCR kit", "sc": sc, "tr": "260415000",
                   "tc": "Zhengzhou test centre", "co": "CN", "is": "checkpoint TEST issuer",
                   "ci": FORGED_CI if forged else DCC_CI}]}
        iat = self.now_ms // 1000 - 3600
        key = ec.generate_private_key(ec.SECP256R1()) if forged else self.dsc.private
        return make_hc1(key, self.dsc.kid, payload, iat=iat, exp=iat + 30 * 86_400, iss="CN")


def credential_id(text: str, world: DemoWorld) -> bytes:
    """The 8 random bytes of a CK1 credential (credentials.md §2.3 ``id``): never stored (§7.3)."""
    from edge.credentials import load_trust, verify

    trust = load_trust({"keys": [{"public_key": base64.b64encode(world.keys["issuer"].spki_der()).decode()}]})
    v = verify(text, trust, datetime.now(UTC))
    assert v.ok and v.claims is not None, v
    assert "*" in v.claims.get("name", "*"), "the issuer tool must mask a clear name (credentials.md §2.4 rule 2)"
    return bytes.fromhex(v.claims["id"])


def text_canaries(label: str, text: str) -> list[Canary]:
    """A raw credential text, whole and in two fragments (a truncated log line would still leak)."""
    mid = len(text) // 2
    return [Canary(label, text), Canary(f"{label}[mid]", text[mid - 12: mid + 12]),
            Canary(f"{label}[end]", text[-24:])]


# -- the processes and what they serve ------------------------------------------------------------------


class Console:
    """One gate's guard console, as a browser uses it: the page (CSRF cookie), the SSE stream, the POSTs."""

    def __init__(self, url: str, responses: Path, name: str) -> None:
        self.url, self.responses, self.name = url, responses, name
        self.http = httpx.Client(base_url=url, timeout=15)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.n = 0
        self.thread: threading.Thread | None = None
        self.last_pin = 0.0

    def save(self, what: str, body: bytes) -> None:
        self.n += 1
        (self.responses / f"console-{self.name}-{self.n:02d}-{what}").write_bytes(body)

    def listen(self) -> None:
        """Read the decision stream until the gate stops, keeping every byte for the scan."""
        def run() -> None:
            buf = b""
            with (self.responses / f"console-{self.name}-stream.txt").open("wb") as out, \
                    contextlib.suppress(httpx.HTTPError), \
                    httpx.Client(timeout=httpx.Timeout(5, read=None)) as c, \
                    c.stream("GET", f"{self.url}/api/events/stream") as r:
                for chunk in r.iter_raw():
                    out.write(chunk)
                    out.flush()
                    buf += chunk
                    while b"\n\n" in buf:
                        frame, buf = buf.split(b"\n\n", 1)
                        self._frame(frame.decode("utf-8"))

        self.thread = threading.Thread(target=run, name=f"test:sse:{self.name}", daemon=True)
        self.thread.start()
        self.wait("status", 0, 20)   # subscribed: the stream sends the status once its queue is in place

    def _frame(self, frame: str) -> None:
        event, data = "message", []
        for line in frame.splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            with self.cond:
                self.events.append((event, json.loads("\n".join(data))))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, event: str, mark: int, timeout: float = 20, pred: Callable[[dict[str, Any]], bool] | None = None,
             **match: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev, data in self.events[mark:]:
                    if ev == event and all(data.get(k) == v for k, v in match.items()) and (pred is None or pred(data)):
                        return data
                left = end - time.monotonic()
                if left <= 0:
                    seen = [(e, d) for e, d in self.events[mark:] if e != "status"]
                    raise AssertionError(f"{self.name}: no {event} {match} in {timeout} s: {seen}")
                self.cond.wait(left)

    def page(self) -> None:
        r = self.http.get("/")
        assert r.status_code == 200, r.text
        self.save("page.html", r.content)
        r = self.http.get("/api/status")
        assert r.status_code == 200, r.text
        self.save("status.json", r.content)

    def post(self, path: str, body: dict[str, Any], *, pin_check: bool = True) -> httpx.Response:
        if pin_check:
            time.sleep(max(0.0, self.last_pin + 1.05 - time.monotonic()))   # console.md §3: one PIN check a second
            self.last_pin = time.monotonic()
        for _ in range(4):
            r = self.http.post(path, json=body, headers={"Origin": self.url,
                                                         "X-CSRF-Token": self.http.cookies.get("ck_csrf") or ""})
            self.last_pin = time.monotonic()
            if r.status_code != 429:
                break
            time.sleep(1.1)  # a loaded machine delayed the previous check: the console counts from its own clock
        self.save(path.strip("/").replace("/", "-") + f"-{r.status_code}.json", r.content)
        return r

    def close(self) -> None:
        self.http.close()
        if self.thread is not None:
            self.thread.join(10)


class Run:
    """The server, two gates and two agents as processes, and the test's clients of them."""

    def __init__(self, base: Path, db_url: str, world: CanaryWorld) -> None:
        self.base, self.db_url, self.world = base, db_url, world
        self.logs, self.responses, self.etc = base / "logs", base / "responses", base / "etc"
        for d in (self.logs, self.responses, self.etc):
            d.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.env = child_env(GPIOZERO_PIN_FACTORY="mock", OPENCV_LOG_LEVEL="ERROR")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.consoles: dict[str, Console] = {}
        self.shown = {"person": 0, "green_lane": 0}
        self.tokens: dict[str, str] = {}
        self.api_n = 0

    # -- server ---------------------------------------------------------------------------------

    def start_server(self) -> None:
        from sync.server.db import Database
        from sync.server.tokens import create_token
        from sync.timefmt import utc_now_ms

        sdir = self.base / "server"
        sdir.mkdir()
        keys = self.world.root / "keys"
        (self.etc / "server.toml").write_text(
            f'data_dir = "{sdir}"\ndatabase = "{self.db_url}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'server_key_file = "{keys / "server.key"}"\npublisher_key_files = ["{keys / "publisher.key"}"]\n'
            'cookie_secure = false\nlog_level = "DEBUG"\nlog_format = "json"\n')
        db = Database(self.db_url)
        try:
            db.create_schema()
            with db.write() as conn:
                for role in ("admin", "auditor"):
                    self.tokens[role], _ = create_token(conn, role=role, name=f"privacy-{role}", now_ms=utc_now_ms(),
                                                        expires_days=1)
        finally:
            db.dispose()
        self.spawn("server", "server", "run", "--config", str(self.etc / "server.toml"))
        self.wait(lambda: self._healthy(), "the server to answer /healthz", 60)
        self.admin = httpx.Client(base_url=self.url, timeout=30,
                                  headers={"Authorization": f"Bearer {self.tokens['admin']}"})
        self.auditor = httpx.Client(base_url=self.url, timeout=30,
                                    headers={"Authorization": f"Bearer {self.tokens['auditor']}"})

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, client: httpx.Client, method: str, path: str, what: str, *, ok: tuple[int, ...] = (200, 201),
            **kw: Any) -> httpx.Response:
        r = client.request(method, path, **kw)
        self.api_n += 1
        (self.responses / f"server-{self.api_n:02d}-{what}-{r.status_code}").write_bytes(r.content)
        assert r.status_code in ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r

    def publish_keys(self) -> None:
        """As ``checkpoint demo`` publishes (edge.demo.Upstream.publish): the keys document and the site first
        (enrolment anchors on the keys), the sources once the gates are starting (their agents poll)."""
        self.api(self.admin, "POST", "/v1/admin/keys", "keys", content=self.world.keys_document(),
                 headers={"Content-Type": "application/json"})
        self.api(self.admin, "POST", "/v1/admin/sites", "site",
                 json={"site_id": SITE, "name": "演示工厂 Demo plant", "tz": "Asia/Shanghai"})
        self.sink = WebhookSink(self.responses)
        self.api(self.admin, "POST", "/v1/admin/webhooks", "webhook",
                 json={"url": self.sink.url, "secret": "privacy-canary-hook-secret", "min_severity": "info"})

    def publish_sources(self) -> None:
        src = self.world.sources()
        # An admin's slip first: a roster with a clear name is refused, and the refusal does not echo it.
        roster = json.loads((src / "roster.json").read_text(encoding="utf-8"))
        roster["staff"][-1] = {**roster["staff"][-1], "name": NAME}
        files = [("files", (p.name, json.dumps(roster, ensure_ascii=False).encode() if p.name == "roster.json"
                            else p.read_bytes())) for p in sorted(src.iterdir()) if p.suffix == ".json"]
        r = self.api(self.admin, "POST", "/v1/admin/sources", "sources-clear-name", files=files,
                     data={"site": "", "note": "privacy canaries"}, ok=(400, 422))
        assert "roster" in r.text, r.text
        files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.suffix == ".json"]
        self.api(self.admin, "POST", "/v1/admin/sources", "sources", files=files,
                 data={"site": "", "note": "privacy canaries"})

    # -- gates and agents -------------------------------------------------------------------------

    def gate_toml(self, device_id: str, lane: str, console_port: int) -> Path:
        data = self.base / device_id
        cam = data / "camera"
        cam.mkdir(parents=True)
        from edge.demo import blank_image, write_image

        write_image(cam, "0000-blank.png", blank_image())
        toml = self.etc / f"{device_id}.toml"
        toml.write_text(
            f'[gate]\ndevice_id = "{device_id}"\ndata_dir = "{data}"\nlane = "{lane}"\n'
            '[store]\nreserve_mb = 1\n'
            f'[sync]\nserver_url = "{self.url}"\npoll_bundle_s = 1\nheartbeat_s = 2\nbackoff_base_s = 0.2\n'
            'backoff_cap_s = 1\n'
            f'[camera]\nsource = "folder"\npath = "{cam}"\nfps = 15\nimage_hold_s = 0.3\nno_frames_after_s = 5\n'
            '[decode]\nhold_s = 2.0\ndeep_interval_s = 0\n[thermometer]\nenabled = false\n'
            '[gpio]\npin_factory = "mock"\npulse_s = 0.2\nshow_s = 0.1\n'
            f'[console]\nlisten = "127.0.0.1:{console_port}"\n'
            '[log]\nlevel = "DEBUG"\nformat = "json"\n')
        return toml

    def add_gate(self, device_id: str, lane: str, door: str) -> None:
        from edge.config import load_gate_config
        from sync.agent.enroll import enroll

        port = free_port()
        toml = self.gate_toml(device_id, lane, port)
        body = {"device_id": device_id, "site_id": SITE, "venue": {**VENUE, "door": door}, "firm_id": HOST_FIRM,
                "label": f"privacy {lane}"}
        code = self.api(self.admin, "POST", "/v1/admin/devices", f"device-{lane}", json=body).json()["enrollment_code"]
        enroll(load_gate_config(toml), server_url=self.url, code=code)
        self.spawn(f"agent-{lane}", "sync", "run", "--config", str(toml))
        self.spawn(f"gate-{lane}", "gate", "run", "--config", str(toml), "--print-decisions")
        self.consoles[lane] = Console(f"http://127.0.0.1:{port}", self.responses, lane)

    def gate_ready(self, lane: str) -> bool:
        try:
            r = httpx.get(f"{self.consoles[lane].url}/api/status", timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json()["bundle"]["version"] >= 1

    def spawn(self, name: str, *args: str) -> None:
        """A process with its stderr (the log) and stdout in two files of ``logs/``."""
        p = Proc(name, [sys.executable, "-m", "edge.cli", "--log-level", "DEBUG", *args], self.logs / f"{name}.log",
                 self.env)
        p.starts = 1
        with (self.logs / f"{name}.log").open("ab") as err, (self.logs / f"{name}.stdout").open("ab") as out:
            p.proc = subprocess.Popen(p.argv, stdout=out, stderr=err, env=self.env, cwd=REPO, start_new_session=True)
        self.procs[name] = p

    def wait(self, cond: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = cond()
            if got:
                return got
            for name, p in self.procs.items():
                if not p.stopped and not p.alive():
                    raise AssertionError(f"{name} exited while waiting for {what}:\n{p.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(
            f"--- {n}\n{p.tail(15)}" for n, p in self.procs.items()))

    # -- showing codes --------------------------------------------------------------------------------

    def show(self, lane: str, text: str) -> Path:
        from edge.demo import write_image

        self.shown[lane] += 1
        cam = self.base / (PERSON if lane == "person" else TRUCK) / "camera"
        return write_image(cam, f"{self.shown[lane]:04d}-code.png", qr_image(text))

    def decide(self, lane: str, text: str) -> dict[str, Any]:
        """Show a code; its decision is the first new seq on the stream (an override re-sends an old one)."""
        c = self.consoles[lane]
        with c.cond:
            mark = len(c.events)
            last = max((d["seq"] or 0 for e, d in c.events if e == "decision"), default=0)
        pic = self.show(lane, text)
        try:
            return c.wait("decision", mark, 20, lambda d: (d["seq"] or 0) > last and d.get("override") is None)
        finally:
            pic.unlink(missing_ok=True)

    # -- the end --------------------------------------------------------------------------------------

    def events(self, device_id: str, kind: str) -> list[dict[str, Any]]:
        from edge.store.schema import connect

        conn = connect(self.base / device_id / "events.db", "reader")
        try:
            rows = conn.execute("SELECT body FROM events WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
        finally:
            conn.close()
        return [json.loads(r[0]) for r in rows]

    def heads(self) -> dict[str, int]:
        from edge.store.schema import connect

        out = {}
        for d in (PERSON, TRUCK):
            conn = connect(self.base / d / "events.db", "reader")
            try:
                out[d] = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
            finally:
                conn.close()
        return out

    def acked(self) -> dict[str, int]:
        from sqlalchemy import text

        from sync.server.db import Database

        db = Database(self.db_url)
        try:
            with db.read() as conn:
                rows = conn.execute(text("SELECT device_id, acked_seq FROM devices")).all()
        finally:
            db.dispose()
        return {str(r[0]): int(r[1]) for r in rows}

    def stop(self, *names: str) -> None:
        """SIGTERM to each at once, then wait: each must exit 0 (hardware.md §4.4)."""
        for n in names:
            p = self.procs[n]
            p.stopped = True
            if p.proc is not None and p.proc.poll() is None:
                p.proc.terminate()
        for n in names:
            rc = self.procs[n].wait(30)
            assert rc == 0, f"{n} did not stop cleanly on SIGTERM: {rc}\n{self.procs[n].tail()}"

    def pending_webhooks(self) -> int:
        from sqlalchemy import text

        from sync.server.db import Database

        db = Database(self.db_url)
        try:
            with db.read() as conn:
                return int(conn.execute(text("SELECT count(*) FROM alert_deliveries WHERE status = 'pending'"))
                           .scalar() or 0)
        finally:
            db.dispose()

    def close(self) -> None:
        for c in self.consoles.values():
            c.close()
        for p in self.procs.values():
            p.kill()
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.close()
        for attr in ("admin", "auditor"):
            client = getattr(self, attr, None)
            if client is not None:
                client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'run' / 'server' / 'server.db'}"
        return
    url = request.getfixturevalue("pg_url")
    from sync.server.db import Database

    db = Database(url)
    try:
        db.truncate_all()
    finally:
        db.dispose()
    yield url


def pg_dump(url: str, out: Path) -> None:
    """Every table of the test database as text (``pg_dump --data-only``), for the scan."""
    from tests.pg import find_bindir

    bindir = find_bindir()
    assert bindir is not None
    where = urlsplit(url)
    res = subprocess.run([str(bindir / "pg_dump"), "-h", str(where.hostname), "-p", str(where.port or 5432),
                          "-U", "checkpoint", "--data-only", "--inserts", "checkpoint_test"],
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    out.write_bytes(res.stdout)


def test_no_canary_leaves_the_gate_or_the_server_in_clear(tmp_path: Path, server_db: str) -> None:
    started = time.monotonic()
    base = tmp_path / "run"
    base.mkdir()
    world = CanaryWorld(base / "world", guard_pin=GUARD_PIN, admin_pin=ADMIN_PIN, log2_n=10,
                        policy={"temperature_required": False, "pair_window_s": 30})
    staff_code = world.canary_health(ID_SUBJECT, NAME)
    driver_code = world.canary_health(ID_DRIVER, DRIVER_NAME, role="logistics", firm="F0088")
    pass_code = world.canary_pass()
    hc1 = world.canary_hc1()
    forged = world.canary_hc1(forged=True)
    red_code = world.canary_health(ID_RED, RED_NAME, colour="red", flags=("close_contact", "medicine_purchase"))
    green = world.health_code(next(p for p in world.people if p.key == "green-staff"))
    run = Run(base, server_db, world)
    try:
        run.start_server()
        run.publish_keys()
        run.add_gate(PERSON, "person", "south-1")
        run.add_gate(TRUCK, "green_lane", "truck-1")
        run.publish_sources()                       # while the four processes import; the agents poll for it
        for lane in ("person", "green_lane"):
            run.wait(lambda lane=lane: run.gate_ready(lane), f"the {lane} gate with the bundle", 90)
            run.consoles[lane].listen()
            run.consoles[lane].page()
        person, truck = run.consoles["person"], run.consoles["green_lane"]

        # -- the truck green lane, beside the person lane ----------------------------------------------
        views: dict[str, dict[str, Any]] = {}
        failed: list[BaseException] = []

        def truck_lane() -> None:
            try:
                mark = truck.mark()
                pic = run.show("green_lane", pass_code)
                truck.wait("prompt", mark, 20, kind="pair")
                pic.unlink()
                views["truck"] = run.decide("green_lane", driver_code)
                pic = run.show("green_lane", world.material_code())      # logged against the truck's delivery
                run.wait(lambda: run.events(TRUCK, "material_scan"), "the material scan", 20)
                pic.unlink()
                truck.page()
            except BaseException as exc:
                failed.append(exc)

        lane2 = threading.Thread(target=truck_lane, name="test:truck-lane", daemon=True)
        lane2.start()

        # -- the person lane ------------------------------------------------------------------------
        for key, text in (("staff", staff_code), ("id_card", ID_CARD), ("badge", BADGE), ("url", URL)):
            views[key] = run.decide("person", text)
        url_view = views["url"]
        r = person.post("/api/override", {"decision_seq": url_view["seq"], "to": "admit", "reason": "checked_by_hand",
                                          "note": "x", "account": "guard-1", "pin": WRONG_PIN})
        assert r.status_code == 401, r.text
        views["hc1"] = run.decide("person", hc1)
        to = "admit" if url_view["overridable"] else "deny"
        r = person.post("/api/override", {
            "decision_seq": url_view["seq"], "to": to, "reason": "checked_by_hand",
            "note": f"持码人电话 phone {NOTE_PHONE} 身份证 {NOTE_ID}", "account": "guard-1", "pin": GUARD_PIN})
        assert r.status_code == 200, r.text
        views["green"] = run.decide("person", green)
        r = person.post("/api/manual", {"outcome": "admit", "reason": "checked_by_hand",
                                        "note": f"无码 回电 {MANUAL_PHONE}", "account": "guard-1", "pin": GUARD_PIN})
        assert r.status_code == 200, r.text
        # after the manual admit: these deny and cannot be overridden (rules.md §3.5)
        for key, text in (("broken", BROKEN), ("forged", forged), ("red", red_code)):
            views[key] = run.decide("person", text)
        mark = person.mark()
        r = person.post("/api/setup", {"account": "admin", "pin": ADMIN_PIN})
        assert r.status_code == 200, r.text
        pic = run.show("person", world.venue_code())
        person.wait("prompt", mark, 20, lambda d: d["remaining_s"] != 60, kind="setup")   # bound (console.md §1.3)
        pic.unlink()
        # a guard's slip: a note that is too long, with a name in it, is refused without being echoed
        r = person.post("/api/manual", {"outcome": "deny", "reason": "checked_by_hand", "note": f"{NAME} " * 20,
                                        "account": "guard-1", "pin": GUARD_PIN}, pin_check=False)
        assert r.status_code == 400, r.text
        person.page()
        lane2.join(60)
        assert not failed and not lane2.is_alive(), [repr(e) for e in failed]

        kinds = {k: (v["credential"]["kind"], v["credential"]["status"]) for k, v in views.items()}
        assert kinds == {"staff": ("health", "valid"), "id_card": ("roster", "valid"), "badge": ("roster", "valid"),
                         "broken": (kinds["broken"][0], "unreadable"), "forged": ("dcc", "bad_signature"),
                         "url": ("opaque", "not_found"), "hc1": ("dcc", "valid"), "green": ("health", "valid"),
                         "red": ("health", "valid"), "truck": (kinds["truck"][0], "valid")}, kinds
        assert views["red"]["outcome"] == "deny" and views["red"]["alert"] != "none", views["red"]
        assert views["truck"]["pass"]["plate"] == PLATE, views["truck"]   # shown for the guard to compare

        # -- every event reaches the server; stop the gates (device_stop), drain, stop the agents ----------
        run.stop("gate-person", "gate-green_lane")
        heads = run.heads()
        run.wait(lambda: all(run.acked().get(d) == n for d, n in heads.items()), "the agents to drain", 60)
        run.stop("agent-person", "agent-green_lane")
        for c in run.consoles.values():
            c.close()
        run.wait(lambda: run.sink.bodies and not run.pending_webhooks(), "the alert webhooks", 30)

        # -- what admins and auditors read ------------------------------------------------------------
        now = datetime.now(UTC)
        t1, t2 = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z"), \
            (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        kinds_q = "decision,override,temp_alert,sentinel_alert,material_scan,venue_bound,device_start,device_stop"
        csv = run.api(run.auditor, "GET", "/v1/export/events.csv", "export-site.csv",
                      params={"site_id": SITE, "from": t1, "to": t2, "kinds": kinds_q})
        assert csv.text.count("\r\n") > 8, csv.text
        run.api(run.admin, "GET", "/v1/export/events.csv", "export-pid.csv",
                params={"venue_id": VENUE["venue_id"], "from": t1, "to": t2, "kinds": kinds_q, "include_pid": 1})
        local = datetime.now(ZoneInfo("Asia/Shanghai"))             # the site's day (sync.md §5.4)
        day = local.strftime("%Y-%m-%d")
        for fmt in ("json", "csv"):
            run.api(run.auditor, "GET", "/v1/reports/daily", f"daily.{fmt}",
                    params={"site_id": SITE, "day": day, "format": fmt})
        run.api(run.auditor, "GET", "/v1/trace/venue", "trace-venue.json",
                params={"venue_id": VENUE["venue_id"], "from": t1, "to": t2})
        by_sub = run.api(run.auditor, "POST", "/v1/trace/person", "trace-sub.json",
                         json={"id_type": "SUB", "id": sub_of(world, ID_SUBJECT), "from": t1, "to": t2}).json()
        assert len(by_sub["items"]) >= 3, by_sub      # the CK1, the ID card and the badge: one person
        dcc_id = f"{DCC_FNT}/{DCC_GNT}/{DCC_DOB}"
        by_dcc = run.api(run.auditor, "POST", "/v1/trace/person", "trace-dcc.json",
                         json={"id_type": "DCC", "id": dcc_id, "from": t1, "to": t2}).json()
        assert len(by_dcc["items"]) == 1, by_dcc
        # an auditor's slips: the server takes no id numbers (sync.md §5.4); the refusal must not echo one
        for id_type in ("CN-ID", "SUB"):
            run.api(run.auditor, "POST", "/v1/trace/person", f"trace-{id_type}-id-number.json",
                    json={"id_type": id_type, "id": ID_SUBJECT, "from": t1, "to": t2}, ok=(422,))
        alerts = run.api(run.auditor, "GET", "/v1/alerts", "alerts.json", params={"status": "open"}).json()
        assert any(a["kind"] == "pii_unmasked" for a in alerts["items"]), alerts   # sync.md §5.5: the note
        run.api(run.auditor, "GET", "/v1/fleet/devices", "fleet.json")
        for d in (PERSON, TRUCK):
            run.api(run.auditor, "GET", f"/v1/fleet/devices/{d}", f"device-{d}.json")
        run.api(run.auditor, "GET", "/metrics", "metrics.txt")
        # the dashboard, as an auditor's browser uses it
        with httpx.Client(base_url=run.url, timeout=30) as browser:
            run.api(browser, "POST", "/login", "login", data={"token": run.tokens["auditor"], "next": "/dashboard"},
                    follow_redirects=True)
            page = run.api(browser, "GET", "/dashboard/trace", "dashboard-trace.html").text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            form = {"csrf": csrf, "kind": "person", "id_type": "DCC", "id": dcc_id, "tz": "Asia/Shanghai",
                    "from": (local - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
                    "to": (local + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")}
            run.api(browser, "POST", "/dashboard/trace", "dashboard-trace-dcc.html", data=form)
            run.api(browser, "POST", "/dashboard/trace", "dashboard-trace-id-number.html", ok=(422,),
                    data={**form, "id_type": "SUB", "id": ID_SUBJECT})
            for p in ("/dashboard", f"/dashboard/devices/{PERSON}", "/dashboard/alerts", "/dashboard/report"):
                run.api(browser, "GET", p, "dashboard" + p.replace("/", "-") + ".html")
        stored = run.acked()
        run.admin.close()
        run.auditor.close()
        run.stop("server")
        if not server_db.startswith("sqlite"):
            (base / "dumps").mkdir()
            pg_dump(server_db, base / "dumps" / "checkpoint_test.sql")
    finally:
        run.close()

    # -- the scan ------------------------------------------------------------------------------------------
    canaries = [
        Canary("name", NAME), Canary("name-cjk", NAME_CJK), Canary("name-latin", NAME_LATIN),
        Canary("driver-name", DRIVER_NAME), Canary("driver-name-latin", "Canarydriver"),
        Canary("id-subject", ID_SUBJECT), Canary("id-driver", ID_DRIVER), Canary("id-card", ID_CARD),
        Canary("id-url", ID_URL), Canary("phone-url", PHONE_URL), Canary("badge", BADGE),
        Canary("dcc-fnt", DCC_FNT), Canary("dcc-dob", DCC_DOB), Canary("dcc-ci", DCC_CI),
        Canary("forged-fn", FORGED_FN), Canary("forged-gn", FORGED_GN), Canary("forged-dob", FORGED_DOB),
        Canary("forged-ci", FORGED_CI), Canary("id-broken", ID_BROKEN), Canary("qr-broken", BROKEN),
        Canary("red-name", RED_NAME), Canary("red-name-latin", "Canaryred"), Canary("id-red", ID_RED),
        Canary("guard-pin", GUARD_PIN), Canary("admin-pin", ADMIN_PIN), Canary("wrong-pin", WRONG_PIN),
        Canary("admin-token", run.tokens["admin"]), Canary("auditor-token", run.tokens["auditor"]),
        Canary("plate", PLATE, STORE_AND_SHOWN), Canary("pass-id", PASS_ID, STORE_AND_SHOWN),
        Canary("note-phone", NOTE_PHONE, AS_TYPED), Canary("note-id", NOTE_ID, AS_TYPED),
        Canary("manual-phone", MANUAL_PHONE, AS_TYPED),
        *text_canaries("qr-staff", staff_code), *text_canaries("qr-driver", driver_code),
        *text_canaries("qr-pass", pass_code), *text_canaries("qr-hc1", hc1), *text_canaries("qr-green", green),
        *text_canaries("qr-forged", forged), *text_canaries("qr-red", red_code),
        Canary("qr-url", URL),
        Canary("credential-id-staff", credential_id(staff_code, world)),
        Canary("credential-id-driver", credential_id(driver_code, world)),
        Canary("credential-id-pass", credential_id(pass_code, world)),
        Canary("credential-id-red", credential_id(red_code, world)),
    ]

    def classify(p: Path) -> str:
        top = p.relative_to(base).parts[0]
        if top in (PERSON, TRUCK):
            return "gate_store"
        if top in ("server", "dumps"):
            return "server_db"
        if top == "logs":
            # ``gate run --print-decisions`` prints the decision view's line (masked name, plate) for whoever
            # watches the terminal, as the console shows it (console.md §2): a display, not a log line
            return "display" if p.name.startswith("gate-") and p.suffix == ".stdout" else "log"
        if top == "responses":
            return "console" if p.name.startswith("console-") else "api"
        return "other"

    scanner = Scanner(canaries, classify)
    leaks = scanner.scan_tree(base)
    # the run's own product output must have been there to scan
    for must in (f"{PERSON}/events.db", f"{PERSON}/state.db", f"{TRUCK}/events.db", "logs/server.log",
                 "logs/gate-person.log", "logs/agent-person.log", "responses/console-person-stream.txt"):
        assert (base / must).exists(), must
    assert (base / "server" / "server.db").exists() or (base / "dumps").exists()
    fig = {"test": "privacy_canaries", "backend": "sqlite" if server_db.startswith("sqlite") else "postgresql",
           "files_scanned": scanner.files_scanned, "bytes_scanned": scanner.bytes_scanned,
           "sqlite_databases": scanner.databases,
           "files_by_location": dict(sorted(scanner.by_location.items())), "canaries": len(canaries),
           "decisions": len(views), "webhooks": len(run.sink.bodies), "events_stored": sum(stored.values()),
           "leaks": len(leaks), "seconds": round(time.monotonic() - started, 1)}
    figures.report(fig)
    assert not leaks, "canaries found:\n" + "\n".join(str(x) for x in leaks)
    assert not scanner.unreadable, scanner.unreadable

    # -- positive control: what the spec lets through was really there to be found ----------------------
    from edge.credentials import mask_name

    shown = [Canary("plate", PLATE), Canary("note-phone", NOTE_PHONE), Canary("manual-phone", MANUAL_PHONE),
             Canary("name-masked", mask_name(NAME))]
    seen: dict[str, set[str]] = {c.label: set() for c in shown}
    for leak in Scanner(shown, classify).scan_tree(base):
        seen[leak.canary].add(leak.location)
    assert seen["plate"] >= {"gate_store", "server_db", "console", "display"}, seen
    assert seen["note-phone"] >= {"gate_store", "server_db"} and seen["manual-phone"] >= {"gate_store", "server_db"}
    assert seen["name-masked"] >= {"gate_store", "server_db", "console", "display", "api"}, seen

    # -- negative control: the same scanner finds a planted canary in each encoding --------------------
    plants: list[tuple[Path, bytes, str]] = [
        (base / PERSON / "events.db-wal", json.dumps({"n": NAME}).encode(), "name"),             # \uXXXX
        (base / "logs" / "gate-person.log", base64.b64encode(b"xx" + staff_code.encode()), "qr-staff"),
        (base / "responses" / "console-person-stream.txt", quote(NAME_CJK).lower().encode(), "name-cjk"),
        (base / "logs" / "agent-person.log", f"note={NOTE_ID}".encode(), "note-id"),
        (base / PERSON / "state.db", credential_id(staff_code, world), "credential-id-staff"),
    ]
    for path, blob, _ in plants:
        with path.open("ab") as f:
            f.write(b"\n" + blob + b"\n")
    again = Scanner(canaries, classify).scan_tree(base)
    found = {(leak.path, leak.canary) for leak in again}
    for path, _, label in plants:
        assert (str(path.relative_to(base)), label) in found, (label, path, [str(x) for x in again])


# -- the scanner itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encode", [
    lambda v: v.encode(),
    lambda v: json.dumps({"k": v}).encode(),
    lambda v: json.dumps({"k": v}).upper().encode(),
    lambda v: quote(v).encode(),
    lambda v: quote(v).lower().encode(),
    lambda v: base64.b64encode(b"prefix:" + v.encode()),
    lambda v: base64.urlsafe_b64encode(b"pre" + v.encode()),
    lambda v: base64.b64encode(b"p" + v.encode()),
    lambda v: v.encode("utf-16-le"),
    lambda v: v.encode().hex().encode(),
], ids=["utf8", "json", "json-upper", "percent", "percent-lower", "b64-1", "b64url-0", "b64-2", "utf16", "hex"])
def test_scanner_finds_every_encoding(tmp_path: Path, encode: Callable[[str], bytes]) -> None:
    f = tmp_path / "blob.db-wal"
    f.write_bytes(os.urandom(64) + b"..." + encode(NAME) + b"..." + os.urandom(64))
    leaks = Scanner([Canary("name", NAME)]).scan_tree(tmp_path)
    assert [x.canary for x in leaks] == ["name"], leaks


def test_scanner_respects_allowed_places_and_ignores_masked_forms(tmp_path: Path) -> None:
    from edge.credentials import mask_name

    (tmp_path / "gate").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "gate" / "events.db").write_bytes(f"{PLATE} {mask_name(NAME)} 1386****7195".encode())
    (tmp_path / "logs" / "gate.log").write_bytes(json.dumps({"msg": f"plate={PLATE}"}).encode())
    scanner = Scanner([Canary("plate", PLATE, STORE_AND_SHOWN), Canary("name", NAME), Canary("phone", NOTE_PHONE)],
                      lambda p: "gate_store" if p.parent.name == "gate" else "log")
    leaks: list[Leak] = scanner.scan_tree(tmp_path)
    assert [(x.canary, x.location) for x in leaks] == [("plate", "log")], leaks
    assert scanner.files_scanned == 2 and scanner.bytes_scanned > 0


def test_scanner_reads_hidden_wal_and_shm_files_and_binary_canaries(tmp_path: Path) -> None:
    cid = bytes.fromhex("4a76897b86f2c3cd")
    sub = tmp_path / "d" / ".hidden"
    sub.mkdir(parents=True)
    (sub / "x.db-shm").write_bytes(b"\0" * 100 + cid + b"\0" * 100)
    (tmp_path / "d" / "y.db-wal").write_bytes(cid.hex().upper().encode())
    leaks = Scanner([Canary("cid", cid)]).scan_tree(tmp_path)
    assert sorted((x.path, x.form) for x in leaks) == [("d/.hidden/x.db-shm", "raw"), ("d/y.db-wal", "HEX")]
    shutil.rmtree(sub)


def test_rows_of_a_database_find_a_canary_cut_across_overflow_pages(tmp_path: Path) -> None:
    """A value longer than a page is split over overflow pages: the byte scan can miss it, the rows do not."""
    import sqlite3

    from tests.reliability.privacy import sqlite_rows

    missed = None
    for pad in range(0, 3000, 7):
        db = tmp_path / f"t{pad}.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("CREATE TABLE t (body TEXT)")
        conn.execute("INSERT INTO t VALUES (?)", ("x" * pad + NOTE_ID + "y" * 3000,))
        conn.commit()
        conn.close()
        if NOTE_ID.encode() not in db.read_bytes():
            missed = db
            break
        db.unlink()
    assert missed is not None, "no padding split the value across pages"
    assert NOTE_ID.encode() in (sqlite_rows(missed) or b"")
    leaks = Scanner([Canary("note-id", NOTE_ID)]).scan_tree(tmp_path)
    assert [(x.canary, x.path) for x in leaks] == [("note-id", f"{missed.name}::rows")], leaks
