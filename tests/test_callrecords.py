"""Call records: reported by the switch, joined, stored once, delivered signed and durably."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pns.callbacks import KIND_BINDING_ERROR, new_event
from pns.client import encode_body, signed_headers, verify_callback
from pns.core import AccountDirectory
from pns.delivery import Deliverer, DeliverySettings
from pns.model import EventState, OutboxEvent, Role
from pns.store import Store, open_store

from .conftest import Server, Tenant, cli, create_tenant, free_port, pns_command, unique_hk
from .test_store_conformance import fresh_store_url, in_threads

__all__ = ["fresh_store_url"]  # the fixture, shared with the conformance suite

FAST_RETRY = {"PNS_CALLBACK_RETRY_FIRST": "1"}


class Receiver:
    """A customer's callback endpoint that records what arrives; it can refuse for a while."""

    def __init__(self, port: int | None = None):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refuse = False
        self.port = port or free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.refuse:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cdr"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, f"received {len(self.received)} of {count}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def fast_server(store_url: str) -> Iterator[Server]:
    srv = Server(store_url, env=FAST_RETRY)
    yield srv
    srv.stop()


def _call(server: Server, customer: Tenant, switch: Tenant) -> tuple[str, str, str, str]:
    a, b = unique_hk("1"), unique_hk("2")
    bound = server.client(customer).bind_axb(a, b, 0, customerBindId=f"c{a}", businessId="ride")
    did = bound["data"]["did"]
    answer = server.client(switch).query(a, did)
    assert answer["code"] == 0
    return answer["data"]["callId"], bound["data"]["bindId"], a, b


def test_report_joined_stored_delivered_once(fast_server: Server, receiver: Receiver) -> None:
    customer = create_tenant(fast_server.store_url, numbers=1, callback_url=receiver.url)
    switch = create_tenant(fast_server.store_url, Role.SWITCH)
    call_id, bind_id, a, b = _call(fast_server, customer, switch)
    s = fast_server.client(switch)
    now = int(time.time())
    times = {"startAt": now - 30, "ringAt": now - 28, "answerAt": now - 25, "hangupAt": now,
             "hangupCause": "NORMAL_CLEARING", "hangupCode": 16, "hangup": 1,
             "recordFile": "https://rec.example/1.mp3"}
    first = s.report_call(call_id, **times)
    assert first["code"] == 0
    again = s.report_call(call_id, **times)
    assert again["code"] == 0 and again["data"] == first["data"]
    receiver.wait_for(1)
    time.sleep(1.5)
    assert len(receiver.received) == 1, "a repeated report must not be delivered twice"
    headers, body = receiver.received[0]
    record = json.loads(body)
    assert record["callId"] == call_id and record["bindId"] == bind_id
    assert (record["caller"], record["callee"], record["did"]) == (a, b,
                                                                  customer.numbers[0])
    assert record["customerBindId"] == f"c{a}" and record["businessId"] == "ride"
    assert record["duration"] == 25 and record["callStatus"] == 1
    assert record["hangupCode"] == 16 and record["hangup"] == 1
    assert record["recordFile"] == "https://rec.example/1.mp3"
    assert record["id"] == first["data"]["id"]
    assert len(headers["X-PNS-Event-Id"]) == 32
    assert verify_callback(body, headers["X-PNS-Signature"], customer.access_secret)
    assert not verify_callback(body, headers["X-PNS-Signature"], "wrong-secret")
    assert not verify_callback(body + b" ", headers["X-PNS-Signature"], customer.access_secret)
    stamp = int(headers["X-PNS-Signature"].split(",")[0][2:])
    assert not verify_callback(body, headers["X-PNS-Signature"], customer.access_secret,
                               now=stamp + 301)
    # The customer lists it, by time range and by bindId.
    c = fast_server.client(customer)
    listed = c.call_records(startTime=now - 60, endTime=now + 1, limit=10, offset=0)["data"]
    assert listed["total"] == 1 and listed["records"][0]["callId"] == call_id
    assert c.call_records(bindId=bind_id)["data"]["total"] == 1
    assert c.call_records(startTime=now)["data"]["total"] == 0
    # And asks for a redelivery.
    redelivered = c.call("redeliverCallRecord", {"callId": call_id})
    assert redelivered["code"] == 0
    receiver.wait_for(2)
    assert receiver.received[1][1] == body
    assert receiver.received[1][0]["X-PNS-Event-Id"] == redelivered["data"]["eventId"]


