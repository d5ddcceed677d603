"""Cost of a large bundle on the gate (bundles.md §3.5 M10–M14): a county roster through
``bundle build``, verification and the switch, and lookups in the bundle file.

    .venv/bin/python bench/bundle_apply.py [--staff 50000]

Builds the eight parts (``roster.csv`` with N staff, two badge codes each), signs a
manifest, and applies it on a fresh gate data directory from memory (no network):
M9–M11 (listing, hashes, part schemas, rules and trust loading), M12 (the SQLite
bundle file) and M13 (the switch). Then opens the bundle as the gate process does
and times ``person_by_code`` lookups; then the one-key switch on top of it (only the
mode part changes: the roster tables are copied from the bundle file in force). Prints one JSON line:
seconds per phase, part and file sizes, lookups per second, peak RSS. Never asserted.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.bundles import SQLiteBundle  # noqa: E402
from sync.bundle import build_parts, manifest_body, part_bytes, sign_manifest, validate_parts  # noqa: E402
from tests.bundles.helpers import DEVICE, T0, DictFetcher, Fleet, Gate, default_sources  # noqa: E402


def roster_csv(n: int) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["sub", "codes", "name", "role", "firm", "team", "zones", "closed_loop", "colour", "flags",
                "last_test"])
    for i in range(n):
        h = hashlib.sha256(str(i).encode()).hexdigest()
        w.writerow([h[:32], f"{h[32:64]};{h[:16]}{h[48:64]}", "张*三", "staff", f"F{i % 500:04d}", f"T{i % 7}",
                    "production;warehouse", "false", "green", "", "2026-11-30T08:00:00.000Z"])
    return out.getvalue().encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--staff", type=int, default=50_000, help="50 000 staff with two codes is ~15 MiB, near the cap")
    ap.add_argument("--lookups", type=int, default=20_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ck-apply-"))
    try:
        src = default_sources()
        files = {f"{n}.json": part_bytes(o) for n, o in src.items() if n != "roster"}
        files["roster.json"] = json.dumps({"roster_key": "ab" * 32, "teams": []}).encode()
        files["roster.csv"] = roster_csv(args.staff)
        t = time.perf_counter()
        parts = build_parts(files)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        validate_parts(parts)
        validate_s = time.perf_counter() - t

        fleet = Fleet()
        body = manifest_body(fleet=fleet.fleet, site=fleet.site, version=1, keys_version=1, parts=parts,
                             issued_at_ms=T0, server_time_ms=T0, expires_ms=T0 + 86_400_000, previous=None)
        manifest = sign_manifest(body, fleet.publishers)
        gate = Gate(tmp / "gate", floor="2026-11-01T00:00:00.000Z", device_id=DEVICE)
        gate.updater.install_anchor(fleet.keys_docs[1])
        gate.clock.set(T0 + 60_000)
        f = DictFetcher(parts={hashlib.sha256(b).hexdigest(): b for b in parts.values()})
        t = time.perf_counter()
        res = gate.updater.offer_manifest(manifest, f)
        apply_s = time.perf_counter() - t
        assert res.outcome == "accept", res
        # the one-key switch on top: only the mode part changes (bundles.md §4.3)
        from sync.bundle import parse_manifest

        mode = dict(src["mode"], mode="emergency")
        parts2 = dict(parts, mode=part_bytes(mode))
        body2 = manifest_body(fleet=fleet.fleet, site=fleet.site, version=2, keys_version=1, parts=parts2,
                              issued_at_ms=T0 + 1000, server_time_ms=T0 + 1000, expires_ms=T0 + 86_400_000,
                              previous=parse_manifest(manifest))
        f.parts[hashlib.sha256(parts2["mode"]).hexdigest()] = parts2["mode"]
        t = time.perf_counter()
        res = gate.updater.offer_manifest(sign_manifest(body2, fleet.publishers), f)
        switch_s = time.perf_counter() - t
        assert res.outcome == "accept", res
        p = gate.pointer()
        path = gate.dir / "bundles" / p.bundle_file
        t = time.perf_counter()
        view = SQLiteBundle(path, manifest_id=p.manifest_id)
        open_s = time.perf_counter() - t
        codes = [hashlib.sha256(str(i).encode()).hexdigest()[32:64] for i in range(0, args.staff,
                                                                                  max(1, args.staff // args.lookups))]
        t = time.perf_counter()
        hits = sum(view.person_by_code(c) is not None for c in codes)
        lookup_s = time.perf_counter() - t
        view.close()
        gate.close()
        print(json.dumps({
            "bench": "bundle_apply", "staff": args.staff, "roster_part_bytes": len(parts["roster"]),
            "roster_csv_bytes": len(files["roster.csv"]), "bundle_file_bytes": path.stat().st_size,
            "build_parts_s": round(build_s, 2), "validate_parts_s": round(validate_s, 2),
            "apply_s": round(apply_s, 2), "mode_switch_apply_s": round(switch_s, 3), "open_view_s": round(open_s, 3),
            "person_by_code_per_s": round(len(codes) / lookup_s), "lookup_hits": hits,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine()},
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
