"""A scanner for privacy canaries (issue 11 deliverable 6; credentials.md §7, sync.md §1.4).

A canary is a distinctive value that stands for personal data or a secret (a clear name,
an id number, a phone number, a raw QR text, a credential id, a PIN, a token). The test
feeds canaries through the real gate, agent and server, then hands every file they left
behind (databases with their -wal/-shm files, logs, captured output, saved response bodies)
to ``Scanner``, which looks for each canary:

- as bytes, in every form a program might write it: UTF-8, UTF-16-LE, JSON with ``\\uXXXX``
  escapes, percent-encoded (``quote`` and ``quote_plus``), hex, and base64 (standard and
  URL-safe, at each of the three byte alignments, so a canary inside a longer encoded
  value is found too); a binary canary (a credential id) also as its raw bytes;
- in the file decoded as UTF-8 and case-folded, so ``CANARYNAME`` in an ICAO name field,
  ``%e9%87%91`` or ``\\u91D1`` are found whatever their case;
- for an SQLite database, also in its rows (a copy with its WAL applied, dumped as SQL): a
  value longer than a page is cut across overflow pages and WAL frames, which a byte scan
  of the file alone could miss.

Where a canary may legitimately be is a property of the canary (``allowed``), by the
location class of the file (``LOCATIONS``): the spec lets a plate sit in the event log and
the exports (credentials.md §7.3) and an override note sit in the hash-chained event as
typed (sync.md §1.4), but neither in a log line.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

__all__ = ["LOCATIONS", "Canary", "Leak", "Scanner", "forms", "sqlite_rows"]

# gate_store: a gate's data directory; server_db: the server's database (files or a dump);
# log: log files and captured stdout/stderr; console: bodies the guard console served; display: a
# process's decision lines for an operator (the console's masked view on a terminal);
# api: bodies the server's admin/auditor API and dashboard served; other: anything else.
LOCATIONS = ("gate_store", "server_db", "log", "console", "display", "api", "other")
MIN_FORM_BYTES = 6


@dataclass(frozen=True)
class Canary:
    label: str
    value: str | bytes
    allowed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.allowed) - set(LOCATIONS)
        if unknown:
            raise ValueError(f"{self.label}: unknown locations {sorted(unknown)}")


def _b64_windows(data: bytes) -> dict[str, bytes]:
    """Base64 of ``data`` as it appears inside a longer value, at byte offsets 0, 1 and 2 mod 3."""
    out: dict[str, bytes] = {}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        first = 1 if k else 0                     # the group mixing padding and data differs
        last = (k + len(data)) // 3               # groups made of data only end before this one
        win = enc[4 * first: 4 * last]
        if len(win) >= 8:
            out[f"base64@{k}"] = win
            url = win.replace(b"+", b"-").replace(b"/", b"_")
            if url != win:
                out[f"base64url@{k}"] = url
    return out


def forms(value: str | bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """(byte forms, case-folded text forms) under which ``value`` is looked for."""
    raw: dict[str, bytes] = {}
    text: dict[str, str] = {}
    if isinstance(value, bytes):
        raw["raw"] = value
        raw["hex"] = value.hex().encode()
        raw["HEX"] = value.hex().upper().encode()
        raw.update(_b64_windows(value))
        text["hex"] = value.hex()
    else:
        utf8 = value.encode("utf-8")
        raw["utf-8"] = utf8
        raw["utf-16-le"] = value.encode("utf-16-le")
        raw["json-escaped"] = json.dumps(value, ensure_ascii=True)[1:-1].encode()
        raw["percent"] = quote(value, safe="").encode()
        raw["percent-plus"] = quote_plus(value, safe="").encode()
        raw["hex"] = utf8.hex().encode()
        raw["HEX"] = utf8.hex().upper().encode()
        raw.update(_b64_windows(utf8))
        for name in ("utf-8", "json-escaped", "percent", "percent-plus"):
            text[name] = raw[name].decode("ascii" if name != "utf-8" else "utf-8").casefold()
    # one spelling each: drop byte forms equal to one already listed, and too short to mean anything
    seen: set[bytes] = set()
    uniq: dict[str, bytes] = {}
    for name, b in raw.items():
        if b not in seen and len(b) >= MIN_FORM_BYTES:
            seen.add(b)
            uniq[name] = b
    seen_t: set[str] = set()
    uniq_t: dict[str, str] = {}
    for name, t in text.items():
        if t not in seen_t and len(t) >= MIN_FORM_BYTES:
            seen_t.add(t)
            uniq_t[name] = t
    return uniq, uniq_t


def sqlite_rows(path: Path) -> bytes | None:
    """Every row of the SQLite database at ``path`` (its -wal applied, on a copy) as SQL text; None if
    ``path`` is not an SQLite database."""
    with path.open("rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            return None
    with tempfile.TemporaryDirectory(prefix="canary-db-") as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name("copy.db-wal"))
        conn = sqlite3.connect(copy)
        try:
            return "\n".join(conn.iterdump()).encode("utf-8", "surrogatepass")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path}: cannot read its rows: {exc}") from exc
        finally:
            conn.close()


@dataclass(frozen=True)
class Leak:
    canary: str
    form: str
    path: str
    location: str
    offset: int
    context: str

    def __str__(self) -> str:
        return f"{self.canary} ({self.form}) in {self.location} {self.path} at {self.offset}: …{self.context}…"


@dataclass
class Scanner:
    """Looks for every canary in files and bodies; counts what it read."""

    canaries: list[Canary]
    classify: Callable[[Path], str] = lambda _p: "other"
    files_scanned: int = 0
    bytes_scanned: int = 0
    databases: int = 0
    unreadable: list[str] = field(default_factory=list)
    by_location: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = [c.label for c in self.canaries]
        if len(set(labels)) != len(labels):
            raise ValueError("canary labels must be unique")
        self._forms = [(c, *forms(c.value)) for c in self.canaries]

    def scan_bytes(self, data: bytes, name: str, location: str, *, count: bool = True) -> list[Leak]:
        if location not in LOCATIONS:
            raise ValueError(f"unknown location {location!r}")
        self.bytes_scanned += len(data)
        if count:
            self.files_scanned += 1
            self.by_location[location] = self.by_location.get(location, 0) + 1
        found: list[Leak] = []
        folded: str | None = None
        for canary, raw, text in self._forms:
            if location in canary.allowed:
                continue
            hit = None
            for form, b in raw.items():
                i = data.find(b)
                if i >= 0:
                    ctx = data[max(0, i - 40): i + len(b) + 40].decode("utf-8", "replace")
                    hit = Leak(canary.label, form, name, location, i, ctx)
                    break
            if hit is None and text:
                if folded is None:
                    folded = data.decode("utf-8", "replace").casefold()
                for form, t in text.items():
                    i = folded.find(t)
                    if i >= 0:
                        hit = Leak(canary.label, f"text:{form}", name, location, i,
                                   folded[max(0, i - 40): i + len(t) + 40])
                        break
            if hit is not None:
                found.append(hit)
        return found

    def scan_file(self, path: Path, location: str | None = None, *, name: str | None = None) -> list[Leak]:
        """The file's bytes and, for an SQLite database, its rows (reported as ``<name>::rows``)."""
        name = name or str(path)
        location = location or self.classify(path)
        found = self.scan_bytes(path.read_bytes(), name, location)
        try:
            rows = sqlite_rows(path)
        except ValueError as exc:
            self.unreadable.append(str(exc))
            rows = None
        if rows is not None:
            self.databases += 1
            found += self.scan_bytes(rows, f"{name}::rows", location, count=False)
        return found

    def scan_tree(self, root: Path, *, exclude: Iterable[Path] = ()) -> list[Leak]:
        """Every regular file under ``root`` (hidden ones, -wal/-shm and lock files included)."""
        skip = {Path(p).resolve() for p in exclude}
        found: list[Leak] = []
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if (d / n).resolve() not in skip)
            for n in sorted(filenames):
                p = d / n
                if p.resolve() in skip or p.is_symlink() or not p.is_file():
                    continue
                found += self.scan_file(p, name=str(p.relative_to(root)))
        return found
