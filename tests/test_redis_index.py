"""PostgreSQL + Redis Cluster specifics: what the conformance suite cannot see from outside.

- a bindId names its X, and every key of one X lives in one slot;
- I3's reserve → insert → confirm survives a binder dying between the steps: a reservation
  whose insert never landed frees its customerBindId once its lease is over; one whose insert
  landed becomes the binding; an insert after its reservation's deadline is refused;
- a slot moving between masters (MOVED, ASK, TRYAGAIN) under binds and queries is followed;
- ``--bindings``, ``PNS_BINDINGS`` and the config file's ``bindings`` reach every command; bad
  URLs are one clear line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from pns.client import PnsClient
from pns.ids import bind_id_x, new_bind_id
from pns.model import Binding, Role
from pns.store import BindConflict, ConflictKind, StoreError, open_store
from pns.store.composite import CompositeStore, now_ms

from .conftest import Server, cli, composite_url, create_tenant, pns_command, unique_hk
from .redis_cluster import Cluster, redis_cli
from .test_store_conformance import T0, SyncStore, binding, new_account, new_numbers, phone


@pytest.fixture
def url(pg_database: str, redis_cluster: Cluster) -> str:
    return composite_url(pg_database, redis_cluster)


@pytest.fixture
def s(url: str) -> Iterator[SyncStore]:
    with asyncio.Runner() as runner:
        store = runner.run(open_store(url))
        try:
            yield SyncStore(store, runner)
        finally:
            runner.run(store.close())


def test_a_bind_id_names_its_x() -> None:
    for x in ("85230000001", "1", "123456789012345"):
        bind_id = new_bind_id(x)
        assert len(bind_id) == 32 and int(bind_id, 16) >= 0 and bind_id == bind_id.lower()
        assert bind_id_x(bind_id) == x
    assert new_bind_id("1") != new_bind_id("1")
    for unroutable in ("", "1234567890123456", "85x"):
        assert len(new_bind_id(unroutable)) == 32
    for hostile in ("0" * 32, "f" * 32, "b852" + "z" * 28, "g" * 32, "b85", "\u0661" * 32,
                    "b" + "\u0661" * 11 + "0" * 20):
        assert bind_id_x(hostile) is None


def test_every_key_of_one_x_is_in_one_slot(s: SyncStore, redis_cluster: Cluster) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    s.insert_binding(binding(acc, x, phone(), phone(), ext="123"), T0)
    keys: list[str] = []
    for port in redis_cluster.masters():
        keys += redis_cli(port, "--scan", "--pattern", f"*{{{x}}}*").split()
    assert len(keys) == 3, keys  # bindings, parties, extensions
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_a_reservation_whose_insert_never_landed_frees_its_customer_bind_id(
        s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    dead = binding(acc, x1, phone(), phone(), cbid="crash-1")
    # The binder reserved, then died before the index heard of it.
    assert reserve(s, dead, now_ms() + 60_000) is None
    fresh = binding(acc, x2, phone(), phone(), cbid="crash-1")
    assert conflict_kind(s, fresh) is ConflictKind.CUSTOMER_BIND_ID  # its lease is running
    assert s.find_by_customer_bind_id(acc.id, "crash-1", T0) is None  # never listed meanwhile
    assert s.list_bindings(acc.id, 10, 0, T0) == ([], 0)
    expire_lease(s, dead.bind_id)
    s.insert_binding(fresh, T0)  # the next claimant settles it: the insert never came
    assert s.find_by_customer_bind_id(acc.id, "crash-1", T0) == fresh
    assert s.get_binding(dead.bind_id, T0) is None
    assert s.list_bindings(acc.id, 10, 0, T0) == ([fresh], 1)


def test_a_reservation_whose_insert_landed_becomes_the_binding(s: SyncStore) -> None:
    acc = new_account(s)
    x1, x2 = new_numbers(s, acc, 2)
    landed = binding(acc, x1, phone(), phone(), cbid="crash-2")
    assert reserve(s, landed, now_ms() + 60_000) is None
    index_insert(s, landed)  # ... and died before confirming
    # A retry of the same customerBindId finds it (its binder's lease still runs).
    assert conflict_kind(s, binding(acc, x2, phone(), phone(), cbid="crash-2")) \
        is ConflictKind.CUSTOMER_BIND_ID
    assert s.find_by_customer_bind_id(acc.id, "crash-2", T0) == landed
    assert s.list_bindings(acc.id, 10, 0, T0) == ([landed], 1)
    # The sweeper settles the same way, without a claimant.
    other = binding(acc, x2, phone(), phone(), cbid="crash-3")
    assert reserve(s, other, now_ms() - 1) is None
    index_insert(s, other)
    s.sweep(T0, 100)
    assert s.find_by_customer_bind_id(acc.id, "crash-3", T0) == other
    gone = binding(acc, x2, phone(), phone(), cbid="crash-4")
    assert reserve(s, gone, now_ms() - 1) is None
    s.sweep(T0, 100)
    s.insert_binding(binding(acc, x1, phone(), phone(), cbid="crash-4"), T0)


def test_an_insert_after_its_deadline_is_refused(s: SyncStore) -> None:
    acc = new_account(s)
    (x,) = new_numbers(s, acc, 1)
    late = binding(acc, x, phone(), phone())
    with pytest.raises(StoreError, match="deadline"):
        index_insert(s, late, now_ms() - 1)
    assert s.get_binding(late.bind_id, T0) is None
    assert s.find_by_party(x, late.a, T0) is None


def conflict_kind(s: SyncStore, new: Binding) -> ConflictKind:
    with pytest.raises(BindConflict) as info:
        s.insert_binding(new, T0)
    return info.value.kind


def _composite(s: SyncStore) -> CompositeStore:
    assert isinstance(s.store, CompositeStore)
    return s.store


# Reach past the composite's sequence, to stop it where a crash would.
def reserve(s: SyncStore, b: Binding, lease_until_ms: int) -> object:
    return s._runner.run(_composite(s).ledger.reserve(b, T0, lease_until_ms))


def index_insert(s: SyncStore, b: Binding, deadline_ms: int = 0) -> int:
    return s._runner.run(_composite(s).index.insert_on_x(b, T0, deadline_ms))


def expire_lease(s: SyncStore, bind_id: str) -> None:
    s._runner.run(_composite(s).ledger.set_lease(bind_id, now_ms() - 1))


# --- a slot moving between masters -------------------------------------------------------------
def _node_ids(cluster: Cluster) -> dict[int, str]:
    ids = {}
    for line in redis_cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        fields = line.split()
        ids[int(fields[1].split(":")[1].split("@")[0])] = fields[0]
    return ids


def _owner(cluster: Cluster, slot: int) -> int:
    for line in redis_cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "master" not in fields[2]:
            continue
        for span in fields[8:]:
            low, _, high = span.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return int(fields[1].split(":")[1].split("@")[0])
    raise AssertionError(slot)


def test_a_slot_moving_between_masters_is_followed(url: str, redis_cluster: Cluster) -> None:
    tenant = create_tenant(url, numbers=1)
    switch = create_tenant(url, Role.SWITCH)
    (x,) = tenant.numbers
    server = Server(url)
    try:
        with server.client(tenant) as c, server.client(switch) as sw:
            a, b = unique_hk("1"), unique_hk("2")
            assert c.bind_axb(a, b, 0)["code"] == 0
            prefix = url.rsplit("/", 1)[1]
            keys = [f"{prefix}{{{x}}}:{k}" for k in ("b", "p", "e")]
            slot = key_slot(keys[0].encode())
            source = _owner(redis_cluster, slot)
            target = next(p for p in redis_cluster.masters() if p != source)
            ids = _node_ids(redis_cluster)
            redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
            redis_cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
            # Half moved: the parties' hash on the target, the bindings' still on the source.
            redis_cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS",
                      keys[1])
            answers = []
            for _ in range(3):
                env = sw.query(a, x)
                answers.append(env["code"])
            assert set(answers) <= {0, 10009}, answers  # TRYAGAIN until it is whole: never a crash
            redis_cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS",
                      keys[0])
            for port in redis_cluster.masters():
                redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
            deadline = time.monotonic() + 10
            while _owner(redis_cluster, slot) != target and time.monotonic() < deadline:
                time.sleep(0.1)
            # Moved: pns is told MOVED, reads the map again and carries on.
            assert sw.query(a, x)["data"]["callee"] == b
            c2, d2 = unique_hk("1"), unique_hk("2")
            bound = c.bind_axb(c2, d2, 0)
            assert bound["code"] == 0 and bound["data"]["did"] == x
            assert sw.query(d2, x)["data"]["callee"] == c2
            assert c.call("unbindAXB", {"bindId": bound["data"]["bindId"]})["code"] == 0
    finally:
        server.stop()


# --- the command line -----------------------------------------------------------------------------
def test_bindings_option_environment_and_config_file(pg_database: str, redis_cluster: Cluster,
                                                     tmp_path: Path) -> None:
    prefix = f"cli{os.getpid()}"
    bindings = f"{redis_cluster.url}/{prefix}"
    key = json.loads(cli("account", "create", "--name", "c", "--store", pg_database,
                         "--bindings", bindings).stdout)["accessKey"]
    x = unique_hk("3")
    cli("--store", pg_database, "--bindings", bindings, "numbers", "add", "--account", key, x)
    server = Server(pg_database, "--bindings", bindings)  # pns serve --bindings
    try:
        secret = next(a for a in asyncio.run(_accounts(pg_database)) if a[0] == key)[1]
        with PnsClient(server.url, key, secret) as c:
            bound = c.bind_axb(unique_hk("1"), unique_hk("2"), 0)
        assert bound["code"] == 0 and bound["data"]["did"] == x
        bind_id = bound["data"]["bindId"]
    finally:
        server.stop()
    # On the cluster, under the prefix: X's bindings hash holds it.
    hkeys = ("-c", "HKEYS", f"{prefix}{{{x}}}:b")  # -c: follow MOVED to X's master
    assert redis_cli(redis_cluster.masters()[0], *hkeys).split() == [bind_id]
    # Without the index, the PostgreSQL store alone has no such binding: every way of giving
    # --bindings to a command shows it.
    assert cli("bindings", "show", bind_id, "--store", pg_database, check=False).returncode
    assert bind_id in cli("bindings", "show", bind_id, "--store", pg_database, "--bindings",
                          bindings).stdout
    env = {**os.environ, "PNS_STORE": pg_database, "PNS_BINDINGS": bindings}
    ran = subprocess.run(pns_command("bindings", "list", "--account", key), env=env,
                         capture_output=True, text=True, timeout=60)
    assert bind_id in ran.stdout, ran.stderr
    config = tmp_path / "pns.toml"
    config.write_text(f'store = "{pg_database}"\nbindings = "{bindings}"\n')
    assert bind_id in cli("--config", str(config), "bindings", "list", "--account", key).stdout
    numbers = cli("--config", str(config), "numbers", "list", "--account", key, "--json")
    assert json.loads(numbers.stdout.splitlines()[0])["activeBindings"] == 1
    assert json.loads(cli("bindings", "unbind", bind_id, "--store", pg_database, "--bindings",
                          bindings).stdout) == {"unbound": bind_id}
    assert redis_cli(redis_cluster.masters()[0], *hkeys).split() == []


async def _accounts(url: str) -> list[tuple[str, str]]:
    store = await open_store(url)
    try:
        return [(a.access_key, a.access_secret) for a in await store.list_accounts()]
    finally:
        await store.close()


@pytest.mark.parametrize("bindings, message", [
    ("redis://127.0.0.1:1", "redis-cluster://"),
    ("redis-cluster://nohost", "HOST:PORT"),
    ("redis-cluster://127.0.0.1:1/bad{prefix}", "prefix"),
    ("redis-cluster://127.0.0.1:1?wait_ms=x", "integers"),
    ("redis-cluster://127.0.0.1:1?shards=3", "unknown option"),
    ("redis-cluster://127.0.0.1:1", "cannot open bindings index"),
])
def test_a_bad_bindings_url_is_one_clear_line(pg_database: str, bindings: str,
                                              message: str) -> None:
    result = cli("account", "list", "--store", pg_database, "--bindings", bindings, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bindings_need_a_postgresql_store(tmp_path: Path, redis_cluster: Cluster) -> None:
    cli("migrate", "--store", f"sqlite:///{tmp_path}/p.db")  # only a store that exists is used
    result = cli("account", "list", "--store", f"sqlite:///{tmp_path}/p.db", "--bindings",
                 redis_cluster.url, check=False)
    assert result.returncode != 0 and "PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
