"""The optional fields of a queryAXB success answer, as the shipped Kamailio config applies them
(stand-in API, real SIP calls with sipp):

- `display`: the number the callee is shown, as From user and display name, instead of X;
  without it (or when it is not a number) X is shown as before;
- `maxDuration`: the switch ends an answered call that long after the answer, with a BYE to
  each side in the identities that side knows, and reports it as ALLOTTED_TIMEOUT (602);
  (DIALOG_TIMEOUT ends a call without one the same way, as RECOVERY_ON_TIMER_EXPIRE);
- `calleeDtmf` + `calleeDtmfDelay`: handed to the callee's gateway in an X-PNS-Callee-Dtmf
  header, for the media side to key in after the answer; absent when the answer has none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .conftest import Switch, _start_switch
from .sipkit import display_of, user_of
from .test_sip_switch import assert_no_trace, assert_ok, invites, received


def _stub(stub_switch: Switch) -> Any:
    assert stub_switch.stub is not None
    return stub_switch.stub


def _report(stub_switch: Switch, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one reportCall the stand-in got for `call_id` (waits for it)."""
    stub = _stub(stub_switch)
    deadline = time.monotonic() + timeout
    while True:
        bodies = [json.loads(r.body) for r in list(stub.requests)
                  if r.headers.get("action") == "reportCall"]
        mine = [b for b in bodies if b.get("callId") == call_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # and no second one
    mine = [json.loads(r.body) for r in list(stub.requests)
            if r.headers.get("action") == "reportCall" and json.loads(r.body)["callId"] == call_id]
    assert len(mine) == 1, mine
    return mine[0]  # type: ignore[no-any-return]


def test_the_callee_is_shown_display_not_x_nor_the_caller(stub_switch: Switch) -> None:
    did, display = "85235554801", "85235557801"
    a, b, call_id = "85251114801", "85262224801", "48" * 9 + "1"
    _stub(stub_switch).connect(did, b, call_id, display=display)
    caller, callee = stub_switch.calls([(a, did)], arriving=1)
    assert_ok(caller)
    assert_ok(callee)

    [inv] = invites(callee)
    assert user_of(inv.ruri) == b and user_of(inv.header("To") or "") == b
    from_ = inv.header("From") or ""
    assert user_of(from_) == display and display_of(from_) == display, from_
    # the caller hangs up: its BYE (and re-INVITE) reach B from the display number too
    for msg in received(callee):
        if msg.is_request:
            assert user_of(msg.header("From") or "") == display, msg.text
    assert_no_trace(callee, [a, did], "callee B")
    # the caller still sees X answering (display is for the callee only), and never B
    ok = [m for m in received(caller) if m.status == 200 and "INVITE" in (m.header("CSeq") or "")]
    assert ok and user_of(ok[0].header("To") or "") == did
    assert_no_trace(caller, [b], "caller A")
    assert _report(stub_switch, call_id)["did"] == did  # the record is of the number dialled


def test_without_display_or_with_a_bad_one_x_is_shown(stub_switch: Switch) -> None:
    stub = _stub(stub_switch)
    cases = {  # did -> display in the answer (None: no such field)
        "85235554811": None,
        "85235554812": "",
        "85235554813": "8523<sip:evil@example.com>",
        "85235554814": "85235557814\r\nX-Evil: 1",
    }
    rows = []
    for i, (did, display) in enumerate(cases.items()):
        extra = {} if display is None else {"display": display}
        stub.connect(did, f"8526222481{i}", f"{'49' * 9}{i}", **extra)
        rows.append((f"8525111481{i}", did))
    caller, callee = stub_switch.calls(rows, arriving=len(rows), rate=20, limit=4)
    assert_ok(caller)
    assert_ok(callee)
    got = invites(callee)
    assert len(got) == len(cases)
    for inv in got:
        from_ = inv.header("From") or ""
        assert user_of(from_) in cases and display_of(from_) == user_of(from_), inv.text
        assert "evil" not in inv.text.lower() and inv.header("X-Evil") is None, inv.text


def test_a_call_is_ended_at_max_duration_and_reported_allotted_timeout(
        stub_switch: Switch) -> None:
    did, display = "85235554821", "85235557821"
    a, b, call_id = "85251114821", "85262224821", "52" * 9 + "1"
    _stub(stub_switch).connect(did, b, call_id, maxDuration=2, display=display)
    # neither party hangs up: both wait for a BYE, which only the switch can send
    caller, callee = stub_switch.calls([(a, did)], uac="uac_wait_bye.xml", uas="uas_load.xml",
                                       arriving=1)
    assert_ok(caller)
    assert_ok(callee)
    [to_caller] = [m for m in received(caller) if m.method == "BYE"]
    [to_callee] = [m for m in received(callee) if m.method == "BYE"]
    # each BYE is in the identities that side knows: X towards the caller, display to the callee
    assert user_of(to_caller.header("From") or "") == did, to_caller.text
    assert user_of(to_caller.header("To") or "") == a, to_caller.text
    assert user_of(to_callee.header("From") or "") == display, to_callee.text
    assert user_of(to_callee.header("To") or "") == b, to_callee.text
    [inv] = invites(callee)
    assert to_callee.call_id == inv.call_id  # the masked Call-ID the callee knows
    assert_no_trace(callee, [a, did], "callee B")
    assert_no_trace(caller, [b, display], "caller A")

    report = _report(stub_switch, call_id)
    assert (report["hangupCause"], report["hangupCode"], report["hangup"]) == (
        "ALLOTTED_TIMEOUT", 602, 1), report
    assert report["answerAt"] > 0
    # cut at the limit, long before the parties' own 10 s receive timeout (report times are
    # whole seconds and the dialog timer ticks once a second: 2 s may read 1 to 3)
    assert 1 <= report["hangupAt"] - report["answerAt"] <= 4, report


def test_a_re_invite_does_not_extend_max_duration(stub_switch: Switch) -> None:
    """The limit counts from the answer: a re-INVITE 3 s into a 4 s call does not restart it.
    Restarted, the call would end 6-7 s after the answer; it ends at 3-5 (whole seconds, and
    the dialog timer ticks once a second)."""
    did, a, b, call_id = "85235554825", "85251114825", "85262224825", "52" * 9 + "5"
    _stub(stub_switch).connect(did, b, call_id, maxDuration=4)
    caller, callee = stub_switch.calls([(a, did)], uac="uac_reinvite_wait_bye.xml",
                                       uas="uas.xml", arriving=1, pause_ms=3000)
    assert_ok(caller)
    assert_ok(callee)
    assert [m.method for m in received(callee) if m.method in ("INVITE", "BYE")] == [
        "INVITE", "INVITE", "BYE"]
    report = _report(stub_switch, call_id)
    assert report["hangupCause"] == "ALLOTTED_TIMEOUT", report
    assert 3 <= report["hangupAt"] - report["answerAt"] <= 5, report


def test_a_call_past_the_dialog_timeout_is_ended_in_each_sides_identities(
        stub_switch: Switch, tmp_path: Path) -> None:
    """Without maxDuration, DIALOG_TIMEOUT (12 h by default, 2 s here) ends an answered call the
    same way: a BYE to each side that holds nothing of the other, reported
    RECOVERY_ON_TIMER_EXPIRE (102)."""
    stub = _stub(stub_switch)
    did, a, b, call_id = "85235554861", "85251114861", "85262224861", "56" * 9 + "1"
    stub.connect(did, b, call_id)
    sw = _start_switch(tmp_path, stub_switch.kamailio.settings["PNS_URL"], stub.access_key,
                       stub.access_secret, timeout=1, ivr=False, extra={"DIALOG_TIMEOUT": "2"})
    try:
        caller, callee = sw.calls([(a, did)], uac="uac_wait_bye.xml", uas="uas_load.xml",
                                  arriving=1)
    finally:
        sw.kamailio.stop()
    assert_ok(caller)
    assert_ok(callee)
    [to_caller] = [m for m in received(caller) if m.method == "BYE"]
    [to_callee] = [m for m in received(callee) if m.method == "BYE"]
    assert user_of(to_caller.header("From") or "") == did, to_caller.text
    assert user_of(to_callee.header("From") or "") == did, to_callee.text
    assert user_of(to_callee.header("To") or "") == b, to_callee.text
    [inv] = invites(callee)
    assert to_callee.call_id == inv.call_id
    assert_no_trace(callee, [a], "callee B")
    assert_no_trace(caller, [b], "caller A")
    report = _report(stub_switch, call_id)
    assert (report["hangupCause"], report["hangupCode"], report["hangup"]) == (
        "RECOVERY_ON_TIMER_EXPIRE", 102, 1), report


def test_max_duration_zero_or_bad_sets_no_limit(stub_switch: Switch) -> None:
    """0 (no limit), a negative or an out-of-range value: the call lasts until a party hangs
    up, and is reported as a normal clearing."""
    stub = _stub(stub_switch)
    rows, ids = [], []
    for i, value in enumerate((0, -5, 90000, "x", None)):
        did, call_id = f"8523555483{i}", f"{'53' * 9}{i}"
        stub.connect(did, f"8526222483{i}", call_id, maxDuration=value)
        rows.append((f"8525111483{i}", did))
        ids.append(call_id)
    # the caller hangs up after 3 s of talk: longer than the 2 s of the test above
    caller, callee = stub_switch.calls(rows, uac="uac_load.xml", uas="uas_load.xml",
                                       arriving=len(rows), rate=20, limit=5, pause_ms=3000)
    assert_ok(caller)
    assert_ok(callee)
    for call_id in ids:
        report = _report(stub_switch, call_id)
        assert (report["hangupCause"], report["hangupCode"], report["hangup"]) == (
            "NORMAL_CLEARING", 16, 0), report


def test_the_callee_dtmf_goes_to_the_gateway_only_when_given(stub_switch: Switch) -> None:
    stub = _stub(stub_switch)
    cases = {  # did -> (answer fields, the header the gateway must get)
        "85235554841": ({"calleeDtmf": "1234", "calleeDtmfDelay": 3}, "1234;delay=3"),
        "85235554842": ({"calleeDtmf": "0#*9", "calleeDtmfDelay": "2"}, "0#*9;delay=2"),
        "85235554843": ({"calleeDtmf": "5678"}, "5678;delay=0"),
        "85235554844": ({}, None),
        "85235554845": ({"calleeDtmf": "", "calleeDtmfDelay": 2}, None),
        "85235554846": ({"calleeDtmf": None}, None),
        "85235554847": ({"calleeDtmf": "12\r\nX-Evil: 1"}, None),
        "85235554848": ({"calleeDtmf": "9", "calleeDtmfDelay": "soon"}, "9;delay=0"),
        "85235554849": ({"calleeDtmf": "8", "calleeDtmfDelay": 7200}, "8;delay=0"),
    }
    rows, callee_of = [], {}
    for i, (did, (fields, _)) in enumerate(cases.items()):
        b = f"8526222484{i}"
        stub.connect(did, b, f"{'54' * 9}{i}", **fields)
        rows.append((f"8525111484{i}", did))
        callee_of[b] = did
    caller, callee = stub_switch.calls(rows, arriving=len(rows), rate=20, limit=4)
    assert_ok(caller)
    assert_ok(callee)
    got = {callee_of[user_of(inv.ruri)]: inv for inv in invites(callee)}
    assert set(got) == set(cases)
    for did, (_, header) in cases.items():
        inv = got[did]
        assert inv.header("X-PNS-Callee-Dtmf") == header, inv.text
        assert inv.header("X-Evil") is None, inv.text


def test_a_callers_own_dtmf_header_never_reaches_the_callee(stub_switch: Switch) -> None:
    """The header is the switch's: one the caller put in its INVITE is removed (SANITIZE)."""
    did, b = "85235554851", "85262224851"
    _stub(stub_switch).connect(did, b, "55" * 9 + "1")
    caller, callee = stub_switch.calls([("85251114851", did)], uac="uac_dtmf_header.xml",
                                       uas="uas_load.xml", arriving=1)
    assert_ok(caller)
    assert_ok(callee)
    [inv] = invites(callee)
    assert inv.header("X-PNS-Callee-Dtmf") is None, inv.text
    assert inv.headers("X-PNS-Call-Id") == ["55" * 9 + "1"], inv.text
