"""Prometheus metrics, served at ``GET /metrics``.

One process (``pns serve``): request counts live in plain Python on the hot path (one dict
lookup and two increments per request) and become Prometheus families only when scraped, next
to the standard ``process_*`` metrics.

Several processes (``pns serve --workers N``): every worker writes to prometheus-client's
multiprocess files in ``PROMETHEUS_MULTIPROC_DIR`` (a directory the parent makes per run and
empties on start), and a scrape answered by any worker adds them all up: counters and
histograms sum, pool and outbox gauges take the most recent value any live worker computed,
and the ``process_*`` metrics sum over the live workers (memory, CPU, descriptors).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Gauges every worker computes from the same store: the latest computation wins.
_SHARED: Final = "livemostrecent"


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty the directory of a previous run's files (their counts would add to this run's)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_enabled()
        self.registry = CollectorRegistry()
        self.allocation_failures = Counter(
            "pns_allocation_failures", "Binds refused for want of a number, by reason",
            ["reason"], registry=self.registry)
        self.swept = Counter("pns_bindings_swept", "Expired bindings reclaimed by the sweeper",
                             registry=self.registry)
        self.pool_numbers = self._pool_gauge("pns_pool_numbers", "Enabled virtual numbers")
        self.pool_active = self._pool_gauge("pns_pool_active_bindings",
                                            "Active bindings in the pool")
        self.pool_headroom = self._pool_gauge(
            "pns_pool_headroom_busiest_party",
            "More bindings the busiest party can get before 10010 (0: exhausted for it)")
        self.pool_fullest = self._pool_gauge("pns_pool_fullest_x_bindings",
                                             "Active bindings on the fullest X")
        self.pool_free = self._pool_gauge(
            "pns_pool_free_numbers", "Numbers with no active binding (room for any new pair)")
        self.delivery_backlog = Gauge("pns_delivery_backlog", "Callbacks not yet delivered",
                                      registry=self.registry, multiprocess_mode=_SHARED)
        self.delivery_oldest_age = Gauge("pns_delivery_oldest_age_seconds",
                                         "Age of the oldest undelivered callback",
                                         registry=self.registry, multiprocess_mode=_SHARED)
        # Per (action, code): [count, sum of seconds, per-bucket counts]; plain Python on the
        # hot path, turned into Prometheus families only when scraped.
        self._stats: dict[tuple[str, int], list[Any]] = {}
        if self.multiprocess:
            self._requests = Counter("pns_requests", "API requests by action and code",
                                     ["action", "code"], registry=self.registry)
            self._latency = Histogram("pns_request_seconds", "API request latency by action",
                                      ["action"], buckets=_LATENCY_BUCKETS,
                                      registry=self.registry)
            self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
            self._process = _ProcessGauges(self.registry)
        else:
            self.registry.register(_RequestCollector(self._stats))
            ProcessCollector(registry=self.registry)

    def observe(self, action: str, code: int, seconds: float) -> None:
        if self.multiprocess:
            self._observe_shared(action, code, seconds)
        s = self._stats.get((action, code))
        if s is None:
            if len(self._stats) > 1000:  # unknown actions must not grow this without end
                action = "other"
            s = self._stats.setdefault((action, code), [0, 0.0, [0] * (len(_LATENCY_BUCKETS) + 1)])
        s[0] += 1
        s[1] += seconds
        s[2][bisect_left(_LATENCY_BUCKETS, seconds)] += 1

    def _pool_gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, ["account", "country"], registry=self.registry,
                     multiprocess_mode=_SHARED)

    def _observe_shared(self, action: str, code: int, seconds: float) -> None:
        children = self._children.get((action, code))
        if children is None:
            if len(self._children) > 1000:  # unknown actions must not grow this without end
                action = "other"
            children = self._children.setdefault(
                (action, code),
                (self._requests.labels(action, str(code)), self._latency.labels(action)))
        children[0].inc()
        children[1].observe(seconds)

    def refresh_process(self) -> None:
        """Write this worker's process metrics to its multiprocess files (a no-op for one
        process, where they are read at scrape time)."""
        if self.multiprocess:
            self._process.update()
    def totals(self) -> tuple[int, int]:
        """(API requests, those answered with a code other than 0) since the process began:
        the console samples these into per-minute rates, off the hot path."""
        requests = errors = 0
        for (_, code), stats in list(self._stats.items()):
            requests += stats[0]
            if code != 0:
                errors += stats[0]
        return requests, errors

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        self._process.update()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


_PROCESS_MODES: dict[str, Literal["livesum", "livemax", "livemin"]] = {
    "process_virtual_memory_bytes": "livesum", "process_resident_memory_bytes": "livesum",
    "process_open_fds": "livesum", "process_max_fds": "livemax",
    "process_start_time_seconds": "livemin", "process_cpu_seconds_total": "livesum",
}


class _ProcessGauges:
    """The standard ``process_*`` metrics, written per worker and summed over live workers
    (the start time is the oldest live worker's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._gauges = {
            name: Gauge(name, f"{name.replace('_', ' ')}, over all live pns workers",
                        registry=registry, multiprocess_mode=mode)
            for name, mode in _PROCESS_MODES.items()
        }

    def update(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                gauge = self._gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)


class _RequestCollector:
    def __init__(self, stats: dict[tuple[str, int], list[Any]]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("pns_requests", "API requests by action and code",
                                       labels=["action", "code"])
        latency = HistogramMetricFamily("pns_request_seconds", "API request latency by action",
                                        labels=["action"])
        per_action: dict[str, list[Any]] = {}
        for (action, code), (count, total, buckets) in list(self._stats.items()):
            requests.add_metric([action, str(code)], count)
            agg = per_action.setdefault(action, [0.0, [0] * len(buckets)])
            agg[0] += total
            agg[1] = [a + b for a, b in zip(agg[1], buckets, strict=True)]
        for action, (total, buckets) in per_action.items():
            cumulative, running = [], 0
            for bound, n in zip([*map(str, _LATENCY_BUCKETS), "+Inf"], buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric([action], cumulative, total)
        yield requests
        yield latency


async def keep_process_metrics(metrics: Metrics, interval: float = 5.0) -> None:
    """Workers that answer no scrape still report their memory and CPU."""
    while True:
        metrics.refresh_process()
        await asyncio.sleep(interval)
