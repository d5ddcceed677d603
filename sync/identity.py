"""The gate's identity files from enrolment (sync.md §2.2).

``identity.json`` (0640, readable by the gate process) holds the device id, the
server's URL and key, this device's key id, the ``pid_key`` and the binding from
enrolment. ``device.key`` (0600) is the agent's alone: the gate process, which
parses hostile QR codes, cannot sign. Both are written temp file → fsync →
rename → fsync directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sync.errors import ConfigError
from sync.events import valid_device_id
from sync.keys import atomic_write

__all__ = ["IDENTITY_FILE", "Identity", "Venue", "load_identity", "write_identity"]

IDENTITY_FILE = "identity.json"
_HEX64 = r"^[0-9a-f]{64}$"


class Venue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    venue_id: str = Field(min_length=1, max_length=32)
    zone: str = Field(min_length=1, max_length=32)
    door: str | None = Field(None, max_length=32)


class Identity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    device_id: str
    server_url: str
    server_key: str = Field(pattern=_HEX64)
    keyid: str = Field(pattern=r"^[0-9a-f]{16}$")
    pid_key: str = Field(pattern=_HEX64)
    pid_kid: int = Field(1, ge=1)
    site_id: str
    venue: Venue
    firm_id: str | None = None
    keys_version: int | None = None

    @field_validator("device_id", "site_id")
    @classmethod
    def _ids(cls, v: str) -> str:
        if not valid_device_id(v):
            raise ValueError("must match ^[a-z0-9][a-z0-9-]{2,62}$")
        return v

    @property
    def pid_key_bytes(self) -> bytes:
        return bytes.fromhex(self.pid_key)


def load_identity(identity_dir: Path) -> Identity | None:
    """The identity written at enrolment, or None before enrolment.

    Raises:
        ConfigError: the file exists but cannot be used.
    """
    path = Path(identity_dir) / IDENTITY_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return Identity.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"{path}: not a valid identity file: {str(exc).splitlines()[0]}") from exc


def write_identity(identity_dir: Path, identity: Identity) -> Path:
    """Write ``identity.json`` atomically with mode 0640."""
    identity_dir = Path(identity_dir)
    identity_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = identity_dir / IDENTITY_FILE
    atomic_write(path, (identity.model_dump_json(indent=2) + "\n").encode(), mode=0o640)
    return path
