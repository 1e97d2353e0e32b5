"""The optional fields of a queryAXB success answer, as the shipped Kamailio config applies them
(stand-in API, real SIP calls with sipp):

- `display`: the number the callee is shown, as From user and display name, instead of X;
  without it (or when it is not a number) X is shown as before;
- `calleeDtmf` + `calleeDtmfDelay`: handed to the callee's gateway in an X-PNS-Callee-Dtmf
  header, for the media side to key in after the answer; absent when the answer has none.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .conftest import Switch
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
