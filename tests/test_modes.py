"""The binding modes of ``shared/spec/modes.md``, route by route, on every store.

Binds of the v1-only modes go through ``pns.core.Service`` on the server's store (the v1 HTTP
surface is another branch's); every query goes through the old endpoint's ``queryAXB`` of a
running server, so the answer's ``display`` and ``bindType`` are checked on the wire, and on
SQLite the server's in-memory read index must see binds made by this other process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from pns.core import Service
from pns.errors import Code, PnsError
from pns.model import (
    BIND_TYPE_AX,
    BIND_TYPE_AXB,
    BIND_TYPE_AXEYB,
    BIND_TYPE_AXYB,
    BIND_TYPE_NXEYB,
    BIND_TYPE_XYB,
    Account,
    Binding,
)
from pns.store import open_store

from .conftest import Server, Tenant, cli, create_tenant, unique_hk

T = TypeVar("T")


class Binder:
    """A Service on the server's store, run on a loop of its own (the tests are sync)."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.store = self.loop.run_until_complete(open_store(url))
        self.service = Service(self.store)

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(work())

    def account(self, tenant: Tenant) -> Account:
        account = self.run(lambda: self.store.get_account(tenant.access_key))
        assert account is not None
        return account

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def binder(server: Server) -> Iterator[Binder]:
    b = Binder(server.store_url)
    yield b
    b.close()


def _code(binder: Binder, work: Callable[[], Awaitable[Any]]) -> int:
    try:
        binder.run(work)
    except PnsError as exc:
        return int(exc.code)
    return 0


def _route(server: Server, switch: Tenant, caller: str, did: str) -> tuple[int, dict[str, Any]]:
    answer = server.client(switch).query(caller, did)
    return answer["code"], answer.get("data", {})


def test_ax_routes_anyone_but_a_to_a_shown_x(server: Server, binder: Binder, customer: Tenant,
                                             switch: Tenant) -> None:
    account = binder.account(customer)
    a, c = unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_ax(account, a, 600, customer_bind_id="ax1"))
    assert bound.bind_type == BIND_TYPE_AX and bound.x in customer.numbers and bound.b == ""
    code, data = _route(server, switch, c, bound.x)
    assert code == 0 and data["callee"] == a and data["display"] == bound.x
    assert data["bindType"] == BIND_TYPE_AX
    code, data = _route(server, switch, unique_hk("6"), bound.x)  # anyone
    assert code == 0 and data["callee"] == a
    assert _route(server, switch, a, bound.x)[0] == Code.BINDING_NOT_EXIST  # (A, X) → 10013
    # Idempotent by customerBindId; another request under it is refused.
    again = binder.run(lambda: binder.service.bind_ax(account, a, 600, customer_bind_id="ax1"))
    assert again == bound
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, customer_bind_id="ax1")) == Code.CUSTOMER_BIND_ID_REUSED
    # Listed with its bindType.
    listed = server.client(customer).call("getAXBList", {})["data"]["bindList"]
    item = next(i for i in listed if i["bindId"] == bound.bind_id)
    assert item["bindType"] == BIND_TYPE_AX and item["phoneA"] == a and item["phoneB"] == ""


def test_ax_holds_x_alone(server: Server, binder: Binder, customer: Tenant,
                          switch: Tenant) -> None:
    account = binder.account(customer)
    client = server.client(customer)
    x0, x1, x2 = customer.numbers
    pair = client.bind_axb(unique_hk("6"), unique_hk("6"), 600, phoneX=x0)
    assert pair["code"] == 0
    # X with a binding cannot be an AX's; a free one can.
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, phone_x=x0)) == Code.PARTY_ALREADY_BOUND
    ax = binder.run(lambda: binder.service.bind_ax(account, unique_hk("6"), 600, phone_x=x1))
    # No other binding on an AX's X: AXB, extension, another AX.
    assert client.bind_axb(unique_hk("6"), unique_hk("6"), 600, phoneX=x1)["code"] == \
        Code.PARTY_ALREADY_BOUND
    assert client.call("bindAXBExtension", {"phoneA": unique_hk("6"), "phoneX": x1,
                                            "expireSecond": 600})["code"] == \
        Code.PARTY_ALREADY_BOUND
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, phone_x=x1)) == Code.PARTY_ALREADY_BOUND
    # Allocation skips it: AXB binds land on x0 and x2 only, AX on none left.
    for _ in range(4):
        data = client.bind_axb(unique_hk("6"), unique_hk("6"), 600)["data"]
        assert data["did"] in (x0, x2)
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600)) == Code.NUMBERS_EXHAUSTED
    # Unbound, X is free for anyone again.
    assert client.call("unbindAXB", {"bindId": ax.bind_id})["code"] == 0
    assert client.bind_axb(unique_hk("6"), unique_hk("6"), 600, phoneX=x1)["code"] == 0


