"""The bundle in force, as the policy reads it (bundles.md §3.5 M12–M14, rules.md §2.2.2).

``SQLiteBundle`` implements ``edge.policy.bundle_view.BundleView`` over one
bundle file (``bundles/<version>.db``, opened ``mode=ro&immutable=1``): rules,
settings, trust and mode are loaded once when it opens; staff, codes, teams,
firms, visitors and revocations are looked up by key on demand, so a large
roster costs no memory.

``BundleHolder`` is how the gate process keeps it current (M14): between two
decisions it compares the ``bundle`` row's generation with the one it read;
only on a change does it re-read the pointer and, when the pointer names
another bundle file, open that file and swap. A decision that already holds a
view keeps using it to the end, so a bundle never changes inside a decision.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import EdgeError
from edge.store.state import StateDB
from sync.bundle import Manifest, parse_manifest

__all__ = ["BundleCorrupt", "BundleHolder", "Pointer", "SQLiteBundle", "read_pointer"]

log = logging.getLogger(__name__)


class BundleCorrupt(EdgeError, OSError):
    """A bundle file (or the pointer naming it) cannot be read: the bundle counts as expired (§3.6)."""


@dataclass(frozen=True)
class Pointer:
    """The ``bundle`` row of ``state.db`` (bundles.md §3.6), decoded."""

    manifest: bytes
    manifest_id: str
    keys_version: int
    version: int
    previous_version: int | None
    gate_site: str | None
    bundle_file: str
    issued_at_ms: int
    server_time_ms: int
    expires_ms: int
    stale_after_s: int
    mode: str
    last_confirmed_ms: int
    signer_revoked: bool
    corrupt: bool
    applied_seq: int | None
    generation: int

    def parsed(self) -> Manifest:
        return parse_manifest(bytes(self.manifest))


def read_pointer(state: StateDB) -> Pointer | None:
    row = state.read_row("bundle")
    if row is None:
        return None
    return Pointer(
        manifest=bytes(row["manifest"]),
        manifest_id=row["manifest_id"],
        keys_version=int(row["keys_version"]),
        version=int(row["version"]),
        previous_version=row["previous_version"],
        gate_site=row["gate_site"],
        bundle_file=row["bundle_file"],
        issued_at_ms=int(row["issued_at_ms"]),
        server_time_ms=int(row["server_time_ms"]),
        expires_ms=int(row["expires_ms"]),
        stale_after_s=int(row["stale_after_s"]),
        mode=row["mode"],
        last_confirmed_ms=int(row["last_confirmed_ms"]),
        signer_revoked=bool(row["signer_revoked"]),
        corrupt=bool(row["corrupt"]),
        applied_seq=row["applied_seq"],
        generation=int(row["generation"]),
    )


class SQLiteBundle:
    """One bundle version, read-only; implements the policy's ``BundleView`` Protocol.

    Raises (from the constructor):
        BundleCorrupt: the file is missing, not a complete bundle file, or not the manifest expected.
    """

    def __init__(self, path: Path | str, *, manifest_id: str | None = None, check: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleCorrupt(f"bundle file {self.path.name} is missing")
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True,
                                         check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise BundleCorrupt(f"bundle file {self.path.name}: {exc}") from exc
        self._lock = threading.Lock()
        try:
            if check:
                res = self._conn.execute("PRAGMA quick_check").fetchone()[0]
                if res != "ok":
                    raise BundleCorrupt(f"bundle file {self.path.name}: {str(res)[:200]}")
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            self.manifest_id: str = meta["manifest_id"]
            if manifest_id is not None and self.manifest_id != manifest_id:
                raise BundleCorrupt(f"bundle file {self.path.name} holds manifest {self.manifest_id[:16]}…, "
                                    f"the pointer names {manifest_id[:16]}…")
            self.version = int(meta["version"])
            self.keys_version = int(meta["keys_version"])
            self.rules_digest: str = meta["rules_digest"]
            self.settings_digest: str = meta["settings_digest"]
            self.issued_at: str = meta["issued_at"]
            self.rules_list: list[dict[str, Any]] = json.loads(meta["rules"])
            self.settings: dict[str, Any] = json.loads(meta["settings"])
            self.trust_part: dict[str, Any] = json.loads(meta["trust"])
            self.mode: dict[str, Any] = json.loads(meta["mode"])
            self.roster_key: bytes | None = bytes.fromhex(meta["roster_key"]) if meta.get("roster_key") else None
            self.counts: dict[str, int] = json.loads(meta.get("counts", "{}"))
        except BundleCorrupt:
            self._conn.close()
            raise
        except (sqlite3.Error, KeyError, ValueError, TypeError) as exc:
            self._conn.close()
            raise BundleCorrupt(f"bundle file {self.path.name} is not a complete bundle file: {exc}") from exc
        self.policy: dict[str, Any] = self.settings.get("policy", {})
        self.rules = _load_ruleset(self.rules_list, self.policy)
        self.trust = _load_trust(self.trust_part)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteBundle(version={self.version}, keys_version={self.keys_version}, file={self.path.name})"

    def _one(self, sql: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return None if row is None else json.loads(row[0])

    # -- the BundleView Protocol (edge.policy.bundle_view) ----------------------------------------

    def person_by_sub(self, sub: str) -> dict[str, Any] | None:
        """The roster ``staff`` entry with this ``sub`` (bundles.md §1.6), or None."""
        return self._one("SELECT body FROM staff WHERE sub = ?", (sub,))

    def person_by_code(self, code_hash: str) -> dict[str, Any] | None:
        """The ``staff`` entry whose ``codes`` hold this ``code_hash`` (credentials.md §6), or None."""
        return self._one("SELECT s.body FROM codes c JOIN staff s ON s.sub = c.sub WHERE c.code_hash = ?",
                         (code_hash,))

    def team(self, firm: str, team: str) -> dict[str, Any] | None:
        """The ``teams`` row of (firm, team), or None (no shift limit)."""
        return self._one("SELECT body FROM teams WHERE firm = ? AND team = ?", (firm, team))

    def firm(self, firm_id: str) -> dict[str, Any] | None:
        return self._one("SELECT body FROM firms WHERE id = ?", (firm_id,))

    def visitors(self, sub: str, host_firm: str) -> list[dict[str, Any]]:
        """Every pre-registration of ``sub`` at ``host_firm``, in part order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM visitors WHERE sub = ? AND host_firm = ? ORDER BY n", (sub, host_firm)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def is_revoked(self, revocation_hash: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM revocations WHERE hash = ?", (revocation_hash,)).fetchone() \
                is not None


