"""Trusted clock (bundles.md §5): every row of the §5.3 table, its warnings, the floor rules,
restarts and reboots, driven by a fake wall clock, boottime, boot id and NTP flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.clock import ClockSettings, TrustedClock
from edge.store.state import StateDB
from sync.timefmt import parse_ms

T0 = parse_ms("2026-12-01T08:00:00.000Z")
H = 3_600_000
DAY = 24 * H
YEAR = 365 * DAY
BOOT_A = "aaaaaaaa-0000-0000-0000-000000000001"
BOOT_B = "bbbbbbbb-0000-0000-0000-000000000002"


@dataclass
class Fake:
    wall: int = T0
    boot_ms: int = 10_000
    ntp: bool = False
    boot: str = BOOT_A

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.boot_ms += ms

    def clock(self, state: StateDB, floor: int = T0 - DAY) -> TrustedClock:
        return TrustedClock(state, settings=ClockSettings(120, 86_400), wall_ms=lambda: self.wall,
                            boottime_ms=lambda: self.boot_ms, boot=self.boot, ntp=lambda: self.ntp,
                            release_floor_ms=floor)


@pytest.fixture
def state(tmp_path: Path):
    s = StateDB(tmp_path)
    yield s
    s.close()


def causes(clock: TrustedClock) -> list[str]:
    return [w.cause for w in clock.drain_warnings()]


def test_first_start_without_ntp_counts_from_the_build_floor(state: StateDB) -> None:
    f = Fake()
    c = f.clock(state)
    r = c.read()
    assert (r.case, r.state, r.now_ms) == (5, "floor", T0 - DAY)
    f.advance(5000)
    assert c.read().now_ms == T0 - DAY + 5000, "lo advances with boottime"
    row = state.read_row("clock")
    assert row and row["floor_source"] == "build"


def test_row3_ntp_within_lead_is_synced_system_time(state: StateDB) -> None:
    f = Fake(ntp=True)
    r = f.clock(state).read()
    assert (r.case, r.state, r.now_ms) == (3, "synced", T0)


def test_row4_ntp_far_ahead_is_capped_and_warns_once(state: StateDB) -> None:
    f = Fake(ntp=True, wall=T0 + YEAR)
    c = f.clock(state)
    r = c.read()
    assert (r.case, r.state) == (4, "untrusted")
    assert r.now_ms == r.lo_ms + 86_400_000
    assert causes(c) == ["ahead"]
    c.read()
    assert causes(c) == [], "a condition that lasts warns once"


def test_row5_system_behind_floor_warns(state: StateDB) -> None:
    f = Fake(ntp=True, wall=T0 - 30 * DAY)
    c = f.clock(state)
    r = c.read()
    assert (r.case, r.state, r.now_ms) == (5, "floor", r.lo_ms)
    assert causes(c) == ["behind_floor"]


def test_signed_time_anchors_row2_without_ntp(state: StateDB) -> None:
    f = Fake(wall=T0 - 3 * DAY)  # wrong system clock, no NTP
    c = f.clock(state)
    c.accept_signed_time(T0, rtt_s=0.4, source="time")
    r = c.read()
    assert (r.case, r.state, r.now_ms) == (2, "synced", T0)
    assert causes(c) == ["skew"]
    f.advance(60_000)
    assert c.read().now_ms == T0 + 60_000, "est follows boottime, not the wall clock"


def test_row1_anchor_and_agreeing_ntp_uses_system_time(state: StateDB) -> None:
    f = Fake(ntp=True)
    c = f.clock(state)
    c.accept_signed_time(T0 - 2000, rtt_s=0.2, source="current")
    r = c.read()
    assert (r.case, r.state, r.now_ms) == (1, "synced", T0)
    assert causes(c) == []


def test_slow_round_trip_raises_the_floor_but_gives_no_anchor(state: StateDB) -> None:
    f = Fake()
    c = f.clock(state)
    c.accept_signed_time(T0, rtt_s=12.0, source="time")
    r = c.read()
    assert (r.state, r.now_ms) == ("floor", T0)
    assert r.est_ms is None


def test_restart_keeps_the_anchor_reboot_loses_it(state: StateDB, tmp_path: Path) -> None:
    f = Fake(wall=T0 - DAY)
    c = f.clock(state)
    c.accept_signed_time(T0, rtt_s=1.0, source="current")
    f.advance(1000)
    c2 = f.clock(StateDB(tmp_path))  # another process, same boot: shares the row
    assert c2.read().state == "synced" and c2.read().now_ms == T0 + 1000
    f.boot, f.boot_ms = BOOT_B, 5000  # reboot without NTP: the anchor is of another boot
    c3 = f.clock(StateDB(tmp_path))
    r = c3.read()
    assert (r.state, r.case) == ("floor", 5)
    assert r.now_ms == T0 + 5000, "lo = floor + whole boottime of this boot"


def test_wall_clock_back_a_year_after_restart_never_goes_below_the_floor(state: StateDB, tmp_path: Path) -> None:
    f = Fake(ntp=True)
    c = f.clock(state)
    c.accept_signed_time(T0, rtt_s=0.5, source="current")
    c.checkpoint()
    f.boot, f.boot_ms, f.wall = BOOT_B, 2000, T0 - YEAR  # restart with the clock set back a year
    c2 = f.clock(StateDB(tmp_path))
    r = c2.read()
    assert r.now_ms >= T0, "a credential expired before T0 must stay expired"
    assert r.state == "floor" and "behind_floor" in causes(c2)


def test_step_of_the_system_clock_is_reported(state: StateDB) -> None:
    f = Fake(ntp=True)
    c = f.clock(state)
    c.read()
    f.wall += H  # NTP step: wall jumps, boottime does not
    c.read()
    assert "step" in causes(c)
    f.advance(1000)
    c.read()
    assert causes(c) == []


def test_leaving_synced_writes_sync_lost_but_improving_writes_nothing(state: StateDB) -> None:
    f = Fake(ntp=True)
    c = f.clock(state)
    assert c.read().state == "synced"
    f.ntp = False
    assert c.read().state == "floor"
    assert causes(c) == ["sync_lost"]
    f.ntp = True
    assert c.read().state == "synced"
    assert causes(c) == []


def test_floor_only_rises(state: StateDB) -> None:
    f = Fake()
    c = f.clock(state)
    assert c.raise_floor(T0, "manifest")
    assert not c.raise_floor(T0 - H, "manifest")
    assert c.read().floor_ms == T0


def test_clock_floor_reset_is_the_only_way_down(state: StateDB) -> None:
    f = Fake()
    c = f.clock(state)
    c.raise_floor(T0 + 10 * YEAR, "manifest")  # pushed into the future with a stolen key
    assert c.read().now_ms >= T0 + 10 * YEAR
    assert c.reset_floor(T0 - H, issued_at_ms=T0)
    r = c.read()
    assert r.floor_ms == T0 and r.now_ms == T0
    assert not c.reset_floor(T0 + H, issued_at_ms=T0 - H), "a reset above the floor changes nothing"
    assert c.read().floor_ms == T0


def test_maintain_raises_the_floor_from_ntp_only_within_the_lead(state: StateDB) -> None:
    f = Fake(ntp=True, wall=T0 + 2 * H)
    c = f.clock(state, floor=T0)
    c.maintain(mono=0.0)
    assert c.read().floor_ms == T0 + 2 * H
    f.wall = T0 + YEAR
    c.maintain(mono=61.0)
    assert c.read().floor_ms == T0 + 2 * H, "spoofed NTP far ahead cannot ratchet the floor"


def test_running_checkpoint_persists_lo_when_not_synced(state: StateDB) -> None:
    f = Fake()
    c = f.clock(state)
    f.advance(H)
    c.checkpoint()
    assert c.read().floor_ms == T0 - DAY + H


def test_at_object_for_events(state: StateDB) -> None:
    f = Fake(ntp=True)
    a = f.clock(state).read().at()
    assert a == {"wall": "2026-12-01T08:00:00.000Z", "clock": "synced", "boot": BOOT_A, "mono_ms": 10_000}


def test_warning_payload_is_an_event_payload(state: StateDB) -> None:
    from sync.canonical import check_profile

    f = Fake(ntp=True, wall=T0 + YEAR)
    c = f.clock(state)
    c.read()
    (w,) = c.drain_warnings()
    p = w.payload()
    check_profile(p)
    assert p["cause"] == "ahead" and p["to"] == "untrusted" and p["server_wall"] is None
