"""Bundles and trusted time together (bundles.md §3, §5): clocks at 1970 and 2099, a clock stepped
during an update, a wall clock set back a year after a restart or reboot, and the clock row shared
by the agent's updater and the gate process."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.bundles import BundleHolder, BundleUpdater, freshness
from edge.clock import ClockSettings, TrustedClock
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.timefmt import from_ms, parse_ms
from tests.bundles.helpers import DAY_MS, DEVICE, H_MS, SITE, T0, Fleet, make_key

YEAR_MS = 365 * DAY_MS
BOOT_A = "aaaaaaaa-0000-0000-0000-00000000000a"
BOOT_B = "bbbbbbbb-0000-0000-0000-00000000000b"


@dataclass
class Host:
    """The machine under the gate: wall clock, CLOCK_BOOTTIME, boot id and NTP flag, all steerable."""

    wall: int = T0
    boottime: int = 60_000
    boot: str = BOOT_A
    ntp: bool = True

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.boottime += ms

    def reboot(self, *, wall: int, ntp: bool) -> None:
        self.boot, self.boottime, self.wall, self.ntp = BOOT_B, 5_000, wall, ntp


class Process:
    """One gate-side process (the agent or the gate) over the shared data directory."""

    def __init__(self, data_dir: Path, host: Host) -> None:
        self.state = StateDB(data_dir)
        self.events = EventStore(data_dir, DEVICE, max_db_mb=64)
        self.clock = TrustedClock(self.state, settings=ClockSettings(120, 86_400), wall_ms=lambda: host.wall,
                                  boottime_ms=lambda: host.boottime, boot=host.boot, ntp=lambda: host.ntp,
                                  release_floor_ms=parse_ms("2026-11-01T00:00:00.000Z"))
        self.updater = BundleUpdater(data_dir, state=self.state, events=self.events, clock=self.clock,
                                     device_id=DEVICE, site=SITE)

    def close(self) -> None:
        self.events.close()
        self.state.close()


@pytest.fixture
def issuer() -> Any:
    return make_key("issuer-1", "issuer")


@pytest.fixture
def fleet(issuer: Any) -> Fleet:
    f = Fleet()
    f.sources["trust"] = {"part": "trust", "schema": 1, "keys": [
        {"public_key": base64.b64encode(issuer.spki_der()).decode(), "kinds": ["health"]}]}
    return f


def _poll(proc: Process, fleet: Fleet, server_ms: int, manifest: Any = None) -> Any:
    f = fleet.fetcher(server_time_ms=server_ms)
    if manifest is not None:
        f.current_doc = lambda nonce: fleet.statement(nonce, server_time_ms=server_ms, manifest=manifest)
    return proc.updater.poll(f)


@pytest.mark.parametrize("restart", ["process", "reboot_no_ntp", "reboot_ntp"])
def test_wall_clock_set_back_a_year_still_refuses_expired_bundle_and_credential(
    tmp_path: Path, fleet: Fleet, issuer: Any, restart: str
) -> None:
    from edge.credentials import mint, verify

    host = Host()
    agent = Process(tmp_path, host)
    agent.updater.install_anchor(fleet.keys_docs[1])
    m1 = fleet.publish(server_time_ms=T0 - H_MS, validity_s=7 * 86_400)
    assert _poll(agent, fleet, T0).status == "applied"
    text = mint("health", {"iss": "HA", "sub": "ab" * 16, "name": "张*三", "role": "staff", "colour": "green"},
                issuer, now_ms=T0, expires_in_s=3 * 86_400)
    # Ten days pass with NTP; the server is frozen on m1 (a stolen server key could do that) but the
    # signed statements still carry the time, so the gate knows m1 and the credential have expired.
    host.advance(10 * DAY_MS)
    assert _poll(agent, fleet, T0 + 10 * DAY_MS, manifest=m1).status == "up_to_date"
    agent.clock.checkpoint()
    agent.close()

    if restart == "process":
        host.wall -= YEAR_MS
        host.ntp = False
    else:
        host.reboot(wall=T0 + 10 * DAY_MS - YEAR_MS, ntp=restart == "reboot_ntp")
    gate = Process(tmp_path, host)
    try:
        r = gate.clock.read()
        assert r.now_ms >= T0 + 10 * DAY_MS, f"trusted_now never goes below the floor ({r.state}, case {r.case})"
        view, pointer = BundleHolder(gate.state, tmp_path).current()
        assert freshness(pointer, r).state == "expired", "restricted mode: the bundle in force has expired"
        # a newer manifest that also expired is refused (M8), whatever the wall clock says
        m2 = fleet.publish(server_time_ms=T0, validity_s=2 * 86_400)
        res = gate.updater.offer_manifest(fleet.manifests[m2.id], fleet.fetcher(server_time_ms=T0), reading=r)
        assert res.rejection.reason == "expired"
        assert verify(text, view.trust, from_ms(r.now_ms)).status == "expired"
        wall = from_ms(host.wall)
        assert verify(text, view.trust, wall).status != "expired", "the wall clock alone would have let it pass"
    finally:
        gate.close()


@pytest.mark.parametrize(("wall", "ntp", "state_before"), [
    (0, False, "floor"),  # 1970: the RTC-less Pi before NTP
    (parse_ms("2099-01-01T00:00:00.000Z"), True, "untrusted"),  # NTP far ahead (spoofed)
    (parse_ms("2099-01-01T00:00:00.000Z"), False, "floor"),
])
def test_clock_at_1970_or_2099_still_applies_signed_bundles_and_keeps_the_floor_honest(
    tmp_path: Path, fleet: Fleet, wall: int, ntp: bool, state_before: str
) -> None:
    host = Host(wall=wall, ntp=ntp)
    proc = Process(tmp_path, host)
    try:
        proc.updater.install_anchor(fleet.keys_docs[1])
        assert proc.clock.read().state == state_before
        fleet.publish(server_time_ms=T0 - H_MS)
        res = _poll(proc, fleet, T0)
        assert res.status == "applied"
        row = proc.state.read_row("clock")
        assert row["floor_ms"] == T0, "the floor comes from signed times, never from the system clock"
        r = proc.clock.read()
        assert r.state == "synced" and abs(r.now_ms - T0) < 60_000, "the statement's anchor (rtt <= 10 s)"
        for ev in proc.events.read(1):
            wall_ev = ev.event()["at"]["wall"]
            assert parse_ms("2026-11-01T00:00:00.000Z") <= parse_ms(wall_ev) < parse_ms("2027-01-01T00:00:00.000Z")
    finally:
        proc.close()


def test_clock_stepped_during_an_update_does_not_change_its_checks(tmp_path: Path, fleet: Fleet) -> None:
    host = Host()
    proc = Process(tmp_path, host)
    try:
        proc.updater.install_anchor(fleet.keys_docs[1])
        fleet.publish(server_time_ms=T0 - H_MS)
        f = fleet.fetcher(server_time_ms=T0)
        real_part = f.part

        def stepping_part(sha256: str, max_bytes: int) -> bytes:
            host.wall = parse_ms("2099-01-01T00:00:00.000Z")  # someone sets the date mid-download
            return real_part(sha256, max_bytes)

        f.part = stepping_part  # type: ignore[method-assign]
        assert proc.updater.poll(f).status == "applied", "now is taken once per update (§3)"
        assert proc.state.read_row("clock")["floor_ms"] == T0
        r = proc.clock.read()
        assert r.now_ms < parse_ms("2027-01-01T00:00:00.000Z")
    finally:
        proc.close()


def test_agent_and_gate_share_the_clock_row_restart_keeps_synced_reboot_does_not(tmp_path: Path, fleet: Fleet) -> None:
    host = Host(ntp=False)
    agent = Process(tmp_path, host)
    gate = Process(tmp_path, host)
    try:
        agent.updater.install_anchor(fleet.keys_docs[1])
        fleet.publish(server_time_ms=T0 - H_MS)
        assert gate.clock.read().state == "floor"
        assert _poll(agent, fleet, T0).status == "applied"
        assert gate.clock.read().state == "synced", "the gate process sees the agent's anchor (same row)"
        holder = BundleHolder(gate.state, tmp_path)
        view, p = holder.current()
        assert view is not None and freshness(p, gate.clock.read()).state == "fresh"
        gate.close()
        gate = Process(tmp_path, host)  # a process restart in the same boot
        assert gate.clock.read().state == "synced"
        gate.close()
        host.reboot(wall=T0 + H_MS, ntp=False)
        gate = Process(tmp_path, host)
        r = gate.clock.read()
        assert r.state == "floor", "after a reboot without NTP: floor until the next signed time"
        _, p = BundleHolder(gate.state, tmp_path).current()
        assert freshness(p, r).state == "stale" and freshness(p, r).cause == "clock"
        assert _poll(gate, fleet, T0 + H_MS + 60_000).status == "up_to_date"
        assert gate.clock.read().state == "synced"
    finally:
        agent.close()
        gate.close()


def test_statement_round_trip_over_10_s_raises_the_floor_but_does_not_confirm(tmp_path: Path, fleet: Fleet) -> None:
    host = Host(ntp=False)
    proc = Process(tmp_path, host)
    try:
        proc.updater.install_anchor(fleet.keys_docs[1])
        m = fleet.publish(server_time_ms=T0 - H_MS)
        data = fleet.statement("00" * 16, server_time_ms=T0, manifest=m)
        res = proc.updater.offer_current(data, nonce="00" * 16, rtt_s=12.0)
        assert res.outcome == "accept" and res.update_needed
        row = proc.state.read_row("clock")
        assert row["floor_ms"] == T0 and row["confirmed_ms"] is None
        assert proc.clock.read().state == "floor"
    finally:
        proc.close()


def test_freshness_states_and_their_events(tmp_path: Path, fleet: Fleet) -> None:
    from edge.bundles import FreshnessMonitor

    host = Host(ntp=True)
    proc = Process(tmp_path, host)
    try:
        proc.updater.install_anchor(fleet.keys_docs[1])
        mon = FreshnessMonitor(proc.state, proc.events)
        holder = BundleHolder(proc.state, tmp_path)

        def check() -> str:
            _, p = holder.current()
            return mon.check(p, proc.clock.read()).state

        assert check() == "none"
        fleet.publish(server_time_ms=T0 - H_MS, validity_s=7 * 86_400)
        _poll(proc, fleet, T0)
        assert check() == "fresh"
        host.advance(DAY_MS + 1000)  # stale_after_s = 1 day since last confirmed
        assert check() == "stale"
        _poll(proc, fleet, T0 + DAY_MS + 1000)
        assert check() == "fresh"
        host.ntp = False
        host.boot = BOOT_B  # a reboot loses the anchor: age unproven
        proc.clock.boot = BOOT_B
        assert check() == "stale"
        host.boot = BOOT_A
        proc.clock.boot = BOOT_A
        host.advance(7 * DAY_MS)
        assert check() == "expired"
        got = [(e["from"], e["to"], e["cause"]) for e in (ev for ev in _payloads(proc, "bundle_state"))]
        assert got == [("none", "fresh", "confirmed"), ("fresh", "stale", "age"), ("stale", "fresh", "confirmed"),
                       ("fresh", "stale", "clock"), ("stale", "expired", "age")]
        f = freshness(holder.current()[1], proc.clock.read())
        assert f.restricted and f.event_bundle() == {"version": 1, "state": "expired"}
        assert freshness(None, proc.clock.read()).event_bundle() == {"version": 0, "state": "expired"}
    finally:
        proc.close()


def _payloads(proc: Process, kind: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(e.body)["payload"] for e in proc.events.iter_all() if e.kind == kind]
