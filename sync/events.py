"""The event envelope, the hash chain and the pid (sync.md §1.1-1.4).

    genesis(device_id) = hex SHA-256(b"checkpoint/genesis/v1\\n" + UTF-8(device_id))
    hash(event)        = hex SHA-256(b"checkpoint/event/v1\\n" + canonical(event minus "hash"))

The hash input is the parsed values, re-serialised canonically: a receiver that
parsed any valid JSON spelling of an event gets the same hash. Events are
ordered by ``seq``, never by time; the canonical form of one event (without
``hash``) is at most 4096 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from sync.canonical import canonical
from sync.errors import FormatError

__all__ = [
    "CLOCK_STATES",
    "EVENT_KINDS",
    "FORMAT_VERSION",
    "MAX_EVENT_BYTES",
    "EventTooLarge",
    "build_event",
    "event_hash",
    "genesis",
    "hash_body",
    "pid",
    "valid_device_id",
]

FORMAT_VERSION = 1
MAX_EVENT_BYTES = 4096
GENESIS_PREFIX = b"checkpoint/genesis/v1\n"
EVENT_PREFIX = b"checkpoint/event/v1\n"
CLOCK_STATES = ("synced", "floor", "untrusted")
EVENT_KINDS = frozenset(
    {
        "decision",
        "override",
        "temp_alert",
        "sentinel_alert",
        "bundle_applied",
        "keys_applied",
        "bundle_rejected",
        "bundle_state",
        "clock_warning",
        "device_start",
        "device_stop",
        "gap",
        "material_scan",
        "venue_bound",
    }
)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")


class EventTooLarge(FormatError):
    """The canonical event exceeds 4096 bytes; the caller must cut free-text fields first."""


def valid_device_id(value: str) -> bool:
    """Device, site and fleet ids: ``^[a-z0-9][a-z0-9-]{2,62}$`` (sync.md §0)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def genesis(device_id: str) -> str:
    """The chain start of a device: the ``prev_hash`` of event 1."""
    return hashlib.sha256(GENESIS_PREFIX + device_id.encode("utf-8")).hexdigest()


def hash_body(body: bytes) -> str:
    """Event hash from the canonical bytes of the event without ``hash``."""
    return hashlib.sha256(EVENT_PREFIX + body).hexdigest()


def event_hash(event: Mapping[str, Any]) -> str:
    """Event hash of a parsed event (its ``hash`` member, if any, is left out)."""
    return hash_body(canonical({k: v for k, v in event.items() if k != "hash"}))


def build_event(
    *, device_id: str, seq: int, kind: str, at: Mapping[str, Any], payload: Mapping[str, Any], prev_hash: str
) -> tuple[dict[str, Any], bytes, str]:
    """Build one envelope and return ``(event_without_hash, canonical_body, hash)``.

    Raises:
        CanonicalError: the payload holds a float, a bad key or another non-profile value.
        EventTooLarge: the canonical body is over 4096 bytes.
    """
    event = {
        "v": FORMAT_VERSION,
        "device_id": device_id,
        "seq": seq,
        "kind": kind,
        "at": dict(at),
        "payload": dict(payload),
        "prev_hash": prev_hash,
    }
    body = canonical(event)
    if len(body) > MAX_EVENT_BYTES:
        raise EventTooLarge(f"{kind} event of {len(body)} canonical bytes exceeds {MAX_EVENT_BYTES}")
    return event, body, hash_body(body)


def pid(pid_key: bytes, id_type: str, ident: str) -> str:
    """Pseudonymous person id: first 16 bytes (hex) of HMAC-SHA-256(pid_key, id_type + ":" + id).

    ``id_type`` is ``SUB`` or ``DCC`` (credentials.md §7.1); the id is used as written.
    """
    return hmac.new(pid_key, f"{id_type}:{ident}".encode(), hashlib.sha256).digest()[:16].hex()
