"""Where modes.md meets lifecycle.md, through the API on every store: the lifecycle fields on
every bind of every mode, getAXB/updateAXB on every kind, cool-off in the modes' allocations
and the block list before any capture or child binding."""

from __future__ import annotations

import time
from typing import Any

from pns.client import PnsClient
from pns.errors import Code
from pns.model import Role

from .conftest import Server, Tenant, create_tenant, unique_hk
from .test_lifecycle import _expire_at_after_renewal
from .test_v1_api import v1

LIFE = {"maxDuration": 90, "renewOnCall": 300, "audioWhenCallFail": "own.wav"}


def ok(envelope: dict[str, Any]) -> dict[str, Any]:
    assert envelope["code"] == 0, envelope
    data: dict[str, Any] = envelope["data"]
    return data


def done(envelope: dict[str, Any]) -> None:
    assert envelope["code"] == 0, envelope


def code(envelope: dict[str, Any]) -> int:
    return int(envelope["code"])


def get(c: PnsClient, bind_id: str) -> dict[str, Any]:
    return ok(c.call("getAXB", {"bindId": bind_id}))


def update(c: PnsClient, bind_id: str, **fields: Any) -> dict[str, Any]:
    return c.call("updateAXB", {"bindId": bind_id, **fields})


def hk() -> str:
    return unique_hk("7")


def refused_one_way(answer: dict[str, Any]) -> None:
    """10023 with the binding's own fail prompt."""
    assert code(answer) == Code.DIRECTION_NOT_ALLOWED, answer
    assert answer["data"]["audioWhenCallFail"] == "own.wav"


def assert_life(c: PnsClient, bind_id: str, direction: int) -> None:
    data = get(c, bind_id)
    assert (data["callDirection"], data["maxDuration"], data["renewOnCall"],
            data["audioWhenCallFail"]) == (direction, 90, 300, "own.wav"), data


