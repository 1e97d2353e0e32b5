"""The embedded store: one SQLite file in WAL mode, zero set-up.

Durability: WAL with ``synchronous=NORMAL``. A commit survives a crash of the process (the WAL
is written before the answer); a power loss or kernel crash may lose the last commits.

Threads and connections, so that the event loop never waits on SQLite's write lock:

- One writer thread owns the write connection (``_conn``). Every write is a job for it,
  handed over with the other writes of its event-loop iteration; the jobs waiting when it
  wakes share one transaction (group commit), each under its own savepoint, and each is
  answered only after that transaction commits. When another process
  holds the write lock, only the writer thread waits (up to ``busy_timeout``), and its jobs
  then fail with an error (10009): the loop keeps answering reads. A job alone in its
  iteration, the writer idle, runs on the loop instead if the lock can be had at once
  (``_Writer._inline``): the same transaction, without two thread hand-overs.
- Reads run on the event loop on a connection of their own (``_read``), in WAL mode: a WAL
  reader never waits for a writer, of this process or another. Nothing on the read path writes.
- With ``index`` on (``pns serve``), the bindings that ``queryAXB`` needs are also kept in
  memory (``memory.BindingIndex``), rebuilt from the file at start and brought up to date before
  each answer whenever the WAL-index header (``walheader``; else ``PRAGMA data_version``) says
  the file changed: new bindings by their
  ``seq`` (always increasing), ended ones from the ``binding_deletions`` log that a trigger
  fills, whoever wrote them (this process, the CLI, another server).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from ..model import (
    Binding,
    CallRecord,
    CallRef,
    Candidate,
    Group,
    NumberUsage,
    OutboxEvent,
    PoolStats,
    PoolUsage,
    VirtualNumber,
    binding_from_row,
    binding_row,
)
from ..vault import Keyring, is_sealed, load_keyring
from .base import (
    BindConflict,
    ConflictKind,
    Replayed,
    SignatureClaim,
    StoreError,
    check_replacement,
    summarise_pools,
)
from .callrefs import CallRefBuffer
from .memory import BindingIndex
from .record_ids import RecordIds
from .rows import (
    SECRET_COLUMNS,
    secret_context,
)
from .sql import (
    ACTIVE,
    BINDING_COLUMNS,
    CLAIM_SIGNATURE,
    INSERT_EVENT,
    INSERT_RECORD,
    Sql,
    SqlCommon,
    event_params,
    record_params,
)
from .walheader import WalHeader

SCHEMA_VERSION = 10
# The migration to this version seals the secrets older releases stored in plain text.
SEALED_SECRETS_VERSION = 4
_log = logging.getLogger("pns.store.sqlite")
T = TypeVar("T")

# Active bindings on X n.x, counted through their A party row (every binding has one), so
# bindings need no index on x of their own.
_ACTIVE_ON_X = (
    "SELECT count(*) FROM parties p JOIN bindings b ON b.seq = p.seq "
    f"WHERE p.x = n.x AND p.number = b.a AND {ACTIVE}"
)
# The hot path's lookup, with positional parameters (cheaper than a dict per query).
_FIND_BY_PARTY = (
    f"SELECT {BINDING_COLUMNS} FROM parties p JOIN bindings b ON b.seq = p.seq "
    "WHERE p.x = ? AND p.number = ? AND NOT (b.expire_at BETWEEN 1 AND ?)"
)
# X exclusivity (AX, XYB before its call): is the number held alone, or held at all?
_HELD_ALONE = (
    "SELECT 1 FROM parties p JOIN bindings b ON b.seq = p.seq "
    "WHERE p.x = ? AND p.number = '*' AND NOT (b.expire_at BETWEEN 1 AND ?)"
)
_ANY_ON_X = (
    "SELECT 1 FROM parties p JOIN bindings b ON b.seq = p.seq "
    "WHERE p.x = ? AND NOT (b.expire_at BETWEEN 1 AND ?) LIMIT 1"
)
_ANY_EXTENSION_ON_X = (
    "SELECT 1 FROM bindings b WHERE b.x = ? AND b.extension <> '' "
    "AND NOT (b.expire_at BETWEEN 1 AND ?) LIMIT 1"
)
# Call references go in with one statement per chunk of rows, not executemany: one step of
# SQLite (and one release of the GIL) per chunk instead of per row. Chunks are powers of two up
# to 64 rows (704 parameters: under the 999 of SQLite before 3.32), so seven statements cover
# every batch size and all stay in the connection's statement cache.
# The columns are CallRef's fields, in its order: what ``astuple`` gives is a row.
_CALL_COLUMNS = ", ".join(CallRef.__struct_fields__)
_CALL_WIDTH = len(CallRef.__struct_fields__)
_SELECT_CALL = f"SELECT {_CALL_COLUMNS} FROM calls WHERE call_id = ?"
_CALL_CHUNKS = (64, 32, 16, 8, 4, 2, 1)
_INSERT_CALLS = {
    rows: f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES "
          + ", ".join([f"({', '.join('?' * _CALL_WIDTH)})"] * rows)
          + " ON CONFLICT (call_id) DO NOTHING"
    for rows in _CALL_CHUNKS
}
# Ended bindings the log keeps for other processes' indexes; one further behind reloads.
DELETION_LOG_KEPT = 100_000
# Jobs the writer thread takes into one transaction at most.
_GROUP_MAX = 1024
BUSY_TIMEOUT_MS = 10_000
# The closing checkpoint's wait for readers and writers of other connections (see _Checkpointer).
_LAST_CHECKPOINT_WAIT_MS = 200
# The schema version that brought the deletion log the read index follows.
_INDEX_SCHEMA = 3
# A store with fewer bindings builds its read index before it answers; a larger one in a thread.
INDEX_BUILT_AT_ONCE = 100_000

# Each entry upgrades the schema from version i to i + 1.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        access_key TEXT NOT NULL UNIQUE,
        access_secret TEXT NOT NULL,
        role TEXT NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        audio_when_call_fail TEXT NOT NULL DEFAULT '',
        audio_when_dtmf_need TEXT NOT NULL DEFAULT '',
        audio_when_dtmf_err TEXT NOT NULL DEFAULT '',
        callback_url TEXT NOT NULL DEFAULT '',
        previous_secret TEXT NOT NULL DEFAULT '',
        previous_secret_until INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE numbers (
        x TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        country_code INTEGER NOT NULL,
        enabled INTEGER NOT NULL DEFAULT 1,
        active INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX numbers_pool ON numbers(account_id, country_code, active);
    CREATE TABLE bindings (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        bind_id TEXT NOT NULL UNIQUE,
        account_id INTEGER NOT NULL,
        x TEXT NOT NULL,
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        extension TEXT NOT NULL,
        bind_type INTEGER NOT NULL,
        customer_bind_id TEXT NOT NULL,
        business_id TEXT NOT NULL,
        flag INTEGER NOT NULL,
        expire_second INTEGER NOT NULL,
        expire_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX bindings_customer_bind_id ON bindings(account_id, customer_bind_id)
        WHERE customer_bind_id <> '';
    CREATE UNIQUE INDEX bindings_extension ON bindings(x, extension) WHERE extension <> '';
    CREATE INDEX bindings_account ON bindings(account_id, seq);
    CREATE INDEX bindings_expiry ON bindings(expire_at) WHERE expire_at > 0;
    CREATE TABLE parties (
        x TEXT NOT NULL,
        number TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (x, number)
    ) WITHOUT ROWID;
    CREATE TRIGGER bindings_count_insert AFTER INSERT ON bindings BEGIN
        UPDATE numbers SET active = active + 1 WHERE x = NEW.x;
    END;
    CREATE TRIGGER bindings_cleanup_delete AFTER DELETE ON bindings BEGIN
        DELETE FROM parties WHERE x = OLD.x AND number IN (OLD.a, OLD.b) AND seq = OLD.seq;
        UPDATE numbers SET active = active - 1 WHERE x = OLD.x;
    END;
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        bind_id TEXT NOT NULL,
        account_id INTEGER NOT NULL,
        x TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        customer_bind_id TEXT NOT NULL,
        business_id TEXT NOT NULL,
        bind_type INTEGER NOT NULL,
        queried_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE signatures (
        key TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: call records and the durable outbox of callbacks.
    """
    CREATE TABLE call_records (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL UNIQUE,
        account_id INTEGER NOT NULL,
        bind_id TEXT NOT NULL,
        customer_bind_id TEXT NOT NULL,
        business_id TEXT NOT NULL,
        did TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        call_status INTEGER NOT NULL,
        call_status_msg TEXT NOT NULL,
        duration INTEGER NOT NULL,
        start_at INTEGER NOT NULL,
        ring_at INTEGER NOT NULL,
        answer_at INTEGER NOT NULL,
        hangup_at INTEGER NOT NULL,
        hangup_cause TEXT NOT NULL,
        hangup_code INTEGER NOT NULL,
        hangup INTEGER NOT NULL,
        record_file TEXT NOT NULL,
        reported_at INTEGER NOT NULL
    );
    CREATE INDEX call_records_account ON call_records(account_id, start_at);
    CREATE INDEX call_records_bind ON call_records(bind_id);
    CREATE TABLE outbox (
        event_id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        call_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        lease_until INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    """,
    # 3: operators of the admin API and console, their audit trail, and deliveries by call.
    """
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE operator_audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL
    );
    CREATE INDEX outbox_call ON outbox(call_id) WHERE call_id <> '';
    """,
    # 4: the lease holder of each outbox event (only it may finish the event); call-record ids
    # from a sequence, exact in JavaScript (existing records renumbered in their order); an
    # index for retention; account secrets sealed (by _seal_plaintext_secrets, in Python).
    """
    ALTER TABLE outbox ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    CREATE TABLE call_records_v3 (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL UNIQUE,
        account_id INTEGER NOT NULL,
        bind_id TEXT NOT NULL,
        customer_bind_id TEXT NOT NULL,
        business_id TEXT NOT NULL,
        did TEXT NOT NULL,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        call_status INTEGER NOT NULL,
        call_status_msg TEXT NOT NULL,
        duration INTEGER NOT NULL,
        start_at INTEGER NOT NULL,
        ring_at INTEGER NOT NULL,
        answer_at INTEGER NOT NULL,
        hangup_at INTEGER NOT NULL,
        hangup_cause TEXT NOT NULL,
        hangup_code INTEGER NOT NULL,
        hangup INTEGER NOT NULL,
        record_file TEXT NOT NULL,
        reported_at INTEGER NOT NULL
    );
    INSERT INTO call_records_v3 (id, call_id, account_id, bind_id, customer_bind_id,
        business_id, did, caller, callee, call_status, call_status_msg, duration, start_at,
        ring_at, answer_at, hangup_at, hangup_cause, hangup_code, hangup, record_file,
        reported_at)
        SELECT row_number() OVER (ORDER BY id), call_id, account_id, bind_id,
            customer_bind_id, business_id, did, caller, callee, call_status, call_status_msg,
            duration, start_at, ring_at, answer_at, hangup_at, hangup_cause, hangup_code,
            hangup, record_file, reported_at
        FROM call_records;
    DROP TABLE call_records;
    ALTER TABLE call_records_v3 RENAME TO call_records;
    CREATE INDEX call_records_account ON call_records(account_id, start_at);
    CREATE INDEX call_records_bind ON call_records(bind_id);
    CREATE INDEX call_records_reported ON call_records(reported_at);
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'call_record', coalesce(max(id), 0) FROM call_records;
    """,
    # 5: who asked for each callId; the log of ended bindings that in-memory indexes follow;
    # the leases of snowflake worker ids (unique ids across processes).
    """
    ALTER TABLE calls ADD COLUMN queried_by INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE binding_deletions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL,
        x TEXT NOT NULL,
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        extension TEXT NOT NULL
    );
    CREATE TRIGGER bindings_log_delete AFTER DELETE ON bindings BEGIN
        INSERT INTO binding_deletions (seq, x, a, b, extension)
        VALUES (OLD.seq, OLD.x, OLD.a, OLD.b, OLD.extension);
    END;
    CREATE TABLE id_workers (
        id INTEGER PRIMARY KEY,
        holder TEXT NOT NULL DEFAULT '',
        lease_until INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO id_workers (id)
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1023)
        SELECT i FROM n;
    """,
    # 6: the binding's fields beyond its columns (modes, lifecycle), as JSON text.
    """
    ALTER TABLE bindings ADD COLUMN attrs TEXT NOT NULL DEFAULT '';
    """,
    # 7: the binding modes (modes.md). A binding's I1 keys may sit on its second number Y,
    # on the party "*" (X held alone) and on an AXG group's members: the cleanup trigger
    # removes them all (Y read from attrs). AXG groups and their members, by account.
    """
    ALTER TABLE bindings ADD COLUMN y TEXT GENERATED ALWAYS AS (
        CASE WHEN attrs = '' THEN '' ELSE coalesce(json_extract(attrs, '$.y'), '') END
    ) VIRTUAL;
    DROP TRIGGER bindings_cleanup_delete;
    CREATE TRIGGER bindings_cleanup_delete AFTER DELETE ON bindings BEGIN
        DELETE FROM parties WHERE x IN (OLD.x, OLD.y) AND number IN (OLD.a, OLD.b, '*')
            AND seq = OLD.seq;
        DELETE FROM parties WHERE OLD.bind_type = 2 AND x = OLD.x AND seq = OLD.seq;
        UPDATE numbers SET active = active - 1 WHERE x = OLD.x;
    END;
    CREATE TABLE groups (
        group_id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        remark TEXT NOT NULL,
        country_code INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX groups_account ON groups(account_id, created_at);
    CREATE TABLE group_members (
        group_id TEXT NOT NULL,
        number TEXT NOT NULL,
        PRIMARY KEY (group_id, number)
    ) WITHOUT ROWID;
    """,
    # 8 (lifecycle.md): each account's cool-off and block list; the cool-offs a binding's end
    # leaves, recorded by a trigger on every way a binding ends (unbind, sweep, an expired
    # holder released by an insert, a number removed). An expired binding ended at its
    # expireAt, any other now (the wall clock: a trigger has no other).
    """
    ALTER TABLE accounts ADD COLUMN cool_off_seconds INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE blocked_callers (
        account_id INTEGER NOT NULL,
        number TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, number)
    ) WITHOUT ROWID;
    CREATE TABLE cool_offs (
        number TEXT NOT NULL,
        x TEXT NOT NULL,
        until INTEGER NOT NULL,
        PRIMARY KEY (number, x)
    ) WITHOUT ROWID;
    CREATE INDEX cool_offs_until ON cool_offs(until);
    CREATE TRIGGER bindings_cool_off AFTER DELETE ON bindings
        WHEN (SELECT cool_off_seconds FROM accounts WHERE id = OLD.account_id) > 0 BEGIN
        INSERT INTO cool_offs (number, x, until)
            SELECT p.number, OLD.x, (CASE WHEN OLD.expire_at BETWEEN 1 AND unixepoch()
                                     THEN OLD.expire_at ELSE unixepoch() END)
                                    + a.cool_off_seconds
            FROM accounts a, (SELECT OLD.a AS number UNION ALL
                              SELECT OLD.b WHERE OLD.b <> '') p
            WHERE a.id = OLD.account_id
        ON CONFLICT (number, x) DO UPDATE SET until = max(until, excluded.until);
    END;
    """,
    # 9 (lifecycle.md meets modes.md): a binding's parties cool off on its Y as on its X (Y read
    # from attrs), so no allocation of X or Y gives them back a number they just left.
    """
    DROP TRIGGER bindings_cool_off;
    CREATE TRIGGER bindings_cool_off AFTER DELETE ON bindings
        WHEN (SELECT cool_off_seconds FROM accounts WHERE id = OLD.account_id) > 0 BEGIN
        INSERT INTO cool_offs (number, x, until)
            SELECT p.number, p.x, (CASE WHEN OLD.expire_at BETWEEN 1 AND unixepoch()
                                   THEN OLD.expire_at ELSE unixepoch() END)
                                  + a.cool_off_seconds
            FROM accounts a, (
                SELECT OLD.a AS number, OLD.x AS x UNION ALL SELECT OLD.b, OLD.x
                UNION ALL SELECT OLD.a, CASE WHEN OLD.attrs = '' THEN '' ELSE
                    coalesce(json_extract(OLD.attrs, '$.y'), '') END
                UNION ALL SELECT OLD.b, CASE WHEN OLD.attrs = '' THEN '' ELSE
                    coalesce(json_extract(OLD.attrs, '$.y'), '') END) p
            WHERE a.id = OLD.account_id AND p.number <> '' AND p.x <> ''
        ON CONFLICT (number, x) DO UPDATE SET until = max(until, excluded.until);
    END;
    """,
    # 10: each operator's console session generation; logging out bumps it, so a session
    # cookie saved before stops working on every process.
    """
    ALTER TABLE operators ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
    """,
]


def path_from_url(url: str) -> str:
    """``sqlite:///./pns.db`` → ``./pns.db``; ``sqlite:////abs`` → ``/abs``; ``:memory:``.
    A query (``?index=on``) is not part of the path."""
    prefix = "sqlite://"
    if not url.startswith(prefix):
        raise StoreError(f"not a sqlite URL: {url!r}")
    rest = url[len(prefix):].split("?", 1)[0]
    if rest.startswith("/"):
        rest = rest[1:]
    if not rest:
        raise StoreError("sqlite URL has no path: use sqlite:///./pns.db")
    return rest


def stored_schema_version(url: str) -> int:
    """The schema version of the store at ``url`` without opening (or creating) it; 0 when
    there is no store yet."""
    path = path_from_url(url)
    if path == ":memory:" or not Path(path).exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read store {path}: {exc}") from exc
    return int(version)


def index_from_url(url: str) -> bool | None:
    """``?index=on|off`` in a sqlite URL; None when the URL does not say."""
    if "?" not in url:
        return None
    for key, value in parse_qsl(url.split("?", 1)[1]):
        if key == "index":
            if value not in ("on", "off"):
                raise StoreError(f"index must be on or off, not {value!r}")
            return value == "on"
    return None


_memory_names = itertools.count()


def _connect(path: str) -> sqlite3.Connection:
    if path == ":memory:":
        raise AssertionError("use _memory_uri")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class _Job:
    """A write for the writer thread: ``work`` runs there; its result or exception is handed
    back to the caller's event loop once the transaction it ran in has committed."""

    __slots__ = ("error", "future", "loop", "own", "result", "work")

    def __init__(self, work: Callable[[], Any], own: bool,
                 loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]):
        self.work, self.own, self.loop, self.future = work, own, loop, future
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


