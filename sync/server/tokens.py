"""Admin and auditor tokens (sync.md §2.7): made here, stored as SHA-256 and an 8-character prefix.

``ck_`` + 43 base64url characters (32 random bytes). Kept apart from the HTTP
code so shell commands can make tokens without loading the web framework.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from sqlalchemy import Connection

from sync.server import tables as t
from sync.server.errors import ApiError

__all__ = ["ROLES", "TOKEN_RE", "create_token", "hash_token"]

ROLES = ("admin", "auditor")
TOKEN_RE = re.compile(r"^ck_[A-Za-z0-9_-]{43}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(conn: Connection, *, role: str, name: str, now_ms: int, expires_days: int | None) -> tuple[str, int]:
    """Make a token; returns ``(token, id)``. The token itself is never stored."""
    if role not in ROLES:
        raise ApiError(422, "invalid_request", f"role must be one of {', '.join(ROLES)}")
    token = "ck_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    expires = now_ms + expires_days * 86_400_000 if expires_days else None
    res = conn.execute(t.api_tokens.insert().values(
        name=name, role=role, token_hash=hash_token(token), prefix=token[:8], created_ms=now_ms, expires_ms=expires))
    return token, int(res.inserted_primary_key[0])  # type: ignore[index]
