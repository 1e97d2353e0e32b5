"""Call records: reported by the switch, joined, stored once, delivered signed and durably."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pns.client import verify_callback
from pns.model import Role

from .conftest import Server, Tenant, cli, create_tenant, free_port, unique_hk

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


def test_sigkill_before_first_attempt(store_url: str) -> None:
    """Records enqueued while the receiver is reachable but the server dies at once are
    delivered by the restarted server."""
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
