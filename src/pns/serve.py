"""Running the service: store, core, API and HTTP put together, plus the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import time

from .admin.front import DEFAULT_ADMIN, AdminFront, AdminOptions, admin_only
from .api import Api
from .app import App, error_reply
from .core import Service, Settings
from .delivery import Deliverer, DeliverySettings
from .http import HttpServer, Limits
from .ids import LEASE_RENEW, LEASE_SECONDS, current_worker, lease_lost, use_worker
from .metrics import Metrics, keep_process_metrics
from .store import Store, open_store
from .store.base import Retention
from .store.rows import redact

log = logging.getLogger("pns.serve")

SWEEP_INTERVAL = 1.0
SWEEP_BATCH = 1000


async def sweep_forever(store: Store, interval: float = SWEEP_INTERVAL,
                        metrics: Metrics | None = None) -> None:
    """Reclaim expired bindings in batches. Correctness never waits for this: reads check
    expiry themselves; sweeping only frees storage and rebalances the allocation counters."""
    while True:
        try:
            while True:
                swept = await store.sweep(int(time.time()), SWEEP_BATCH)
                if metrics is not None and swept:
                    metrics.swept.inc(swept)
                if swept < SWEEP_BATCH:
                    break
                await asyncio.sleep(0)
        except Exception:
            log.exception("sweep failed; will retry")
        await asyncio.sleep(interval)


PURGE_INTERVAL = 60.0


async def purge_history(store: Store, now: int, retention: Retention,
                        batch: int = SWEEP_BATCH) -> int:
    """Remove every call record and finished callback older than its retention, ``batch``
    rows of a table per transaction; returns how many rows went."""
    total = 0
    while True:
        purged = await store.purge_history(now, retention, batch)
        total += purged
        if purged == 0:
            return total
        await asyncio.sleep(0)


async def purge_forever(store: Store, retention: Retention,
                        interval: float = PURGE_INTERVAL) -> None:
    """The privacy guarantee of retention: history older than it is gone within a minute."""
    while True:
        try:
            await purge_history(store, int(time.time()), retention)
        except Exception:
            log.exception("purging old history failed; will retry")
        await asyncio.sleep(interval)


async def keep_worker_id(store: Store, holder: str, worker: int | None,
                         renew: float = LEASE_RENEW) -> None:
    """Lease this process's snowflake worker id from the store and renew it, so no two
    processes make the same requestId or callId (see ``ids``). Without a lease (every id
    taken, the store refusing writes) ids fall back to a random worker and it says so."""
    while True:
        await asyncio.sleep(renew)
        worker = await _lease_worker_id(store, holder, worker)


async def _lease_worker_id(store: Store, holder: str, worker: int | None) -> int | None:
    try:
        leased = await store.lease_worker_id(holder, int(time.time()), LEASE_SECONDS, worker)
    except Exception as exc:
        log.warning("could not lease an id worker: %s", type(exc).__name__)
        return worker  # still ours until ids.use_worker's deadline, which next() checks
    if leased is None:
        lease_lost()
        log.error("every id worker is leased: ids are unique within this process only")
    else:
        use_worker(leased, LEASE_SECONDS / 2)
    return leased


POOL_METRICS_INTERVAL = float(os.environ.get("PNS_POOL_METRICS_INTERVAL", "30"))


async def refresh_pool_metrics(store: Store, metrics: Metrics,
                               interval: float = POOL_METRICS_INTERVAL) -> None:
    """Pool headroom gauges: computed in the background, so a scrape costs nothing."""
    while True:
        try:
            accounts = {a.id: a.access_key for a in await store.list_accounts()}
            for usage in await store.pool_usage(int(time.time())):
                labels = (accounts.get(usage.account_id, str(usage.account_id)),
                          str(usage.country_code))
                metrics.pool_numbers.labels(*labels).set(usage.enabled)
                metrics.pool_active.labels(*labels).set(usage.active_bindings)
                metrics.pool_fullest.labels(*labels).set(usage.fullest_x_bindings)
                metrics.pool_free.labels(*labels).set(usage.free_numbers)
                metrics.pool_headroom.labels(*labels).set(usage.headroom_busiest)
        except Exception:
            log.exception("pool metrics failed; will retry")
        await asyncio.sleep(interval)


async def run_server(
    store_url: str, host: str, port: int, settings: Settings | None = None,
    limits: Limits | None = None, reuse_port: bool = False,
    ready: asyncio.Event | None = None, deliver: bool = True,
    admin: AdminOptions | None = DEFAULT_ADMIN,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests and stop cleanly.
    ``admin`` None: no admin API and no console."""
    retention = Retention.from_env()
    delivery = DeliverySettings.from_env()
    store = await open_store(store_url, index=True)
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    # Before the first answer: every id this process makes carries its leased worker id.
    worker = await _lease_worker_id(store, holder, None)
    service = Service(store, settings)
    metrics = Metrics()
    front = AdminFront(service, metrics, admin) if admin is not None else None
    app = App(Api(service), metrics,
              admin=front if front is not None and admin and admin.listen is None else None)
    server = HttpServer(app, error_reply, limits,
                        first_step_outside_task=store.answers_in_process)
    await server.start(host, port, reuse_port=reuse_port)
    servers = [server]
    if front is not None and admin is not None and admin.listen is not None:
        admin_server = HttpServer(admin_only(front), error_reply, limits,
                                  first_step_outside_task=store.answers_in_process)
        await admin_server.start(*admin.listen, reuse_port=reuse_port)
        servers.append(admin_server)
        log.info("admin API and console on http://%s:%d/console/", admin.listen[0],
                 admin_server.port)
    background = [asyncio.create_task(sweep_forever(store, metrics=app.metrics)),
                  asyncio.create_task(keep_worker_id(store, holder, worker)),
                  asyncio.create_task(refresh_pool_metrics(store, app.metrics)),
                  asyncio.create_task(purge_forever(store, retention))]
    if app.metrics.multiprocess:
        background.append(asyncio.create_task(keep_process_metrics(app.metrics)))
    if front is not None:
        background.append(asyncio.create_task(front.sample_rates()))
    if deliver:
        deliverer = Deliverer(store, service.accounts, settings=delivery, metrics=app.metrics)
        service.on_event = deliverer.wake
        background.append(asyncio.create_task(deliverer.run()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    freeze_start_up_objects()
    log.info("pns listening on http://%s:%d store=%s", host, server.port, redact(store_url))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing in-flight requests")
        for each in servers:
            await each.shutdown()
        # Writes that follow answers already sent (renewals, binding-error callbacks).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service.settle(), timeout=5)
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leased, held = current_worker()
        if held:
            with contextlib.suppress(Exception):
                await store.release_worker_id(holder, leased)
        await store.close()
        log.info("stopped")


def freeze_start_up_objects() -> None:
    """Keep the objects made at start (modules, classes, functions, the store's and the
    caches' containers: tens of thousands, alive as long as the process) out of the garbage
    collector's walks. Unfrozen, each full collection walked them all and paused the loop for
    up to ~60 ms every few seconds under load, a p99 of its own; frozen, a collection walks
    only what requests made since."""
    gc.collect()
    gc.freeze()


def install_event_loop() -> None:
    """uvloop when available: the floor of our own hot path, not of the benchmark's."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_deliverer(store_url: str) -> None:
    """``pns deliver``: only the delivery worker, until SIGTERM or SIGINT."""
    settings = DeliverySettings.from_env()
    store = await open_store(store_url)
    service = Service(store)
    task = asyncio.create_task(Deliverer(store, service.accounts, settings=settings).run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("delivering callbacks from store=%s", redact(store_url))
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
