"""The binding modes' answer fields end to end: the real `pns serve`, Kamailio running the shipped
deploy/kamailio/kamailio.cfg, sipp as the parties (test_sip_answer_fields.py proves the same
config against a stand-in API; this proves what pns really answers is what the switch applies).

- `display` (modes.md, "one rule for what the callee sees"): AXG member → A shown X; AXYB A → B
  shown Y, B → A on Y (after A's first call) shown X; XYB the first caller of X is captured and
  B is shown Y, and from then B reaches that caller on Y, shown Y (also with Y taken at the
  call-in, and for AXEYB's and NXEYB's callers of X*EXT). The callee gets the number
  as From user and display name, and nothing of the caller's real number: no header, no SDP
  line, no Call-ID with it (the callers here put their number in their Call-ID too).
- `maxDuration` (lifecycle.md): a binding made with maxDuration 2 → the switch ends the call
  about 2 s after the answer and the record pns stores says ALLOTTED_TIMEOUT, 602.
- `calleeDtmf` (modes.md, v1 AXB with extensionB): A's calls to B carry X-PNS-Callee-Dtmf with
  the digits and the delay; B's calls to A do not.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pns.client import PnsClient, encode_body, signed_headers

from .conftest import PnsServer, Switch, _account, _pns
from .sipkit import SippRun, display_of, user_of
from .test_sip_records import Receiver
from .test_sip_switch import assert_no_trace, assert_ok, finals, invites, received

# X/Y numbers of this module's own customer: XYB needs an X no binding uses yet, so these are
# not shared with the other SIP tests' customers.
MODE_NUMBERS = [f"8523557{i:04d}" for i in range(1, 9)]
FAIL_PROMPT = "modes-call-fail.wav"  # this customer's audioWhenCallFail
V1_ACTIONS = {"axb": "bindAXB", "axyb": "bindAXYB", "xyb": "bindXYB", "axeyb": "bindAXEYB",
              "nxeyb": "bindNXEYB"}


@dataclass
class Modes:
    client: PnsClient
    receiver: Receiver  # the customer's callback URL: the call records pns pushes
    _last_ts: int = 0

    def call(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        env = self.client.call(action, body)
        assert env["code"] == 0, env
        return env

    def v1(self, mode: str, body: dict[str, Any]) -> dict[str, Any]:
        """One signed v1 bind (POST /v1/pns/bind/<mode>); its `data`."""
        self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        raw = encode_body({"businessId": "sip-e2e", **body})
        headers = signed_headers(self.client.access_key, self.client.access_secret,
                                 V1_ACTIONS[mode], raw, str(self._last_ts))
        status, payload = self.client.send(raw, headers, path=f"/v1/pns/bind/{mode}",
                                           resend=False)
        env: dict[str, Any] = json.loads(payload)
        assert status == 200 and env["code"] == 0, env
        return env["data"]  # type: ignore[no-any-return]

    def record(self, call_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The call record pns stored for `call_id` (getCallRecords), once the switch's report
        has been taken."""
        deadline = time.monotonic() + timeout
        while True:
            env = self.client.call_records(limit=100)
            assert env["code"] == 0, env
            mine = [r for r in env["data"]["records"] if r["callId"] == call_id]
            if mine:
                assert len(mine) == 1, mine
                return mine[0]  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"no call record of {call_id} in {timeout} s"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def modes(pns_server: PnsServer) -> Iterator[Modes]:
    """A customer of its own with MODE_NUMBERS and a callback URL to a receiver here."""
    receiver = Receiver()
    acc = _account(pns_server.store, "sip-modes-customer", "customer")
    _pns("numbers", "add", "--account", acc["accessKey"], *MODE_NUMBERS,
         "--store", pns_server.store)
    _pns("account", "set", acc["accessKey"], "--callback-url", receiver.url,
         "--audio-when-call-fail", FAIL_PROMPT, "--store", pns_server.store)
    client = PnsClient(pns_server.base_url, acc["accessKey"], acc["accessSecret"])
    try:
        yield Modes(client, receiver)
    finally:
        client.close()
        receiver.stop()


_fresh = itertools.count(1)


def _numbers(n: int) -> list[str]:
    """n real numbers never used before in this run (prefix 8528444: no other SIP test's)."""
    return [f"8528444{next(_fresh):04d}" for _ in range(n)]


def _of_call(run: SippRun | None, call_id: str) -> SippRun:
    """`run` with only the messages of one call (by the Call-ID that side knows)."""
    assert run is not None
    return dataclasses.replace(run, messages=[m for m in run.messages if m.call_id == call_id])


def _shown(inv_from: str, number: str) -> bool:
    return user_of(inv_from) == number and display_of(inv_from) == number


