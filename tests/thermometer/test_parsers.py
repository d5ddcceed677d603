"""Parsers beyond the vectors: fuzz (10,000 chunks each), oversize and boundary input, options."""

from __future__ import annotations

import pytest

from firmware_bridge.errors import ProtocolConfigError
from firmware_bridge.frames import check_gy_frame, check_modbus_reply
from firmware_bridge.protocols.ascii_lines import AsciiLineParser
from firmware_bridge.protocols.gy_mcu90614 import GyMcu90614Parser, encode_frame
from firmware_bridge.protocols.modbus_rtu import (
    ModbusMap,
    ModbusReplyParser,
    build_read_request,
    decode_value,
)
from firmware_bridge.simulator import SimError, parse_faults, parse_people
from tests.thermometer.fuzz import PARSERS, run


@pytest.mark.parametrize("kind", PARSERS)
def test_fuzz_10000_chunks(kind: str) -> None:
    """No exception, bounded buffers, every byte accounted for (checked inside ``run``)."""
    result = run(kind, 10_000, seed=11)
    assert result["readings"] > 20  # the stream carries good frames, and they are found
    if kind == "ascii":
        assert result["bad"] > 0 and result["overflow"] > 0 and result["ignored"] > 0
    else:
        assert result["garbage_bytes"] > 0
        # Chance acceptances of re-assembled bytes stay rare (sum8: 1/256 per candidate).
        assert result["false_accepts"] <= 0.05 * result["readings"]


def test_oversize_noise_in_one_read_leaves_nothing_buffered() -> None:
    blob = bytes(range(256)).replace(b"\x5a", b"\x00") * 4096  # 1 MiB, no header byte
    gy = GyMcu90614Parser()
    assert gy.feed(blob) == [] and gy.pending == 0 and gy.stats.garbage_bytes == len(blob)
    mb = ModbusReplyParser(1, 3, 2)
    assert mb.feed(blob.replace(b"\x01", b"\x00")) == [] and mb.pending == 0
    asc = AsciiLineParser()
    assert asc.feed(b"7" * (1 << 20)) == [] and asc.pending == 0 and asc.stats.overflow == 1
    assert [s.object_c for s in asc.feed(b"\r\n36.50\r\n")] == [36.5]  # and it recovers at once


def test_gy_frames_after_a_megabyte_of_noise_still_parse() -> None:
    gy = GyMcu90614Parser()
    got = gy.feed(b"\x5a" * 100_000 + encode_frame(36.5, 25.0))
    assert [(s.object_c, s.ambient_c) for s in got] == [(36.5, 25.0)]
    assert gy.pending == 0


def test_frame_checks_on_empty_and_tiny_buffers() -> None:
    assert check_gy_frame(b"") == (0, None)
    assert check_gy_frame(b"\x5a") == (0, None)
    assert check_gy_frame(b"\x5a\x5a\x45") == (0, None)
    assert check_modbus_reply(b"", 1, 3, 1) == (0, None)
    assert check_modbus_reply(b"\x01", 1, 3, 1) == (0, None)
    assert check_modbus_reply(b"\x01\x03", 1, 3, 1) == (0, None)
    assert check_modbus_reply(b"\x02", 1, 3, 1) == (-1, None)


def test_ascii_line_length_boundary() -> None:
    asc = AsciiLineParser()
    exactly = b" " * 123 + b"36.50"  # 128 bytes: still a line
    assert [s.object_c for s in asc.feed(exactly + b"\n")] == [36.5]
    assert asc.feed(b" " * 124 + b"36.50\n") == []  # 129 bytes: dropped
    assert (asc.stats.lines, asc.stats.overflow, asc.pending) == (1, 1, 0)


def test_ascii_overflow_split_over_reads_then_recovers() -> None:
    asc = AsciiLineParser()
    for _ in range(10):
        assert asc.feed(b"9" * 50) == []
        assert asc.pending <= 128
    assert [s.object_c for s in asc.feed(b"\n34.20\r\n")] == [34.2]
    assert asc.stats.overflow == 1 and asc.stats.lines == 1


def test_ascii_resync_skips_the_tail_of_a_cut_line() -> None:
    asc = AsciiLineParser()
    asc.resync()
    assert asc.feed(b"35\r\n34.35\r\n") and asc.stats.lines == 1  # "35" was a tail, not a value
    assert asc.stats.overflow == 0


