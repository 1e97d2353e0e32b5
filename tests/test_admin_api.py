"""The admin API and the console's HTTP rules, on every store.

Every endpoint is exercised through a real ``pns serve``; the stores are real. One server per
store for the module, started with ``--trusted-proxy 127.0.0.1`` so that tests can speak for
other client addresses (``X-Forwarded-For``) and lock out only those with the login limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from pns.admin.api import ROUTES
from pns.admin.rates import RateHistory
from pns.admin.security import LOGIN_FAILURES
from pns.admin.service import AdminService
from pns.core import Service
from pns.logs import mask_number
from pns.model import EventState, OutboxEvent, Role
from pns.store import open_store

from .conftest import STORES, Server, Tenant, cli, cli_json, create_tenant, free_port, unique_hk
from .test_callrecords import Receiver

_addresses = itertools.count(1)


def other_address() -> str:
    """A client address no other test uses (through the trusted proxy)."""
    n = next(_addresses)
    return f"10.77.{n // 250}.{n % 250 + 1}"


class Admin:
    """An operator's view of one server."""

    def __init__(self, server: Server, token: str):
        self.server = server
        self.token = token
        self.http = httpx.Client(base_url=server.url, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get("/admin/api/" + path, params=params)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return self.http.post("/admin/api/" + path, json=body, **kwargs)

    def patch(self, path: str, body: Any) -> httpx.Response:
        return self.http.patch("/admin/api/" + path, json=body)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete("/admin/api/" + path)


def make_operator(server: Server, role: str = "admin") -> str:
    name = f"op-{role}-{next(_addresses)}"
    out = cli_json("operator", "create", "--name", name, "--role", role,
                   "--store", server.store_url)
    assert out["role"] == role and out["name"] == name
    token = str(out["token"])
    assert token.startswith("pnsop_")
    return token


@pytest.fixture(scope="module", params=STORES)
def admin_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Server]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('admin')}/pns.db"
    else:
        url = str(request.getfixturevalue("pg_database"))
    srv = Server(url, "--trusted-proxy", "127.0.0.1")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(admin_server: Server) -> Admin:
    return Admin(admin_server, make_operator(admin_server, "admin"))


@pytest.fixture(scope="module")
def viewer(admin_server: Server) -> Admin:
    return Admin(admin_server, make_operator(admin_server, "viewer"))


@pytest.fixture
def tenant(admin_server: Server) -> Tenant:
    return create_tenant(admin_server.store_url, Role.CUSTOMER, numbers=3)


def wait_until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# --- operators (CLI) ---------------------------------------------------------------------------
def test_operator_cli_create_list_disable(admin_server: Server) -> None:
    store = ("--store", admin_server.store_url)
    token = make_operator(admin_server, "viewer")
    listed = [json.loads(line) for line in cli("operator", "list", *store).stdout.splitlines()]
    assert listed and all("token" not in op and "tokenHash" not in op for op in listed)
    assert token not in json.dumps(listed)
    me = Admin(admin_server, token).get("me")
    assert me.status_code == 200 and me.json()["role"] == "viewer"
    name = me.json()["name"]
    again = cli("operator", "create", "--name", name, *store, check=False)
    assert again.returncode != 0 and "exists" in again.stderr
    bad = cli("operator", "create", "--name", "no spaces", *store, check=False)
    assert bad.returncode != 0
    assert cli_json("operator", "disable", name, *store) == {"name": name, "disabled": True}
    assert Admin(admin_server, token).get("me").status_code == 401
    cli_json("operator", "disable", name, "--enable", *store)
    assert Admin(admin_server, token).get("me").status_code == 200
    assert cli("operator", "disable", "nobody-here", *store, check=False).returncode != 0


