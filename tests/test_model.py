"""Model-based tests: random sequences of binds, extension binds, unbinds, updates (a new B, a
new lifetime), expiry (a controllable clock), queries (which renew a binding with renewOnCall)
and lists, run on the core and each store, checked against a
plain in-memory model. The service must never disagree with the model."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pns.core import BindingUpdate, Lifecycle, Service, Settings
from pns.errors import Code, PnsError
from pns.model import Account, Role, VirtualNumber
from pns.store import open_store

from .conftest import ALL_STORES, SQLITE_INDEX, make_store_url

PEOPLE = 5
XS = 2
_run = itertools.count()


@dataclass
class ModelBinding:
    bind_id: str
    x: str
    a: str
    b: str
    extension: str
    expire_at: int
    cbid: str = ""
    alone: bool = False  # AX: X held by this binding alone
    members: frozenset[str] = frozenset()  # AXG: the group's members, parties on X
    renew: int = 0
    direction: int = 0  # callDirection: 1 only A may call, 2 only B (anyone but A)

    def active(self, now: int) -> bool:
        return self.expire_at == 0 or self.expire_at > now


@dataclass
class Model:
    bindings: dict[str, ModelBinding] = field(default_factory=dict)

    def active(self, now: int) -> list[ModelBinding]:
        return [b for b in self.bindings.values() if b.active(now)]

    def on(self, x: str, now: int) -> list[ModelBinding]:
        return [b for b in self.active(now) if b.x == x]

    def alone(self, x: str, now: int) -> ModelBinding | None:
        return next((b for b in self.on(x, now) if b.alone), None)

    def holder(self, x: str, number: str, now: int) -> ModelBinding | None:
        for b in self.active(now):
            if b.x == x and (number in (b.a, b.b) or number in b.members):
                return b
        return None


def machine_for(store_url: str) -> type[RuleBasedStateMachine]:
    class ServiceMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.store = self.loop.run_until_complete(open_store(store_url))
            self.service = Service(self.store, Settings(account_cache_seconds=0))
            run = next(_run)
            prefix = f"{run % 100:02d}"
            self.now = 1_700_000_000
            self.account: Account = self.loop.run_until_complete(self.store.create_account(
                f"model-{run}", Role.CUSTOMER, f"model{run}-{id(self)}", "s", self.now))
            # 12 digits: no conftest.unique_hk number (10 digits) is ever one of these, on a
            # database the run's other tests share (one such X made add_numbers fail in CI).
            self.xs = [f"8523{prefix}{run // 100 % 100:02d}{i:02d}77" for i in range(XS)]
            self.people = [f"8521{prefix}{run // 100 % 100:02d}{i:02d}77"
                           for i in range(PEOPLE)]
            self.loop.run_until_complete(self.store.add_numbers(
                [VirtualNumber(x, self.account.id, 852) for x in self.xs]))
            self.model = Model()
            self.group_members = frozenset(self.people[:2])
            group = self.loop.run_until_complete(self.service.create_group(
                self.account, ",".join(self.group_members), now=self.now))
            self.group_id = group.group_id

        def teardown(self) -> None:
            self.loop.run_until_complete(self.store.close())
            self.loop.close()

        def call(self, coro):  # type: ignore[no-untyped-def]
            try:
                return self.loop.run_until_complete(coro), None
            except PnsError as exc:
                return None, exc.code

        @rule(a=st.integers(0, PEOPLE - 1), b=st.integers(0, PEOPLE - 1),
              expire=st.sampled_from([0, 0, 5, 30]), want_x=st.none() | st.integers(0, XS - 1),
              renew=st.sampled_from([0, 0, 20]))
        def bind(self, a: int, b: int, expire: int, want_x: int | None, renew: int) -> None:
            pa, pb = self.people[a], self.people[b]
            x = self.xs[want_x] if want_x is not None else ""
            binding, code = self.call(self.service.bind_axb(
                self.account, pa, pb, expire, phone_x=x, now=self.now,
                life=Lifecycle(renew_on_call=renew)))
            free = [cx for cx in self.xs if self.model.holder(cx, pa, self.now) is None
                    and self.model.holder(cx, pb, self.now) is None
                    and self.model.alone(cx, self.now) is None]
            if pa == pb:
                assert code is Code.SAME_NUMBER
                return
            if want_x is not None:
                if x in free:
                    assert code is None, code
                else:
                    assert code is Code.PARTY_ALREADY_BOUND
                    return
            elif not free:
                assert code is Code.NUMBERS_EXHAUSTED
                return
            assert binding is not None, code
            assert binding.x in free
            if want_x is None:
                load = {cx: sum(1 for m in self.model.active(self.now) if m.x == cx)
                        for cx in free}
                # Fewest active bindings, counting expired-but-unswept ones as the store's
                # counter does, so only check it never picks a strictly fuller X than all.
                assert load[binding.x] <= max(load.values())
            self.model.bindings[binding.bind_id] = ModelBinding(
                binding.bind_id, binding.x, pa, pb, "", binding.expire_at, renew=renew)

        @rule(a=st.integers(0, PEOPLE - 1), xi=st.integers(0, XS - 1),
              ext=st.none() | st.sampled_from(["101", "102"]), expire=st.sampled_from([0, 5]))
        def bind_extension(self, a: int, xi: int, ext: str | None, expire: int) -> None:
            pa, x = self.people[a], self.xs[xi]
            binding, code = self.call(self.service.bind_extension(
                self.account, pa, x, expire, extension=ext or "", now=self.now))
            if (self.model.holder(x, pa, self.now) is not None
                    or self.model.alone(x, self.now) is not None):
                assert code is Code.PARTY_ALREADY_BOUND
                return
            taken = {m.extension for m in self.model.active(self.now) if m.x == x}
            if ext is not None and ext in taken:
                assert code is Code.EXTENSION_TAKEN
                return
            assert binding is not None, code
            assert binding.extension not in taken
            self.model.bindings[binding.bind_id] = ModelBinding(
                binding.bind_id, x, pa, "", binding.extension, binding.expire_at)

        @rule(a=st.integers(0, PEOPLE - 1), expire=st.sampled_from([0, 5]),
              want_x=st.none() | st.integers(0, XS - 1))
        def bind_ax(self, a: int, expire: int, want_x: int | None) -> None:
            """AX holds its X alone: only a number with no active binding takes it."""
            pa = self.people[a]
            x = self.xs[want_x] if want_x is not None else ""
            binding, code = self.call(self.service.bind_ax(
                self.account, pa, expire, phone_x=x, now=self.now))
            empty = [cx for cx in self.xs if not self.model.on(cx, self.now)]
            if want_x is not None and x not in empty:
                assert code is Code.PARTY_ALREADY_BOUND, code
                return
            if not empty:
                assert code is Code.NUMBERS_EXHAUSTED, code
                return
            assert binding is not None and binding.x in empty, code
            self.model.bindings[binding.bind_id] = ModelBinding(
                binding.bind_id, binding.x, pa, "", "", binding.expire_at, alone=True)

        @rule(a=st.integers(0, PEOPLE - 1), want_x=st.none() | st.integers(0, XS - 1))
        def bind_axg(self, a: int, want_x: int | None) -> None:
            """AXG: A and every member are parties on X."""
            pa = self.people[a]
            x = self.xs[want_x] if want_x is not None else ""
            binding, code = self.call(self.service.bind_axg(
                self.account, pa, self.group_id, 30, phone_x=x, now=self.now))
            if pa in self.group_members:
                assert code is Code.BAD_PARAMETER, code
                return
            parties = {pa, *self.group_members}
            free = [cx for cx in self.xs if self.model.alone(cx, self.now) is None
                    and all(self.model.holder(cx, p, self.now) is None for p in parties)]
            if want_x is not None and x not in free:
                assert code is Code.PARTY_ALREADY_BOUND, code
                return
            if not free:
                assert code is Code.NUMBERS_EXHAUSTED, code
                return
            assert binding is not None and binding.x in free, code
            self.model.bindings[binding.bind_id] = ModelBinding(
                binding.bind_id, binding.x, pa, "", "", binding.expire_at,
                members=self.group_members)

        @rule(op=st.sampled_from([0, 1, 2]), picks=st.sets(st.integers(0, PEOPLE - 1),
                                                            min_size=1, max_size=3))
        def update_group(self, op: int, picks: set[int]) -> None:
            """All or nothing: a member bound on an X of the group (or its A) is 10017."""
            given = {self.people[i] for i in picks}
            old = self.group_members
            new = frozenset(old | given if op == 0 else old - given if op == 1 else given)
            _, code = self.call(self.service.update_group(
                self.account, self.group_id, op, ",".join(given), now=self.now))
            if not new:
                assert code is Code.GROUP_INVALID, code
                return
            ours = [m for m in self.model.active(self.now) if m.members]
            clash = any(m.a in new for m in ours) or any(
                (h := self.model.holder(m.x, p, self.now)) is not None and h is not m
                for m in ours for p in new - old)
            if clash:
                assert code is Code.PARTY_ALREADY_BOUND, code
                return
            assert code is None, code
            self.group_members = new
            for m in ours:
                m.members = new
                m.b = m.b if m.b in new else ""  # a removed phoneB leaves A without a callee

        @precondition(lambda self: bool(self.model.bindings))
        @rule(pick=st.integers(0, 1000))
        def unbind(self, pick: int) -> None:
            # An index into creation order: ids are random, so drawing them would not replay.
            bind_id = list(self.model.bindings)[pick % len(self.model.bindings)]
            _, code = self.call(self.service.unbind(self.account, bind_id, "", now=self.now))
            if self.model.bindings[bind_id].active(self.now):
                assert code is None
            else:
                assert code is Code.BINDING_NOT_EXIST
            del self.model.bindings[bind_id]

        @precondition(lambda self: bool(self.model.bindings))
        @rule(pick=st.integers(0, 1000), b=st.none() | st.integers(0, PEOPLE - 1),
              expire=st.none() | st.sampled_from([0, 5, 30]),
              direction=st.none() | st.sampled_from([0, 1, 2]))
        def update(self, pick: int, b: int | None, expire: int | None,
                   direction: int | None) -> None:
            bind_id = list(self.model.bindings)[pick % len(self.model.bindings)]
            m = self.model.bindings[bind_id]
            pb = self.people[b] if b is not None else None
            binding, code = self.call(self.service.update_binding(
                self.account, bind_id, "", BindingUpdate(
                    phone_b=pb, expire_second=expire, life=Lifecycle(call_direction=direction)),
                now=self.now))
            if not m.active(self.now):
                assert code is Code.BINDING_NOT_EXIST
                return
            if pb is not None and m.members:  # AXG: B must be a member (no key of its own)
                if pb not in m.members:
                    assert code is Code.NOT_GROUP_MEMBER, code
                    return
                m.b = pb
            elif pb is not None:
                holder = self.model.holder(m.x, pb, self.now)
                if not m.b:
                    assert code is Code.BAD_PARAMETER
                    return
                if pb == m.a:
                    assert code is Code.SAME_NUMBER
                    return
                if holder is not None and holder is not m:
                    assert code is Code.PARTY_ALREADY_BOUND
                    return
                m.b = pb
            if expire is not None:
                m.expire_at = self.now + expire if expire else 0
            if direction is not None:
                m.direction = direction
            assert code is None, code
            assert (binding.bind_id, binding.x, binding.b, binding.expire_at,
                    binding.call_direction) == (m.bind_id, m.x, m.b, m.expire_at, m.direction)

        @rule(seconds=st.sampled_from([1, 4, 10, 31]))
        def advance_clock(self, seconds: int) -> None:
            self.now += seconds

        @rule(n=st.integers(1, 10))
        def sweep(self, n: int) -> None:
            self.loop.run_until_complete(self.store.sweep(self.now, n))

        @rule(c=st.integers(0, PEOPLE), xi=st.integers(0, XS - 1),
              ext=st.none() | st.sampled_from(["101", "102", "999"]))
        def query(self, c: int, xi: int, ext: str | None) -> None:
            caller = self.people[c] if c < PEOPLE else "85299999999"
            x = self.xs[xi]
            answer, code = self.call(self.service.query(self.account, caller, x, ext,
                                                        now=self.now))
            self.loop.run_until_complete(self.service.settle())  # renewals land
            active = [m for m in self.model.active(self.now) if m.x == x]
            if ext is not None:
                m = next((m for m in active if m.extension == ext), None)
                expected = None
                if m is not None:
                    if m.b:
                        expected = m.b if caller == m.a else m.a if caller == m.b else None
                    elif caller != m.a:
                        expected = m.a
            else:
                m = self.model.holder(x, caller, self.now)
                expected = None
                if m is not None and m.members:  # AXG: members reach A; A reaches B
                    expected = (m.b or None) if caller == m.a else m.a
                elif m is not None:
                    expected = m.b if caller == m.a else m.a
                    expected = expected or None
                elif (alone := self.model.alone(x, self.now)) is not None:
                    expected = alone.a  # AX: anyone but A reaches A
                    m = alone
                if m is None and any(mm.extension for mm in active):
                    assert answer is not None and answer.callee == "" and answer.bind_type == 4
                    return
            if expected is None:
                assert code is Code.BINDING_NOT_EXIST, (answer, code)
            elif m is not None and m.direction and (caller == m.a) != (m.direction == 1):
                assert code is Code.DIRECTION_NOT_ALLOWED, (answer, code)
            else:
                assert answer is not None and answer.callee == expected, (answer, code)
                if m is not None and m.renew and m.expire_at:  # renewOnCall slides expireAt
                    m.expire_at = max(m.expire_at, self.now + m.renew)

        @invariant()
        def lists_agree(self) -> None:
            listed, total = self.loop.run_until_complete(
                self.store.list_bindings(self.account.id, 1000, 0, self.now))
            expected = sorted(m.bind_id for m in self.model.active(self.now))
            assert sorted(b.bind_id for b in listed) == expected
            assert total == len(expected)
            for listed_binding in listed:
                m = self.model.bindings[listed_binding.bind_id]
                assert (listed_binding.b, listed_binding.expire_at) == (m.b, m.expire_at)

    return ServiceMachine


@pytest.mark.parametrize("kind", [*ALL_STORES, SQLITE_INDEX])
def test_service_agrees_with_model(kind: str, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    """On every store, and on the embedded store's in-memory read index."""
    url = (f"sqlite:///{tmp_path}/model.db" if kind == "sqlite"
           else make_store_url(kind, tmp_path, request))
    machine = machine_for(url)
    machine.TestCase.settings = settings(
        max_examples=25 if kind == "postgresql" else 100, stateful_step_count=30, deadline=None,
        suppress_health_check=list(HealthCheck))
    machine.TestCase().runTest()
