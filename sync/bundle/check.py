"""Checking a whole signed bundle as a gate would: ``admin bundle verify`` and ``POST /v1/admin/bundles``.

A bundle is a manifest plus its part files: a directory (``manifest.json`` and
``parts/<sha256>``, what ``bundle build`` and ``bundle sign`` write) or a tar of
one. The check runs D, S and M4–M11 of bundles.md §3 against a trusted keys
document, in the gate's order, and reports the first failure with its §3.7
reason, so an admin sees exactly what a gate would say before publishing.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.bundle.capped import CappedReader, read_capped
from sync.bundle.formats import (
    CAPS,
    PART_CAPS,
    PARTS_TOTAL_CAP,
    BundleRejected,
    KeysDoc,
    Manifest,
    parse_manifest,
)
from sync.bundle.parts import validate_parts
from sync.bundle.verify import InForce, check_manifest, check_part_bytes, check_part_listing
from sync.errors import FormatError

__all__ = [
    "ANY_SITE",
    "BundleReport",
    "parts_reader",
    "read_bundle_dir",
    "read_bundle_tar",
    "verify_bundle",
    "verify_bundle_dir",
]

ANY_SITE: Any = object()  # verify for whatever site the manifest names (admin CLI without --site)
_PART_NAME = re.compile(r"^(?:[^/]+/)?parts/([0-9a-f]{64})$")
_MANIFEST_NAME = re.compile(r"^(?:[^/]+/)?manifest\.json$")


@dataclass(frozen=True)
class BundleReport:
    """The outcome of ``verify_bundle``; ``to_json()`` is the ``bundle verify`` output (§6)."""

    ok: bool
    reason: str | None
    detail: str
    version: int | None
    id: str | None
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: Manifest | None = None
    part_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail, "version": self.version,
                "id": self.id, "parts": self.parts}


def verify_bundle(
    manifest_bytes: bytes,
    read_part: Callable[[str, int], bytes],
    *,
    keys: KeysDoc,
    now_ms: int,
    site: Any = ANY_SITE,
    previous: Manifest | None = None,
    synced: bool = True,
) -> BundleReport:
    """D, S, M4–M11 over one bundle.

    Args:
        read_part: ``(sha256, max_bytes) -> bytes``; raise ``FileNotFoundError`` or ``KeyError`` for a part
            that is absent.
        keys: the keys document the gates hold (trusted).
        site: the gate's site; ``ANY_SITE`` accepts the manifest's own.
        previous: the manifest in force at the gates (M6, M7), if any.
    """
    m: Manifest | None = None
    try:
        try:
            m = parse_manifest(manifest_bytes)
        except BundleRejected:
            m = None
        gate_site = (m.site if m is not None else None) if site is ANY_SITE else site
        in_force = None
        if previous is not None:
            in_force = InForce(previous.keys_version, previous.version, previous.id, same_scope=True)
        result = check_manifest(manifest_bytes, keys=keys, fleet=keys.fleet, site=gate_site, now_ms=now_ms,
                                synced=synced, in_force=in_force)
        m = result.manifest
        if result.noop:
            raise BundleRejected("version_reuse", f"version {m.version} is the manifest in force already",
                                 doc="manifest")
        data: dict[str, bytes] = {}
        for ref in check_part_listing(m):  # M10
            try:
                raw = read_part(ref.sha256, ref.length + 1)
            except (FileNotFoundError, LookupError) as exc:
                raise BundleRejected("fetch_failed", f"part {ref.name} ({ref.sha256[:16]}…) is not in the bundle",
                                     doc="manifest") from exc
            check_part_bytes(ref, raw)
            data[ref.name] = raw
        parsed = validate_parts(data)  # M11
    except BundleRejected as exc:
        return BundleReport(False, exc.reason, f"manifest: {exc.detail}", m.version if m else None,
                            m.id if m else None)
    parts = {n: {"length": r.length, "sha256": r.sha256} for n, r in sorted(m.parts.items())}
    return BundleReport(True, None, f"version {m.version} under keys version {m.keys_version}", m.version, m.id,
                        parts, m, data, parsed.warnings)


def read_bundle_dir(path: Path | str) -> tuple[bytes, Callable[[str, int], bytes]]:
    """``manifest.json`` (at most its cap + 1 bytes) and a part reader over ``parts/``.

    Raises:
        FormatError: no directory or no ``manifest.json``.
    """
    path = Path(path)
    man = path / "manifest.json"
    if not man.is_file():
        raise FormatError(f"{path}: no manifest.json (a bundle directory holds manifest.json and parts/)")
    with man.open("rb") as f:
        manifest = read_capped(f, CAPS["manifest"] + 1)

    def read_part(sha256: str, max_bytes: int) -> bytes:
        with (path / "parts" / sha256).open("rb") as f:
            return read_capped(f, max_bytes)

    return manifest, read_part


def verify_bundle_dir(
    path: Path | str,
    *,
    keys: KeysDoc,
    now_ms: int,
    site: Any = ANY_SITE,
    previous: Manifest | None = None,
) -> BundleReport:
    """``checkpoint admin bundle verify`` on a directory."""
    manifest, read_part = read_bundle_dir(path)
    return verify_bundle(manifest, read_part, keys=keys, now_ms=now_ms, site=site, previous=previous)


def read_bundle_tar(data: bytes | io.BufferedIOBase) -> tuple[bytes, dict[str, bytes]]:
    """A tar (plain or gzip) of a signed bundle directory → manifest bytes and parts by SHA-256.

    Members other than ``manifest.json`` and ``parts/<sha256>`` (optionally under one top
    directory) are ignored; links and devices are refused; the decompressed size is capped at
    the manifest cap plus the total part cap plus room for tar headers.

    Raises:
        BundleRejected: ``too_large`` or ``malformed`` (with ``doc`` = ``manifest``).
    """
    raw = io.BufferedReader(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
    limit = CAPS["manifest"] + PARTS_TOTAL_CAP + 8 * 1024 * 1024
    # Decompress here, not in tarfile, so the cap counts decoded bytes (§1.7): a small gzip of
    # gigabytes of zeros stops at the cap instead of being read to its end.
    stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if raw.peek(2)[:2] == b"\x1f\x8b" else raw
    capped = io.BufferedReader(CappedReader(stream, limit))
    manifest: bytes | None = None
    parts: dict[str, bytes] = {}
    max_part = max(PART_CAPS.values())
    total = 0
    try:
        with tarfile.open(fileobj=capped, mode="r|") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if member.isdir():
                    continue
                if not member.isreg():
                    raise BundleRejected("malformed", f"tar member {name[:80]!r} is not a regular file", doc="manifest")
                if _MANIFEST_NAME.match(name):
                    if member.size > CAPS["manifest"]:
                        raise BundleRejected("too_large", f"manifest.json is {member.size} bytes", doc="manifest")
                    f = tar.extractfile(member)
                    assert f is not None
                    manifest = f.read()
                elif mm := _PART_NAME.match(name):
                    total += member.size
                    if member.size > max_part or total > PARTS_TOTAL_CAP:
                        raise BundleRejected("part_too_large", f"parts/{mm.group(1)[:16]}… is {member.size} bytes "
                                             f"({total} bytes of parts so far)", doc="manifest")
                    f = tar.extractfile(member)
                    assert f is not None
                    parts[mm.group(1)] = f.read()
    except BundleRejected:
        raise
    except ValueError as exc:  # CappedReader: the archive inflates past every cap
        raise BundleRejected("too_large", f"bundle archive: {exc}", doc="manifest") from exc
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # zlib.error: a gzip stream damaged inside its deflate data (found by tests/reliability/bundle_fuzz.py)
        raise BundleRejected("malformed", f"not a tar archive of a bundle directory: {exc}", doc="manifest") from exc
    if manifest is None:
        raise BundleRejected("malformed", "the archive holds no manifest.json", doc="manifest")
    return manifest, parts


def parts_reader(parts: Mapping[str, bytes]) -> Callable[[str, int], bytes]:
    """A ``read_part`` over parts held in memory (e.g. from ``read_bundle_tar``)."""

    def read_part(sha256: str, max_bytes: int) -> bytes:
        if sha256 not in parts:
            raise FileNotFoundError(sha256)
        return parts[sha256][:max_bytes]

    return read_part
