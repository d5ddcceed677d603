"""A seeded, generated corpus of gate camera frames for the decode benchmark (hardware.md §2.6).

Codes of our own sizes: CK1 credentials are 310-400 alphanumeric characters (credentials.md
§2.6: QR version 13-15 at ECC Q), plus short tokens (a 48-character token as in §2.6, badge
numbers, a URL). Each is made with segno and placed with OpenCV in a 1280x720 frame the way a
gate camera sees it: printed on paper, shown on a phone screen (bezel, bright screen, moire
from the pixel grid) or on a laminated badge (glare); at a scale of 2.6-8 px per module,
rotated in plane, tilted (perspective), blurred (focus or motion), noisy, under uneven light,
at low contrast, sometimes inverted, sometimes two codes in one frame, and finally compressed
as the camera's MJPEG would. Empty frames are the same scenes without a code.

Nothing is stored: ``generate(seed=...)`` rebuilds the identical corpus every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import segno

__all__ = ["BASE45", "Sample", "ck1_text", "code_matrix", "generate", "render_code", "short_token"]

BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
WIDTH, HEIGHT = 1280, 720


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # BGR uint8
    texts: tuple[str, ...]  # the payloads in view (empty for an empty frame)
    tags: tuple[str, ...] = field(default=())  # which conditions were applied (for the breakdown)


def ck1_text(rng: np.random.Generator, length: int | None = None) -> str:
    """A CK1-shaped text: ``CK1:`` + base45 characters, 310-400 characters in all."""
    n = int(length if length is not None else rng.integers(310, 401))
    # base45 of compressed bytes looks uniform; the space, which the alphabet allows, is rarer
    # at the ends in practice, but QR alphanumeric mode does not care.
    body = "".join(BASE45[i] for i in rng.integers(0, 45, n - 4))
    return "CK1:" + body


def short_token(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 3))
    if kind == 0:  # §2.6: a 48-character ASCII token
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 48))
    if kind == 1:  # a badge number
        return f"E{int(rng.integers(10**8, 10**9))}"
    return f"https://hc.example.gov.cn/q?c={int(rng.integers(10**11, 10**12))}&v=2"


def code_matrix(text: str, *, error: str = "q") -> np.ndarray:
    """The QR's modules (True = dark) including a 4-module quiet zone."""
    qr = segno.make(text, error=error, micro=False)
    m = np.array([[bool(v) for v in row] for row in qr.matrix], dtype=bool)
    return np.pad(m, 4, constant_values=False)


