"""Fuzz each thermometer parser with 1,000,000 random chunks (hardware.md §1.14).

Prints, per parser: counters, readings, chance acceptances ("false accepts": bytes of a
cut frame plus what followed that pass the 8-bit sum or CRC-16), the largest buffer
between feeds against its bound, the time spent inside ``feed`` and the process's
peak RSS. For the Modbus reply framer the same chunks also go through pymodbus 3's
``FramerRTU`` (the peer the spec rejected, §1.4): replies found and throughput ratio.

Every feed is checked as in the tests: no exception, the buffer bound of §1.14, and
for the binary parsers accepted + garbage + pending == bytes fed.

    .venv/bin/python bench/thermometer_fuzz.py                # 1,000,000 chunks per parser
    .venv/bin/python bench/thermometer_fuzz.py --chunks 20000  # a quick look
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.thermometer.fuzz import PARSERS, chunks, make_stream, run

STREAM_BYTES = 4 << 20  # generated once per parser, cut into chunks cyclically
BOUNDS = {"gy": 13, "modbus1": 7, "modbus2": 9, "ascii": 129}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pymodbus_peer(stream: bytes, n: int, seed: int) -> dict[str, float]:
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU

    framer = FramerRTU(DecodePDU(False))
    buf = b""
    replies = errors = 0
    spent = 0.0
    for chunk in chunks(stream, n, seed):
        buf += chunk
        t0 = time.perf_counter()
        while buf:
            try:
                used, pdu = framer.handleFrame(buf, 0, 0)
            except Exception:  # the peer may choke on noise; count it, keep going
                errors += 1
                used, pdu = len(buf), None
            if pdu is not None and hasattr(pdu, "registers"):
                replies += 1
            if not used:
                break
            buf = buf[used:]
        spent += time.perf_counter() - t0
        if len(buf) > 4096:  # the peer has no bound of its own: cap it for the comparison
            buf = buf[-4096:]
    return {"replies": replies, "errors": errors, "feed_s": spent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--parsers", default=",".join(PARSERS))
    ap.add_argument("--no-peer", action="store_true", help="skip the pymodbus comparison")
    args = ap.parse_args()

    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''} "
          f"python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"chunks per parser: {args.chunks:,} (sizes 1-64), seed {args.seed}")
    for kind in args.parsers.split(","):
        t0 = time.perf_counter()
        stream = make_stream(kind, STREAM_BYTES, args.seed)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run(kind, args.chunks, args.seed, stream=stream, clock=time.perf_counter)
        wall = time.perf_counter() - t0
        mib = result["bytes"] / (1 << 20)
        counters = {k: v for k, v in result.items()
                    if k not in ("chunks", "bytes", "readings", "false_accepts", "max_pending", "feed_s")}
        print(f"\n[{kind}] {result['chunks']:,} chunks, {mib:.1f} MiB fed; stream generated in {gen_s:.1f} s")
        print(f"  counters: {counters}")
        print(f"  readings: {result['readings']:,}  false accepts: {result['false_accepts']:,} "
              f"({100 * result['false_accepts'] / max(1, result['readings']):.3f} % of readings)")
        print(f"  max buffered between feeds: {result['max_pending']} bytes "
              f"(bound {BOUNDS[kind]} + chunk); exceptions: 0; accounting checked on every feed")
        print(f"  feed: {result['feed_s']:.2f} s = {mib / result['feed_s']:.1f} MiB/s, "
              f"{1e6 * result['feed_s'] / result['chunks']:.2f} µs/chunk (whole loop with checks {wall:.1f} s)")
        print(f"  process peak RSS so far: {_rss_mib():.1f} MiB")
        if kind.startswith("modbus") and not args.no_peer:
            peer = _pymodbus_peer(stream[0], args.chunks, args.seed)
            print(f"  pymodbus FramerRTU on the same chunks: {peer['replies']:,} replies "
                  f"({peer['replies'] / max(1, result['readings']):.2f}× ours), {peer['errors']} exceptions, "
                  f"feed {peer['feed_s']:.2f} s; ours/pymodbus time ratio "
                  f"{result['feed_s'] / max(1e-9, peer['feed_s']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
