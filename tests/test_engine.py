"""The embedded store's engine and the call path below HTTP (issues 11 and 17):

- reads and ``/healthz`` are answered while another process holds SQLite's write lock, and a
  write waiting for it gets an envelope, never a frozen loop;
- ``requestId``/``callId`` are unique across processes by construction (leased worker ids);
- a ``reportCall`` never joins another account's call;
- one bounded call-reference buffer: a failing flush never fails a query and is logged once;
  what a crash loses is joined by did and caller;
- the in-memory read index sees every other process's write before its next answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pns.client import PnsClient
from pns.core import Service, Settings
from pns.ids import WORKER_IDS, new_snowflake
from pns.model import Binding, CallRef, Role, VirtualNumber
from pns.store import open_store
from pns.store.callrefs import CallRefBuffer
from pns.store.sqlite import BUSY_TIMEOUT_MS, path_from_url

from .conftest import Server, cli, create_tenant, unique_hk

T0 = 4_000_000_000


def _health(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url + "/healthz", timeout=timeout) as resp:
        return int(resp.status)


class _LockHolder:
    """Another process holding SQLite's write lock (``BEGIN IMMEDIATE``) until told to let
    go: what ``pns numbers import``, a backup tool or a second writer does to a server."""

    _SCRIPT = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"UPDATE accounts SET name = name WHERE id = 1\")\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute('COMMIT')\n"
        "print('released', flush=True)\n"
    )

    def __init__(self, path: str):
        self.proc = subprocess.Popen([sys.executable, "-c", self._SCRIPT, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def holding(self) -> bool:
        return self.proc.poll() is None

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(10)


# --- 1. reads never wait behind another process's write lock -------------------------------------
def test_reads_answer_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """Before: the loop itself took the write lock (the call-reference flush, any bind), so
    every query and /healthz waited the 10 s busy timeout. Now queries and /healthz are
    answered while the other process still holds the lock (it lets go only after them), and a
    bind queued behind the lock is answered with an envelope once it is released."""
    url = f"sqlite:///{tmp_path}/pns.db"
    customer = create_tenant(url, numbers=2)
    switch = create_tenant(url, Role.SWITCH)
    server = Server(url)
    try:
        a, b = unique_hk("1"), unique_hk("2")
        bound = server.client(customer).bind_axb(a, b, 0)["data"]
        # Client timeouts well under the store's 10 s busy timeout: a frozen loop fails here.
        sw = PnsClient(server.url, switch.access_key, switch.access_secret, timeout=4)
        holder = _LockHolder(path_from_url(url))
        bind_answer: list[dict[str, Any]] = []
        binder = threading.Thread(target=lambda: bind_answer.append(
            PnsClient(server.url, customer.access_key, customer.access_secret, timeout=30)
            .bind_axb(unique_hk("1"), unique_hk("2"), 0)))
        try:
            for _ in range(20):  # each answer's call reference is queued for a write
                answer = sw.query(a, bound["did"])
                assert answer["code"] == 0 and answer["data"]["callee"] == b
                assert _health(server.url, timeout=4) == 200
            binder.start()
            for _ in range(20):  # the bind waits for the lock; the loop does not
                assert sw.query(b, bound["did"])["data"]["callee"] == a
                assert _health(server.url, timeout=4) == 200
            assert binder.is_alive() or bind_answer[0]["code"] == 10009
            assert holder.holding()  # everything above was answered under the lock
        finally:
            holder.release()
        binder.join(30)
        assert not binder.is_alive()
        assert bind_answer[0]["code"] in (0, 10009), bind_answer
        assert server.client(customer).bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 0
    finally:
        server.stop()


def test_a_lone_write_runs_on_the_loop_unless_the_lock_is_taken(tmp_path: Path) -> None:
    """The engine's hand-over (sqlite.py, ``_Writer._inline``): a write alone in its loop
    iteration runs on the loop's own thread; writes of one iteration go together to the writer
    thread (group commit); a lone write while another process holds the write lock goes to the
    writer thread too, which waits for the lock while the loop goes on."""
    url = f"sqlite:///{tmp_path}/pns.db"

    async def go() -> None:
        store: Any = await open_store(url)
        try:
            loop_thread = threading.get_ident()
            assert await store._batched(threading.get_ident) == loop_thread
            together = await asyncio.gather(*[store._batched(threading.get_ident)
                                              for _ in range(3)])
            assert len(set(together)) == 1 and together[0] != loop_thread
            holder = _LockHolder(path_from_url(url))
            try:
                waiting = asyncio.ensure_future(store._batched(threading.get_ident))
                started = time.monotonic()
                await asyncio.sleep(0.3)
                assert not waiting.done() and time.monotonic() - started < 1.0
            finally:
                holder.release()
            assert await waiting == together[0]
        finally:
            await store.close()

    asyncio.run(go())


def test_workers_refused_on_sqlite(tmp_path: Path) -> None:
    result = cli("serve", "--workers", "2", "--port", "0", "--store",
                 f"sqlite:///{tmp_path}/pns.db", check=False)
    assert result.returncode != 0
    assert "--workers needs PostgreSQL" in result.stderr and "Traceback" not in result.stderr


# --- 2. ids unique across processes; reports never join another account's call -----------------
_ID_SCRIPT = """
import asyncio, sys, time
from pns import ids
from pns.store import open_store

