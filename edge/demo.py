"""``checkpoint demo``: the whole gate on embedded defaults, in one process tree, offline.

What it builds at start (nothing is shipped pre-made, so a fresh clone works):

1. keys: root, publisher and server keys for a demo fleet, an issuer key for
   health codes and passes, a firm key for venue and material codes;
2. a signed bundle through the bundle tools' own code path
   (``sync.bundle`` build, ``keys_body``/``manifest_body``, ``add_signatures``) from the
   default rule set in ``config/rules/`` plus a demo roster, firms, visitors and guard
   accounts, applied to each gate as ``checkpoint gate import`` applies it;
3. CK1 codes minted for the demo people, rendered as QR images.

Then it runs two gates (a person lane with the thermometer simulator on a pty, and a
green lane for trucks) on mock pins. A director plays the people: it puts each
code's picture into the gate's image folder (the real capture → decode path),
presents a forehead to the simulated thermometer just before, and steps back and
presents again when the gate asks for a re-measure. Each decision is printed as one
line; the consoles' URLs are printed at start. ``--duration`` stops it and exits 0.

``DemoWorld`` is reused by the gate's tests and ``bench/latency.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

__all__ = ["DemoCode", "DemoPerson", "DemoWorld", "demo", "install_bundle", "qr_image"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "config" / "rules"
FLEET = "demo-fleet"
HOST_FIRM = "F0012"
CARRIER = "F0088"
OTHER_FIRM = "F0999"
IMAGE_SIZE = (640, 480)
DEMO_MARKER = ".checkpoint-demo"


@dataclass(frozen=True)
class DemoPerson:
    """Somebody the director walks up to a gate."""

    key: str
    what_zh: str
    what_en: str
    name: str                      # masked (credentials.md §7.2)
    role: str
    firm: str
    colour: str
    flags: tuple[str, ...] = ()
    test_age_h: int | None = 20
    on_roster: bool = True
    object_c: float | None = 34.2  # forehead reading; None: does not measure
    fever: bool = False
    expect: str = "admit"


PEOPLE: tuple[DemoPerson, ...] = (
    DemoPerson("green-staff", "绿码员工", "green-code staff", "张*三", "staff", HOST_FIRM, "green", object_c=34.2),
    DemoPerson("yellow-staff", "白名单企业黄码员工", "yellow code, whitelisted firm", "李*", "staff", HOST_FIRM,
               "yellow", test_age_h=10, object_c=34.6),
    DemoPerson("red-contact", "红码密接", "red code, close contact", "王*", "staff", HOST_FIRM, "red",
               flags=("close_contact",), object_c=34.3, expect="deny"),
    DemoPerson("expired-test", "核酸超时", "test too old", "赵*明", "staff", HOST_FIRM, "green", test_age_h=60,
               object_c=34.0, expect="deny"),
    DemoPerson("visitor", "未报备访客", "unregistered visitor", "孙*", "visitor", OTHER_FIRM, "green",
               on_roster=False, object_c=34.4, expect="deny"),
    DemoPerson("fever", "发热员工", "feverish staff", "周*芳", "staff", HOST_FIRM, "green", object_c=35.5,
               fever=True, expect="deny"),
)
DRIVER = DemoPerson("driver", "货车司机", "truck driver", "吴*", "logistics", CARRIER, "green", test_age_h=10,
                    on_roster=False, object_c=None)
PLATE = "豫A·D1234"


@dataclass(frozen=True)
class DemoCode:
    """One picture the director shows a gate."""

    key: str
    lane: str
    text: str
    what_zh: str
    what_en: str
    expect: str | None           # admit | deny | refer | None (no decision: venue, material, held half)
    object_c: float | None = None
    fever: bool = False


def qr_image(text: str, *, size: tuple[int, int] = IMAGE_SIZE, module_px: int = 4) -> Any:
    """A BGR picture of ``text`` as a QR code (error correction Q) on a grey background."""
    import numpy as np
    import segno

    qr = segno.make(text, error="q", micro=False, boost_error=False)
    matrix = np.array([[1 if v else 0 for v in row] for row in qr.matrix], dtype=np.uint8)
    quiet = 4
    n = matrix.shape[0] + 2 * quiet
    px = module_px
    while n * px > min(size) - 20 and px > 2:
        px -= 1
    code = np.full((n, n), 255, np.uint8)
    code[quiet:quiet + matrix.shape[0], quiet:quiet + matrix.shape[1]] = np.where(matrix == 1, 0, 255)
    code = np.kron(code, np.ones((px, px), np.uint8))
    w, h = size
    canvas = np.full((h, w), 190, np.uint8)
    y, x = (h - code.shape[0]) // 2, (w - code.shape[1]) // 2
    canvas[y:y + code.shape[0], x:x + code.shape[1]] = code
    return np.stack([canvas] * 3, axis=-1)


def blank_image(size: tuple[int, int] = IMAGE_SIZE) -> Any:
    import numpy as np

    w, h = size
    return np.full((h, w, 3), 190, np.uint8)


class DemoWorld:
    """Keys, a signed bundle and minted codes for a demo fleet (also the gate tests' fixture).

    Args:
        root: a directory for keys, bundle sources and the built bundle.
        now_ms: the issue time of codes (default: now).
        guard_pin, admin_pin: PINs of the demo's two console accounts (default: random).
        log2_n: scrypt cost of the PIN hashes (tests use 10).
        people: who is on the roster and gets a code.
        policy: settings.policy keys to change (tests shorten pair_window_s, remeasure_wait_s).
    """

    def __init__(self, root: Path, *, now_ms: int | None = None, guard_pin: str | None = None,
                 admin_pin: str | None = None, log2_n: int = 14, people: tuple[DemoPerson, ...] = PEOPLE,
                 policy: dict[str, Any] | None = None) -> None:
        from sync.keys import generate_key, write_key_file
        from sync.timefmt import utc_now_ms

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.now_ms = utc_now_ms() if now_ms is None else now_ms
        self.people = people
        self.guard_pin = guard_pin or f"{secrets.randbelow(10**6):06d}"
        self.admin_pin = admin_pin or f"{secrets.randbelow(10**8):08d}"
        self.log2_n = log2_n
        self.policy_overrides = dict(policy or {})
        self.keys = {
            "root": generate_key("root", "demo root"),
            "publisher": generate_key("publisher", "demo publisher"),
            "server": generate_key("server", "demo server"),
            "issuer": generate_key("issuer", "demo health platform"),
            "venue": generate_key("issuer", "demo firm admin"),
        }
        kdir = self.root / "keys"
        kdir.mkdir(exist_ok=True)
        for name, key in self.keys.items():
            write_key_file(kdir / f"{name}.key", key, overwrite=True)
        self.subject_key = secrets.token_bytes(32)
        self.roster_key = secrets.token_bytes(32)
        self.badge_text = "EMP-" + f"{secrets.randbelow(10**6):06d}"

    # -- people ---------------------------------------------------------------------------------

    def sub(self, key: str) -> str:
        """The keyed subject id a platform would compute (credentials.md §7.1)."""
        return hmac.new(self.subject_key, f"CN-ID:DEMO-{key}".encode(), hashlib.sha256).digest()[:16].hex()

    def _time(self, hours_ago: float) -> str:
        from sync.timefmt import format_ms

        return format_ms(self.now_ms - int(hours_ago * 3_600_000))

    def code_hash(self, text: str) -> str:
        from edge.credentials import code_hash

        return code_hash(text, self.roster_key)

    # -- bundle sources ---------------------------------------------------------------------------

    def sources(self) -> Path:
        """The eight source files of ``admin bundle build`` (bundles.md §1.6, §6)."""
        from edge.console.accounts import hash_pin
        from sync.timefmt import format_ms

        src = self.root / "sources"
        src.mkdir(exist_ok=True)
        rules = json.loads((RULES_DIR / "rules.json").read_text(encoding="utf-8"))
        settings = json.loads((RULES_DIR / "settings.json").read_text(encoding="utf-8"))
        settings["policy"].update(self.policy_overrides)
        settings["console"] = {"accounts": [
            {"id": "guard-1", "name": "门岗一 Guard 1", "role": "guard", "pin": hash_pin(self.guard_pin, log2_n=self.log2_n)},
            {"id": "admin", "name": "管理员 Admin", "role": "admin", "pin": hash_pin(self.admin_pin, log2_n=self.log2_n)},
        ]}
        import base64

        trust = {"part": "trust", "schema": 1, "keys": [
            {"public_key": base64.b64encode(self.keys["issuer"].spki_der()).decode(), "kinds": ["health", "pass"]},
            {"public_key": base64.b64encode(self.keys["venue"].spki_der()).decode(), "kinds": ["venue", "material"]},
        ]}
        staff = []
        for p in self.people:
            if not p.on_roster:
                continue
            staff.append({
                "sub": self.sub(p.key), "codes": [], "name": p.name, "role": p.role, "firm": p.firm, "team": None,
                "zones": ["*"], "closed_loop": False, "colour": p.colour, "flags": list(p.flags),
                "last_test": None if p.test_age_h is None else self._time(p.test_age_h),
            })
        staff.append({
            "sub": self.sub("badge"), "codes": [self.code_hash(self.badge_text)], "name": "钱*", "role": "staff",
            "firm": HOST_FIRM, "team": None, "zones": ["*"], "closed_loop": False, "colour": "green", "flags": [],
            "last_test": self._time(18),
        })
        roster = {"part": "roster", "schema": 1, "roster_key": self.roster_key.hex(), "staff": staff, "teams": []}
        firms = {"part": "firms", "schema": 1, "firms": [
            {"id": HOST_FIRM, "name": "豫中机械厂 Yuzhong Machinery", "whitelisted": True, "meltdown": False,
             "meltdown_at": None, "closed_loop": False},
            {"id": CARRIER, "name": "中原物流 Zhongyuan Logistics", "whitelisted": True, "meltdown": False,
             "meltdown_at": None, "closed_loop": False},
        ]}
        prereg = {"part": "preregistrations", "schema": 1, "visitors": []}
        revocations = {"part": "revocations", "schema": 1, "entries": []}
        mode = {"part": "mode", "schema": 1, "mode": "normal", "since": format_ms(self.now_ms - 86_400_000),
                "reason": "demo", "set_by": "demo"}
        files = {"rules.json": {"part": "rules", "schema": 1, "rules": rules} if isinstance(rules, list) else rules,
                 "settings.json": settings, "trust.json": trust, "roster.json": roster, "firms.json": firms,
                 "preregistrations.json": prereg, "revocations.json": revocations, "mode.json": mode}
        for name, obj in files.items():
            (src / name).write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
        return src

    def keys_document(self) -> bytes:
        """Keys document 1 of the demo fleet, signed by its root key (``admin keys new`` + ``sign``)."""
        from sync.bundle.publish import add_signatures, keys_body, unsigned_document

        k = self.keys
        body = keys_body(previous=None, fleet=FLEET, root=[k["root"]], publisher=[k["publisher"]],
                         server=[k["server"].public_only()], issued_at_ms=self.now_ms - 60_000)
        data, _ = add_signatures(unsigned_document("keys", body), "keys", [k["root"]])
        return data

    def build_bundle(self, *, version: int = 1, site: str | None = None, expires_in_s: int = 7 * 86_400) -> Path:
        """Keys document 1 and a signed manifest as ``admin keys``/``admin bundle build``/``sign`` write them."""
        from sync.bundle.parts import build_parts_from_dir
        from sync.bundle.publish import add_signatures, manifest_body, part_refs, unsigned_document
        from sync.keys import atomic_write

        out = self.root / f"bundle-{version}"
        (out / "parts").mkdir(parents=True, exist_ok=True)
        k = self.keys
        atomic_write(out / "keys-1.json", self.keys_document())
        parts = build_parts_from_dir(self.sources())
        body = manifest_body(fleet=FLEET, site=site, version=version, keys_version=1, parts=parts,
                             issued_at_ms=self.now_ms - 30_000, server_time_ms=self.now_ms - 30_000,
                             expires_ms=self.now_ms + expires_in_s * 1000, previous=None, note="demo")
        manifest, _ = add_signatures(unsigned_document("manifest", body), "manifest", [k["publisher"]])
        refs = part_refs(parts)
        for name, raw in parts.items():
            atomic_write(out / "parts" / refs[name].sha256, raw)
        atomic_write(out / "manifest.json", manifest)
        return out

    # -- codes ---------------------------------------------------------------------------------------

    def mint(self, kind: str, claims: dict[str, Any], *, key: str = "issuer", expires_in_s: int | None = None) -> str:
        from edge.credentials import mint

        return mint(kind, claims, self.keys[key], now_ms=self.now_ms, expires_in_s=expires_in_s)

    def health_code(self, p: DemoPerson) -> str:
        claims: dict[str, Any] = {"iss": "HA-410100", "sub": self.sub(p.key), "name": p.name, "role": p.role,
                                  "firm": p.firm, "colour": p.colour, "flags": list(p.flags)}
        if p.test_age_h is not None:
            claims["last_test"] = self._time(p.test_age_h)
        return self.mint("health", claims, expires_in_s=86_400)

    def pass_code(self, driver: DemoPerson = DRIVER, *, plate: str = PLATE) -> str:
        from sync.timefmt import format_ms

        return self.mint("pass", {
            "iss": "HA-TRAFFIC", "sub": self.sub(driver.key), "pass_id": "GL-2022-0517", "plate": plate,
            "firm": CARRIER, "origin": "郑州", "destination": "许昌", "nbf": format_ms(self.now_ms - 3_600_000),
            "exp": format_ms(self.now_ms + 7 * 86_400_000),
        })

    def venue_code(self, *, venue_id: str = "V0012-01", zone: str = "production", door: str | None = "south-1",
                   key: str = "venue") -> str:
        claims = {"iss": HOST_FIRM, "venue_id": venue_id, "venue_name": "豫中机械厂南门 South gate", "zone": zone,
                  "firm": HOST_FIRM}
        if door:
            claims["door"] = door
        return self.mint("venue", claims, key=key)

    def material_code(self, goods_code: str = "GOODS-7731-0001") -> str:
        return self.mint("material", {"iss": HOST_FIRM, "goods_code": goods_code, "goods_name": "冷链配件",
                                      "batch": "B-0517", "quantity": "40 箱"}, key="venue")

    def codes(self) -> list[DemoCode]:
        """The demo's scenes, in the order the director plays them: one of each outcome early."""
        people = {p.key: DemoCode(p.key, "person", self.health_code(p), p.what_zh, p.what_en, p.expect, p.object_c,
                                  p.fever) for p in self.people}
        extra = {
            "badge": DemoCode("badge", "person", self.badge_text, "员工工牌（名单码）", "staff badge (roster)", "admit",
                              34.1),
            "garbage": DemoCode("garbage", "person", "HELLO-CHECKPOINT-DEMO", "无法识别的码", "unknown code", "refer"),
        }
        order = ["green-staff", "garbage", "red-contact", "fever", "yellow-staff", "expired-test", "visitor", "badge"]
        out = [DemoCode("venue", "person", self.venue_code(), "场所码（设置模式）", "venue code (set-up mode)", None)]
        out += [people[k] if k in people else extra[k] for k in order if k in people or k in extra]
        out += [c for k, c in people.items() if k not in order]
        out.append(DemoCode("truck-pass", "green_lane", self.pass_code(), "货车通行证", "truck pass", None))
        out.append(DemoCode("driver", "green_lane", self.health_code(DRIVER), DRIVER.what_zh, DRIVER.what_en, "admit"))
        out.append(DemoCode("material", "green_lane", self.material_code(), "货物追溯码", "goods code", None))
        return out


def install_bundle(bundle_dir: Path, data_dir: Path, device_id: str) -> Any:
    """Apply keys and bundle to a gate's data directory as ``checkpoint gate import`` does."""
    from edge.bundles.updater import BundleUpdater
    from edge.clock import TrustedClock
    from edge.store.events import EventStore
    from edge.store.state import StateDB

    with EventStore(data_dir, device_id) as store, StateDB(data_dir) as state:
        clock = TrustedClock(state)
        up = BundleUpdater(data_dir, state=state, events=store, clock=clock, device_id=device_id, site=None,
                           fleet=FLEET)
        up.install_anchor((bundle_dir / "keys-1.json").read_bytes())
        result = up.import_dir(bundle_dir)
        if getattr(result, "status", None) != "applied":
            raise RuntimeError(f"demo bundle not applied: {result}")
        return result


def write_image(folder: Path, name: str, image: Any) -> Path:
    """Write atomically so the camera's folder source never reads half a file."""
    import cv2

    path = folder / name
    tmp = folder / f".{name}.tmp.png"
    cv2.imwrite(str(tmp), image)
    os.replace(tmp, path)
    return path


def gate_config(data_dir: Path, device_id: str, lane: str, camera_dir: Path, listen: str, *,
                thermometer: bool, hold_s: float, server_url: str | None = None) -> Any:
    from edge.config import GateConfig

    return GateConfig.model_validate({
        "gate": {"device_id": device_id, "data_dir": str(data_dir), "lane": lane},
        "sync": {"server_url": server_url, "poll_bundle_s": 10.0, "heartbeat_s": 10.0},
        "camera": {"source": "folder", "path": str(camera_dir), "fps": 15, "image_hold_s": hold_s,
                   "no_frames_after_s": 5.0},
        "decode": {"hold_s": 2.0},
        "thermometer": {"enabled": thermometer, "port": "sim", "protocol": "gy-mcu90614"},
        "gpio": {"pin_factory": "mock"},
        "console": {"listen": listen, "allow_plain_http": True},
        "log": {"level": "WARNING"},
    })


# -- the upstream server and the sync agents ------------------------------------------------------


class Upstream:
    """The demo's upstream server in this process (uvicorn thread, SQLite in the demo directory).

    Holds the demo fleet's keys document, publishes the demo sources as bundle 1 (server flow,
    signed with the demo publisher key), and enrols each gate; each gate then runs a sync agent
    that fetches the bundle and uploads the event log.
    """

    def __init__(self, world: DemoWorld, base: Path, *, port: int = 0) -> None:
        import httpx
        import uvicorn

        from sync.server import create_app, open_state
        from sync.server.auth import create_token
        from sync.server.config import ServerConfig
        from sync.timefmt import utc_now_ms

        self.config = ServerConfig(data_dir=base / "server", listen=f"127.0.0.1:{port}", cookie_secure=False,
                                   log_level="ERROR", site_tz="Asia/Shanghai")
        self.state = open_state(self.config, server_key=world.keys["server"],
                                publisher_keys=[world.keys["publisher"]])
        self._server = uvicorn.Server(uvicorn.Config(create_app(self.state), host="127.0.0.1", port=port,
                                                     log_level="error", access_log=False, lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="demo:server", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise click.ClickException("the demo server did not start")
            self._thread.join(0.01)
        self.url = f"http://127.0.0.1:{self._server.servers[0].sockets[0].getsockname()[1]}"
        with self.state.db.write() as conn:
            token, _ = create_token(conn, role="admin", name="demo", now_ms=utc_now_ms(), expires_days=1)
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        self.agents: list[tuple[Any, threading.Thread]] = []
        self.stop = threading.Event()

    def _ok(self, r: Any, what: str) -> Any:
        if r.status_code >= 300:
            raise click.ClickException(f"demo server refused {what}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def publish(self, world: DemoWorld) -> None:
        self._ok(self.http.post("/v1/admin/keys", content=world.keys_document(),
                                headers={"Content-Type": "application/json"}), "the keys document")
        src = world.sources()
        files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.suffix == ".json"]
        self._ok(self.http.post("/v1/admin/sources", data={"site": "", "note": "demo rules"}, files=files),
                 "the demo sources")
        self._ok(self.http.post("/v1/admin/sites", json={"site_id": "demo-site", "name": "演示工厂 Demo plant",
                                                        "tz": "Asia/Shanghai"}), "the site")

    def enroll(self, cfg: Any, venue: dict[str, Any]) -> None:
        from sync.agent.enroll import enroll

        body = {"device_id": cfg.gate.device_id, "site_id": "demo-site", "venue": venue, "firm_id": HOST_FIRM,
                "label": f"demo {cfg.gate.lane}"}
        code = self._ok(self.http.post("/v1/admin/devices", json=body), "a device")["enrollment_code"]
        enroll(cfg, server_url=self.url, code=code)

    def start_agent(self, cfg: Any) -> None:
        from sync.agent.core import Agent
        from sync.agent.notify import Notifier

        agent = Agent(cfg, notifier=Notifier(env={}), bundle_update="auto")
        thread = threading.Thread(target=agent.run, args=(self.stop,), name=f"demo:agent:{cfg.gate.device_id}",
                                  daemon=True)
        thread.start()
        self.agents.append((agent, thread))

    def stored(self) -> dict[str, int]:
        """Events the server holds per gate (what an auditor's trace would find)."""
        from sqlalchemy import text

        with self.state.db.reader.connect() as conn:
            rows = conn.execute(text("SELECT device_id, count(*) FROM events GROUP BY device_id")).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def close(self) -> None:
        self.stop.set()
        for agent, thread in self.agents:
            thread.join(15)
            with contextlib.suppress(Exception):
                agent.close()
        self.http.close()
        self._server.should_exit = True
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self.state.db.dispose()


def _free_or_any(port: int) -> int:
    """``port`` if it can be bound on loopback now, else 0 (any free port) with a note."""
    import socket

    if port == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            click.echo(f"port {port} is in use: the console takes another free port", err=True)
            return 0
    return port


def wait_for_bundle(data_dir: Path, timeout_s: float, stop: threading.Event) -> bool:
    from edge.store.state import StateDB

    end = time.monotonic() + timeout_s
    with StateDB(data_dir, readonly=True) as state:
        while time.monotonic() < end and not stop.is_set():
            if state.read_row("bundle") is not None:
                return True
            stop.wait(0.1)
    return False


# -- the director ---------------------------------------------------------------------------------


class _Gate:
    """One demo gate and what the director sees of it."""

    def __init__(self, name: str, app: Any, folder: Path, echo: Callable[[str], None] | None = None) -> None:
        self.name, self.app, self.folder, self.echo = name, app, folder, echo
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        app.broadcaster.add_listener(self._on)
        self.thread: threading.Thread | None = None
        self.exit_code: int | None = None

    def _on(self, msg: Any) -> None:
        if self.echo is not None and msg.event == "prompt" and msg.data.get("remaining_s") and \
                msg.data.get("kind") in ("pair", "remeasure", "measure"):
            self.echo(f"  … {msg.data['zh']} / {msg.data['en']}")
        with self.cond:
            self.events.append((msg.event, msg.data))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[str, dict[str, Any]], bool], since: int, timeout: float,
                 stop: threading.Event) -> tuple[str, dict[str, Any]] | None:
        end = time.monotonic() + timeout
        with self.cond:
            while not stop.is_set():
                for ev in self.events[since:]:
                    if pred(*ev):
                        return ev
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.2))
        return None

    def mark(self) -> int:
        with self.cond:
            return len(self.events)


