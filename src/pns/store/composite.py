"""A store in two parts: a sharded binding index (keyed by X) and the records (keyed by account).

``CompositeStore`` implements the whole ``Store`` the core talks to by routing each method to
the part that owns its key, and keeps the invariants that span both parts itself:

- **I3 by reserve → insert → confirm.** The customerBindId is reserved in the ledger (the
  records side, with a lease), the binding inserted in the index (I1, I2 on X's shard), then the
  reservation confirmed, or released when the index refuses. A binder that dies between the
  steps leaves a reservation whose lease runs out; the next claimant of that customerBindId (or
  the sweeper) asks the index whether the binding got there and confirms or releases it. The
  index refuses an insert after the reservation's deadline (half the lease, on the index's
  clock), so once the lease is over the answer is final: clocks may differ by up to
  ``LEASE_MS / 2`` without harm.
- **Unbind** marks the ledger row as ending (unlisted at once), removes the binding from the
  index, then the row; a crash in between is finished by the sweeper.
- **Allocation** reads the index's per-pool load hint, checks the least loaded candidates on
  their shards (one script per X), and lets the per-X insert decide.

Nothing here knows SQL or Redis: the parts are ``RedisBindingIndex`` and ``PgBindingLedger``
today, and anything with the same methods tomorrow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from ..model import (
    Account,
    AccountChanges,
    Binding,
    CallRecord,
    CallRef,
    Candidate,
    EventState,
    Group,
    NumberUsage,
    OutboxEvent,
    PoolStats,
    PoolUsage,
    Role,
    VirtualNumber,
)
from ..numbers import parse_international
from .base import (
    BindConflict,
    BindingIndex,
    BindingLedger,
    ConflictKind,
    RecordsStore,
    Replayed,
    SignatureClaim,
    StoreError,
    check_replacement,
    summarise_pools,
    take_claim,
)

# A reservation's lease: longer than an insert may take (its retries for about 3 s and a WAIT
# of 1 s), the index refusing it after half of it.
LEASE_MS = 10_000
_log = logging.getLogger("pns.store.composite")
# How long a bind waits for a concurrent bind holding its customerBindId to finish.
IN_FLIGHT_WAIT_SECONDS = 2.0
POOL_CACHE_SECONDS = 1.0
HINT_CACHE_SECONDS = 0.25
_HINT_PAGE = 32


def now_ms() -> int:
    return int(time.time() * 1000)


class ShardedIndex(BindingIndex, Protocol):
    """A binding index with the per-X probes a pool needs (``RedisBindingIndex``)."""

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def insert_on_x(self, binding: Binding, now: int, deadline_ms: int) -> int: ...

    async def stored_binding(self, bind_id: str) -> Binding | None: ...

    async def delete_bindings(self, x: str, bind_ids: Sequence[str], now: int,
                              expired_only: bool, ys: Sequence[str] = ()
                              ) -> tuple[int, int]: ...

    async def drop_x(self, x: str) -> int: ...

    async def probe(self, xs: Sequence[str], parties: Sequence[str], now: int
                    ) -> list[tuple[int, list[bool]]]: ...

    async def active(self, xs: Sequence[str], now: int, with_parties: bool = False
                     ) -> list[tuple[int, list[str]]]: ...

    async def load_hint(self, account_id: int, country_code: int, start: int, count: int
                        ) -> list[tuple[str, int]]: ...

    async def set_load(self, account_id: int, country_code: int, loads: dict[str, int],
                       only_new: bool = False) -> None: ...

    async def forget_load(self, account_id: int, country_code: int, xs: Sequence[str]
                          ) -> None: ...


def _by_x(bindings: Sequence[Binding]) -> list[tuple[str, list[str], list[str]]]:
    """Bindings grouped by X: (X, their bindIds, their Ys, whose copies go too)."""
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for binding in bindings:
        ids, ys = groups.setdefault(binding.x, ([], []))
        ids.append(binding.bind_id)
        if binding.y:
            ys.append(binding.y)
    return [(x, ids, ys) for x, (ids, ys) in groups.items()]


def _country(x: str) -> int:
    number = parse_international(x)
    return number.country_code if number is not None else 0


class CompositeStore:
    """``Store`` = ``ShardedIndex`` (bindings by X) + ``BindingLedger`` and ``RecordsStore`` (by
    account). Methods of the records store not named here are its own (``__getattr__``)."""

    answers_in_process = False  # redis-py's reads run under asyncio.timeout

    def find_by_party_now(self, x: str, number: str, now: int) -> Binding | None:
        raise StoreError("a binding index on Redis answers reads only by waiting")

    def get_number_now(self, x: str) -> VirtualNumber | None:
        raise StoreError("a binding index on Redis answers reads only by waiting")

    def __init__(self, index: ShardedIndex, ledger: BindingLedger, records: RecordsStore):
        self.index = index
        self.ledger = ledger
        self.records = records
        self._pools: dict[tuple[int, int], tuple[float, dict[str, bool]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._hints: dict[tuple[int, int, int, int], tuple[float, list[tuple[str, int]]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.records, name)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        try:
            await self.index.close()
            await self.ledger.close()
        finally:
            await self.records.close()

    async def ping(self) -> None:
        await self.records.ping()
        await self.index.ping()

    # --- bindings: reserve → insert → confirm -------------------------------------------------
    async def insert_binding(self, binding: Binding, now: int,
                             claim: SignatureClaim | None = None) -> None:
        if claim is not None and not await take_claim(self.records, claim):
            raise Replayed
        deadline_ms = await self._reserve(binding, now)
        try:
            await self.index.insert_on_x(binding, now, deadline_ms)
        except BindConflict:
            await self.ledger.remove([binding.bind_id])
            raise
        # Any other failure leaves the reservation: whether the insert landed is unknown, and
        # the lease's end settles it (``_settle``). The load hint is not written here: the
        # next allocation that probes X corrects it (``_free``), one round trip less per bind.
        await self.ledger.set_lease(binding.bind_id, 0)

    async def _reserve(self, binding: Binding, now: int) -> int:
        """Reserve the binding's ledger row; returns the deadline for the index's insert."""
        waited_until = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
        while True:
            lease = now_ms() + LEASE_MS
            holder = await self.ledger.reserve(binding, now, lease)
            if holder is None:
                return lease - LEASE_MS // 2
            held, lease_until = holder
            if lease_until == 0:
                if held.active_at(now):
                    raise BindConflict(ConflictKind.CUSTOMER_BIND_ID)
                await self._drop([held], now, expired_only=True)
            elif not await self._settle(held, lease_until):
                # A bind or unbind of this customerBindId is in flight: wait for its end, as a
                # database's unique index makes the second writer wait. A bind whose insert
                # landed but whose binder has not confirmed (or heard back: a retry after
                # 10009) is confirmed here: it is a binding.
                if lease_until > 0 and await self.index.stored_binding(held.bind_id):
                    await self.ledger.set_lease(held.bind_id, 0)
                elif time.monotonic() > waited_until:
                    raise BindConflict(ConflictKind.CUSTOMER_BIND_ID)
                else:
                    await asyncio.sleep(0.005)

    async def _settle(self, held: Binding, lease_until: int) -> bool:
        """Finish a reservation or unbind whose deadline passed; False while it has not."""
        if abs(lease_until) >= now_ms():
            return False
        if lease_until > 0 and await self.index.stored_binding(held.bind_id) is not None:
            await self.ledger.set_lease(held.bind_id, 0)  # it got there: a binding after all
            return True
        await self._drop([held], 0, expired_only=False)
        return True

    async def _drop(self, bindings: Sequence[Binding], now: int, expired_only: bool) -> None:
        """Remove bindings from the index (X by X), then their ledger rows."""
        for x, ids, ys in _by_x(bindings):
            _, stored = await self.index.delete_bindings(x, ids, now, expired_only, ys)
            await self._hint(bindings[0].account_id, x, stored)
        if expired_only:
            await self.records.record_cool_offs(bindings, now)
        await self.ledger.remove([binding.bind_id for binding in bindings])

    async def delete_binding(self, bind_id: str) -> bool:
        lease = await self.ledger.lease_of(bind_id)
        if lease is not None:
            await self.ledger.set_lease(bind_id, -(now_ms() + LEASE_MS))
        found = await self.index.stored_binding(bind_id)
        if found is None:
            if lease is not None:
                await self.ledger.remove([bind_id])
            return False
        removed, stored = await self.index.delete_bindings(
            found.x, [bind_id], 0, False, [found.y] if found.y else [])
        if removed:
            await self.records.record_cool_offs([found], int(time.time()))
        await self.ledger.remove([bind_id])
        await self._hint(found.account_id, found.x, stored)
        return removed > 0

    async def change_group(self, group: Group,
                           replacements: Sequence[tuple[Binding, Binding]], now: int) -> bool:
        """Each binding of the group is swapped on its X's shard; if one cannot be, those
        already swapped are swapped back and nothing else changes. Then the records side: the
        ledger's copies and the group's members. Not one transaction: a crash in between
        leaves the index ahead of the listing until the group's next change; routing (the
        index) is never behind the members a change committed."""
        done: list[tuple[Binding, Binding]] = []
        try:
            for old, new in replacements:
                if not await self.index.replace_binding(old, new, now):
                    await self._undo(done, now)
                    return False
                done.append((old, new))
        except BindConflict:
            await self._undo(done, now)
            raise
        for _, new in done:
            await self.ledger.update(new)
        return await self.records.change_group(group, (), now)

    async def _undo(self, done: list[tuple[Binding, Binding]], now: int) -> None:
        for old, new in reversed(done):
            if not await self.index.replace_binding(new, old, now):
                _log.error("could not restore binding %s after a refused group change",
                           old.bind_id)

    async def replace_binding(self, old: Binding, new: Binding, now: int) -> bool:
        """The ledger row is held while X's shard swaps the binding: a sweep of the old expiry
        or an unbind waits for it (or goes first, and then this changes nothing). A crash
        after the shard's change and before the ledger's commit leaves the ledger's copy (what
        listings show) older than the index until the binding's next change."""
        check_replacement(old, new)
        return await self.ledger.replace(
            old, new, lambda: self.index.replace_binding(old, new, now))

    async def get_binding(self, bind_id: str, now: int) -> Binding | None:
        return await self.index.get_binding(bind_id, now)

    async def find_by_party(self, x: str, number: str, now: int) -> Binding | None:
        return await self.index.find_by_party(x, number, now)

    async def find_by_extension(self, x: str, extension: str, now: int) -> Binding | None:
        return await self.index.find_by_extension(x, extension, now)

    async def has_extension_bindings(self, x: str, now: int) -> bool:
        return await self.index.has_extension_bindings(x, now)

    async def used_extensions(self, x: str, now: int) -> set[str]:
        return await self.index.used_extensions(x, now)

    async def find_by_customer_bind_id(self, account_id: int, customer_bind_id: str, now: int
                                       ) -> Binding | None:
        return await self.ledger.find_by_customer_bind_id(account_id, customer_bind_id, now)

    async def list_bindings(self, account_id: int, limit: int, offset: int, now: int
                            ) -> tuple[list[Binding], int]:
        return await self.ledger.list_bindings(account_id, limit, offset, now)

    async def sweep(self, now: int, limit: int) -> int:
        async def drop(bindings: list[Binding]) -> None:
            for x, ids, ys in _by_x(bindings):
                _, stored = await self.index.delete_bindings(x, ids, now, True, ys)
                await self._hint(bindings[0].account_id, x, stored)
            await self.records.record_cool_offs(bindings, now)

        gone = await self.ledger.sweep_expired(now, limit, drop)
        for held, lease_until in await self.ledger.stale(now_ms(), limit):
            await self._settle(held, lease_until)
        await self.records.sweep(now, limit)
        return gone

    # --- the pool -----------------------------------------------------------------------------
    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Hint updates are not waited for: lost, the next probe of that X corrects them."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._hint_done)

    def _hint_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.debug("load hint not written: %s", task.exception())

    async def _hint(self, account_id: int, x: str, stored: int) -> None:
        await self.index.set_load(account_id, _country(x), {x: stored})

    async def _pool(self, account_id: int, country_code: int, fresh: bool = False
                    ) -> dict[str, bool]:
        """The pool's numbers (X → enabled), read from the records at most once a second."""
        key = (account_id, country_code)
        cached = self._pools.get(key)
        if cached is not None and cached[0] > time.monotonic() and not fresh:
            return cached[1]
        rows = await self.records.list_numbers(account_id, 0)
        pool = {row.x: row.enabled for row in rows if row.country_code == country_code}
        if cached is None or set(cached[1]) != set(pool):
            await self.index.set_load(account_id, country_code, dict.fromkeys(pool, 0),
                                      only_new=True)
        self._pools[key] = (time.monotonic() + POOL_CACHE_SECONDS, pool)
        return pool

    async def free_numbers(self, account_id: int, country_code: int, parties: Sequence[str],
                           now: int, limit: int) -> list[Candidate]:
        found = await self._free(account_id, country_code, parties, now, limit, fresh=False)
        if not found:  # before answering 10008/10010, make sure the pool is not stale
            found = await self._free(account_id, country_code, parties, now, limit, fresh=True)
        return found

    async def _free(self, account_id: int, country_code: int, parties: Sequence[str],
                    now: int, limit: int, fresh: bool) -> list[Candidate]:
        pool = await self._pool(account_id, country_code, fresh)
        found: list[Candidate] = []
        start = 0
        while len(found) < limit:
            hints = await self._load_hint(account_id, country_code, start,
                                          min(_HINT_PAGE, limit + 2))
            if not hints:
                break
            start += len(hints)
            candidates = [(x, hinted) for x, hinted in hints if pool.get(x)]
            probes = await self.index.probe([x for x, _ in candidates], parties, now)
            fixes = {}
            for (x, hinted), (stored, bound) in zip(candidates, probes, strict=True):
                if stored != hinted:
                    fixes[x] = stored
                if not any(bound):
                    found.append(Candidate(x, stored))
            if fixes:
                self._in_background(self.index.set_load(account_id, country_code, fixes))
        found.sort(key=lambda candidate: candidate.active_bindings)
        return found[:limit]

    async def _load_hint(self, account_id: int, country_code: int, start: int, count: int
                         ) -> list[tuple[str, int]]:
        """A page of the load hint, read at most every ``HINT_CACHE_SECONDS`` per process:
        the probes that follow are the truth, the hint only says which X's to probe."""
        key = (account_id, country_code, start, count)
        cached = self._hints.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        rows = await self.index.load_hint(account_id, country_code, start, count)
        if len(self._hints) > 10_000:
            self._hints.clear()
        self._hints[key] = (time.monotonic() + HINT_CACHE_SECONDS, rows)
        return rows

    async def pool_stats(self, account_id: int, country_code: int, a: str, b: str, now: int
                         ) -> PoolStats:
        pool = await self._pool(account_id, country_code, fresh=True)
        enabled = [x for x, on in pool.items() if on]
        probes = await self.index.probe(enabled, (a, b), now)
        return PoolStats(len(enabled), sum(bound[0] for _, bound in probes),
                         sum(bound[1] for _, bound in probes))

    async def list_numbers(self, account_id: int | None, now: int) -> list[NumberUsage]:
        rows = await self.records.list_numbers(account_id, now)
        actives = await self.index.active([row.x for row in rows], now)
        return [NumberUsage(row.x, row.account_id, row.country_code, row.enabled, count)
                for row, (count, _) in zip(rows, actives, strict=True)]

    async def numbers_page(self, account_id: int | None, after: str, limit: int,
                           now: int) -> list[NumberUsage]:
        rows = await self.records.numbers_page(
            account_id, after, limit, now)
        actives = await self.index.active([row.x for row in rows], now)
        return [NumberUsage(row.x, row.account_id, row.country_code, row.enabled, count)
                for row, (count, _) in zip(rows, actives, strict=True)]

    async def bindings_page(self, account_id: int, x: str, after_bind_id: str, limit: int,
                            now: int) -> list[Binding]:
        return await self.ledger.bindings_page(account_id, x, after_bind_id, limit, now)

    async def pool_usage(self, now: int) -> list[PoolUsage]:
        rows = await self.records.list_numbers(None, now)
        actives = await self.index.active([row.x for row in rows], now, with_parties=True)
        per_x = []
        held: Counter[tuple[int, int, str]] = Counter()
        for row, (count, parties) in zip(rows, actives, strict=True):
            per_x.append((row.account_id, row.country_code, row.x, row.enabled, count))
            for party in parties:
                held[(row.account_id, row.country_code, party)] += 1
        busiest: dict[tuple[int, int], int] = {}
        for (account_id, country_code, _), count in held.items():
            key = (account_id, country_code)
            busiest[key] = max(busiest.get(key, 0), count)
        return summarise_pools(per_x, busiest)

    async def add_numbers(self, numbers: Sequence[VirtualNumber]) -> list[str]:
        existing = await self.records.add_numbers(numbers)
        for number in numbers:
            self._pools.pop((number.account_id, number.country_code), None)
        return existing

    async def remove_numbers(self, xs: Sequence[str], force: bool, now: int) -> list[str]:
        known = [number for number in [await self.records.get_number(x) for x in xs] if number]
        actives = await self.index.active([number.x for number in known], now)
        kept = [n.x for n, (count, _) in zip(known, actives, strict=True) if count and not force]
        gone = [number for number in known if number.x not in kept]
        await self.records.remove_numbers([number.x for number in gone], True, now)
        for number in gone:
            await self.index.drop_x(number.x)
            await self.ledger.remove_x(number.x)
            await self.index.forget_load(number.account_id, number.country_code, [number.x])
            self._pools.pop((number.account_id, number.country_code), None)
        return kept

    async def move_numbers(self, xs: Sequence[str], account_id: int, force: bool,
                           now: int) -> list[str]:
        """As ``remove_numbers``: a number with active bindings stays unless ``force``, which
        ends them on X's shard (and in the ledger) before the number changes hands."""
        known = [number for number in [await self.records.get_number(x) for x in xs] if number]
        actives = await self.index.active([number.x for number in known], now)
        kept = [n.x for n, (count, _) in zip(known, actives, strict=True) if count and not force]
        moving = [number for number in known if number.x not in kept]
        for number in moving:
            await self.index.drop_x(number.x)
            await self.ledger.remove_x(number.x)
            await self.index.forget_load(number.account_id, number.country_code, [number.x])
            self._pools.pop((number.account_id, number.country_code), None)
        kept += await self.records.move_numbers(  # type: ignore[attr-defined]
            [number.x for number in moving], account_id, True, now)
        self._pools.clear()
        return kept

    async def find_bindings_by_number(self, number: str, now: int,
                                      limit: int) -> list[Binding]:
        return await self.ledger.find_by_number(number, now, limit)

    # --- the records store's own --------------------------------------------------------------
    async def create_account(self, name: str, role: Role, access_key: str, access_secret: str,
                             now: int) -> Account:
        return await self.records.create_account(name, role, access_key, access_secret, now)

    async def get_account(self, access_key: str) -> Account | None:
        return await self.records.get_account(access_key)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        return await self.records.get_account_by_id(account_id)

    async def list_accounts(self) -> list[Account]:
        return await self.records.list_accounts()

    async def update_account(self, access_key: str, changes: AccountChanges) -> Account | None:
        return await self.records.update_account(access_key, changes)

    async def get_number(self, x: str) -> VirtualNumber | None:
        return await self.records.get_number(x)

    def record_call(self, call: CallRef) -> None:
        self.records.record_call(call)

    async def get_call(self, call_id: str) -> CallRef | None:
        return await self.records.get_call(call_id)

    async def claim_signature(self, key: str, expires_at: int, now: int) -> bool:
        return await self.records.claim_signature(key, expires_at, now)

    async def save_call_record(self, record: CallRecord, event: OutboxEvent | None,
                               claim: SignatureClaim | None = None) -> bool:
        return await self.records.save_call_record(record, event, claim)

    async def list_call_records(self, account_id: int, start_from: int, start_to: int,
                                bind_id: str, limit: int, offset: int
                                ) -> tuple[list[CallRecord], int]:
        return await self.records.list_call_records(account_id, start_from, start_to, bind_id,
                                                    limit, offset)

    async def get_call_record(self, account_id: int, call_id: str) -> CallRecord | None:
        return await self.records.get_call_record(account_id, call_id)

    async def enqueue_event(self, event: OutboxEvent) -> None:
        await self.records.enqueue_event(event)

    async def list_events(self, account_id: int | None, state: EventState | None, limit: int
                          ) -> list[OutboxEvent]:
        return await self.records.list_events(account_id, state, limit)

    async def outbox_backlog(self, now: int) -> tuple[int, int]:
        return await self.records.outbox_backlog(now)