async def main():
    store = await open_store(sys.argv[1])
    try:
        worker = await store.lease_worker_id(sys.argv[2], int(time.time()), 120)
    finally:
        await store.close()
    ids.use_worker(worker, 60)
    print(worker, flush=True)
    sys.stdin.readline()  # every process starts making ids at once
    made = [ids.new_snowflake() for _ in range(int(sys.argv[3]))]
    print(" ".join(made))

asyncio.run(main())
"""


def test_ids_are_unique_across_processes(store_url: str) -> None:
    """Many processes making ids in the same milliseconds: every id is distinct, because
    every process leased a distinct worker id from the store."""
    procs = [subprocess.Popen([sys.executable, "-c", _ID_SCRIPT, store_url, f"p{i}", "40000"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(8)]
    workers = []
    for proc in procs:
        assert proc.stdout is not None
        workers.append(int(proc.stdout.readline()))
    assert len(set(workers)) == len(procs) and all(0 <= w < WORKER_IDS for w in workers)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    made: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        made.extend(out.split())
    assert len(made) == 8 * 40000
    assert len(set(made)) == len(made)
    assert all(len(i) == 19 for i in made)


def test_a_lease_is_renewed_and_taken_over_only_after_it_ran_out(store_url: str) -> None:
    async def go() -> None:
        store = await open_store(store_url)
        now = int(time.time())
        holders: list[tuple[str, int]] = []
        try:
            first = await store.lease_worker_id("h1", now, 60)
            assert first is not None
            holders.append(("h1", first))
            assert await store.lease_worker_id("h1", now + 30, 60, first) == first  # renewed
            for i in range(50):
                other = await store.lease_worker_id(f"o{i}", now + 31, 60)
                assert other is not None and other != first
                holders.append((f"o{i}", other))
            assert len({w for _, w in holders}) == len(holders)
            # Another holder asking to renew h1's id does not get it.
            assert await store.lease_worker_id("h2", now + 31, 60, first) != first
        finally:
            for holder, worker in holders:
                await store.release_worker_id(holder, worker)
            await store.close()

    asyncio.run(go())


def test_a_report_never_joins_another_accounts_call(server: Server) -> None:
    """A callId is joined only for the switch that asked, and only when the report's did and
    caller (if sent) are that call's: a reused callId (as two processes drawing the same
    worker bits once made) lands on the report's own call, never on another account's."""
    url = server.store_url
    c1, c2 = create_tenant(url, numbers=1), create_tenant(url, numbers=1)
    s1, s2 = create_tenant(url, Role.SWITCH), create_tenant(url, Role.SWITCH)
    a1, b1, a2, b2 = (unique_hk(p) for p in "1212")
    x1 = server.client(c1).bind_axb(a1, b1, 0)["data"]
    x2 = server.client(c2).bind_axb(a2, b2, 0)["data"]
    call_id = server.client(s1).query(a1, x1["did"])["data"]["callId"]
    # Another switch account cannot report (and so read the join of) s1's call.
    assert server.client(s2).report_call(call_id, startAt=5)["code"] == 10013
    # The same callId reported for a call on c2's binding: joined by did and caller, to c2.
    answer = server.client(s1).report_call(call_id, startAt=5, did=x2["did"], caller=a2)
    assert answer["code"] == 0
    assert server.client(c1).call_records()["data"]["records"] == []
    (record,) = server.client(c2).call_records()["data"]["records"]
    assert (record["bindId"], record["caller"], record["callee"]) == (x2["bindId"], a2, b2)


# --- 3. one bounded call-reference buffer ---------------------------------------------------
async def _refuse_call_refs(url: str, refuse: bool) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_from_url(url), isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("CREATE TRIGGER refuse_calls BEFORE INSERT ON calls BEGIN "
                     "SELECT RAISE(ABORT, 'refused by the test'); END" if refuse
                     else "DROP TRIGGER refuse_calls")
        conn.close()
        return
    import asyncpg

    from pns.store import split_bindings

    conn = await asyncpg.connect(split_bindings(url)[0])  # call refs are PostgreSQL's
    try:
        if refuse:
            await conn.execute(
                "CREATE OR REPLACE FUNCTION refuse_calls() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; "
                "CREATE TRIGGER refuse_calls BEFORE INSERT ON calls "
                "FOR EACH STATEMENT EXECUTE FUNCTION refuse_calls()")
        else:
            await conn.execute("DROP TRIGGER refuse_calls ON calls")
    finally:
        await conn.close()


def test_a_failing_flush_never_fails_a_query_and_is_logged_once(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Before: SQLite retried the flush on every query with a traceback each time, and
    PostgreSQL failed the query with 10009. Now every query answers, the failure is logged
    once, and the references are written once the store takes them again."""
    caplog.set_level(logging.WARNING, logger="pns.store.callrefs")

    async def go() -> list[str]:
        store = await open_store(store_url)
        service = Service(store, Settings(account_cache_seconds=0))
        switch = await store.create_account("sw", Role.SWITCH, os.urandom(8).hex(), "s", T0)
        owner = await store.create_account("c", Role.CUSTOMER, os.urandom(8).hex(), "s", T0)
        x, a, b = unique_hk("3"), unique_hk("1"), unique_hk("2")
        await store.add_numbers([VirtualNumber(x, owner.id, 852)])
        await service.bind_axb(owner, a, b, 0, now=T0)
        await _refuse_call_refs(store_url, True)
        call_ids = []
        try:
            for _ in range(200):
                answer = await service.query(switch, a, x, None, now=T0)
                assert answer.callee == b
                call_ids.append(answer.call_id)
                await asyncio.sleep(0.002)  # let the flusher try (and fail) meanwhile
        finally:
            await _refuse_call_refs(store_url, False)
        await store.close()  # writes what is pending
        return call_ids

    call_ids = asyncio.run(go())
    failures = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert "Traceback" not in caplog.text

    async def check() -> None:
        store = await open_store(store_url)
        try:
            for call_id in call_ids:
                ref = await store.get_call(call_id)
                assert ref is not None and ref.call_id == call_id
        finally:
            await store.close()

    asyncio.run(check())


