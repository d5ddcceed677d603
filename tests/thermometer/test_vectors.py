"""Every worked case of thermometer_frames.json reproduces exactly (hardware.md §1.14)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from firmware_bridge.estimate import (
    EstimateSettings,
    MeasureSettings,
    body_estimate,
    body_exact,
    measure_samples,
)
from firmware_bridge.frames import crc16_modbus, crc16_wire, sum8
from firmware_bridge.protocols.ascii_lines import (
    AMBIENT_PATTERN,
    BAD_PATTERN,
    BARE_PATTERN,
    MAX_LINE_BYTES,
    OBJECT_PATTERN,
    AsciiLineParser,
)
from firmware_bridge.protocols.gy_mcu90614 import GyMcu90614Parser, command, encode_frame
from firmware_bridge.protocols.modbus_rtu import (
    ModbusException,
    ModbusMap,
    ModbusReply,
    ModbusReplyParser,
)
from firmware_bridge.records import Reading
from tests.conftest import VECTORS, load_vector


def _vec() -> dict:
    return load_vector("thermometer_frames.json")


def _ids(section: str, key: str) -> list[str]:
    """Case ids for parametrize; read directly so that collection works without the
    vectors folder (the tests then skip visibly through load_vector)."""
    try:
        node = json.loads((VECTORS / "thermometer_frames.json").read_text(encoding="utf-8"))
        for part in section.split("."):
            node = node[part]
        return [str(c.get("id", i)) for i, c in enumerate(node[key])]
    except (OSError, KeyError, ValueError):
        return ["vectors-absent"]


def _case(section: str, key: str, case_id: str) -> dict:
    node = _vec()
    for part in section.split("."):
        node = node[part]
    for i, c in enumerate(node[key]):
        if str(c.get("id", i)) == case_id:
            return c
    pytest.skip(f"no case {case_id}")


def _pairs(samples) -> list[dict]:
    return [{"object_c": s.object_c, "ambient_c": s.ambient_c} for s in samples]


# --- GY-MCU90614 -------------------------------------------------------------------------


def test_gy_commands_match_the_vectors() -> None:
    by_name = {c["name"]: bytes.fromhex(c["hex"]) for c in _vec()["gy_mcu90614"]["commands"]}
    assert len(by_name) == 6
    for frame in by_name.values():
        assert command(frame[1]) == frame and sum8(frame[:2]) == frame[2]


@pytest.mark.parametrize("case_id", _ids("gy_mcu90614", "stream_cases"))
def test_gy_stream_case(case_id: str) -> None:
    case = _case("gy_mcu90614", "stream_cases", case_id)
    parser = GyMcu90614Parser()
    fed = 0
    for chunk_hex, expected in zip(case["chunks"], case["expect"]["readings_per_chunk"], strict=True):
        chunk = bytes.fromhex(chunk_hex)
        fed += len(chunk)
        assert _pairs(parser.feed(chunk)) == expected
    exp = case["expect"]
    assert parser.stats.as_dict() == {k: exp[k] for k in parser.stats.as_dict()}
    assert parser.pending == exp["pending_bytes"]
    # §1.1 invariant: every byte is in an accepted frame, counted garbage, or pending.
    assert parser.accepted_bytes + parser.stats.garbage_bytes + parser.pending == fed


@pytest.mark.parametrize("case_id", _ids("gy_mcu90614", "stream_cases"))
def test_gy_stream_case_byte_by_byte_gives_the_same_readings(case_id: str) -> None:
    case = _case("gy_mcu90614", "stream_cases", case_id)
    data = b"".join(bytes.fromhex(c) for c in case["chunks"])
    parser = GyMcu90614Parser()
    got = [s for b in data for s in parser.feed(bytes((b,)))]
    assert _pairs(got) == [r for chunk in case["expect"]["readings_per_chunk"] for r in chunk]
    assert parser.stats.frames == case["expect"]["frames"]


def test_gy_encode_frame_round_trips_the_worked_frames() -> None:
    for case in _vec()["gy_mcu90614"]["stream_cases"]:
        exp = case["expect"]
        if len(case["chunks"]) == 1 and exp["frames"] == 1 and not exp["garbage_bytes"] and not exp["other_frames"]:
            (r,) = case["expect"]["readings_per_chunk"][0]
            assert encode_frame(r["object_c"], r["ambient_c"]) == bytes.fromhex(case["chunks"][0])


# --- Modbus RTU ------------------------------------------------------------------------------


def test_modbus_crc_cases_and_pymodbus_cross_check() -> None:
    from pymodbus.framer import FramerRTU

    for case in _vec()["modbus_rtu"]["crc"]["cases"]:
        data = bytes.fromhex(case["data"])
        assert crc16_modbus(data) == int(case["crc"], 16)
        assert crc16_wire(data) == bytes.fromhex(case["wire"])
        assert data + crc16_wire(data) == bytes.fromhex(case["frame"])
        assert crc16_modbus(bytes.fromhex(case["frame"])) == 0  # the residue check
        # pymodbus returns the two bytes already in wire order (hardware.md §1.4 note).
        assert FramerRTU.compute_CRC(data) == int.from_bytes(crc16_wire(data), "big")


@pytest.mark.parametrize("case_id", _ids("modbus_rtu", "exchanges"))
def test_modbus_exchange(case_id: str) -> None:
    vec = _vec()["modbus_rtu"]
    case = _case("modbus_rtu", "exchanges", case_id)
    cfg = {k: v for k, v in vec["config_defaults"].items() if k != "note"}
    cfg.update(case["config"])
    mmap = ModbusMap(**cfg)
    (request,) = mmap.requests()
    assert request.frame == bytes.fromhex(case["request"])
    parser = ModbusReplyParser(mmap.address, mmap.function, request.count)
    exp = case["expect"]
    completed_at = None
    result = None
    for i, chunk in enumerate(case["reply_chunks"]):
        got = parser.feed(bytes.fromhex(chunk))
        if got and completed_at is None:
            completed_at, result = i, got[0]
    assert completed_at == exp["complete_after_chunk"]
    want = exp["result"]
    if want["kind"] == "reading":
        assert isinstance(result, ModbusReply)
        assert list(result.registers) == want["registers"]
        sample = mmap.decode([result.registers])
        assert sample is not None
        assert (sample.object_c, sample.ambient_c) == (want["object_c"], want["ambient_c"])
    elif want["kind"] == "exception":
        assert isinstance(result, ModbusException) and result.code == want["code"]
    else:
        assert want["kind"] == "timeout" and result is None
    assert parser.stats.as_dict() == {k: exp[k] for k in parser.stats.as_dict()}
    assert parser.pending == exp["pending_bytes"]


def test_modbus_exception_text_is_what_the_technician_reads() -> None:
    assert ModbusException(2).text == (
        "modbus exception 02 (illegal data address): check [thermometer.modbus] registers"
    )


def test_modbus_good_replies_decode_alike_in_pymodbus() -> None:
    """The independent decoder agrees on every good reply, fed that reply alone."""
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU

    compared = 0
    for case in _vec()["modbus_rtu"]["exchanges"]:
        want = case["expect"]["result"]
        if want["kind"] != "reading":
            continue
        data = b"".join(bytes.fromhex(c) for c in case["reply_chunks"])
        frame = data[-(5 + 2 * len(want["registers"])) :]
        _, pdu = FramerRTU(DecodePDU(False)).handleFrame(frame, 0, 0)
        assert pdu is not None and list(pdu.registers) == want["registers"], case["id"]
        compared += 1
    assert compared >= 10


# --- ASCII lines -----------------------------------------------------------------------------


def test_ascii_default_patterns_are_the_vectors_patterns() -> None:
    pats = _vec()["ascii"]["patterns"]
    assert (pats["object"], pats["ambient"], pats["bare"], pats["bad"], pats["max_line_bytes"]) == (
        OBJECT_PATTERN,
        AMBIENT_PATTERN,
        BARE_PATTERN,
        BAD_PATTERN,
        MAX_LINE_BYTES,
    )


@pytest.mark.parametrize("index", range(len(_ids("ascii", "line_cases"))))
def test_ascii_line_case(index: int) -> None:
    cases = _vec()["ascii"]["line_cases"]
    case = cases[index]
    parser = AsciiLineParser(unit=case["unit"])
    got = parser.feed(bytes.fromhex(case["line_hex"]))
    exp = case["expect"]
    assert parser.stats.lines == 1 and parser.pending == 0
    if exp["kind"] == "reading":
        assert _pairs(got) == [{"object_c": exp["object_c"], "ambient_c": exp["ambient_c"]}]
        assert parser.stats.readings == 1
    else:
        assert got == []
        assert getattr(parser.stats, exp["kind"]) == 1


@pytest.mark.parametrize("case_id", _ids("ascii", "stream_cases"))
def test_ascii_stream_case(case_id: str) -> None:
    case = _case("ascii", "stream_cases", case_id)
    parser = AsciiLineParser()
    for chunk, expected in zip(case["chunks"], case["expect"]["readings_per_chunk"], strict=True):
        assert _pairs(parser.feed(bytes.fromhex(chunk))) == expected
    exp = case["expect"]
    assert parser.stats.as_dict() == {k: exp[k] for k in parser.stats.as_dict()}
    assert parser.pending == exp["pending_bytes"]


# --- Body estimate and measurement ------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(_ids("body_estimate", "cases"))))
def test_body_estimate_case(index: int) -> None:
    case = _vec()["body_estimate"]["cases"][index]
    s = EstimateSettings(case["offset_c"], case["ambient_k"], case["ambient_default_c"])
    assert body_exact(case["object_c"], case["ambient_c"], s) == Decimal(case["exact"])
    assert str(body_exact(case["object_c"], case["ambient_c"], s)) == case["exact"]
    body = body_estimate(case["object_c"], case["ambient_c"], s)
    assert float(body) == case["body_c"]
    assert (body >= Decimal("37.3")) == case["fever_at_37_3"]


T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("case_id", _ids("measurement", "cases"))
def test_measurement_case(case_id: str) -> None:
    vec = _vec()["measurement"]
    case = _case("measurement", "cases", case_id)
    assert case["config"] == "defaults"
    d = vec["defaults"]
    settings = MeasureSettings(**{k: v for k, v in d.items() if k != "max_age_s"})
    samples = [
        Reading(s["object_c"], s["ambient_c"], 0.0, T0 + timedelta(seconds=s["t"]), s["t"], "test")
        for s in case["samples"]
    ]
    m, key = measure_samples(samples, at=case["at"], max_age_s=d["max_age_s"], settings=settings,
                             estimate=EstimateSettings())
    exp = case["expect"]
    assert m.status == exp["status"]
    assert m.reason == exp.get("reason")
    if exp["status"] == "measured":
        assert (m.object_c, m.ambient_c, m.samples, m.spread_c, m.last_sample_mono, m.body_c) == (
            exp["object_c"], exp["ambient_c"], exp["samples"], exp["spread_c"], exp["last_sample_t"],
            exp["body_c"],
        )
        assert m.body_centi_c == round(exp["body_c"] * 100) and m.body_centi_c % 10 == 0
        assert m.measured_at == T0 + timedelta(seconds=exp["last_sample_t"])
        assert key is not None
        # §1.8 step 6: once used, the same episode gives no second measurement.
        again, _ = measure_samples(samples, at=case["at"], max_age_s=d["max_age_s"], settings=settings,
                                   estimate=EstimateSettings(), used={key})
        assert (again.status, again.reason) == ("no_measurement", "no_subject")
    else:
        assert key is None and m.body_centi_c is None
        if "body_c" in exp:
            assert m.body_c == exp["body_c"]
