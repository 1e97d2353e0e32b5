"""What one signed reportCall costs inside ``pns serve``, next to the queryAXB it follows.

    .venv/bin/python bench/report_cost.py [--calls N] [--connections N] [--profile]

The same objects and set-up as ``bench/query_cost.py`` (the HTTP protocol object on 64 fake
connections, ``App``, ``Api``, ``Service``, SQLite with its in-memory read index, call
references flushed every 5 ms as ``pns serve`` does). First ``--calls`` queryAXB, one per
connection per round; then, for each answer's callId, the switch's signed reportCall (the body
the shipped Kamailio config sends), one per connection per round on ``--connections`` of them.
Prints the process CPU per query and per report (every thread: the SQLite writer's
transactions are most of a report's cost) and checks that every report was answered with
code 0.

``--connections 1`` sends the reports one at a time, as a switch does at a few hundred calls a
second: each write transaction then commits alone, with nothing to group with, which is what
a report costs through Kamailio. 64 (the default) lets the writer group them.
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


def _report(call_id: str, did: str, caller: str, ts: str) -> bytes:
    """The switch's report of a call answered 3 s after it started, as kamailio.cfg sends it."""
    now = int(time.time())
    return query_cost.signed_request("benchswitch", "s2", "reportCall", {
        "callId": call_id, "startAt": now - 5, "ringAt": now - 4, "answerAt": now - 3,
        "hangupAt": now, "hangupCause": "NORMAL_CLEARING", "hangupCode": 16, "hangup": 1,
        "recordFile": "", "did": did, "caller": caller,
    }, ts)


async def main(args: argparse.Namespace) -> dict[str, float]:
    log_file = open(os.devnull, "w")  # noqa: SIM115
    logs.configure("info", "text", log_file)
    with tempfile.TemporaryDirectory() as folder:
        protocols, sink, requests, store = await query_cost._pns(query_cost.small_setup(), folder)
        store._calls._interval = 0.005  # as served
        answers = query_cost.keep_answers(sink)
        try:
            started = time.process_time()
            await query_cost._drive(protocols, sink, requests, args.calls)
            query_us = (time.process_time() - started) / args.calls * 1e6
            await asyncio.sleep(0.1)  # the last call references written
            ts = str(int(time.time() * 1000))
            reports = []
            for i, answer in enumerate(answers):
                asked = query_cost.answer_body(requests[i % len(requests)])
                call_id = query_cost.answer_body(answer)["data"]["callId"]
                reports.append(_report(call_id, asked["did"], asked["caller"], ts))
            answers.clear()
            gc.collect()
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            started = time.process_time()
            await query_cost._drive(protocols[:args.connections], sink, reports, len(reports))
            report_us = (time.process_time() - started) / len(reports) * 1e6
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            refused = [a for a in answers if query_cost.answer_body(a)["code"] != 0]
            assert not refused, refused[:1]
        finally:
            await store.close()
            logs.stop_writer()
            log_file.close()
    return {"query_us": round(query_us, 1), "report_us": round(report_us, 1)}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=64 * 100)
    parser.add_argument("--profile", action="store_true", help="cProfile the reports")
    parser.add_argument("--connections", type=int, default=64,
                        help="reports in flight at once (1: one at a time, as a switch)")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(_args()))))