def test_the_buffer_is_bounded_and_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    written: list[str] = []
    refusing = True

    async def write(refs: Any) -> None:
        if refusing:
            raise OSError("store down")
        written.extend(r.call_id for r in refs)

    def ref(i: int) -> CallRef:
        return CallRef(str(10**18 + i), "b" * 32, 1, "85230000000", "1", "2", "", "", 0, T0)

    async def go() -> None:
        nonlocal refusing
        buffer = CallRefBuffer(write, interval=0.001, retry=0.001, limit=10)
        for i in range(25):
            buffer.add(ref(i))
            await asyncio.sleep(0.002)
        assert len(buffer) == 10 and buffer.dropped == 15
        assert buffer.get(ref(14).call_id) is None and buffer.get(ref(15).call_id) is not None
        refusing = False
        await buffer.close()
        assert written == [ref(i).call_id for i in range(15, 25)]

    asyncio.run(go())
    assert sum("buffer full" in r.getMessage() for r in caplog.records) == 1


def test_every_batch_size_of_call_references_is_written_whole(store_url: str) -> None:
    """SQLite writes a batch in chunks of 64, 32, ..., 1 rows: sizes around each chunk's
    edges must all land, every column in its place."""

    async def go() -> None:
        store = await open_store(store_url)
        try:
            for size in (1, 2, 3, 31, 63, 64, 65, 127, 128, 129, 200):
                refs = [CallRef(new_snowflake(), f"{size:032d}", size, "85230000000",
                                f"caller{i}", f"callee{i}", f"c{i}", f"b{i}", i % 3, T0 + i,
                                size + 1) for i in range(size)]
                for ref in refs:
                    store.record_call(ref)
                await store.flush_calls()
                for ref in refs:
                    assert await store.get_call(ref.call_id) == ref
        finally:
            await store.close()

    asyncio.run(go())