def _play(gate: _Gate, codes: list[DemoCode], sim: Any, stop: threading.Event, echo: Callable[[str], None],
          setup: Callable[[], None] | None) -> None:
    """Show each code to the gate (and a forehead to its thermometer) and wait for what follows."""
    blank = "0000-blank.png"
    for i, c in enumerate(codes, start=1):
        if stop.is_set():
            return
        if c.key == "venue" and setup is not None:
            setup()
        if sim is not None and c.object_c is not None:
            sim.present(c.object_c, 25.0)
            if stop.wait(0.6):
                return
        mark = gate.mark()
        name = f"{i:04d}-{c.key}.png"
        write_image(gate.folder, name, qr_image(c.text))
        if c.fever and sim is not None:
            got = gate.wait_for(lambda e, d: e == "prompt" and d.get("kind") == "remeasure" and d["remaining_s"] > 0,
                                mark, 10, stop)
            if got is not None:
                sim.absent()
                if stop.wait(0.6):
                    return
                sim.present(c.object_c or 35.5, 25.0)
        if c.expect is not None:
            gate.wait_for(lambda e, d: e == "decision" and d.get("override") is None, mark, 15, stop)
        elif c.key == "venue":
            gate.wait_for(lambda e, d: e == "prompt" and d.get("kind") == "setup" and d["remaining_s"] != 60,
                          mark, 10, stop)
        elif c.key == "truck-pass":
            gate.wait_for(lambda e, d: e == "prompt" and d.get("kind") == "pair", mark, 10, stop)
        else:
            stop.wait(1.5)
        if sim is not None:
            sim.absent()
        (gate.folder / name).unlink(missing_ok=True)
        for p in gate.folder.iterdir():
            if p.name != blank and not p.name.startswith(".") and p.name < name:
                p.unlink(missing_ok=True)
        if stop.wait(0.3):
            return


