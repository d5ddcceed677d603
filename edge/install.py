"""``checkpoint install --role gate|server``: put a gate or a server on a Raspberry Pi (hardware.md §4).

A technician runs it once on a fresh Pi OS (64-bit Bookworm) and again after an upgrade; every
step first looks at what is there and either says "already done" or names each change it makes.
``--dry-run`` prints those changes and touches nothing. The steps, in order:

1. Debian packages: ``python3-venv`` (Debian's venv needs it), and for a gate ``libzbar0`` (the
   second QR decoder, hardware.md §2.3) and ``fonts-noto-cjk`` (Chinese text on screens); for a
   server ``postgresql`` with ``--postgresql``.
2. Accounts: ``systemd/checkpoint.sysusers`` as ``/etc/sysusers.d/checkpoint.conf`` and, for a
   gate, ``checkpoint-devices.conf`` declaring the unit's supplementary groups ``gpio dialout
   video``; ``systemd-sysusers`` applies both and creates a group only when the host lacks it
   (a missing group would fail the unit with status 216/GROUP, hardware.md §4.5).
3. The shared data directory (gate): ``systemd/checkpoint.tmpfiles`` as
   ``/etc/tmpfiles.d/checkpoint.conf``, applied (``/var/lib/checkpoint`` root:checkpoint 2770),
   and the agent's ``identity/`` (checkpoint-sync:checkpoint 0750, what its
   ``StateDirectory=`` makes) so that enrolment can run before the first start.
4. The venv ``/opt/checkpoint/venv`` with this package (and ``lgpio`` on a Pi, §3.6), then
   ``python -m compileall``: ``ProtectSystem=strict`` makes the venv read-only at run time.
5. ``/etc/checkpoint`` (root:checkpoint 0750) with ``gate.toml`` or ``server.toml`` rewritten
   from the examples for the install paths. An existing file is the site's: never overwritten,
   only its mode and group are kept right.
6. The units in ``/etc/systemd/system``, ``daemon-reload``, ``enable`` (gate: gate, sync,
   clock-floor; server: server); running services are restarted after an upgrade.
7. journald: ``SystemMaxUse=200M``; on a Pi (either role) ``RuntimeWatchdogSec=15s`` in ``system.conf.d`` so
   the hardware watchdog covers a hung kernel (§4.1).

``--root DIR`` installs into a directory tree instead of ``/`` (an image being built, tests):
files, modes, owners (names resolved in ``DIR/etc/passwd`` and ``group``) and the enable
symlinks are made there; nothing runs on this host except ``systemd-sysusers --root DIR`` when
DIR is an OS tree. No apt, no systemctl, no venv (a venv is not relocatable: build it on the
target).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click

from edge import __version__
from edge.errors import EdgeError

__all__ = [
    "InstallError",
    "Target",
    "install",
    "plan_steps",
    "render_gate_toml",
    "render_server_toml",
    "set_toml_value",
]

log = logging.getLogger(__name__)

Role = Literal["gate", "server"]

REPO = Path(__file__).resolve().parents[1]
VENV = "/opt/checkpoint/venv"
ETC = "/etc/checkpoint"
DATA_DIR = "/var/lib/checkpoint"
SERVER_DATA_DIR = "/var/lib/checkpoint-server"
UNITS = {
    "gate": ("checkpoint-clock-floor.service", "checkpoint-gate.service", "checkpoint-sync.service"),
    "server": ("checkpoint-server.service",),
}
PACKAGES = {"gate": ("python3-venv", "libzbar0", "fonts-noto-cjk"), "server": ("python3-venv",)}
#: hardware.md §4.1: the gate unit's SupplementaryGroups=.
DEVICE_GROUPS = ("gpio", "dialout", "video")
USERS = {"gate": ("checkpoint-gate", "checkpoint-sync"), "server": ("checkpoint",)}
JOURNALD_DROPIN = "[Journal]\n# checkpoint (hardware.md §4.1): bound the journal on a small SD card.\nSystemMaxUse=200M\n"
WATCHDOG_DROPIN = ("[Manager]\n# checkpoint (hardware.md §4.1): the Pi's hardware watchdog resets a hung kernel.\n"
                   "RuntimeWatchdogSec=15s\n")
DEVICES_SYSUSERS = (
    "# checkpoint (hardware.md §4.1): the groups checkpoint-gate.service names in SupplementaryGroups=.\n"
    "# systemd-sysusers creates a group only when it is missing: Debian has dialout and video,\n"
    "# Raspberry Pi OS has gpio; elsewhere they are created here as system groups.\n"
    + "".join(f"g {g} -\n" for g in DEVICE_GROUPS)
)
PG_URL = "postgresql+psycopg://checkpoint@/checkpoint?host=/run/postgresql"
STAMP = "checkpoint-install.json"
_PI_MODEL = Path("/proc/device-tree/model")


class InstallError(EdgeError, RuntimeError):
    """The installation cannot go on (a command failed, a file is missing, not root)."""


# ---------------------------------------------------------------------------------------------
# The target: "/" or a directory tree


class Accounts:
    """User and group ids on the target: the host's databases, or ``DIR/etc/passwd|group``."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _table(self, name: str) -> dict[str, int]:
        assert self.root is not None
        path = self.root / "etc" / name
        out: dict[str, int] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit():
                out[f[0]] = int(f[2])
        return out

    def uid(self, name: str) -> int | None:
        if name == "root":
            return 0
        if self.root is None:
            import pwd

            try:
                return pwd.getpwnam(name).pw_uid
            except KeyError:
                return None
        return self._table("passwd").get(name)

    def gid(self, name: str) -> int | None:
        if name == "root":
            return 0
        if self.root is None:
            import grp

            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                return None
        return self._table("group").get(name)


