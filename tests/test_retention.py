"""Retention, a privacy guarantee: call references, call records and finished callbacks are
purged after their retention, by the sweeper, on every store."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from pns.callbacks import KIND_BINDING_ERROR, new_event
from pns.ids import new_snowflake, snowflake_floor
from pns.model import CallRecord, CallRef, EventState, Role
from pns.serve import purge_history
from pns.store import StoreError, open_store
from pns.store.base import CALL_RETENTION, Retention

from .test_store_conformance import fresh_store_url

__all__ = ["fresh_store_url"]  # the fixture, shared with the conformance suite


def _ref(call_id: str, now: int) -> CallRef:
    return CallRef(call_id=call_id, bind_id="b" * 32, account_id=1, x="85230000000",
                   caller="85211111111", callee="85222222222", customer_bind_id="",
                   business_id="", bind_type=0, queried_at=now)


def test_old_call_references_are_purged(store_url: str) -> None:
    now = int(time.time())
    old = str(int(snowflake_floor(now - CALL_RETENTION - 60)) + 1)
    fresh = new_snowflake()
    assert old < snowflake_floor(now - CALL_RETENTION) < fresh

    async def run() -> tuple[CallRef | None, CallRef | None]:
        store = await open_store(store_url)
        store.record_call(_ref(old, now))
        store.record_call(_ref(fresh, now))
        await store.close()  # writes the pending references
        store = await open_store(store_url)
        try:
            assert await purge_history(store, now, Retention()) == 1
            return await store.get_call(old), await store.get_call(fresh)
        finally:
            await store.close()

    gone, kept = asyncio.run(run())
    assert gone is None
    assert kept is not None and kept.call_id == fresh


T0 = 1_800_000_000
DAY = 86400


def _record(account_id: int, call_id: str, reported_at: int, record_id: int) -> CallRecord:
    return CallRecord(
        call_id=call_id, account_id=account_id, bind_id="b" * 32, customer_bind_id="",
        business_id="", did="85230000000", caller="85211111111", callee="85222222222",
        call_status=1, call_status_msg="Call Connected", duration=5, start_at=reported_at - 60,
        ring_at=0, answer_at=reported_at - 10, hangup_at=reported_at - 5, hangup_cause="",
        hangup_code=16, hangup=0, record_file="", reported_at=reported_at, id=record_id,
    )


def test_history_is_purged_after_its_retention(fresh_store_url: str) -> None:
    """Call records go 90 days after they were reported, callbacks 30 days after they were
    delivered or failed for good; pending callbacks stay. In bounded batches, by a clock the
    test controls."""

    async def run() -> tuple[list[int], list[str], list[str], list[str]]:
        store = await open_store(fresh_store_url)
        try:
            acc = await store.create_account("r", Role.CUSTOMER, "k" + secrets.token_hex(4),
                                             "s", T0)
            ages = {"old": 91, "older": 120, "young": 89}
            for name, days in ages.items():
                record = _record(acc.id, name, T0 - days * DAY, await store.next_call_record_id())
                assert await store.save_call_record(record, None)
            finished = {}
            for name, state, days in [("delivered-old", EventState.DELIVERED, 31),
                                      ("failed-old", EventState.FAILED, 45),
                                      ("delivered-young", EventState.DELIVERED, 29),
                                      ("pending-old", EventState.PENDING, 40)]:
                event = new_event(acc.id, KIND_BINDING_ERROR, {"n": name}, T0 - 60 * DAY)
                await store.enqueue_event(event)
                finished[event.event_id] = name
                if state is not EventState.PENDING:
                    (leased,) = await store.lease_events(T0 - 60 * DAY, 1, 10, holder=name)
                    assert leased.event_id == event.event_id
                    assert await store.finish_event(event.event_id, state, 1, T0 - days * DAY,
                                                    "", T0 - days * DAY, holder=name)
            batches = []
            while purged := await store.purge_history(T0, Retention(), 1):
                batches.append(purged)
            assert await purge_history(store, T0, Retention()) == 0
            records, _ = await store.list_call_records(acc.id, 0, 2**62, "", 100, 0)
            events = await store.list_events(acc.id, None, 100)
            pending = await store.list_events(acc.id, EventState.PENDING, 100)
            return (batches, [r.call_id for r in records],
                    sorted(finished[e.event_id] for e in events),
                    [finished[e.event_id] for e in pending])
        finally:
            await store.close()

    batches, records, events, pending = asyncio.run(run())
    assert batches == [2, 2], "one record and one event per table and batch"
    assert records == ["young"]
    assert events == ["delivered-young", "pending-old"]
    assert pending == ["pending-old"]


def test_retention_is_configurable(fresh_store_url: str, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    monkeypatch.setenv("PNS_RETENTION_RECORDS_DAYS", "7")
    monkeypatch.setenv("PNS_RETENTION_EVENTS_DAYS", "0.5")
    monkeypatch.setenv("PNS_RETENTION_CALL_REFS_DAYS", "1")
    retention = Retention.from_env()
    assert (retention.call_records, retention.events, retention.call_refs) == (
        7 * DAY, DAY // 2, DAY)

    async def run() -> list[str]:
        store = await open_store(fresh_store_url)
        try:
            acc = await store.create_account("r", Role.CUSTOMER, "k" + secrets.token_hex(4),
                                             "s", T0)
            for name, days in {"8 days": 8, "6 days": 6}.items():
                record = _record(acc.id, name, T0 - days * DAY, await store.next_call_record_id())
                assert await store.save_call_record(record, None)
            await purge_history(store, T0, retention)
            records, _ = await store.list_call_records(acc.id, 0, 2**62, "", 100, 0)
            return [r.call_id for r in records]
        finally:
            await store.close()

    assert asyncio.run(run()) == ["6 days"]

    async def refs() -> tuple[CallRef | None, CallRef | None]:
        """A reference 25 hours old goes with a retention of one day, one of 23 hours stays."""
        store = await open_store(fresh_store_url)
        try:
            older = str(int(snowflake_floor(T0 - 25 * 3600)) + 1)
            younger = str(int(snowflake_floor(T0 - 23 * 3600)) + 1)
            for call_id in (older, younger):
                store.record_call(_ref(call_id, T0))
            await store.close()  # writes the pending references
            store = await open_store(fresh_store_url)
            await purge_history(store, T0, retention)
            return await store.get_call(older), await store.get_call(younger)
        finally:
            await store.close()

    gone, kept = asyncio.run(refs())
    assert gone is None and kept is not None
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("PNS_RETENTION_RECORDS_DAYS", bad)
        with pytest.raises(StoreError, match="PNS_RETENTION_RECORDS_DAYS"):
            Retention.from_env()
