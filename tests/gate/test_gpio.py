"""Gate I/O on gpiozero's mock pins (hardware.md §3.7).

States and their order are asserted, never durations: pattern timings are scaled
down (``Patterns.scaled``) so whole sequences finish in milliseconds, and the
configured pulse length is checked as the argument the relay's pulse was given.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edge.errors import HardwareError, PinClash
from edge.gate import DEFAULT_PATTERNS, LockRelay, Patterns, Turnstile, make_pin_factory

FAST = DEFAULT_PATTERNS.scaled(0.02)
RELAY, RED, AMBER, GREEN, BUZZER, BUTTON, BEAM = 17, 22, 23, 24, 25, 27, 5


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def levels(pin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


def unit(**kw) -> Turnstile:
    args = dict(pulse_s=0.05, show_s=0.05, patterns=FAST)
    args.update(kw)
    return Turnstile(**args)


def test_admit_pulses_relay_once_for_configured_time(mock_pins, monkeypatch):
    pulses: list[float] = []
    original = LockRelay.pulse
    monkeypatch.setattr(LockRelay, "pulse", lambda self, s: (pulses.append(s), original(self, s))[1])
    relay = mock_pins.pin(RELAY)
    with unit(pulse_s=0.07) as gate:
        assert not relay.state
        gate.admit()
        gate.wait_patterns()
        assert pulses == [0.07]
        assert levels(relay) == [False, True, False]      # one pulse, then idle (locked)
        assert not gate.relay.energised
        green, buzzer = mock_pins.pin(GREEN), mock_pins.pin(BUZZER)
        assert levels(green) == [False, True, False]
        assert levels(buzzer) == [False, True, False]      # 1 x 0.1 s


@pytest.mark.parametrize("outcome", ["deny", "refer", "fever", "override_refused"])
def test_deny_and_refer_never_touch_the_relay(mock_pins, outcome):
    relay = mock_pins.pin(RELAY)
    with unit() as gate:
        getattr(gate, outcome)()
        gate.wait_patterns()
        assert levels(relay) == [False]


def test_deny_after_admit_leaves_the_pulse_alone(mock_pins):
    relay = mock_pins.pin(RELAY)
    with unit(pulse_s=0.3) as gate:
        gate.admit()
        wait_for(lambda: relay.state)
        gate.deny()
        assert relay.state          # deny never touches the relay, not even to end a pulse
        gate.wait_patterns()
        assert levels(relay) == [False, True, False]


@pytest.mark.parametrize(
    ("outcome", "light", "light_states", "beeps"),
    [
        ("admit", GREEN, [False, True, False], 1),
        ("deny", RED, [False, True, False], 3),
        ("refer", AMBER, [False, True, False], 2),
        ("fever", RED, [False] + [True, False] * 10, 5),
        ("override_refused", RED, [False, True, False], 1),
    ],
)
def test_each_outcome_pattern(mock_pins, outcome, light, light_states, beeps):
    with unit() as gate:
        getattr(gate, outcome)()
        gate.wait_patterns()
        assert levels(mock_pins.pin(light)) == light_states
        assert levels(mock_pins.pin(BUZZER)) == [False] + [True, False] * beeps
        others = {RED, AMBER, GREEN} - {light}
        for pin in others:
            assert levels(mock_pins.pin(pin)) == [False]


def test_pattern_table_matches_spec():
    p = DEFAULT_PATTERNS           # hardware.md §3.2
    assert (p.admit_beep.on_s, p.admit_beep.n) == (0.1, 1)
    assert (p.deny_beep.on_s, p.deny_beep.off_s, p.deny_beep.n) == (0.15, 0.1, 3)
    assert (p.refer_beep.on_s, p.refer_beep.off_s, p.refer_beep.n) == (0.15, 0.1, 2)
    assert (p.fever_blink_s, p.fever_for_s) == (0.25, 5.0)
    assert (p.fever_beep.on_s, p.fever_beep.off_s, p.fever_beep.n) == (0.3, 0.2, 5)
    assert (p.long_beep.on_s, p.long_beep.n) == (1.0, 1)
    assert (p.degraded_on_s, p.degraded_every_s) == (0.1, 2.0)


def test_new_decision_cancels_previous_pattern(mock_pins):
    slow = DEFAULT_PATTERNS        # a real fever pattern lasts 5 s; the next decision cuts it
    with Turnstile(pulse_s=0.05, show_s=0.05, patterns=slow) as gate:
        gate.fever()
        wait_for(lambda: mock_pins.pin(RED).state)
        gate.refer()
        assert not mock_pins.pin(RED).state
        wait_for(lambda: not list(gate.patterns_running()), timeout=3)
        assert levels(mock_pins.pin(AMBER)) == [False, True, False]


def test_tailgate_pattern_ends_pulse(mock_pins):
    relay = mock_pins.pin(RELAY)
    with unit(pulse_s=5.0) as gate:
        gate.admit()
        wait_for(lambda: relay.state)
        gate.tailgate()
        assert not relay.state
        gate.wait_patterns()
        assert levels(mock_pins.pin(BUZZER))[-2:] == [True, False]
        assert True in levels(mock_pins.pin(RED))


@pytest.mark.parametrize("active_high", [True, False])
def test_fail_safe_inverts_relay_levels(mock_pins, active_high):
    relay = mock_pins.pin(RELAY)
    energised = active_high          # pin level that energises the coil
    with unit(lock_mode="fail_safe", relay_active_high=active_high) as gate:
        assert bool(relay.state) == (not energised)     # claimed de-energised: open while starting
        gate.ready()
        assert bool(relay.state) == energised           # locked = energised
        assert gate.relay.energised
        relay.clear_states()
        gate.admit()
        gate.wait_patterns()
        assert levels(relay) == [energised, not energised, energised]   # admit de-energises for the pulse
        gate.safe()
        assert bool(relay.state) == (not energised)     # safe = de-energised (opens a maglock)


@pytest.mark.parametrize("active_high", [True, False])
def test_fail_secure_levels(mock_pins, active_high):
    relay = mock_pins.pin(RELAY)
    with unit(relay_active_high=active_high) as gate:
        gate.ready()
        assert bool(relay.state) == (not active_high)   # de-energised = locked
        relay.clear_states()
        gate.admit()
        gate.wait_patterns()
        assert levels(relay) == [not active_high, active_high, not active_high]


@pytest.mark.parametrize("mode", ["fail_secure", "fail_safe"])
def test_safe_mid_pulse_leaves_relay_de_energised(mock_pins, mode):
    with unit(lock_mode=mode, pulse_s=10.0) as gate:
        gate.ready()
        gate.admit()
        wait_for(lambda: gate.relay.released)
        gate.safe()
        assert not gate.relay.energised
        assert not list(gate.patterns_running())
        assert not mock_pins.pin(GREEN).state and not mock_pins.pin(BUZZER).state


def test_close_is_idempotent_and_safe(mock_pins):
    gate = unit(pulse_s=10.0)
    gate.admit()
    wait_for(lambda: gate.relay.released)
    gate.close()
    gate.close()
    assert not mock_pins.pin(RELAY).state


def test_beam_one_passage_per_admit_second_is_tailgate(mock_pins):
    clock = FakeClock()
    tailgates: list[int] = []
    beam = mock_pins.pin(BEAM)
    with unit(beam=BEAM, clock=clock, pulse_s=5.0) as gate:
        gate.on_tailgate = lambda: tailgates.append(1)
        assert gate.beam_state == "clear"
        gate.admit()
        assert gate.credits == 1

        def passage() -> None:
            beam.drive_low()          # broken (active low)
            clock.t += 0.3
            beam.drive_high()         # restored

        beam.drive_low()
        assert gate.beam_state == "broken"
        assert not gate.relay.released      # close_on_passage: the pulse ends at the first break
        clock.t += 0.3
        beam.drive_high()
        assert (gate.passages, gate.tailgates, tailgates) == (1, 0, [])
        passage()
        assert (gate.passages, gate.tailgates, tailgates) == (1, 1, [1])
        gate.admit()
        gate.admit()
        passage()
        passage()
        assert (gate.passages, gate.tailgates) == (3, 1)


def test_beam_short_break_is_no_passage_and_credit_expires(mock_pins):
    clock = FakeClock()
    beam = mock_pins.pin(BEAM)
    with unit(beam=BEAM, clock=clock, passage_window_s=8.0) as gate:
        gate.admit()
        beam.drive_low()
        clock.t += 0.01                   # a fly: below 0.05 s
        beam.drive_high()
        assert gate.passages == 0 and gate.credits == 1
        clock.t += 9.0                    # credit unused past its window
        gate.tick()
        assert gate.credits == 0 and gate.unused_admits == 1
        tailgates = []
        gate.on_tailgate = lambda: tailgates.append(1)
        beam.drive_low()
        clock.t += 0.2
        beam.drive_high()
        assert tailgates == [1]


def test_beam_blocked_raises_no_tailgate(mock_pins):
    clock = FakeClock()
    beam = mock_pins.pin(BEAM)
    tailgates: list[int] = []
    with unit(beam=BEAM, clock=clock) as gate:
        gate.on_tailgate = lambda: tailgates.append(1)
        beam.drive_low()
        clock.t += 11
        assert gate.beam_state == "blocked"
        beam.drive_high()
        assert gate.beam_state == "clear" and tailgates == [] and gate.tailgates == 0


def test_beam_active_high_sensor(mock_pins):
    clock = FakeClock()
    beam = mock_pins.pin(BEAM)
    with unit(beam=BEAM, beam_active_low=False, clock=clock) as gate:
        gate.admit()
        beam.drive_high()
        clock.t += 0.2
        beam.drive_low()
        assert gate.passages == 1


def test_no_beam_reports_absent(mock_pins):
    with unit() as gate:
        assert gate.beam_state == "absent"
        gate.admit()
        assert gate.credits == 0


def test_button_press_reports(mock_pins):
    presses: list[int] = []
    with unit(button=BUTTON) as gate:
        gate.on_button = lambda: presses.append(1)
        mock_pins.pin(BUTTON).drive_low()
        mock_pins.pin(BUTTON).drive_high()
        assert presses == [1]
        assert levels(mock_pins.pin(RELAY)) == [False]   # the button alone opens nothing


def test_button_callback_error_is_logged_not_raised(mock_pins, caplog):
    def boom() -> None:
        raise RuntimeError("x")

    with unit(button=BUTTON) as gate:
        gate.on_button = boom
        with caplog.at_level(logging.ERROR):
            mock_pins.pin(BUTTON).drive_low()
        assert "on_button callback failed" in caplog.text


def test_degraded_flicker_only_while_idle(mock_pins):
    clock = FakeClock()
    amber = mock_pins.pin(AMBER)
    with unit(clock=clock, patterns=DEFAULT_PATTERNS.scaled(0.05)) as gate:
        gate.set_degraded(True)
        wait_for(lambda: sum(levels(amber)) >= 2)         # flickering
        gate.deny()                                        # a decision cancels the flicker
        assert not gate._idle_blinking
        gate.tick()                                        # still busy: no flicker yet
        assert not gate._idle_blinking
        clock.t += 10
        gate.tick()
        assert gate._idle_blinking
        gate.set_degraded(False)
        assert not amber.state and not gate._idle_blinking


def test_tonal_buzzer(mock_pins):
    with unit(buzzer_kind="tonal") as gate:
        gate.deny()
        gate.wait_patterns()
        states = [s.state for s in mock_pins.pin(BUZZER).states]
        assert sum(1 for s in states if s) == 3           # three tones (PWM duty > 0)
        assert not states[-1]


def test_pin_clash_on_duplicate_pins(mock_pins):
    with pytest.raises(PinClash, match="GPIO22"):
        Turnstile(relay=17, red=22, amber=22, green=24, buzzer=25)
    with pytest.raises(PinClash):
        Turnstile(button=17)
    assert isinstance(PinClash("x"), ValueError)
    # nothing was claimed: a correct unit can take the pins now
    with unit():
        pass


def test_pin_clash_with_pin_in_use(mock_pins):
    from gpiozero import LED

    other = LED(GREEN, pin_factory=mock_pins)
    try:
        with pytest.raises(PinClash, match="in use"):
            unit()
        assert not mock_pins.pin(RELAY).state
    finally:
        other.close()
    with unit():
        pass


def test_from_config(mock_pins):
    from edge.config import GpioConfig

    cfg = GpioConfig(relay=6, red=13, amber=19, green=26, buzzer=12, button=16, beam=20, pulse_s=0.5,
                     lock_mode="fail_safe", button_action="disabled")
    with Turnstile.from_config(cfg, pin_factory=mock_pins, patterns=FAST) as gate:
        assert gate.pulse_s == 0.5 and gate.relay.fail_safe
        assert "button" not in gate._named and gate.beam_state == "clear"
        assert gate.passage_window_s == cfg.passage_window_s


def test_bad_arguments(mock_pins):
    with pytest.raises(ValueError):
        Turnstile(lock_mode="open")        # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Turnstile(pulse_s=0)


def test_patterns_scaled_keeps_counts():
    s = Patterns().scaled(0.5)
    assert s.deny_beep.n == 3 and s.deny_beep.on_s == 0.075


# -- pin factory selection (§3.6) ----------------------------------------------------------------


def test_factory_auto_uses_env(monkeypatch):
    from gpiozero.pins.mock import MockFactory

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    f = make_pin_factory("auto")
    assert isinstance(f, MockFactory)
    f.close()


def test_factory_auto_on_pi_never_falls_back_to_mock(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\x00")
    with pytest.raises(HardwareError, match="lgpio"):
        make_pin_factory("auto", model_file=model)       # no lgpio, no /dev/gpiochip here


def test_factory_auto_elsewhere_is_mock_with_warning(monkeypatch, tmp_path: Path, caplog):
    from gpiozero.pins.mock import MockFactory

    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    with caplog.at_level(logging.WARNING):
        f = make_pin_factory("auto", model_file=tmp_path / "absent")
    assert isinstance(f, MockFactory) and "mock GPIO pins" in caplog.text
    f.close()


def test_factory_unknown_name():
    with pytest.raises(HardwareError, match="unknown pin factory"):
        make_pin_factory("wiringpi")
