"""The rules of the service: binding, choosing X, extensions, expiry and query resolution.

Knows nothing of HTTP or SQL. Every rule of ``behaviour.md`` lives here under its own name;
stores only keep the invariants with their unique keys and answer narrow questions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import msgspec

from .callbacks import (
    KIND_BINDING_ERROR,
    KIND_CALL_RECORD,
    CallReport,
    binding_error_body,
    join_record,
    new_event,
    record_fields,
)
from .errors import Code, PnsError
from .ids import new_bind_id, new_snowflake
from .model import (
    BIND_TYPE_AXB,
    BIND_TYPE_EXTENSION,
    Account,
    Binding,
    CallRecord,
    CallRef,
    Candidate,
    Role,
)
from .numbers import Number, normalise_caller, parse_international, require_international
from .store.base import BindConflict, ConflictKind, Store

log = logging.getLogger("pns.core")
K = TypeVar("K")
V = TypeVar("V")

MAX_CUSTOMER_BIND_ID = 64
MAX_BUSINESS_ID = 128
MAX_EXPIRE_SECOND = 100 * 365 * 86400
MAX_FLAG = 2**31 - 1
LIST_MAX = 1000
_CANDIDATES = 8
_INSERT_ATTEMPTS = 8


# lifecycle.md's bounds.
BLOCK_LIST_MAX = 10_000
BLOCK_REQUEST_MAX = 1000
MAX_COOL_OFF = 2_592_000
MAX_DURATION = 86_400
MAX_RENEW_ON_CALL = 7_776_000
MAX_PROMPT = 1024
DIRECTION_BOTH, DIRECTION_A_ONLY, DIRECTION_B_ONLY = 0, 1, 2
_UPDATE_ATTEMPTS = 8


class Lifecycle(msgspec.Struct, frozen=True):
    """The fields of ``lifecycle.md`` a bind or an ``updateAXB`` may give; None: not given
    (a bind then keeps the default, an update the binding's value)."""

    call_direction: int | None = None
    max_duration: int | None = None
    renew_on_call: int | None = None
    audio_when_call_fail: str | None = None

    def apply(self, binding: Binding) -> Binding:
        """``binding`` with the given fields, each checked against its bounds (1002)."""
        changes: dict[str, Any] = {}
        if self.call_direction is not None:
            if self.call_direction not in (DIRECTION_BOTH, DIRECTION_A_ONLY, DIRECTION_B_ONLY):
                raise PnsError(Code.BAD_PARAMETER, "callDirection must be 0, 1 or 2")
            changes["call_direction"] = self.call_direction
        if self.max_duration is not None:
            if not 0 <= self.max_duration <= MAX_DURATION:
                raise PnsError(Code.BAD_PARAMETER, "maxDuration must be from 0 to 86400")
            changes["max_duration"] = self.max_duration
        if self.renew_on_call is not None:
            if not 0 <= self.renew_on_call <= MAX_RENEW_ON_CALL:
                raise PnsError(Code.BAD_PARAMETER, "renewOnCall must be from 0 to 7776000")
            changes["renew_on_call"] = self.renew_on_call
        if self.audio_when_call_fail is not None:
            if len(self.audio_when_call_fail) > MAX_PROMPT:
                raise PnsError(Code.BAD_PARAMETER, "audioWhenCallFail is longer than 1024")
            changes["audio_when_call_fail"] = self.audio_when_call_fail
        return msgspec.structs.replace(binding, **changes) if changes else binding


class BindingUpdate(msgspec.Struct, frozen=True):
    """What ``updateAXB`` changes; None leaves a field as it is."""

    phone_b: str | None = None
    expire_second: int | None = None
    flag: int | None = None
    business_id: str | None = None
    life: Lifecycle = Lifecycle()


class Settings(msgspec.Struct, frozen=True):
    extension_length: int = 3
    account_cache_seconds: float = 1.0


class QueryAnswer(msgspec.Struct, frozen=True):
    callee: str
    call_id: str
    flag: int
    bind_type: int
    prompts: Account | None
    extension: str | None
    # lifecycle.md: the call's limit (0 none) and the binding's own fail prompt ("" none).
    max_duration: int = 0
    audio_when_call_fail: str = ""


class _TtlCache(Generic[K, V]):
    """Values loaded from the store, each kept for ``ttl`` seconds (absent ones too)."""

    def __init__(self, load: Callable[[K], Awaitable[V]], ttl: float,
                 clock: Callable[[], float], max_entries: int):
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K) -> V:
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await self._load(key)
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (now + self._ttl, value)
        return value

    def fresh(self, key: K) -> V | None:
        """The cached value while it is fresh, without a coroutine (the hot path's check)."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def forget(self, key: K) -> None:
        """Load ``key`` afresh next time (this process changed it)."""
        self._entries.pop(key, None)


class AccountDirectory:
    """Accounts by accessKey and by id, and numbers' owners, cached for ``ttl`` seconds per
    process.

    The cache is what keeps the hot path off the store for every request; its price is that a
    disabled account, a rotated secret, new prompts or a number given to another account take
    effect in every process within ``ttl`` seconds. Bindings are never cached: the query path
    makes one store round trip, for the binding itself.
    """

    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.by_access_key = _TtlCache(store.get_account, ttl, clock, 100_000).get
        self.by_id = _TtlCache(store.get_account_by_id, ttl, clock, 100_000).get
        self.number = _TtlCache(store.get_number, ttl, clock, 1_000_000).get

        async def load_blocked(account_id: int) -> frozenset[str]:
            return frozenset((await store.list_blocked(account_id, BLOCK_LIST_MAX, 0))[0])

        # Each account's whole block list (at most BLOCK_LIST_MAX numbers): the query checks
        # a caller with one set lookup, and the store is read once per ttl per account.
        self._blocked = _TtlCache(load_blocked, ttl, clock, 100_000)
        self.blocked = self._blocked.get
        self.blocked_fresh = self._blocked.fresh

    def forget_blocked(self, account_id: int) -> None:
        """This process changed the account's block list: read it again at once."""
        self._blocked.forget(account_id)


