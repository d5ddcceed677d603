"""Request and response models of the HTTP API, one per direction (sync.md §2-§5).

Device routes verify a signature over the exact body bytes, so they read the
body themselves (``sync.server.routes.devices``); their models here only
document the wire format in the OpenAPI description. Admin and auditor
routes validate their bodies with these models (FastAPI answers ``422`` with
the spec's error body on a mismatch).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sync.events import valid_device_id

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,62}$"
HEX64 = r"^[0-9a-f]{64}$"
Hex64 = Annotated[str, Field(pattern=HEX64)]
Severity = Literal["info", "warning", "high", "critical"]


class In(BaseModel):
    """Base of request bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Out):
    error: str
    detail: str


# -- device side (documentation of the signed wire format) ---------------------------------------------

class SignedTime(Out):
    server_time: str
    nonce: str
    sig: str


class Skip(In):
    from_seq: int = Field(ge=1)
    to_seq: int = Field(ge=1)
    cause: Literal["disk_full", "corrupt", "server_lost"]
    last_hash: Hex64
    gap_seq: int | None = Field(None, ge=1)


class UploadBatch(In):
    """sync.md §3.1 (events are full envelopes of §1.1, with ``hash``)."""

    device_id: str = Field(pattern=ID_PATTERN)
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    prev_hash: Hex64
    skip: Skip | None = None
    events: list[dict[str, Any]] = Field(max_length=500)
    head_hash: Hex64
    head_sig: str = Field(pattern=r"^[0-9a-f]{128}$")


class UploadAnswer(Out):
    acked_seq: int
    acked_hash: str
    ack_sig: str
    received: int
    stored: int
    duplicates: int
    time: SignedTime


class FlashBody(In):
    events: list[dict[str, Any]] = Field(max_length=10)


class FlashAnswer(Out):
    accepted: list[int]
    rejected: list[dict[str, Any]]
    time: SignedTime


class DeviceStateAnswer(Out):
    device_id: str
    status: str
    acked_seq: int
    acked_hash: str
    ack_sig: str
    conflict: bool
    conflict_seq: int | None
    holes: int
    time: SignedTime


class Heartbeat(Out):
    """sync.md §4.2; every member optional for the server (it stores the body as sent)."""


class HeartbeatAnswer(Out):
    poll_bundle_now: bool
    acked_seq: int
    acked_hash: str
    ack_sig: str
    time: SignedTime


# -- enrolment (§2.3) ---------------------------------------------------------------------------------------

class Venue(In):
    venue_id: str = Field(min_length=1, max_length=32)
    zone: str = Field(min_length=1, max_length=32)
    door: str | None = Field(None, max_length=32)


class EnrollRequest(In):
    code: str = Field(min_length=1, max_length=40)
    public_key: str = Field(pattern=HEX64)
    software: str = Field("", max_length=64)
    proof: str = Field(pattern=r"^[0-9a-f]{128}$")


class EnrollAnswer(Out):
    device_id: str
    site_id: str
    venue: dict[str, Any]
    firm_id: str | None
    keyid: str
    server_key: str
    pid_key: str
    pid_kid: int
    keys_version: int | None
    server_time: str


# -- admin ---------------------------------------------------------------------------------------------------

def _id(v: str) -> str:
    if not valid_device_id(v):
        raise ValueError("must match ^[a-z0-9][a-z0-9-]{2,62}$")
    return v


class SiteIn(In):
    site_id: str
    name: str = Field(min_length=1, max_length=200)
    tz: str = Field("Asia/Shanghai", min_length=1, max_length=64)

    _v = field_validator("site_id")(_id)

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("not an IANA time zone") from exc
        return v


class SiteOut(Out):
    site_id: str
    name: str
    tz: str


class DeviceIn(In):
    device_id: str
    site_id: str
    venue: Venue
    firm_id: str | None = Field(None, min_length=1, max_length=32)
    label: str = Field("", max_length=200)

    _v = field_validator("device_id", "site_id")(_id)


class DeviceCreated(Out):
    device_id: str
    status: str
    enrollment_code: str
    code_expires_at: str


class DeviceStatusOut(Out):
    device_id: str
    status: str


class TokenIn(In):
    role: Literal["admin", "auditor"]
    name: str = Field(min_length=1, max_length=64)
    expires_days: int | None = Field(None, ge=1, le=3650, strict=True)  # true is not 1 day


class TokenCreated(Out):
    id: int
    token: str
    prefix: str
    role: str
    name: str
    expires_at: str | None


class TokenOut(Out):
    id: int
    name: str
    role: str
    prefix: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class WebhookIn(In):
    url: str = Field(min_length=8, max_length=2000)
    secret: str = Field(min_length=16, max_length=200)
    kinds: list[str] = Field(default_factory=list, max_length=50)
    min_severity: Severity = "warning"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class WebhookOut(Out):
    id: int
    url: str
    kinds: list[str]
    min_severity: str
    enabled: bool
    created_by: str | None


class ModeIn(In):
    site: str | None = None
    mode: Literal["normal", "emergency"]
    reason: str = Field("", max_length=500)

    @field_validator("site")
    @classmethod
    def _site(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _id(v)


class Published(Out):
    id: str
    version: int
    server_time: str | None = None


# -- audit ------------------------------------------------------------------------------------------------------

class TraceItem(Out):
    at: str | None
    clock: str | None
    device_id: str
    seq: int
    kind: str
    result: str | None
    zone: str | None
    door: str | None
    pid: str | None = None
    name_m: str | None = None
    role: str | None = None
    firm_id: str | None = None
    temp_centi_c: int | None
    venue_id: str | None = None


class TracePage(Out):
    items: list[TraceItem]
    untrusted_time_items: int
    next_cursor: str | None


class PersonTraceIn(In):
    id_type: Literal["SUB", "DCC"] | None = None
    id: str | None = Field(None, min_length=1, max_length=200)
    pid: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    from_: str = Field(alias="from", min_length=1, max_length=40)
    to: str = Field(min_length=1, max_length=40)
    limit: int = Field(1000, ge=1, le=10_000)
    cursor: str | None = Field(None, max_length=200)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DailyReport(Out):
    site_id: str
    day: str
    tz: str
    checked: int
    people: int
    admitted: int
    denied: int
    referred: int
    fevers: int
    overrides: int
    sentinel_alerts: int
    data_gaps: int
    devices_reporting: int
    untrusted_time: int
    pending_devices: list[str]


class AlertOut(Out):
    id: int
    kind: str
    severity: str
    status: str
    provisional: bool
    created_at: str
    device_id: str | None
    site_id: str | None
    seq: int | None
    summary: str


class AlertPage(Out):
    items: list[AlertOut]
    next_cursor: str | None
