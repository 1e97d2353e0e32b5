"""Crashes and faults under load: what was acknowledged stays, and the invariants hold.

- ``pns serve`` killed (SIGKILL) in the middle of a storm of binds and unbinds, on every store:
  after a restart every acknowledged binding is listed, every acknowledged unbind is gone,
  nothing else appeared, and I1 holds.
- The SQLite file's file system full (a tiny tmpfs) and writes refused (RLIMIT_FSIZE of the
  running server, so writes fail with EFBIG): binds answer 10009 (HTTP 500, envelope), reads go
  on, the process stays up, and once space is back binds work again without a restart; the
  file passes ``PRAGMA integrity_check``.
- A read-only file system cannot be produced under a running server (remounting read-only is
  refused while files are open for writing, and root ignores file modes), so the read-only
  case is a store on a read-only mount at start: ``pns serve`` refuses to start, clearly.
- PostgreSQL restarted under load: binds during the outage get 10009 (or /healthz 503), the
  same ``pns serve`` recovers by itself, and acknowledged bindings are all there.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pns.client import PnsClient
from pns.model import Role

from .conftest import PG_ADMIN_URL, Server, Tenant, create_tenant, pns_command, unique_hk

FAILURES = (OSError, http.client.HTTPException)  # the server is gone or going


@dataclass
class Ledger:
    """What the clients were told, and what they could not know."""

    bound: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # bindId -> (a, b, x)
    unbound: set[str] = field(default_factory=set)
    unbind_in_doubt: set[str] = field(default_factory=set)  # unbinds without a clear answer
    bind_in_doubt: int = 0  # binds without a clear answer (none, or 10009: may have committed)
    codes: dict[int, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, code: int) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1


BIND_CODES = {0, 10010, 10009}  # 10010: A or B busy on every number


def storm_worker(url: str, tenant: Tenant, people: list[str], ledger: Ledger,
                 stop: threading.Event, seed: int, allowed: set[int]) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    n = 0
    with PnsClient(url, tenant.access_key, tenant.access_secret, timeout=5) as client:
        while not stop.is_set():
            n += 1
            if mine and rng.random() < 0.3:
                bind_id = mine.pop(rng.randrange(len(mine)))
                with ledger.lock:
                    ledger.unbind_in_doubt.add(bind_id)
                try:
                    status, env = client.request("unbindAXB", {"bindId": bind_id})
                except FAILURES:
                    return
                ledger.count(env["code"])
                with ledger.lock:
                    if env["code"] == 0:
                        ledger.unbind_in_doubt.discard(bind_id)
                        ledger.unbound.add(bind_id)
                    elif env["code"] != 10009:  # 10009 stays in doubt
                        ledger.anomalies.append(f"unbind {status} {env}")
                continue
            a, b = rng.sample(people, 2)
            # A businessId of its own: two binds of one pair in one millisecond would
            # otherwise be the same signed request, rightly refused as a replay (1006).
            body: dict[str, Any] = {"phoneA": a, "phoneB": b, "expireSecond": 0,
                                    "businessId": f"s{seed}-{n}"}
            if n % 2:
                body["customerBindId"] = f"s{seed}-{n}"
            with ledger.lock:
                ledger.bind_in_doubt += 1
            try:
                status, env = client.request("bindAXB", body)
            except FAILURES:
                return
            ledger.count(env["code"])
            with ledger.lock:
                if env["code"] != 10009:
                    ledger.bind_in_doubt -= 1
                if env["code"] == 0:
                    ledger.bound[env["data"]["bindId"]] = (a, b, env["data"]["did"])
                    mine.append(env["data"]["bindId"])
                elif env["code"] not in allowed:
                    ledger.anomalies.append(f"bind {status} {env}")
                elif env["code"] == 10009 and status != 500:
                    ledger.anomalies.append(f"10009 with HTTP {status}")


def run_storm(server: Server, tenant: Tenant, people: list[str], ledger: Ledger,
              stop: threading.Event, threads: int = 4,
              allowed: set[int] = BIND_CODES) -> list[threading.Thread]:
    workers = [threading.Thread(target=storm_worker, daemon=True,
                                args=(server.url, tenant, people, ledger, stop, seed, allowed))
               for seed in range(threads)]
    for worker in workers:
        worker.start()
    return workers


def wait_for_acks(ledger: Ledger, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(ledger.bound) < count:
        time.sleep(0.02)
    assert len(ledger.bound) >= min(count, 20), f"the storm got only {ledger.codes}"


def all_bindings(server: Server, tenant: Tenant) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    with server.client(tenant) as c:
        while True:
            page = c.list_bindings(1000, len(items))
            assert page["code"] == 0, page
            items += page["data"]["bindList"]
            if len(items) >= page["data"]["total"]:
                return items


def assert_ledger_kept(ledger: Ledger, listed: list[dict[str, Any]]) -> None:
    assert ledger.anomalies == []
    by_id = {item["bindId"]: item for item in listed}
    assert len(by_id) == len(listed), "a binding listed twice"
    for bind_id, (a, b, x) in ledger.bound.items():
        if bind_id in ledger.unbound:
            assert bind_id not in by_id, f"acknowledged unbind {bind_id} is back"
        elif bind_id not in ledger.unbind_in_doubt:
            assert bind_id in by_id, f"acknowledged binding {bind_id} was lost"
            item = by_id[bind_id]
            assert (item["phoneA"], item["phoneB"], item["did"]) == (a, b, x)
    phantoms = set(by_id) - set(ledger.bound)
    assert len(phantoms) <= ledger.bind_in_doubt, f"bindings nobody was told of: {phantoms}"
    assert_i1(listed)


def assert_i1(listed: list[dict[str, Any]]) -> None:
    """I1: on one X, a number is a party of at most one active binding."""
    seen: dict[tuple[str, str], str] = {}
    for item in listed:
        for party in (item["phoneA"], item["phoneB"]):
            if not party:
                continue
            key = (item["did"], party)
            assert key not in seen, f"I1 broken: {party} on {item['did']} in {seen[key]} " \
                                    f"and {item['bindId']}"
            seen[key] = item["bindId"]


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# --- SIGKILL in a bind storm -----------------------------------------------------------------
def test_sigkill_in_a_bind_storm(store_url: str) -> None:
    tenant = create_tenant(store_url, numbers=4)
    people = [unique_hk("1") for _ in range(30)]
    server = Server(store_url)
    ledger, stop = Ledger(), threading.Event()
    workers = run_storm(server, tenant, people, ledger, stop)
    try:
        wait_for_acks(ledger, 150, 5)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        for worker in workers:
            worker.join(10)
            assert not worker.is_alive()
    finally:
        stop.set()
        server.stop()
    assert ledger.unbound, f"the storm unbound nothing: {ledger.codes}"
    restarted = Server(store_url)
    try:
        listed = all_bindings(restarted, tenant)
        assert_ledger_kept(ledger, listed)
        with restarted.client(tenant) as c:  # and the store takes new work
            assert c.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 0
    finally:
        restarted.stop()
    if store_url.startswith("sqlite:///"):
        assert integrity(Path(store_url[len("sqlite:///"):])) == "ok"


# --- file system faults on the embedded store ------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (we are root in CI), unmounted afterwards."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mount_point)], capture_output=True)
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError), open(directory / "one-more", "wb") as f:
        f.write(b"\0" * 4096)
        f.flush()
        os.fsync(f.fileno())
    return filler


def bind_once(client: PnsClient, ledger: Ledger) -> tuple[int, int]:
    a, b = unique_hk("1"), unique_hk("2")
    status, env = client.request("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": 0,
                                             "businessId": "b" * 128})
    assert isinstance(env["msg"], str) and len(env["requestId"]) == 19
    if env["code"] == 0:
        ledger.bound[env["data"]["bindId"]] = (a, b, env["data"]["did"])
    return status, env["code"]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def assert_write_fault_survived(server: Server, tenant: Tenant, switch: Tenant,
                                ledger: Ledger, fault_on: Any, fault_off: Any) -> None:
    """Binds under the fault: 10009 (HTTP 500) and no crash; reads go on; after the fault,
    binds work again in the same process and nothing acknowledged is missing."""
    with server.client(tenant) as c, server.client(switch) as s:
        for _ in range(5):
            assert bind_once(c, ledger) == (200, 0)
        a, _, x = next(iter(ledger.bound.values()))
        pid = server.proc.pid
        fault_on()
        during = [bind_once(c, ledger) for _ in range(30)]
        assert set(during) <= {(200, 0), (500, 10009)}, during
        assert (500, 10009) in during, "the fault never reached a bind"
        # Reads still work, and the process is up.
        listed = {i["bindId"] for i in c.list_bindings()["data"]["bindList"]}
        assert set(ledger.bound) <= listed
        assert get(server.url + "/healthz") == 200
        query = s.query(a, x)
        assert query["code"] in (0, 10009), query
        call_id = query["data"]["callId"] if query["code"] == 0 else None
        assert server.proc.poll() is None
        fault_off()
        deadline = time.monotonic() + 10
        while bind_once(c, ledger) != (200, 0):
            assert time.monotonic() < deadline, "binds did not recover"
            time.sleep(0.2)
        assert [bind_once(c, ledger) for _ in range(10)] == [(200, 0)] * 10
        assert server.proc.pid == pid and server.proc.poll() is None
        if call_id is not None:
            # A callId answered during the fault is still joined when its call is reported.
            deadline = time.monotonic() + 5
            while (report := s.report_call(call_id, startAt=1, hangupAt=2))["code"] != 0:
                assert time.monotonic() < deadline, report
                time.sleep(0.2)
    listed_items = all_bindings(server, tenant)
    assert set(ledger.bound) <= {i["bindId"] for i in listed_items}
    assert_i1(listed_items)


def test_sqlite_file_system_full(tiny_fs: Path) -> None:
    url = f"sqlite:///{tiny_fs}/pns.db"
    tenant = create_tenant(url, numbers=4)
    switch = create_tenant(url, Role.SWITCH)
    server = Server(url)
    filler: list[Path] = []
    try:
        assert_write_fault_survived(
            server, tenant, switch, Ledger(),
            fault_on=lambda: filler.append(fill(tiny_fs)),
            fault_off=lambda: [p.unlink() for p in tiny_fs.iterdir()
                               if p.name in ("filler", "one-more")])
    finally:
        server.stop()
    assert integrity(tiny_fs / "pns.db") == "ok"
    assert "database or disk is full" in server.log_text()  # the cause is in the log


def test_sqlite_writes_refused(tmp_path: Path) -> None:
    """Every write of the running server fails (EFBIG: its RLIMIT_FSIZE set to 0 from here;
    Python ignores SIGXFSZ), then succeeds again once the limit is lifted."""
    url = f"sqlite:///{tmp_path}/pns.db"
    tenant = create_tenant(url, numbers=4)
    switch = create_tenant(url, Role.SWITCH)
    server = Server(url)
    pid = server.proc.pid
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    try:
        assert_write_fault_survived(
            server, tenant, switch, Ledger(),
            fault_on=lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard)),
            fault_off=lambda: resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard)))
    finally:
        server.stop()
    assert integrity(tmp_path / "pns.db") == "ok"


def test_sqlite_store_on_a_read_only_mount(tiny_fs: Path) -> None:
    """A store on a read-only file system at start: ``pns serve`` refuses to start, with one
    clear line and no traceback; the same store serves once the mount is writable."""
    url = f"sqlite:///{tiny_fs}/pns.db"
    tenant = create_tenant(url, numbers=1)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    result = subprocess.run(pns_command("serve", "--port", "0", "--store", url),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "cannot open store" in result.stderr and "Traceback" not in result.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(tiny_fs)], check=True)
    server = Server(url)
    try:
        with server.client(tenant) as c:
            assert c.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 0
    finally:
        server.stop()


# --- PostgreSQL restarted under load ---------------------------------------------------------
def _pg_cluster() -> list[str]:
    if "@127.0.0.1:" not in PG_ADMIN_URL and "@localhost:" not in PG_ADMIN_URL:
        pytest.skip("the test cluster is not this machine's: not restarting it")
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("no pg_ctlcluster here")
    versions = sorted(os.listdir("/etc/postgresql"))
    if len(versions) != 1:
        pytest.skip(f"expected one PostgreSQL version, found {versions}")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]


def _pg_ready(timeout: float) -> bool:
    import asyncio

    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=2)
        await conn.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            asyncio.run(ping())
            return True
        except Exception:
            time.sleep(0.2)
    return False


@pytest.mark.serial  # restarts the PostgreSQL every other test uses
def test_postgresql_restart_under_load(pg_database: str) -> None:
    cluster = _pg_cluster()
    tenant = create_tenant(pg_database, numbers=4)
    people = [unique_hk("1") for _ in range(30)]
    server = Server(pg_database)
    ledger, stop = Ledger(), threading.Event()
    health: list[int] = []

    def watch_health() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                health.append(get(server.url + "/healthz"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_health, daemon=True)
    try:
        workers = run_storm(server, tenant, people, ledger, stop, threads=3)
        watcher.start()
        wait_for_acks(ledger, 50, 5)
        before = len(ledger.bound)
        restart = subprocess.run([*cluster, "restart"], capture_output=True, text=True,
                                 timeout=120)
        assert restart.returncode == 0, restart.stderr
        assert _pg_ready(30)
        # The same process recovers by itself: the storm goes on succeeding.
        deadline = time.monotonic() + 15
        while len(ledger.bound) < before + 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for worker in workers:
            worker.join(10)
        watcher.join(5)
        assert len(ledger.bound) >= before + 30, f"no recovery: {ledger.codes}"
        assert ledger.codes.get(10009, 0) > 0 or 503 in health, \
            f"no outage was seen: {ledger.codes}, health {set(health)}"
        assert set(health) <= {200, 503}
        assert server.proc.poll() is None
        listed = all_bindings(server, tenant)
        assert_ledger_kept(ledger, listed)
        assert get(server.url + "/healthz") == 200
    finally:
        stop.set()
        server.stop()
        if not _pg_ready(1):  # leave PostgreSQL running, whatever happened
            subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
            _pg_ready(30)