# --- 401, 403 -------------------------------------------------------------------------------
def test_operator_create_prints_json_on_a_terminal_too(admin_server: Server,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import pns.cli

    monkeypatch.setattr(pns.cli, "_wants_json", lambda as_json: bool(as_json))  # a terminal
    name = f"op-tty-{next(_addresses)}"
    result = CliRunner().invoke(pns.cli.main, ["operator", "create", "--name", name,
                                               "--role", "viewer",
                                               "--store", admin_server.store_url])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert made["name"] == name and made["role"] == "viewer"
    assert str(made["token"]).startswith("pnsop_")


def test_every_endpoint_needs_a_token(admin_server: Server) -> None:
    for route in ROUTES:
        path = "/admin/api/" + re.sub(r"\{\w+\}", "x1", route.pattern)
        headers = {"X-Forwarded-For": other_address()}
        answer = httpx.request(route.method, admin_server.url + path, headers=headers)
        assert answer.status_code == 401, (route.method, path)
        assert "error" in answer.json()
        for auth in ("Bearer pnsop_wrong", "Basic abc", "Bearer"):
            answer = httpx.request(route.method, admin_server.url + path,
                                   headers={**headers, "Authorization": auth})
            assert answer.status_code == 401, (route.method, path, auth)


def test_a_viewer_reads_but_every_write_is_403(viewer: Admin, admin: Admin,
                                               tenant: Tenant) -> None:
    for route in ROUTES:
        path = re.sub(r"\{\w+\}", "x1", route.pattern)
        answer = viewer.http.request(route.method, "/admin/api/" + path,
                                     json={"numbers": tenant.numbers, "account":
                                           tenant.access_key, "name": "v", "force": True})
        if route.writes:
            assert answer.status_code == 403, (route.method, path)
        else:
            assert answer.status_code in (200, 400, 404), (route.method, path, answer.text)
    # The viewer's attempts changed nothing.
    numbers = admin.get("numbers", account=tenant.access_key).json()["numbers"]
    assert sorted(n["number"] for n in numbers) == sorted(tenant.numbers)
    assert all(n["enabled"] for n in numbers)
    assert viewer.get("overview").status_code == 200


def test_unknown_paths_and_methods(admin: Admin) -> None:
    assert admin.get("nothing-here").status_code == 404
    assert admin.http.put("/admin/api/overview").status_code == 405
    assert admin.http.post("/admin/api/accounts", content=b"{not json").status_code == 400
    assert admin.post("accounts", {"name": "x", "surprise": 1}).status_code == 400


# --- overview ------------------------------------------------------------------------------------
def test_overview_pools_rates_and_backlog(admin_server: Server, admin: Admin,
                                          tenant: Tenant) -> None:
    client = admin_server.client(tenant)
    a, b = unique_hk("1"), unique_hk("2")
    assert client.bind_axb(a, b)["code"] == 0
    assert client.bind_axb(a, unique_hk("2"))["code"] == 0
    assert client.bind_axb("", b)["code"] != 0  # an error for the error rate
    pools = [p for p in admin.get("overview").json()["pools"]
             if p["account"] == tenant.access_key]
    assert len(pools) == 1
    pool = pools[0]
    assert pool["countryCode"] == 852 and pool["numbers"] == 3 and pool["enabled"] == 3
    assert pool["activeBindings"] == 2 and pool["numbersInUse"] == 2
    assert pool["freeNumbers"] == 1
    assert pool["busiestPartyBindings"] == 2 and pool["headroom"] == 1
    assert pool["fullestXBindings"] == 1 and pool["fullestX"] in tenant.numbers

    # The rate history is sampled in the background: wait for it to see the requests.
    def rates() -> dict[str, Any]:
        return dict(admin.get("overview").json()["rates"])

    wait_until(lambda: rates()["requestsLastHour"] >= 3 and rates()["errorsLastHour"] >= 1)
    assert len(rates()["perMinute"]) == 60
    deliveries = admin.get("overview").json()["deliveries"]
    assert set(deliveries) == {"pending", "oldestPendingAgeSeconds", "failed", "delivered"}


def test_rate_history_per_minute_with_a_controlled_clock() -> None:
    totals = [0, 0]
    history = RateHistory(lambda: (totals[0], totals[1]))
    start = 6_000_000 * 60.0
    history.sample(start)  # the first sample only sets the baseline
    totals[:] = [10, 2]
    history.sample(start + 5)
    totals[:] = [15, 2]
    history.sample(start + 65)  # the next minute
    series = history.series(start + 65)
    assert len(series) == 60
    assert series[-1] == (start + 60, 5, 0)
    assert series[-2] == (start, 10, 2)
    # An hour later the old minutes have left the ring.
    totals[:] = [16, 3]
    history.sample(start + 3700)
    later = history.series(start + 3700)
    assert sum(r for _, r, _ in later) == 1 and sum(e for _, _, e in later) == 1


# --- accounts ------------------------------------------------------------------------------------
def test_accounts_create_disable_rotate_prompts_callback(admin_server: Server,
                                                          admin: Admin) -> None:
    created = admin.post("accounts", {"name": "newco"})
    assert created.status_code == 201
    acc = created.json()
    assert acc["role"] == "customer" and acc["enabled"] and acc["accessSecret"]
    key, secret = acc["accessKey"], acc["accessSecret"]
    listed = {a["accessKey"]: a for a in admin.get("accounts").json()["accounts"]}
    assert key in listed and "accessSecret" not in listed[key]
    assert secret not in admin.get("accounts").text
    tenant = Tenant(key, secret, acc["id"], [])
    assert admin_server.client(tenant).list_bindings()["code"] == 0

    changed = admin.patch(f"accounts/{key}", {
        "audioWhenCallFail": "fail.wav", "audioWhenDtmfNeed": "need.wav",
        "audioWhenDtmfErr": "err.wav", "callbackUrl": "https://example.invalid/cdr"})
    assert changed.status_code == 200
    assert changed.json()["audioWhenCallFail"] == "fail.wav"
    assert changed.json()["callbackUrl"] == "https://example.invalid/cdr"
    assert admin.patch(f"accounts/{key}", {"callbackUrl": "ftp://x"}).status_code == 400
    assert admin.patch(f"accounts/{key}", {"enabled": "yes"}).status_code == 400
    assert admin.patch("accounts/nosuchkey", {"enabled": False}).status_code == 404

    rotated = admin.post(f"accounts/{key}/rotate-secret", {"graceSeconds": 600})
    assert rotated.status_code == 200
    new_secret = rotated.json()["accessSecret"]
    assert new_secret != secret and rotated.json()["previousSecretValidUntil"] > time.time()
    wait_until(lambda: admin_server.client(Tenant(key, new_secret, 0, [])
                                           ).list_bindings()["code"] == 0)
    assert admin_server.client(tenant).list_bindings()["code"] == 0  # grace period
    assert admin.post(f"accounts/{key}/rotate-secret", {"graceSeconds": -1}).status_code == 400

    assert admin.patch(f"accounts/{key}", {"enabled": False}).json()["enabled"] is False
    wait_until(lambda: admin_server.client(tenant).list_bindings()["code"] == 1005)
    assert admin.post("accounts", {"name": ""}).status_code == 400
    assert admin.post("accounts", {"name": "x", "role": "god"}).status_code == 400
    switch = admin.post("accounts", {"name": "sw", "role": "switch"})
    assert switch.status_code == 201 and switch.json()["role"] == "switch"
    audit = admin.get("audit").json()["entries"]
    actions = {(e["action"], e["target"].split()[0]) for e in audit}
    assert {("account.create", key), ("account.rotate-secret", key),
            ("account.update", key)} <= actions
    assert all(secret not in e["target"] and new_secret not in e["target"] for e in audit)


def test_cool_off_through_the_api_and_the_console_as_the_cli(admin_server: Server,
                                                              admin: Admin) -> None:
    key = admin.post("accounts", {"name": "cooling"}).json()["accessKey"]
    listed = {a["accessKey"]: a for a in admin.get("accounts").json()["accounts"]}
    assert listed[key]["coolOffSeconds"] == 0
    changed = admin.patch(f"accounts/{key}", {"coolOffSeconds": 120})
    assert changed.status_code == 200 and changed.json()["coolOffSeconds"] == 120
    listed = {a["accessKey"]: a for a in admin.get("accounts").json()["accounts"]}
    assert listed[key]["coolOffSeconds"] == 120
    # Nothing else named: the other settings stay.
    assert admin.patch(f"accounts/{key}", {"enabled": True}).json()["coolOffSeconds"] == 120
    too_long = admin.patch(f"accounts/{key}", {"coolOffSeconds": 2_592_001})
    assert too_long.status_code == 400
    message = too_long.json()["error"]
    assert "2592000" in message
    assert admin.patch(f"accounts/{key}", {"coolOffSeconds": -1}).status_code == 400
    assert admin.patch(f"accounts/{key}", {"coolOffSeconds": "60"}).status_code == 400
    # The CLI refuses the same with the same words.
    refused = cli("account", "set", key, "--cool-off", "2592001",
                  "--store", admin_server.store_url, check=False)
    assert refused.returncode != 0 and message in " ".join(refused.stderr.split())
    assert admin.patch(f"accounts/{key}", {"coolOffSeconds": 2_592_000}).status_code == 200

    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    page = browser.http.get("/console/accounts").text
    assert 'name="coolOffSeconds" value="2592000"' in page
    form = {"csrf": browser.csrf(), "next": "/console/accounts", "callbackUrl": "",
            "audioWhenCallFail": "", "audioWhenDtmfNeed": "", "audioWhenDtmfErr": ""}
    saved = browser.http.post(f"/console/accounts/{key}/settings",
                              data={**form, "coolOffSeconds": "300"})
    assert saved.status_code == 303
    listed = {a["accessKey"]: a for a in admin.get("accounts").json()["accounts"]}
    assert listed[key]["coolOffSeconds"] == 300
    for bad in ("2592001", "9" * 40, "ten", "-5"):
        answer = browser.http.post(f"/console/accounts/{key}/settings",
                                   data={**form, "coolOffSeconds": bad})
        assert answer.status_code == 400 and "content-security-policy" in answer.headers
        assert "coolOffSeconds" in answer.text
    listed = {a["accessKey"]: a for a in admin.get("accounts").json()["accounts"]}
    assert listed[key]["coolOffSeconds"] == 300
    entries = admin.get("audit").json()["entries"]
    assert any(e["action"] == "account.update" and e["target"] == f"{key} coolOffSeconds"
               for e in entries)


# --- numbers -------------------------------------------------------------------------------------
def test_numbers_add_import_disable_enable_move_remove(admin_server: Server, admin: Admin,
                                                       tenant: Tenant) -> None:
    other = create_tenant(admin_server.store_url, Role.CUSTOMER, numbers=0)
    x1, x2, x3 = unique_hk("4"), unique_hk("4"), unique_hk("4")
    added = admin.post("numbers", {"account": other.access_key, "numbers": [x1, "+" + x2]})
    assert added.status_code == 200 and added.json() == {
        "added": 2, "alreadyPresent": 0, "ownedByOtherAccounts": []}
    again = admin.post("numbers", {"account": other.access_key, "numbers": [x1]})
    assert again.json() == {"added": 0, "alreadyPresent": 1, "ownedByOtherAccounts": []}
    bad = admin.post("numbers", {"account": other.access_key, "numbers": [x3, "12"]})
    assert bad.status_code == 400
    imported = admin.http.post("/admin/api/numbers/import", params={"account": other.access_key},
                               content=f"# pool\n{x3}\n\n".encode(),
                               headers={"Content-Type": "text/plain"})
    assert imported.status_code == 200 and imported.json()["added"] == 1
    assert admin.post("numbers", {"account": "nosuch", "numbers": [x1]}).status_code == 404
    switch = create_tenant(admin_server.store_url, Role.SWITCH)
    assert admin.post("numbers", {"account": switch.access_key,
                                  "numbers": [unique_hk("4")]}).status_code == 400
    listed = {n["number"]: n for n in admin.get("numbers", account=other.access_key
                                                ).json()["numbers"]}
    assert set(listed) == {x1, x2, x3} and all(n["enabled"] for n in listed.values())

    client = admin_server.client(other)
    disabled = admin.post("numbers/disable", {"numbers": [x1, x2, x3]})
    assert disabled.status_code == 200 and disabled.json() == {
        "disabled": [x1, x2, x3], "notFound": []}
    wait_until(lambda: client.bind_axb(unique_hk("1"), unique_hk("2"))["code"] == 10008)
    assert _shaped("numbers/enable", admin.post("numbers/enable", {"numbers": [x1]}).json()
                   ) == {"enabled": [x1], "notFound": []}
    bound = client.bind_axb(unique_hk("1"), unique_hk("2"))
    assert bound["code"] == 0 and bound["data"]["did"] == x1
    assert admin.post("numbers/disable", {"numbers": [unique_hk("9")]}).status_code == 404

    # A number with bindings moves only with force, which ends them.
    moved = admin.post("numbers/move", {"numbers": [x1, x2], "account": tenant.access_key})
    assert moved.json() == {"moved": [x2], "to": tenant.access_key, "kept": [x1],
                            "notFound": []}
    forced = admin.post("numbers/move", {"numbers": [x1], "account": tenant.access_key,
                                         "force": True})
    assert forced.json()["moved"] == [x1]
    assert client.list_bindings()["data"]["total"] == 0
    owners = {n["number"]: n["account"] for n in admin.get("numbers").json()["numbers"]}
    assert owners[x1] == owners[x2] == tenant.access_key and owners[x3] == other.access_key
    assert admin.post("numbers/move", {"numbers": [x3], "account": "nosuch"}
                      ).status_code == 404

    tclient = admin_server.client(tenant)
    assert tclient.bind_axb(unique_hk("1"), unique_hk("2"), phoneX=x1)["code"] == 0
    removed = admin.post("numbers/remove", {"numbers": [x1, x3]})
    assert removed.json() == {"removed": [x3], "kept": [x1], "notFound": []}
    assert admin.post("numbers/remove", {"numbers": [x1], "force": True}
                      ).json()["removed"] == [x1]
    left = {n["number"] for n in admin.get("numbers").json()["numbers"]}
    assert x1 not in left and x3 not in left and x2 in left


def _cli_answer(*args: str) -> tuple[int, dict[str, Any]]:
    """`pns ARGS --json`'s exit status and its one JSON answer (printed on failure too)."""
    done = cli(*args, "--json", check=False)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def _shaped(pattern: str, answer: Any) -> Any:
    """``answer``, checked against the shape /openapi.json gives the route's 200."""
    route = next(r for r in ROUTES if r.method == "POST" and r.pattern == pattern)
    assert route.answer is not None
    msgspec.convert(answer, type=route.answer)  # raises on a missing or unknown field
    return answer


def test_number_answers_are_the_clis(admin_server: Server, admin: Admin,
                                     tenant: Tenant) -> None:
    """The admin API names what a number operation did as `pns numbers ...` does (gap 12):
    notFound instead of claiming a number it never had, the owner of a number another
    account has, alreadyPresent as a count; one that found no number is a 404."""
    store = ("--store", admin_server.store_url)
    other = create_tenant(admin_server.store_url, Role.CUSTOMER, numbers=0)
    mine, missing = unique_hk("4"), unique_hk("4")
    theirs = tenant.numbers[0]
    added = admin.post("numbers", {"account": other.access_key,
                                   "numbers": [mine, theirs, mine]})
    owned = [{"number": theirs, "account": tenant.access_key}]
    assert added.status_code == 200 and _shaped("numbers", added.json()) == {
        "added": 1, "alreadyPresent": 0, "ownedByOtherAccounts": owned}
    again = {"added": 0, "alreadyPresent": 1, "ownedByOtherAccounts": owned}
    assert _cli_answer("numbers", "add", "--account", other.access_key, mine, theirs,
                       *store) == (1, again)
    imported = admin.http.post("/admin/api/numbers/import",
                               params={"account": other.access_key},
                               content=f"{mine}\n{theirs}\n".encode(),
                               headers={"Content-Type": "text/plain"})
    assert imported.status_code == 200 and _shaped("numbers/import", imported.json()) == again

    # Nothing matched: a 404 with the CLI's words, never a claim that something was done.
    for path, body in (("numbers/remove", {"numbers": [missing]}),
                       ("numbers/disable", {"numbers": [missing]}),
                       ("numbers/enable", {"numbers": [missing, "not-a-number"]}),
                       ("numbers/move", {"numbers": [missing], "account": other.access_key})):
        refused = admin.post(path, body)
        verb = path.split("/")[1]
        assert refused.status_code == 404, path
        assert refused.json() == {"error": f"nothing to {verb}: no such number(s): "
                                           + ", ".join(body["numbers"])}
    assert missing not in {n["number"] for n in admin.get("numbers").json()["numbers"]}

    # Some matched: done, with the rest named, the same JSON as the CLI's.
    disabled = admin.post("numbers/disable", {"numbers": [mine, missing]})
    assert disabled.status_code == 200
    assert _shaped("numbers/disable", disabled.json()) == {"disabled": [mine],
                                                            "notFound": [missing]}
    assert _cli_answer("numbers", "enable", mine, missing, *store) == (
        0, {"enabled": [mine], "notFound": [missing]})
    moved = admin.post("numbers/move", {"numbers": [mine, missing],
                                        "account": tenant.access_key})
    assert moved.status_code == 200 and _shaped("numbers/move", moved.json()) == {
        "moved": [mine], "to": tenant.access_key, "kept": [], "notFound": [missing]}
    removed = admin.post("numbers/remove", {"numbers": ["+" + mine, missing]})
    assert removed.status_code == 200
    assert _shaped("numbers/remove", removed.json()) == {"removed": [mine], "kept": [],
                                                          "notFound": [missing]}
    entries = admin.get("audit").json()["entries"]
    assert any(e["action"] == "numbers.remove" and e["target"] == mine for e in entries)


def test_admin_add_refreshes_planner_statistics(admin_server: Server) -> None:
    """An add through the admin API tells the store's query planner, as `pns numbers
    import` does (one rule, in pool.add_numbers); adding nothing new does not."""
    other = create_tenant(admin_server.store_url, Role.CUSTOMER, numbers=0)
    xs = [unique_hk("4") for _ in range(3)]

    async def add_twice() -> list[int]:
        store = await open_store(admin_server.store_url)
        refreshed = [0]
        refresh = store.refresh_statistics

        async def counted() -> None:
            refreshed[0] += 1
            await refresh()

        store.refresh_statistics = counted  # type: ignore[method-assign]
        try:
            service = AdminService(Service(store))
            first = await service.add_numbers(other.access_key, xs)
            after_first = refreshed[0]
            second = await service.add_numbers(other.access_key, xs)
            assert first["added"] == 3 and second["alreadyPresent"] == 3
            return [after_first, refreshed[0]]
        finally:
            await store.close()

    assert asyncio.run(add_twice()) == [1, 1]


# --- bindings ------------------------------------------------------------------------------------
def test_bindings_find_reveal_unbind(admin_server: Server, admin: Admin, viewer: Admin,
                                     tenant: Tenant) -> None:
    client = admin_server.client(tenant)
    a, b = unique_hk("1"), unique_hk("2")
    made = client.bind_axb(a, b, expire_second=3600, customerBindId="order-77")["data"]
    bind_id, x = made["bindId"], made["did"]

    def find(**params: str) -> list[dict[str, Any]]:
        answer = viewer.get("bindings", **params)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["bindings"])

    for found in (find(number=x), find(number=a), find(number="+" + b), find(bindId=bind_id),
                  find(customerBindId="order-77", account=tenant.access_key),
                  find(customerBindId="order-77")):
        assert [f["bindId"] for f in found] == [bind_id]
        assert found[0]["phoneA"] == "*" * (len(a) - 4) + a[-4:]
        assert found[0]["phoneB"].endswith(b[-4:]) and b not in json.dumps(found)
        assert found[0]["account"] == tenant.access_key and found[0]["did"] == x
    assert find(number=unique_hk("9")) == []
    assert viewer.get("bindings").status_code == 400
    assert find(number=a, account=create_tenant(admin_server.store_url).access_key) == []

    assert viewer.post(f"bindings/{bind_id}/reveal").status_code == 403
    revealed = admin.post(f"bindings/{bind_id}/reveal")
    assert revealed.status_code == 200
    assert revealed.json()["phoneA"] == a and revealed.json()["phoneB"] == b
    log = admin_server.log_text()
    assert a not in log and b not in log
    audit = admin.get("audit").json()["entries"]
    assert any(e["action"] == "binding.reveal" and e["target"] == bind_id for e in audit)

    assert viewer.delete(f"bindings/{bind_id}").status_code == 403
    assert admin.delete(f"bindings/{bind_id}").json() == {"unbound": bind_id}
    assert client.list_bindings()["data"]["total"] == 0
    assert admin.delete(f"bindings/{bind_id}").status_code == 404
    assert admin.post(f"bindings/{bind_id}/reveal").status_code == 404


