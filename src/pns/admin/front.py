"""Where the admin API and the console meet the HTTP server: one handler for both prefixes,
mounted on the API's own listener or on one of its own (``--admin-listen``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from ..core import Service
from ..http import Reply, Request
from ..metrics import Metrics
from .api import PREFIX as API_PREFIX
from .api import AdminApi, error
from .rates import RateHistory
from .security import Gate
from .service import AdminService

PREFIXES = ("/admin/", "/console")
RATE_SAMPLE_SECONDS = 5.0


class AdminOptions(NamedTuple):
    """``listen``: (host, port) of a listener of its own, or None for the API's listener."""

    listen: tuple[str, int] | None = None
    trusted_proxies: frozenset[str] = frozenset()
    secure_cookies: bool = False


DEFAULT_ADMIN = AdminOptions()


class AdminFront:
    def __init__(self, service: Service, metrics: Metrics, options: AdminOptions,
                 clock: Callable[[], float] = time.time):
        from ..console.views import Console

        self.options = options
        self.rates = RateHistory(metrics.totals)
        self.admin = AdminService(service, self.rates, clock)
        self.gate = Gate(service.store, trusted_proxies=options.trusted_proxies,
                         secure_cookies=options.secure_cookies, clock=clock)
        self.api = AdminApi(self.admin, self.gate)
        self.console = Console(self.admin, self.gate)

    async def __call__(self, request: Request) -> Reply:
        if request.path.startswith(API_PREFIX):
            return await self.api(request)
        if request.path == "/console" or request.path.startswith("/console/"):
            return await self.console(request)
        return error(404, "not found")

    async def sample_rates(self) -> None:
        """Feed the per-minute rate history until cancelled."""
        while True:
            self.rates.sample(time.time())
            await asyncio.sleep(RATE_SAMPLE_SECONDS)


def admin_only(front: AdminFront) -> Callable[[Request], Awaitable[Reply]]:
    """The app of a listener of its own: the admin prefixes and nothing else."""

    async def app(request: Request) -> Reply:
        if request.path.startswith(PREFIXES):
            return await front(request)
        return error(404, "only the admin API and the console are served here")

    return app
