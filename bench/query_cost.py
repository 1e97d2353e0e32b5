"""What one signed queryAXB costs inside ``pns serve``, without sockets, next to the floor.

    .venv/bin/python bench/query_cost.py [--requests N] [--rounds R] [--profile]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/query_cost.py --requests N --rounds 1 --only pns

Drives the real objects of ``pns serve`` in one process: the HTTP protocol object of
``http.py`` on 64 connections with fake transports, ``App``, ``Api``, ``Service`` and the
embedded store (SQLite with its in-memory read index, call references buffered to its writer
thread), the access log on (INFO, the default) and written to a file by its writer thread.
Each round hands every connection one queryAXB (signed by a switch account, as the shipped
switch sends it) and waits until all 64 are answered, as wrk's 64 keep-alive connections do.
The floor (``bench/floor.py``'s protocol object) gets the same bytes on as many fake
connections in the same run.

The machine is shared and noisy, so two measures:

- CPU µs per request: process CPU time (every thread: the SQLite writer and the log writer
  too) over ``--requests`` requests, the best of ``--rounds``; the floor likewise, and the
  ratio floor/pns.
- instructions per request: run this under callgrind twice with different ``--requests`` (and
  ``--only``), and divide the difference of the two totals ("Collected") by the difference of
  the requests: start-up cancels out. ``bench/query_cost.sh`` does that. Under valgrind time
  runs ~50 times slower, so the accounts cache is given an hour (``--cache-seconds``) there:
  with the default 1 s the reloads would be counted 50 times over.

No socket work is counted: the real server adds the kernel's read and write per request for
both pns and the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import QUERY_AXB_ANSWER, FloorProtocol, build_response

from pns import logs
from pns.api import Api
from pns.app import App, error_reply
from pns.auth import sign
from pns.core import Service, Settings
from pns.http import Limits, Reply, _Connection, _Server
from pns.ids import new_bind_id
from pns.metrics import Metrics
from pns.model import Binding, Role, VirtualNumber
from pns.store import open_store

CONNECTIONS = 64


class _Transport:
    """Enough of an asyncio transport for both protocols: counts the answers written."""

    def __init__(self, sink: _Sink):
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._sink.wrote(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("a benchmark connection was closed")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise AssertionError("a benchmark connection was refused")


class _Sink:
    def __init__(self) -> None:
        self.answers = 0
        self.target = 0
        self.done: asyncio.Event | None = None
        self.last = b""

    def wrote(self, data: bytes) -> None:
        self.answers += data.count(b"HTTP/1.1 ")
        self.last = data
        if self.done is not None and self.answers >= self.target:
            self.done.set()


def signed_request(access_key: str, secret: str, action: str, fields: dict[str, Any],
                   ts: str) -> bytes:
    """One ``POST /api/pns/`` of ``action`` with ``fields`` as its body, signed as the shipped
    switch signs it."""
    body = json.dumps(fields, separators=(",", ":")).encode()
    signature = sign(access_key, action, "5", ts, body, secret)
    return (
        b"POST /api/pns/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: application/json\r\n"
        + f"accessKey: {access_key}\r\naction: {action}\r\nbizType: 5\r\nts: {ts}\r\n"
          f"sign: {signature}\r\n".encode()
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def answer_body(message: bytes) -> Any:
    """The JSON body of one HTTP answer."""
    return json.loads(message[message.index(b"\r\n\r\n") + 4:])


def keep_answers(sink: _Sink) -> list[bytes]:
    """Every answer written to ``sink`` from now on, in order (the other benches check them)."""
    answers: list[bytes] = []
    counted = sink.wrote

    def wrote(data: bytes) -> None:
        answers.append(data)
        counted(data)

    sink.wrote = wrote  # type: ignore[method-assign]
    return answers


def small_setup() -> argparse.Namespace:
    """``_pns``'s arguments for the report and bind benches: 2,000 bindings on 100 numbers."""
    return argparse.Namespace(bindings=2000, numbers=100, cache_seconds=3600.0, stub="none")


def _request(access_key: str, secret: str, caller: str, did: str, ts: str) -> bytes:
    return signed_request(access_key, secret, "queryAXB", {"caller": caller, "did": did}, ts)


async def _drive(protocols: list[Any], sink: _Sink, requests: list[bytes],
                 total: int, flush: Any = None, flush_every: int = 0) -> float:
    """Hand one request to every connection per round until ``total`` are answered; CPU
    seconds of the whole process. ``flush``: writes the pending call references, called
    every ``flush_every`` requests."""
    sink.done = asyncio.Event()
    started = time.process_time()
    sent = 0
    i = 0
    flushed = 0
    while sent < total:
        if flush is not None and sent - flushed >= flush_every:
            await flush()
            flushed = sent
        sink.done.clear()
        sink.target = sink.answers + len(protocols)
        for protocol in protocols:
            protocol.data_received(requests[i % len(requests)])
            i += 1
        sent += len(protocols)
        if sink.answers < sink.target:
            await sink.done.wait()
    return time.process_time() - started


