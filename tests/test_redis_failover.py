"""A Redis Cluster master SIGKILLed during a bind storm (PostgreSQL + Redis Cluster).

The test has a cluster of its own (it kills one of its masters). While writers bind and unbind
through ``pns serve``, the master serving one of the tenant's numbers is SIGKILLed; its replica
takes over (cluster-node-timeout 1 s). Then:

- every binding acknowledged with code 0 (and not unbound) is still in the index, found by
  bindId and by its parties, and listed: a bind is acknowledged only after ``WAIT 1``;
- every answer during the failover was an envelope (HTTP 200, or 500 with code 10009), never a
  dropped connection or a traceback;
- service comes back by itself, and the outage is measured (printed with ``-s``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from pns.client import PnsClient
from pns.model import Role

from .conftest import Server, composite_url, create_tenant, unique_hk
from .redis_cluster import Cluster, redis_cli, start_cluster
from .test_crash import Ledger, all_bindings, assert_ledger_kept, run_storm, wait_for_acks
from .test_store_conformance import _sync_store


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def master_of(cluster: Cluster, x: str) -> int:
    """The port of the master serving X's slot."""
    slot = key_slot(f"{{{x}}}".encode())
    for line in redis_cli(cluster.ports[0], "CLUSTER", "NODES").splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for span in fields[8:]:
            low, _, high = span.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return int(fields[1].split(":")[1].split("@")[0])
    raise AssertionError(f"no master serves slot {slot}")


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Prober:
    """Asks queryAXB for one binding on the killed shard, over and over: when did it fail?"""

    def __init__(self, server: Server, switch: Any, caller: str, x: str):
        self.server, self.switch, self.caller, self.x = server, switch, caller, x
        self.answers: list[tuple[float, int, int]] = []  # (time, HTTP status, code)
        self.not_envelopes: list[str] = []
        self.health: list[int] = []  # /healthz statuses
        self.stop = threading.Event()

    def run(self) -> None:
        with PnsClient(self.server.url, self.switch.access_key, self.switch.access_secret,
                       timeout=10) as client:
            while not self.stop.is_set():
                try:
                    status, env = client.request("queryAXB", {"caller": self.caller,
                                                              "did": self.x})
                except Exception as exc:  # any non-envelope answer is the failure
                    self.not_envelopes.append(repr(exc))
                    continue
                if not (isinstance(env.get("code"), int) and len(env.get("requestId", "")) == 19
                        and (status, env["code"]) in ((200, 0), (500, 10009))):
                    self.not_envelopes.append(f"{status} {env}")
                self.answers.append((time.monotonic(), status, env["code"]))
                time.sleep(0.01)

    def watch_health(self) -> None:
        while not self.stop.is_set():
            self.health.append(_health(self.server.url))
            time.sleep(0.05)

    def outage(self, since: float) -> float:
        """The longest time without a successful answer, from ``since`` on: the last success
        before it (or ``since``) to the next success."""
        last_ok, longest = since, 0.0
        for t, _, code in self.answers:
            if code != 0 or t < since:
                continue
            longest = max(longest, t - last_ok)
            last_ok = t
        return longest


def test_master_sigkill_in_a_bind_storm_loses_no_acknowledged_binding(
        own_cluster: Cluster, pg_database: str) -> None:
    url = composite_url(pg_database, own_cluster)
    tenant = create_tenant(url, numbers=4)
    switch = create_tenant(url, Role.SWITCH)
    server = Server(url)
    ledger, stop = Ledger(), threading.Event()
    try:
        with server.client(tenant) as c:
            a, b = unique_hk("1"), unique_hk("2")
            probe = c.bind_axb(a, b, 0, phoneX=tenant.numbers[0])
            assert probe["code"] == 0, probe
        # The prober's binding is acknowledged too: it must be kept, and it is no phantom.
        ledger.bound[probe["data"]["bindId"]] = (a, b, probe["data"]["did"])
        victim = master_of(own_cluster, tenant.numbers[0])
        prober = Prober(server, switch, b, tenant.numbers[0])
        probe_thread = threading.Thread(target=prober.run, daemon=True)
        health_thread = threading.Thread(target=prober.watch_health, daemon=True)
        probe_thread.start()
        health_thread.start()
        people = [unique_hk("1") for _ in range(30)]
        workers = run_storm(server, tenant, people, ledger, stop)
        wait_for_acks(ledger, 100, 10)
        acked_before = len(ledger.bound)
        killed_at = time.monotonic()
        own_cluster.kill(victim)
        # The replica is promoted within a few node timeouts; service must come back.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recent = [code for t, _, code in prober.answers if t > killed_at + 0.5]
            if recent[-20:] and all(code == 0 for code in recent[-20:]):
                break
            time.sleep(0.1)
        time.sleep(1.0)  # more binds on the new master
        stop.set()
        prober.stop.set()
        for worker in workers:
            worker.join(15)
        probe_thread.join(15)
        health_thread.join(15)
        assert prober.not_envelopes == [], prober.not_envelopes[:5]
        assert [code for _, _, code in prober.answers[-20:]] == [0] * 20, "no service after"
        assert set(prober.health) <= {200, 503} and prober.health[-5:] == [200] * 5
        failed_probes = sum(1 for t, _, code in prober.answers if t >= killed_at and code)

        listed = all_bindings(server, tenant)
        assert_ledger_kept(ledger, listed)
        kept = [bind_id for bind_id in ledger.bound
                if bind_id not in ledger.unbound and bind_id not in ledger.unbind_in_doubt]
        lost = []
        with _sync_store(url) as store:
            now = int(time.time())
            for bind_id in kept:
                a, b, x = ledger.bound[bind_id]
                found = store.get_binding(bind_id, now)
                if found is None or store.find_by_party(x, a, now) != found:
                    lost.append(bind_id)
        assert lost == [], f"{len(lost)} acknowledged bindings lost: {lost[:5]}"
        assert "Traceback" not in "".join(prober.not_envelopes)
        result = {
            "acknowledged_binds": len(ledger.bound), "acknowledged_before_kill": acked_before,
            "lost_binds": len(lost), "binds_in_doubt_10009": ledger.bind_in_doubt,
            "codes": ledger.codes, "seconds_without_service": round(
                prober.outage(killed_at), 2),
            "failed_queries": failed_probes, "healthz_503": prober.health.count(503),
        }
        print("FAILOVER", json.dumps(result))
        assert ledger.codes.get(0, 0) > acked_before  # binds went on after the failover
    finally:
        server.stop()
