"""QR (and other barcode) decoding for the gate: ``decode(image) -> list[Symbol]``.

Rules, in the order they run (``specs/hardware.md`` §2.3):

1. The input is checked (uint8; 2-D grey, or 3-D with 3 = BGR or 4 = BGRA channels; anything
   else raises :class:`BadImage`, a ``ValueError``; zero-size gives ``[]``), cropped to the ROI
   if one is given (positions are mapped back to the full frame), and turned grey **once**.
2. zxing-cpp reads the grey image in ``TextMode.Plain`` with its defaults ``try_rotate``,
   ``try_downscale`` and ``try_invert`` on, and ``return_errors=True``: valid results are
   symbols, invalid ones are *candidates* (a symbol was located but not decoded).
3. Candidates not covered by a valid symbol get a retry (§2.3 runs it only when nothing was
   read; a truck pass read beside a driver code that failed is retried too, at no cost on frames
   where nothing was located): for up to 2 (``fast``) or 4 (``full``) candidates, the box plus a
   25 % margin (at least 32 px) is upscaled 2x and read by zxing-cpp, then by pyzbar on the
   grey crop. So ``effort="fast"`` (the camera loop) costs nothing extra on an empty frame.
4. ``effort="full"`` (still images, the CLI, the deep pass) then runs, while nothing was read
   (or a candidate is still unread), stopping after the first pass that reads something:
   zxing-cpp on a 2x linear upscale of the whole image when its longer side is at most 1280 px;
   pyzbar on the grey image; pyzbar on a 2x cubic upscale when the longer side is at most
   640 px. So the full path reads at least the union of zxing-cpp, its 2x retry and pyzbar
   (§2.6). Beyond the spec, a few cheap passes follow (a few ms each on 720p, only where all
   the above found nothing): pyzbar on a half-size copy of a large photograph (zbar misses
   codes whose modules are many pixels wide and soft), zxing-cpp's global-histogram binariser
   (uneven light), zxing-cpp after a 3x3 median (phone screens filmed at an angle, noise), and
   zxing-cpp on a mean adaptive threshold (shadows, glare edges).
5. The same payload at overlapping positions from two passes is one symbol; symbols are sorted
   by position (top, then left).

pyzbar is imported lazily; without the zbar library zxing-cpp runs alone and one line is logged.
zbar is called through pyzbar's ctypes wrapper with our own symbol loop, because pyzbar 0.1.9's
``decode()`` raises ``ValueError`` on structured-append codes (zbar reports orientation -1, read
as unsigned) and zbar's text conversion would otherwise rewrite binary payloads: with
``ZBAR_CFG_BINARY`` the bytes are the payload, as zxing-cpp's ``bytes`` are, so the same code
read by either decoder has the same de-duplication key (§2.5). Every decoder call is wrapped
and failures are counted in ``decoder_errors``. Against a zbar C assertion that aborts the
process on some payloads (a crafted code held in view would make a crash loop), a marker file
is written in the state directory around each zbar call; a process that starts and finds it
disables pyzbar for 10 minutes and logs it.

Nothing here logs a payload: only counts, sizes and decoder names.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
import zxingcpp

from edge.errors import EdgeError

__all__ = [
    "BadImage",
    "DecodeStats",
    "Decoder",
    "DeepPass",
    "Deduper",
    "Effort",
    "Scanner",
    "Sighting",
    "Symbol",
    "configure",
    "decode",
    "default_decoder",
    "payload_key",
    "pyzbar_available",
]

log = logging.getLogger(__name__)

Effort = Literal["fast", "full"]
Corners = tuple[tuple[int, int], ...]

#: §2.3 step 4: candidate retry margin and upscale.
CANDIDATE_MARGIN = 0.25
CANDIDATE_MIN_MARGIN_PX = 32
FAST_CANDIDATES = 2
FULL_CANDIDATES = 4
#: §2.3 step 4 (full): whole-image 2x zxing-cpp up to this longer side, 2x cubic pyzbar up to 640.
UPSCALE_MAX_SIDE = 1280
PYZBAR_UPSCALE_MAX_SIDE = 640
#: zbar's crash-loop guard (§2.3 last paragraph).
ZBAR_MARKER_NAME = "zbar-inflight.marker"
ZBAR_DISABLE_S = 600.0


class BadImage(EdgeError, ValueError):
    """The array given to :func:`decode` is not an 8-bit grey, BGR or BGRA image."""


@dataclass(frozen=True)
class Symbol:
    """One decoded code (§2.3).

    ``text`` is zxing-cpp's Plain text (pyzbar: the bytes decoded as UTF-8 with replacement);
    ``raw`` the payload bytes (binary content preserved); ``format`` a zxing-cpp
    ``BarcodeFormat`` name (``"QRCode"``, ``"MicroQRCode"``...); ``position`` 4 corners in
    full-frame pixels (top-left, top-right, bottom-right, bottom-left of the symbol);
    ``decoder`` ``"zxing-cpp"``, ``"zxing-cpp+2x"`` or ``"pyzbar"``.
    """

    text: str
    raw: bytes
    format: str
    position: Corners
    decoder: str

    def __repr__(self) -> str:  # never put a payload in a log line or a traceback
        return (
            f"Symbol(format={self.format!r}, decoder={self.decoder!r}, raw_bytes={len(self.raw)}, "
            f"position={self.position!r})"
        )

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Axis-aligned bounding box ``(left, top, right, bottom)``."""
        xs = [p[0] for p in self.position]
        ys = [p[1] for p in self.position]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class DecodeStats:
    """Counters of a :class:`Decoder` for status lines, heartbeats and ``doctor``."""

    calls: int
    decoder_errors: int
    pyzbar: Literal["ok", "off", "missing", "disabled"]


