"""edge.decode (hardware.md §2.3-2.5): real zxing-cpp and zbar on generated codes."""

from __future__ import annotations

import logging
import sys
import threading

import cv2
import numpy as np
import pytest
import zxingcpp

import edge.decode as dec
from edge.decode import BadImage, Decoder, Deduper, DeepPass, Symbol, decode, payload_key
from tests.camera.codes import ck1_like, frame, qr_grey, scaled
from tests.conftest import load_vector

QR = zxingcpp.BarcodeFormat.QRCode


def _zbar_or_skip():
    wrapper = dec._load_zbar()
    if wrapper is None:
        pytest.skip("libzbar0 not installed")
    return wrapper


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # folder and push frames are read-only (edge.camera)
    return a


def _inside(sym: Symbol, x: int, y: int, w: int, h: int, slack: int = 3) -> bool:
    return all(x - slack <= px <= x + w + slack and y - slack <= py <= y + h + slack for px, py in sym.position)


# -- what a gate camera sees -------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["fast", "full"])
def test_ck1_sized_code_in_colour_grey_and_bgra_frames(effort):
    text = ck1_like(1, 360)
    code = qr_grey(text, px=4)
    bgr = frame([(code, 400, 120)])
    results = {
        "bgr": decode(bgr, effort=effort),
        "grey": decode(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), effort=effort),
        "bgra": decode(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), effort=effort),
        "non-contiguous": decode(np.asfortranarray(bgr), effort=effort),
        "read-only grey": decode(_read_only(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)), effort=effort),
        "strided grey": decode(np.pad(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ((0, 0), (0, 7)))[:, :-7], effort=effort),
    }
    h, w = code.shape
    for kind, symbols in results.items():
        assert [s.text for s in symbols] == [text], kind
        s = symbols[0]
        assert s.raw == text.encode() and s.format == "QRCode" and s.decoder == "zxing-cpp", kind
        assert len(s.position) == 4 and _inside(s, 400, 120, w, h), (kind, s.position)


def test_credential_vectors_decode_to_their_exact_text():
    texts = [v["text"] for v in load_vector("credentials.json") if v["name"] in ("health_green", "pass_valid")]
    assert len(texts) == 2
    img = frame([(qr_grey(texts[0], px=4), 60, 60), (qr_grey(texts[1], px=4), 700, 300)])
    assert [s.text for s in decode(img, effort="fast")] == texts


def test_inverted_code_light_on_dark():
    text = ck1_like(2, 320)
    img = frame([(qr_grey(text, px=5, invert=True), 300, 100)], background=40)
    assert [s.text for s in decode(img, effort="fast")] == [text]


def test_two_codes_in_one_frame_sorted_top_then_left():
    a, b, c = ck1_like(3, 391), ck1_like(4, 325), "E123456789"
    img = frame([(qr_grey(b, px=4), 700, 40), (qr_grey(a, px=4), 40, 360), (qr_grey(c, px=6), 60, 30)])
    symbols = decode(img, effort="fast")
    # top first: c (y=30) and b (y=40) both above a; c is higher.
    assert [s.text for s in symbols] == [c, b, a]


def test_same_code_twice_at_two_places_is_two_symbols():
    text = "PASS-0042"
    code = qr_grey(text, px=6)
    symbols = decode(frame([(code, 50, 50), (code, 700, 300)]))
    assert [s.text for s in symbols] == [text, text]
    assert symbols[0].position != symbols[1].position


def test_structured_append_parts_read_without_crash():
    import segno

    payload = "".join(chr(65 + i % 26) for i in range(600))
    seq = segno.make_sequence(payload, symbol_count=3, error="m")
    parts = []
    for q in seq:
        m = np.pad(np.array([[bool(v) for v in r] for r in q.matrix]), 4)
        parts.append(cv2.resize(np.where(m, 0, 255).astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST))
    img = frame([(parts[0], 20, 100), (parts[1], 420, 100), (parts[2], 820, 100)])
    d = Decoder()
    symbols = d.decode(img, effort="full")
    assert "".join(s.text for s in sorted(symbols, key=lambda s: s.box[0])) == payload
    assert d.decoder_errors == 0


def test_structured_append_through_zbar_neither_raises_nor_returns_a_partial():
    wrapper = _zbar_or_skip()
    import segno

    payload = "Z" * 250 + "Y" * 250
    seq = segno.make_sequence(payload, symbol_count=2, error="m")
    parts = [qr_grey_from(q) for q in seq]
    alone = dec._zbar_scan(wrapper, np.ascontiguousarray(frame([(parts[0], 40, 40)], colour=False)), ("QRCODE",))
    assert alone == []  # one part of a sequence is not a payload (zbar: ZBAR_PARTIAL)
    both = frame([(parts[0], 40, 40), (parts[1], 640, 40)], colour=False)
    found = dec._zbar_scan(wrapper, np.ascontiguousarray(both), ("QRCODE",))
    assert [f.raw for f in found] == [payload.encode()]  # zbar joins a whole sequence


