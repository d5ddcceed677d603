"""Fuzz ``edge.credentials.verify`` (credentials.md §3: never raises, never hangs).

Usage:
    .venv/bin/python bench/fuzz_credentials.py [--engine atheris|random] [--runs 1000000] [--seed 1]

Each input is turned into a scanned text at one of eight layers, so the fuzzer gets past
the outer checks instead of dying at ``prefix`` (the first byte picks the layer):

0. the bytes as text;                       4. a COSE_Sign1 whose payload is the bytes;
1. prefix + the bytes folded into base45;   5. a TEST vector with bytes of its COSE changed;
2. prefix + base45(bytes): zlib fuzzed;     6. a CK1 payload, *correctly signed* by a TEST key;
3. prefix + base45(zlib(bytes)): COSE;      7. an HC1 DCC payload, correctly signed by a DSC.

Every result must keep the invariants of §3.1-3.5 (``check_invariants``); a violation or
an exception is a crash. ``atheris`` (coverage-guided, libFuzzer) is used when installed;
the ``random`` engine is a seeded structure-aware generator with the same layers. The
slowest single input is printed: a hang would show here (and atheris's ``-timeout``).
``tests/credentials/test_hostile.py`` runs a short version of this target.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import zlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def _atheris_wanted(argv: list[str]) -> bool:
    """Run as a script with the atheris engine (or auto with atheris installed)?"""
    engine = "auto"
    for i, arg in enumerate(argv):
        if arg == "--engine" and i + 1 < len(argv):
            engine = argv[i + 1]
        elif arg.startswith("--engine="):
            engine = arg.split("=", 1)[1]
    if engine == "random":
        return False
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__" and _atheris_wanted(sys.argv[1:]):
    import atheris

    # Coverage feedback from the credentials package only: instrumenting numpy or
    # cryptography's Python parts as well would cost most of the speed.
    with atheris.instrument_imports(include=["edge.credentials"]):
        import edge.credentials.base45
        import edge.credentials.cbor_strict
        import edge.credentials.ck1
        import edge.credentials.cose
        import edge.credentials.hc1
        import edge.credentials.schema_check
        import edge.credentials.trust
        import edge.credentials.verifier  # noqa: F401

from edge.credentials import base45  # noqa: E402 - after the instrumented import above
from edge.credentials.cbor_strict import Tag, dumps  # noqa: E402 - after the instrumented import above
from edge.credentials.cose import sig_structure  # noqa: E402 - after the instrumented import above
from edge.credentials.trust import Trust, TrustEntry  # noqa: E402 - after the instrumented import above
from edge.credentials.verifier import CHECKS, ERRORS, Verification, verify  # noqa: E402 - after the instrumented import above

AT = datetime(2022, 5, 10, 8, 0, tzinfo=UTC)
KINDS = {None, "health", "pass", "venue", "material", "dcc"}
_PREREQ = {
    "base45": ("prefix",), "zlib": ("base45",), "cose": ("zlib",), "cwt": ("cose",), "kid": ("cose",),
    "signature": ("kid",), "schema": ("cwt",),
}


class InvariantError(AssertionError):
    pass


class _SafetyNetTripped(logging.Handler):
    """``verify`` catches any bug and logs it at ERROR: for the fuzzer that is a crash."""

    def emit(self, record: logging.LogRecord) -> None:
        raise InvariantError(f"verify's safety net caught a bug: {record.getMessage()} {record.exc_info!r}")


def arm_safety_net() -> None:
    logger = logging.getLogger("edge.credentials.verifier")
    if not any(isinstance(h, _SafetyNetTripped) for h in logger.handlers):
        handler = _SafetyNetTripped(level=logging.ERROR)
        logger.addHandler(handler)
        logger.propagate = False


def check_invariants(result: Any) -> None:
    """The shape rules every ``verify`` result keeps, whatever the input (§3.1-3.5)."""
    if not isinstance(result, Verification):
        raise InvariantError(f"not a Verification: {type(result)}")
    checks = result.checks
    if list(checks) != list(CHECKS) or any(v not in (True, False, None) for v in checks.values()):
        raise InvariantError(f"bad checks map {checks}")
    if result.ok != all(v is True for v in checks.values()):
        raise InvariantError("ok is not 'all ten true'")
    if checks["prefix"] is None:
        raise InvariantError("prefix always runs")
    for name, needs in _PREREQ.items():
        ready = all(checks[n] is True for n in needs)
        if (checks[name] is None) == ready:
            raise InvariantError(f"{name} ran={checks[name] is not None} but prerequisites ready={ready}")
    for name in ("not_expired", "valid_from"):
        if checks[name] is not None and checks["cwt"] is not True:
            raise InvariantError(f"{name} ran without cwt")
    first = next((n for n in CHECKS if checks[n] is not True), None)
    if first is None:
        if result.error is not None:
            raise InvariantError("error set although ok")
    else:
        expected = ERRORS[first][0] if checks[first] is False else ERRORS[first][1]
        if result.error != expected:
            raise InvariantError(f"error {result.error!r} for first failure {first}")
    if (result.claims is not None) != (checks["cwt"] is True and checks["schema"] is True):
        raise InvariantError("claims present exactly when cwt and schema are true")
    if result.kind not in KINDS or (result.kind is not None and checks["cwt"] is not True):
        raise InvariantError(f"kind {result.kind!r} with cwt {checks['cwt']}")
    if result.status not in ("valid", "expired", "not_yet_valid", "bad_signature", "unknown_kid", "unreadable"):
        raise InvariantError(f"status {result.status}")
    doc = result.to_json()
    if json.loads(json.dumps(doc, ensure_ascii=False)) != doc:
        raise InvariantError("to_json does not survive JSON")


# --- the layers ---------------------------------------------------------------------------------


class Layers:
    """Turns fuzz bytes into texts at each layer; holds the TEST keys and seeds."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        seed = bytes.fromhex("08890126bdc7c26f62439ea75439b7d48caa343c26a6d6135ab588533d18994b")  # §8 TEST key
        self.ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        from sync.keys import ed25519_keyid

        raw = self.ed.public_key().public_bytes_raw()
        self.ed_kid = bytes.fromhex(ed25519_keyid(raw))
        self.dsc = ec.derive_private_key(
            int("1dad2971d8e7c5c3536c8945ac60997da6cb0e41b20cb8c63ba95a0549865856", 16), ec.SECP256R1())
        self.dsc_kid = b"\xf7\x17\x8d\xfb\x47\x50\xd6\xe4"
        self.trust = Trust((
            TrustEntry(0, self.ed_kid, self.ed.public_key(), "ed25519", 0, None),
            TrustEntry(1, self.dsc_kid, self.dsc.public_key(), "ec", 32, frozenset({"dcc"}), True,
                       1640995200, 1704067199, None),
        ))
        self.seeds = self._seed_cose()

    def _seed_cose(self) -> list[tuple[str, bytes]]:
        out = []
        ck = {1: "HA-410400", 2: "99402d8da8317fc267036c4775b68b39", 4: 1652227200, 6: 1652140800,
              -65537: {"c": "g", "f": "F0012", "k": "h", "n": "张*三", "r": "staff", "t": 1652076720,
                       "id": b"\x4a\x76\x89\x7b\x86\xf2\xc3\xcd"}}
        self.payloads = [dumps(ck)]
        out.append(("CK1:", self._ck1_cose(dumps(ck))))
        dcc = {"ver": "1.3.0", "nam": {"fnt": "TEST", "gnt": "ANNA<MARIA"}, "dob": "1990-01-31",
               "t": [{"tg": "840539006", "tt": "LP6464-4", "sc": "2022-05-08T09:30:00Z", "tr": "260415000",
                      "co": "XA", "is": "TEST", "ci": "URN:UVCI:01:XA:TEST#X"}]}
        self.payloads.append(dumps({1: "XA", 4: 1652263200, 6: 1652004000, -260: {1: dcc}}))
        out.append(("HC1:", self._hc1_cose(self.payloads[1])))
        return out

    def _ck1_cose(self, payload: bytes) -> bytes:
        protected = dumps({1: -8, 4: self.ed_kid})
        sig = self.ed.sign(sig_structure(protected, payload))
        return dumps(Tag(18, [protected, {}, payload, sig]))

    def _hc1_cose(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        protected = dumps({1: -7, 4: self.dsc_kid})
        r, s = decode_dss_signature(self.dsc.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA256())))
        return dumps(Tag(18, [protected, {}, payload, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))

    @staticmethod
    def _wrap(prefix: str, cose: bytes) -> str:
        return prefix + base45.encode(zlib.compress(cose, 9))

    def text(self, data: bytes) -> tuple[int, str]:
        if not data:
            return 0, ""
        layer, body = data[0] % 8, data[1:]
        prefix = "HC1:" if data[0] & 0x80 else "CK1:"
        if layer == 0:
            return 0, body.decode("utf-8", "replace")
        if layer == 1:
            return 1, prefix + "".join(base45.ALPHABET[b % 45] for b in body)
        if layer == 2:
            return 2, prefix + base45.encode(body)
        if layer == 3:
            return 3, prefix + base45.encode(zlib.compress(body))
        if layer == 4:
            protected = dumps({1: -8, 4: self.ed_kid})
            return 4, self._wrap(prefix, dumps(Tag(18, [protected, {}, body, b"\x00" * 64])))
        if layer == 5:
            which, cose = self.seeds[len(body) % 2]
            mutated = bytearray(cose)
            for i in range(0, len(body) - 1, 2):
                mutated[body[i] * 7 % len(mutated)] ^= body[i + 1] or 1
            return 5, self._wrap(which, bytes(mutated))
        if data[0] & 0x40:  # correctly signed payloads: seed payload with bytes changed
            payload = bytearray(self.payloads[layer - 6])
            for i in range(0, len(body) - 1, 2):
                payload[body[i] * 7 % len(payload)] ^= body[i + 1] or 1
            body = bytes(payload)
        if layer == 6:
            return 6, self._wrap("CK1:", self._ck1_cose(body))
        return 7, self._wrap("HC1:", self._hc1_cose(body))


# --- engines ----------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.runs = 0
        self.slowest_s = 0.0
        self.reached: Counter[str] = Counter()
        self.layers: Counter[int] = Counter()

    def record(self, layer: int, result: Verification, elapsed_s: float) -> None:
        self.runs += 1
        self.layers[layer] += 1
        self.slowest_s = max(self.slowest_s, elapsed_s)
        for name in CHECKS:
            if result.checks[name] is True:
                self.reached[name] += 1


def one_input(layers: Layers, data: bytes, stats: Stats) -> None:
    layer, text = layers.text(data)
    start = time.perf_counter()
    result = verify(text, layers.trust, AT)
    elapsed = time.perf_counter() - start
    check_invariants(result)
    stats.record(layer, result, elapsed)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)):][: rng.randint(1, 8)]
        elif op == 2:
            at = rng.randint(0, len(buf))
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:
            buf = buf[: rng.randint(0, len(buf))]  # truncation
        else:
            at = rng.randint(0, len(buf))
            buf[at:at] = rng.choice(_INTERESTING)
    return bytes(buf[:65536])


