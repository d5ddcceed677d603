"""Frame sources and the capture thread (``specs/hardware.md`` §2.1-2.2).

A guard should never wait for the camera, so the decoder only ever sees the newest frame:

- A *frame source* gives images: a V4L2 device (USB UVC camera), an RTSP/HTTP stream, a video
  file, an image folder, or a :class:`PushSource` that a program (the demo, tests) feeds. All
  sit behind :class:`FrameSource`; :func:`open_source` builds the configured one from
  ``[camera]``.
- The thread ``capture:camera`` (:class:`Camera`) reads the source and puts each image, as a
  :class:`Frame` stamped with ``time.monotonic()``, into a :class:`LatestFrame` slot that holds
  only the newest frame (older ones are counted as ``dropped``). MJPEG decoding happens in this
  thread, outside the decision budget (§2.7).
- ``read()`` failing 10 times in a row, or no frame for ``no_frames_after_s`` → release and
  reopen with backoff 0.5, 1, 2, 5, 5… s. The status the console and heartbeats show is ``ok``,
  ``no_frames`` (opened or retrying, nothing arriving) or ``absent`` (device node, file or folder
  missing), with the measured fps.
- ``cap.read()`` is never given an output array: the deep pass (§2.4) may still hold the previous
  frame. Frames from the folder and push sources are read-only arrays shared between the frames
  that show the same picture; nothing writes into a frame's image.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edge.config import CameraConfig
from edge.errors import HardwareError

__all__ = [
    "IMAGE_SUFFIXES",
    "Camera",
    "CameraError",
    "CameraStatus",
    "DeviceSource",
    "EndOfSource",
    "FileSource",
    "FolderSource",
    "Frame",
    "FrameSource",
    "LatestFrame",
    "PushSource",
    "SourceAbsent",
    "SourceUnavailable",
    "StreamSource",
    "open_source",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: §2.2: reopen delays, the last one repeated.
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
MAX_READ_FAILURES = 10
#: §2.1: stream open/read timeouts.
STREAM_TIMEOUT_MS = 5000

Status = Literal["ok", "no_frames", "absent"]
CaptureFactory = Callable[..., Any]


class CameraError(HardwareError):
    """A frame source cannot give frames."""


class SourceAbsent(CameraError, FileNotFoundError):
    """The device node, video file or image folder does not exist (status ``absent``)."""


class SourceUnavailable(CameraError):
    """The source exists but cannot be opened or read (status ``no_frames``)."""


class EndOfSource(CameraError, EOFError):
    """A video file or folder without ``loop`` has given its last frame."""


@dataclass(frozen=True)
class Frame:
    """One camera frame (§2.2).

    ``image`` is BGR uint8 HxWx3 (or HxW grey), never written after capture; ``seq`` counts
    1, 2, 3… per :class:`Camera` (it keeps counting across reopens, so a consumer waiting for
    ``after_seq`` never stalls); ``t_capture`` is ``time.monotonic()`` when ``read()`` returned,
    where frame-to-relay latency is measured from.
    """

    image: np.ndarray
    seq: int
    t_capture: float

    def __repr__(self) -> str:
        return f"Frame(seq={self.seq}, shape={self.image.shape}, t_capture={self.t_capture:.3f})"


class LatestFrame:
    """A one-frame slot: ``put`` replaces, ``get`` waits for something newer.

    The decoder therefore works on the newest frame, never on a backlog. ``dropped`` counts
    frames replaced before anyone took them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self.dropped = 0
        self.put_count = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None and not self._taken:
                self.dropped += 1
            self._frame = frame
            self._taken = False
            self.put_count += 1
            self._cond.notify_all()

    def get(self, after_seq: int = 0, timeout: float | None = None) -> Frame | None:
        """The newest frame with ``seq > after_seq``, waiting up to ``timeout`` s (None = forever)."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._frame is not None and self._frame.seq > after_seq, timeout
            )
            if not ok or self._frame is None:
                return None
            self._taken = True
            return self._frame

    def peek(self) -> Frame | None:
        """The held frame, without taking it or waiting."""
        with self._cond:
            return self._frame

    def wake(self) -> None:
        """Wake waiters (on shutdown) without putting a frame."""
        with self._cond:
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# Frame sources


class FrameSource(ABC):
    """Where frames come from. ``open`` → ``read`` … → ``close``; reopened after failures.

    ``read`` returns an image, or None when no frame came this time (counted as a read failure);
    it raises :class:`SourceAbsent` when the source disappeared and :class:`EndOfSource` at the
    end of a file that does not loop. ``interval_s`` is the pacing the capture thread applies
    between reads (None: ``read`` blocks on its own, or as fast as possible).
    """

    kind: str = "source"
    interval_s: float | None = None

    @property
    @abstractmethod
    def label(self) -> str:
        """A name for logs and the console (no passwords)."""

    def exists(self) -> bool:
        """Whether the device node, file or folder is there (False → status ``absent``)."""
        return True

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def granted(self) -> dict[str, Any]:
        """What the device actually gave (width, height, fps, fourcc), once opened."""
        return {}


def _fourcc_text(value: float) -> str:
    n = int(value)
    text = "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and n else f"0x{n:08x}"


def _release(cap: Any) -> None:
    try:
        cap.release()
    except Exception:
        log.exception("camera release failed")


class DeviceSource(FrameSource):
    """A USB UVC camera through V4L2 (§2.1).

    MJPG is requested **before** the size (YUYV at 720p is often limited to ~10 fps over USB 2),
    then width, height, fps and a one-frame driver buffer; what the driver granted is read back
    and logged. ``capture_factory`` is ``cv2.VideoCapture``; tests give a simulated device.
    """

    kind = "device"

    def __init__(
        self,
        device: int | str,
        *,
        width: int = 1280,
        height: int = 720,
        fps: float = 30,
        fourcc: str = "MJPG",
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device = device
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._factory = capture_factory or cv2.VideoCapture
        self._cap: Any = None
        self._granted: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"device:{self.node}"

    @property
    def node(self) -> str:
        return f"/dev/video{self.device}" if isinstance(self.device, int) else str(self.device)

    def exists(self) -> bool:
        return os.path.exists(self.node)

    @property
    def granted(self) -> dict[str, Any]:
        return dict(self._granted)

    def open(self) -> None:
        if not self.exists():
            raise SourceAbsent(f"camera {self.node} not found")
        cap = self._factory(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            _release(cap)
            raise SourceUnavailable(f"camera {self.node} cannot be opened (busy, or not a capture device)")
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._granted = {
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "fourcc": _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)),
        }
        g = self._granted
        log.info(
            "camera opened source=device node=%s width=%d height=%d fps=%.1f fourcc=%s asked=%dx%d@%g/%s",
            self.node, g["width"], g["height"], g["fps"], g["fourcc"],
            self.width, self.height, self.fps, self.fourcc,
        )  # fmt: skip
        if (g["width"], g["height"]) != (self.width, self.height) or g["fourcc"] != self.fourcc:
            log.warning(
                "camera granted %dx%d %s instead of %dx%d %s (node=%s)",
                g["width"], g["height"], g["fourcc"], self.width, self.height, self.fourcc, self.node,
            )  # fmt: skip
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()  # never an output array (§2.2)
        return image if ok and image is not None and image.size else None

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            _release(cap)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/]*):[^@/]*@")


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/…`` → ``rtsp://user:***@host/…`` for logs and the console."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


class StreamSource(FrameSource):
    """An RTSP/HTTP IP camera through OpenCV's FFMPEG backend (§2.1).

    RTSP is asked over TCP (``OPENCV_FFMPEG_CAPTURE_OPTIONS``, unless the environment already
    sets it), and opening and reading time out after 5 s so a dead camera cannot hang the thread.
    """

    kind = "stream"

    def __init__(
        self, url: str, *, timeout_ms: int = STREAM_TIMEOUT_MS, capture_factory: CaptureFactory | None = None
    ) -> None:
        if not url:
            raise ValueError("[camera] source = stream needs url")
        self.url = url
        self.timeout_ms = timeout_ms
        self._factory = capture_factory or cv2.VideoCapture
        self._cap: Any = None
        self._granted: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"stream:{redact_url(self.url)}"

    @property
    def granted(self) -> dict[str, Any]:
        return dict(self._granted)

    def open(self) -> None:
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        cap = self._factory(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            _release(cap)
            raise SourceUnavailable(f"stream {redact_url(self.url)} cannot be opened")
        self._granted = {
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
        }
        log.info(
            "camera opened source=stream url=%s width=%d height=%d fps=%.1f",
            redact_url(self.url), self._granted["width"], self._granted["height"], self._granted["fps"],
        )  # fmt: skip
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        return image if ok and image is not None and image.size else None

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            _release(cap)


class FileSource(FrameSource):
    """A video file: paced at the file's fps (``realtime``, the demo) or as fast as decoded
    (the bench); ``loop`` starts again at the end (§2.1)."""

    kind = "file"

    def __init__(
        self, path: str | os.PathLike[str], *, realtime: bool = True, loop: bool = True, fps: float = 30
    ) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.default_fps = fps
        self.interval_s = None
        self._cap: Any = None
        self._frames = 0
        self._granted: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"file:{self.path}"

    def exists(self) -> bool:
        return self.path.is_file()

    @property
    def granted(self) -> dict[str, Any]:
        return dict(self._granted)

    def _open_cap(self) -> Any:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            _release(cap)
            raise SourceUnavailable(f"video file {self.path} cannot be opened (not a video OpenCV can read)")
        return cap

    def open(self) -> None:
        if not self.exists():
            raise SourceAbsent(f"video file {self.path} not found")
        cap = self._open_cap()
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if not 0 < fps <= 1000:
            fps = self.default_fps
        self._granted = {
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": fps,
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        }
        self.interval_s = 1.0 / fps if self.realtime else None
        self._cap = cap
        self._frames = 0
        log.info("camera opened source=file path=%s fps=%.1f realtime=%s loop=%s", self.path, fps, self.realtime, self.loop)

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        if ok and image is not None and image.size:
            self._frames += 1
            return np.asarray(image)
        if not self.exists():
            raise SourceAbsent(f"video file {self.path} disappeared")
        if not self.loop:
            raise EndOfSource(f"end of {self.path}")
        if self._frames == 0:
            return None  # opened but nothing decodes: a read failure, not a loop
        # End of file: reopen rather than seek (seeking is unreliable across codecs).
        _release(self._cap)
        self._cap = self._open_cap()
        self._frames = 0
        return self.read()

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            _release(cap)


def _read_only(image: np.ndarray) -> np.ndarray:
    image.flags.writeable = False
    return image


class FolderSource(FrameSource):
    """An image folder (the demo and tests, §2.1).

    Files ``*.png *.jpg *.jpeg *.bmp *.webp`` in sorted name order; each is emitted as frames at
    ``fps`` for ``image_hold_s``, then the next; after the last, the first again (``loop``). The
    folder is listed again at each change of picture, so files a program adds (the demo) appear
    without a restart. An unreadable file is skipped (logged once). An empty folder gives no
    frames (status ``no_frames``); a missing one is ``absent``.
    """

    kind = "folder"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float = 30,
        image_hold_s: float = 1.5,
        loop: bool = True,
    ) -> None:
        if fps <= 0 or image_hold_s <= 0:
            raise ValueError("fps and image_hold_s must be > 0")
        self.path = Path(path)
        self.fps = fps
        self.image_hold_s = image_hold_s
        self.loop = loop
        self.interval_s = 1.0 / fps
        self._frames_per_image = max(1, round(fps * image_hold_s))
        self._name: str | None = None
        self._image: np.ndarray | None = None
        self._left = 0
        self._bad: set[tuple[str, int, int]] = set()
        self._opened = False

    @property
    def label(self) -> str:
        return f"folder:{self.path}"

    def exists(self) -> bool:
        return self.path.is_dir()

    def listing(self) -> list[str]:
        """Image file names in the order they are shown."""
        try:
            with os.scandir(self.path) as it:
                names = [
                    e.name for e in it
                    if e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".") and e.is_file()
                ]  # fmt: skip
        except FileNotFoundError as exc:
            raise SourceAbsent(f"image folder {self.path} not found") from exc
        except NotADirectoryError as exc:
            raise SourceAbsent(f"image folder {self.path} is not a directory") from exc
        return sorted(names)

    def open(self) -> None:
        if not self.exists():
            raise SourceAbsent(f"image folder {self.path} not found")
        self._name, self._image, self._left = None, None, 0
        self._opened = True
        log.info("camera opened source=folder path=%s images=%d fps=%g hold_s=%g",
                 self.path, len(self.listing()), self.fps, self.image_hold_s)  # fmt: skip

    def _load(self, name: str) -> np.ndarray | None:
        p = self.path / name
        try:
            st = p.stat()
            data = np.fromfile(p, dtype=np.uint8)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("camera folder cannot read %s: %s", p, exc.strerror)
            return None
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            key = (name, st.st_mtime_ns, st.st_size)
            if key not in self._bad:
                self._bad.add(key)
                log.warning("camera folder skips %s: not a readable image", p)
            return None
        return _read_only(image)

    def _advance(self) -> bool:
        names = self.listing()
        if not names:
            self._name, self._image = None, None
            return False
        if self._name is None:
            order = names
        else:
            later = [n for n in names if n > self._name]
            if not later and not self.loop:
                raise EndOfSource(f"end of {self.path}")
            order = later + [n for n in names if n <= self._name]
        for name in order:
            image = self._load(name)
            if image is not None:
                self._name, self._image, self._left = name, image, self._frames_per_image
                return True
        self._image = None
        return False

    def read(self) -> np.ndarray | None:
        if not self._opened:
            return None
        if self._left <= 0 or self._image is None:
            if not self._advance():
                return None
        self._left -= 1
        return self._image

    def close(self) -> None:
        self._opened = False
        self._image = None


class PushSource(FrameSource):
    """Frames a program puts in: the demo and tests feed pictures through the same capture
    thread, slot and decode loop a real camera uses.

    ``push(image, hold_s=…)`` shows the picture for ``hold_s`` seconds (None = until the next
    push), the way a person holds a phone in front of the camera; otherwise the ``background``
    (default: a plain grey frame of ``size``) is shown, so frames keep arriving at ``fps`` like
    from a camera. :meth:`unplug` and :meth:`plug` simulate a lost and a returning device.
    """

    kind = "push"

    def __init__(
        self,
        *,
        fps: float = 30,
        size: tuple[int, int] = (1280, 720),
        background: np.ndarray | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fps <= 0:
            raise ValueError("fps must be > 0")
        self.fps = fps
        self.interval_s = 1.0 / fps
        w, h = size
        bg = background if background is not None else np.full((h, w, 3), 128, np.uint8)
        self._background = _read_only(np.array(bg, dtype=np.uint8, copy=True))
        self._clock = clock
        self._lock = threading.Lock()
        self._image: np.ndarray | None = None
        self._until: float | None = None
        self._present = True
        self._opened = False

    @property
    def label(self) -> str:
        return "push"

    def exists(self) -> bool:
        return self._present

    def push(self, image: np.ndarray, *, hold_s: float | None = 1.5) -> None:
        """Show ``image`` (BGR or grey uint8) for ``hold_s`` seconds (None = until replaced)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError("push needs a uint8 grey or BGR image")
        frozen = _read_only(np.array(image, copy=True))
        with self._lock:
            self._image = frozen
            self._until = None if hold_s is None else self._clock() + hold_s

    def clear(self) -> None:
        """Back to the background now."""
        with self._lock:
            self._image, self._until = None, None

    def unplug(self) -> None:
        """Simulate the camera being pulled out: reads fail and the source is absent."""
        self._present = False

    def plug(self) -> None:
        self._present = True

    def open(self) -> None:
        if not self._present:
            raise SourceAbsent("push source unplugged")
        self._opened = True

    def read(self) -> np.ndarray | None:
        if not (self._opened and self._present):
            return None
        with self._lock:
            if self._image is not None and (self._until is None or self._clock() < self._until):
                image: np.ndarray = self._image
                return image
            self._image = None
        return self._background

    def close(self) -> None:
        self._opened = False


