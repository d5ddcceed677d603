"""From raw readings to one body temperature per person (hardware.md §1.8, §1.9). Pure.

Body estimate (§1.9), in decimal arithmetic on 0.01-rounded inputs::

    skin = object_c + offset_c
    body = skin + ambient_k × (skin − ambient_c)      # ambient_default_c when none
    body_c = body rounded half up to 0.1 °C            # body_centi_c = body_c × 100

Measurement (§1.8), the rules in order:

1. present: ``presence_min_c ≤ object_c ≤ presence_max_c``;
2. an episode is a run of present samples with gaps ≤ ``episode_gap_s``; a
   non-present sample ends it. With ``new_since``, only episodes that *start*
   after it count (§1.10: standing still through the re-measure prompt must not
   yield a second reading, so the samples are not merely cut at ``new_since``);
3. the newest episode, if its last sample is at most ``max_age_s`` before ``at``
   and it was not used by a decision; fewer than ``min_samples`` → too few;
4. scanning back from the newest sample, the first window of up to ``smooth_n``
   samples with ≥ ``min_samples`` and a spread ≤ ``max_spread_c`` gives the value
   (the last moving samples of a person stepping away are skipped);
5. upper median of the window (object, and ambient over samples that have one),
   ``measured_at`` = time of the window's last sample; body below
   ``body_min_c`` → ``implausible_low`` (a hat, hair, a sensor aimed past the face);
6. the caller marks the episode used (its key is returned).
"""

from __future__ import annotations

import statistics
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from firmware_bridge.errors import ProtocolConfigError
from firmware_bridge.records import Measurement

__all__ = [
    "EstimateSettings",
    "MeasureSettings",
    "TimedSample",
    "body_c",
    "body_estimate",
    "body_exact",
    "centi",
    "measure_samples",
]

_TENTH = Decimal("0.1")


def _dec2(value: float) -> Decimal:
    """A temperature as the decimal of its 0.01-rounded value (``34.2`` → ``Decimal('34.20')``)."""
    return Decimal(f"{round(value, 2):.2f}")


def _dec(value: float) -> Decimal:
    """A setting as written (``0.13`` → ``Decimal('0.13')``, not the binary float's expansion)."""
    return Decimal(repr(float(value)))


@dataclass(frozen=True, slots=True)
class EstimateSettings:
    """§1.9 site values; forehead defaults. ``site = "wrist"`` has no defaults (the
    gate's config model refuses it unless both values are set explicitly)."""

    offset_c: float = 0.90
    ambient_k: float = 0.13
    ambient_default_c: float = 25.0

    def __post_init__(self) -> None:
        if not -10 <= self.offset_c <= 10 or not 0 <= self.ambient_k <= 1:
            raise ProtocolConfigError("offset_c must be within ±10 °C and ambient_k within 0-1")


def body_exact(object_c: float, ambient_c: float | None, settings: EstimateSettings) -> Decimal:
    """The unrounded estimate (the vectors' ``exact``)."""
    skin = _dec2(object_c) + _dec(settings.offset_c)
    ambient = _dec2(settings.ambient_default_c if ambient_c is None else ambient_c)
    return skin + _dec(settings.ambient_k) * (skin - ambient)


def body_estimate(object_c: float, ambient_c: float | None, settings: EstimateSettings) -> Decimal:
    """Body temperature rounded half up to 0.1 °C, as a decimal."""
    return body_exact(object_c, ambient_c, settings).quantize(_TENTH, rounding=ROUND_HALF_UP)


def body_c(object_c: float, ambient_c: float | None, settings: EstimateSettings) -> float:
    return float(body_estimate(object_c, ambient_c, settings))


