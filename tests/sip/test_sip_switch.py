"""Calls through Kamailio (deploy/kamailio/kamailio.cfg) and the pns service, with sipp as the
parties: A calling X reaches B as X, B calling X reaches A, and neither ever sees the other's real
number; strangers, expired or unbound bindings get 404; a dead or slow API gives 503; extensions;
many calls in a row and at once.

The caller's INVITE carries its real number everywhere a phone may put it (From, Contact,
P-Asserted-Identity, Remote-Party-ID, SDP origin) and so do the callee's replies; the tests read
every message each side received (sipp -trace_msg) and fail if the other's number, in full or
without the country code, appears anywhere in it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from .conftest import AXB_PROMPTS, EXT_NUMBER, EXT_PROMPTS, PnsServer, Switch
from .sipkit import (
    HOST,
    KAMAILIO_CFG,
    KAMAILIO_HTTP_JS,
    Message,
    SippRun,
    display_of,
    free_port,
    require_binaries,
    sip_request,
    user_of,
)
from .stub_pns import Answer


def received(run: SippRun | None) -> list[Message]:
    """What `run` received, without retransmissions (a loaded machine makes some)."""
    assert run is not None
    seen: set[tuple[str, str, str]] = set()
    out = []
    for m in run.received():
        key = (m.call_id, m.header("CSeq") or "", m.first_line)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def invites(run: SippRun | None) -> list[Message]:
    """The initial INVITEs `run` received (re-INVITEs have a To tag)."""
    return [m for m in received(run)
            if m.method == "INVITE" and "tag=" not in (m.header("To") or "")]


def reinvites(run: SippRun | None) -> list[Message]:
    return [m for m in received(run)
            if m.method == "INVITE" and "tag=" in (m.header("To") or "")]


def finals(run: SippRun) -> list[Message]:
    return [m for m in received(run)
            if not m.is_request and m.status >= 200 and "INVITE" in (m.header("CSeq") or "")]


def assert_no_trace(run: SippRun | None, numbers: list[str], who: str) -> None:
    """No message `who` received holds any of `numbers`, in full or national form, nor the
    uac module's Record-Route storage parameters (vsf/vst: the number, XOR-encoded)."""
    assert run is not None
    received = run.received()
    assert received, f"{who} received nothing"
    for msg in received:
        for number in numbers:
            for form in (number, number[3:]):
                assert form not in msg.text, f"{who} received {number!r} ({form}):\n{msg.text}"
        for leak in (";vsf=", ";vst=", "P-Asserted-Identity", "Remote-Party-ID"):
            assert leak not in msg.text, f"{who} received {leak}:\n{msg.text}"


def assert_ok(run: SippRun | None) -> None:
    assert run is not None
    assert run.returncode == 0, run.explain()


# ---------------------------------------------------------------------------------------------
# installation and configuration


def test_binaries_installed() -> None:
    """Fails (not skips) with the fix when Kamailio or sipp is missing."""
    paths = require_binaries("kamailio", "sipp")
    assert set(paths) == {"kamailio", "sipp"}


def _config_check(**settings: str) -> subprocess.CompletedProcess[str]:
    """`kamailio -c` with the settings in the environment only."""
    binary = require_binaries("kamailio")["kamailio"]
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"), **settings}
    return subprocess.run([binary, "-c", "-f", str(KAMAILIO_CFG)], capture_output=True,
                          text=True, timeout=30, env=env)


def test_config_is_valid_with_all_modules() -> None:
    proc = _config_check(PNS_URL="http://127.0.0.1:9/api/pns/", PNS_ACCESS_KEY="k",
                         PNS_ACCESS_SECRET="s", SIP_GATEWAY="sip:127.0.0.1:5070",
                         SIP_LISTEN="udp:127.0.0.1:5060", SIP_IVR="sip:127.0.0.1:5080",
                         PNS_TIMEOUT="3", SIP_TRUSTED="127.0.0.1,10.0.0.0/8",
                         TOPOH_MASK_KEY="k2", PNS_HTTP_JS=str(KAMAILIO_HTTP_JS))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "config file ok" in out, out[-3000:]


def test_missing_setting_is_refused_by_name() -> None:
    proc = _config_check(PNS_URL="http://127.0.0.1:9/api/pns/", PNS_ACCESS_SECRET="s",
                         SIP_GATEWAY="sip:127.0.0.1:5070")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "MISSING SETTING: PNS_ACCESS_KEY" in out, out[-3000:]


