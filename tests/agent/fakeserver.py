"""An in-memory server speaking the device side of sync.md §2.4-§4 through ``httpx.MockTransport``.

It exists so the agent's unit tests can run without the real server, and it
records every request. It is deliberately strict (the same checks, in the same
order, as §2.4 and §3.2) so that a test passing here fails for the same reasons
against the real server. The end-to-end tests (``test_e2e.py``) use the real one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from sync.events import event_hash, genesis
from sync.keys import KeyFile, verify_ed25519
from sync.signing import ack_text, head_text, request_text, time_text
from sync.timefmt import format_ms


@dataclass
class Seen:
    method: str
    path: str
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]
    request: Any = None


@dataclass
class FakeServer:
    device_id: str
    device_public: str
    server_key: KeyFile
    now_ms: Callable[[], int] = field(default_factory=lambda: (lambda: time.time_ns() // 1_000_000))
    status: str = "active"
    acked_seq: int = 0
    acked_hash: str = ""
    conflict: bool = False
    conflict_seq: int | None = None
    max_events: int = 500
    max_json: int = 2 * 1024 * 1024
    poll_bundle_now: bool = False
    bundle_reply: Callable[[httpx.Request], httpx.Response] | None = None

    def __post_init__(self) -> None:
        self.acked_hash = self.acked_hash or genesis(self.device_id)
        self.events: dict[int, tuple[str, dict[str, Any]]] = {}
        self.holes: dict[int, dict[str, Any]] = {}
        self.nonces: set[str] = set()
        self.seen: list[Seen] = []
        self.flashed: dict[int, str] = {}
        self.heartbeats: list[dict[str, Any]] = []
        self.head_sig: str | None = None
        self.duplicates = 0
        self.refuse: Callable[[httpx.Request, dict[str, Any] | None], httpx.Response | None] | None = None
        self.lock = threading.Lock()
        self.codes: dict[str, str | None] = {}   # normalised code -> public key bound (None: unused)
        self.keys_docs: dict[str, bytes] = {}

    def _enroll(self, doc: dict[str, Any]) -> httpx.Response:
        from sync.keys import ed25519_keyid
        from sync.signing import enroll_text, normalise_code

        code = normalise_code(str(doc.get("code", "")))
        pub = str(doc.get("public_key", ""))
        if code not in self.codes or self.codes[code] not in (None, pub):
            return self._err(403, "invalid_code")
        if not verify_ed25519(pub, enroll_text(code, pub), str(doc.get("proof", ""))):
            return self._err(400, "bad_proof")
        self.codes[code] = pub
        self.device_public = pub
        return self._json(200, {
            "device_id": self.device_id, "site_id": "fc-plant-1",
            "venue": {"venue_id": "411322-0031-01", "zone": "A", "door": "east"}, "firm_id": "F0012",
            "keyid": ed25519_keyid(pub), "server_key": self.server_key.public, "pid_key": "11" * 32, "pid_kid": 1,
            "keys_version": 1, "server_time": format_ms(self.now_ms())})

    # -- signed answers --------------------------------------------------------------------------

    def _time(self, nonce: str) -> dict[str, str]:
        st = format_ms(self.now_ms())
        return {"server_time": st, "nonce": nonce,
                "sig": self.server_key.sign(time_text(self.device_id, nonce, st)).hex()}

    def _ack(self, nonce: str) -> dict[str, Any]:
        return {"acked_seq": self.acked_seq, "acked_hash": self.acked_hash,
                "ack_sig": self.server_key.sign(ack_text(self.device_id, nonce, self.acked_seq,
                                                         self.acked_hash)).hex()}

    def _json(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.Response(status, json=doc, headers=headers)

    def _err(self, status: int, code: str, nonce: str | None = None, **extra: Any) -> httpx.Response:
        doc: dict[str, Any] = {"error": code, "detail": code.replace("_", " "), **extra}
        if nonce:
            doc["time"] = self._time(nonce)
        return self._json(status, doc)

    # -- the transport ---------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            raw = request.read()
            self._last_doc = None
            resp = self._handle(request, raw)
            try:
                body = json.loads(resp.content) if resp.content else None
            except ValueError:
                body = None
            self.seen.append(Seen(request.method, request.url.path, resp.status_code, body, dict(request.headers),
                                  self._last_doc))
            return resp

    def _handle(self, request: httpx.Request, raw: bytes) -> httpx.Response:
        path = request.url.raw_path.decode()
        if path.startswith("/v1/keys/"):
            n = path[len("/v1/keys/"):-len(".json")]
            if n in self.keys_docs:
                return httpx.Response(200, content=self.keys_docs[n])
            return self._err(404, "not_found")
        if path == "/v1/enroll" and request.method == "POST":
            return self._enroll(json.loads(raw))
        prefix = f"/v1/devices/{self.device_id}/"
        if not path.startswith("/v1/devices/"):
            return self._err(404, "not_found")
        h = request.headers
        dev, t, nonce, sig = (h.get("x-checkpoint-device"), h.get("x-checkpoint-time"), h.get("x-checkpoint-nonce"),
                              h.get("x-checkpoint-signature"))
        if not (dev and t and nonce and sig) or not path.startswith(f"/v1/devices/{dev}/"):
            return self._err(401, "bad_auth")
        if dev != self.device_id:
            return self._err(401, "unknown_device")
        if self.status == "revoked":
            return self._err(403, "device_revoked")
        if abs(int(t) - self.now_ms() // 1000) > 300:
            return self._err(401, "clock_skew", nonce)
        body = raw
        if h.get("content-encoding") == "gzip":
            body = gzip.decompress(raw)
        if not verify_ed25519(self.device_public, request_text(request.method, path, dev, int(t), nonce, body), sig):
            return self._err(401, "bad_signature")
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            return self._bad(nonce, None, "not JSON")
        self._last_doc = doc
        if self.refuse is not None:
            forced = self.refuse(request, doc)
            if forced is not None:
                return forced
        route = path[len(prefix):]
        if request.method == "POST":
            if nonce in self.nonces:
                return self._err(401, "replayed_nonce", nonce)
        if route == "state" and request.method == "GET":
            return self._json(200, {"device_id": self.device_id, "status": self.status, **self._ack(nonce),
                                    "conflict": self.conflict, "conflict_seq": self.conflict_seq,
                                    "holes": len(self.holes), "time": self._time(nonce)})
        if route == "events" and request.method == "POST":
            return self._ingest(doc, nonce, len(body))
        if route == "heartbeat" and request.method == "POST":
            self.nonces.add(nonce)
            self.heartbeats.append(doc or {})
            return self._json(200, {"poll_bundle_now": self.poll_bundle_now, **self._ack(nonce),
                                    "time": self._time(nonce)})
        if route == "flash" and request.method == "POST":
            self.nonces.add(nonce)
            accepted = []
            for ev in (doc or {}).get("events", []):
                if ev.get("device_id") == self.device_id and event_hash(ev) == ev.get("hash"):
                    self.flashed.setdefault(ev["seq"], ev["hash"])
                    accepted.append(ev["seq"])
            return self._json(200, {"accepted": accepted, "rejected": [], "time": self._time(nonce)})
        if route == "bundle" and request.method == "GET":
            if self.bundle_reply is not None:
                return self.bundle_reply(request)
            return self._err(404, "no_bundle", nonce)
        return self._err(404, "not_found", nonce)

    # -- §3.2 ------------------------------------------------------------------------------------

    def _bad(self, nonce: str, seq: int | None, detail: str) -> httpx.Response:
        return self._json(400, {"error": "bad_batch", "detail": detail, "seq": seq, "time": self._time(nonce)})

    def _ingest(self, b: dict[str, Any] | None, nonce: str, size: int) -> httpx.Response:
        if not isinstance(b, dict):
            return self._bad(nonce, None, "not an object")
        events = b.get("events") or []
        if len(events) > self.max_events or size > self.max_json:
            return self._json(413, {"error": "too_large", "detail": "too large", "max_events": self.max_events,
                                    "max_bytes": self.max_json, "time": self._time(nonce)})
        skip = b.get("skip")
        first, last, prev = b["first_seq"], b["last_seq"], b["prev_hash"]
        if not events and not skip:
            return self._bad(nonce, first, "empty batch")
        link = prev
        expected = first
        if skip:
            if skip["from_seq"] != first:
                return self._bad(nonce, first, "skip does not start the batch")
            expected, link = skip["to_seq"] + 1, skip["last_hash"]
        for ev in events:
            if ev.get("v") != 1 or ev.get("device_id") != self.device_id or ev.get("seq") != expected:
                return self._bad(nonce, ev.get("seq"), "bad envelope or seq")
            if event_hash(ev) != ev.get("hash"):
                return self._bad(nonce, ev.get("seq"), "hash mismatch")
            if ev.get("prev_hash") != link:
                return self._bad(nonce, ev.get("seq"), "prev_hash mismatch")
            link, expected = ev["hash"], expected + 1
        if last != expected - 1 or b["head_hash"] != link:
            return self._bad(nonce, last, "last_seq/head_hash")
        if not verify_ed25519(self.device_public, head_text(self.device_id, last, link), b["head_sig"]):
            return self._bad(nonce, last, "head_sig")
        if self.conflict:
            return self._json(409, {"error": "conflict", "detail": "conflict", "conflict_seq": self.conflict_seq,
                                    **self._ack(nonce), "time": self._time(nonce)})
        c = self.acked_seq
        if first > c + 1:
            return self._json(409, {"error": "seq_gap", "detail": f"expected seq {c + 1}", "expected_seq": c + 1,
                                    **self._ack(nonce), "time": self._time(nonce)})
        # Overlap: duplicates (or conflict).
        dup = 0
        new_events = []
        for ev in events:
            if ev["seq"] <= c:
                stored = self.events.get(ev["seq"])
                if stored is not None and stored[0] != ev["hash"]:
                    self.conflict, self.conflict_seq = True, ev["seq"]
                    return self._json(409, {"error": "conflict", "detail": "differs", "conflict_seq": ev["seq"],
                                            **self._ack(nonce), "time": self._time(nonce)})
                dup += 1
            else:
                new_events.append(ev)
        hole = None
        if skip and skip["to_seq"] > c:
            trimmed = dict(skip, from_seq=max(skip["from_seq"], c + 1))
            if trimmed["from_seq"] == c + 1 and skip["from_seq"] == c + 1 and prev != self.acked_hash:
                self.conflict, self.conflict_seq = True, c + 1
                return self._json(409, {"error": "conflict", "detail": "fork at skip", "conflict_seq": c + 1,
                                        **self._ack(nonce), "time": self._time(nonce)})
            hole = trimmed
        elif skip:
            dup += 1
        if new_events and hole is None and new_events[0]["prev_hash"] != self.acked_hash:
            self.conflict, self.conflict_seq = True, new_events[0]["seq"]
            return self._json(409, {"error": "conflict", "detail": "fork", "conflict_seq": new_events[0]["seq"],
                                    **self._ack(nonce), "time": self._time(nonce)})
        if hole is not None:
            self.holes[hole["from_seq"]] = hole
            self.acked_seq, self.acked_hash = hole["to_seq"], hole["last_hash"]
        for ev in new_events:
            self.events[ev["seq"]] = (ev["hash"], ev)
            self.acked_seq, self.acked_hash = ev["seq"], ev["hash"]
        self.nonces.add(nonce)
        self.head_sig = b["head_sig"]
        self.duplicates += dup
        return self._json(200, {**self._ack(nonce), "received": len(events), "stored": len(new_events),
                                "duplicates": dup, "time": self._time(nonce)})

    # -- test helpers ----------------------------------------------------------------------------

    def lose_after(self, seq: int) -> None:
        """Forget everything above ``seq`` (a server restored from a backup)."""
        for s in [s for s in self.events if s > seq]:
            del self.events[s]
        for f in [f for f in self.holes if f > seq]:
            del self.holes[f]
        self.acked_seq = seq
        self.acked_hash = self.events[seq][0] if seq in self.events else genesis(self.device_id)

    def verify_chain(self) -> None:
        """Every stored row links (holes bridged), 1..acked_seq with no undeclared gap (G2, G3)."""
        prev = genesis(self.device_id)
        seq = 1
        while seq <= self.acked_seq:
            if seq in self.holes:
                prev, seq = self.holes[seq]["last_hash"], self.holes[seq]["to_seq"] + 1
                continue
            assert seq in self.events, f"undeclared gap at {seq}"
            h, ev = self.events[seq]
            assert ev["prev_hash"] == prev, f"link broken at {seq}"
            assert event_hash(ev) == h
            prev, seq = h, seq + 1

    def requests(self, route: str) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/" + route)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