def test_unanswered_call_status(server: Server, switch: Tenant) -> None:
    customer = create_tenant(server.store_url, numbers=1)
    call_id, *_ = _call(server, customer, switch)
    now = int(time.time())
    server.client(switch).report_call(call_id, startAt=now - 20, ringAt=now - 18, answerAt=0,
                                      hangupAt=now, hangupCause="NO_ANSWER", hangupCode=19)
    record = server.client(customer).call_records()["data"]["records"][0]
    assert record["callStatus"] == 2 and record["duration"] == 0
    assert record["callStatusMsg"] == "NO_ANSWER"


def test_report_refusals(server: Server, customer: Tenant, switch: Tenant) -> None:
    s = server.client(switch)
    assert s.report_call("")["code"] == 1002
    assert s.report_call("1234567890123456789")["code"] == 10013
    call_id, *_ = _call(server, customer, switch)
    assert s.report_call(call_id, hangup=3)["code"] == 1002
    assert s.report_call(call_id, startAt="yesterday")["code"] == 1002
    assert server.client(customer).report_call(call_id)["code"] == 1005
    assert server.client(customer).call("redeliverCallRecord", {"callId": call_id})["code"] \
        == 10013
    assert server.client(switch).call_records()["code"] == 1005


def test_receiver_down_then_up(fast_server: Server) -> None:
    port = free_port()
    customer = create_tenant(fast_server.store_url, numbers=1,
                             callback_url=f"http://127.0.0.1:{port}/cdr")
    switch = create_tenant(fast_server.store_url, Role.SWITCH)
    call_id, *_ = _call(fast_server, customer, switch)
    assert fast_server.client(switch).report_call(call_id, startAt=1, hangupAt=2)["code"] == 0
    time.sleep(2.5)  # a few refused attempts: nobody listens
    pending = [json.loads(line) for line in cli(
        "deliveries", "--account", customer.access_key, "--store",
        fast_server.store_url).stdout.splitlines()]
    assert pending and pending[0]["state"] == "pending" and pending[0]["attempts"] >= 1
    assert pending[0]["lastError"]
    receiver = Receiver(port)
    receiver.refuse = True
    try:
        time.sleep(2)
        assert receiver.received == []
        receiver.refuse = False
        receiver.wait_for(1, timeout=30)
        assert receiver.bodies()[0]["callId"] == call_id
    finally:
        receiver.stop()


def test_sigkill_before_first_attempt(fresh_store_url: str) -> None:
    """Records enqueued while the receiver is reachable but the server dies at once are
    delivered by the restarted server. (A store of its own: another test's server on a shared
    database would deliver the record first.)"""
    store_url = fresh_store_url
    receiver = Receiver()
    customer = create_tenant(store_url, numbers=1, callback_url=receiver.url)
    switch = create_tenant(store_url, Role.SWITCH)
    server = Server(store_url, "--no-deliver")
    try:
        call_id, *_ = _call(server, customer, switch)
        assert server.client(switch).report_call(call_id, startAt=1)["code"] == 0
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        assert receiver.received == []
        server.extra = ()
        server.start()
        receiver.wait_for(1)
        assert receiver.bodies()[0]["callId"] == call_id
    finally:
        server.stop()
        receiver.stop()


def test_error_callback_for_unbound_x(server: Server, receiver: Receiver) -> None:
    customer = create_tenant(server.store_url, numbers=1, callback_url=receiver.url)
    switch = create_tenant(server.store_url, Role.SWITCH)
    stranger = unique_hk("9")
    x = customer.numbers[0]
    assert server.client(switch).query(stranger, x)["code"] == 10013
    receiver.wait_for(1)
    headers, body = receiver.received[0]
    event = json.loads(body)
    assert event["code"] == 10013 and event["msg"] == "binding not exist"
    assert event["data"]["action"] == "queryAXB"
    assert event["data"]["requestParams"] == {"caller": stranger, "did": x}
    assert len(event["data"]["occurrenceTime"]) == 19
    assert verify_callback(body, headers["X-PNS-Signature"], customer.access_secret)