def open_source(cfg: CameraConfig, *, capture_factory: CaptureFactory | None = None) -> FrameSource:
    """The frame source ``[camera]`` describes (not yet opened: the capture thread opens it)."""
    if cfg.source == "device":
        return DeviceSource(
            cfg.device, width=cfg.width, height=cfg.height, fps=cfg.fps, fourcc=cfg.fourcc,
            capture_factory=capture_factory,
        )  # fmt: skip
    if cfg.source == "stream":
        return StreamSource(cfg.url, capture_factory=capture_factory)
    if cfg.source == "file":
        return FileSource(cfg.path, realtime=cfg.realtime, loop=cfg.loop, fps=cfg.fps)
    if cfg.source == "folder":
        return FolderSource(cfg.path, fps=cfg.fps, image_hold_s=cfg.image_hold_s, loop=cfg.loop)
    raise ValueError(f"unknown camera source {cfg.source!r}")


# ---------------------------------------------------------------------------------------------
# The capture thread


@dataclass(frozen=True)
class CameraStatus:
    """What the console status bar and the heartbeat show (``sync.md`` heartbeat ``camera``)."""

    status: Status
    fps: float
    source: str
    frames: int
    dropped: int
    reopens: int
    width: int | None
    height: int | None
    detail: str

    def heartbeat(self) -> dict[str, Any]:
        return {"status": self.status, "fps": self.fps}


