"""NXCloud's v1 API over HTTP, on every store: the seven paths, their fields and answers, v1
extensions, the old actions at /v1/api/pns/, and the newer CDR shape of v1 bindings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pns.client import PnsClient, encode_body, signed_headers
from pns.model import Role

from .conftest import Server, Tenant, create_tenant, unique_hk
from .test_callrecords import Receiver

ACTION_OF = {"axb": "bindAXB", "axe": "bindAXE", "axeyb": "bindAXEYB", "xyb": "bindXYB",
             "ax": "bindAX", "axyb": "bindAXYB", "nxeyb": "bindNXEYB"}
_last_ts = 0


def v1(c: PnsClient, mode: str, body: dict[str, Any] | bytes, action: str | None = None,
       path: str | None = None) -> dict[str, Any]:
    """Sign and post one v1 bind; ``action`` and ``path`` default to the mode's own."""
    global _last_ts
    _last_ts = max(int(time.time() * 1000), _last_ts + 1)
    raw = encode_body(body)
    headers = signed_headers(c.access_key, c.access_secret, action or ACTION_OF[mode], raw,
                             str(_last_ts))
    if action == "":
        del headers["action"]
    status, payload = c.send(raw, headers, path=path or f"/v1/pns/bind/{mode}", resend=False)
    answer: dict[str, Any] = json.loads(payload)
    assert status == 200, answer
    return answer


def pair() -> tuple[str, str]:
    return unique_hk("1"), unique_hk("2")


def listed(c: PnsClient, bind_id: str) -> dict[str, Any]:
    items = c.list_bindings()["data"]["bindList"]
    return dict(next(i for i in items if i["bindId"] == bind_id))