def payload_key(raw: bytes) -> bytes:
    """The de-duplication key of a payload: SHA-256 of ``raw`` (§2.5), never the text."""
    return hashlib.sha256(raw).digest()


# ---------------------------------------------------------------------------------------------
# pyzbar, loaded lazily (§2.3)

_zbar_lock = threading.Lock()
_zbar_mod: ModuleType | None = None
_zbar_error: str | None = None
_zbar_loaded = False

_Y800 = sum(ord(c) << (8 * i) for i, c in enumerate("Y800"))
#: ZBAR_CFG_BINARY (zbar >= 0.23; pyzbar 0.1.9's enum predates it): keep the payload bytes.
_ZBAR_CFG_BINARY = 4
_ZBAR_PARTIAL = 1

#: zxing-cpp format name -> zbar symbol name, for the formats both decoders read.
_ZBAR_NAMES = {
    "QRCode": "QRCODE",
    "EAN13": "EAN13",
    "EAN8": "EAN8",
    "UPCA": "UPCA",
    "UPCE": "UPCE",
    "ISBN": "ISBN13",
    "Code128": "CODE128",
    "Code39": "CODE39",
    "Code93": "CODE93",
    "ITF": "I25",
    "Codabar": "CODABAR",
    "DataBar": "DATABAR",
    "DataBarExpanded": "DATABAR_EXP",
}
_FROM_ZBAR = {v: k for k, v in _ZBAR_NAMES.items()}


def _load_zbar() -> ModuleType | None:
    """pyzbar's ctypes wrapper, or None (logged once) when pyzbar or libzbar is missing."""
    global _zbar_mod, _zbar_error, _zbar_loaded
    if _zbar_loaded:
        return _zbar_mod
    with _zbar_lock:
        if not _zbar_loaded:
            try:
                from pyzbar import wrapper

                wrapper.zbar_version  # noqa: B018 - resolves the library now, not mid-frame
                _zbar_mod = wrapper
            except Exception as exc:  # ImportError, or OSError from a broken library
                _zbar_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "decode pyzbar=missing error=%r: decoding with zxing-cpp alone "
                    "(apt-get install --no-install-recommends libzbar0)",
                    _zbar_error,
                )
            _zbar_loaded = True
    return _zbar_mod


def pyzbar_available() -> tuple[bool, str]:
    """Whether zbar can be used, and why not (for ``checkpoint doctor``)."""
    mod = _load_zbar()
    return (mod is not None, "ok" if mod is not None else str(_zbar_error))


@dataclass(frozen=True)
class _Found:
    text: str
    raw: bytes
    format: str
    corners: tuple[tuple[float, float], ...]