class Camera:
    """The ``capture:camera`` thread: read the source, keep only the newest frame, reconnect.

    Args:
        source: a :class:`FrameSource` (see :func:`open_source`).
        slot: where frames go (a new :class:`LatestFrame` by default).
        no_frames_after_s: no frame this long → status ``no_frames`` and reopen (§2.2).
        backoff_s: delays before successive reopen attempts; the last repeats.
        max_read_failures: consecutive failed reads that trigger a reopen.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        slot: LatestFrame | None = None,
        no_frames_after_s: float = 2.0,
        backoff_s: Sequence[float] = BACKOFF_S,
        max_read_failures: int = MAX_READ_FAILURES,
        name: str = "camera",
    ) -> None:
        if not backoff_s or no_frames_after_s <= 0 or max_read_failures < 1:
            raise ValueError("backoff_s must not be empty; no_frames_after_s and max_read_failures > 0")
        self.source = source
        self.slot = slot if slot is not None else LatestFrame()
        self.no_frames_after_s = no_frames_after_s
        self.backoff_s = tuple(backoff_s)
        self.max_read_failures = max_read_failures
        self.name = name
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        held = self.slot.peek()
        self._seq = held.seq if held is not None else 0  # a slot handed on keeps counting up
        self._last_frame_t: float | None = None
        self._last_shape: tuple[int, ...] | None = None
        self._times: deque[float] = deque(maxlen=64)
        self._absent = False
        self._reopens = 0
        self._detail = "not started"
        self._reported: Status | None = None

    @classmethod
    def from_config(cls, cfg: CameraConfig, *, capture_factory: CaptureFactory | None = None, **kwargs: Any) -> Camera:
        return cls(open_source(cfg, capture_factory=capture_factory), no_frames_after_s=cfg.no_frames_after_s, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Camera:
        if self._thread is not None:
            return self
        if "OPENCV_LOG_LEVEL" not in os.environ:
            # OpenCV logs its own warnings on every failed open of a missing device (§2.2).
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        self._stop.clear()
        self.ended.clear()
        self._thread = threading.Thread(target=self._run, name=f"capture:{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread and release the source (idempotent)."""
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self.slot.wake()

    close = stop

    def __enter__(self) -> Camera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- status -------------------------------------------------------------------------------

    def status(self, now: float | None = None) -> CameraStatus:
        """``ok`` while frames arrive; ``no_frames`` when none came for ``no_frames_after_s``
        (computed here, so a read blocked in the driver still shows); ``absent`` when the
        device node, file or folder is missing."""
        t = time.monotonic() if now is None else now
        with self._lock:
            last = self._last_frame_t
            times = list(self._times)
            shape = self._last_shape
            state: Status
            if self._absent:
                state = "absent"
            elif last is not None and t - last <= self.no_frames_after_s:
                state = "ok"
            else:
                state = "no_frames"
            fps = 0.0
            if state == "ok":
                recent = [x for x in times if t - x <= 2.0]
                if len(recent) >= 2 and recent[-1] > recent[0]:
                    fps = (len(recent) - 1) / (recent[-1] - recent[0])
            return CameraStatus(
                status=state,
                fps=round(fps, 1),
                source=self.source.label,
                frames=self._seq,
                dropped=self.slot.dropped,
                reopens=self._reopens,
                width=shape[1] if shape else None,
                height=shape[0] if shape else None,
                detail=self._detail,
            )

    def _set(self, *, absent: bool, detail: str) -> None:
        with self._lock:
            self._absent = absent
            self._detail = detail
        state: Status = "absent" if absent else "no_frames"
        if state != self._reported:
            self._reported = state
            log.warning("camera status=%s source=%s detail=%s", state, self.source.label, detail)

    # -- the thread ---------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return self.backoff_s[min(attempt, len(self.backoff_s) - 1)]

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                got_frames = self._session()
            except EndOfSource as exc:
                log.info("camera source=%s ended: %s", self.source.label, exc)
                self._set(absent=False, detail="ended")
                self.ended.set()
                return
            except Exception:
                # A bug in a source must not end capture for good: log it, back off, reopen.
                log.exception("capture:%s failed; reopening", self.name)
                try:
                    absent = not self.source.exists()
                except Exception:
                    absent = False
                self._set(absent=absent, detail="error")
                got_frames = False
            finally:
                self.source.close()
            if self._stop.is_set():
                break
            attempt = 0 if got_frames else attempt
            delay = self._backoff(attempt)
            attempt += 1
            self._reopens += 1
            log.debug("camera reopen source=%s in_s=%.1f", self.source.label, delay)
            if self._stop.wait(delay):
                break
        with self._lock:
            self._detail = "stopped"

    def _session(self) -> bool:
        """Open the source and read until it fails; True when it gave at least one frame."""
        try:
            self.source.open()
        except SourceAbsent as exc:
            self._set(absent=True, detail=str(exc))
            return False
        except CameraError as exc:
            self._set(absent=False, detail=str(exc))
            return False
        with self._lock:
            self._absent = False  # opened: "no_frames" until the first frame arrives
            self._detail = "opened"
        opened_t = time.monotonic()
        got = False
        failures = 0
        next_due = opened_t
        while not self._stop.is_set():
            interval = self.source.interval_s
            if interval:
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                # Pace from the schedule, but never try to catch up a backlog after a stall.
                next_due = max(next_due + interval, time.monotonic())
            try:
                image = self.source.read()
            except SourceAbsent as exc:
                self._set(absent=True, detail=str(exc))
                return got
            t = time.monotonic()
            if image is None:
                failures += 1
                since = t - (self._last_frame_t if got and self._last_frame_t else opened_t)
                if failures >= self.max_read_failures or since > self.no_frames_after_s:
                    absent = not self.source.exists()
                    self._set(absent=absent, detail=f"{failures} failed reads, no frame for {since:.1f} s")
                    return got
                if not interval:
                    self._stop.wait(0.02)  # a source failing instantly must not spin
                continue
            failures = 0
            got = True
            with self._lock:
                self._seq += 1
                seq = self._seq
                self._last_frame_t = t
                self._last_shape = image.shape
                self._times.append(t)
                self._absent = False
                self._detail = "ok"
            if self._reported != "ok":
                self._reported = "ok"
                log.info("camera status=ok source=%s", self.source.label)
            self.slot.put(Frame(image, seq, t))
        return got
