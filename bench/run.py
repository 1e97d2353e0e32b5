"""pns benchmarks, one command: queryAXB and bindAXB on each store, against the floor.

    .venv/bin/python bench/run.py [--quick] [--stores sqlite,postgresql] [--json-out F]

Prints tables and, as the LAST line of its output, every figure as one JSON object.
--quick finishes in under two minutes (10^3 and 10^5 bindings, one short round); the full run
(10^3, 10^5 and 10^6 bindings, best of 3 rounds of 10 s) takes about 16 minutes on the
reference machine.

What it measures, for each store (a fresh SQLite file, and a fresh PostgreSQL database it
creates on --pg-url and drops at the end):

1. queryAXB throughput and p50/p99 latency under wrk, 64 connections, keep-alive; and with
   ``Connection: close`` (a new TCP connection per request) at the largest size. Each store is
   measured twice: as users run it (``pns serve --store URL --port P``, default settings, the
   access log on and written to a file), reported under the store's name, and quiet
   (``--log-level warning``: no access log), reported as ``<store>-quiet``; the difference is
   the access log's cost per request. The server runs pinned to CPU 0 (``taskset -c 0``), wrk
   to CPU 1; PostgreSQL is not pinned (its CPU use is reported). The floor (bench/floor.py, no
   work at all) runs on the same core with the same request stream in the same run; each store
   is reported as a ratio to it. The requests are signed queryAXB POSTs (bench/wrk_signed.lua)
   from the switch account for 2,000 (caller, did) pairs sampled from the loaded bindings,
   both directions. Before measuring, a
   sample of them is checked by hand (code 0, the expected callee; an unbound caller gets
   10013), and a warm-up pass in the wrk script's check mode must answer code 0 every time.
2. bindAXB throughput for new pairs (distinct numbers, each request its own signature) with
   bench/wrk_bind.lua, 64 connections, the server on one core (``--log-level warning``),
   default durability (SQLite WAL with synchronous=NORMAL; PostgreSQL's own defaults). Every
   answer is checked, and the bindings added are counted in the store afterwards.
3. Growth: both actions at every size (10^3, 10^5, 10^6 loaded bindings; --quick: 10^3 and
   10^5); the cost ratio of the largest size to the smallest (cost = 1/throughput).
4. Memory: the server's VmRSS (/proc/PID/status) once ready and after the query run; bytes per
   binding in each store (SQLite: file + WAL; PostgreSQL: pg_total_relation_size of bindings
   and parties), measured right after loading.

Bindings are loaded with bench/load.py (bulk, checked) and spread over 1,000 virtual numbers.
Between measurements the bindings the bench bound, the ``calls`` rows of answered queries and
the replay-guard ``signatures`` are removed, so every measurement starts from the same store.
Each measurement starts its own server and waits until the server's first pool-metrics refresh
has finished (it runs at start and then every 30 s; its cost is reported on its own as
"pool refresh").

The machine is expected to be shared and noisy: rounds are interleaved (floor, then each
store) and the best round is reported, with every round's figure in the JSON. A round where a
pinned server got under 90% of its CPU while something else took over 10% of that core is
marked ``*``.

Needs wrk and taskset (``scripts/system-deps`` installs wrk), two CPUs, and for PostgreSQL a
server on --pg-url whose user may create databases.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import load as bl  # noqa: E402  (bench/load.py)
import stack_choice as sc  # noqa: E402  (helpers: sign files, wrk runs, ports, CPU accounting)

# The run's stores are throwaway (PostgreSQL's a database of its own): so is the key that seals
# their account secrets (pns.vault; a PostgreSQL store needs one).
os.environ.setdefault("PNS_SECRET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
FLOOR = HERE / "floor.py"
QUERY_LUA = HERE / "wrk_signed.lua"
BIND_LUA = HERE / "wrk_bind.lua"
SERVER_CPU = "0"
QUIET = "-quiet"  # suffix of a target measured with --log-level warning (no access log)
CLIENT_CPU = "1"
CONNECTIONS = 64
QUERY_PAIRS = 2000
BIND_MAX_RATE = 25_000  # binds/s the pre-signed file is sized for (the run fails if exceeded)
BIND_EXPIRE_SECOND = 3600
DISTURBED_CPU_PCT = 90.0
STORES = ("sqlite", "postgresql")
GOALS = {
    "sqlite_query_x_floor": 0.40,
    "sqlite_query_x_floor_stretch": 0.60,
    "sqlite_query_p99_ms": 5.0,
    "postgresql_query_x_floor": 0.25,
    "sqlite_bind_per_s": 5000.0,
    "growth_max": 1.5,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Config:
    quick: bool
    scales: list[int]
    rounds: int
    duration: int
    warmup: int
    bind_duration: int
    stores: list[str]
    pg_url: str
    workdir: Path
    keep: bool
    pns: str
    python: str
    quiet_wait: float = 0.0
    numbers: int = bl.DEFAULT_NUMBERS
    pairs: int = QUERY_PAIRS
    close_scales: list[int] = field(default_factory=list)


# --- machine and versions ---------------------------------------------------------------------
def machine_info(pg_url: str | None) -> dict[str, Any]:
    info = sc.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    info["python"] = platform.python_version()
    info["python_executable"] = sys.executable  # whose pns was measured (its venv's)
    info["sqlite"] = sqlite3.sqlite_version
    info["loadavg_at_start"] = os.getloadavg()
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        info["pns_commit"] = rev
        info["src_modified"] = sorted(ln[3:] for ln in dirty if ln.strip())
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["uvloop"] = version("uvloop")
    if pg_url:
        with contextlib.suppress(Exception):
            info["postgresql"] = asyncio.run(
                _pg_scalar(pg_url + "/postgres", "SHOW server_version"))
            info["pg_synchronous_commit"] = asyncio.run(
                _pg_scalar(pg_url + "/postgres", "SHOW synchronous_commit"))
            info["pg_shared_buffers"] = asyncio.run(
                _pg_scalar(pg_url + "/postgres", "SHOW shared_buffers"))
    return info


async def _pg_scalar(dsn: str, sql: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def src_fingerprint() -> str:
    """A short hash of pns's source as it is now: each server runs the source of the moment it
    starts, so a run records this per measurement and says when the source changed under it."""
    h = hashlib.sha1()
    for path in sorted((ROOT / "src" / "pns").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode())
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:10]


# --- stores -------------------------------------------------------------------------------------
def create_stores(cfg: Config) -> dict[str, str]:
    urls: dict[str, str] = {}
    if "sqlite" in cfg.stores:
        path = cfg.workdir / "pns-bench.db"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(path) + suffix)
        urls["sqlite"] = f"sqlite:///{path}"
    if "postgresql" in cfg.stores:
        name = f"pns_bench_{os.getpid()}_{int(time.time())}"
        asyncio.run(_pg_admin(cfg.pg_url, f'CREATE DATABASE "{name}"'))
        urls["postgresql"] = f"{cfg.pg_url}/{name}"
    return urls


def drop_stores(cfg: Config, urls: dict[str, str]) -> None:
    if "postgresql" in urls:
        name = urls["postgresql"].rsplit("/", 1)[1]
        try:
            asyncio.run(_pg_admin(cfg.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:
            log(f"could not drop database {name}: {exc}")
    if "sqlite" in urls:
        path = bl._sqlite_path(urls["sqlite"])
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)


async def _pg_admin(pg_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_url + "/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def bench_binds_where() -> str:
    p = bl.BIND_A_PREFIX
    return f"a >= '{p}0000000' AND a <= '{p}9999999'"


def count_bench_binds(url: str) -> int:
    sql = f"SELECT count(*) FROM bindings WHERE {bench_binds_where()}"
    if url.startswith("sqlite:"):
        con = sqlite3.connect(bl._sqlite_path(url))
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()
    return int(asyncio.run(_pg_scalar(bl._pg_dsn(url), sql)))


def reset_store(url: str) -> None:
    """Back to the loaded state: drop what measurements added (bench binds, call refs,
    replay-guard signatures). Deleting bindings runs pns's own triggers (parties, counters)."""
    statements = [f"DELETE FROM bindings WHERE {bench_binds_where()}", "DELETE FROM calls",
                  "DELETE FROM signatures"]
    if url.startswith("sqlite:"):
        con = sqlite3.connect(bl._sqlite_path(url), isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 10000")
            con.execute("BEGIN IMMEDIATE")
            for sql in statements:
                con.execute(sql)
            con.execute("COMMIT")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        return

    async def pg() -> None:
        import asyncpg

        conn = await asyncpg.connect(bl._pg_dsn(url))
        try:
            async with conn.transaction():
                await conn.execute(statements[0])
                await conn.execute("TRUNCATE calls, signatures")
            await conn.execute("VACUUM bindings, parties, numbers")
        finally:
            await conn.close()

    asyncio.run(pg())


def store_bytes(url: str, bindings: int) -> dict[str, Any]:
    """Bytes per binding: the whole store, and bindings + parties with their indexes."""
    out: dict[str, Any] = {"bindings": bindings}
    if url.startswith("sqlite:"):
        path = bl._sqlite_path(url)
        size = os.path.getsize(path)
        wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
        con = sqlite3.connect(path)
        try:
            per = dict(con.execute(
                "SELECT tbl_name, sum(pgsize) FROM dbstat JOIN sqlite_master USING (name) "
                "GROUP BY tbl_name").fetchall())
        finally:
            con.close()
        tables = int(per.get("bindings", 0)) + int(per.get("parties", 0))
        out.update(file_bytes=size, wal_bytes=wal, binding_tables_bytes=tables,
                   bytes_per_binding=round((size + wal) / bindings, 1),
                   tables_bytes_per_binding=round(tables / bindings, 1))
        return out

    async def pg() -> tuple[int, int]:
        import asyncpg

        conn = await asyncpg.connect(bl._pg_dsn(url))
        try:
            tables = await conn.fetchval(
                "SELECT pg_total_relation_size('bindings') + pg_total_relation_size('parties')")
            db = await conn.fetchval("SELECT pg_database_size(current_database())")
            return int(tables), int(db)
        finally:
            await conn.close()

    tables, db = asyncio.run(pg())
    out.update(database_bytes=db, binding_tables_bytes=tables,
               bytes_per_binding=round(tables / bindings, 1),
               database_bytes_per_binding=round(db / bindings, 1))
    return out


def time_pool_refresh(url: str) -> float:
    """Seconds one pool-metrics refresh (``store.pool_usage``, which pns serve runs at start and
    every 30 s) takes on this store, measured in-process."""
    from pns.store import open_store

    async def run() -> float:
        store = await open_store(url)
        try:
            t0 = time.perf_counter()
            await store.pool_usage(int(time.time()))
            return time.perf_counter() - t0
        finally:
            await store.close()

    return round(asyncio.run(run()), 3)


# --- processes ----------------------------------------------------------------------------------
def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def cpu_busy_pct(before: dict[str, tuple[int, int]],
                 after: dict[str, tuple[int, int]]) -> dict[str, float]:
    out = {}
    for name, (busy1, total1) in after.items():
        busy0, total0 = before.get(name, (0, 0))
        if total1 > total0:
            out[name] = round(100 * (busy1 - busy0) / (total1 - total0), 1)
    return out


class PgBackends:
    """CPU seconds used by the PostgreSQL backends serving pns's pool (application_name=pns)."""

    def __init__(self, url: str | None):
        self.url = url

    def snapshot(self) -> dict[int, float] | None:
        """{backend pid: CPU seconds so far}; None when PostgreSQL could not be asked."""
        if not self.url:
            return {}
        dsn = bl._pg_dsn(self.url)
        name = dsn.rsplit("/", 1)[1]

        async def pids() -> list[int]:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                    "AND application_name = 'pns'", name)
                return [int(r[0]) for r in rows]
            finally:
                await conn.close()

        for _ in range(3):
            try:
                return {pid: sc.proc_cpu_seconds(pid) for pid in asyncio.run(pids())}
            except Exception as exc:
                log(f"could not list the PostgreSQL backends: {exc}")
        return None

    @staticmethod
    def used(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
        if before is None or after is None:
            return None
        total = 0.0
        for pid, cpu in after.items():
            if cpu == cpu:  # not NaN
                total += cpu - before.get(pid, 0.0)
        return total


def wait_quiet(max_wait: float, threshold: float = 25.0) -> float | None:
    """Before a measurement: wait (at most ``max_wait`` s) until no CPU is more than
    ``threshold``% busy with other work, sampled over 0.5 s. Returns the busiest CPU's % at the
    last sample (None when not waiting at all)."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_times()
        time.sleep(0.5)
        busy = max(cpu_busy_pct(before, cpu_times()).values(), default=0.0)
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def pg_cpu(used: float | None, wall: float, requests: int) -> dict[str, float | None]:
    if used is None:
        return {"pg_cpu_pct": None, "pg_cpu_us": None}
    return {"pg_cpu_pct": round(100 * used / wall, 1),
            "pg_cpu_us": round(1e6 * used / max(requests, 1), 1)}


def _http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_pns_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Until /healthz answers and the first pool-metrics refresh is done (its gauges appear in
    /metrics), so that refresh does not run inside a measurement. Should a pns without that
    refresh at start come, "done" is also both CPUs going quiet (under 30% busy for 0.5 s)
    once /healthz answers. Returns seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pns exited early with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = _http_get(port, "/healthz", timeout=timeout)
            if status == 200:
                status, body = _http_get(port, "/metrics", timeout=timeout)
                if status == 200 and b"pns_pool_numbers{" in body:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > 2.0:
                    before = cpu_times()
                    time.sleep(0.5)
                    if max(cpu_busy_pct(before, cpu_times()).values(), default=0.0) < 30.0:
                        return time.monotonic() - t0
        time.sleep(0.1)
    log(f"warning: pns on port {port} showed no pool gauges after {timeout:.0f}s; going on")
    return time.monotonic() - t0


@contextlib.contextmanager
def server(cfg: Config, target: str, url: str | None,
           quiet: bool = True) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """Start the floor or pns on CPU 0; yields (process, port, seconds until ready). Not
    ``quiet``: pns with its default settings, the access log going to the server log file."""
    port = sc.free_port()
    if target == "floor":
        cmd = ["taskset", "-c", SERVER_CPU, cfg.python, str(FLOOR), "--port", str(port)]
    else:
        assert url is not None
        cmd = ["taskset", "-c", SERVER_CPU, cfg.pns, "serve", "--store", url, "--port",
               str(port)]
        if quiet:
            cmd += ["--log-level", "warning"]
    log_path = cfg.workdir / f"server-{target}.log"
    with log_path.open("wb") as err:  # a file, never a pipe: a chatty server must not block
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        t0 = time.monotonic()
        sc.wait_port(port, proc, timeout=60)
        if target != "floor":
            wait_pns_ready(port, proc, timeout=180)
        yield proc, port, time.monotonic() - t0
    except Exception:
        tail = log_path.read_text(errors="replace")[-2000:]
        if tail:
            log(f"--- {target} server log ({log_path}) ---\n{tail}")
        raise
    finally:
        sc.stop_server(proc)


# --- sign files ---------------------------------------------------------------------------------
def write_query_signs(cfg: Config, pairs: Sequence[tuple[str, str, str]], seconds: int) -> Path:
    path = cfg.workdir / "query-signs.txt"
    sc.write_sign_file(str(path), access_key=bl.SWITCH_KEY, secret=bl.SWITCH_SECRET,
                       pairs=[(c, d) for c, d, _ in pairs], start=int(time.time()) - 2,
                       seconds=seconds)
    return path


def bind_body(i: int) -> str:
    return (f'{{"phoneA":"{bl.BIND_A_PREFIX}{i:07d}","phoneB":"{bl.BIND_B_PREFIX}{i:07d}",'
            f'"expireSecond":{BIND_EXPIRE_SECOND}}}')


class BindCounter:
    """Hands out never-used bind pair indexes for the whole run (the 8527/8528 numbers)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> range:
        if self.next + n > bl.MAX_INDEX:
            raise RuntimeError("out of bench bind numbers")
        r = range(self.next, self.next + n)
        self.next += n
        return r


def write_bind_signs(cfg: Config, indexes: range, tag: str) -> Path:
    """One line per bind, all with ts = now (valid for 60 s either way)."""
    path = cfg.workdir / f"bind-signs-{tag}.txt"
    ts = str(int(time.time() * 1000))
    head = f"accessKey={bl.CUSTOMER_KEY}&action=bindAXB&bizType=5&ts={ts}&body=".encode()
    tail = f"&accessSecret={bl.CUSTOMER_SECRET}".encode()
    md5 = hashlib.md5
    with path.open("w") as f:
        f.write(f"#accessKey={bl.CUSTOMER_KEY}\n")
        for i in indexes:
            body = bind_body(i)
            f.write(f"{ts} {md5(head + body.encode() + tail).hexdigest()} {body}\n")
    return path


# --- one measurement each -----------------------------------------------------------------------
def verify_queries(port: int, pairs: Sequence[tuple[str, str, str]], floor: bool) -> int:
    """A sample of real queries by hand: code 0 and the expected callee; an unbound caller on a
    real X gets 10013. Returns how many were checked."""
    step = max(1, len(pairs) // 20)
    checked = 0
    for caller, did, callee in list(pairs)[::step][:20]:
        status, ans = sc.post(port, sc.body_of(caller, did), access_key=bl.SWITCH_KEY,
                              secret=bl.SWITCH_SECRET)
        if status != 200 or ans.get("code") != 0:
            raise RuntimeError(f"queryAXB {caller} -> {did}: HTTP {status} {ans}")
        if not floor and (ans.get("data") or {}).get("callee") != callee:
            raise RuntimeError(f"queryAXB {caller} -> {did}: {ans}, expected callee {callee}")
        checked += 1
        if floor:
            return checked
    _, ans = sc.post(port, sc.body_of(f"{bl.BIND_B_PREFIX}9999998", pairs[0][1]),
                     access_key=bl.SWITCH_KEY, secret=bl.SWITCH_SECRET)
    if ans.get("code") != 10013:
        raise RuntimeError(f"an unbound caller was answered {ans}")
    return checked


def store_of(target: str) -> str:
    """The store a query target runs on: ``sqlite-quiet`` runs on ``sqlite``."""
    return target.removesuffix(QUIET)


def query_targets(stores: Sequence[str]) -> list[str]:
    """Each store as users run it (default settings), then quiet (no access log)."""
    return [t for store in stores for t in (store, store + QUIET)]


def measure_query(cfg: Config, target: str, url: str | None,
                  pairs: Sequence[tuple[str, str, str]], close: bool) -> dict[str, Any]:
    pg = PgBackends(url if store_of(target) == "postgresql" else None)
    busy_before = wait_quiet(cfg.quiet_wait)
    src = src_fingerprint()
    with server(cfg, target, url, quiet=target.endswith(QUIET)) as (proc, port, ready_s):
        rss_ready = rss_kib(proc.pid)
        signs = write_query_signs(cfg, pairs, cfg.warmup + cfg.duration + 40)
        checked = verify_queries(port, pairs, floor=target == "floor")
        warm = sc.run_wrk(port, seconds=cfg.warmup, connections=CONNECTIONS,
                          client_cpu=CLIENT_CPU, signs=str(signs), close=close, check=True,
                          script=QUERY_LUA, access_key=bl.SWITCH_KEY)
        if warm["bad_body"] or warm["err_status"] or warm["stale_ts"]:
            raise RuntimeError(f"{target}: answers other than code 0 in the checked warm-up: "
                               f"{warm}")
        cpu0, pg0, sys0, t0 = sc.proc_cpu_seconds(proc.pid), pg.snapshot(), cpu_times(), \
            time.monotonic()
        res = sc.run_wrk(port, seconds=cfg.duration, connections=CONNECTIONS,
                         client_cpu=CLIENT_CPU, signs=str(signs), close=close, check=False,
                         script=QUERY_LUA, access_key=bl.SWITCH_KEY)
        cpu1, pg1, sys1, t1 = sc.proc_cpu_seconds(proc.pid), pg.snapshot(), cpu_times(), \
            time.monotonic()
        rss_after = rss_kib(proc.pid)
    wall = t1 - t0
    res.update(
        server_cpu_pct=round(100 * (cpu1 - cpu0) / wall, 1),
        server_cpu_us=round(1e6 * (cpu1 - cpu0) / max(res["requests"], 1), 1),
        cpu_busy_pct=cpu_busy_pct(sys0, sys1),
        checked_by_hand=checked, warmup_checked=warm["requests"], ready_s=round(ready_s, 2),
        busy_before_pct=busy_before, src=src,
        rss_ready_kib=rss_ready.get("VmRSS"), rss_after_kib=rss_after.get("VmRSS"),
        rss_hwm_kib=rss_after.get("VmHWM"),
    )
    if pg.url:
        res.update(pg_cpu(PgBackends.used(pg0, pg1), wall, res["requests"]))
    return res


def measure_bind(cfg: Config, target: str, url: str, counter: BindCounter) -> dict[str, Any]:
    pg = PgBackends(url if target == "postgresql" else None)
    before = count_bench_binds(url)
    busy_before = wait_quiet(cfg.quiet_wait)
    src = src_fingerprint()
    with server(cfg, target, url) as (proc, port, ready_s):
        # One by hand: code 0 and an X of the pool.
        (i,) = counter.take(1)
        status, ans = sc.post(port, bind_body(i), access_key=bl.CUSTOMER_KEY,
                              secret=bl.CUSTOMER_SECRET, action="bindAXB")
        did = (ans.get("data") or {}).get("did", "")
        if status != 200 or ans.get("code") != 0 or not did.startswith(bl.X_PREFIX):
            raise RuntimeError(f"{target}: bindAXB by hand answered HTTP {status} {ans}")
        warm_signs = write_bind_signs(cfg, counter.take(BIND_MAX_RATE * 2), "warm")
        warm = sc.run_wrk(port, seconds=1, connections=CONNECTIONS, client_cpu=CLIENT_CPU,
                          signs=str(warm_signs), close=False, check=False, script=BIND_LUA,
                          access_key=bl.CUSTOMER_KEY)
        if warm["bad_body"] or warm["exhausted"]:
            raise RuntimeError(f"{target}: bindAXB warm-up failed: {warm}")
        signs = write_bind_signs(cfg, counter.take(BIND_MAX_RATE * (cfg.bind_duration + 1)),
                                 "run")
        cpu0, pg0, sys0, t0 = sc.proc_cpu_seconds(proc.pid), pg.snapshot(), cpu_times(), \
            time.monotonic()
        res = sc.run_wrk(port, seconds=cfg.bind_duration, connections=CONNECTIONS,
                         client_cpu=CLIENT_CPU, signs=str(signs), close=False, check=False,
                         script=BIND_LUA, access_key=bl.CUSTOMER_KEY)
        cpu1, pg1, sys1, t1 = sc.proc_cpu_seconds(proc.pid), pg.snapshot(), cpu_times(), \
            time.monotonic()
    wall = t1 - t0
    after = count_bench_binds(url)
    if res["exhausted"]:
        raise RuntimeError(f"{target}: the bind file ran out ({res['lines']} lines): raise "
                           "BIND_MAX_RATE")
    res.update(
        binds_per_s=round(res["ok"] / res["duration_s"], 1),
        rows_added=after - before, warmup_binds=warm["ok"],
        server_cpu_pct=round(100 * (cpu1 - cpu0) / wall, 1),
        server_cpu_us=round(1e6 * (cpu1 - cpu0) / max(res["requests"], 1), 1),
        cpu_busy_pct=cpu_busy_pct(sys0, sys1), ready_s=round(ready_s, 2),
        busy_before_pct=busy_before, src=src,
    )
    res.pop("lines", None)
    if pg.url:
        res.update(pg_cpu(PgBackends.used(pg0, pg1), wall, res["requests"]))
    return res


# --- the run ------------------------------------------------------------------------------------
def best(runs: list[dict[str, Any]], key: str = "rps") -> dict[str, Any]:
    return max(runs, key=lambda r: r[key])


def disturbed(run: dict[str, Any], target: str) -> bool:
    """Something else used CPU 0 during the run: the pinned server got under 90% of it while
    others took more than 10% of it. (A server waiting for I/O, like SQLite binds waiting for a
    checkpoint, uses less CPU without being disturbed.) Not judged for PostgreSQL, whose
    backends may run on CPU 0 themselves."""
    if store_of(target) == "postgresql":
        return False
    server = float(run.get("server_cpu_pct", 100.0))
    others = float(run.get("cpu_busy_pct", {}).get(f"cpu{SERVER_CPU}", server)) - server
    return server < DISTURBED_CPU_PCT and others > 10.0


def summarise(runs: list[dict[str, Any]], target: str, key: str = "rps") -> dict[str, Any]:
    b = best(runs, key)
    out = {
        key: round(b[key], 1),
        "us_per_req": round(1e6 / b[key], 1) if b[key] else None,
        "p50_ms": round(b["lat_p50_us"] / 1000, 3),
        "p99_ms": round(b["lat_p99_us"] / 1000, 3),
        "max_ms": round(b["lat_max_us"] / 1000, 3),
        "server_cpu_pct": b["server_cpu_pct"],
        "wrk_cpu_pct": b["wrk_cpu_pct"],
        "rounds": [round(r[key], 1) for r in runs],
        "rounds_p99_ms": [round(r["lat_p99_us"] / 1000, 3) for r in runs],
        "rounds_disturbed": [disturbed(r, target) for r in runs],
        "median": round(statistics.median(r[key] for r in runs), 1),
        "errors": sum(b[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                     "err_timeout")),
        "requests": b["requests"],
        # CPU cost per request, least over the rounds: robust to time slices lost to others.
        "server_cpu_us": min(r["server_cpu_us"] for r in runs),
        "src": sorted({r["src"] for r in runs if "src" in r}),
    }
    with_pg = [r for r in runs if r.get("pg_cpu_us") is not None]
    if with_pg:
        out["pg_cpu_us"] = min(r["pg_cpu_us"] for r in with_pg)
        out["total_cpu_us"] = min(r["server_cpu_us"] + r["pg_cpu_us"] for r in with_pg)
    for k in ("pg_cpu_pct", "rows_added", "bad_body", "first_bad", "checked_by_hand",
              "warmup_checked", "rss_ready_kib", "rss_after_kib", "rss_hwm_kib", "cpu_busy_pct",
              "busy_before_pct", "ready_s"):
        if k in b:
            out[k] = b[k]
    return out


T = TypeVar("T")


def attempt(what: str, results: dict[str, Any], work: Callable[..., T], *args: Any) -> T | None:
    """Run one measurement; a failure is logged and recorded, and the run goes on."""
    try:
        return work(*args)
    except Exception as exc:
        log(f"{what} FAILED: {exc}")
        results["failures"].append({"what": " ".join(what.split()), "error": str(exc)[:1000],
                                    "src": src_fingerprint()})
        return None


def _pg_note(res: dict[str, Any]) -> str:
    return f"  pg cpu {_fmt(res['pg_cpu_pct'], '5.1f')}%" if "pg_cpu_pct" in res else ""


def checkpoint(cfg: Config, results: dict[str, Any],
               runs: dict[tuple[str, bool], list[dict[str, Any]]],
               bind_runs: dict[str, list[dict[str, Any]]], label: str) -> None:
    """Every raw figure so far, in the work folder (partial.json), in case the run dies."""
    raw = {"results": results, "current_scale": label,
           "query_runs": {f"{t}/{'close' if c else 'keep-alive'}": rs
                          for (t, c), rs in runs.items()},
           "bind_runs": bind_runs}
    with contextlib.suppress(OSError, TypeError, ValueError):
        (cfg.workdir / "partial.json").write_text(json.dumps(raw))


def run(cfg: Config) -> dict[str, Any]:
    started = time.monotonic()
    machine = machine_info(cfg.pg_url if "postgresql" in cfg.stores else None)
    machine["src_at_start"] = src_fingerprint()
    urls = create_stores(cfg)
    counter = BindCounter()
    results: dict[str, Any] = {"loads": {}, "storage": {}, "pool_refresh_s": {}, "query": {},
                               "query_close": {}, "bind": {}, "failures": []}
    try:
        for scale in cfg.scales:
            label = str(scale)
            for target, url in urls.items():
                log(f"== loading {scale:,} bindings into {target}")
                loaded = asyncio.run(bl.load(url, scale, numbers=cfg.numbers, progress=True))
                results["loads"].setdefault(target, {})[label] = {
                    "added": loaded.added, "seconds": loaded.seconds,
                    "bindings_per_s": loaded.bindings_per_s, "verify": loaded.verify}
                reset_store(url)
                results["storage"].setdefault(target, {})[label] = store_bytes(url, scale)
                results["pool_refresh_s"].setdefault(target, {})[label] = time_pool_refresh(url)
            pairs = bl.sample_queries(scale, cfg.numbers, cfg.pairs)
            modes = [False] + ([True] if scale in cfg.close_scales else [])
            runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
            bind_runs: dict[str, list[dict[str, Any]]] = {}
            for r in range(cfg.rounds):
                order = list(urls) if r % 2 == 0 else list(reversed(urls))
                for close in modes:
                    mode = "close" if close else "keep-alive"
                    for target in ["floor", *query_targets(order)]:
                        what = f"{scale:>9,} round {r + 1} query {mode:10s} {target:17s}"
                        res = attempt(what, results, measure_query, cfg, target,
                                      urls.get(store_of(target)), pairs, close)
                        if target != "floor":
                            attempt(f"resetting {target}", results, reset_store,
                                    urls[store_of(target)])
                        if res is None:
                            continue
                        runs.setdefault((target, close), []).append(res)
                        log(f"{what} {res['rps']:>9,.0f} req/s  p50 "
                            f"{res['lat_p50_us'] / 1000:6.2f} ms  p99 "
                            f"{res['lat_p99_us'] / 1000:6.2f} ms  server cpu "
                            f"{res['server_cpu_pct']:5.1f}%" + _pg_note(res))
                        checkpoint(cfg, results, runs, bind_runs, label)
                for target in order:
                    what = f"{scale:>9,} round {r + 1} bind  {target:10s}"
                    res = attempt(what, results, measure_bind, cfg, target, urls[target],
                                  counter)
                    attempt(f"resetting {target}", results, reset_store, urls[target])
                    if res is None:
                        continue
                    bind_runs.setdefault(target, []).append(res)
                    log(f"{what} {res['binds_per_s']:>9,.0f} binds/s p50 "
                        f"{res['lat_p50_us'] / 1000:6.2f} ms  p99 "
                        f"{res['lat_p99_us'] / 1000:6.2f} ms  server cpu "
                        f"{res['server_cpu_pct']:5.1f}%" + _pg_note(res))
                    checkpoint(cfg, results, runs, bind_runs, label)
            for (target, close), rs in runs.items():
                key = "query_close" if close else "query"
                results[key].setdefault(target, {})[label] = summarise(rs, target)
            for target, rs in bind_runs.items():
                results["bind"].setdefault(target, {})[label] = summarise(rs, target,
                                                                          key="binds_per_s")
    finally:
        if not cfg.keep:
            drop_stores(cfg, urls)
        else:
            log(f"kept stores: {urls}")
    derive(results, cfg)
    seen = {src for part in ("query", "query_close", "bind") for per in results[part].values()
            for summary in per.values() for src in summary.get("src", [])}
    machine["src_at_end"] = src_fingerprint()
    machine["src_changed_during_run"] = len(seen | {machine["src_at_start"],
                                                    machine["src_at_end"]}) > 1
    return {
        "bench": "pns",
        "quick": cfg.quick,
        "config": {"scales": cfg.scales, "rounds": cfg.rounds, "duration_s": cfg.duration,
                   "warmup_s": cfg.warmup, "bind_duration_s": cfg.bind_duration,
                   "connections": CONNECTIONS, "server_cpu": SERVER_CPU,
                   "client_cpu": CLIENT_CPU, "numbers": cfg.numbers, "query_pairs": cfg.pairs,
                   "stores": cfg.stores, "close_scales": cfg.close_scales,
                   "quiet_wait_s": cfg.quiet_wait},
        "machine": machine,
        "results": results,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _cpu(s: dict[str, Any]) -> float:
    """CPU microseconds per request: pns, plus its PostgreSQL backends when there are."""
    return float(s.get("total_cpu_us", s["server_cpu_us"]))


def access_log_cost(results: dict[str, Any]) -> dict[str, Any]:
    """What the default access log costs per request: the default server against the quiet
    one in the same run, by wall time per request (1/req/s) and by server CPU per request."""
    cost: dict[str, Any] = {}
    for key in ("query", "query_close"):
        for target, per_scale in results[key].items():
            quiet = results[key].get(target + QUIET)
            if target == "floor" or target.endswith(QUIET) or not quiet:
                continue
            for label, s in per_scale.items():
                q = quiet.get(label)
                if not q or not s["rps"] or not q["rps"]:
                    continue
                cost.setdefault(key, {}).setdefault(target, {})[label] = {
                    "us_per_req": round(1e6 / s["rps"] - 1e6 / q["rps"], 1),
                    "cpu_us_per_req": round(s["server_cpu_us"] - q["server_cpu_us"], 1),
                    "default_x_quiet": round(s["rps"] / q["rps"], 3),
                }
    return cost


def derive(results: dict[str, Any], cfg: Config) -> None:
    """Ratios to the floor (same scale, same run), growth, goals."""
    ratios: dict[str, Any] = {}
    for key in ("query", "query_close"):
        floor = results[key].get("floor", {})
        for target, per_scale in results[key].items():
            if target == "floor":
                continue
            for label, s in per_scale.items():
                f = floor.get(label)
                if f:
                    s["x_floor"] = round(s["rps"] / f["rps"], 3)
                    # The same ratio by CPU cost: the floor's CPU per request over the store's
                    # (pns + its PostgreSQL backends).
                    s["x_floor_cpu"] = round(
                        f["server_cpu_us"] / s.get("total_cpu_us", s["server_cpu_us"]), 3)
                    ratios.setdefault(key, {}).setdefault(target, {})[label] = s["x_floor"]
    results["x_floor"] = ratios
    lo, hi = str(cfg.scales[0]), str(cfg.scales[-1])
    growth: dict[str, Any] = {}
    for target in cfg.stores:
        q = results["query"].get(target, {})
        b = results["bind"].get(target, {})
        g: dict[str, Any] = {}
        if lo in q and hi in q:
            g["query_cost_ratio"] = round(q[lo]["rps"] / q[hi]["rps"], 3)
            fq = results["query"].get("floor", {})
            if lo in fq and hi in fq:  # each scale's cost relative to its own floor run
                g["query_cost_ratio_floor_normalised"] = round(
                    (fq[hi]["rps"] / q[hi]["rps"]) / (fq[lo]["rps"] / q[lo]["rps"]), 3)
        if lo in q and hi in q:
            g["query_cpu_ratio"] = round(_cpu(q[hi]) / _cpu(q[lo]), 3)
        if lo in b and hi in b:
            g["bind_cost_ratio"] = round(b[lo]["binds_per_s"] / b[hi]["binds_per_s"], 3)
            g["bind_cpu_ratio"] = round(_cpu(b[hi]) / _cpu(b[lo]), 3)
        g["from"], g["to"] = int(lo), int(hi)
        growth[target] = g
    results["growth"] = growth
    results["access_log"] = access_log_cost(results)
    goals: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: float, higher_is_better: bool) -> None:
        met = None if value is None else (value >= target if higher_is_better else
                                          value <= target)
        goals.append({"goal": name, "value": value, "target": target, "met": met})

    sq = results["query"].get("sqlite", {}).get(hi)
    pq = results["query"].get("postgresql", {}).get(hi)
    sb = results["bind"].get("sqlite", {}).get(hi)
    if sq:
        goal(f"SQLite queryAXB x floor ({int(hi):,}, default)", sq.get("x_floor"),
             GOALS["sqlite_query_x_floor"], True)
        goal("  stretch", sq.get("x_floor"), GOALS["sqlite_query_x_floor_stretch"], True)
        goal("SQLite queryAXB p99 ms at 64 connections", sq["p99_ms"],
             GOALS["sqlite_query_p99_ms"], False)
    if pq:
        goal(f"PostgreSQL queryAXB x floor ({int(hi):,}, default)", pq.get("x_floor"),
             GOALS["postgresql_query_x_floor"], True)
    if sb:
        goal("SQLite bindAXB per s, one core", sb["binds_per_s"], GOALS["sqlite_bind_per_s"],
             True)
    for target, g in growth.items():
        for k, name in (("query_cost_ratio", "queryAXB"), ("bind_cost_ratio", "bindAXB")):
            if k in g:
                goal(f"{target} {name} growth {int(lo):,} -> {int(hi):,}", g[k],
                     GOALS["growth_max"], False)
    results["goals"] = goals


# --- printing -----------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def print_tables(out: dict[str, Any]) -> None:
    res = out["results"]
    cfg = out["config"]
    m = out["machine"]
    print(f"pns bench ({'quick' if out['quick'] else 'full'}): server on CPU {cfg['server_cpu']}, "
          f"wrk -t1 -c{cfg['connections']} on CPU {cfg['client_cpu']}, "
          f"best of {cfg['rounds']} round(s) of {cfg['duration_s']} s "
          f"(binds {cfg['bind_duration_s']} s)")
    print(f"machine: {m.get('nproc')} CPUs, {m.get('Model name', '?')}, "
          f"{m.get('mem_total_gib', '?')} GiB, kernel {m.get('kernel')}, Python {m.get('python')}"
          f", SQLite {m.get('sqlite')}, PostgreSQL {m.get('postgresql', '-')}, "
          f"{m.get('wrk', 'wrk ?')}; pns {m.get('pns_commit', '?')}"
          + (f" + modified {', '.join(m['src_modified'])}" if m.get("src_modified") else ""))

    def star(s: dict[str, Any]) -> str:
        return ", ".join(f"{v:,.0f}{'*' if d else ''}"
                         for v, d in zip(s["rounds"], s["rounds_disturbed"], strict=True))

    for key, title in (("query", "queryAXB, keep-alive"),
                       ("query_close", "queryAXB, Connection: close")):
        if not res[key]:
            continue
        print()
        print(f"{title} (64 connections)")
        hdr = (f"{'bindings':>10s} {'server':17s} {'req/s':>9s} {'p50 ms':>7s} "
               f"{'p99 ms':>7s} {'max ms':>7s} {'x floor':>7s} {'cpu us':>7s} {'x fl cpu':>8s} "
               f"{'srv cpu':>7s} {'pg cpu':>6s} {'wrk cpu':>7s}  rounds")
        print(hdr)
        print("-" * len(hdr))
        scales = sorted({int(k) for t in res[key].values() for k in t})
        for scale in scales:
            for target in ["floor", *query_targets(cfg["stores"])]:
                s = res[key].get(target, {}).get(str(scale))
                if not s:
                    continue
                one = 1.0 if target == "floor" else None
                print(f"{scale:>10,} {target:17s} {s['rps']:>9,.0f} "
                      f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['max_ms']:>7.1f} "
                      f"{_fmt(s.get('x_floor', one), '.3f'):>7s} "
                      f"{s.get('total_cpu_us', s['server_cpu_us']):>7.1f} "
                      f"{_fmt(s.get('x_floor_cpu', one), '.3f'):>8s} "
                      f"{s['server_cpu_pct']:>6.0f}% "
                      f"{_fmt(s.get('pg_cpu_pct'), '.0f'):>5s}{'%' if 'pg_cpu_pct' in s else ' '} "
                      f"{s['wrk_cpu_pct']:>6.0f}%  {star(s)}")
    if res["bind"]:
        print()
        print("bindAXB, new pairs (64 connections, every answer checked)")
        hdr = (f"{'bindings':>10s} {'store':10s} {'binds/s':>9s} "
               f"{'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} {'cpu us':>7s} {'srv cpu':>7s} "
               f"{'pg cpu':>6s} {'rows+':>7s}  rounds")
        print(hdr)
        print("-" * len(hdr))
        scales = sorted({int(k) for t in res["bind"].values() for k in t})
        for scale in scales:
            for target in cfg["stores"]:
                s = res["bind"].get(target, {}).get(str(scale))
                if not s:
                    continue
                print(f"{scale:>10,} {target:10s} {s['binds_per_s']:>9,.0f} "
                      f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} "
                      f"{s['max_ms']:>7.1f} {s.get('total_cpu_us', s['server_cpu_us']):>7.1f} "
                      f"{s['server_cpu_pct']:>6.0f}% "
                      f"{_fmt(s.get('pg_cpu_pct'), '.0f'):>5s}{'%' if 'pg_cpu_pct' in s else ' '} "
                      f"{s.get('rows_added', 0):>7,}  {star(s)}")
    print("(rounds: every round's figure, * = disturbed: the server got < 90% of CPU 0 while "
          "something else took > 10% of it; <store> = default settings, access log on; "
          "<store>-quiet = --log-level warning)")
    if res.get("access_log"):
        print()
        print("access log cost per request (default settings against --log-level warning, "
              "same run)")
        for key, per_target in res["access_log"].items():
            for target, per_scale in per_target.items():
                for label, c in per_scale.items():
                    print(f"  {key:11s} {target:10s} {int(label):>10,}: "
                          f"{c['us_per_req']:+.1f} us wall, {c['cpu_us_per_req']:+.1f} us CPU, "
                          f"default = {c['default_x_quiet']:.3f} x quiet")
    print()
    print("growth (cost = 1 / throughput, largest size over smallest)")
    for target, g in res["growth"].items():
        print(f"  {target:10s} {g['from']:,} -> {g['to']:,}: queryAXB "
              f"{_fmt(g.get('query_cost_ratio'), '.3f')}x "
              f"(floor-normalised {_fmt(g.get('query_cost_ratio_floor_normalised'), '.3f')}x, "
              f"CPU per query {_fmt(g.get('query_cpu_ratio'), '.3f')}x), "
              f"bindAXB {_fmt(g.get('bind_cost_ratio'), '.3f')}x "
              f"(CPU per bind {_fmt(g.get('bind_cpu_ratio'), '.3f')}x)")
    print()
    print("memory and storage")
    hdr = (f"{'bindings':>10s} {'store':10s} {'RSS ready':>10s} {'RSS after':>10s} "
           f"{'B/binding':>10s} {'tables B/b':>10s} {'pool refresh':>12s} {'load s':>7s} "
           f"{'load/s':>8s}")
    print(hdr)
    print("-" * len(hdr))
    for target in cfg["stores"]:
        for label, st in res["storage"].get(target, {}).items():
            q = res["query"].get(target, {}).get(label, {})
            ld = res["loads"].get(target, {}).get(label, {})
            whole = st.get("bytes_per_binding") if target == "sqlite" else st.get(
                "database_bytes_per_binding")
            tables = st.get("tables_bytes_per_binding") if target == "sqlite" else st.get(
                "bytes_per_binding")
            print(f"{int(label):>10,} {target:10s} "
                  f"{_fmt(q.get('rss_ready_kib') and q['rss_ready_kib'] / 1024, ',.1f'):>7s} MiB "
                  f"{_fmt(q.get('rss_after_kib') and q['rss_after_kib'] / 1024, ',.1f'):>7s} MiB "
                  f"{_fmt(whole, ',.0f'):>10s} {_fmt(tables, ',.0f'):>10s} "
                  f"{_fmt(res['pool_refresh_s'].get(target, {}).get(label), '.3f'):>10s} s "
                  f"{_fmt(ld.get('seconds'), '.1f'):>7s} {_fmt(ld.get('bindings_per_s')):>8s}")
    print("  (B/binding: SQLite file + WAL, PostgreSQL whole database; tables B/b: bindings and "
          "parties with their indexes)")
    print()
    print("goals")
    for g in res["goals"]:
        met = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        print(f"  {g['goal']:48s} {_fmt(g['value'], ',.3f'):>10s}  target {g['target']:<7} "
              f"{met}")
    for f in res.get("failures", []):
        print(f"FAILED: {f['what']}: {f['error'][:300]}")
    if m.get("src_changed_during_run"):
        print("\nWARNING: pns's source changed during the run (measurements ran different code): "
              "see 'src' in the JSON")
    print(f"\nelapsed {out['elapsed_s']:.0f} s")


