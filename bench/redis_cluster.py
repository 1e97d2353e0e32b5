"""queryAXB and bindAXB on PostgreSQL + Redis Cluster, next to PostgreSQL alone and SQLite.

    .venv/bin/python bench/redis_cluster.py            # 10^3 → 10^6 bindings in the index
    .venv/bin/python bench/redis_cluster.py --quick    # 10^3 → 10^5, shorter runs

Starts its own six-node cluster (``tests/redis_cluster.py``: 3 masters, 3 replicas on loopback)
and its own databases, then, in one run so the figures compare:

1. **One and two pns processes** (``--workers 1|2``) on each configuration (SQLite, PostgreSQL,
   PostgreSQL + Redis Cluster) with ``--base`` loaded bindings: queryAXB (wrk, 64 keep-alive
   connections, pre-signed queries of loaded bindings, every answer checked in a warm-up) and
   bindAXB (fresh pairs, code 0 counted). Nothing is pinned: pns, wrk, PostgreSQL and the six
   redis-servers share the machine's cores, which is the honest picture of one box and not
   of a cluster of machines.
2. **Bytes per binding in Redis**: ``used_memory`` of the masters (``INFO memory``) before and
   after loading N bindings, divided by N (replicas hold as much again).
3. **Growth**: queryAXB on PostgreSQL + Redis Cluster with 10^3, 10^5 and 10^6 bindings.

Loading writes the index's own keys (``P{X}:b``, ``P{X}:p``; the same JSON the insert script
writes) with pipelines, and the ledger rows with COPY: as if bound through the API.
Prints tables, and one line of JSON last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import load as bl  # noqa: E402
import run as br  # noqa: E402
import stack_choice as sc  # noqa: E402

from tests.redis_cluster import Cluster, start_cluster  # noqa: E402

CONNECTIONS = 64
CONFIGS = ("sqlite", "postgresql", "pg+redis")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- stores ---------------------------------------------------------------------------------------
def create_stores(pg_url: str, workdir: Path, cluster: Cluster) -> dict[str, str]:
    stamp = f"{os.getpid()}_{int(time.time())}"
    urls = {"sqlite": f"sqlite:///{workdir}/bench.db"}
    for config, name in (("postgresql", f"pns_rbench_{stamp}"),
                         ("pg+redis", f"pns_rbench_idx_{stamp}")):
        asyncio.run(br._pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
        urls[config] = f"{pg_url}/{name}"
    urls["pg+redis"] += f"?bindings={cluster.url}/bench"
    return urls


def drop_stores(pg_url: str, urls: dict[str, str]) -> None:
    for config in ("postgresql", "pg+redis"):
        name = urls[config].split("?")[0].rsplit("/", 1)[1]
        with contextlib.suppress(Exception):
            asyncio.run(br._pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _prepare_composite(url: str, numbers: int) -> int:
    """Bench accounts and numbers through the store API; returns the customer's id."""
    from pns.model import Role, VirtualNumber
    from pns.store import open_store

    store = await open_store(url)
    try:
        ids = []
        for name, key, secret, role in (
            ("bench", bl.CUSTOMER_KEY, bl.CUSTOMER_SECRET, Role.CUSTOMER),
            ("bench-switch", bl.SWITCH_KEY, bl.SWITCH_SECRET, Role.SWITCH),
        ):
            account = await store.get_account(key)
            if account is None:
                account = await store.create_account(name, role, key, secret, int(time.time()))
            ids.append(account.id)
        await store.add_numbers([VirtualNumber(bl.x_of(i), ids[0], bl.COUNTRY_CODE, True)
                                 for i in range(numbers)])
        return ids[0]
    finally:
        await store.close()


