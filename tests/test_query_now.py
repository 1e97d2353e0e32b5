"""The switch's question without a coroutine (``Api.answer_now``, ``Service.query_now``) on the
embedded store: every answer it gives is the answer ``Api.handle`` gives to the same request,
refusals included, and it answers the common cases itself (else this would prove nothing).

Each request is put to both, the quick path first, on one SQLite store with its read index;
``requestId`` and ``callId`` differ by nature and are compared by shape only.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pns.api import Api, Response
from pns.auth import sign
from pns.core import AccountDirectory, Service, Settings
from pns.errors import Code
from pns.model import Role, VirtualNumber
from pns.store import open_store
from pns.v1 import V1_ACTIONS

X = ["85230000001", "85230000002", "85230000003", "85230000004"]
A, B, C, STRANGER = "85211111111", "85222222222", "85233333333", "85244444444"


class Rig:
    def __init__(self, api: Api, keys: dict[str, tuple[str, str]]):
        self.api = api
        self.keys = keys

    def request(self, who: str, action: str, body: dict[str, Any], *,
                ts: str | None = None, secret: str | None = None) -> tuple[dict[str, str], bytes]:
        key, real_secret = self.keys[who]
        raw = json.dumps(body).encode()
        ts = ts or str(int(time.time() * 1000))
        headers = {"accesskey": key, "action": action, "biztype": "5", "ts": ts,
                   "sign": sign(key, action, "5", ts, raw, secret or real_secret)}
        return headers, raw

    async def call(self, who: str, action: str, body: dict[str, Any],
                   v1: bool = False) -> dict[str, Any]:
        headers, raw = self.request(who, action, body)
        response = await self.api.handle(headers, raw, "127.0.0.1", V1_ACTIONS if v1 else None)
        answer: dict[str, Any] = json.loads(response.body)
        assert answer["code"] == 0, answer
        return answer

    async def both(self, headers: dict[str, str], raw: bytes
                   ) -> tuple[Response | None, Response | None, Response]:
        """The quick path's answer when it answered at once, its answer after waiting when it
        checked the request but left the query to ``Service.query``, and ``handle``'s."""
        now = self.api.answer_now(headers, raw, "127.0.0.1")
        if now is None or isinstance(now, Response):
            return now, None, await self.api.handle(headers, raw, "127.0.0.1")
        return None, await now, await self.api.handle(headers, raw, "127.0.0.1")


def _comparable(response: Response) -> tuple[int, str, int, dict[str, Any]]:
    answer = json.loads(response.body)
    assert len(answer.pop("requestId")) == 19
    data = answer.get("data")
    if isinstance(data, dict) and "callId" in data:
        assert len(data.pop("callId")) == 19
    return response.status, response.action, response.code, answer


async def _rig(folder: Path) -> tuple[Rig, Any]:
    store = await open_store(f"sqlite:///{folder}/pns.db", index=True)
    now = int(time.time())
    owner = await store.create_account("rides", Role.CUSTOMER, "rides", "s-rides", now)
    other = await store.create_account("shop", Role.CUSTOMER, "shop", "s-shop", now)
    await store.create_account("switch", Role.SWITCH, "switch", "s-switch", now)
    await store.add_numbers([VirtualNumber(x, owner.id, 852) for x in X[:3]])
    await store.add_numbers([VirtualNumber(X[3], other.id, 852)])
    service = Service(store, Settings(account_cache_seconds=3600))
    keys = {name: (name, f"s-{name}") for name in ("rides", "shop", "switch")}
    return Rig(Api(service), keys), store


