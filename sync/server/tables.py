"""The server's tables and indexes (sync.md §5.2-5.3), SQLAlchemy 2 Core.

Portable column types only (§5.1): times are epoch milliseconds in
``BigInteger``; no JSON-typed columns: the fields that queries need are copied
into columns at ingest and the document itself is kept as ``Text``. Every name
here is the spec's, so a SQL reader of §5.3 finds the same tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = [
    "HEAD_REVISION",
    "SCHEMA_VERSION",
    "alert_deliveries",
    "alerts",
    "api_tokens",
    "audit_log",
    "devices",
    "event_conflicts",
    "event_holes",
    "events",
    "heartbeats",
    "keys_docs",
    "manifests",
    "metadata",
    "parts",
    "pid_keys",
    "request_nonces",
    "schema_version",
    "sites",
    "webhooks",
]

SCHEMA_VERSION = 1
HEAD_REVISION = "0001"  # the newest Alembic revision in sync/server/migrations/versions (a test checks it)

# Constraint names are fixed so that Alembic migrations can refer to them on both dialects.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = String(63)  # device, site and fleet ids: ^[a-z0-9][a-z0-9-]{2,62}$
HEX64 = String(64)

sites = Table(
    "sites", metadata,
    Column("site_id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("tz", String(64), nullable=False, server_default="Asia/Shanghai"),
    Column("created_ms", BigInteger, nullable=False),
)

devices = Table(
    "devices", metadata,
    Column("device_id", ID, primary_key=True),
    Column("status", String(16), nullable=False),  # pending | active | revoked | retired
    Column("site_id", ID, ForeignKey("sites.site_id"), nullable=False),
    Column("venue_id", String(32), nullable=False),
    Column("zone", String(32), nullable=False),
    Column("door", String(32)),
    Column("firm_id", String(32)),
    Column("label", String(200), nullable=False, server_default=""),
    Column("public_key", HEX64),
    Column("keyid", String(16)),
    Column("code_hash", HEX64),
    Column("code_expires_ms", BigInteger),
    Column("created_ms", BigInteger, nullable=False),
    Column("enrolled_ms", BigInteger),
    Column("revoked_ms", BigInteger),
    Column("enroll_answer", Text),  # the 200 body of enrolment, replayed for a lost response (§2.3 step 3)
    Column("acked_seq", BigInteger, nullable=False, server_default="0"),
    Column("acked_hash", HEX64, nullable=False),
    Column("head_sig", String(128)),
    Column("head_sig_seq", BigInteger),
    Column("conflict", Boolean, nullable=False, server_default=text("false")),
    Column("conflict_seq", BigInteger),
    Column("holes", Integer, nullable=False, server_default="0"),
    Column("last_upload_ms", BigInteger),
    Column("last_heartbeat_ms", BigInteger),
    Column("last_seen_ms", BigInteger),
    Column("hb_software", String(64)),
    Column("hb_bundle_version", BigInteger),
    Column("hb_bundle_sha256", HEX64),
    Column("hb_bundle_state", String(16)),
    Column("hb_mode", String(16)),
    Column("hb_clock", String(16)),
    Column("hb_clock_offset_ms", BigInteger),
    Column("hb_backlog", BigInteger),
    Column("hb_oldest_unacked_ms", BigInteger),
    Column("hb_upload_state", String(16)),
    Column("hb_storage_level", String(16)),
    Column("hb_thermometer", String(16)),
    Column("hb_camera", String(16)),
    Column("bundle_behind_since_ms", BigInteger),
)

events = Table(
    "events", metadata,
    Column("device_id", ID, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("at_ms", BigInteger),
    Column("clock", String(16)),
    Column("site_id", ID),
    Column("day", String(10), nullable=False),
    Column("venue_id", String(32)),
    Column("zone", String(32)),
    Column("door", String(32)),
    Column("pid", String(32)),
    Column("name_m", String(64)),
    Column("role", String(32)),
    Column("firm_id", String(32)),
    Column("result", String(32)),
    Column("temp_centi_c", Integer),
    Column("received_ms", BigInteger, nullable=False),
    Column("prev_hash", HEX64, nullable=False),
    Column("hash", HEX64, nullable=False),
    Column("body", Text, nullable=False),
)
Index("ix_events_venue_at", events.c.venue_id, events.c.at_ms)
Index(
    "ix_events_pid_at", events.c.pid, events.c.at_ms,
    sqlite_where=events.c.pid.isnot(None), postgresql_where=events.c.pid.isnot(None),
)
Index("ix_events_site_day_kind", events.c.site_id, events.c.day, events.c.kind)

event_conflicts = Table(
    "event_conflicts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", ID, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", HEX64, nullable=False),
    Column("body", Text, nullable=False),
    Column("head_sig", String(128)),
    Column("received_ms", BigInteger, nullable=False),
)
Index("ix_event_conflicts_device_seq", event_conflicts.c.device_id, event_conflicts.c.seq)
Index("ix_event_conflicts_received", event_conflicts.c.received_ms)

event_holes = Table(
    "event_holes", metadata,
    Column("device_id", ID, primary_key=True),
    Column("from_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("to_seq", BigInteger, nullable=False),
    Column("cause", String(32), nullable=False),
    Column("last_hash", HEX64, nullable=False),
    Column("gap_seq", BigInteger),
    Column("declared_ms", BigInteger, nullable=False),
    Column("confirmed", Boolean, nullable=False, server_default=text("false")),
)
Index("ix_event_holes_declared", event_holes.c.declared_ms)

keys_docs = Table(
    "keys_docs", metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("sha256", HEX64, nullable=False),
    Column("bytes", LargeBinary, nullable=False),
    Column("stored_ms", BigInteger, nullable=False),
)

manifests = Table(
    "manifests", metadata,
    Column("sha256", HEX64, primary_key=True),
    Column("site_id", ID),  # null = fleet-wide
    Column("scope", ID, nullable=False),  # site_id or "*": a non-null key for the unique constraint
    Column("keys_version", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("bytes", LargeBinary, nullable=False),
    Column("issued_ms", BigInteger, nullable=False),
    Column("server_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("published_by", String(64)),
    Column("current", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("scope", "keys_version", "version", name="uq_manifests_scope_version"),
)
Index("ix_manifests_scope_current", manifests.c.scope, manifests.c.current)

parts = Table(
    "parts", metadata,
    Column("sha256", HEX64, primary_key=True),
    Column("length", BigInteger, nullable=False),
    Column("bytes", LargeBinary, nullable=False),
)

heartbeats = Table(
    "heartbeats", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("device_id", ID, nullable=False),
    Column("received_ms", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
)
Index("ix_heartbeats_device_received", heartbeats.c.device_id, heartbeats.c.received_ms)
Index("ix_heartbeats_received", heartbeats.c.received_ms)

alerts = Table(
    "alerts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),  # info | warning | high | critical
    Column("device_id", ID),
    Column("site_id", ID),
    Column("seq", BigInteger),
    Column("event_hash", HEX64),
    Column("provisional", Boolean, nullable=False, server_default=text("false")),
    Column("summary", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="open"),  # open | acked | resolved
    Column("acked_by", String(64)),
    Column("acked_ms", BigInteger),
    Column("resolved_ms", BigInteger),
)
# One alert per (device, seq, kind) where seq is set (§5.5); NULL seqs never collide on either dialect.
Index("uq_alerts_device_seq_kind", alerts.c.device_id, alerts.c.seq, alerts.c.kind, unique=True)
Index("ix_alerts_status_created", alerts.c.status, alerts.c.created_ms)
Index("ix_alerts_device_created", alerts.c.device_id, alerts.c.created_ms)
Index("ix_alerts_created", alerts.c.created_ms)

webhooks = Table(
    "webhooks", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),
    Column("kinds", Text, nullable=False),  # JSON array of alert kinds; [] = every kind
    Column("min_severity", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_by", String(64)),
    Column("created_ms", BigInteger, nullable=False),
)

alert_deliveries = Table(
    "alert_deliveries", metadata,
    Column("alert_id", BigInteger, ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True,
           autoincrement=False),
    Column("webhook_id", BigInteger, ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True,
           autoincrement=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_ms", BigInteger, nullable=False),
    Column("next_attempt_ms", BigInteger, nullable=False),
    Column("last_status", Integer),
    Column("last_error", String(500)),
    Column("delivered_ms", BigInteger),
)
Index("ix_deliveries_status_next", alert_deliveries.c.status, alert_deliveries.c.next_attempt_ms)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),  # admin | auditor
    Column("token_hash", HEX64, nullable=False, unique=True),
    Column("prefix", String(8), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger),
    Column("revoked_ms", BigInteger),
    Column("last_used_ms", BigInteger),
)

request_nonces = Table(
    "request_nonces", metadata,
    Column("device_id", ID, primary_key=True),
    Column("nonce", String(32), primary_key=True),
    Column("expires_ms", BigInteger, nullable=False),
)
Index("ix_request_nonces_expires", request_nonces.c.expires_ms)

pid_keys = Table(
    "pid_keys", metadata,
    Column("pid_kid", Integer, primary_key=True, autoincrement=False),
    Column("key", HEX64, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("token_id", BigInteger),
    Column("route", String(200), nullable=False),
    Column("params", Text, nullable=False),
)
Index("ix_audit_log_at", audit_log.c.at_ms)

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)