def test_ax_expired_releases_x(server: Server, binder: Binder, customer: Tenant) -> None:
    account = binder.account(customer)
    x = customer.numbers[0]
    now = int(time.time())
    binder.run(lambda: binder.service.bind_ax(account, unique_hk("6"), 1, phone_x=x,
                                              now=now - 10))
    # Expired (never swept): X takes any binding.
    assert server.client(customer).bind_axb(unique_hk("6"), unique_hk("6"), 600,
                                            phoneX=x)["code"] == 0


def test_axb_answers_show_x(server: Server, customer: Tenant, switch: Tenant) -> None:
    a, b = unique_hk("6"), unique_hk("6")
    data = server.client(customer).bind_axb(a, b, 600)["data"]
    code, answer = _route(server, switch, a, data["did"])
    assert code == 0 and answer["callee"] == b and answer["display"] == data["did"]
    assert answer["bindType"] == BIND_TYPE_AXB


def test_bad_input_is_a_code(binder: Binder, customer: Tenant) -> None:
    account = binder.account(customer)
    assert _code(binder, lambda: binder.service.bind_ax(
        account, "12", 600)) in (Code.NO_COUNTRY_PREFIX, Code.NUMBER_EMPTY, Code.BAD_PARAMETER)
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, ext="e" * 1025)) == Code.BAD_PARAMETER
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, iso2="ZZ")) == Code.BAD_PARAMETER
    # A region without numbers of the account: 10008.
    assert _code(binder, lambda: binder.service.bind_ax(
        account, unique_hk("6"), 600, iso2="DE")) == Code.NO_VIRTUAL_NUMBER



def test_axyb_routes(server: Server, binder: Binder, customer: Tenant, switch: Tenant) -> None:
    account = binder.account(customer)
    a, b = unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_axyb(account, a, b, 600))
    assert bound.bind_type == BIND_TYPE_AXYB and bound.x != bound.y
    assert {bound.x, bound.y} <= set(customer.numbers)
    # Before A's first answered query, B calling Y gets 10013.
    assert _route(server, switch, b, bound.y)[0] == Code.BINDING_NOT_EXIST
    code, data = _route(server, switch, a, bound.x)
    assert code == 0 and data["callee"] == b and data["display"] == bound.y
    assert data["bindType"] == BIND_TYPE_AXYB
    code, data = _route(server, switch, b, bound.y)
    # modes.md: (B,Y) → A, X — A reaches B again on X.
    assert code == 0 and data["callee"] == a and data["display"] == bound.x
    assert _route(server, switch, b, bound.x)[0] == Code.BINDING_NOT_EXIST
    # I1 on Y: A and B are parties on Y, so no AXB of A on Y.
    client = server.client(customer)
    assert client.bind_axb(a, unique_hk("6"), 600, phoneX=bound.y)["code"] == \
        Code.PARTY_ALREADY_BOUND
    item = next(i for i in client.call("getAXBList", {})["data"]["bindList"]
                if i["bindId"] == bound.bind_id)
    assert item["didY"] == bound.y and item["bindType"] == BIND_TYPE_AXYB
    # The operators' CLI lists and shows it with its Y.
    listed = [json.loads(line) for line in cli(
        "bindings", "list", "--account", customer.access_key, "--store", server.store_url,
        "--json").stdout.splitlines()]
    assert any(i["bindId"] == bound.bind_id and i["didY"] == bound.y and i["bindType"] == 3
               for i in listed)
    table = cli("bindings", "show", bound.bind_id, "--store", server.store_url).stdout
    assert "didY" in table and bound.y in table
    # Unbound: both numbers are free of A and B at once.
    assert client.call("unbindAXB", {"bindId": bound.bind_id})["code"] == 0
    assert _route(server, switch, a, bound.x)[0] == Code.BINDING_NOT_EXIST
    assert client.bind_axb(a, b, 600, phoneX=bound.y)["code"] == 0