def _number_in_call_id(*numbers: str) -> tuple[str, ...]:
    """sipp options making the callers' Call-IDs hold their real numbers, as some phones make
    them (sipp pairs replies with calls by Call-ID, so it is set here, not in the scenario)."""
    return ("-cid_str", f"{'-'.join(numbers)}-%u-%p@%s")


def _check_call(switch: Switch, modes: Modes, caller: str, dialled: str, callee: str,
                shown: str, *, v1: bool) -> None:
    """One call placed by `caller` to `dialled`: it reaches `callee` showing `shown` (From user
    and display name, also on the re-INVITE and the BYE), neither side gets the other's real
    number anywhere (header, SDP, Call-ID: the caller puts its number in its Call-ID), and pns
    stores its record: of the number dialled, cleared normally by the caller; the record it
    pushes of a v1 binding has the outbound leg from the number the callee was shown."""
    a_run, b_run = switch.calls([(caller, dialled)], arriving=1,
                                caller_args=_number_in_call_id(caller))
    assert_ok(a_run)
    assert_ok(b_run)
    [inv] = invites(b_run)
    assert user_of(inv.ruri) == callee and user_of(inv.header("To") or "") == callee, inv.text
    assert _shown(inv.header("From") or "", shown), inv.text
    in_dialog = [m for m in received(b_run) if m.is_request and m.method in ("INVITE", "BYE")]
    assert [m.method for m in in_dialog] == ["INVITE", "INVITE", "BYE"], in_dialog
    for msg in in_dialog:
        assert user_of(msg.header("From") or "") == shown, msg.text
    sent = next(m for m in a_run.sent() if m.method == "INVITE")
    assert caller in sent.call_id and inv.call_id != sent.call_id  # the check below can fail
    assert_no_trace(b_run, [caller], "the callee")
    assert_no_trace(a_run, [callee], "the caller")
    # the caller sees the number it dialled answering
    ok = [m for m in finals(a_run) if m.status == 200]  # the INVITE's and the re-INVITE's
    assert len(ok) == 2 and all(user_of(m.header("To") or "") == dialled for m in ok), ok
    call_id = inv.header("X-PNS-Call-Id") or ""
    did = dialled.partition("*")[0]  # the record's number is X, without the extension
    rec = modes.record(call_id)
    assert (rec["caller"], rec["did"], rec["callee"]) == (caller, did, callee), rec
    assert (rec["hangupCause"], rec["hangupCode"], rec["hangup"]) == (
        "NORMAL_CLEARING", 16, 0), rec
    pushed = json.loads(modes.receiver.wait_for(call_id)[1])
    assert ("legList" in pushed) == v1, pushed  # NXCloud's newer CDR shape for v1 bindings
    if v1:
        legs = [(leg["callType"], leg["caller"], leg["callee"]) for leg in pushed["legList"]]
        assert legs == [(1, caller, did), (2, shown, callee)], pushed
    else:
        assert (pushed["caller"], pushed["did"], pushed["callee"]) == (
            caller, did, callee), pushed


def _refused(switch: Switch, caller: str, dialled: str) -> None:
    a_run, b_run = switch.calls([(caller, dialled)], uac="uac_reject.xml")
    assert_ok(a_run)
    assert [m.status for m in finals(a_run)] == [404]
    assert invites(b_run) == []


# ---------------------------------------------------------------------------------------------
# display


def test_axg_a_member_reaches_a_shown_x(modes: Modes, pns_server: PnsServer,
                                        switch: Switch) -> None:
    m1, m2, a = _numbers(3)
    group = modes.call("createGroup", {"phones": f"{m1},{m2}"})["groupId"]
    x = str(modes.call("bindAXG", {"phoneA": a, "groupId": group, "expireSecond": 120,
                                   "phoneB": m2})["data"]["did"])
    assert x in MODE_NUMBERS
    _check_call(switch, modes, m1, x, a, x, v1=False)
    _check_call(switch, modes, a, x, m2, x, v1=False)  # A's own calls go to phoneB, shown X too