def _zbar_scan(wrapper: ModuleType, gray: np.ndarray, names: tuple[str, ...]) -> list[_Found]:
    """One zbar scan of a contiguous grey image (our loop over pyzbar's ctypes functions)."""
    scanner = wrapper.zbar_image_scanner_create()
    if not scanner:
        raise RuntimeError("zbar_image_scanner_create failed")
    try:
        wanted = [wrapper.ZBarSymbol[n] for n in names]
        wrapper.zbar_image_scanner_set_config(scanner, 0, wrapper.ZBarConfig.CFG_ENABLE, 0)  # all off
        for sym in wanted:
            wrapper.zbar_image_scanner_set_config(scanner, sym, wrapper.ZBarConfig.CFG_ENABLE, 1)
            wrapper.zbar_image_scanner_set_config(scanner, sym, _ZBAR_CFG_BINARY, 1)
        img = wrapper.zbar_image_create()
        if not img:
            raise RuntimeError("zbar_image_create failed")
        try:
            h, w = gray.shape
            wrapper.zbar_image_set_format(img, _Y800)
            wrapper.zbar_image_set_size(img, w, h)
            # zbar reads the numpy buffer in place; `gray` outlives the scan.
            wrapper.zbar_image_set_data(img, ctypes.c_void_p(gray.ctypes.data), gray.size, None)
            if wrapper.zbar_scan_image(scanner, img) < 0:
                raise RuntimeError("zbar_scan_image: unsupported image format")
            out: list[_Found] = []
            sym = wrapper.zbar_image_first_symbol(img)
            while sym:
                kind = int(sym.contents.type)
                try:
                    name = wrapper.ZBarSymbol(kind).name
                except ValueError:  # a symbology this pyzbar does not know
                    name = ""
                # A structured-append part alone comes back as ZBAR_PARTIAL: not a whole payload.
                if kind != _ZBAR_PARTIAL and name in _FROM_ZBAR:
                    raw = ctypes.string_at(
                        wrapper.zbar_symbol_get_data(sym), wrapper.zbar_symbol_get_data_length(sym)
                    )
                    pts = [
                        (float(wrapper.zbar_symbol_get_loc_x(sym, i)), float(wrapper.zbar_symbol_get_loc_y(sym, i)))
                        for i in range(wrapper.zbar_symbol_get_loc_size(sym))
                    ]
                    out.append(
                        _Found(raw.decode("utf-8", "replace"), raw, _FROM_ZBAR[name], _zbar_corners(pts))
                    )
                sym = wrapper.zbar_symbol_next(sym)
            return out
        finally:
            wrapper.zbar_image_destroy(img)
    finally:
        wrapper.zbar_image_scanner_destroy(scanner)