def test_xyb_first_caller_is_captured(server: Server, binder: Binder, customer: Tenant,
                                      switch: Tenant) -> None:
    account = binder.account(customer)
    b, a, other = unique_hk("6"), unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_xyb(
        account, b, 600, customer_user_id="u-1", call_in_expire_second=300))
    assert bound.bind_type == BIND_TYPE_XYB and bound.a == "" and bound.y
    # X is held alone until the call.
    client = server.client(customer)
    assert client.bind_axb(unique_hk("6"), unique_hk("6"), 600, phoneX=bound.x)["code"] == \
        Code.PARTY_ALREADY_BOUND
    # B calling X is not the call-in.
    assert _route(server, switch, b, bound.x)[0] == Code.BINDING_NOT_EXIST
    # Two callers at once: exactly one is captured, the other gets 10013.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda caller: _route(server, switch, caller, bound.x),
                                [a, other]))
    winners = [i for i, (code, _) in enumerate(answers) if code == 0]
    assert len(winners) == 1
    assert [code for code, _ in answers].count(Code.BINDING_NOT_EXIST) == 1
    captured = (a, other)[winners[0]]
    data = answers[winners[0]][1]
    assert data["callee"] == b and data["display"] == bound.y
    # Now A and B reach each other on Y; X is released.
    code, data = _route(server, switch, b, bound.y)
    assert code == 0 and data["callee"] == captured and data["display"] == bound.y
    assert _route(server, switch, captured, bound.y)[1]["callee"] == b
    assert _route(server, switch, captured, bound.x)[0] == Code.BINDING_NOT_EXIST
    assert client.bind_axb(unique_hk("6"), unique_hk("6"), 600, phoneX=bound.x)["code"] == 0
    item = next(i for i in client.call("getAXBList", {})["data"]["bindList"]
                if i["bindId"] == bound.bind_id)
    assert item["phoneA"] == captured and item["customerUserId"] == "u-1"
    # The call-in set expireAt to now + callInExpireSecond.
    assert item["expireAt"] <= int(time.time()) + 301


def test_xyb_delayed_y_and_strategies(server: Server, binder: Binder, customer: Tenant,
                                      switch: Tenant) -> None:
    account = binder.account(customer)
    b, a = unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_xyb(
        account, b, 600, delayed_y=True, expire_strategy=2, call_in_expire_second=100))
    assert bound.y == ""
    code, data = _route(server, switch, a, bound.x)
    assert code == 0 and data["callee"] == b
    y = data["display"]
    assert y in customer.numbers and y != bound.x
    first = binder.run(lambda: binder.store.get_binding(bound.bind_id, int(time.time())))
    assert first is not None and first.y == y and first.a == a
    # Strategy 2 (extend): each answered query adds the period.
    assert _route(server, switch, b, y)[0] == 0
    later = binder.run(lambda: binder.store.get_binding(bound.bind_id, int(time.time())))
    assert later is not None and later.expire_at == first.expire_at + 100
    assert _code(binder, lambda: binder.service.bind_xyb(
        account, b, 600, expire_strategy=3)) == Code.BAD_PARAMETER


# --- AXG groups, on the old endpoint ----------------------------------------------------------
def _group(client: Any, phones: list[str], **extra: Any) -> str:
    answer = client.call("createGroup", {"phones": ",".join(phones), **extra})
    assert answer["code"] == 0, answer
    # NXCloud answers groupId at the top level of the envelope; data carries it too.
    assert answer["groupId"] == answer["data"]["groupId"]
    return str(answer["groupId"])


def test_axg_members_reach_a_and_a_reaches_b(server: Server, customer: Tenant,
                                             switch: Tenant) -> None:
    client = server.client(customer)
    members = [unique_hk("6") for _ in range(3)]
    a, outsider = unique_hk("6"), unique_hk("6")
    group_id = _group(client, members, groupName="sales", remark="r")
    listed = client.call("listGroup", {})["data"]
    item = next(g for g in listed["groups"] if g["groupId"] == group_id)
    assert item == {"customerId": str(customer.account_id), "groupName": "sales",
                    "groupId": group_id, "phones": ",".join(sorted(members)), "remark": "r"}
    assert listed["total"] >= 1
    bound = client.call("bindAXG", {"phoneA": a, "groupId": group_id, "expireSecond": 600,
                                    "phoneB": members[1]})
    assert bound["code"] == 0, bound
    x = bound["data"]["did"]
    for m in members:
        code, data = _route(server, switch, m, x)
        assert code == 0 and data["callee"] == a and data["display"] == x
        assert data["bindType"] == 2
    code, data = _route(server, switch, a, x)
    assert code == 0 and data["callee"] == members[1]
    assert _route(server, switch, outsider, x)[0] == Code.BINDING_NOT_EXIST
    item = next(i for i in client.call("getAXBList", {})["data"]["bindList"]
                if i["bindId"] == bound["data"]["bindId"])
    assert item["groupId"] == group_id and item["bindType"] == 2
    # A member bound on X elsewhere: I1 with members on X.
    assert client.bind_axb(members[0], unique_hk("6"), 600, phoneX=x)["code"] == \
        Code.PARTY_ALREADY_BOUND
    # Adding a member gives reach at once; removing one ends it at once.
    assert client.call("updateGroup", {"groupId": group_id, "operateType": 0,
                                       "phones": outsider})["code"] == 0
    assert _route(server, switch, outsider, x)[1]["callee"] == a
    assert client.call("updateGroup", {"groupId": group_id, "operateType": 1,
                                       "phones": members[0]})["code"] == 0
    assert _route(server, switch, members[0], x)[0] == Code.BINDING_NOT_EXIST
    assert client.bind_axb(members[0], unique_hk("6"), 600, phoneX=x)["code"] == 0
    # A change that would break I1 on X changes nothing: members[0] is now bound on X.
    assert client.call("updateGroup", {"groupId": group_id, "operateType": 2,
                                       "phones": f"{members[0]},{members[2]}"})["code"] == \
        Code.PARTY_ALREADY_BOUND
    assert _route(server, switch, outsider, x)[1]["callee"] == a
    # In use: not deleted; unbound, it goes.
    assert client.call("deleteGroup", {"groupId": group_id})["code"] == Code.GROUP_IN_USE
    assert client.call("unbindAXB", {"bindId": bound["data"]["bindId"]})["code"] == 0
    assert client.call("deleteGroup", {"groupId": group_id})["code"] == 0
    assert client.call("deleteGroup", {"groupId": group_id})["code"] == Code.GROUP_NOT_EXIST


