"""The gate's decode loop (hardware.md §2.4-2.5): a pushed picture goes through the capture
thread, the newest-frame slot, the fast path or the deep pass, and de-duplication."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge.camera import Camera, LatestFrame, PushSource
from edge.decode import Scanner, Sighting
from tests.camera.codes import ck1_like, frame, qr_grey, scaled


def wait_until(pred, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def gate():
    src = PushSource(fps=60)
    cam = Camera(src, backoff_s=(0.01, 0.05))
    got: list[Sighting] = []
    lock = threading.Lock()

    def on_new(s: Sighting) -> None:
        with lock:
            got.append(s)

    scanner = Scanner(cam.slot, on_new, hold_s=3.0, deep_interval_s=0.2)
    with cam, scanner:
        yield src, scanner, got
    assert not any(t.name in ("decode:fast", "decode:deep", "capture:camera") and t.is_alive()
                   for t in threading.enumerate())  # fmt: skip


def test_a_code_held_in_view_decides_once(gate):
    src, scanner, got = gate
    text = ck1_like(501, 350)
    src.push(frame([(qr_grey(text, px=4), 200, 100)]), hold_s=1.0)
    assert wait_until(lambda: len(got) >= 1)
    assert wait_until(lambda: scanner.frames > 30)  # many frames of the same code
    assert [[s.text for s in g.symbols] for g in got] == [[text]]
    g = got[0]
    assert g.path == "fast" and g.t_decoded >= g.frame.t_capture
    assert scanner.deduper.seen(text.encode())


def test_pass_and_driver_code_in_one_frame_come_in_position_order(gate):
    src, _, got = gate
    driver, truck = ck1_like(502, 330), ck1_like(503, 391)
    src.push(frame([(qr_grey(truck, px=4), 700, 300), (qr_grey(driver, px=4), 40, 20)]), hold_s=1.0)
    assert wait_until(lambda: len(got) >= 1)
    assert [s.text for s in got[0].symbols] == [driver, truck]


def test_a_code_only_the_deep_pass_reads(gate):
    src, scanner, got = gate
    text = "CK1:" + "ABCDEFGHIJ0123456789 $%*+-./:" * 11
    img = frame([(scaled(qr_grey(text, px=8), 1.9 / 8), 200, 100)], background=200, colour=False, texture=False)
    src.push(img, hold_s=None)
    assert wait_until(lambda: len(got) >= 1)
    assert got[0].path == "deep" and [s.text for s in got[0].symbols] == [text]
    assert wait_until(lambda: scanner.deep.passes >= 3)
    assert len(got) == 1  # read again by later deep passes, but held in view: no new decision


def test_bad_frames_do_not_stop_the_loop():
    slot = LatestFrame()
    got: list[Sighting] = []
    text = "E246813579"
    with Scanner(slot, got.append, deep_interval_s=0) as scanner:
        from edge.camera import Frame

        slot.put(Frame(np.zeros((10, 10), np.float32), 1, time.monotonic()))  # garbage from a broken source
        assert wait_until(lambda: scanner.frames >= 1)
        slot.put(Frame(frame([(qr_grey(text, px=6), 10, 10)]), 2, time.monotonic()))
        assert wait_until(lambda: len(got) == 1)
    assert got[0].symbols[0].text == text


def test_scanner_rejects_bad_configuration_at_start():
    with pytest.raises(ValueError):
        Scanner(LatestFrame(), print, formats=("Nope",))
    with pytest.raises(ValueError):
        Scanner(LatestFrame(), print, roi=(0, 0, 0, 10))