def _load_ruleset(rules: list[dict[str, Any]], policy: dict[str, Any]) -> Any:
    try:
        from edge.policy.engine import RuleSet
    except ImportError:  # the policy package is not installed (tools, server-only hosts)
        return None
    return RuleSet.from_parts(rules, policy)


def _load_trust(obj: dict[str, Any]) -> Any:
    try:
        from edge.credentials import load_trust
    except ImportError:
        return None
    return load_trust(obj)


class BundleHolder:
    """The bundle in force for the gate process: cheap change detection and swaps between decisions (M14).

    ``current()`` returns ``(view, pointer)``; call it before each decision and use what it
    returns for the whole decision. ``view`` is None when no bundle is in force or its file
    cannot be opened (then the pointer says why, and freshness is ``none`` or ``expired``).
    """

    def __init__(self, state: StateDB, data_dir: Path | str) -> None:
        self.state = state
        self.bundles_dir = Path(data_dir) / "bundles"
        self._lock = threading.Lock()
        self._gen = -1
        self._pointer: Pointer | None = None
        self._view: SQLiteBundle | None = None
        self.open_error: str | None = None

    def current(self) -> tuple[SQLiteBundle | None, Pointer | None]:
        with self._lock:
            gen = self.state.generation("bundle")
            if gen != self._gen:
                self._reload(gen)
            return self._view, self._pointer

    @property
    def generation(self) -> int:
        return self._gen

    def _reload(self, gen: int) -> None:
        pointer = read_pointer(self.state)
        old = self._view
        if pointer is None:
            self._view, self.open_error = None, None
        elif old is None or old.manifest_id != pointer.manifest_id or old.path.name != pointer.bundle_file:
            try:
                self._view = SQLiteBundle(self.bundles_dir / pointer.bundle_file, manifest_id=pointer.manifest_id)
                self.open_error = None
                log.info("bundle in force version=%d keys_version=%d file=%s", pointer.version,
                         pointer.keys_version, pointer.bundle_file)
            except Exception as exc:  # any failure to open or load is "corrupt": restricted mode, never a crash
                self._view = None
                self.open_error = str(exc)[:200]
                log.error("bundle alert corrupt: bundle file cannot be opened version=%d error=%s", pointer.version,
                          self.open_error)
                if not pointer.corrupt:
                    self._mark_corrupt(pointer)
        self._pointer = pointer
        self._gen = gen
        # The old view is not closed here: a decision may still be using it. Closing it is the
        # garbage collector's job once nothing refers to it (the file was opened immutable, and its
        # unlinked inode stays readable until then).

    def _mark_corrupt(self, pointer: Pointer) -> None:
        # §3.6: the agent's next poll then re-fetches and re-applies the same manifest id. Only
        # this pointer (compare-and-set on its id): a switch in between is left alone.
        try:
            with self.state.transaction() as conn:
                conn.execute("UPDATE bundle SET corrupt = 1, generation = generation + 1 "
                             "WHERE id = 1 AND manifest_id = ? AND corrupt = 0", (pointer.manifest_id,))
        except sqlite3.Error as exc:
            log.error("cannot mark the bundle corrupt: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._view is not None:
                self._view.close()
                self._view = None
