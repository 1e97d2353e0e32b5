"""What one signed bindAXB costs inside ``pns serve``, in CPU, without the network.

    .venv/bin/python bench/bind_cost.py [--binds N] [--connections N] [--profile]

The same objects and set-up as ``bench/query_cost.py`` (the HTTP protocol object on fake
connections, ``App``, ``Api``, ``Service``, SQLite with its in-memory read index, 2,000
bindings on 100 numbers). Then ``--binds`` bindAXB of new pairs, each with its own signature,
one per connection per round on ``--connections`` of them (64, as ``bench/run.py``'s wrk).
Prints the process CPU per bind (every thread: the SQLite writer's transactions are in it),
split between the event loop and the other threads, and checks that every bind was answered
with code 0 and stored.

wrk through the network (``bench/run.py``) is what users see, but on a shared machine its
binds/s swing by a third between runs of one tree. This is steadier, and still swings by
about a tenth: compare trees alternated, several runs each (``--connections 1``: binds one
at a time, whose lone write transactions are most of their cost).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import query_cost

from pns import logs


def _bind(i: int, ts: str) -> bytes:
    return query_cost.signed_request("benchkey", "s1", "bindAXB", {
        "phoneA": f"8526{i:07d}", "phoneB": f"8527{i:07d}", "expireSecond": 3600,
    }, ts)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's main thread (the event loop) and of all its others (the
    SQLite writer, the checkpointer), from ``/proc`` in clock ticks: coarse."""
    tick = os.sysconf("SC_CLK_TCK")
    spent = {"loop": 0.0, "threads": 0.0}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        which = "loop" if int(task.name) == os.getpid() else "threads"
        spent[which] += (int(fields[11]) + int(fields[12])) / tick
    return spent


async def main(args: argparse.Namespace) -> dict[str, float]:
    log_file = open(os.devnull, "w")  # noqa: SIM115
    logs.configure("info", "text", log_file)
    with tempfile.TemporaryDirectory() as folder:
        protocols, sink, _, store = await query_cost._pns(query_cost.small_setup(), folder)
        answers = query_cost.keep_answers(sink)
        try:
            ts = str(int(time.time() * 1000))
            binds = [_bind(i, ts) for i in range(args.binds)]
            gc.collect()
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            threads = _thread_cpu()
            started = time.process_time()
            await query_cost._drive(protocols[:args.connections], sink, binds, len(binds))
            bind_us = (time.process_time() - started) / len(binds) * 1e6
            per_thread = {name: round((spent - threads.get(name, 0.0)) / len(binds) * 1e6, 1)
                          for name, spent in _thread_cpu().items()}
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            refused = [a for a in answers if query_cost.answer_body(a)["code"] != 0]
            assert not refused, refused[:1]
            owner = await store.get_account("benchkey")
            assert owner is not None
            _, total = await store.list_bindings(owner.id, 1, 0, int(time.time()))
            assert total == 2000 + len(binds), total
        finally:
            await store.close()
            logs.stop_writer()
            log_file.close()
    return {"bind_us": round(bind_us, 1), "binds": len(answers),
            **{f"{name}_us": us for name, us in per_thread.items() if us}}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binds", type=int, default=64 * 100)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="cProfile the binds")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(_args()))))
