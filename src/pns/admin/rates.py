"""Request and error rates over the last hour, per minute, for the console's chart.

A ring of 60 per-minute buckets fed by sampling the process's running totals (``Metrics``)
every few seconds, so the API's hot path pays nothing. Counts are this process's own: with
``--workers N`` each worker's console shows its share.
"""

from __future__ import annotations

from collections.abc import Callable

MINUTES = 60


class RateHistory:
    def __init__(self, totals: Callable[[], tuple[int, int]], minutes: int = MINUTES):
        self._totals = totals
        self._minutes = minutes
        # minute (epoch // 60) -> [requests, errors]
        self._buckets: dict[int, list[int]] = {}
        self._last: tuple[int, int] | None = None

    def sample(self, now: float) -> None:
        """Add what happened since the last sample to the current minute."""
        requests, errors = self._totals()
        if self._last is not None:
            minute = int(now // 60)
            bucket = self._buckets.setdefault(minute, [0, 0])
            bucket[0] += max(requests - self._last[0], 0)
            bucket[1] += max(errors - self._last[1], 0)
            for old in [m for m in self._buckets if m <= minute - self._minutes]:
                del self._buckets[old]
        self._last = (requests, errors)

    def series(self, now: float) -> list[tuple[int, int, int]]:
        """(minute start in epoch seconds, requests, errors) for each of the last minutes,
        oldest first, the current (partial) minute last."""
        current = int(now // 60)
        return [
            (minute * 60, *self._buckets.get(minute, (0, 0)))
            for minute in range(current - self._minutes + 1, current + 1)
        ]
