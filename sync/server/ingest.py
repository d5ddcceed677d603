"""Batch ingest (sync.md §3.2-3.5) and flash copies (§3.6).

The order of §3.2, which this module keeps exactly:

1. authenticate (done by the caller, ``auth.verify_device_request``);
2. check the batch on its own, before touching the database (``parse_batch``):
   strict JSON, envelope, consecutive seqs, every hash recomputed, every link,
   the skip's place, ``last_seq``/``head_hash``, ``head_sig`` → else
   ``400 bad_batch`` naming the first bad seq;
3. one transaction: lock the device row, read ``C``/``H``; conflict flag → 409;
4. ``first_seq > C + 1`` → ``409 seq_gap`` with ``expected_seq``;
5. overlap (seq ≤ C): equal hashes are duplicates, missing rows too, a skip
   starting at or below ``C`` is trimmed (§3.5), a different hash is a conflict;
6. the first item above ``C`` must continue the stored chain, else a fork;
7. write hole, events with derived columns, the device's ack, alerts and their
   webhook rows, the nonce; commit; only then answer ``200``;
8. a conflict keeps both versions (``event_conflicts``), flags the device and
   raises ``chain_conflict``; it is committed and answered ``409 conflict``.

Crash points ``server.after_verify``, ``server.before_commit`` and
``server.after_commit_before_response`` let the kill -9 harness stop the server
between those steps.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from sync.canonical import MAX_SAFE_INT, loads_strict
from sync.crashpoints import crashpoint
from sync.errors import CanonicalError
from sync.events import MAX_EVENT_BYTES, genesis, hash_body
from sync.keys import verify_ed25519
from sync.server import tables as t
from sync.server.alerts import DeviceInfo, NewAlert, alerts_for_event, confirm_event_alert, raise_alert
from sync.server.auth import DeviceRequest, claim_nonce
from sync.server.batchjson import canonical_bytes, loads_batch
from sync.server.db import insert_rows
from sync.server.derive import derived_columns
from sync.server.errors import ApiError
from sync.signing import head_text

__all__ = ["Batch", "Item", "Skip", "flash", "ingest", "parse_batch"]

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KIND = re.compile(r"^[a-z0-9_]{1,32}$")
_ENVELOPE = frozenset({"v", "device_id", "seq", "kind", "at", "payload", "prev_hash", "hash"})
_BATCH_KEYS = frozenset({"device_id", "first_seq", "last_seq", "prev_hash", "skip", "events", "head_hash", "head_sig"})
_SKIP_KEYS = frozenset({"from_seq", "to_seq", "cause", "last_hash", "gap_seq"})
SKIP_CAUSES = ("disk_full", "corrupt", "server_lost")
FLASH_KINDS = ("temp_alert", "sentinel_alert", "decision")
MAX_FLASH = 10


class BadBatch(ApiError):
    def __init__(self, detail: str, seq: int | None) -> None:
        super().__init__(400, "bad_batch", detail, seq=seq)


@dataclass(frozen=True)
class Item:
    """One verified event of a batch."""

    seq: int
    prev_hash: str
    hash: str
    body: str  # the canonical text that was hashed (stored as is)
    event: dict[str, Any]


@dataclass(frozen=True)
class Skip:
    from_seq: int
    to_seq: int
    cause: str
    last_hash: str
    gap_seq: int | None


@dataclass(frozen=True)
class Batch:
    device_id: str
    first_seq: int
    last_seq: int
    prev_hash: str
    skip: Skip | None
    events: list[Item]
    head_hash: str
    head_sig: str


def _int(v: Any) -> bool:
    return type(v) is int and 1 <= v <= MAX_SAFE_INT


def _check_event(ev: Any, device_id: str, pos_seq: int | None) -> Item:
    """Envelope, size and hash of one event (§1.1, §1.3)."""
    seq = ev.get("seq") if isinstance(ev, dict) else None
    at_seq = seq if _int(seq) else pos_seq
    if not isinstance(ev, dict):
        raise BadBatch("event is not an object", at_seq)
    if ev.keys() != _ENVELOPE:
        missing, extra = _ENVELOPE - set(ev), set(ev) - _ENVELOPE
        raise BadBatch(f"event envelope: missing {sorted(missing)} extra {sorted(extra)[:5]}", at_seq)
    if ev["v"] != 1 or type(ev["v"]) is not int:
        raise BadBatch("event v must be 1", at_seq)
    if ev["device_id"] != device_id:
        raise BadBatch("event device_id differs from the path", at_seq)
    if not _int(seq):
        raise BadBatch("event seq must be a positive integer", pos_seq)
    if not isinstance(ev["kind"], str) or not _KIND.match(ev["kind"]):
        raise BadBatch("event kind must match [a-z0-9_]{1,32}", seq)
    if not isinstance(ev["at"], dict) or not isinstance(ev["payload"], dict):
        raise BadBatch("event at and payload must be objects", seq)
    if not isinstance(ev["prev_hash"], str) or not _HEX64.match(ev["prev_hash"]):
        raise BadBatch("event prev_hash must be 64 lowercase hex", seq)
    if not isinstance(ev["hash"], str) or not _HEX64.match(ev["hash"]):
        raise BadBatch("event hash must be 64 lowercase hex", seq)
    try:
        body = canonical_bytes({k: v for k, v in ev.items() if k != "hash"})
    except CanonicalError as exc:
        raise BadBatch(f"event outside the canonical profile: {exc}", seq) from exc
    if len(body) > MAX_EVENT_BYTES:
        raise BadBatch(f"event of {len(body)} canonical bytes exceeds {MAX_EVENT_BYTES}", seq)
    if hash_body(body) != ev["hash"]:
        raise BadBatch("hash mismatch", seq)
    return Item(seq=ev["seq"], prev_hash=ev["prev_hash"], hash=ev["hash"], body=body.decode("utf-8"), event=ev)


def parse_batch(body: bytes, device_id: str, public_key: str, *, max_events: int, max_json_bytes: int) -> Batch:
    """Step 2 of §3.2: everything that can be checked without the database.

    Raises:
        ApiError: ``400 bad_batch`` (with ``seq``) or ``413 too_large``.
    """
    try:
        doc = loads_batch(body, max_bytes=max_json_bytes)
    except CanonicalError as exc:
        raise BadBatch(f"not strict JSON: {exc}", None) from exc
    if not isinstance(doc, dict):
        raise BadBatch("batch is not a JSON object", None)
    if set(doc) - _BATCH_KEYS or _BATCH_KEYS - {"skip"} - set(doc):
        raise BadBatch(f"batch fields must be exactly {sorted(_BATCH_KEYS)}", None)
    first, last = doc["first_seq"], doc["last_seq"]
    if not _int(first) or not _int(last) or last < first:
        raise BadBatch("first_seq and last_seq must be positive integers, first ≤ last", None)
    if doc["device_id"] != device_id:
        raise BadBatch("batch device_id differs from the path", first)
    for key in ("prev_hash", "head_hash"):
        if not isinstance(doc[key], str) or not _HEX64.match(doc[key]):
            raise BadBatch(f"{key} must be 64 lowercase hex", first)
    if not isinstance(doc["head_sig"], str) or not re.fullmatch(r"[0-9a-f]{128}", doc["head_sig"]):
        raise BadBatch("head_sig must be 128 lowercase hex", first)
    events = doc["events"]
    if not isinstance(events, list):
        raise BadBatch("events must be an array", first)
    if len(events) > max_events:
        raise ApiError(413, "too_large", f"{len(events)} events; at most {max_events} per batch",
                       max_events=max_events, max_bytes=max_json_bytes)
    if first == 1 and doc["prev_hash"] != genesis(device_id):
        raise BadBatch("prev_hash of a batch starting at seq 1 must be the genesis", 1)

    skip = None
    raw_skip = doc.get("skip")
    if raw_skip is not None:
        if not isinstance(raw_skip, dict) or set(raw_skip) != _SKIP_KEYS:
            raise BadBatch(f"skip must be null or an object with {sorted(_SKIP_KEYS)}", first)
        s = raw_skip
        if not _int(s["from_seq"]) or not _int(s["to_seq"]) or s["to_seq"] < s["from_seq"]:
            raise BadBatch("skip from_seq/to_seq must be positive integers, from ≤ to", first)
        if s["cause"] not in SKIP_CAUSES:
            raise BadBatch(f"skip cause must be one of {', '.join(SKIP_CAUSES)}", first)
        if not isinstance(s["last_hash"], str) or not _HEX64.match(s["last_hash"]):
            raise BadBatch("skip last_hash must be 64 lowercase hex", first)
        if s["gap_seq"] is not None and not _int(s["gap_seq"]):
            raise BadBatch("skip gap_seq must be a positive integer or null", first)
        if s["from_seq"] != first:
            raise BadBatch("skip.from_seq must equal first_seq", first)
        skip = Skip(s["from_seq"], s["to_seq"], s["cause"], s["last_hash"], s["gap_seq"])

    if not events and skip is None:
        raise BadBatch("a batch needs events or a skip", first)

    items: list[Item] = []
    expect_seq = skip.to_seq + 1 if skip else first
    expect_prev = skip.last_hash if skip else doc["prev_hash"]
    for ev in events:
        item = _check_event(ev, device_id, expect_seq)
        if item.seq != expect_seq:
            raise BadBatch(f"seq {item.seq} where {expect_seq} was expected (seqs must be consecutive)", expect_seq)
        if item.prev_hash != expect_prev:
            raise BadBatch("prev_hash does not link to the previous item", item.seq)
        items.append(item)
        expect_seq, expect_prev = item.seq + 1, item.hash
    tail_seq = items[-1].seq if items else skip.to_seq  # type: ignore[union-attr]
    tail_hash = items[-1].hash if items else skip.last_hash  # type: ignore[union-attr]
    if last != tail_seq or doc["head_hash"] != tail_hash:
        raise BadBatch("last_seq/head_hash do not match the last item", tail_seq)
    if not verify_ed25519(public_key, head_text(device_id, last, doc["head_hash"]), doc["head_sig"]):
        raise BadBatch("head_sig does not verify", last)
    return Batch(device_id=device_id, first_seq=first, last_seq=last, prev_hash=doc["prev_hash"], skip=skip,
                 events=items, head_hash=doc["head_hash"], head_sig=doc["head_sig"])


# -- the transaction ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    acked_seq: int = 0
    acked_hash: str = ""
    stored: int = 0
    duplicates: int = 0
    conflict_seq: int | None = None
    hole: Skip | None = None


def _stored_hash(conn: Connection, device_id: str, seq: int) -> str | None:
    """The chain hash the server knows for ``seq``: the event's, a hole's ``last_hash``, or genesis."""
    if seq == 0:
        return genesis(device_id)
    row = conn.execute(select(t.events.c.hash).where(t.events.c.device_id == device_id,
                                                     t.events.c.seq == seq)).first()
    if row is not None:
        return str(row.hash)
    hole = conn.execute(select(t.event_holes.c.last_hash).where(
        t.event_holes.c.device_id == device_id, t.event_holes.c.to_seq == seq)).first()
    return str(hole.last_hash) if hole is not None else None


def _site_tz(conn: Connection, site_id: str | None, default: str) -> str:
    if site_id is None:
        return default
    tz = conn.execute(select(t.sites.c.tz).where(t.sites.c.site_id == site_id)).scalar()
    return str(tz) if tz else default


def ingest(st: Any, req: DeviceRequest) -> tuple[int, dict[str, Any]]:
    """Run §3.2 for one authenticated upload; returns ``(status, body)`` without ``time``.

    Raises:
        ApiError: 400 bad_batch, 401 replayed_nonce, 403 (device state changed), 413.
    """
    started = time.perf_counter()
    device_id = req.device_id
    batch = parse_batch(req.body, device_id, req.device.public_key, max_events=st.config.max_batch_events,
                        max_json_bytes=st.config.max_batch_json_bytes)
    crashpoint("server.after_verify")
    now = st.now_ms()
    with st.db.write() as conn:
        out = _ingest_tx(conn, st, req, batch, now)
        crashpoint("server.before_commit")
    crashpoint("server.after_commit_before_response")
    m = st.metrics
    m.ingest_batches.labels(str(out.status)).inc()
    m.ingest_seconds.observe(time.perf_counter() - started)
    if out.stored:
        m.ingest_events.labels("stored").inc(out.stored)
    if out.duplicates:
        m.ingest_events.labels("duplicate").inc(out.duplicates)
    if out.status == 409 and out.conflict_seq is not None:
        m.ingest_events.labels("conflict").inc(max(1, batch.last_seq - out.conflict_seq + 1))
    if out.hole is not None:
        m.ingest_holes.labels(out.hole.cause).inc()
    log.info("upload device=%s seq=%d..%d status=%d acked=%d stored=%d dup=%d", device_id, batch.first_seq,
             batch.last_seq, out.status, out.acked_seq, out.stored, out.duplicates)
    ack = st.signed_ack(device_id, req.nonce, out.acked_seq, out.acked_hash)
    if out.status == 200:
        return 200, {**ack, "received": len(batch.events), "stored": out.stored, "duplicates": out.duplicates}
    return out.status, {**out.body, **ack}


def _ingest_tx(conn: Connection, st: Any, req: DeviceRequest, batch: Batch, now: int) -> Outcome:
    device_id = req.device_id
    d = t.devices.c
    dev = conn.execute(st.db.for_update(select(t.devices).where(d.device_id == device_id))).first()
    if dev is None or dev.status != "active":
        raise ApiError(403, "device_not_active", "device is no longer active")
    claim_nonce(conn, st, device_id, req.nonce, now)
    c, h = int(dev.acked_seq), str(dev.acked_hash)
    out = Outcome(acked_seq=c, acked_hash=h)
    if dev.conflict:
        out.status, out.conflict_seq = 409, dev.conflict_seq
        out.body = {"error": "conflict", "detail": f"the chain of this device is in conflict at seq "
                    f"{dev.conflict_seq}; an admin must clear it", "conflict_seq": dev.conflict_seq}
        return out
    if batch.first_seq > c + 1:  # step 4
        out.status = 409
        out.body = {"error": "seq_gap", "detail": f"expected seq {c + 1}", "expected_seq": c + 1}
        return out

    # Step 5: overlap with what is stored.
    old = [e for e in batch.events if e.seq <= c]
    new = [e for e in batch.events if e.seq > c]
    conflict: tuple[int, str] | None = None
    if old:
        stored = {int(r.seq): r.hash for r in conn.execute(select(t.events.c.seq, t.events.c.hash).where(
            t.events.c.device_id == device_id, t.events.c.seq >= old[0].seq, t.events.c.seq <= old[-1].seq))}
        for e in old:
            got = stored.get(e.seq)
            if got is not None and got != e.hash:
                conflict = (e.seq, f"seq {e.seq} differs from the stored event")
                break
        out.duplicates = len(old)
    hole: Skip | None = None
    head_seq, head_hash = c, h
    skip = batch.skip
    if conflict is None and skip is not None and skip.to_seq > c:
        if skip.from_seq <= c:
            # §3.5: a lost ack, then a full disk: trim the skip to start after C; its link is the batch's
            # prev_hash against the stored hash of first_seq − 1 (no check when that row is gone).
            known = _stored_hash(conn, device_id, batch.first_seq - 1)
            if known is not None and known != batch.prev_hash:
                conflict = (skip.from_seq, f"skip at seq {skip.from_seq} does not link to the stored chain")
            hole = Skip(c + 1, skip.to_seq, skip.cause, skip.last_hash, skip.gap_seq)
        else:  # from_seq == C + 1
            if batch.prev_hash != h:
                conflict = (c + 1, f"skip at seq {c + 1} does not continue the stored chain")
            hole = skip
        if conflict is None:
            head_seq, head_hash = skip.to_seq, skip.last_hash
    if conflict is None and new:  # step 6
        first = new[0]
        if first.seq != head_seq + 1 or first.prev_hash != head_hash:
            conflict = (first.seq, f"seq {first.seq} does not continue the stored chain (fork)")
    if conflict is not None:
        return _record_conflict(conn, st, dev, batch, conflict, now, out)

    # Step 7: write.
    info = DeviceInfo(device_id, dev.site_id, {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door})
    dev_update: dict[str, Any] = {"last_upload_ms": now, "last_seen_ms": now}
    if hole is not None:
        conn.execute(t.event_holes.insert().values(
            device_id=device_id, from_seq=hole.from_seq, to_seq=hole.to_seq, cause=hole.cause,
            last_hash=hole.last_hash, gap_seq=hole.gap_seq, declared_ms=now, confirmed=False))
        dev_update["holes"] = dev.holes + 1
        lost = f"seq {hole.from_seq}–{hole.to_seq} ({hole.to_seq - hole.from_seq + 1} events)"
        if hole.cause == "server_lost":
            alert = NewAlert(kind="server_data_lost", severity="critical", seq=None,
                             summary=f"服务器丢失已确认事件 / server lost acknowledged events: {lost}",
                             venue=info.venue, detail={"from_seq": hole.from_seq, "to_seq": hole.to_seq})
        else:
            alert = NewAlert(kind="data_lost", severity="high", seq=hole.gap_seq,
                             summary=f"数据丢失 / data lost on the gate: {lost} ({hole.cause})",
                             venue=info.venue, detail={"from_seq": hole.from_seq, "to_seq": hole.to_seq,
                                                       "cause": hole.cause})
        raise_alert(conn, st, info, alert, now)
        out.hole = hole
    if new:
        tz = _site_tz(conn, dev.site_id, st.config.site_tz)
        venue = {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door}
        rows: list[dict[str, Any]] = []
        for e in new:
            cols = derived_columns(e.event, site_id=dev.site_id, tz=tz, device_venue=venue, received_ms=now)
            cols.update(device_id=device_id, seq=e.seq, prev_hash=e.prev_hash, hash=e.hash, body=e.body)
            rows.append(cols)
            if e.event["kind"] == "venue_bound":
                _venue_bound(e.event, dev_update)
        insert_rows(conn, t.events, rows)
        for e in new:
            for alert in alerts_for_event(e.event, e.hash):
                confirm_event_alert(conn, st, info, alert, now)
        _confirm_holes(conn, st, info, [e for e in new if e.event["kind"] == "gap"], now)
        head_seq, head_hash = new[-1].seq, new[-1].hash
    out.stored = len(new)
    if head_seq > c:
        dev_update.update(acked_seq=head_seq, acked_hash=head_hash)
    if dev.head_sig_seq is None or batch.last_seq >= dev.head_sig_seq:
        dev_update.update(head_sig=batch.head_sig, head_sig_seq=batch.last_seq)
    conn.execute(update(t.devices).where(d.device_id == device_id).values(**dev_update))
    out.acked_seq, out.acked_hash = head_seq, head_hash
    return out


def _venue_bound(event: Mapping[str, Any], dev_update: dict[str, Any]) -> None:
    """§1.5 venue_bound: the server copies venue, zone, door and firm into the device's row."""
    payload = event.get("payload") or {}
    venue = payload.get("venue")
    if not isinstance(venue, dict):
        return
    vid, zone, door = venue.get("venue_id"), venue.get("zone"), venue.get("door")
    if isinstance(vid, str) and 1 <= len(vid) <= 32 and isinstance(zone, str) and 1 <= len(zone) <= 32:
        dev_update.update(venue_id=vid, zone=zone, door=door[:32] if isinstance(door, str) else None)
        firm = payload.get("firm_id")
        dev_update["firm_id"] = firm[:32] if isinstance(firm, str) else None


