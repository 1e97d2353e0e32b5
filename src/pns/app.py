"""Routes: which path reaches the API, health, and the envelopes of transport errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from .api import ACTIONS, REQUIRED_HEADERS, Action, Api, Response, envelope
from .errors import Code
from .http import Reply, Request
from .ids import new_snowflake
from .logs import access_log
from .metrics import Metrics
from .openapi import DOCS_ASSETS, OPENAPI_JSON
from .v1 import V1_ACTIONS, V1_PATHS

log = logging.getLogger("pns.access")

# The old actions' endpoint, also at NXCloud's newer address for them.
API_PATHS = frozenset({"/api/pns/", "/api/pns", "/v1/api/pns/", "/v1/api/pns"})
# Handed whole to the admin handler (admin API and console), when one is mounted here.
ADMIN_PREFIXES = ("/admin/", "/console")
# The headers the API reads, as the HTTP layer keeps them (bytes) and as the API takes them:
# only these are decoded.
_API_HEADERS = tuple((name.encode(), name) for name in (*REQUIRED_HEADERS, "algorithm"))
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
    417: "only the expectation 100-continue is supported",
    431: "request headers too large",
    500: "failed to retrieve data",
    503: "service unavailable",
}


def error_reply(status: int) -> Reply:
    """A transport-level refusal, still as an envelope (1002; 10009 for a server fault)."""
    code = Code.INTERNAL if status >= 500 else Code.BAD_PARAMETER
    return Reply(status, envelope(code, _ERROR_MSG.get(status, "error"), new_snowflake()))


def api_headers(raw: dict[bytes, bytes]) -> dict[str, str]:
    """The headers the API reads, decoded (Latin-1: any byte is a character); the rest of a
    request's headers are never decoded."""
    # A loop, not a comprehension: on Python 3.11 a comprehension is a call of its own.
    headers = {}
    get = raw.get
    for key, name in _API_HEADERS:
        value = get(key)
        if value is not None:
            headers[name] = value.decode("latin-1")
    return headers


class App:
    """Routes a request. A route that needs no I/O answers with a Reply at once, the others
    with a coroutine the HTTP layer runs (without a task when it never waits)."""

    def __init__(self, api: Api, metrics: Metrics | None = None,
                 admin: Callable[[Request], Awaitable[Reply]] | None = None):
        self.api = api
        self.metrics = metrics or Metrics()
        self.admin = admin
        # The switch's question answered without a coroutine where the store allows it.
        self._answers_now = api.service.store.answers_in_process

    def __call__(self, request: Request) -> Reply | Awaitable[Reply]:
        path = request.path
        if path in API_PATHS:
            if request.method != "POST":
                return error_reply(405)
            headers = api_headers(request.headers)
            if self._answers_now:
                started = time.perf_counter()
                response = self.api.answer_now(headers, request.body, request.client)
                if isinstance(response, Response):
                    return self._answered(response, time.perf_counter() - started, ACTIONS)
                if response is not None:
                    return self._later(response, started, ACTIONS)
            return self._api(headers, request.body, request.client)
        v1_action = V1_PATHS.get(path)
        if v1_action is not None:
            return self._v1(request, v1_action)
        if path == "/healthz":
            if request.method != "GET":
                return error_reply(405)
            return self._health()
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
            return self._action_alias(request, path[len(_ACTION_PREFIX):])
        if self.admin is not None and path.startswith(ADMIN_PREFIXES):
            return self.admin(request)
        return error_reply(404)

    def _action_alias(self, request: Request, action: str) -> Reply | Awaitable[Reply]:
        """``POST /api/pns/{action}``: the action may come from the path; a header that
        names another action is a contradiction (1002)."""
        if request.method != "POST":
            return error_reply(405)
        headers = api_headers(request.headers)
        header = headers.get("action")
        if header is not None and header != action:
            return Reply(200, envelope(Code.BAD_PARAMETER, "action header and path disagree",
                                       new_snowflake()))
        headers["action"] = action
        return self._api(headers, request.body, request.client)

    def _v1(self, request: Request, action: str) -> Reply | Awaitable[Reply]:
        """``POST /v1/pns/bind/{mode}``: the action header is required (1001 without it, as
        for any signed request) and must name the path's mode (1002)."""
        if request.method != "POST":
            return error_reply(405)
        headers = api_headers(request.headers)
        header = headers.get("action")
        if header and header != action:
            return Reply(200, envelope(
                Code.BAD_PARAMETER, f"action header must be {action} on {request.path}",
                new_snowflake()))
        return self._api(headers, request.body, request.client, V1_ACTIONS)

    def _api(self, headers: dict[str, str], body: bytes, client: str,
             actions: dict[str, Action] | None = None) -> Awaitable[Reply]:
        return self._later(self.api.handle(headers, body, client, actions), time.perf_counter(),
                           ACTIONS if actions is None else actions)

    async def _later(self, response: Awaitable[Response], started: float,
                     known: dict[str, Action]) -> Reply:
        return self._answered(await response, time.perf_counter() - started, known)

    def _answered(self, response: Response, elapsed: float,
                  known: dict[str, Action]) -> Reply:
        """Every API answer is counted and logged, whichever way it was made."""
        action = response.action if response.action in known else "unknown"
        self.metrics.observe(action, response.code, elapsed)
        reason = ALLOCATION_FAILURES.get(response.code)
        if reason is not None and action.startswith("bind"):
            self.metrics.allocation_failures.labels(reason).inc()
        access_log(response.request_id, action, response.code, elapsed)
        return Reply(response.status, response.body)

    async def _health(self) -> Reply:
        try:
            await self.api.service.store.ping()
        except Exception as exc:
            log.warning("health check failed: %s", type(exc).__name__)
            return Reply(503, b'{"status":"store unreachable"}')
        return Reply(200, b'{"status":"ok"}')
