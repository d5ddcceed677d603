"""The server's configuration (``server.toml``, sync.md Appendix A).

Every key of Appendix A is here with its default; a few keys the spec leaves
implicit are added and marked so (rate limits of §2.8, the data directory, the
dashboard cookie, logging). Paths that are relative are taken from the data
directory, so one ``data_dir`` line moves the whole server. Unknown keys are
errors (``extra="forbid"``): a typo fails loudly instead of running on a default.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from sync.configfile import ConfigModel, load_model

__all__ = ["RateLimitConfig", "ServerConfig", "load_server_config"]


class RateLimitConfig(ConfigModel):
    """Token buckets of sync.md §2.8, per server process (N processes allow up to N×).

    Not in Appendix A; the defaults are the table of §2.8.
    """

    enabled: bool = Field(True, description="Turn every limit off (benchmarks only).")
    device_per_min: int = Field(900, ge=1, description="Signed device requests per device per minute.")
    device_burst: int = Field(60, ge=1, description="Burst of signed device requests per device.")
    device_events_per_min: int = Field(600, ge=1, description="POST …/events per device per minute.")
    enroll_per_hour: int = Field(30, ge=1, description="POST /v1/enroll per client IP per hour.")
    enroll_failed_per_hour: int = Field(10, ge=1, description="Failed enrolment codes per client IP per hour.")
    failed_auth_per_min: int = Field(20, ge=1, description="401 answers per client IP per minute before a block.")
    failed_auth_block_s: int = Field(600, ge=1, description="How long a client IP stays blocked.")
    auditor_per_min: int = Field(300, ge=1, description="Requests per auditor token per minute.")
    auditor_trace_per_min: int = Field(30, ge=1, description="Trace and export requests per auditor token.")
    admin_per_min: int = Field(600, ge=1, description="Requests per admin token per minute.")


class ServerConfig(ConfigModel):
    data_dir: Path = Field(Path("var/server"), description="Directory for the SQLite file and the key files.")
    database: str | None = Field(
        None, description="SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://… (default: server.db in data_dir)."
    )
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT to listen on (sync.md §2.6).")
    workers: int = Field(1, ge=1, le=64, description="Server processes; SQLite allows exactly one (§5.1).")
    behind_proxy: bool = Field(False, description="A TLS reverse proxy is in front (§2.6).")
    allow_plain_http: bool = Field(False, description="Allow a non-loopback listen without a proxy (tests, demo).")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Peers whose X-Forwarded-For / -Proto are honoured (IPs or CIDRs)."
    )
    server_key_file: Path = Field(Path("server.key"), description="Key file of the server role (bundles.md §1.2).")
    publisher_key_files: list[Path] = Field(
        default_factory=lambda: [Path("publisher.key")],
        description="Publisher key files; [] for the offline flow (bundles.md §2.4).",
    )
    replay_window_s: int = Field(300, ge=1, description="Allowed |X-Checkpoint-Time − server now| (§2.4).")
    nonce_ttl_s: int = Field(600, ge=1, description="How long a request nonce is remembered (§2.4).")
    max_batch_events: int = Field(500, ge=1, description="Events per upload batch (§3.1).")
    max_batch_json_bytes: int = Field(2_097_152, ge=1024, description="Decoded JSON bytes per request (§3.1).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Bytes on the wire per request (§3.1).")
    offline_after_s: int = Field(900, ge=60, description="No heartbeat this long: device_offline (§5.5).")
    events_retention_days: int = Field(30, ge=1)
    heartbeats_retention_days: int = Field(7, ge=1)
    alerts_retention_days: int = Field(180, ge=1)
    holes_retention_days: int = Field(365, ge=1)
    audit_retention_days: int = Field(365, ge=1)
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    webhook_give_up_h: float = Field(24.0, gt=0)
    metrics_allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Peers allowed to read /metrics without a token (§5.7; default loopback).",
    )
    metrics_per_device: bool = Field(True, description="Per-device gauges (turn off above ~2000 gates).")
    allow_async_commit: bool = Field(False, description="Start although PostgreSQL synchronous_commit is off.")
    # Not in Appendix A (implicit in the spec):
    site_tz: str = Field("Asia/Shanghai", description="Time zone of a site created without one (§5.2).")
    cookie_secure: bool = Field(True, description="Dashboard cookie carries Secure (§2.7); off only for plain-HTTP demos.")
    session_hours: int = Field(8, ge=1, le=24, description="Dashboard login lifetime (§2.7).")
    background_jobs: bool = Field(True, description="Run the webhook worker and the hourly jobs in this process.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "logfmt"] = "json"
    rate_limit: RateLimitConfig = Field(default_factory=lambda: RateLimitConfig.model_validate({}))

    @field_validator("trusted_proxies", "metrics_allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return v

    def path(self, p: Path) -> Path:
        """A configured path, relative ones taken from ``data_dir``."""
        return p if p.is_absolute() else self.data_dir / p

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'server.db'}"

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_server_config(path: Path | None) -> ServerConfig:
    """Read ``server.toml`` (or built-in defaults).

    Raises:
        ConfigError: one line naming the file and the key.
    """
    return load_model(ServerConfig, path)