def test_report_joined_by_did_and_caller_when_call_id_unknown(server: Server,
                                                              switch: Tenant) -> None:
    """A callId lost with a crashed process (its reference is written within milliseconds)
    can still be joined when the switch also reports did and caller."""
    customer = create_tenant(server.store_url, numbers=1)
    a, b = unique_hk("1"), unique_hk("2")
    bound = server.client(customer).bind_axb(a, b, 0)["data"]
    s = server.client(switch)
    assert s.report_call("1999999999999999999", startAt=5)["code"] == 10013
    answer = s.report_call("1999999999999999999", startAt=5, did=bound["did"], caller=a)
    assert answer["code"] == 0
    record = server.client(customer).call_records()["data"]["records"][0]
    assert (record["caller"], record["callee"], record["bindId"]) == (a, b, bound["bindId"])


# --- delivery under load: leases held, one deadline per attempt, a cap per receiver ----------
class SlowReceiver:
    """Answers every POST 200 after ``delay`` seconds, counting each event id on arrival."""

    def __init__(self, delay: float):
        self.arrivals: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.arrivals[self.headers["X-PNS-Event-Id"]] += 1
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # 64 connections at once: none waits for a SYN retry

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/cdr"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DeadReceiver:
    """Accepts connections and never answers: the worst receiver there is."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/cdr"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def stop(self) -> None:
        self._sock.close()
        for conn in self.connections:
            conn.close()


def _enqueue(url: str, account_id: int, n: int, due: int) -> list[str]:
    async def go() -> list[str]:
        store = await open_store(url)
        try:
            ids = []
            for i in range(n):
                event = new_event(account_id, KIND_BINDING_ERROR, {"n": i}, due)
                await store.enqueue_event(event)
                ids.append(event.event_id)
            return ids
        finally:
            await store.close()

    return asyncio.run(go())


def _states(url: str) -> Counter[str]:
    async def go() -> Counter[str]:
        store = await open_store(url)
        try:
            return Counter(str(e.state) for e in await store.list_events(None, None, 10_000))
        finally:
            await store.close()

    return asyncio.run(go())


def _deliverers(url: str, n: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(pns_command("deliver", "--store", url),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, **env}) for _ in range(n)]


def _stop(procs: list[subprocess.Popen[bytes]], kill: bool = False) -> None:
    for proc in procs:
        if kill:
            proc.kill()
        else:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_slow_receiver_and_several_deliverers_post_each_event_once(
        fresh_store_url: str) -> None:
    """Two ``pns deliver`` processes on one store and a receiver that takes 4.5 s to answer
    200: every event is POSTed exactly once. (Before: a process leased 100 events, started 32
    at a time and let the leases of the last ones run out while they waited, so the other
    process POSTed them again.)"""
    receiver = SlowReceiver(4.5)
    tenant = create_tenant(fresh_store_url, callback_url=receiver.url)
    events = _enqueue(fresh_store_url, tenant.account_id, 120, int(time.time()) - 1)
    procs = _deliverers(fresh_store_url, 2, {"PNS_CALLBACK_TIMEOUT": "10",
                                             "PNS_CALLBACK_PER_RECEIVER": "32"})
    try:
        deadline = time.monotonic() + 90
        while _states(fresh_store_url)["delivered"] < len(events):
            assert time.monotonic() < deadline, _states(fresh_store_url)
            time.sleep(0.5)
    finally:
        _stop(procs)
        receiver.stop()
    twice = {event_id: n for event_id, n in receiver.arrivals.items() if n > 1}
    assert twice == {}, f"{len(twice)} of {len(events)} events were POSTed more than once"
    assert sorted(receiver.arrivals) == sorted(events)


def test_a_dead_receiver_does_not_delay_another_account(fresh_store_url: str) -> None:
    """Account 1's receiver never answers and has 100 events due first; account 2's one event
    reaches its healthy receiver while the dead one holds no more than its cap of attempts.
    (Before: the dead receiver's 100 events held every slot for 4 rounds of 5 s.)"""
    dead, healthy = DeadReceiver(), SlowReceiver(0)
    first = create_tenant(fresh_store_url, callback_url=dead.url)
    second = create_tenant(fresh_store_url, callback_url=healthy.url)
    now = int(time.time())
    _enqueue(fresh_store_url, first.account_id, 100, now - 10)
    (wanted,) = _enqueue(fresh_store_url, second.account_id, 1, now)
    procs = _deliverers(fresh_store_url, 1, {"PNS_CALLBACK_TIMEOUT": "10",
                                             "PNS_CALLBACK_PER_RECEIVER": "4"})
    try:
        deadline = time.monotonic() + 60
        while not healthy.arrivals:
            assert time.monotonic() < deadline, "the healthy receiver never got its event"
            time.sleep(0.02)
        attempts_on_dead = len(dead.connections)
    finally:
        _stop(procs, kill=True)  # a graceful stop would wait for the dead receiver's attempts
        dead.stop()
        healthy.stop()
    assert list(healthy.arrivals) == [wanted]
    assert 1 <= attempts_on_dead <= 4, attempts_on_dead


def test_only_the_lease_holder_finishes_an_event(fresh_store_url: str) -> None:
    """A holder whose lease ran out (a slow attempt) changes nothing once another holds the
    event; a released event can be leased again at once; busy accounts are skipped."""
    t0 = 1_800_000_000

    async def go() -> None:
        store = await open_store(fresh_store_url)
        try:
            acc = await store.create_account("a", Role.CUSTOMER, "k" + secrets.token_hex(4),
                                             "s", t0)
            other = await store.create_account("b", Role.CUSTOMER, "k" + secrets.token_hex(4),
                                               "s", t0)
            event = new_event(acc.id, KIND_BINDING_ERROR, {"n": 1}, t0)
            theirs = new_event(other.id, KIND_BINDING_ERROR, {"n": 2}, t0 + 1)
            await store.enqueue_event(event)
            await store.enqueue_event(theirs)
            first = await store.lease_events(t0 + 1, 1, 10, holder="first")
            assert [e.event_id for e in first] == [event.event_id]
            # The first holder's lease runs out while it still waits for the receiver.
            second = await store.lease_events(t0 + 11, 1, 10, holder="second")
            assert [e.event_id for e in second] == [event.event_id]
            assert not await store.finish_event(event.event_id, EventState.PENDING, 1,
                                                t0 + 100, "timeout", t0 + 12, holder="first")
            assert await store.lease_events(t0 + 12, 1, 10, holder="third") == [theirs]
            (stored,) = await store.list_events(acc.id, None, 10)
            assert (stored.state, stored.attempts) == (EventState.PENDING, 0)
            assert await store.finish_event(event.event_id, EventState.DELIVERED, 1, t0 + 12,
                                            "", t0 + 12, holder="second")
            assert not await store.finish_event(event.event_id, EventState.PENDING, 2,
                                                t0 + 100, "late", t0 + 13, holder="second")
            (stored,) = await store.list_events(acc.id, None, 10)
            assert (stored.state, stored.attempts) == (EventState.DELIVERED, 1)
            # Given back unattempted: leasable at once, but only by its holder's release.
            await store.release_event(theirs.event_id, holder="someone else")
            assert await store.lease_events(t0 + 13, 5, 10, holder="fourth") == []
            await store.release_event(theirs.event_id, holder="third")
            assert await store.lease_events(t0 + 13, 5, 10, holder="fifth",
                                            skip_accounts=[other.id]) == []
            assert await store.lease_events(t0 + 13, 5, 10, holder="fifth",
                                            skip_accounts=[acc.id]) == [theirs]
        finally:
            await store.close()

    asyncio.run(go())


def test_call_record_ids_are_exact_in_javascript_and_increase(fast_server: Server,
                                                               receiver: Receiver) -> None:
    """JavaScript's JSON.parse keeps integers exact up to 2^53: record ids stay below it, in
    getCallRecords and in callbacks, and each is larger than the one before."""
    customer = create_tenant(fast_server.store_url, numbers=2, callback_url=receiver.url)
    switch = create_tenant(fast_server.store_url, Role.SWITCH)
    reported = []
    for i in range(3):
        call_id, *_ = _call(fast_server, customer, switch)
        answer = fast_server.client(switch).report_call(call_id, startAt=1000 + i)
        assert answer["code"] == 0
        reported.append(answer["data"]["id"])
    listed = [r["id"] for r in fast_server.client(customer).call_records()["data"]["records"]]
    receiver.wait_for(3)
    delivered = sorted(body["id"] for body in receiver.bodies())
    assert listed == reported == delivered
    assert all(isinstance(i, int) and 0 < i <= 2**53 for i in listed)
    assert listed == sorted(set(listed))


def test_a_replayed_report_is_refused_whatever_its_first_answer(
        fast_server: Server, receiver: Receiver) -> None:
    """reportCall claims its signature in its record's own write (README): the same signed
    report sent again is 1006, stored and delivered once; a report refused before that write
    (an unknown callId) has its signature claimed by itself, so its replay is 1006 too."""
    customer = create_tenant(fast_server.store_url, numbers=1, callback_url=receiver.url)
    switch = create_tenant(fast_server.store_url, Role.SWITCH)
    call_id, *_ = _call(fast_server, customer, switch)
    s = fast_server.client(switch)

    def twice(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        raw = encode_body(body)
        headers = signed_headers(s.access_key, s.access_secret, "reportCall", raw,
                                 str(int(time.time() * 1000)))
        return (json.loads(s.send(raw, headers, resend=False)[1]),
                json.loads(s.send(raw, headers, resend=False)[1]))

    first, again = twice({"callId": call_id, "startAt": 1000, "hangupAt": 1010})
    assert (first["code"], again["code"]) == (0, 1006), (first, again)
    assert fast_server.client(customer).call_records()["data"]["total"] == 1
    receiver.wait_for(1)
    time.sleep(1.0)
    assert len(receiver.received) == 1
    first, again = twice({"callId": "1999999999999999999", "startAt": 1000})
    assert (first["code"], again["code"]) == (10013, 1006), (first, again)


class TrickleReceiver:
    """Answers one byte every 0.2 s, for ever: every read gets data within a per-phase
    timeout, so only a deadline for the whole attempt ends it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/cdr"
        self.sent = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if self._stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()


def test_one_deadline_for_the_whole_attempt(fresh_store_url: str) -> None:
    """A receiver that trickles its answer is cut off at the attempt's deadline (1 s here),
    however steadily the bytes come; the event waits for its next attempt."""
    trickle = TrickleReceiver()
    tenant = create_tenant(fresh_store_url, callback_url=trickle.url)
    (event_id,) = _enqueue(fresh_store_url, tenant.account_id, 1, int(time.time()) - 1)

    async def go() -> OutboxEvent:
        store = await open_store(fresh_store_url)
        deliverer = Deliverer(store, AccountDirectory(store, ttl=1), first_delay=600,
                              settings=DeliverySettings(timeout=1))
        task = asyncio.create_task(deliverer.run())
        try:
            async with asyncio.timeout(20):  # the deadline is 1 s: 20 is a hang
                while True:
                    (event,) = await store.list_events(tenant.account_id, None, 10)
                    if event.attempts:
                        return event
                    await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()

    try:
        event = asyncio.run(go())
    finally:
        trickle.stop()
    assert event.event_id == event_id and event.state is EventState.PENDING
    assert event.last_error == "no answer within 1 s"
    assert trickle.sent >= 3, "the receiver kept sending while the attempt ran"


def test_call_record_ids_are_unique_across_processes(fresh_store_url: str) -> None:
    """Four connections of their own draw ids at once: none twice, each draw increasing."""
    assert create_tenant(fresh_store_url).account_id > 0  # the store exists, migrated

    async def draw(store: Store, i: int) -> list[int]:
        return [await store.next_call_record_id() for _ in range(50)]

    results = in_threads(fresh_store_url, 4, draw)
    assert all(isinstance(r, list) for r in results), results
    assert all(r == sorted(r) for r in results)
    drawn = [i for r in results for i in r]
    assert len(set(drawn)) == 200 and max(drawn) <= 2**53


_DRAW_IDS = """
import asyncio, sys
from pns.store import open_store

async def main():
    store = await open_store(sys.argv[1])
    try:
        print(*[await store.next_call_record_id() for _ in range(int(sys.argv[2]))])
    finally:
        await store.close()

asyncio.run(main())
"""


def test_call_record_ids_drawn_in_blocks_are_unique_across_processes_and_restarts(
        fresh_store_url: str) -> None:
    """Ids come from the store in blocks (``record_ids``): three processes drawing more than
    a block each at once never share an id, each process's ids increase, and a process
    started after them gets only ids above theirs (unused ids of a block are never reused)."""
    assert create_tenant(fresh_store_url).account_id > 0  # the store exists, migrated
    draws = [subprocess.Popen([sys.executable, "-c", _DRAW_IDS, fresh_store_url, "150"],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    drawn = []
    for process in draws:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        ids = [int(i) for i in out.split()]
        assert len(ids) == 150 and ids == sorted(ids)
        drawn += ids
    assert len(set(drawn)) == 450 and min(drawn) > 0 and max(drawn) <= 2**53
    later = subprocess.run([sys.executable, "-c", _DRAW_IDS, fresh_store_url, "2"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert min(int(i) for i in later.stdout.split()) > max(drawn)
