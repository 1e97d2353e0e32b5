"""The delivery worker: drains the durable outbox to customers' callback URLs.

At least once: an event leaves the outbox only as delivered (any 2xx) or, after retrying for
``horizon`` seconds (24 h), as failed and still visible. Retries back off exponentially with
full jitter from ``first_delay``.

Exactly once while every receiver answers 2xx within the deadline and no process dies
mid-attempt, however many processes deliver from one store, because a lease is always held
for the whole of its attempt:

- only events that can start now are leased: as many as there are free slots, and none of an
  account whose receiver is at its cap (an event leased for such an account anyway is given
  back at once, unattempted);
- each attempt (connect, send, read) has one deadline, ``timeout`` (5 s), well inside the lease
  (``timeout`` + ``LEASE_MARGIN``);
- ``finish_event`` changes the event only for its lease holder (a token per lease), so a holder
  whose lease ran out changes nothing.

One receiver (scheme, host and port of a callback URL) gets at most ``per_receiver`` attempts
at once from a process, so a dead or slow receiver holds that many slots, never all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .callbacks import signature_header
from .core import AccountDirectory
from .metrics import Metrics
from .model import Account, EventState, OutboxEvent
from .store import Store, StoreError

log = logging.getLogger("pns.delivery")

HORIZON = 24 * 3600
MAX_DELAY = 3600
# A lease outlives its attempt's deadline by this much: time to write the outcome.
LEASE_MARGIN = 10


def first_delay_from_env() -> float:
    return float(os.environ.get("PNS_CALLBACK_RETRY_FIRST", "60"))


def _number_from_env(name: str, default: float, minimum: float) -> float:
    value = os.environ.get(name, "")
    try:
        number = float(value) if value else default
    except ValueError:
        raise StoreError(f"{name} must be a number, not {value!r}") from None
    if not minimum <= number < math.inf:
        raise StoreError(f"{name} must be at least {minimum:g}, not {value}")
    return number


@dataclass(frozen=True)
class DeliverySettings:
    """``timeout``: one deadline per attempt (connect, send, read), in seconds;
    ``concurrency``: attempts at once per process; ``per_receiver``: attempts at once per
    receiver (scheme, host and port) per process."""

    timeout: float = 5.0
    concurrency: int = 32
    per_receiver: int = 8

    @classmethod
    def from_env(cls) -> DeliverySettings:
        """From ``PNS_CALLBACK_TIMEOUT``, ``PNS_CALLBACK_CONCURRENCY`` and
        ``PNS_CALLBACK_PER_RECEIVER``; a bad value is a clear error, before anything starts."""
        return cls(
            timeout=_number_from_env("PNS_CALLBACK_TIMEOUT", cls.timeout, 0.1),
            concurrency=int(_number_from_env("PNS_CALLBACK_CONCURRENCY", cls.concurrency, 1)),
            per_receiver=int(_number_from_env("PNS_CALLBACK_PER_RECEIVER", cls.per_receiver,
                                              1)),
        )


def next_delay(attempts: int, first: float, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter: up to first·2^(n-1), capped at an hour."""
    ceiling = min(first * 2 ** max(attempts - 1, 0), MAX_DELAY)
    return max(1, round((rng or random).uniform(ceiling / 2, ceiling)))


def receiver_of(account: Account | None) -> str:
    """The receiver a callback goes to (scheme://host:port), '' for none."""
    if account is None or not account.callback_url:
        return ""
    try:
        parts = urlsplit(account.callback_url)
        port = parts.port
    except ValueError:
        return account.callback_url
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}:{port or ''}"