@dataclass
class Target:
    """Where and how to install; ``image`` is true for ``--root DIR`` (nothing runs on the host)."""

    root: Path
    role: Role
    dry_run: bool
    pi: bool
    source: Path
    camera: str | int
    thermometer_port: str
    python: str
    postgresql: bool = False
    upgrade: bool = False
    runtime_changed: bool = False
    notes: list[str] = field(default_factory=list)
    unowned: set[str] = field(default_factory=set)  # --root: names whose ownership could not be applied

    @property
    def image(self) -> bool:
        return self.root != Path("/")

    @property
    def accounts(self) -> Accounts:
        return Accounts(self.root if self.image else None)

    def path(self, abs_path: str) -> Path:
        """The on-disk path of an installed path (``/etc/x`` → ``DIR/etc/x`` with ``--root``)."""
        return self.root / abs_path.lstrip("/")

    @property
    def systemd_running(self) -> bool:
        return not self.image and Path("/run/systemd/system").is_dir()

    @property
    def may_chown(self) -> bool:
        return os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Actions: one change each, described before it is made


def _mode(m: int) -> str:
    return f"{m:04o}"


def _owner_ok(t: Target, path: Path, owner: str, group: str) -> bool:
    """Whether ``path`` has the owner and group.

    Names the target does not know yet: on a host the accounts step creates them first (so not
    right yet); in a ``--root`` tree they come with the tree's accounts, and without root the
    owner cannot be changed at all, so both count as right there.
    """
    uid, gid = t.accounts.uid(owner), t.accounts.gid(group)
    if uid is None or gid is None:
        return t.image
    if t.image and not t.may_chown:
        return True
    st = path.lstat()
    return st.st_uid == uid and st.st_gid == gid


def _attrs_ok(t: Target, path: Path, mode: int, owner: str, group: str) -> bool:
    st = path.lstat()
    return (st.st_mode & 0o7777) == mode and _owner_ok(t, path, owner, group)


def _apply_attrs(t: Target, path: Path, mode: int, owner: str, group: str) -> None:
    uid, gid = t.accounts.uid(owner), t.accounts.gid(group)
    if uid is None or gid is None:
        if not t.image:
            raise InstallError(f"{owner}:{group} does not exist on this host (the accounts step failed?)")
        t.unowned.update(n for n, i in ((owner, uid), (group, gid)) if i is None)
    elif t.may_chown:
        os.chown(path, uid, gid, follow_symlinks=False)
    elif t.image:
        t.unowned.update((owner, group))
    # After chown: chown may clear the set-group-id bit.
    os.chmod(path, mode)