def render_code(text: str, *, module_px: int = 8, error: str = "q", invert: bool = False) -> np.ndarray:
    """A crisp grey image of the code (dark modules 0, light 255)."""
    m = code_matrix(text, error=error)
    img = np.where(m, 0, 255).astype(np.uint8)
    if invert:
        img = 255 - img
    return cv2.resize(img, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A gate scene: an uneven wall/floor gradient with clutter (signs, edges, text)."""
    base = rng.uniform(60, 190, 3)
    gx = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, :]
    gy = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[:, None]
    grad = (rng.uniform(-40, 40) * gx + rng.uniform(-40, 40) * gy)[..., None]
    img = np.clip(base[None, None, :] + grad, 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(img, (HEIGHT, WIDTH, 3))).copy()
    for _ in range(int(rng.integers(4, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
        x1, y1 = x0 + int(rng.integers(20, 400)), y0 + int(rng.integers(20, 300))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
        elif shape == 1:
            cv2.line(img, (x0, y0), (x1, y1), colour, int(rng.integers(1, 8)))
        else:
            cv2.putText(img, "GATE 3 出入口 EXIT", (x0, y0), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.5, 2.0)), colour, int(rng.integers(1, 4)))  # fmt: skip
    return img


def _carrier(
    code: np.ndarray, kind: str, rng: np.random.Generator, contrast: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """What the code is on: paper, a phone screen or a badge (grey, code mapped to `contrast`).

    Returns the carrier and the code's box in it ``(x0, y0, x1, y1)``.
    """
    lo, hi = contrast
    c = (code.astype(np.float32) / 255.0) * (hi - lo) + lo
    side = code.shape[0]
    if kind == "phone":
        pad = int(side * rng.uniform(0.05, 0.25))
        top, bottom, bezel = int(side * 0.5), int(side * 0.6), int(side * 0.06)
        screen = np.pad(c, pad, constant_values=hi)
        screen = np.pad(screen, ((top, bottom), (0, 0)), constant_values=hi * 0.97)
        x0, y0 = pad + bezel, pad + top + bezel
        return np.pad(screen, bezel, constant_values=20.0), (x0, y0, x0 + side, y0 + side)
    if kind == "badge":
        pad = int(side * 0.12)
        card = np.pad(c, pad, constant_values=hi)
        stripe = int(card.shape[0] * 0.25)
        card = np.pad(card, ((stripe, 0), (0, 0)), constant_values=float(rng.uniform(60, 140)))
        return card, (pad, pad + stripe, pad + side, pad + stripe + side)
    pad = int(side * rng.uniform(0.02, 0.3))
    return np.pad(c, pad, constant_values=hi), (pad, pad, pad + side, pad + side)


def _place(
    frame: np.ndarray,
    carrier: np.ndarray,
    code_box: tuple[int, int, int, int],
    rng: np.random.Generator,
    *,
    module_px: float,
    modules: int,
    rotate_deg: float,
    tilt: float,
    tint: np.ndarray,
    avoid: list[tuple[float, float, float, float]],
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Warp the carrier into the frame so the code has ``module_px`` per module, wholly in view
    and clear of the codes in ``avoid``; returns the carrier's mask and the code's frame box."""
    h, w = carrier.shape
    scale = module_px * modules / (code_box[2] - code_box[0])
    # Pre-shrink with area averaging (the lens and sensor integrate light), then warp.
    small = cv2.resize(carrier, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    sx, sy = sw / w, sh / h
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float32)
    code_src = np.array(
        [[code_box[0] * sx, code_box[1] * sy], [code_box[2] * sx, code_box[1] * sy],
         [code_box[2] * sx, code_box[3] * sy], [code_box[0] * sx, code_box[3] * sy]], dtype=np.float32,
    )  # fmt: skip
    jitter = rng.uniform(-tilt, tilt, (4, 2)).astype(np.float32) * np.array([sw, sh], dtype=np.float32)
    for attempt in range(60):
        # Shrink the rotation, then the tilt, until the code fits the frame.
        a = math.radians(rotate_deg * max(0.0, 1 - attempt / 30))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=np.float32)
        rel = (src - np.array([sw / 2, sh / 2], np.float32) + jitter * max(0.0, 1 - attempt / 60)) @ rot.T
        m0 = cv2.getPerspectiveTransform(src, rel.astype(np.float32))
        code_rel = cv2.perspectiveTransform(code_src[None], m0)[0]
        lo_x, hi_x = 6 - code_rel[:, 0].min(), WIDTH - 6 - code_rel[:, 0].max()
        lo_y, hi_y = 6 - code_rel[:, 1].min(), HEIGHT - 6 - code_rel[:, 1].max()
        if lo_x > hi_x or lo_y > hi_y:
            continue
        cx, cy = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
        dst = rel + np.array([cx, cy], dtype=np.float32)
        m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
        code_dst = code_rel + np.array([cx, cy], dtype=np.float32)
        box = (float(code_dst[:, 0].min()), float(code_dst[:, 1].min()),
               float(code_dst[:, 0].max()), float(code_dst[:, 1].max()))  # fmt: skip
        if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in avoid):
            break
    else:
        raise RuntimeError("cannot place the code in the frame")
    warped = cv2.warpPerspective(small, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpPerspective(np.ones_like(small), m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR, borderValue=0)
    # A carrier placed later covers the earlier code: keep the earlier codes' areas.
    for b in avoid:
        mask[int(b[1]) : int(b[3]) + 1, int(b[0]) : int(b[2]) + 1] = 0
    colour = warped[..., None] * tint[None, None, :]
    frame[:] = np.clip(frame * (1 - mask[..., None]) + colour * mask[..., None], 0, 255)
    return mask, box


def _glare(frame: np.ndarray, rng: np.random.Generator, mask: np.ndarray) -> None:
    ys, xs = np.nonzero(mask > 0.5)
    if not len(xs):
        return
    i = int(rng.integers(0, len(xs)))
    cx, cy = int(xs[i]), int(ys[i])
    rx, ry = int(rng.uniform(20, 90)), int(rng.uniform(10, 60))
    blob = np.zeros(frame.shape[:2], np.float32)
    cv2.ellipse(blob, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), float(rng.uniform(4, 15)))
    strength = float(rng.uniform(120, 230))
    frame[:] = np.clip(frame + blob[..., None] * strength, 0, 255)