def centi(value: Decimal) -> int:
    """Integer hundredths of a degree (37.3 → 3730), exact."""
    return int((value * 100).to_integral_value(rounding=ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class MeasureSettings:
    presence_min_c: float = 30.0
    presence_max_c: float = 43.0
    episode_gap_s: float = 1.0
    min_samples: int = 3
    smooth_n: int = 5
    max_spread_c: float = 0.5
    body_min_c: float = 34.0

    def __post_init__(self) -> None:
        if self.presence_min_c >= self.presence_max_c:
            raise ProtocolConfigError("presence_min_c must be below presence_max_c")
        if self.min_samples < 1 or self.smooth_n < 1:
            raise ProtocolConfigError("min_samples and smooth_n must be at least 1")
        if self.min_samples > self.smooth_n:
            raise ProtocolConfigError("min_samples cannot exceed smooth_n: no window could ever qualify")


class TimedSample(Protocol):
    @property
    def object_c(self) -> float: ...
    @property
    def ambient_c(self) -> float | None: ...
    @property
    def mono(self) -> float: ...
    @property
    def at(self) -> datetime | None: ...


def _hundredths(value: float) -> int:
    return round(value * 100)


def _episodes(samples: Sequence[TimedSample], s: MeasureSettings) -> list[list[TimedSample]]:
    lo, hi = _hundredths(s.presence_min_c), _hundredths(s.presence_max_c)
    episodes: list[list[TimedSample]] = []
    current: list[TimedSample] | None = None
    for sample in samples:
        if not lo <= _hundredths(sample.object_c) <= hi:
            current = None  # a non-present sample ends the episode
            continue
        if current is not None and sample.mono - current[-1].mono <= s.episode_gap_s:
            current.append(sample)
        else:
            current = [sample]
            episodes.append(current)
    return episodes


def measure_samples(
    samples: Sequence[TimedSample],
    *,
    at: float,
    max_age_s: float,
    settings: MeasureSettings,
    estimate: EstimateSettings,
    new_since: float | None = None,
    used: Container[float] = (),
) -> tuple[Measurement, float | None]:
    """One measurement from samples in time order (§1.8).

    Returns the measurement and, when it is ``measured``, the key of its episode
    (the monotonic time of the episode's first sample) for the caller to mark used.
    """
    episodes = _episodes(samples, settings)
    if new_since is not None:
        episodes = [e for e in episodes if e[0].mono > new_since]
    if not episodes:
        return Measurement("no_measurement", "no_subject"), None
    episode = episodes[-1]
    key = episode[0].mono
    if at - episode[-1].mono > max_age_s or key in used:
        return Measurement("no_measurement", "no_subject"), None
    if len(episode) < settings.min_samples:
        return Measurement("no_measurement", "too_few_samples", samples=len(episode)), None

    max_spread = _hundredths(settings.max_spread_c)
    window: Sequence[TimedSample] | None = None
    objs: list[int] = []
    for j in range(len(episode) - 1, -1, -1):
        candidate = episode[max(0, j - settings.smooth_n + 1) : j + 1]
        if len(candidate) < settings.min_samples:
            break  # windows only shrink from here on
        objs = [_hundredths(x.object_c) for x in candidate]
        if max(objs) - min(objs) <= max_spread:
            window = candidate
            break
    if window is None:
        return Measurement("no_measurement", "unstable", samples=len(episode)), None

    object_c = statistics.median_high(objs) / 100
    ambients = [_hundredths(x.ambient_c) for x in window if x.ambient_c is not None]
    ambient_c = statistics.median_high(ambients) / 100 if ambients else None
    body = body_estimate(object_c, ambient_c, estimate)
    last = window[-1]
    fields = {
        "object_c": object_c,
        "ambient_c": ambient_c,
        "body_c": float(body),
        "measured_at": last.at,
        "samples": len(window),
        "spread_c": (max(objs) - min(objs)) / 100,
        "last_sample_mono": last.mono,
    }
    if body < _dec(settings.body_min_c):
        return Measurement("no_measurement", "implausible_low", **fields), None  # type: ignore[arg-type]
    return Measurement("measured", None, body_centi_c=centi(body), **fields), key  # type: ignore[arg-type]