def test_every_quick_answer_is_the_answer_of_the_full_path(tmp_path: Path) -> None:
    async def run() -> tuple[dict[str, bool], dict[str, bool]]:
        rig, store = await _rig(tmp_path)
        try:
            plain = (await rig.call("rides", "bindAXB", {
                "phoneA": A, "phoneB": B, "expireSecond": 600, "phoneX": X[0]}))["data"]
            await rig.call("rides", "bindAXB", {
                "phoneA": A, "phoneB": C, "expireSecond": 600, "phoneX": X[1],
                "callDirection": 1, "maxDuration": 90, "renewOnCall": 3600,
                "audioWhenCallFail": "own.wav"})
            await rig.call("rides", "addBlacklist", {"phones": "85299999999"})
            await rig.call("rides", "bindAXB", {
                "phoneA": B, "phoneB": C, "didX": X[2], "bindExpireSecond": 600,
                "extensionB": "123", "dtmfDelayTimeB": 2, "businessId": "ride-1"},
                v1=True)
            assert plain["did"] == X[0]
            cases: dict[str, tuple[dict[str, str], bytes]] = {
                "B calls A": rig.request("switch", "queryAXB", {"caller": B, "did": X[0]}),
                "A calls B": rig.request("switch", "queryAXB", {"caller": A, "did": X[0]}),
                "local form of the caller": rig.request(
                    "switch", "queryAXB", {"caller": B[3:], "did": X[0]}),
                "limit, own prompt, renewal": rig.request(
                    "switch", "queryAXB", {"caller": A, "did": X[1]}),
                "direction refused (10023)": rig.request(
                    "switch", "queryAXB", {"caller": C, "did": X[1]}),
                "v1 extensionB on A's call": rig.request(
                    "switch", "queryAXB", {"caller": B, "did": X[2]}),
                "v1 extensionB, B's call": rig.request(
                    "switch", "queryAXB", {"caller": C, "did": X[2]}),
                "blocked caller (10024)": rig.request(
                    "switch", "queryAXB", {"caller": "85299999999", "did": X[0]}),
                "a customer on its own number": rig.request(
                    "rides", "queryAXB", {"caller": B, "did": X[0]}),
                "a customer on another's number": rig.request(
                    "shop", "queryAXB", {"caller": B, "did": X[0]}),
                "a stranger (10013)": rig.request(
                    "switch", "queryAXB", {"caller": STRANGER, "did": X[0]}),
                "a number nobody has": rig.request(
                    "switch", "queryAXB", {"caller": B, "did": "85239999999"}),
                "no country code": rig.request("switch", "queryAXB", {"caller": B, "did": "123"}),
                "no caller": rig.request("switch", "queryAXB", {"did": X[0]}),
                "malformed body": (rig.request("switch", "queryAXB", {})[0], b"{"),
                "an extension": rig.request(
                    "switch", "queryAXB", {"caller": B, "did": X[0], "extension": "12"}),
                "bad signature": rig.request("switch", "queryAXB", {"caller": B, "did": X[0]},
                                             secret="wrong"),
                "stale ts": rig.request("switch", "queryAXB", {"caller": B, "did": X[0]},
                                        ts=str(int(time.time() * 1000) - 3_600_000)),
            }
            for headers, raw in cases.values():  # the accounts cache as a running server has it
                await rig.api.handle(headers, raw, "127.0.0.1")
            answered_now, continued = {}, {}
            for name, (headers, raw) in cases.items():
                now, later, full = await rig.both(headers, raw)
                answered_now[name] = now is not None
                continued[name] = later is not None
                for quick in (now, later):
                    if quick is not None:
                        assert _comparable(quick) == _comparable(full), name
            headers, raw = cases["B calls A"]
            missing = dict(headers)
            del missing["sign"]
            now, _later, full = await rig.both(missing, raw)
            assert now is not None and _comparable(now) == _comparable(full)
            return answered_now, continued
        finally:
            await store.close()

    answered_now, continued = asyncio.run(run())
    # What the quick path must answer itself: every answer to a party of a plain binding,
    # and every refusal decided before the binding is read.
    for name in ("B calls A", "A calls B", "local form of the caller",
                 "limit, own prompt, renewal", "direction refused (10023)",
                 "v1 extensionB on A's call", "v1 extensionB, B's call",
                 "blocked caller (10024)", "a customer on its own number",
                 "a customer on another's number", "no country code", "no caller",
                 "malformed body", "bad signature", "stale ts"):
        assert answered_now[name], name
    # And what it leaves to the full path: a caller with no binding, a number nobody has
    # (not in the cache), an extension; checked once, then answered by Service.query.
    for name in ("a stranger (10013)", "a number nobody has", "an extension"):
        assert not answered_now[name] and continued[name], name


