"""edge.camera (hardware.md §2.1-2.2): every source type, the newest-frame slot, reconnection.

Real files, folders, an MJPG .avi written by OpenCV and a real FFMPEG HTTP stream on loopback;
only the V4L2 camera itself is simulated (a fake capture object behind a device-node file the
test removes and puts back).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import (
    Camera,
    DeviceSource,
    EndOfSource,
    FileSource,
    FolderSource,
    Frame,
    LatestFrame,
    PushSource,
    SourceAbsent,
    SourceUnavailable,
    StreamSource,
    open_source,
    redact_url,
)
from edge.config import CameraConfig
from edge.decode import decode
from tests.camera.codes import ck1_like, frame, qr_grey, write_video

FAST_BACKOFF = (0.01, 0.02, 0.05)


def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def flat(value: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, np.uint8)


def write_image(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())


# -- the slot ----------------------------------------------------------------------------------


def test_latest_frame_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrame()
    assert slot.get(0, timeout=0.01) is None
    for seq in (1, 2, 3):
        slot.put(Frame(flat(seq), seq, float(seq)))
    f = slot.get(0, timeout=1)
    assert f is not None and f.seq == 3 and slot.dropped == 2
    assert slot.get(3, timeout=0.01) is None  # nothing newer than what we have
    slot.put(Frame(flat(4), 4, 4.0))
    assert slot.dropped == 2  # frame 3 was taken, so 4 replaced nothing unseen
    assert slot.get(3, timeout=1).seq == 4


def test_latest_frame_get_waits_for_a_newer_frame():
    slot = LatestFrame()
    slot.put(Frame(flat(1), 1, 1.0))
    got: list[Frame | None] = []
    t = threading.Thread(target=lambda: got.append(slot.get(1, timeout=10)))
    t.start()
    time.sleep(0.05)
    assert not got
    slot.put(Frame(flat(2), 2, 2.0))
    t.join(10)
    assert got and got[0] is not None and got[0].seq == 2


def test_frame_is_frozen():
    f = Frame(flat(0), 1, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.seq = 2  # type: ignore[misc]


# -- folder ------------------------------------------------------------------------------------


def test_folder_source_order_hold_loop_and_skips(tmp_path, caplog):
    write_image(tmp_path / "a.png", flat(10))
    write_image(tmp_path / "b.jpg", flat(120))
    write_image(tmp_path / "c.webp", flat(240))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "notes.txt").write_text("not an image")
    write_image(tmp_path / ".hidden.png", flat(77))
    src = FolderSource(tmp_path, fps=10, image_hold_s=0.3)  # 3 frames per picture
    assert src.interval_s == pytest.approx(0.1)
    src.open()
    values = []
    for _ in range(12):
        img = src.read()
        assert img is not None and img.shape == (240, 320, 3)
        assert not img.flags.writeable  # nothing may write into a frame the decoder holds
        values.append(int(img[0, 0, 0]))
    assert [round(v / 10) * 10 for v in values] == [10] * 3 + [120] * 3 + [240] * 3 + [10] * 3
    assert "corrupt.png" in caplog.text
    src.close()


def test_folder_source_picks_up_new_files_and_stops_without_loop(tmp_path):
    write_image(tmp_path / "1.png", flat(50))
    src = FolderSource(tmp_path, fps=10, image_hold_s=0.1, loop=False)
    src.open()
    assert int(src.read()[0, 0, 0]) == 50
    write_image(tmp_path / "2.png", flat(200))  # the demo adds a picture
    assert int(src.read()[0, 0, 0]) == 200
    with pytest.raises(EndOfSource):
        src.read()


def test_folder_missing_is_absent_empty_is_no_frames_then_ok(tmp_path):
    folder = tmp_path / "demo"
    cam = Camera(FolderSource(folder, fps=50, image_hold_s=0.1), backoff_s=FAST_BACKOFF, no_frames_after_s=0.3)
    with cam:
        assert wait_until(lambda: cam.status().status == "absent")
        folder.mkdir()
        assert wait_until(lambda: cam.status().status == "no_frames")
        write_image(folder / "x.png", flat(99))
        assert wait_until(lambda: cam.status().status == "ok" and cam.status().fps > 0)
        st = cam.status()
        assert st.width == 320 and st.height == 240 and st.fps > 0 and st.reopens >= 1
        assert st.heartbeat() == {"status": "ok", "fps": st.fps}
        assert any(t.name == "capture:camera" for t in threading.enumerate())
        # The folder vanishes (SD card pulled, demo reset) and comes back.
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        assert wait_until(lambda: cam.status().status == "absent")
        seq_before = cam.status().frames
        folder.mkdir()
        write_image(folder / "y.png", flat(33))
        assert wait_until(lambda: cam.status().status == "ok" and cam.status().frames > seq_before)
    assert not cam.running


def test_camera_on_a_folder_of_codes_feeds_the_decoder(tmp_path):
    texts = [ck1_like(101, 330), ck1_like(102, 390)]
    for i, t in enumerate(texts):
        write_image(tmp_path / f"{i}.png", frame([(qr_grey(t, px=4), 100 + 200 * i, 100)]))
    cam = Camera(FolderSource(tmp_path, fps=40, image_hold_s=0.1), backoff_s=FAST_BACKOFF)
    seen: set[str] = set()
    with cam:
        seq = 0
        end = time.monotonic() + 20
        while seen != set(texts) and time.monotonic() < end:
            f = cam.slot.get(seq, timeout=2)
            assert f is not None and f.seq > seq
            seq = f.seq
            seen.update(s.text for s in decode(f.image, effort="fast"))
    assert seen == set(texts)


# -- video file --------------------------------------------------------------------------------


@pytest.fixture
def video(tmp_path) -> tuple[Path, list[str]]:
    texts = [ck1_like(201, 320), "E555000111"]
    frames = []
    for i in range(12):
        if i < 4:
            frames.append(frame([(qr_grey(texts[0], px=4), 80, 60)]))
        elif i < 8:
            frames.append(frame())
        else:
            frames.append(frame([(qr_grey(texts[1], px=8), 500, 200)]))
    path = tmp_path / "gate.avi"
    write_video(str(path), frames, fps=10)
    return path, texts


def test_file_source_reads_every_frame_then_ends(video):
    path, texts = video
    src = FileSource(path, realtime=False, loop=False)
    src.open()
    assert src.interval_s is None and src.granted["fps"] == pytest.approx(10)
    images = []
    with pytest.raises(EndOfSource):
        while True:
            img = src.read()
            assert img is not None
            images.append(img)
    src.close()
    assert len(images) == 12
    found = [[s.text for s in decode(im, effort="fast")] for im in images]
    assert found == [[texts[0]]] * 4 + [[]] * 4 + [[texts[1]]] * 4


def test_file_source_loops_and_paces_in_realtime(video):
    path, _ = video
    src = FileSource(path, realtime=True, loop=True)
    src.open()
    assert src.interval_s == pytest.approx(0.1)
    assert all(src.read() is not None for _ in range(30))  # 2.5 times round
    src.close()


def test_file_source_missing_and_garbage(tmp_path):
    with pytest.raises(SourceAbsent):
        FileSource(tmp_path / "none.avi").open()
    bad = tmp_path / "bad.avi"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SourceUnavailable):
        FileSource(bad).open()


def test_camera_on_a_file_without_loop_ends(video):
    path, _ = video
    cam = Camera(FileSource(path, realtime=False, loop=False), backoff_s=FAST_BACKOFF)
    with cam:
        assert cam.ended.wait(15)
    st = cam.status()
    assert st.frames == 12 and st.source == f"file:{path}"
    assert cam.slot.peek() is not None and cam.slot.peek().seq == 12


# -- stream ------------------------------------------------------------------------------------


@pytest.fixture
def http_video(video):
    path, texts = video
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}", texts
    srv.shutdown()
    srv.server_close()


def test_stream_source_over_http_with_ffmpeg(http_video):
    base, texts = http_video
    src = StreamSource(f"{base}/gate.avi", timeout_ms=3000)
    src.open()
    assert os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    images = [src.read() for _ in range(12)]
    src.close()
    assert all(im is not None for im in images)
    assert [s.text for s in decode(images[0], effort="fast")] == [texts[0]]
    with pytest.raises(SourceUnavailable):
        StreamSource(f"{base}/missing.avi", timeout_ms=2000).open()


def test_stream_label_never_shows_the_password():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/stream1") == "rtsp://admin:***@10.0.0.5:554/stream1"
    assert "s3cret" not in StreamSource("rtsp://admin:s3cret@cam/1").label
    assert redact_url("http://cam.local/mjpg") == "http://cam.local/mjpg"
    with pytest.raises(ValueError):
        StreamSource("")


# -- the V4L2 device, simulated --------------------------------------------------------------


class FakeV4L2:
    """What cv2.VideoCapture(node, CAP_V4L2) does with a UVC camera on that node.

    Like many UVC cameras over USB 2, it grants 1280x720 only in MJPG: the size must be asked
    after the format, or the driver settles on YUYV 640x480. Frames come at ~100 fps while the
    node exists; unplugged, reads fail.
    """

    def __init__(self, node: str, api: int, *, broken: bool = False) -> None:
        self.node, self.api, self.broken = node, api, broken
        self.calls: list[tuple[int, float]] = []
        self.fourcc = cv2.VideoWriter.fourcc(*"YUYV")
        self.size = (640, 480)
        self.fps = 30.0
        self.released = False
        self.n = 0
        self._open = os.path.exists(node)

    def isOpened(self) -> bool:
        return self._open

    def set(self, prop: int, value: float) -> bool:
        self.calls.append((prop, value))
        if prop == cv2.CAP_PROP_FOURCC:
            self.fourcc = int(value)
        elif prop == cv2.CAP_PROP_FRAME_WIDTH:
            mjpg = self.fourcc == cv2.VideoWriter.fourcc(*"MJPG")
            self.size = (int(value), self.size[1]) if mjpg else (640, 480)
        elif prop == cv2.CAP_PROP_FRAME_HEIGHT:
            mjpg = self.fourcc == cv2.VideoWriter.fourcc(*"MJPG")
            self.size = (self.size[0], int(value)) if mjpg else (640, 480)
        elif prop == cv2.CAP_PROP_FPS:
            self.fps = float(value)
        return True

    def get(self, prop: int) -> float:
        return {
            cv2.CAP_PROP_FOURCC: float(self.fourcc),
            cv2.CAP_PROP_FRAME_WIDTH: float(self.size[0]),
            cv2.CAP_PROP_FRAME_HEIGHT: float(self.size[1]),
            cv2.CAP_PROP_FPS: self.fps,
        }.get(prop, 0.0)

    def read(self, *args: object) -> tuple[bool, np.ndarray | None]:
        assert not args, "never pass an output array to cap.read() (hardware.md §2.2)"
        time.sleep(0.01)  # a driver blocks until the next frame
        if self.released or self.broken or not os.path.exists(self.node):
            return False, None
        self.n += 1
        return True, np.full((self.size[1], self.size[0], 3), self.n % 256, np.uint8)

    def release(self) -> None:
        self.released = True


class FakeFactory:
    def __init__(self, **kwargs: object) -> None:
        self.made: list[FakeV4L2] = []
        self.kwargs = kwargs

    def __call__(self, node: str, api: int) -> FakeV4L2:
        cap = FakeV4L2(node, api, **self.kwargs)  # type: ignore[arg-type]
        self.made.append(cap)
        return cap


def test_device_source_sets_mjpg_before_size_and_reads_back(tmp_path):
    node = tmp_path / "video0"
    node.touch()
    factory = FakeFactory()
    src = DeviceSource(str(node), width=1280, height=720, fps=30, capture_factory=factory)
    src.open()
    cap = factory.made[0]
    assert cap.api == cv2.CAP_V4L2
    props = [p for p, _ in cap.calls]
    assert props.index(cv2.CAP_PROP_FOURCC) < props.index(cv2.CAP_PROP_FRAME_WIDTH)
    assert (cv2.CAP_PROP_BUFFERSIZE, 1) in cap.calls
    assert src.granted == {"width": 1280, "height": 720, "fps": 30.0, "fourcc": "MJPG"}
    img = src.read()
    assert img is not None and img.shape == (720, 1280, 3)
    src.close()
    assert cap.released


def test_device_index_maps_to_dev_video_node():
    src = DeviceSource("3", capture_factory=FakeFactory())
    assert src.device == 3 and src.node == "/dev/video3" and src.label == "device:/dev/video3"


def test_device_unplugged_and_plugged_back_is_reopened(tmp_path):
    node = tmp_path / "usb-cam-video-index0"
    node.touch()
    factory = FakeFactory()
    cam = Camera(
        DeviceSource(str(node), capture_factory=factory),
        backoff_s=FAST_BACKOFF,
        no_frames_after_s=0.5,
    )
    with cam:
        assert wait_until(lambda: cam.status().status == "ok")
        node.unlink()  # the guard kicks the cable
        assert wait_until(lambda: cam.status().status == "absent")
        frames_while_away = cam.status().frames
        time.sleep(0.1)
        assert cam.status().status == "absent" and cam.status().fps == 0.0
        node.touch()
        assert wait_until(lambda: cam.status().status == "ok" and cam.status().frames > frames_while_away)
        # seq keeps counting across the reopen, so a consumer waiting on after_seq never stalls.
        f = cam.slot.get(frames_while_away, timeout=5)
        assert f is not None and f.seq > frames_while_away
        assert cam.status().reopens >= 1
    assert len(factory.made) >= 2
    assert all(c.released for c in factory.made)


def test_device_that_opens_but_gives_nothing_is_no_frames(tmp_path):
    node = tmp_path / "video9"
    node.touch()
    factory = FakeFactory(broken=True)
    cam = Camera(DeviceSource(str(node), capture_factory=factory), backoff_s=FAST_BACKOFF, no_frames_after_s=0.2)
    with cam:
        assert wait_until(lambda: len(factory.made) >= 2)  # gave up on the first, reopened
        st = cam.status()
        assert st.status == "no_frames" and st.frames == 0


def test_missing_device_is_absent_without_opening(tmp_path):
    factory = FakeFactory()
    cam = Camera(DeviceSource(str(tmp_path / "nope"), capture_factory=factory), backoff_s=FAST_BACKOFF)
    with cam:
        assert wait_until(lambda: cam.status().status == "absent")
    assert factory.made == []


# -- push source (demo, tests) -------------------------------------------------------------------


def test_push_source_shows_a_picture_for_its_hold_then_background():
    now = [0.0]
    src = PushSource(fps=30, size=(320, 240), clock=lambda: now[0])
    src.open()
    assert int(src.read()[0, 0, 0]) == 128
    pic = flat(7)
    src.push(pic, hold_s=1.5)
    pic[:] = 99  # the caller's array is copied: later changes do not leak into frames
    assert int(src.read()[0, 0, 0]) == 7
    now[0] = 1.6
    assert int(src.read()[0, 0, 0]) == 128
    src.push(flat(9), hold_s=None)
    now[0] = 1000.0
    assert int(src.read()[0, 0, 0]) == 9
    src.clear()
    assert int(src.read()[0, 0, 0]) == 128
    with pytest.raises(ValueError):
        src.push(np.zeros((4, 4), np.float32))


def test_push_source_through_the_capture_thread_and_unplug():
    text = ck1_like(301, 330)
    src = PushSource(fps=100)
    cam = Camera(src, backoff_s=FAST_BACKOFF, no_frames_after_s=0.3)
    with cam:
        assert wait_until(lambda: cam.status().status == "ok")
        src.push(frame([(qr_grey(text, px=4), 300, 100)]), hold_s=5)
        found = False
        seq = 0
        end = time.monotonic() + 10
        while not found and time.monotonic() < end:
            f = cam.slot.get(seq, timeout=1)
            if f is not None:
                seq = f.seq
                found = [s.text for s in decode(f.image, effort="fast")] == [text]
        assert found
        src.unplug()
        assert wait_until(lambda: cam.status().status == "absent")
        src.plug()
        assert wait_until(lambda: cam.status().status == "ok")


# -- configuration ---------------------------------------------------------------------------------


def test_open_source_builds_each_kind_from_config(tmp_path):
    assert isinstance(open_source(CameraConfig(source="folder", path=tmp_path)), FolderSource)
    f = open_source(CameraConfig(source="file", path=tmp_path / "v.avi", realtime=False, loop=False))
    assert isinstance(f, FileSource) and not f.realtime and not f.loop
    d = open_source(CameraConfig(source="device", device="/dev/v4l/by-id/usb-cam", width=640, height=480))
    assert isinstance(d, DeviceSource) and d.node == "/dev/v4l/by-id/usb-cam" and d.width == 640
    s = open_source(CameraConfig(source="stream", url="rtsp://u:p@cam/1"))
    assert isinstance(s, StreamSource) and "p@" not in s.label
    with pytest.raises(ValueError):
        open_source(CameraConfig(source="stream"))
    cam = Camera.from_config(CameraConfig(source="folder", path=tmp_path, no_frames_after_s=4.0))
    assert cam.no_frames_after_s == 4.0


def test_bad_camera_arguments():
    with pytest.raises(ValueError):
        FolderSource("x", fps=0)
    with pytest.raises(ValueError):
        Camera(PushSource(), backoff_s=())
    with pytest.raises(ValueError):
        PushSource(fps=0)