def test_axg_refusals(server: Server, customer: Tenant, switch: Tenant) -> None:
    client = server.client(customer)
    members = [unique_hk("6"), unique_hk("6")]
    group_id = _group(client, members)
    assert client.call("createGroup", {"phones": f"{unique_hk('6')},4915112345678"})["code"] \
        == Code.GROUP_INVALID
    many = ",".join(unique_hk("6") for _ in range(201))
    assert client.call("createGroup", {"phones": many})["code"] == Code.GROUP_INVALID
    assert client.call("bindAXG", {"phoneA": unique_hk("6"), "groupId": "nope",
                                   "expireSecond": 60})["code"] == Code.GROUP_NOT_EXIST
    assert client.call("bindAXG", {"phoneA": unique_hk("6"), "groupId": group_id,
                                   "expireSecond": 60, "phoneB": unique_hk("6")})["code"] == \
        Code.NOT_GROUP_MEMBER
    # Without phoneB, A calling X gets 10013.
    a = unique_hk("6")
    bound = client.call("bindAXG", {"phoneA": a, "groupId": group_id, "expireSecond": 60})
    assert bound["code"] == 0
    assert _route(server, switch, a, bound["data"]["did"])[0] == Code.BINDING_NOT_EXIST
    # Another account cannot see or use the group.
    other = create_tenant(server.store_url, numbers=1)
    assert server.client(other).call("bindAXG", {"phoneA": unique_hk("6"), "groupId": group_id,
                                                 "expireSecond": 60})["code"] == \
        Code.GROUP_NOT_EXIST
    assert client.call("updateGroup", {"groupId": group_id, "operateType": 3,
                                       "phones": members[0]})["code"] == Code.BAD_PARAMETER
    assert client.call("updateGroup", {"groupId": group_id, "operateType": 1,
                                       "phones": ",".join(members)})["code"] == \
        Code.GROUP_INVALID


# --- AXEYB and NXEYB --------------------------------------------------------------------------
def _route_ext(server: Server, switch: Tenant, caller: str, did: str,
               extension: str) -> tuple[int, dict[str, Any]]:
    answer = server.client(switch).query(caller, did, extension)
    return answer["code"], answer.get("data", {})


def test_axeyb_with_a(server: Server, binder: Binder, customer: Tenant, switch: Tenant) -> None:
    account = binder.account(customer)
    a, b = unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_axeyb(account, b, 600, phone_a=a,
                                                         extension_length=4))
    assert bound.bind_type == BIND_TYPE_AXEYB and len(bound.extension) == 4
    assert bound.x != bound.y
    code, data = _route_ext(server, switch, a, bound.x, bound.extension)
    assert code == 0 and data["callee"] == b and data["display"] == bound.y
    assert data["bindType"] == BIND_TYPE_AXEYB
    assert _route_ext(server, switch, unique_hk("6"), bound.x, bound.extension)[0] == \
        Code.BINDING_NOT_EXIST
    assert _route(server, switch, a, bound.y)[1]["callee"] == b
    code, data = _route(server, switch, b, bound.y)
    assert code == 0 and data["callee"] == a and data["display"] == bound.y
    # One extension length per X: a 3-digit extension next to a 4-digit one is 10016.
    assert _code(binder, lambda: binder.service.bind_axeyb(
        account, unique_hk("6"), 600, phone_x=bound.x, extension="123",
        extension_length=3)) == Code.INVALID_EXTENSION