class Action:
    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, t: Target) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class WriteFile(Action):
    path: Path
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    why: str = ""

    def describe(self) -> str:
        return f"write {self.path} ({_mode(self.mode)} {self.owner}:{self.group}){' ' + self.why if self.why else ''}"

    def apply(self, t: Target) -> None:
        from sync.keys import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, self.data, mode=self.mode)
        _apply_attrs(t, self.path, self.mode, self.owner, self.group)


@dataclass(frozen=True)
class MakeDir(Action):
    path: Path
    mode: int
    owner: str = "root"
    group: str = "root"

    def describe(self) -> str:
        verb = "set" if self.path.is_dir() else "create directory"
        return f"{verb} {self.path} ({_mode(self.mode)} {self.owner}:{self.group})"

    def apply(self, t: Target) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _apply_attrs(t, self.path, self.mode, self.owner, self.group)


@dataclass(frozen=True)
class SetAttrs(Action):
    path: Path
    mode: int
    owner: str
    group: str

    def describe(self) -> str:
        return f"set {self.path} to {_mode(self.mode)} {self.owner}:{self.group}"

    def apply(self, t: Target) -> None:
        _apply_attrs(t, self.path, self.mode, self.owner, self.group)


@dataclass(frozen=True)
class Symlink(Action):
    path: Path
    target: str

    def describe(self) -> str:
        return f"link {self.path} -> {self.target}"

    def apply(self, t: Target) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        os.symlink(self.target, self.path)


@dataclass(frozen=True)
class Run(Action):
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    then: Callable[[Target], None] | None = None

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env)
        return "run: " + (env + " " if env else "") + " ".join(_quote(a) for a in self.argv)

    def apply(self, t: Target) -> None:
        env = dict(os.environ)
        env.update(dict(self.env))
        sys.stdout.flush()
        try:
            rc = subprocess.run(self.argv, env=env, check=False).returncode
        except OSError as exc:
            raise InstallError(f"cannot run {self.argv[0]}: {exc.strerror}") from exc
        if rc != 0:
            raise InstallError(f"{' '.join(self.argv[:3])}... failed with exit status {rc}")
        if self.then is not None:
            self.then(t)


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


# ---------------------------------------------------------------------------------------------
# Steps


@dataclass
class Step:
    title: str
    actions: list[Action] = field(default_factory=list)
    done: str = ""
    skipped: str = ""


def _file_action(t: Target, path: str, data: bytes, mode: int = 0o644, owner: str = "root",
                 group: str = "root") -> Action | None:
    p = t.path(path)
    if p.is_file() and not p.is_symlink() and p.read_bytes() == data:
        return None if _attrs_ok(t, p, mode, owner, group) else SetAttrs(p, mode, owner, group)
    return WriteFile(p, data, mode, owner, group, "(replaces the old one)" if p.exists() else "")


def _dir_action(t: Target, path: str, mode: int, owner: str = "root", group: str = "root") -> Action | None:
    p = t.path(path)
    if p.is_dir() and not p.is_symlink() and _attrs_ok(t, p, mode, owner, group):
        return None
    return MakeDir(p, mode, owner, group)


def _source_file(t: Target, *parts: str) -> bytes:
    p = t.source.joinpath(*parts)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InstallError(f"{p} not found: run the installer from a checkpoint source checkout "
                           "(or give it with --source DIR)") from None


def step_packages(t: Target) -> Step:
    pkgs = list(PACKAGES[t.role])
    if t.role == "server" and t.postgresql:
        pkgs.append("postgresql")
    s = Step("packages (apt)")
    if t.image:
        s.skipped = "--root: install them in the image: apt-get install " + " ".join(pkgs)
        return s
    if shutil.which("dpkg-query") is None:
        raise InstallError("dpkg-query not found: this installer is for Debian / Raspberry Pi OS")
    missing = [p for p in pkgs if not _dpkg_installed(p)]
    if not missing:
        s.done = " ".join(pkgs)
        return s
    env = (("DEBIAN_FRONTEND", "noninteractive"),)
    s.actions = [Run(("apt-get", "update"), env),
                 Run(("apt-get", "install", "-y", "--no-install-recommends", *missing), env)]
    return s


