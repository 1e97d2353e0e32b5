"""Bulk-load millions of active bindings into a pns store, fast, as if bound through the API.

    .venv/bin/python bench/load.py --store sqlite:////tmp/pns-bench.db --bindings 1000000
    .venv/bin/python bench/load.py --store postgresql://postgres@127.0.0.1:5432/pnsbench \\
        --bindings 1000000

Accounts and virtual numbers go through the store API (``open_store``, ``create_account``,
``add_numbers``), so the schema is created or migrated by pns itself. Bindings are then written in
big batches with the store's own driver, straight into the schema pns defines:

* ``bindings``: one row per binding, ``seq`` given explicitly (the AUTOINCREMENT / BIGSERIAL
  counter is moved past it), random 32-hex ``bind_id`` as pns makes them, ``expire_at`` in the
  future (``--expire-second``, default 7 days) and ``created_at`` now;
* ``parties``: one row per party, ``(x, number) -> seq`` (the I1 key);
* ``numbers.active``: the allocation counter, kept by a row trigger when pns binds. Firing it a
  million times costs more than the inserts, so the loader switches it off inside its one
  transaction and recomputes every counter once at the end (``count(*)`` of ``bindings`` per X,
  exactly what the trigger would have counted), then switches it back on before committing. On
  SQLite the trigger is dropped and recreated from its own text in ``sqlite_master``; on
  PostgreSQL ``ALTER TABLE ... DISABLE/ENABLE TRIGGER``. A crash mid-load rolls all of it back.

SQLite: ``executemany`` inside one ``BEGIN IMMEDIATE`` transaction (this connection only runs
with ``synchronous=OFF`` and a large page cache), then a WAL checkpoint (TRUNCATE). PostgreSQL:
``COPY`` (asyncpg ``copy_records_to_table``) inside one transaction, then ``VACUUM ANALYZE`` of
the three tables, the state autovacuum reaches on its own after a bulk insert.

The data set is deterministic, so a benchmark knows every answer without asking the store:
binding ``k`` (0, 1, 2, ...) is ``a = 8525`` + k (7 digits), ``b = 8526`` + k, on virtual number
``x = 8523`` + (k mod numbers) (7 digits), all Hong Kong (+852) numbers. Every party is distinct,
so each X carries ``bindings / numbers`` bindings with distinct parties (I1 holds by
construction), and the load is spread evenly over the numbers at every size. Loading is
incremental: asking for 10^6 on a store holding the first 10^5 adds the other 900,000.

After loading, the store is checked: the counters equal the bindings per X, there are two
parties per binding, a sample of real signed ``queryAXB`` requests through pns's own API layer
(``pns.api.Api.handle``) answers code 0 with the expected callee, and a ``bindAXB`` of a loaded
pair on its X is refused with 10017 (the parties rows hold).

Prints a JSON summary as its last line (accounts, counts, seconds, bindings/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

COUNTRY_CODE = 852
DEFAULT_NUMBERS = 1000
DEFAULT_EXPIRE_SECOND = 7 * 86400
BATCH = 50_000

# Bench accounts: fixed keys so every tool of bench/ can sign without asking the store.
CUSTOMER_KEY = "bench-customer"
CUSTOMER_SECRET = "bench-customer-secret-8c1f2a"
SWITCH_KEY = "bench-switch"
SWITCH_SECRET = "bench-switch-secret-3d9e47"

# Number prefixes (852 + 8 digits): X, loaded A, loaded B. bench/run.py binds new pairs with
# 8527... / 8528..., so they never meet a loaded party.
X_PREFIX, A_PREFIX, B_PREFIX = "8523", "8525", "8526"
BIND_A_PREFIX, BIND_B_PREFIX = "8527", "8528"
MAX_INDEX = 10**7

BINDING_COLUMNS = (
    "seq", "bind_id", "account_id", "x", "a", "b", "extension", "bind_type", "customer_bind_id",
    "business_id", "flag", "expire_second", "expire_at", "created_at",
)

# numbers.active recomputed from scratch, as the insert trigger counts: every bindings row on X
# (expired ones too, until swept). One pass over bindings, whatever indexes the schema has.
RECOUNT = (
    "UPDATE numbers SET active = 0",
    "UPDATE numbers SET active = c.n FROM "
    "(SELECT x, count(*) AS n FROM bindings GROUP BY x) AS c WHERE numbers.x = c.x",
)
COUNTERS_WRONG = (
    "SELECT count(*) FROM numbers n LEFT JOIN "
    "(SELECT x, count(*) AS c FROM bindings GROUP BY x) AS per_x ON per_x.x = n.x "
    "WHERE n.active <> coalesce(per_x.c, 0)"
)

console = Console(stderr=True)


def x_of(i: int) -> str:
    return f"{X_PREFIX}{i:07d}"


def a_of(k: int) -> str:
    return f"{A_PREFIX}{k:07d}"


def b_of(k: int) -> str:
    return f"{B_PREFIX}{k:07d}"


def binding_of(k: int, numbers: int) -> tuple[str, str, str]:
    """(x, a, b) of loaded binding k."""
    return x_of(k % numbers), a_of(k), b_of(k)


def sample_queries(total: int, numbers: int, n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """``n`` distinct (caller, did, expected callee) of loaded bindings 0..total-1, spread over
    the whole set; each binding is asked from either side (A reaches B, B reaches A)."""
    rng = random.Random(seed)
    n = min(n, 2 * total)
    picked: set[tuple[int, int]] = set()
    while len(picked) < n:
        picked.add((rng.randrange(total), rng.randrange(2)))
    out = []
    for k, side in sorted(picked):
        x, a, b = binding_of(k, numbers)
        out.append((a, x, b) if side == 0 else (b, x, a))
    return out


@dataclass
class LoadResult:
    store: str
    bindings: int  # loaded bindings in the store after this run
    added: int
    numbers: int
    seconds: float
    bindings_per_s: float
    verify: dict[str, Any] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _rows(start: int, end: int, numbers: int, account_id: int, seq0: int, expire_second: int,
          now: int) -> Iterator[tuple[tuple[Any, ...], tuple[str, str, int], tuple[str, str, int]]]:
    expire_at = now + expire_second if expire_second else 0
    rand = os.urandom
    for k in range(start, end):
        x, a, b = binding_of(k, numbers)
        seq = seq0 + (k - start)
        yield (
            (seq, rand(16).hex(), account_id, x, a, b, "", 0, "", "", 0, expire_second,
             expire_at, now),
            (x, a, seq),
            (x, b, seq),
        )


def _batches(start: int, end: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, end, BATCH):
        yield lo, min(lo + BATCH, end)


# --- accounts and numbers, through the store API ----------------------------------------------
async def prepare(url: str, numbers: int) -> tuple[int, int, int]:
    """Create (or find) the bench accounts and numbers through pns's store API.

    Returns (customer account id, switch account id, loaded bindings already in the store)."""
    from pns.model import Role, VirtualNumber
    from pns.store import open_store

    store = await open_store(url)
    try:
        now = int(time.time())
        ids = []
        for name, key, secret, role in (
            ("bench", CUSTOMER_KEY, CUSTOMER_SECRET, Role.CUSTOMER),
            ("bench-switch", SWITCH_KEY, SWITCH_SECRET, Role.SWITCH),
        ):
            account = await store.get_account(key)
            if account is None:
                account = await store.create_account(name, role, key, secret, now)
            ids.append(account.id)
        await store.add_numbers(
            [VirtualNumber(x_of(i), ids[0], COUNTRY_CODE, True) for i in range(numbers)]
        )
    finally:
        await store.close()
    return ids[0], ids[1], await count_loaded(url)


async def count_loaded(url: str) -> int:
    """Loaded bindings (the 8525... A parties) in the store."""
    sql = (f"SELECT count(*) FROM bindings WHERE a >= '{A_PREFIX}0000000' "
           f"AND a <= '{A_PREFIX}9999999'")
    if url.startswith("sqlite:"):
        con = sqlite3.connect(_sqlite_path(url))
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(url))
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def _sqlite_path(url: str) -> str:
    from pns.store.sqlite import path_from_url

    return path_from_url(url)


def _pg_dsn(url: str) -> str:
    return url.split("?", 1)[0]


# --- SQLite -------------------------------------------------------------------------------------
def load_sqlite(url: str, start: int, end: int, numbers: int, account_id: int,
                expire_second: int, now: int, progress: Progress | None) -> None:
    con = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout = 10000")
        con.execute("PRAGMA synchronous = OFF")  # this connection only; pns serves with NORMAL
        con.execute("PRAGMA cache_size = -1048576")  # 1 GiB
        con.execute("PRAGMA temp_store = MEMORY")
        task = (progress.add_task("SQLite bindings", total=end - start, rate="")
                if progress else None)
        con.execute("BEGIN IMMEDIATE")
        try:
            (trigger_sql,) = con.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                "AND name = 'bindings_count_insert'"
            ).fetchone()
            con.execute("DROP TRIGGER bindings_count_insert")
            (max_seq,) = con.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()
            row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'bindings'").fetchone()
            seq0 = max(int(max_seq), int(row[0]) if row else 0) + 1
            insert_binding = (
                f"INSERT INTO bindings ({', '.join(BINDING_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(BINDING_COLUMNS))})"
            )
            t0 = time.monotonic()
            for lo, hi in _batches(start, end):
                rows = list(_rows(lo, hi, numbers, account_id, seq0 + (lo - start),
                                  expire_second, now))
                con.executemany(insert_binding, [r[0] for r in rows])
                con.executemany("INSERT INTO parties (x, number, seq) VALUES (?, ?, ?)",
                                [p for r in rows for p in r[1:]])
                if progress is not None and task is not None:
                    done = hi - start
                    progress.update(task, completed=done,
                                    rate=f"{done / (time.monotonic() - t0):,.0f}/s")
            for sql in RECOUNT:
                con.execute(sql)
            con.execute(trigger_sql)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


# --- PostgreSQL ---------------------------------------------------------------------------------
async def load_postgres(url: str, start: int, end: int, numbers: int, account_id: int,
                        expire_second: int, now: int, progress: Progress | None) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(url))
    try:
        task = (progress.add_task("PostgreSQL bindings", total=end - start, rate="")
                if progress else None)
        async with conn.transaction():
            await conn.execute("ALTER TABLE bindings DISABLE TRIGGER bindings_count_insert")
            seq_name = await conn.fetchval("SELECT pg_get_serial_sequence('bindings', 'seq')")
            seq0 = int(await conn.fetchval(
                f"SELECT greatest(coalesce(max(seq), 0), "
                f"(SELECT last_value FROM {seq_name})) + 1 FROM bindings"
            ))
            t0 = time.monotonic()
            for lo, hi in _batches(start, end):
                rows = list(_rows(lo, hi, numbers, account_id, seq0 + (lo - start),
                                  expire_second, now))
                await conn.copy_records_to_table(
                    "bindings", records=[r[0] for r in rows], columns=list(BINDING_COLUMNS))
                await conn.copy_records_to_table(
                    "parties", records=[p for r in rows for p in r[1:]],
                    columns=["x", "number", "seq"])
                if progress is not None and task is not None:
                    done = hi - start
                    progress.update(task, completed=done,
                                    rate=f"{done / (time.monotonic() - t0):,.0f}/s")
            await conn.execute(f"SELECT setval('{seq_name}', (SELECT max(seq) FROM bindings))")
            for sql in RECOUNT:
                await conn.execute(sql)
            await conn.execute("ALTER TABLE bindings ENABLE TRIGGER bindings_count_insert")
        await conn.execute("VACUUM ANALYZE bindings")
        await conn.execute("VACUUM ANALYZE parties")
        await conn.execute("VACUUM ANALYZE numbers")
    finally:
        await conn.close()


# --- checks -------------------------------------------------------------------------------------
def _signed_headers(key: str, secret: str, action: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time() * 1000))
    sign = hashlib.md5(
        f"accessKey={key}&action={action}&bizType=5&ts={ts}&body=".encode() + body
        + f"&accessSecret={secret}".encode()
    ).hexdigest()
    return {"accesskey": key, "action": action, "biztype": "5", "ts": ts, "sign": sign,
            "content-type": "application/json"}


async def verify(url: str, total: int, numbers: int, samples: int = 20) -> dict[str, Any]:
    """Counters, parties, real signed queryAXB through pns's API layer, and a refused bind."""
    from pns.api import Api
    from pns.core import Service
    from pns.errors import PnsError
    from pns.store import open_store

    store = await open_store(url)
    out: dict[str, Any] = {}
    try:
        if url.startswith("sqlite:"):
            con = store._conn  # type: ignore[attr-defined]
            rows = con.execute(
                "SELECT (SELECT count(*) FROM bindings), (SELECT count(*) FROM parties), "
                "(SELECT coalesce(sum(active), 0) FROM numbers), "
                f"({COUNTERS_WRONG})"
            ).fetchone()
        else:
            rows = await store._pool.fetchrow(  # type: ignore[attr-defined]
                "SELECT (SELECT count(*) FROM bindings), (SELECT count(*) FROM parties), "
                "(SELECT coalesce(sum(active), 0) FROM numbers), "
                f"({COUNTERS_WRONG})"
            )
        out.update(bindings=int(rows[0]), parties=int(rows[1]), counter_sum=int(rows[2]),
                   counters_wrong=int(rows[3]))
        if out["counters_wrong"] or out["counter_sum"] != out["bindings"]:
            raise RuntimeError(f"numbers.active does not match the bindings: {out}")
        if out["parties"] != 2 * out["bindings"]:
            raise RuntimeError(f"expected two parties per binding: {out}")
        service = Service(store)
        api = Api(service)
        checked = 0
        for caller, did, callee in sample_queries(total, numbers, samples, seed=11):
            body = json.dumps({"caller": caller, "did": did}, separators=(",", ":")).encode()
            resp = await api.handle(_signed_headers(SWITCH_KEY, SWITCH_SECRET, "queryAXB", body),
                                    body)
            answer = json.loads(resp.body)
            if answer.get("code") != 0 or answer["data"]["callee"] != callee:
                raise RuntimeError(f"queryAXB {caller} -> {did}: {answer}, expected {callee}")
            checked += 1
        out["queries_ok"] = checked
        # A loaded party on its X: the parties rows must refuse a second binding (I1, 10017).
        x, a, _ = binding_of(0, numbers)
        customer = await store.get_account(CUSTOMER_KEY)
        assert customer is not None
        try:
            await service.bind_axb(customer, a, f"{BIND_B_PREFIX}9999999", 60, phone_x=x)
        except PnsError as exc:
            out["rebind_refused_code"] = int(exc.code)
        else:
            raise RuntimeError(f"binding {a} again on {x} was accepted: I1 not held")
        if out["rebind_refused_code"] != 10017:
            raise RuntimeError(f"rebinding a loaded party gave {out['rebind_refused_code']}")
    finally:
        await store.close()
    return out


