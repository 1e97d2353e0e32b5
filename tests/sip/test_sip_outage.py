"""A call that ends while pns is down is reported once pns is back.

pns answers the call's query, then stops (SIGTERM) while the call is up; the call ends, the
switch's report is refused (connection refused), and the switch keeps it. pns starts again on the
same port and store: the retry timer sends the report, and the call is in `getCallRecords`
exactly once, with exactly one signed callback to the customer, although the switch sent the
report more than once.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pns.client import PnsClient, verify_callback

from .conftest import Switch, _account, _pns, _start_switch, start_pns
from .sipkit import HOST, SippRun, free_port, stop_process, tail
from .test_sip_records import Receiver
from .test_sip_switch import assert_ok, invites

X_NUMBERS = ["85235557001", "85235557002"]


def _answered(base_url: str, action: str) -> int:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(v) for v in re.findall(
        rf'^pns_requests_total\{{action="{action}",code="[^"]*"\}} (\S+)$', text, re.M)))


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s:\n{tail(log)}"
        time.sleep(0.1)


def test_a_call_that_ends_while_pns_is_down_is_reported_once_pns_is_back(
        sip_binaries: dict[str, str], tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'pns.db'}"
    receiver = Receiver()
    _pns("migrate", "--store", store)  # only serve and migrate create a store
    customer = _account(store, "outage-customer", "customer")
    switch_acc = _account(store, "outage-switch", "switch")
    _pns("numbers", "add", "--account", customer["accessKey"], *X_NUMBERS, "--store", store)
    _pns("account", "set", customer["accessKey"], "--callback-url", receiver.url,
         "--store", store)
    port = free_port(socket.SOCK_STREAM)
    base = f"http://{HOST}:{port}"
    pns_log = tmp_path / "pns.log"
    server = start_pns(store, port, pns_log)
    sw: Switch | None = None
    try:
        sw = _start_switch(tmp_path / "switch", f"{base}/api/pns/", switch_acc["accessKey"],
                           switch_acc["accessSecret"], timeout=1, ivr=False,
                           extra={"SIP_TRUSTED": HOST, "REPORT_RETRY_FIRST": "1",
                                  "REPORT_RETRY_MAX_GAP": "2"})
        client = PnsClient(base, customer["accessKey"], customer["accessSecret"])
        bound = client.call("bindAXB", {"phoneA": "85251117001", "phoneB": "85262227001",
                                        "expireSecond": 600})
        assert bound["code"] == 0, bound
        x = str(bound["data"]["did"])

        runs: list[tuple[SippRun, SippRun | None]] = []
        call = threading.Thread(target=lambda: runs.append(sw.calls(
            [("85251117001", x)], uac="uac_load.xml", uas="uas_load.xml", arriving=1,
            pause_ms=4000)))
        call.start()
        # pns answered the query (the call is connected), then goes away while the call is up
        _wait("the query", lambda: _answered(base, "queryAXB") == 1, 10, sw.kamailio.log)
        stop_process(server)
        assert server.returncode is not None
        call.join(30)
        [(caller, callee)] = runs
        assert_ok(caller)
        assert_ok(callee)
        [inv] = invites(callee)
        call_id = inv.header("X-PNS-Call-Id") or ""
        assert re.fullmatch(r"\d{19}", call_id), inv.text

        kept = f"PNS report of call {call_id} not taken"
        _wait("the report kept", lambda: kept in sw.kamailio.log.read_text(errors="replace"),
              10, sw.kamailio.log)
        time.sleep(2.5)  # retries meanwhile fail too (pns is still down)
        assert receiver.records_of(call_id) == []

        server = start_pns(store, port, pns_log)  # the same port and store
        taken = f"PNS report of call {call_id} taken after"
        _wait("the report taken", lambda: taken in sw.kamailio.log.read_text(errors="replace"),
              20, sw.kamailio.log)
        headers, body = receiver.wait_for(call_id)
        time.sleep(3)  # any second report or callback would arrive meanwhile
        assert len(receiver.records_of(call_id)) == 1, "one callback"
        assert verify_callback(body, headers["X-PNS-Signature"], customer["accessSecret"])
        listed = client.call_records(bindId=bound["data"]["bindId"])
        assert listed["code"] == 0, listed
        assert listed["data"]["total"] == 1, listed
        [record] = listed["data"]["records"]
        assert record["callId"] == call_id
        assert (record["caller"], record["callee"], record["did"]) == (
            "85251117001", "85262227001", x)
        assert record["hangupCause"] == "NORMAL_CLEARING" and record["answerAt"] > 0
        log = sw.kamailio.log.read_text(errors="replace")
        tries = int(re.search(rf"{taken} (\d+) tries", log).group(1))  # type: ignore[union-attr]
        assert tries >= 3, "the report was refused while pns was down"
        assert "PNS report lost" not in log
    finally:
        if sw is not None:
            sw.kamailio.stop()
        stop_process(server)
        receiver.stop()
