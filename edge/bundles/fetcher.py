"""Where an update gets its bytes: the ``Fetcher`` protocol and the directory fetcher (offline import).

The update algorithm (``edge.bundles.updater``) does no I/O of its own beyond
the gate's data directory. The sync agent supplies an HTTP fetcher
(``sync.agent.fetcher.HttpFetcher``: signed device requests, caps on decoded
bytes); ``checkpoint gate import DIR`` supplies ``DirectoryFetcher``. Both raise
``sync.errors.Unreachable`` for anything that is not an answer, which the update
records as ``fetch_failed`` and retries at the next poll (bundles.md §3.5).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from sync.bundle import CAPS, document_id, peek_signed, read_capped
from sync.errors import Unreachable

__all__ = ["DirectoryFetcher", "Fetcher"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Fetcher(Protocol):
    """The network of one bundle update (bundles.md §3.3–3.5, sync.md §4.1)."""

    def current(self, nonce: str) -> bytes | None:
        """P1: the current statement answering ``nonce`` (≤ 4 KiB + 1 read), None for ``404 no_bundle``."""
        ...

    def keys(self, n: int) -> bytes | None:
        """K1: keys document version ``n`` (≤ 64 KiB + 1 read), None for ``404``."""
        ...

    def manifest(self, sha256: str) -> bytes:
        """M1: the manifest with document id ``sha256`` (≤ 64 KiB + 1 read)."""
        ...

    def part(self, sha256: str, max_bytes: int) -> bytes:
        """M10: at most ``max_bytes`` bytes of the part (the listed length + 1)."""
        ...


class DirectoryFetcher:
    """A bundle directory as a fetcher: ``keys/<n>.json``, ``manifests/<sha256>.json``, ``parts/<sha256>``.

    Also accepted, so that the output of ``admin bundle sign`` imports as it is: a
    ``manifest.json`` at the top and keys documents named ``keys-<n>.json`` at the top.
    There is no current statement in a directory (``current`` returns None).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise Unreachable(f"{self.root} is not a directory")
        self.fetched: list[str] = []

    def _read(self, path: Path, cap: int) -> bytes | None:
        try:
            with path.open("rb") as f:
                return read_capped(f, cap)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unreachable(f"{path}: {exc.strerror}") from exc

    def current(self, nonce: str) -> bytes | None:
        return None

    def keys(self, n: int) -> bytes | None:
        self.fetched.append(f"keys/{n}")
        for path in (self.root / "keys" / f"{int(n)}.json", self.root / f"keys-{int(n)}.json"):
            data = self._read(path, CAPS["keys"] + 1)
            if data is not None:
                return data
        return None

    def manifest_candidates(self) -> list[tuple[str | None, bytes]]:
        """Every manifest file of the directory: (the id its file name claims, or None; bytes)."""
        out: list[tuple[str | None, bytes]] = []
        mdir = self.root / "manifests"
        if mdir.is_dir():
            for p in sorted(mdir.glob("*.json")):
                data = self._read(p, CAPS["manifest"] + 1)
                if data is not None:
                    out.append((p.stem if _HEX64.match(p.stem) else None, data))
        top = self._read(self.root / "manifest.json", CAPS["manifest"] + 1)
        if top is not None:
            out.append((None, top))
        return out

    def manifest(self, sha256: str) -> bytes:
        self.fetched.append(f"manifest/{sha256}")
        data = self._read(self.root / "manifests" / f"{sha256}.json", CAPS["manifest"] + 1)
        if data is not None:
            return data
        top = self._read(self.root / "manifest.json", CAPS["manifest"] + 1)
        signed = peek_signed(top) if top is not None else None
        if top is not None and signed is not None and document_id_or_none(signed) == sha256:
            return top
        raise Unreachable(f"manifest {sha256[:16]}… is not in {self.root}")

    def part(self, sha256: str, max_bytes: int) -> bytes:
        self.fetched.append(f"part/{sha256}")
        data = self._read(self.root / "parts" / sha256, max_bytes)
        if data is None:
            raise Unreachable(f"part {sha256[:16]}… is not in {self.root}/parts")
        return data


def document_id_or_none(signed: object) -> str | None:
    try:
        return document_id(signed)
    except ValueError:
        return None