def test_each_reveal_is_logged_without_the_number(tmp_path: Any) -> None:
    server = Server(f"sqlite:///{tmp_path}/pns.db", "--log-level", "info")
    try:
        admin = Admin(server, make_operator(server))
        tenant = create_tenant(server.store_url, Role.CUSTOMER, numbers=1)
        a, b = unique_hk("1"), unique_hk("2")
        bind_id = server.client(tenant).bind_axb(a, b)["data"]["bindId"]
        assert admin.post(f"bindings/{bind_id}/reveal").json()["phoneA"] == a
        name = admin.get("me").json()["name"]
        wait_until(lambda: "action=binding.reveal" in server.log_text())
        line = next(line for line in server.log_text().splitlines()
                    if "action=binding.reveal" in line)
        # Info logs mask every run of 7+ digits, and a bindId may hold one.
        assert f"operator={name}" in line and f"target={mask_number(bind_id)}" in line
        assert a not in line and b not in line
    finally:
        server.stop()


# --- call records and deliveries -----------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_records_delivery_state_and_redeliver(admin_server: Server, admin: Admin,
                                              viewer: Admin, receiver: Receiver) -> None:
    tenant = create_tenant(admin_server.store_url, Role.CUSTOMER, numbers=1,
                           callback_url=receiver.url)
    switch = create_tenant(admin_server.store_url, Role.SWITCH)
    a, b = unique_hk("1"), unique_hk("2")
    x = admin_server.client(tenant).bind_axb(a, b)["data"]["did"]
    call_id = admin_server.client(switch).query(a, x)["data"]["callId"]
    now = int(time.time())
    assert admin_server.client(switch).report_call(
        call_id, startAt=now - 60, ringAt=now - 58, answerAt=now - 50, hangupAt=now - 10,
        hangupCause="NORMAL_CLEARING")["code"] == 0
    receiver.wait_for(1)

    def records(**params: Any) -> dict[str, Any]:
        answer = viewer.get("records", account=tenant.access_key, **params)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    wait_until(lambda: records()["records"][0]["delivery"]["state"] == "delivered")
    listed = records()
    assert listed["total"] == 1
    record = listed["records"][0]
    assert record["callId"] == call_id and record["did"] == x and record["duration"] == 40
    assert record["caller"].endswith(a[-4:]) and a not in json.dumps(listed)
    assert b not in json.dumps(listed)
    assert records(**{"from": now - 30})["total"] == 0
    assert records(**{"from": now - 120, "to": now})["total"] == 1
    assert records(to=now - 60)["total"] == 0
    assert viewer.get("records", account=tenant.access_key, limit="x").status_code == 400
    assert viewer.get("records", account="nosuch").status_code == 404

    body = {"account": tenant.access_key}
    assert viewer.post(f"records/{call_id}/redeliver", body).status_code == 403
    queued = admin.post(f"records/{call_id}/redeliver", body)
    assert queued.status_code == 200 and queued.json()["callId"] == call_id
    receiver.wait_for(2)
    assert receiver.bodies()[1]["callId"] == call_id
    wait_until(lambda: records()["records"][0]["delivery"]["deliveries"] == 2)
    assert admin.post("records/1999999999999999999/redeliver", body).status_code == 404
    other = create_tenant(admin_server.store_url)
    assert admin.post(f"records/{call_id}/redeliver",
                      {"account": other.access_key}).status_code == 404
    assert viewer.post(f"records/{call_id}/reveal", body).status_code == 403
    revealed = admin.post(f"records/{call_id}/reveal", body).json()
    assert revealed["caller"] == a and revealed["callee"] == b
    # Each reveal is kept in the audit trail: who, and which record; never the numbers.
    name = admin.get("me").json()["name"]
    entries = admin.get("audit").json()["entries"]
    reveals = [e for e in entries if e["action"] == "record.reveal"]
    assert [(e["operator"], e["target"]) for e in reveals][:1] == [(name, call_id)]
    assert all(a not in e["target"] and b not in e["target"] for e in entries)
    # The console's reveal is audited the same way.
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    page = browser.http.post(f"/console/records/{call_id}/reveal", data={
        "csrf": browser.csrf(), "account": tenant.access_key,
        "next": f"/console/records?account={tenant.access_key}"})
    assert page.status_code == 200 and a in page.text and b in page.text
    entries = admin.get("audit").json()["entries"]
    assert [e["action"] for e in entries if e["target"] == call_id].count("record.reveal") == 2