# --- AXB -----------------------------------------------------------------------------------
def test_v1_axb_binds_and_routes(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    a, b = pair()
    before = int(time.time())
    bound = v1(c, "axb", {"phoneA": a, "phoneB": b, "businessId": "ride", "recoding": True})
    assert bound["code"] == 0 and bound["msg"] == "success", bound
    data = bound["data"]
    assert set(data) == {"bindId", "didX", "expireAt"}
    assert data["didX"] in customer.numbers
    # bindExpireSecond defaults to 7200.
    assert before + 7200 <= data["expireAt"] <= int(time.time()) + 7200
    item = listed(c, data["bindId"])
    assert item["flag"] == 1 and item["businessId"] == "ride" and item["bindType"] == 0
    s = server.client(switch)
    assert s.query(a, data["didX"])["data"]["callee"] == b
    assert s.query(b, data["didX"])["data"]["callee"] == a


def test_v1_axb_fields(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    base = {"businessId": "ride"}

    def bind(**fields: Any) -> dict[str, Any]:
        a, b = pair()
        return v1(c, "axb", {"phoneA": a, "phoneB": b, **base, **fields})

    assert listed(c, bind(recording=True)["data"]["bindId"])["flag"] == 1
    assert listed(c, bind(recording=False)["data"]["bindId"])["flag"] == 0
    assert listed(c, bind()["data"]["bindId"])["flag"] == 0
    assert bind(recording=True, recoding=False)["code"] == 1002
    assert bind(recording="yes")["code"] == 1002
    assert bind(bindExpireSecond=0)["data"]["expireAt"] == 0
    in_ten = bind(bindExpireSecond="600")["data"]["expireAt"]
    assert abs(in_ten - (int(time.time()) + 600)) <= 2
    assert bind(bindExpireSecond=-1)["code"] == 1002
    assert bind(ext="x" * 1024)["code"] == 0
    assert bind(ext="x" * 1025)["code"] == 1002
    assert bind(businessId="")["code"] == 1002
    assert v1(c, "axb", {"phoneB": unique_hk("2"), **base})["code"] == 10001
    assert v1(c, "axb", b"")["code"] == 1002


def test_v1_paths_and_action_header(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    body = {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"), "businessId": "ride"}
    # The action header must name the path's mode; the old bindAXB body does not belong here.
    mismatch = v1(c, "axb", body, action="bindAXE")
    assert mismatch["code"] == 1002 and "bindAXB" in mismatch["msg"]
    assert v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "b"},
              action="bindAXB")["code"] == 1002
    assert v1(c, "axb", body, action="")["code"] == 1001
    # A signature over another action does not pass for this one.
    headers = signed_headers(c.access_key, c.access_secret, "bindAXE", encode_body(body))
    headers["action"] = "bindAXB"
    _, payload = c.send(encode_body(body), headers, path="/v1/pns/bind/axb", resend=False)
    assert json.loads(payload)["code"] == 1003
    assert httpx.get(server.url + "/v1/pns/bind/axb").status_code == 405
    assert httpx.post(server.url + "/v1/pns/bind/axz", content=b"{}").status_code == 404
    # A switch may not bind.
    switch = create_tenant(server.store_url, Role.SWITCH)
    assert v1(server.client(switch), "axb", body)["code"] == 1005


def test_v1_idempotent_customer_bind_id(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = pair()
    body = {"phoneA": a, "phoneB": b, "businessId": "ride", "customerBindId": f"o{a}",
            "ext": "order 1", "recording": True}
    first = v1(c, "axb", body)
    again = v1(c, "axb", body)
    assert first["code"] == again["code"] == 0
    assert again["data"] == first["data"]
    assert v1(c, "axb", {**body, "ext": "order 2"})["code"] == 10014
    assert v1(c, "axb", {**body, "recording": False})["code"] == 10014
    assert v1(c, "axb", {**body, "bindExpireSecond": 60})["code"] == 10014
    # The old API's bindAXB is another request under the same customerBindId.
    assert c.bind_axb(a, b, 7200, customerBindId=f"o{a}", flag=1)["code"] == 10014


def test_v1_did_x_and_iso2x(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    x = customer.numbers[2]
    a, b = pair()
    bound = v1(c, "axb", {"phoneA": a, "phoneB": b, "businessId": "r", "didX": x})
    assert bound["data"]["didX"] == x
    assert v1(c, "axb", {"phoneA": a, "phoneB": unique_hk("2"), "businessId": "r",
                         "didX": x})["code"] == 10017
    other = create_tenant(server.store_url, numbers=1)
    assert v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"), "businessId": "r",
                         "didX": other.numbers[0]})["code"] == 10008
    for region in ("HK", "hk"):
        answer = v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"),
                               "businessId": "r", "iso2X": region})
        assert answer["code"] == 0 and answer["data"]["didX"] in customer.numbers
    assert v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"), "businessId": "r",
                         "iso2X": "GB"})["code"] == 10004
    for bad in ("ZZ", "X1", "HKG"):
        assert v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"),
                             "businessId": "r", "iso2X": bad})["code"] == 1002
    assert v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "r",
                         "iso2X": "SG"})["code"] == 10004


def test_v1_extension_b_reaches_the_switch(server: Server, customer: Tenant,
                                           switch: Tenant) -> None:
    c = server.client(customer)
    a, b = pair()
    bound = v1(c, "axb", {"phoneA": a, "phoneB": b, "businessId": "r", "extensionB": "801#",
                          "dtmfDelayTimeB": 3})
    did = bound["data"]["didX"]
    s = server.client(switch)
    to_b = s.query(a, did)["data"]
    assert (to_b["callee"], to_b["calleeDtmf"], to_b["calleeDtmfDelay"]) == (b, "801#", 3)
    to_a = s.query(b, did)["data"]
    assert to_a["callee"] == a and "calleeDtmf" not in to_a and "calleeDtmfDelay" not in to_a
    plain = v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"),
                          "businessId": "r"})["data"]
    assert "calleeDtmf" not in s.query(listed(c, plain["bindId"])["phoneA"],
                                       plain["didX"])["data"]
    for fields in ({"extensionB": "801"}, {"extensionB": "8-01", "dtmfDelayTimeB": 1},
                   {"extensionB": "1" * 33, "dtmfDelayTimeB": 1},
                   {"extensionB": "1", "dtmfDelayTimeB": -1}):
        assert v1(c, "axb", {"phoneA": unique_hk("1"), "phoneB": unique_hk("2"),
                             "businessId": "r", **fields})["code"] == 1002, fields