def load_composite(url: str, cluster: Cluster, start: int, end: int, numbers: int) -> float:
    """Loaded bindings start..end-1 into the index and the ledger; returns seconds."""
    import asyncpg
    from redis.cluster import ClusterNode, RedisCluster

    from pns.ids import new_bind_id
    from pns.model import Binding
    from pns.store import split_bindings
    from pns.store.redis_index import encode_binding

    account_id = asyncio.run(_prepare_composite(url, numbers))
    pg_url, _ = split_bindings(url)
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port)
                                         for port in cluster.ports[:3]])
    now = int(time.time())
    expire_at = now + bl.DEFAULT_EXPIRE_SECOND
    t0 = time.monotonic()

    async def copy(rows: list[tuple[Any, ...]]) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.copy_records_to_table(
                "pns_binding_ledger", records=rows,
                columns=["bind_id", "account_id", "x", "customer_bind_id", "body", "expire_at",
                         "lease_until"])
        finally:
            await conn.close()

    for lo in range(start, end, bl.BATCH):
        hi = min(lo + bl.BATCH, end)
        pipe = client.pipeline(transaction=False)
        rows = []
        for k in range(lo, hi):
            x, a, b = bl.binding_of(k, numbers)
            binding = Binding(new_bind_id(x), account_id, x, a, b, "", 0, "", "", 0,
                              bl.DEFAULT_EXPIRE_SECOND, expire_at, now)
            body = encode_binding(binding)
            pipe.hset(f"bench{{{x}}}:b", binding.bind_id, body)
            pipe.hset(f"bench{{{x}}}:p", mapping={a: binding.bind_id, b: binding.bind_id})
            rows.append((binding.bind_id, account_id, x, "", body, expire_at, 0))
        pipe.execute()
        asyncio.run(copy(rows))
        log(f"  pg+redis: {hi:,} bindings loaded ({hi / (time.monotonic() - t0 + 1e-9):,.0f}/s"
            " this run)")
    per_x = end // numbers
    client.zadd(f"bench{{pool:{account_id}:{bl.COUNTRY_CODE}}}",
                {bl.x_of(i): per_x + (1 if i < end % numbers else 0) for i in range(numbers)})
    client.close()
    return time.monotonic() - t0


def redis_used_memory(cluster: Cluster) -> int:
    total = 0
    for port in cluster.masters():
        info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"],
                              capture_output=True, text=True).stdout
        for line in info.splitlines():
            if line.startswith("used_memory:"):
                total += int(line.split(":")[1])
    return total


# --- measurements ---------------------------------------------------------------------------------
@contextlib.contextmanager
def pns(url: str, workers: int, workdir: Path) -> Iterator[int]:
    port = sc.free_port()
    log_path = workdir / f"pns-{port}.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/pns"), "serve", "--store", url, "--port", str(port),
             "--log-level", "warning", "--workers", str(workers), "--no-deliver"],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        sc.wait_port(port, proc, timeout=60)
        br.wait_pns_ready(port, proc, timeout=180)
        yield port
    except Exception:
        log(log_path.read_text(errors="replace")[-2000:])
        raise
    finally:
        sc.stop_server(proc)


def query_run(port: int, pairs: list[tuple[str, str, str]], seconds: int, workdir: Path
              ) -> dict[str, Any]:
    signs = workdir / "query-signs.txt"
    sc.write_sign_file(str(signs), access_key=bl.SWITCH_KEY, secret=bl.SWITCH_SECRET,
                       pairs=[(c, d) for c, d, _ in pairs], start=int(time.time()) - 2,
                       seconds=seconds + 40)
    br.verify_queries(port, pairs, floor=False)
    warm = sc.run_wrk(port, seconds=1, connections=CONNECTIONS, client_cpu="0,1",
                      signs=str(signs), close=False, check=True, script=br.QUERY_LUA,
                      access_key=bl.SWITCH_KEY)
    if warm["bad_body"] or warm["err_status"]:
        raise RuntimeError(f"answers other than code 0 in the checked warm-up: {warm}")
    res = sc.run_wrk(port, seconds=seconds, connections=CONNECTIONS, client_cpu="0,1",
                     signs=str(signs), close=False, check=False, script=br.QUERY_LUA,
                     access_key=bl.SWITCH_KEY)
    return {"rps": round(res["rps"]), "p99_ms": round(res["lat_p99_us"] / 1000, 2),
            "errors": res["err_status"] + res["bad_body"]}