class _Writer:
    """The one thread that writes. Jobs that are waiting when it wakes share one transaction
    (group commit), each under its own savepoint; ``own`` jobs (operator commands) get a
    transaction of their own. Every job is answered after its transaction ended."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock):
        self._conn = conn
        self._lock = lock
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        # Jobs of this event-loop iteration, handed over together at its end: one wake-up of
        # the writer (and one hand-over of the GIL) per iteration, not one per write.
        self._pending: list[_Job] = []
        self._thread = threading.Thread(target=self._run, name="pns-sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], T], own: bool) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._dispatch)
        self._pending.append(_Job(work, own, loop, future))
        return future

    def _dispatch(self) -> None:
        jobs, self._pending = self._pending, []
        if len(jobs) == 1 and not jobs[0].own and self._queue.empty() and self._inline(jobs[0]):
            return
        if jobs:
            self._queue.put(jobs)

    def _inline(self, job: _Job) -> bool:
        """A lone write (the only one of its loop iteration, the writer idle) runs here, on
        the event loop, when the write lock can be had at once: the hand-over to the writer
        thread and back (two thread wake-ups) cost more than the write, and a switch's report
        or an occasional bind comes alone. ``busy_timeout`` is 0 meanwhile, so the loop never
        waits: when another process holds the lock, False, and the job goes to the writer
        thread, which waits for it as any other."""
        if not self._lock.acquire(blocking=False):
            return False
        conn = self._conn
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error:
                    return False
                self._run_begun([job])
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        finally:
            self._lock.release()
        _settle([job])
        return True

    def stop(self) -> None:
        jobs, self._pending = self._pending, []
        if jobs:
            self._queue.put(jobs)
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            jobs = list(item)
            stop = False
            while len(jobs) < _GROUP_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.extend(more)
            group: list[_Job] = []
            for each in jobs:
                if each.own:
                    self._group(group)
                    group = []
                    self._group([each])
                else:
                    group.append(each)
            self._group(group)
            if stop:
                return

    def _group(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                for job in jobs:
                    job.error = exc
            else:
                self._run_begun(jobs)
        self._answer(jobs)

    def _run_begun(self, jobs: list[_Job]) -> None:
        """The jobs in the transaction just begun, each under its own savepoint when there are
        several; then COMMIT (ROLLBACK for one job that failed). Results and errors are left
        on the jobs, for their callers."""
        conn = self._conn
        single = len(jobs) == 1
        for job in jobs:
            try:
                if single:
                    job.result = job.work()
                else:
                    conn.execute("SAVEPOINT pns_write")
                    try:
                        job.result = job.work()
                    except BaseException:
                        conn.execute("ROLLBACK TO pns_write")
                        raise
                    finally:
                        conn.execute("RELEASE pns_write")
            except BaseException as exc:  # handed to the caller
                job.error = exc
        try:
            if single and jobs[0].error is not None:
                conn.execute("ROLLBACK")
            else:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for job in jobs:
                if job.error is None:
                    job.error = exc

    @staticmethod
    def _answer(jobs: list[_Job]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, answered in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                loop.call_soon_threadsafe(_settle, answered)


class _ChangeWatch:
    """Has any connection committed to the file since the last look? Asked before every
    answer from the read index: the WAL-index header read from SQLite's own map of ``-shm``
    (``walheader``: a fraction of a microsecond, no lock, no GIL hand-over), else
    ``PRAGMA data_version`` on the read connection (about 5 µs)."""

    def __init__(self, read: sqlite3.Connection, path: str):
        self._read = read
        self._header = None if path.startswith("file:") else WalHeader.open(path)

    def token(self) -> object:
        """Equal tokens: nothing was committed in between."""
        if self._header is not None:
            return self._header.token()
        return self._read.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        """Before the last connection closes (``walheader``)."""
        if self._header is not None:
            self._header.close()
            self._header = None


class SqliteStore(SqlCommon):
    # Reads run on the event loop's connection, writes wait on plain futures of the writer
    # thread: nothing needs a task.
    answers_in_process = True

    def __init__(self, conn: sqlite3.Connection, read: sqlite3.Connection,
                 path: str = ":memory:", index: bool = False, keyring: Keyring | None = None):
        self._conn = conn  # the write connection: used by the writer thread only
        self._read = read  # the event loop's reads
        self._path = path
        self._keyring = keyring or Keyring.ephemeral()
        self._write_lock = threading.Lock()
        self._writer: _Writer | None = None
        self._checkpoints: _Checkpointer | None = None
        self._calls = CallRefBuffer(self._write_calls)
        self._record_ids = RecordIds(self._draw_record_ids)
        # The read index once built (None: reads go to SQLite), and how far it has read.
        self._index: BindingIndex | None = None
        self._index_build: asyncio.Task[None] | None = None
        self._index_version: object = None
        self._changes: _ChangeWatch | None = None
        self._index_seq = 0
        self._index_deletion = 0

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, index: bool | None = None) -> SqliteStore:
        path = path_from_url(url)
        in_url = index_from_url(url)
        use_index = bool(in_url if in_url is not None else index)
        if path == ":memory:":
            # Two connections share one in-memory database only through a named URI.
            path = f"file:pns-memory-{os.getpid()}-{next(_memory_names)}?mode=memory&cache=shared"
        else:
            parent = Path(path).parent
            if not parent.exists():
                raise StoreError(f"cannot create store {path}: folder {parent} does not exist")
            _create_private(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   uri=path.startswith("file:"))
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: a million bindings stay hot
            read = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   uri=path.startswith("file:"))
            # A WAL reader never waits for a writer; this only covers WAL recovery at start.
            read.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            read.execute("PRAGMA cache_size = -16384")
            read.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        keyring = (Keyring.ephemeral() if path.startswith("file:") else
                   load_keyring(path + ".key", may_create=not _has_sealed_secrets(conn)))
        store = cls(conn, read, path, use_index, keyring)
        try:
            store._prepare_schema(migrate)
        except BaseException:
            conn.close()
            read.close()
            raise
        if not path.startswith("file:"):
            # Checkpoints (which fsync) run in a thread of their own, never in the event loop.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            store._checkpoints = _Checkpointer(path)
        store._writer = _Writer(conn, store._write_lock)
        if use_index and store.schema_version() >= _INDEX_SCHEMA:
            store._changes = _ChangeWatch(read, path)
            store._start_index()
        return store

    # --- schema ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        (version,) = self._read.execute("PRAGMA user_version").fetchone()
        return int(version)

    def _prepare_schema(self, migrate: bool) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"this store has schema version {version}, newer than this release of pns "
                f"understands ({SCHEMA_VERSION}): upgrade pns"
            )
        if version == SCHEMA_VERSION:
            return
        if not migrate:
            raise StoreError(
                f"this store has schema version {version}; run `pns migrate` to upgrade it "
                f"to {SCHEMA_VERSION}"
            )
        self.migrate()

    def migrate(self) -> tuple[int, int]:
        """Apply every migration the store lacks, each in its own transaction."""
        start = self.schema_version()
        for version in range(start, SCHEMA_VERSION):
            with self._tx():
                # Another process starting at the same time may have applied it meanwhile:
                # read the version again under the write lock.
                (current,) = self._conn.execute("PRAGMA user_version").fetchone()
                if current > version:
                    continue
                # executescript would commit our transaction; run statement by statement.
                for statement in _split_statements(_MIGRATIONS[version]):
                    self._conn.execute(statement)
                if version + 1 == SEALED_SECRETS_VERSION:
                    self._seal_plaintext_secrets()
                self._conn.execute(f"PRAGMA user_version = {version + 1}")
        if start < SEALED_SECRETS_VERSION <= SCHEMA_VERSION and self._path != ":memory:":
            # The plaintext the sealing replaced may linger in older WAL frames: drop them.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return start, SCHEMA_VERSION

    def _seal_plaintext_secrets(self) -> None:
        """Seal the secrets an older release stored in plain text. secure_delete zeroes the
        space the plaintext leaves, so the file keeps no copy of it."""
        self._conn.execute("PRAGMA secure_delete = ON")
        try:
            rows = self._conn.execute(
                "SELECT id, access_key, access_secret, previous_secret FROM accounts").fetchall()
            for account_id, access_key, *values in rows:
                sealed = [value if is_sealed(value) else
                          self._keyring.seal(value, secret_context(column, access_key))
                          for column, value in zip(SECRET_COLUMNS, values, strict=True)]
                if sealed != values:
                    self._conn.execute(
                        "UPDATE accounts SET access_secret = ?, previous_secret = ? WHERE id = ?",
                        (*sealed, account_id))
        finally:
            self._conn.execute("PRAGMA secure_delete = OFF")

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    async def reseal_secrets(self, keyring: Keyring) -> int:
        """Seal every secret again with ``keyring``'s first key (which must hold the keys
        they are sealed with now); returns how many accounts changed."""
        def work() -> int:
            changed = 0
            rows = self._conn.execute(
                "SELECT id, access_key, access_secret, previous_secret FROM accounts").fetchall()
            for account_id, access_key, *values in rows:
                if all(keyring.is_current(value) for value in values):
                    continue
                resealed = [keyring.seal(keyring.unseal(value, context), context)
                            for value, context in ((v, secret_context(c, access_key))
                                                   for c, v in zip(SECRET_COLUMNS, values,
                                                                   strict=True))]
                self._conn.execute(
                    "UPDATE accounts SET access_secret = ?, previous_secret = ? WHERE id = ?",
                    (*resealed, account_id))
                changed += 1
            return changed

        changed = await self._own(work)
        self._keyring = keyring
        return changed

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """A transaction of its own on the write connection, in the calling thread (start-up,
        migrations, operator commands that are not on the serving path: it blocks the caller
        while another process holds the write lock). Waits for the writer thread's group."""
        with self._write_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    async def _batched(self, work: Callable[[], T]) -> T:
        """Group commit: ``work`` runs in the writer thread under its own savepoint, inside
        the transaction shared by every write waiting then; returns once that transaction is
        committed. One commit (one WAL append) serves many requests; each still answers only
        after its write is durable, and a failed piece rolls back alone."""
        assert self._writer is not None, "the store is closed"
        return await self._writer.submit(work, own=False)

    async def _own(self, work: Callable[[], T]) -> T:
        """``work`` in a transaction of its own, in the writer thread."""
        assert self._writer is not None, "the store is closed"
        return await self._writer.submit(work, own=True)

    async def _write(self, query: Sql, params: Mapping[str, Any]) -> int:
        rowcount: int = await self._batched(
            lambda: self._conn.execute(query.sqlite, query.sqlite_params(params)).rowcount)
        return rowcount

    async def _write_returning(self, query: Sql,
                               params: Mapping[str, Any]) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._batched(
            lambda: self._conn.execute(query.sqlite, query.sqlite_params(params)).fetchall())
        return rows

    async def _fetch(self, query: Sql, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        return self._read.execute(query.sqlite, query.sqlite_params(params)).fetchall()

    async def _write_capped(self, query: Sql, count: Sql, params: Mapping[str, Any],
                            limit: int) -> int | None:
        conn = self._conn

        def work() -> int:
            changed = int(conn.execute(query.sqlite, query.sqlite_params(params)).rowcount)
            (total,) = conn.execute(count.sqlite, count.sqlite_params(params)).fetchone()
            if total > limit:
                raise _Stale  # this piece's savepoint rolls back: nothing changed
            return changed

        try:
            return await self._batched(work)
        except _Stale:
            return None

    async def _fetch_snapshot(self, queries: Sequence[tuple[Sql, Mapping[str, Any]]]
                              ) -> list[list[Sequence[Any]]]:
        read = self._read
        read.execute("BEGIN")
        try:
            return [read.execute(query.sqlite, query.sqlite_params(params)).fetchall()
                    for query, params in queries]
        finally:
            read.execute("COMMIT")

    async def close(self) -> None:
        if self._index_build is not None:
            with contextlib.suppress(Exception):
                await self._index_build
        await self._calls.close()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.to_thread(writer.stop)
        if self._checkpoints is not None:
            await asyncio.to_thread(self._checkpoints.stop)
        if self._changes is not None:
            self._changes.close()
        self._read.close()
        self._conn.close()

    async def ping(self) -> None:
        self._read.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()

    # --- accounts --------------------------------------------------------------------------
    # --- numbers ---------------------------------------------------------------------------
    async def add_numbers(self, numbers: Sequence[VirtualNumber]) -> list[str]:
        def work() -> list[str]:
            existing: list[str] = []
            for number in numbers:
                cur = self._conn.execute(
                    "INSERT INTO numbers (x, account_id, country_code, enabled) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (x) DO NOTHING",
                    (number.x, number.account_id, number.country_code, int(number.enabled)),
                )
                if cur.rowcount == 0:
                    existing.append(number.x)
            return existing

        return await self._own(work)

    async def remove_numbers(self, xs: Sequence[str], force: bool, now: int) -> list[str]:
        def work() -> list[str]:
            kept: list[str] = []
            for x in xs:
                active = _has_bindings(self._conn, x, now)
                if active and not force:
                    kept.append(x)
                    continue
                _end_bindings_on(self._conn, x)
                self._conn.execute("DELETE FROM numbers WHERE x = ?", (x,))
            return kept

        return await self._own(work)

    async def get_number(self, x: str) -> VirtualNumber | None:
        return self.get_number_now(x)

    def get_number_now(self, x: str) -> VirtualNumber | None:
        row = self._read.execute(
            "SELECT x, account_id, country_code, enabled FROM numbers WHERE x = ?", (x,)
        ).fetchone()
        return VirtualNumber(row[0], row[1], row[2], bool(row[3])) if row else None

    async def set_numbers_enabled(self, xs: Sequence[str], enabled: bool) -> list[str]:
        def work() -> list[str]:
            missing: list[str] = []
            for x in xs:
                cur = self._conn.execute("UPDATE numbers SET enabled = ? WHERE x = ?",
                                         (int(enabled), x))
                if cur.rowcount == 0:
                    missing.append(x)
            return missing

        return await self._own(work)

    async def move_numbers(self, xs: Sequence[str], account_id: int, force: bool,
                           now: int) -> list[str]:
        def work() -> list[str]:
            kept: list[str] = []
            for x in xs:
                active = _has_bindings(self._conn, x, now)
                if active and not force:
                    kept.append(x)
                    continue
                _end_bindings_on(self._conn, x)
                self._conn.execute("UPDATE numbers SET account_id = ? WHERE x = ?",
                                   (account_id, x))
            return kept

        return await self._own(work)

    async def numbers_page(self, account_id: int | None, after: str, limit: int,
                           now: int) -> list[NumberUsage]:
        sql = (
            "SELECT n.x, n.account_id, n.country_code, n.enabled, "
            f"({_ACTIVE_ON_X}) FROM numbers n WHERE n.x > :after"
        )
        params: dict[str, Any] = {"now": now, "after": after, "limit": limit}
        if account_id is not None:
            sql += " AND n.account_id = :account_id"
            params["account_id"] = account_id
        rows = self._read.execute(sql + " ORDER BY n.x LIMIT :limit", params)
        return [NumberUsage(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    async def refresh_statistics(self) -> None:
        """Nothing to do: SQLite's plans here come from the schema's indexes, and some queries
        are written for the plan they get without statistics (see ``ACTIVE``)."""

    async def list_numbers(self, account_id: int | None, now: int) -> list[NumberUsage]:
        sql = (
            "SELECT n.x, n.account_id, n.country_code, n.enabled, "
            f"({_ACTIVE_ON_X}) "
            "FROM numbers n"
        )
        params: dict[str, Any] = {"now": now}
        if account_id is not None:
            sql += " WHERE n.account_id = :account_id"
            params["account_id"] = account_id
        rows = self._read.execute(sql + " ORDER BY n.account_id, n.x", params)
        return [NumberUsage(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    async def free_numbers(
        self, account_id: int, country_code: int, parties: Sequence[str], now: int, limit: int
    ) -> list[Candidate]:
        named = {f"p{i}": party for i, party in enumerate([*parties, ""])}
        rows = self._read.execute(
            "SELECT n.x, n.active FROM numbers n "
            "WHERE n.account_id = :account_id AND n.country_code = :cc AND n.enabled = 1 "
            "AND NOT EXISTS (SELECT 1 FROM parties p JOIN bindings b ON b.seq = p.seq "
            f"  WHERE p.x = n.x AND p.number IN ({', '.join(':' + k for k in named)}) "
            f"AND {ACTIVE}) ORDER BY n.active LIMIT :limit",
            {"account_id": account_id, "cc": country_code, "now": now, "limit": limit,
             **named},
        )
        return [Candidate(r[0], r[1]) for r in rows]

    async def pool_stats(
        self, account_id: int, country_code: int, a: str, b: str, now: int
    ) -> PoolStats:
        held = (
            "(SELECT count(*) FROM parties p JOIN bindings b ON b.seq = p.seq "
            f"WHERE p.x = n.x AND p.number = :{{party}} AND {ACTIVE})"
        )
        row = self._read.execute(
            f"SELECT count(*), coalesce(sum({held.format(party='a')}), 0), "
            f"coalesce(sum({held.format(party='b')}), 0) FROM numbers n "
            "WHERE n.account_id = :account_id AND n.country_code = :cc AND n.enabled = 1",
            {"account_id": account_id, "cc": country_code, "a": a, "b": b, "now": now},
        ).fetchone()
        return PoolStats(int(row[0]), int(row[1]), int(row[2]))

    async def pool_usage(self, now: int) -> list[PoolUsage]:
        """O(bindings): seconds at a million. Run in a thread on a connection of its own, so
        the event loop keeps serving meanwhile (sqlite3 releases the GIL while it works)."""
        if self._path.startswith("file:"):
            return _pool_usage(self._read, now)

        def work() -> list[PoolUsage]:
            conn = _connect(self._path)
            try:
                return _pool_usage(conn, now)
            finally:
                conn.close()

        return await asyncio.to_thread(work)

    # --- bindings --------------------------------------------------------------------------
    async def insert_binding(self, binding: Binding, now: int,
                             claim: SignatureClaim | None = None) -> None:
        conn = self._conn

        def work() -> None:
            _claim_in(conn, claim)
            _insert(conn, binding, now)

        try:
            await self._batched(work)
        except sqlite3.IntegrityError as exc:
            raise BindConflict(_conflict_kind(str(exc))) from exc
        if claim is not None:
            claim.taken = True

    async def replace_binding(self, old: Binding, new: Binding, now: int) -> bool:
        """Compare-and-swap: put ``new`` in place of ``old`` (same bindId) only if the stored
        binding is still exactly ``old`` and active; False otherwise. A delete and an insert
        with a new seq in one transaction, so the read index of every process sees it."""
        conn = self._conn

        def work() -> bool:
            return _replace(conn, old, new, now)

        try:
            return await self._batched(work)
        except sqlite3.IntegrityError as exc:
            raise BindConflict(_conflict_kind(str(exc))) from exc

    # --- AXG groups ----------------------------------------------------------------------------
    async def create_group(self, group: Group) -> None:
        conn = self._conn

        def work() -> None:
            conn.execute(
                "INSERT INTO groups (group_id, account_id, name, remark, country_code, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (group.group_id, group.account_id, group.name, group.remark,
                 group.country_code, group.created_at))
            conn.executemany("INSERT INTO group_members (group_id, number) VALUES (?, ?)",
                             [(group.group_id, m) for m in group.members])

        await self._batched(work)

    async def get_group(self, account_id: int, group_id: str) -> Group | None:
        row = self._read.execute(
            f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.group_id = ? AND g.account_id = ?",
            (group_id, account_id)).fetchone()
        return _group_from_row(row) if row else None

    async def list_groups(self, account_id: int, limit: int, offset: int
                          ) -> tuple[list[Group], int]:
        read = self._read
        read.execute("BEGIN")
        try:
            rows = read.execute(
                f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.account_id = ? "
                "ORDER BY g.created_at, g.group_id LIMIT ? OFFSET ?",
                (account_id, limit, offset)).fetchall()
            (total,) = read.execute("SELECT count(*) FROM groups WHERE account_id = ?",
                                    (account_id,)).fetchone()
        finally:
            read.execute("COMMIT")
        return [_group_from_row(row) for row in rows], int(total)

    async def change_group(self, group: Group,
                           replacements: Sequence[tuple[Binding, Binding]], now: int) -> bool:
        """The group's new members and its bindings' new keys, all or nothing: False (nothing
        changed) when a binding is no longer what was read; ``BindConflict`` on I1."""
        conn = self._conn

        def work() -> bool:
            conn.execute("UPDATE groups SET name = ?, remark = ? WHERE group_id = ?",
                         (group.name, group.remark, group.group_id))
            conn.execute("DELETE FROM group_members WHERE group_id = ?", (group.group_id,))
            conn.executemany("INSERT INTO group_members (group_id, number) VALUES (?, ?)",
                             [(group.group_id, m) for m in group.members])
            for old, new in replacements:
                if not _replace(conn, old, new, now):
                    raise _Stale
            return True

        try:
            return await self._batched(work)
        except _Stale:
            return False
        except sqlite3.IntegrityError as exc:
            raise BindConflict(_conflict_kind(str(exc))) from exc

    async def delete_group(self, account_id: int, group_id: str) -> bool:
        conn = self._conn

        def work() -> bool:
            cur = conn.execute("DELETE FROM groups WHERE group_id = ? AND account_id = ?",
                               (group_id, account_id))
            if cur.rowcount:
                conn.execute("DELETE FROM group_members WHERE group_id = ?", (group_id,))
            return cur.rowcount > 0

        return await self._batched(work)

    def _one_binding(self, where: str, params: dict[str, Any]) -> Binding | None:
        row = self._read.execute(
            f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE {where} AND {ACTIVE}", params
        ).fetchone()
        return binding_from_row(row) if row else None

    async def delete_binding(self, bind_id: str) -> bool:
        def work() -> bool:
            cur = self._conn.execute("DELETE FROM bindings WHERE bind_id = ?", (bind_id,))
            return cur.rowcount > 0

        return await self._batched(work)

    async def find_by_party(self, x: str, number: str, now: int) -> Binding | None:
        return self.find_by_party_now(x, number, now)

    def find_by_party_now(self, x: str, number: str, now: int) -> Binding | None:
        if self._index is not None:
            self._sync_index()
            return self._index.find_by_party(x, number, now)
        row = self._read.execute(_FIND_BY_PARTY, (x, number, now)).fetchone()
        return binding_from_row(row) if row else None

    async def find_bindings_by_number(self, number: str, now: int,
                                      limit: int) -> list[Binding]:
        """Scans the parties (no index on a party alone: it would cost every bind); in a
        thread on a connection of its own for a file store, so the event loop keeps serving."""
        sql = (
            f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.seq IN ("
            " SELECT seq FROM parties WHERE x = :n UNION SELECT seq FROM parties WHERE number = :n"
            f") AND {ACTIVE} ORDER BY b.seq LIMIT :limit"
        )
        params = {"n": number, "now": now, "limit": limit}
        return [binding_from_row(row) for row in await self._read_aside(sql, params)]

    async def _read_aside(self, sql: str, params: dict[str, Any]) -> list[Any]:
        if self._path.startswith("file:"):  # in memory: only this process's connections
            return self._read.execute(sql, params).fetchall()

        def work() -> list[Any]:
            conn = sqlite3.connect(self._path, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()

        return await asyncio.to_thread(work)

    async def find_by_extension(self, x: str, extension: str, now: int) -> Binding | None:
        if self._index is not None:
            self._sync_index()
            return self._index.find_by_extension(x, extension, now)
        return self._one_binding(
            "b.x = :x AND b.extension = :ext AND b.extension <> ''",
            {"x": x, "ext": extension, "now": now},
        )

    async def has_extension_bindings(self, x: str, now: int) -> bool:
        if self._index is not None:
            self._sync_index()
            return self._index.has_extension_bindings(x, now)
        row = self._read.execute(
            f"SELECT 1 FROM bindings b WHERE b.x = :x AND b.extension <> '' AND {ACTIVE} "
            "LIMIT 1",
            {"x": x, "now": now},
        ).fetchone()
        return row is not None

    # --- lifecycle.md: cool-offs and the block list -----------------------------------------
    async def record_cool_offs(self, bindings: Sequence[Binding], now: int) -> None:
        """As the trigger does for this store's own bindings (``Store.cool_offs``)."""
        rows = [(party, number, (b.expire_at if 0 < b.expire_at <= now else now),
                 b.account_id)
                for b in bindings for number in (b.x, b.y) if number
                for party in b.parties() if party]

        def work() -> None:
            self._conn.executemany(
                "INSERT INTO cool_offs (number, x, until) SELECT ?, ?, ? + cool_off_seconds "
                "FROM accounts WHERE id = ? AND cool_off_seconds > 0 "
                "ON CONFLICT (number, x) DO UPDATE SET until = max(until, excluded.until)",
                rows)

        if rows:
            await self._batched(work)

    # --- the in-memory index -----------------------------------------------------------------
    def _start_index(self) -> None:
        """Build the read index: at once for a small store; for a large one (seconds at 10^6)
        in a thread, while reads go to SQLite, so the server answers from the start."""
        (bindings,) = self._read.execute("SELECT coalesce(max(seq), 0) FROM bindings").fetchone()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if bindings < INDEX_BUILT_AT_ONCE or loop is None:
            self._install_index(*self._build_index(self._read))
            return

        def build() -> tuple[BindingIndex, int, int]:
            conn = _connect(self._path)
            try:
                return self._build_index(conn)
            finally:
                conn.close()

        async def build_then_install() -> None:
            started = time.monotonic()
            try:
                self._install_index(*await asyncio.to_thread(build))
            except Exception:
                _log.exception("could not build the read index; reads stay on SQLite")
                return
            _log.info("read index of %d bindings ready in %.1f s", bindings,
                      time.monotonic() - started)

        self._index_build = loop.create_task(build_then_install())

    @staticmethod
    def _build_index(conn: sqlite3.Connection) -> tuple[BindingIndex, int, int]:
        """Every binding in one snapshot, with the positions (last seq, last deletion) that the
        next ``_sync_index`` continues from."""
        index = BindingIndex()
        seq = 0
        conn.execute("BEGIN")
        try:
            (deletion,) = conn.execute(
                "SELECT coalesce(max(id), 0) FROM binding_deletions").fetchone()
            rows = conn.execute(
                f"SELECT b.seq, {BINDING_COLUMNS} FROM bindings b ORDER BY b.seq")
            while batch := rows.fetchmany(4096):
                index.add_rows(batch)
                seq = batch[-1][0]
        finally:
            conn.execute("COMMIT")
        return index, seq, deletion

    def _install_index(self, index: BindingIndex, seq: int, deletion: int) -> None:
        self._index_seq, self._index_deletion = seq, deletion
        self._index_version = None  # whatever was committed since: read before the next answer
        self._index = index

    def _sync_index(self) -> None:
        """Bring the index up to date when the file changed since it last looked
        (``_ChangeWatch``: one PRAGMA when nothing changed). Any connection's
        commit changes it, this process's writer thread included; the changes are read in one
        snapshot: bindings with a larger ``seq`` than seen, and the deletion log. An index
        further behind than the log keeps is rebuilt."""
        index = self._index
        assert index is not None and self._changes is not None
        read = self._read
        version = self._changes.token()
        if version == self._index_version:
            return
        read.execute("BEGIN")
        try:
            (first_kept,) = read.execute("SELECT min(id) FROM binding_deletions").fetchone()
            if first_kept is not None and first_kept > self._index_deletion + 1:
                read.execute("COMMIT")
                index, seq, deletion = self._build_index(read)
                self._install_index(index, seq, deletion)
                read.execute("BEGIN")
            rows = read.execute(
                f"SELECT b.seq, {BINDING_COLUMNS} FROM bindings b WHERE b.seq > ? "
                "ORDER BY b.seq", (self._index_seq,))
            while batch := rows.fetchmany(4096):
                index.add_rows(batch)
                self._index_seq = batch[-1][0]
            ended: list[int] = []
            for row in read.execute(
                    "SELECT id, seq, x, a, b, extension FROM binding_deletions WHERE id > ? "
                    "ORDER BY id", (self._index_deletion,)):
                index.remove(row[1], row[2], row[3], row[4], row[5])
                self._index_deletion = row[0]
                ended.append(row[1])
            # A row changed in place (``replace_binding``) logged its old keys and is still
            # there: read it again. A row deleted is not found.
            for start in range(0, len(ended), 500):
                chunk = ended[start:start + 500]
                index.add_rows(read.execute(
                    f"SELECT b.seq, {BINDING_COLUMNS} FROM bindings b WHERE b.seq IN "
                    f"({', '.join('?' * len(chunk))}) ORDER BY b.seq", chunk).fetchall())
        finally:
            read.execute("COMMIT")
        self._index_version = version

    # --- calls, replay guard, housekeeping -------------------------------------------------
    def record_call(self, call: CallRef) -> None:
        """Buffered (``callrefs.CallRefBuffer``): the query pays no write."""
        self._calls.add(call)

    async def _write_calls(self, calls: Sequence[CallRef]) -> None:
        # The parameters flattened in C (astuple, chain): no Python work per value.
        values = list(itertools.chain.from_iterable(map(msgspec.structs.astuple, calls)))
        await self._batched(lambda: _insert_calls(self._conn, values))

    async def flush_calls(self) -> None:
        """Write every pending call reference now (tests, shutdown)."""
        await self._calls.close()

    async def sweep(self, now: int, limit: int) -> int:
        def work() -> int:
            cur = self._conn.execute(
                "DELETE FROM bindings WHERE seq IN (SELECT seq FROM bindings "
                "WHERE expire_at > 0 AND expire_at <= ? LIMIT ?)",
                (now, limit),
            )
            self._conn.execute(
                "DELETE FROM signatures WHERE key IN (SELECT key FROM signatures "
                "WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            )
            self._conn.execute(
                "DELETE FROM cool_offs WHERE (number, x) IN (SELECT number, x FROM cool_offs "
                "WHERE until <= ? LIMIT ?)", (now, limit))
            # Indexes further behind than the log keeps reload from the bindings.
            self._conn.execute(
                "DELETE FROM binding_deletions WHERE id IN (SELECT id FROM binding_deletions "
                "WHERE id <= (SELECT max(id) FROM binding_deletions) - ? ORDER BY id LIMIT ?)",
                (DELETION_LOG_KEPT, limit),
            )
            return cur.rowcount

        return await self._batched(work)

    # --- call records and the outbox -------------------------------------------------------
    async def get_call(self, call_id: str) -> CallRef | None:
        pending = self._calls.get(call_id)
        if pending is not None:
            return pending
        row = self._read.execute(_SELECT_CALL, (call_id,)).fetchone()
        return CallRef(*row) if row else None

    async def next_call_record_id(self) -> int:
        return await self._record_ids.next()

    async def _draw_record_ids(self, count: int) -> range:
        def work() -> range:
            (value,) = self._conn.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'call_record' "
                "RETURNING value", (count,)).fetchone()
            return range(int(value) - count + 1, int(value) + 1)

        return await self._batched(work)

    async def save_call_record(self, record: CallRecord, event: OutboxEvent | None,
                               claim: SignatureClaim | None = None) -> bool:
        def work() -> bool:
            _claim_in(self._conn, claim)
            if not self._conn.execute(INSERT_RECORD.sqlite, record_params(record)).fetchall():
                return False
            if event is not None:
                self._conn.execute(INSERT_EVENT.sqlite, event_params(event))
            return True

        saved = await self._batched(work)
        if claim is not None:
            claim.taken = True
        return saved

    # --- operators -------------------------------------------------------------------------


def _pool_usage(conn: sqlite3.Connection, now: int) -> list[PoolUsage]:
    params = {"now": now}
    per_x = conn.execute(
        "SELECT n.account_id, n.country_code, n.x, n.enabled, "
        f"({_ACTIVE_ON_X}) "
        "FROM numbers n ORDER BY n.account_id, n.country_code, n.x", params,
    ).fetchall()
    busiest = {
        (row[0], row[1]): int(row[2])
        for row in conn.execute(
            "SELECT account_id, country_code, max(c) FROM ("
            " SELECT n.account_id, n.country_code, p.number, count(*) AS c "
            " FROM parties p JOIN bindings b ON b.seq = p.seq JOIN numbers n ON n.x = p.x "
            f" WHERE {ACTIVE} GROUP BY n.account_id, n.country_code, p.number) "
            "GROUP BY account_id, country_code", params,
        )
    }
    return summarise_pools(per_x, busiest)


def _has_sealed_secrets(conn: sqlite3.Connection) -> bool:
    """Whether the store already needs its key (so a missing key file is an error)."""
    try:
        row = conn.execute("SELECT 1 FROM accounts WHERE access_secret LIKE 'pns-aesgcm:%' "
                           "LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # a new store: no accounts table yet
        return False
    return row is not None


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a new store to WAL. The switch needs the file to itself, and SQLite answers
    "database is locked" at once, without its busy handler, when another process opening the
    same new store holds a lock in the way (several ``pns serve`` workers or CLI commands
    starting together): try again until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _create_private(path: str) -> None:
    """The store holds account secrets: create it readable by its owner only."""
    if not os.path.exists(path):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def _split_statements(script: str) -> list[str]:
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def _has_bindings(conn: sqlite3.Connection, x: str, now: int) -> bool:
    """Does any active binding hold a key on X: a party (X or Y), "*", or an extension?"""
    return (conn.execute(_ANY_ON_X, (x, now)).fetchone() is not None
            or conn.execute(_ANY_EXTENSION_ON_X, (x, now)).fetchone() is not None)


def _end_bindings_on(conn: sqlite3.Connection, x: str) -> None:
    """End every binding with a key on X (its number leaves the account)."""
    conn.execute("DELETE FROM bindings WHERE seq IN (SELECT seq FROM parties WHERE x = ?) "
                 "OR (x = ? AND extension <> '')", (x, x))


def _insert_calls(conn: sqlite3.Connection, values: list[Any]) -> None:
    """Insert the call references whose columns ``values`` holds one after another."""
    start = 0
    rows = len(values) // _CALL_WIDTH
    for chunk in _CALL_CHUNKS:
        while rows >= chunk:
            end = start + chunk * _CALL_WIDTH
            conn.execute(_INSERT_CALLS[chunk], values[start:end])
            start = end
            rows -= chunk


class _Stale(Exception):
    """A compare-and-swap found the binding changed: the transaction's work is undone."""


_GROUP_COLUMNS = (
    "g.group_id, g.account_id, g.name, g.remark, g.country_code, g.created_at, "
    "(SELECT group_concat(number, ',') FROM (SELECT number FROM group_members m "
    "WHERE m.group_id = g.group_id ORDER BY number))"
)


def _group_from_row(row: Sequence[Any]) -> Group:
    return Group(group_id=str(row[0]), account_id=int(row[1]), name=str(row[2]),
                 remark=str(row[3]), country_code=int(row[4]), created_at=int(row[5]),
                 members=tuple(str(row[6]).split(",")) if row[6] else ())


def _replace(conn: sqlite3.Connection, old: Binding, new: Binding, now: int) -> bool:
    check_replacement(old, new)
    stored = conn.execute(
        f"SELECT {BINDING_COLUMNS} FROM bindings b WHERE b.bind_id = ?",
        (old.bind_id,)).fetchone()
    if stored is None or tuple(stored) != binding_row(old) or not old.active_at(now):
        return False
    conn.execute("DELETE FROM bindings WHERE bind_id = ?", (old.bind_id,))
    _insert(conn, new, now)
    # A change, not an end (lifecycle.md: cool-off follows an unbind or an expiry): the
    # delete's trigger recorded cool-offs for its parties; none stays.
    conn.execute("DELETE FROM cool_offs WHERE x IN (?, ?) AND number IN (?, ?, ?)",
                 (new.x, old.y, old.a, old.b, new.b))
    return True


def _claim_in(conn: sqlite3.Connection, claim: SignatureClaim | None) -> None:
    """A write's replay-guard claim, first in its job: ``Replayed`` rolls the job's savepoint
    (or transaction) back, so nothing of it is written."""
    if claim is None or claim.taken:
        return
    if not conn.execute(CLAIM_SIGNATURE.sqlite, claim.params()).fetchall():
        raise Replayed


def _insert(conn: sqlite3.Connection, binding: Binding, now: int) -> None:
    """One bind inside the writer's transaction: expired holders of its keys released first
    (each key by its own index), X exclusivity checked (the writer is alone, so the check and
    the insert are atomic), then the binding and its party keys."""
    keys = binding.party_keys()
    by_number: dict[str, list[str]] = {}
    for number, party in keys:
        by_number.setdefault(number, []).append(party)
    for number, parties in by_number.items():
        marks = ", ".join("?" * len(parties))
        conn.execute(
            "DELETE FROM bindings WHERE seq IN (SELECT p.seq FROM parties p "
            f"JOIN bindings b ON b.seq = p.seq WHERE p.x = ? AND p.number IN ({marks}) "
            "AND b.expire_at BETWEEN 1 AND ?)", (number, *parties, now))
    if binding.extension:
        conn.execute(
            "DELETE FROM bindings WHERE x = ? AND extension = ? "
            "AND extension <> '' AND expire_at BETWEEN 1 AND ?",
            (binding.x, binding.extension, now))
    if binding.customer_bind_id:
        conn.execute(
            "DELETE FROM bindings WHERE account_id = ? "
            "AND customer_bind_id = ? AND customer_bind_id <> '' "
            "AND expire_at BETWEEN 1 AND ?", (binding.account_id, binding.customer_bind_id, now))
    for number in {binding.x, *by_number}:
        if conn.execute(_HELD_ALONE, (number, now)).fetchone() is not None:
            raise sqlite3.IntegrityError("X exclusivity: parties")
    if binding.exclusive() and (
            conn.execute(_ANY_ON_X, (binding.x, now)).fetchone() is not None
            or conn.execute(_ANY_EXTENSION_ON_X, (binding.x, now)).fetchone() is not None):
        raise sqlite3.IntegrityError("X exclusivity: parties")
    cur = conn.execute(
        "INSERT INTO bindings (bind_id, account_id, x, a, b, extension, bind_type, "
        "customer_bind_id, business_id, flag, expire_second, expire_at, created_at, "
        "attrs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        binding_row(binding),
    )
    seq = cur.lastrowid
    conn.executemany("INSERT INTO parties (x, number, seq) VALUES (?, ?, ?)",
                     [(number, party, seq) for number, party in keys])


def _conflict_kind(message: str) -> ConflictKind:
    if "parties" in message:
        return ConflictKind.PARTY
    if "extension" in message:
        return ConflictKind.EXTENSION
    if "customer_bind_id" in message:
        return ConflictKind.CUSTOMER_BIND_ID
    raise StoreError(f"unexpected constraint failure: {message}")


class _Checkpointer:
    """WAL checkpoints in a thread of their own, with a connection of its own: the serving
    connection never checkpoints (``wal_autocheckpoint = 0``), so the event loop never waits
    for the fsyncs a checkpoint makes. Every ``interval`` s, a PASSIVE checkpoint once the WAL
    holds ``pages`` pages or more; a last one (TRUNCATE) when the store closes."""

    def __init__(self, path: str, interval: float = 0.05, pages: int = 1000):
        self._path, self._interval, self._pages = path, interval, pages
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pns-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = _connect(self._path)
        try:
            while not self._stop.wait(self._interval):
                try:
                    if os.path.getsize(self._path + "-wal") >= self._pages * 4096:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except (OSError, sqlite3.Error):
                    _log.exception("WAL checkpoint failed; will retry")
            # The last one only tidies the file: it must not hold up a shutdown for as long
            # as another connection keeps a read open (busy_timeout would wait 10 s).
            conn.execute(f"PRAGMA busy_timeout = {_LAST_CHECKPOINT_WAIT_MS}")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