def _confirm_holes(conn: Connection, st: Any, info: DeviceInfo, gaps: list[Item], now: int) -> None:
    """§3.5: the gap event named by a hole must cover it; then the hole is ``confirmed``."""
    if not gaps:
        return
    h = t.event_holes.c
    by_seq = {g.seq: g for g in gaps}
    holes = conn.execute(select(t.event_holes).where(h.device_id == info.device_id,
                                                     h.gap_seq.in_(list(by_seq)))).all()
    for hole in holes:
        p = by_seq[hole.gap_seq].event.get("payload") or {}
        f, to = p.get("from_seq"), p.get("to_seq")
        covers = (type(f) is int and type(to) is int and f <= hole.from_seq and to == hole.to_seq
                  and p.get("last_hash") == hole.last_hash)
        if covers:
            conn.execute(update(t.event_holes).where(h.device_id == info.device_id, h.from_seq == hole.from_seq)
                         .values(confirmed=True))
        else:
            raise_alert(conn, st, info, NewAlert(
                kind="hole_unconfirmed", severity="high", seq=hole.from_seq,
                summary=f"缺口未被确认 / hole seq {hole.from_seq}–{hole.to_seq}: gap event {hole.gap_seq} "
                        "does not describe it", venue=info.venue,
                detail={"from_seq": hole.from_seq, "to_seq": hole.to_seq, "gap_seq": hole.gap_seq}), now)


