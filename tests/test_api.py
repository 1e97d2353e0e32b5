"""The API end to end over HTTP, on every store: actions, error codes, rules of behaviour.md."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pns.client import PnsClient, signed_headers
from pns.model import Role

from .conftest import Server, Tenant, cli, create_tenant, unique_hk

A = "85211111114"
B = "85222222222"


def code(envelope: dict[str, Any]) -> int:
    return int(envelope["code"])


def assert_envelope(envelope: dict[str, Any], expected: int) -> None:
    assert envelope["code"] == expected, envelope
    assert isinstance(envelope["msg"], str) and envelope["msg"]
    assert isinstance(envelope["requestId"], str) and len(envelope["requestId"]) == 19
    assert envelope["requestId"].isdigit()


def fresh_pair() -> tuple[str, str]:
    return unique_hk("1"), unique_hk("2")


# --- the seed's own example ----------------------------------------------------------------
def test_seed_example_bind_then_query(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    # A and B of the seed are reused across tenants: each tenant has its own numbers, so I1
    # (keyed by X) still holds.
    bound = c.bind_axb(A, B, 1011, customerBindId="1")
    assert_envelope(bound, 0)
    assert bound["msg"] == "success"
    data = bound["data"]
    assert len(data["bindId"]) == 32 and int(data["bindId"], 16) >= 0
    assert data["did"] in customer.numbers
    assert data["expireAt"] >= int(time.time()) + 1000

    answer = server.client(switch).query(B, data["did"])
    assert_envelope(answer, 0)
    q = answer["data"]
    assert q["callee"] == A
    assert isinstance(q["callId"], str) and len(q["callId"]) == 19 and q["callId"].isdigit()
    assert q["flag"] == 0 and q["bindType"] == 0
    for prompt in ("audioWhenCallFail", "audioWhenDtmfNeed", "audioWhenDtmfErr"):
        assert isinstance(q[prompt], str)
    assert set(q) == {"callee", "callId", "flag", "audioWhenCallFail", "bindType",
                      "audioWhenDtmfNeed", "audioWhenDtmfErr", "display", "maxDuration"}
    assert q["display"] == data["did"]  # AXB: the callee is shown X
    # And the other way round.
    assert server.client(switch).query(A, data["did"])["data"]["callee"] == B


def test_call_ids_are_fresh(server: Server, customer: Tenant, switch: Tenant) -> None:
    a, b = fresh_pair()
    did = server.client(customer).bind_axb(a, b, 0)["data"]["did"]
    s = server.client(switch)
    ids = {s.query(a, did)["data"]["callId"] for _ in range(5)}
    assert len(ids) == 5


# --- bindAXB -------------------------------------------------------------------------------
def test_bind_normalises_numbers(server: Server, customer: Tenant, switch: Tenant) -> None:
    a, b = fresh_pair()
    pretty_a = f"+{a[:3]} {a[3:7]}-{a[7:]}"
    bound = server.client(customer).bind_axb(pretty_a, "00" + b, 0)
    assert_envelope(bound, 0)
    assert bound["data"]["expireAt"] == 0
    listed = server.client(customer).list_bindings()["data"]["bindList"]
    item = next(i for i in listed if i["bindId"] == bound["data"]["bindId"])
    assert (item["phoneA"], item["phoneB"]) == (a, b)
    # A caller without its country code is read against X's country.
    answer = server.client(switch).query(b[3:], bound["data"]["did"])
    assert answer["data"]["callee"] == a


def test_choose_x_spreads_over_least_loaded(server: Server, switch: Tenant) -> None:
    tenant = create_tenant(server.store_url, numbers=3)
    c = server.client(tenant)
    dids = [c.bind_axb(*fresh_pair(), 0)["data"]["did"] for _ in range(6)]
    assert sorted(dids.count(x) for x in tenant.numbers) == [2, 2, 2]


def test_bind_errors(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = fresh_pair()
    assert_envelope(c.bind_axb("", b, 0), 10001)
    assert_envelope(c.bind_axb(a, "  ", 0), 10001)
    assert_envelope(c.bind_axb(a, a, 0), 10002)
    assert_envelope(c.bind_axb(a, "447401264117", 0), 10004)
    assert_envelope(c.bind_axb("447401264118", "447401264117", 0), 10008)
    assert_envelope(c.bind_axb(a, "12", 0), 1002)
    assert_envelope(c.bind_axb(a, b, -1), 1002)
    assert_envelope(c.call("bindAXB", {"phoneA": a, "phoneB": b}), 1002)  # expireSecond missing
    assert_envelope(c.bind_axb(a, b, 0, customerBindId="x" * 65), 1002)
    assert_envelope(c.bind_axb(a, b, 0, flag=-1), 1002)


def test_exhausted_explains_itself(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=2)
    c = server.client(tenant)
    a = unique_hk("1")
    assert code(c.bind_axb(a, unique_hk("2"), 0)) == 0
    assert code(c.bind_axb(a, unique_hk("2"), 0)) == 0
    refused = c.bind_axb(a, unique_hk("2"), 0)
    assert_envelope(refused, 10010)
    assert "2 number(s)" in refused["msg"] and "phoneA is already bound on 2" in refused["msg"]


def test_requested_phone_x(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = fresh_pair()
    x = customer.numbers[1]
    assert c.bind_axb(a, b, 0, phoneX=x)["data"]["did"] == x
    assert_envelope(c.bind_axb(a, unique_hk("2"), 0, phoneX=x), 10017)
    other = create_tenant(server.store_url, numbers=1)
    assert_envelope(c.bind_axb(*fresh_pair(), 0, phoneX=other.numbers[0]), 10008)
    assert_envelope(c.bind_axb(*fresh_pair(), 0, phoneX="0"), 10007)


def test_idempotent_customer_bind_id(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    a, b = fresh_pair()
    first = c.bind_axb(a, b, 600, customerBindId="order-1", flag=1)
    again = c.bind_axb(a, b, 600, customerBindId="order-1", flag=1)
    assert code(first) == code(again) == 0
    assert again["data"] == first["data"]
    assert_envelope(c.bind_axb(a, b, 601, customerBindId="order-1", flag=1), 10014)
    assert_envelope(c.bind_axb(a, unique_hk("2"), 600, customerBindId="order-1", flag=1), 10014)
    listed = c.list_bindings()["data"]["bindList"]
    assert sum(1 for i in listed if i["customerBindId"] == "order-1") == 1
    # Once unbound, the id is free again.
    assert code(c.unbind(customer_bind_id="order-1")) == 0
    assert code(c.bind_axb(a, unique_hk("2"), 5, customerBindId="order-1")) == 0


def test_string_typed_integers_accepted(server: Server, customer: Tenant) -> None:
    """NXCloud's older revision sent flag and expireSecond as strings."""
    a, b = fresh_pair()
    bound = server.client(customer).call(
        "bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": "60", "flag": "1"})
    assert_envelope(bound, 0)


