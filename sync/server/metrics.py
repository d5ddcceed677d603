"""Prometheus metrics of sync.md §5.7.

Counters and the histogram live in a registry per server process (one per app,
so tests can build many apps). Gauges that come from the database are produced
by a collector at scrape time and cached for 15 s, so a scrape every few
seconds costs one set of queries per 15 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["Metrics"]

GAUGE_CACHE_S = 15.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingest_events = Counter("checkpoint_ingest_events", "Events received in upload batches.",
                                     ["result"], registry=r)
        self.ingest_batches = Counter("checkpoint_ingest_batches", "Upload batches by answer code.",
                                      ["code"], registry=r)
        self.ingest_seconds = Histogram("checkpoint_ingest_batch_seconds", "Time to process one upload batch.",
                                        registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.ingest_holes = Counter("checkpoint_ingest_holes", "Declared holes stored.", ["cause"], registry=r)
        self.device_requests = Counter("checkpoint_device_requests", "Signed device requests.",
                                       ["route", "code"], registry=r)
        self.alerts = Counter("checkpoint_alerts", "Alerts raised.", ["kind", "severity"], registry=r)
        self.webhook_deliveries = Counter("checkpoint_webhook_deliveries", "Webhook delivery attempts.",
                                          ["result"], registry=r)
        self.retention_deleted = Counter("checkpoint_retention_deleted", "Rows deleted by retention.",
                                         ["table"], registry=r)
        self._gauges: _GaugeCollector | None = None

    def attach_gauges(self, read: Callable[[], list[Metric]]) -> None:
        """Register the database gauges (the server's ``fleet_gauges`` reader)."""
        if self._gauges is None:
            self._gauges = _GaugeCollector(read)
            self.registry.register(self._gauges)


class _GaugeCollector:
    def __init__(self, read: Callable[[], list[Metric]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._stamp = -1e9

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._stamp > GAUGE_CACHE_S:
                self._cached = self._read()
                self._stamp = time.monotonic()
            return list(self._cached)


def gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in samples:
        g.add_metric(values, v)
    return g
