"""Queries written once for both SQL stores, and the records-side methods built on them.

A query is one text with ``:name`` parameters (``Sql``): SQLite binds those from a dict as they
are, and asyncpg wants ``$1, $2, …`` with positional values, so ``Sql`` converts the text once,
at import, and orders the values for each call. Where the dialects differ in one phrase, the
text has a slot each fills: ``{skip_locked}`` is ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (its
sweeps and purges run in every process at once and must not wait on each other's rows) and
nothing on SQLite (one writer thread: nobody else holds a row).

``SqlCommon`` holds the methods whose SQL is the same in both stores (accounts, the block list
and cool-offs, the outbox, call records, the replay guard, worker ids, operators and their
audit, the bindings' reads off the query's path) over six primitives each store implements on
its driver: so each of those queries, and the code around it, is written
once, and a store file keeps only what really differs (DDL, transactions, drivers, the binding
index with its locks).
"""

from __future__ import annotations

import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..ids import WORKER_IDS, snowflake_floor
from ..model import (
    Account,
    AccountChanges,
    AuditEntry,
    Binding,
    CallRecord,
    EventState,
    Operator,
    OperatorRole,
    OutboxEvent,
    Role,
    VirtualNumber,
    binding_from_row,
)
from .base import Retention, StoreError

if TYPE_CHECKING:
    from ..vault import Keyring
from .rows import (
    ACCOUNT_COLUMNS,
    EVENT_COLUMNS,
    RECORD_COLUMNS,
    account_from_row,
    changes_as_columns,
    event_from_row,
    seal_secret_columns,
    secret_context,
)

# ``:name``, but not a PostgreSQL cast (``::bigint``) nor a colon inside a word.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_SKIP_LOCKED = "{skip_locked}"
# ``key {in_once} SELECT ... {end_once}``: the rows a subquery names, evaluated once. PostgreSQL
# may run ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` more than once in an UPDATE or a
# DELETE and so touch more than n rows; ``= ANY(ARRAY(...))`` runs it once.
_ONCE = {"sqlite": ("IN (", ")"), "pg": ("= ANY(ARRAY(", "))")}
# ``{texts:name}`` / ``{ints:name}``: a list parameter as a table of one column ``item``, to
# use as ``x IN {texts:xs}`` or ``SELECT l.item FROM {texts:xs} AS l``. SQLite reads it from
# JSON text, PostgreSQL from an array.
_LIST = re.compile(r"\{(texts|ints):([A-Za-z_]\w*)\}")
_PG_ARRAY = {"texts": "text[]", "ints": "bigint[]"}