def _dpkg_installed(pkg: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
    return r.returncode == 0 and r.stdout.strip().endswith(" installed")


def step_accounts(t: Target) -> Step:
    s = Step("users and groups")
    files = [("/etc/sysusers.d/checkpoint.conf", _source_file(t, "systemd", "checkpoint.sysusers"))]
    if t.role == "gate":
        files.append(("/etc/sysusers.d/checkpoint-devices.conf", DEVICES_SYSUSERS.encode()))
    for path, data in files:
        a = _file_action(t, path, data)
        if a is not None:
            s.actions.append(a)
    acc = t.accounts
    groups = ["checkpoint", *(DEVICE_GROUPS if t.role == "gate" else ())]
    missing = [f"group {g}" for g in groups if acc.gid(g) is None]
    missing += [f"user {u}" for u in USERS[t.role] if acc.uid(u) is None]
    paths = [str(t.path(p)) for p, _ in files]
    if t.image:
        if not (t.root / "etc" / "passwd").is_file():
            s.skipped = (f"{t.root} has no etc/passwd (not an OS tree): on the target run "
                         "systemd-sysusers once to create " + ", ".join(missing))
        elif missing:
            if shutil.which("systemd-sysusers") is None:
                raise InstallError("systemd-sysusers not found (apt-get install systemd)")
            s.actions.append(Run(("systemd-sysusers", f"--root={t.root}", *paths)))
    elif missing:
        s.actions.append(Run(("systemd-sysusers", *paths)))
    if not missing:
        s.done = ", ".join(groups + list(USERS[t.role])) + " exist"
    elif not s.skipped:
        s.done = "to create: " + ", ".join(missing)
    return s


def step_data_dir(t: Target) -> Step:
    s = Step("data directory " + DATA_DIR)
    a = _file_action(t, "/etc/tmpfiles.d/checkpoint.conf", _source_file(t, "systemd", "checkpoint.tmpfiles"))
    if a is not None:
        s.actions.append(a)
    d = t.path(DATA_DIR)
    ok = d.is_dir() and _attrs_ok(t, d, 0o2770, "root", "checkpoint")
    if not ok:
        if t.image:
            # What the tmpfiles line says, made in the tree (systemd-tmpfiles --root would
            # need root and the tree's accounts; this is the same d line).
            s.actions.append(MakeDir(d, 0o2770, "root", "checkpoint"))
        else:
            s.actions.append(Run(("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/checkpoint.conf")))
    # The agent's StateDirectory= (hardware.md §4.1), made now so that `checkpoint sync enroll`
    # works before the first start; systemd keeps it as it is because the owner matches.
    a = _dir_action(t, DATA_DIR + "/identity", 0o750, "checkpoint-sync", "checkpoint")
    if a is not None:
        s.actions.append(a)
    if not s.actions:
        s.done = f"{DATA_DIR} 2770 root:checkpoint, identity/ 0750 checkpoint-sync:checkpoint"
    return s


def source_digest(source: Path) -> str:
    """A digest of what ``pip install SOURCE`` installs, to tell an upgrade from a re-run."""
    h = hashlib.sha256()
    files = [source / "pyproject.toml"]
    for pkg in ("edge", "sync", "firmware_bridge"):
        files += [p for p in (source / pkg).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".pyc", ".pyo")]
    for p in sorted(files):
        rel = p.relative_to(source).as_posix()
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _venv_query(python: Path, code: str) -> str | None:
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def stale_pyc(venv: Path) -> int:
    """Modules of the venv without an up-to-date ``.pyc`` (compileall's own rule: source mtime)."""
    stale = 0
    for lib in venv.glob("lib/python3.*"):
        tag = "cpython-" + lib.name.removeprefix("python").replace(".", "")
        for py in lib.rglob("*.py"):
            pyc = py.parent / "__pycache__" / f"{py.stem}.{tag}.pyc"
            try:
                if pyc.stat().st_mtime < py.stat().st_mtime:
                    stale += 1
            except FileNotFoundError:
                stale += 1
    return stale


