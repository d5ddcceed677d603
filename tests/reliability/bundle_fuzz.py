"""Fuzz target for the bundle verifier (bundles.md §1, §3): keys documents, manifests, current statements,
parts and bundle tars, each mutated and offered to the checks a gate runs.

Shared by ``tests/reliability/test_fuzz_bundles.py`` (short) and ``bench/soak/bundle_fuzz.py`` (long).

A corpus is one real signed bundle (the demo fleet's: keys 1, keys 2 rotating root and publisher,
a manifest with all eight parts, a current statement, the bundle as tar and tar.gz). Each input
is one of:

* **raw**: the bytes of one file changed by a byte-level mutator (bit flip, byte set, insert,
  delete, truncate, duplicate, splice, "interesting" bytes). That is what a bad disk, a bad link
  or an attacker without the keys can do. The verdict must be a rejection (``BundleRejected``
  or a report that is not ok) whenever the content changed; a tar is only "changed" when the
  files it carries changed (a new mtime in a tar header is not a bad bundle).
* **resigned**: the JSON of a document or part changed by a structure-aware mutator (delete or
  add a member, change a type, boundary integers, odd strings, deep nesting), re-serialised and,
  for signed documents, signed again with the right key (parts: listed again in a manifest
  signed by the publisher). That is what a buggy or hostile signer can produce. Any verdict is
  allowed; what is not allowed is any other exception, a reason outside §3.7, or a hang.

``Stats`` counts inputs, rejections by reason, accepted bad inputs and crashes (with the input).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import random
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.bundle import (
    REASONS,
    BundleRejected,
    KeysDoc,
    check_anchor,
    check_current,
    check_keys_update,
    current_body,
    envelope_bytes,
    keys_body,
    parse_manifest,
    parts_reader,
    read_bundle_dir,
    read_bundle_tar,
    sign_current,
    sign_document,
    signing_message,
    verify_bundle,
)
from sync.errors import CanonicalError
from sync.keys import KeyFile

__all__ = ["RAW_TARGETS", "RESIGNED_TARGETS", "Corpus", "FuzzFailure", "Stats", "build_corpus", "run"]

RAW_TARGETS = ("keys_anchor", "keys_update", "manifest", "current", "part", "tar", "tgz")
RESIGNED_TARGETS = ("keys_update_resigned", "manifest_resigned", "current_resigned", "part_resigned")
DEVICE = "gate-fuzz-01"
NONCE = "5f0c8a1e9b7d4c2a0e6f3b1d8c9a7e42"


class FuzzFailure(AssertionError):
    """A crash (unexpected exception, unknown reason) or a bad input accepted."""


@dataclass
class Corpus:
    root: KeyFile
    root2: KeyFile
    publisher: KeyFile
    server: KeyFile
    fleet: str
    now_ms: int
    keys1: bytes
    keys1_doc: KeysDoc
    keys2: bytes
    manifest: bytes
    parts: dict[str, bytes]
    current: bytes
    tar: bytes
    tgz: bytes

    def files(self) -> dict[str, bytes]:
        return {"keys-1.json": self.keys1, "keys-2.json": self.keys2, "manifest.json": self.manifest,
                "current.json": self.current, **{f"parts/{h}": b for h, b in self.parts.items()}}


def _tar(manifest: bytes, parts: dict[str, bytes], *, gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("bundle/manifest.json", manifest), *((f"bundle/parts/{h}", b) for h, b in parts.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_650_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def build_corpus(root_dir: Path) -> Corpus:
    """One real bundle of the demo fleet (``edge.demo.DemoWorld``), plus keys 2, a current statement, tars."""
    from edge.demo import FLEET, DemoWorld
    from sync.keys import generate_key

    world = DemoWorld(root_dir, log2_n=10)
    bundle = world.build_bundle()
    keys1 = (bundle / "keys-1.json").read_bytes()
    keys1_doc = check_anchor(keys1)
    manifest, _ = read_bundle_dir(bundle)
    parts = {p.name: p.read_bytes() for p in (bundle / "parts").iterdir()}
    root2 = generate_key("root", "fuzz root 2")
    body2 = keys_body(previous=keys1_doc, root=[world.keys["root"], root2], root_threshold=2,
                      issued_at_ms=world.now_ms - 10_000)
    keys2 = sign_document("keys", body2, [world.keys["root"], root2])
    m = parse_manifest(manifest)
    current = sign_current(current_body(fleet=FLEET, site=None, device_id=DEVICE, server_time_ms=world.now_ms,
                                        nonce=NONCE, manifest=m), world.keys["server"])
    corpus = Corpus(world.keys["root"], root2, world.keys["publisher"], world.keys["server"], FLEET, world.now_ms, keys1,
                    keys1_doc, keys2, manifest, parts, current, _tar(manifest, parts, gz=False),
                    _tar(manifest, parts, gz=True))
    for target in RAW_TARGETS:  # the unmutated corpus must pass, or the fuzz proves nothing
        verdict = _verdict(corpus, target, _original(corpus, target))
        if verdict != "accepted":
            raise RuntimeError(f"fuzz corpus: the original {target} is not accepted ({verdict})")
    return corpus


# -- mutators ------------------------------------------------------------------------------------------

_INTERESTING = [b"0", b"-1", b"9007199254740993", b"1e308", b"1.5", b"null", b"true", b'"', b"\\", b"\\u0000",
                b"\\ud800", b"\xc3\x28", b"\xff", b"\x00", b"{}", b"[]", b"{", b"]", b",", b":", b" ", b"\xef\xbb\xbf",
                b"a" * 300, b"[" * 200, b"\xe9\x87\x91\xe4\xb8\x9d\xe9\x9b\x80"]


def mutate_bytes(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One to three byte-level mutations (never returns the input unchanged when it is non-empty)."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        n = len(out)
        op = rng.randrange(9)
        pos = rng.randrange(n) if n else 0
        if op == 0 and n:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            out[pos] = rng.randrange(256)
        elif op == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and n:
            del out[pos:pos + rng.randint(1, 64)]
        elif op == 4 and n:
            del out[rng.randrange(n):]
        elif op == 5 and n:
            end = min(n, pos + rng.randint(1, 256))
            out[pos:pos] = out[pos:end]
        elif op == 6 and others:
            other = rng.choice(others)
            if other:
                a = rng.randrange(len(other))
                out[pos:pos + rng.randint(0, 64)] = other[a:a + rng.randint(1, 256)]
        elif op == 7:
            out[pos:pos + rng.randint(0, 4)] = rng.choice(_INTERESTING)
        elif n:
            # a hex digit for another hex digit: the mutation a careless editor or a bad bit makes
            hexpos = [i for i in range(max(0, pos - 64), min(n, pos + 64)) if chr(out[i]) in "0123456789abcdef"]
            if hexpos:
                i = rng.choice(hexpos)
                out[i] = ord(rng.choice([c for c in "0123456789abcdef" if c != chr(out[i])]))
    if bytes(out) == data and data:
        out[rng.randrange(len(out))] ^= 0x01
    return bytes(out)


_ODD_VALUES: list[Any] = [None, True, False, 0, -1, 1, 2**53 - 1, 2**53, -(2**53), 2**63, 1.5, "", "x" * 5000,
                          "\u0000", "\ud7ff", "金丝雀", "1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z",
                          "2022-02-30T00:00:00.000Z", "0" * 64, "g" * 64, [], {}, [None], {"a": 1},
                          {"": []}, [[[[[[[[[[[]]]]]]]]]]]]


def _odd(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(_ODD_VALUES))  # a fresh copy: later mutations must not change the table


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            out += _paths(v, (*prefix, i))
    return out


def mutate_json(value: Any, rng: random.Random) -> Any:
    """One to three structure-aware changes to a parsed JSON value (returns a new value)."""
    value = copy.deepcopy(value)
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = _paths(value)
        path = rng.choice(paths[1:] or paths)
        if not path:
            return _odd(rng)
        parent = value
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        cur = parent[key]
        op = rng.randrange(7)
        if op == 0 and isinstance(parent, dict):
            del parent[key]
        elif op == 1 and isinstance(parent, dict):
            parent[rng.choice(["extra", "x", "signatures", "type", "spec", "zzz_unknown"])] = _odd(rng)
        elif op == 2 and isinstance(cur, int) and not isinstance(cur, bool):
            parent[key] = rng.choice([cur + 1, cur - 1, 0, -cur, cur * 1000, 2**53 - 1, 2**31])
        elif op == 3 and isinstance(cur, str):
            parent[key] = rng.choice([cur[:-1], cur + "0", cur.upper(), cur[::-1], "", cur * 3, cur.replace("Z", "+08:00")])
        elif op == 4 and isinstance(cur, list) and cur:
            parent[key] = rng.choice([[], cur + cur[:1], cur[::-1], cur[:1]])
        elif op == 5 and isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), _odd(rng))
        else:
            parent[key] = _odd(rng)
    return value


def _resign(doc_type: str, signed: Any, keys: list[KeyFile]) -> bytes:
    """The envelope of ``signed`` with real signatures, canonical where the value allows it."""
    try:
        sigs = [{"keyid": k.keyid, "sig": k.sign(signing_message(doc_type, signed)).hex()} for k in keys]
        return envelope_bytes(signed, sigs)
    except (CanonicalError, ValueError, TypeError, RecursionError):
        sigs = [{"keyid": k.keyid, "sig": "00" * 64} for k in keys]
        return json.dumps({"signatures": sigs, "signed": signed}, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- verdicts ------------------------------------------------------------------------------------------

def _original(c: Corpus, target: str) -> Any:
    return {"keys_anchor": c.keys1, "keys_update": c.keys2, "manifest": c.manifest, "current": c.current,
            "part": (c.manifest, c.parts), "tar": c.tar, "tgz": c.tgz}[target]


def _verdict(c: Corpus, target: str, data: Any) -> str:
    """``accepted`` or ``rejected:<reason>``; any other exception propagates (a crash)."""
    kw = {"now_ms": c.now_ms}
    try:
        if target in ("keys_anchor",):
            check_anchor(data)
        elif target in ("keys_update", "keys_update_resigned"):
            if check_keys_update(c.keys1_doc, data, fleet=c.fleet, synced=True, **kw) is None:
                return "rejected:noop"
        elif target in ("current", "current_resigned"):
            check_current(data, keys=c.keys1_doc, fleet=c.fleet, site=None, device_id=DEVICE, nonce=NONCE,
                          floor_ms=c.now_ms - 3_600_000, synced=True, **kw)
        elif target in ("manifest", "manifest_resigned"):
            report = verify_bundle(data, parts_reader(c.parts), keys=c.keys1_doc, **kw)
            return "accepted" if report.ok else f"rejected:{report.reason}"
        elif target in ("part", "part_resigned"):
            manifest, parts = data
            report = verify_bundle(manifest, parts_reader(parts), keys=c.keys1_doc, **kw)
            return "accepted" if report.ok else f"rejected:{report.reason}"
        elif target in ("tar", "tgz"):
            manifest, parts = read_bundle_tar(data)
            report = verify_bundle(manifest, parts_reader(parts), keys=c.keys1_doc, **kw)
            if not report.ok:
                return f"rejected:{report.reason}"
            # accepted: only right when the files it carries are the signed ones (a header field such
            # as mtime may change without changing the bundle)
            return "accepted" if (manifest, parts) == (c.manifest, c.parts) else "accepted_changed"
        else:  # pragma: no cover
            raise ValueError(target)
    except BundleRejected as exc:
        return f"rejected:{exc.reason}"
    return "accepted"


def make_input(c: Corpus, target: str, rng: random.Random) -> tuple[Any, bool]:
    """One mutated input for ``target`` and whether it is a "bad bundle" that must be rejected."""
    others = list(c.files().values())
    if target in ("keys_anchor", "keys_update", "manifest", "current", "tar", "tgz"):
        data = mutate_bytes(_original(c, target), rng, others)
        return data, data != _original(c, target)
    if target == "part":
        h = rng.choice(sorted(c.parts))
        parts = dict(c.parts)
        parts[h] = mutate_bytes(parts[h], rng, others)
        return (c.manifest, parts), parts[h] != c.parts[h]
    if target == "keys_update_resigned":
        doc = json.loads(c.keys2)
        signed = mutate_json(doc["signed"], rng)
        return _resign("keys", signed, [c.root, c.root2]), False
    if target == "manifest_resigned":
        signed = mutate_json(json.loads(c.manifest)["signed"], rng)
        return _resign("manifest", signed, [c.publisher]), False
    if target == "current_resigned":
        signed = mutate_json(json.loads(c.current)["signed"], rng)
        return _resign("current", signed, [c.server]), False
    if target == "part_resigned":
        return _resigned_part(c, rng), False
    raise ValueError(target)


def _resigned_part(c: Corpus, rng: random.Random) -> tuple[bytes, dict[str, bytes]]:
    """A part whose JSON was changed, listed with its new hash in a manifest the publisher signs again."""
    m = json.loads(c.manifest)["signed"]
    name = rng.choice(sorted(m["parts"]))
    old = m["parts"][name]["sha256"]
    try:
        value = json.loads(c.parts[old])
        raw = json.dumps(mutate_json(value, rng), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        raw = mutate_bytes(c.parts[old], rng, [])
    if rng.random() < 0.2:
        raw = mutate_bytes(raw, rng, [])   # and not even JSON any more, now and then
    h = hashlib.sha256(raw).hexdigest()
    m = copy.deepcopy(m)
    m["parts"][name] = {"length": len(raw), "sha256": h}
    parts = {k: v for k, v in c.parts.items() if k != old}
    parts[h] = raw
    return sign_document_lenient("manifest", m, c.publisher), parts


def sign_document_lenient(doc_type: str, signed: Any, key: KeyFile) -> bytes:
    return _resign(doc_type, signed, [key])


# -- the loop --------------------------------------------------------------------------------------------

@dataclass
class Stats:
    runs: int = 0
    bad: int = 0
    bad_rejected: int = 0
    accepted: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    slowest_target: str = ""
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {"runs": self.runs, "bad_inputs": self.bad, "bad_rejected": self.bad_rejected,
                "bad_rejected_pct": round(100.0 * self.bad_rejected / self.bad, 3) if self.bad else None,
                "accepted_resigned": self.accepted, "crashes": len(self.failures), "targets": dict(self.by_target),
                "reasons": dict(self.verdicts.most_common()), "slowest_input_s": round(self.slowest_s, 4),
                "slowest_target": self.slowest_target, "seconds": round(self.seconds, 1)}


def run(c: Corpus, runs: int, *, seed: int, targets: tuple[str, ...] = RAW_TARGETS + RESIGNED_TARGETS,
        weights: dict[str, float] | None = None, progress: Callable[[Stats], None] | None = None,
        max_failures: int = 20) -> Stats:
    rng = random.Random(seed)
    w = [(weights or {}).get(t, 1.0) for t in targets]
    st = Stats()
    t_start = time.perf_counter()
    for i in range(runs):
        target = rng.choices(targets, w)[0]
        data, bad = make_input(c, target, rng)
        t0 = time.perf_counter()
        try:
            verdict = _verdict(c, target, data)
        except Exception as exc:  # a crash: anything but a verdict (RecursionError included)
            verdict = f"crash:{type(exc).__name__}"
            st.failures.append(f"{target} seed={seed} run={i}: {exc!r}\n{traceback.format_exc(limit=6)}"
                               f"input={_sample(data)}")
        spent = time.perf_counter() - t0
        if spent > st.slowest_s:
            st.slowest_s, st.slowest_target = spent, target
        st.runs += 1
        st.by_target[target] += 1
        st.verdicts[verdict] += 1
        if bad and target in ("tar", "tgz") and verdict == "accepted":
            bad = False  # the archive's bytes changed, the bundle it carries did not
        if verdict.startswith("rejected:"):
            reason = verdict.split(":", 1)[1]
            if reason not in REASONS and reason != "noop":
                st.failures.append(f"{target} run={i}: reason {reason!r} is not a reason code of §3.7")
        if bad:
            st.bad += 1
            if verdict.startswith("rejected:"):
                st.bad_rejected += 1
            elif not verdict.startswith("crash"):
                st.failures.append(f"{target} run={i}: a changed file was {verdict}\ninput={_sample(data)}")
        elif verdict == "accepted":
            st.accepted += 1
        if len(st.failures) >= max_failures:
            break
        if progress is not None and (i + 1) % 10_000 == 0:
            st.seconds = time.perf_counter() - t_start
            progress(st)
    st.seconds = time.perf_counter() - t_start
    return st


def _sample(data: Any) -> str:
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, bytes | bytearray):
        return repr(bytes(data[:300])) + (f"… ({len(data)} bytes)" if len(data) > 300 else "")
    return repr(data)[:300]