class Deliverer:
    def __init__(
        self, store: Store, accounts: AccountDirectory, *, first_delay: float | None = None,
        settings: DeliverySettings | None = None, poll: float = 0.5, horizon: int = HORIZON,
        metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
    ):
        settings = settings or DeliverySettings()
        self._store = store
        self._accounts = accounts
        self._first = first_delay if first_delay is not None else first_delay_from_env()
        self._timeout = settings.timeout
        self._concurrency = settings.concurrency
        self._per_receiver = settings.per_receiver
        self._lease = math.ceil(self._timeout) + LEASE_MARGIN
        self._poll = poll
        self._horizon = horizon
        self._clock = clock
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=self._concurrency),
        )
        self._metrics = metrics
        self._backlog_checked = 0.0
        self._attempts: set[asyncio.Task[None]] = set()
        self._busy: Counter[str] = Counter()  # attempts in flight per receiver
        self._receiver_of_account: dict[int, str] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; attempts in flight then finish (within their deadline)."""
        try:
            while True:
                try:
                    started = await self.deliver_due()
                except Exception:
                    log.exception("delivery round failed; will retry")
                    started = 0
                if not started:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll)
                    self._wake.clear()
        finally:
            if self._attempts:
                await asyncio.wait(self._attempts, timeout=self._timeout + 1)
            for task in self._attempts:
                task.cancel()
            await self._client.aclose()

    async def deliver_due(self) -> int:
        """Lease what can start now and start it; returns how many attempts started."""
        now = self._clock()
        if self._metrics is not None and now - self._backlog_checked >= 5:
            self._backlog_checked = now
            pending, oldest = await self._store.outbox_backlog(int(now))
            self._metrics.delivery_backlog.set(pending)
            self._metrics.delivery_oldest_age.set(oldest)
        free = self._concurrency - len(self._attempts)
        if free <= 0:
            return 0
        full = {r for r, n in self._busy.items() if n >= self._per_receiver}
        skip = [a for a, r in self._receiver_of_account.items() if r in full]
        holder = secrets.token_hex(8)
        events = await self._store.lease_events(int(now), free, self._lease, holder=holder,
                                                skip_accounts=skip)
        started = 0
        for event in events:
            account = await self._accounts.by_id(event.account_id)
            receiver = receiver_of(account)
            self._receiver_of_account[event.account_id] = receiver
            if receiver and self._busy[receiver] >= self._per_receiver:
                await self._store.release_event(event.event_id, holder=holder)
                continue
            self._busy[receiver] += 1
            task = asyncio.create_task(self._attempt(event, account, receiver, holder))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)
            started += 1
        return started

    async def _attempt(self, event: OutboxEvent, account: Account | None, receiver: str,
                       holder: str) -> None:
        try:
            error = await self._post(event, account)
        finally:
            self._busy[receiver] -= 1
            if self._busy[receiver] <= 0:
                del self._busy[receiver]
            self._wake.set()  # a slot is free
        try:
            await self._finish(event, error, holder)
        except Exception:
            log.exception("could not record the attempt of event %s; its lease will run out",
                          event.event_id)

    async def _finish(self, event: OutboxEvent, error: str | None, holder: str) -> None:
        now = int(self._clock())
        attempts = event.attempts + 1
        if error is None:
            state, next_at = EventState.DELIVERED, now
        elif now - event.created_at >= self._horizon:
            log.warning("event %s failed for good after %d attempts: %s", event.event_id,
                        attempts, error)
            state, next_at = EventState.FAILED, now
        else:
            state, next_at = EventState.PENDING, now + next_delay(attempts, self._first)
        if not await self._store.finish_event(event.event_id, state, attempts, next_at,
                                              error or "", now, holder=holder):
            log.warning("event %s: lease lost before its outcome was written", event.event_id)

    async def _post(self, event: OutboxEvent, account: Account | None) -> str | None:
        """None when delivered, else why not. One deadline for the whole attempt."""
        if account is None or not account.callback_url:
            return "the account has no callback URL"
        headers = {
            "Content-Type": "application/json",
            "X-PNS-Event-Id": event.event_id,
            "X-PNS-Event-Kind": event.kind,
            "X-PNS-Signature": signature_header(account.access_secret, event.body,
                                                int(time.time())),
        }
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(account.callback_url, content=event.body,
                                                   headers=headers)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