def expire_at_for(expire_second: int, now: int) -> int:
    """0 means never; otherwise absolute epoch seconds, as NXCloud lists it."""
    return 0 if expire_second == 0 else now + expire_second


def choose_x(candidates: list[Candidate]) -> Candidate:
    """Fewest active bindings wins; ties are broken at random so concurrent binds spread out."""
    fewest = min(c.active_bindings for c in candidates)
    return random.choice([c for c in candidates if c.active_bindings == fewest])


def exhausted_message(numbers: int, held_by_a: int, held_by_b: int, country_code: int) -> str:
    return (
        f"virtual numbers exhausted: the account has {numbers} number(s) in country code "
        f"{country_code}; phoneA is already bound on {held_by_a} of them and phoneB on "
        f"{held_by_b}, and a pair needs a number where neither is bound"
    )


def _check_common(
    customer_bind_id: str, business_id: str, flag: int, expire_second: int
) -> None:
    if len(customer_bind_id) > MAX_CUSTOMER_BIND_ID:
        raise PnsError(Code.BAD_PARAMETER, "customerBindId is longer than 64 characters")
    if len(business_id) > MAX_BUSINESS_ID:
        raise PnsError(Code.BAD_PARAMETER, "businessId is longer than 128 characters")
    if not 0 <= flag <= MAX_FLAG:
        raise PnsError(Code.BAD_PARAMETER, "flag must be an integer >= 0")
    if not 0 <= expire_second <= MAX_EXPIRE_SECOND:
        raise PnsError(Code.BAD_PARAMETER, "expireSecond must be an integer from 0 to 100 years")


def _same_request(
    existing: Binding, a: str, b: str, x: str | None, flag: int, expire_second: int,
    extension: str | None, bind_type: int,
) -> bool:
    return (
        existing.a == a
        and existing.b == b
        and (x is None or existing.x == x)
        and existing.flag == flag
        and existing.expire_second == expire_second
        and existing.bind_type == bind_type
        and (extension is None or existing.extension == extension)
    )