def test_axyb_a_reaches_b_shown_y_and_b_reaches_a_on_y_shown_x(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    a, b = _numbers(2)
    data = modes.v1("axyb", {"phoneA": a, "phoneB": b, "bindExpireSecond": 120})
    x, y = str(data["didX"]), str(data["didY"])
    assert x != y and {x, y} <= set(MODE_NUMBERS)
    _refused(switch, b, y)  # before A's first call B cannot use Y
    _check_call(switch, modes, a, x, b, y, v1=True)
    _check_call(switch, modes, b, y, a, x, v1=True)


def test_xyb_the_first_caller_is_captured_and_b_shown_y(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    b, a, late = _numbers(3)
    data = modes.v1("xyb", {"phoneB": b, "bindExpireSecond": 120})
    x, y = str(data["didX"]), str(data["didY"])
    assert x != y and {x, y} <= set(MODE_NUMBERS)
    _check_call(switch, modes, a, x, b, y, v1=True)
    # A was captured: B reaches A on Y, shown Y; someone else on Y is nobody's party
    _check_call(switch, modes, b, y, a, y, v1=True)
    _refused(switch, late, y)
    _refused(switch, a, x)  # and X was released: A calling it is no longer this binding


def test_xyb_with_y_taken_at_the_call_in_shows_b_that_y(modes: Modes, pns_server: PnsServer,
                                                        switch: Switch) -> None:
    """delayedGetY: no Y at the bind; the first call takes one, and B is shown it at once."""
    b, a = _numbers(2)
    data = modes.v1("xyb", {"phoneB": b, "bindExpireSecond": 120, "delayedGetY": True})
    x = str(data["didX"])
    assert "didY" not in data or not data["didY"], data
    a_run, b_run = switch.calls([(a, x)], arriving=1, caller_args=_number_in_call_id(a))
    assert_ok(a_run)
    assert_ok(b_run)
    [inv] = invites(b_run)
    y = user_of(inv.header("From") or "")
    assert y in MODE_NUMBERS and y != x and _shown(inv.header("From") or "", y), inv.text
    assert_no_trace(b_run, [a], "the callee")
    _check_call(switch, modes, b, y, a, y, v1=True)  # the Y B was shown reaches A


def test_axeyb_without_a_captures_the_first_caller_of_x_ext(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    """(A,X,E) → B shown Y; then (B,Y) → A and (A,Y) → B, shown Y; another caller of X+E: 404."""
    b, a, late = _numbers(3)
    data = modes.v1("axeyb", {"phoneB": b, "bindExpireSecond": 120})
    x, y, ext = str(data["didX"]), str(data["didY"]), str(data["extensionX"])
    _check_call(switch, modes, a, f"{x}*{ext}", b, y, v1=True)
    _check_call(switch, modes, b, y, a, y, v1=True)
    _check_call(switch, modes, a, y, b, y, v1=True)
    _refused(switch, late, f"{x}*{ext}")


def test_nxeyb_each_caller_gets_a_y_of_its_own(modes: Modes, pns_server: PnsServer,
                                               switch: Switch) -> None:
    """Each caller Aᵢ of X+E reaches B shown a Yᵢ allocated at that call; B reaches Aᵢ on it."""
    b, a1, a2 = _numbers(3)
    data = modes.v1("nxeyb", {"phoneB": b, "bindExpireSecond": 120})
    x, ext = str(data["didX"]), str(data["extensionX"])
    shown = []
    for a in (a1, a2):
        a_run, b_run = switch.calls([(a, f"{x}*{ext}")], arriving=1,
                                    caller_args=_number_in_call_id(a))
        assert_ok(a_run)
        assert_ok(b_run)
        [inv] = invites(b_run)
        assert user_of(inv.ruri) == b, inv.text
        y = user_of(inv.header("From") or "")
        assert y in MODE_NUMBERS and _shown(inv.header("From") or "", y), inv.text
        assert_no_trace(b_run, [a], "the callee")
        shown.append(y)
    assert shown[0] != shown[1]
    _check_call(switch, modes, b, shown[0], a1, shown[0], v1=True)
    _check_call(switch, modes, b, shown[1], a2, shown[1], v1=True)


# ---------------------------------------------------------------------------------------------
# maxDuration


def test_max_duration_ends_the_call_and_pns_records_allotted_timeout(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    a, b = _numbers(2)
    x = str(modes.call("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": 120,
                                   "maxDuration": 2})["data"]["did"])
    # neither party hangs up: both wait for a BYE, which only the switch sends
    a_run, b_run = switch.calls([(a, x)], uac="uac_wait_bye.xml", uas="uas_load.xml",
                                arriving=1, caller_args=_number_in_call_id(a))
    assert_ok(a_run)
    assert_ok(b_run)
    [to_caller] = [m for m in received(a_run) if m.method == "BYE"]
    [to_callee] = [m for m in received(b_run) if m.method == "BYE"]
    assert user_of(to_caller.header("From") or "") == x, to_caller.text
    assert user_of(to_callee.header("From") or "") == x, to_callee.text
    [inv] = invites(b_run)
    call_id = inv.header("X-PNS-Call-Id") or ""
    assert_no_trace(b_run, [a], "the callee")
    assert_no_trace(a_run, [b], "the caller")

    rec = modes.record(call_id)
    assert (rec["hangupCause"], rec["hangupCode"], rec["hangup"]) == (
        "ALLOTTED_TIMEOUT", 602, 1), rec
    assert (rec["caller"], rec["did"], rec["callee"]) == (a, x, b), rec
    assert rec["answerAt"] > 0 and rec["callStatus"] == 2, rec
    # cut at the limit, long before the parties' own 10 s receive timeout (whole seconds, and
    # the dialog timer ticks once a second: 2 s may read 1 to 3)
    assert 1 <= rec["duration"] <= 4 and rec["duration"] == rec["hangupAt"] - rec["answerAt"], rec


def test_max_duration_set_by_update_on_axyb_ends_the_call_as_each_side_knows_it(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    """updateAXB gives a v1 AXYB a limit: the switch's BYE reaches B from Y (what B was shown),
    A from X (what A dialled)."""
    a, b = _numbers(2)
    data = modes.v1("axyb", {"phoneA": a, "phoneB": b, "bindExpireSecond": 120})
    x, y = str(data["didX"]), str(data["didY"])
    updated = modes.call("updateAXB", {"bindId": data["bindId"], "maxDuration": 2})["data"]
    assert updated["maxDuration"] == 2, updated
    a_run, b_run = switch.calls([(a, x)], uac="uac_wait_bye.xml", uas="uas_load.xml",
                                arriving=1, caller_args=_number_in_call_id(a))
    assert_ok(a_run)
    assert_ok(b_run)
    [to_caller] = [m for m in received(a_run) if m.method == "BYE"]
    [to_callee] = [m for m in received(b_run) if m.method == "BYE"]
    assert (user_of(to_caller.header("From") or ""), user_of(to_caller.header("To") or "")) == (
        x, a), to_caller.text
    assert (user_of(to_callee.header("From") or ""), user_of(to_callee.header("To") or "")) == (
        y, b), to_callee.text
    [inv] = invites(b_run)
    assert _shown(inv.header("From") or "", y) and to_callee.call_id == inv.call_id, inv.text
    assert_no_trace(b_run, [a], "the callee")
    assert_no_trace(a_run, [b], "the caller")
    rec = modes.record(inv.header("X-PNS-Call-Id") or "")
    assert (rec["hangupCause"], rec["hangupCode"], rec["did"]) == ("ALLOTTED_TIMEOUT", 602, x), rec


# ---------------------------------------------------------------------------------------------
# lifecycle.md's refusals


def test_call_direction_and_block_list_refusals_play_the_fail_prompt(
        modes: Modes, pns_server: PnsServer, switch: Switch) -> None:
    """10023 (callDirection) and 10024 (a blocked caller) come with the fail prompt: the switch
    answers 403 with it in X-PNS-Prompt (it answered 500 without it before), and calls no one."""
    a, b, nuisance = _numbers(3)
    x = str(modes.call("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": 120,
                                   "callDirection": 1})["data"]["did"])  # only A may call
    modes.call("addBlacklist", {"phones": nuisance})
    a_run, b_run = switch.calls([(b, x), (nuisance, x)], uac="uac_reject.xml", rate=20)
    assert_ok(a_run)
    assert invites(b_run) == []
    caller_of = {m.call_id: user_of(m.header("From") or "") for m in a_run.sent()
                 if m.method == "INVITE"}
    got = {caller_of[m.call_id]: m for m in finals(a_run)}
    assert set(got) == {b, nuisance}
    for caller, code in ((b, "10023"), (nuisance, "10024")):
        reply = got[caller]
        assert (reply.status, reply.header("X-PNS-Prompt"), reply.header("X-PNS-Code")) == (
            403, FAIL_PROMPT, code), reply.text
    assert_no_trace(a_run, [a], "the callers")


# ---------------------------------------------------------------------------------------------
# calleeDtmf


def test_v1_axb_extension_b_is_keyed_into_bs_line_only(modes: Modes, pns_server: PnsServer,
                                                       switch: Switch) -> None:
    a, b = _numbers(2)
    data = modes.v1("axb", {"phoneA": a, "phoneB": b, "bindExpireSecond": 120,
                            "extensionB": "12#4", "dtmfDelayTimeB": 3})
    x = str(data["didX"])
    # A then B, one after the other (-l 1): each call's INVITE reaches the other party
    a_run, b_run = switch.calls([(a, x), (b, x)], arriving=2,
                                caller_args=_number_in_call_id(a, b))
    assert_ok(a_run)
    assert_ok(b_run)
    got = {user_of(inv.ruri): inv for inv in invites(b_run)}
    assert set(got) == {a, b}
    assert got[b].header("X-PNS-Callee-Dtmf") == "12#4;delay=3", got[b].text
    assert got[a].header("X-PNS-Callee-Dtmf") is None, got[a].text
    for callee, caller in ((b, a), (a, b)):
        inv = got[callee]
        assert _shown(inv.header("From") or "", x), inv.text
        assert_no_trace(_of_call(b_run, inv.call_id), [caller], f"callee {callee}")