def test_sigkill_after_queries_then_reports_still_join(tmp_path: Path) -> None:
    """What a crash loses is the references not yet written (the last few milliseconds): a
    report of such a call joins by did and caller. A reference written before the crash
    joins with the callId alone, after a restart."""
    url = f"sqlite:///{tmp_path}/pns.db"
    customer = create_tenant(url, numbers=1)
    switch = create_tenant(url, Role.SWITCH)
    server = Server(url)
    a, b = unique_hk("1"), unique_hk("2")
    bound = server.client(customer).bind_axb(a, b, 0)["data"]
    sw = server.client(switch)
    written = sw.query(a, bound["did"])["data"]["callId"]
    path = path_from_url(url)
    for _ in range(500):  # until the flusher wrote it (read from another process)
        with sqlite3.connect(path) as conn:
            if conn.execute("SELECT 1 FROM calls WHERE call_id = ?", (written,)).fetchone():
                break
        time.sleep(0.01)
    else:
        raise AssertionError("the call reference was never written")
    maybe_lost = [sw.query(b, bound["did"])["data"]["callId"] for _ in range(5)]
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    server.start()
    try:
        sw = server.client(switch)
        assert sw.report_call(written, startAt=5)["code"] == 0
        for call_id in maybe_lost:
            assert sw.report_call(call_id, startAt=5, did=bound["did"], caller=b)["code"] == 0
        records = server.client(customer).call_records()["data"]["records"]
        assert len(records) == 6
        by_id = {r["callId"]: r for r in records}
        assert (by_id[written]["caller"], by_id[written]["callee"]) == (a, b)
        for call_id in maybe_lost:
            assert (by_id[call_id]["caller"], by_id[call_id]["callee"]) == (b, a)
            assert by_id[call_id]["bindId"] == bound["bindId"]
    finally:
        server.stop()


# --- 4. the index sees other processes' writes before the next answer ----------------------
def test_index_sees_the_cli_before_the_next_answer(tmp_path: Path) -> None:
    """``pns bindings unbind`` and ``pns numbers remove --force`` (other processes): the very
    next query after the command returns is refused; a binding another server made is found."""
    url = f"sqlite:///{tmp_path}/pns.db"
    customer = create_tenant(url, numbers=2)
    switch = create_tenant(url, Role.SWITCH)
    server, other = Server(url), Server(url)
    try:
        c, sw = server.client(customer), server.client(switch)
        a, b = unique_hk("1"), unique_hk("2")
        one = c.bind_axb(a, b, 0, phoneX=customer.numbers[0])["data"]
        assert sw.query(a, one["did"])["data"]["callee"] == b
        cli("bindings", "unbind", one["bindId"], "--store", url)
        assert sw.query(a, one["did"])["code"] == 10013
        # Bound through another server: found by this one's index at once.
        two = other.client(customer).bind_axb(a, b, 0, phoneX=customer.numbers[1])["data"]
        assert sw.query(b, two["did"])["data"]["callee"] == a
        cli("numbers", "remove", "--force", customer.numbers[1], "--store", url)
        assert sw.query(b, two["did"])["code"] == 10013
    finally:
        server.stop()
        other.stop()