class Service:
    """The service's actions on an account's behalf. One instance per process, stateless
    except for the account cache."""

    def __init__(self, store: Store, settings: Settings | None = None):
        self.store = store
        self.settings = settings or Settings()
        self.accounts = AccountDirectory(store, self.settings.account_cache_seconds)
        # Called after an event enters the outbox, so a delivery worker can wake at once.
        self.on_event: Callable[[], None] = lambda: None
        self._background: set[asyncio.Task[None]] = set()
        self._renewing: set[str] = set()

    # --- bindAXB ---------------------------------------------------------------------------
    async def bind_axb(
        self,
        account: Account,
        phone_a: str,
        phone_b: str,
        expire_second: int,
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        phone_x: str = "",
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        b = require_international(phone_b, "phoneB")
        if a.country_code != b.country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA and phoneB have different country codes")
        if a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        if life is not None:
            life.apply(_PROBE)
        requested_x = self._parse_x(phone_x) if phone_x else None
        existing = await self._existing(
            account, customer_bind_id, a.digits, b.digits,
            requested_x.digits if requested_x else None, flag, expire_second, None, BIND_TYPE_AXB,
            now,
        )
        if existing is not None:
            return existing
        if requested_x is not None:
            await self._require_own_number(account, requested_x, a.country_code)
            await self._require_no_cool_off(account, requested_x.digits, (a.digits, b.digits),
                                            now)
        for _ in range(_INSERT_ATTEMPTS):
            if requested_x is not None:
                x = requested_x.digits
            else:
                x = await self.allocate_x(account, a, b, now)
            binding = Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a=a.digits, b=b.digits,
                extension="", bind_type=BIND_TYPE_AXB, customer_bind_id=customer_bind_id,
                business_id=business_id, flag=flag, expire_second=expire_second,
                expire_at=expire_at_for(expire_second, now), created_at=now,
            )
            if life is not None:
                binding = life.apply(binding)
            try:
                await self.store.insert_binding(binding, now)
                return binding
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    # A concurrent request with the same customerBindId won: same answer as a
                    # repeat, or try again if it is already gone.
                    raced = await self._existing(
                        account, customer_bind_id, a.digits, b.digits,
                        requested_x.digits if requested_x else None, flag, expire_second, None,
                        BIND_TYPE_AXB, now,
                    )
                    if raced is not None:
                        return raced
                    continue
                if requested_x is not None:
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
                # Another bind took a party on the chosen X meanwhile: choose again.
        raise PnsError(Code.NUMBERS_EXHAUSTED, "virtual numbers exhausted under contention; retry")

    async def allocate_x(self, account: Account, a: Number, b: Number, now: int) -> str:
        """Choose X for a new pair: among the account's free numbers of the country, the one
        with the fewest active bindings. When none is free, 10010 says why."""
        parties = (a.digits, b.digits)
        # Cool-off: numbers a party left less than coolOffSeconds ago are skipped. Asking for
        # as many more candidates as there are such numbers keeps the choice exact.
        cooling = (await self.store.cool_offs(parties, now)
                   if account.cool_off_seconds else {})
        candidates = [
            c for c in await self.store.free_numbers(
                account.id, a.country_code, parties, now, _CANDIDATES + len(cooling))
            if c.x not in cooling
        ]
        while candidates:
            chosen = choose_x(candidates)
            if not await self._ended_unswept(account, chosen.x, parties, now):
                return chosen.x
            candidates.remove(chosen)
        stats = await self.store.pool_stats(account.id, a.country_code, a.digits, b.digits, now)
        if stats.numbers == 0:
            raise PnsError(
                Code.NO_VIRTUAL_NUMBER,
                f"the account has no virtual number in country code {a.country_code}",
            )
        message = exhausted_message(stats.numbers, stats.held_by_a, stats.held_by_b,
                                    a.country_code)
        held_back = await self._cooling_in_pool(account, a.country_code, cooling)
        if held_back:
            message += (f"; {held_back} number(s) held back by cool-off (a party left them "
                         f"less than {account.cool_off_seconds} s ago)")
        raise PnsError(Code.NUMBERS_EXHAUSTED, message)

    async def _cooling_in_pool(self, account: Account, country_code: int,
                               cooling: dict[str, int]) -> int:
        """How many of the account's enabled numbers in the country cool off for the pair."""
        held = 0
        for x in cooling:
            number = await self.accounts.number(x)
            if (number is not None and number.account_id == account.id and number.enabled
                    and number.country_code == country_code):
                held += 1
        return held

    async def _ended_unswept(self, account: Account, x: str, parties: tuple[str, ...],
                             now: int) -> int:
        """A binding of a party on X that expired less than coolOffSeconds ago and is not yet
        removed (so it left no cool-off yet): when its cool-off ends, else 0. Read as the
        store answers "active then": at now - coolOffSeconds."""
        if not account.cool_off_seconds:
            return 0
        for party in parties:
            held = await self.store.find_by_party(x, party, now - account.cool_off_seconds)
            if held is not None and 0 < held.expire_at <= now:
                return held.expire_at + account.cool_off_seconds
        return 0

    async def _require_no_cool_off(self, account: Account, x: str, parties: tuple[str, ...],
                                   now: int) -> None:
        """A bind that names X for a party cooling off there: 10017, saying until when."""
        if not account.cool_off_seconds:
            return
        until = (await self.store.cool_offs(parties, now)).get(x) or await self._ended_unswept(
            account, x, parties, now)
        if until:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
            raise PnsError(Code.PARTY_ALREADY_BOUND,
                           f"a party is in cool-off on this number until {at} ({until})")

    # --- bindAXBExtension --------------------------------------------------------------------
    async def bind_extension(
        self,
        account: Account,
        phone_a: str,
        phone_x: str,
        expire_second: int,
        phone_b: str = "",
        extension: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        if not phone_x.strip():
            raise PnsError(Code.BAD_PARAMETER, "phoneX is required")
        x = self._parse_x(phone_x)
        b = require_international(phone_b, "phoneB") if phone_b.strip() else None
        if a.country_code != x.country_code or (b and b.country_code != x.country_code):
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA/phoneB and phoneX differ in country code")
        if b is not None and a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        if life is not None:
            life.apply(_PROBE)
        requested_ext = self.validate_extension(extension) if extension else None
        b_digits = b.digits if b else ""
        existing = await self._existing(
            account, customer_bind_id, a.digits, b_digits, x.digits, flag, expire_second,
            requested_ext, BIND_TYPE_EXTENSION, now,
        )
        if existing is not None:
            return existing
        await self._require_own_number(account, x, a.country_code)
        await self._require_no_cool_off(account, x.digits,
                                        (a.digits, b_digits) if b_digits else (a.digits,), now)
        for _ in range(_INSERT_ATTEMPTS):
            ext = requested_ext or await self.allocate_extension(x.digits, now)
            binding = Binding(
                bind_id=new_bind_id(x.digits), account_id=account.id, x=x.digits, a=a.digits,
                b=b_digits, extension=ext, bind_type=BIND_TYPE_EXTENSION,
                customer_bind_id=customer_bind_id, business_id=business_id, flag=flag,
                expire_second=expire_second, expire_at=expire_at_for(expire_second, now),
                created_at=now,
            )
            if life is not None:
                binding = life.apply(binding)
            try:
                await self.store.insert_binding(binding, now)
                return binding
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing(
                        account, customer_bind_id, a.digits, b_digits, x.digits, flag,
                        expire_second, requested_ext, BIND_TYPE_EXTENSION, now,
                    )
                    if raced is not None:
                        return raced
                    continue
                if conflict.kind is ConflictKind.PARTY or await self._party_bound(binding, now):
                    # Both keys may be taken; which one a store reports first is its own
                    # business, so the party conflict is decided here, the same on every store.
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
                if requested_ext is not None:
                    raise PnsError(Code.EXTENSION_TAKEN) from None
                # The extension we picked was taken meanwhile: pick again.
        raise PnsError(Code.NO_FREE_EXTENSION, "no free extension under contention; retry")

    def validate_extension(self, extension: str) -> str:
        length = self.settings.extension_length
        if len(extension) != length or not extension.isascii() or not extension.isdigit():
            raise PnsError(Code.INVALID_EXTENSION, f"extension must be {length} digits")
        return extension

    async def allocate_extension(self, x: str, now: int) -> str:
        """A random free extension on X, so concurrent binds rarely collide."""
        length = self.settings.extension_length
        used = await self.store.used_extensions(x, now)
        total = 10**length
        if len(used) >= total:
            raise PnsError(Code.NO_FREE_EXTENSION)
        while True:
            ext = f"{random.randrange(total):0{length}d}"
            if ext not in used:
                return ext

    # --- unbind and list -----------------------------------------------------------------
    async def unbind(
        self, account: Account, bind_id: str, customer_bind_id: str, now: int | None = None
    ) -> Binding:
        now = int(time.time()) if now is None else now
        if bind_id:
            binding = await self.store.get_binding(bind_id, now)
        elif customer_bind_id:
            binding = await self.store.find_by_customer_bind_id(account.id, customer_bind_id, now)
        else:
            raise PnsError(Code.BAD_PARAMETER, "bindId or customerBindId is required")
        if binding is None or binding.account_id != account.id:
            raise PnsError(Code.BINDING_NOT_EXIST)
        if not await self.store.delete_binding(binding.bind_id):
            raise PnsError(Code.BINDING_NOT_EXIST)
        return binding

    async def get_binding(self, account: Account, bind_id: str, customer_bind_id: str,
                          now: int | None = None) -> Binding:
        """``getAXB``: the account's active binding by bindId or customerBindId, else 10013."""
        now = int(time.time()) if now is None else now
        if bind_id:
            binding = await self.store.get_binding(bind_id, now)
        elif customer_bind_id:
            binding = await self.store.find_by_customer_bind_id(account.id, customer_bind_id, now)
        else:
            raise PnsError(Code.BAD_PARAMETER, "bindId or customerBindId is required")
        if binding is None or binding.account_id != account.id:
            raise PnsError(Code.BINDING_NOT_EXIST)
        return binding

    async def update_binding(self, account: Account, bind_id: str, customer_bind_id: str,
                             update: BindingUpdate, now: int | None = None) -> Binding:
        """``updateAXB``: one atomic change that keeps the bindId and X. Every check runs
        before the store's compare-and-swap, which applies the whole change or nothing; a
        concurrent change (or renewal) of the same binding makes it start over from the
        binding as it is then."""
        now = int(time.time()) if now is None else now
        for _ in range(_UPDATE_ATTEMPTS):
            current = await self.get_binding(account, bind_id, customer_bind_id, now)
            changed = self._updated(current, update, now)
            if changed == current:
                return current
            try:
                if await self.store.replace_binding(current, changed, now):
                    return changed
            except BindConflict:
                raise PnsError(Code.PARTY_ALREADY_BOUND,
                               "phoneB is already a party of another binding on this number"
                               ) from None
        raise PnsError(Code.INTERNAL, "the binding kept changing meanwhile; retry")

    def _updated(self, binding: Binding, update: BindingUpdate, now: int) -> Binding:
        """The binding after ``update``, every field checked (nothing is written here)."""
        changes: dict[str, Any] = {}
        if update.phone_b is not None:
            if not binding.b:
                raise PnsError(Code.BAD_PARAMETER, "phoneB does not apply to a binding "
                                                   "without B")
            b = require_international(update.phone_b, "phoneB")
            a = parse_international(binding.a)
            x = parse_international(binding.x)
            country = a.country_code if a else x.country_code if x else 0
            if b.country_code != country:
                raise PnsError(Code.COUNTRY_MISMATCH, "phoneB has another country code")
            if b.digits == binding.a:
                raise PnsError(Code.SAME_NUMBER)
            changes["b"] = b.digits
        expire_second = update.expire_second
        flag = binding.flag if update.flag is None else update.flag
        business_id = binding.business_id if update.business_id is None else update.business_id
        _check_common("", business_id, flag,
                      binding.expire_second if expire_second is None else expire_second)
        if expire_second is not None:
            changes["expire_second"] = expire_second
            changes["expire_at"] = expire_at_for(expire_second, now)
        changes["flag"] = flag
        changes["business_id"] = business_id
        return update.life.apply(msgspec.structs.replace(binding, **changes))

    async def list_bindings(
        self, account: Account, limit: int, offset: int, now: int | None = None
    ) -> tuple[list[Binding], int]:
        now = int(time.time()) if now is None else now
        if not 0 <= limit <= LIST_MAX:
            raise PnsError(Code.LIMIT_OUT_OF_RANGE, "limit must be an integer from 0 to 1000")
        if offset < 0:
            raise PnsError(Code.OFFSET_OUT_OF_RANGE, "offset must be an integer >= 0")
        return await self.store.list_bindings(account.id, limit or LIST_MAX, offset, now)

    # --- the caller block list (lifecycle.md) --------------------------------------------
    async def add_blocked(self, account: Account, phones: str, now: int | None = None) -> int:
        """Block callers on every number of the account; returns how many were new."""
        now = int(time.time()) if now is None else now
        numbers = _phone_list(phones)
        (_, total) = await self.store.list_blocked(account.id, 0, 0)
        if total + len(numbers) > BLOCK_LIST_MAX:
            raise PnsError(Code.BAD_PARAMETER, f"a block list holds at most {BLOCK_LIST_MAX} "
                                               f"numbers (this one has {total})")
        added = await self.store.add_blocked(account.id, numbers, now)
        self.accounts.forget_blocked(account.id)
        return added

    async def remove_blocked(self, account: Account, phones: str) -> int:
        removed = await self.store.remove_blocked(account.id, _phone_list(phones))
        self.accounts.forget_blocked(account.id)
        return removed

    async def list_blocked(self, account: Account, limit: int, offset: int
                           ) -> tuple[list[str], int]:
        if not 0 <= limit <= LIST_MAX:
            raise PnsError(Code.LIMIT_OUT_OF_RANGE, "limit must be an integer from 0 to 1000")
        if offset < 0:
            raise PnsError(Code.OFFSET_OUT_OF_RANGE, "offset must be an integer >= 0")
        return await self.store.list_blocked(account.id, limit or LIST_MAX, offset)

    # --- queryAXB: the hot path ------------------------------------------------------------
    async def query(
        self, account: Account, caller: str, did: str, extension: str | None,
        now: int | None = None,
    ) -> QueryAnswer:
        """Whom does ``caller`` reach by dialling ``did`` (with ``extension``)?"""
        now = int(time.time()) if now is None else now
        if not caller or not did:
            raise PnsError(Code.BAD_PARAMETER, "caller and did are required")
        x = parse_international(did)
        if x is None:
            raise PnsError(Code.NO_COUNTRY_PREFIX, "did must carry its country code",
                           data=prompt_data(None))
        number = await self.accounts.number(x.digits)
        if account.role is Role.CUSTOMER and (number is None or number.account_id != account.id):
            raise PnsError(Code.NO_PERMISSION, "did is not one of this account's numbers")
        if number is None:
            raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(None))
        owner = await self.accounts.by_id(number.account_id)
        caller_digits = normalise_caller(caller, x.country_code)
        blocked = self.accounts.blocked_fresh(number.account_id)
        if blocked is None:
            blocked = await self.accounts.blocked(number.account_id)
        if caller_digits in blocked:
            raise PnsError(Code.CALLER_BLOCKED, data=prompt_data(owner))
        if extension is not None:
            binding = await self._by_extension(x.digits, extension, owner, now)
            callee = _extension_callee(binding, caller_digits)
            if callee is None:
                raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
        else:
            found = (
                await self.store.find_by_party(x.digits, caller_digits, now)
                if caller_digits is not None
                else None
            )
            callee = _party_callee(found, caller_digits) if found is not None else None
            if found is None or callee is None:
                if found is None and await self.store.has_extension_bindings(x.digits, now):
                    return QueryAnswer(
                        callee="", call_id=new_snowflake(), flag=0,
                        bind_type=BIND_TYPE_EXTENSION, prompts=owner, extension=None,
                    )
                if account.role is Role.SWITCH:
                    self._in_background(self.notify_binding_error(owner, caller, x.digits, now))
                raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
            binding = found
        if binding.call_direction and not _direction_allowed(binding, caller_digits):
            raise PnsError(Code.DIRECTION_NOT_ALLOWED, data=binding_prompt_data(owner, binding))
        if binding.renew_on_call and binding.expire_at:
            self._renew(binding, now)
        call_id = new_snowflake()
        await self.store.record_call(
            CallRef(
                call_id=call_id, bind_id=binding.bind_id, account_id=binding.account_id,
                x=binding.x, caller=caller_digits or caller, callee=callee,
                customer_bind_id=binding.customer_bind_id, business_id=binding.business_id,
                bind_type=binding.bind_type, queried_at=now, queried_by=account.id,
            )
        )
        return QueryAnswer(
            callee=callee, call_id=call_id, flag=binding.flag, bind_type=binding.bind_type,
            prompts=owner, extension=extension, max_duration=binding.max_duration,
            audio_when_call_fail=binding.audio_when_call_fail,
        )

    def _renew(self, binding: Binding, now: int) -> None:
        """renewOnCall: move expireAt to now + renewOnCall when that is later, after the
        answer (the query never waits on a write), once at a time per binding in this
        process. A crash before it lands loses that one extension."""
        if now + binding.renew_on_call <= binding.expire_at or binding.bind_id in self._renewing:
            return
        self._renewing.add(binding.bind_id)
        self._in_background(self._extend(binding, now))

    async def _extend(self, binding: Binding, now: int) -> None:
        try:
            current: Binding | None = binding
            for _ in range(_UPDATE_ATTEMPTS):
                if current is None or not current.renew_on_call or not current.expire_at:
                    return
                until = now + current.renew_on_call
                if until <= current.expire_at:
                    return
                renewed = msgspec.structs.replace(current, expire_at=until)
                if await self.store.replace_binding(current, renewed, now):
                    return
                current = await self.store.get_binding(binding.bind_id, now)
        finally:
            self._renewing.discard(binding.bind_id)

    async def settle(self) -> None:
        """Wait for the writes running after their answers (renewals, callbacks): shutdown,
        tests."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a write the answer need not wait for (the query path never waits on a write:
        another process may hold the store's write lock); its failure is logged."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a write after an answer (a binding-error callback or a renewal) "
                      "failed: %s", type(task.exception()).__name__)

    async def notify_binding_error(self, owner: Account | None, caller: str, did: str,
                                   now: int) -> None:
        """A real call reached an X with no binding: NXCloud's error callback to X's owner."""
        if owner is None or not owner.callback_url:
            return
        body = binding_error_body(new_snowflake(), caller, did, now)
        await self.store.enqueue_event(new_event(owner.id, KIND_BINDING_ERROR, body, now))
        self.on_event()

    # --- call records ----------------------------------------------------------------------
    async def report_call(self, report: CallReport, now: int | None = None,
                          reporter: Account | None = None) -> CallRecord:
        """Store a finished call once per callId, and enqueue its delivery.

        The callId's reference is joined only when it is the reporter's own query (the
        account that asked is the one reporting) and agrees with the report's did and caller
        when the report carries them; otherwise the report is joined by did and caller, as
        for an unknown callId. So a report never lands on another account's call, even if a
        callId were ever reused."""
        now = int(time.time()) if now is None else now
        if not report.callId:
            raise PnsError(Code.BAD_PARAMETER, "callId is required")
        times = (report.startAt, report.ringAt, report.answerAt, report.hangupAt)
        if min(times) < 0 or max(times) > 2**40 or report.hangup not in (0, 1):
            raise PnsError(Code.BAD_PARAMETER, "times must be epoch seconds; hangup 0 or 1")
        if len(report.hangupCause) > 64 or len(report.recordFile) > 2048:
            raise PnsError(Code.BAD_PARAMETER, "hangupCause or recordFile too long")
        call = await self.store.get_call(report.callId)
        if call is not None and not _same_call(call, report, reporter):
            call = None
        if call is None:
            call = await self._call_from_binding(report, now)
        if call is None:
            raise PnsError(Code.BINDING_NOT_EXIST, "unknown callId")
        record = msgspec.structs.replace(join_record(call, report, now),
                                         id=await self.store.next_call_record_id())
        owner = await self.accounts.by_id(call.account_id)
        event = None
        if owner is not None and owner.callback_url:
            event = new_event(owner.id, KIND_CALL_RECORD, record_fields(record), now,
                              call_id=record.call_id)
        if await self.store.save_call_record(record, event):
            if event is not None:
                self.on_event()
            return record
        existing = await self.store.get_call_record(call.account_id, report.callId)
        if existing is None:  # this callId was reported for another account's call
            raise PnsError(Code.BINDING_NOT_EXIST, "callId already reported for another call")
        return existing

    async def _call_from_binding(self, report: CallReport, now: int) -> CallRef | None:
        """Rebuild a call's reference from did and caller when its callId is unknown."""
        x = parse_international(report.did) if report.did else None
        caller = normalise_caller(report.caller, x.country_code) if x and report.caller else None
        if x is None or caller is None:
            return None
        binding = await self.store.find_by_party(x.digits, caller, now)
        callee = _party_callee(binding, caller) if binding is not None else None
        if binding is None or callee is None:
            return None
        return CallRef(
            call_id=report.callId, bind_id=binding.bind_id, account_id=binding.account_id,
            x=binding.x, caller=caller, callee=callee,
            customer_bind_id=binding.customer_bind_id, business_id=binding.business_id,
            bind_type=binding.bind_type, queried_at=now,
        )

    async def list_call_records(
        self, account: Account, start_from: int, start_to: int, bind_id: str, limit: int,
        offset: int,
    ) -> tuple[list[CallRecord], int]:
        if not 0 <= limit <= LIST_MAX:
            raise PnsError(Code.LIMIT_OUT_OF_RANGE, "limit must be an integer from 0 to 1000")
        if offset < 0:
            raise PnsError(Code.OFFSET_OUT_OF_RANGE, "offset must be an integer >= 0")
        return await self.store.list_call_records(
            account.id, start_from, start_to or 2**62, bind_id, limit or LIST_MAX, offset)

    async def redeliver(self, account: Account, call_id: str, now: int | None = None) -> str:
        """Queue one more delivery of a stored record; returns the new event id."""
        now = int(time.time()) if now is None else now
        record = await self.store.get_call_record(account.id, call_id) if call_id else None
        if record is None:
            raise PnsError(Code.BINDING_NOT_EXIST, "no call record with this callId")
        if not account.callback_url:
            raise PnsError(Code.BAD_PARAMETER, "the account has no callback URL")
        event = new_event(account.id, KIND_CALL_RECORD, record_fields(record), now,
                          call_id=call_id)
        await self.store.enqueue_event(event)
        self.on_event()
        return event.event_id

    async def _by_extension(
        self, x: str, extension: str, owner: Account | None, now: int
    ) -> Binding:
        length = self.settings.extension_length
        binding = None
        if len(extension) == length and extension.isascii() and extension.isdigit():
            binding = await self.store.find_by_extension(x, extension, now)
        if binding is None:
            raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
        return binding

    # --- helpers ---------------------------------------------------------------------------
    async def _party_bound(self, binding: Binding, now: int) -> bool:
        for party in binding.parties():
            if await self.store.find_by_party(binding.x, party, now) is not None:
                return True
        return False

    def _parse_x(self, phone_x: str) -> Number:
        number = parse_international(phone_x)
        if number is None:
            raise PnsError(Code.NO_COUNTRY_PREFIX, "phoneX must carry its country code")
        return number

    async def _require_own_number(self, account: Account, x: Number, country_code: int) -> None:
        number = await self.store.get_number(x.digits)
        if number is None or number.account_id != account.id or not number.enabled:
            raise PnsError(Code.NO_VIRTUAL_NUMBER, "phoneX is not one of this account's numbers")
        if x.country_code != country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneX has another country code than phoneA")

    async def _existing(
        self, account: Account, customer_bind_id: str, a: str, b: str, x: str | None,
        flag: int, expire_second: int, extension: str | None, bind_type: int, now: int,
    ) -> Binding | None:
        """Idempotency: a repeated customerBindId with the same request returns its binding."""
        if not customer_bind_id:
            return None
        existing = await self.store.find_by_customer_bind_id(account.id, customer_bind_id, now)
        if existing is None:
            return None
        if _same_request(existing, a, b, x, flag, expire_second, extension, bind_type):
            return existing
        raise PnsError(Code.CUSTOMER_BIND_ID_REUSED)


