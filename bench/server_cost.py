"""Where a serving process's time goes per request under wrk, kernel included, next to the floor.

    .venv/bin/python bench/server_cost.py pns            # or: floor, pns-quiet
    PYTHONPATH=/other/tree/src .venv/bin/python bench/server_cost.py pns

``bench/query_cost.py`` counts the work inside the process; this counts what the real server
pays around it. One server (pinned to CPU 0) answers signed queryAXB over 1,000 bindings on a
SQLite file, wrk (``-t1 -c64``, CPU 1) asks, and over ``--seconds`` of load it reports, per
request: the server's context switches and syscalls (``perf stat``; needs ``perf`` and the
``raw_syscalls`` tracepoint, which adds a little to every syscall, so read throughput here as
relative only) and each thread's user and kernel time (``/proc``). The kernel time per request
is how the wake-up of an idle client by each answer's write was found (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load as bl
import run as br
import stack_choice as sc

_PERF_EVENTS = "task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,page-faults"


def _thread_ticks(pid: int) -> dict[str, tuple[str, int, int]]:
    """Thread id -> (name, user ticks, system ticks)."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[task.name] = ((task / "comm").read_text().strip(), int(fields[11]),
                                int(fields[12]))
        except OSError:
            continue
    return ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=("pns", "pns-quiet", "floor"))
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (scripts/system-deps)", file=sys.stderr)
        return 2
    perf = shutil.which("perf")
    work = Path(tempfile.mkdtemp(prefix="pns-server-cost-"))
    url = f"sqlite:///{work}/pns.db"
    pairs = bl.sample_queries(1000, bl.DEFAULT_NUMBERS, 2000)
    if args.target == "floor":
        cmd = [sys.executable, str(br.FLOOR)]
    else:
        asyncio.run(bl.load(url, 1000, numbers=bl.DEFAULT_NUMBERS, progress=False))
        cmd = [sys.executable, "-m", "pns.cli", "serve", "--store", url]
        if args.target == "pns-quiet":
            cmd += ["--log-level", "warning"]
    port = sc.free_port()
    with (work / "server.log").open("wb") as err:
        proc = subprocess.Popen(["taskset", "-c", br.SERVER_CPU, *cmd, "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        sc.wait_port(port, proc, 60)
        if args.target != "floor":
            br.wait_pns_ready(port, proc, 120)
        signs = work / "signs.txt"
        sc.write_sign_file(str(signs), access_key=bl.SWITCH_KEY, secret=bl.SWITCH_SECRET,
                           pairs=[(c, d) for c, d, _ in pairs], start=int(time.time()) - 2,
                           seconds=args.seconds + 60)

        def load_for(seconds: int, check: bool) -> dict[str, float]:
            result: dict[str, float] = sc.run_wrk(
                port, seconds=seconds, connections=64, client_cpu=br.CLIENT_CPU,
                signs=str(signs), close=False, check=check, script=br.QUERY_LUA,
                access_key=bl.SWITCH_KEY)
            return result

        warm = load_for(2, True)
        if warm["bad_body"] or warm["err_status"]:
            raise RuntimeError(f"answers other than code 0 in the warm-up: {warm}")
        before = _thread_ticks(proc.pid)
        stat = subprocess.Popen(
            [perf, "stat", "-x,", "-e", _PERF_EVENTS, "-p", str(proc.pid), "--", "sleep",
             str(args.seconds)], stderr=subprocess.PIPE, text=True) if perf else None
        result = load_for(args.seconds, False)
        counted = stat.communicate()[1] if stat is not None else ""
        after = _thread_ticks(proc.pid)
    finally:
        sc.stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    requests = max(result["requests"], 1)
    print(f"{args.target}: {result['rps']:,.0f} req/s, p99 {result['lat_p99_us'] / 1000:.2f} ms")
    for line in counted.strip().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "", 1).isdigit():
            print(f"  {parts[2]:26s} {float(parts[0]) / requests:9.3f} per request")
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    for tid, (name, user, system) in sorted(after.items()):
        if tid in before:
            du, ds = user - before[tid][1], system - before[tid][2]
            if du or ds:
                print(f"  thread {name:18s} user {du * tick_us / requests:7.2f} µs, kernel "
                      f"{ds * tick_us / requests:7.2f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
