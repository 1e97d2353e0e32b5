"""Prometheus metrics, served at ``GET /metrics``.

Labelled children are looked up once and cached, so the hot path pays one dict lookup and two
increments per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.allocation_failures = Counter(
            "pns_allocation_failures", "Binds refused for want of a number, by reason",
            ["reason"], registry=self.registry)
        self.swept = Counter("pns_bindings_swept", "Expired bindings reclaimed by the sweeper",
                             registry=self.registry)
        self.pool_numbers = Gauge("pns_pool_numbers", "Enabled virtual numbers",
                                  ["account", "country"], registry=self.registry)
        self.pool_active = Gauge("pns_pool_active_bindings", "Active bindings in the pool",
                                 ["account", "country"], registry=self.registry)
        self.pool_headroom = Gauge(
            "pns_pool_headroom_busiest_party",
            "More bindings the busiest party can get before 10010 (0: exhausted for it)",
            ["account", "country"], registry=self.registry)
        self.pool_fullest = Gauge("pns_pool_fullest_x_bindings",
                                  "Active bindings on the fullest X", ["account", "country"],
                                  registry=self.registry)
        self.pool_free = Gauge("pns_pool_free_numbers",
                               "Numbers with no active binding (room for any new pair)",
                               ["account", "country"], registry=self.registry)
        self.delivery_backlog = Gauge("pns_delivery_backlog", "Callbacks not yet delivered",
                                      registry=self.registry)
        self.delivery_oldest_age = Gauge("pns_delivery_oldest_age_seconds",
                                         "Age of the oldest undelivered callback",
                                         registry=self.registry)
        # Per (action, code): [count, sum of seconds, per-bucket counts]; plain Python on the
        # hot path, turned into Prometheus families only when scraped.
        self._stats: dict[tuple[str, int], list[Any]] = {}
        self.registry.register(_RequestCollector(self._stats))

    def observe(self, action: str, code: int, seconds: float) -> None:
        s = self._stats.get((action, code))
        if s is None:
            if len(self._stats) > 1000:  # unknown actions must not grow this without end
                action = "other"
            s = self._stats.setdefault((action, code), [0, 0.0, [0] * (len(_LATENCY_BUCKETS) + 1)])
        s[0] += 1
        s[1] += seconds
        s[2][bisect_left(_LATENCY_BUCKETS, seconds)] += 1

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
        return generate_latest(self.registry)


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
