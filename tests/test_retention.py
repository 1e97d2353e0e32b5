"""Call references are forgotten after CALL_RETENTION, by the sweeper, on every store."""

from __future__ import annotations

import asyncio
import time

from pns.ids import new_snowflake, snowflake_floor
from pns.model import CallRef
from pns.store import open_store
from pns.store.base import CALL_RETENTION


def _ref(call_id: str, now: int) -> CallRef:
    return CallRef(call_id=call_id, bind_id="b" * 32, account_id=1, x="85230000000",
                   caller="85211111111", callee="85222222222", customer_bind_id="",
                   business_id="", bind_type=0, queried_at=now)


def test_sweep_forgets_old_call_references(store_url: str) -> None:
    now = int(time.time())
    old = str(int(snowflake_floor(now - CALL_RETENTION - 60)) + 1)
    fresh = new_snowflake()
    assert old < snowflake_floor(now - CALL_RETENTION) < fresh

    async def run() -> tuple[CallRef | None, CallRef | None]:
        store = await open_store(store_url)
        await store.record_call(_ref(old, now))
        await store.record_call(_ref(fresh, now))
        await store.close()  # writes the pending references
        store = await open_store(store_url)
        try:
            await store.sweep(now, 1000)
            return await store.get_call(old), await store.get_call(fresh)
        finally:
            await store.close()

    gone, kept = asyncio.run(run())
    assert gone is None
    assert kept is not None and kept.call_id == fresh