_INTERESTING = [
    b"\xd2\x84", b"\xd8\x3d\xd2", b"\x9f", b"\xbf", b"\xff", b"\x5f", b"\x7f", b"\x1b" + b"\xff" * 8,
    b"\x9b" + b"\x7f" * 8, b"\xf9\x7e\x00", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\xc1\x1a",
    b"\x3a\x00\x01\x00\x00", b"\x39\x01\x03", b"\xa1\x01\xa1\x01", b"\x81" * 20, b"\xc6" * 20,
    b"\x61k\x61h", b"\x62id\x48", b"\x78\xda", b"\x78\x9c",
]


def run_random(runs: int, seed: int, *, progress: bool = True) -> Stats:
    """The seeded structure-aware engine: random layers, random bytes and mutations of both."""
    arm_safety_net()
    rng = random.Random(seed)
    layers = Layers()
    stats = Stats()
    corpus: list[bytes] = [bytes([layer]) for layer in range(8)]
    started = time.perf_counter()
    for i in range(runs):
        if corpus and rng.random() < 0.6:
            data = _mutate(rng, rng.choice(corpus))
        else:
            data = bytes([rng.randrange(256)]) + rng.randbytes(rng.choice((0, 4, 16, 64, 300, 2000)))
        one_input(layers, data, stats)
        if len(corpus) < 512 and rng.random() < 0.01:
            corpus.append(data)
        if progress and (i + 1) % 100_000 == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            print(f"  {i + 1:>9,} inputs  {rate:,.0f}/s  slowest {stats.slowest_s * 1000:.1f} ms", flush=True)
    return stats


