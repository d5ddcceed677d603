"""Who is asking: signed device requests (sync.md §2.4) and bearer tokens (§2.7).

Device requests are checked in the order of §2.4, each failure with its own code:

1. the four ``X-Checkpoint-*`` headers present and well formed, the device
   header equal to the path's id → else ``401 bad_auth``;
2. the device known → ``401 unknown_device``; ``active`` → else
   ``403 device_revoked`` / ``403 device_not_active``;
3. ``|time − server now| ≤ replay_window_s`` → else ``401 clock_skew``;
4. the body inflated (gzip, 2 MiB output cap → ``413``), hashed, and the
   signature verified over the request text → else ``401 bad_signature``.

The nonce (step 5) is inserted by the route in the same transaction as its
writes (``claim_nonce``). A device is only ever its own: the path id is bound
to the key that signed.

Tokens are ``ck_`` + 43 base64url characters (32 random bytes); only their
SHA-256 and first 8 characters are stored. Roles: ``admin`` ⊃ ``auditor``.
The dashboard keeps the token in an ``HttpOnly; Secure; SameSite=Strict``
cookie.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import Connection, Row, select, update

from sync.keys import verify_ed25519
from sync.server import tables as t
from sync.server.db import insert_ignore
from sync.server.errors import ApiError
from sync.server.state import ServerState
from sync.server.tokens import TOKEN_RE, create_token, hash_token
from sync.signing import request_text

__all__ = [
    "COOKIE",
    "DeviceRequest",
    "Principal",
    "claim_nonce",
    "client_ip",
    "create_token",
    "hash_token",
    "path_and_query",
    "principal_from_token",
    "read_body",
    "verify_device_request",
]

log = logging.getLogger(__name__)

COOKIE = "ck_session"
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^[0-9a-f]{128}$")
_TIME_RE = re.compile(r"^[0-9]{1,12}$")
MAX_INFLATED = 2 * 1024 * 1024


# -- client address (§2.6) -----------------------------------------------------------------------

def client_ip(request: Request, st: ServerState) -> str:
    """The peer's address; ``X-Forwarded-For`` only when the peer is a trusted proxy (§2.6)."""
    peer = request.client.host if request.client else "unknown"
    proxies = st.config.trusted_proxies
    if proxies and _in_networks(peer, proxies):
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        # Walk from the nearest hop back; the first untrusted one is the client.
        for hop in reversed(hops):
            if not _in_networks(hop, proxies):
                return hop
    return peer


def _in_networks(addr: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def is_allowed_peer(request: Request, networks: list[str]) -> bool:
    peer = request.client.host if request.client else ""
    return _in_networks(peer, networks)


# -- bodies ----------------------------------------------------------------------------------------

async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw request body, refusing more than ``max_bytes`` on the wire with ``413``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"request body over {max_bytes} bytes", max_events=500,
                    max_bytes=MAX_INFLATED)


def inflate(raw: bytes, encoding: str | None, max_out: int = MAX_INFLATED) -> bytes:
    """Remove ``Content-Encoding`` (identity or gzip), refusing output over ``max_out`` with 413."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(raw) > max_out:
            raise _too_large(max_out)
        return raw
    if enc != "gzip":
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {enc[:20]!r} is not supported (gzip only)")
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, max_out + 1)
        if len(out) > max_out or d.unconsumed_tail:
            raise _too_large(max_out)
        out += d.flush()
    except zlib.error as exc:
        raise ApiError(400, "bad_request", f"gzip body cannot be read: {exc}") from exc
    if len(out) > max_out:
        raise _too_large(max_out)
    if not d.eof:
        raise ApiError(400, "bad_request", "gzip body is truncated")
    return out


# -- signed device requests (§2.4) -----------------------------------------------------------------

@dataclass(frozen=True)
class DeviceRequest:
    device_id: str
    nonce: str
    time_s: int
    body: bytes
    device: Row[Any]


def path_and_query(request: Request) -> str:
    """Path-and-query as signed: from ``/v1/`` on (a proxy prefix is not part of it), raw query kept."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    i = path.find("/v1/")
    path = path[i:] if i >= 0 else path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def header_nonce(request: Request) -> str | None:
    """The request's nonce if it is well formed (so error answers can carry a signed time)."""
    nonce = request.headers.get("x-checkpoint-nonce", "")
    return nonce if _NONCE_RE.match(nonce) else None


