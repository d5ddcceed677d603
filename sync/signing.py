"""The signing texts of the sync protocol (sync.md §0, §2.4-2.5, §3.1).

| tag                     | lines after the tag                                     | signed by      |
|-------------------------|---------------------------------------------------------|----------------|
| checkpoint/request/v1   | method, path-and-query, device_id, time, nonce, body sha | device key     |
| checkpoint/head/v1      | device_id, last_seq, head_hash                           | device key     |
| checkpoint/enroll/v1    | normalised code, public_key                              | new device key |
| checkpoint/time/v1      | device_id, nonce, server_time                            | server key     |
| checkpoint/ack/v1       | device_id, nonce, acked_seq, acked_hash                  | server key     |

One module builds every text, so the agent that signs and the server that
verifies can never disagree about a byte. Path-and-query starts at ``/v1/``
(a proxy prefix is not part of it) and keeps ``?`` and the raw query string.
"""

from __future__ import annotations

import hashlib
import secrets

from sync.keys import signing_text

__all__ = [
    "EMPTY_SHA256",
    "ack_text",
    "enroll_text",
    "head_text",
    "new_nonce",
    "normalise_code",
    "request_text",
    "time_text",
]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CROCKFORD = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_nonce() -> str:
    """16 random bytes as 32 lowercase hex characters; new for every request and every retry."""
    return secrets.token_hex(16)


def request_text(method: str, path_and_query: str, device_id: str, time_s: int, nonce: str, body: bytes) -> bytes:
    """What ``X-Checkpoint-Signature`` signs; ``body`` is the JSON bytes after removing Content-Encoding."""
    if not path_and_query.startswith("/v1/"):
        raise ValueError("path-and-query must start at /v1/")
    return signing_text(
        "checkpoint/request/v1", method.upper(), path_and_query, device_id, int(time_s), nonce,
        hashlib.sha256(body).hexdigest(),
    )


def head_text(device_id: str, last_seq: int, head_hash: str) -> bytes:
    return signing_text("checkpoint/head/v1", device_id, int(last_seq), head_hash)


def normalise_code(code: str) -> str:
    """Enrolment code as compared and hashed: upper case, no ``-`` or spaces, I/L → 1, O → 0."""
    return code.upper().replace("-", "").replace(" ", "").translate(_CROCKFORD)


def enroll_text(code: str, public_key_hex: str) -> bytes:
    return signing_text("checkpoint/enroll/v1", normalise_code(code), public_key_hex)


def time_text(device_id: str, nonce: str, server_time: str) -> bytes:
    return signing_text("checkpoint/time/v1", device_id, nonce, server_time)


def ack_text(device_id: str, nonce: str, acked_seq: int, acked_hash: str) -> bytes:
    return signing_text("checkpoint/ack/v1", device_id, nonce, int(acked_seq), acked_hash)
