"""The Store conformance suite: every guarantee of ``pns.store.base``, on every store.

Store-level tests pass ``now`` explicitly, on a clock (``T0``) in the far future: servers of
other tests sweeping the same database with the real clock never see those rows expire, and
never lease those events. Tests that count everything in a store (sweeps, the outbox) get a store
of their own. Then THE RACE: many concurrent writers
binding and unbinding pairs from a small set of numbers, through one server and through two
server processes on one database; what the clients were told (code 0) must be exactly what the
store holds, and I1 must hold throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest

from pns.ids import new_bind_id
from pns.model import (
    BIND_TYPE_AXB,
    BIND_TYPE_AXYB,
    BIND_TYPE_EXTENSION,
    BIND_TYPE_NXEYB,
    BIND_TYPE_XYB,
    EXCLUSIVE,
    Account,
    AccountChanges,
    AuditEntry,
    Binding,
    CallRecord,
    CallRef,
    EventState,
    Operator,
    OperatorRole,
    OutboxEvent,
    PoolStats,
    PoolUsage,
    Role,
    VirtualNumber,
)
from pns.store import BindConflict, ConflictKind, Store, StoreError, open_store
from pns.store.base import Replayed, SignatureClaim

from .conftest import (
    ALL_STORES,
    PG_ADMIN_URL,
    SQLITE_INDEX,
    STORES,
    Server,
    Tenant,
    _pg_admin,
    composite_url,
    create_tenant,
    make_store_url,
    unique_hk,
)

T0 = 4_000_000_000  # 2096-10-02: the store-level tests' clock
PARTY, EXTENSION, CBID = ConflictKind.PARTY, ConflictKind.EXTENSION, ConflictKind.CUSTOMER_BIND_ID


# --- harness ----------------------------------------------------------------------------------
class SyncStore:
    """A store whose coroutine methods are called like plain functions (one event loop)."""

    def __init__(self, store: Store, runner: asyncio.Runner):
        self.store = store
        self._runner = runner

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)

        async def in_the_loop(*args: Any, **kwargs: Any) -> Any:
            """Plain methods too run in the loop: some start the store's tasks."""
            result = method(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(in_the_loop(*args, **kwargs))

        return call


@contextlib.contextmanager
def _sync_store(url: str) -> Iterator[SyncStore]:
    with asyncio.Runner() as runner:
        store = runner.run(open_store(url))
        try:
            yield SyncStore(store, runner)
        finally:
            runner.run(store.close())


@pytest.fixture(params=[*STORES, SQLITE_INDEX])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Every store, and the embedded one also through its in-memory read index."""
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
def s(store_url: str) -> Iterator[SyncStore]:
    """The run's shared store (every test uses its own accounts and numbers)."""
    with _sync_store(store_url) as st:
        yield st


@pytest.fixture(params=[*STORES, SQLITE_INDEX])
def fresh_store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A store of its own (a new database), for tests that count everything in it."""
    yield from _fresh_store_url(request, tmp_path)


@pytest.fixture(params=[*ALL_STORES, SQLITE_INDEX])
def fresh_any_store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """``fresh_store_url`` on every configuration, PostgreSQL + Redis Cluster too."""
    yield from _fresh_store_url(request, tmp_path)


def _fresh_store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param in ("sqlite", SQLITE_INDEX):
        index = "?index=on" if request.param == SQLITE_INDEX else ""
        yield f"sqlite:///{tmp_path}/fresh.db{index}"
        return
    name = f"pns_fresh_{os.getpid()}_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        if request.param == "pg+redis":
            url = composite_url(url, request.getfixturevalue("redis_cluster"))
        yield url
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fresh(fresh_any_store_url: str) -> Iterator[SyncStore]:
    with _sync_store(fresh_any_store_url) as st:
        yield st


def in_threads(url: str, n: int, work: Callable[[Store, int], Awaitable[Any]]) -> list[Any]:
    """Run ``work(store, i)`` in ``n`` threads at once, each with its own store (its own
    connections) and event loop; returns each result or the exception it raised."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        async def go() -> Any:
            store = await open_store(url)
            try:
                barrier.wait(timeout=30)
                return await work(store, i)
            finally:
                await store.close()

        try:
            results[i] = asyncio.run(go())
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def phone() -> str:
    return unique_hk("6")


def new_account(s: SyncStore, role: Role = Role.CUSTOMER) -> Account:
    account: Account = s.create_account(f"conformance-{secrets.token_hex(3)}", role,
                                        secrets.token_hex(8), secrets.token_urlsafe(16), T0)
    return account


def new_numbers(s: SyncStore, account: Account, n: int, country_code: int = 852,
                enabled: bool = True) -> list[str]:
    xs = [unique_hk("3") if country_code == 852 else f"{country_code}7700{unique_hk()[-6:]}"
          for _ in range(n)]
    assert s.add_numbers([VirtualNumber(x, account.id, country_code, enabled) for x in xs]) == []
    return xs


def binding(account: Account, x: str, a: str, b: str = "", *, ext: str = "", cbid: str = "",
            expire_at: int = 0, created_at: int = T0, flag: int = 0,
            business_id: str = "") -> Binding:
    return Binding(
        bind_id=new_bind_id(x), account_id=account.id, x=x, a=a, b=b, extension=ext,
        bind_type=BIND_TYPE_EXTENSION if ext else BIND_TYPE_AXB, customer_bind_id=cbid,
        business_id=business_id, flag=flag,
        expire_second=expire_at - created_at if expire_at else 0, expire_at=expire_at,
        created_at=created_at,
    )


def conflict(s: SyncStore, new: Binding, now: int = T0) -> ConflictKind:
    with pytest.raises(BindConflict) as info:
        s.insert_binding(new, now)
    return info.value.kind


def counters(s: SyncStore, account: Account, country_code: int = 852) -> dict[str, int]:
    """The allocation counter (``numbers.active``) of each enabled number, as free_numbers
    reports it for a party bound nowhere."""
    return {c.x: c.active_bindings
            for c in s.free_numbers(account.id, country_code, [phone()], T0, 1000)}


def active_counts(s: SyncStore, account: Account, now: int) -> dict[str, int]:
    return {u.x: u.active_bindings for u in s.list_numbers(account.id, now)}


def ids(bindings: list[Binding]) -> list[str]:
    return [b.bind_id for b in bindings]


# --- inserting and reading ----------------------------------------------------------------------
def test_insert_then_read_every_way(s: SyncStore) -> None:
    acc, other = new_account(s), new_account(s)
    x, x2 = new_numbers(s, acc, 2)
    a, b = phone(), phone()
    bd = binding(acc, x, a, b, cbid="order-1", expire_at=T0 + 100 * 365 * 86400,
                 flag=2**31 - 1, business_id="biz-\u4e2d")
    s.insert_binding(bd, T0)
    assert s.get_binding(bd.bind_id, T0) == bd
    assert s.find_by_party(x, a, T0) == bd
    assert s.find_by_party(x, b, T0) == bd
    assert s.find_by_party(x, phone(), T0) is None
    assert s.find_by_party(x2, a, T0) is None
    assert s.find_by_customer_bind_id(acc.id, "order-1", T0) == bd
    assert s.find_by_customer_bind_id(other.id, "order-1", T0) is None
    assert s.find_by_customer_bind_id(acc.id, "order-2", T0) is None
    assert s.list_bindings(acc.id, 10, 0, T0) == ([bd], 1)
    assert s.list_bindings(other.id, 10, 0, T0) == ([], 0)
    s.insert_binding(binding(acc, x2, phone(), phone()), T0)
    assert s.find_by_customer_bind_id(acc.id, "", T0) is None  # empty is no key
    assert s.find_by_extension(x2, "", T0) is None
    assert not s.has_extension_bindings(x, T0)
    assert s.used_extensions(x, T0) == set()
    assert s.get_binding("0" * 32, T0) is None


def test_every_field_of_a_binding_round_trips(fresh: SyncStore) -> None:
    """Fields beyond the columns (modes, lifecycle) come back from every read, on every
    configuration: one ``attrs`` column keeps them, so a new field needs no store change."""
    acc = new_account(fresh)
    x, y = new_numbers(fresh, acc, 2)
    a, b = phone(), phone()
    extras = {"y": y, "group_id": "g-1", "api_version": 1, "ext": "\u4e2d\"quoted\"",
              "customer_user_id": "u-9", "callee_dtmf": "1234", "callee_dtmf_delay": 3,
              "call_direction": 2, "max_duration": 60, "renew_on_call": 600,
              "audio_when_call_fail": "busy.wav"}
    bd = msgspec.structs.replace(binding(acc, x, a, b, cbid="attrs-1"), **extras)
    fresh.insert_binding(bd, T0)
    plain = binding(acc, x, phone(), phone())
    fresh.insert_binding(plain, T0)
    assert fresh.get_binding(bd.bind_id, T0) == bd
    assert fresh.find_by_party(x, b, T0) == bd
    assert fresh.find_by_customer_bind_id(acc.id, "attrs-1", T0) == bd
    assert fresh.list_bindings(acc.id, 10, 0, T0) == ([bd, plain], 2)
    assert fresh.find_by_party(x, plain.a, T0) == plain


def test_extension_bindings(s: SyncStore) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    a, c, d = phone(), phone(), phone()
    without_b = binding(acc, x, a, ext="123")
    with_b = binding(acc, x, c, d, ext="456")
    s.insert_binding(without_b, T0)
    s.insert_binding(with_b, T0)
    assert s.find_by_extension(x, "123", T0) == without_b
    assert s.find_by_extension(x, "456", T0) == with_b
    assert s.find_by_extension(x, "124", T0) is None
    assert s.find_by_party(x, a, T0) == without_b
    assert s.find_by_party(x, "", T0) is None  # no B is no party
    assert s.find_by_party(x, d, T0) == with_b
    assert s.has_extension_bindings(x, T0)
    assert s.used_extensions(x, T0) == {"123", "456"}


# --- the invariants -----------------------------------------------------------------------------
def test_i1_a_number_is_a_party_of_one_binding_per_x(s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    a, b, c = phone(), phone(), phone()
    s.insert_binding(binding(acc, x1, a, b), T0)
    assert conflict(s, binding(acc, x1, a, c)) is PARTY  # A again as A
    assert conflict(s, binding(acc, x1, c, a)) is PARTY  # A again as B
    assert conflict(s, binding(acc, x1, b, c)) is PARTY  # B as A
    assert conflict(s, binding(acc, x1, a, ext="100")) is PARTY  # an extension binding too
    assert conflict(s, binding(acc, x1, c, c)) is PARTY  # twice in one binding
    s.insert_binding(binding(acc, x2, a, b), T0)  # another X is another namespace
    s.insert_binding(binding(acc, x1, c, phone()), T0)  # c was left free by the failures


def test_i2_an_extension_is_used_once_per_x(s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    s.insert_binding(binding(acc, x1, phone(), ext="100"), T0)
    assert conflict(s, binding(acc, x1, phone(), phone(), ext="100")) is EXTENSION
    s.insert_binding(binding(acc, x2, phone(), ext="100"), T0)
    s.insert_binding(binding(acc, x1, phone(), ext="101"), T0)
    assert s.used_extensions(x1, T0) == {"100", "101"}


def test_i3_a_customer_bind_id_is_used_once_per_account(s: SyncStore) -> None:
    acc, other = new_account(s), new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    (y,) = new_numbers(s, other, 1)
    s.insert_binding(binding(acc, x1, phone(), phone(), cbid="order-7"), T0)
    assert conflict(s, binding(acc, x2, phone(), phone(), cbid="order-7")) is CBID
    assert conflict(s, binding(acc, x1, phone(), ext="200", cbid="order-7")) is CBID
    s.insert_binding(binding(other, y, phone(), phone(), cbid="order-7"), T0)
    for x in (x1, x2, x1):  # an empty customerBindId is no key
        s.insert_binding(binding(acc, x, phone(), phone()), T0)


def test_a_failed_insert_changes_nothing(s: SyncStore) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    a, b, c = phone(), phone(), phone()
    first = binding(acc, x, a, b, ext="300", cbid="k")
    s.insert_binding(first, T0)
    before = counters(s, acc)
    for loser in (binding(acc, x, c, b), binding(acc, x, c, phone(), ext="300"),
                  binding(acc, x, c, phone(), cbid="k")):
        conflict(s, loser)
        assert s.get_binding(loser.bind_id, T0) is None
        assert s.find_by_party(x, c, T0) is None
    assert counters(s, acc) == before == {x: 1}
    assert s.list_bindings(acc.id, 10, 0, T0) == ([first], 1)
    s.insert_binding(binding(acc, x, c, phone()), T0)


def test_a_repeated_bind_id_is_an_error_not_a_conflict(s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    first = binding(acc, x1, phone(), phone())
    s.insert_binding(first, T0)
    twin = Binding(**{**{f: getattr(first, f) for f in first.__struct_fields__},
                      "x": x2, "a": phone(), "b": phone()})
    with pytest.raises(StoreError):
        s.insert_binding(twin, T0)


# --- expiry -------------------------------------------------------------------------------------
def test_reads_never_return_an_expired_binding(s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    a, b, c, d, e = (phone() for _ in range(5))
    axb = binding(acc, x1, a, b, cbid="soon", expire_at=T0 + 10)
    ext = binding(acc, x2, e, ext="321", expire_at=T0 + 10)
    forever = binding(acc, x1, c, d)
    for bd in (axb, ext, forever):
        s.insert_binding(bd, T0)
    for now in (T0, T0 + 9):
        assert s.get_binding(axb.bind_id, now) == axb
        assert s.find_by_party(x1, a, now) == axb
        assert s.find_by_customer_bind_id(acc.id, "soon", now) == axb
        assert s.find_by_extension(x2, "321", now) == ext
        assert s.has_extension_bindings(x2, now)
        assert s.list_bindings(acc.id, 10, 0, now) == ([axb, ext, forever], 3)
        assert s.pool_stats(acc.id, 852, a, e, now) == PoolStats(2, 1, 1)
    now = T0 + 10  # expireAt is the first second it is no longer active
    assert s.get_binding(axb.bind_id, now) is None
    assert s.find_by_party(x1, a, now) is None
    assert s.find_by_party(x1, b, now) is None
    assert s.find_by_customer_bind_id(acc.id, "soon", now) is None
    assert s.find_by_extension(x2, "321", now) is None
    assert not s.has_extension_bindings(x2, now)
    assert s.used_extensions(x2, now) == set()
    assert s.list_bindings(acc.id, 10, 0, now) == ([forever], 1)
    assert s.pool_stats(acc.id, 852, a, e, now) == PoolStats(2, 0, 0)
    assert {cand.x for cand in s.free_numbers(acc.id, 852, [a, e], now, 10)} == {x1, x2}
    assert active_counts(s, acc, now) == {x1: 1, x2: 0}
    far = T0 + 10**9
    assert s.get_binding(forever.bind_id, far) == forever  # expireAt 0 is never
    assert s.find_by_party(x1, c, far) == forever


@pytest.mark.parametrize("key", ["party", "extension", "customerBindId", "all"])
def test_an_expired_binding_never_blocks_an_insert(s: SyncStore, key: str) -> None:
    acc = new_account(s)
    x, x2 = new_numbers(s, acc, 2)
    a, b = phone(), phone()
    old = binding(acc, x, a, b, ext="555", cbid="again", expire_at=T0 + 10)
    s.insert_binding(old, T0)
    now = T0 + 10
    new = {
        "party": binding(acc, x, a, phone(), created_at=now),
        "extension": binding(acc, x, phone(), ext="555", created_at=now),
        "customerBindId": binding(acc, x2, phone(), phone(), cbid="again", created_at=now),
        "all": binding(acc, x, a, b, ext="555", cbid="again", created_at=now),
    }[key]
    s.insert_binding(new, now)
    assert s.get_binding(new.bind_id, now) == new
    # The expired holder is removed, not hidden: gone even at a time it was active.
    assert s.get_binding(old.bind_id, T0) is None
    assert s.find_by_party(x, b, T0) in (None, new)
    assert s.list_bindings(acc.id, 10, 0, now) == ([new], 1)
    assert counters(s, acc) == active_counts(s, acc, now)


# --- unbinding and listing ----------------------------------------------------------------------
def test_delete_binding_frees_its_keys_at_once(s: SyncStore) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    a, b = phone(), phone()
    bd = binding(acc, x, a, b, ext="777", cbid="del")
    s.insert_binding(bd, T0)
    assert counters(s, acc) == {x: 1}
    assert s.delete_binding(bd.bind_id) is True
    assert s.delete_binding(bd.bind_id) is False
    assert s.delete_binding("f" * 32) is False
    assert s.get_binding(bd.bind_id, T0) is None
    assert s.find_by_party(x, a, T0) is None
    assert counters(s, acc) == {x: 0}
    assert s.list_bindings(acc.id, 10, 0, T0) == ([], 0)
    s.insert_binding(binding(acc, x, a, b, ext="777", cbid="del"), T0)


def test_list_bindings_in_creation_order_with_the_total(s: SyncStore) -> None:
    acc = new_account(s)
    xs = new_numbers(s, acc, 3)
    made = [binding(acc, xs[i % 3], phone(), phone(), expire_at=T0 + 5 if i == 2 else 0)
            for i in range(7)]
    for bd in made:
        s.insert_binding(bd, T0)
    now = T0 + 5
    active = [bd for bd in made if bd.expire_at == 0]
    assert s.list_bindings(acc.id, 1000, 0, now) == (active, 6)
    assert s.list_bindings(acc.id, 2, 1, now) == (active[1:3], 6)
    assert s.list_bindings(acc.id, 4, 4, now) == (active[4:], 6)
    assert s.list_bindings(acc.id, 10, 6, now) == ([], 6)
    assert s.list_bindings(acc.id, 10, 100, now) == ([], 6)
    assert s.list_bindings(acc.id, 3, 0, T0) == (made[:3], 7)


# --- the pool -----------------------------------------------------------------------------------
def test_free_numbers_least_loaded_first_without_the_parties(s: SyncStore) -> None:
    acc, other = new_account(s), new_account(s)
    x0, x1, x2, x3 = new_numbers(s, acc, 4)
    new_numbers(s, acc, 1, enabled=False)
    (uk,) = new_numbers(s, acc, 1, country_code=44)
    new_numbers(s, other, 2)
    a, b = phone(), phone()
    for x, parties in ((x0, [phone(), phone()]), (x0, [phone(), phone()]),
                       (x2, [a, phone()]),
                       (x3, [phone(), phone()]), (x3, [phone(), phone()]), (x3, [b, phone()])):
        s.insert_binding(binding(acc, x, *parties), T0)
    free = s.free_numbers(acc.id, 852, [a, b], T0, 10)
    assert [(c.x, c.active_bindings) for c in free] == [(x1, 0), (x0, 2)]
    assert [c.x for c in s.free_numbers(acc.id, 852, [a, b], T0, 1)] == [x1]
    assert [(c.x, c.active_bindings) for c in s.free_numbers(acc.id, 852, [a], T0, 10)] == \
        [(x1, 0), (x0, 2), (x3, 3)]
    assert [c.x for c in s.free_numbers(acc.id, 44, [a, b], T0, 10)] == [uk]
    assert s.free_numbers(acc.id, 1, [a, b], T0, 10) == []


def test_pool_stats_counts_the_pool_and_what_a_and_b_hold(s: SyncStore) -> None:
    acc = new_account(s)
    x0, x1, x2, _x3 = new_numbers(s, acc, 4)
    new_numbers(s, acc, 1, enabled=False)
    new_numbers(s, acc, 2, country_code=44)
    a, b = phone(), phone()
    s.insert_binding(binding(acc, x0, a, phone()), T0)
    s.insert_binding(binding(acc, x1, a, b), T0)
    s.insert_binding(binding(acc, x2, b, phone(), expire_at=T0 + 1), T0)
    assert s.pool_stats(acc.id, 852, a, b, T0) == PoolStats(4, 2, 2)
    assert s.pool_stats(acc.id, 852, a, b, T0 + 1) == PoolStats(4, 2, 1)
    assert s.pool_stats(acc.id, 44, a, b, T0) == PoolStats(2, 0, 0)
    assert s.pool_stats(new_account(s).id, 852, a, b, T0) == PoolStats(0, 0, 0)


def test_pool_usage_is_exact(s: SyncStore) -> None:
    acc = new_account(s)
    x0, x1, x3 = new_numbers(s, acc, 3)
    (x2,) = new_numbers(s, acc, 1, enabled=False)
    (uk,) = new_numbers(s, acc, 1, country_code=44)
    p = phone()
    for x, a, b in ((x0, p, phone()), (x0, phone(), phone()), (x1, p, phone())):
        s.insert_binding(binding(acc, x, a, b), T0)
    s.insert_binding(binding(acc, x3, phone(), phone(), expire_at=T0 + 1), T0)
    usage = sorted((u for u in s.pool_usage(T0 + 1) if u.account_id == acc.id),
                   key=lambda u: u.country_code)
    assert usage == [
        PoolUsage(account_id=acc.id, country_code=44, numbers=1, enabled=1, active_bindings=0,
                  fullest_x=uk, fullest_x_bindings=0, free_numbers=1, busiest_party_bindings=0),
        PoolUsage(account_id=acc.id, country_code=852, numbers=4, enabled=3, active_bindings=3,
                  fullest_x=x0, fullest_x_bindings=2, free_numbers=1, busiest_party_bindings=2),
    ]
    assert x2 not in (u.fullest_x for u in usage)


# --- numbers and accounts -----------------------------------------------------------------------
def test_numbers_add_list_remove(s: SyncStore) -> None:
    acc = new_account(s)
    x0, x1, x2, x3 = (unique_hk("3") for _ in range(4))
    vn = [VirtualNumber(x, acc.id, 852) for x in (x0, x1, x2)]
    assert s.add_numbers([vn[0], vn[1], vn[0]]) == [x0]  # repeated within one call
    assert s.add_numbers([vn[0], vn[2], VirtualNumber(x3, acc.id, 852, False)]) == [x0]
    assert s.add_numbers([]) == []
    assert s.get_number(x0) == VirtualNumber(x0, acc.id, 852, True)
    assert s.get_number(x3) == VirtualNumber(x3, acc.id, 852, False)
    assert s.get_number(unique_hk("3")) is None
    kept = binding(acc, x0, phone(), phone())
    s.insert_binding(kept, T0)
    s.insert_binding(binding(acc, x1, phone(), phone(), expire_at=T0 + 5), T0)
    usage = s.list_numbers(acc.id, T0)
    assert [(u.x, u.account_id, u.country_code, u.enabled, u.active_bindings) for u in usage] \
        == sorted([(x0, acc.id, 852, True, 1), (x1, acc.id, 852, True, 1),
                   (x2, acc.id, 852, True, 0), (x3, acc.id, 852, False, 0)])
    now = T0 + 5
    # Without force a number with active bindings stays; expired ones do not count.
    assert s.remove_numbers([x0, x1, x2, unique_hk("3")], False, now) == [x0]
    assert s.get_number(x1) is None and s.get_number(x2) is None
    assert s.get_binding(kept.bind_id, now) == kept
    assert s.remove_numbers([x0], True, now) == []
    assert s.get_number(x0) is None
    assert s.get_binding(kept.bind_id, now) is None
    assert s.find_by_party(x0, kept.a, now) is None
    assert [u.x for u in s.list_numbers(acc.id, now)] == [x3]
    everyone = s.list_numbers(None, now)
    assert any(u.x == x3 for u in everyone)
    keys = [(u.account_id, u.x) for u in everyone]
    assert keys == sorted(keys)


def test_accounts_create_get_list_update(s: SyncStore) -> None:
    key, secret = secrets.token_hex(8), secrets.token_urlsafe(16)
    acc = s.create_account("Acme \u4e2d\u6587", Role.CUSTOMER, key, secret, T0)
    assert (acc.name, acc.role, acc.access_key, acc.access_secret, acc.created_at) == \
        ("Acme \u4e2d\u6587", Role.CUSTOMER, key, secret, T0)
    assert acc.enabled and acc.callback_url == "" and acc.previous_secret_until == 0
    assert s.get_account(key) == acc
    assert s.get_account_by_id(acc.id) == acc
    assert s.get_account(secrets.token_hex(8)) is None
    assert s.get_account_by_id(-1) is None
    sw = s.create_account("switch", Role.SWITCH, secrets.token_hex(8), "x", T0)
    assert sw.role is Role.SWITCH and sw.id > acc.id
    listed = s.list_accounts()
    assert [a.id for a in listed] == sorted(a.id for a in listed)
    assert [a for a in listed if a.id in (acc.id, sw.id)] == [acc, sw]
    with pytest.raises(Exception):  # noqa: B017 - each store raises its own integrity error
        s.create_account("dup", Role.CUSTOMER, key, "y", T0)
    changes = AccountChanges(
        enabled=False, audio_when_call_fail="f.wav", audio_when_dtmf_need="n.wav",
        audio_when_dtmf_err="e.wav", callback_url="https://cb.example/pns",
        access_secret="new-secret", previous_secret=secret,
        previous_secret_until=T0 + 50 * 365 * 86400,
    )
    updated = s.update_account(key, changes)
    assert updated == Account(
        id=acc.id, name=acc.name, access_key=key, access_secret="new-secret",
        role=Role.CUSTOMER, enabled=False, audio_when_call_fail="f.wav",
        audio_when_dtmf_need="n.wav", audio_when_dtmf_err="e.wav",
        callback_url="https://cb.example/pns", previous_secret=secret,
        previous_secret_until=T0 + 50 * 365 * 86400, created_at=T0,
    )
    assert s.get_account(key) == updated
    assert s.update_account(key, AccountChanges()) == updated
    reenabled = s.update_account(key, AccountChanges(enabled=True, callback_url=""))
    assert reenabled.enabled and reenabled.callback_url == ""
    assert reenabled.audio_when_call_fail == "f.wav"
    assert s.update_account(secrets.token_hex(8), AccountChanges(enabled=False)) is None


# --- calls, signatures, housekeeping ------------------------------------------------------------
def test_ping_and_call_references(store_url: str) -> None:
    with _sync_store(store_url) as s:
        s.ping()
        acc = new_account(s)
        ref = CallRef(call_id=str(random.randrange(10**18, 10**19)), bind_id="b" * 32,
                      account_id=acc.id, x=unique_hk("3"), caller=phone(), callee=phone(),
                      customer_bind_id="", business_id="", bind_type=0, queried_at=T0)
        s.record_call(ref)
        assert s.get_call(ref.call_id) == ref  # at once, even if written in groups
        s.record_call(ref)  # a repeat changes nothing
    with _sync_store(store_url) as s:  # written by the time the store closed
        assert s.get_call(ref.call_id) == ref


def test_claim_signature(s: SyncStore) -> None:
    key = f"conformance:{secrets.token_hex(16)}"
    assert s.claim_signature(key, T0 + 121, T0) is True
    assert s.claim_signature(key, T0 + 122, T0 + 1) is False
    assert s.claim_signature(key, T0 + 240, T0 + 120) is False
    assert s.claim_signature(key, T0 + 242, T0 + 121) is True  # expired: claimable again
    assert s.claim_signature(key, T0 + 243, T0 + 122) is False
    assert s.claim_signature(key + "x", T0 + 121, T0) is True


def test_sweep_removes_expired_bindings_and_frees_the_counters(fresh: SyncStore) -> None:
    s = fresh
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    gone = [binding(acc, x1, phone(), phone(), expire_at=T0 + 10),
            binding(acc, x1, phone(), phone(), ext="001", expire_at=T0 + 10),
            binding(acc, x2, phone(), phone(), expire_at=T0 + 10)]
    stay = [binding(acc, x1, phone(), phone()), binding(acc, x2, phone(), expire_at=T0 + 100)]
    for bd in gone + stay:
        s.insert_binding(bd, T0)
    assert counters(s, acc) == {x1: 3, x2: 2}
    assert s.sweep(T0 + 9, 100) == 0
    assert [s.sweep(T0 + 10, 2) for _ in range(3)] == [2, 1, 0]
    assert counters(s, acc) == active_counts(s, acc, T0 + 10) == {x1: 1, x2: 1}
    for bd in gone:  # rows and keys are gone: reusable even at a time they were active
        assert s.get_binding(bd.bind_id, T0) is None
        s.insert_binding(binding(acc, bd.x, bd.a, bd.b, ext=bd.extension), T0)
    assert s.list_bindings(acc.id, 10, 0, T0 + 10)[1] == 5
    # Stale signatures go too: once swept, a claim with a clock behind its expiry wins again.
    assert s.claim_signature("sig", T0 + 10, T0)
    assert not s.claim_signature("sig", T0 + 20, T0 + 5)
    s.sweep(T0 + 10, 100)
    assert s.claim_signature("sig", T0 + 20, T0 + 5)


def call_record(account: Account, call_id: str, start_at: int, bind_id: str = "b" * 32
                ) -> CallRecord:
    return CallRecord(
        call_id=call_id, account_id=account.id, bind_id=bind_id, customer_bind_id="order-1",
        business_id="ride", did=unique_hk("3"), caller=phone(), callee=phone(), call_status=1,
        call_status_msg="NORMAL_CLEARING", duration=25, start_at=start_at, ring_at=start_at + 2,
        answer_at=start_at + 5, hangup_at=start_at + 30, hangup_cause="NORMAL_CLEARING",
        hangup_code=16, hangup=1, record_file="https://rec.example/1.mp3", reported_at=T0,
        id=random.randrange(10**18, 2**63),
    )


def event(account: Account, due: int, call_id: str = "", created_at: int = T0) -> OutboxEvent:
    return OutboxEvent(event_id=secrets.token_hex(16), account_id=account.id, kind="callRecord",
                       body=b'{"callId":"1"}\xff', created_at=created_at, next_attempt_at=due,
                       call_id=call_id)


def test_call_records_are_saved_once_with_their_event(fresh: SyncStore) -> None:
    s = fresh
    acc, other = new_account(s), new_account(s)
    ref = CallRef(call_id="1234567890123456789", bind_id="b" * 32, account_id=acc.id,
                  x=unique_hk("3"), caller=phone(), callee=phone(), customer_bind_id="order-1",
                  business_id="ride", bind_type=BIND_TYPE_AXB, queried_at=T0)
    s.record_call(ref)
    assert s.get_call(ref.call_id) == ref
    assert s.get_call("9" * 19) is None
    first = call_record(acc, ref.call_id, T0)
    ev = event(acc, T0, call_id=ref.call_id)
    assert s.save_call_record(first, ev) is True
    # A repeated report: nothing written, nothing enqueued.
    assert s.save_call_record(call_record(acc, ref.call_id, T0 + 9), event(acc, T0)) is False
    assert s.get_call_record(acc.id, ref.call_id) == first
    assert s.get_call_record(other.id, ref.call_id) is None
    assert s.list_events(None, None, 100) == [ev]
    earlier = call_record(acc, "2" * 19, T0 - 100, bind_id="c" * 32)
    later = call_record(acc, "3" * 19, T0 + 50)
    theirs = call_record(other, "4" * 19, T0)
    for record in (earlier, later, theirs):
        assert s.save_call_record(record, None) is True
    assert s.list_events(None, None, 100) == [ev]
    assert s.list_call_records(acc.id, 0, 2**62, "", 10, 0) == ([earlier, first, later], 3)
    assert s.list_call_records(acc.id, T0, T0 + 50, "", 10, 0) == ([first], 1)
    assert s.list_call_records(acc.id, 0, 2**62, "b" * 32, 10, 0) == ([first, later], 2)
    assert s.list_call_records(acc.id, 0, 2**62, "", 1, 1) == ([first], 3)
    assert s.list_call_records(other.id, 0, 2**62, "", 10, 0) == ([theirs], 1)


def replay(claim: SignatureClaim) -> SignatureClaim:
    """The same signature claimed by another request (a claim this request took is its own)."""
    return SignatureClaim(claim.key, claim.expires_at, claim.now)


def test_a_record_claims_its_signature_in_its_own_write(fresh: SyncStore) -> None:
    """``save_call_record`` with a ``SignatureClaim``: the claim and the record commit together;
    a second save with a claimed signature writes nothing (not its record, not its event) and
    raises ``Replayed``; a claim whose record exists already is still taken."""
    s = fresh
    acc = new_account(s)
    claim = SignatureClaim(f"k:{secrets.token_hex(16)}", T0 + 121, T0)
    first = call_record(acc, "5" * 19, T0)
    ev = event(acc, T0, call_id=first.call_id)
    assert s.save_call_record(first, ev, claim) is True
    assert s.claim_signature(claim.key, claim.expires_at, T0) is False
    other = call_record(acc, "6" * 19, T0)
    with pytest.raises(Replayed):
        s.save_call_record(other, event(acc, T0, call_id=other.call_id), replay(claim))
    assert s.get_call_record(acc.id, other.call_id) is None
    assert s.list_events(None, None, 100) == [ev]
    # Expired, the signature can be claimed again.
    assert s.save_call_record(other, None, SignatureClaim(claim.key, T0 + 241, claim.expires_at)
                              ) is True
    again = SignatureClaim(f"k:{secrets.token_hex(16)}", T0 + 121, T0)
    assert s.save_call_record(call_record(acc, first.call_id, T0 + 9), None, again) is False
    assert s.claim_signature(again.key, again.expires_at, T0) is False
    assert s.get_call_record(acc.id, first.call_id) == first


def test_a_binding_claims_its_signature_with_its_insert(fresh: SyncStore) -> None:
    """``insert_binding`` with a ``SignatureClaim``: the claim is taken with the insert; a
    second insert under it raises ``Replayed`` and inserts nothing; after a conflict,
    ``claim.taken`` says truly whether the signature is claimed (SQLite rolls it back with
    the insert; elsewhere it was taken just before)."""
    s = fresh
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    claim = SignatureClaim(f"k:{secrets.token_hex(16)}", T0 + 121, T0)
    first = binding(acc, x, phone(), phone())
    s.insert_binding(first, T0, claim)
    assert claim.taken
    assert s.claim_signature(claim.key, claim.expires_at, T0) is False
    second = binding(acc, x, phone(), phone())
    with pytest.raises(Replayed):
        s.insert_binding(second, T0, replay(claim))
    assert s.get_binding(second.bind_id, T0) is None
    assert s.get_binding(first.bind_id, T0) == first
    conflicting = SignatureClaim(f"k:{secrets.token_hex(16)}", T0 + 121, T0)
    with pytest.raises(BindConflict):
        s.insert_binding(binding(acc, x, first.a, phone()), T0, conflicting)
    claimed_after = not s.claim_signature(conflicting.key, conflicting.expires_at, T0)
    assert claimed_after is conflicting.taken
    if not claimed_after:  # the probe just took it: give it back to this request
        conflicting.taken = True
    # The bind tried again after its conflict: the claim it holds is its own.
    retried = binding(acc, x, phone(), phone())
    s.insert_binding(retried, T0, conflicting)
    assert s.get_binding(retried.bind_id, T0) == retried


def test_concurrent_claims_in_record_writes_have_one_winner(fresh_store_url: str) -> None:
    """Eight stores save eight different records under one claim at once: one is written,
    seven raise ``Replayed`` and leave nothing."""
    with _sync_store(fresh_store_url) as s:
        acc = new_account(s)
    claim = SignatureClaim(f"race:{secrets.token_hex(16)}", T0 + 121, T0)

    async def save(store: Store, i: int) -> bool:
        return await store.save_call_record(call_record(acc, f"{i + 1}" * 19, T0), None,
                                            replay(claim))

    results = in_threads(fresh_store_url, 8, save)
    assert results.count(True) == 1, results
    assert all(isinstance(r, Replayed) for r in results if r is not True), results
    with _sync_store(fresh_store_url) as s:
        assert s.list_call_records(acc.id, 0, 2**62, "", 100, 0)[1] == 1


def test_outbox_leases_and_attempts(fresh: SyncStore) -> None:
    s = fresh
    acc, other = new_account(s), new_account(s)
    e1, e2 = event(acc, T0), event(acc, T0 + 10, created_at=T0 + 1)
    e3 = event(other, T0, created_at=T0 + 2)
    for ev in (e1, e2, e3):
        s.enqueue_event(ev)
    assert s.outbox_backlog(T0 + 5) == (3, 5)
    leased = s.lease_events(T0, 10, 30, holder="h1")
    assert sorted(leased, key=lambda ev: ev.created_at) == [e1, e3]  # due, as stored
    assert s.lease_events(T0, 10, 30, holder="h1") == []  # not handed out again while leased
    assert s.lease_events(T0 + 5, 10, 30, holder="h2") == []
    assert s.lease_events(T0 + 10, 10, 30, holder="h3") == [e2]
    s.finish_event(e1.event_id, EventState.PENDING, 1, T0 + 100, "HTTP 503", T0 + 1,
                   holder="h1")
    # e3's lease ran out (its holder died): handed out again; e1 waits for its next attempt.
    assert [ev.event_id for ev in s.lease_events(T0 + 31, 10, 30, holder="h4")] == [e3.event_id]
    s.finish_event(e3.event_id, EventState.DELIVERED, 1, T0 + 31, "", T0 + 31, holder="h4")
    due = s.lease_events(T0 + 100, 1, 30, holder="h5")
    assert [ev.event_id for ev in due] == [e2.event_id]  # the longest due first
    assert [ev.event_id for ev in s.lease_events(T0 + 100, 10, 30, holder="h6")] == [e1.event_id]
    s.finish_event(e2.event_id, EventState.FAILED, 9, T0 + 100, "x" * 600, T0 + 100,
                   holder="h5")
    listed = s.list_events(None, None, 10)
    assert [ev.event_id for ev in listed] == [e1.event_id, e2.event_id, e3.event_id]
    assert (listed[0].state, listed[0].attempts, listed[0].next_attempt_at,
            listed[0].last_error) == (EventState.PENDING, 1, T0 + 100, "HTTP 503")
    assert (listed[1].state, listed[1].attempts, listed[1].last_error) == \
        (EventState.FAILED, 9, "x" * 500)
    assert listed[2].state is EventState.DELIVERED and listed[2].body == e3.body
    assert [ev.event_id for ev in s.list_events(acc.id, None, 10)] == [e1.event_id, e2.event_id]
    assert [ev.event_id for ev in s.list_events(acc.id, EventState.PENDING, 10)] == [e1.event_id]
    assert [ev.event_id for ev in s.list_events(None, EventState.DELIVERED, 10)] == \
        [e3.event_id]
    assert len(s.list_events(None, None, 2)) == 2
    assert s.outbox_backlog(T0 + 200) == (1, 200)
    s.finish_event(e1.event_id, EventState.DELIVERED, 2, T0 + 200, "", T0 + 200,
                   holder="h6")
    assert s.outbox_backlog(T0 + 200) == (0, 0)


def test_numbers_enable_disable_and_move(s: SyncStore) -> None:
    acc, other = new_account(s), new_account(s)
    x1, x2, x3 = new_numbers(s, acc, 3)
    missing = unique_hk("3")
    assert s.set_numbers_enabled([x1, missing], False) == [missing]
    assert s.get_number(x1).enabled is False and s.get_number(x2).enabled is True
    assert [c.x for c in s.free_numbers(acc.id, 852, [phone()], T0, 10)] != [] and \
        x1 not in {c.x for c in s.free_numbers(acc.id, 852, [phone()], T0, 10)}
    assert s.set_numbers_enabled([x1], True) == []
    assert s.get_number(x1).enabled is True
    bound = binding(acc, x1, phone(), phone())
    s.insert_binding(bound, T0)
    expired = binding(acc, x2, phone(), phone(), expire_at=T0 - 1, created_at=T0 - 10)
    s.insert_binding(expired, T0 - 10)
    # Active bindings keep a number where it is; expired ones do not.
    assert s.move_numbers([x1, x2], other.id, False, T0) == [x1]
    assert s.get_number(x1).account_id == acc.id and s.get_number(x2).account_id == other.id
    assert s.move_numbers([x1], other.id, True, T0) == []
    assert s.get_number(x1).account_id == other.id
    assert s.get_binding(bound.bind_id, T0) is None  # force ended it: no binding changes owner
    assert s.find_by_party(x1, bound.a, T0) is None
    assert {u.x for u in s.list_numbers(other.id, T0)} == {x1, x2}
    assert counters(s, other) == {x1: 0, x2: 0}
    assert {u.x for u in s.list_numbers(acc.id, T0)} == {x3}


def test_find_bindings_by_number_as_x_or_party(s: SyncStore) -> None:
    acc, other = new_account(s), new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    (y,) = new_numbers(s, other, 1)
    a, b, c = phone(), phone(), phone()
    first = binding(acc, x1, a, b)
    second = binding(acc, x2, a, c, created_at=T0 + 1)
    theirs = binding(other, y, c, ext="123")
    gone = binding(acc, x2, phone(), b, expire_at=T0 - 1, created_at=T0 - 5)
    for each in (first, second, theirs, gone):
        s.insert_binding(each, each.created_at)
    assert ids(s.find_bindings_by_number(a, T0, 10)) == ids([first, second])
    assert ids(s.find_bindings_by_number(b, T0, 10)) == ids([first])  # not the expired one
    assert ids(s.find_bindings_by_number(c, T0, 10)) == ids([second, theirs])  # any account
    assert ids(s.find_bindings_by_number(x2, T0, 10)) == ids([second])
    assert ids(s.find_bindings_by_number(a, T0, 1)) == ids([first])
    assert s.find_bindings_by_number(phone(), T0, 10) == []


def test_outbox_counts_events_of_calls_and_requeue(fresh: SyncStore) -> None:
    s = fresh
    acc = new_account(s)
    e1 = event(acc, T0, call_id="5" * 19)
    e2 = event(acc, T0, call_id="5" * 19, created_at=T0 + 1)
    e3 = event(acc, T0, call_id="6" * 19, created_at=T0 + 2)
    e4 = event(acc, T0)  # a binding error: no call
    for each in (e1, e2, e3, e4):
        s.enqueue_event(each)
    assert s.outbox_counts() == {EventState.PENDING: 4, EventState.DELIVERED: 0,
                                 EventState.FAILED: 0}
    assert [e.event_id for e in s.events_for_calls(["5" * 19])] == [e1.event_id, e2.event_id]
    assert [e.event_id for e in s.events_for_calls(["5" * 19, "6" * 19, "7" * 19])] == \
        [e1.event_id, e2.event_id, e3.event_id]
    assert s.events_for_calls([]) == [] and s.events_for_calls([""]) == []
    assert len(s.lease_events(T0, 10, 30, holder="h")) == 4
    assert s.finish_event(e1.event_id, EventState.DELIVERED, 1, T0, "", T0, holder="h")
    assert s.finish_event(e2.event_id, EventState.FAILED, 12, T0, "HTTP 500", T0, holder="h")
    assert s.outbox_counts() == {EventState.PENDING: 2, EventState.DELIVERED: 1,
                                 EventState.FAILED: 1}
    again = s.requeue_event(e2.event_id, T0 + 500)
    assert again is not None and again.event_id == e2.event_id
    assert (again.state, again.next_attempt_at, again.created_at, again.attempts,
            again.body) == (EventState.PENDING, T0 + 500, T0 + 500, 12, e2.body)
    assert {e.event_id for e in s.lease_events(T0 + 500, 10, 30, holder="h")} == \
        {e3.event_id, e4.event_id, e2.event_id}
    assert s.requeue_event(e1.event_id, T0 + 500) is None  # delivered already
    assert s.requeue_event("no-such-event", T0) is None
    # A leased event keeps its lease: the attempt under way finishes first.
    assert s.requeue_event(e3.event_id, T0 + 501) is not None
    assert s.lease_events(T0 + 501, 10, 30, holder="h") == []


def test_operators_and_the_audit_trail(fresh: SyncStore) -> None:
    s = fresh
    admin = Operator("alice", OperatorRole.ADMIN, "a" * 64, created_at=T0)
    viewer = Operator("victor", OperatorRole.VIEWER, "b" * 64, created_at=T0 + 1)
    assert s.create_operator(admin) is True and s.create_operator(viewer) is True
    assert s.create_operator(Operator("alice", OperatorRole.VIEWER, "c" * 64)) is False
    assert s.get_operator("alice") == admin
    assert s.get_operator_by_token_hash("b" * 64) == viewer
    assert s.get_operator_by_token_hash("c" * 64) is None and s.get_operator("nobody") is None
    assert s.list_operators() == [admin, viewer]
    assert s.set_operator_disabled("victor", True) is True
    assert s.get_operator("victor").disabled is True
    assert s.set_operator_disabled("nobody", True) is False
    assert s.set_operator_disabled("victor", False) is True
    assert s.get_operator("victor").disabled is False
    # Logout: the generation the console's sessions carry goes up, for this operator only.
    assert s.get_operator("alice").session_generation == 0
    assert s.end_operator_sessions("alice") is True and s.end_operator_sessions("alice") is True
    assert s.get_operator("alice").session_generation == 2
    assert s.get_operator_by_token_hash("a" * 64).session_generation == 2
    assert s.get_operator("victor").session_generation == 0
    assert s.end_operator_sessions("nobody") is False
    for i in range(3):
        s.add_audit(AuditEntry(T0 + i, "alice", "binding.unbind", f"bind-{i}"))
    entries = s.list_audit(2)
    assert [(e.at, e.target) for e in entries] == [(T0 + 2, "bind-2"), (T0 + 1, "bind-1")]
    assert entries[0].id > entries[1].id > 0


# --- concurrency at the store level -------------------------------------------------------------
def test_concurrent_inserts_of_one_key_have_one_winner(s: SyncStore, store_url: str) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    n = 8
    a = phone()
    cases = {
        PARTY: [binding(acc, x, a, phone()) for _ in range(n)],
        EXTENSION: [binding(acc, x, phone(), ext="999") for _ in range(n)],
        CBID: [binding(acc, x, phone(), phone(), cbid="same") for _ in range(n)],
    }
    for kind, contenders in cases.items():
        async def insert(store: Store, i: int, contenders: list[Binding] = contenders) -> str:
            await store.insert_binding(contenders[i], T0)
            return contenders[i].bind_id

        results = in_threads(store_url, n, insert)
        winners = [r for r in results if isinstance(r, str)]
        losers = [r for r in results if not isinstance(r, str)]
        assert len(winners) == 1, results
        assert all(isinstance(r, BindConflict) and r.kind is kind for r in losers), results
        assert s.get_binding(winners[0], T0) is not None
    assert s.list_bindings(acc.id, 100, 0, T0)[1] == 3
    assert counters(s, acc) == {x: 3}


def test_concurrent_claims_of_one_signature_have_one_winner(s: SyncStore,
                                                             store_url: str) -> None:
    key = f"race:{secrets.token_hex(16)}"

    async def claim(store: Store, i: int) -> bool:
        return await store.claim_signature(key, T0 + 121, T0)

    results = in_threads(store_url, 8, claim)
    assert sorted(results) == [False] * 7 + [True]


def test_concurrent_leases_hand_each_event_out_once(fresh_any_store_url: str) -> None:
    fresh_store_url = fresh_any_store_url
    with _sync_store(fresh_store_url) as s:
        acc = new_account(s)
        events = [event(acc, T0 + i % 3) for i in range(60)]
        for ev in events:
            s.enqueue_event(ev)

    async def lease_all(store: Store, i: int) -> list[str]:
        got: list[str] = []
        while batch := await store.lease_events(T0 + 5, 7, 60, holder=f"t{i}"):
            got += [ev.event_id for ev in batch]
        return got

    results = in_threads(fresh_store_url, 4, lease_all)
    assert all(isinstance(r, list) for r in results), results
    leased = [event_id for r in results for event_id in r]
    assert sorted(leased) == sorted(ev.event_id for ev in events)


def test_sweepers_in_many_processes_at_once(fresh_any_store_url: str) -> None:
    fresh_store_url = fresh_any_store_url
    with asyncio.Runner() as runner:
        store = runner.run(open_store(fresh_store_url))
        s = SyncStore(store, runner)
        acc = new_account(s)
        xs = new_numbers(s, acc, 6)
        expiring = 300
        for i in range(expiring):
            s.insert_binding(binding(acc, xs[i % 6], phone(), phone(), expire_at=T0 + 1), T0)
        for x in xs:
            s.insert_binding(binding(acc, x, phone(), phone()), T0)
        runner.run(store.close())

    async def sweep_all(store: Store, i: int) -> int:
        total = 0
        while swept := await store.sweep(T0 + 1, 25):
            total += swept
        return total

    results = in_threads(fresh_store_url, 4, sweep_all)
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == expiring
    with _sync_store(fresh_store_url) as s:
        assert counters(s, acc) == active_counts(s, acc, T0 + 1) == dict.fromkeys(xs, 1)
        assert s.list_bindings(acc.id, 1000, 0, T0)[1] == 6


# --- changing a binding in place (lifecycle.md: updateAXB, renewOnCall) -------------------------
@pytest.fixture(params=[*ALL_STORES, SQLITE_INDEX])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The run's shared store on every configuration, PostgreSQL + Redis Cluster too."""
    return make_store_url(request.param, tmp_path, request)


@pytest.fixture
def anys(any_store_url: str) -> Iterator[SyncStore]:
    with _sync_store(any_store_url) as st:
        yield st


def test_replace_binding_moves_b_and_keeps_the_binding(anys: SyncStore) -> None:
    s = anys
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    a, b, c = phone(), phone(), phone()
    old = binding(acc, x, a, b, cbid="ride-1", expire_at=T0 + 60)
    s.insert_binding(old, T0)
    new = msgspec.structs.replace(old, b=c, flag=1, expire_second=600, expire_at=T0 + 600,
                                  max_duration=90, renew_on_call=300, call_direction=1,
                                  audio_when_call_fail="late.wav")
    assert s.replace_binding(old, new, T0) is True
    assert s.get_binding(old.bind_id, T0 + 100) == new  # alive past the old expiry
    assert s.find_by_party(x, a, T0) == new
    assert s.find_by_party(x, c, T0) == new
    assert s.find_by_party(x, b, T0) is None  # the old B's key is free at once
    assert s.find_by_customer_bind_id(acc.id, "ride-1", T0 + 100) == new
    assert s.list_bindings(acc.id, 10, 0, T0) == ([new], 1)
    assert active_counts(s, acc, T0) == {x: 1}
    assert counters(s, acc) == {x: 1}
    s.insert_binding(binding(acc, x, b, phone()), T0)  # the old B is free on X


def test_replace_binding_is_a_compare_and_swap(anys: SyncStore) -> None:
    s = anys
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    old = binding(acc, x, phone(), phone())
    s.insert_binding(old, T0)
    first = msgspec.structs.replace(old, flag=1)
    assert s.replace_binding(old, first, T0) is True
    # A writer that read ``old`` before the change loses, and writes nothing.
    assert s.replace_binding(old, msgspec.structs.replace(old, flag=2), T0) is False
    assert s.get_binding(old.bind_id, T0) == first
    assert s.delete_binding(old.bind_id) is True
    assert s.replace_binding(first, msgspec.structs.replace(first, flag=3), T0) is False
    assert s.get_binding(old.bind_id, T0) is None
    assert s.find_by_party(x, old.a, T0) is None
    with pytest.raises(StoreError):  # a binding never changes X (nor its other keys)
        s.replace_binding(old, msgspec.structs.replace(old, x=phone()), T0)


def test_replace_binding_keeps_i1_and_changes_nothing_when_refused(anys: SyncStore) -> None:
    s = anys
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    a, b, c, d = phone(), phone(), phone(), phone()
    mine = binding(acc, x, a, b)
    theirs = binding(acc, x, c, d)
    s.insert_binding(mine, T0)
    s.insert_binding(theirs, T0)
    for taken in (c, d):
        with pytest.raises(BindConflict) as info:
            s.replace_binding(mine, msgspec.structs.replace(mine, b=taken, flag=9), T0)
        assert info.value.kind is PARTY
    assert s.get_binding(mine.bind_id, T0) == mine
    assert s.find_by_party(x, b, T0) == mine
    assert s.find_by_party(x, c, T0) == theirs
    # An expired holder of the new B is released, as for an insert.
    e = phone()
    gone = binding(acc, x, e, phone(), expire_at=T0 + 5)
    s.insert_binding(gone, T0)
    moved = msgspec.structs.replace(mine, b=e)
    assert s.replace_binding(mine, moved, T0 + 5) is True
    assert s.find_by_party(x, e, T0 + 5) == moved
    assert s.get_binding(gone.bind_id, T0) is None
    assert counters(s, acc) == active_counts(s, acc, T0 + 5) == {x: 2}


def test_race_replace_against_reads_in_another_process(any_store_url: str) -> None:
    """Once a change is answered, no reader anywhere is told the old binding: a reader that
    starts a read after the writer's n-th change returns sees change n or later."""
    with _sync_store(any_store_url) as s:
        acc = new_account(s)
        (x,) = new_numbers(s, acc, 1)
        a = phone()
        first = binding(acc, x, a, phone())
        s.insert_binding(first, T0)
    rounds = 30
    done = [0]  # changes answered so far (written by the writer, read by the reader)
    flags_seen: list[tuple[int, int]] = []

    async def work(store: Store, i: int) -> None:
        if i == 0:
            current = first
            for n in range(1, rounds + 1):
                new = msgspec.structs.replace(current, b=phone(), flag=n)
                assert await store.replace_binding(current, new, T0)
                current = new
                done[0] = n
                await asyncio.sleep(0)
            return
        while done[0] < rounds:
            before = done[0]
            found = await store.find_by_party(x, a, T0)
            assert found is not None and found.bind_id == first.bind_id
            flags_seen.append((before, found.flag))
            await asyncio.sleep(0)

    results = in_threads(any_store_url, 2, work)
    assert results == [None, None], results
    assert flags_seen and all(flag >= before for before, flag in flags_seen), [
        pair for pair in flags_seen if pair[1] < pair[0]]


def test_race_replace_against_a_bind_of_the_same_b(any_store_url: str) -> None:
    """An update moving B to c and a bind of c on the same X, at once: exactly one wins."""
    with _sync_store(any_store_url) as s:
        acc = new_account(s)
        (x,) = new_numbers(s, acc, 1)
        pairs = []
        for _ in range(6):
            mine = binding(acc, x, phone(), phone())
            s.insert_binding(mine, T0)
            c = phone()
            pairs.append((mine, msgspec.structs.replace(mine, b=c), binding(acc, x, c, phone())))
    for mine, moved, rival in pairs:
        async def race(store: Store, i: int, mine: Binding = mine, moved: Binding = moved,
                       rival: Binding = rival) -> str:
            try:
                if i == 0:
                    assert await store.replace_binding(mine, moved, T0)
                    return "update"
                await store.insert_binding(rival, T0)
                return "bind"
            except BindConflict as exc:
                assert exc.kind is PARTY
                return "lost"

        results = in_threads(any_store_url, 2, race)
        assert sorted(results) in (["bind", "lost"], ["lost", "update"]), results
        with _sync_store(any_store_url) as s:
            holder = s.find_by_party(x, moved.b, T0)
            if results[0] == "update":
                assert holder == moved and s.get_binding(rival.bind_id, T0) is None
            else:
                assert holder == rival and s.get_binding(mine.bind_id, T0) == mine
                assert s.find_by_party(x, mine.b, T0) == mine


def test_race_replace_against_a_delete_of_the_same_binding(any_store_url: str) -> None:
    """An update (or a capture, or a group change) and an unbind of one binding at once: the
    binding exists throughout, so the delete always finds it and it is gone afterwards. On
    PostgreSQL a plain DELETE that waited for the swap's lock found the old row deleted and
    missed the new one: the unbind answered 10013 while the updated binding lived on."""
    rounds = 20
    with _sync_store(any_store_url) as s:
        acc = new_account(s)
        (x,) = new_numbers(s, acc, 1)
        olds = [binding(acc, x, phone(), phone()) for _ in range(rounds)]
        for old in olds:
            s.insert_binding(old, T0)
    step = threading.Barrier(2)

    async def race(store: Store, i: int) -> list[bool]:
        results = []
        for old in olds:
            step.wait(timeout=30)
            if i == 0:
                moved = msgspec.structs.replace(old, flag=old.flag + 1)
                results.append(await store.replace_binding(old, moved, T0))
            else:
                results.append(await store.delete_binding(old.bind_id))
        return results

    swapped, deleted = in_threads(any_store_url, 2, race)
    assert deleted == [True] * rounds, (swapped, deleted)
    with _sync_store(any_store_url) as s:
        for old in olds:
            assert s.get_binding(old.bind_id, T0) is None
            assert s.find_by_party(x, old.a, T0) is None


def test_race_renewal_against_the_sweeper(fresh_any_store_url: str) -> None:
    """renewOnCall moves expireAt while a sweeper (whose clock says it expired) runs: either
    the renewal wins (the binding lives on with its new expiry) or the sweep does (the binding
    is gone and the renewal changed nothing), never a mix."""
    url = fresh_any_store_url
    with _sync_store(url) as s:
        acc = new_account(s)
        xs = new_numbers(s, acc, 4)
        olds = [binding(acc, xs[i % 4], phone(), phone(), expire_at=T0 + 10) for i in range(24)]
        for old in olds:
            s.insert_binding(old, T0)
    renewed = [msgspec.structs.replace(old, expire_at=T0 + 1000) for old in olds]

    async def work(store: Store, i: int) -> list[bool] | int:
        if i == 0:
            return [await store.replace_binding(old, new, T0 + 9)
                    for old, new in zip(olds, renewed, strict=True)]
        total = 0
        while swept := await store.sweep(T0 + 10, 3):
            total += swept
        return total

    renewals, swept = in_threads(url, 2, work)
    assert isinstance(renewals, list) and isinstance(swept, int), (renewals, swept)
    with _sync_store(url) as s:
        for old, new, won in zip(olds, renewed, renewals, strict=True):
            found = s.get_binding(old.bind_id, T0)
            assert found == (new if won else None), (won, found)
            assert s.find_by_party(old.x, old.a, T0) == found
        assert swept == renewals.count(False)
        assert s.list_bindings(acc.id, 100, 0, T0)[1] == renewals.count(True)
        assert counters(s, acc) == active_counts(s, acc, T0)


# --- cool-offs and the block list (lifecycle.md) ------------------------------------------------
def test_cool_offs_follow_every_end_of_a_binding(anys: SyncStore) -> None:
    """On the wall clock: the SQL stores record a cool-off by trigger, which has no other."""
    s = anys
    acc, plain = new_account(s), new_account(s)
    s.update_account(acc.access_key, AccountChanges(cool_off_seconds=100))
    x1, x2, x3 = new_numbers(s, acc, 3)
    (y,) = new_numbers(s, plain, 1)
    now = int(time.time())
    a, b, c, d, e, f, g = (phone() for _ in range(7))
    unbound = binding(acc, x1, a, b, created_at=now)
    s.insert_binding(unbound, now)
    assert s.cool_offs([a, b], now) == {}
    assert s.delete_binding(unbound.bind_id)
    cooling = s.cool_offs([a], now)
    assert list(cooling) == [x1] and now + 100 <= cooling[x1] <= int(time.time()) + 100
    assert s.cool_offs([b], now) == cooling
    # Expired: the cool-off counts from expireAt, whether swept or released by an insert.
    swept = binding(acc, x2, c, d, created_at=now - 20, expire_at=now - 5)
    released = binding(acc, x3, e, f, created_at=now - 20, expire_at=now - 4)
    s.insert_binding(swept, now - 20)
    s.insert_binding(released, now - 20)
    s.insert_binding(binding(acc, x3, e, g, created_at=now), now)
    while s.sweep(now, 100):
        pass
    assert s.cool_offs([c, d], now) == {x2: now + 95}
    assert s.cool_offs([f], now) == {x3: now + 96}
    assert s.cool_offs([c, f, a], now) == {x1: cooling[x1], x2: now + 95, x3: now + 96}
    # Changed in place is not ended; another account's bindings leave none; over is over.
    changed = binding(acc, x2, phone(), g, created_at=now)
    s.insert_binding(changed, now)
    assert s.replace_binding(changed, msgspec.structs.replace(changed, b=phone()), now)
    assert s.cool_offs([g, changed.a], now) == {}
    other = binding(plain, y, a, b, created_at=now)
    s.insert_binding(other, now)
    assert s.delete_binding(other.bind_id)
    assert y not in s.cool_offs([a, b], now)
    assert s.cool_offs([c], now + 95) == {}
    s.record_cool_offs([binding(acc, x1, g, created_at=now)], now)  # an index kept elsewhere
    assert s.cool_offs([g], now) == {x1: now + 100}


def test_cool_offs_on_y_as_on_x(anys: SyncStore) -> None:
    """A binding with a Y leaves its parties a cool-off on Y too (schema 9); a capture (a
    change in place) leaves none on either."""
    s = anys
    acc = new_account(s)
    s.update_account(acc.access_key, AccountChanges(cool_off_seconds=100))
    x, y, x2, y2 = new_numbers(s, acc, 4)
    now = int(time.time())
    a, b, c = phone(), phone(), phone()
    axyb = msgspec.structs.replace(binding(acc, x, a, b, created_at=now),
                                   bind_type=BIND_TYPE_AXYB, y=y)
    s.insert_binding(axyb, now)
    assert s.delete_binding(axyb.bind_id)
    cooling = s.cool_offs([b], now)
    assert set(cooling) == {x, y} and cooling[x] == cooling[y]
    assert s.cool_offs([a], now) == cooling
    xyb = msgspec.structs.replace(binding(acc, x2, "", c, created_at=now),
                                  bind_type=BIND_TYPE_XYB, y=y2)
    s.insert_binding(xyb, now)
    captured = msgspec.structs.replace(xyb, a=phone(), captured_at=now)
    assert s.replace_binding(xyb, captured, now)
    assert s.cool_offs([c, captured.a], now) == {}
    assert s.delete_binding(xyb.bind_id)
    assert set(s.cool_offs([captured.a], now)) == {x2, y2}
    s.record_cool_offs([msgspec.structs.replace(axyb, a=c)], now)  # an index kept elsewhere
    assert set(s.cool_offs([c], now)) == {x, y, x2, y2}


def test_block_list(anys: SyncStore) -> None:
    s = anys
    acc, other = new_account(s), new_account(s)
    callers = sorted(phone() for _ in range(4))
    assert s.add_blocked(acc.id, callers[:3], T0, 10) == 3
    assert s.add_blocked(acc.id, callers[2:], T0, 10) == 1  # one was there already
    assert s.add_blocked(acc.id, [phone()], T0, 4) is None  # past the cap: nothing added
    assert s.add_blocked(acc.id, callers[:1], T0, 4) == 0  # at the cap, nothing new: fine
    assert s.list_blocked(acc.id, 10, 0) == (callers, 4)
    assert s.list_blocked(acc.id, 2, 1) == (callers[1:3], 4)
    assert s.list_blocked(other.id, 10, 0) == ([], 0)
    assert s.remove_blocked(acc.id, [callers[0], phone()]) == 1
    assert s.remove_blocked(other.id, callers) == 0
    assert s.list_blocked(acc.id, 10, 0) == (callers[1:], 3)


def test_concurrent_adds_never_take_a_block_list_past_its_cap(any_store_url: str) -> None:
    """Two adds that each fit but together do not: exactly one lands. Before, the cap was
    checked before the insert and both landed; numbers past the cap were listed and never
    enforced (each process loads the first cap numbers of a list)."""
    with _sync_store(any_store_url) as s:
        accounts = [new_account(s) for _ in range(6)]
    step = threading.Barrier(2)

    async def race(store: Store, i: int) -> list[int | None]:
        results = []
        for acc in accounts:
            step.wait(timeout=30)
            results.append(await store.add_blocked(acc.id, [phone() for _ in range(3)], T0, 5))
        return results

    first, second = in_threads(any_store_url, 2, race)
    with _sync_store(any_store_url) as s:
        for acc, one, two in zip(accounts, first, second, strict=True):
            assert sorted((one, two), key=str) == [3, None], (one, two)
            assert s.list_blocked(acc.id, 10, 0)[1] == 3


# --- THE RACE: concurrent writers through the API -------------------------------------------------
def check_i1(items: list[dict[str, Any]]) -> None:
    """On each X, a number is a party of at most one listed binding."""
    seen: Counter[tuple[str, str]] = Counter()
    for item in items:
        for party in (item["phoneA"], item["phoneB"]):
            if party:
                seen[(item["did"], party)] += 1
    doubled = [key for key, count in seen.items() if count > 1]
    assert not doubled, f"I1 broken: {doubled}"


class Race:
    """Writers bind random pairs of six numbers over a few X and unbind acknowledged bindings
    (also each other's), while a monitor checks I1 on live listings."""

    def __init__(self, servers: list[Server], tenant: Tenant, writers: int, ops: int):
        self.servers, self.tenant, self.writers, self.ops = servers, tenant, writers, ops
        self.phones = [phone() for _ in range(6)]
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, str, str]] = {}  # bindId -> (did, A, B)
        self.unbound: set[str] = set()
        self.refused_unbinds: set[str] = set()  # 10013: must have been unbound by someone
        self.live: list[str] = []
        self.codes: Counter[tuple[str, int]] = Counter()
        self.failures: list[Any] = []
        self.snapshots = 0
        self.done = threading.Event()

    def writer(self, i: int) -> None:
        rnd = random.Random(i)
        with self.servers[i % len(self.servers)].client(self.tenant) as client:
            for k in range(self.ops):
                with self.lock:
                    victim = rnd.choice(self.live) if self.live and rnd.random() < 0.45 else None
                if victim is not None:
                    # A nonce keeps concurrent unbinds of one binding from being replays.
                    env = client.call("unbindAXB", {"bindId": victim, "nonce": f"{i}.{k}"})
                    self.codes["unbind", env["code"]] += 1
                    with self.lock:
                        if env["code"] == 0:
                            if victim in self.unbound:
                                self.failures.append(("unbound twice", victim))
                            self.unbound.add(victim)
                            if victim in self.live:
                                self.live.remove(victim)
                        elif env["code"] == 10013:
                            self.refused_unbinds.add(victim)
                        else:
                            self.failures.append(env)
                else:
                    a, b = rnd.sample(self.phones, 2)
                    env = client.bind_axb(a, b, 0, businessId=f"race-{i}-{k}")
                    self.codes["bind", env["code"]] += 1
                    with self.lock:
                        if env["code"] == 0:
                            bind_id = env["data"]["bindId"]
                            if bind_id in self.acked:
                                self.failures.append(("bindId twice", bind_id))
                            self.acked[bind_id] = (env["data"]["did"], a, b)
                            self.live.append(bind_id)
                        elif env["code"] != 10010:
                            self.failures.append(env)

    def monitor(self) -> None:
        with self.servers[-1].client(self.tenant) as client:
            while not self.done.is_set():
                env = client.list_bindings(1000, 0)
                if env["code"] != 0:
                    self.failures.append(env)
                    return
                try:
                    check_i1(env["data"]["bindList"])
                except AssertionError as exc:
                    self.failures.append(str(exc))
                    return
                self.snapshots += 1
                time.sleep(0.02)

    def run(self) -> None:
        monitor = threading.Thread(target=self.monitor)
        writers = [threading.Thread(target=self.writer, args=(i,)) for i in range(self.writers)]
        monitor.start()
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(120)
        self.done.set()
        monitor.join(30)

    def check(self, store_url: str) -> None:
        assert not self.failures, self.failures[:5]
        # Enough happened for the race to mean something.
        assert self.codes["bind", 0] >= 20 and self.codes["unbind", 0] >= 10, self.codes
        assert self.codes["bind", 10010] > 0, self.codes
        assert self.snapshots > 0
        assert self.refused_unbinds <= self.unbound
        expected = set(self.acked) - self.unbound
        for server in self.servers:  # every process sees the same committed state
            with server.client(self.tenant) as client:
                data = client.list_bindings(1000, 0)["data"]
            items = data["bindList"]
            assert {item["bindId"] for item in items} == expected
            assert data["total"] == len(items)
            check_i1(items)
            for item in items:
                assert (item["did"], item["phoneA"], item["phoneB"]) == self.acked[item["bindId"]]
                assert item["did"] in self.tenant.numbers
        # And the store itself agrees, counters included.
        with _sync_store(store_url) as st:
            now = int(time.time())
            listed, total = st.list_bindings(self.tenant.account_id, 1000, 0, now)
            assert {b.bind_id for b in listed} == expected and total == len(expected)
            per_x = Counter(b.x for b in listed)
            usage = {u.x: u.active_bindings for u in st.list_numbers(self.tenant.account_id, now)}
            assert usage == {x: per_x.get(x, 0) for x in self.tenant.numbers}
            free = st.free_numbers(self.tenant.account_id, 852, [phone()], now, 100)
            assert {c.x: c.active_bindings for c in free} == usage
            for b in listed:
                for party in b.parties():
                    assert st.find_by_party(b.x, party, now) == b


def bind_all_at_once(servers: list[Server], tenant: Tenant, n: int,
                     customer_bind_id: str) -> list[dict[str, Any]]:
    """``n`` clients spread over ``servers`` send one bind (same A, B, customerBindId) at once."""
    a, b = phone(), phone()
    answers: list[dict[str, Any]] = [{} for _ in range(n)]
    barrier = threading.Barrier(n)

    def bind(i: int) -> None:
        with servers[i % len(servers)].client(tenant) as client:
            barrier.wait(10)
            # The nonce keeps the bodies apart: identical ones would be refused as replays.
            answers[i] = client.bind_axb(a, b, 0, customerBindId=customer_bind_id,
                                         nonce=str(i))

    threads = [threading.Thread(target=bind, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_race_one_server_many_clients(store_url: str) -> None:
    tenant = create_tenant(store_url, Role.CUSTOMER, numbers=3)
    server = Server(store_url)
    try:
        race = Race([server], tenant, writers=8, ops=60)
        race.run()
        race.check(store_url)
    finally:
        server.stop()


def test_race_two_servers_one_database(store_url: str) -> None:
    tenant = create_tenant(store_url, Role.CUSTOMER, numbers=3)
    servers = [Server(store_url), Server(store_url)]
    try:
        race = Race(servers, tenant, writers=16, ops=40)
        race.run()
        race.check(store_url)
        # I3 across processes: one customerBindId sent by every writer at once, through both
        # servers, makes one binding, and every writer is told that one.
        for round_ in range(3):
            answers = bind_all_at_once(servers, tenant, 8, f"same-{round_}")
            assert {env["code"] for env in answers} == {0}, answers
            assert len({env["data"]["bindId"] for env in answers}) == 1, answers
        with servers[0].client(tenant) as client:
            data = client.list_bindings(1000, 0)["data"]
        assert data["total"] == len(set(race.acked) - race.unbound) + 3
        check_i1(data["bindList"])
    finally:
        for server in servers:
            server.stop()


# --- the binding modes (modes.md): keys on Y and "*", compare-and-swap ------------------------
def _xyb(account: Account, x: str, y: str, b: str) -> Binding:
    return Binding(bind_id=new_bind_id(x), account_id=account.id, x=x, a="", b=b, extension="",
                   bind_type=BIND_TYPE_XYB, customer_bind_id="", business_id="", flag=0,
                   expire_second=0, expire_at=0, created_at=T0, y=y)


def test_a_binding_held_alone_shares_its_x_with_none(s: SyncStore) -> None:
    account = new_account(s)
    x, y, other = new_numbers(s, account, 3)
    held = _xyb(account, x, y, phone())
    s.insert_binding(held, T0)
    assert conflict(s, binding(account, x, phone(), phone())) is PARTY
    assert conflict(s, binding(account, x, phone(), ext="123")) is PARTY
    # I1 on Y: B is a party there.
    assert conflict(s, binding(account, y, held.b, phone())) is PARTY
    assert s.find_by_party(x, EXCLUSIVE, T0) == held
    assert s.find_by_party(y, held.b, T0) == held
    # An X with a binding cannot be held alone.
    s.insert_binding(binding(account, other, phone(), phone()), T0)
    assert conflict(s, _xyb(account, other, y, phone())) is PARTY
    assert s.delete_binding(held.bind_id)
    assert s.find_by_party(y, held.b, T0) is None and s.find_by_party(x, EXCLUSIVE, T0) is None
    s.insert_binding(binding(account, x, phone(), phone()), T0)


def test_concurrent_captures_of_one_binding_have_one_winner(s: SyncStore,
                                                            store_url: str) -> None:
    account = new_account(s)
    x, y = new_numbers(s, account, 2)
    held = _xyb(account, x, y, phone())
    s.insert_binding(held, T0)
    callers = [phone() for _ in range(4)]

    async def capture(store: Store, i: int) -> bool:
        captured = msgspec.structs.replace(held, a=callers[i], captured_at=T0)
        return await store.replace_binding(held, captured, T0)

    results = in_threads(store_url, len(callers), capture)
    assert results.count(True) == 1 and results.count(False) == len(callers) - 1, results
    winner = callers[results.index(True)]
    stored = s.get_binding(held.bind_id, T0)
    assert stored is not None and stored.a == winner and stored.captured_at == T0
    # Keys moved with it: X is free, A and B are parties on Y.
    assert s.find_by_party(x, EXCLUSIVE, T0) is None
    assert s.find_by_party(y, winner, T0) == stored
    s.insert_binding(binding(account, x, phone(), phone()), T0)
    # A stale compare changes nothing.
    assert not s.replace_binding(held, msgspec.structs.replace(held, a=phone()), T0)


def test_a_number_with_any_key_of_a_binding_is_not_removed_without_force(s: SyncStore) -> None:
    account = new_account(s)
    x, y, e = new_numbers(s, account, 3)
    held = _xyb(account, x, y, phone())
    s.insert_binding(held, T0)
    # Held alone on X, B on Y: neither number leaves quietly.
    assert s.remove_numbers([x], False, T0) == [x]
    assert s.remove_numbers([y], False, T0) == [y]
    # An NXEYB parent holds only an extension on its X.
    parent = msgspec.structs.replace(binding(account, e, "", phone()), a="",
                                     bind_type=BIND_TYPE_NXEYB, extension="1234")
    s.insert_binding(parent, T0)
    assert s.remove_numbers([e], False, T0) == [e]
    assert s.remove_numbers([y, e], True, T0) == []
    assert s.get_binding(held.bind_id, T0) is None and s.get_binding(parent.bind_id, T0) is None
    assert s.find_by_party(x, EXCLUSIVE, T0) is None


def test_concurrent_binds_never_share_a_number_held_alone(s: SyncStore, store_url: str) -> None:
    """Binds racing on one X, some holding it alone (XYB), others plain: either one binding
    that holds X alone is there and nothing else, or only plain ones."""
    account = new_account(s)
    x, y = new_numbers(s, account, 2)
    n = 6

    async def bind(store: Store, i: int) -> bool:
        new = (_xyb(account, x, y, phone()) if i % 2 else binding(account, x, phone(), phone()))
        try:
            await store.insert_binding(new, T0)
        except BindConflict:
            return False
        return True

    results = in_threads(store_url, n, bind)
    assert all(isinstance(r, bool) for r in results), results
    alone = [i for i, won in enumerate(results) if won and i % 2]
    plain = [i for i, won in enumerate(results) if won and not i % 2]
    assert (len(alone) == 1 and not plain) or (not alone and plain), results
