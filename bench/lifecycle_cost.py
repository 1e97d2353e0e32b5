"""What lifecycle.md's checks cost each queryAXB, in microseconds, in-process.

    .venv/bin/python bench/lifecycle_cost.py [--bindings N] [--queries N] [--rounds N]
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/lifecycle_cost.py --plain-only

Calls ``Service.query`` directly (no HTTP, no signing) on the embedded store with its in-memory
read index, so the few microseconds the block list and callDirection checks add are not lost in
the noise of a whole request. Variants, each the best of ``--rounds`` passes over the same
(caller, did) pairs:

- ``plain``: bindings with every lifecycle field at its default, the account's block list empty;
- ``blocklist``: the same with 10,000 numbers on the X owner's block list (callers not on it);
- ``direction``: bindings with callDirection 1 queried by A, maxDuration 60, own fail prompt.

``--plain-only`` runs only ``plain``, with nothing but the API every release has, so the same
script measures a tree without lifecycle.md (the reference) in the same run. The last line of
output is every figure as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

import msgspec

from pns.core import Service, Settings
from pns.ids import new_bind_id
from pns.model import Binding, Role, VirtualNumber
from pns.store import open_store


async def measure(n_bindings: int, n_queries: int, rounds: int, plain_only: bool
                  ) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        store = await open_store(f"sqlite:///{folder}/bench.db?index=on")
        try:
            return await _measure(store, n_bindings, n_queries, rounds, plain_only)
        finally:
            await store.close()


async def _measure(store: Any, n_bindings: int, n_queries: int, rounds: int,
                   plain_only: bool) -> dict[str, float]:
    now = int(time.time())
    service = Service(store, Settings(account_cache_seconds=3600))
    owner = await store.create_account("bench", Role.CUSTOMER, "benchkey", "s", now)
    switch = await store.create_account("switch", Role.SWITCH, "benchswitch", "s", now)
    xs = [f"8523{i:07d}" for i in range(100)]
    await store.add_numbers([VirtualNumber(x, owner.id, 852) for x in xs])

    def binding(i: int, **extra: Any) -> Binding:
        x = xs[i % len(xs)]
        plain = Binding(new_bind_id(x), owner.id, x, f"8521{i:07d}", f"8522{i:07d}", "", 0, "",
                        "", 0, 0, 0, now)
        return msgspec.structs.replace(plain, **extra) if extra else plain

    half = n_bindings // 2
    for i in range(half):
        await store.insert_binding(binding(i), now)
    if not plain_only:
        for i in range(half, n_bindings):
            await store.insert_binding(binding(i, call_direction=1, max_duration=60,
                                               audio_when_call_fail="ride.wav"), now)
    step = max(half // n_queries, 1)
    plain_pairs = [(f"8521{i:07d}", xs[i % len(xs)]) for i in range(0, half, step)][:n_queries]
    direction_pairs = [(f"8521{i:07d}", xs[i % len(xs)])
                       for i in range(half, n_bindings, step)][:n_queries]

    async def best(pairs: list[tuple[str, str]]) -> float:
        fastest = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for caller, did in pairs:
                await service.query(switch, caller, did, None, now)
            fastest = min(fastest, (time.perf_counter() - started) / len(pairs) * 1e6)
        await store.flush_calls()
        return fastest

    await best(plain_pairs)  # warm the caches and the index
    figures = {"plain_us": await best(plain_pairs)}
    if plain_only:
        return figures
    figures["direction_us"] = await best(direction_pairs)
    await service.add_blocked(owner, ",".join(f"8529{i:07d}" for i in range(1000)), now)
    for start in range(1000, 10_000, 1000):
        await store.add_blocked(owner.id, [f"8529{i:07d}" for i in range(start, start + 1000)],
                                now)
    service.accounts.forget_blocked(owner.id)
    figures["blocklist_us"] = await best(plain_pairs)
    figures["plain_again_us"] = await best(plain_pairs)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bindings", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--plain-only", action="store_true")
    args = p.parse_args()
    figures = asyncio.run(measure(args.bindings, args.queries, args.rounds, args.plain_only))
    for name, value in figures.items():
        print(f"{name:>16}: {value:6.2f} us per query")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
