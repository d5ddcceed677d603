"""The sync agent: one process beside the gate that uploads, flashes, heartbeats and fetches bundles.

The main loop runs on the monotonic clock and does, each turn, whatever is due
(sync.md §3.4, §3.6, §4.2, §1.7-1.9; bundles.md §4.3):

1. watchdog ping (hardware.md §4.4) — from this loop only;
2. while ``rebase_pending``: the rebase of §1.9 and nothing else on the chain
   (no upload, no flash: the provisional seqs must never leave the gate);
3. flash: urgent copies of new alerts, at most one request a turn (§3.6);
4. upload: one batch a turn while a backlog waits, else a look for new rows every
   second; backoff, halving and probing as the response table of §3.4 says;
5. storage levels and pressure pruning every 60 s, ``reserve.bin`` (§1.8);
6. retention every 10 min, only while the clock is ``synced`` (§1.7);
7. heartbeats every ``heartbeat_s`` and at once at start, after a bundle change,
   a clock state change or a storage level change (§4.2); a failed heartbeat is
   not retried;
8. the bundle poller runs in its own thread (``bundlepoll.py``) and is
   restarted if it ever dies.

Start-up (before the loop): the venue binding gets its event if a crash
delayed it, a pending rebase runs, ``GET …/state`` adopts a lost ack (§3.4 step
1), storage and retention run once, and the first heartbeat goes out.

Only one agent may run per data directory (``agent.lock``, ``flock``): two
would break "at most one request in flight per gate".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edge.clock import TrustedClock
from edge.config import GateConfig, ensure_data_dir
from edge.errors import StoreError
from edge.store.events import EventStore
from edge.store.outbox import Outbox
from edge.store.state import StateDB
from sync.agent.bundlepoll import BundlePoller
from sync.agent.enroll import DEVICE_KEY_FILE, ensure_binding, load_device_key
from sync.agent.fetcher import HttpFetcher
from sync.agent.flash import Flasher
from sync.agent.gate_status import read_gate_status
from sync.agent.heartbeat import build_heartbeat
from sync.agent.notify import Notifier
from sync.agent.storage import StorageKeeper, StorageReport
from sync.agent.timing import Backoff, ServerClock
from sync.agent.upload import Uploader
from sync.client import DeviceClient
from sync.errors import Rejected, SyncError, Unreachable
from sync.identity import Identity, load_identity
from sync.keys import KeyFile

__all__ = ["Agent", "AgentBusy", "NotEnrolled", "default_bundle_update"]

log = logging.getLogger(__name__)

STORAGE_EVERY_S = 60.0
RETENTION_EVERY_S = 600.0
TRIGGERED_HEARTBEAT_MIN_S = 5.0
LOCK_FILE = "agent.lock"


class AgentBusy(SyncError, BlockingIOError):
    """Another agent already runs on this data directory."""


class NotEnrolled(SyncError, FileNotFoundError):
    """No ``identity.json`` yet: run ``checkpoint sync enroll``."""


@dataclass
class _Due:
    upload: float = 0.0
    rebase: float = 0.0
    storage: float = 0.0
    retention: float = 0.0
    heartbeat: float = 0.0


def default_bundle_update(agent: Agent) -> Callable[[HttpFetcher], Any] | None:
    """The gate-side update of ``edge.bundles`` bound to this agent's state, or None when absent.

    Runs its start-up steps (bundles.md §3.6: temp files, a delayed ``bundle_applied`` /
    ``keys_applied`` event, the in-force check) before the first poll.
    """
    try:
        from edge.bundles.updater import BundleUpdater
    except ImportError:
        return None
    updater = BundleUpdater(agent.data_dir, state=agent.state, events=agent.store, clock=agent.clock,
                            device_id=agent.device_id, site=agent.identity.site_id)
    agent.bundle_updater = updater
    try:
        report = updater.startup()
        if report.problems:
            log.error("bundle start-up: %s", "; ".join(report.problems))
    except Exception:  # the poll repairs what start-up could not; never keep the agent down for it
        log.exception("bundle start-up check failed")
    return updater.poll


class Agent:
    """The sync agent of one gate.

    Args:
        cfg: ``gate.toml``.
        identity, device_key: from ``identity_dir`` when not given.
        transport: ``httpx`` transport for every request (tests).
        clock: the trusted clock (default: one over ``state.db``).
        bundle_update: the update run by the bundle poller; ``"auto"`` binds
            ``edge.bundles``; None disables bundle polling.
        notifier: systemd notifications (default: from the environment).
        rng: randomness for backoff and poll jitter (tests seed it).
        host: fixed ``host`` block for heartbeats (tests); default: measured.
        ntp: whether the OS reports NTP sync (default: ``timedatectl``, bundles.md §5.3).

    Raises:
        NotEnrolled: no identity yet.
        AgentBusy: another agent holds the data directory.
        DataDirError, StoreError, KeyFileError, ConfigError: unusable set-up.
    """

    def __init__(
        self,
        cfg: GateConfig,
        *,
        identity: Identity | None = None,
        device_key: KeyFile | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: TrustedClock | None = None,
        bundle_update: Callable[[HttpFetcher], Any] | str | None = "auto",
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
        host: dict[str, Any] | None = None,
        ntp: Callable[[], bool] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.data_dir = ensure_data_dir(cfg.data_dir)
        ident = identity or load_identity(cfg.identity_dir)
        if ident is None:
            raise NotEnrolled(f"not enrolled: no identity.json in {cfg.identity_dir} (run 'checkpoint sync enroll')")
        self.identity = ident
        self.device_id = ident.device_id
        self._lock_fd = self._take_lock()
        self._closers: list[Callable[[], None]] = [self._release_lock]
        try:
            self.key = device_key or load_device_key(cfg.identity_dir)
            if self.key.keyid != ident.keyid:
                raise SyncError(f"{cfg.identity_dir / DEVICE_KEY_FILE} is key {self.key.keyid}, "
                                f"identity.json names {ident.keyid}")
            self._mono = mono
            self.rng = rng or random.Random()
            self.notifier = notifier or Notifier()
            self._host = host
            self.state = StateDB(self.data_dir)
            self._closers.append(self.state.close)
            self.clock = clock or TrustedClock(self.state, ntp=ntp)
            self.store = EventStore(self.data_dir, self.device_id, max_db_mb=cfg.store.max_db_mb,
                                    reserve_mb=cfg.store.reserve_mb, on_full=cfg.store.on_full,
                                    commit_max_events=cfg.store.commit_max_events)
            self._closers.append(self.store.close)
            self.outbox = Outbox(self.data_dir)
            self._closers.append(self.outbox.close)
            self.server_clock = ServerClock(self.state, self.clock)
            self.server_url = cfg.sync.server_url or ident.server_url
            self._keys_gen = -1
            self._server_keys: list[str] = [ident.server_key]
            self.client = self._client(transport)
            self._closers.append(self.client.close)
            self.uploader = Uploader(
                device_id=self.device_id, store=self.store, outbox=self.outbox, client=self.client,
                device_key=self.key, clock=self.clock, batch_max_events=cfg.sync.batch_max_events,
                batch_max_json_bytes=cfg.sync.batch_max_json_bytes,
                backoff=Backoff(cfg.sync.backoff_base_s, cfg.sync.backoff_cap_s, rng=self.rng), mono=mono,
            )
            self.flasher = Flasher(outbox=self.outbox, state=self.state, client=self.client, clock=self.clock,
                                   kinds=list(cfg.sync.flash_kinds), mono=mono)
            self.storage = StorageKeeper(store=self.store, outbox=self.outbox, clock=self.clock,
                                         data_dir=self.data_dir, reserve_mb=cfg.store.reserve_mb,
                                         retain_acked_days=cfg.store.retain_acked_days)
            self.poller: BundlePoller | None = None
            self.bundle_updater: Any = None
            update = default_bundle_update(self) if bundle_update == "auto" else bundle_update
            if callable(update):
                bundle_client = self._client(transport, main_loop=False)
                self._closers.append(bundle_client.close)
                self.poller = BundlePoller(update=update, fetcher=HttpFetcher(bundle_client),
                                           interval_s=cfg.sync.poll_bundle_s, mono=mono)
            elif bundle_update == "auto":
                log.warning("bundle updates unavailable in this build: polling disabled")
        except BaseException:
            self.close()
            raise
        self.due = _Due()
        self._storage_report: StorageReport | None = None
        self._seen_bundle_gen = self.state.generation("bundle")
        self._seen_clock_state: str | None = None
        self._seen_storage_level: str | None = None
        self._last_heartbeat = -1e9
        self.heartbeats_ok = 0
        self.heartbeats_failed = 0
        self.started = False
        self._closed = False

    # -- set-up ----------------------------------------------------------------------------------

    def _client(self, transport: httpx.BaseTransport | None, *, main_loop: bool = True) -> DeviceClient:
        s = self.cfg.sync
        return DeviceClient(
            self.server_url, device_id=self.device_id, device_key=self.key, server_keys=self.server_keys,
            server_time_s=self.server_clock.now_s, on_time=self.server_clock.accept, transport=transport,
            connect_timeout_s=s.connect_timeout_s, request_timeout_s=self._request_budget_s(),
            ca_file=s.ca_file, allow_plain_http=s.allow_plain_http, user_agent=f"checkpoint-agent/{self.device_id}",
            # watchdog pings come from the main loop only (hardware.md §4.4), never the poller thread
            on_request=self.notifier.ping if main_loop else None,
        )

    def _request_budget_s(self) -> float:
        """One call's total budget: ``request_timeout_s``, but within half the watchdog period.

        hardware.md §4.4 wants every HTTP call of the main loop well under the
        watchdog (60 s for the agent's unit), while sync.md App. A allows 60 s per
        request: the smaller wins, so a slow server can never get the agent killed.
        """
        budget = self.cfg.sync.request_timeout_s
        wd = self.notifier.watchdog_s
        if wd is not None:
            budget = min(budget, max(5.0, wd / 2 - 2))
        return budget

    def _take_lock(self) -> int:
        path = Path(self.data_dir) / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise AgentBusy(f"another sync agent is running on {self.data_dir}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def server_keys(self) -> list[str]:
        """Server keys for ``time`` and acks: the keys document's ``server`` role, else enrolment's (§2.5)."""
        gen = self.state.generation("keys")
        if gen != self._keys_gen:
            self._keys_gen = gen
            row = self.state.read_row("keys")
            keys = _server_keys_of(row.get("bytes")) if row else []
            self._server_keys = keys or [self.identity.server_key]
        return self._server_keys

    def close(self) -> None:
        """Stop the poller and close everything; idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.stop()
        for close in reversed(getattr(self, "_closers", [])):
            try:
                close()
            except Exception:
                log.exception("closing agent part failed")

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start-up --------------------------------------------------------------------------------

    @property
    def rebase_pending(self) -> bool:
        row = self.outbox.execute("SELECT rebase_pending FROM meta WHERE id = 1").fetchone()
        return bool(row and row[0])

    def start(self) -> None:
        """Start-up steps (module docstring); safe to call once before ``tick``."""
        if self.started:
            return
        self.started = True
        self.notifier.ready()  # store open, device key loaded (hardware.md §4.1)
        try:
            ensure_binding(self.state, self.store, self.clock, self.identity)
        except (StoreError, SyncError) as exc:
            log.error("venue binding event not written yet: %s", exc)
        if self.rebase_pending:
            self._rebase()
        if not self.rebase_pending:
            self.uploader.start()
        now = self._mono()
        self._storage_check()
        self.due.storage = now + STORAGE_EVERY_S
        self.storage.retention()
        self.due.retention = now + RETENTION_EVERY_S
        self.due.heartbeat = now  # at once at start (§4.2)
        if self.poller is not None:
            self.poller.start()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set."""
        self.start()
        while not stop.is_set():
            try:
                self.tick()
            except (sqlite3.OperationalError, StoreError) as exc:
                # a database held locked past busy_timeout, a full disk: transient; the state
                # on disk is consistent, so the next turn simply tries again
                log.error("agent loop: %s; next turn in 1 s", exc)
                stop.wait(1.0)
                continue
            stop.wait(self.next_wait())
        self.notifier.stopping()

    def next_wait(self) -> float:
        now = self._mono()
        dues = [self.due.storage, self.due.retention, self.due.heartbeat]
        dues.append(self.due.rebase if self.rebase_pending else self.due.upload)
        wait = min(d - now for d in dues)
        wait = min(wait, self.flasher.due_in(), self.notifier.ping_every_s, 1.0)
        return max(0.0, wait)

    def tick(self) -> None:
        """One turn of the main loop: do whatever is due."""
        if not self.started:
            self.start()
        self.notifier.ping()
        self.clock.drain_warnings()  # the gate process writes clock_warning events (bundles.md §5.3)
        now = self._mono()
        if self.rebase_pending:
            if now >= self.due.rebase:
                self._rebase()
        else:
            try:
                if self.outbox.state().state != "revoked":  # every request would be refused
                    self.flasher.step()
            except (StoreError, SyncError) as exc:
                log.error("flash step failed: %s", exc)
            if self._mono() >= self.due.upload:
                try:
                    result = self.uploader.step()
                    self.due.upload = self._mono() + result.delay_s
                except StoreError as exc:
                    log.error("upload step: store error: %s", exc)
                    self.due.upload = self._mono() + self.uploader.backoff.failure()
        now = self._mono()
        if now >= self.due.storage:
            self._storage_check()
            self.due.storage = now + STORAGE_EVERY_S
        if now >= self.due.retention:
            self.storage.retention()
            self.due.retention = now + RETENTION_EVERY_S
        if now >= self.due.heartbeat or self._heartbeat_trigger(now):
            self.heartbeat()
            self.due.heartbeat = self._mono() + self.cfg.sync.heartbeat_s
        if self.poller is not None and not self.poller.alive:
            log.error("bundle poller thread ended; restarting it")
            self.poller.start()
        self._status()

    def _storage_check(self) -> None:
        gate = read_gate_status(self.state, boot=self.clock.boot, boottime_ms=self.clock.read().boottime_ms)
        try:
            self._storage_report = self.storage.check(gate.status.storage_level if gate.status else None)
        except (StoreError, OSError) as exc:
            log.error("storage check failed: %s", exc)

    def _heartbeat_trigger(self, now: float) -> bool:
        """A bundle change, a clock state change or a storage level change sends one at once (§4.2)."""
        if now - self._last_heartbeat < TRIGGERED_HEARTBEAT_MIN_S:
            return False
        gen = self.state.generation("bundle")
        clock_state = self.clock.read().state
        level = self._storage_report.level if self._storage_report else None
        changed = (gen != self._seen_bundle_gen or clock_state != self._seen_clock_state
                   or level != self._seen_storage_level)
        return changed and self._seen_clock_state is not None

    def heartbeat(self) -> bool:
        """Send one heartbeat; a failure is logged and not retried (§4.2)."""
        self._last_heartbeat = self._mono()
        gen = self.state.generation("bundle")
        if self._storage_report is None:
            self._storage_check()
        assert self._storage_report is not None
        doc = build_heartbeat(outbox=self.outbox, state=self.state, clock=self.clock, storage=self._storage_report,
                              host=self._host, bundle=self._bundle_status())
        self._seen_bundle_gen = gen
        self._seen_clock_state = doc["clock"]["state"]
        self._seen_storage_level = self._storage_report.level
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            reply = self.client.signed("POST", self.client.device_path("heartbeat"), json_body=body)
        except (Unreachable, Rejected) as exc:
            self.heartbeats_failed += 1
            log.info("heartbeat failed: %s", exc)
            return False
        self.heartbeats_ok += 1
        b = reply.body or {}
        if not self.rebase_pending and self.outbox.state().state not in ("conflict", "revoked"):
            self.uploader.apply_ack(reply, source="heartbeat")
        if b.get("poll_bundle_now") is True and self.poller is not None:
            log.info("heartbeat: server asks for a bundle poll now")
            self.poller.poll_now()
        return True

    def _bundle_status(self) -> dict[str, Any] | None:
        """The heartbeat's ``bundle`` block from the updater (bundles.md §5.5), when there is one."""
        if self.bundle_updater is None:
            return None
        try:
            st = self.bundle_updater.status()
        except Exception:
            log.exception("bundle status unavailable for the heartbeat")
            return None
        out = {k: st.get(k) for k in ("version", "sha256", "keys_version", "state", "issued_at", "last_check_ok_at")}
        if st.get("mode"):
            out["mode"] = st["mode"]
        if st.get("update_failure"):
            out["update_failure"] = st["update_failure"]
        return out

    def _rebase(self) -> None:
        """§1.9 step 4: move the provisional chain behind the server's head."""
        try:
            reply = self.uploader.fetch_state()
            verified = self.uploader._verified_ack(reply)
            if verified is None:
                raise Unreachable("device state without a verifiable ack")
            base_seq, base_hash = verified
            self.store.rebase(base_seq, base_hash, self.clock.read().at())
        except (Unreachable, Rejected, StoreError) as exc:
            delay = self.uploader.backoff.failure(getattr(exc, "retry_after_s", None))
            self.due.rebase = self._mono() + delay
            log.warning("rebase not done yet (%s); retry in %.1f s", exc, delay)
            return
        self.uploader.backoff.reset()
        self.due.upload = self._mono()
        self.flasher.scanned = self.flasher.through = self.outbox.state().acked_seq
        self.state.kv_set("flash_through", str(self.flasher.through))
        log.warning("rebase done: chain continues after server seq %d", base_seq)

    def _status(self) -> None:
        ob = self.outbox.state()
        backlog = max(0, self.outbox.head_seq() - ob.acked_seq)
        self.notifier.status(f"upload={ob.state} backlog={backlog} acked={ob.acked_seq}"
                             + (" rebase=pending" if self.rebase_pending else ""))

    # -- helpers for tests and the drain command -------------------------------------------------

    def run_until(self, done: Callable[[], bool], *, timeout_s: float = 30.0) -> bool:
        """Tick until ``done()`` or the timeout (monotonic); True when done."""
        self.start()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.tick()
            if done():
                return True
            time.sleep(min(0.05, self.next_wait()))
        return done()

    def drained(self) -> bool:
        ob = self.outbox.state()
        return ob.acked_seq >= self.outbox.head_seq() and not self.rebase_pending


def _server_keys_of(raw: bytes | str | None) -> list[str]:
    """Public keys of the ``server`` role of the stored keys document (bundles.md §1.3)."""
    if raw is None:
        return []
    try:
        from sync.bundle import parse_keys

        keys = parse_keys(raw if isinstance(raw, bytes) else raw.encode())
        return [keys.keys[k] for k in keys.roles["server"].keyids]
    except (ValueError, KeyError, SyncError) as exc:
        log.error("stored keys document unreadable (%s): acks verified with the enrolment key", exc)
        return []