# --- expiry ----------------------------------------------------------------------------------
def test_expiry(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    a, b = fresh_pair()
    # expireAt is whole seconds: 2 s leave at least one for the query before expiry.
    bound = c.bind_axb(a, b, 2, phoneX=customer.numbers[2])
    did = bound["data"]["did"]
    assert server.client(switch).query(a, did)["data"]["callee"] == b
    time.sleep(3.1)
    expired = server.client(switch).query(a, did)
    assert_envelope(expired, 10013)
    assert expired["data"]["audioWhenCallFail"] == "fail.wav"
    assert bound["data"]["bindId"] not in {
        i["bindId"] for i in c.list_bindings()["data"]["bindList"]}
    assert_envelope(c.unbind(bound["data"]["bindId"]), 10013)
    # The numbers are free on that X again.
    assert code(c.bind_axb(a, b, 0, phoneX=customer.numbers[2])) == 0


# --- unbindAXB -------------------------------------------------------------------------------
def test_unbind(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    a, b = fresh_pair()
    bound = c.bind_axb(a, b, 0)["data"]
    assert_envelope(c.call("unbindAXB", {}), 1002)
    assert_envelope(c.unbind("0" * 32), 10013)
    other = create_tenant(server.store_url)
    assert_envelope(server.client(other).unbind(bound["bindId"]), 10013)
    assert_envelope(c.unbind(bound["bindId"]), 0)
    assert_envelope(c.unbind(bound["bindId"]), 10013)
    assert_envelope(server.client(switch).query(a, bound["did"]), 10013)
    # Free on that X at once.
    assert c.bind_axb(a, b, 0, phoneX=bound["did"])["data"]["did"] == bound["did"]


# --- getAXBList ------------------------------------------------------------------------------
def test_list_paging_and_total(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=4)
    c = server.client(tenant)
    ids = [c.bind_axb(*fresh_pair(), 0, businessId="busi_1")["data"]["bindId"]
           for _ in range(5)]
    page = c.list_bindings(limit=2, offset=1)["data"]
    assert page["total"] == 5
    assert [i["bindId"] for i in page["bindList"]] == ids[1:3]
    item = page["bindList"][0]
    assert item["customerId"] == str(tenant.account_id)
    assert item["businessId"] == "busi_1" and item["bindType"] == 0
    assert set(item) >= {"customerId", "businessId", "bindId", "customerBindId", "phoneA",
                         "phoneB", "did", "flag", "expireAt", "bindType"}
    assert [i["bindId"] for i in c.list_bindings(0, 0)["data"]["bindList"]] == ids
    assert c.list_bindings(10, 5)["data"] == {"bindList": [], "total": 5}
    assert_envelope(c.list_bindings(1001, 0), 10011)
    assert_envelope(c.list_bindings(-1, 0), 10011)
    assert_envelope(c.call("getAXBList", {"limit": "x", "offset": 0}), 10011)
    assert_envelope(c.list_bindings(10, -1), 10012)
    assert_envelope(c.call("getAXBList", {"limit": 10, "offset": 1.5}), 1002)


# --- extensions ------------------------------------------------------------------------------
def test_extension_binding_and_two_stage_query(server: Server, customer: Tenant,
                                               switch: Tenant) -> None:
    c = server.client(customer)
    s = server.client(switch)
    x = customer.numbers[0]
    a = unique_hk("1")
    bound = c.bind_extension(a, x, 0, extension="101")
    assert_envelope(bound, 0)
    assert bound["data"]["extension"] == "101" and bound["data"]["did"] == x
    stranger = unique_hk("9")
    # Stage one: no binding for this caller on X, but X has extensions: collect digits.
    first = s.query(stranger, x)
    assert_envelope(first, 0)
    assert first["data"]["callee"] == "" and first["data"]["bindType"] == 4
    assert first["data"]["audioWhenDtmfNeed"] == "need.wav"
    # Stage two: with the digits.
    second = s.query(stranger, x, extension="101")
    assert_envelope(second, 0)
    assert second["data"]["callee"] == a and second["data"]["extension"] == "101"
    assert second["data"]["bindType"] == 4
    wrong = s.query(stranger, x, extension="999")
    assert_envelope(wrong, 10013)
    assert wrong["data"]["audioWhenDtmfErr"] == "err.wav"
    # A cannot call out through an extension binding without B.
    assert_envelope(s.query(a, x, extension="101"), 10013)


def test_extension_with_b(server: Server, customer: Tenant, switch: Tenant) -> None:
    c = server.client(customer)
    s = server.client(switch)
    x = customer.numbers[1]
    a, b = fresh_pair()
    bound = c.call("bindAXBExtension", {"phoneA": a, "phoneB": b, "phoneX": x,
                                        "Extension": "202", "expireSecond": 0})
    assert bound["data"]["extension"] == "202"
    assert s.query(a, x, extension="202")["data"]["callee"] == b
    assert s.query(b, x, extension="202")["data"]["callee"] == a
    assert_envelope(s.query(unique_hk("9"), x, extension="202"), 10013)
    # The seed's case: B dials X directly and gets A with bindType 4.
    direct = s.query(b, x)["data"]
    assert direct["callee"] == a and direct["bindType"] == 4


def test_extension_errors(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    x = customer.numbers[2]
    a = unique_hk("1")
    auto = c.bind_extension(a, x, 0)
    assert_envelope(auto, 0)
    assert len(auto["data"]["extension"]) == 3 and auto["data"]["extension"].isdigit()
    taken = auto["data"]["extension"]
    assert_envelope(c.bind_extension(unique_hk("1"), x, 0, extension=taken), 10015)
    for bad in ("12", "1234", "12a", "\uff11\uff12\uff13"):  # fullwidth digits
        assert_envelope(c.bind_extension(unique_hk("1"), x, 0, extension=bad), 10016)
    assert_envelope(c.bind_extension(a, x, 0), 10017)
    other = create_tenant(server.store_url, numbers=1)
    assert_envelope(c.bind_extension(unique_hk("1"), other.numbers[0], 0), 10008)
    assert_envelope(c.call("bindAXBExtension", {"phoneA": unique_hk("1"), "expireSecond": 0}),
                    1002)


def test_no_free_extension(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=1)
    c = server.client(tenant)
    x = tenant.numbers[0]

    def bind(i: int) -> int:
        with server.client(tenant) as ci:
            return code(ci.bind_extension(unique_hk("1"), x, 0, extension=f"{i:03d}"))

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(bind, range(1000))) == {0}
    assert_envelope(c.bind_extension(unique_hk("1"), x, 0), 10018)


# --- queryAXB --------------------------------------------------------------------------------
def test_query_refusals(server: Server, customer: Tenant, switch: Tenant) -> None:
    s = server.client(switch)
    a, b = fresh_pair()
    did = server.client(customer).bind_axb(a, b, 0)["data"]["did"]
    stranger = s.query(unique_hk("9"), did)
    assert_envelope(stranger, 10013)
    assert stranger["msg"] == "binding not exist"
    assert stranger["data"]["audioWhenCallFail"] == "fail.wav"
    assert_envelope(s.query(a, "85299999999"), 10013)  # X of nobody
    assert_envelope(s.query("", did), 1002)
    assert_envelope(s.query(a, "1"), 10007)
    assert_envelope(s.query("anonymous", did), 10013)


def test_customer_may_query_only_its_numbers(server: Server, customer: Tenant) -> None:
    a, b = fresh_pair()
    did = server.client(customer).bind_axb(a, b, 0)["data"]["did"]
    assert server.client(customer).query(a, did)["data"]["callee"] == b
    other = create_tenant(server.store_url, numbers=1)
    assert_envelope(server.client(other).query(a, did), 1005)


# --- authentication --------------------------------------------------------------------------
def _post(server: Server, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    client = PnsClient(server.url, "k", "s")
    try:
        status, payload = client.send(body, headers)
    finally:
        client.close()
    return status, json.loads(payload)


@pytest.mark.parametrize("missing", ["accessKey", "action", "bizType", "ts", "sign"])
def test_missing_header(server: Server, customer: Tenant, missing: str) -> None:
    body = b'{"limit":1,"offset":0}'
    headers = signed_headers(customer.access_key, customer.access_secret, "getAXBList", body)
    del headers[missing]
    status, envelope = _post(server, headers, body)
    assert status == 200
    assert_envelope(envelope, 1001)
    assert missing in envelope["msg"]


def test_auth_refusals(server: Server, customer: Tenant, switch: Tenant) -> None:
    body = b'{"limit":1,"offset":0}'
    key, secret = customer.access_key, customer.access_secret

    def with_headers(**changes: str) -> int:
        headers = signed_headers(key, secret, "getAXBList", body)
        headers.update(changes)
        return code(_post(server, headers, body)[1])

    assert with_headers(bizType="1") == 1002
    assert with_headers(sign="0" * 32) == 1003
    assert with_headers(algorithm="sha1") == 1002
    assert with_headers(accessKey="nobody") == 1005
    assert with_headers(ts=str(int(time.time() * 1000) - 61_000)) == 1004
    assert with_headers(ts=str(int(time.time() * 1000) + 61_000)) == 1004
    assert with_headers(ts="yesterday") == 1004
    # The body signed is the body sent, byte for byte: one extra space breaks it.
    headers = signed_headers(key, secret, "getAXBList", body)
    assert code(_post(server, headers, body.replace(b",", b", "))[1]) == 1003
    # Unknown action: signed correctly, still 1002.
    headers = signed_headers(key, secret, "bindAXY", body)
    assert code(_post(server, headers, body)[1]) == 1002
    # A switch cannot bind.
    assert_envelope(server.client(switch).bind_axb(*fresh_pair(), 0), 1005)


def test_ts_just_inside_window(server: Server, customer: Tenant) -> None:
    c = server.client(customer)
    status, envelope = c.request("getAXBList", {"limit": 1, "offset": 0},
                                 ts=str(int(time.time() * 1000) - 55_000))
    assert status == 200 and envelope["code"] == 0


def test_sha256_signature(server: Server, customer: Tenant) -> None:
    c = server.client(customer, algorithm="sha256")
    assert_envelope(c.list_bindings(1, 0), 0)


def test_disabled_account(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=1)
    c = server.client(tenant)
    assert code(c.list_bindings(1, 0)) == 0
    cli("account", "set", tenant.access_key, "--disable", "--store", server.store_url)
    time.sleep(1.2)  # the account cache lives for one second
    assert_envelope(c.list_bindings(1, 0), 1005)
    cli("account", "set", tenant.access_key, "--enable", "--store", server.store_url)
    time.sleep(1.2)
    assert code(c.list_bindings(1, 0)) == 0


def test_replay_refused_for_state_changes_only(server: Server, customer: Tenant) -> None:
    a, b = fresh_pair()
    body = json.dumps({"phoneA": a, "phoneB": b, "expireSecond": 0}).encode()
    headers = signed_headers(customer.access_key, customer.access_secret, "bindAXB", body)
    assert code(_post(server, headers, body)[1]) == 0
    assert code(_post(server, headers, body)[1]) == 1006
    list_body = b'{"limit":1,"offset":0}'
    headers = signed_headers(customer.access_key, customer.access_secret, "getAXBList",
                             list_body)
    assert code(_post(server, headers, list_body)[1]) == 0
    assert code(_post(server, headers, list_body)[1]) == 0


def test_a_bind_replay_is_refused_whatever_its_first_answer(server: Server) -> None:
    """bindAXB claims its signature with its insert (README): a replay is 1006 after a
    binding, after a refusal (A is bound on the X asked for; a malformed body), after the
    answer of a repeated customerBindId (no insert: the signature is claimed by itself); the
    repeat itself, signed anew, still answers the same binding."""
    customer = create_tenant(server.store_url, numbers=2)
    a, b = fresh_pair()

    def twice(fields: dict[str, Any] | bytes) -> tuple[int, int, dict[str, Any]]:
        raw = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
        headers = signed_headers(customer.access_key, customer.access_secret, "bindAXB", raw)
        first = _post(server, headers, raw)[1]
        return code(first), code(_post(server, headers, raw)[1]), first

    bind = {"phoneA": a, "phoneB": b, "expireSecond": 600, "customerBindId": f"r{a}"}
    first, again, bound = twice(bind)
    assert (first, again) == (0, 1006)
    first, again, _ = twice({"phoneA": a, "phoneB": unique_hk("2"), "expireSecond": 0,
                             "phoneX": bound["data"]["did"]})
    assert (first, again) == (10017, 1006)
    assert twice(b'{"phoneA": 1}')[:2] == (1002, 1006)
    first, again, repeat = twice(bind)
    assert (first, again) == (0, 1006)
    assert repeat["data"]["bindId"] == bound["data"]["bindId"]
    assert server.client(customer).list_bindings(1000, 0)["data"]["total"] == 1


# --- malformed input -------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    b"{", b"[]", b"null", b"not json", b'{"phoneA": 85211111114, "phoneB": "1", '
    b'"expireSecond": 0}', b'{"phoneA": "1", "phoneB": "2", "expireSecond": true}',
    b'{"phoneA": null, "phoneB": "2", "expireSecond": 0}', b"\xff\xfe",
    b'{"phoneA": "1", "phoneB": "2", "expireSecond": 1.5}',
    b'{"phoneA": "1", "phoneB": "2", "expireSecond": 99999999999999999999999}', b"",
])
def test_malformed_bodies_get_1002(server: Server, customer: Tenant, body: bytes) -> None:
    headers = signed_headers(customer.access_key, customer.access_secret, "bindAXB", body)
    status, envelope = _post(server, headers, body)
    assert status == 200
    assert_envelope(envelope, 1002)


def test_unknown_fields_are_ignored(server: Server, customer: Tenant) -> None:
    a, b = fresh_pair()
    bound = server.client(customer).call("bindAXB", {
        "phoneA": a, "phoneB": b, "expireSecond": 0, "audioWhenCallInSuccess": "x.wav",
        "somethingNew": {"nested": [1, 2]}})
    assert_envelope(bound, 0)


def test_transport_errors_carry_envelopes(server: Server, customer: Tenant) -> None:
    client = PnsClient(server.url, "k", "s")
    status, payload = client.send(b"", {}, path="/nowhere", method="GET")
    assert status == 404 and json.loads(payload)["code"] == 1002
    status, payload = client.send(b"", {}, path="/api/pns/", method="GET")
    assert status == 405 and json.loads(payload)["code"] == 1002
    client.close()
    big = b'{"phoneA":"' + b"1" * (64 * 1024) + b'"}'
    headers = signed_headers(customer.access_key, customer.access_secret, "bindAXB", big)
    status, envelope = _post(server, headers, big)
    assert status == 413
    assert_envelope(envelope, 1002)
    # The server is still fine.
    assert code(server.client(customer).list_bindings(1, 0)) == 0


def test_healthz(server: Server) -> None:
    client = PnsClient(server.url, "k", "s")
    status, payload = client.send(b"", {}, path="/healthz", method="GET")
    client.close()
    assert status == 200 and json.loads(payload)["status"] == "ok"


# --- invariants under concurrency ------------------------------------------------------------
def test_concurrent_binds_keep_invariants(server: Server, switch: Tenant) -> None:
    """Many threads bind pairs drawn from a few numbers over a pool of two X: I1 must hold and
    every acknowledged binding must be listed."""
    tenant = create_tenant(server.store_url, numbers=2)
    people = [unique_hk("1") for _ in range(6)]
    pairs = [(a, b) for a in people for b in people if a < b]

    def bind(pair: tuple[str, str]) -> dict[str, Any]:
        with server.client(tenant) as c:
            return c.bind_axb(pair[0], pair[1], 0)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(bind, pairs * 2))
    assert {code(r) for r in results} <= {0, 10010}
    acknowledged = {r["data"]["bindId"] for r in results if code(r) == 0}
    listed = server.client(tenant).list_bindings()["data"]["bindList"]
    assert {i["bindId"] for i in listed} == acknowledged
    seen: set[tuple[str, str]] = set()
    for item in listed:
        for party in (item["phoneA"], item["phoneB"]):
            assert (item["did"], party) not in seen, "I1 broken"
            seen.add((item["did"], party))
    # Every bound caller reaches exactly its partner.
    s = server.client(switch)
    for item in listed:
        assert s.query(item["phoneA"], item["did"])["data"]["callee"] == item["phoneB"]