def test_ascii_fahrenheit_and_rounding() -> None:
    asc = AsciiLineParser(unit="F")
    got = asc.feed(b"97.70\nTO:98.6 TA:77\n-40\n")
    assert [(s.object_c, s.ambient_c) for s in got] == [(36.5, None), (37.0, 25.0), (-40.0, None)]
    assert [s.object_c for s in AsciiLineParser().feed(b"36.505\n36.504\n")] == [36.51, 36.5]  # half up


def test_ascii_custom_patterns() -> None:
    asc = AsciiLineParser(object_pattern=r"IR(?P<v>\d+\.\d)", bare_pattern=r"#(?P<v>\d+)")
    got = asc.feed(b"IR36.6 ambient:24.0\n#37\nT=36.5\n")
    assert [(s.object_c, s.ambient_c) for s in got] == [(36.6, 24.0), (37.0, None)]
    assert asc.stats.ignored == 1  # "T=36.5" matches neither configured pattern


def test_ascii_absurd_number_is_bad_not_a_crash() -> None:
    asc = AsciiLineParser()
    assert asc.feed(b"9" * 60 + b"." + b"9" * 60 + b"\n") == []
    assert asc.stats.bad == 1


@pytest.mark.parametrize("unit", ["K", "c", ""])
def test_ascii_bad_unit(unit: str) -> None:
    with pytest.raises(ProtocolConfigError, match="unit"):
        AsciiLineParser(unit=unit)


def test_modbus_map_plans_and_refusals() -> None:
    assert [r.count for r in ModbusMap().requests()] == [2]
    assert [r.count for r in ModbusMap(ambient_register=None).requests()] == [1]
    assert [(r.start, r.count) for r in ModbusMap(object_register=4, ambient_register=0).requests()] == [
        (4, 1), (0, 1)]
    assert [(r.start, r.count) for r in ModbusMap(format="float32", ambient_register=2, scale=1.0).requests()] == [
        (0, 4)]
    for bad in ({"address": 248}, {"function": 6}, {"object_register": 65535, "format": "float32",
                                                    "ambient_register": None},
                {"ambient_register": 0}, {"format": "int32"}, {"word_order": "middle"}, {"scale": -1}):
        with pytest.raises(ProtocolConfigError):
            ModbusMap(**bad)
    with pytest.raises(ProtocolConfigError):
        build_read_request(1, 3, 0, 126)


def test_modbus_decode_values() -> None:
    assert decode_value([0xFFC9], "int16", 0.1) == -5.5
    assert decode_value([0xFFC9], "uint16", 0.1) == 6548.1
    assert decode_value([0x7FC0, 0x0000], "float32", 1.0) is None  # NaN: no value
    assert decode_value([0x7F80, 0x0000], "float32", 1.0) is None  # inf
    assert ModbusMap(format="float32", ambient_register=None, scale=1.0).decode([(0x7FC0, 0)]) is None


def test_parser_reset_counts_dropped_bytes_as_garbage() -> None:
    gy = GyMcu90614Parser()
    gy.feed(b"\x5a\x5a\x45\x04\x0e")
    gy.reset()
    assert (gy.pending, gy.stats.garbage_bytes) == (0, 5)
    mb = ModbusReplyParser(1, 3, 1)
    mb.feed(b"\x01\x03\x02")
    mb.expect(1, 4, 2)
    assert (mb.pending, mb.stats.garbage_bytes) == (0, 3)


@pytest.mark.parametrize(
    "spec",
    ["garbage", "garbage=2", "split=-0.1", "silence=5", "silence=a+1", "unplug=1+0", "reset=x", "fever=1+",
     "lightning=1", "drop=0.1,,bogus=3"],
)
def test_sim_fault_spec_errors_are_clear(spec: str) -> None:
    with pytest.raises(SimError, match="faults"):
        parse_faults(spec)


def test_sim_fault_spec_and_people_parse() -> None:
    plan = parse_faults("garbage=0.1, unplug=20+2,silence=10+3,reset=30,unplug=40+1")
    assert plan.probabilities == {"garbage": 0.1}
    assert [t[:2] for t in plan.timed] == [("silence", 10.0), ("unplug", 20.0), ("reset", 30.0), ("unplug", 40.0)]
    people = parse_people("34.2,35.5*2")
    assert [(p.object_c, p.presentations) for p in people] == [(34.2, 1), (35.5, 2)]
    for bad in ("hot", "34.2*3", "99", "34.2*x"):
        with pytest.raises(SimError, match="people"):
            parse_people(bad)