def verify_device_request(st: ServerState, request: Request, device_id: str, raw: bytes) -> DeviceRequest:
    """Steps 1-4 of sync.md §2.4. Raises ``ApiError`` with the code of the first failing step."""
    h = request.headers
    dev, time_h, nonce, sig = (h.get(k) for k in (
        "x-checkpoint-device", "x-checkpoint-time", "x-checkpoint-nonce", "x-checkpoint-signature"))
    if dev is None or time_h is None or nonce is None or sig is None:
        raise ApiError(401, "bad_auth", "X-Checkpoint-Device, -Time, -Nonce and -Signature are required")
    if dev != device_id:
        raise ApiError(401, "bad_auth", "X-Checkpoint-Device does not match the path")
    if not _TIME_RE.match(time_h) or not _NONCE_RE.match(nonce) or not _SIG_RE.match(sig):
        raise ApiError(401, "bad_auth", "malformed X-Checkpoint headers (time: unix s, nonce: 32 hex, "
                                        "signature: 128 hex)")
    with st.db.read() as conn:
        device = conn.execute(select(t.devices).where(t.devices.c.device_id == device_id)).first()
    if device is None:
        raise ApiError(401, "unknown_device", "no such device")
    if device.status == "revoked":
        raise ApiError(403, "device_revoked", "this device has been revoked")
    if device.status != "active" or device.public_key is None:
        raise ApiError(403, "device_not_active", f"device is {device.status}")
    now_s = st.now_ms() // 1000
    if abs(int(time_h) - now_s) > st.config.replay_window_s:
        raise ApiError(401, "clock_skew", f"request time is {int(time_h) - now_s:+d} s from server time")
    body = inflate(raw, h.get("content-encoding"), st.config.max_batch_json_bytes)
    text = request_text(request.method, path_and_query(request), device_id, int(time_h), nonce, body)
    if not verify_ed25519(device.public_key, text, sig):
        raise ApiError(401, "bad_signature", "request signature does not verify")
    return DeviceRequest(device_id=device_id, nonce=nonce, time_s=int(time_h), body=body, device=device)


def claim_nonce(conn: Connection, st: ServerState, device_id: str, nonce: str, now_ms: int) -> None:
    """§2.4 step 5: insert the nonce in the request's transaction; a duplicate is a replay."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT DO NOTHING.
    inserted = conn.execute(insert_ignore(conn, t.request_nonces).values(
        device_id=device_id, nonce=nonce, expires_ms=now_ms + st.config.nonce_ttl_s * 1000,
    ).returning(t.request_nonces.c.nonce)).first()
    if inserted is None:
        # Expired nonces may still be in the table until the cleanup; those are no replay.
        row = conn.execute(select(t.request_nonces.c.expires_ms).where(
            t.request_nonces.c.device_id == device_id, t.request_nonces.c.nonce == nonce)).first()
        if row is not None and row.expires_ms > now_ms:
            raise ApiError(401, "replayed_nonce", "this nonce was already used")
        conn.execute(update(t.request_nonces).where(
            t.request_nonces.c.device_id == device_id, t.request_nonces.c.nonce == nonce,
        ).values(expires_ms=now_ms + st.config.nonce_ttl_s * 1000))


# -- bearer tokens (§2.7) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def principal_from_token(st: ServerState, token: str | None) -> Principal | None:
    """The token's holder, or None for a missing, malformed, unknown, revoked or expired token."""
    if not token or not TOKEN_RE.match(token):
        return None
    digest = hash_token(token)
    now = st.now_ms()
    with st.db.read() as conn:
        row = conn.execute(select(t.api_tokens).where(t.api_tokens.c.token_hash == digest)).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    if row.revoked_ms is not None or (row.expires_ms is not None and row.expires_ms <= now):
        return None
    if row.last_used_ms is None or now - row.last_used_ms > 60_000:
        with st.db.write() as conn:  # at most one write a minute per token
            conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == row.id).values(last_used_ms=now))
    return Principal(token_id=int(row.id), name=row.name, role=row.role)


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
