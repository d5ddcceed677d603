"""The gate's bundle update: poll (P), current statement (T), keys (K), manifest (M), start-up (bundles.md §3).

One ``BundleUpdater`` per process that updates (the sync agent each poll,
``checkpoint gate import``, ``checkpoint gate init --keys``). The checks are the
pure functions of ``sync.bundle``; this module adds what touches the gate:

- ``now`` = ``trusted_now()`` is read once per update and used for every check in it (§3).
- A rejection changes no persisted state, is logged, and becomes one
  ``bundle_rejected`` event per distinct document per boot (sync.md §1.5); a
  manifest id rejected for any reason is not fetched again for 1 h (§3.5).
- K6 and M13 are each one ``state.db`` transaction that also moves the clock
  floor: the keys row or the bundle pointer, with its version, changes in the
  same commit as the floor, so a crash leaves the old or the new state whole (§3.6).
- The event that records a switch is a second commit (``events.db`` is another
  file): row first, then the event, whose seq the row then stores. A row still
  without its seq at start-up gets its event then — delayed, never lost, never
  recorded for a switch that did not happen.
- Every update holds ``bundles/update.lock`` (flock), so two processes never
  interleave updates, and start-up never deletes another process's temp files.

Crash points (``sync.crashpoints``, armed by the kill -9 harness) sit between
every two durable steps: ``bundle.k6.before``, ``bundle.k6.committed``,
``bundle.k6.event``, ``bundle.m10.part_written``, ``bundle.m10.part_stored``,
``bundle.m11.validated``, ``bundle.m12.before_commit``, ``bundle.m12.built``,
``bundle.m13.before``, ``bundle.m13.committed``, ``bundle.m13.event``,
``bundle.m15.done``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.bundles.fetcher import DirectoryFetcher, Fetcher
from edge.bundles.files import BundleFiles
from edge.bundles.freshness import freshness, report_state
from edge.bundles.view import BundleCorrupt, Pointer, SQLiteBundle, read_pointer
from edge.clock import ClockReading, ClockSettings, ClockWarning, TrustedClock
from edge.errors import EdgeError, StoreError
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.bundle import (
    DATA_PARTS,
    KEYS_CHAIN_MAX,
    BundleRejected,
    InForce,
    KeysDoc,
    Manifest,
    ParsedParts,
    check_anchor,
    check_current,
    check_keys_update,
    check_manifest,
    check_part_bytes,
    check_part_listing,
    check_threshold,
    keys_expired,
    parse_keys,
    parse_manifest,
    peek_signed,
    validate_parts,
)
from sync.crashpoints import crashpoint
from sync.errors import Unreachable
from sync.signing import new_nonce
from sync.timefmt import format_ms

__all__ = [
    "ALERT_REASONS",
    "AnchorError",
    "BundleBusy",
    "BundleUpdater",
    "PollResult",
    "Rejection",
    "StartupReport",
    "StepResult",
]

log = logging.getLogger(__name__)

# §3.6: these reasons alert at once (then at most once per reason and document per hour).
ALERT_REASONS = frozenset({"rollback", "version_reuse", "fork", "bad_signature", "wrong_role", "unknown_keyid",
                           "time_below_floor", "issued_in_future", "keys_expired"})
REJECT_MEMORY_MS = 3_600_000  # §3.5: a rejected manifest id is not fetched again for 1 h
# Rejections caused by the gate's own lag, not by the manifest: the next poll's K fixes them, so
# waiting an hour would only delay a good update (e.g. a keys chain longer than 32 documents).
_RETRY_AT_ONCE = frozenset({"keys_version_mismatch", "keys_expired", "fetch_failed"})
_REJECTED_KEY = "bundle.rejected"
_PENDING_KEY = "bundle.pending"
_KEYS_EXPIRED_KEY = "bundle.keys_expired_reported"
_REJECTED_KEEP = 200


class BundleBusy(EdgeError, BlockingIOError):
    """Another process holds the update lock (an import or a poll in progress): try again later."""


class AnchorError(EdgeError, ValueError):
    """The gate already holds another keys document; later ones arrive by K (poll or import), never by init."""


@dataclass(frozen=True)
class Rejection:
    """One rejection as the ``bundle_rejected`` event records it (sync.md §1.5)."""

    reason: str
    detail: str  # starts with keys:, current: or manifest:; ≤ 200 characters
    doc: str
    sha256: str
    version: int | None
    keys_version: int | None

    def payload(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "keys_version": self.keys_version,
                "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class StepResult:
    """The outcome of offering one document (a vector step)."""

    outcome: Literal["accept", "noop", "reject", "fetch_failed", "skipped"]
    rejection: Rejection | None = None
    version: int | None = None
    update_needed: bool = False  # T: the statement names another manifest (or the one in force is corrupt)
    target: str | None = None  # T: the manifest id the statement names
    confirmed_ms: int | None = None  # T: its server_time
    detail: str = ""


@dataclass(frozen=True)
class PollResult:
    """What one poll or import did; ``status`` is what the agent logs and counts.

    ``status``: ``up_to_date`` (the statement names the bundle in force), ``applied`` (a new
    manifest switched in), ``no_bundle`` (404: nothing published for this scope), ``rejected``
    (``rejection`` says why; the old bundle stays in force), ``fetch_failed`` (network; retry at
    the next poll), ``busy`` (another process is updating), ``no_keys`` (the gate holds no keys
    document yet).
    """

    status: Literal["up_to_date", "applied", "no_bundle", "rejected", "fetch_failed", "busy", "no_keys"]
    version: int
    keys_version: int | None
    keys_applied: tuple[int, ...] = ()
    applied: int | None = None
    rejection: Rejection | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the poll got an answer it could use (for the §4.3 retry rhythm)."""
        return self.status in ("up_to_date", "applied", "no_bundle")