def step_venv(t: Target) -> Step:
    s = Step("venv " + VENV)
    if t.image:
        s.skipped = "--root: a venv is not relocatable; run `checkpoint install` on the target to build it"
        return s
    venv = t.path(VENV)
    py = venv / "bin" / "python"
    a = _dir_action(t, "/opt/checkpoint", 0o755)
    if a is not None:
        s.actions.append(a)
    exists = _venv_query(py, "import sys; print(sys.version_info >= (3, 11))") == "True"
    if not exists:
        # --clear: a venv whose interpreter no longer runs (Python upgraded under it) is rebuilt.
        s.actions.append(Run((t.python, "-m", "venv", "--clear", str(venv))))
    digest = source_digest(t.source)
    stamp_path = venv / STAMP
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    installed = _venv_query(py, "import importlib.metadata as m; print(m.version('checkpoint'))") if exists else None
    gpio = t.pi and t.role == "gate"  # hardware.md §3.6: lgpio is the factory on a Pi 4/5
    want_lgpio = gpio and (not exists or _venv_query(py, "import lgpio") is None)
    current = installed == __version__ and stamp.get("digest") == digest
    if t.upgrade or not current or want_lgpio:
        extra = ("lgpio",) if gpio else ()
        stamp_doc = {"version": __version__, "source": str(t.source), "digest": digest}

        def write_stamp(t: Target, path: Path = stamp_path, doc: dict[str, str] = stamp_doc) -> None:
            path.write_text(json.dumps(doc) + "\n", encoding="utf-8")

        s.actions.append(Run((str(py), "-m", "pip", "install", "--disable-pip-version-check",
                              "--root-user-action=ignore", str(t.source), *extra), then=write_stamp))
        t.runtime_changed = True
    if s.actions or stale_pyc(venv):
        s.actions.append(Run((str(py), "-m", "compileall", "-q", "-j", "0", str(venv / "lib"))))
    if not s.actions:
        s.done = f"checkpoint {installed} from {stamp.get('source')} (source {digest}), compiled"
    return s


def detect_camera() -> str | int:
    """The first USB camera by its stable path (hardware.md §2.1), else index 0."""
    found = sorted(Path("/dev/v4l/by-id").glob("*-video-index0"))
    return str(found[0]) if found else 0


def detect_thermometer_port() -> str:
    """A USB serial adapter by id (hardware.md §1.2), else the Pi's GPIO UART ``/dev/serial0``."""
    found = sorted(Path("/dev/serial/by-id").glob("*"))
    return str(found[0]) if found else "/dev/serial0"


_KEY_LINE = r"^(?P<indent>[ \t]*)(?P<hash>#[ \t]*)?{key}(?P<eq>[ \t]*=[ \t]*)" \
            r"(?P<value>\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|[^\s#]+)(?P<rest>.*)$"


def toml_literal(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string


def set_toml_value(text: str, section: str, key: str, value: str | int | bool) -> str:
    """Set ``key`` in ``[section]`` ("" = top level) keeping the line's comment and the layout.

    A commented-out ``# key = ...`` line in the section is uncommented; the examples show every key,
    so a key not found means the example changed and is an error, never a silent miss.
    """
    lines = text.splitlines(keepends=True)
    pattern = re.compile(_KEY_LINE.format(key=re.escape(key)))
    current = ""
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1)
            continue
        if current != section:
            continue
        m = pattern.match(line.rstrip("\n"))
        if m:
            end = "\n" if line.endswith("\n") else ""
            new, rest = toml_literal(value), m["rest"]
            if rest.strip().startswith("#"):  # keep the comment's column where the value allows
                column = len(m["value"]) + len(rest) - len(rest.lstrip())
                rest = " " * max(1, column - len(new)) + rest.lstrip()
            lines[i] = f"{m['indent']}{key}{m['eq']}{new}{rest}{end}"
            return "".join(lines)
    raise InstallError(f"example config has no key {key} in [{section or 'top level'}]")


def _header(role: Role, example: str) -> str:
    return (f"# Installed by `checkpoint install --role {role}` (checkpoint {__version__}) from config/{example}.\n"
            "# This file is the site's: the installer never overwrites it. Edit it, then run\n"
            "# `sudo /opt/checkpoint/venv/bin/checkpoint doctor` and restart the services.\n#\n")


def render_gate_toml(example: str, *, camera: str | int, thermometer_port: str) -> str:
    """``gate.toml`` for an installed gate: absolute state path, a real camera and serial port."""
    text = set_toml_value(example, "gate", "data_dir", DATA_DIR)
    text = set_toml_value(text, "camera", "source", "device")
    text = set_toml_value(text, "camera", "device", camera)
    text = set_toml_value(text, "thermometer", "port", thermometer_port)
    return _header("gate", "gate.example.toml") + text


