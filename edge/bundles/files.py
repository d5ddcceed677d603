"""The gate's bundle files on disk: the part store (M10) and the per-version bundle file (M12).

Layout under the data directory (bundles.md §3.5, §3.6):

| path                    | what                                                          |
|-------------------------|---------------------------------------------------------------|
| ``parts/<sha256>``      | part bytes, content-addressed, 0440 once complete             |
| ``parts/tmp/<random>``  | a part being downloaded                                       |
| ``bundles/<v>.db``      | the lookup data of manifest version v (SQLite, DELETE journal)|
| ``bundles/tmp/<random>``| a bundle file being built                                     |
| ``bundles/update.lock`` | held (flock) by whichever process runs an update or start-up  |

Every file reaches its final name by temp file → fsync → rename → fsync of the
directory, so a crash leaves either no file or a whole one; whatever a crash
leaves in ``tmp/`` is deleted at start-up. A bundle file is written once and
never changed: readers open it with ``mode=ro&immutable=1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sync.bundle import ParsedParts, PartRef
from sync.crashpoints import crashpoint

__all__ = [
    "BUNDLE_FILE_FORMAT",
    "BundleFiles",
]

BUNDLE_FILE_FORMAT = 1

_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE staff (sub TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE codes (code_hash TEXT PRIMARY KEY, sub TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE teams (firm TEXT NOT NULL, team TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (firm, team)) WITHOUT ROWID;
CREATE TABLE firms (id TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE visitors (sub TEXT NOT NULL, host_firm TEXT NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL,
                       PRIMARY KEY (sub, host_firm, n)) WITHOUT ROWID;
CREATE TABLE revocations (hash TEXT PRIMARY KEY, until TEXT NOT NULL, reason TEXT NOT NULL) WITHOUT ROWID;
"""