@click.command()
@click.option("--duration", type=click.FloatRange(min=1), default=None,
              help="Stop after this many seconds and exit 0 (default: run until Ctrl-C).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to keep the demo's state (default: a temporary directory, removed at exit).")
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True,
              help="Person-lane console port (the truck lane uses the next one; 0 = any free port).")
@click.option("--hold", "hold_s", type=click.FloatRange(0.2, 5), default=0.6, show_default=True,
              help="Seconds each picture stays in front of the camera.")
@click.option("--once", is_flag=True, help="Play the scenes once (default: again and again until stopped).")
@click.option("--offline", is_flag=True,
              help="No upstream server and sync agents: the bundle is imported as 'gate import' does.")
@click.option("--server-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port of the local upstream server (0 = any free port).")
def demo(duration: float | None, data_dir: Path | None, port: int, hold_s: float, once: bool, offline: bool,
         server_port: int) -> None:
    """Run two gates (person lane, truck green lane), a local upstream server and sync agents,
    on simulated hardware, and print each decision.

    Everything is local: keys, a signed bundle of the default rules and demo codes
    are made at start; the server publishes the bundle and the agents fetch it and
    upload the gates' events; pictures go through the real camera-folder → decode
    path, the thermometer simulator runs on a pseudo-terminal, pins are mock pins.
    """
    started = time.monotonic()
    from sync.logformat import setup_logging

    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    ctx = click.get_current_context()
    # The demo's own lines are the output; logs only for errors unless --log-level asks for more.
    setup_logging((ctx.find_root().obj or {}).get("log_level") or "ERROR", "logfmt")
    own_tmp = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="checkpoint-demo-")) if data_dir is None else data_dir
    if data_dir is not None and base.exists() and any(base.iterdir()):
        # a demo makes new keys each run: an earlier run's state would not match them
        if not (base / DEMO_MARKER).exists():
            raise click.UsageError(f"{base} is not empty and holds no earlier demo; choose another --data-dir")
        for child in base.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    base.mkdir(parents=True, exist_ok=True)
    (base / DEMO_MARKER).write_text("checkpoint demo data; removed by the next 'checkpoint demo' run here\n")
    stop = threading.Event()
    gates: list[_Gate] = []
    upstream: Upstream | None = None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for s in previous:
        signal.signal(s, on_signal)
    try:
        world = DemoWorld(base / "world")
        # The server starts (and publishes) in a thread while this one imports the gate and
        # mints the codes: most of either is imports and I/O, so they overlap.
        up_box: dict[str, Any] = {}

        def start_upstream() -> None:
            try:
                up = Upstream(world, base, port=server_port)
                up_box["up"] = up
                up.publish(world)
            except BaseException as exc:
                up_box["error"] = exc

        up_thread = threading.Thread(target=start_upstream, name="demo:server-start", daemon=True)
        if not offline:
            up_thread.start()
        from edge.app import GateApp
        from edge.gate import make_pin_factory

        codes = world.codes()
        bundle_dir = None
        if not offline:
            up_thread.join(60)
            upstream = up_box.get("up")
            if "error" in up_box:
                raise up_box["error"]
            if upstream is None:
                raise click.ClickException("the demo server did not start")
        else:
            bundle_dir = world.build_bundle()
        ports = [_free_or_any(port), _free_or_any(port + 1 if port else 0)]
        lanes = [("person", "gate-demo-person", ports[0], "south-1"),
                 ("green_lane", "gate-demo-truck", ports[1], "truck-1")]
        cfgs = {}
        for lane, device_id, lport, _door in lanes:
            ddir = base / device_id
            cam = ddir / "camera"
            cam.mkdir(parents=True, exist_ok=True)
            write_image(cam, "0000-blank.png", blank_image())
            cfgs[device_id] = gate_config(ddir, device_id, lane, cam, f"127.0.0.1:{lport}",
                                          thermometer=lane == "person", hold_s=hold_s,
                                          server_url=upstream.url if upstream else None)
        if upstream is not None:
            # enrol both gates at once (each is a key, a signed request and the keys anchor)
            errors: list[BaseException] = []

            def enroll(cfg: Any, door: str) -> None:
                try:
                    upstream.enroll(cfg, {"venue_id": "V0012-01", "zone": "production", "door": door})  # type: ignore[union-attr]
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=enroll, args=(cfgs[d], door), daemon=True) for _, d, _, door in lanes]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if errors:
                raise errors[0]
            for cfg in cfgs.values():
                upstream.start_agent(cfg)
        for lane, device_id, _lport, _door in lanes:
            ddir = base / device_id
            cam = ddir / "camera"
            cfg = cfgs[device_id]
            if upstream is None:
                assert bundle_dir is not None
                install_bundle(bundle_dir, ddir, device_id)
            prefix = "人行 person " if lane == "person" else "货车 truck  "

            def printer(view: dict[str, Any], line: str, prefix: str = prefix) -> None:
                click.echo(f"{prefix}{line}")

            def note(line: str, prefix: str = prefix) -> None:
                click.echo(f"{prefix}  {line}")

            app = GateApp(cfg, pin_factory=make_pin_factory("mock"), on_decision=printer, on_note=note,
                          thermometer_options={"sim": {"people": None}},
                          create_data_dir=False, env={k: v for k, v in os.environ.items()
                                                      if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")})
            gate = _Gate(lane, app, cam, echo=lambda line, prefix=prefix: click.echo(f"{prefix}{line}"))
            gate.thread = threading.Thread(target=lambda g=gate: setattr(g, "exit_code", g.app.run()),
                                           name=f"demo:{device_id}", daemon=True)
            gates.append(gate)
        if upstream is not None:
            # the agents' first poll brings the bundle; deciding before it would refer everyone
            for g in gates:
                if not wait_for_bundle(Path(g.app.cfg.data_dir), 30, stop):
                    raise click.ClickException("the sync agent did not fetch the demo bundle")
        for g in gates:
            g.thread.start()  # type: ignore[union-attr]
        for g in gates:
            if not g.app.ready.wait(30):
                raise click.ClickException(f"{g.name} gate did not start")
        click.echo("checkpoint demo: two gates on simulated hardware (mock pins, thermometer on a pty)"
                   + ("" if upstream is None else ", a local upstream server and two sync agents"))
        for g in gates:
            assert g.app.console is not None
            click.echo(f"  console {g.name:10} {g.app.console.url}")
        if upstream is not None:
            click.echo(f"  upstream server     {upstream.url}/")
        click.echo(f"  guard account guard-1 PIN {world.guard_pin}; admin account admin PIN {world.admin_pin}")
        click.echo(f"  data in {base}" + (" (removed at exit)" if own_tmp else ""))
        click.echo(f"  ready in {time.monotonic() - started:.1f} s")
        person, truck = gates
        admin = person.app.accounts().get("admin")

        def setup() -> None:
            with contextlib.suppress(Exception):
                person.app.start_setup(admin)

        therm = person.app.thermometer_obj
        sim = therm.simulator if therm is not None else None

        def director(g: _Gate, lane: str, sim: Any) -> None:
            first = True
            while not stop.is_set():
                scenes = [c for c in codes if c.lane == lane and (first or c.key != "venue")]
                _play(g, scenes, sim, stop, click.echo, setup if lane == "person" and first else None)
                first = False
                if once:
                    return
                stop.wait(3.0)

        directors = [threading.Thread(target=director, args=(person, "person", sim), name="demo:director", daemon=True),
                     threading.Thread(target=director, args=(truck, "green_lane", None), name="demo:director-truck",
                                      daemon=True)]
        for d in directors:
            d.start()
        end = None if duration is None else started + duration
        while not stop.is_set():
            if end is not None and time.monotonic() >= end:
                break
            if any(g.thread is not None and not g.thread.is_alive() for g in gates):
                break
            if once and not any(d.is_alive() for d in directors):
                stop.wait(1.0)
                break
            stop.wait(0.2)
        stop.set()
        if upstream is not None:
            stored = upstream.stored()
            total = sum(stored.values())
            click.echo(f"upstream: {total} events stored "
                       + ", ".join(f"{d} {n}" for d, n in sorted(stored.items())) + " (uploaded by the sync agents)")
    finally:
        stop.set()
        for g in gates:
            g.app.request_stop("shutdown")
        for g in gates:
            if g.thread is not None and g.thread.is_alive():
                g.thread.join(15)
        if upstream is not None:
            upstream.close()
        for s, h in previous.items():
            signal.signal(s, h)
        if own_tmp:
            shutil.rmtree(base, ignore_errors=True)
    codes_ = [g.exit_code for g in gates]
    if any(c not in (0, None) for c in codes_):
        raise click.exceptions.Exit(1)
    click.echo("checkpoint demo: stopped")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(demo())
