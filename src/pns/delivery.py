"""The delivery worker: drains the durable outbox to customers' callback URLs.

At least once: an event leaves the outbox only as delivered (any 2xx) or, after retrying for
``horizon`` seconds (24 h), as failed and still visible. Retries back off exponentially with
full jitter from ``first_delay``. Each attempt holds a lease in the store, so several processes
never deliver one event at the same time, and a process killed mid-delivery only delays it until
its lease runs out. Attempts run concurrently with a timeout each: one slow receiver cannot stall
the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time

import httpx

from .callbacks import signature_header
from .core import AccountDirectory
from .metrics import Metrics
from .model import EventState, OutboxEvent
from .store import Store

log = logging.getLogger("pns.delivery")

HORIZON = 24 * 3600
MAX_DELAY = 3600


def first_delay_from_env() -> float:
    return float(os.environ.get("PNS_CALLBACK_RETRY_FIRST", "60"))


def next_delay(attempts: int, first: float, rng: random.Random | None = None) -> int:
    """Exponential backoff with full jitter: up to first·2^(n-1), capped at an hour."""
    ceiling = min(first * 2 ** max(attempts - 1, 0), MAX_DELAY)
    return max(1, round((rng or random).uniform(ceiling / 2, ceiling)))


class Deliverer:
    def __init__(
        self, store: Store, accounts: AccountDirectory, *, first_delay: float | None = None,
        timeout: float = 5.0, concurrency: int = 32, batch: int = 100, poll: float = 0.5,
        horizon: int = HORIZON, metrics: Metrics | None = None,
    ):
        self._store = store
        self._accounts = accounts
        self._first = first_delay if first_delay is not None else first_delay_from_env()
        self._timeout = timeout
        self._lease = int(timeout * 2 + 5)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._batch = batch
        self._poll = poll
        self._horizon = horizon
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._metrics = metrics
        self._backlog_checked = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        try:
            while True:
                try:
                    delivered = await self.deliver_due()
                except Exception:
                    log.exception("delivery round failed; will retry")
                    delivered = 0
                if delivered < self._batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll)
                    self._wake.clear()
        finally:
            await self._client.aclose()

    async def deliver_due(self) -> int:
        """One round: lease the due events and attempt each; returns how many were leased."""
        now = time.time()
        if self._metrics is not None and now - self._backlog_checked >= 5:
            self._backlog_checked = now
            pending, oldest = await self._store.outbox_backlog(int(now))
            self._metrics.delivery_backlog.set(pending)
            self._metrics.delivery_oldest_age.set(oldest)
        events = await self._store.lease_events(int(now), self._batch, self._lease)
        if events:
            await asyncio.gather(*(self._attempt(event) for event in events))
        return len(events)

    async def _attempt(self, event: OutboxEvent) -> None:
        async with self._semaphore:
            error = await self._post(event)
        now = int(time.time())
        attempts = event.attempts + 1
        if error is None:
            await self._store.finish_event(event.event_id, EventState.DELIVERED, attempts, now,
                                           "", now)
            return
        if now - event.created_at >= self._horizon:
            log.warning("event %s failed for good after %d attempts: %s", event.event_id,
                        attempts, error)
            await self._store.finish_event(event.event_id, EventState.FAILED, attempts, now,
                                           error, now)
            return
        retry_at = now + next_delay(attempts, self._first)
        await self._store.finish_event(event.event_id, EventState.PENDING, attempts, retry_at,
                                       error, now)

    async def _post(self, event: OutboxEvent) -> str | None:
        """None when delivered, else why not."""
        account = await self._accounts.by_id(event.account_id)
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
            response = await self._client.post(account.callback_url, content=event.body,
                                               headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