def render_server_toml(example: str, *, postgresql: bool) -> str:
    text = set_toml_value(example, "", "data_dir", SERVER_DATA_DIR)
    if postgresql:
        text = set_toml_value(text, "", "database", PG_URL)
    return _header("server", "server.example.toml") + text


def _validate_config(role: Role, path: Path) -> str | None:
    """Why the installed config would not load (the unit would stop with 78), or None."""
    from sync.errors import ConfigError

    try:
        if role == "gate":
            from edge.config import load_gate_config

            load_gate_config(path)
        else:
            from sync.configfile import load_model
            from sync.server.config import ServerConfig

            load_model(ServerConfig, path)
    except ConfigError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None


def step_config(t: Target) -> Step:
    name = "gate.toml" if t.role == "gate" else "server.toml"
    s = Step(f"configuration {ETC}/{name}")
    a = _dir_action(t, ETC, 0o750, "root", "checkpoint")
    if a is not None:
        s.actions.append(a)
    p = t.path(f"{ETC}/{name}")
    if p.exists():
        if not _attrs_ok(t, p, 0o640, "root", "checkpoint"):
            s.actions.append(SetAttrs(p, 0o640, "root", "checkpoint"))
        problem = _validate_config(t.role, p)
        if problem:
            t.notes.append(f"{p} kept as it is but does not load: {problem}")
        s.done = "present, kept as the site edited it" + (" (DOES NOT LOAD, see the notes)" if problem else "")
        return s
    example = _source_file(t, "config", name.replace(".toml", ".example.toml")).decode("utf-8")
    if t.role == "gate":
        text = render_gate_toml(example, camera=t.camera, thermometer_port=t.thermometer_port)
    else:
        text = render_server_toml(example, postgresql=t.postgresql)
    tomllib.loads(text)  # a rewrite that breaks TOML is a bug here, not the site's problem
    s.actions.append(WriteFile(p, text.encode("utf-8"), 0o640, "root", "checkpoint",
                               f"(camera {t.camera}, thermometer {t.thermometer_port})" if t.role == "gate" else ""))
    return s


def wanted_by(unit_text: str) -> list[str]:
    """The ``WantedBy=`` targets of a unit's ``[Install]`` section."""
    out: list[str] = []
    section = ""
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Install" and line.startswith("WantedBy="):
            out += line.removeprefix("WantedBy=").split()
    return out


def step_units(t: Target) -> Step:
    units = UNITS[t.role]
    s = Step("systemd units " + " ".join(u.removesuffix(".service") for u in units))
    changed = False
    links: list[Action] = []
    for unit in units:
        data = _source_file(t, "systemd", unit)
        a = _file_action(t, f"/etc/systemd/system/{unit}", data)
        if a is not None:
            s.actions.append(a)
            changed = changed or isinstance(a, WriteFile)
        for target in wanted_by(data.decode("utf-8")):
            link = t.path(f"/etc/systemd/system/{target}.wants/{unit}")
            if not (link.is_symlink() and os.readlink(link) == f"/etc/systemd/system/{unit}"):
                links.append(Symlink(link, f"/etc/systemd/system/{unit}"))
    if changed:
        t.runtime_changed = True
        if t.systemd_running:
            s.actions.append(Run(("systemctl", "daemon-reload")))
    if links:
        if t.image:
            s.actions += links
        else:
            names = dict.fromkeys(a.path.name for a in links if isinstance(a, Symlink))
            s.actions.append(Run(("systemctl", "enable", *names)))
    if not s.actions:
        s.done = "installed and enabled"
    return s


def step_journald(t: Target) -> Step:
    s = Step("journald: SystemMaxUse=200M")
    a = _file_action(t, "/etc/systemd/journald.conf.d/checkpoint.conf", JOURNALD_DROPIN.encode())
    if a is None:
        s.done = "drop-in present"
        return s
    s.actions.append(a)
    if t.systemd_running:
        s.actions.append(Run(("systemctl", "restart", "systemd-journald")))
    return s


