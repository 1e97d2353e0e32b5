"""``pns numbers list`` of a large pool: the table against its JSON, in the same run.

    .venv/bin/python bench/cli_listing.py                 # 200,000 numbers, SQLite
    .venv/bin/python bench/cli_listing.py --numbers 50000

Imports ``--numbers`` numbers into a fresh SQLite store, then lists them three times each as
JSON lines and as the aligned table (both to /dev/null, so the terminal's speed does not
count) and reports the best wall time and CPU of each, and the table's over the JSON's. The
listing streams page by page, so the table costs about what the JSON costs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pns(store: str, *args: str, out: int | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "pns.cli", *args, "--store", store],
                            stdout=out if out is not None else subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"pns {' '.join(args[:2])} failed: {result.stderr}")
    return result.stdout or ""


def _timed(store: str, *args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one listing to /dev/null."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open("/dev/null", "w") as sink:
        _pns(store, *args, out=sink.fileno())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pns-cli-listing-") as work:
        store = f"sqlite:///{Path(work) / 'pns.db'}"
        _pns(store, "migrate")
        key = json.loads(_pns(store, "account", "create", "--name", "bench", "--json"))[
            "accessKey"]
        pool = Path(work) / "pool.txt"
        pool.write_text("\n".join(f"85237{i:06d}" for i in range(args.numbers)))
        _pns(store, "numbers", "import", str(pool), "--account", key, "--batch", "10000",
             "--json")
        results = {}
        for label, flag in (("json", "--json"), ("table", "--table")):
            runs = [_timed(store, "numbers", "list", flag) for _ in range(args.rounds)]
            results[label] = {"wallSeconds": round(min(r[0] for r in runs), 2),
                              "cpuSeconds": round(min(r[1] for r in runs), 2)}
    ratio = {key: round(results["table"][key] / results["json"][key], 2)
             for key in ("wallSeconds", "cpuSeconds")}
    print(f"{'numbers list':14} {'wall s':>8} {'cpu s':>8}")
    for label, r in results.items():
        print(f"{label:14} {r['wallSeconds']:>8} {r['cpuSeconds']:>8}")
    print(f"{'table / json':14} {ratio['wallSeconds']:>8} {ratio['cpuSeconds']:>8}")
    print(json.dumps({"numbers": args.numbers, **results, "tableOverJson": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
