"""The gate's configuration (``gate.toml``), read by the gate process and the sync agent.

Every key has a default that works on a fresh machine: SQLite under
``var/gate``, the image-folder camera over ``config/demo``, the pty thermometer
simulator, gpiozero's mock pins where no Pi is found, the console on loopback.
Relative paths are taken from the current directory (systemd units and the
installer use absolute ones). Sections and keys follow the specs that own them:
``sync.md`` App. A ([store], [sync]), ``hardware.md`` §1.13, §2.9, §3.8
([thermometer], [camera], [decode], [gpio]), ``console.md`` §4 ([console]).

``checkpoint`` reads the file named by ``--config`` or ``$CHECKPOINT_CONFIG``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from edge.errors import DataDirError
from sync.configfile import ConfigModel, load_model, resolve_config_path
from sync.events import valid_device_id

__all__ = [
    "AsciiConfig",
    "CameraConfig",
    "ConsoleConfig",
    "CredentialsConfig",
    "DecodeConfig",
    "GateConfig",
    "GateSection",
    "GpioConfig",
    "GyConfig",
    "LogConfig",
    "ModbusConfig",
    "StoreConfig",
    "SyncConfig",
    "ThermometerConfig",
    "ensure_data_dir",
    "load_gate_config",
]


class GateSection(ConfigModel):
    device_id: str = Field(
        "gate-local-01",
        description="This gate's id (sync.md §0); the enrolment identity overrides it once enrolled.",
    )
    data_dir: Path = Field(Path("var/gate"), description="Directory holding all of the gate's state.")
    site_id: str | None = Field(
        None,
        description="Site of a gate that is not enrolled (air-gapped, 'gate import'); enrolment's site_id "
        "overrides it. None: only fleet-wide bundles apply (bundles.md §1.4).",
    )
    lane: Literal["person", "green_lane"] = Field("person", description="Person lane or truck green lane.")
    tz: str = Field("Asia/Shanghai", description="IANA time zone of the site (shift windows, local minute).")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not valid_device_id(v):
            raise ValueError("must match ^[a-z0-9][a-z0-9-]{2,62}$")
        return v

    @field_validator("site_id")
    @classmethod
    def _site_id(cls, v: str | None) -> str | None:
        if v is not None and not valid_device_id(v):
            raise ValueError("must match ^[a-z0-9][a-z0-9-]{2,62}$")
        return v

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v


class StoreConfig(ConfigModel):
    data_dir: Path | None = Field(None, description="Defaults to [gate] data_dir.")
    max_db_mb: int = Field(1024, ge=2, le=1_048_576, description="Storage budget of events.db (sync.md §1.8).")
    reserve_mb: int = Field(20, ge=0, le=4096, description="reserve.bin, deleted to get room on a full disk.")
    retain_acked_days: float = Field(7, ge=0, le=3650, description="Keep acknowledged events this long.")
    on_full: Literal["drop_oldest", "refer_all"] = Field("drop_oldest", description="Full-disk policy (§1.8).")
    commit_max_events: int = Field(256, ge=1, le=10_000, description="Most events per group commit.")


class SyncConfig(ConfigModel):
    server_url: str | None = Field(None, description="Upstream server; None until enrolled.")
    ca_file: Path | None = Field(None, description="CA bundle for the server's TLS certificate.")
    identity_dir: Path | None = Field(None, description="Defaults to <data_dir>/identity.")
    allow_plain_http: bool = Field(False, description="Allow http:// to a non-loopback server (tests, demo).")
    batch_max_events: int = Field(500, ge=1, le=500)
    batch_max_json_bytes: int = Field(1_572_864, ge=4096, le=2_097_152)
    backoff_base_s: float = Field(2.0, gt=0, le=60)
    backoff_cap_s: float = Field(600.0, gt=0, le=3600)
    connect_timeout_s: float = Field(10.0, gt=0, le=60)
    request_timeout_s: float = Field(60.0, gt=0, le=300)
    poll_bundle_s: float = Field(30.0, gt=0, le=3600, description="Bundle poll interval (bundles.md §4.3).")
    heartbeat_s: float = Field(60.0, gt=0, le=3600)
    flash_kinds: list[str] = Field(default_factory=lambda: ["temp_alert", "sentinel_alert", "decision"])


class CredentialsConfig(ConfigModel):
    clock_skew_s: int = Field(300, ge=0, le=3600, description="Tolerance for exp/nbf/iat (credentials.md §3.1).")


class GyConfig(ConfigModel):
    mode: Literal["continuous", "query"] = "continuous"
    poll_s: float = Field(0.1, gt=0, le=10)
    init_retry_s: float = Field(1.0, gt=0, le=60)


class ModbusConfig(ConfigModel):
    address: int = Field(1, ge=1, le=247)
    function: Literal[3, 4] = 3
    object_register: int = Field(0, ge=0, le=65535)
    ambient_register: int | None = Field(1, ge=0, le=65535)
    format: Literal["int16", "uint16", "float32"] = "int16"
    scale: float = Field(0.1, gt=0)
    word_order: Literal["big", "little"] = "big"
    poll_s: float = Field(0.2, gt=0, le=10)
    response_timeout_s: float = Field(0.5, gt=0, le=10)

    @field_validator("ambient_register", mode="before")
    @classmethod
    def _none_spelled_out(cls, v: object) -> object:
        # TOML has no null: ambient_register = "none" says the device has no ambient (hardware.md §1.4).
        return None if isinstance(v, str) and v.strip().lower() == "none" else v

    @model_validator(mode="before")
    @classmethod
    def _float32_has_no_default_ambient(cls, data: object) -> object:
        # §1.13 says "omit if the device has none", but omitted means the default 1, which
        # overlaps a float32 object value at 0: for float32, omitted means none.
        if isinstance(data, dict) and data.get("format") == "float32" and "ambient_register" not in data:
            return {**data, "ambient_register": None}
        return data


class AsciiConfig(ConfigModel):
    unit: Literal["C", "F"] = "C"
    request: str = ""
    poll_s: float = Field(0.5, gt=0, le=10)
    object_pattern: str | None = None
    ambient_pattern: str | None = None
    bare_pattern: str | None = None


class ThermometerConfig(ConfigModel):
    enabled: bool = True
    protocol: Literal["gy-mcu90614", "modbus-rtu", "ascii"] = "gy-mcu90614"
    port: str = Field("sim", description='Serial device, or "sim" for the built-in pty simulator.')
    baudrate: int = Field(9600, ge=300, le=4_000_000)
    settle_s: float | None = Field(None, ge=0, le=30, description="Default 2.0 for ascii, 0 otherwise.")
    retry_s: float = Field(0.25, gt=0, le=60)
    stale_after_s: float = Field(3.0, gt=0, le=60)
    reopen_after_s: float = Field(10.0, gt=0, le=600)
    fault_alert_after_s: float = Field(30.0, gt=0, le=3600)
    site: Literal["forehead", "wrist"] = "forehead"
    offset_c: float = Field(0.90, ge=-10, le=10)
    ambient_k: float = Field(0.13, ge=0, le=1)
    ambient_default_c: float = Field(25.0, ge=-40, le=60)
    presence_min_c: float = 30.0
    presence_max_c: float = 43.0
    episode_gap_s: float = Field(1.0, gt=0, le=10)
    min_samples: int = Field(3, ge=1, le=100)
    smooth_n: int = Field(5, ge=1, le=100)
    max_spread_c: float = Field(0.5, ge=0, le=10)
    body_min_c: float = Field(34.0, ge=20, le=45)
    wait_s: float = Field(3.0, ge=0, le=60)
    gy: GyConfig = Field(default_factory=GyConfig)
    modbus: ModbusConfig = Field(default_factory=ModbusConfig)
    ascii: AsciiConfig = Field(default_factory=AsciiConfig)

    @model_validator(mode="after")
    def _wrist_needs_site_values(self) -> ThermometerConfig:
        if self.site == "wrist" and not {"offset_c", "ambient_k"} <= self.model_fields_set:
            raise ValueError('site = "wrist" needs offset_c and ambient_k set explicitly (hardware.md §1.9)')
        if self.presence_min_c >= self.presence_max_c:
            raise ValueError("presence_min_c must be below presence_max_c")
        return self

    @model_validator(mode="after")
    def _usable_by_the_reader(self) -> ThermometerConfig:
        # The reader's own checks (regex patterns with a group v, float32 registers that
        # overlap, min_samples > smooth_n...), so that such a file fails at load (exit 78)
        # rather than when the gate opens the thermometer.
        from firmware_bridge.errors import ProtocolConfigError
        from firmware_bridge.options import ThermometerOptions

        try:
            ThermometerOptions.parse(None, None, self.model_dump())
        except ProtocolConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def effective_settle_s(self) -> float:
        if self.settle_s is not None:
            return self.settle_s
        return 2.0 if self.protocol == "ascii" else 0.0


class CameraConfig(ConfigModel):
    source: Literal["device", "stream", "file", "folder"] = "folder"
    device: int | str = 0
    url: str = ""
    path: Path = Path("config/demo")
    width: int = Field(1280, ge=16, le=7680)
    height: int = Field(720, ge=16, le=4320)
    fps: float = Field(30, gt=0, le=240)
    fourcc: str = Field("MJPG", min_length=4, max_length=4)
    realtime: bool = True
    loop: bool = True
    image_hold_s: float = Field(1.5, gt=0, le=60)
    roi: list[int] = Field(default_factory=list, description="[x, y, w, h]; empty = whole frame.")
    no_frames_after_s: float = Field(2.0, gt=0, le=60)

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: list[int]) -> list[int]:
        if v and (len(v) != 4 or v[2] <= 0 or v[3] <= 0 or v[0] < 0 or v[1] < 0):
            raise ValueError("roi is [x, y, w, h] with w, h > 0, or empty")
        return v


class DecodeConfig(ConfigModel):
    formats: list[str] = Field(default_factory=lambda: ["QRCode"])
    pyzbar: bool = True
    deep_interval_s: float = Field(1.0, ge=0, le=60, description="0 disables the deep pass.")
    hold_s: float = Field(3.0, ge=0, le=600, description="De-duplication window of a code held in view.")


class GpioConfig(ConfigModel):
    pin_factory: Literal["auto", "lgpio", "rpigpio", "native", "mock"] = "auto"
    relay: int = Field(17, ge=0, le=53)
    relay_active_high: bool = True
    lock_mode: Literal["fail_secure", "fail_safe"] = "fail_secure"
    pulse_s: float = Field(3.0, ge=0.1, le=30)
    red: int = Field(22, ge=0, le=53)
    amber: int = Field(23, ge=0, le=53)
    green: int = Field(24, ge=0, le=53)
    buzzer: int = Field(25, ge=0, le=53)
    buzzer_kind: Literal["active", "tonal"] = "active"
    button: int | None = Field(27, ge=0, le=53)
    button_action: Literal["override", "disabled"] = "override"
    beam: int | None = Field(None, ge=0, le=53)
    beam_active_low: bool = True
    close_on_passage: bool = True
    passage_window_s: float = Field(8.0, gt=0, le=120)
    show_s: float = Field(2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _distinct_pins(self) -> GpioConfig:
        pins = {"relay": self.relay, "red": self.red, "amber": self.amber, "green": self.green, "buzzer": self.buzzer}
        if self.button is not None:
            pins["button"] = self.button
        if self.beam is not None:
            pins["beam"] = self.beam
        seen: dict[int, str] = {}
        for part, pin in pins.items():
            if pin in seen:
                raise ValueError(f"GPIO{pin} is given to both {seen[pin]} and {part}")
            seen[pin] = part
        return self


class ConsoleConfig(ConfigModel):
    enabled: bool = True
    listen: str = "127.0.0.1:8081"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    allow_plain_http: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("listen is HOST:PORT")
        return v


class LogConfig(ConfigModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "logfmt"] = "json"


class GateConfig(ConfigModel):
    """All of ``gate.toml``."""

    gate: GateSection = Field(default_factory=GateSection)
    store: StoreConfig = Field(default_factory=StoreConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    thermometer: ThermometerConfig = Field(default_factory=ThermometerConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir or self.gate.data_dir)

    @property
    def identity_dir(self) -> Path:
        return Path(self.sync.identity_dir or self.data_dir / "identity")


def load_gate_config(path: str | os.PathLike[str] | None = None) -> GateConfig:
    """Load ``gate.toml`` from ``path``, else ``$CHECKPOINT_CONFIG``, else built-in defaults.

    Raises:
        sync.errors.ConfigError: one line naming the file and the key.
    """
    return load_model(GateConfig, resolve_config_path(path))


def ensure_data_dir(path: Path, *, create: bool = False) -> Path:
    """Check (or create) the data directory; all state lives here.

    A gate must not silently start a fresh store somewhere else because of a typo:
    a new chain under the same device id would conflict with the server's. So
    only ``gate init`` and the demo create it.

    Raises:
        DataDirError: missing (and not ``create``), not a directory, or not writable.
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise DataDirError(
                f"data directory {path} does not exist (run 'checkpoint gate init' or fix data_dir)"
            )
        try:
            path.mkdir(parents=True, mode=0o2770, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create data directory {path}: {exc.strerror}") from exc
    if not path.is_dir():
        raise DataDirError(f"data directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data directory {path} is not writable by this user")
    return path
