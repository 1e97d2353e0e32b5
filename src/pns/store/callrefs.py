"""The call-reference buffer every store shares: the query never pays a store write.

An answered query leaves a ``CallRef`` (callId → binding, caller, callee) so a later
``reportCall`` that carries only the callId can be joined. Writing it durably on the query's
path would cost a write per query, so the query only puts it here (a dict insertion, no await)
and one flusher task per store writes what is pending in batches, every ``interval`` seconds.

- Until written, ``get`` still finds a reference, so this process joins its own reports at once.
- A failing write never reaches a query: the flusher keeps the batch, logs the failure once
  (not once per query, not a traceback per attempt), retries every ``retry`` seconds and logs
  again when it recovers.
- Bounded: at most ``limit`` references wait. When full (the store has refused writes for a
  long while), the oldest pending reference is dropped, counted in ``dropped`` and logged once
  per episode; its report then joins by did and caller, as after a crash.
- What a crash loses: the references not yet written, that is those of the last ``interval``
  seconds (5 ms), or everything pending while the store refused writes. A report of such a call
  is joined by did and caller (the switch sends both), against the binding active then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..model import CallRef

_log = logging.getLogger("pns.store.callrefs")

FLUSH_INTERVAL = 0.005
RETRY_INTERVAL = 1.0
BATCH = 2048
LIMIT = 200_000


class CallRefBuffer:
    def __init__(self, write: Callable[[Sequence[CallRef]], Awaitable[None]], *,
                 interval: float = FLUSH_INTERVAL, retry: float = RETRY_INTERVAL,
                 batch: int = BATCH, limit: int = LIMIT):
        self._write = write
        self._interval = interval
        self._retry = retry
        self._batch = batch
        self._limit = limit
        self._pending: dict[str, CallRef] = {}
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failing = False
        self._dropping = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ref: CallRef) -> None:
        """Remember ``ref``; it is written within ``interval`` seconds while the store takes
        writes. Never blocks and never raises for the store's sake."""
        pending = self._pending
        if ref.call_id not in pending and len(pending) >= self._limit:
            del pending[next(iter(pending))]
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                _log.error("call-reference buffer full (%d): dropping the oldest; their reports "
                           "will be joined by did and caller", self._limit)
        pending[ref.call_id] = ref
        if self._flusher is None:
            self._start()
        elif self._wake is not None:
            self._wake.set()

    def get(self, call_id: str) -> CallRef | None:
        return self._pending.get(call_id)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()
        self._flusher = loop.create_task(self._run(), name="pns-callref-flusher")

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._interval)
            while self._pending:
                if not await self._flush_once():
                    await asyncio.sleep(self._retry)
                    continue

    async def _flush_once(self) -> bool:
        """Write one batch; False (logged once per episode) when the store refused it."""
        batch = []
        for ref in self._pending.values():
            batch.append(ref)
            if len(batch) >= self._batch:
                break
        try:
            await self._write(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._failing:
                self._failing = True
                _log.error("could not write %d call references (%s: %s); retrying every %g s",
                           len(self._pending), type(exc).__name__, exc, self._retry)
            return False
        if self._failing:
            self._failing = False
            _log.warning("call references written again (%d pending)", len(self._pending))
        pending = self._pending
        for ref in batch:
            if pending.get(ref.call_id) is ref:
                del pending[ref.call_id]
        if len(pending) < self._limit:
            self._dropping = False
        return True

    async def close(self) -> None:
        """Stop the flusher and try once more to write everything pending."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        while self._pending:
            if not await self._flush_once():
                _log.error("lost %d call references at close: the store refused them",
                           len(self._pending))
                self._pending.clear()
                return