# --- entry points -------------------------------------------------------------------------------
async def load(url: str, total: int, *, numbers: int = DEFAULT_NUMBERS,
               expire_second: int = DEFAULT_EXPIRE_SECOND, progress: bool = True,
               check: bool = True) -> LoadResult:
    """Make the store hold ``total`` loaded bindings (adding what is missing); returns a
    summary. Raises if the store fails its checks."""
    if total > MAX_INDEX:
        raise ValueError(f"at most {MAX_INDEX} bindings")
    customer_id, _switch_id, have = await prepare(url, numbers)
    now = int(time.time())
    t0 = time.monotonic()
    if total > have:
        bar = _progress() if progress else None
        with bar if bar is not None else contextlib.nullcontext():
            if url.startswith("sqlite:"):
                await asyncio.to_thread(load_sqlite, url, have, total, numbers, customer_id,
                                        expire_second, now, bar)
            else:
                await load_postgres(url, have, total, numbers, customer_id, expire_second, now,
                                    bar)
    seconds = time.monotonic() - t0
    added = max(total - have, 0)
    result = LoadResult(
        store=url.split(":", 1)[0], bindings=max(total, have), added=added, numbers=numbers,
        seconds=round(seconds, 2), bindings_per_s=round(added / seconds) if added else 0,
        accounts={"customer": CUSTOMER_KEY, "switch": SWITCH_KEY},
    )
    if check:
        result.verify = await verify(url, max(total, have), numbers)
    return result