def _moire(frame: np.ndarray, rng: np.random.Generator, mask: np.ndarray) -> None:
    """A phone screen filmed by a camera: beat pattern of two pixel grids."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    f = float(rng.uniform(0.03, 0.12))
    ang = float(rng.uniform(0, math.pi))
    wave = np.sin(2 * math.pi * f * (xx * math.cos(ang) + yy * math.sin(ang)))
    amp = float(rng.uniform(0.08, 0.25))
    factor = 1 + amp * wave * mask
    frame[:] = np.clip(frame * factor[..., None], 0, 255)


def _motion_blur(frame: np.ndarray, rng: np.random.Generator) -> None:
    k = int(rng.integers(3, 8))
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    kernel /= max(kernel.sum(), 1e-6)
    frame[:] = cv2.filter2D(frame, -1, kernel)


def _scene(rng: np.random.Generator, texts: list[str], tags: list[str]) -> np.ndarray:
    frame = _background(rng).astype(np.float32)
    boxes: list[tuple[float, float, float, float]] = []
    for n, text in enumerate(texts):
        ck1 = text.startswith("CK1:")
        error = "q" if ck1 else "m"
        invert = bool(rng.random() < 0.06)
        kind = str(rng.choice(["paper", "phone", "badge"], p=[0.4, 0.45, 0.15]))
        modules = code_matrix(text, error=error).shape[0]
        module_px = float(rng.uniform(2.6, 8.0)) if len(texts) == 1 else float(rng.uniform(2.8, 4.6))
        module_px = min(module_px, 620 / modules)  # the whole code must fit the 720-px height
        low = bool(rng.random() < 0.2)
        contrast = (int(rng.uniform(60, 110)), int(rng.uniform(150, 200))) if low else (
            int(rng.uniform(0, 40)), int(rng.uniform(215, 255)))
        code = render_code(text, module_px=6, error=error, invert=invert)
        carrier, code_box = _carrier(code, kind, rng, contrast)
        tint = rng.uniform(0.85, 1.0, 3).astype(np.float32)
        if kind == "phone":
            tint = np.array([1.0, 0.97, 0.92], np.float32)
        rotate = float(rng.uniform(-180, 180)) if rng.random() < 0.6 else float(rng.uniform(-10, 10))
        tilt = float(rng.uniform(0.0, 0.12)) if rng.random() < 0.6 else 0.0
        mask, box = _place(frame, carrier, code_box, rng, module_px=module_px, modules=modules,
                           rotate_deg=rotate, tilt=tilt, tint=tint, avoid=boxes)  # fmt: skip
        boxes.append(box)
        if n == 0:
            tags += [kind, f"px{min(7, int(module_px))}", "low_contrast" if low else "contrast_ok"]
            tags += ["inverted"] if invert else []
            tags += ["tilt"] if tilt > 0.06 else []
        if kind == "phone" and rng.random() < 0.7:
            _moire(frame, rng, mask)
            tags.append("moire")
        if (kind in ("badge", "phone") and rng.random() < 0.35) or rng.random() < 0.1:
            _glare(frame, rng, mask)
            tags.append("glare")
    out = frame.astype(np.uint8)
    r = rng.random()
    if r < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.6, 1.6)))
        tags.append("blur")
    elif r < 0.35:
        _motion_blur(out, rng)
        tags.append("motion")
    noise_sd = float(rng.uniform(0, 10)) if rng.random() < 0.6 else 0.0
    if noise_sd:
        out = np.clip(out.astype(np.float32) + rng.normal(0, noise_sd, out.shape), 0, 255).astype(np.uint8)
        if noise_sd > 6:
            tags.append("noise")
    return _jpeg(out, int(rng.uniform(55, 92)))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """What the camera's MJPEG does to a frame."""
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(jpg, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError("JPEG round trip failed")
    return decoded


def generate(*, codes: int = 240, empty: int = 40, seed: int = 20240601) -> Iterator[Sample]:
    """The corpus: ``codes`` frames with one (about 10 %: two) codes, then ``empty`` frames."""
    for i in range(codes):
        rng = np.random.default_rng([seed, i])
        n = 2 if rng.random() < 0.1 else 1
        texts = [ck1_text(rng) if rng.random() < 0.7 else short_token(rng) for _ in range(n)]
        tags: list[str] = ["two_codes"] if n == 2 else []
        tags.append("ck1" if texts[0].startswith("CK1:") else "short")
        image = _scene(rng, texts, tags)
        yield Sample(f"code-{i:04d}", image, tuple(texts), tuple(tags))
    for j in range(empty):
        rng = np.random.default_rng([seed, 100_000 + j])
        frame = _background(rng)
        if rng.random() < 0.5:  # a phone or a card without a code in view
            blank = np.full((300, 300), 255, np.uint8)
            cv2.putText(blank, "OK", (40, 190), cv2.FONT_HERSHEY_SIMPLEX, 4.0, 0, 8)
            carrier, box = _carrier(blank, "phone", rng, (10, 240))
            f32 = frame.astype(np.float32)
            _place(f32, carrier, box, rng, module_px=float(rng.uniform(3, 6)), modules=60,
                   rotate_deg=float(rng.uniform(-20, 20)), tilt=0.05, tint=np.ones(3, np.float32), avoid=[])  # fmt: skip
            frame = f32.astype(np.uint8)
        if rng.random() < 0.5:
            frame = np.clip(frame + rng.normal(0, 5, frame.shape), 0, 255).astype(np.uint8)
        yield Sample(f"empty-{j:04d}", _jpeg(frame, 80), (), ("empty",))