def qr_grey_from(q) -> np.ndarray:
    m = np.pad(np.array([[bool(v) for v in r] for r in q.matrix]), 4)
    return cv2.resize(np.where(m, 0, 255).astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)


def test_binary_payload_preserved_in_raw_by_both_decoders():
    payload = bytes(range(256))
    img = frame([(qr_grey(payload, px=4, error="l"), 200, 100)], colour=False)
    (sym,) = decode(img)
    assert sym.raw == payload and sym.decoder == "zxing-cpp"
    wrapper = _zbar_or_skip()
    (found,) = dec._zbar_scan(wrapper, np.ascontiguousarray(img), ("QRCODE",))
    # ZBAR_CFG_BINARY: zbar gives the same bytes, so both decoders share one de-dup key (§2.5).
    assert found.raw == payload
    assert payload_key(found.raw) == payload_key(sym.raw)


def test_utf8_text_payload():
    text = "通行证 Pass 12 – Zoë"
    (sym,) = decode(frame([(qr_grey(text.encode("utf-8"), px=5), 100, 100)]))
    assert sym.raw == text.encode("utf-8")


def test_4k_frame_positions_in_full_frame_pixels():
    text = ck1_like(5, 400)
    code = qr_grey(text, px=7)
    img = frame([(code, 2900, 1500)], size=(3840, 2160))
    for effort in ("fast", "full"):
        (sym,) = decode(img, effort=effort)
        assert sym.text == text
        assert _inside(sym, 2900, 1500, code.shape[1], code.shape[0])


def test_roi_finds_the_code_and_maps_positions_back():
    text = ck1_like(6, 330)
    code = qr_grey(text, px=4)
    img = frame([(code, 820, 360)])
    (whole,) = decode(img)
    (inroi,) = decode(img, roi=(700, 300, 560, 400))
    assert inroi.text == text
    assert all(abs(a - b) <= 2 for p, q in zip(whole.position, inroi.position, strict=True) for a, b in zip(p, q, strict=True))
    assert decode(img, roi=(0, 0, 600, 300)) == []  # the code is outside
    assert decode(img, roi=(5000, 5000, 10, 10)) == []  # the ROI is outside the frame
    assert decode(img, roi=[]) == [whole]  # the config's "empty = whole frame"


def test_small_code_read_by_the_candidate_retry_on_the_fast_path():
    """1.5 px per module: zxing-cpp locates it but cannot read it; the 2x crop can (§2.3 step 4)."""
    text = "CK1:" + "ABCDEFGHIJ0123456789 $%*+-./:" * 11
    img = frame([(scaled(qr_grey(text, px=8), 1.5 / 8), 200, 100)], background=200, colour=False, texture=False)
    raw = zxingcpp.read_barcodes(img, formats=QR, return_errors=True)
    assert not any(r.valid for r in raw) and any(not r.valid for r in raw), "precondition: located, not read"
    (sym,) = decode(img, effort="fast")
    assert sym.text == text and sym.decoder == "zxing-cpp+2x"
    assert _inside(sym, 200, 100, 130, 130, slack=8)


def test_small_code_read_by_the_whole_frame_upscale_on_the_full_path():
    text = "CK1:" + "ABCDEFGHIJ0123456789 $%*+-./:" * 11
    img = frame([(scaled(qr_grey(text, px=8), 1.9 / 8), 200, 100)], background=200, colour=False, texture=False)
    assert not any(r.valid for r in zxingcpp.read_barcodes(img, formats=QR)), "precondition"
    assert decode(img, effort="fast") == []  # the camera loop leaves it to the deep pass
    (sym,) = decode(img, effort="full")
    assert sym.text == text and sym.decoder == "zxing-cpp+2x"


def test_empty_frame_gives_nothing_on_both_paths():
    img = frame()
    assert decode(img, effort="fast") == [] and decode(img, effort="full") == []


def test_other_formats_only_when_asked():
    dm = zxingcpp.create_barcode("LOT-2024-77", zxingcpp.BarcodeFormat.DataMatrix)
    code = np.pad(np.asarray(dm.to_image(scale=6)), 24, constant_values=255)
    img = frame([(np.asarray(code), 300, 300)], colour=False)
    assert decode(img) == []
    (sym,) = decode(img, formats=("QRCode", "DataMatrix"))
    assert sym.text == "LOT-2024-77" and sym.format == "DataMatrix"


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.float32),
        np.zeros((10, 10), np.uint16),
        np.zeros((10, 10, 2), np.uint8),
        np.zeros((10, 10, 5), np.uint8),
        np.zeros(100, np.uint8),
        np.zeros((2, 10, 10, 3), np.uint8),
        [[0, 255], [255, 0]],
        b"\x89PNG garbage",
        None,
    ],
    ids=["float32", "uint16", "2ch", "5ch", "1d", "4d", "list", "bytes", "none"],
)
def test_garbage_input_raises_value_error(image):
    with pytest.raises(ValueError):
        decode(image)
    with pytest.raises(BadImage):
        decode(image, effort="fast")


