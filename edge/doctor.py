"""``checkpoint doctor``: is this gate ready to work? One row per part, exit 1 on any failure.

A technician runs it after ``checkpoint install`` and whenever a gate misbehaves
(``sudo /opt/checkpoint/venv/bin/checkpoint doctor``). Rows: configuration, the gate process,
camera, thermometer, GPIO pin factory, zbar, data directory, storage, clock, bundle, enrolment,
server. Each is ``ok``, ``warn`` (works, but look at it: not enrolled yet, no bundle yet, clock
not confirmed) or ``fail`` (the gate cannot do its job: exit status 1).

What it never does:

- Write into the data directory: ``state.db`` and ``events.db`` are opened read-only and the
  clock row is read, never initialised (a root-owned file there would lock the gate out).
- Touch a device the running gate holds: when the gate process reports (its ``gate_status``
  in ``state.db``, sync.md §4.2), camera and thermometer come from that report; a serial port
  is opened exclusively and a V4L2 camera by one reader at a time.
- Claim GPIO pins: it loads the pin factory (hardware.md §3.6) but drives nothing. On a
  Raspberry Pi, mock pins are a failure whatever chose them: the relay would never move.

As root it also checks what the units' users can reach (``checkpoint-gate`` with its groups
``checkpoint gpio dialout video``), because root can open everything and the unit cannot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

__all__ = ["Check", "DoctorEnv", "doctor", "run_checks"]

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
MiB = 1 << 20
INSTALLED_CONFIG = Path("/etc/checkpoint/gate.toml")
#: hardware.md §4.1: the gate unit's user and groups.
GATE_USER, SYNC_USER, GROUP = "checkpoint-gate", "checkpoint-sync", "checkpoint"
GATE_GROUPS = (GROUP, "gpio", "dialout", "video")
LABELS = {
    "config": "config 配置",
    "gate": "gate process 闸机进程",
    "camera": "camera 摄像头",
    "thermometer": "thermometer 测温仪",
    "pins": "GPIO pins 引脚",
    "zbar": "zbar decoder 解码库",
    "data_dir": "data directory 数据目录",
    "storage": "storage 存储",
    "clock": "clock 时钟",
    "bundle": "rule bundle 规则包",
    "enrolment": "enrolment 注册",
    "server": "server 服务器",
    "services": "services 服务",
}
STATUS_TEXT = {"ok": "ok 正常", "warn": "warn 注意", "fail": "FAIL 故障"}


@dataclass(frozen=True)
class Check:
    """One row: ``name`` is stable (JSON consumers key on it), ``hint`` says what to do."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)


@dataclass(frozen=True)
class DoctorEnv:
    """Facts of the host, injectable so that tests can play a Raspberry Pi."""

    model_file: Path = Path("/proc/device-tree/model")
    camera_timeout_s: float = 8.0
    thermometer_timeout_s: float = 5.0
    server_timeout_s: float = 5.0
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def pi(self) -> bool:
        from edge.gate import is_raspberry_pi

        return is_raspberry_pi(self.model_file)


# ---------------------------------------------------------------------------------------------
# Who can reach a file: the unit's user, not root


@dataclass(frozen=True)
class Principal:
    name: str
    uid: int
    gids: frozenset[int]


def principal(user: str, groups: tuple[str, ...] = ()) -> Principal | None:
    """The unit's user with the groups the unit gives it, or None when this host has no such user."""
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    gids = {pw.pw_gid}
    for g in groups:
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(g).gr_gid)
    return Principal(user, pw.pw_uid, frozenset(gids))


def group_gid(name: str) -> int | None:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def can(p: Principal, st: os.stat_result, want: str) -> bool:
    """Classic permission bits for ``want`` in "rwx" (ACLs ignored: the units rely on groups)."""
    if p.uid == 0:
        return True
    if st.st_uid == p.uid:
        shift = 6
    elif st.st_gid in p.gids:
        shift = 3
    else:
        shift = 0
    bits = {"r": 4, "w": 2, "x": 1}
    return all((st.st_mode >> shift) & bits[c] for c in want)


def _gid_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _uid_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _describe(path: Path, st: os.stat_result) -> str:
    return f"{path} {stat.filemode(st.st_mode)} {_uid_name(st.st_uid)}:{_gid_name(st.st_gid)}"