# --- AXE and the one-length rule -----------------------------------------------------------
def test_v1_axe_four_digit_extension(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    a = unique_hk("1")
    bound = v1(c, "axe", {"phoneA": a, "businessId": "courier", "ext": "parcel 7"})
    assert bound["code"] == 0, bound
    data = bound["data"]
    assert set(data) == {"bindId", "didX", "extensionX", "expireAt"}
    assert len(data["extensionX"]) == 4 and data["extensionX"].isdigit()
    assert data["didX"] in customer.numbers
    assert listed(c, data["bindId"])["bindType"] == 4
    s = server.client(switch)
    anyone = s.query(unique_hk("2"), data["didX"], data["extensionX"])["data"]
    assert anyone["callee"] == a and anyone["bindType"] == 4
    assert s.query(a, data["didX"], data["extensionX"])["code"] == 10013
    # Requested X; A is then bound there.
    x = customer.numbers[0]
    on_x = v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "c", "didX": x})
    assert on_x["data"]["didX"] == x and len(on_x["data"]["extensionX"]) == 4
    assert v1(c, "axe", {"phoneA": a, "businessId": "c",
                         "didX": data["didX"]})["code"] == 10017
    assert v1(c, "axe", {"businessId": "c"})["code"] == 10001


def test_extensions_on_one_x_have_one_length(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=2)
    c = server.client(tenant)
    old_x, free_x = tenant.numbers
    assert c.bind_extension(unique_hk("1"), old_x, 0, extension="101")["code"] == 0
    # A v1 (4-digit) extension on an X with 3-digit ones: 10016.
    refused = v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "c", "didX": old_x})
    assert refused["code"] == 10016, refused
    # Without didX, X is chosen among the numbers whose extensions have 4 digits.
    for _ in range(3):
        chosen = v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "c"})
        assert chosen["data"]["didX"] == free_x, chosen
    # And the old 3-digit binding cannot join the 4-digit X.
    assert c.bind_extension(unique_hk("1"), free_x, 0, extension="102")["code"] == 10016
    assert c.bind_extension(unique_hk("1"), free_x, 0)["code"] == 10016
    # No number left with 4-digit room: 10016 says why.
    single = create_tenant(server.store_url, numbers=1)
    cs = server.client(single)
    assert cs.bind_extension(unique_hk("1"), single.numbers[0], 0)["code"] == 0
    assert v1(cs, "axe", {"phoneA": unique_hk("1"), "businessId": "c"})["code"] == 10016
    # Once the old extensions are gone, the X takes the other length.
    empty = create_tenant(server.store_url, numbers=1)
    ce = server.client(empty)
    old = ce.bind_extension(unique_hk("1"), empty.numbers[0], 0)["data"]["bindId"]
    assert ce.unbind(old)["code"] == 0
    assert v1(ce, "axe", {"phoneA": unique_hk("1"), "businessId": "c"})["code"] == 0


