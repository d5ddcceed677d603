"""``checkpoint decode`` (hardware.md §2.8) through the real entry point."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge.cli.decode as cli_decode
from edge.cli import main
from tests.camera.codes import ck1_like, frame, qr_grey, write_video


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["decode", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def write(path: Path, image: np.ndarray) -> Path:
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, tuple[Path, list[str]]]:
    a, b = ck1_like(401, 340), "https://hc.example.gov.cn/q?c=123456789012&v=2"
    return {
        "one": (write(tmp_path / "one.png", frame([(qr_grey(a, px=4), 100, 100)])), [a]),
        "two": (write(tmp_path / "two.jpg", frame([(qr_grey(a, px=4), 40, 40), (qr_grey(b, px=5), 700, 300)])), [a, b]),
        "none": (write(tmp_path / "none.png", frame()), []),
    }


def test_json_one_line_per_image_in_the_spec_shape(capsys, images):
    rc, out, _ = run(capsys, "--json", *(str(p) for p, _ in images.values()))
    assert rc == 0
    docs = json_lines(out)
    assert [d["source"] for d in docs] == [str(p) for p, _ in images.values()]
    for doc, (_, texts) in zip(docs, images.values(), strict=True):
        assert list(doc) == ["source", "frame", "symbols"] and doc["frame"] == 0
        assert doc["symbols"] == [{"format": "QRCode", "text": t} for t in texts]


def test_json_verbose_adds_position_and_decoder(capsys, images):
    path, texts = images["one"]
    rc, out, _ = run(capsys, "--json", "--verbose", "--effort", "fast", str(path))
    (doc,) = json_lines(out)
    (sym,) = doc["symbols"]
    assert rc == 0 and sym["text"] == texts[0] and sym["decoder"] == "zxing-cpp"
    assert len(sym["position"]) == 4 and all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in sym["position"])


def test_unreadable_files_give_an_error_line_and_exit_1_but_the_rest_is_read(capsys, tmp_path, images):
    good, texts = images["one"]
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00\x01 definitely not a picture" * 10)
    ok_png = cv2.imencode(".png", frame())[1].tobytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(ok_png[: len(ok_png) // 3])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    paths = [garbage, tmp_path / "missing.jpg", good, truncated, empty, tmp_path]
    rc, out, err = run(capsys, "--json", *(str(p) for p in paths))
    assert rc == 1
    docs = {d["source"]: d for d in json_lines(out)}
    assert set(docs) == {str(p) for p in paths}
    assert docs[str(good)]["symbols"] == [{"format": "QRCode", "text": texts[0]}]
    for p in paths:
        if p != good and p != truncated:
            assert docs[str(p)] == {"source": str(p), "frame": None, "symbols": [], "error": "cannot read image"}
    # A truncated PNG is either refused or decoded as far as it goes; it never stops the run.
    assert docs[str(truncated)].get("error") in (None, "cannot read image")
    assert "missing.jpg" in err


def test_oversize_images_are_refused(capsys, tmp_path, monkeypatch, images):
    # A PNG that declares 50000 x 50000 pixels in 100 bytes (a decompression bomb).
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)))
    big, _ = images["one"]
    monkeypatch.setattr(cli_decode, "MAX_IMAGE_BYTES", 1000)  # the real limit is 256 MiB
    rc, out, err = run(capsys, "--json", str(bomb), str(big))
    assert rc == 1
    assert [d.get("error") for d in json_lines(out)] == ["cannot read image", "cannot read image"]
    assert "50000x50000" in err and "larger than" in err


def test_video_one_line_per_frame_with_symbols(capsys, tmp_path):
    text = ck1_like(402, 330)
    frames = [frame(), frame([(qr_grey(text, px=4), 90, 90)]), frame(), frame([(qr_grey(text, px=4), 600, 200)])]
    path = tmp_path / "clip.avi"
    write_video(str(path), frames)
    rc, out, _ = run(capsys, "--json", "--effort", "fast", str(path))
    assert rc == 0
    assert [(d["frame"], d["symbols"]) for d in json_lines(out)] == [
        (1, [{"format": "QRCode", "text": text}]),
        (3, [{"format": "QRCode", "text": text}]),
    ]
    rc, out, _ = run(capsys, str(path))
    assert out.splitlines() == [f"{path} [frame 1]: QRCode: {text}", f"{path} [frame 3]: QRCode: {text}"]


def test_garbage_video_is_an_error(capsys, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 2048)
    rc, out, _ = run(capsys, "--json", str(bad))
    assert rc == 1 and json_lines(out) == [{"source": str(bad), "frame": None, "symbols": [], "error": "cannot read image"}]


def test_human_output_one_line_per_symbol(capsys, images):
    (two, texts), (none, _) = images["two"], images["none"]
    rc, out, err = run(capsys, str(two), str(none))
    assert rc == 0
    assert out.splitlines() == [f"{two}: QRCode: {t}" for t in texts]
    assert f"{none}: no code found" in err


def test_control_characters_stay_on_one_line(capsys, tmp_path):
    path = write(tmp_path / "nl.png", frame([(qr_grey("line1\nline2\x1b[31m", px=6), 100, 100)]))
    rc, out, _ = run(capsys, "-v", str(path))
    assert rc == 0 and len(out.splitlines()) == 1 and "\\n" in out and "\x1b" not in out
    assert "decoder=zxing-cpp" in out


def test_transparent_and_16_bit_images_are_read(capsys, tmp_path):
    text = "E100200300"
    code = qr_grey(text, px=6)
    # Black modules on a fully transparent background: laid on white, it reads.
    bgra = np.zeros((*code.shape, 4), np.uint8)
    bgra[..., 3] = np.where(code == 0, 255, 0)
    trans = write(tmp_path / "transparent.png", bgra)
    deep = write(tmp_path / "deep.png", (cv2.cvtColor(code, cv2.COLOR_GRAY2BGR).astype(np.uint16) * 257))
    rc, out, _ = run(capsys, "--json", str(trans), str(deep))
    assert rc == 0
    assert [d["symbols"] for d in json_lines(out)] == [[{"format": "QRCode", "text": text}]] * 2


def test_usage_errors_exit_2(capsys, images):
    path, _ = images["one"]
    assert run(capsys, "--effort", "medium", str(path))[0] == 2
    assert run(capsys, "--format", "NoSuchCode", str(path))[0] == 2
    assert run(capsys)[0] == 2  # no PATH


def test_registered_in_the_checkpoint_command(capsys):
    assert main(["decode", "--help"]) == 0
    assert "PATH" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "decode" in capsys.readouterr().out