def _other_process(path: str, sql: str, wait: float = 5.0) -> str:
    """Run ``sql`` in a process of its own (autocommit, waiting ``wait`` s for locks); its
    first row, as text."""
    script = ("import sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None, "
              "timeout=float(sys.argv[3]))\n"
              "print(conn.execute(sys.argv[2]).fetchone())\n")
    done = subprocess.run([sys.executable, "-c", script, path, sql, str(wait)],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_the_index_notices_commits_from_the_wal_header(tmp_path: Path) -> None:
    """On a file store the index's change check reads the WAL-index header from SQLite's own
    map of ``-shm`` (no PRAGMA per answer): a commit by another process changes it, and a
    binding that process ends is not answered."""
    url = f"sqlite:///{tmp_path}/pns.db"
    path = path_from_url(url)

    async def go() -> None:
        served = await open_store(url, index=True)
        writer = await open_store(url)
        try:
            acc = await writer.create_account("c", Role.CUSTOMER, "k", "s", T0)
            x, a, b = unique_hk("3"), unique_hk("1"), unique_hk("2")
            await writer.add_numbers([VirtualNumber(x, acc.id, 852)])
            await writer.insert_binding(_binding(acc.id, x, a, b, "7" * 32), T0)
            assert await served.find_by_party(x, a, T0) is not None
            watch = served._changes  # type: ignore[attr-defined]
            assert watch._header is not None  # the header, not the PRAGMA
            before = watch.token()
            assert watch.token() == before  # nothing committed: nothing to read
            _other_process(path, "DELETE FROM bindings WHERE bind_id = '" + "7" * 32 + "'")
            assert watch.token() != before
            assert await served.find_by_party(x, a, T0) is None
            assert await served.find_by_party(x, b, T0) is None
        finally:
            await served.close()
            await writer.close()

    asyncio.run(go())


def test_closing_an_indexed_store_keeps_the_other_connections_locks(tmp_path: Path) -> None:
    """Mapping the header must never drop this process's POSIX locks on ``-shm``: once an
    indexed store on the file has opened and closed, a read transaction of another connection
    in this process still holds its read mark, so another process cannot reset the WAL under
    it (a checkpoint in TRUNCATE mode reports busy)."""
    url = f"sqlite:///{tmp_path}/pns.db"
    path = path_from_url(url)

    async def go() -> None:
        writer = await open_store(url)
        await writer.create_account("c", Role.CUSTOMER, "k", "s", T0)
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM accounts").fetchone()[0] == 1
            for _ in range(2):
                served = await open_store(url, index=True)
                assert served._changes._header is not None  # type: ignore[attr-defined]
                started = time.monotonic()
                await served.close()
                # Its last checkpoint does not wait out busy_timeout for the open read (a
                # shutdown held up 10 s by any reader); half of it is a wide margin.
                assert time.monotonic() - started < BUSY_TIMEOUT_MS / 2000
            await writer.create_account("d", Role.CUSTOMER, "k2", "s", T0)
            # Busy for as long as the read is open: no need to wait the default 5 s.
            busy = _other_process(path, "PRAGMA wal_checkpoint(TRUNCATE)", wait=0.2)
            assert busy.startswith("(1,"), busy
            assert reader.execute("SELECT count(*) FROM accounts").fetchone()[0] == 1
            reader.execute("COMMIT")
        finally:
            reader.close()
            await writer.close()

    asyncio.run(go())


def _binding(account_id: int, x: str, a: str, b: str, bind_id: str) -> Binding:
    return Binding(bind_id, account_id, x, a, b, "", 0, "", "", 0, 0, 0, T0)


def test_index_reloads_when_the_deletion_log_was_pruned_past_it(tmp_path: Path) -> None:
    """An index further behind than the deletion log keeps reloads from the bindings, so a
    binding ended meanwhile is never answered."""
    url = f"sqlite:///{tmp_path}/pns.db"

    async def go() -> None:
        served = await open_store(url, index=True)
        writer = await open_store(url)
        try:
            acc = await writer.create_account("c", Role.CUSTOMER, "k", "s", T0)
            x = unique_hk("3")
            await writer.add_numbers([VirtualNumber(x, acc.id, 852)])
            pairs = [(unique_hk("1"), unique_hk("2")) for _ in range(5)]
            for i, (a, b) in enumerate(pairs):
                await writer.insert_binding(_binding(acc.id, x, a, b, f"{i:032x}"), T0)
            assert all([await served.find_by_party(x, a, T0) for a, _ in pairs])
            for i in range(3):
                assert await writer.delete_binding(f"{i:032x}")
            conn = sqlite3.connect(path_from_url(url))
            with conn:  # pruned as if it were older than the log keeps
                conn.execute("DELETE FROM binding_deletions")
            conn.close()
            assert await writer.delete_binding(f"{3:032x}")
            for i, (_, b) in enumerate(pairs):
                found = await served.find_by_party(x, b, T0)
                assert (found is not None) == (i == 4), i
        finally:
            await served.close()
            await writer.close()

    asyncio.run(go())


def test_a_large_store_answers_while_its_index_is_built(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A large store builds its index in a thread: meanwhile reads go to SQLite, and the
    writes made during the build are in the index once it is installed."""
    import pns.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "INDEX_BUILT_AT_ONCE", 0)
    url = f"sqlite:///{tmp_path}/pns.db"

    async def go() -> None:
        writer = await open_store(url)
        acc = await writer.create_account("c", Role.CUSTOMER, "k", "s", T0)
        x = unique_hk("3")
        await writer.add_numbers([VirtualNumber(x, acc.id, 852)])
        pairs = [(unique_hk("1"), unique_hk("2")) for _ in range(3)]
        await writer.insert_binding(_binding(acc.id, x, *pairs[0], "0" * 32), T0)
        await writer.insert_binding(_binding(acc.id, x, *pairs[1], "1" * 32), T0)
        served = await open_store(url, index=True)
        assert isinstance(served, sqlite_store.SqliteStore)
        try:
            build = served._index_build
            assert build is not None  # built in the background
            assert await served.find_by_party(x, pairs[0][0], T0) is not None
            assert await writer.delete_binding("0" * 32)
            await writer.insert_binding(_binding(acc.id, x, *pairs[2], "2" * 32), T0)
            await build
            assert served._index is not None
            assert await served.find_by_party(x, pairs[0][0], T0) is None
            assert await served.find_by_party(x, pairs[1][1], T0) is not None
            assert (await served.find_by_party(x, pairs[2][1], T0)).bind_id == "2" * 32
        finally:
            await served.close()
            await writer.close()

    asyncio.run(go())


# --- 5. the serving process keeps its start-up objects out of the collector's walks ----------
def test_start_up_objects_are_frozen_out_of_full_collections() -> None:
    """``pns serve`` freezes what exists once it is ready: a full collection afterwards walks
    only the objects made since, not the tens of thousands made at start."""
    import gc

    from pns.serve import freeze_start_up_objects

    before = len(gc.get_objects())
    freeze_start_up_objects()
    try:
        assert gc.get_freeze_count() >= before // 2
        assert len(gc.get_objects()) < before // 2
    finally:
        gc.unfreeze()
    assert len(gc.get_objects()) >= before // 2


def test_cached_numbers_leave_the_collectors_walks() -> None:
    """Parsed numbers are cached by the ten thousand (binds, callers): the cache holds plain
    tuples, which the collector stops tracking, so a full collection does not walk them;
    callers still get a ``Number``."""
    import gc

    from pns.numbers import Number, _parse_international, parse_international

    raw = "+852 " + unique_hk("9")[3:]
    number = parse_international(raw)
    assert isinstance(number, Number) and number.country_code == 852
    gc.collect()
    cached = _parse_international(raw)
    assert cached == tuple(number) and not gc.is_tracked(cached)
    assert parse_international("+0") is None
