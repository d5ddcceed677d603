"""The reader against the simulator over a real pty, per protocol and per fault (hardware.md §1.14).

Every wait polls with a generous bound; no test asserts how long anything took
(the reconnect figure is measured in ``bench/thermometer_reconnect.py``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from firmware_bridge import ProtocolConfigError, ThermometerSim, open_thermometer
from firmware_bridge.protocols.gy_mcu90614 import CMD_CONTINUOUS, CMD_QUERY
from tests.thermometer.helpers import PERIOD_S, PROTOCOLS, fast, readings, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


def sim_for(protocol: str, **kw) -> ThermometerSim:
    kw.setdefault("period_s", PERIOD_S)
    kw.setdefault("seed", 7)
    return ThermometerSim(protocol, **kw)


# --- clean run and the stamping ---------------------------------------------------------------


def test_clean_run_reads_what_the_sensor_sees(protocol: str) -> None:
    stamps = []

    def clock() -> datetime:
        stamps.append(datetime.now(UTC))
        return stamps[-1]

    with sim_for(protocol) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, clock=clock, **fast()) as therm:
            got = readings(therm, 5)
            st = therm.status()
    assert {(r.object_c, r.ambient_c, r.body_c, r.protocol) for r in got} == {(35.5, 25.0, 37.9, protocol)}
    assert [r.mono for r in got] == sorted(r.mono for r in got)
    assert all(r.at in stamps and r.at.tzinfo is not None for r in got)
    assert st.state == "ok" and st.last_error is None and st.last_reading_age_s is not None
    assert st.counters.frames >= 5 and st.counters.bad_frames == 0 and st.counters.reconnects == 0
    if protocol == "gy-mcu90614":
        assert sim.host_bytes.startswith(CMD_CONTINUOUS)  # §1.3: the init command after open
    elif protocol == "modbus-rtu":
        assert sim.host_bytes.startswith(bytes.fromhex("01 03 00 00 00 02 C4 0B"))
    else:
        assert sim.host_bytes == b""  # passive device: the reader writes nothing


# --- per-frame faults --------------------------------------------------------------------------


def test_garbage_before_frames_is_skipped(protocol: str) -> None:
    with sim_for(protocol, faults="garbage=0.5") as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            got = readings(therm, 20)
            wait_until(lambda: sim.sent.get("garbage", 0) >= 5)
            st = therm.status()
    assert {r.object_c for r in got} == {35.5}
    if protocol != "ascii":
        assert st.counters.garbage_bytes > 0
    else:
        # ASCII has no checksum: noise joins the line. A garbled line is refused, never
        # guessed; noise glued to the "Ambient" label loses only the ambient (the
        # measurement takes the ambient median over the samples that have one).
        assert {r.ambient_c for r in got} <= {25.0, None} and st.counters.frames >= 20


def test_a_bad_checksum_never_yields_a_reading(protocol: str) -> None:
    with sim_for(protocol, faults="bad_checksum=1.0") as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            wait_until(lambda: therm.status().counters.bad_frames >= 10)
            assert therm.read(0.2) is None
            assert therm.latest() is None
            st = therm.status()
    assert st.state == "stale" and st.counters.frames == 0 and st.bad_frames_per_min >= 10
    assert sim.sent["bad_checksum"] >= 10


def test_injected_bad_checksums_are_counted_and_good_frames_still_read(protocol: str) -> None:
    with sim_for(protocol) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            readings(therm, 2)
            sim.inject("bad_checksum", count=3)
            wait_until(lambda: therm.status().counters.bad_frames >= 3)
            got = readings(therm, 5)
    assert {r.object_c for r in got} == {35.5}


def test_split_frames_are_reassembled(protocol: str) -> None:
    with sim_for(protocol, faults="split=1.0", period_s=0.06) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast(modbus={"poll_s": 0.08})) as therm:
            got = readings(therm, 8)
            st = therm.status()
    assert {r.object_c for r in got} == {35.5}
    assert st.counters.bad_frames == 0 and sim.sent["split"] >= 8


def test_dropped_frames_are_just_missing(protocol: str) -> None:
    with sim_for(protocol, faults="drop=0.5") as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            got = readings(therm, 10)
            wait_until(lambda: sim.sent.get("drop", 0) >= 3)
            if protocol == "modbus-rtu":  # a dropped reply: the reader gives up and polls again
                wait_until(lambda: therm.status().counters.timeouts >= 1)
            st = therm.status()
    assert {r.object_c for r in got} == {35.5} and st.counters.bad_frames == 0


# --- silence, unplug, reset ----------------------------------------------------------------------


def test_silence_goes_stale_and_back_to_ok(protocol: str) -> None:
    with sim_for(protocol) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            readings(therm, 3)
            assert therm.status().state == "ok"
            sim.silence(1.2)
            before = therm.latest().mono  # unread readings up to here stay in the buffer
            st = wait_until(lambda: (s := therm.status()).state == "stale" and s)
            assert st.last_reading_age_s >= 0.5
            # A stale reading is never reported as fresh: the buffer has unread readings,
            # but read() will not hand out any older than stale_after_s.
            assert therm.read(0.0) is None
            m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=0.0)
            assert m.status == "stale" and m.body_centi_c is None
            wait_until(lambda: therm.status().state == "ok")
            fresh = readings(therm, 2)
            assert all(r.mono > before for r in fresh)  # the unread pre-silence ones were skipped
            assert therm.status().counters.reconnects == 0


def test_unplug_and_replug_reconnects_once(protocol: str) -> None:
    with sim_for(protocol, auto_output=False) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            readings(therm, 3)
            unplugged = time.monotonic()
            sim.unplug(0.6)
            st = wait_until(lambda: (s := therm.status()).state == "fault" and s)
            assert st.last_error and ("port lost" in st.last_error or "port missing" in st.last_error)
            assert therm.measure(at=time.monotonic(), max_age_s=20, wait_s=0).status == "fault"
            wait_until(lambda: sim.plugged)
            # The first reading read() gives is one from the new port: the ones from before
            # the unplug are older than stale_after_s by now and are never handed out.
            fresh = therm.read(8.0)
            assert fresh is not None and fresh.mono > unplugged and fresh.object_c == 35.5
            st = therm.status()
    assert st.state == "ok" and st.counters.reconnects == 1
    if protocol == "gy-mcu90614":
        # auto output off at power-up: only the reader's init command brings the frames back.
        assert sim.host_bytes.count(CMD_CONTINUOUS) >= 2


def test_reset_noise_and_banner_are_discarded(protocol: str) -> None:
    with sim_for(protocol, reset_silence_s=0.2) as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, protocol, **fast(stale_after_s=2.0)) as therm:
            readings(therm, 3)
            sim.reset()
            wait_until(lambda: sim.sent.get("reset", 0) == 1)
            got = readings(therm, 5)
            st = therm.status()
    assert {r.object_c for r in got} == {35.5} and st.state == "ok"
    if protocol == "ascii":
        assert st.counters.bad_frames >= 1 and st.counters.ignored >= 1  # noise line, banner
    elif protocol == "gy-mcu90614":
        assert st.counters.garbage_bytes >= 2 + len(b"MLX90614 ready\r\n")


def test_reset_on_open_is_absorbed_by_settle_s() -> None:
    """§1.6: a board that resets on open prints noise and a banner; settle + flush hides it."""
    results = {}
    for settle_s in (0.0, 0.8):
        with sim_for("ascii", reset_on_open=True, reset_silence_s=0.2) as sim:
            sim.present(35.5, 25.0)
            with open_thermometer(sim.port, "ascii", **fast(settle_s=settle_s, stale_after_s=2.0)) as therm:
                got = readings(therm, 3)
                c = therm.status().counters
                results[settle_s] = (c.bad_frames, c.ignored)
            assert sim.sent["reset"] == 1 and sim.sent["host_open"] == 1
        assert {r.object_c for r in got} == {35.5}
    assert results[0.0][1] >= 1  # without settling the banner is read (and ignored)
    assert results[0.8] == (0, 0)  # with it, reset_input_buffer() dropped noise and banner unread


# --- scene faults: fever and cold ----------------------------------------------------------------


def test_fever_fault_reads_the_fever_person(protocol: str) -> None:
    with sim_for(protocol, faults="fever=0+60") as sim:
        sim.present(34.2)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            readings(therm, 3)
            m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=3.0)
    assert (m.status, m.object_c, m.ambient_c, m.body_c, m.body_centi_c) == ("measured", 35.5, 25.0, 37.9, 3790)


def test_cold_fault_lifts_the_estimate_by_the_ambient(protocol: str) -> None:
    with sim_for(protocol, faults="cold=0+60") as sim:
        sim.present(34.2)
        with open_thermometer(sim.port, protocol, **fast()) as therm:
            readings(therm, 3)
            m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=3.0)
    assert (m.status, m.object_c, m.ambient_c, m.body_c) == ("measured", 31.2, 4.5, 35.7)


def test_timed_silence_and_unplug_from_a_fault_spec() -> None:
    with sim_for("gy-mcu90614", faults="silence=0.3+0.8,unplug=1.6+0.4") as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast()) as therm:
            wait_until(lambda: therm.status().state == "stale" and therm.status().counters.frames > 0)
            wait_until(lambda: therm.status().state == "fault")
            wait_until(lambda: therm.status().state == "ok" and therm.status().counters.reconnects == 1)
    assert sim.sent["silence"] == 1 and sim.sent["unplug"] == 1


# --- measurement over the pty ---------------------------------------------------------------------


def test_measure_consumes_the_episode_and_the_remeasure_needs_a_new_one() -> None:
    with sim_for("gy-mcu90614") as sim:
        sim.absent()
        with open_thermometer(sim.port, "gy-mcu90614", **fast(stale_after_s=2.0)) as therm:
            readings(therm, 2)
            t_scan = time.monotonic()
            assert therm.measure(at=t_scan, max_age_s=20, wait_s=0.0).reason == "no_subject"
            sim.present(35.5)
            m1 = therm.measure(at=t_scan, max_age_s=20, wait_s=5.0)  # forms while waiting
            assert (m1.status, m1.body_centi_c) == ("measured", 3790)
            # The same person standing still: the episode is used, nothing new.
            again = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=0.2)
            assert (again.status, again.reason) == ("no_measurement", "no_subject")
            prompt = time.monotonic()
            still = therm.measure(at=prompt, max_age_s=20, wait_s=0.3, new_since=prompt)
            assert still.status == "no_measurement"
            sim.absent()  # the person steps back: a non-present sample ends the episode
            wait_until(lambda: therm.latest().object_c < 30)
            sim.present(35.4)
            m2 = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=5.0, new_since=prompt)
    assert (m2.status, m2.object_c) == ("measured", 35.4) and m2.measured_at > m1.measured_at


def test_implausible_values_are_bad_frames_not_readings() -> None:
    with sim_for("gy-mcu90614") as sim:
        sim.present(327.67)  # the 0x7FFF sentinel of the vectors' gy-implausible case
        with open_thermometer(sim.port, "gy-mcu90614", **fast()) as therm:
            wait_until(lambda: therm.status().counters.implausible >= 5)
            assert therm.read(0.1) is None
            st = therm.status()
    assert st.state == "stale" and st.counters.bad_frames >= 5 and st.counters.frames == 0


def test_hat_or_hair_is_implausible_low() -> None:
    with sim_for("ascii", ascii_format="bare") as sim:
        sim.present(30.5)
        with open_thermometer(sim.port, "ascii", **fast()) as therm:
            readings(therm, 3)
            m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=0.5)
    assert (m.status, m.reason, m.body_c, m.body_centi_c) == ("no_measurement", "implausible_low", 32.2, None)


# --- protocol specifics -----------------------------------------------------------------------------


def test_gy_init_command_is_retried_until_a_frame_arrives() -> None:
    with sim_for("gy-mcu90614", auto_output=False) as sim:
        sim.present(35.5)
        sim.silence(0.7)
        with open_thermometer(sim.port, "gy-mcu90614", **fast(gy={"init_retry_s": 0.1})) as therm:
            readings(therm, 3)
            sent = sim.host_bytes.count(CMD_CONTINUOUS)
            readings(therm, 10)
            assert sim.host_bytes.count(CMD_CONTINUOUS) == sent  # no more once frames flow
    assert sent >= 2 and set(sim.host_bytes.replace(CMD_CONTINUOUS, b"")) == set()


def test_gy_query_mode_asks_for_each_frame() -> None:
    with sim_for("gy-mcu90614", auto_output=False) as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast(gy={"mode": "query", "poll_s": 0.03})) as therm:
            got = readings(therm, 5)
    assert {r.object_c for r in got} == {35.5}
    assert CMD_CONTINUOUS not in sim.host_bytes and sim.host_bytes.count(CMD_QUERY) >= 5


def test_gy_reader_never_sends_baud_or_power_up_commands() -> None:
    with sim_for("gy-mcu90614") as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast()) as therm:
            readings(therm, 3)
            sim.unplug(0.2)
            wait_until(lambda: therm.status().counters.reconnects == 1)
            readings(therm, 3)
    assert sim.host_bytes.replace(CMD_CONTINUOUS, b"") == b""


def test_modbus_exception_is_a_fault_with_the_technicians_text() -> None:
    with sim_for("modbus-rtu") as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "modbus-rtu", **fast(modbus={"object_register": 5,
                                                                    "ambient_register": None})) as therm:
            st = wait_until(lambda: (s := therm.status()).state == "fault" and s)
            polled = len(sim.host_bytes)
            wait_until(lambda: len(sim.host_bytes) > polled + 16)  # keeps polling
            st = therm.status()
    assert st.last_error == "modbus exception 02 (illegal data address): check [thermometer.modbus] registers"
    assert st.counters.exceptions >= 1 and st.counters.frames == 0 and st.counters.reopens == 0


def test_modbus_two_requests_when_the_registers_are_apart() -> None:
    with sim_for("modbus-rtu") as sim:
        sim.present(35.5, 25.0)
        opts = fast(modbus={"object_register": 1, "ambient_register": 0, "function": 4})
        with open_thermometer(sim.port, "modbus-rtu", **opts) as therm:
            got = readings(therm, 3)
    # The simulator holds the object at 0 and the ambient at 1: this map reads them swapped.
    assert {(r.object_c, r.ambient_c) for r in got} == {(25.0, 35.5)}
    assert bytes.fromhex("01 04 00 01 00 01 60 0A") in sim.host_bytes
    assert bytes.fromhex("01 04 00 00 00 01") in sim.host_bytes


def test_modbus_wrong_address_times_out_and_stays_stale() -> None:
    with sim_for("modbus-rtu", address=1) as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "modbus-rtu", **fast(modbus={"address": 2})) as therm:
            wait_until(lambda: therm.status().counters.timeouts >= 3)
            st = therm.status()
    assert st.state == "stale" and st.counters.frames == 0


def test_ascii_request_mode_writes_the_request() -> None:
    with sim_for("ascii", request="T") as sim:
        sim.present(35.5, 25.0)
        with open_thermometer(sim.port, "ascii", **fast(ascii={"request": "T\n", "poll_s": 0.03})) as therm:
            got = readings(therm, 4)
    assert {r.object_c for r in got} == {35.5}
    assert sim.host_bytes.count(b"T\n") >= 4


def test_pymodbus_client_reads_the_simulator() -> None:
    from pymodbus.client import ModbusSerialClient

    with sim_for("modbus-rtu") as sim:
        sim.present(35.5, 25.1)
        client = ModbusSerialClient(sim.port, baudrate=9600, timeout=1, retries=1)
        try:
            assert client.connect()
            rr = client.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError() and rr.registers == [355, 251]
            ir = client.read_input_registers(1, count=1, device_id=1)
            assert not ir.isError() and ir.registers == [251]
            bad = client.read_holding_registers(5, count=1, device_id=1)
            assert bad.isError() and bad.exception_code == 2
            write = client.write_register(0, 1, device_id=1)  # the simulated slave only reads
            assert write.isError() and write.exception_code == 1
            assert not client.read_holding_registers(0, count=2, device_id=1).isError()
        finally:
            client.close()


# --- port handling and the API ---------------------------------------------------------------------


def test_a_second_reader_finds_the_port_busy() -> None:
    with sim_for("gy-mcu90614") as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast()) as first:
            readings(first, 2)
            with open_thermometer(sim.port, "gy-mcu90614", **fast()) as second:
                st = wait_until(lambda: (s := second.status()).state == "fault" and s)
                assert st.last_error.startswith("port busy:")
                assert second.read(0.1) is None
            readings(first, 3)  # the first reader lost nothing


def test_missing_port_is_a_fault_and_is_picked_up_when_it_appears(tmp_path) -> None:
    link = tmp_path / "thermometer"
    with open_thermometer(str(link), "gy-mcu90614", **fast()) as therm:
        st = wait_until(lambda: (s := therm.status()).state == "fault" and s)
        assert st.last_error.startswith("port missing:")
        with sim_for("gy-mcu90614", link=link) as sim:
            sim.present(35.5)
            assert therm.read(8.0) is not None
            assert therm.status().counters.reconnects == 0  # a first open, not a reconnect


def test_reopen_after_long_silence() -> None:
    with sim_for("gy-mcu90614") as sim:
        sim.present(35.5)
        with open_thermometer(sim.port, "gy-mcu90614", **fast(reopen_after_s=0.8)) as therm:
            readings(therm, 2)
            sim.silence(1.5)
            wait_until(lambda: therm.status().counters.reopens >= 1)
            assert therm.read(8.0) is not None
            st = therm.status()
    assert st.counters.reconnects == 0


def test_open_thermometer_takes_the_gate_config_and_the_in_process_simulator() -> None:
    from edge.config import ThermometerConfig

    cfg = ThermometerConfig(protocol="modbus-rtu", port="sim", stale_after_s=1.0,
                            modbus={"poll_s": 0.05, "response_timeout_s": 0.2})
    with open_thermometer(**cfg.model_dump(), sim={"people": None, "period_s": PERIOD_S}) as therm:
        assert therm.simulator is not None and therm.port == therm.simulator.port
        therm.simulator.present(35.5)
        assert therm.read(8.0) is not None  # until the first reading the state is stale
        m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=5.0)
        assert m.body_centi_c == 3790
        link = therm.simulator.port
    assert therm.simulator.plugged is False
    import os

    assert not os.path.lexists(link)
    therm.close()  # idempotent


def test_disabled_thermometer_is_absent() -> None:
    with open_thermometer("sim", "gy-mcu90614", enabled=False) as therm:
        st = therm.status()
        assert (st.state, therm.simulator, therm.read(0.0), therm.latest()) == ("absent", None, None, None)
        m = therm.measure(at=time.monotonic(), max_age_s=20, wait_s=1.0)
        assert (m.status, m.reason) == ("no_measurement", "no_subject")


@pytest.mark.parametrize(
    ("args", "options", "needle"),
    [
        (("/dev/null", "gy-mcu90615"), {}, "protocol"),
        (("", "ascii"), {}, "port"),
        (("/dev/null", "ascii"), {"stale_after_s": -1}, "stale_after_s"),
        (("/dev/null", "ascii"), {"flavour": 1}, "flavour"),
        (("/dev/null", "ascii"), {"ascii": {"object_pattern": "(no group"}}, "object_pattern"),
        (("/dev/null", "ascii"), {"ascii": {"bare_pattern": r"\d+"}}, "group named v"),
        (("/dev/null", "modbus-rtu"), {"modbus": {"address": 0}}, "address"),
        (("/dev/null", "modbus-rtu"), {"modbus": {"format": "float32", "ambient_register": 1}}, "overlaps"),
        (("/dev/null", "modbus-rtu"), {"modbus": {"scale": 0}}, "scale"),
        (("/dev/null", "gy-mcu90614"), {"gy": {"mode": "burst"}}, "mode"),
        (("/dev/null", "gy-mcu90614"), {"site": "wrist"}, "wrist"),
        (("/dev/null", "gy-mcu90614"), {"clock": datetime.now}, "aware"),
        (("/dev/null", "gy-mcu90614"), {"protocol": "ascii"}, "given twice"),
        (("/dev/null", "gy-mcu90614"), {"min_samples": 6}, "min_samples"),
    ],
)
def test_bad_options_fail_at_open_naming_the_key(args, options, needle) -> None:
    with pytest.raises(ProtocolConfigError, match=needle):
        open_thermometer(*args, **options)


def test_simulator_scene_follows_the_people_list() -> None:
    """§1.11: every 5 s the next person for 2 s, ramping over 0.3 s; *2 steps away 1.5 s and returns."""
    with ThermometerSim("ascii", people="34.2,35.5*2", every_s=5.0, stay_s=2.0, faults="cold=30+5") as sim:
        at = sim.scene
        assert at(1.0) == (25.0, 25.0)  # nobody yet (noise-free view of the scene)
        assert at(3.15) == (29.6, 25.0)  # half way up the 0.3 s ramp
        assert at(4.0) == (34.2, 25.0)
        assert at(6.0) == (25.0, 25.0)  # gone; the next slot's lead-in
        assert at(9.0) == (35.5, 25.0)  # the fever person
        assert at(10.5) == (25.0, 25.0)  # stepped back
        assert at(12.0) == (35.5, 25.0)  # presents again: the re-measure
        assert at(13.5 + 3.5) == (34.2, 25.0)  # the list starts over after 5 + 8.5 s
        assert at(31.0) == (31.2, 4.5)  # cold morning: a person reads 31.2 at ambient 4.5
        assert at(33.0) == (4.5, 4.5)  # nobody in front reads the cold ambient