def step_watchdog(t: Target) -> Step:
    s = Step("hardware watchdog: RuntimeWatchdogSec=15s")
    if not t.pi:
        s.skipped = "not a Raspberry Pi (--pi to install it anyway)"
        return s
    a = _file_action(t, "/etc/systemd/system.conf.d/checkpoint-watchdog.conf", WATCHDOG_DROPIN.encode())
    if a is None:
        s.done = "drop-in present"
        return s
    s.actions.append(a)
    if t.systemd_running:
        # Manager settings are read at start and re-execution, not on daemon-reload.
        s.actions.append(Run(("systemctl", "daemon-reexec")))
    return s


def step_postgresql(t: Target) -> Step:
    s = Step("PostgreSQL role and database checkpoint")
    if t.image:
        s.skipped = "--root: create them on the target"
        return s
    as_pg = ("runuser", "-u", "postgres", "--")
    q = subprocess.run([*as_pg, "psql", "-tAc", "SELECT 1 FROM pg_roles WHERE rolname = 'checkpoint'"],
                       capture_output=True, text=True, check=False) if shutil.which("psql") else None
    if q is None or q.stdout.strip() != "1":
        s.actions.append(Run((*as_pg, "createuser", "checkpoint")))
    d = subprocess.run([*as_pg, "psql", "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'checkpoint'"],
                       capture_output=True, text=True, check=False) if shutil.which("psql") else None
    if d is None or d.stdout.strip() != "1":
        s.actions.append(Run((*as_pg, "createdb", "-O", "checkpoint", "checkpoint")))
    if not s.actions:
        s.done = "present (peer authentication over /run/postgresql)"
    return s


def step_restart(t: Target) -> Step:
    s = Step("running services")
    if not t.systemd_running:
        s.skipped = "systemd is not running here" if not t.image else "--root"
        return s
    if not t.runtime_changed:
        s.done = "nothing changed that they use"
        return s
    # The oneshot clock-floor is left alone: it runs at boot, before the gate.
    s.actions.append(Run(("systemctl", "try-restart", *[u for u in UNITS[t.role] if "clock-floor" not in u])))
    return s


def plan_steps(t: Target) -> list[Callable[[Target], Step]]:
    steps: list[Callable[[Target], Step]] = [step_packages, step_accounts]
    if t.role == "gate":
        steps.append(step_data_dir)
    steps += [step_venv, step_config]
    if t.role == "server" and t.postgresql:
        steps.append(step_postgresql)
    steps += [step_units, step_journald, step_watchdog, step_restart]
    return steps


def run_install(t: Target, echo: Callable[[str], None]) -> int:
    """Run (or, dry, print) every step; returns the number of changes made or planned."""
    n = 0
    for i, fn in enumerate(plan_steps(t), 1):
        step = fn(t)
        head = f"{i}. {step.title}"
        if not step.actions:
            if step.skipped:
                echo(f"{head}: skipped ({step.skipped})")
            else:
                echo(f"{head}: already done" + (f" ({step.done})" if step.done else ""))
            continue
        echo(f"{head}:" + (f" {step.done}" if step.done else ""))
        for a in step.actions:
            if t.dry_run:
                echo(f"   would {a.describe()}")
            else:
                echo(f"   {a.describe()}")
                a.apply(t)
            n += 1
        if step.skipped:
            echo(f"   not done here: {step.skipped}")
    return n


def _next_steps(t: Target) -> Iterable[str]:
    if t.role == "server":
        yield "next / 下一步:"
        yield f"  1. edit {ETC}/server.toml (listen, behind_proxy, database) / 编辑服务器配置"
        yield "  2. sudo systemctl start checkpoint-server / 启动服务"
        yield "  3. docs/ADMIN.md: keys, sites, devices and the first bundle / 密钥、场所、设备与第一个规则包"
        return
    ck = f"{VENV}/bin/checkpoint"
    yield "next / 下一步:"
    yield f"  1. edit {ETC}/gate.toml: [camera] device, [thermometer] port and protocol / 编辑摄像头与测温仪设置"
    yield ("  2. enrol / 注册: sudo -u checkpoint-sync sh -c 'umask 0007 && exec "
           f"{ck} sync enroll --config {ETC}/gate.toml --server https://SERVER --code XXXX-XXXX-XXXX'")
    yield f"  3. check / 检查: sudo {ck} doctor"
    yield "  4. sudo systemctl start checkpoint-clock-floor checkpoint-gate checkpoint-sync (or reboot / 或重启)"