def test_concurrent_same_customer_bind_id_creates_one(server: Server) -> None:
    tenant = create_tenant(server.store_url, numbers=3)
    a, b = fresh_pair()

    base_ts = int(time.time() * 1000)

    def bind(i: int) -> dict[str, Any]:
        # A distinct ts per request: identical signatures would be refused as replays.
        ts = str(base_ts - i)
        with server.client(tenant) as c:
            body = {"phoneA": a, "phoneB": b, "expireSecond": 0, "customerBindId": "same"}
            return c.request("bindAXB", body, ts=ts)[1]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(bind, range(16)))
    assert {code(r) for r in results} == {0}
    assert len({r["data"]["bindId"] for r in results}) == 1
    assert server.client(tenant).list_bindings()["data"]["total"] == 1


def test_role_switch_account_via_cli(server: Server) -> None:
    out = cli("account", "create", "--name", "sw", "--role", "switch", "--store",
              server.store_url).stdout
    created = json.loads(out)
    assert created["role"] == Role.SWITCH.value and created["accessSecret"]
    tenant = Tenant(created["accessKey"], created["accessSecret"], created["id"], [])
    assert_envelope(server.client(tenant).list_bindings(1, 0), 1005)


def test_graceful_stop(server: Server) -> None:
    other = Server(server.store_url)
    other.proc.terminate()
    assert other.proc.wait(10) == 0


def test_client_survives_a_connection_the_server_closed(server: Server, customer: Tenant) -> None:
    """State-changing requests are never resent by the client (they may have been carried
    out), so a kept-alive connection the server closed meanwhile must be noticed first."""
    c = server.client(customer)
    assert code(c.list_bindings(1, 0)) == 0
    assert c._conn is not None and c._conn.sock is not None
    c._conn.sock.shutdown(socket.SHUT_RD)  # as if the server had closed it: reads see EOF
    assert code(c.bind_axb(*fresh_pair(), 0)) == 0
