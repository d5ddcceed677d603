"""Code images for the camera and decode tests, generated with segno (nothing stored)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import segno

BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def ck1_like(seed: int, length: int = 330) -> str:
    """A CK1-shaped text of our credential size (credentials.md §2.6: 310-400 characters)."""
    rng = np.random.default_rng(seed)
    return "CK1:" + "".join(BASE45[i] for i in rng.integers(0, 45, length - 4))


def modules(payload: str | bytes, *, error: str = "q") -> np.ndarray:
    """The QR's modules (True = dark) with a 4-module quiet zone."""
    qr = segno.make(payload, error=error, micro=False)
    return np.pad(np.array([[bool(v) for v in row] for row in qr.matrix], dtype=bool), 4)


def qr_grey(payload: str | bytes, *, px: int = 6, error: str = "q", invert: bool = False) -> np.ndarray:
    """A crisp grey code image, ``px`` pixels per module, dark modules 0."""
    img = np.where(modules(payload, error=error), 0, 255).astype(np.uint8)
    if invert:
        img = 255 - img
    return cv2.resize(img, None, fx=px, fy=px, interpolation=cv2.INTER_NEAREST)


def scaled(code: np.ndarray, factor: float) -> np.ndarray:
    """Shrink a crisp code the way a lens does (area averaging)."""
    return cv2.resize(code, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def frame(
    placements: Sequence[tuple[np.ndarray, int, int]] = (),
    *,
    size: tuple[int, int] = (1280, 720),
    background: int = 150,
    colour: bool = True,
    texture: bool = True,
) -> np.ndarray:
    """A camera-like frame (BGR by default) with each grey code image pasted at (x, y)."""
    w, h = size
    out = np.full((h, w), background, np.uint8)
    # A little texture so the frame is not a flat field.
    if texture:
        out[::37, :] = background - 40
    for img, x, y in placements:
        ih, iw = img.shape[:2]
        out[y : y + ih, x : x + iw] = img
    if not colour:
        return out
    bgr = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    bgr[..., 0] = np.clip(bgr[..., 0].astype(np.int16) + 12, 0, 255).astype(np.uint8)  # a slightly blue tint
    return bgr


def write_video(path: str, frames: Sequence[np.ndarray], fps: float = 10.0) -> None:
    """An MJPG .avi (works in the headless OpenCV wheel, hardware.md §2.1)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "VideoWriter MJPG not available"
    try:
        for f in frames:
            writer.write(f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()