# --- 1. every bind path takes callDirection, maxDuration, renewOnCall, audioWhenCallFail -----
def test_v1_pairs_take_the_lifecycle_fields(server: Server, customer: Tenant,
                                            switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = hk(), hk()
    axb = ok(v1(c, "axb", {"businessId": "r", "phoneA": a, "phoneB": b, "callDirection": 1,
                           **LIFE}))
    assert_life(c, axb["bindId"], 1)
    assert ok(sw.query(a, axb["didX"]))["maxDuration"] == 90
    refused_one_way(sw.query(b, axb["didX"]))
    # AXYB: A is phoneA (calls X), B is phoneB (calls Y); 2 = only B.
    a, b = hk(), hk()
    axyb = ok(v1(c, "axyb", {"businessId": "r", "phoneA": a, "phoneB": b, "callDirection": 2,
                             **LIFE}))
    assert_life(c, axyb["bindId"], 2)
    refused_one_way(sw.query(a, axyb["didX"]))
    assert code(sw.query(b, axyb["didY"])) == Code.BINDING_NOT_EXIST  # A has not called yet
    c.call("unbindAXB", {"bindId": axyb["bindId"]})
    a, b = hk(), hk()
    axyb = ok(v1(c, "axyb", {"businessId": "r", "phoneA": a, "phoneB": b, "callDirection": 1,
                             **LIFE}))
    answer = ok(sw.query(a, axyb["didX"]))
    assert answer["callee"] == b and answer["maxDuration"] == 90
    refused_one_way(sw.query(b, axyb["didY"]))
    c.call("unbindAXB", {"bindId": axyb["bindId"]})


def test_v1_single_party_modes_take_the_lifecycle_fields(server: Server, customer: Tenant,
                                                         switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    # AX: "B" is anyone but A; 1 (only A, who reaches nobody) turns every caller away.
    a = hk()
    ax = ok(v1(c, "ax", {"businessId": "r", "phoneA": a, **LIFE}))
    assert_life(c, ax["bindId"], 0)
    answer = ok(sw.query(hk(), ax["didX"]))
    assert answer["callee"] == a and answer["maxDuration"] == 90
    assert ok(update(c, ax["bindId"], callDirection=1))["callDirection"] == 1
    refused_one_way(sw.query(hk(), ax["didX"]))
    c.call("unbindAXB", {"bindId": ax["bindId"]})
    # AXE: the same, on X + E.
    a = hk()
    axe = ok(v1(c, "axe", {"businessId": "r", "phoneA": a, "callDirection": 2, **LIFE}))
    assert_life(c, axe["bindId"], 2)
    answer = ok(sw.query(hk(), axe["didX"], axe["extensionX"]))
    assert answer["callee"] == a and answer["maxDuration"] == 90
    c.call("unbindAXB", {"bindId": axe["bindId"]})


def test_v1_capturing_modes_take_the_lifecycle_fields(server: Server, customer: Tenant,
                                                      switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    # XYB: A is the captured first caller; 1 = only A may call, on X and then on Y.
    b, first = hk(), hk()
    xyb = ok(v1(c, "xyb", {"businessId": "r", "phoneB": b, "callDirection": 1, **LIFE}))
    assert_life(c, xyb["bindId"], 1)
    answer = ok(sw.query(first, xyb["didX"]))
    assert answer["callee"] == b and answer["maxDuration"] == 90
    assert ok(sw.query(first, xyb["didY"]))["maxDuration"] == 90
    refused_one_way(sw.query(b, xyb["didY"]))
    c.call("unbindAXB", {"bindId": xyb["bindId"]})
    # AXEYB without A: the captured caller is A.
    b, first = hk(), hk()
    axeyb = ok(v1(c, "axeyb", {"businessId": "r", "phoneB": b, "callDirection": 1, **LIFE}))
    answer = ok(sw.query(first, axeyb["didX"], axeyb["extensionX"]))
    assert answer["callee"] == b and answer["maxDuration"] == 90
    refused_one_way(sw.query(b, axeyb["didY"]))
    c.call("unbindAXB", {"bindId": axeyb["bindId"]})
    # NXEYB: each caller Aᵢ is A of its child, which carries the parent's fields.
    b, caller = hk(), hk()
    nxeyb = ok(v1(c, "nxeyb", {"businessId": "r", "phoneB": b, "callDirection": 1, **LIFE}))
    assert_life(c, nxeyb["bindId"], 1)
    answer = ok(sw.query(caller, nxeyb["didX"], nxeyb["extensionX"]))
    assert answer["callee"] == b and answer["maxDuration"] == 90
    child = next(i for i in c.call("getAXBList", {})["data"]["bindList"]
                 if i.get("parentBindId") == nxeyb["bindId"])
    assert_life(c, child["bindId"], 1)
    refused_one_way(sw.query(b, answer["display"]))
    assert ok(sw.query(caller, answer["display"]))["maxDuration"] == 90
    c.call("unbindAXB", {"bindId": nxeyb["bindId"]})


def test_bind_axg_takes_the_lifecycle_fields(server: Server, customer: Tenant,
                                             switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, m1, m2 = hk(), hk(), hk()
    group = ok(c.call("createGroup", {"phones": f"{m1},{m2}"}))["groupId"]
    # AXG: A is phoneA, "B" is every member; 2 = only the members may call.
    bound = ok(c.call("bindAXG", {"phoneA": a, "groupId": group, "expireSecond": 600,
                                  "phoneB": m1, "callDirection": 2, **LIFE}))
    assert_life(c, bound["bindId"], 2)
    assert get(c, bound["bindId"])["groupId"] == group
    answer = ok(sw.query(m2, bound["did"]))
    assert answer["callee"] == a and answer["maxDuration"] == 90
    refused_one_way(sw.query(a, bound["did"]))
    assert code(c.call("bindAXG", {"phoneA": hk(), "groupId": group, "expireSecond": 600,
                                   "maxDuration": 86401})) == Code.BAD_PARAMETER
    c.call("unbindAXB", {"bindId": bound["bindId"]})


def test_fields_that_make_no_sense_for_a_mode_are_1002(server: Server, customer: Tenant
                                                       ) -> None:
    c = server.client(customer)
    # 2 (only B) before the binding has an A: its first caller becomes A.
    for mode in ("xyb", "axeyb", "nxeyb"):
        answer = v1(c, mode, {"businessId": "r", "phoneB": hk(), "callDirection": 2})
        assert code(answer) == Code.BAD_PARAMETER and "before the binding has an A" in \
            answer["msg"], (mode, answer)
    # renewOnCall beside an XYB expiry strategy: two rules would move expireAt.
    for strategy in ("bindExpireStrategy", "callInExpireStrategy"):
        answer = v1(c, "xyb", {"businessId": "r", "phoneB": hk(), "renewOnCall": 60,
                               strategy: 1})
        assert code(answer) == Code.BAD_PARAMETER and "renewOnCall" in answer["msg"]
    assert code(v1(c, "ax", {"businessId": "r", "phoneA": hk(), "callDirection": 3})) == \
        Code.BAD_PARAMETER
    # The same by updateAXB; nothing changed.
    xyb = ok(v1(c, "xyb", {"businessId": "r", "phoneB": hk(), "bindExpireStrategy": 2}))
    assert code(update(c, xyb["bindId"], callDirection=2)) == Code.BAD_PARAMETER
    assert code(update(c, xyb["bindId"], renewOnCall=60)) == Code.BAD_PARAMETER
    assert get(c, xyb["bindId"])["renewOnCall"] == 0
    c.call("unbindAXB", {"bindId": xyb["bindId"]})


# --- 2. getAXB and updateAXB on every kind ---------------------------------------------------
def test_get_and_update_every_kind(server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    # getAXB carries each mode's own fields.
    xyb = ok(v1(c, "xyb", {"businessId": "r", "phoneB": hk(), "customerUserId": "u-9",
                           "ext": "order 9", "callInExpireSecond": 60,
                           "bindExpireStrategy": 1, "callInExpireStrategy": 2}))
    data = get(c, xyb["bindId"])
    assert data["customerUserId"] == "u-9" and data["didY"] == xyb["didY"]
    assert (data["bindType"], data["ext"], data["callInExpireSecond"],
            data["expireStrategy"]) == (6, "order 9", 60, 2), data
    axb = ok(v1(c, "axb", {"businessId": "r", "phoneA": hk(), "phoneB": hk(),
                           "extensionB": "12#", "dtmfDelayTimeB": 3}))
    data = get(c, axb["bindId"])
    assert (data["extensionB"], data["dtmfDelayTimeB"]) == ("12#", 3) and "ext" not in data
    done(c.call("unbindAXB", {"bindId": axb["bindId"]}))
    axe = ok(v1(c, "axe", {"businessId": "r", "phoneA": hk()}))
    assert get(c, axe["bindId"])["extension"] == axe["extensionX"]
    for bound in (xyb, axe):
        done(c.call("unbindAXB", {"bindId": bound["bindId"]}))
    # phoneB where the kind has no B, or shares it with children: 1002.
    ax = ok(v1(c, "ax", {"businessId": "r", "phoneA": hk()}))
    assert code(update(c, ax["bindId"], phoneB=hk())) == Code.BAD_PARAMETER
    nxeyb = ok(v1(c, "nxeyb", {"businessId": "r", "phoneB": hk()}))
    assert code(update(c, nxeyb["bindId"], phoneB=hk())) == Code.BAD_PARAMETER
    # The other fields apply to every kind.
    assert ok(update(c, ax["bindId"], maxDuration=30, expireSecond=0))["expireAt"] == 0
    assert ok(sw.query(hk(), ax["didX"]))["maxDuration"] == 30
    for bound in (ax, nxeyb):
        c.call("unbindAXB", {"bindId": bound["bindId"]})


def test_update_axg_phone_b_must_be_a_member(server: Server, customer: Tenant,
                                             switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, m1, m2 = hk(), hk(), hk()
    group = ok(c.call("createGroup", {"phones": f"{m1},{m2}"}))["groupId"]
    bound = ok(c.call("bindAXG", {"phoneA": a, "groupId": group, "expireSecond": 600}))
    assert code(sw.query(a, bound["did"])) == Code.BINDING_NOT_EXIST  # no phoneB yet
    assert code(update(c, bound["bindId"], phoneB=hk())) == Code.NOT_GROUP_MEMBER
    assert ok(update(c, bound["bindId"], phoneB=m2))["phoneB"] == m2
    assert ok(sw.query(a, bound["did"]))["callee"] == m2
    c.call("unbindAXB", {"bindId": bound["bindId"]})


def test_update_phone_b_keeps_i1_on_y(server: Server) -> None:
    """A new phoneB of a mode with Y must be free on Y as on X: replace_binding checks every
    key of Binding.party_keys, on every store."""
    tenant = create_tenant(server.store_url, numbers=3)
    c = server.client(tenant)
    x1, y, x2 = tenant.numbers
    a1, b1, a2, b2 = hk(), hk(), hk(), hk()
    first = ok(v1(c, "axyb", {"businessId": "r", "phoneA": a1, "phoneB": b1, "didX": x1,
                              "didY": y}))
    second = ok(v1(c, "axyb", {"businessId": "r", "phoneA": a2, "phoneB": b2, "didX": x2,
                               "didY": y}))
    # b2 is free on x1 but a party on Y: refused whole.
    answer = update(c, first["bindId"], phoneB=b2, maxDuration=5)
    assert code(answer) == Code.PARTY_ALREADY_BOUND, answer
    assert get(c, first["bindId"])["phoneB"] == b1
    assert get(c, first["bindId"])["maxDuration"] == 0
    # A number free on both is taken, and routes at once.
    b3 = hk()
    assert ok(update(c, first["bindId"], phoneB=b3))["phoneB"] == b3
    sw = server.client(create_tenant(server.store_url, role=Role.SWITCH))
    assert ok(sw.query(a1, x1))["callee"] == b3
    assert ok(sw.query(b3, y))["callee"] == a1
    assert code(sw.query(b1, y)) == Code.BINDING_NOT_EXIST
    for bound in (first, second):
        c.call("unbindAXB", {"bindId": bound["bindId"]})


# --- 3. cool-off in the modes' allocations ---------------------------------------------------
def test_cool_off_in_the_modes_allocations(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=4, cool_off_seconds=3600)  # type: ignore[arg-type]
    c = server.client(tenant)
    sw = server.client(create_tenant(server.store_url, role=Role.SWITCH))
    n0 = tenant.numbers[0]
    a, b = hk(), hk()
    # AX: A leaves n0; it is not given n0 again while it cools off, and naming it is 10017.
    done(c.call("unbindAXB", {"bindId": ok(v1(c, "ax", {"businessId": "r", "phoneA": a,
                                                        "didX": n0}))["bindId"]}))
    again = ok(v1(c, "ax", {"businessId": "r", "phoneA": a}))
    assert again["didX"] != n0
    done(c.call("unbindAXB", {"bindId": again["bindId"]}))
    named = v1(c, "ax", {"businessId": "r", "phoneA": a, "didX": n0})
    assert code(named) == Code.PARTY_ALREADY_BOUND and "cool-off" in named["msg"], named
    # AXYB: A cools off on n0 and on the AX's X: X and Y are the two other numbers.
    axyb = ok(v1(c, "axyb", {"businessId": "r", "phoneA": a, "phoneB": b}))
    rest = set(tenant.numbers) - {n0, again["didX"]}
    assert {axyb["didX"], axyb["didY"]} == rest
    done(c.call("unbindAXB", {"bindId": axyb["bindId"]}))
    # B leaves Y as it leaves X: naming Y for B now is 10017 too.
    named = v1(c, "ax", {"businessId": "r", "phoneA": b, "didX": axyb["didY"]})
    assert code(named) == Code.PARTY_ALREADY_BOUND and "cool-off" in named["msg"], named
    # Naming, as didY, a number a party cools off on is 10017 too.
    (free,) = rest - {axyb["didX"]}
    named = v1(c, "axyb", {"businessId": "r", "phoneA": a, "phoneB": hk(), "didX": free,
                           "didY": n0})
    assert code(named) == Code.PARTY_ALREADY_BOUND and "cool-off" in named["msg"], named
    # XYB for A as B: one number is left that A does not cool off on, and it needs two.
    xyb = v1(c, "xyb", {"businessId": "r", "phoneB": a})
    assert code(xyb) == Code.NUMBERS_EXHAUSTED and "held back by cool-off" in xyb["msg"], xyb
    # NXEYB: a caller whose child ended cools off on its Yᵢ, and is given another.
    parent = ok(v1(c, "nxeyb", {"businessId": "r", "phoneB": hk(), "didX": n0}))
    caller = hk()
    y1 = ok(sw.query(caller, n0, parent["extensionX"]))["display"]
    child = next(i for i in c.call("getAXBList", {})["data"]["bindList"]
                 if i.get("parentBindId") == parent["bindId"])
    done(c.call("unbindAXB", {"bindId": child["bindId"]}))
    y2 = ok(sw.query(caller, n0, parent["extensionX"]))["display"]
    assert y2 not in (y1, n0)
    done(c.call("unbindAXB", {"bindId": parent["bindId"]}))


# --- 4. the block list before any capture or child binding ------------------------------------
def test_a_blocked_caller_is_refused_by_every_mode_and_never_captured(
        server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    blocked = hk()
    ok(c.call("addBlacklist", {"phones": blocked}))

    def refused(answer: dict[str, Any]) -> None:
        assert code(answer) == Code.CALLER_BLOCKED, answer
        assert answer["data"]["audioWhenCallFail"] == "fail.wav"

    xyb = ok(v1(c, "xyb", {"businessId": "r", "phoneB": hk()}))
    refused(sw.query(blocked, xyb["didX"]))
    assert get(c, xyb["bindId"])["phoneA"] == ""  # not captured: X still waits
    other = hk()
    assert ok(sw.query(other, xyb["didX"]))["callee"] == get(c, xyb["bindId"])["phoneB"]
    assert get(c, xyb["bindId"])["phoneA"] == other
    axeyb = ok(v1(c, "axeyb", {"businessId": "r", "phoneB": hk()}))
    refused(sw.query(blocked, axeyb["didX"], axeyb["extensionX"]))
    assert get(c, axeyb["bindId"])["phoneA"] == ""
    nxeyb = ok(v1(c, "nxeyb", {"businessId": "r", "phoneB": hk()}))
    refused(sw.query(blocked, nxeyb["didX"], nxeyb["extensionX"]))
    assert not [i for i in c.call("getAXBList", {})["data"]["bindList"]
                if i.get("parentBindId") == nxeyb["bindId"]]
    for bound in (xyb, axeyb, nxeyb):
        done(c.call("unbindAXB", {"bindId": bound["bindId"]}))
    ax = ok(v1(c, "ax", {"businessId": "r", "phoneA": hk()}))
    refused(sw.query(blocked, ax["didX"]))
    axe = ok(v1(c, "axe", {"businessId": "r", "phoneA": hk()}))
    refused(sw.query(blocked, axe["didX"], axe["extensionX"]))
    for bound in (ax, axe):
        done(c.call("unbindAXB", {"bindId": bound["bindId"]}))
    axyb = ok(v1(c, "axyb", {"businessId": "r", "phoneA": blocked, "phoneB": hk()}))
    refused(sw.query(blocked, axyb["didX"]))
    done(c.call("unbindAXB", {"bindId": axyb["bindId"]}))
    axb = ok(v1(c, "axb", {"businessId": "r", "phoneA": blocked, "phoneB": hk()}))
    refused(sw.query(blocked, axb["didX"]))
    done(c.call("unbindAXB", {"bindId": axb["bindId"]}))
    group = ok(c.call("createGroup", {"phones": blocked}))["groupId"]
    axg = ok(c.call("bindAXG", {"phoneA": hk(), "groupId": group, "expireSecond": 600}))
    refused(sw.query(blocked, axg["did"]))
    done(c.call("unbindAXB", {"bindId": axg["bindId"]}))
    ok(c.call("removeBlacklist", {"phones": blocked}))


def test_renew_on_call_in_nxeyb_slides_the_parent_and_each_child(
        server: Server, customer: Tenant, switch: Tenant) -> None:
    """A call-in is an answered query of the parent; later calls on Yᵢ are the child's."""
    c, sw = server.client(customer), server.client(switch)
    b, caller = hk(), hk()
    parent = ok(v1(c, "nxeyb", {"businessId": "r", "phoneB": b, "bindExpireSecond": 60,
                                "renewOnCall": 3600}))
    asked = int(time.time())
    y = ok(sw.query(caller, parent["didX"], parent["extensionX"]))["display"]
    assert _expire_at_after_renewal(c, parent["bindId"], asked + 3600) >= asked + 3600
    child = next(i for i in c.call("getAXBList", {})["data"]["bindList"]
                 if i.get("parentBindId") == parent["bindId"])
    assert get(c, child["bindId"])["renewOnCall"] == 3600
    asked = int(time.time())
    ok(sw.query(b, y))
    assert _expire_at_after_renewal(c, child["bindId"], asked + 3600) >= asked + 3600
    done(c.call("unbindAXB", {"bindId": parent["bindId"]}))
