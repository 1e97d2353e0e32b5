"""The binding ledger on PostgreSQL: the account's side of bindings kept in a Redis index.

One row per binding: its bindId, account, X, customerBindId, the binding itself (so a listing
needs no trip to the index), its expiry, and ``lease_until`` (epoch ms), which says the row's
state: 0 confirmed; > 0 reserved until then (a bind in flight); < 0 being unbound (a deadline
of ``-lease_until``). I3 is the partial unique index on (account, customerBindId).

The table belongs to this module, not to the SQL store's schema versions: it is created if
missing (under an advisory lock, so processes starting together create it once), and a
PostgreSQL store used without ``--bindings`` never has it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ..model import Binding
from .base import StoreError
from .postgres import PoolOptions
from .redis_index import decode_binding, encode_binding
from .rows import redact

_DDL_LOCK = 0x706E736C65646700  # "pnsledg"
_DDL = """
CREATE TABLE IF NOT EXISTS pns_binding_ledger (
    seq BIGSERIAL PRIMARY KEY,
    bind_id TEXT NOT NULL UNIQUE,
    account_id BIGINT NOT NULL,
    x TEXT NOT NULL,
    customer_bind_id TEXT NOT NULL,
    body TEXT NOT NULL,
    expire_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS pns_binding_ledger_cbid
    ON pns_binding_ledger (account_id, customer_bind_id) WHERE customer_bind_id <> '';
CREATE INDEX IF NOT EXISTS pns_binding_ledger_account ON pns_binding_ledger (account_id, seq);
CREATE INDEX IF NOT EXISTS pns_binding_ledger_expiry
    ON pns_binding_ledger (expire_at) WHERE expire_at > 0;
CREATE INDEX IF NOT EXISTS pns_binding_ledger_leases
    ON pns_binding_ledger (lease_until) WHERE lease_until <> 0;
"""
_ACTIVE = "lease_until = 0 AND (expire_at = 0 OR expire_at > $2)"


class PgBindingLedger:
    """``BindingLedger`` on PostgreSQL."""

    def __init__(self, pool: Any, lazy_pool: Any):
        self._pool = pool
        self._lazy_pool = lazy_pool  # sessions with synchronous_commit = off

    @classmethod
    async def open(cls, url: str) -> PgBindingLedger:
        options = PoolOptions(url)
        try:
            pool = await asyncpg.create_pool(
                options.dsn, min_size=min(options.pool_min, 1), max_size=options.pool_max,
                timeout=options.connect_timeout)
            lazy_pool = await asyncpg.create_pool(
                options.dsn, min_size=min(options.pool_min, 1), max_size=options.pool_max,
                timeout=options.connect_timeout,
                server_settings={"synchronous_commit": "off"})
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                await conn.execute(_DDL)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot open the binding ledger on {redact(url)}: {exc}") from exc
        return cls(pool, lazy_pool)

    async def close(self) -> None:
        await self._pool.close()
        await self._lazy_pool.close()

    async def reserve(self, binding: Binding, now: int, lease_until_ms: int
                      ) -> tuple[Binding, int] | None:
        """Claim the row; None, or (the row holding the customerBindId, its lease_until)."""
        async with self._pool.acquire() as conn:
            seq = await conn.fetchval(
                "INSERT INTO pns_binding_ledger (bind_id, account_id, x, customer_bind_id, body, "
                "expire_at, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT DO NOTHING RETURNING seq",
                binding.bind_id, binding.account_id, binding.x, binding.customer_bind_id,
                encode_binding(binding), binding.expire_at, lease_until_ms)
            if seq is not None:
                return None
            if binding.customer_bind_id:
                row = await conn.fetchrow(
                    "SELECT body, lease_until FROM pns_binding_ledger WHERE account_id = $1 "
                    "AND customer_bind_id = $2 AND customer_bind_id <> ''",
                    binding.account_id, binding.customer_bind_id)
                if row is not None and decode_binding(row[0]).bind_id != binding.bind_id:
                    return decode_binding(row[0]), int(row[1])
            raise StoreError(f"bindId {binding.bind_id} exists")

    async def replace(self, old: Binding, new: Binding,
                      apply: Callable[[], Awaitable[bool]]) -> bool:
        """Change a confirmed row from ``old`` to ``new`` around ``apply()`` (the index's
        change), under the row's lock: a sweeper or unbind holding the row goes first (then
        this finds the row gone: False), and one waiting for it sees the new expiry. Nothing
        is written when the row is not ``old``'s, or ``apply`` refuses or raises."""
        async with self._pool.acquire() as conn, conn.transaction():
            body = await conn.fetchval(
                "SELECT body FROM pns_binding_ledger WHERE bind_id = $1 AND lease_until = 0 "
                "FOR UPDATE", old.bind_id)
            if body is None or decode_binding(body) != old or not await apply():
                return False
            await conn.execute(
                "UPDATE pns_binding_ledger SET body = $2, expire_at = $3 WHERE bind_id = $1",
                old.bind_id, encode_binding(new), new.expire_at)
        return True

    async def set_lease(self, bind_id: str, lease_until: int) -> None:
        """0 confirms a reservation; a negative deadline marks a binding being unbound.

        A confirmation is committed without waiting for the WAL flush (``synchronous_commit =
        off``): lost in a crash of PostgreSQL, it leaves the row reserved with its deadline
        passed, and settling it finds the binding in the index and confirms it again, so a
        bind costs one fsync (the reservation's), not two. An unbind's mark is durable: lost,
        it would leave a confirmed row for a binding the index no longer has."""
        pool = self._lazy_pool if lease_until == 0 else self._pool
        await pool.execute("UPDATE pns_binding_ledger SET lease_until = $2 WHERE bind_id = $1",
                           bind_id, lease_until)

    async def update(self, binding: Binding) -> None:
        """The row's copy of a binding changed in the index (a capture, a group change)."""
        await self._pool.execute(
            "UPDATE pns_binding_ledger SET body = $2, expire_at = $3 WHERE bind_id = $1",
            binding.bind_id, encode_binding(binding), binding.expire_at)

    async def lease_of(self, bind_id: str) -> int | None:
        value = await self._pool.fetchval(
            "SELECT lease_until FROM pns_binding_ledger WHERE bind_id = $1", bind_id)
        return None if value is None else int(value)

    async def remove(self, bind_ids: Sequence[str]) -> None:
        await self._pool.execute(
            "DELETE FROM pns_binding_ledger WHERE bind_id = ANY($1::text[])", list(bind_ids))

    async def remove_x(self, x: str) -> None:
        await self._pool.execute("DELETE FROM pns_binding_ledger WHERE x = $1", x)

    async def find_by_customer_bind_id(self, account_id: int, customer_bind_id: str, now: int
                                       ) -> Binding | None:
        body = await self._pool.fetchval(
            f"SELECT body FROM pns_binding_ledger WHERE account_id = $1 AND {_ACTIVE} "
            "AND customer_bind_id = $3 AND customer_bind_id <> ''",
            account_id, now, customer_bind_id)
        return decode_binding(body) if body else None

    async def find_by_number(self, number: str, now: int, limit: int) -> list[Binding]:
        """Active bindings where ``number`` is X or a party, oldest first: an operator's search
        (a scan, as on the other stores: an index of parties here would cost every bind)."""
        if not number.isdigit():
            return []
        rows = await self._pool.fetch(
            f"SELECT body FROM pns_binding_ledger WHERE body LIKE $1 AND {_ACTIVE} "
            "ORDER BY seq LIMIT $3", f'%"{number}"%', now, limit)
        found = [decode_binding(row[0]) for row in rows]
        return [b for b in found if number in (b.x, b.a, b.b)]

    async def bindings_page(self, account_id: int, x: str, after_bind_id: str, limit: int,
                            now: int) -> list[Binding]:
        sql = (f"SELECT body FROM pns_binding_ledger WHERE account_id = $1 AND {_ACTIVE} "
               "AND seq > coalesce((SELECT seq FROM pns_binding_ledger WHERE bind_id = $3), "
               "CASE WHEN $3 = '' THEN 0 END)")
        params: list[Any] = [account_id, now, after_bind_id, limit]
        if x:
            sql += " AND x = $5"
            params.append(x)
        rows = await self._pool.fetch(sql + " ORDER BY seq LIMIT $4", *params)
        return [decode_binding(row[0]) for row in rows]

    async def list_bindings(self, account_id: int, limit: int, offset: int, now: int
                            ) -> tuple[list[Binding], int]:
        async with self._pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            rows = await conn.fetch(
                f"SELECT body FROM pns_binding_ledger WHERE account_id = $1 AND {_ACTIVE} "
                "ORDER BY seq LIMIT $3 OFFSET $4", account_id, now, limit, offset)
            total = await conn.fetchval(
                f"SELECT count(*) FROM pns_binding_ledger WHERE account_id = $1 AND {_ACTIVE}",
                account_id, now)
        return [decode_binding(row[0]) for row in rows], int(total)

    async def sweep_expired(self, now: int, limit: int, drop: Any) -> int:
        """Hand up to ``limit`` expired confirmed rows to ``drop(bindings)`` (which removes them
        from the index) and delete them; rows another sweeper holds are skipped."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT bind_id, body FROM pns_binding_ledger WHERE lease_until = 0 "
                "AND expire_at BETWEEN 1 AND $1 ORDER BY expire_at LIMIT $2 "
                "FOR UPDATE SKIP LOCKED", now, limit)
            if not rows:
                return 0
            await drop([decode_binding(row[1]) for row in rows])
            await conn.execute("DELETE FROM pns_binding_ledger WHERE bind_id = ANY($1::text[])",
                               [row[0] for row in rows])
        return len(rows)

    async def stale(self, now_ms: int, limit: int) -> list[tuple[Binding, int]]:
        """Reservations and unbinds whose deadline passed: (binding, lease_until)."""
        rows = await self._pool.fetch(
            "SELECT body, lease_until FROM pns_binding_ledger WHERE "
            "(lease_until > 0 AND lease_until < $1) OR (lease_until < 0 AND -lease_until < $1) "
            "LIMIT $2", now_ms, limit)
        return [(decode_binding(row[0]), int(row[1])) for row in rows]