def test_failed_deliveries_listed_and_retried(admin_server: Server, admin: Admin,
                                              viewer: Admin, receiver: Receiver) -> None:
    tenant = create_tenant(admin_server.store_url, Role.CUSTOMER, callback_url=receiver.url)
    event_id = f"failed-{time.time_ns()}"

    async def fail_one() -> None:
        store = await open_store(admin_server.store_url)
        try:
            now = int(time.time())
            await store.enqueue_event(OutboxEvent(
                event_id=event_id, account_id=tenant.account_id, kind="callRecord",
                body=b'{"callId":"1"}', created_at=now - 90000, next_attempt_at=now,
                attempts=7, state=EventState.FAILED, last_error="HTTP 503"))
        finally:
            await store.close()

    asyncio.run(fail_one())
    failed = viewer.get("deliveries", state="failed", account=tenant.access_key)
    assert failed.status_code == 200
    events = failed.json()["deliveries"]
    assert [e["eventId"] for e in events] == [event_id]
    assert events[0]["attempts"] == 7 and events[0]["lastError"] == "HTTP 503"
    assert admin.get("overview").json()["deliveries"]["failed"] >= 1
    assert viewer.get("deliveries", state="lost").status_code == 400
    assert viewer.post(f"deliveries/{event_id}/retry").status_code == 403
    retried = admin.post(f"deliveries/{event_id}/retry")
    assert retried.status_code == 200 and retried.json()["state"] == "pending"
    receiver.wait_for(1)
    assert receiver.received[0][0]["X-PNS-Event-Id"] == event_id
    # The receiver has the POST before the deliverer records its answer: the list may be empty
    # for a moment.
    wait_until(lambda: [e["eventId"] for e in admin.get(
        "deliveries", state="delivered", account=tenant.access_key).json()["deliveries"]]
        == [event_id])
    assert admin.post(f"deliveries/{event_id}/retry").status_code == 404  # delivered
    assert admin.post("deliveries/nosuchevent/retry").status_code == 404