# The tables each data part fills (what can be copied from the bundle in force when unchanged).
_TABLES = {"roster": ("staff", "codes", "teams"), "firms": ("firms",), "preregistrations": ("visitors",),
           "revocations": ("revocations",)}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleFiles:
    """The part store and bundle files of one data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.parts_dir = self.data_dir / "parts"
        self.parts_tmp = self.parts_dir / "tmp"
        self.bundles_dir = self.data_dir / "bundles"
        self.bundles_tmp = self.bundles_dir / "tmp"
        for d in (self.parts_dir, self.parts_tmp, self.bundles_dir, self.bundles_tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.bundles_dir / "update.lock"

    # -- the update lock ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, *, wait_s: float) -> Iterator[bool]:
        """Hold the update lock; yields False when another process keeps it for longer than ``wait_s``."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o660)
        try:
            deadline = time.monotonic() + wait_s
            got = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
            yield got
        finally:
            os.close(fd)  # closing releases the flock

    # -- parts (M10) -------------------------------------------------------------------------------

    def part_path(self, sha256: str) -> Path:
        return self.parts_dir / sha256

    def has_part(self, ref: PartRef) -> bool:
        """The part file exists with the listed length (its hash was checked when stored and at start-up)."""
        try:
            return self.part_path(ref.sha256).stat().st_size == ref.length
        except OSError:
            return False

    def read_part(self, sha256: str, length: int) -> bytes | None:
        """A stored part whose bytes still hash to its name, else None (a damaged file is deleted)."""
        path = self.part_path(sha256)
        try:
            with path.open("rb") as f:
                data = f.read(length + 1)
        except FileNotFoundError:
            return None
        if len(data) == length and hashlib.sha256(data).hexdigest() == sha256:
            return data
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def store_part(self, sha256: str, data: bytes) -> None:
        """M10: ``parts/tmp/<random>``, fsync, rename to ``parts/<sha256>``, fsync the directory."""
        tmp = self.parts_tmp / uuid.uuid4().hex
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                crashpoint("bundle.m10.part_written")
                os.fsync(f.fileno())
            os.chmod(tmp, 0o440)
            os.replace(tmp, self.part_path(sha256))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.parts_dir)

    # -- bundle files (M12) ------------------------------------------------------------------------

    def bundle_path(self, name: str) -> Path:
        return self.bundles_dir / name

    def file_name_for(self, version: int, keys_version: int, in_force: str | None) -> str:
        """``<version>.db``, or ``<version>-k<keys_version>.db`` when the file in force has that name (M12)."""
        for name in (f"{version}.db", f"{version}-k{keys_version}.db", f"{version}-k{keys_version}-r.db"):
            if name != in_force:
                return name
        raise AssertionError("unreachable")

    def build_bundle_file(
        self,
        name: str,
        parsed: ParsedParts,
        *,
        manifest_id: str,
        version: int,
        keys_version: int,
        rules_digest: str,
        settings_digest: str,
        issued_at: str,
        copy_from: Path | None = None,
    ) -> Path:
        """M12: write the bundle file as ``bundles/tmp/<random>``, fsync, 0440, rename, fsync the directory.

        Args:
            copy_from: the bundle file in force; the tables of every data part missing from
                ``parsed.objects`` (unchanged since that bundle, ``validate_parts(already_valid=…)``)
                are copied from it instead of being rebuilt from JSON.

        Raises:
            sqlite3.DatabaseError: ``copy_from`` cannot be read (the caller rebuilds from the parts).
        """
        o = parsed.objects
        tmp = self.bundles_tmp / uuid.uuid4().hex
        conn = sqlite3.connect(f"file:{tmp}", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=FULL")
            old_meta: dict[str, str] = {}
            if copy_from is not None:
                conn.execute("ATTACH DATABASE ? AS old", (f"file:{copy_from}?mode=ro&immutable=1",))
                old_meta = dict(conn.execute("SELECT key, value FROM old.meta").fetchall())
            conn.execute("BEGIN")
            for stmt in filter(str.strip, _DDL.split(";")):
                conn.execute(stmt)
            counts: dict[str, int] = json.loads(old_meta.get("counts", "{}"))
            for part, tables in _TABLES.items():
                if part in o:
                    continue
                if copy_from is None:
                    raise KeyError(f"part {part} neither parsed nor copied")
                for table in tables:
                    conn.execute(f"INSERT INTO main.{table} SELECT * FROM old.{table}")
            if "roster" in o:
                roster = o["roster"]
                conn.executemany("INSERT INTO staff VALUES (?, ?)", ((s["sub"], _dumps(s)) for s in roster["staff"]))
                conn.executemany("INSERT INTO codes VALUES (?, ?)",
                                 ((c, s["sub"]) for s in roster["staff"] for c in s["codes"]))
                conn.executemany("INSERT INTO teams VALUES (?, ?, ?)",
                                 ((t["firm"], t["team"], _dumps(t)) for t in roster["teams"]))
                counts["staff"] = len(roster["staff"])
                roster_key = roster["roster_key"]
            else:
                roster_key = old_meta["roster_key"]
            if "firms" in o:
                conn.executemany("INSERT INTO firms VALUES (?, ?)", ((f["id"], _dumps(f)) for f in o["firms"]["firms"]))
                counts["firms"] = len(o["firms"]["firms"])
            if "preregistrations" in o:
                conn.executemany("INSERT INTO visitors VALUES (?, ?, ?, ?)",
                                 ((v["sub"], v["host_firm"], i, _dumps(v))
                                  for i, v in enumerate(o["preregistrations"]["visitors"])))
                counts["visitors"] = len(o["preregistrations"]["visitors"])
            if "revocations" in o:
                conn.executemany("INSERT OR IGNORE INTO revocations VALUES (?, ?, ?)",
                                 ((r["hash"], r["until"], r["reason"]) for r in o["revocations"]["entries"]))
                counts["revocations"] = len(o["revocations"]["entries"])
            mode = {k: o["mode"][k] for k in ("mode", "since", "reason", "set_by")}
            meta = {
                "format": str(BUNDLE_FILE_FORMAT),
                "manifest_id": manifest_id,
                "version": str(version),
                "keys_version": str(keys_version),
                "rules_digest": rules_digest,
                "settings_digest": settings_digest,
                "issued_at": issued_at,
                "rules": _dumps(o["rules"]["rules"]),
                "settings": _dumps(o["settings"]),
                "trust": _dumps(o["trust"]),
                "mode": _dumps(mode),
                "roster_key": roster_key,
                "counts": _dumps(counts),
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            crashpoint("bundle.m12.before_commit")
            conn.execute("COMMIT")
            if copy_from is not None:
                conn.execute("DETACH DATABASE old")
        except BaseException:
            conn.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o440)
        final = self.bundle_path(name)
        os.replace(tmp, final)
        _fsync_dir(self.bundles_dir)
        return final

    # -- clean-up (M15 and start-up step 1) --------------------------------------------------------

    def clear_tmp(self) -> int:
        """Delete ``parts/tmp/*`` and ``bundles/tmp/*``; returns how many files went."""
        n = 0
        for d in (self.parts_tmp, self.bundles_tmp):
            for p in d.iterdir():
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    p.unlink()
                    n += 1
        return n

    def remove_bundle_files_except(self, keep: str | None) -> list[str]:
        """Delete every bundle file (``*.db`` and SQLite side files) the pointer does not name."""
        gone = []
        for p in self.bundles_dir.iterdir():
            if not p.is_file() or p.name == "update.lock":
                continue
            base = p.name.split(".db", 1)[0] + ".db" if ".db" in p.name else p.name
            if base == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                gone.append(p.name)
        return gone

    def remove_parts(self, names: set[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self.part_path(name).unlink()

    def remove_parts_except(self, keep: set[str]) -> list[str]:
        """Delete part files the manifest in force does not use (M15)."""
        gone = []
        for p in self.parts_dir.iterdir():
            if p.is_file() and p.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone.append(p.name)
        return gone