def bind_run(port: int, cfg: br.Config, counter: br.BindCounter, seconds: int
             ) -> dict[str, Any]:
    signs = br.write_bind_signs(cfg, counter.take(8000 * (seconds + 1)), "run")
    res = sc.run_wrk(port, seconds=seconds, connections=CONNECTIONS, client_cpu="0,1",
                     signs=str(signs), close=False, check=False, script=br.BIND_LUA,
                     access_key=bl.CUSTOMER_KEY)
    if res.get("exhausted"):
        raise RuntimeError("the bind file ran out")
    return {"binds_per_s": round(res["ok"] / res["duration_s"]),
            "p99_ms": round(res["lat_p99_us"] / 1000, 2),
            "not_ok": res["requests"] - res["ok"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--base", type=int, default=1000, help="bindings for the process runs")
    p.add_argument("--scales", help="growth: comma-separated bindings in the index")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--configs", default=",".join(CONFIGS), help="of " + ",".join(CONFIGS))
    p.add_argument("--workers", default="1,2", help="pns processes to measure with")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    args = p.parse_args(argv)
    scales = ([int(s) for s in args.scales.split(",")] if args.scales
              else [1000, 100_000] if args.quick else [1000, 100_000, 1_000_000])
    seconds = 3 if args.quick else args.duration
    numbers = bl.DEFAULT_NUMBERS
    workdir = Path(tempfile.mkdtemp(prefix="pns-rbench-"))
    cfg = br.Config(quick=args.quick, scales=scales, rounds=1, duration=seconds, warmup=1,
                    bind_duration=seconds, stores=list(CONFIGS), pg_url=args.pg_url,
                    workdir=workdir, keep=False, pns=str(ROOT / ".venv/bin/pns"),
                    python=sys.executable)
    out: dict[str, Any] = {"processes": {}, "growth": {}, "memory": {}}
    cluster = start_cluster()
    urls = create_stores(args.pg_url, workdir, cluster)
    counter = br.BindCounter()
    try:
        memory_empty = redis_used_memory(cluster)
        configs = [c for c in CONFIGS if c in args.configs.split(",")]
        for config in configs:
            if config == "pg+redis":
                load_composite(urls[config], cluster, 0, args.base, numbers)
            else:
                asyncio.run(bl.load(urls[config], args.base, numbers=numbers, progress=False,
                                    check=False))
        pairs = bl.sample_queries(args.base, numbers, br.QUERY_PAIRS)
        for workers in [int(w) for w in args.workers.split(",")]:
            for config in configs:
                if workers > 1 and config == "sqlite":
                    continue  # pns serve refuses --workers on SQLite (one writer process)
                log(f"{config}, {workers} process(es)")
                with pns(urls[config], workers, workdir) as port:
                    query = query_run(port, pairs, seconds, workdir)
                    bind = bind_run(port, cfg, counter, seconds)
                out["processes"][f"{config} x{workers}"] = {"query": query, "bind": bind}
                log(f"  {out['processes'][f'{config} x{workers}']}")
        have = args.base
        before = redis_used_memory(cluster)
        out["memory"]["empty_cluster_bytes"] = memory_empty
        for scale in scales:
            if scale > have:
                log(f"loading pg+redis to {scale:,}")
                mem0 = redis_used_memory(cluster)
                secs = load_composite(urls["pg+redis"], cluster, have, scale, numbers)
                mem1 = redis_used_memory(cluster)
                out["memory"][str(scale)] = {
                    "bytes_per_binding": round((mem1 - mem0) / (scale - have)),
                    "masters_used_memory": mem1, "load_s": round(secs, 1)}
                have = scale
            with pns(urls["pg+redis"], 1, workdir) as port:
                out["growth"][str(scale)] = query_run(
                    port, bl.sample_queries(scale, numbers, br.QUERY_PAIRS), seconds, workdir)
            log(f"  growth {scale:,}: {out['growth'][str(scale)]}")
        out["memory"]["before_growth_bytes"] = before
    finally:
        drop_stores(args.pg_url, urls)
        cluster.stop()
    reference = next(iter(out["processes"].values()))
    print(f"{'configuration':<22}{'query/s':>10}{'ratio':>10}{'p99 ms':>8}"
          f"{'bind/s':>9}{'ratio':>10}  (ratios to the first row)")
    for name, row in out["processes"].items():
        print(f"{name:<22}{row['query']['rps']:>10,}"
              f"{row['query']['rps'] / reference['query']['rps']:>10.2f}"
              f"{row['query']['p99_ms']:>8}{row['bind']['binds_per_s']:>9,}"
              f"{row['bind']['binds_per_s'] / max(reference['bind']['binds_per_s'], 1):>10.2f}")
    for scale, row in out["growth"].items():
        print(f"pg+redis growth {int(scale):>9,} bindings: {row['rps']:,} queries/s, "
              f"p99 {row['p99_ms']} ms")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