@pytest.mark.parametrize("shape", [(0, 0), (0, 640), (480, 0), (0, 0, 3), (0, 10, 4)])
def test_zero_size_gives_empty_list(shape):
    assert decode(np.zeros(shape, np.uint8)) == []


def test_bad_options_raise_value_error():
    img = frame()
    for kwargs in (
        {"effort": "medium"},
        {"formats": ("QRCode", "NoSuchCode")},
        {"formats": ()},
        {"roi": (10, 10, 0, 5)},
        {"roi": (-1, 0, 5, 5)},
        {"roi": (1, 2, 3)},
        {"roi": ("a", 0, 5, 5)},
    ):
        with pytest.raises(ValueError):
            decode(img, **kwargs)


def test_noise_and_huge_frames_are_just_empty():
    rng = np.random.default_rng(0)
    assert decode(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), effort="full") == []
    assert decode(np.full((6000, 6000), 255, np.uint8), effort="fast") == []
    assert decode(np.zeros((1, 100000), np.uint8)) == []


# -- decoder robustness ------------------------------------------------------------------------


def test_decoder_exceptions_are_counted_not_raised(monkeypatch, caplog):
    text = ck1_like(7, 330)
    img = frame([(qr_grey(text, px=4), 100, 100)])

    def broken(*args, **kwargs):
        raise RuntimeError(f"boom {text}")  # an exception quoting the payload must not reach the log

    d = Decoder()
    monkeypatch.setattr(zxingcpp, "read_barcodes", broken)
    with caplog.at_level(logging.WARNING, logger="edge.decode"):
        found = d.decode(img, effort="full")
    assert d.decoder_errors >= 1
    assert [s.text for s in found] in ([], [text])  # zbar may still read it; nothing raised
    assert text not in caplog.text


def test_pyzbar_missing_runs_zxing_alone_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(dec, "_zbar_loaded", False)
    monkeypatch.setattr(dec, "_zbar_mod", None)
    monkeypatch.setitem(sys.modules, "pyzbar", None)  # import now fails as without libzbar
    monkeypatch.setitem(sys.modules, "pyzbar.wrapper", None)
    d = Decoder()
    text = ck1_like(8, 330)
    with caplog.at_level(logging.WARNING, logger="edge.decode"):
        assert [s.text for s in d.decode(frame([(qr_grey(text, px=4), 50, 50)]))] == [text]
        assert d.decode(frame(), effort="full") == []
        assert d.decode(frame(), effort="full") == []
    assert caplog.text.count("pyzbar=missing") == 1
    assert d.stats().pyzbar == "missing"
    assert dec.pyzbar_available()[0] is False


def test_crash_marker_disables_pyzbar_for_ten_minutes(tmp_path, caplog):
    _zbar_or_skip()
    marker = tmp_path / dec.ZBAR_MARKER_NAME
    marker.write_text("1234\n")  # a previous process died inside zbar
    now = [1000.0]
    with caplog.at_level(logging.ERROR, logger="edge.decode"):
        d = Decoder(state_dir=tmp_path, clock=lambda: now[0])
    assert "pyzbar=disabled" in caplog.text
    assert not marker.exists()
    assert d.stats().pyzbar == "disabled"
    calls = []
    real = dec._zbar_scan

    def spy(wrapper, gray, names):
        calls.append(marker.exists())  # the marker is on disk while zbar runs
        return real(wrapper, gray, names)

    import unittest.mock

    with unittest.mock.patch.object(dec, "_zbar_scan", spy):
        d.decode(frame(), effort="full")
        assert calls == []  # disabled: zbar not called
        now[0] += 599.0
        d.decode(frame(), effort="full")
        assert calls == []
        now[0] += 2.0
        d.decode(frame(), effort="full")
    assert calls and all(calls)
    assert d.stats().pyzbar == "ok"
    assert not marker.exists()  # removed after the call


def test_pyzbar_off_by_config():
    d = Decoder(pyzbar=False)
    assert d.stats().pyzbar == "off"
    assert d.decode(frame(), effort="full") == []


def test_symbol_repr_never_shows_the_payload():
    text = ck1_like(9, 320)
    (sym,) = decode(frame([(qr_grey(text, px=4), 40, 40)]))
    assert text not in repr(sym) and text[4:40] not in str(sym)