@dataclass(frozen=True)
class StartupReport:
    removed_tmp: int = 0
    removed_bundle_files: tuple[str, ...] = ()
    events_written: tuple[str, ...] = ()
    corrupt: str | None = None
    signer_revoked: bool = False
    version: int = 0
    locked: bool = True
    problems: tuple[str, ...] = field(default_factory=tuple)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BundleUpdater:
    """The update algorithm of bundles.md §3 for one gate.

    Args:
        data_dir: the gate's data directory (``state.db``, ``events.db``, ``parts/``, ``bundles/``).
        state, events, clock: the shared state database, the event log and the trusted clock.
        device_id: this gate's id (current statements name it, T3).
        site: the gate's site (``identity.json`` ``site_id``); None accepts only fleet-wide manifests.
        fleet: expected fleet, checked against the keys document when given (it is the keys
            document's ``fleet`` otherwise, §2.2.1).

    Entry points: ``poll(fetcher)`` (the agent, every poll), ``import_dir(path)``
    (``gate import``), ``install_anchor(bytes)`` (``gate init --keys``), ``startup()`` (each
    process that updates, at start). ``offer_keys``, ``offer_current`` and ``offer_manifest``
    run one step each (the vector harness drives them directly).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        state: StateDB,
        events: EventStore,
        clock: TrustedClock,
        device_id: str,
        site: str | None,
        fleet: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.state = state
        self.events = events
        self.clock = clock
        self.device_id = device_id
        self.site = site
        self._fleet = fleet
        self.files = BundleFiles(self.data_dir)
        self._lock = threading.RLock()
        self._keys_cache: tuple[int, KeysDoc | None] = (-1, None)

    # -- state ---------------------------------------------------------------------------------------

    def keys(self) -> KeysDoc | None:
        """The keys document in force (D1–D5 re-run on the stored bytes, cached by generation)."""
        gen = self.state.generation("keys")
        if gen != self._keys_cache[0]:
            row = self.state.read_row("keys")
            keys = None
            if row is not None:
                try:
                    keys = parse_keys(bytes(row["bytes"]))
                except BundleRejected as exc:
                    # A damaged keys row verifies nothing; 'gate init --keys' installs a good one again.
                    log.error("bundle alert corrupt: the stored keys document fails D1-D5: %s", exc)
            self._keys_cache = (gen, keys)
        return self._keys_cache[1]

    def pointer(self) -> Pointer | None:
        return read_pointer(self.state)

    @property
    def fleet(self) -> str | None:
        keys = self.keys()
        return keys.fleet if keys else self._fleet

    def _reading(self, reading: ClockReading | None) -> ClockReading:
        return reading if reading is not None else self.clock.read()

    # -- events and rejections -----------------------------------------------------------------------

    def _append(self, kind: str, payload: dict[str, Any], reading: ClockReading | None = None) -> int | None:
        try:
            return self.events.append(kind, payload, self._reading(reading).at()).seq
        except StoreError as exc:
            # The switch already happened; start-up (or the next poll) writes the event (§3.6).
            log.error("bundle event not written kind=%s error=%s", kind, exc)
            return None

    def _rejected_memory(self) -> dict[str, Any]:
        try:
            value = json.loads(self.state.kv_get(_REJECTED_KEY) or "{}")
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}

    def _reject(self, exc: BundleRejected, doc: str, reading: ClockReading, data: bytes | None = None) -> StepResult:
        d = exc.doc or doc
        sha = exc.sha256 or (_sha(data) if data is not None else "0" * 64)
        detail = f"{d}: {exc.detail}"[:200]
        rej = Rejection(exc.reason, detail, d, sha, exc.version, exc.keys_version)
        # sync.md §1.5: one event per distinct document per boot; current statements differ in
        # every poll (the nonce), so theirs are keyed by reason and repeat at most hourly.
        key = f"current:{exc.reason}" if d == "current" else sha
        memory = self._rejected_memory()
        seen = memory.get(key)
        b = reading.boottime_ms
        fresh_seen = isinstance(seen, dict) and seen.get("boot") == self.clock.boot
        if d == "current" and isinstance(seen, dict) and fresh_seen and b - int(seen.get("b", 0)) >= REJECT_MEMORY_MS:
            fresh_seen = False
        if exc.reason in ALERT_REASONS and not fresh_seen:
            log.error("bundle alert reason=%s %s sha256=%s", exc.reason, detail, sha[:16])
        else:
            log.warning("bundle rejected reason=%s %s sha256=%s", exc.reason, detail, sha[:16])
        if not fresh_seen:
            self._append("bundle_rejected", rej.payload(), reading)
            memory[key] = {"boot": self.clock.boot, "b": b, "reason": exc.reason, "detail": detail,
                           "doc": d, "version": exc.version, "keys_version": exc.keys_version}
            if len(memory) > _REJECTED_KEEP:
                for k in sorted(memory, key=lambda k: int(memory[k].get("b", 0)))[: len(memory) - _REJECTED_KEEP]:
                    del memory[k]
            self.state.kv_set(_REJECTED_KEY, json.dumps(memory, sort_keys=True))
        return StepResult("reject", rejection=rej, version=exc.version)

    def _recently_rejected(self, manifest_id: str, reading: ClockReading) -> Rejection | None:
        seen = self._rejected_memory().get(manifest_id)
        if not isinstance(seen, dict) or seen.get("boot") != self.clock.boot:
            return None
        if reading.boottime_ms - int(seen.get("b", 0)) >= REJECT_MEMORY_MS or seen.get("reason") in _RETRY_AT_ONCE:
            return None
        return Rejection(str(seen["reason"]), str(seen.get("detail", "")), "manifest", manifest_id,
                         seen.get("version"), seen.get("keys_version"))

    def _pending(self, target: str | None, reason: str | None) -> None:
        """Track a newer manifest that is known but not applied (screen: after 2 polls, §4.4)."""
        if target is None:
            self.state.kv_set(_PENDING_KEY, "{}")
            return
        try:
            old = json.loads(self.state.kv_get(_PENDING_KEY) or "{}")
        except ValueError:
            old = {}
        polls = int(old.get("polls", 0)) + 1 if old.get("id") == target else 1
        self.state.kv_set(_PENDING_KEY, json.dumps({"id": target, "polls": polls, "reason": reason}))

    def update_failure(self) -> str | None:
        """The reason a known newer manifest has not applied for 2 polls or more, else None (§4.4)."""
        try:
            p = json.loads(self.state.kv_get(_PENDING_KEY) or "{}")
        except ValueError:
            return None
        return str(p.get("reason") or "unknown") if int(p.get("polls", 0)) >= 2 else None

    # -- K: keys -------------------------------------------------------------------------------------

    def install_anchor(self, data: bytes, *, reading: ClockReading | None = None) -> KeysDoc:
        """§2.2.1: the gate's first keys document (``gate init --keys``): D1–D5 and its own root threshold.

        Installing the document already held is a no-op.

        Raises:
            BundleRejected: the document fails D or S, or names another fleet than ``fleet``.
            AnchorError: the gate already holds a different keys document.
        """
        with self._lock, self.files.locked(wait_s=60) as got:
            if not got:
                raise BundleBusy("another process is updating the bundle; try again")
            new = check_anchor(data)
            if self._fleet is not None and new.fleet != self._fleet:
                raise BundleRejected("scope_mismatch", f"fleet {new.fleet}, this gate is in {self._fleet}",
                                     doc="keys", sha256=new.id, version=new.version)
            held = self.keys()
            if held is not None:
                if held.raw == new.raw:
                    return held
                raise AnchorError(f"this gate already holds keys version {held.version} of fleet {held.fleet}; "
                                  "newer keys arrive with a poll or 'checkpoint gate import'")
            r = self._reading(reading)
            if keys_expired(new, r.now_ms):
                log.warning("anchor keys document expired %s; manifests stay refused until newer keys arrive",
                            format_ms(new.expires_ms))
            self._store_keys(new, r)
            return new

    def offer_keys(self, data: bytes, *, reading: ClockReading | None = None) -> StepResult:
        """K2–K8 for one keys document (the gate holds N; this should be N + 1)."""
        r = self._reading(reading)
        with self._lock:
            held = self.keys()
            if held is None:
                return StepResult("skipped", detail="no keys document held (gate init --keys)")
            try:
                new = check_keys_update(held, data, fleet=held.fleet, now_ms=r.now_ms, synced=r.trusted)
            except BundleRejected as exc:
                return self._reject(exc, "keys", r, data)
            if new is None:
                return StepResult("noop", version=held.version)
            self._store_keys(new, r)
            return StepResult("accept", version=new.version)

    def _store_keys(self, new: KeysDoc, r: ClockReading) -> None:
        crashpoint("bundle.k6.before")
        went_down = False
        with self.state.transaction() as conn:  # K6: the keys row and the floor, one commit
            old = conn.execute("SELECT generation FROM keys WHERE id = 1").fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO keys (id, version, fleet, sha256, bytes, expires_ms, applied_seq, generation) "
                "VALUES (1, ?, ?, ?, ?, ?, NULL, ?)",
                (new.version, new.fleet, new.id, new.raw, new.expires_ms, (old[0] if old else 0) + 1),
            )
            if new.clock_floor_reset_ms is not None:
                went_down = self.clock.reset_floor_in(conn, new.clock_floor_reset_ms, new.issued_at_ms)
            else:
                self.clock.raise_floor_in(conn, new.issued_at_ms, "keys")
        crashpoint("bundle.k6.committed")
        log.info("keys applied keys_version=%d sha256=%s", new.version, new.id[:16])
        self._write_keys_event(new)
        if went_down:
            after = self.clock.read()
            w = ClockWarning(r.state, after.state, "floor_reset", r.system_ms, after.floor_ms)
            self._append("clock_warning", w.payload(), after)
            log.warning("clock floor reset by keys version %d to %s", new.version, format_ms(after.floor_ms))
        self._k7(new, r)

    def _write_keys_event(self, keys: KeysDoc) -> None:
        payload = {"keys_version": keys.version, "sha256": keys.id,
                   "clock_floor_reset": keys.doc.signed["clock_floor_reset"]}
        seq = self._find_event("keys_applied", keys.id) or self._append("keys_applied", payload)
        crashpoint("bundle.k6.event")
        if seq is not None:
            with self.state.transaction() as conn:
                conn.execute("UPDATE keys SET applied_seq = ?, generation = generation + 1 "
                             "WHERE id = 1 AND sha256 = ? AND applied_seq IS NULL", (seq, keys.id))

    def _k7(self, keys: KeysDoc, r: ClockReading) -> None:
        """K7: the manifest in force must still verify under the new publisher role, else signer_revoked."""
        p = self.pointer()
        if p is None or p.signer_revoked:
            return
        try:
            check_threshold(parse_manifest(p.manifest).doc, keys, "publisher")
        except BundleRejected as exc:
            self._set_flag(p, "signer_revoked", r, f"keys version {keys.version}: {exc.detail}")

    def _set_flag(self, p: Pointer, flag: Literal["signer_revoked", "corrupt"], r: ClockReading, detail: str) -> None:
        with self.state.transaction() as conn:
            cur = conn.execute(
                f"UPDATE bundle SET {flag} = 1, generation = generation + 1 "
                f"WHERE id = 1 AND manifest_id = ? AND {flag} = 0", (p.manifest_id,))
            changed = cur.rowcount == 1
        if not changed:
            return
        log.error("bundle alert %s version=%d: %s", flag, p.version, detail[:200])
        after = self.pointer()
        report_state(self.state, self.events, r, freshness(after, r), cause=flag, force=True)

    def _run_keys(self, fetcher: Fetcher, r: ClockReading) -> tuple[list[int], Rejection | None]:
        """K1–K9: fetch N + 1, N + 2, … (at most 32 per update), then check the last one's expiry."""
        applied: list[int] = []
        rejection = None
        for _ in range(KEYS_CHAIN_MAX):
            held = self.keys()
            assert held is not None
            try:
                data = fetcher.keys(held.version + 1)
            except Unreachable as exc:
                log.info("keys fetch failed keys_version=%d error=%s", held.version + 1, exc)
                break
            if data is None:
                break
            step = self.offer_keys(data, reading=r)
            if step.outcome != "accept":
                rejection = step.rejection
                break
            applied.append(int(step.version or 0))
        keys = self.keys()
        assert keys is not None
        if keys_expired(keys, r.now_ms):  # K9
            if self.state.kv_get(_KEYS_EXPIRED_KEY) != str(keys.version):
                log.error("bundle alert keys_expired keys_version=%d expired=%s", keys.version,
                          format_ms(keys.expires_ms))
                f = freshness(self.pointer(), r)
                report_state(self.state, self.events, r, f, cause="keys_expired", force=True)
                self.state.kv_set(_KEYS_EXPIRED_KEY, str(keys.version))
        return applied, rejection

    # -- T: current statement -----------------------------------------------------------------------

    def offer_current(
        self, data: bytes, *, nonce: str, rtt_s: float, reading: ClockReading | None = None
    ) -> StepResult:
        """T1–T6 for a current statement answering ``nonce`` after a round trip of ``rtt_s``."""
        r = self._reading(reading)
        with self._lock:
            keys = self.keys()
            if keys is None:
                return StepResult("skipped", detail="no keys document held")
            try:
                cur = check_current(data, keys=keys, fleet=keys.fleet, site=self.site, device_id=self.device_id,
                                    nonce=nonce, floor_ms=r.lo_ms, now_ms=r.now_ms, synced=r.trusted)
            except BundleRejected as exc:
                return self._reject(exc, "current", r, data)
            p = self.pointer()
            names_in_force = p is not None and (cur.keys_version, cur.version, cur.sha256) == (
                p.keys_version, p.version, p.manifest_id)
            with self.state.transaction() as conn:  # T6: floor, anchor and last confirmed in one commit
                self.clock.accept_signed_time_in(conn, cur.server_time_ms, rtt_s=rtt_s, source="current")
                if names_in_force and p is not None and cur.server_time_ms > p.last_confirmed_ms:
                    conn.execute("UPDATE bundle SET last_confirmed_ms = ?, generation = generation + 1 "
                                 "WHERE id = 1 AND manifest_id = ?", (cur.server_time_ms, p.manifest_id))
            needed = not names_in_force or (p is not None and p.corrupt)
            return StepResult("accept", version=cur.version, update_needed=needed, target=cur.sha256,
                              confirmed_ms=cur.server_time_ms)

    # -- M: manifest ---------------------------------------------------------------------------------

    def offer_manifest(
        self,
        data: bytes,
        fetcher: Fetcher,
        *,
        expected_id: str | None = None,
        confirmed_ms: int | None = None,
        reading: ClockReading | None = None,
    ) -> StepResult:
        """M2–M15 for one manifest; parts not in the store come from ``fetcher``.

        Args:
            expected_id: the id it was fetched by (M2); None for a file from an import directory.
            confirmed_ms: ``server_time`` of the statement that named it (M13: last confirmed).
        """
        r = self._reading(reading)
        with self._lock:
            keys = self.keys()
            if keys is None:
                return StepResult("skipped", detail="no keys document held")
            p = self.pointer()
            in_force = None
            if p is not None:
                in_force = InForce(p.keys_version, p.version, p.manifest_id, same_scope=p.gate_site == self.site,
                                   reapply=p.corrupt)
            try:
                chk = check_manifest(data, keys=keys, fleet=keys.fleet, site=self.site, now_ms=r.now_ms,
                                     synced=r.trusted, expected_id=expected_id, in_force=in_force)
            except BundleRejected as exc:
                return self._reject(exc, "manifest", r, data)
            m = chk.manifest
            if chk.noop:
                return StepResult("noop", version=m.version)
            if chk.gap and p is not None:
                log.info("bundle gap: version %d follows %d, in force %d", m.version, (m.previous or (0, ""))[0],
                         p.version)
                report_state(self.state, self.events, r, freshness(p, r), cause="gap", force=True)
            stored: list[str] = []
            reuse, copy_from = self._reusable(m, p)
            try:
                parts = self._fetch_parts(m, fetcher, stored, skip=reuse)  # M10
                parsed = validate_parts(parts, already_valid=reuse)  # M11
            except BundleRejected as exc:
                # A rejection changes nothing: part files fetched for this manifest go again
                # (those the manifest in force uses are never among them).
                keep = {ref.sha256 for ref in parse_manifest(p.manifest).parts.values()} if p else set()
                self.files.remove_parts({s for s in stored if s not in keep})
                exc.about("manifest", sha256=m.id, version=m.version, keys_version=m.keys_version)
                return self._reject(exc, "manifest", r, data)
            except Unreachable as exc:
                log.info("bundle part fetch failed version=%d error=%s", m.version, exc)
                return StepResult("fetch_failed", version=m.version, detail=f"manifest: {exc}"[:200])
            crashpoint("bundle.m11.validated")
            for w in parsed.warnings:
                log.info("bundle warning version=%d %s", m.version, w[:200])
            name = self.files.file_name_for(m.version, m.keys_version, p.bundle_file if p else None)
            meta = dict(manifest_id=m.id, version=m.version, keys_version=m.keys_version,
                        rules_digest=m.parts["rules"].sha256, settings_digest=m.parts["settings"].sha256,
                        issued_at=m.issued_at)
            try:
                self.files.build_bundle_file(name, parsed, copy_from=copy_from, **meta)  # type: ignore[arg-type]  # M12
            except (sqlite3.DatabaseError, KeyError) as exc:
                if copy_from is None:
                    raise
                # The bundle file in force cannot be copied from: read and check every part instead.
                log.warning("bundle file in force unreadable for copying (%s); rebuilding from the parts", exc)
                try:
                    parsed = validate_parts(self._fetch_parts(m, fetcher, stored))
                except (BundleRejected, Unreachable) as again:
                    log.error("bundle rebuild failed version=%d: %s", m.version, again)
                    return StepResult("fetch_failed", version=m.version, detail=f"manifest: {again}"[:200])
                self.files.build_bundle_file(name, parsed, **meta)  # type: ignore[arg-type]
            crashpoint("bundle.m12.built")
            self._switch(m, name, parsed, confirmed_ms, p)  # M13
            self._write_bundle_event(self.pointer())
            self._apply_clock_settings(parsed.objects["settings"])
            self.files.remove_bundle_files_except(name)  # M15
            self.files.remove_parts_except({ref.sha256 for ref in check_part_listing(m)})
            self.files.clear_tmp()
            crashpoint("bundle.m15.done")
            return StepResult("accept", version=m.version)

    def _reusable(self, m: Manifest, p: Pointer | None) -> tuple[frozenset[str], Path | None]:
        """Data parts byte-identical to the bundle in force, and its file to copy their tables from.

        A mode switch or a revocation then costs the changed part only, whatever the roster's size
        (§4.3: applied within one poll interval). Never after corruption: then everything is re-read.
        """
        if p is None or p.corrupt:
            return frozenset(), None
        path = self.files.bundle_path(p.bundle_file)
        try:
            old = parse_manifest(p.manifest)
        except BundleRejected:
            return frozenset(), None
        same = frozenset(
            n for n in DATA_PARTS
            if n in old.parts and n in m.parts and old.parts[n] == m.parts[n] and self.files.has_part(m.parts[n]))
        if not same or not path.is_file():
            return frozenset(), None
        return same, path

    def _fetch_parts(
        self, m: Manifest, fetcher: Fetcher, stored: list[str], *, skip: frozenset[str] = frozenset()
    ) -> dict[str, bytes]:
        parts: dict[str, bytes] = {}
        for ref in check_part_listing(m):
            if ref.name in skip:
                continue
            data = self.files.read_part(ref.sha256, ref.length)
            if data is None:
                raw = fetcher.part(ref.sha256, ref.length + 1)
                try:
                    check_part_bytes(ref, raw)
                except BundleRejected as exc:
                    exc.detail = f"{exc.detail} ({ref.sha256[:16]}…)"
                    raise
                self.files.store_part(ref.sha256, raw)
                stored.append(ref.sha256)
                crashpoint("bundle.m10.part_stored")
                data = raw
            parts[ref.name] = data
        return parts

    def _switch(self, m: Manifest, name: str, parsed: ParsedParts, confirmed_ms: int | None, p: Pointer | None) -> None:
        crashpoint("bundle.m13.before")
        stale_after_s = int(parsed.objects["settings"]["freshness"]["stale_after_s"])
        mode = str(parsed.objects["mode"]["mode"])
        last_confirmed = max(m.server_time_ms, confirmed_ms or 0)
        with self.state.transaction() as conn:  # M13: the pointer, its version and the floor, one commit
            row = conn.execute("SELECT generation, manifest_id FROM bundle WHERE id = 1").fetchone()
            if (row is None) != (p is None) or (row is not None and p is not None and row[0] != p.generation):
                raise BundleBusy("the bundle pointer changed during this update")
            conn.execute(
                "INSERT OR REPLACE INTO bundle (id, manifest, manifest_id, keys_version, version, previous_version, "
                "gate_site, bundle_file, issued_at_ms, server_time_ms, expires_ms, stale_after_s, mode, "
                "last_confirmed_ms, signer_revoked, corrupt, applied_seq, generation) "
                "VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, NULL, ?)",
                (m.raw, m.id, m.keys_version, m.version, p.version if p else None, self.site, name,
                 m.issued_at_ms, m.server_time_ms, m.expires_ms, stale_after_s, mode, last_confirmed,
                 (row[0] if row else 0) + 1),
            )
            self.clock.raise_floor_in(conn, max(m.issued_at_ms, m.server_time_ms), "manifest")
        crashpoint("bundle.m13.committed")
        log.info("bundle applied version=%d keys_version=%d mode=%s sha256=%s", m.version, m.keys_version, mode,
                 m.id[:16])

    def _write_bundle_event(self, p: Pointer | None) -> None:
        if p is None or p.applied_seq is not None:
            return
        payload = {"version": p.version, "sha256": p.manifest_id, "keys_version": p.keys_version,
                   "previous_version": p.previous_version, "issued_at": format_ms(p.issued_at_ms), "mode": p.mode}
        seq = self._find_event("bundle_applied", p.manifest_id, generation_of=p) or self._append("bundle_applied",
                                                                                                payload)
        crashpoint("bundle.m13.event")
        if seq is not None:
            with self.state.transaction() as conn:
                conn.execute("UPDATE bundle SET applied_seq = ?, generation = generation + 1 "
                             "WHERE id = 1 AND manifest_id = ? AND applied_seq IS NULL", (seq, p.manifest_id))

    def _find_event(self, kind: str, sha256: str, generation_of: Pointer | None = None) -> int | None:
        """The seq of an already written switch event for this document (a crash after the append)."""
        try:
            recent = self.events.recent([kind], limit=5)
        except StoreError:
            return None
        if not recent:
            return None
        newest = recent[0]
        try:
            body = json.loads(newest.body)
        except ValueError:
            return None
        # Only the newest event of the kind can be this switch's: an older one with the same id
        # belongs to an earlier application of it (a corrupt bundle re-applied, §3.6).
        if body.get("payload", {}).get("sha256") != sha256:
            return None
        if generation_of is not None:
            p = generation_of
            if body["payload"].get("version") != p.version or body["payload"].get("previous_version") != p.previous_version:
                return None
            if p.previous_version == p.version:  # re-applied after corruption: the old event is not this one
                return None
        return int(newest.seq)

    def _apply_clock_settings(self, settings: dict[str, Any]) -> None:
        c = settings.get("clock", {})
        try:
            self.clock.settings = ClockSettings(int(c["skew_warn_s"]), int(c["max_unconfirmed_lead_s"]))
        except (KeyError, TypeError, ValueError):
            pass

    # -- P: poll -------------------------------------------------------------------------------------

    def _result(self, status: Any, **kw: Any) -> PollResult:
        p = self.pointer()
        keys = self.keys()
        return PollResult(status, p.version if p else 0, keys.version if keys else None, **kw)

    def poll(self, fetcher: Fetcher, *, nonce: str | None = None) -> PollResult:
        """One bundle poll (P1–P2, K, T, M); never raises for a network error or a bad document.

        Args:
            fetcher: the network (the agent's HTTP fetcher).
            nonce: the request nonce (new random one when None); the statement must answer it.
        """
        with self._lock, self.files.locked(wait_s=0) as got:
            if not got:
                return self._result("busy", detail="another process is updating the bundle")
            self._repair_events()
            r = self.clock.read()
            keys = self.keys()
            if keys is None:
                return self._result("no_keys", detail="no keys document yet: gate init --keys or enrolment")
            nonce = nonce or new_nonce()
            t0 = time.monotonic()
            try:
                data = fetcher.current(nonce)  # P1
            except Unreachable as exc:
                return self._result("fetch_failed", detail=f"current: {exc}"[:200])
            rtt_s = time.monotonic() - t0
            if data is None:  # P2: 404 no_bundle
                return self._result("no_bundle")
            applied: tuple[int, ...] = ()
            hint = peek_signed(data)
            hint_kv = hint.get("current", {}).get("keys_version") if isinstance(hint, dict) else None
            if (isinstance(hint_kv, int) and hint_kv > keys.version) or keys_expired(keys, r.now_ms):
                done, _ = self._run_keys(fetcher, r)
                applied = tuple(done)
            step = self.offer_current(data, nonce=nonce, rtt_s=rtt_s, reading=r)
            if step.outcome != "accept":
                return self._result("rejected", keys_applied=applied, rejection=step.rejection, detail=step.detail)
            if not step.update_needed:
                self._pending(None, None)
                return self._result("up_to_date", keys_applied=applied)
            assert step.target is not None
            return self._manifest_by_id(fetcher, step.target, step.confirmed_ms, r, applied)

    def _manifest_by_id(
        self, fetcher: Fetcher, target: str, confirmed_ms: int | None, r: ClockReading, applied: tuple[int, ...]
    ) -> PollResult:
        cached = self._recently_rejected(target, r)
        if cached is not None:
            self._pending(target, cached.reason)
            return self._result("rejected", keys_applied=applied, rejection=cached,
                                detail="rejected within the hour; not fetched again")
        try:
            mdata = fetcher.manifest(target)  # M1
        except Unreachable as exc:
            self._pending(target, "fetch_failed")
            return self._result("fetch_failed", keys_applied=applied, detail=f"manifest: {exc}"[:200])
        step = self.offer_manifest(mdata, fetcher, expected_id=target, confirmed_ms=confirmed_ms, reading=r)
        if step.outcome == "accept":
            self._pending(None, None)
            return self._result("applied", keys_applied=applied, applied=step.version)
        if step.outcome == "noop":
            self._pending(None, None)
            return self._result("up_to_date", keys_applied=applied)
        reason = step.rejection.reason if step.rejection else "fetch_failed"
        self._pending(target, reason)
        status = "fetch_failed" if step.outcome == "fetch_failed" else "rejected"
        return self._result(status, keys_applied=applied, rejection=step.rejection, detail=step.detail)

    # -- offline import ------------------------------------------------------------------------------

    def import_dir(self, path: Path | str, *, wait_s: float = 300.0) -> PollResult:
        """``checkpoint gate import DIR`` (§3.5): K over its keys files, then M for the manifest with the
        highest (keys_version, version) for this gate's scope. No statement: the clock state is unchanged.

        Raises:
            BundleBusy: another process kept the update lock for ``wait_s``.
        """
        with self._lock, self.files.locked(wait_s=wait_s) as got:
            if not got:
                raise BundleBusy("another process is updating the bundle; try again")
            self._repair_events()
            fetcher = DirectoryFetcher(path)
            r = self.clock.read()
            if self.keys() is None:
                return self._result("no_keys", detail="no keys document yet: run 'checkpoint gate init --keys FILE'")
            done, krej = self._run_keys(fetcher, r)
            keys = self.keys()
            assert keys is not None
            best: tuple[tuple[int, int], str | None, bytes] | None = None
            first: tuple[str | None, bytes] | None = None
            for claimed, data in fetcher.manifest_candidates():
                first = first or (claimed, data)
                s = peek_signed(data)
                if not isinstance(s, dict) or s.get("fleet") != keys.fleet or s.get("site") not in (None, self.site):
                    continue
                kv, v = s.get("keys_version"), s.get("version")
                if isinstance(kv, int) and isinstance(v, int) and (best is None or (kv, v) > best[0]):
                    best = ((kv, v), claimed, data)
            if best is None:
                if first is None:
                    status = "rejected" if krej else "no_bundle"
                    return self._result(status, keys_applied=tuple(done), rejection=krej,
                                        detail="no manifest in the directory")
                claimed, data = first  # nothing readable in scope: offer it to get its rejection reason
            else:
                _, claimed, data = best
            step = self.offer_manifest(data, fetcher, expected_id=claimed, reading=r)
            if step.outcome == "accept":
                return self._result("applied", keys_applied=tuple(done), applied=step.version)
            if step.outcome == "noop":
                return self._result("up_to_date", keys_applied=tuple(done))
            status = "fetch_failed" if step.outcome == "fetch_failed" else "rejected"
            return self._result(status, keys_applied=tuple(done), rejection=step.rejection, detail=step.detail)

    # -- start-up (§3.6) -----------------------------------------------------------------------------

    def _repair_events(self) -> list[str]:
        """Start-up step 1 (second half): a switch whose event is missing gets it now."""
        written = []
        row = self.state.read_row("keys")
        if row is not None and row["applied_seq"] is None:
            keys = self.keys()
            if keys is not None:
                self._write_keys_event(keys)
                written.append("keys_applied")
        p = self.pointer()
        if p is not None and p.applied_seq is None:
            self._write_bundle_event(p)
            written.append("bundle_applied")
        return written

    def startup(self, *, wait_s: float = 0.0) -> StartupReport:
        """Start-up steps 1–2 of §3.6 (step 3, the clock, is the caller's).

        1. With the update lock: delete ``parts/tmp/*``, ``bundles/tmp/*`` and bundle files the
           pointer does not name; write a missing ``keys_applied`` / ``bundle_applied`` event.
           Without it (another process is mid-update) this step is skipped.
        2. Re-run D and S on the keys document and the manifest in force, hash every part file of
           the manifest, open its bundle file. A failure marks the bundle ``corrupt`` (restricted
           mode, alert; the next poll re-fetches and re-applies the same id); a manifest whose
           signer the keys no longer list is ``signer_revoked`` (K7 again).
        """
        r = self.clock.read()
        with self._lock, self.files.locked(wait_s=wait_s) as got:
            removed: int = 0
            gone: tuple[str, ...] = ()
            written: list[str] = []
            p = self.pointer()
            if got:
                removed = self.files.clear_tmp()
                gone = tuple(self.files.remove_bundle_files_except(p.bundle_file if p else None))
                written = self._repair_events()
            problems: list[str] = []
            keys: KeysDoc | None = None
            try:
                keys = self.keys()
                if keys is not None:
                    check_threshold(keys.doc, keys, "root")
            except BundleRejected as exc:
                problems.append(f"keys: {exc}")
                keys = None
                log.error("bundle alert corrupt: the stored keys document fails its checks: %s", exc)
            p = self.pointer()
            corrupt: str | None = None
            revoked = False
            if p is not None:
                corrupt, revoked = self._check_in_force(p, keys)
                if corrupt is None and keys is None and self.state.read_row("keys") is not None:
                    corrupt = "the keys document in force fails its checks"
                if revoked and not p.signer_revoked:
                    self._set_flag(p, "signer_revoked", r, "the manifest's signer is not a publisher of the keys in force")
                if corrupt is not None:
                    problems.append(f"manifest: {corrupt}")
                    if not p.corrupt:
                        self._set_flag(p, "corrupt", r, corrupt)
            return StartupReport(removed, gone, tuple(written), corrupt, revoked, p.version if p else 0, got,
                                 tuple(problems))

    def _check_in_force(self, p: Pointer, keys: KeysDoc | None) -> tuple[str | None, bool]:
        try:
            m = parse_manifest(p.manifest)
        except BundleRejected as exc:
            return f"stored manifest: {exc}", False
        if m.id != p.manifest_id:
            return "stored manifest differs from its id", False
        revoked = False
        if keys is not None:
            try:
                check_threshold(m.doc, keys, "publisher")
            except BundleRejected as exc:
                if m.keys_version < keys.version:
                    revoked = True
                else:
                    return f"stored manifest: {exc}", False
        try:
            for ref in check_part_listing(m):
                if self.files.read_part(ref.sha256, ref.length) is None:
                    return f"part {ref.name} ({ref.sha256[:16]}…) is missing or damaged", revoked
        except BundleRejected as exc:
            return f"stored manifest: {exc}", revoked
        try:
            view = SQLiteBundle(self.files.bundle_path(p.bundle_file), manifest_id=p.manifest_id, check=True)
        except BundleCorrupt as exc:
            return str(exc), revoked
        except Exception as exc:  # rules or trust that no longer load: the bundle cannot be used
            return f"bundle file {p.bundle_file}: {exc}"[:200], revoked
        self._apply_clock_settings(view.settings)
        view.close()
        return None, revoked

    def status(self) -> dict[str, Any]:
        """Keys and bundle in force with freshness, for ``gate status``, heartbeats and the screen."""
        r = self.clock.read()
        p = self.pointer()
        keys = self.keys()
        f = freshness(p, r)
        return {
            "keys_version": keys.version if keys else None,
            "fleet": keys.fleet if keys else None,
            "keys_expires": format_ms(keys.expires_ms) if keys else None,
            "version": p.version if p else 0,
            "sha256": p.manifest_id if p else None,
            "mode": p.mode if p else None,
            "state": f.state,
            "cause": f.cause,
            "issued_at": f.issued_at,
            "last_check_ok_at": f.last_confirmed,
            "expires": f.expires,
            "update_failure": self.update_failure(),
        }