async def _pns(args: argparse.Namespace, folder: str) -> tuple[list[Any], _Sink, list[bytes],
                                                                Any]:
    store = await open_store(f"sqlite:///{folder}/bench.db", index=True)
    now = int(time.time())
    service = Service(store, Settings(account_cache_seconds=args.cache_seconds))
    owner = await store.create_account("bench", Role.CUSTOMER, "benchkey", "s1", now)
    await store.create_account("switch", Role.SWITCH, "benchswitch", "s2", now)
    xs = [f"8523{i:07d}" for i in range(args.numbers)]
    await store.add_numbers([VirtualNumber(x, owner.id, 852) for x in xs])
    for i in range(args.bindings):
        x = xs[i % len(xs)]
        await store.insert_binding(Binding(new_bind_id(x), owner.id, x, f"8521{i:07d}",
                                           f"8522{i:07d}", "", 0, "", "", 0, 0, 0, now), now)
    ts = str(int(time.time() * 1000))
    step = max(args.bindings // 512, 1)
    requests = [_request("benchswitch", "s2", f"8521{i:07d}", xs[i % len(xs)], ts)
                for i in range(0, args.bindings, step)]
    # Every request's ts stays inside the window however slowly this runs (valgrind).
    frozen = time.time()
    app = App(Api(service, clock=lambda: frozen), Metrics())
    # Call references are written every --flush-every answers, not every 5 ms by the clock:
    # the count must not depend on how fast the run goes (valgrind's is ~50 times slower).
    calls = store._calls  # type: ignore[attr-defined]  # the SQLite store's buffer
    calls._interval = 3600.0
    server = _Server(_stub(args.stub, app), error_reply, Limits(), time.monotonic,
                     store.answers_in_process)
    sink = _Sink()
    protocols = []
    for _ in range(CONNECTIONS):
        protocol = _Connection(server)
        protocol.connection_made(_Transport(sink))  # type: ignore[arg-type]
        protocols.append(protocol)
    return protocols, sink, requests, store


def _stub(kind: str, app: App) -> Any:
    """``--stub``: the HTTP layer alone, answering the floor's body at once (``reply``) or
    from a coroutine (``coroutine``: on Python 3.11, with its task), to split the cost."""
    fixed = Reply(200, QUERY_AXB_ANSWER)
    if kind == "reply":
        return lambda request: fixed

    async def answer() -> Reply:
        return fixed

    if kind == "coroutine":
        return lambda request: answer()
    return app


def _floor() -> tuple[list[Any], _Sink]:
    sink = _Sink()
    protocols = []
    for _ in range(CONNECTIONS):
        protocol = FloorProtocol(build_response(QUERY_AXB_ANSWER),
                                 build_response(QUERY_AXB_ANSWER, close=True))
        protocol.connection_made(_Transport(sink))  # type: ignore[arg-type]
        protocols.append(protocol)
    return protocols, sink


async def main(args: argparse.Namespace) -> dict[str, float]:
    log_file = open(os.devnull if args.log == "null" else args.log, "w")  # noqa: SIM115
    logs.configure("info", "text", log_file)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        protocols, sink, requests, store = await _pns(args, folder)
        try:
            floor_protocols, floor_sink = _floor()
            gc.collect()
            gc.freeze()
            # One warm-up pass (caches, the index's first sync) that neither measure counts.
            flush = store._calls._flush_once

            async def drive_pns(total: int) -> float:
                return await _drive(protocols, sink, requests, total, flush, args.flush_every)

            await drive_pns(CONNECTIONS * 4)
            assert b'"code":0' in sink.last or args.stub != "none", sink.last
            await _drive(floor_protocols, floor_sink, requests, CONNECTIONS)
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await drive_pns(args.requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
            if args.only in ("both", "pns"):
                best = min([await drive_pns(args.requests) for _ in range(args.rounds)])
                results["pns_us"] = best / args.requests * 1e6
            if args.only in ("both", "floor"):
                best = min([await _drive(floor_protocols, floor_sink, requests, args.requests)
                            for _ in range(args.rounds)])
                results["floor_us"] = best / args.requests * 1e6
            if "pns_us" in results and "floor_us" in results:
                results["ratio"] = results["floor_us"] / results["pns_us"]
        finally:
            await store.close()
            logs.stop_writer()
            log_file.close()
    return results


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64 * 300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bindings", type=int, default=10_000)
    parser.add_argument("--numbers", type=int, default=100)
    parser.add_argument("--cache-seconds", type=float, default=1.0,
                        help="the accounts cache's TTL (pns serve's default: 1)")
    parser.add_argument("--flush-every", type=int, default=100,
                        help="answers per call-reference write (the 5 ms flush at 20,000/s)")
    parser.add_argument("--stub", choices=("none", "reply", "coroutine"), default="none",
                        help="answer from the HTTP layer alone (see _stub)")
    parser.add_argument("--only", choices=("both", "pns", "floor"), default="both")
    parser.add_argument("--log", default="null", help="access log file (null: /dev/null)")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass first")
    return parser.parse_args()


if __name__ == "__main__":
    logging.getLogger("pns").setLevel(logging.INFO)
    print(json.dumps(asyncio.run(main(_args())), indent=None))