def index_bytes(total: int, numbers: int = DEFAULT_NUMBERS) -> dict[str, Any]:
    """Bytes per binding of ``pns serve``'s in-memory read index (``pns.store.memory``) over
    ``total`` bindings of this data set, counted by tracemalloc (every allocation the index
    holds: keys, values and the dicts), and how long building it took."""
    import gc
    import tracemalloc

    from pns.model import Binding
    from pns.store.memory import BindingIndex

    now = int(time.time())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    index = BindingIndex()
    for row, _a, _b in _rows(0, total, numbers, 1, 1, DEFAULT_EXPIRE_SECOND, now):
        index.add(row[0], Binding(*row[1:]))
    seconds = time.monotonic() - t0
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    x, a, _b = binding_of(total - 1, numbers)
    assert index.find_by_party(x, a, now) is not None
    return {"bindings": total, "bytes": held, "bytes_per_binding": round(held / total, 1),
            "build_s_traced": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index-bytes", type=int, metavar="N",
                   help="only measure the in-memory index's bytes per binding over N bindings")
    p.add_argument("--store", help="sqlite:///PATH or postgresql://...")
    p.add_argument("--bindings", type=int, help="loaded bindings wanted in all")
    p.add_argument("--numbers", type=int, default=DEFAULT_NUMBERS,
                   help="virtual numbers the bindings are spread over")
    p.add_argument("--expire-second", type=int, default=DEFAULT_EXPIRE_SECOND,
                   help="lifetime of the loaded bindings (0 = never expire)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-check", action="store_true", help="skip the checks after loading")
    a = p.parse_args(argv)
    if a.index_bytes:
        print(json.dumps(index_bytes(a.index_bytes, a.numbers), separators=(",", ":")))
        return 0
    if not a.store or a.bindings is None:
        p.error("--store and --bindings are required")
    result = asyncio.run(load(a.store, a.bindings, numbers=a.numbers,
                              expire_second=a.expire_second, progress=not a.no_progress,
                              check=not a.no_check))
    print(json.dumps(asdict(result), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
