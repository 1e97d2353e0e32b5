"""Tenant isolation, action by action: account 2 never sees, queries, unbinds, lists or
redelivers account 1's bindings, numbers or call records.

Refusals must not tell account 2 whether what it named exists: another account's binding
answers as a binding that does not exist (10013), another account's number as a number that is
not its own (10008 for binds, 1005 for queries), whatever is bound on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pns.client import PnsClient
from pns.model import Role

from .conftest import Server, Tenant, create_tenant, unique_hk
from .test_callrecords import Receiver


@dataclass
class Accounts:
    server: Server
    one: Tenant
    two: Tenant
    switch: Tenant
    a: str
    b: str
    axb: dict[str, Any]  # account 1's AXB binding (customerBindId "order-1")
    ext: dict[str, Any]  # account 1's extension binding (customerBindId "order-ext")
    ext_a: str
    twin: dict[str, Any]  # account 2's binding of the same A and B (customerBindId "order-1")

    def c1(self) -> PnsClient:
        return self.server.client(self.one)

    def c2(self) -> PnsClient:
        return self.server.client(self.two)

    def sw(self) -> PnsClient:
        return self.server.client(self.switch)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    one, two = Receiver(), Receiver()
    yield one, two
    one.stop()
    two.stop()


@pytest.fixture
def accounts(server: Server, receivers: tuple[Receiver, Receiver]) -> Accounts:
    one = create_tenant(server.store_url, Role.CUSTOMER, numbers=2,
                        audio_when_call_fail="one-fail.wav", callback_url=receivers[0].url)
    two = create_tenant(server.store_url, Role.CUSTOMER, numbers=2,
                        audio_when_call_fail="two-fail.wav", callback_url=receivers[1].url)
    switch = create_tenant(server.store_url, Role.SWITCH)
    a, b, ext_a = unique_hk("1"), unique_hk("2"), unique_hk("1")
    with server.client(one) as c1, server.client(two) as c2:
        axb = c1.bind_axb(a, b, 3600, customerBindId="order-1", businessId="b1",
                          phoneX=one.numbers[0])
        ext = c1.bind_extension(ext_a, one.numbers[1], 3600, extension="101",
                                customerBindId="order-ext")
        # Account 2 binds the very same request, customerBindId included: its own binding.
        twin = c2.bind_axb(a, b, 3600, customerBindId="order-1", businessId="b1")
    for answer in (axb, ext, twin):
        assert answer["code"] == 0, answer
    assert twin["data"]["bindId"] != axb["data"]["bindId"]
    assert twin["data"]["did"] in two.numbers
    return Accounts(server, one, two, switch, a, b, axb["data"], ext["data"], ext_a,
                    twin["data"])


def code(envelope: dict[str, Any]) -> int:
    return int(envelope["code"])


def listed(client: PnsClient) -> dict[str, dict[str, Any]]:
    page = client.list_bindings()
    assert code(page) == 0
    assert page["data"]["total"] == len(page["data"]["bindList"])
    return {item["bindId"]: item for item in page["data"]["bindList"]}


def test_get_axb_list(accounts: Accounts) -> None:
    with accounts.c1() as c1, accounts.c2() as c2:
        ones, twos = listed(c1), listed(c2)
    assert set(ones) == {accounts.axb["bindId"], accounts.ext["bindId"]}
    assert set(twos) == {accounts.twin["bindId"]}
    assert {i["customerId"] for i in ones.values()} == {str(accounts.one.account_id)}
    assert {i["customerId"] for i in twos.values()} == {str(accounts.two.account_id)}
    assert {i["did"] for i in twos.values()} <= set(accounts.two.numbers)


def test_unbind_axb(accounts: Accounts) -> None:
    with accounts.c2() as c2:
        unknown = c2.unbind("0" * 32)
        assert code(unknown) == 10013
        for bind_id in (accounts.axb["bindId"], accounts.ext["bindId"]):
            refused = c2.unbind(bind_id)
            assert code(refused) == 10013 and refused["msg"] == unknown["msg"]
            assert "data" not in refused
        assert code(c2.unbind(customer_bind_id="order-ext")) == 10013
        # "order-1" names account 2's own binding, never account 1's.
        assert code(c2.unbind(customer_bind_id="order-1")) == 0
        assert listed(c2) == {}
    with accounts.c1() as c1:
        assert set(listed(c1)) == {accounts.axb["bindId"], accounts.ext["bindId"]}
    with accounts.sw() as s:
        assert s.query(accounts.a, accounts.axb["did"])["data"]["callee"] == accounts.b
        assert s.query(unique_hk("9"), accounts.ext["did"], "101")["data"]["callee"] \
            == accounts.ext_a


def test_bind_axb_and_extension(accounts: Accounts) -> None:
    """Binding on account 1's X: 10008 like a number of nobody, whether A is bound there
    (not 10017) or the extension is taken there (not 10015)."""
    x1, ext_x1 = accounts.axb["did"], accounts.ext["did"]
    nobody = unique_hk("7")
    with accounts.c2() as c2:
        cases = [
            c2.bind_axb(unique_hk("1"), unique_hk("2"), 0, phoneX=x1),
            c2.bind_axb(accounts.a, unique_hk("2"), 0, phoneX=x1),  # A is bound on x1
            c2.bind_axb(unique_hk("1"), unique_hk("2"), 0, phoneX=nobody),
            c2.bind_extension(unique_hk("1"), ext_x1, 0, extension="101"),  # taken there
            c2.bind_extension(unique_hk("1"), ext_x1, 0, extension="102"),
            c2.bind_extension(accounts.ext_a, ext_x1, 0),  # A is bound there
            c2.bind_extension(unique_hk("1"), nobody, 0),
        ]
        assert [code(c) for c in cases] == [10008] * len(cases), cases
        assert len({c["msg"] for c in cases[:3]}) == 1
        # The same customerBindId as account 1's extension binding: a binding of its own.
        own = c2.bind_extension(unique_hk("1"), accounts.two.numbers[0], 0,
                                customerBindId="order-ext")
        assert code(own) == 0 and own["data"]["bindId"] != accounts.ext["bindId"]
    with accounts.c1() as c1:
        assert set(listed(c1)) == {accounts.axb["bindId"], accounts.ext["bindId"]}
        # Idempotency is per account too: account 1's repeat still gets its own binding.
        again = c1.bind_axb(accounts.a, accounts.b, 3600, customerBindId="order-1",
                            businessId="b1", phoneX=x1)
        assert code(again) == 0 and again["data"]["bindId"] == accounts.axb["bindId"]


def test_query_axb(accounts: Accounts) -> None:
    """A customer may query only its own numbers: 1005 for account 1's X, bound or not, with
    an extension or not, exactly as for a number of nobody, and no prompt of account 1."""
    x1, ext_x1 = accounts.axb["did"], accounts.ext["did"]
    with accounts.c2() as c2:
        cases = [
            c2.query(accounts.a, x1),
            c2.query(accounts.b, x1),
            c2.query(unique_hk("9"), ext_x1),
            c2.query(unique_hk("9"), ext_x1, "101"),
            c2.query(accounts.a, unique_hk("7")),
        ]
        for refused in cases:
            assert code(refused) == 1005, refused
            assert "one-fail.wav" not in str(refused)
        assert len({c["msg"] for c in cases}) == 1
        # Its own number, the same A: its own binding and its own prompts.
        own = c2.query(accounts.a, accounts.twin["did"])
        assert code(own) == 0 and own["data"]["callee"] == accounts.b
        assert own["data"]["audioWhenCallFail"] == "two-fail.wav"


def test_call_records_and_redelivery(accounts: Accounts,
                                     receivers: tuple[Receiver, Receiver]) -> None:
    one_rx, two_rx = receivers
    with accounts.sw() as s:
        call_one = s.query(accounts.a, accounts.axb["did"])["data"]["callId"]
        call_two = s.query(accounts.a, accounts.twin["did"])["data"]["callId"]
        assert code(s.report_call(call_one, startAt=1, answerAt=2, hangupAt=5)) == 0
        assert code(s.report_call(call_two, startAt=1, answerAt=3, hangupAt=5)) == 0
        # A call to account 1's X with no binding: the error callback is account 1's alone.
        assert code(s.query(unique_hk("9"), accounts.axb["did"])) == 10013
    one_rx.wait_for(2)
    two_rx.wait_for(1)
    ones = one_rx.bodies()
    assert {r.get("callId") for r in ones} >= {call_one}
    assert {r["bindId"] for r in ones if "callId" in r} == {accounts.axb["bindId"]}
    assert [r["callId"] for r in two_rx.bodies()] == [call_two]
    with accounts.c2() as c2:
        records = c2.call_records()["data"]
        assert records["total"] == 1 and records["records"][0]["callId"] == call_two
        assert c2.call_records(bindId=accounts.axb["bindId"])["data"] == \
            {"records": [], "total": 0}
        refused = c2.call("redeliverCallRecord", {"callId": call_one})
        unknown = c2.call("redeliverCallRecord", {"callId": "1" * 19})
        assert code(refused) == code(unknown) == 10013 and refused["msg"] == unknown["msg"]
        assert code(c2.call("redeliverCallRecord", {"callId": call_two})) == 0
        assert code(c2.report_call(call_one)) == 1005
    two_rx.wait_for(2)
    assert [r["callId"] for r in two_rx.bodies()] == [call_two, call_two]
    with accounts.c1() as c1:
        records = c1.call_records()["data"]
        assert [r["callId"] for r in records["records"]] == [call_one]
    assert all(r.get("callId") != call_two for r in one_rx.bodies())


def test_switch_acts_for_nobody(accounts: Accounts) -> None:
    """The switch queries every X and reports calls; it cannot bind, unbind, list or read
    call records of any account."""
    with accounts.sw() as s:
        refused = [
            s.bind_axb(unique_hk("1"), unique_hk("2"), 0, phoneX=accounts.axb["did"]),
            s.bind_extension(unique_hk("1"), accounts.ext["did"], 0),
            s.unbind(accounts.axb["bindId"]),
            s.unbind(customer_bind_id="order-1"),
            s.list_bindings(),
            s.call_records(),
            s.call("redeliverCallRecord", {"callId": "1" * 19}),
        ]
    assert [code(r) for r in refused] == [1005] * len(refused)
    with accounts.c1() as c1:
        assert set(listed(c1)) == {accounts.axb["bindId"], accounts.ext["bindId"]}


def test_another_accounts_key_needs_its_secret(accounts: Accounts) -> None:
    forged = PnsClient(accounts.server.url, accounts.one.access_key,
                       accounts.two.access_secret)
    with forged:
        assert code(forged.list_bindings()) == 1003
        assert code(forged.unbind(accounts.axb["bindId"])) == 1003
    with accounts.c1() as c1:
        assert set(listed(c1)) == {accounts.axb["bindId"], accounts.ext["bindId"]}


def test_get_and_update_axb(accounts: Accounts) -> None:
    """Account 2 naming account 1's binding (by bindId; by a customerBindId both use) reads
    and changes only its own, or gets exactly what a binding that does not exist gets."""
    with accounts.c1() as c1, accounts.c2() as c2:
        before = c1.call("getAXB", {"bindId": accounts.axb["bindId"]})["data"]
        unknown = c2.call("getAXB", {"bindId": "0" * 32})
        for body in ({"bindId": accounts.axb["bindId"]}, {"bindId": accounts.ext["bindId"]}):
            for action, extra in (("getAXB", {}), ("updateAXB", {"flag": 7}),
                                  ("updateAXB", {"phoneB": unique_hk("2")})):
                refused = c2.call(action, {**body, **extra})
                assert (code(refused), refused["msg"]) == (code(unknown), unknown["msg"])
                assert "data" not in refused
        # customerBindId "order-1" is account 2's own twin for account 2.
        own = c2.call("updateAXB", {"customerBindId": "order-1", "flag": 5})["data"]
        assert own["bindId"] == accounts.twin["bindId"]
        assert code(c2.call("getAXB", {"customerBindId": "order-ext"})) == 10013
        assert c1.call("getAXB", {"bindId": accounts.axb["bindId"]})["data"] == before


def test_groups(accounts: Accounts) -> None:
    """Another account's groupId is 10019 in every group action, as an unknown one is, and
    nothing of the group changes."""
    member = unique_hk("6")
    with accounts.c1() as c1, accounts.c2() as c2:
        group = c1.call("createGroup", {"phones": member, "groupName": "mine"})["data"]["groupId"]
        axg = c1.call("bindAXG", {"phoneA": unique_hk("1"), "groupId": group,
                                  "expireSecond": 600})["data"]
        for groupid in (group, "0"):
            for action, body in (
                    ("updateGroup", {"groupId": groupid, "operateType": 2,
                                     "phones": unique_hk("6")}),
                    ("deleteGroup", {"groupId": groupid}),
                    ("bindAXG", {"phoneA": unique_hk("1"), "groupId": groupid,
                                 "expireSecond": 60})):
                refused = c2.call(action, body)
                assert (code(refused), refused["msg"]) == (10019, "group does not exist")
        assert c2.call("listGroup", {})["data"] == {"groups": [], "total": 0}
        assert c1.call("listGroup", {})["data"]["groups"][0]["phones"] == member
        answer = accounts.sw().query(member, axg["did"])
        assert answer["data"]["callee"] != "" and code(answer) == 0


def test_block_lists(accounts: Accounts) -> None:
    """Each account's block list is its own: another account's entries neither block calls
    to this account's numbers nor can be listed or removed by it."""
    with accounts.c1() as c1, accounts.c2() as c2:
        assert c2.call("addBlacklist", {"phones": accounts.b})["data"] == {"added": 1}
        assert c1.call("addBlacklist", {"phones": accounts.a})["data"] == {"added": 1}
        assert c2.call("removeBlacklist", {"phones": accounts.a})["data"] == {"removed": 0}
        assert c2.call("getBlacklist", {})["data"] == {"phones": [accounts.b], "total": 1}
        assert c1.call("getBlacklist", {})["data"] == {"phones": [accounts.a], "total": 1}
        sw = accounts.sw()
        # b is on account 2's list only: b still reaches a on account 1's number.
        assert sw.query(accounts.b, accounts.axb["did"])["data"]["callee"] == accounts.a
        assert code(sw.query(accounts.a, accounts.axb["did"])) == 10024
        assert code(sw.query(accounts.b, accounts.twin["did"])) == 10024
        assert sw.query(accounts.a, accounts.twin["did"])["data"]["callee"] == accounts.b