def test_a_missing_http_script_stops_the_start_by_name(tmp_path: Path) -> None:
    """Without kamailio-http.js Kamailio exits at once, naming the file, instead of running
    with every query failing."""
    binary = require_binaries("kamailio")["kamailio"]
    missing = tmp_path / "no-such-kamailio-http.js"
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin"),
           "PNS_URL": "http://127.0.0.1:9/api/pns/", "PNS_ACCESS_KEY": "k",
           "PNS_ACCESS_SECRET": "s", "SIP_GATEWAY": "sip:127.0.0.1:5070",
           "SIP_LISTEN": f"udp:{HOST}:{free_port()}", "SIP_TRUSTED": HOST,
           "PNS_HTTP_JS": str(missing)}
    proc = subprocess.run([binary, "-DD", "-E", "-Y", str(tmp_path), "-f", str(KAMAILIO_CFG),
                           "-m", "64"], capture_output=True, text=True, timeout=30, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"failed to load js script file: {missing}" in out, out[-3000:]


# ---------------------------------------------------------------------------------------------
# bound calls through the real service


def test_a_calls_x_and_reaches_b_as_x(pns_server: PnsServer, switch: Switch) -> None:
    a, b, _ = pns_server.parties()
    x = str(pns_server.bind(a, b)["did"])
    caller, callee = switch.calls([(a, x)], arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    [inv] = invites(callee)
    assert user_of(inv.ruri) == b
    assert user_of(inv.header("To") or "") == b
    from_ = inv.header("From") or ""
    assert user_of(from_) == x and display_of(from_) == x, from_
    assert re.fullmatch(r"\d{19}", inv.header("X-PNS-Call-Id") or ""), inv.text
    assert inv.header("X-PNS-Record") == "0"
    # topology hidden: the caller's Call-ID and Contact do not reach the callee
    sent_invite = next(m for m in caller.sent() if m.method == "INVITE")
    assert inv.call_id != sent_invite.call_id
    # the caller's re-INVITE and BYE within the dialog still come from X
    [reinv] = reinvites(callee)
    assert user_of(reinv.header("From") or "") == x
    [bye] = [m for m in received(callee) if m.method == "BYE"]
    assert user_of(bye.header("From") or "") == x
    assert_no_trace(callee, [a], "callee B")

    # the caller sees X answering, never B
    ok = [m for m in finals(caller) if m.status == 200]
    assert ok and user_of(ok[0].header("To") or "") == x
    assert_no_trace(caller, [b], "caller A")


def test_b_calls_x_reaches_a_and_a_hangs_up(pns_server: PnsServer, switch: Switch) -> None:
    a, b, _ = pns_server.parties()
    x = str(pns_server.bind(a, b, flag=1)["did"])
    caller, callee = switch.calls([(b, x)], uac="uac_wait_bye.xml", uas="uas_bye.xml",
                                  arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    [inv] = invites(callee)
    assert user_of(inv.ruri) == a
    assert user_of(inv.header("From") or "") == x
    assert inv.header("X-PNS-Record") == "1"
    assert_no_trace(callee, [b], "callee A")

    # A's BYE went back through the switch and reached B as coming from X
    [bye] = [m for m in received(caller) if m.method == "BYE"]
    assert user_of(bye.header("From") or "") == x
    assert_no_trace(caller, [a], "caller B")


def test_stranger_gets_404_with_the_call_fail_prompt(pns_server: PnsServer,
                                                     switch: Switch) -> None:
    a, b, stranger = pns_server.parties()
    x = str(pns_server.bind(a, b)["did"])
    caller, callee = switch.calls([(stranger, x)], uac="uac_reject.xml")
    assert_ok(caller)
    [final] = finals(caller)
    assert final.status == 404
    assert final.header("X-PNS-Prompt") == AXB_PROMPTS["--audio-when-call-fail"]
    assert invites(callee) == []


def test_expired_binding_gets_404(pns_server: PnsServer, switch: Switch) -> None:
    a, b, _ = pns_server.parties()
    data = pns_server.bind(a, b, expire=2)
    x, expire_at = str(data["did"]), int(str(data["expireAt"]))
    caller, callee = switch.calls([(a, x)], arriving=1, pause_ms=50)
    assert_ok(caller)
    assert len(invites(callee)) == 1  # still active: connected

    time.sleep(max(0.0, expire_at - time.time()) + 0.3)
    caller, callee = switch.calls([(a, x)], uac="uac_reject.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [404]
    assert invites(callee) == []


def test_unbound_binding_gets_404(pns_server: PnsServer, switch: Switch) -> None:
    a, b, _ = pns_server.parties()
    data = pns_server.bind(a, b)
    env = pns_server.customer.call("unbindAXB", {"bindId": data["bindId"]})
    assert env["code"] == 0, env
    caller, callee = switch.calls([(b, str(data["did"]))], uac="uac_reject.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [404]
    assert invites(callee) == []


# ---------------------------------------------------------------------------------------------
# extensions


def _bind_extension(pns_server: PnsServer, a: str, extension: str) -> None:
    env = pns_server.ext_customer.call("bindAXBExtension", {
        "phoneA": a, "phoneX": EXT_NUMBER, "expireSecond": 120, "extension": extension})
    assert env["code"] == 0, env


@pytest.mark.parametrize("style", ["star", "param"])
def test_extension_reaches_a(pns_server: PnsServer, switch: Switch, style: str) -> None:
    a, _, stranger = pns_server.parties()
    ext = {"star": "417", "param": "418"}[style]
    _bind_extension(pns_server, a, ext)
    if style == "star":
        row, params = (stranger, f"{EXT_NUMBER}*{ext}"), ""
    else:
        row, params = (stranger, EXT_NUMBER), f";ext={ext}"
    caller, callee = switch.calls([row], uriparams=params, arriving=1)
    assert_ok(caller)
    assert_ok(callee)
    [inv] = invites(callee)
    assert user_of(inv.ruri) == a
    assert user_of(inv.header("From") or "") == EXT_NUMBER
    assert_no_trace(callee, [stranger], "callee A")
    assert_no_trace(caller, [a], "caller")


def test_wrong_extension_gets_404_with_the_dtmf_error_prompt(pns_server: PnsServer,
                                                             switch: Switch) -> None:
    a, _, stranger = pns_server.parties()
    _bind_extension(pns_server, a, "419")
    caller, callee = switch.calls([(stranger, f"{EXT_NUMBER}*998")], uac="uac_reject.xml")
    assert_ok(caller)
    [final] = finals(caller)
    assert final.status == 404
    assert final.header("X-PNS-Prompt") == EXT_PROMPTS["--audio-when-dtmf-err"]
    assert invites(callee) == []


def test_collect_digits_goes_to_the_ivr(pns_server: PnsServer, switch: Switch) -> None:
    a, _, stranger = pns_server.parties()
    _bind_extension(pns_server, a, "420")
    caller, ivr = switch.calls([(stranger, EXT_NUMBER)], at="ivr", arriving=1)
    assert_ok(caller)
    assert_ok(ivr)
    [inv] = invites(ivr)
    assert user_of(inv.ruri) == EXT_NUMBER
    assert inv.header("X-PNS-Prompt") == EXT_PROMPTS["--audio-when-dtmf-need"]


# ---------------------------------------------------------------------------------------------
# load: in a row and at once


def _bindings(pns_server: PnsServer, n: int) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """n bindings; rows calling X from each side; the expected X for each callee."""
    rows: list[tuple[str, str]] = []
    x_of_callee: dict[str, str] = {}
    for _ in range(n):
        a, b, _ = pns_server.parties()
        x = str(pns_server.bind(a, b)["did"])
        rows += [(a, x), (b, x)]
        x_of_callee[a] = x_of_callee[b] = x
    return rows, x_of_callee


def _check_routed(callee: SippRun | None, rows: list[tuple[str, str]],
                  x_of_callee: dict[str, str]) -> None:
    partner = {}
    for i in range(0, len(rows), 2):
        partner[rows[i][0]], partner[rows[i + 1][0]] = rows[i + 1][0], rows[i][0]
    expected = Counter(partner[caller] for caller, _ in rows)
    got = invites(callee)
    assert Counter(user_of(m.ruri) for m in got) == expected
    for inv in got:
        assert user_of(inv.header("From") or "") == x_of_callee[user_of(inv.ruri)]
    call_ids = [inv.header("X-PNS-Call-Id") for inv in got]
    assert len(set(call_ids)) == len(call_ids), "a callId was given twice"


def test_many_calls_in_a_row(pns_server: PnsServer, switch: Switch) -> None:
    rows, x_of_callee = _bindings(pns_server, 10)
    caller, callee = switch.calls(rows, rate=50, limit=1, pause_ms=0, arriving=len(rows))
    assert_ok(caller)
    assert_ok(callee)
    _check_routed(callee, rows, x_of_callee)


def test_concurrent_calls(pns_server: PnsServer, switch: Switch) -> None:
    rows, x_of_callee = _bindings(pns_server, 20)
    caller, callee = switch.calls(rows, rate=80, limit=40, pause_ms=800, arriving=len(rows))
    assert_ok(caller)
    assert_ok(callee)
    _check_routed(callee, rows, x_of_callee)
    # they really overlapped: at some moment more than 10 calls were up at the callee
    assert _peak_concurrency(callee) > 10


def _peak_concurrency(run: SippRun | None) -> int:
    assert run is not None
    text = run.stdout.read_text(errors="replace")
    peaks = [int(p) for p in re.findall(r"Peak was (\d+) calls", text)]
    return max(peaks, default=0)


# ---------------------------------------------------------------------------------------------
# failures: dead or slow API, the code mapping (stand-in API)


def test_pns_down_gives_503(down_switch: Switch) -> None:
    caller, callee = down_switch.calls([("85251119999", "85235550001")], uac="uac_reject.xml")
    assert_ok(caller)
    [final] = finals(caller)
    assert final.status == 503
    assert invites(callee) == []
    assert caller.duration < 2.5  # refused at once, not after the 3 s timeout


def _envelope(code: int, data: dict[str, object] | None = None) -> dict[str, object]:
    env: dict[str, object] = {"code": code, "msg": "m", "requestId": "1" * 19}
    if data is not None:
        env["data"] = data
    return env


def test_slow_pns_gives_503_after_the_timeout(stub_switch: Switch) -> None:
    assert stub_switch.stub is not None
    did = "85235554001"
    stub_switch.stub.answers[did] = Answer(
        envelope=_envelope(0, {"callee": "85262229999", "callId": "1" * 19, "flag": 0,
                               "bindType": 0}), delay=4.0)
    caller, callee = stub_switch.calls([("85251114001", did)], uac="uac_reject.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [503]
    assert invites(callee) == []
    assert 0.9 < caller.duration < 3.5  # PNS_TIMEOUT is 1 s here; the answer would take 4 s


MAPPING = [
    # (did, answer, SIP status, X-PNS-Prompt)
    ("85235554101", Answer(envelope=_envelope(10013, {"audioWhenCallFail": "f.wav",
                                                      "audioWhenDtmfErr": "e.wav"})), 404, "f.wav"),
    ("85235554102", Answer(envelope=_envelope(
        0, {"callee": "", "bindType": 4, "audioWhenDtmfNeed": "need.wav"})), 484, "need.wav"),
    ("85235554103", Answer(status=500, envelope=_envelope(10009)), 503, None),
    ("85235554104", Answer(raw=b"<html>bad gateway</html>"), 503, None),
    ("85235554105", Answer(envelope=_envelope(1003)), 500, None),
    ("85235554106", Answer(envelope=_envelope(1004)), 500, None),
    ("85235554107", Answer(envelope=_envelope(10009)), 503, None),
    ("85235554108", Answer(envelope=_envelope(10002)), 500, None),
    ("85235554109", Answer(envelope=_envelope(0, {"callee": "", "bindType": 0})), 500, None),
    ("85235554110", Answer(envelope=_envelope(10004, {"audioWhenCallFail": "cc.wav"})), 404,
     "cc.wav"),
    ("85235554111", Answer(envelope=_envelope(10023, {"audioWhenCallFail": "dir.wav"})), 403,
     "dir.wav"),
    ("85235554112", Answer(envelope=_envelope(10024, {"audioWhenCallFail": "blk.wav"})), 403,
     "blk.wav"),
    ("85235554113", Answer(envelope=_envelope(10010, {"audioWhenCallFail": "full.wav",
                                                      "audioWhenDtmfErr": "e.wav"})), 480,
     "full.wav"),
]


def test_pns_answers_map_to_sip_replies(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    for did, answer, _, _ in MAPPING:
        stub.answers[did] = answer
    rows = [("85251114100", did) for did, _, _, _ in MAPPING]
    caller, callee = stub_switch.calls(rows, uac="uac_reject.xml", rate=50)
    assert_ok(caller)
    sent = {m.call_id: user_of(m.ruri) for m in caller.sent() if m.method == "INVITE"}
    got = {sent[m.call_id]: m for m in finals(caller)}
    for did, _, status, prompt in MAPPING:
        assert did in got, f"no final reply for {did}"
        assert got[did].status == status, f"{did}: {got[did].text}"
        assert got[did].header("X-PNS-Prompt") == prompt, got[did].text
    assert invites(callee) == []


def test_answer_fields_as_strings_and_a_hostile_prompt(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    ok_did, bad_did = "85235554401", "85235554402"
    stub.answers[ok_did] = Answer(envelope={
        "code": "0", "msg": "success", "requestId": "1" * 19,
        "data": {"callee": "85262224401", "callId": "7" * 19, "flag": "1", "bindType": "0"}})
    stub.answers[bad_did] = Answer(envelope=_envelope(
        10013, {"audioWhenCallFail": "fail.wav\r\nX-Evil: 1"}))
    caller, callee = stub_switch.calls([("85251114401", ok_did)], arriving=1)
    assert_ok(caller)
    [inv] = invites(callee)
    assert user_of(inv.ruri) == "85262224401"
    assert inv.header("X-PNS-Record") == "1" and inv.header("X-PNS-Call-Id") == "7" * 19

    caller, _ = stub_switch.calls([("85251114402", bad_did)], uac="uac_reject.xml")
    assert_ok(caller)
    [final] = finals(caller)
    assert final.status == 404
    assert final.header("X-PNS-Prompt") == "fail.wavX-Evil: 1"
    assert final.header("X-Evil") is None


def test_queries_are_signed_and_carry_the_extension(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    did = "85235554201"
    stub.answers[did] = Answer(envelope=_envelope(10013, {"audioWhenDtmfErr": "bad-ext.wav"}))
    before = len(stub.requests)
    caller, _ = stub_switch.calls([("+85251114201", f"+{did}*123")], uac="uac_reject.xml")
    assert_ok(caller)
    [final] = finals(caller)
    assert final.status == 404
    assert final.header("X-PNS-Prompt") == "bad-ext.wav"  # the extension's error prompt
    [req] = stub.requests[before:]
    assert req.sign_ok, req
    assert re.fullmatch(r"\d{13}", req.headers["ts"]) and abs(req.ts_skew_ms) < 2000, req
    assert req.headers["action"] == "queryAXB" and req.headers["biztype"] == "5"
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.body) == {"caller": "+85251114201", "did": did, "extension": "123"}


def test_requests_to_pns_reuse_connections(stub_switch: Switch) -> None:
    """Queries and reports go over connections kept open (one per Kamailio process), not a new
    TCP connection per request; each request is still signed afresh."""
    stub = stub_switch.stub
    assert stub is not None
    rows = []
    for i in range(12):
        did = f"8523555430{i:02d}"
        stub.answers[did] = Answer(envelope=_envelope(0, {
            "callee": f"8526222430{i:02d}", "callId": f"{i + 1:019d}", "flag": 0,
            "bindType": 0}))
        rows.append((f"8525111430{i:02d}", did))
    before = len(stub.requests)
    caller, callee = stub_switch.calls(rows, uac="uac_load.xml", uas="uas_load.xml",
                                       arriving=len(rows), rate=20, limit=4, pause_ms=100)
    assert_ok(caller)
    assert_ok(callee)
    deadline = time.monotonic() + 10
    while len(stub.requests) - before < 2 * len(rows) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = stub.requests[before:]
    assert len(sent) == 2 * len(rows), "a query and a report per call"
    assert all(r.sign_ok for r in sent)
    connections = {r.peer for r in sent}
    # PNS_WORKERS 4 async workers (+ the retry timer): at most one connection each
    assert len(connections) <= 5, f"{len(connections)} connections for {len(sent)} requests"


def test_a_caller_with_json_characters_is_escaped(stub_switch: Switch) -> None:
    """A From user that is not plain digits and letters goes into the query through jansson,
    escaped: pns gets valid JSON with the caller as sent."""
    stub = stub_switch.stub
    assert stub is not None
    did = "85235554401"
    stub.answers[did] = Answer(envelope=_envelope(10013))
    before = len(stub.requests)
    caller, _ = stub_switch.calls([("it's&me$1", did)], uac="uac_reject.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [404]
    [req] = stub.requests[before:]
    assert req.sign_ok
    assert json.loads(req.body) == {"caller": "it's&me$1", "did": did}


def test_cancel_while_querying_ends_with_487(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    did = "85235554301"
    stub.answers[did] = Answer(envelope=_envelope(0, {"callee": "85262224301",
                                                      "callId": "2" * 19, "flag": 0,
                                                      "bindType": 0}), delay=0.6)
    caller, callee = stub_switch.calls([("85251114301", did)], uac="uac_cancel.xml")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [487]
    time.sleep(0.6)  # the answer came after the CANCEL: still nothing may reach the gateway
    assert invites(callee) == []


# ---------------------------------------------------------------------------------------------
# hand-made requests


def _invite(port: int, user: str, branch: str, call_id: str, tag: str) -> str:
    return (
        f"INVITE sip:{user}@{HOST}:{port} SIP/2.0\n"
        f"Via: SIP/2.0/UDP {HOST}:{{lport}};branch={branch}\n"
        f"From: <sip:85251115001@{HOST}:{{lport}}>;tag={tag}\n"
        f"To: <sip:{user}@{HOST}:{port}>\n"
        f"Call-ID: {call_id}\n"
        "CSeq: 1 INVITE\n"
        f"Contact: <sip:85251115001@{HOST}:{{lport}}>\n"
        "Max-Forwards: 70\n"
        "Content-Length: 0\n\n"
    )


def test_retransmitted_invite_is_queried_once(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    did = "85235555001"
    stub.answers[did] = Answer(envelope=_envelope(10013, {"audioWhenCallFail": "x.wav"}),
                               delay=0.4)
    before = len(stub.requests)
    branch, call_id, tag = f"z9hG4bK-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}@t", "t1"
    invite = _invite(stub_switch.port, did, branch, call_id, tag)
    replies: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        for _ in range(3):  # the INVITE and two retransmissions while the query runs
            replies += sip_request(stub_switch.port, invite, timeout=0.1, local=sock)
        replies += sip_request(stub_switch.port, invite, timeout=1.5, local=sock)
        final = next(r for r in replies if r.startswith("SIP/2.0 404"))
        to = re.search(r"^To: (.*)$", final, re.M)
        assert to is not None
        ack = (invite.replace("INVITE sip", "ACK sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
               .replace(f"To: <sip:{did}@{HOST}:{stub_switch.port}>", f"To: {to.group(1).strip()}"))
        sip_request(stub_switch.port, ack, timeout=0.05, local=sock, want_final=False)
    assert any(r.startswith("SIP/2.0 100") for r in replies)
    assert len(stub.requests) - before == 1, "a retransmission fired another query"


def test_requests_outside_the_service_are_refused(stub_switch: Switch) -> None:
    stub = stub_switch.stub
    assert stub is not None
    before = len(stub.requests)
    port = stub_switch.port
    # not a number: 404 without asking the API
    [r] = [x for x in sip_request(port, _invite(port, "alice", f"z9hG4bK-{uuid.uuid4().hex}",
                                                f"{uuid.uuid4().hex}@t", "t2"))
           if not x.startswith("SIP/2.0 1")]
    assert r.startswith("SIP/2.0 404")
    # other methods out of a dialog: 405
    msg = _invite(port, "85235550001", f"z9hG4bK-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}@t",
                  "t3").replace("INVITE", "MESSAGE")
    [r] = sip_request(port, msg)
    assert r.startswith("SIP/2.0 405")
    # a BYE for a dialog this proxy never made, routed through it: 481, not relayed
    bye = (_invite(port, "85235550001", f"z9hG4bK-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}@t",
                   "t4").replace("INVITE", "BYE")
           .replace(f"To: <sip:85235550001@{HOST}:{port}>",
                    f"To: <sip:85235550001@{HOST}:{port}>;tag=forged\n"
                    f"Route: <sip:{HOST}:{port};lr>"))
    [r] = sip_request(port, bye)
    assert r.startswith("SIP/2.0 481")
    assert len(stub.requests) == before
