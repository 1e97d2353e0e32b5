"""Routes: which path reaches the API, health, and the envelopes of transport errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from .api import ACTIONS, Api, envelope
from .errors import Code
from .http import Reply, Request
from .ids import new_snowflake
from .metrics import Metrics
from .openapi import DOCS_ASSETS, OPENAPI_JSON

log = logging.getLogger("pns.access")

API_PATHS = frozenset({"/api/pns/", "/api/pns"})
# Handed whole to the admin handler (admin API and console), when one is mounted here.
ADMIN_PREFIXES = ("/admin/", "/console")
_ACTION_PREFIX = "/api/pns/"
# Why a bind found no number, by the code it got.
ALLOCATION_FAILURES = {
    int(Code.NO_VIRTUAL_NUMBER): "no_number_in_country",
    int(Code.NUMBERS_EXHAUSTED): "parties_bound_on_every_number",
    int(Code.PARTY_ALREADY_BOUND): "party_bound_on_requested_x",
    int(Code.NO_FREE_EXTENSION): "no_free_extension",
}
_ERROR_MSG = {
    400: "bad request",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    413: "request body larger than 64 KiB",
    414: "URL too long",
    431: "request headers too large",
    500: "failed to retrieve data",
    503: "service unavailable",
}


def error_reply(status: int) -> Reply:
    """A transport-level refusal, still as an envelope (1002; 10009 for a server fault)."""
    code = Code.INTERNAL if status >= 500 else Code.BAD_PARAMETER
    return Reply(status, envelope(code, _ERROR_MSG.get(status, "error"), new_snowflake()))


class App:
    def __init__(self, api: Api, metrics: Metrics | None = None,
                 admin: Callable[[Request], Awaitable[Reply]] | None = None):
        self.api = api
        self.metrics = metrics or Metrics()
        self.admin = admin

    async def __call__(self, request: Request) -> Reply:
        path = request.path
        if path in API_PATHS:
            if request.method != "POST":
                return error_reply(405)
            return await self._api(request)
        if path == "/healthz":
            if request.method != "GET":
                return error_reply(405)
            return await self._health()
        if path == "/metrics":
            if request.method != "GET":
                return error_reply(405)
            return Reply(200, self.metrics.render(), "text/plain; version=0.0.4")
        if path == "/openapi.json":
            if request.method != "GET":
                return error_reply(405)
            return Reply(200, OPENAPI_JSON)
        asset = DOCS_ASSETS.get(path)
        if asset is not None:
            if request.method != "GET":
                return error_reply(405)
            return Reply(200, asset[1], asset[0])
        if path.startswith(_ACTION_PREFIX) and path[len(_ACTION_PREFIX):] in ACTIONS:
            return await self._action_alias(request, path[len(_ACTION_PREFIX):])
        if self.admin is not None and path.startswith(ADMIN_PREFIXES):
            return await self.admin(request)
        return error_reply(404)

    async def _action_alias(self, request: Request, action: str) -> Reply:
        """``POST /api/pns/{action}``: the action may come from the path; a header that
        names another action is a contradiction (1002)."""
        if request.method != "POST":
            return error_reply(405)
        header = request.headers.get("action")
        if header is not None and header != action:
            return Reply(200, envelope(Code.BAD_PARAMETER, "action header and path disagree",
                                       new_snowflake()))
        headers = {**request.headers, "action": action}
        return await self._api(request._replace(headers=headers))

    async def _api(self, request: Request) -> Reply:
        started = time.perf_counter()
        response = await self.api.handle(request.headers, request.body, request.client)
        elapsed = time.perf_counter() - started
        action = response.action if response.action in ACTIONS else "unknown"
        self.metrics.observe(action, response.code, elapsed)
        reason = ALLOCATION_FAILURES.get(response.code)
        if reason is not None and action.startswith("bind"):
            self.metrics.allocation_failures.labels(reason).inc()
        if log.isEnabledFor(logging.INFO):
            log.info("requestId=%s action=%s code=%d ms=%.3f", response.request_id, action,
                     response.code, elapsed * 1000)
        return Reply(response.status, response.body)

    async def _health(self) -> Reply:
        try:
            await self.api.service.store.ping()
        except Exception as exc:
            log.warning("health check failed: %s", type(exc).__name__)
            return Reply(503, b'{"status":"store unreachable"}')
        return Reply(200, b'{"status":"ok"}')
