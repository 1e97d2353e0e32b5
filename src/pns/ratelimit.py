"""Per-process limits on failed authentication, so a flood of bad signatures costs little.

Counted per accessKey and per client address in fixed windows. Each API process counts on its
own (they share no state), so with N processes an attacker gets at most N times the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FailureLimiter:
    def __init__(self, max_failures: int = 20, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._max = max_failures
        self._window = window
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, tuple[float, int]] = {}

    def blocked(self, key: str) -> bool:
        entry = self._counts.get(key)
        if entry is None:
            return False
        started, count = entry
        if self._clock() - started >= self._window:
            del self._counts[key]
            return False
        return count >= self._max

    def fail(self, key: str) -> None:
        now = self._clock()
        started, count = self._counts.get(key, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        if len(self._counts) >= self._max_keys and key not in self._counts:
            self._forget_expired(now)
        self._counts[key] = (started, count + 1)

    def _forget_expired(self, now: float) -> None:
        stale = [k for k, (started, _) in self._counts.items() if now - started >= self._window]
        for key in stale:
            del self._counts[key]
        if len(self._counts) >= self._max_keys:
            self._counts.clear()