def test_concurrent_decodes_share_one_decoder():
    d = Decoder()
    texts = [ck1_like(20 + i, 320) for i in range(4)]
    images = [frame([(qr_grey(t, px=4), 100, 100)]) for t in texts]
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        results[i] = [s.text for _ in range(5) for s in d.decode(images[i], effort="full")]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == [texts[i]] * 5 for i in range(4))
    assert d.stats().calls == 20


# -- de-duplication (§2.5) ---------------------------------------------------------------------


def _sym(raw: bytes, x: int = 0) -> Symbol:
    return Symbol(raw.decode(), raw, "QRCode", ((x, 0), (x + 10, 0), (x + 10, 10), (x, 10)), "zxing-cpp")


def test_deduper_code_held_in_view_decides_once():
    d = Deduper(hold_s=3.0)
    a = _sym(b"CK1:AAA")
    assert d.filter([a], now=0.0) == [a]
    for t in range(1, 60):  # held for a minute: seen every second
        assert d.filter([a], now=float(t)) == []
    assert d.filter([], now=61.0) == []  # gone for 2 s: still remembered
    assert d.filter([a], now=61.5) == []
    assert d.filter([], now=64.6) == []  # last seen at 61.5: forgotten after 3 s
    assert len(d) == 0
    assert d.filter([a], now=64.7) == [a]  # shown again: a new decision


def test_deduper_new_symbols_keep_position_order_and_repeat_in_frame_once():
    d = Deduper(hold_s=3.0)
    pass_, driver = _sym(b"CK1:PASS", 0), _sym(b"CK1:DRIVER", 50)
    assert d.filter([pass_, driver, _sym(b"CK1:PASS", 90)], now=0.0) == [pass_, driver]
    assert d.filter([driver, pass_], now=1.0) == []


def test_deduper_memory_bounded_and_keyed_by_hash():
    d = Deduper(hold_s=1000.0, max_keys=100)
    for i in range(1000):
        d.filter([_sym(f"CODE{i}".encode())], now=float(i) / 1000)
    assert len(d) == 100
    assert all(len(k) == 32 for k in d._seen)  # SHA-256 digests, not payloads
    assert d.seen(b"CODE999", now=1.0) and not d.seen(b"CODE0", now=1.0)
    with pytest.raises(ValueError):
        Deduper(hold_s=-1)


def test_deduper_zero_hold_decides_every_sighting():
    d = Deduper(hold_s=0.0)
    a = _sym(b"X")
    assert d.filter([a], now=0.0) == [a] and d.filter([a], now=0.0) == [a]


# -- deep pass (§2.4) --------------------------------------------------------------------------


class _Item:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image


def test_deep_pass_reads_what_the_fast_path_left_and_respects_the_interval():
    text = "CK1:" + "ABCDEFGHIJ0123456789 $%*+-./:" * 11
    hard = frame([(scaled(qr_grey(text, px=8), 1.9 / 8), 200, 100)], background=200, colour=False, texture=False)
    got: list[tuple[object, list[Symbol]]] = []
    now = [0.0]
    deep = DeepPass(lambda item, syms: got.append((item, syms)), interval_s=1.0, clock=lambda: now[0])
    assert deep.offer(_Item(hard)) is False  # not started
    with deep:
        assert any(t.name == "decode:deep" for t in threading.enumerate())
        item = _Item(hard)
        assert decode(hard, effort="fast") == []
        assert deep.offer(item) is True
        assert deep.offer(_Item(hard)) is False  # busy or just finished: never queued
        assert deep.wait_idle(30)
        assert [s.text for s in got[0][1]] == [text] and got[0][0] is item
        now[0] += 0.5
        assert deep.offer(_Item(hard)) is False  # finished less than interval_s ago
        now[0] += 0.6
        assert deep.offer(_Item(frame())) is True
        assert deep.wait_idle(30)
    assert len(got) == 1 and deep.passes == 2  # the empty frame found nothing: no callback
    deep.stop()  # idempotent


def test_deep_pass_disabled_with_zero_interval_and_survives_callback_errors():
    off = DeepPass(lambda item, syms: None, interval_s=0).start()
    assert off.offer(_Item(frame())) is False
    off.stop()

    def bad(item, syms):
        raise RuntimeError("consumer bug")

    text = "E987654321"
    with DeepPass(bad, interval_s=0.001) as deep:
        assert deep.offer(_Item(frame([(qr_grey(text, px=6), 10, 10)])))
        assert deep.wait_idle(30)
        assert deep.found == 1
        # The worker is still alive after the callback raised.
        import time as _t

        _t.sleep(0.01)
        assert deep.offer(_Item(frame()))
        assert deep.wait_idle(30)