def run_atheris(runs: int, seed: int) -> None:
    import atheris

    # The package was imported under atheris.instrument_imports at the top of the script.
    arm_safety_net()
    layers = Layers()
    stats = Stats()
    started = time.perf_counter()

    def target(data: bytes) -> None:
        one_input(layers, data, stats)
        if stats.runs % 100_000 == 0:
            rate = stats.runs / (time.perf_counter() - started)
            print(f"  {stats.runs:>9,} inputs  {rate:,.0f}/s  slowest {stats.slowest_s * 1000:.1f} ms", flush=True)
        if stats.runs == runs:  # libFuzzer exits the process itself after the last run
            report(stats, "atheris (libFuzzer, coverage-guided)")
            print(f"wall time {time.perf_counter() - started:.1f} s", flush=True)

    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={seed}", "-timeout=5", "-rss_limit_mb=2048",
                   "-max_len=65536", "-print_final_stats=1"], target)
    atheris.Fuzz()


def report(stats: Stats, engine: str) -> None:
    print(f"engine {engine}: {stats.runs:,} inputs, no exception, no invariant broken")
    print(f"slowest single input: {stats.slowest_s * 1000:.2f} ms")
    print("inputs per layer: " + ", ".join(f"{k}={v:,}" for k, v in sorted(stats.layers.items())))
    print("inputs reaching each check true: " + ", ".join(f"{n}={stats.reached[n]:,}" for n in CHECKS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    print(f"fuzz_credentials: engine={engine} runs={args.runs:,} seed={args.seed} python={sys.version.split()[0]}")
    started = time.perf_counter()
    if engine == "atheris":
        run_atheris(args.runs, args.seed)
    else:
        report(run_random(args.runs, args.seed), "random")
    print(f"wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