def test_axeyb_without_a_captures_one_first_caller(server: Server, binder: Binder,
                                                   customer: Tenant, switch: Tenant) -> None:
    account = binder.account(customer)
    b, first, second = unique_hk("6"), unique_hk("6"), unique_hk("6")
    bound = binder.run(lambda: binder.service.bind_axeyb(account, b, 600,
                                                         extension_length=4))
    assert bound.a == ""
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda caller: _route_ext(server, switch, caller, bound.x, bound.extension),
            [first, second]))
    assert sorted(code for code, _ in answers) == [0, Code.BINDING_NOT_EXIST]
    winner = (first, second)[[code for code, _ in answers].index(0)]
    loser = second if winner == first else first
    assert _route_ext(server, switch, winner, bound.x, bound.extension)[1]["callee"] == b
    assert _route_ext(server, switch, loser, bound.x, bound.extension)[0] == \
        Code.BINDING_NOT_EXIST
    code, data = _route(server, switch, b, bound.y)
    assert code == 0 and data["callee"] == winner and data["display"] == bound.y


def test_nxeyb_makes_a_child_per_caller(server: Server, binder: Binder, customer: Tenant,
                                        switch: Tenant) -> None:
    account = binder.account(customer)
    b, a1, a2 = unique_hk("6"), unique_hk("6"), unique_hk("6")
    parent = binder.run(lambda: binder.service.bind_nxeyb(account, b, 600, api_version=1))
    assert len(parent.extension) == 4  # v1's extensions have 4 digits
    assert parent.bind_type == BIND_TYPE_NXEYB and parent.y == ""
    code, data = _route_ext(server, switch, a1, parent.x, parent.extension)
    assert code == 0 and data["callee"] == b and data["bindType"] == BIND_TYPE_NXEYB
    y1 = data["display"]
    assert y1 in customer.numbers and y1 != parent.x
    # The child binding A1-Y1-B: both ways on Y1, shown Y1.
    code, data = _route(server, switch, b, y1)
    assert code == 0 and data["callee"] == a1 and data["display"] == y1
    assert _route(server, switch, a1, y1)[1]["callee"] == b
    # Another caller gets another Y (B is bound on Y1).
    code, data = _route_ext(server, switch, a2, parent.x, parent.extension)
    assert code == 0 and data["callee"] == b and data["display"] not in (y1, parent.x)
    # No Y left where B is free: 10010 with the fail prompt.
    code, data = _route_ext(server, switch, unique_hk("6"), parent.x, parent.extension)
    assert code == Code.NUMBERS_EXHAUSTED and data["audioWhenCallFail"] == "fail.wav"
    listed = server.client(customer).call("getAXBList", {})["data"]["bindList"]
    children = [i for i in listed if i.get("parentBindId") == parent.bind_id]
    assert len(children) == 2 and all(i["bindType"] == BIND_TYPE_NXEYB for i in children)
    # Unbinding the parent ends its children.
    assert server.client(customer).call("unbindAXB", {"bindId": parent.bind_id})["code"] == 0
    assert _route(server, switch, b, y1)[0] == Code.BINDING_NOT_EXIST
    listed = server.client(customer).call("getAXBList", {})["data"]["bindList"]
    assert not [i for i in listed if i.get("parentBindId") == parent.bind_id]


def test_i1_on_y_under_concurrent_binds(server: Server, binder: Binder,
                                        customer: Tenant) -> None:
    """Two binds of one A on one Y through two Xs at once: exactly one wins, and the loser
    leaves nothing behind on its X (on Redis Cluster, Y's slot decides)."""
    account = binder.account(customer)
    x0, x1, y = customer.numbers
    a = unique_hk("6")

    async def both() -> list[Any]:
        return list(await asyncio.gather(
            binder.service.bind_axyb(account, a, unique_hk("6"), 600, phone_x=x0, phone_y=y),
            binder.service.bind_axyb(account, a, unique_hk("6"), 600, phone_x=x1, phone_y=y),
            return_exceptions=True))

    results = binder.run(both)
    wins = [r for r in results if isinstance(r, Binding)]
    losses = [r for r in results if isinstance(r, PnsError)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert losses[0].code == Code.PARTY_ALREADY_BOUND
    loser_x = x1 if wins[0].x == x0 else x0
    assert server.client(customer).bind_axb(a, unique_hk("6"), 600,
                                            phoneX=loser_x)["code"] == 0
