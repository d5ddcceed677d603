"""Device records and enrolment (sync.md §2.1, §2.3).

The enrolment code is 12 Crockford base32 symbols (60 random bits), shown
once, valid 72 h, single use; only SHA-256 of the normalised code is stored.
Issuing the code is the admin's approval. A lost enrolment answer is replayed
to the same public key with the same code; any other key, unknown, used or
expired code gets one and the same ``403 invalid_code``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from typing import Any

from sqlalchemy import Connection, select, update

from sync.events import genesis
from sync.keys import ed25519_keyid, verify_ed25519
from sync.server import tables as t
from sync.server.errors import ApiError
from sync.server.publish import latest_keys_version
from sync.signing import enroll_text, normalise_code
from sync.timefmt import format_ms

__all__ = ["CODE_VALID_MS", "create_device", "enroll", "issue_code", "new_code"]

log = logging.getLogger(__name__)

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_VALID_MS = 72 * 3_600_000


def new_code() -> str:
    """``XXXX-XXXX-XXXX``: 60 random bits as 12 Crockford base32 symbols."""
    n = secrets.randbits(60)
    symbols = "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in range(11, -1, -1))
    return f"{symbols[:4]}-{symbols[4:8]}-{symbols[8:]}"


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode("ascii", "replace")).hexdigest()


def create_device(conn: Connection, *, device_id: str, site_id: str, venue: dict[str, Any], firm_id: str | None,
                  label: str, now_ms: int) -> dict[str, Any]:
    """A ``pending`` device and its first code (§2.3 step 1).

    Raises:
        ApiError: 409 the id exists (ids are for life, §2.1); 422 unknown site.
    """
    if conn.execute(select(t.sites.c.site_id).where(t.sites.c.site_id == site_id)).first() is None:
        raise ApiError(422, "unknown_site", f"site {site_id} does not exist; create it first")
    if conn.execute(select(t.devices.c.device_id).where(t.devices.c.device_id == device_id)).first() is not None:
        raise ApiError(409, "device_exists", f"device {device_id} exists (a device id is used for life)")
    code = new_code()
    conn.execute(t.devices.insert().values(
        device_id=device_id, status="pending", site_id=site_id, venue_id=venue["venue_id"], zone=venue["zone"],
        door=venue.get("door"), firm_id=firm_id, label=label, code_hash=code_hash(code),
        code_expires_ms=now_ms + CODE_VALID_MS, created_ms=now_ms, acked_seq=0, acked_hash=genesis(device_id),
        conflict=False, holes=0))
    log.info("device created device=%s site=%s", device_id, site_id)
    return {"device_id": device_id, "status": "pending", "enrollment_code": code,
            "code_expires_at": format_ms(now_ms + CODE_VALID_MS)}


def issue_code(conn: Connection, device_id: str, now_ms: int) -> dict[str, Any]:
    dev = conn.execute(select(t.devices.c.status).where(t.devices.c.device_id == device_id)).first()
    if dev is None:
        raise ApiError(404, "not_found", "no such device")
    if dev.status != "pending":
        raise ApiError(409, "not_pending", f"device is {dev.status}; codes are issued only while pending")
    code = new_code()
    conn.execute(update(t.devices).where(t.devices.c.device_id == device_id).values(
        code_hash=code_hash(code), code_expires_ms=now_ms + CODE_VALID_MS))
    return {"device_id": device_id, "status": "pending", "enrollment_code": code,
            "code_expires_at": format_ms(now_ms + CODE_VALID_MS)}


def enroll(st: Any, *, code: str, public_key: str, proof: str, software: str) -> dict[str, Any]:
    """§2.3 step 3. Raises ``ApiError`` 403 invalid_code or 400 bad_proof."""
    invalid = ApiError(403, "invalid_code", "unknown, used or expired enrolment code")
    norm = normalise_code(code)
    if len(norm) != 12 or any(ch not in CROCKFORD for ch in norm):
        raise invalid
    digest = code_hash(code)
    now = st.now_ms()
    with st.db.write() as conn:
        dev = conn.execute(st.db.for_update(select(t.devices).where(t.devices.c.code_hash == digest))).first()
        if dev is None or dev.code_expires_ms is None or dev.code_expires_ms <= now:
            raise invalid
        if dev.status == "active" and dev.public_key == public_key and dev.enroll_answer:
            answer = json.loads(dev.enroll_answer)  # the lost answer, again
            answer["server_time"] = format_ms(now)
            answer["pid_key"] = st.pid_keys[answer["pid_kid"]].hex()  # a secret: not kept in the row
            return answer  # type: ignore[no-any-return]
        if dev.status != "pending":
            raise invalid
        if not verify_ed25519(public_key, enroll_text(code, public_key), proof):
            raise ApiError(400, "bad_proof", "the proof does not verify with this public key")
        kid = st.pid_keys and max(st.pid_keys)
        answer = {
            "device_id": dev.device_id, "site_id": dev.site_id,
            "venue": {"venue_id": dev.venue_id, "zone": dev.zone, "door": dev.door},
            "firm_id": dev.firm_id, "keyid": ed25519_keyid(public_key), "server_key": st.server_key.public,
            "pid_key": st.pid_keys[kid].hex(), "pid_kid": kid, "keys_version": latest_keys_version(conn),
            "server_time": format_ms(now),
        }
        conn.execute(update(t.devices).where(t.devices.c.device_id == dev.device_id).values(
            status="active", public_key=public_key, keyid=answer["keyid"], enrolled_ms=now, last_seen_ms=now,
            hb_software=f"agent={software}"[:64] if software else None,
            enroll_answer=json.dumps({k: v for k, v in answer.items() if k != "pid_key"})))
    log.info("device enrolled device=%s keyid=%s", answer["device_id"], answer["keyid"])
    return answer