def _same_call(call: CallRef, report: CallReport, reporter: Account | None) -> bool:
    """Is ``call`` the reporter's own query, and the call the report describes?"""
    if reporter is not None and call.queried_by and call.queried_by != reporter.id:
        return False
    if report.did:
        x = parse_international(report.did)
        if x is None or x.digits != call.x:
            return False
        if report.caller and normalise_caller(report.caller, x.country_code) != call.caller:
            return False
    return True


def _party_callee(binding: Binding, caller: str | None) -> str | None:
    """Without an extension: the other party; A of an extension binding without B has none."""
    if caller == binding.a:
        return binding.b or None
    if caller == binding.b:
        return binding.a
    return None


def _extension_callee(binding: Binding, caller: str | None) -> str | None:
    """With an extension: with a B, only A and B reach each other; without, anyone but A
    reaches A."""
    if binding.b:
        if caller == binding.a:
            return binding.b
        if caller == binding.b:
            return binding.a
        return None
    if caller == binding.a:
        return None
    return binding.a


def _phone_list(phones: str) -> list[str]:
    """Comma-separated numbers with their country codes, as digits, each once."""
    numbers = [require_international(p, "phones").digits for p in phones.split(",") if p.strip()]
    if not numbers:
        raise PnsError(Code.NUMBER_EMPTY, "phones is empty")
    if len(numbers) > BLOCK_REQUEST_MAX:
        raise PnsError(Code.BAD_PARAMETER, f"at most {BLOCK_REQUEST_MAX} phones per request")
    return list(dict.fromkeys(numbers))


def _direction_allowed(binding: Binding, caller: str | None) -> bool:
    """callDirection 1: only A may call; 2: only B (anyone but A, on an extension without B)."""
    from_a = caller == binding.a
    if binding.call_direction == DIRECTION_A_ONLY:
        return from_a
    if binding.call_direction == DIRECTION_B_ONLY:
        return not from_a
    return True


# A binding with every field at its default, to check lifecycle fields before a binding exists.
_PROBE = Binding("", 0, "", "", "", "", 0, "", "", 0, 0, 0, 0)


def binding_prompt_data(owner: Account | None, binding: Binding) -> dict[str, str]:
    """``prompt_data`` with the binding's own fail prompt when it has one."""
    data = prompt_data(owner)
    if binding.audio_when_call_fail:
        data["audioWhenCallFail"] = binding.audio_when_call_fail
    return data


def prompt_data(owner: Account | None) -> dict[str, str]:
    """The prompts every failure of a query carries, so the switch can always play one."""
    return {
        "audioWhenCallFail": owner.audio_when_call_fail if owner else "",
        "audioWhenDtmfNeed": owner.audio_when_dtmf_need if owner else "",
        "audioWhenDtmfErr": owner.audio_when_dtmf_err if owner else "",
    }