# --- the console's HTTP rules: cookies, CSRF, CSP, login limit ---------------------------------
class Browser:
    """A cookie-keeping HTTP client speaking for one client address (a trusted proxy's
    X-Forwarded-For)."""

    def __init__(self, server: Server, **headers: str):
        self.http = httpx.Client(base_url=server.url, timeout=10, follow_redirects=False,
                                 headers={"X-Forwarded-For": other_address(), **headers})

    def login_form(self) -> tuple[httpx.Response, str]:
        page = self.http.get("/console/login")
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match is not None
        return page, match.group(1)

    def login(self, token: str) -> httpx.Response:
        page, csrf = self.login_form()
        # Sent by hand: a Secure cookie (behind a TLS proxy) is not sent back over plain HTTP.
        cookie = set_cookies(page)["pns_login_csrf"].split(";")[0]
        return self.http.post("/console/login", data={"csrf": csrf, "token": token},
                              headers={"Cookie": cookie})

    def csrf(self, path: str = "/console/") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.http.get(path).text)
        assert match is not None
        return match.group(1)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_login_sets_a_strict_http_only_session_cookie(admin_server: Server,
                                                      admin: Admin) -> None:
    browser = Browser(admin_server)
    page, _ = browser.login_form()
    login_cookie = set_cookies(page)["pns_login_csrf"]
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    wrong = browser.login("pnsop_wrong")
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "pns_session" not in set_cookies(wrong)
    answer = browser.login(admin.token)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    cookie = set_cookies(answer)["pns_session"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/console"):
        assert flag in cookie
    assert "Secure" not in cookie  # plain HTTP, no proxy saying https
    assert admin.token not in cookie
    assert browser.http.get("/console/").status_code == 200
    logout = browser.http.post("/console/logout", data={"csrf": browser.csrf()})
    assert logout.status_code == 303
    assert "Max-Age=0" in set_cookies(logout)["pns_session"]


def test_logout_ends_the_session_on_the_server(admin_server: Server) -> None:
    token = make_operator(admin_server)
    browser, elsewhere = Browser(admin_server), Browser(admin_server)
    assert browser.login(token).status_code == 303
    assert elsewhere.login(token).status_code == 303
    saved = browser.http.cookies["pns_session"]
    csrf = browser.csrf()
    assert browser.http.post("/console/logout", data={"csrf": csrf}).status_code == 303
    # The cookie kept from before the logout (a copy, a stolen one) no longer works, nor does
    # the operator's session in another browser: logging out ends them all.
    for cookie in (saved, elsewhere.http.cookies["pns_session"]):
        answer = httpx.get(admin_server.url + "/console/", cookies={"pns_session": cookie},
                           headers={"X-Forwarded-For": other_address()})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    replayed = httpx.post(admin_server.url + "/console/accounts", cookies={"pns_session": saved},
                          data={"csrf": csrf, "name": "after-logout"},
                          headers={"X-Forwarded-For": other_address()})
    assert replayed.status_code == 401
    # A new login works at once.
    again = Browser(admin_server)
    assert again.login(token).status_code == 303
    assert again.http.get("/console/").status_code == 200


def test_secure_cookie_only_behind_a_trusted_tls_proxy(admin_server: Server,
                                                       admin: Admin) -> None:
    trusted = Browser(admin_server, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in set_cookies(trusted.login(admin.token))["pns_session"]
    # Without --trusted-proxy, a client's own X-Forwarded-Proto is not believed.
    plain = Server(admin_server.store_url)
    try:
        untrusted = Browser(plain, **{"X-Forwarded-Proto": "https"})
        assert "Secure" not in set_cookies(untrusted.login(admin.token))["pns_session"]
    finally:
        plain.stop()
    forced = Server(admin_server.store_url, "--admin-secure-cookies")
    try:
        assert "Secure" in set_cookies(Browser(forced).login(admin.token))["pns_session"]
    finally:
        forced.stop()


def test_login_needs_its_csrf_token(admin_server: Server, admin: Admin) -> None:
    browser = Browser(admin_server)
    browser.login_form()
    for data in ({"token": admin.token}, {"token": admin.token, "csrf": "forged"}):
        answer = browser.http.post("/console/login", data=data)
        assert answer.status_code == 403 and "pns_session" not in set_cookies(answer)


def test_every_form_is_refused_without_its_csrf_token(admin_server: Server, admin: Admin,
                                                      tenant: Tenant) -> None:
    client = admin_server.client(tenant)
    bind_id = client.bind_axb(unique_hk("1"), unique_hk("2"))["data"]["bindId"]
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    # Every form of every page that changes something carries the session's CSRF token, and
    # each is refused without it.
    pages = ["/console/", "/console/accounts", "/console/deliveries?state=failed",
             "/console/audit", f"/console/numbers?account={tenant.access_key}",
             f"/console/bindings?bindId={bind_id}",
             f"/console/records?account={tenant.access_key}"]
    actions: set[str] = set()
    token = browser.csrf()
    for path in pages:
        page = browser.http.get(path).text
        forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>.*?</form>", page, re.S)
        assert forms, path
        for form in forms:
            assert f'name="csrf" value="{token}"' in form, (path, form)
            actions.update(re.findall(r'action="([^"]+)"', form))
    assert {"/console/accounts", "/console/numbers", "/console/logout",
            f"/console/bindings/{bind_id}/unbind"} <= actions
    for action in sorted(actions):
        answer = browser.http.post(action, data={"op": "disable", "name": "no-csrf",
                                                 "numbers": tenant.numbers[0]})
        assert answer.status_code == 403, action
    assert tenant.access_key in browser.http.get("/console/accounts").text  # still logged in
    assert "no-csrf" not in browser.http.get("/console/accounts").text
    assert all(n["enabled"] for n in admin.get("numbers", account=tenant.access_key
                                               ).json()["numbers"])
    for csrf in ("", "0" * 64, browser.csrf().upper()):
        answer = browser.http.post(f"/console/bindings/{bind_id}/unbind",
                                   data={"csrf": csrf, "next": "/console/bindings"})
        assert answer.status_code == 403
    assert client.list_bindings()["data"]["total"] == 1
    # Another operator's CSRF token does not fit this session.
    other = Browser(admin_server)
    other.login(make_operator(admin_server))
    answer = browser.http.post(f"/console/bindings/{bind_id}/unbind",
                               data={"csrf": other.csrf()})
    assert answer.status_code == 403 and client.list_bindings()["data"]["total"] == 1
    answer = browser.http.post(f"/console/bindings/{bind_id}/unbind",
                               data={"csrf": browser.csrf(), "next": "/console/bindings"})
    assert answer.status_code == 303 and "notice=unbound" in answer.headers["location"]
    assert client.list_bindings()["data"]["total"] == 0


def test_the_redirect_after_a_form_stays_on_the_console(admin_server: Server, admin: Admin,
                                                        tenant: Tenant) -> None:
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    hostile = ["https://evil.example/", "//evil.example/console/", "/console/\r\nSet-Cookie: x=1",
               "/console/x y", "/console/\u00e9", "/elsewhere"]
    for target in hostile:
        answer = browser.http.post(f"/console/accounts/{tenant.access_key}/enable",
                                   data={"csrf": browser.csrf(), "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/?notice=account-updated"
        assert "x=1" not in answer.headers.get("set-cookie", "")


def test_a_viewer_session_cannot_post(admin_server: Server, viewer: Admin,
                                      tenant: Tenant) -> None:
    client = admin_server.client(tenant)
    bind_id = client.bind_axb(unique_hk("1"), unique_hk("2"))["data"]["bindId"]
    browser = Browser(admin_server)
    assert browser.login(viewer.token).status_code == 303
    page = browser.http.get("/console/bindings", params={"bindId": bind_id}).text
    assert bind_id in page and "/unbind" not in page and "/reveal" not in page
    answer = browser.http.post(f"/console/bindings/{bind_id}/unbind",
                               data={"csrf": browser.csrf()})
    assert answer.status_code == 403
    assert client.list_bindings()["data"]["total"] == 1


def test_csp_and_security_headers_on_every_console_page(admin_server: Server,
                                                        admin: Admin) -> None:
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    pages = ["/console/", "/console/accounts", "/console/numbers", "/console/bindings",
             "/console/bindings?number=85200000000", "/console/records",
             "/console/deliveries", "/console/audit", "/console/no-such-page",
             "/console/records?account=nosuch"]
    answers = [browser.http.get(path) for path in pages]
    answers.append(Browser(admin_server).http.get("/console/login"))
    answers.append(Browser(admin_server).http.get("/console/"))  # the redirect to login
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.text and " style=" not in answer.text
        assert not re.search(r'(src|href|action)="(https?:)?//', answer.text)  # no CDN
    for asset in ("console.css", "console.js"):
        answer = browser.http.get(f"/console/static/{asset}")
        assert answer.status_code == 200 and answer.content
    assert browser.http.get("/console/static/../views.py").status_code == 404
    assert browser.http.get("/console/static/nothing.js").status_code == 404


def test_bad_times_give_a_page_with_the_csp_and_no_traceback(admin_server: Server,
                                                             admin: Admin,
                                                             tenant: Tenant) -> None:
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    huge = "9" * 23
    for params in ({"from": huge}, {"to": huge}, {"from": "99999999999999"},
                   {"from": "yesterday"}, {"to": "2024-13-45T99:99"}):
        answer = browser.http.get("/console/records",
                                  params={"account": tenant.access_key, **params})
        assert answer.status_code == 400, (params, answer.text)
        assert answer.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"
        field = next(iter(params))
        assert 'id="error"' in answer.text and f"{field}:" in answer.text
        assert 'id="records-filter"' in answer.text  # the filter, to correct it
    ok = browser.http.get("/console/records", params={"account": tenant.access_key,
                                                      "from": "2024-01-01T00:00"})
    assert ok.status_code == 200 and 'id="error"' not in ok.text
    assert "Traceback" not in admin_server.log_text()
    assert "OverflowError" not in admin_server.log_text()


def test_an_unexpected_error_is_a_console_page_too() -> None:
    """A fault no view expected: an HTML error page with the console's headers, not the
    HTTP layer's JSON."""
    from pns.admin.security import Session
    from pns.console.views import Console
    from pns.http import Request
    from pns.model import Operator, OperatorRole

    class Broken:
        async def accounts(self) -> list[Any]:
            raise RuntimeError("the store went away")

    class Gate:
        async def session(self, cookie: str) -> Session:
            return Session(Operator("ann", OperatorRole.ADMIN, "0" * 64), "nonce", b"k" * 32)

    console = Console(Broken(), Gate())  # type: ignore[arg-type]
    request = Request("GET", "/console/accounts", {}, b"", "127.0.0.1")
    reply = asyncio.run(console(request))
    headers = dict(reply.headers)
    assert reply.status == 500 and reply.content_type.startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"went away" not in reply.body and b"Traceback" not in reply.body
    missing = asyncio.run(console(Request("GET", "/console/static/none.js", {}, b"", "x")))
    assert missing.status == 404 and missing.content_type.startswith("text/html")
    assert "Content-Security-Policy" in dict(missing.headers)


def test_hostile_names_are_escaped_on_the_page(admin_server: Server, admin: Admin) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    made = admin.post("accounts", {"name": hostile})
    assert made.status_code == 201
    admin.patch(f"accounts/{made.json()['accessKey']}",
                {"audioWhenCallFail": '"><b>bold</b>'})
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    for path in ("/console/accounts", "/console/numbers", "/console/records"):
        page = browser.http.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in browser.http.get("/console/accounts").text


def test_login_attempts_are_rate_limited(admin_server: Server, admin: Admin) -> None:
    browser = Browser(admin_server)
    for _ in range(LOGIN_FAILURES):
        assert browser.login("pnsop_guess").status_code == 401
    blocked = browser.login(admin.token)  # even the right token, from this address
    assert blocked.status_code == 429 and "pns_session" not in set_cookies(blocked)
    # Wrong bearer tokens count too, per address; other addresses are not locked out.
    address = browser.http.headers["X-Forwarded-For"]
    answer = httpx.get(admin_server.url + "/admin/api/me", headers={
        "Authorization": f"Bearer {admin.token}", "X-Forwarded-For": address})
    assert answer.status_code == 429
    assert Browser(admin_server).login(admin.token).status_code == 303
    assert admin.get("me").status_code == 200


def test_a_disabled_operator_loses_its_sessions(admin_server: Server) -> None:
    token = make_operator(admin_server)
    browser = Browser(admin_server)
    assert browser.login(token).status_code == 303
    name = Admin(admin_server, token).get("me").json()["name"]
    assert browser.http.get("/console/").status_code == 200
    cli("operator", "disable", name, "--store", admin_server.store_url)
    answer = browser.http.get("/console/")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"


def test_forged_session_cookies_are_refused(admin_server: Server, admin: Admin) -> None:
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    real = browser.http.cookies["pns_session"]
    name, generation, expires, nonce, key_id, signature = real.split(".")
    forgeries = [
        f"{name}.{generation}.{int(expires) + 10**6}.{nonce}.{key_id}.{signature}",
        f"{name}.{int(generation) + 1}.{expires}.{nonce}.{key_id}.{signature}",
        f"{name}.{generation}.{expires}.{nonce}.{key_id}.{'0' * 64}",
        f"{name}.{generation}.{expires}.{nonce}.00000000.{signature}",
        f"{name}.{generation}.{expires}.{nonce}.nothex!!.{signature}",
        f"someone.{generation}.{expires}.{nonce}.{key_id}.{signature}",
        f"{name}.{generation}.{expires}.{nonce}.{key_id}", "garbage", "",
    ]
    for forged in forgeries:
        answer = httpx.get(admin_server.url + "/console/", cookies={"pns_session": forged},
                           headers={"X-Forwarded-For": other_address()})
        assert answer.status_code == 303, forged


def test_the_store_alone_cannot_make_a_session(admin_server: Server, admin: Admin) -> None:
    """Whoever reads the operators table (a backup, a dump) has the token hash and the session
    generation, not the server's key: a session signed with the hash is refused."""
    name = admin.get("me").json()["name"]

    async def stored() -> Any:
        store = await open_store(admin_server.store_url)
        try:
            return await store.get_operator(name)
        finally:
            await store.close()

    operator = asyncio.run(stored())
    token_hash = bytes.fromhex(operator.token_hash)
    expires = int(time.time()) + 3600
    nonce = "ab" * 16
    browser = Browser(admin_server)
    assert browser.login(admin.token).status_code == 303
    key_id = browser.http.cookies["pns_session"].split(".")[4]

    def signed(payload: str) -> str:
        return f"{payload}.{hmac.new(token_hash, payload.encode(), hashlib.sha256).hexdigest()}"

    forgeries = [
        signed(f"{name}.{expires}.{nonce}"),  # the old format, keyed by the hash
        signed(f"{name}.{operator.session_generation}.{expires}.{nonce}.{key_id}"),
    ]
    for forged in forgeries:
        answer = httpx.get(admin_server.url + "/console/", cookies={"pns_session": forged},
                           headers={"X-Forwarded-For": other_address()})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"


# --- turning it off, or moving it ---------------------------------------------------------------
def test_no_admin_and_admin_listen(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/pns.db"
    off = Server(url, "--no-admin")
    try:
        for path in ("/console/", "/console/login", "/admin/api/me"):
            assert httpx.get(off.url + path).status_code == 404
    finally:
        off.stop()
    admin_port = free_port()
    moved = Server(url, "--admin-listen", f"127.0.0.1:{admin_port}")
    try:
        token = make_operator(moved)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(moved.url + "/admin/api/me", headers=headers).status_code == 404
        assert httpx.get(moved.url + "/console/login").status_code == 404
        elsewhere = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(elsewhere + "/admin/api/me", headers=headers).status_code == 200
        assert httpx.get(elsewhere + "/console/login").status_code == 200
        assert httpx.post(elsewhere + "/api/pns/", content=b"{}").status_code == 404
    finally:
        moved.stop()
    bad = cli("serve", "--admin-listen", "nonsense", "--store", url, check=False)
    assert bad.returncode != 0 and "HOST:PORT" in bad.stderr


def test_openapi_describes_the_admin_api_apart(admin_server: Server) -> None:
    document = httpx.get(admin_server.url + "/openapi.json").json()
    admin_ops = {(method.upper(), path) for path, item in document["paths"].items()
                 for method in item if path.startswith("/admin/api/")}
    assert admin_ops == {(r.method, "/admin/api/" + r.pattern) for r in ROUTES}
    for path, item in document["paths"].items():
        for operation in item.values():
            is_admin = path.startswith("/admin/api/")
            assert ("admin" in operation.get("tags", [])) == is_admin
            assert (operation.get("security") == [{"operatorToken": []}]) == is_admin
    assert document["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"
    removal = document["paths"]["/admin/api/numbers/remove"]["post"]["responses"]
    assert removal["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NumbersRemoved"}
    assert set(document["components"]["schemas"]["NumbersRemoved"]["required"]) == {
        "removed", "kept", "notFound"}
    assert "None of the numbers exists" in removal["404"]["description"]
