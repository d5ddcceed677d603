"""Thermometer options: the ``[thermometer]`` keys of hardware.md §1.13, checked.

``open_thermometer(port, protocol, **options)`` takes these keys as keyword
arguments: the flat keys plus nested ``gy``, ``modbus`` and ``ascii`` mappings, which
is exactly what ``ThermometerConfig.model_dump()`` of the gate's config produces
(``port``/``protocol`` may come in the mapping too). Besides them:

* ``clock``: a callable returning an aware UTC ``datetime``, to stamp readings
  (the gate passes its trusted clock; default: UTC now);
* ``sim``: keyword arguments for the in-process simulator when ``port = "sim"``;
* ``buffer_s``: seconds of raw readings kept for ``measure()`` (60, §1.7).

Unknown keys and out-of-range values raise ``ProtocolConfigError`` with the key's
name: the gate's config model already refuses them, so this matters for other
callers (the CLI, tests, tools). ``firmware_bridge`` cannot import that model
(it imports nothing of ours), hence this small duplicate of its bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from firmware_bridge.errors import ProtocolConfigError
from firmware_bridge.estimate import EstimateSettings, MeasureSettings
from firmware_bridge.protocols import PROTOCOLS
from firmware_bridge.protocols.ascii_lines import AsciiLineParser
from firmware_bridge.protocols.modbus_rtu import ModbusMap

__all__ = ["AsciiOptions", "GyOptions", "ModbusOptions", "ThermometerOptions", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "model_dump"):  # a pydantic section passed as is
        value = value.model_dump()
    if not isinstance(value, Mapping):
        raise ProtocolConfigError(f"[thermometer] {key}: expected a table of options, got {type(value).__name__}")
    return dict(value)


def _number(section: str, key: str, value: Any, *, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolConfigError(f"{section} {key}: expected a number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        bound = f"above {lo}" if lo_open else f"at least {lo}"
        raise ProtocolConfigError(f"{section} {key}: {value!r} out of range ({bound}, at most {hi})")
    return float(value)


def _integer(section: str, key: str, value: Any, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolConfigError(f"{section} {key}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolConfigError(f"{section} {key}: {value} out of range ({lo}-{hi})")
    return value


def _choice(section: str, key: str, value: Any, choices: tuple[Any, ...]) -> Any:
    if value not in choices:
        raise ProtocolConfigError(f"{section} {key}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _unknown(section: str, given: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise ProtocolConfigError(f"{section}: unknown option {extra[0]!r}")


@dataclass(frozen=True, slots=True)
class GyOptions:
    mode: str = "continuous"  # continuous | query
    poll_s: float = 0.1  # query mode
    init_retry_s: float = 1.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> GyOptions:
        s = "[thermometer.gy]"
        _unknown(s, raw, {"mode", "poll_s", "init_retry_s"})
        d = cls()
        return cls(
            mode=_choice(s, "mode", raw.get("mode", d.mode), ("continuous", "query")),
            poll_s=_number(s, "poll_s", raw.get("poll_s", d.poll_s), lo=0, hi=10, lo_open=True),
            init_retry_s=_number(s, "init_retry_s", raw.get("init_retry_s", d.init_retry_s), lo=0, hi=60,
                                 lo_open=True),
        )


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    map: ModbusMap = field(default_factory=ModbusMap)
    poll_s: float = 0.2
    response_timeout_s: float = 0.5

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ModbusOptions:
        s = "[thermometer.modbus]"
        map_keys = {"address", "function", "object_register", "ambient_register", "format", "scale", "word_order"}
        _unknown(s, raw, map_keys | {"poll_s", "response_timeout_s"})
        m = ModbusMap()
        if raw.get("format") == "float32" and "ambient_register" not in raw:
            ambient = None  # register 1 would overlap a float32 object value: omitted means none
        else:
            ambient = raw.get("ambient_register", m.ambient_register)
        if isinstance(ambient, str) and ambient.strip().lower() == "none":
            ambient = None  # TOML has no null
        mmap = ModbusMap(
            address=_integer(s, "address", raw.get("address", m.address), lo=1, hi=247),
            function=_choice(s, "function", raw.get("function", m.function), (3, 4)),
            object_register=_integer(s, "object_register", raw.get("object_register", m.object_register),
                                     lo=0, hi=65535),
            ambient_register=None if ambient is None else _integer(s, "ambient_register", ambient, lo=0,
                                                                   hi=65535),
            format=_choice(s, "format", raw.get("format", m.format), ("int16", "uint16", "float32")),
            scale=_number(s, "scale", raw.get("scale", m.scale), lo=0, hi=1e6, lo_open=True),
            word_order=_choice(s, "word_order", raw.get("word_order", m.word_order), ("big", "little")),
        )
        d = cls()
        return cls(
            map=mmap,
            poll_s=_number(s, "poll_s", raw.get("poll_s", d.poll_s), lo=0, hi=10, lo_open=True),
            response_timeout_s=_number(s, "response_timeout_s", raw.get("response_timeout_s",
                                                                        d.response_timeout_s),
                                       lo=0, hi=10, lo_open=True),
        )


@dataclass(frozen=True, slots=True)
class AsciiOptions:
    unit: str = "C"
    request: str = ""
    poll_s: float = 0.5
    object_pattern: str | None = None
    ambient_pattern: str | None = None
    bare_pattern: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> AsciiOptions:
        s = "[thermometer.ascii]"
        _unknown(s, raw, {"unit", "request", "poll_s", "object_pattern", "ambient_pattern", "bare_pattern"})
        d = cls()
        request = raw.get("request", d.request) or ""
        if not isinstance(request, str) or len(request.encode("utf-8")) > 64:
            raise ProtocolConfigError(f"{s} request: expected a short string, got {request!r}")
        opts = cls(
            unit=_choice(s, "unit", raw.get("unit", d.unit), ("C", "F")),
            request=request,
            poll_s=_number(s, "poll_s", raw.get("poll_s", d.poll_s), lo=0, hi=10, lo_open=True),
            object_pattern=raw.get("object_pattern"),
            ambient_pattern=raw.get("ambient_pattern"),
            bare_pattern=raw.get("bare_pattern"),
        )
        opts.parser()  # compile the patterns now: a bad one fails at open, not at the first line
        return opts

    def parser(self) -> AsciiLineParser:
        return AsciiLineParser(unit=self.unit, object_pattern=self.object_pattern,
                               ambient_pattern=self.ambient_pattern, bare_pattern=self.bare_pattern)


_FLAT = {
    "enabled", "protocol", "port", "baudrate", "settle_s", "retry_s", "stale_after_s", "reopen_after_s",
    "fault_alert_after_s", "site", "offset_c", "ambient_k", "ambient_default_c", "presence_min_c",
    "presence_max_c", "episode_gap_s", "min_samples", "smooth_n", "max_spread_c", "body_min_c", "wait_s",
    "gy", "modbus", "ascii", "clock", "sim", "buffer_s",
}


@dataclass(frozen=True)
class ThermometerOptions:
    protocol: str
    port: str
    enabled: bool = True
    baudrate: int = 9600
    settle_s: float = 0.0
    retry_s: float = 0.25
    stale_after_s: float = 3.0
    reopen_after_s: float = 10.0
    fault_alert_after_s: float = 30.0
    site: str = "forehead"
    estimate: EstimateSettings = field(default_factory=EstimateSettings)
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    wait_s: float = 3.0
    gy: GyOptions = field(default_factory=GyOptions)
    modbus: ModbusOptions = field(default_factory=ModbusOptions)
    ascii: AsciiOptions = field(default_factory=AsciiOptions)
    clock: Callable[[], datetime] = utc_now
    sim: Mapping[str, Any] = field(default_factory=dict)
    buffer_s: float = 60.0

    @classmethod
    def parse(cls, port: str | None, protocol: str | None, options: Mapping[str, Any]) -> ThermometerOptions:
        """Check every option; raise ``ProtocolConfigError`` naming the first bad one."""
        s = "[thermometer]"
        _unknown(s, options, _FLAT)
        protocol = _pick(s, "protocol", protocol, options.get("protocol"))
        port = _pick(s, "port", port, options.get("port"))
        _choice(s, "protocol", protocol, PROTOCOLS)
        if not isinstance(port, str) or not port or "\x00" in port or len(port) > 4096:
            raise ProtocolConfigError(f"{s} port: expected a device path or \"sim\", got {port!r}")
        def get(key: str, default: Any = None) -> Any:
            value = options.get(key)
            return default if value is None else value  # None (as model_dump gives) = the default

        site = _choice(s, "site", get("site", "forehead"), ("forehead", "wrist"))
        if site == "wrist" and (get("offset_c") is None or get("ambient_k") is None):
            # §1.9: no defensible default for the wrist.
            raise ProtocolConfigError(f'{s} site = "wrist" needs offset_c and ambient_k set explicitly')
        settle = get("settle_s")
        if settle is None:
            settle = 2.0 if protocol == "ascii" else 0.0  # §1.6: Arduino boards reset on open
        clock = get("clock") or utc_now
        if not callable(clock):
            raise ProtocolConfigError(f"{s} clock: expected a callable returning an aware datetime")
        stamp = clock()
        if not isinstance(stamp, datetime) or stamp.utcoffset() is None:
            raise ProtocolConfigError(f"{s} clock: must return an aware datetime, got {stamp!r}")
        enabled = get("enabled", True)
        if not isinstance(enabled, bool):
            raise ProtocolConfigError(f"{s} enabled: expected true or false, got {enabled!r}")
        return cls(
            protocol=protocol,
            port=port,
            enabled=enabled,
            baudrate=_integer(s, "baudrate", get("baudrate", 9600), lo=300, hi=4_000_000),
            settle_s=_number(s, "settle_s", settle, lo=0, hi=30),
            retry_s=_number(s, "retry_s", get("retry_s", 0.25), lo=0, hi=60, lo_open=True),
            stale_after_s=_number(s, "stale_after_s", get("stale_after_s", 3.0), lo=0, hi=60, lo_open=True),
            reopen_after_s=_number(s, "reopen_after_s", get("reopen_after_s", 10.0), lo=0, hi=600,
                                   lo_open=True),
            fault_alert_after_s=_number(s, "fault_alert_after_s", get("fault_alert_after_s", 30.0), lo=0,
                                        hi=3600, lo_open=True),
            site=site,
            estimate=EstimateSettings(
                offset_c=_number(s, "offset_c", get("offset_c", 0.90), lo=-10, hi=10),
                ambient_k=_number(s, "ambient_k", get("ambient_k", 0.13), lo=0, hi=1),
                ambient_default_c=_number(s, "ambient_default_c", get("ambient_default_c", 25.0), lo=-40, hi=60),
            ),
            measure=MeasureSettings(
                presence_min_c=_number(s, "presence_min_c", get("presence_min_c", 30.0), lo=-40, hi=100),
                presence_max_c=_number(s, "presence_max_c", get("presence_max_c", 43.0), lo=-40, hi=100),
                episode_gap_s=_number(s, "episode_gap_s", get("episode_gap_s", 1.0), lo=0, hi=10, lo_open=True),
                min_samples=_integer(s, "min_samples", get("min_samples", 3), lo=1, hi=100),
                smooth_n=_integer(s, "smooth_n", get("smooth_n", 5), lo=1, hi=100),
                max_spread_c=_number(s, "max_spread_c", get("max_spread_c", 0.5), lo=0, hi=10),
                body_min_c=_number(s, "body_min_c", get("body_min_c", 34.0), lo=20, hi=45),
            ),
            wait_s=_number(s, "wait_s", get("wait_s", 3.0), lo=0, hi=60),
            gy=GyOptions.parse(_as_mapping(get("gy"), "gy")),
            modbus=ModbusOptions.parse(_as_mapping(get("modbus"), "modbus")),
            ascii=AsciiOptions.parse(_as_mapping(get("ascii"), "ascii")),
            clock=clock,
            sim=_as_mapping(get("sim"), "sim"),
            buffer_s=_number(s, "buffer_s", get("buffer_s", 60.0), lo=10, hi=3600),
        )


def _pick(section: str, key: str, positional: str | None, keyword: Any) -> Any:
    if positional is not None and keyword is not None and positional != keyword:
        raise ProtocolConfigError(f"{section} {key}: given twice ({positional!r} and {keyword!r})")
    value = positional if positional is not None else keyword
    if value is None:
        raise ProtocolConfigError(f"{section} {key}: missing")
    return value