def test_a_number_not_cached_is_read_without_waiting_and_kept_for_the_ttl(
        tmp_path: Path) -> None:
    """Each number goes stale once per ttl, so with many numbers the quick path meets numbers
    not cached all the time: it reads them itself (no coroutine), keeps them for the ttl (a
    number given to another account is seen by the next read after it), and answers as the
    full path does."""
    async def run() -> None:
        rig, store = await _rig(tmp_path)
        try:
            await rig.call("rides", "bindAXB", {
                "phoneA": A, "phoneB": B, "expireSecond": 600, "phoneX": X[0]})
            clock = [1000.0]
            reads: list[str] = []
            read_now = store.get_number_now

            def counted(x: str) -> VirtualNumber | None:
                reads.append(x)
                return read_now(x)

            store.get_number_now = counted
            service = rig.api.service
            service.accounts = AccountDirectory(store, ttl=10, clock=lambda: clock[0])
            rides = await service.accounts.by_access_key("rides")
            assert rides is not None
            await service.accounts.by_id(rides.id)
            await service.accounts.blocked(rides.id)
            query = rig.request("rides", "queryAXB", {"caller": B, "did": X[0]})

            first = rig.api.answer_now(*query, "127.0.0.1")
            assert isinstance(first, Response) and first.code == 0 and reads == [X[0]]
            again = rig.api.answer_now(*query, "127.0.0.1")
            assert isinstance(again, Response) and again.code == 0 and reads == [X[0]]

            shop = await store.get_account("shop")
            assert shop is not None
            await store.move_numbers([X[0]], shop.id, True, int(time.time()))
            clock[0] += 9.9  # still the cached owner: the bindings are gone, 10013
            _now, _later, full = await rig.both(*query)
            assert full.code == Code.BINDING_NOT_EXIST and reads == [X[0]]

            clock[0] += 0.2  # past the ttl: read again, now shop's number
            await service.accounts.by_access_key("rides")  # (the account is read by waiting)
            now, _later, full = await rig.both(*query)
            assert now is not None and now.code == Code.NO_PERMISSION == full.code
            assert _comparable(now) == _comparable(full) and reads == [X[0], X[0]]
        finally:
            await store.close()

    asyncio.run(run())


def test_a_refusal_is_counted_once(tmp_path: Path) -> None:
    """A bad signature answered by the quick path counts one failure for the rate limit, as
    the full path does: the two never both see one request."""
    async def run() -> tuple[int, int]:
        rig, store = await _rig(tmp_path)
        try:
            await rig.api.handle(*rig.request("switch", "queryAXB", {"caller": B, "did": X[0]}),
                                 "127.0.0.1")  # the switch's account is cached now
            headers, raw = rig.request("switch", "queryAXB", {"caller": B, "did": X[0]},
                                       secret="wrong")
            counts = rig.api.limiter._counts

            def failures() -> int:
                return counts.get("127.0.0.1", (0.0, 0))[1]

            before = failures()
            assert isinstance(rig.api.answer_now(headers, raw, "127.0.0.1"), Response)
            after_now = failures()
            await rig.api.handle(headers, raw, "127.0.0.1")
            return after_now - before, failures() - after_now
        finally:
            await store.close()

    assert asyncio.run(run()) == (1, 1)


def test_stores_that_wait_never_answer_now(pg_database: str) -> None:
    async def run() -> None:
        store = await open_store(pg_database)
        try:
            assert not store.answers_in_process
            with pytest.raises(Exception, match="only by waiting"):
                store.find_by_party_now(X[0], A, int(time.time()))
            with pytest.raises(Exception, match="only by waiting"):
                store.get_number_now(X[0])
            service = Service(store)
            assert service.query_now(None, A, X[0], None, 0) is None  # type: ignore[arg-type]
        finally:
            await store.close()

    asyncio.run(run())
