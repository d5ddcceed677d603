"""``checkpoint decode``: read QR codes from images and video files (``specs/hardware.md`` §2.8).

Images give one result each (``frame`` 0), video files one per frame that holds a symbol
(``frame`` counts from 0). A file that cannot be read gives an error result
(``"error": "cannot read image"``), the other files are still read, and the exit code is 1.

Images are read the way a person expects: transparency is laid on white (a QR saved with a
transparent background is black on nothing), 16-bit and float images are brought to 8 bits.
An image that declares more than ``MAX_PIXELS`` pixels, or a file above ``MAX_IMAGE_BYTES``,
is refused rather than decoded into gigabytes of memory.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

__all__ = ["MAX_IMAGE_BYTES", "MAX_PIXELS", "VIDEO_SUFFIXES", "decode", "load_image"]

VIDEO_SUFFIXES = frozenset(
    {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mjpg", ".mjpeg", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp"}
)
MAX_IMAGE_BYTES = 256 * 1024 * 1024
MAX_PIXELS = 120_000_000
ERROR_TEXT = "cannot read image"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"})


class UnreadableFile(Exception):
    """This file is not an image or video we can read; the message says why (for stderr)."""


@dataclass(frozen=True)
class _Result:
    frame: int
    symbols: list[Any]


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or JPEG header, before decoding anything."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + length
    return None


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any image OpenCV decoded → 8-bit grey or BGR; alpha composited on white."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.nan_to_num(image) * 255.0, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image.astype(np.float64) - lo) * (255.0 / ((hi - lo) or 1.0))).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (2, 4):
        colour = image[:, :, :1] if image.shape[2] == 2 else image[:, :, :3]
        alpha = image[:, :, -1:].astype(np.float32) / 255.0
        image = (colour.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        if image.shape[2] == 1:
            image = image[:, :, 0]
    return np.ascontiguousarray(image)


def load_image(path: Path) -> np.ndarray:
    """Read an image file for decoding.

    Raises:
        UnreadableFile: missing, a directory, too large, or not an image OpenCV can decode.
    """
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UnreadableFile("is a directory")
        if size > MAX_IMAGE_BYTES:
            raise UnreadableFile(f"file is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from exc
    if not data:
        raise UnreadableFile("empty file")
    dims = _declared_size(data)
    if dims is not None and dims[0] * dims[1] > MAX_PIXELS:
        raise UnreadableFile(f"image declares {dims[0]}x{dims[1]} pixels, more than {MAX_PIXELS:,}")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise UnreadableFile("not an image OpenCV can decode") from exc
    if image is None or image.size == 0:
        raise UnreadableFile("not an image OpenCV can decode")
    return _to_bgr8(image)


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a video file; raises UnreadableFile when it is not a readable video."""
    if not path.is_file():
        raise UnreadableFile("no such file" if not path.exists() else "not a regular file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UnreadableFile("not a video OpenCV can open")
        n = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            n += 1
            yield frame
        if n == 0:
            raise UnreadableFile("no frame could be decoded")
    finally:
        cap.release()


def _results(path: Path, effort: str, formats: tuple[str, ...]) -> Iterator[_Result]:
    from edge.decode import decode as decode_image

    if path.suffix.lower() in VIDEO_SUFFIXES:
        for i, frame in enumerate(_video_frames(path)):
            symbols = decode_image(frame, effort=effort, formats=formats)  # type: ignore[arg-type]
            if symbols:
                yield _Result(i, symbols)
        return
    try:
        image = load_image(path)
    except UnreadableFile as exc:
        # An unknown suffix may still be a video (e.g. a camera's raw .h264 dump).
        if not path.is_file() or path.suffix.lower() in IMAGE_SUFFIXES:
            raise
        try:
            frames = _video_frames(path)
            for i, frame in enumerate(frames):
                symbols = decode_image(frame, effort=effort, formats=formats)  # type: ignore[arg-type]
                if symbols:
                    yield _Result(i, symbols)
        except UnreadableFile:
            raise exc from None
        return
    yield _Result(0, decode_image(image, effort=effort, formats=formats))  # type: ignore[arg-type]


def _printable(text: str) -> str:
    """Control characters escaped so one symbol stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _symbol_doc(sym: Any, verbose: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": sym.format, "text": sym.text}
    if verbose:
        doc["position"] = [list(p) for p in sym.position]
        doc["decoder"] = sym.decoder
    return doc


def _emit(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False))


@click.command("decode")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per image / per video frame with codes.")
@click.option(
    "--effort",
    type=click.Choice(["fast", "full"]),
    default="full",
    show_default=True,
    help="fast: the camera loop's path; full: every fallback (still images).",
)
@click.option("--verbose", "-v", is_flag=True, help="Add each symbol's position and decoder.")
@click.option(
    "--format",
    "formats",
    multiple=True,
    default=("QRCode",),
    show_default=True,
    help="Barcode format to read (zxing-cpp name; repeat for several, e.g. --format DataMatrix).",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def decode(ctx: click.Context, as_json: bool, effort: str, verbose: bool, formats: tuple[str, ...], paths: tuple[Path, ...]) -> None:
    """Read QR codes from images and video files (PATH...).

    读取图片和视频文件中的二维码。Exit code 1 when a file cannot be read (the others are
    still read).
    """
    from edge.decode import _formats

    try:
        _formats(tuple(formats))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from exc
    failed = False
    for path in paths:
        source = str(path)
        found_any = False
        try:
            for result in _results(path, effort, tuple(formats)):
                found_any = found_any or bool(result.symbols)
                if as_json:
                    _emit({
                        "source": source,
                        "frame": result.frame,
                        "symbols": [_symbol_doc(s, verbose) for s in result.symbols],
                    })  # fmt: skip
                    continue
                where = source if result.frame == 0 and path.suffix.lower() not in VIDEO_SUFFIXES else (
                    f"{source} [frame {result.frame}]"
                )
                for s in result.symbols:
                    line = f"{where}: {s.format}: {_printable(s.text)}"
                    if verbose:
                        corners = " ".join(f"{x},{y}" for x, y in s.position)
                        line += f"  (decoder={s.decoder} position={corners})"
                    click.echo(line)
        except UnreadableFile as exc:
            failed = True
            if as_json:
                _emit({"source": source, "frame": None, "symbols": [], "error": ERROR_TEXT})
            click.echo(f"checkpoint decode: {source}: {ERROR_TEXT}: {exc} / 无法读取", err=True)
            continue
        if not found_any and not as_json:
            click.echo(f"{source}: no code found / 未找到二维码", err=True)
        sys.stdout.flush()
    if failed:
        ctx.exit(1)
