"""Decode benchmark (hardware.md §2.6): our ``decode`` against raw zxing-cpp and raw pyzbar,
measured in the same run on the generated corpus (``bench/decode/corpus.py``).

    .venv/bin/python bench/decode/run.py                 # 240 frames with codes + 40 empty
    .venv/bin/python bench/decode/run.py --quick         # 60 + 12, while others work
    .venv/bin/python bench/decode/run.py --write         # also append the figures to bench/RESULTS.md

Each frame is given to every decoder in turn (so machine noise hits them alike), one thread.
Decode rate = expected payloads read exactly / expected payloads; wrong payloads are counted
apart. Time = ms per frame (median and mean), with codes and on empty frames, including each
decoder's own grey conversion: raw zxing-cpp is given the BGR frame as a user would (it
converts internally), raw pyzbar the ``cv2.cvtColor`` grey (on a BGR frame it would read the
blue channel only), our ``decode`` the BGR frame.

Acceptance (issue 7): ours (fast) reads at least as many as raw zxing-cpp, and costs at most
1.3x raw zxing-cpp per frame, with codes and on empty frames.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zxingcpp

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.decode.corpus import Sample, generate  # noqa: E402
from edge.decode import Decoder  # noqa: E402


def _raw_zxing(image: np.ndarray) -> list[bytes]:
    res = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode, text_mode=zxingcpp.TextMode.Plain)
    return [bytes(r.bytes) for r in res]


def _raw_pyzbar() -> Callable[[np.ndarray], list[bytes]] | None:
    try:
        from pyzbar import pyzbar
    except ImportError:
        return None

    def run(image: np.ndarray) -> list[bytes]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        try:
            return [s.data for s in pyzbar.decode(gray, symbols=[pyzbar.ZBarSymbol.QRCODE])]
        except ValueError:  # pyzbar 0.1.9 on structured append (§2.3)
            return []

    return run


@dataclass
class Tally:
    expected: int = 0
    read: int = 0
    wrong: int = 0
    ms_code: list[float] = field(default_factory=list)
    ms_empty: list[float] = field(default_factory=list)
    by_tag: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    frames_read: set[str] = field(default_factory=set)


def run(codes: int, empty: int, seed: int, repeat: int) -> tuple[dict[str, Tally], list[Sample], float]:
    ours = Decoder(pyzbar=True)
    decoders: dict[str, Callable[[np.ndarray], list[bytes]]] = {
        "ours fast": lambda im: [s.raw for s in ours.decode(im, effort="fast")],
        "ours full": lambda im: [s.raw for s in ours.decode(im, effort="full")],
        "zxing-cpp": _raw_zxing,
    }
    pz = _raw_pyzbar()
    if pz is not None:
        decoders["pyzbar"] = pz
    t0 = time.perf_counter()
    samples = list(generate(codes=codes, empty=empty, seed=seed))
    gen_s = time.perf_counter() - t0
    for fn in decoders.values():  # warm up: imports, first-call allocations
        for s in samples[:3]:
            fn(s.image)
    tallies = {name: Tally() for name in decoders}
    for s in samples:
        expected = [t.encode() for t in s.texts]
        for name, fn in decoders.items():
            best = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                got = fn(s.image)
                best = min(best, (time.perf_counter() - t) * 1000)
            tally = tallies[name]
            (tally.ms_code if expected else tally.ms_empty).append(best)
            hits = sum(1 for e in expected if e in got)
            tally.expected += len(expected)
            tally.read += hits
            tally.wrong += sum(1 for g in got if g not in expected)
            if expected and hits == len(expected):
                tally.frames_read.add(s.name)
            for tag in s.tags:
                tally.by_tag[tag][0] += hits
                tally.by_tag[tag][1] += len(expected)
    return tallies, samples, gen_s


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def report(tallies: dict[str, Tally], samples: list[Sample], args: argparse.Namespace, gen_s: float) -> str:
    n_code = sum(1 for s in samples if s.texts)
    n_empty = len(samples) - n_code
    lines = []
    lines.append(
        f"corpus: {n_code} frames with codes ({sum(len(s.texts) for s in samples)} payloads), {n_empty} empty, "
        f"1280x720 BGR, seed {args.seed}; generated in {gen_s:.1f} s; best of {args.repeat} per frame"
    )
    lines.append("")
    lines.append("| decoder | read | rate | wrong | ms/frame with code (median / mean) | ms/frame empty (median / mean) |")
    lines.append("|---|---|---|---|---|---|")
    for name, t in tallies.items():
        lines.append(
            f"| {name} | {t.read}/{t.expected} | {100 * t.read / max(1, t.expected):.1f} % | {t.wrong} | "
            f"{_median(t.ms_code):.2f} / {_mean(t.ms_code):.2f} | {_median(t.ms_empty):.2f} / {_mean(t.ms_empty):.2f} |"
        )
    zx = tallies["zxing-cpp"]
    lines.append("")
    lines.append("ratios against raw zxing-cpp (same run):")
    for name in ("ours fast", "ours full"):
        t = tallies[name]
        lines.append(
            f"- {name}: reads {t.read - zx.read:+d}; time with code median {_median(t.ms_code) / _median(zx.ms_code):.2f}x "
            f"(mean {_mean(t.ms_code) / _mean(zx.ms_code):.2f}x); empty median "
            f"{_median(t.ms_empty) / _median(zx.ms_empty):.2f}x (mean {_mean(t.ms_empty) / _mean(zx.ms_empty):.2f}x)"
        )
    if "pyzbar" in tallies:
        union = tallies["zxing-cpp"].frames_read | tallies["pyzbar"].frames_read
        lines.append(
            f"- frames read whole by zxing-cpp or pyzbar: {len(union)}/{n_code}; by ours full: "
            f"{len(tallies['ours full'].frames_read)}/{n_code}; by ours fast: {len(tallies['ours fast'].frames_read)}/{n_code}"
        )
    fast, full = tallies["ours fast"], tallies["ours full"]
    ok_rate = fast.read >= zx.read
    ok_code = _median(fast.ms_code) <= 1.3 * _median(zx.ms_code)
    ok_empty = _median(fast.ms_empty) <= 1.3 * _median(zx.ms_empty)
    lines.append(
        f"- acceptance (ours fast vs raw zxing-cpp): rate {'holds' if ok_rate else 'FAILS'}; "
        f"time with code {'holds' if ok_code else 'FAILS'}; empty {'holds' if ok_empty else 'FAILS'}; "
        f"ours full reads {full.read - zx.read:+d} more than zxing-cpp"
    )
    lines.append("")
    tags = sorted({tag for s in samples for tag in s.tags if tag != "empty"})
    lines.append("read rate by condition (payloads read / in view):")
    lines.append("")
    lines.append("| condition | " + " | ".join(tallies) + " |")
    lines.append("|---|" + "---|" * len(tallies))
    for tag in tags:
        cells = []
        for t in tallies.values():
            hit, tot = t.by_tag.get(tag, [0, 0])
            cells.append(f"{hit}/{tot}")
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    zbar = "missing"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libzbar0"], capture_output=True, text=True)
        zbar = out.stdout.strip() or zbar
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"zxing-cpp {version('zxing-cpp')}, pyzbar {version('pyzbar')} + libzbar0 {zbar}, "
        f"opencv {cv2.__version__}, numpy {np.__version__}; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work was running: compare ratios, not absolute ms)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codes", type=int, default=240, help="frames with codes")
    ap.add_argument("--empty", type=int, default=40, help="empty frames")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--repeat", type=int, default=3, help="time each decoder this many times per frame, keep the best")
    ap.add_argument("--quick", action="store_true", help="60 + 12 frames, one timing each")
    ap.add_argument("--write", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.codes, args.empty, args.repeat = 60, 12, 1
    cv2.setNumThreads(1)
    tallies, samples, gen_s = run(args.codes, args.empty, args.seed, args.repeat)
    text = report(tallies, samples, args, gen_s)
    print(text)
    if args.write:
        cmd = "python bench/decode/run.py " + " ".join(a for a in (argv or sys.argv[1:]) if a != "--write")
        section = (
            f"\n## Decode (hardware.md §2.6, issue 7) — {dt.date.today().isoformat()}\n\n"
            f"Machine: {machine()}.\n\nCommand: `{cmd.strip()}` (one thread; `cv2.setNumThreads(1)`).\n\n{text}\n"
        )
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(section)
        print("\nappended to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