@click.command()
@click.option("--role", type=click.Choice(["gate", "server"]), required=True, help="What this machine is.")
@click.option("--dry-run", is_flag=True, help="Print every action and change nothing.")
@click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Install into this directory tree instead of / (image building, tests): no apt, "
                   "no systemctl, no accounts on this host.")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The checkpoint checkout to install (default: the one this command runs from).")
@click.option("--pi/--no-pi", "pi", default=None,
              help="Treat the target as a Raspberry Pi (lgpio, hardware watchdog); default: detected.")
@click.option("--camera", default=None,
              help="[camera] device for a new gate.toml: /dev/v4l/by-id/... or an index "
                   "(default: the first USB camera found, else 0).")
@click.option("--thermometer-port", default=None,
              help="[thermometer] port for a new gate.toml (default: the first /dev/serial/by-id/... "
                   "found, else /dev/serial0).")
@click.option("--postgresql", is_flag=True, help="Server: install PostgreSQL and use it (peer authentication).")
@click.option("--upgrade", is_flag=True, help="Reinstall the package into the venv even if it looks current.")
@click.option("--python", "python", default=None, help="Interpreter for the venv (default: /usr/bin/python3).")
def install(role: Role, dry_run: bool, root: Path | None, source: Path | None, pi: bool | None,
            camera: str | None, thermometer_port: str | None, postgresql: bool, upgrade: bool,
            python: str | None) -> None:
    """Install a gate or a server: packages, users, venv, config, systemd units (idempotent)."""
    from edge.gate import is_raspberry_pi

    src = (source or REPO).resolve()
    if not (src / "systemd").is_dir() or not (src / "config").is_dir():
        raise InstallError(f"{src} is not a checkpoint checkout (no systemd/ and config/): give one with --source")
    target = (root or Path("/")).resolve()
    image = target != Path("/")
    if image and not dry_run:
        target.mkdir(parents=True, exist_ok=True)
    if not image and not dry_run and os.geteuid() != 0:
        raise InstallError("installing into / needs root: sudo checkpoint install ... (or --dry-run, or --root DIR)")

    if postgresql and role != "server":
        raise click.UsageError("--postgresql is for --role server")
    is_pi = pi if pi is not None else (not image and is_raspberry_pi(_PI_MODEL))
    cam: str | int = camera if camera is not None else (0 if image else detect_camera())
    if isinstance(cam, str) and cam.isdigit():
        cam = int(cam)
    port = thermometer_port or ("/dev/serial0" if image else detect_thermometer_port())
    py = python or ("/usr/bin/python3" if Path("/usr/bin/python3").exists() else getattr(sys, "_base_executable",
                                                                                           sys.executable))
    t = Target(root=target, role=role, dry_run=dry_run, pi=is_pi, source=src, camera=cam, thermometer_port=port,
               python=py, postgresql=postgresql, upgrade=upgrade)
    mode = "dry run: nothing is changed" if dry_run else "installing"
    click.echo(f"checkpoint install --role {role} into {target} ({mode}; "
               f"{'Raspberry Pi' if is_pi else 'not a Raspberry Pi'}; source {src})")
    # The venv and the directories must be readable by the service users whatever root's umask
    # is (a hardened 077 would leave them unreadable); files get explicit modes anyway.
    umask = os.umask(0o022)
    try:
        n = run_install(t, click.echo)
    finally:
        os.umask(umask)
    if t.unowned:
        why = "not root" if not t.may_chown else f"not in {target}/etc/passwd or group yet"
        t.notes.append(f"ownership by {', '.join(sorted(t.unowned))} not applied ({why}): run systemd-sysusers "
                       "and systemd-tmpfiles --create on the target, or this command again as root on an OS tree")
    for note in t.notes:
        click.echo(f"note: {note}")
    if dry_run:
        click.echo(f"{n} action(s) would be taken" if n else "nothing to do: already installed")
        return
    click.echo(f"done: {n} change(s)" if n else "nothing to do: already installed")
    if not image:
        for line in _next_steps(t):
            click.echo(line)
