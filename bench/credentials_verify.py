"""Verifications per second on one core: CK1 Ed25519, CK1 ES256, HC1 ES256 (credentials.md §9).

Usage:
    .venv/bin/python bench/credentials_verify.py [--seconds 3] [--cpu 0]

For each case it measures, in the same run and on the same core, the full
``edge.credentials.verify`` (all ten checks, claims built) and the raw ``cryptography``
signature verification of the same bytes, and prints both rates, the CPU time per
verify and the ratio (our overhead on top of the signature). A trust list of 300
entries is loaded once, as a gate with a county's worth of issuer keys would. It also
prints where the time goes, stage by stage. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edge.credentials import base45, load_trust, verify
from edge.credentials.cbor_strict import loads
from edge.credentials.cose import parse_sign1, sig_structure

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "testvectors" / "credentials.json"
CASES = (("CK1 Ed25519", "health_green"), ("CK1 ES256", "health_green_es256"), ("HC1 ES256", "hc1_test_valid"))


def _rate(fn: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """(calls per wall second, CPU seconds per call) over about ``seconds``."""
    fn()
    n, batch = 0, 50
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(batch):
            fn()
        n += batch
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, cpu / n


def _padded_trust(case_trust: dict[str, Any], total: int) -> Any:
    """The case's trust entries among ``total`` others (an index must not get slower with size)."""
    filler = []
    for i in range(total - len(case_trust["keys"])):
        key = ec.derive_private_key(1000 + i, ec.SECP256R1())
        from cryptography.hazmat.primitives import serialization

        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        import base64

        filler.append({"public_key": base64.b64encode(der).decode(), "kinds": ["health"]})
    return load_trust({"keys": filler + case_trust["keys"]})


def _worst_cases(vectors: dict[str, Any], seconds: float) -> None:
    """The most work a hostile code can cause: the inflate cap (64 KiB) filled with CBOR items,
    in a payload that is *correctly signed* so every check runs (credentials.md §3.3)."""
    from edge.credentials.cbor_strict import Tag, dumps
    from sync.keys import generate_key

    case = vectors["health_green"]
    seed = bytes.fromhex(case["signer"]["ed25519_seed_hex"])
    key = generate_key("issuer", "bench", "ed25519", seed=seed)
    trust = load_trust(case["trust"])
    at = datetime.fromisoformat(case["at"].replace("Z", "+00:00"))
    n = 65536 - 200
    payloads = {
        "64 KiB array of 65k integers": b"\x9a" + n.to_bytes(4, "big") + b"\x00" * n,
        "64 KiB indefinite array": b"\x9f" + b"\x00" * n + b"\xff",
        "16-deep arrays around 65k items": b"\x81" * 15 + b"\x9a" + n.to_bytes(4, "big") + b"\x00" * n,
    }
    for label, payload in payloads.items():
        protected = dumps({1: -8, 4: bytes.fromhex(key.keyid)})
        cose = dumps(Tag(18, [protected, {}, payload, key.sign(sig_structure(protected, payload))]))
        text = "CK1:" + base45.encode(zlib.compress(cose, 9))
        cpu = _rate(lambda text=text: verify(text, trust, at), seconds / 5)[1]
        print(f"hostile worst case, {label} ({len(text)} characters): {cpu * 1000:.1f} ms CPU per verify")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the first allowed)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    else:
        cpu = None
    if not VECTORS.exists():
        print(f"test vectors not found at {VECTORS}", file=sys.stderr)
        return 2
    vectors = {c["name"]: c for c in json.loads(VECTORS.read_text("utf-8"))}
    import cryptography

    print(f"machine: {platform.machine()} {_cpu_model()} cpus={os.cpu_count()} pinned to cpu {cpu}, "
          f"python {platform.python_version()}, cryptography {cryptography.__version__}")
    print("ratio = raw signature rate / full verify rate (wall, same core, same run); "
          "cpu ratio = the same from CPU time (robust on a shared machine)")
    print(f"{'case':<13} {'verify/s':>10} {'µs CPU':>8} {'raw sig/s':>10} {'µs CPU':>8} {'ratio':>6} {'cpu ratio':>9}")
    for label, name in CASES:
        case = vectors[name]
        trust = _padded_trust(case["trust"], 300)
        at = datetime.fromisoformat(case["at"].replace("Z", "+00:00"))
        text = case["text"]
        result = verify(text, trust, at)
        assert result.ok, (label, result.checks)
        sign1 = parse_sign1(zlib.decompress(base45.decode(text[4:])), hc1=text.startswith("HC1:"))
        kid = sign1.protected.get(4, sign1.unprotected.get(4))
        entry = trust.lookup(kid)[0]
        message = sig_structure(sign1.protected_raw, sign1.payload)
        sig = sign1.signature
        if entry.key_type == "ed25519":
            def raw(entry: Any = entry, sig: bytes = sig, message: bytes = message) -> None:
                entry.key.verify(sig, message)
        else:
            def raw(entry: Any = entry, sig: bytes = sig, message: bytes = message) -> None:
                der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                entry.key.verify(der, message, ec.ECDSA(hashes.SHA256()))

        ours, ours_cpu = _rate(lambda text=text, trust=trust, at=at: verify(text, trust, at), args.seconds)
        theirs, theirs_cpu = _rate(raw, args.seconds)
        print(f"{label:<13} {ours:>10,.0f} {ours_cpu * 1e6:>8.0f} {theirs:>10,.0f} {theirs_cpu * 1e6:>8.0f} "
              f"{theirs / ours:>6.2f} {ours_cpu / theirs_cpu:>9.2f}")

    # Where the time goes, for the HC1 case (the longest path).
    case = vectors["hc1_test_valid"]
    text = case["text"]
    compressed = base45.decode(text[4:])
    cose = zlib.decompress(compressed)
    sign1 = parse_sign1(cose, hc1=True)
    claims = loads(sign1.payload)
    from edge.credentials import hc1

    stages = {
        "base45": lambda: base45.decode(text[4:]),
        "inflate": lambda: zlib.decompressobj().decompress(compressed, 65537),
        "cose": lambda: parse_sign1(cose, hc1=True),
        "cwt decode": lambda: loads(sign1.payload),
        "dcc schema": lambda: hc1.check_schema(claims),
    }
    print("HC1 stages (µs CPU): " + ", ".join(
        f"{k} {_rate(fn, args.seconds / 5)[1] * 1e6:.0f}" for k, fn in stages.items()))
    ref = hc1.reference_validator()
    dcc = hc1.to_json(claims[-260][1])
    print(f"jsonschema (reference) on the same DCC: {_rate(lambda: ref.is_valid(dcc), args.seconds / 5)[1] * 1e6:.0f} "
          f"µs CPU; compiled checker: {_rate(lambda: hc1.schema_predicate()(dcc), args.seconds / 5)[1] * 1e6:.0f} µs CPU")
    _worst_cases(vectors, args.seconds)
    print(f"at {datetime.now(UTC).isoformat(timespec='seconds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