class Sql:
    """One query in both dialects."""

    __slots__ = ("lists", "names", "pg", "sqlite")

    def __init__(self, text: str):
        self.lists = frozenset(match.group(2) for match in _LIST.finditer(text))
        self.sqlite = _LIST.sub(lambda m: f"(SELECT value AS item FROM json_each(:{m.group(2)}))",
                                _fill(text, "", _ONCE["sqlite"]))
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        pg = _LIST.sub(lambda m: f"(SELECT unnest(CAST(:{m.group(2)} AS "
                                 f"{_PG_ARRAY[m.group(1)]})) AS item)",
                       _fill(text, "FOR UPDATE SKIP LOCKED", _ONCE["pg"]))
        self.pg = _PARAM.sub(number, pg)
        self.names = tuple(names)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The values in the order of PostgreSQL's ``$n`` (lists as lists: asyncpg sends
        arrays)."""
        return [list(params[name]) if name in self.lists else params[name]
                for name in self.names]

    def sqlite_params(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """The values as ``sqlite3`` binds them (lists as JSON text)."""
        if not self.lists:
            return params
        return {name: json.dumps(list(value)) if name in self.lists else value
                for name, value in params.items()}


def _fill(text: str, skip_locked: str, once: tuple[str, str]) -> str:
    return (text.replace(_SKIP_LOCKED, skip_locked).replace("{in_once} ", once[0])
            .replace(" {end_once}", once[1]))


@functools.lru_cache(maxsize=64)
def _update_account(columns: tuple[str, ...]) -> Sql:
    """The update of these account columns (one query per set of columns changed)."""
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    return Sql(f"UPDATE accounts SET {assignments} WHERE access_key = :access_key "
               f"RETURNING {ACCOUNT_COLUMNS}")


def _placeholders(columns: str) -> str:
    return ", ".join(f":{column.strip()}" for column in columns.split(","))


_OPERATOR_COLUMNS = "name, role, token_hash, disabled, created_at, session_generation"

INSERT_EVENT = Sql(f"INSERT INTO outbox ({EVENT_COLUMNS}) VALUES ({_placeholders(EVENT_COLUMNS)})")
INSERT_RECORD = Sql(
    f"INSERT INTO call_records ({RECORD_COLUMNS}) VALUES ({_placeholders(RECORD_COLUMNS)}) "
    "ON CONFLICT (call_id) DO NOTHING RETURNING 1")
CLAIM_SIGNATURE = Sql(
    "INSERT INTO signatures (key, expires_at) VALUES (:key, :expires_at) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE signatures.expires_at <= :now RETURNING 1")
_RELEASE_WORKER_ID = Sql(
    "UPDATE id_workers SET lease_until = 0 WHERE id = :id AND holder = :holder")
_FINISH_EVENT = Sql(
    "UPDATE outbox SET state = :state, attempts = :attempts, "
    "next_attempt_at = :next_attempt_at, last_error = :error, lease_until = 0, "
    "lease_owner = '' WHERE event_id = :event_id AND lease_owner = :holder "
    "AND state = 'pending'")
_RELEASE_EVENT = Sql(
    "UPDATE outbox SET lease_until = 0, lease_owner = '' "
    "WHERE event_id = :event_id AND lease_owner = :holder AND state = 'pending'")
# The lease is left alone: an attempt under way finishes first.
_REQUEUE_EVENT = Sql(
    "UPDATE outbox SET state = 'pending', next_attempt_at = :now, created_at = :now "
    f"WHERE event_id = :event_id AND state <> 'delivered' RETURNING {EVENT_COLUMNS}")
_OUTBOX_BACKLOG = Sql(
    "SELECT count(*), min(created_at) FROM outbox WHERE state = 'pending'")
_OUTBOX_COUNTS = Sql("SELECT state, count(*) FROM outbox GROUP BY state")
_GET_CALL_RECORD = Sql(
    f"SELECT {RECORD_COLUMNS} FROM call_records "
    "WHERE account_id = :account_id AND call_id = :call_id")
_CREATE_OPERATOR = Sql(
    f"INSERT INTO operators ({_OPERATOR_COLUMNS}) VALUES ({_placeholders(_OPERATOR_COLUMNS)}) "
    "ON CONFLICT (name) DO NOTHING RETURNING 1")
_OPERATOR_BY = {
    column: Sql(f"SELECT {_OPERATOR_COLUMNS} FROM operators WHERE {column} = :value")
    for column in ("name", "token_hash")
}
_LIST_OPERATORS = Sql(f"SELECT {_OPERATOR_COLUMNS} FROM operators ORDER BY name")
_SET_OPERATOR_DISABLED = Sql("UPDATE operators SET disabled = :disabled WHERE name = :name")
_END_OPERATOR_SESSIONS = Sql(
    "UPDATE operators SET session_generation = session_generation + 1 WHERE name = :name")
_ADD_AUDIT = Sql(
    "INSERT INTO operator_audit (at, operator, action, target) "
    "VALUES (:at, :operator, :action, :target)")
_LIST_AUDIT = Sql(
    "SELECT at, operator, action, target, id FROM operator_audit ORDER BY id DESC LIMIT :limit")
_PURGE_RECORDS = Sql(
    "DELETE FROM call_records WHERE id {in_once} SELECT id FROM call_records "
    "WHERE reported_at < :before LIMIT :limit {skip_locked} {end_once}")
_PURGE_EVENTS = Sql(
    "DELETE FROM outbox WHERE event_id {in_once} SELECT event_id FROM outbox "
    "WHERE state <> 'pending' AND next_attempt_at < :before LIMIT :limit {skip_locked} "
    "{end_once}")
# callIds sort by time: the primary key finds the old ones.
_PURGE_CALLS = Sql(
    "DELETE FROM calls WHERE call_id {in_once} SELECT call_id FROM calls "
    "WHERE call_id < :before LIMIT :limit {skip_locked} {end_once}")
_RENEW_WORKER_ID = Sql(
    "UPDATE id_workers SET lease_until = :until WHERE id = :id AND holder = :holder "
    "AND lease_until > :now RETURNING id")
_TAKE_WORKER_ID = Sql(
    "UPDATE id_workers SET holder = :holder, lease_until = :until WHERE id = ("
    " SELECT id FROM id_workers WHERE lease_until <= :now AND id < :ids "
    " ORDER BY lease_until, id LIMIT 1 {skip_locked}) RETURNING id")
_RECORDS_WHERE = (
    "account_id = :account_id AND start_at >= :start_from AND start_at < :start_to")
_LIST_RECORDS = {
    by_bind: (
        Sql(f"SELECT {RECORD_COLUMNS} FROM call_records WHERE {where} "
            "ORDER BY start_at, id LIMIT :limit OFFSET :offset"),
        Sql(f"SELECT count(*) FROM call_records WHERE {where}"),
    )
    for by_bind, where in ((False, _RECORDS_WHERE),
                           (True, _RECORDS_WHERE + " AND bind_id = :bind_id"))
}
_CREATE_ACCOUNT = Sql(
    "INSERT INTO accounts (name, access_key, access_secret, role, created_at) "
    f"VALUES (:name, :access_key, :access_secret, :role, :now) RETURNING {ACCOUNT_COLUMNS}")
_ACCOUNT_BY = {
    column: Sql(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {column} = :value")
    for column in ("access_key", "id")
}
_LIST_ACCOUNTS = Sql(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY id")
# SQLite reads ``INSERT ... SELECT ... ON CONFLICT`` only with a WHERE before the ON; the
# casts tell PostgreSQL the parameters' types (in a SELECT list it would guess text).
_ADD_BLOCKED = Sql(
    "INSERT INTO blocked_callers (account_id, number, created_at) "
    "SELECT DISTINCT CAST(:account_id AS bigint), l.item, CAST(:now AS bigint) "
    "FROM {texts:numbers} AS l "
    "WHERE true ON CONFLICT DO NOTHING")
_REMOVE_BLOCKED = Sql(
    "DELETE FROM blocked_callers WHERE account_id = :account_id AND number IN {texts:numbers}")
_LIST_BLOCKED = (
    Sql("SELECT number FROM blocked_callers WHERE account_id = :account_id ORDER BY number "
        "LIMIT :limit OFFSET :offset"),
    Sql("SELECT count(*) FROM blocked_callers WHERE account_id = :account_id"),
)
_COOL_OFFS = Sql(
    "SELECT x, max(until) FROM cool_offs WHERE number IN {texts:parties} AND until > :now "
    "GROUP BY x")
_NUMBER_OWNERS = Sql("SELECT x, account_id FROM numbers WHERE x IN {texts:xs}")
_EVENTS_FOR_CALLS = Sql(
    f"SELECT {EVENT_COLUMNS} FROM outbox WHERE call_id <> '' AND call_id IN {{texts:call_ids}} "
    "ORDER BY created_at")
# One leaser per event across processes: PostgreSQL skips rows another leaser holds, and a row
# leased meanwhile fails the re-check of ``lease_until``; SQLite has one writer.
_LEASE_EVENTS = Sql(
    "UPDATE outbox SET lease_until = :lease, lease_owner = :holder WHERE event_id {in_once} "
    "SELECT event_id FROM outbox WHERE state = 'pending' "
    " AND next_attempt_at <= :now AND lease_until <= :now "
    " AND account_id NOT IN {ints:skip} "
    " ORDER BY next_attempt_at LIMIT :limit {skip_locked} {end_once} "
    "AND state = 'pending' AND lease_until <= :now "
    f"RETURNING {EVENT_COLUMNS}")
# A binding is active while it never expires or expires after ``:now``; written so SQLite's
# planner does not consider the expiry index (the OR form costs it 4x on the hot path).
ACTIVE = "NOT (b.expire_at BETWEEN 1 AND :now)"
BINDING_COLUMNS = (
    "b.bind_id, b.account_id, b.x, b.a, b.b, b.extension, b.bind_type, b.customer_bind_id, "
    "b.business_id, b.flag, b.expire_second, b.expire_at, b.created_at, b.attrs"
)
_BINDING_BY_ID = Sql(
    f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.bind_id = :bind_id AND {ACTIVE}")
# An empty customerBindId is no key; the literal condition also lets a plan use the partial
# unique index.
_BINDING_BY_CUSTOMER_ID = Sql(
    f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.account_id = :account_id "
    f"AND b.customer_bind_id = :cbid AND b.customer_bind_id <> '' AND {ACTIVE}")
_LIST_BINDINGS = (
    Sql(f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.account_id = :account_id "
        f"AND {ACTIVE} ORDER BY b.seq LIMIT :limit OFFSET :offset"),
    Sql(f"SELECT count(*) FROM bindings b WHERE b.account_id = :account_id AND {ACTIVE}"),
)
_BINDINGS_PAGE = {
    on_x: Sql(
        f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.account_id = :account_id "
        f"AND {ACTIVE} AND b.seq > coalesce((SELECT seq FROM bindings WHERE bind_id = :after), "
        "CASE WHEN :after = '' THEN 0 END)" + (" AND b.x = :x" if on_x else "")
        + " ORDER BY b.seq LIMIT :limit")
    for on_x in (False, True)
}
_USED_EXTENSIONS = Sql(
    f"SELECT b.extension FROM bindings b WHERE b.x = :x AND b.extension <> '' AND {ACTIVE}")
_LIST_EVENTS: dict[tuple[bool, bool], Sql] = {
    (by_account, by_state): Sql(
        f"SELECT {EVENT_COLUMNS} FROM outbox WHERE "
        + " AND ".join(["1 = 1"]
                       + (["account_id = :account_id"] if by_account else [])
                       + (["state = :state"] if by_state else []))
        + " ORDER BY created_at LIMIT :limit")
    for by_account in (False, True) for by_state in (False, True)
}


def event_params(event: OutboxEvent) -> dict[str, Any]:
    """An event's columns as ``INSERT_EVENT`` binds them."""
    return {
        "event_id": event.event_id, "account_id": event.account_id, "kind": event.kind,
        "body": event.body, "created_at": event.created_at,
        "next_attempt_at": event.next_attempt_at, "attempts": event.attempts,
        "state": event.state.value, "last_error": event.last_error, "call_id": event.call_id,
    }


