"""lifecycle.md through the API, on every store: getAXB, updateAXB, callDirection, maxDuration,
renewOnCall and a binding's own fail prompt."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pns.client import PnsClient, signed_headers

from .conftest import Server, Tenant, cli, cli_json, create_tenant, unique_hk


def code(envelope: dict[str, Any]) -> int:
    return int(envelope["code"])


def ok(envelope: dict[str, Any]) -> dict[str, Any]:
    assert envelope["code"] == 0, envelope
    data: dict[str, Any] = envelope["data"]
    return data


def pair() -> tuple[str, str]:
    return unique_hk("1"), unique_hk("2")


def get(c: PnsClient, bind_id: str) -> dict[str, Any]:
    return c.call("getAXB", {"bindId": bind_id})


def update(c: PnsClient, bind_id: str, **fields: Any) -> dict[str, Any]:
    return c.call("updateAXB", {"bindId": bind_id, **fields})


def test_get_axb_answers_the_binding_with_every_field(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 600, customerBindId="ride-get", callDirection=1,
                          maxDuration=120, renewOnCall=300, audioWhenCallFail="late.wav"))
    data = ok(get(c, bound["bindId"]))
    assert data == {
        "customerId": str(customer.account_id), "businessId": "", "bindId": bound["bindId"],
        "customerBindId": "ride-get", "phoneA": a, "phoneB": b, "did": bound["did"],
        "flag": 0, "expireAt": bound["expireAt"], "bindType": 0, "expireSecond": 600,
        "callDirection": 1, "maxDuration": 120, "renewOnCall": 300,
        "audioWhenCallFail": "late.wav",
    }
    assert ok(c.call("getAXB", {"customerBindId": "ride-get"})) == data
    other = server.client(create_tenant(server.store_url, numbers=1))
    assert code(get(other, bound["bindId"])) == 10013  # another account's
    assert code(get(c, "0" * 32)) == 10013
    assert code(c.call("getAXB", {})) == 1002
    assert code(c.unbind(bound["bindId"])) == 0
    assert code(get(c, bound["bindId"])) == 10013  # no longer active


def test_update_moves_b_keeps_bind_id_and_x_and_the_next_query_sees_it(
        server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    c_new = unique_hk("3")
    bound = ok(c.bind_axb(a, b, 600))
    assert ok(sw.query(b, bound["did"]))["callee"] == a
    changed = ok(update(c, bound["bindId"], phoneB=c_new, flag=1, businessId="trip-9"))
    assert (changed["bindId"], changed["did"]) == (bound["bindId"], bound["did"])
    assert (changed["phoneA"], changed["phoneB"], changed["flag"]) == (a, c_new, 1)
    assert changed["businessId"] == "trip-9"
    assert changed["expireAt"] == bound["expireAt"]  # expireSecond not given: kept
    assert ok(get(c, bound["bindId"])) == changed
    # At once: the old B no longer reaches A, the new B does, and A reaches the new B.
    assert code(sw.query(b, bound["did"])) == 10013
    assert ok(sw.query(c_new, bound["did"]))["callee"] == a
    assert ok(sw.query(a, bound["did"]))["callee"] == c_new
    assert ok(c.list_bindings(1000, 0))["bindList"][-1]["phoneB"] == c_new
    # The old B is free on X again.
    assert code(c.bind_axb(b, unique_hk("4"), 0, phoneX=bound["did"])) == 0


def test_update_expire_second_counts_from_now(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    bound = ok(c.bind_axb(*pair(), 60))
    before = int(time.time())
    longer = ok(update(c, bound["bindId"], expireSecond=7200))
    assert before + 7200 <= longer["expireAt"] <= int(time.time()) + 7200
    assert longer["expireSecond"] == 7200
    forever = ok(update(c, bound["bindId"], expireSecond="0"))
    assert (forever["expireAt"], forever["expireSecond"]) == (0, 0)


def test_a_refused_update_changes_nothing(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 600))
    x = bound["did"]
    holder_a, holder_b = pair()
    assert code(c.bind_axb(holder_a, holder_b, 0, phoneX=x)) == 0
    before = ok(get(c, bound["bindId"]))
    refusals = [
        ({"phoneB": holder_b, "flag": 5}, 10017),  # a party of another binding on X
        ({"phoneB": holder_a, "maxDuration": 9}, 10017),
        ({"phoneB": a}, 10002),  # equal to A
        ({"phoneB": "8613800138000"}, 10004),  # another country code
        ({"phoneB": ""}, 10001),
        ({"phoneB": "12"}, 1002),  # as for a bind
        ({"callDirection": 3}, 1002),
        ({"maxDuration": 86401, "phoneB": unique_hk("5")}, 1002),
        ({"maxDuration": -1}, 1002),
        ({"renewOnCall": 7_776_001}, 1002),
        ({"expireSecond": -5}, 1002),
        ({"flag": "x"}, 1002),
        ({"audioWhenCallFail": "a" * 1025}, 1002),
        ({"businessId": "b" * 129}, 1002),
    ]
    for fields, expected in refusals:
        assert code(update(c, bound["bindId"], **fields)) == expected, fields
    assert ok(get(c, bound["bindId"])) == before
    assert code(update(c, "0" * 32, flag=1)) == 10013
    assert code(c.call("updateAXB", {"flag": 1})) == 1002
    other = server.client(create_tenant(server.store_url, numbers=1))
    assert code(update(other, bound["bindId"], flag=1)) == 10013


def test_a_field_that_does_not_apply_to_the_kind_is_refused(server: Server,
                                                            customer: Tenant) -> None:
    c = server.client(customer)
    x = customer.numbers[0]
    ax = ok(c.bind_extension(unique_hk("1"), x, 600))  # an extension binding without B
    assert code(update(c, ax["bindId"], phoneB=unique_hk("2"))) == 1002
    assert ok(update(c, ax["bindId"], maxDuration=30))["maxDuration"] == 30


def test_update_is_replay_guarded(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    bound = ok(c.bind_axb(*pair(), 600))
    body = json.dumps({"bindId": bound["bindId"], "flag": 3}).encode()
    headers = signed_headers(customer.access_key, customer.access_secret, "updateAXB", body)
    raw = PnsClient(server.url, "k", "s")
    try:
        assert json.loads(raw.send(body, headers)[1])["code"] == 0
        assert json.loads(raw.send(body, headers)[1])["code"] == 1006
    finally:
        raw.close()


def test_call_direction(server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 600, callDirection=1))  # only A may call
    x = bound["did"]
    refused = sw.query(b, x)
    assert code(refused) == 10023 and refused["msg"] == "call direction not allowed"
    assert refused["data"]["audioWhenCallFail"] == "fail.wav"  # the fail prompt travels
    assert ok(sw.query(a, x))["callee"] == b
    assert ok(update(c, bound["bindId"], callDirection=2))["callDirection"] == 2
    assert code(sw.query(a, x)) == 10023
    assert ok(sw.query(b, x))["callee"] == a
    assert ok(update(c, bound["bindId"], callDirection=0))["callDirection"] == 0
    assert code(sw.query(a, x)) == 0 and code(sw.query(b, x)) == 0
    assert code(c.bind_axb(*pair(), 600, callDirection=7)) == 1002
    # An extension binding without B: "B" is whoever dials the extension.
    ext = ok(c.bind_extension(unique_hk("1"), customer.numbers[1], 600, callDirection=1))
    assert code(sw.query(unique_hk("2"), ext["did"], ext["extension"])) == 10023


def test_max_duration_is_in_every_success_answer(server: Server, customer: Tenant,
                                                 switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    plain = ok(c.bind_axb(a, b, 600))
    assert ok(sw.query(b, plain["did"]))["maxDuration"] == 0
    limited = ok(c.bind_axb(*(p := pair()), 600, maxDuration=45))
    assert ok(sw.query(p[0], limited["did"]))["maxDuration"] == 45
    ext = ok(c.bind_extension(unique_hk("1"), customer.numbers[2], 600, maxDuration="90"))
    answer = ok(sw.query(unique_hk("2"), ext["did"], ext["extension"]))
    assert answer["maxDuration"] == 90
    assert ok(update(c, limited["bindId"], maxDuration=0))["maxDuration"] == 0
    assert ok(sw.query(p[1], limited["did"]))["maxDuration"] == 0
    assert code(c.bind_axb(*pair(), 600, maxDuration=86401)) == 1002


def _expire_at_after_renewal(c: PnsClient, bind_id: str, beyond: int) -> int:
    """The renewal lands just after the answer: wait (bounded) until getAXB shows it."""
    deadline = time.monotonic() + 10
    while True:
        expire_at = int(ok(get(c, bind_id))["expireAt"])
        if expire_at >= beyond or time.monotonic() > deadline:
            return expire_at
        time.sleep(0.02)


def test_renew_on_call_slides_the_expiry(server: Server, customer: Tenant,
                                         switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 60, renewOnCall=3600))
    asked = int(time.time())
    assert ok(sw.query(b, bound["did"]))["callee"] == a
    assert _expire_at_after_renewal(c, bound["bindId"], asked + 3600) >= asked + 3600
    # Never shortened: a binding expiring later than now + renewOnCall keeps its expiry.
    later = ok(c.bind_axb(*(p := pair()), 86400, renewOnCall=60))
    assert ok(sw.query(p[0], later["did"]))["callee"] == p[1]
    assert ok(c.bind_axb(*pair(), 0, renewOnCall=60))  # flush: a later write has landed
    assert ok(get(c, later["bindId"]))["expireAt"] == later["expireAt"]
    # A binding that never expires stays so.
    never = ok(c.bind_axb(*(q := pair()), 0, renewOnCall=60))
    assert ok(sw.query(q[0], never["did"]))["callee"] == q[1]
    assert ok(update(c, never["bindId"], flag=1))["expireAt"] == 0
    # Without renewOnCall a query moves nothing.
    fixed = ok(c.bind_axb(*(r := pair()), 60))
    assert ok(sw.query(r[0], fixed["did"]))["callee"] == r[1]
    assert ok(get(c, fixed["bindId"]))["expireAt"] == fixed["expireAt"]
    assert code(c.bind_axb(*pair(), 60, renewOnCall=7_776_001)) == 1002


def test_a_binding_prompt_overrides_the_account_prompt(server: Server, customer: Tenant,
                                                       switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    own = ok(c.bind_axb(a, b, 600, audioWhenCallFail="ride.wav", callDirection=1))
    assert code(sw.query(b, own["did"])) == 10023
    assert sw.query(b, own["did"])["data"]["audioWhenCallFail"] == "ride.wav"
    answer = ok(sw.query(a, own["did"]))
    assert answer["audioWhenCallFail"] == "ride.wav"
    assert answer["audioWhenDtmfNeed"] == "need.wav"  # the others stay the account's
    plain = ok(c.bind_axb(*(p := pair()), 600))
    assert ok(sw.query(p[0], plain["did"]))["audioWhenCallFail"] == "fail.wav"
    ok(update(c, own["bindId"], audioWhenCallFail=""))
    assert ok(sw.query(a, own["did"]))["audioWhenCallFail"] == "fail.wav"


def test_a_call_ended_at_max_duration_is_recorded_as_allotted_timeout(
        server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 600, maxDuration=30))
    answer = ok(sw.query(a, bound["did"]))
    assert answer["maxDuration"] == 30
    start = int(time.time())
    assert code(sw.report_call(answer["callId"], startAt=start, ringAt=start,
                               answerAt=start + 1, hangupAt=start + 31,
                               hangupCause="ALLOTTED_TIMEOUT", hangup=1)) == 0
    records = ok(c.call_records(bindId=bound["bindId"]))["records"]
    assert [(r["hangupCause"], r["hangupCode"], r["duration"]) for r in records] == [
        ("ALLOTTED_TIMEOUT", 602, 30)]


# --- cool-off ---------------------------------------------------------------------------------
def test_cool_off_keeps_a_party_off_the_number_it_left(server: Server, switch: Tenant) -> None:
    tenant = create_tenant(server.store_url, numbers=2, cool_off_seconds=3600)  # type: ignore[arg-type]
    c, sw = server.client(tenant), server.client(switch)
    a, b = pair()
    first = ok(c.bind_axb(a, b, 600))
    x1 = first["did"]
    (x2,) = [x for x in tenant.numbers if x != x1]
    assert code(c.unbind(first["bindId"])) == 0
    # A is given the other number, never X1 again while it cools off.
    second = ok(c.bind_axb(a, unique_hk("3"), 600))
    assert second["did"] == x2
    exhausted = c.bind_axb(a, unique_hk("4"), 600)
    assert code(exhausted) == 10010
    assert "1 number(s) held back by cool-off" in exhausted["msg"], exhausted
    named = c.bind_axb(unique_hk("5"), b, 600, phoneX=x1)  # B cools off on X1 too
    assert code(named) == 10017 and "cool-off" in named["msg"] and "until" in named["msg"]
    until = int(named["msg"].rsplit("(", 1)[1].rstrip(")"))
    assert int(time.time()) + 3590 <= until <= int(time.time()) + 3600
    assert code(c.bind_extension(a, x1, 600)) == 10017  # naming X by an extension bind
    # Whoever calls the old X back hears "no binding", not a stranger.
    assert code(sw.query(b, x1)) == 10013
    # Other parties are not held back.
    assert ok(c.bind_axb(*pair(), 600, phoneX=x1))["did"] == x1


def test_cool_off_counts_from_expiry_swept_or_not(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=2, cool_off_seconds=3600)  # type: ignore[arg-type]
    c = server.client(tenant)
    a, b = pair()
    first = ok(c.bind_axb(a, b, 1))
    deadline = time.monotonic() + 10
    while code(get(c, first["bindId"])) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Just expired (the sweeper may not have removed it yet): X1 is still held back.
    (x2,) = [x for x in tenant.numbers if x != first["did"]]
    assert ok(c.bind_axb(a, unique_hk("3"), 600))["did"] == x2
    named = c.bind_axb(b, unique_hk("4"), 600, phoneX=first["did"])
    assert code(named) == 10017, named
    assert named["msg"].endswith(f"({first['expireAt'] + 3600})")


def test_without_cool_off_a_number_is_given_again_at_once(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=1)
    c = server.client(tenant)
    a, b = pair()
    first = ok(c.bind_axb(a, b, 600))
    assert code(c.unbind(first["bindId"])) == 0
    assert ok(c.bind_axb(a, b, 600))["did"] == first["did"]


# --- the caller block list --------------------------------------------------------------------
def test_a_blocked_caller_gets_10024_on_every_number_of_the_account(
        server: Server, customer: Tenant, switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    a, b = pair()
    bound = ok(c.bind_axb(a, b, 600))
    nuisance = unique_hk("6")
    assert ok(c.call("addBlacklist", {"phones": f"{b}, +{nuisance},{b}"})) == {"added": 2}
    assert ok(c.call("addBlacklist", {"phones": b})) == {"added": 0}
    listed = ok(c.call("getBlacklist", {}))
    assert listed == {"phones": sorted([b, nuisance]), "total": 2}
    assert ok(c.call("getBlacklist", {"limit": 1, "offset": 1})) == {
        "phones": [max(b, nuisance)], "total": 2}
    for caller, x in ((b, bound["did"]), (nuisance, customer.numbers[0]),
                      (nuisance, customer.numbers[1])):
        refused = sw.query(caller, x)
        assert code(refused) == 10024 and refused["msg"] == "caller is blocked", refused
        assert refused["data"]["audioWhenCallFail"] == "fail.wav"
    assert ok(sw.query(a, bound["did"]))["callee"] == b  # B may still be called
    # Another account's numbers do not know this list.
    other = create_tenant(server.store_url, numbers=1)
    assert code(sw.query(b, other.numbers[0])) == 10013
    assert ok(c.call("removeBlacklist", {"phones": b})) == {"removed": 1}
    assert ok(sw.query(b, bound["did"]))["callee"] == a
    assert ok(c.call("getBlacklist", {"limit": 10}))["phones"] == [nuisance]
    for body, expected in (({}, 1002), ({"phones": " , "}, 10001), ({"phones": "12"}, 1002)):
        assert code(c.call("addBlacklist", body)) == expected, body
    assert code(c.call("getBlacklist", {"limit": 1001})) == 10011
    assert code(sw.call("addBlacklist", {"phones": b})) == 1005  # customers only


# --- the command line -------------------------------------------------------------------------
def test_cli_updates_shows_cools_off_and_blocks(server: Server, customer: Tenant,
                                                switch: Tenant) -> None:
    c, sw = server.client(customer), server.client(switch)
    store = ("--store", server.store_url)
    a, b = pair()
    new_b = unique_hk("7")
    bound = ok(c.bind_axb(a, b, 600))
    changed = cli_json("bindings", "update", bound["bindId"], "--phone-b", new_b,
                       "--max-duration", "30", "--renew-on-call", "600", "--json", *store)
    assert (changed["bindId"], changed["did"], changed["phoneB"]) == (
        bound["bindId"], bound["did"], new_b)
    assert (changed["maxDuration"], changed["renewOnCall"]) == (30, 600)
    # Another process changed it: the server's very next answer knows.
    assert ok(sw.query(new_b, bound["did"]))["callee"] == a
    assert code(sw.query(b, bound["did"])) == 10013
    shown = cli_json("bindings", "show", bound["bindId"], "--json", *store)
    assert int(shown.pop("expireAt")) >= changed.pop("expireAt")  # the queries renewed it
    assert shown == changed
    refused = cli("bindings", "update", bound["bindId"], "--phone-b", a, *store, check=False)
    assert refused.returncode != 0 and "10002" in refused.stderr
    set_ = cli_json("account", "set", customer.access_key, "--cool-off", "120", "--json", *store)
    assert set_["coolOffSeconds"] == 120
    assert cli("account", "set", customer.access_key, "--cool-off", "2592001", *store,
               check=False).returncode != 0
    caller = unique_hk("8")
    assert cli_json("blacklist", "add", "--account", customer.access_key, caller, a,
                    "--json", *store) == {"added": 2}
    listed = cli("blacklist", "list", "--account", customer.access_key, "--json", *store)
    assert sorted(json.loads(line)["phone"] for line in listed.stdout.splitlines()) == sorted(
        [caller, a])
    deadline = time.monotonic() + 5  # the serving process reads the list again within 1 s
    while code(sw.query(a, bound["did"])) != 10024 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code(sw.query(a, bound["did"])) == 10024
    assert cli_json("blacklist", "remove", "--account", customer.access_key, a,
                    "--json", *store) == {"removed": 1}


def test_an_expired_binding_not_yet_swept_holds_its_number_back(store_url: str) -> None:
    """In the core, on every store, with no sweeper running: the cool-off of a binding that
    expired but is still stored counts from its expireAt."""
    from pns.core import Lifecycle, Service
    from pns.errors import PnsError
    from pns.model import AccountChanges, Role, VirtualNumber
    from pns.store import open_store

    async def run() -> None:
        store = await open_store(store_url)
        try:
            now = int(time.time())
            account = await store.create_account("cool", Role.CUSTOMER, unique_hk("9"), "s", now)
            account = await store.update_account(account.access_key,
                                                 AccountChanges(cool_off_seconds=100))
            assert account is not None
            xs = [unique_hk("3"), unique_hk("3")]
            await store.add_numbers([VirtualNumber(x, account.id, 852) for x in xs])
            service = Service(store)
            a, b = pair()
            first = await service.bind_axb(account, a, b, 10, now=now, life=Lifecycle())
            later = now + 20  # expired 10 s ago, never swept
            second = await service.bind_axb(account, a, unique_hk("4"), 0, now=later)
            assert second.x != first.x
            try:
                await service.bind_axb(account, unique_hk("5"), b, 0, phone_x=first.x, now=later)
                raise AssertionError("bound during cool-off")
            except PnsError as exc:
                assert int(exc.code) == 10017 and exc.msg.endswith(f"({now + 110})"), exc.msg
            # Once over, the number is given again.
            third = await service.bind_axb(account, b, unique_hk("6"), 0, phone_x=first.x,
                                           now=now + 111)
            assert third.x == first.x
        finally:
            await store.close()

    asyncio.run(run())
