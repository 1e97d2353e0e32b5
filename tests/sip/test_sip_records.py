"""Call records end to end: Kamailio (deploy/kamailio/kamailio.cfg) reports every finished call
that pns gave a callee to (`reportCall`), pns joins it with its query and binding, stores it and
pushes it, signed, to the customer's callback URL, here a receiver in the test process.

Each call is placed with sipp through the switch against the real `pns serve`; the record the
receiver gets is checked field by field against what the callee received (X-PNS-Call-Id) and
the call's course (who hung up, how it failed). pns's own request counter
(`pns_requests_total{action="reportCall"}`) proves the switch sent one report per call, not
one per message, and none for a call pns refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pns.client import PnsClient, verify_callback

from .conftest import PnsServer, Switch, _account, _pns, _start_switch
from .sipkit import HOST, free_port, tail
from .stub_pns import Answer, Recorded
from .test_sip_switch import assert_ok, finals, invites

RECORD_NUMBERS = [f"8523556{i:04d}" for i in range(1, 5)]  # X numbers of the records customer
REPORT_FIELDS = {"callId", "startAt", "ringAt", "answerAt", "hangupAt", "hangupCause",
                 "hangupCode", "hangup", "recordFile", "did", "caller"}


class Receiver:
    """The customer's callback endpoint: keeps every POST it gets (headers, raw body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port(socket.SOCK_STREAM)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/cdr"

    def records_of(self, call_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in list(self.received) if json.loads(b).get("callId") == call_id]

    def wait_for(self, call_id: str, timeout: float = 15.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while not self.records_of(call_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = self.records_of(call_id)
        assert got, f"no call record for {call_id} within {timeout} s"
        return got[0]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Records:
    customer: PnsClient
    secret: str
    receiver: Receiver
    metrics_url: str

    def bind(self, a: str, b: str) -> dict[str, Any]:
        env = self.customer.call("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": 120})
        assert env["code"] == 0, env
        return env["data"]  # type: ignore[no-any-return]

    def reports_sent(self) -> int:
        """reportCall requests pns has answered so far, whatever their code."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return int(sum(float(v) for v in re.findall(
            r'^pns_requests_total\{action="reportCall",code="[^"]*"\} (\S+)$', text, re.M)))

    def record(self, call_id: str, settle: float = 2.0) -> dict[str, Any]:
        """The one record of `call_id`, once it has arrived and `settle` s passed without a
        second one; its signature is checked."""
        headers, body = self.receiver.wait_for(call_id)
        time.sleep(settle)
        assert len(self.receiver.records_of(call_id)) == 1, "a call record arrived twice"
        assert headers.get("X-PNS-Event-Kind") == "callRecord"
        assert verify_callback(body, headers["X-PNS-Signature"], self.secret)
        return json.loads(body)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def records(pns_server: PnsServer) -> Iterator[Records]:
    """A customer of its own (its X numbers, a callback URL to a receiver in this process)."""
    receiver = Receiver()
    acc = _account(pns_server.store, "sip-records-customer", "customer")
    _pns("numbers", "add", "--account", acc["accessKey"], *RECORD_NUMBERS,
         "--store", pns_server.store)
    _pns("account", "set", acc["accessKey"], "--callback-url", receiver.url,
         "--store", pns_server.store)
    try:
        yield Records(PnsClient(pns_server.base_url, acc["accessKey"], acc["accessSecret"]),
                      acc["accessSecret"], receiver, f"{pns_server.base_url}/metrics")
    finally:
        receiver.stop()


def _call_id(callee: Any) -> str:
    [inv] = invites(callee)
    call_id = inv.header("X-PNS-Call-Id") or ""
    assert re.fullmatch(r"\d{19}", call_id), inv.text
    return call_id


def _check_times(rec: dict[str, Any], began: float, ended: float) -> None:
    """startAt <= ringAt <= answerAt <= hangupAt (0 for what did not happen), all within the
    test's own clock window."""
    lo, hi = int(began), int(ended) + 1
    assert lo <= rec["startAt"] <= hi, rec
    assert lo <= rec["hangupAt"] <= hi, rec
    steps = [rec["startAt"]] + [rec[k] for k in ("ringAt", "answerAt") if rec[k]]
    steps.append(rec["hangupAt"])
    assert steps == sorted(steps), rec


# ---------------------------------------------------------------------------------------------
# answered calls


def test_answered_call_hung_up_by_the_caller(pns_server: PnsServer, switch: Switch,
                                             records: Records) -> None:
    a, b, _ = pns_server.parties()
    bound = records.bind(a, b)
    x = str(bound["did"])
    sent_before = records.reports_sent()
    began = time.time()
    caller, callee = switch.calls([(a, x)], arriving=1, pause_ms=1100)
    ended = time.time()
    assert_ok(caller)
    assert_ok(callee)
    call_id = _call_id(callee)

    rec = records.record(call_id)
    assert (rec["callId"], rec["caller"], rec["callee"], rec["did"]) == (call_id, a, b, x)
    assert rec["bindId"] == bound["bindId"]
    assert rec["callStatus"] == 1, rec
    assert rec["hangupCause"] == "NORMAL_CLEARING" and rec["hangupCode"] == 16
    assert rec["hangup"] == 0, "the caller hung up"
    assert rec["ringAt"] > 0 and rec["answerAt"] > 0
    assert rec["duration"] == rec["hangupAt"] - rec["answerAt"] >= 1, rec
    assert rec["recordFile"] == ""
    _check_times(rec, began, ended)
    assert records.reports_sent() - sent_before == 1, "one report per call"

    # the customer lists it
    listed = records.customer.call_records(bindId=bound["bindId"])
    assert listed["code"] == 0, listed
    assert listed["data"]["total"] == 1
    [stored] = listed["data"]["records"]
    assert stored["callId"] == call_id and stored["id"] == rec["id"]
    assert stored["hangupCause"] == "NORMAL_CLEARING"


def test_answered_call_hung_up_by_the_callee(pns_server: PnsServer, switch: Switch,
                                             records: Records) -> None:
    a, b, _ = pns_server.parties()
    bound = records.bind(a, b)
    x = str(bound["did"])
    began = time.time()
    caller, callee = switch.calls([(b, x)], uac="uac_wait_bye.xml", uas="uas_bye.xml",
                                  arriving=1, pause_ms=1100)
    ended = time.time()
    assert_ok(caller)
    assert_ok(callee)
    call_id = _call_id(callee)

    rec = records.record(call_id)
    assert (rec["caller"], rec["callee"], rec["did"]) == (b, a, x)
    assert rec["callStatus"] == 1 and rec["duration"] >= 1, rec
    assert rec["hangupCause"] == "NORMAL_CLEARING" and rec["hangupCode"] == 16
    assert rec["hangup"] == 1, "the callee hung up"
    _check_times(rec, began, ended)


# ---------------------------------------------------------------------------------------------
# calls never answered


def test_busy_callee(pns_server: PnsServer, switch: Switch, records: Records) -> None:
    a, b, _ = pns_server.parties()
    bound = records.bind(a, b)
    x = str(bound["did"])
    sent_before = records.reports_sent()
    began = time.time()
    caller, callee = switch.calls([(a, x)], uac="uac_unanswered.xml", uas="uas_busy.xml",
                                  arriving=1)
    ended = time.time()
    assert_ok(caller)
    assert_ok(callee)
    assert [m.status for m in finals(caller)] == [486]
    call_id = _call_id(callee)

    rec = records.record(call_id)
    assert (rec["callId"], rec["caller"], rec["callee"], rec["did"]) == (call_id, a, b, x)
    assert rec["callStatus"] == 2, rec
    assert rec["answerAt"] == 0 and rec["duration"] == 0
    assert rec["ringAt"] > 0, "the callee rang first"
    assert rec["hangupCause"] == "USER_BUSY" and rec["hangupCode"] == 17
    assert rec["hangup"] == 1
    _check_times(rec, began, ended)
    assert records.reports_sent() - sent_before == 1, "one report per call"
    assert records.customer.call_records(bindId=bound["bindId"])["data"]["total"] == 1


def test_callee_never_answers(pns_server: PnsServer, switch: Switch, records: Records) -> None:
    """The switch's own timer ends the call (408, no reply from the callee at all)."""
    a, b, _ = pns_server.parties()
    x = str(records.bind(a, b)["did"])
    began = time.time()
    caller, callee = switch.calls([(a, x)], uac="uac_unanswered.xml", uas="uas_silent.xml",
                                  arriving=1)
    ended = time.time()
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [408]
    call_id = _call_id(callee)

    rec = records.record(call_id, settle=1.0)
    assert rec["callStatus"] == 2 and rec["ringAt"] == 0 and rec["answerAt"] == 0, rec
    assert rec["hangupCause"] == "NO_ANSWER" and rec["hangupCode"] == 19
    assert rec["hangup"] == 1
    _check_times(rec, began, ended)


def test_caller_cancels_while_ringing(pns_server: PnsServer, switch: Switch,
                                      records: Records) -> None:
    a, b, _ = pns_server.parties()
    x = str(records.bind(a, b)["did"])
    began = time.time()
    caller, callee = switch.calls([(a, x)], uac="uac_cancel_ringing.xml", uas="uas_ringing.xml",
                                  arriving=1, pause_ms=1100)
    ended = time.time()
    assert_ok(caller)
    assert_ok(callee)
    assert [m.status for m in finals(caller) if "INVITE" in (m.header("CSeq") or "")] == [487]
    call_id = _call_id(callee)

    rec = records.record(call_id)
    assert rec["callStatus"] == 2 and rec["answerAt"] == 0, rec
    assert rec["hangupCause"] == "ORIGINATOR_CANCEL" and rec["hangupCode"] == 487
    assert rec["hangup"] == 0, "the caller gave up"
    assert rec["ringAt"] > 0 and rec["hangupAt"] - rec["ringAt"] >= 1, rec
    _check_times(rec, began, ended)


def test_a_call_pns_refused_is_not_reported(pns_server: PnsServer, switch: Switch,
                                            records: Records) -> None:
    a, b, stranger = pns_server.parties()
    x = str(records.bind(a, b)["did"])
    sent_before = records.reports_sent()
    caller, callee = switch.calls([(stranger, x)], uac="uac_reject.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [404]
    assert invites(callee) == []
    time.sleep(1.5)
    assert records.reports_sent() == sent_before, "a call without a callId was reported"


# ---------------------------------------------------------------------------------------------
# the report on the wire, and a report pns does not take (stand-in API)


def _reports(stub_switch: Switch, before: int, want: int) -> list[Recorded]:
    """The reportCall requests the stand-in got since request number `before` (waits for `want`
    of them, then a moment for any extra one)."""
    stub = stub_switch.stub
    assert stub is not None

    def got() -> list[Recorded]:
        return [r for r in stub.requests[before:] if r.headers.get("action") == "reportCall"]

    deadline = time.monotonic() + 10
    while len(got()) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return got()


def _answer(callee: str, call_id: str, delay: float = 0.0) -> Answer:
    return Answer(envelope={"code": 0, "msg": "success", "requestId": "1" * 19,
                            "data": {"callee": callee, "callId": call_id, "flag": 0,
                                     "bindType": 0}}, delay=delay)


def test_report_is_signed_and_a_refused_one_is_logged(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    did, caller_no, callee_no, call_id = "85235554601", "85251114601", "85262224601", "3" * 19
    stub.answers[did] = _answer(callee_no, call_id)
    before = len(stub.requests)
    # answered at once, no 180: ringAt is 0
    caller, callee = stub_switch.calls([(caller_no, did)], uac="uac_load.xml",
                                       uas="uas_load.xml", arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    [report] = _reports(stub_switch, before, 1)
    h = report.headers
    assert h["action"] == "reportCall" and h["biztype"] == "5"
    assert h["accesskey"] == stub.access_key
    assert h["content-type"] == "application/json"
    assert re.fullmatch(r"\d{13}", h["ts"]) and abs(report.ts_skew_ms) < 2000, h
    signed = (f"accessKey={stub.access_key}&action=reportCall&bizType=5&ts={h['ts']}&body="
              .encode() + report.body + f"&accessSecret={stub.access_secret}".encode())
    assert h["sign"] == hashlib.md5(signed).hexdigest()
    body = json.loads(report.body)
    assert set(body) == REPORT_FIELDS, body
    assert (body["callId"], body["did"], body["caller"]) == (call_id, did, caller_no)
    assert (body["hangupCause"], body["hangupCode"], body["hangup"]) == ("NORMAL_CLEARING", 16, 0)
    assert body["recordFile"] == ""
    assert all(isinstance(body[k], int) for k in ("startAt", "ringAt", "answerAt", "hangupAt"))
    assert body["ringAt"] == 0 and body["startAt"] <= body["answerAt"] <= body["hangupAt"], body

    assert report.sign_ok
    assert "kept for retry" not in stub_switch.kamailio.log.read_text(errors="replace")


def _log_lines(switch: Switch, text: str, timeout: float = 15.0) -> list[str]:
    """The lines of the switch's log holding `text` (waits up to `timeout` for one)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in switch.kamailio.log.read_text(errors="replace").splitlines()
                 if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _reports_of(stub_switch: Switch, call_id: str) -> list[Recorded]:
    assert stub_switch.stub is not None
    return [r for r in list(stub_switch.stub.requests) if r.headers.get("action") == "reportCall"
            and json.loads(r.body).get("callId") == call_id]


def test_a_report_not_taken_is_retried_until_it_is(stub_switch: Switch) -> None:
    """pns answers the report with HTTP 500, then not JSON, then code 10009, then too slowly
    (PNS_TIMEOUT 1 s): the switch keeps it and sends the same report again, freshly signed,
    until pns takes it (code 0), and then never again."""
    stub = stub_switch.stub
    assert stub is not None
    did, caller_no, call_id = "85235554603", "85251114603", "5" * 19
    stub.answers[did] = _answer("85262224603", call_id)
    stub.report_answers[call_id] = [
        Answer(status=500, raw=b"Internal Server Error"),
        Answer(raw=b"<html>not json</html>"),
        Answer(envelope={"code": 10009, "msg": "service failure", "requestId": "1" * 19}),
        Answer(envelope={"code": 0, "msg": "success", "requestId": "1" * 19}, delay=2.5),
    ]
    caller, callee = stub_switch.calls([(caller_no, did)], uac="uac_load.xml",
                                       uas="uas_load.xml", arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    taken = _log_lines(stub_switch, f"PNS report of call {call_id} taken after", timeout=30)
    assert taken, tail(stub_switch.kamailio.log)
    assert "taken after 5 tries" in taken[-1], taken[-1]
    time.sleep(3)  # longer than the longest retry gap (2 s): nothing is sent after code 0
    reports = _reports_of(stub_switch, call_id)
    assert len(reports) == 5, [r.body for r in reports]
    assert stub.report_answers[call_id] == []
    assert len({r.body for r in reports}) == 1, "every attempt carries the same report"
    assert all(r.sign_ok and abs(r.ts_skew_ms) < 2000 for r in reports), "signed afresh"
    assert len({r.headers["ts"] for r in reports}) == 5
    [kept] = _log_lines(stub_switch, f"PNS report of call {call_id} not taken")
    assert "status 500" in kept and "kept for retry" in kept, kept
    assert caller_no not in "".join(_log_lines(stub_switch, call_id))


def test_a_report_refused_until_the_deadline_is_lost_and_logged(stub_switch: Switch) -> None:
    """pns refuses the report (1005) every time: the switch retries it for
    REPORT_RETRY_SECONDS (10 s here), then logs it as lost, without the caller's real number,
    and stops."""
    stub = stub_switch.stub
    assert stub is not None
    did, caller_no, callee_no, call_id = "85235554604", "85251114604", "85262224604", "6" * 19
    stub.answers[did] = _answer(callee_no, call_id)
    refused = {"code": 1005, "msg": "account", "requestId": "1" * 19}
    stub.report_answers[call_id] = [Answer(envelope=refused) for _ in range(50)]
    caller, callee = stub_switch.calls([(caller_no, did)], uac="uac_load.xml",
                                       uas="uas_load.xml", arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    lost = _log_lines(stub_switch, "PNS report lost", timeout=30)
    lost = [line for line in lost if call_id in line]
    assert len(lost) == 1, tail(stub_switch.kamailio.log)
    assert "code 1005" in lost[0] and "tried" in lost[0], lost[0]
    attempts = len(_reports_of(stub_switch, call_id))
    assert attempts >= 3, "retried, with backoff, until the deadline"
    time.sleep(3)
    assert len(_reports_of(stub_switch, call_id)) == attempts, "nothing sent after it was lost"
    log = stub_switch.kamailio.log.read_text(errors="replace")
    assert caller_no not in log and callee_no not in log


def test_many_reports_kept_at_once_are_all_taken_once(stub_switch: Switch) -> None:
    """250 calls whose reports pns refuses once each (HTTP 503): the timer sends them again, at
    most 200 a round, until every one is taken, and none twice after it was."""
    stub = stub_switch.stub
    assert stub is not None
    rows, call_ids = [], []
    for i in range(250):
        did, call_id = f"852355490{i:03d}", f"7{i:018d}"
        stub.answers[did] = _answer(f"852622249{i:03d}", call_id)
        stub.report_answers[call_id] = [Answer(status=503, raw=b"busy")]
        rows.append((f"852511149{i:03d}", did))
        call_ids.append(call_id)
    caller, callee = stub_switch.calls(rows, uac="uac_load.xml", uas="uas_load.xml",
                                       arriving=len(rows), rate=100, limit=50, pause_ms=0,
                                       timeout=60)
    assert_ok(caller)
    assert_ok(callee)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        taken = len(_log_lines(stub_switch, "taken after 2 tries", timeout=0))
        if taken >= len(rows):
            break
        time.sleep(0.5)
    time.sleep(3)
    sent = {cid: 0 for cid in call_ids}
    for r in list(stub.requests):
        if r.headers.get("action") == "reportCall":
            cid = json.loads(r.body).get("callId")
            if cid in sent:
                sent[cid] += 1
    assert sorted(set(sent.values())) == [2], "each report: refused once, then taken once"
    for cid in call_ids:
        assert _log_lines(stub_switch, f"PNS report of call {cid} taken after 2 tries",
                          timeout=0), cid


def test_the_retry_queue_is_bounded(stub_switch: Switch, tmp_path: Path) -> None:
    """With REPORT_QUEUE_MAX reports waiting, the next report pns does not take is logged as
    lost at once instead of growing the switch's shared memory."""
    stub = stub_switch.stub
    assert stub is not None
    sw = _start_switch(tmp_path, stub_switch.kamailio.settings["PNS_URL"], stub.access_key,
                       stub.access_secret, timeout=1, ivr=False,
                       extra={"REPORT_QUEUE_MAX": "1", "REPORT_RETRY_FIRST": "30"})
    try:
        refused = {"code": 10009, "msg": "service failure", "requestId": "1" * 19}
        rows = []
        for i, call_id in enumerate(("8" * 19, "9" * 19)):
            did = f"8523555480{i}"
            stub.answers[did] = _answer(f"8526222480{i}", call_id)
            stub.report_answers[call_id] = [Answer(envelope=refused) for _ in range(5)]
            rows.append((f"8525111480{i}", did))
        caller, callee = sw.calls(rows, uac="uac_load.xml", uas="uas_load.xml", arriving=2,
                                  rate=1)
        assert_ok(caller)
        assert_ok(callee)
        kept = _log_lines(sw, "kept for retry")
        lost = _log_lines(sw, "PNS report lost")
        assert len(kept) == 1 and "8" * 19 in kept[0], kept
        assert len(lost) == 1 and "9" * 19 in lost[0], lost
        assert "REPORT_QUEUE_MAX" in lost[0] and "code 10009" in lost[0], lost[0]
    finally:
        sw.kamailio.stop()


def test_cancel_while_pns_is_asked_is_reported(stub_switch: Switch) -> None:
    """pns gave a callee and a callId, but the caller had cancelled meanwhile: the callee is
    never called, and the report says the caller gave up."""
    stub = stub_switch.stub
    assert stub is not None
    did, call_id = "85235554602", "4" * 19
    stub.answers[did] = _answer("85262224602", call_id, delay=0.6)
    before = len(stub.requests)
    caller, callee = stub_switch.calls([("85251114602", did)], uac="uac_cancel.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [487]
    assert invites(callee) == []
    [report] = _reports(stub_switch, before, 1)
    body = json.loads(report.body)
    assert body["callId"] == call_id
    assert (body["hangupCause"], body["hangupCode"], body["hangup"]) == (
        "ORIGINATOR_CANCEL", 487, 0)
    assert body["ringAt"] == 0 and body["answerAt"] == 0
    assert body["startAt"] <= body["hangupAt"]
