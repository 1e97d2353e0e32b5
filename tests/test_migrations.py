"""Opening stores: schema versions and migrations on every store, PostgreSQL URL options, and a
database that goes away under a running server."""

from __future__ import annotations

import asyncio
import importlib
import secrets
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from types import ModuleType
from typing import Any

import pytest

from pns.model import Account, Binding, Role, VirtualNumber, binding_row
from pns.store import StoreError, open_store
from pns.store.sqlite import path_from_url

from .conftest import (
    PG_ADMIN_URL,
    Server,
    _pg_admin,
    cli,
    create_tenant,
    free_port,
    pns_command,
    unique_hk,
)
from .test_store_conformance import T0, binding, fresh_store_url, phone

__all__ = ["fresh_store_url"]  # the fixture, shared with the conformance suite


def store_module(url: str) -> ModuleType:
    name = "sqlite" if url.startswith("sqlite") else "postgres"
    return importlib.import_module(f"pns.store.{name}")


async def _pg(url: str, sql: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def schema_version(url: str) -> int:
    if url.startswith("sqlite"):
        with sqlite3.connect(path_from_url(url)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    return int(asyncio.run(_pg(url, "SELECT version FROM pns_schema")))


def set_schema_version(url: str, version: int) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_from_url(url))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
    else:
        asyncio.run(_pg(url, "UPDATE pns_schema SET version = $1", version))


async def _account_as_release_1(url: str) -> int:
    """An account as the release with schema version 1 wrote it (its columns then)."""
    columns = ("INSERT INTO accounts (name, access_key, access_secret, role, created_at) "
               f"VALUES ('old', '{secrets.token_hex(8)}', 's', 'customer', {T0})")
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_from_url(url))
        with conn:
            account_id = conn.execute(columns).lastrowid
        conn.close()
        assert account_id is not None
        return account_id
    return int(await _pg(url, columns + " RETURNING id"))