def _record_conflict(conn: Connection, st: Any, dev: Any, batch: Batch, conflict: tuple[int, str], now: int,
                     out: Outcome) -> Outcome:
    """Step 8: keep both versions, flag the device, raise ``chain_conflict``; committed, then 409."""
    seq, detail = conflict
    device_id = dev.device_id
    rows = [dict(device_id=device_id, seq=e.seq, hash=e.hash, body=e.body, head_sig=batch.head_sig,
                 received_ms=now) for e in batch.events if e.seq >= seq]
    if rows:
        conn.execute(t.event_conflicts.insert(), rows)
    conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(
        conflict=True, conflict_seq=seq, last_seen_ms=now))
    info = DeviceInfo(device_id, dev.site_id, {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door})
    raise_alert(conn, st, info, NewAlert(
        kind="chain_conflict", severity="critical", seq=seq,
        summary=f"链冲突 / chain conflict: {detail}", venue=info.venue,
        detail={"conflict_seq": seq, "acked_seq": out.acked_seq}), now)
    log.warning("chain conflict device=%s seq=%d: %s", device_id, seq, detail)
    out.status, out.conflict_seq = 409, seq
    out.body = {"error": "conflict", "detail": detail, "conflict_seq": seq}
    return out


# -- flash (§3.6) ----------------------------------------------------------------------------------------------