def _zbar_corners(pts: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """zbar gives a QR's corners counter-clockwise from top-left; we use zxing-cpp's clockwise order."""
    if len(pts) == 4:
        return (pts[0], pts[3], pts[2], pts[1])
    if not pts:
        return ((0.0, 0.0),) * 4
    box = cv2.boxPoints(cv2.minAreaRect(np.array(pts, dtype=np.float32)))
    start = int(np.argmin(box.sum(axis=1)))
    ordered = [box[(start + i) % 4] for i in range(4)]
    return tuple((float(p[0]), float(p[1])) for p in ordered)


class _ZbarGuard:
    """The crash-loop guard of §2.3: a marker file exists while a zbar call is in flight."""

    def __init__(self, marker_dir: Path | None, *, disable_s: float, clock: Callable[[], float]) -> None:
        self._path = Path(marker_dir) / ZBAR_MARKER_NAME if marker_dir is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight = 0
        self._warned = False
        self.disabled_until: float | None = None
        if self._path is not None and self._path.exists():
            self.disabled_until = clock() + disable_s
            log.error(
                "decode pyzbar=disabled for_s=%d: the previous process died inside zbar (marker %s); "
                "zxing-cpp alone meanwhile",
                int(disable_s),
                self._path,
            )
            self._unlink()

    def allowed(self) -> bool:
        if self.disabled_until is None:
            return True
        if self._clock() >= self.disabled_until:
            self.disabled_until = None
            log.info("decode pyzbar=enabled: crash guard period over")
            return True
        return False

    def _unlink(self) -> None:
        assert self._path is not None
        try:
            self._path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("decode cannot remove zbar marker %s: %s", self._path, exc.strerror)

    @contextmanager
    def call(self) -> Iterator[None]:
        # Concurrent calls (fast loop and deep pass) share one marker: created by the first
        # call in, removed by the last one out.
        if self._path is None:
            yield
            return
        with self._lock:
            if self._inflight == 0:
                try:
                    self._path.write_bytes(b"%d\n" % os.getpid())
                except OSError as exc:
                    if not self._warned:
                        self._warned = True
                        log.warning("decode cannot write zbar marker %s: %s", self._path, exc.strerror)
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                if self._inflight == 0:
                    self._unlink()


# ---------------------------------------------------------------------------------------------
# Helpers


@lru_cache(maxsize=64)
def _formats(names: tuple[str, ...]) -> tuple[zxingcpp.BarcodeFormats, tuple[str, ...]]:
    """zxing-cpp formats and the zbar names among them; unknown names raise ``ValueError``."""
    if not names:
        raise ValueError("formats must name at least one barcode format")
    members = zxingcpp.BarcodeFormat.__members__
    for n in names:
        if not isinstance(n, str) or n not in members or n == "NONE":
            raise ValueError(f"unknown barcode format {n!r} (zxing-cpp BarcodeFormat names, e.g. 'QRCode')")
    zx = zxingcpp.barcode_formats_from_str(",".join(dict.fromkeys(names)))
    zb = tuple(dict.fromkeys(_ZBAR_NAMES[n] for n in names if n in _ZBAR_NAMES))
    return zx, zb


def _check_roi(roi: Sequence[int] | None) -> tuple[int, int, int, int] | None:
    if roi is None or (isinstance(roi, Sequence) and len(roi) == 0):
        return None
    try:
        x, y, w, h = (int(v) for v in roi)
    except (TypeError, ValueError) as exc:
        raise ValueError("roi is (x, y, w, h) in pixels") from exc
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError("roi is (x, y, w, h) with x, y >= 0 and w, h > 0")
    return x, y, w, h


def _to_gray(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise BadImage(f"image must be a numpy array, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise BadImage(f"image must be uint8, not {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.size == 0:
            return image[:, :, 0]
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    raise BadImage(f"image must be HxW, HxWx3 (BGR) or HxWx4 (BGRA), not shape {image.shape}")


def _overlap(a: Symbol, b: Symbol) -> bool:
    al, at, ar, ab = a.box
    bl, bt, br, bb = b.box
    return al <= br and bl <= ar and at <= bb and bt <= ab


def _boxes_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _box_of(corners: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in corners]
    ys = [p[1] for p in corners]
    return min(xs), min(ys), max(xs), max(ys)


# ---------------------------------------------------------------------------------------------
# The decoder


class Decoder:
    """Decodes images; holds the pyzbar switch, the crash guard and the counters.

    Thread-safe: the fast loop and the deep pass share one decoder.

    Args:
        pyzbar: use zbar as the second decoder (``[decode] pyzbar``).
        state_dir: where the zbar crash marker lives (the gate's data directory); None = no marker
            (one-shot tools).
        crash_disable_s: how long pyzbar stays off after a crash inside zbar (§2.3: 10 minutes).
    """

    def __init__(
        self,
        *,
        pyzbar: bool = True,
        state_dir: str | os.PathLike[str] | None = None,
        crash_disable_s: float = ZBAR_DISABLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._use_pyzbar = pyzbar
        self._guard = _ZbarGuard(
            Path(state_dir) if state_dir is not None else None, disable_s=crash_disable_s, clock=clock
        )
        self._lock = threading.Lock()
        self._calls = 0
        self._errors = 0

    # -- counters -----------------------------------------------------------------------------

    @property
    def decoder_errors(self) -> int:
        return self._errors

    def stats(self) -> DecodeStats:
        if not self._use_pyzbar:
            state: Literal["ok", "off", "missing", "disabled"] = "off"
        elif _load_zbar() is None:
            state = "missing"
        elif not self._guard.allowed():
            state = "disabled"
        else:
            state = "ok"
        return DecodeStats(calls=self._calls, decoder_errors=self._errors, pyzbar=state)

    def _error(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            n = self._errors
        # The exception text may quote a payload (e.g. an enum value), so only its type is logged.
        log.warning("decode decoder_error where=%s type=%s decoder_errors=%d", what, type(exc).__name__, n)

    # -- one decoder call each ----------------------------------------------------------------

    def _zxing(
        self, gray: np.ndarray, fmts: zxingcpp.BarcodeFormats, **options: Any
    ) -> tuple[list[_Found], list[tuple[float, float, float, float]]]:
        try:
            results = zxingcpp.read_barcodes(
                gray, formats=fmts, text_mode=zxingcpp.TextMode.Plain, return_errors=True, **options
            )
        except Exception as exc:
            self._error("zxing-cpp", exc)
            return [], []
        found: list[_Found] = []
        candidates: list[tuple[float, float, float, float]] = []
        for r in results:
            p = r.position
            corners = tuple(
                (float(q.x), float(q.y)) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
            )
            if r.valid:
                found.append(_Found(r.text, bytes(r.bytes), r.format.name, corners))
            else:
                candidates.append(_box_of(corners))
        return found, candidates

    def _pyzbar(self, gray: np.ndarray, names: tuple[str, ...]) -> list[_Found]:
        if not (self._use_pyzbar and names):
            return []
        wrapper = _load_zbar()
        if wrapper is None or not self._guard.allowed():
            return []
        try:
            with self._guard.call():
                return _zbar_scan(wrapper, np.ascontiguousarray(gray), names)
        except Exception as exc:
            self._error("pyzbar", exc)
            return []

    # -- the public entry point ---------------------------------------------------------------

    def decode(
        self,
        image: np.ndarray,
        *,
        effort: Effort = "full",
        formats: Sequence[str] = ("QRCode",),
        roi: Sequence[int] | None = None,
    ) -> list[Symbol]:
        """Decode every symbol in ``image`` (§2.3).

        Args:
            image: uint8 grey (HxW), BGR (HxWx3) or BGRA (HxWx4); non-contiguous arrays are fine.
            effort: ``"fast"`` for the camera loop (no fallback on frames where nothing was
                located), ``"full"`` for still images and the deep pass.
            formats: zxing-cpp ``BarcodeFormat`` names; ``"QRCode"`` covers Model 1/2, Micro
                QR and rMQR in zxing-cpp 3.
            roi: ``(x, y, w, h)`` to look at only that part of the frame; positions are still
                full-frame.

        Returns:
            Symbols sorted by position (top, then left); ``[]`` for a zero-size image.

        Raises:
            BadImage: not a uint8 grey/BGR/BGRA array.
            ValueError: an unknown format name, a malformed ROI or effort.
        """
        if effort not in ("fast", "full"):
            raise ValueError(f"effort is 'fast' or 'full', not {effort!r}")
        if isinstance(formats, str):
            formats = (formats,)
        zx_formats, zbar_names = _formats(tuple(formats))
        box = _check_roi(roi)
        if not isinstance(image, np.ndarray):
            raise BadImage(f"image must be a numpy array, not {type(image).__name__}")
        ox = oy = 0
        if box is not None and image.ndim >= 2:
            x, y, w, h = box
            # Crop before the grey conversion: only the ROI's pixels are converted.
            image = image[y : y + h, x : x + w]
            ox, oy = x, y
        gray = _to_gray(image)
        with self._lock:
            self._calls += 1
        if gray.size == 0:
            return []
        return self._run(gray, effort, zx_formats, zbar_names, ox, oy)

    def _run(
        self, gray: np.ndarray, effort: Effort, fmts: zxingcpp.BarcodeFormats, names: tuple[str, ...], ox: int, oy: int
    ) -> list[Symbol]:
        out: list[Symbol] = []

        def add(found: list[_Found], decoder: str, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> bool:
            added = False
            for f in found:
                corners = tuple(
                    (round(px / scale + dx + ox), round(py / scale + dy + oy)) for px, py in f.corners
                )
                sym = Symbol(f.text, f.raw, f.format, corners, decoder)
                if not any(s.raw == sym.raw and _overlap(s, sym) for s in out):
                    out.append(sym)
                    added = True
            return added

        def unresolved(boxes: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
            # A candidate is resolved once a symbol covers it (boxes compared in ROI pixels).
            local = [(b[0] - ox, b[1] - oy, b[2] - ox, b[3] - oy) for b in (s.box for s in out)]
            return [c for c in boxes if not any(_boxes_overlap(c, b) for b in local)]

        found, candidates = self._zxing(gray, fmts)
        add(found, "zxing-cpp")
        # §2.3 step 4 asks for the candidate retry when nothing was read; we also run it for a
        # located code beside a read one (a truck pass and a driver code in one frame): it only
        # costs when zxing-cpp located a symbol and failed, never on an empty frame.
        todo = unresolved(candidates)[: FAST_CANDIDATES if effort == "fast" else FULL_CANDIDATES]
        if todo:
            self._candidates(gray, todo, fmts, names, add)
        if effort == "full":
            for step in self._full_chain(gray, fmts, names):
                if out and not unresolved(candidates):
                    break  # stop at the first pass that read something (§2.3)
                step(add)
        out.sort(key=lambda s: (s.box[1], s.box[0]))
        return out

    def _candidates(
        self,
        gray: np.ndarray,
        boxes: list[tuple[float, float, float, float]],
        fmts: zxingcpp.BarcodeFormats,
        names: tuple[str, ...],
        add: Callable[..., bool],
    ) -> None:
        """§2.3 step 4: crop each located-but-unread symbol with a margin, 2x, zxing-cpp, then pyzbar."""
        height, width = gray.shape
        for left, top, right, bottom in boxes:
            mx = max(CANDIDATE_MIN_MARGIN_PX, (right - left) * CANDIDATE_MARGIN)
            my = max(CANDIDATE_MIN_MARGIN_PX, (bottom - top) * CANDIDATE_MARGIN)
            x0, y0 = max(0, int(left - mx)), max(0, int(top - my))
            x1, y1 = min(width, int(right + mx) + 1), min(height, int(bottom + my) + 1)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            crop = gray[y0:y1, x0:x1]
            big = self._resize(crop, 2.0, cv2.INTER_LINEAR)
            if big is not None and add(self._zxing(big, fmts)[0], "zxing-cpp+2x", 2.0, x0, y0):
                continue
            add(self._pyzbar(crop, names), "pyzbar", 1.0, x0, y0)

    def _full_chain(
        self, gray: np.ndarray, fmts: zxingcpp.BarcodeFormats, names: tuple[str, ...]
    ) -> Iterator[Callable[[Callable[..., bool]], object]]:
        """§2.3 step 4, effort full: the passes in order; the caller stops after the first that
        reads something. Each pass is built only when reached (most images stop early)."""
        longer = max(gray.shape)
        if longer <= UPSCALE_MAX_SIDE:
            yield lambda add: add(self._zxing_on(self._resize(gray, 2.0, cv2.INTER_LINEAR), fmts), "zxing-cpp+2x", 2.0)
        yield lambda add: add(self._pyzbar(gray, names), "pyzbar")
        if longer <= PYZBAR_UPSCALE_MAX_SIDE:
            yield lambda add: add(self._pyzbar_on(self._resize(gray, 2.0, cv2.INTER_CUBIC), names), "pyzbar", 2.0)
        if longer > UPSCALE_MAX_SIDE:
            # zbar misses codes whose modules are many pixels wide and soft (close-up photos).
            yield lambda add: add(self._pyzbar_on(self._resize(gray, 0.5, cv2.INTER_AREA), names), "pyzbar", 0.5)
        # Beyond §2.3: cheap re-binarisations for what a camera does to a code (a few ms each on
        # 720p, only on frames where everything above found nothing). Screens filmed at an angle
        # (moire) and sensor noise: a 3x3 median. Uneven light and shadows: zxing-cpp's global
        # histogram binariser, and a mean adaptive threshold over blocks about a module group wide.
        yield lambda add: add(self._zxing_on(gray, fmts, binarizer=zxingcpp.Binarizer.GlobalHistogram), "zxing-cpp")
        yield lambda add: add(self._zxing_on(self._filter(cv2.medianBlur, gray, 3), fmts), "zxing-cpp")
        block = max(15, min(201, (longer // 25) | 1))
        yield lambda add: add(
            self._zxing_on(
                self._filter(
                    cv2.adaptiveThreshold, gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 5
                ),
                fmts,
            ),
            "zxing-cpp",
        )

    def _zxing_on(self, image: np.ndarray | None, fmts: zxingcpp.BarcodeFormats, **options: Any) -> list[_Found]:
        return [] if image is None else self._zxing(image, fmts, **options)[0]

    def _pyzbar_on(self, image: np.ndarray | None, names: tuple[str, ...]) -> list[_Found]:
        return [] if image is None else self._pyzbar(image, names)

    def _filter(self, fn: Callable[..., Any], image: np.ndarray, *args: Any) -> np.ndarray | None:
        try:
            return np.asarray(fn(image, *args))
        except cv2.error as exc:
            self._error(getattr(fn, "__name__", "filter"), exc)
            return None

    def _resize(self, gray: np.ndarray, factor: float, interpolation: int) -> np.ndarray | None:
        try:
            return cv2.resize(gray, None, fx=factor, fy=factor, interpolation=interpolation)
        except cv2.error as exc:
            self._error("resize", exc)
            return None


_default_lock = threading.Lock()
_default: Decoder | None = None


def default_decoder() -> Decoder:
    """The process-wide decoder used by :func:`decode` (pyzbar on, no crash marker until configured)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Decoder()
    return _default


def configure(
    *, pyzbar: bool = True, state_dir: str | os.PathLike[str] | None = None, crash_disable_s: float = ZBAR_DISABLE_S
) -> Decoder:
    """Replace the process-wide decoder (the gate calls this once at start with ``[decode]``)."""
    global _default
    with _default_lock:
        _default = Decoder(pyzbar=pyzbar, state_dir=state_dir, crash_disable_s=crash_disable_s)
        return _default


def decode(
    image: np.ndarray,
    *,
    effort: Effort = "full",
    formats: Sequence[str] = ("QRCode",),
    roi: Sequence[int] | None = None,
) -> list[Symbol]:
    """Decode ``image`` with the process-wide decoder; see :meth:`Decoder.decode` (§2.3)."""
    return default_decoder().decode(image, effort=effort, formats=formats, roi=roi)


# ---------------------------------------------------------------------------------------------
# De-duplication of a code held in view (§2.5)


class Deduper:
    """Turns sightings into *new* symbols: one decision per code held in view.

    A symbol is new when its key (SHA-256 of ``raw``, kept in memory only) was not seen in the
    last ``hold_s``; every sighting refreshes the key, so a code held for a minute is new once
    and again only after it has been out of view for ``hold_s``. Keys unseen for ``hold_s`` are
    dropped on every call (call it on empty frames too), and at most ``max_keys`` are kept, so
    memory is bounded by the codes in view. Thread-safe (fast loop and deep pass).
    """

    def __init__(self, hold_s: float = 3.0, *, max_keys: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if hold_s < 0:
            raise ValueError("hold_s must be >= 0")
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.hold_s = hold_s
        self.max_keys = max_keys
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # key -> last seen, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def filter(self, symbols: Sequence[Symbol], now: float | None = None) -> list[Symbol]:
        """The symbols of one frame that are new, in the given (position) order."""
        t = self._clock() if now is None else now
        new: list[Symbol] = []
        with self._lock:
            self._expire(t)
            in_frame: set[bytes] = set()
            for sym in symbols:
                key = payload_key(sym.raw)
                if key in in_frame:
                    continue  # the same code twice in one frame decides once
                in_frame.add(key)
                if key not in self._seen:
                    new.append(sym)
                self._seen[key] = t
                self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        return new

    def seen(self, raw: bytes, now: float | None = None) -> bool:
        """Whether this payload was seen within ``hold_s`` (does not refresh it)."""
        t = self._clock() if now is None else now
        with self._lock:
            last = self._seen.get(payload_key(raw))
        return last is not None and t - last < self.hold_s

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def _expire(self, t: float) -> None:
        while self._seen:
            key, last = next(iter(self._seen.items()))
            if t - last < self.hold_s:
                break
            del self._seen[key]


# ---------------------------------------------------------------------------------------------
# The deep pass (§2.4)


class DeepPass:
    """The ``decode:deep`` worker: a full-effort decode of a frame the fast path found empty.

    The fast loop calls :meth:`offer` with each frame on which it found nothing; the frame is
    taken only when no deep pass is running and the previous one finished at least
    ``interval_s`` ago, so the fast path never waits. Results go to ``on_symbols(item,
    symbols)`` on the worker thread (feed them into the same de-duplication and decision path).
    ``interval_s = 0`` disables it.

    Args:
        on_symbols: called with the offered item and the symbols found (only when some were).
        interval_s: ``[decode] deep_interval_s``.
        decoder: the decoder to use (default: the process-wide one).
        image_of: how to get the image out of an offered item (default: ``item.image``, so a
            :class:`edge.camera.Frame` can be offered as is).
    """

    def __init__(
        self,
        on_symbols: Callable[[Any, list[Symbol]], None],
        *,
        interval_s: float = 1.0,
        decoder: Decoder | None = None,
        formats: Sequence[str] = ("QRCode",),
        roi: Sequence[int] | None = None,
        image_of: Callable[[Any], np.ndarray] = lambda item: item.image,
        clock: Callable[[], float] = time.monotonic,
        name: str = "decode:deep",
    ) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._on_symbols = on_symbols
        self._decoder = decoder
        self._formats = tuple(formats)
        self._roi = roi
        self._image_of = image_of
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._pending: Any = None
        self._busy = False
        self._finished_at: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.found = 0

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def start(self) -> DeepPass:
        if self.enabled and self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the worker (idempotent); a pass in progress is finished first."""
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify_all()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout)

    close = stop

    def __enter__(self) -> DeepPass:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def offer(self, item: Any) -> bool:
        """Hand a frame to the worker if it is free and rested; never blocks. True when taken."""
        if not self.enabled or self._thread is None:
            return False
        with self._cond:
            if self._stopping or self._busy or self._pending is not None:
                return False
            if self._finished_at is not None and self._clock() - self._finished_at < self.interval_s:
                return False
            self._pending = item
            self._busy = True
            self._cond.notify()
            return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no pass is pending or running (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    self._busy = False
                    self._cond.notify_all()
                    return
                item, self._pending = self._pending, None
            try:
                decoder = self._decoder or default_decoder()
                symbols = decoder.decode(self._image_of(item), effort="full", formats=self._formats, roi=self._roi)
                self.passes += 1
                if symbols:
                    self.found += len(symbols)
                    self._on_symbols(item, symbols)
            except Exception:
                log.exception("decode:deep pass failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._finished_at = self._clock()
                    self._cond.notify_all()


# ---------------------------------------------------------------------------------------------
# The gate's decode loop (§2.4), for the gate process to run


@dataclass(frozen=True)
class Sighting:
    """New symbols (after de-duplication) found in one frame, in position order."""

    frame: Any  # the edge.camera.Frame (its t_capture starts the latency budget, §2.7)
    symbols: list[Symbol]
    path: Literal["fast", "deep"]
    t_decoded: float  # time.monotonic() when the decode returned


class Scanner:
    """The ``decode:fast`` thread: newest frame → fast decode → de-dup → ``on_new``; frames where
    nothing was found go to the :class:`DeepPass` (§2.4).

    ``on_new(sighting)`` is called for new symbols only, from this thread or the deep worker,
    never both at once (calls are serialised), so the decision path sees one code once per
    ``hold_s`` (§2.5). The fast path never waits for the deep one.

    Args:
        slot: an :class:`edge.camera.LatestFrame` (anything with ``get(after_seq, timeout)``).
        on_new: the decision path.
        decoder: shared by both paths (default: the process-wide one, see :func:`configure`).
        hold_s, deep_interval_s, formats, roi: ``[decode]`` and ``[camera] roi``.
    """

    def __init__(
        self,
        slot: Any,
        on_new: Callable[[Sighting], None],
        *,
        decoder: Decoder | None = None,
        hold_s: float = 3.0,
        deep_interval_s: float = 1.0,
        formats: Sequence[str] = ("QRCode",),
        roi: Sequence[int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "decode:fast",
    ) -> None:
        self.slot = slot
        self._on_new = on_new
        self._decoder = decoder
        self._formats = tuple(formats)
        self._roi = tuple(roi) if roi else None
        _formats(self._formats)  # unknown names fail here, at start, not per frame
        _check_roi(self._roi)
        self._clock = clock
        self._name = name
        self.deduper = Deduper(hold_s, clock=clock)
        self.deep = DeepPass(
            self._from_deep, interval_s=deep_interval_s, decoder=decoder, formats=self._formats, roi=self._roi,
            clock=clock,
        )  # fmt: skip
        self._deliver = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0
        self.sightings = 0
        self.last_decode_ms = 0.0

    @property
    def decoder(self) -> Decoder:
        return self._decoder or default_decoder()

    def start(self) -> Scanner:
        if self._thread is None:
            self._stop.clear()
            self.deep.start()
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop both threads (idempotent)."""
        self._stop.set()
        wake = getattr(self.slot, "wake", None)
        if wake is not None:
            wake()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self.deep.stop(timeout)

    close = stop

    def __enter__(self) -> Scanner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _emit(self, frame: Any, symbols: list[Symbol], path: Literal["fast", "deep"], t: float) -> None:
        with self._deliver:
            new = self.deduper.filter(symbols)
            if not new:
                return
            self.sightings += 1
            try:
                self._on_new(Sighting(frame, new, path, t))
            except Exception:
                log.exception("%s decision callback failed", self._name)

    def _from_deep(self, frame: Any, symbols: list[Symbol]) -> None:
        self._emit(frame, symbols, "deep", self._clock())

    def _loop(self) -> None:
        seq = 0
        while not self._stop.is_set():
            try:
                frame = self.slot.get(seq, timeout=0.5)
                if frame is None or self._stop.is_set():
                    continue
                seq = frame.seq
                self.frames += 1
                t0 = self._clock()
                symbols = self.decoder.decode(frame.image, effort="fast", formats=self._formats, roi=self._roi)
                t1 = self._clock()
                self.last_decode_ms = (t1 - t0) * 1000
                if symbols:
                    self._emit(frame, symbols, "fast", t1)
                else:
                    with self._deliver:
                        self.deduper.filter([])  # expire keys on empty frames too (§2.5)
                    self.deep.offer(frame)
            except Exception:
                # A bad frame must not end the gate's scanning: log it and take the next one.
                log.exception("%s failed on frame seq=%d", self._name, seq)
                self._stop.wait(0.05)
