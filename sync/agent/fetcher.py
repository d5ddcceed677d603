"""The HTTP ``Fetcher`` the gate-side bundle update runs against (bundles.md §3.3-3.5, sync.md §4.1).

The update algorithm (T, K, M) lives in ``edge.bundles`` and does no I/O of its
own; this class is its network. Rules:

- ``current(nonce)``: signed ``GET /v1/devices/{id}/bundle`` whose
  ``X-Checkpoint-Nonce`` is the nonce the statement must answer (P1);
  ``404`` → None (``no_bundle``).
- ``keys(n)``: public ``GET /v1/keys/{n}.json``; ``404`` → None (K1).
- ``manifest(sha256)``, ``part(sha256, max_bytes)``: signed GETs (M1, M10).
- Caps apply to the *decoded* bytes while they stream (HTTP compression is
  allowed): reads stop at cap + 1 bytes (parts: ``max_bytes + 1``), so the
  verifier can name ``too_large`` / ``part_length_mismatch`` without the gate
  ever holding more than that.
- Every network or HTTP failure is ``sync.errors.Unreachable`` (the update
  names it ``fetch_failed`` and the poll retries after ``min(interval, 2^k)``);
  ``failed`` records whether this poll saw one.
"""

from __future__ import annotations

import logging
import re

from sync.client import DeviceClient, NotFound
from sync.errors import Rejected, Unreachable

__all__ = ["CURRENT_CAP", "DOC_CAP", "HttpFetcher"]

log = logging.getLogger(__name__)

CURRENT_CAP = 4 * 1024     # bundles.md §1.7: current statement
DOC_CAP = 64 * 1024        # keys document, manifest
PART_MIN_RATE = 32 * 1024  # bytes/s a part download may be as slow as before it counts as hung
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class HttpFetcher:
    """bundles.md ``Fetcher`` over the device's signed client."""

    def __init__(self, client: DeviceClient) -> None:
        self.client = client
        self.failed = False
        self.fetched: list[str] = []  # "current", "keys/N", "manifest/<id>", "part/<id>", for logs and tests

    def reset(self) -> None:
        self.failed = False
        self.fetched = []

    def _fail(self, what: str, exc: Exception) -> Unreachable:
        self.failed = True
        log.info("bundle fetch failed %s: %s", what, exc)
        if isinstance(exc, Unreachable):
            return exc
        err = Unreachable(f"{what}: {exc}")
        err.__cause__ = exc
        return err

    def current(self, nonce: str) -> bytes | None:
        self.fetched.append("current")
        try:
            reply = self.client.signed("GET", self.client.device_path("bundle"), nonce=nonce, expect_json=False,
                                       max_bytes=CURRENT_CAP, truncate=True)
        except NotFound:
            return None
        except (Unreachable, Rejected) as exc:
            raise self._fail("current", exc) from exc
        return reply.raw

    def keys(self, n: int) -> bytes | None:
        self.fetched.append(f"keys/{n}")
        try:
            return self.client.public_get(f"/v1/keys/{int(n)}.json", max_bytes=DOC_CAP, truncate=True)
        except Unreachable as exc:
            raise self._fail(f"keys/{n}", exc) from exc

    def manifest(self, sha256: str) -> bytes:
        return self._get("manifests", sha256, DOC_CAP)

    def part(self, sha256: str, max_bytes: int) -> bytes:
        return self._get("parts", sha256, max(0, int(max_bytes)))

    def _get(self, kind: str, sha256: str, cap: int) -> bytes:
        what = f"{kind[:-1]}/{sha256[:16]}"
        self.fetched.append(f"{kind[:-1]}/{sha256}")
        if not _HEX64.match(sha256):
            raise self._fail(what, ValueError("not a SHA-256 id"))
        # A big part over a slow link needs more than one request budget; a stalled
        # one is still cut off, so the poll worker can never hang.
        deadline = self.client.request_timeout_s + cap / PART_MIN_RATE
        try:
            reply = self.client.signed("GET", self.client.device_path(f"{kind}/{sha256}"), expect_json=False,
                                       max_bytes=cap, truncate=True, deadline_s=deadline)
        except (Unreachable, Rejected) as exc:
            raise self._fail(what, exc) from exc
        return reply.raw