# --- entry point --------------------------------------------------------------------------------
def preflight(cfg: Config) -> None:
    missing = [t for t in ("wrk", "taskset") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run scripts/system-deps "
                         "(or apt-get install wrk util-linux)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs (server on CPU 0, wrk on CPU 1)")
    if not Path(cfg.pns).exists() and shutil.which(cfg.pns) is None:
        raise SystemExit(f"pns command not found at {cfg.pns}")
    if "postgresql" in cfg.stores:
        try:
            asyncio.run(_pg_scalar(cfg.pg_url + "/postgres", "SELECT 1"))
        except Exception as exc:
            raise SystemExit(f"PostgreSQL at {cfg.pg_url} unreachable ({exc}); use --stores "
                             "sqlite or --pg-url") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10^3 and 10^5 bindings, one short "
                   "round: under two minutes")
    p.add_argument("--stores", default=",".join(STORES), help="comma-separated: sqlite,postgresql")
    p.add_argument("--scales", help="comma-separated binding counts (default 1000,100000,1000000;"
                   " quick 1000,100000)")
    p.add_argument("--rounds", type=int, help="rounds per measurement (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per query run (default 10; quick 3)")
    p.add_argument("--bind-duration", type=int, help="seconds per bind run (default 10; quick 3)")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server (no database: one is created and dropped)")
    p.add_argument("--workdir", help="for the SQLite store, sign files and server logs "
                   "(default: a temporary folder)")
    p.add_argument("--quiet-wait", type=float, help="before each measurement, wait up to this "
                   "many seconds for the other CPU load to drop under 25%% (default 60; quick 0)")
    p.add_argument("--keep", action="store_true", help="keep the stores at the end")
    p.add_argument("--json-out", help="also write the JSON (indented) to this file")
    a = p.parse_args(argv)
    stores = [s.strip() for s in a.stores.split(",") if s.strip()]
    for s in stores:
        if s not in STORES:
            raise SystemExit(f"unknown store {s!r}: choose from {', '.join(STORES)}")
    if a.scales:
        scales = sorted(int(x) for x in a.scales.split(","))
    else:
        scales = [1_000, 100_000] if a.quick else [1_000, 100_000, 1_000_000]
    tmp = None
    if a.workdir:
        workdir = Path(a.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pns-bench-")
        workdir = Path(tmp.name)
    venv_pns = Path(sys.executable).parent / "pns"
    cfg = Config(
        quick=a.quick, scales=scales, rounds=a.rounds or (1 if a.quick else 3),
        duration=a.duration or (3 if a.quick else 10), warmup=1 if a.quick else 2,
        bind_duration=a.bind_duration or (3 if a.quick else 10), stores=stores,
        pg_url=a.pg_url.rstrip("/"), workdir=workdir, keep=a.keep,
        pns=str(venv_pns) if venv_pns.exists() else "pns", python=sys.executable,
        close_scales=[scales[-1]],
        quiet_wait=a.quiet_wait if a.quiet_wait is not None else (0 if a.quick else 60),
    )
    preflight(cfg)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: drop the stores
    try:
        out = run(cfg)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print_tables(out)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