def device_access(path: str | Path, group_hint: str) -> Check | None:
    """A failure when ``checkpoint-gate`` cannot open the device node (None: fine or unknown)."""
    p = principal(GATE_USER, GATE_GROUPS)
    if p is None:
        return None
    try:
        real = Path(path).resolve(strict=True)
        st = real.stat()
    except OSError:
        return None
    if can(p, st, "rw"):
        return None
    return Check("", "fail", f"{GATE_USER} cannot open {_describe(real, st)}",
                 f"the unit reaches devices through the groups {' '.join(GATE_GROUPS)}: "
                 f"the node should belong to group {group_hint} with rw for the group (udev rules)")


# ---------------------------------------------------------------------------------------------
# state.db without writing it


def ro_connect(path: Path) -> Any:
    """A read-only connection that leaves the directory as it found it.

    With a writer around (its ``-wal`` exists) the normal read-only connection shares the WAL;
    without one, ``immutable=1``: a plain read-only open would create ``-wal`` and ``-shm``.
    """
    import sqlite3

    from edge.store.schema import connect

    if Path(f"{path}-wal").exists():
        return connect(path, "reader")
    if not path.exists():
        raise FileNotFoundError(path)
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None,
                           check_same_thread=False)


class ReadOnlyState:
    """The ``StateDB`` calls ``TrustedClock``, ``read_pointer`` and ``read_gate_status`` make, read-only.

    ``TrustedClock`` initialises a missing clock row; here nothing may be written, so a missing
    row is reported instead.
    """

    TABLES = ("clock", "keys", "bundle", "binding")

    def __init__(self, data_dir: Path) -> None:
        self._conn = ro_connect(Path(data_dir) / "state.db")

    def read_row(self, table: str) -> dict[str, Any] | None:
        if table not in self.TABLES:
            raise ValueError(f"no such state row: {table}")
        cur = self._conn.execute(f"SELECT * FROM {table} WHERE id = 1")
        row = cur.fetchone()
        return None if row is None else {d[0]: v for d, v in zip(cur.description, row, strict=True)}

    def generation(self, table: str) -> int:
        row = self.read_row(table)
        return int(row["generation"]) if row else 0

    def kv_get(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def update_row(self, table: str, fn: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> Any:
        old = self.read_row(table)
        if fn(dict(old) if old else None) is not None:
            from edge.errors import ClockError

            raise ClockError("no clock row yet (the gate has not started once)")
        return old

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------------------------------------
# The checks


@dataclass
class Facts:
    """What several checks share, read once."""

    cfg: Any
    config_path: Path | None
    env: DoctorEnv
    state: ReadOnlyState | None = None
    state_error: str | None = None
    gate_status: Any = None  # sync.agent.gate_status.GateStatus of the running gate
    identity: Any = None
    identity_error: str | None = None


def _probe_in_thread(fn: Callable[[], Check], timeout_s: float, what: str) -> Check:
    """Run a device probe with a hard time limit: a V4L2 read or stream open can block."""
    box: dict[str, Check] = {}

    def target() -> None:
        try:
            box["r"] = fn()
        except Exception as exc:  # a probe failing in any way is a failed check, reported
            box["r"] = Check("", "fail", f"{type(exc).__name__}: {exc}")

    t = threading.Thread(target=target, name=f"doctor:{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if "r" not in box:
        return Check("", "fail", f"no answer within {timeout_s:g} s")
    return box["r"]


def check_config(f: Facts) -> Check:
    if f.config_path is None:
        return Check("config", "warn", "no gate.toml: built-in defaults (demo camera folder, simulated thermometer)",
                     "give --config FILE, or install: checkpoint install --role gate")
    p = principal(GATE_USER, GATE_GROUPS)
    if p is not None:
        try:
            st = f.config_path.stat()
            parent = f.config_path.parent.stat()
        except OSError:
            pass
        else:
            if not (can(p, st, "r") and can(p, parent, "x")):
                return Check("config", "fail", f"{GATE_USER} cannot read {_describe(f.config_path, st)}",
                             f"chgrp {GROUP} {f.config_path} && chmod 0640 {f.config_path}")
    return Check("config", "ok", str(f.config_path))


def check_gate(f: Facts) -> Check:
    s = f.gate_status
    if s is None:
        return Check("gate", "ok", "not running: the parts below are opened directly")
    return Check("gate", "ok", f"running (pid {s.pid}, {s.software}): camera and thermometer as it reports them")


def check_camera(f: Facts) -> Check:
    from edge.camera import open_source, redact_url

    cam = f.cfg.camera
    on_pi = f.env.pi
    if f.gate_status is not None:
        c = f.gate_status.camera
        fps = f", {c.fps:.1f} fps" if c.fps else ""
        if c.status == "ok":
            return Check("camera", "ok", f"in use by the gate: ok{fps}")
        return Check("camera", "fail", f"the gate reports {c.status}{fps}",
                     "check the cable and [camera] device; ls -l /dev/v4l/by-id/")
    src = open_source(cam)
    label = redact_url(src.label)
    if not src.exists():
        hint = "plug the USB camera in; stable names: ls -l /dev/v4l/by-id/" if cam.source == "device" else \
            "fix [camera] in gate.toml"
        return Check("camera", "fail", f"{label} not found", hint)
    if cam.source == "device":
        denied = device_access(getattr(src, "node", ""), "video")
        if denied is not None:
            return Check("camera", denied.status, denied.detail, denied.hint)

    def probe() -> Check:
        src.open()
        try:
            first: Any = None
            deadline = time.monotonic() + f.env.camera_timeout_s
            while first is None and time.monotonic() < deadline:
                first = src.read()
                if first is None:
                    time.sleep(0.05)
            if first is None:
                return Check("camera", "fail", f"{label} opened but gave no frame")
            shape = f"{first.shape[1]}x{first.shape[0]}"
            extra = ""
            if cam.source in ("device", "stream"):
                n, t0 = 0, time.monotonic()
                while n < 15 and time.monotonic() - t0 < 1.5:
                    if src.read() is not None:
                        n += 1
                rate = n / max(1e-6, time.monotonic() - t0)
                g = src.granted
                extra = f", {g.get('fourcc', '?')} {rate:.1f} fps measured" if g else f", {rate:.1f} fps measured"
            return Check("camera", "ok", f"{label}: {shape}{extra}")
        finally:
            src.close()

    r = _probe_in_thread(probe, f.env.camera_timeout_s + 4, "camera")
    if r.status != "ok":
        return Check("camera", "fail", r.detail if r.detail.startswith(label) else f"{label}: {r.detail}",
                     r.hint or "busy (another program holds it?) or not a capture device; ls -l /dev/v4l/by-id/")
    if on_pi and cam.source == "folder":
        return Check("camera", "fail", f"{r.detail}: a picture folder, not a camera, on a Raspberry Pi",
                     'set [camera] source = "device" and device = "/dev/v4l/by-id/..."')
    return r


def _serial_candidates() -> str:
    found = [str(p) for p in sorted(Path("/dev/serial/by-id").glob("*"))]
    found += [p for p in ("/dev/serial0",) if Path(p).exists()]
    found += [str(p) for p in sorted(Path("/dev").glob("ttyUSB*")) + sorted(Path("/dev").glob("ttyACM*"))]
    return ", ".join(found[:6]) if found else "none"


def check_thermometer(f: Facts) -> Check:
    t = f.cfg.thermometer
    if not t.enabled:
        return Check("thermometer", "ok", "disabled in gate.toml (no temperature at this lane)")
    if f.gate_status is not None:
        s = f.gate_status.thermometer
        age = f", last reading {s.last_reading_age_s:.1f} s ago" if s.last_reading_age_s is not None else ""
        if s.status == "ok":
            return Check("thermometer", "ok", f"in use by the gate: {t.protocol} on {t.port}{age}")
        return Check("thermometer", "fail", f"the gate reports {s.status}{age}: {s.last_error or ''}".rstrip(": "),
                     "docs/THERMOMETER.md: wiring, protocol, baud rate")
    if t.port == "sim":
        if f.env.pi:
            return Check("thermometer", "fail", 'port = "sim": simulated temperatures on a Raspberry Pi',
                         "set [thermometer] port to the device (/dev/serial/by-id/... or /dev/serial0)")
    else:
        if not Path(t.port).exists():
            return Check("thermometer", "fail", f"serial port {t.port} not found 串口不存在",
                         f"plugged in? ports here: {_serial_candidates()}; see docs/THERMOMETER.md")
        denied = device_access(t.port, "dialout")
        if denied is not None:
            return Check("thermometer", denied.status, denied.detail, denied.hint)
    budget = f.env.thermometer_timeout_s + t.effective_settle_s + t.stale_after_s

    def probe() -> Check:
        from firmware_bridge import open_thermometer

        th = open_thermometer(**t.model_dump())
        try:
            deadline = time.monotonic() + budget
            st = th.status()
            while time.monotonic() < deadline:
                st = th.status()
                if st.state == "ok" or (st.state == "fault" and st.last_error):
                    break
                time.sleep(0.1)
            where = "simulator" if t.port == "sim" else t.port
            if st.state == "ok":
                r = th.latest()
                reading = ""
                if r is not None:
                    reading = f": object {r.object_c:.1f} °C" + (
                        f", ambient {r.ambient_c:.1f} °C" if r.ambient_c is not None else "")
                return Check("thermometer", "ok", f"{t.protocol} on {where}{reading}")
            if st.state == "fault":
                return Check("thermometer", "fail", f"{t.protocol} on {where}: {st.last_error}",
                             "docs/THERMOMETER.md: wiring, protocol, baud rate; the gate user needs dialout")
            return Check("thermometer", "fail", f"{t.protocol} on {where}: no reading within {budget:g} s",
                         "wrong protocol or baud rate, TX/RX swapped, or the module is not powered "
                         "(docs/THERMOMETER.md)")
        finally:
            th.close()

    r = _probe_in_thread(probe, budget + 5, "thermometer")
    return Check("thermometer", r.status, r.detail, r.hint)


def check_pins(f: Facts) -> Check:
    from edge.errors import HardwareError
    from edge.gate import make_pin_factory

    g = f.cfg.gpio
    env_name = f.env.env.get("GPIOZERO_PIN_FACTORY", "").strip().lower()
    if g.pin_factory != "auto":
        name, why = g.pin_factory, "[gpio] pin_factory"
    elif env_name:
        name, why = env_name, "$GPIOZERO_PIN_FACTORY"
    elif f.env.pi:
        name, why = "lgpio", "Raspberry Pi"
    else:
        name, why = "mock", "no Raspberry Pi found"
    pins = f"relay {g.relay}, lights {g.red}/{g.amber}/{g.green}, buzzer {g.buzzer}" + (
        f", button {g.button}" if g.button is not None else "") + (f", beam {g.beam}" if g.beam is not None else "")
    if name == "mock":
        if f.env.pi:
            return Check("pins", "fail", f"mock pins on a Raspberry Pi (chosen by {why}): the relay would never move",
                         'set [gpio] pin_factory = "auto" (lgpio) and unset GPIOZERO_PIN_FACTORY')
        status: Status = "warn" if why == "no Raspberry Pi found" else "ok"
        return Check("pins", status, f"mock pins ({why if status == 'warn' else why + ', not a Raspberry Pi'}): {pins}",
                     "" if status == "ok" else "fine for a test bench; a gate needs a Raspberry Pi")
    try:
        factory = make_pin_factory(name)
    except HardwareError as exc:
        return Check("pins", "fail", str(exc), "pip install lgpio in the venv (checkpoint install does it on a Pi)")
    with contextlib.suppress(Exception):
        factory.close()
    chips = sorted(Path("/dev").glob("gpiochip*"))
    for chip in chips:
        denied = device_access(chip, "gpio")
        if denied is not None:
            return Check("pins", "fail", denied.detail, denied.hint)
    return Check("pins", "ok", f"{name} ({why}): {pins} (BCM)")


def check_zbar(f: Facts) -> Check:
    if not f.cfg.decode.pyzbar:
        return Check("zbar", "ok", "disabled in gate.toml: zxing-cpp alone")
    from edge.decode import pyzbar_available

    ok, why = pyzbar_available()
    if ok:
        return Check("zbar", "ok", "pyzbar and libzbar load")
    return Check("zbar", "warn", f"zxing-cpp alone (fewer difficult codes read): {why}",
                 "apt-get install --no-install-recommends libzbar0")


def check_data_dir(f: Facts) -> Check:
    d = Path(f.cfg.data_dir)
    try:
        st = d.stat()
    except FileNotFoundError:
        return Check("data_dir", "fail", f"{d} does not exist",
                     "checkpoint install --role gate (or systemd-tmpfiles --create /etc/tmpfiles.d/checkpoint.conf)")
    except PermissionError:
        return Check("data_dir", "fail", f"{d}: permission denied", "run checkpoint doctor with sudo")
    if not stat.S_ISDIR(st.st_mode):
        return Check("data_dir", "fail", f"{d} is not a directory")
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        free = 0
    reserve = f.cfg.store.reserve_mb * MiB
    space = f"{free / (1 << 30):.1f} GiB free"
    gate, sync = principal(GATE_USER, GATE_GROUPS), principal(SYNC_USER, (GROUP,))
    problems: list[str] = []
    hint = ""
    gid = group_gid(GROUP)
    if gate is not None and sync is not None and gid is not None:
        if st.st_gid != gid or (st.st_mode & 0o2770) != 0o2770:
            problems.append(f"{_describe(d, st)} (want drwxrws--- root:{GROUP})")
            hint = f"chgrp {GROUP} {d} && chmod 2770 {d}"
        bad = []
        for entry in _entries(d):
            try:
                est = entry.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(est.st_mode):
                continue
            mine = entry.is_relative_to(d / "identity")
            need = "r" if mine or entry.parent != d else "rw"
            if stat.S_ISDIR(est.st_mode):
                need += "x"
            # identity/ is the agent's; the gate reads identity.json (pid_key), never device.key.
            who = sync if mine else gate
            others = ((gate,) if entry.name != "device.key" else ()) if mine else (sync,)
            if not can(who, est, need) or any(not can(o, est, need) for o in others):
                bad.append(_describe(entry, est))
        if bad:
            problems.append("not usable by both services: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
            hint = hint or (f"files made by hand as root? chgrp -R {GROUP} {d} && chmod -R g+rwX {d} "
                            f"(keep identity/ as it is: {SYNC_USER}, device.key 0600)")
    elif not os.access(d, os.W_OK | os.X_OK):
        problems.append(f"{d} is not writable by this user")
        hint = "run checkpoint doctor with sudo, or fix data_dir"
    if problems:
        return Check("data_dir", "fail", "; ".join(problems), hint)
    if free < reserve:
        return Check("data_dir", "fail", f"{d}: only {free // MiB} MiB free (reserve {f.cfg.store.reserve_mb} MiB)",
                     "free space on the SD card (journal: journalctl --vacuum-size=100M)")
    if free < 2 * reserve:
        return Check("data_dir", "warn", f"{d}: {space}, below twice the reserve", "free space on the SD card")
    owner = "" if gate is not None else f" (no {GATE_USER} user here: ownership not checked)"
    return Check("data_dir", "ok", f"{d}: {space}{owner}")


def _entries(d: Path, limit: int = 2000) -> Iterator[Path]:
    """The data directory's files and folders (bounded: part stores can hold many files)."""
    n = 0
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            yield Path(root) / name
            n += 1
            if n >= limit:
                return


def check_storage(f: Facts) -> Check:
    path = Path(f.cfg.data_dir) / "events.db"
    budget = f.cfg.store.max_db_mb * MiB
    level = f.gate_status.storage_level if f.gate_status is not None else None
    if level in ("full", "error"):
        return Check("storage", "fail", f"the gate reports storage {level}",
                     "free space; check the SD card (dmesg); sync.md §1.8")
    if not path.exists():
        return Check("storage", "ok", "no event log yet (the gate creates it at its first start)")
    try:
        conn = ro_connect(path)
        try:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            used = (conn.execute("PRAGMA page_count").fetchone()[0]
                    - conn.execute("PRAGMA freelist_count").fetchone()[0]) * page
            head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        finally:
            conn.close()
    except Exception as exc:
        return Check("storage", "fail", f"{path}: {exc}", "checkpoint gate verify-log")
    pct = 100 * used / budget
    text = f"events.db {used / MiB:.1f} MiB of {budget / MiB:.0f} MiB ({pct:.0f} %), head seq {head}"
    if pct >= 80:
        return Check("storage", "warn", text + ": pruning acknowledged events", "is the sync agent uploading?")
    return Check("storage", "ok", text)


def check_clock(f: Facts) -> Check:
    from edge.clock import TrustedClock

    if f.state is None:
        return Check("clock", "warn", f.state_error or "no state.db yet (the gate has not started once)")
    try:
        r = TrustedClock(f.state, ntp=None).read()  # type: ignore[arg-type]
    except Exception as exc:
        return Check("clock", "warn", str(exc))
    ntp = "NTP synced" if r.ntp else "NTP not synced"
    if r.state == "synced":
        return Check("clock", "ok", f"synced, now {r.wall} ({ntp})")
    if r.state == "floor":
        behind = " (system clock behind the floor)" if r.system_ms < r.lo_ms else ""
        return Check("clock", "warn", f"floor: now {r.wall}{behind}, {ntp}, no server time yet",
                     "network and NTP (timedatectl), or enrol so that the server's signed time counts")
    return Check("clock", "warn", f"{r.state}: now {r.wall}, system clock far ahead of the last trusted time",
                 "check the system time (timedatectl); bundles.md §5")


def check_bundle(f: Facts) -> Check:
    from edge.bundles.freshness import freshness
    from edge.bundles.view import BundleCorrupt, SQLiteBundle, read_pointer
    from edge.clock import TrustedClock

    if f.state is None:
        return Check("bundle", "warn", "none yet: every person is referred to the guard",
                     "enrol (the agent fetches it) or checkpoint gate import DIR; docs/ADMIN.md")
    try:
        pointer = read_pointer(f.state)  # type: ignore[arg-type]
        reading = TrustedClock(f.state, ntp=None).read()  # type: ignore[arg-type]
    except Exception as exc:
        return Check("bundle", "warn", str(exc))
    if pointer is None:
        return Check("bundle", "warn", "none yet: every person is referred to the guard",
                     "enrol (the agent fetches it) or checkpoint gate import DIR; docs/ADMIN.md")
    unreadable = False
    try:
        SQLiteBundle(Path(f.cfg.data_dir) / "bundles" / pointer.bundle_file, manifest_id=pointer.manifest_id).close()
    except BundleCorrupt:
        unreadable = True
    fr = freshness(pointer, reading, unreadable=unreadable)
    text = f"version {fr.version} {fr.state}" + (f" ({fr.cause})" if fr.cause else "") + (
        f", confirmed {fr.age_s} s ago, expires {fr.expires}" if fr.age_s is not None else "")
    if fr.state == "fresh":
        return Check("bundle", "ok", text)
    if fr.state == "stale":
        return Check("bundle", "warn", text, "is the sync agent reaching the server? systemctl status checkpoint-sync")
    return Check("bundle", "fail", text + ": restricted mode", "publish or import a new bundle (docs/ADMIN.md)")


def check_enrolment(f: Facts) -> Check:
    if f.identity_error:
        return Check("enrolment", "fail", f.identity_error, "re-enrol (docs/ADMIN.md)")
    ident = f.identity
    idir = Path(f.cfg.identity_dir)
    if ident is None:
        exe = Path(sys.executable).parent / "checkpoint"
        conf = f" --config {f.config_path}" if f.config_path else ""
        return Check("enrolment", "warn", f"not enrolled yet (no {idir}/identity.json) 未注册",
                     f"sudo -u {SYNC_USER} sh -c 'umask 0007 && exec {exe} sync enroll{conf} "
                     "--server https://SERVER --code XXXX-XXXX-XXXX'")
    v = ident.venue
    text = (f"{ident.device_id}, site {ident.site_id}, venue {v.venue_id}/{v.zone}"
            + (f"/{v.door}" if v.door else "") + f", key {ident.keyid}")
    sync = principal(SYNC_USER, (GROUP,))
    key = idir / "device.key"
    try:
        kst = key.stat()
    except FileNotFoundError:
        return Check("enrolment", "fail", f"{text}: {key} is missing", "re-enrol this gate")
    except PermissionError:
        return Check("enrolment", "fail", f"{key}: permission denied", "run checkpoint doctor with sudo")
    if kst.st_mode & 0o077:
        return Check("enrolment", "fail", f"{_describe(key, kst)}: readable by others", f"chmod 0600 {key}")
    if sync is not None and kst.st_uid != sync.uid:
        return Check("enrolment", "fail", f"{_describe(key, kst)}: the agent ({SYNC_USER}) cannot read its key",
                     f"chown {SYNC_USER}:{GROUP} {idir} {idir}/*  (enrol as {SYNC_USER}, not as root)")
    return Check("enrolment", "ok", text)


def check_server(f: Facts) -> Check:
    import httpx

    from sync.client import check_server_url
    from sync.errors import ConfigError

    url = f.cfg.sync.server_url or (f.identity.server_url if f.identity is not None else None)
    if not url:
        return Check("server", "warn", "no server (not enrolled; [sync] server_url unset)",
                     "an air-gapped gate takes bundles by checkpoint gate import")
    try:
        base = check_server_url(url, allow_plain_http=f.cfg.sync.allow_plain_http)
    except ConfigError as exc:
        return Check("server", "fail", str(exc))
    verify: Any = True
    if f.cfg.sync.ca_file:
        import ssl

        try:
            verify = ssl.create_default_context(cafile=str(f.cfg.sync.ca_file))
        except (OSError, ssl.SSLError) as exc:
            return Check("server", "fail", f"[sync] ca_file {f.cfg.sync.ca_file}: {exc}")
    timeout = f.env.server_timeout_s
    t0 = time.monotonic()
    try:
        r = httpx.get(base + "/healthz", timeout=httpx.Timeout(timeout, connect=min(3.0, timeout)), verify=verify,
                      follow_redirects=False)
    except httpx.TimeoutException:
        return Check("server", "fail", f"{base}: no answer within {timeout:g} s", "network, firewall, DNS")
    except httpx.HTTPError as exc:
        tls = "certificate" in str(exc).lower() or "ssl" in str(exc).lower()
        return Check("server", "fail", f"{base}: {type(exc).__name__}: {str(exc)[:160]}",
                     "[sync] ca_file for a private CA" if tls else "network, firewall, DNS; is the server up?")
    ms = (time.monotonic() - t0) * 1000
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code != 200 or not isinstance(body, dict) or body.get("status") != "ok":
        return Check("server", "fail", f"{base}/healthz answered {r.status_code}: not a checkpoint server?")
    return Check("server", "ok", f"{base} answers ({ms:.0f} ms)")


def check_services(f: Facts) -> Check | None:
    """The units' state, where systemd runs (not in a container or a chroot)."""
    import subprocess

    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return None
    units = ("checkpoint-gate.service", "checkpoint-sync.service", "checkpoint-clock-floor.service")
    try:
        en = subprocess.run(["systemctl", "is-enabled", *units], capture_output=True, text=True, timeout=10).stdout
        ac = subprocess.run(["systemctl", "is-active", *units], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("services", "warn", f"systemctl: {exc}")
    rows = [f"{u.removeprefix('checkpoint-').removesuffix('.service')} {e}/{a}"
            for u, e, a in zip(units, en.split(), ac.split(), strict=False)]
    text = ", ".join(rows)
    if any(e != "enabled" for e in en.split()):
        return Check("services", "warn", text, "sudo systemctl enable checkpoint-gate checkpoint-sync "
                                                "checkpoint-clock-floor")
    if "failed" in ac.split():
        return Check("services", "fail", text, "journalctl -u checkpoint-gate -u checkpoint-sync -n 50")
    return Check("services", "ok", text)


# ---------------------------------------------------------------------------------------------


def gather(cfg: Any, config_path: Path | None, env: DoctorEnv) -> Facts:
    from edge.clock import boot_id, boottime_ms
    from sync.agent.gate_status import read_gate_status
    from sync.errors import ConfigError
    from sync.identity import load_identity

    f = Facts(cfg, config_path, env)
    data_dir = Path(cfg.data_dir)
    if (data_dir / "state.db").exists():
        try:
            f.state = ReadOnlyState(data_dir)
        except Exception as exc:
            f.state_error = f"state.db: {exc}"
    if f.state is not None:
        with contextlib.suppress(Exception):
            read = read_gate_status(f.state, boot=boot_id(), boottime_ms=boottime_ms())
            if read.status is not None and _alive(read.status.pid):
                f.gate_status = read.status
    try:
        f.identity = load_identity(cfg.identity_dir)
    except ConfigError as exc:
        f.identity_error = str(exc)
    except PermissionError as exc:
        f.identity_error = f"{exc.filename}: permission denied (run with sudo)"
    return f


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CHECKS: tuple[Callable[[Facts], Check | None], ...] = (
    check_config, check_gate, check_camera, check_thermometer, check_pins, check_zbar, check_data_dir,
    check_storage, check_clock, check_bundle, check_enrolment, check_server, check_services,
)


def run_checks(cfg: Any, config_path: Path | None, env: DoctorEnv | None = None) -> list[Check]:
    """Every check, in table order; a check that raises is itself a failed row."""
    f = gather(cfg, config_path, env or DoctorEnv())
    out: list[Check] = []
    try:
        for fn in CHECKS:
            name = fn.__name__.removeprefix("check_")
            try:
                c = fn(f)
            except Exception as exc:
                log.debug("doctor check %s raised", name, exc_info=True)
                c = Check(name, "fail", f"check failed: {type(exc).__name__}: {exc}")
            if c is not None:
                out.append(c)
    finally:
        if f.state is not None:
            f.state.close()
    return out


def _resolve_config(config_path: str | None) -> Path | None:
    if config_path:
        return Path(config_path)
    env = os.environ.get("CHECKPOINT_CONFIG")
    if env:
        return Path(env)
    return INSTALLED_CONFIG if INSTALLED_CONFIG.exists() else None


def _print_table(checks: list[Check], config: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Piped (a log, a ticket): wide enough that paths and commands stay on one line.
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    console = Console(width=wide)
    table = Table(title=Text(f"checkpoint doctor ({config or 'built-in defaults'})"), title_justify="left",
                  show_lines=False, expand=False)
    table.add_column("check / 项目", no_wrap=True)
    table.add_column("status / 状态", no_wrap=True)
    table.add_column("detail / 详情", overflow="fold")  # a narrow terminal folds a device path, never cuts it
    colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    for c in checks:
        # Text, not markup: details name TOML sections such as [camera].
        detail = Text(c.detail + (f"\n→ {c.hint}" if c.hint and c.status != "ok" else ""))
        table.add_row(Text(c.label), Text(STATUS_TEXT[c.status], style=colour[c.status]), detail)
    console.print(table, highlight=False)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if fails:
        console.print(f"[bold red]{fails} failed, {warns} warning(s) / {fails} 项故障, {warns} 项注意[/]")
    elif warns:
        console.print(f"[yellow]ready with {warns} warning(s) / 可用, {warns} 项注意[/]")
    else:
        console.print("[green]all checks passed / 全部正常[/]")


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """The probes' own log lines (a missing port, a failed open) would repeat the table on stderr."""
    names = ("firmware_bridge", "edge.camera", "edge.decode", "edge.gate")
    saved = {n: logging.getLogger(n).level for n in names}
    if enabled:
        for n in names:
            logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="gate.toml to check (default: $CHECKPOINT_CONFIG, else /etc/checkpoint/gate.toml if present, "
                   "else built-in defaults).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.pass_context
def doctor(ctx: click.Context, config_path: str | None, as_json: bool) -> None:
    """Check camera, thermometer, pins, storage, clock, bundle, enrolment and server; exit 1 on a failure."""
    from edge.config import GateConfig, load_gate_config
    from sync.errors import ConfigError

    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    path = _resolve_config(config_path)
    try:
        cfg = load_gate_config(path) if path is not None else GateConfig()
    except ConfigError as exc:
        checks = [Check("config", "fail", str(exc), "fix the file; the services stop with status 78 until then")]
    else:
        root = ctx.find_root().obj or {}
        with _quiet(not root.get("log_level")):
            checks = run_checks(cfg, path)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        doc = {"ok": not failed, "config": str(path) if path else None,
               "summary": {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")},
               "checks": [{**asdict(c), "label": c.label} for c in checks]}
        click.echo(json.dumps(doc, ensure_ascii=False))
    else:
        _print_table(checks, path)
    if failed:
        raise click.exceptions.Exit(1)
