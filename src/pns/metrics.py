"""Prometheus metrics, served at ``GET /metrics``.

Labelled children are looked up once and cached, so the hot path pays one dict lookup and two
increments per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pns_requests", "API requests by action and code",
                                ["action", "code"], registry=self.registry)
        self.latency = Histogram("pns_request_seconds", "API request latency by action",
                                 ["action"], buckets=_LATENCY_BUCKETS, registry=self.registry)
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
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, action: str, code: int, seconds: float) -> None:
        key = (action, code)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 1000:  # unknown actions must not grow this without end
                action = "other"
            children = (self.requests.labels(action, str(code)), self.latency.labels(action))
            self._children[(action, code)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
