"""The first binds after a bulk import of numbers, against the binds after them.

    .venv/bin/python bench/first_bind.py                    # 200,000 numbers, PostgreSQL
    .venv/bin/python bench/first_bind.py --numbers 50000 --pg-url postgresql://postgres@host:5432

On a fresh PostgreSQL database it creates a customer, imports ``--numbers`` virtual numbers,
starts ``pns serve`` and times ``--binds`` binds of new pairs one after another (client-side,
HTTP included). It does this twice in the same run:

* ``pns numbers import``, which refreshes the planner's statistics (``ANALYZE``) when it ends;
* the reference: the same numbers written straight into the table with one multi-row INSERT
  and no ANALYZE (what the import did before), so the planner still plans for an empty table
  until autovacuum catches up.

and, as a baseline, an import of only 1,000 numbers. Before timing, the client warms the
server on a path that reads no numbers (getAXBList), so what remains in the first bind is the
bind's own plan. It prints, for each, the first bind's latency and the mean of the first 10
over the median of binds 100 to the end, and ends with one line of JSON. "As fast as later
ones" means a ratio near the baseline's; the reference shows what the ANALYZE saves.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from pns.client import PnsClient  # noqa: E402


def _pns(store: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pns.cli", *args, "--store", store],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"pns {' '.join(args[:2])} failed: {result.stderr}")
    return result.stdout


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pns.cli", "serve", "--port", str(port),
                             "--store", store, "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("pns serve did not start")


def measure(admin_url: str, numbers: int, binds: int, via_import: bool) -> dict[str, float]:
    name = f"pns_first_bind_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin_url, f"CREATE DATABASE {name}"))
    store = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    try:
        _pns(store, "migrate")
        created = json.loads(_pns(store, "account", "create", "--name", "bench", "--json"))
        xs = [f"85236{i:06d}" for i in range(numbers)]
        if via_import:
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pool:
                pool.write("\n".join(xs))
            started = time.perf_counter()
            _pns(store, "numbers", "import", pool.name, "--account", created["accessKey"],
                 "--batch", "10000", "--json")
            os.unlink(pool.name)
        else:
            started = time.perf_counter()
            values = ",".join(f"('{x}', {created['id']}, 852)" for x in xs)
            asyncio.run(_admin(store, "INSERT INTO numbers (x, account_id, country_code) "
                                      f"VALUES {values}"))
        loaded = time.perf_counter() - started
        server, url = _serve(store)
        try:
            client = PnsClient(url, created["accessKey"], created["accessSecret"])
            # Warm the process (connection, account cache, pool) on a path that reads no
            # numbers: what is left in the first bind is the bind's own plan.
            for _ in range(3):
                assert client.list_bindings(1, 0)["code"] == 0
            latencies = []
            for i in range(binds):
                started = time.perf_counter()
                answer = client.bind_axb(f"8521{i:07d}", f"8522{i:07d}", 0)
                latencies.append(time.perf_counter() - started)
                assert answer["code"] == 0, answer
        finally:
            server.terminate()
            server.wait(15)
    finally:
        asyncio.run(_admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    later = statistics.median(latencies[100:])
    return {"loadSeconds": round(loaded, 1), "firstMs": round(latencies[0] * 1000, 2),
            "first10MeanMs": round(statistics.mean(latencies[:10]) * 1000, 2),
            "laterMedianMs": round(later * 1000, 2),
            "first10OverLater": round(statistics.mean(latencies[:10]) / later, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=200_000)
    parser.add_argument("--binds", type=int, default=400)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.binds <= 110:
        parser.error("--binds must be more than 110 (the later median starts at bind 100)")
    # A PostgreSQL store seals secrets with a key from the environment; these databases are
    # thrown away, so a key of this run does.
    os.environ.setdefault("PNS_SECRET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
    results = {
        "baseline: import of 1,000": measure(args.pg_url, 1000, args.binds, via_import=True),
        "import+analyze": measure(args.pg_url, args.numbers, args.binds, via_import=True),
        "reference: insert, no analyze": measure(args.pg_url, args.numbers, args.binds,
                                                 via_import=False),
    }
    print(f"{'':32} {'load s':>8} {'first ms':>9} {'first10 ms':>11} {'later ms':>9} "
          f"{'first10/later':>14}")
    for label, r in results.items():
        print(f"{label:32} {r['loadSeconds']:>8} {r['firstMs']:>9} {r['first10MeanMs']:>11} "
              f"{r['laterMedianMs']:>9} {r['first10OverLater']:>14}")
    print(json.dumps({"numbers": args.numbers, "binds": args.binds, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