def flash(st: Any, req: DeviceRequest) -> dict[str, Any]:
    """Provisional alerts for urgent events ahead of the ordered upload; never stores events."""
    try:
        doc = loads_strict(req.body, max_bytes=st.config.max_batch_json_bytes)
    except CanonicalError as exc:
        raise ApiError(400, "bad_request", f"not strict JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"events"} or not isinstance(doc["events"], list):
        raise ApiError(400, "bad_request", 'body must be {"events": [...]}')
    if len(doc["events"]) > MAX_FLASH:
        raise ApiError(413, "too_large", f"at most {MAX_FLASH} events per flash", max_events=MAX_FLASH,
                       max_bytes=st.config.max_batch_json_bytes)
    device_id = req.device_id
    checked: list[tuple[Item, list[NewAlert]]] = []
    rejected: list[dict[str, Any]] = []
    for ev in doc["events"]:
        try:
            item = _check_event(ev, device_id, None)
        except BadBatch as exc:
            rejected.append({"seq": exc.extra.get("seq"), "reason": exc.detail})
            continue
        kind, payload = item.event["kind"], item.event["payload"]
        if kind not in FLASH_KINDS or (kind == "decision" and payload.get("alert") != "urgent"):
            rejected.append({"seq": item.seq, "reason": "not an urgent kind"})
            continue
        urgent = [a for a in alerts_for_event(item.event, item.hash)
                  if a.kind in ("fever", "sentinel", "decision_alert", "sensor_fault")]
        checked.append((item, urgent))
    now = st.now_ms()
    accepted: list[int] = []
    with st.db.write() as conn:
        dev = conn.execute(st.db.for_update(select(t.devices).where(t.devices.c.device_id == device_id))).first()
        claim_nonce(conn, st, device_id, req.nonce, now)
        info = DeviceInfo(device_id, dev.site_id, {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door})
        for item, urgent in checked:
            accepted.append(item.seq)
            if item.seq <= dev.acked_seq:
                # Already stored: only compare (§3.6).
                stored = conn.execute(select(t.events.c.hash).where(
                    t.events.c.device_id == device_id, t.events.c.seq == item.seq)).scalar()
                if stored is not None and stored != item.hash:
                    raise_alert(conn, st, info, NewAlert(
                        kind="chain_conflict", severity="critical", seq=item.seq, event_hash=item.hash,
                        summary=f"链冲突 / chain conflict: flash copy of seq {item.seq} differs from the "
                                "stored event", venue=info.venue, detail={"stored_hash": stored}), now)
                continue
            for alert in urgent:
                existing = conn.execute(select(t.alerts.c.event_hash).where(
                    t.alerts.c.device_id == device_id, t.alerts.c.seq == item.seq,
                    t.alerts.c.kind == alert.kind)).first()
                if existing is None:
                    raise_alert(conn, st, info, NewAlert(**{**alert.__dict__, "provisional": True}), now)
                elif existing.event_hash != item.hash:
                    raise_alert(conn, st, info, NewAlert(
                        kind="chain_conflict", severity="critical", seq=item.seq, event_hash=item.hash,
                        summary=f"链冲突 / chain conflict: two flash copies of seq {item.seq} differ",
                        venue=info.venue, detail={"other_hash": existing.event_hash}), now)
        conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(last_seen_ms=now))
    log.info("flash device=%s accepted=%s rejected=%d", device_id, accepted, len(rejected))
    return {"accepted": accepted, "rejected": rejected}


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