def record_params(record: CallRecord) -> dict[str, Any]:
    """A call record's columns as ``INSERT_RECORD`` binds them."""
    return {field: getattr(record, field) for field in record.__struct_fields__}


def _operator_from_row(row: Sequence[Any]) -> Operator:
    return Operator(name=row[0], role=OperatorRole(row[1]), token_hash=row[2],
                    disabled=bool(row[3]), created_at=row[4], session_generation=row[5])


class SqlCommon(ABC):
    """The methods both SQL stores share, over six primitives of their own."""

    _keyring: Keyring
    answers_in_process = False

    def find_by_party_now(self, x: str, number: str, now: int) -> Binding | None:
        raise StoreError(f"{type(self).__name__} answers reads only by waiting")

    def get_number_now(self, x: str) -> VirtualNumber | None:
        raise StoreError(f"{type(self).__name__} answers reads only by waiting")

    @abstractmethod
    async def _write(self, query: Sql, params: Mapping[str, Any]) -> int:
        """Run a change in a write transaction; returns the rows it changed."""

    @abstractmethod
    async def _write_returning(self, query: Sql,
                               params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run a change with ``RETURNING`` in a write transaction; returns its rows."""

    @abstractmethod
    async def _fetch(self, query: Sql, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Read rows (off the write path: never waits for another writer)."""

    @abstractmethod
    async def _fetch_snapshot(self, queries: Sequence[tuple[Sql, Mapping[str, Any]]]
                              ) -> list[list[Sequence[Any]]]:
        """Read several queries in one snapshot (a page and its total agree)."""

    @abstractmethod
    async def _write_capped(self, query: Sql, count: Sql, params: Mapping[str, Any],
                            limit: int) -> int | None:
        """Run a change, then ``count`` (one number), in one write transaction that no other
        ``_write_capped`` of the same ``params["account_id"]`` interleaves; the rows changed,
        or None (rolled back) when the count is above ``limit``."""

    async def _fetch_one(self, query: Sql, params: Mapping[str, Any]) -> Sequence[Any] | None:
        rows = await self._fetch(query, params)
        return rows[0] if rows else None

    # --- accounts (secrets sealed at rest: pns.vault) ---------------------------------------
    async def create_account(
        self, name: str, role: Role, access_key: str, access_secret: str, now: int
    ) -> Account:
        rows = await self._write_returning(_CREATE_ACCOUNT, {
            "name": name, "access_key": access_key, "role": role.value, "now": now,
            "access_secret": self._keyring.seal(
                access_secret, secret_context("access_secret", access_key)),
        })
        return account_from_row(rows[0], self._keyring)

    async def get_account(self, access_key: str) -> Account | None:
        row = await self._fetch_one(_ACCOUNT_BY["access_key"], {"value": access_key})
        return account_from_row(row, self._keyring) if row else None

    async def get_account_by_id(self, account_id: int) -> Account | None:
        row = await self._fetch_one(_ACCOUNT_BY["id"], {"value": account_id})
        return account_from_row(row, self._keyring) if row else None

    async def list_accounts(self) -> list[Account]:
        return [account_from_row(row, self._keyring)
                for row in await self._fetch(_LIST_ACCOUNTS, {})]

    async def update_account(self, access_key: str, changes: AccountChanges) -> Account | None:
        fields = seal_secret_columns(changes_as_columns(changes), self._keyring, access_key)
        if not fields:
            return await self.get_account(access_key)
        rows = await self._write_returning(_update_account(tuple(fields)),
                                           {**fields, "access_key": access_key})
        return account_from_row(rows[0], self._keyring) if rows else None

    # --- bindings: the reads that are not the query's (those have a store's own fast path) --
    async def get_binding(self, bind_id: str, now: int) -> Binding | None:
        row = await self._fetch_one(_BINDING_BY_ID, {"bind_id": bind_id, "now": now})
        return binding_from_row(row) if row else None

    async def find_by_customer_bind_id(
        self, account_id: int, customer_bind_id: str, now: int
    ) -> Binding | None:
        row = await self._fetch_one(_BINDING_BY_CUSTOMER_ID, {
            "account_id": account_id, "cbid": customer_bind_id, "now": now})
        return binding_from_row(row) if row else None

    async def list_bindings(
        self, account_id: int, limit: int, offset: int, now: int
    ) -> tuple[list[Binding], int]:
        page, count = _LIST_BINDINGS
        params = {"account_id": account_id, "now": now, "limit": limit, "offset": offset}
        rows, total = await self._fetch_snapshot([(page, params), (count, params)])
        return [binding_from_row(row) for row in rows], int(total[0][0])

    async def bindings_page(self, account_id: int, x: str, after_bind_id: str, limit: int,
                            now: int) -> list[Binding]:
        rows = await self._fetch(_BINDINGS_PAGE[bool(x)], {
            "account_id": account_id, "now": now, "limit": limit, "after": after_bind_id,
            "x": x})
        return [binding_from_row(row) for row in rows]

    async def used_extensions(self, x: str, now: int) -> set[str]:
        return {str(row[0]) for row in await self._fetch(_USED_EXTENSIONS, {"x": x, "now": now})}

    # --- the block list (lifecycle.md), by account -----------------------------------------
    async def add_blocked(self, account_id: int, numbers: Sequence[str], now: int,
                          limit: int) -> int | None:
        return await self._write_capped(
            _ADD_BLOCKED, _LIST_BLOCKED[1],
            {"account_id": account_id, "numbers": numbers, "now": now}, limit)

    async def remove_blocked(self, account_id: int, numbers: Sequence[str]) -> int:
        return await self._write(_REMOVE_BLOCKED, {"account_id": account_id, "numbers": numbers})

    async def list_blocked(self, account_id: int, limit: int, offset: int
                           ) -> tuple[list[str], int]:
        page, count = _LIST_BLOCKED
        params = {"account_id": account_id, "limit": limit, "offset": offset}
        rows, total = await self._fetch_snapshot([(page, params), (count, params)])
        return [str(row[0]) for row in rows], int(total[0][0])

    async def cool_offs(self, parties: Sequence[str], now: int) -> dict[str, int]:
        rows = await self._fetch(_COOL_OFFS, {"parties": parties, "now": now})
        return {str(row[0]): int(row[1]) for row in rows}

    async def number_owners(self, xs: Sequence[str]) -> dict[str, int]:
        rows = await self._fetch(_NUMBER_OWNERS, {"xs": xs})
        return {str(row[0]): int(row[1]) for row in rows}

    # --- the replay guard and worker ids ------------------------------------------------------
    async def claim_signature(self, key: str, expires_at: int, now: int) -> bool:
        claimed = await self._write_returning(
            CLAIM_SIGNATURE, {"key": key, "expires_at": expires_at, "now": now})
        return bool(claimed)

    async def lease_worker_id(self, holder: str, now: int, lease_seconds: int,
                              current: int | None = None) -> int | None:
        params = {"holder": holder, "until": now + lease_seconds, "now": now, "id": current,
                  "ids": WORKER_IDS}
        if current is not None:
            renewed = await self._write_returning(_RENEW_WORKER_ID, params)
            if renewed:
                return int(renewed[0][0])
        taken = await self._write_returning(_TAKE_WORKER_ID, params)
        return int(taken[0][0]) if taken else None

    async def release_worker_id(self, holder: str, worker_id: int) -> None:
        await self._write(_RELEASE_WORKER_ID, {"id": worker_id, "holder": holder})

    # --- call records and the outbox -------------------------------------------------------
    async def get_call_record(self, account_id: int, call_id: str) -> CallRecord | None:
        row = await self._fetch_one(_GET_CALL_RECORD,
                                    {"account_id": account_id, "call_id": call_id})
        return CallRecord(*row) if row else None

    async def list_call_records(
        self, account_id: int, start_from: int, start_to: int, bind_id: str, limit: int,
        offset: int,
    ) -> tuple[list[CallRecord], int]:
        page, count = _LIST_RECORDS[bool(bind_id)]
        params = {"account_id": account_id, "start_from": start_from, "start_to": start_to,
                  "bind_id": bind_id, "limit": limit, "offset": offset}
        rows, total = await self._fetch_snapshot([(page, params), (count, params)])
        return [CallRecord(*row) for row in rows], int(total[0][0])

    async def enqueue_event(self, event: OutboxEvent) -> None:
        await self._write(INSERT_EVENT, event_params(event))

    async def lease_events(self, now: int, limit: int, lease_seconds: int, *, holder: str,
                           skip_accounts: Sequence[int] = ()) -> list[OutboxEvent]:
        rows = await self._write_returning(_LEASE_EVENTS, {
            "lease": now + lease_seconds, "holder": holder, "now": now, "limit": limit,
            "skip": skip_accounts})
        events = [event_from_row(row) for row in rows]
        events.sort(key=lambda event: (event.next_attempt_at, event.created_at))
        return events

    async def events_for_calls(self, call_ids: Sequence[str]) -> list[OutboxEvent]:
        if not call_ids:
            return []
        return [event_from_row(row)
                for row in await self._fetch(_EVENTS_FOR_CALLS, {"call_ids": call_ids})]

    async def finish_event(
        self, event_id: str, state: EventState, attempts: int, next_attempt_at: int, error: str,
        now: int, *, holder: str,
    ) -> bool:
        changed = await self._write(_FINISH_EVENT, {
            "state": state.value, "attempts": attempts, "next_attempt_at": next_attempt_at,
            "error": error[:500], "event_id": event_id, "holder": holder,
        })
        return changed > 0

    async def release_event(self, event_id: str, *, holder: str) -> None:
        await self._write(_RELEASE_EVENT, {"event_id": event_id, "holder": holder})

    async def requeue_event(self, event_id: str, now: int) -> OutboxEvent | None:
        rows = await self._write_returning(_REQUEUE_EVENT, {"event_id": event_id, "now": now})
        return event_from_row(rows[0]) if rows else None

    async def list_events(self, account_id: int | None, state: EventState | None,
                          limit: int) -> list[OutboxEvent]:
        query = _LIST_EVENTS[account_id is not None, state is not None]
        params: dict[str, Any] = {"limit": limit}
        if account_id is not None:
            params["account_id"] = account_id
        if state is not None:
            params["state"] = state.value
        return [event_from_row(row) for row in await self._fetch(query, params)]

    async def outbox_backlog(self, now: int) -> tuple[int, int]:
        row = await self._fetch_one(_OUTBOX_BACKLOG, {})
        assert row is not None
        count, oldest = row[0], row[1]
        return int(count), (now - int(oldest)) if oldest is not None else 0

    async def outbox_counts(self) -> dict[EventState, int]:
        counts = dict.fromkeys(EventState, 0)
        counts.update({EventState(row[0]): int(row[1])
                       for row in await self._fetch(_OUTBOX_COUNTS, {})})
        return counts

    async def purge_history(self, now: int, retention: Retention, limit: int) -> int:
        """Safe in every process at once (``{skip_locked}`` on PostgreSQL)."""
        records = await self._write(
            _PURGE_RECORDS, {"before": now - retention.call_records, "limit": limit})
        events = await self._write(
            _PURGE_EVENTS, {"before": now - retention.events, "limit": limit})
        calls = await self._write(
            _PURGE_CALLS, {"before": snowflake_floor(now - retention.call_refs), "limit": limit})
        return records + events + calls

    # --- operators of the admin API, and their audit trail ------------------------------------
    async def create_operator(self, operator: Operator) -> bool:
        created = await self._write_returning(_CREATE_OPERATOR, {
            "name": operator.name, "role": operator.role.value,
            "token_hash": operator.token_hash, "disabled": operator.disabled,
            "created_at": operator.created_at,
            "session_generation": operator.session_generation,
        })
        return bool(created)

    async def get_operator(self, name: str) -> Operator | None:
        row = await self._fetch_one(_OPERATOR_BY["name"], {"value": name})
        return _operator_from_row(row) if row else None

    async def get_operator_by_token_hash(self, token_hash: str) -> Operator | None:
        row = await self._fetch_one(_OPERATOR_BY["token_hash"], {"value": token_hash})
        return _operator_from_row(row) if row else None

    async def list_operators(self) -> list[Operator]:
        return [_operator_from_row(row) for row in await self._fetch(_LIST_OPERATORS, {})]

    async def set_operator_disabled(self, name: str, disabled: bool) -> bool:
        changed = await self._write(_SET_OPERATOR_DISABLED,
                                    {"name": name, "disabled": disabled})
        return changed > 0

    async def end_operator_sessions(self, name: str) -> bool:
        return await self._write(_END_OPERATOR_SESSIONS, {"name": name}) > 0

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._write(_ADD_AUDIT, {"at": entry.at, "operator": entry.operator,
                                       "action": entry.action, "target": entry.target})

    async def list_audit(self, limit: int) -> list[AuditEntry]:
        return [AuditEntry(*row) for row in await self._fetch(_LIST_AUDIT, {"limit": limit})]