async def _insert_as_release_1(url: str, bd: Binding) -> None:
    """A binding as the release with schema version 1 wrote it (its 13 columns only)."""
    values = binding_row(bd)[:13]
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_from_url(url))
        with conn:
            seq = conn.execute(
                "INSERT INTO bindings (bind_id, account_id, x, a, b, extension, bind_type, "
                "customer_bind_id, business_id, flag, expire_second, expire_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values).lastrowid
            conn.executemany("INSERT INTO parties (x, number, seq) VALUES (?, ?, ?)",
                             [(bd.x, bd.a, seq), (bd.x, bd.b, seq)])
        conn.close()
        return
    await _pg(url, "SELECT pns_insert_binding($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
                   "$12, $13, $14)", *values, T0)


def open_and_close(url: str, migrate: bool = True) -> None:
    async def go() -> None:
        store = await open_store(url, migrate=migrate)
        await store.close()

    asyncio.run(go())


# --- schema versions, on every store -----------------------------------------------------------
def test_a_new_store_is_created_at_the_current_version(fresh_store_url: str) -> None:
    open_and_close(fresh_store_url)
    assert schema_version(fresh_store_url) == store_module(fresh_store_url).SCHEMA_VERSION
    open_and_close(fresh_store_url, migrate=False)


def test_an_empty_store_needs_pns_migrate_when_not_migrating(fresh_store_url: str) -> None:
    with pytest.raises(StoreError, match="run `pns migrate`"):
        open_and_close(fresh_store_url, migrate=False)
    for _ in range(2):  # and migrating is idempotent
        out = cli("migrate", "--store", fresh_store_url).stdout
        assert "current schema version" in out
    open_and_close(fresh_store_url, migrate=False)
    assert schema_version(fresh_store_url) == store_module(fresh_store_url).SCHEMA_VERSION


@pytest.mark.parametrize("how", ["on start", "pns migrate"])
def test_a_store_of_an_older_release_is_upgraded(fresh_store_url: str, how: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module = store_module(fresh_store_url)
    current = module.SCHEMA_VERSION
    assert current >= 2, "needs a release with more than one schema version"
    # Make the store as the release with schema version 1 did, and put data in it.
    monkeypatch.setattr(module, "SCHEMA_VERSION", 1)

    async def fill() -> tuple[int, str]:
        store = await open_store(fresh_store_url)
        try:
            acc = Account(await _account_as_release_1(fresh_store_url), "old", "", "",
                          Role.CUSTOMER)
            x = unique_hk("3")
            await store.add_numbers([VirtualNumber(x, acc.id, 852)])
            bd = binding(acc, x, phone(), phone())
            await _insert_as_release_1(fresh_store_url, bd)
            return acc.id, bd.bind_id
        finally:
            await store.close()

    account_id, bind_id = asyncio.run(fill())
    assert schema_version(fresh_store_url) == 1
    monkeypatch.undo()
    with pytest.raises(StoreError, match=f"schema version 1; run `pns migrate` .* to {current}"):
        open_and_close(fresh_store_url, migrate=False)
    if how == "pns migrate":
        cli("migrate", "--store", fresh_store_url)
    else:
        open_and_close(fresh_store_url, migrate=True)
    assert schema_version(fresh_store_url) == current

    async def check() -> None:
        store = await open_store(fresh_store_url, migrate=False)
        try:
            assert (await store.get_binding(bind_id, T0)) is not None
            assert (await store.list_bindings(account_id, 10, 0, T0))[1] == 1
            assert await store.list_events(None, None, 10) == []  # a table of version 2
        finally:
            await store.close()

    asyncio.run(check())


def test_a_store_of_a_newer_release_is_refused(fresh_store_url: str) -> None:
    open_and_close(fresh_store_url)
    newer = store_module(fresh_store_url).SCHEMA_VERSION + 1
    set_schema_version(fresh_store_url, newer)
    for migrate in (True, False):
        with pytest.raises(StoreError, match=f"schema version {newer}, newer than .* upgrade pns"):
            open_and_close(fresh_store_url, migrate=migrate)
    result = cli("migrate", "--store", fresh_store_url, check=False)
    assert result.returncode != 0 and "upgrade pns" in result.stderr
    assert "Traceback" not in result.stderr
    serve = subprocess.run(
        pns_command("serve", "--port", str(free_port()), "--store", fresh_store_url),
        capture_output=True, text=True, timeout=30,
    )
    assert serve.returncode != 0 and "upgrade pns" in serve.stderr
    assert schema_version(fresh_store_url) == newer  # left as it was


def test_processes_starting_together_migrate_once(fresh_store_url: str) -> None:
    """Every worker of ``pns serve --workers N`` opens (and so migrates) a new store at once."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def start() -> None:
        async def go() -> None:
            barrier.wait(10)
            store = await open_store(fresh_store_url)
            await store.close()

        try:
            asyncio.run(go())
        except BaseException as exc:
            errors.append(exc)

    procs = [subprocess.Popen(pns_command("migrate", "--store", fresh_store_url),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert errors == []
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert schema_version(fresh_store_url) == store_module(fresh_store_url).SCHEMA_VERSION
    tenant = create_tenant(fresh_store_url, numbers=1)
    assert tenant.account_id > 0


# --- PostgreSQL: the URL, and a database that goes away --------------------------------------
def _pg_url(name: str = "", query: str = "") -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database


def test_pg_pool_options_are_read_and_stripped(pg_url: str) -> None:
    tag = f"pns-test-{secrets.token_hex(3)}"

    async def go() -> None:
        store = await open_store(
            f"{pg_url}?pool_min=2&pool_max=3&connect_timeout=5&application_name={tag}"
        )
        try:
            pool = store._pool  # type: ignore[attr-defined]
            assert (pool.get_min_size(), pool.get_max_size()) == (2, 3)
            # Other parameters are PostgreSQL settings of each session.
            assert await _pg(PG_ADMIN_URL, "SELECT count(*) FROM pg_stat_activity "
                                           "WHERE application_name = $1", tag) == 2
            # More concurrent work than connections just queues.
            await asyncio.gather(*(store.ping() for _ in range(20)))
        finally:
            await store.close()

    asyncio.run(go())


@pytest.mark.parametrize("query, message", [
    ("pool_max=many", "pool_max must be an integer"),
    ("pool_max=0", "pool_max must be at least 1"),
    ("pool_min=5&pool_max=2", "pool_min .5. is larger than pool_max .2."),
    ("connect_timeout=soon", "connect_timeout must be a number"),
])
def test_pg_bad_pool_options_are_refused(pg_url: str, query: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_and_close(f"{pg_url}?{query}")


def test_pg_unreachable_or_missing_database_is_a_clear_error() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open store") as info:
        open_and_close(f"postgresql://postgres:hunter2@127.0.0.1:{port}/pns")
    assert "hunter2" not in str(info.value)
    assert time.monotonic() - started < 10
    with pytest.raises(StoreError, match="does not exist"):
        open_and_close(_pg_url(f"pns_missing_{secrets.token_hex(4)}"))
    result = cli("migrate", "--store", f"postgresql://u:hunter2@127.0.0.1:{port}/pns",
                 check=False)
    assert result.returncode != 0 and "cannot open store" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_pg_database_gone_under_a_running_server() -> None:
    """Store failures surface: the API answers 10009 with HTTP 500 and /healthz 503; nothing
    hangs, and the server keeps running."""
    name = f"pns_gone_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    url = _pg_url(name)
    server = None
    try:
        tenant = create_tenant(url, numbers=1)
        server = Server(url)
        with server.client(tenant) as client:
            assert client.bind_axb(phone(), phone(), 0)["code"] == 0
            _pg_admin(f"DROP DATABASE {name} WITH (FORCE)")
            status, envelope = client.request("bindAXB", {"phoneA": phone(), "phoneB": phone(),
                                                          "expireSecond": 0})
            assert (status, envelope["code"]) == (500, 10009)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "/healthz", timeout=10)
        assert info.value.code == 503
        assert server.proc.poll() is None
    finally:
        if server is not None:
            server.stop()
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