def test_v1_axe_idempotent(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a = unique_hk("1")
    body = {"phoneA": a, "businessId": "c", "customerBindId": f"e{a}", "ext": "e"}
    first = v1(c, "axe", body)
    assert first["code"] == 0
    assert v1(c, "axe", body)["data"] == first["data"]
    assert v1(c, "axe", {**body, "ext": "f"})["code"] == 10014


# --- the modes whose core comes with branch `modes` -----------------------------------------
MODE_BODIES: dict[str, dict[str, Any]] = {
    "ax": {"phoneA": "PA"},
    "axyb": {"phoneA": "PA", "phoneB": "PB"},
    "axeyb": {"phoneA": "PA", "phoneB": "PB"},
    "xyb": {"phoneB": "PB", "customerUserId": "u1", "delayedGetY": True,
            "callInExpireSecond": 60, "callInExpireStrategy": 1, "bindExpireStrategy": 2},
    "nxeyb": {"phoneB": "PB"},
}

def _mode_body(mode: str, **fields: Any) -> dict[str, Any]:
    numbers = {"PA": unique_hk("1"), "PB": unique_hk("2")}
    body = {k: numbers.get(v, v) if isinstance(v, str) else v
            for k, v in MODE_BODIES[mode].items()}
    return {**body, "businessId": "m", **fields}


@pytest.mark.parametrize("mode", sorted(MODE_BODIES))
def test_v1_mode_fields_are_checked(server: Server, customer: Tenant, mode: str) -> None:
    c = server.client(customer)
    party = "phoneA" if mode in ("ax", "axyb") else "phoneB"
    checks: list[tuple[dict[str, Any], int]] = [
        ({"businessId": ""}, 1002),
        ({party: ""}, 10001),
        ({"recording": 1}, 1002),
        ({"recording": True, "recoding": False}, 1002),
        ({"bindExpireSecond": "soon"}, 1002),
        ({"ext": "e" * 1025}, 1002),
        ({"iso2X": "QQ"}, 1002),
    ]
    if mode == "xyb":
        checks += [({"callInExpireStrategy": 3}, 1002), ({"bindExpireStrategy": -1}, 1002),
                   ({"callInExpireSecond": -5}, 1002), ({"customerUserId": "u" * 65}, 1002),
                   ({"didY": unique_hk("3")}, 1002),
                   ({"delayedGetY": "no"}, 1002)]
    for fields, expected in checks:
        answer = v1(c, mode, _mode_body(mode, **fields))
        assert answer["code"] == expected, (fields, answer)
    answer = v1(c, mode, _mode_body(mode))
    assert answer["code"] == 0 and answer["data"]["didX"] in customer.numbers, answer


# --- the old actions at NXCloud's newer address ---------------------------------------------
def test_old_actions_at_v1_api_pns(server: Server, customer: Tenant, switch: Tenant) -> None:
    a, b = pair()
    c = PnsClient(server.url + "/v1", customer.access_key, customer.access_secret)
    s = PnsClient(server.url + "/v1", switch.access_key, switch.access_secret)
    bound = c.bind_axb(a, b, 0, customerBindId=f"v{a}")
    assert bound["code"] == 0 and set(bound["data"]) == {"bindId", "did", "expireAt"}
    assert s.query(a, bound["data"]["did"])["data"]["callee"] == b
    assert any(i["bindId"] == bound["data"]["bindId"]
               for i in c.list_bindings()["data"]["bindList"])
    assert c.unbind(customer_bind_id=f"v{a}")["code"] == 0
    raw = encode_body({"limit": 1, "offset": 0})
    headers = signed_headers(c.access_key, c.access_secret, "getAXBList", raw)
    _, payload = c.send(raw, headers, path="/v1/api/pns")
    assert json.loads(payload)["code"] == 0
    assert httpx.get(server.url + "/v1/api/pns/").status_code == 405


# --- call records --------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _report(server: Server, switch: Tenant, call_id: str, answered: bool = True) -> None:
    now = int(time.time())
    times = {"startAt": now - 30, "ringAt": now - 28, "answerAt": now - 25 if answered else 0,
             "hangupAt": now, "hangupCause": "NORMAL_CLEARING" if answered else "NO_ANSWER",
             "hangupCode": 16 if answered else 19, "hangup": 1,
             "recordFile": "https://rec.example/v1.mp3" if answered else ""}
    assert server.client(switch).report_call(call_id, **times)["code"] == 0


def test_v1_call_records_in_the_newer_shape(server: Server, switch: Tenant,
                                           receiver: Receiver) -> None:
    tenant = create_tenant(server.store_url, numbers=2, callback_url=receiver.url)
    c, s = server.client(tenant), server.client(switch)
    a, b = pair()
    axb = v1(c, "axb", {"phoneA": a, "phoneB": b, "businessId": "ride",
                        "customerBindId": f"k{a}", "ext": "trip 42"})["data"]
    call_axb = s.query(a, axb["didX"])["data"]["callId"]
    _report(server, switch, call_axb)
    receiver.wait_for(1)
    body = receiver.bodies()[0]
    assert set(body) == {"bindId", "customerBindId", "businessId", "callId", "caller", "did",
                         "didX", "didY", "extensionX", "callee", "pnsType", "callStatus",
                         "callStatusMsg", "ext", "customerUserId", "legList"}
    assert (body["bindId"], body["customerBindId"], body["callId"]) == (
        axb["bindId"], f"k{a}", call_axb)
    assert (body["caller"], body["did"], body["didX"], body["callee"]) == (
        a, axb["didX"], axb["didX"], b)
    assert (body["pnsType"], body["callStatus"], body["callStatusMsg"]) == (
        "axb", "1", "Call Connected")
    assert body["ext"] == "trip 42" and body["didY"] == "" and body["extensionX"] == ""
    inbound, outbound = body["legList"]
    assert (inbound["callType"], inbound["caller"], inbound["callee"]) == (1, a, axb["didX"])
    assert (outbound["callType"], outbound["caller"], outbound["callee"]) == (
        2, axb["didX"], b)
    assert outbound["duration"] == 25 and outbound["ringDuration"] == 3
    assert outbound["callRecordFile"] == "https://rec.example/v1.mp3"
    assert (outbound["hangupType"], outbound["hangupCause"], outbound["hangupCode"]) == (
        1, "NORMAL_CLEARING", 16)
    assert outbound["callAnswerAt"] - outbound["callStartAt"] == 5

    # AXE: anyone keys X + E and reaches A; the record names the extension.
    a2, caller = unique_hk("1"), unique_hk("2")
    axe = v1(c, "axe", {"phoneA": a2, "businessId": "c", "ext": "parcel"})["data"]
    call_axe = s.query(caller, axe["didX"], axe["extensionX"])["data"]["callId"]
    _report(server, switch, call_axe, answered=False)
    receiver.wait_for(2)
    axe_body = next(r for r in receiver.bodies() if r["callId"] == call_axe)
    assert (axe_body["pnsType"], axe_body["extensionX"], axe_body["ext"]) == (
        "axe", axe["extensionX"], "parcel")
    assert (axe_body["caller"], axe_body["callee"], axe_body["callStatus"]) == (caller, a2, "2")
    assert axe_body["legList"][1]["caller"] == axe["didX"]
    assert axe_body["legList"][1]["callAnswerAt"] == 0 and axe_body["legList"][1]["duration"] == 0

    # An old-API binding keeps the old flat shape.
    a3, b3 = pair()
    old = c.bind_axb(a3, b3, 0)["data"]
    call_old = s.query(a3, old["did"])["data"]["callId"]
    _report(server, switch, call_old)
    receiver.wait_for(3)
    old_body = next(r for r in receiver.bodies() if r["callId"] == call_old)
    assert "legList" not in old_body and old_body["callStatus"] == 1
    assert {"id", "startAt", "answerAt", "hangupAt", "recordFile"} <= set(old_body)

    # Redelivery sends the v1 shape again, signed like the first.
    assert c.call("redeliverCallRecord", {"callId": call_axb})["code"] == 0
    receiver.wait_for(4)
    assert [r for r in receiver.bodies() if r["callId"] == call_axb] == [body, body]


def test_one_extension_length_under_concurrency(server: Server) -> None:
    """Old 3-digit and v1 4-digit binds racing onto one empty X: whatever wins, the X ends
    with extensions of one length, and every bind answered 0 is kept."""
    tenant = create_tenant(server.store_url, numbers=1)
    x = tenant.numbers[0]

    def bind(i: int) -> dict[str, Any]:
        with server.client(tenant) as c:
            if i % 2:
                return c.bind_extension(unique_hk("1"), x, 0)
            return v1(c, "axe", {"phoneA": unique_hk("1"), "businessId": "c", "didX": x})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(bind, range(32)))
    assert {a["code"] for a in answers} <= {0, 10016}, answers
    won = {a["data"]["bindId"] for a in answers if a["code"] == 0}
    assert won, answers
    items = server.client(tenant).list_bindings()["data"]["bindList"]
    assert {i["bindId"] for i in items} == won
    assert len({len(i["extension"]) for i in items}) == 1, items
