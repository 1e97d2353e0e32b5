"""The rules of the service: binding, choosing X, extensions, expiry and query resolution.

Knows nothing of HTTP or SQL. Every rule of ``behaviour.md`` lives here under its own name;
stores only keep the invariants with their unique keys and answer narrow questions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
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
    v1_record_fields,
)
from .errors import Code, PnsError
from .ids import new_bind_id, new_snowflake
from .model import (
    BIND_TYPE_AX,
    BIND_TYPE_AXB,
    BIND_TYPE_AXEYB,
    BIND_TYPE_AXG,
    BIND_TYPE_AXYB,
    BIND_TYPE_EXTENSION,
    BIND_TYPE_NXEYB,
    BIND_TYPE_XYB,
    EXCLUSIVE,
    Account,
    Binding,
    CallRecord,
    CallRef,
    Candidate,
    Group,
    Role,
    VirtualNumber,
)
from .numbers import (
    Number,
    normalise_caller,
    parse_international,
    region_country_code,
    require_international,
)
from .store.base import (
    BindConflict,
    ConflictKind,
    Replayed,
    SignatureClaim,
    Store,
)

log = logging.getLogger("pns.core")
K = TypeVar("K")
V = TypeVar("V")

MAX_CUSTOMER_BIND_ID = 64
MAX_BUSINESS_ID = 128
MAX_EXPIRE_SECOND = 100 * 365 * 86400
MAX_FLAG = 2**31 - 1
MAX_EXT = 1024
MAX_GROUP = 200
# Extensions of the modes bound through the v1 API (modes.md: 4 digits).
_V1_EXTENSION_LENGTH = 4
LIST_MAX = 1000
_CANDIDATES = 8
_INSERT_ATTEMPTS = 8
_MAX_EXTENSION = 8
# Seconds, times the attempt: the most a bind that met another extension length pauses.
_LENGTH_RACE_PAUSE = 0.02
# Extensions of bindings made through the v1 API (NXCloud's extensionX, e.g. "0193").
V1_EXTENSION_LENGTH = 4


# lifecycle.md's bounds.
BLOCK_LIST_MAX = 10_000
BLOCK_REQUEST_MAX = 1000
MAX_COOL_OFF = 2_592_000
MAX_DURATION = 86_400
MAX_RENEW_ON_CALL = 7_776_000
MAX_PROMPT = 1024
DIRECTION_BOTH, DIRECTION_A_ONLY, DIRECTION_B_ONLY = 0, 1, 2


def check_cool_off(seconds: int) -> int:
    """An account's ``coolOffSeconds`` within lifecycle.md's bounds (1002 beyond them): one rule
    and one message for every way an operator sets it (the CLI, the admin API, the console)."""
    if not 0 <= seconds <= MAX_COOL_OFF:
        raise PnsError(Code.BAD_PARAMETER,
                       f"coolOffSeconds must be from 0 to {MAX_COOL_OFF} (30 days)")
    return seconds
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
    # v1 AXB with extensionB, A→B only: the digits the switch keys into B's line once B answers.
    callee_dtmf: str = ""
    callee_dtmf_delay: int = 0
    # The number the callee is shown (modes.md): X, or Y in the modes with a Y.
    display: str = ""
    # lifecycle.md: the call's limit (0 none) and the binding's own fail prompt ("" none).
    max_duration: int = 0
    audio_when_call_fail: str = ""


class _TtlCache(Generic[K, V]):
    """Values loaded from the store, each kept for ``ttl`` seconds (absent ones too).

    ``load_now``: the same load without waiting, where the store can (``answers_in_process``).
    Then ``fresh`` loads a missing or stale value itself. Why: each value goes stale once per
    ``ttl``, so a cache of many keys (one per virtual number) misses as often as it has keys
    in use, each second: at 12,000 queries a second over 1,000 numbers, one query in twelve
    left the quick path for the full one only to reload its number."""

    def __init__(self, load: Callable[[K], Awaitable[V]], ttl: float,
                 clock: Callable[[], float], max_entries: int,
                 load_now: Callable[[K], V] | None = None):
        self._load = load
        self._load_now = load_now
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K) -> V:
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        return self._keep(key, await self._load(key), now)

    def fresh(self, key: K) -> V | None:
        """The cached value while it is fresh, without a coroutine (the hot path's check); or,
        with ``load_now``, loaded now. None: absent, or not cached and not loadable now."""
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._load_now is None:
            return None
        return self._keep(key, self._load_now(key), now)

    def _keep(self, key: K, value: V, now: float) -> V:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (now + self._ttl, value)
        return value

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
        by_access_key = _TtlCache(store.get_account, ttl, clock, 100_000)
        by_id = _TtlCache(store.get_account_by_id, ttl, clock, 100_000)
        number = _TtlCache(store.get_number, ttl, clock, 1_000_000,
                           store.get_number_now if store.answers_in_process else None)
        self.by_access_key = by_access_key.get
        self.by_id = by_id.get
        self.number = number.get
        # The same while fresh, without a coroutine (None: absent, or not cached): the hot
        # path tries these first and awaits the loaders only on a miss.
        self.by_access_key_fresh = by_access_key.fresh
        self.by_id_fresh = by_id.fresh
        self.number_fresh = number.fresh

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
    extension: str | None, bind_type: int, attrs: Mapping[str, object],
) -> bool:
    return (
        existing.a == a
        and existing.b == b
        and (x is None or existing.x == x)
        and existing.flag == flag
        and existing.expire_second == expire_second
        and existing.bind_type == bind_type
        and (extension is None or existing.extension == extension)
        and all(getattr(existing, name) == value for name, value in attrs.items())
    )


def _v1_attrs(api_version: int, ext: str, **more: object) -> dict[str, object]:
    """The attributes a bind stores beyond the columns: for the v1 API, its version, ``ext``
    and the mode's own fields. Also what a repeated customerBindId must repeat (a binding of
    the other API is another request)."""
    if not api_version:
        return {"api_version": 0}
    return {"api_version": api_version, "ext": ext, **more}


def _check_country(country_code: int | None, parties: int) -> None:
    """``iso2X`` (as a calling code) must be the parties' country: X shares it."""
    if country_code is not None and country_code != parties:
        raise PnsError(Code.COUNTRY_MISMATCH,
                       f"iso2X names country code {country_code}, the parties have {parties}")


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
        *,
        api_version: int = 0,
        ext: str = "",
        callee_dtmf: str = "",
        callee_dtmf_delay: int = 0,
        country_code: int | None = None,
        life: Lifecycle | None = None,
        claim: SignatureClaim | None = None,
    ) -> Binding:
        """``api_version`` 1 for the v1 API, which adds ``ext`` (copied into call records),
        ``callee_dtmf`` and its delay (keyed into B's line on A's calls) and ``country_code``
        (``iso2X``: the country to take X from, which must be the parties').

        ``claim``: the request's replay guard, claimed by the binding's insert (a claim of its
        own was a second write transaction: about a sixth of the CPU of a bind that comes
        alone; binds that come together shared it). An answer without an insert (a repeated
        customerBindId) leaves it to the caller (``Api._claiming``)."""
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        b = require_international(phone_b, "phoneB")
        if a.country_code != b.country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA and phoneB have different country codes")
        if a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_country(country_code, a.country_code)
        attrs = _v1_attrs(api_version, ext, callee_dtmf=callee_dtmf,
                          callee_dtmf_delay=callee_dtmf_delay)
        if life is not None:
            life.apply(_PROBE)
        requested_x = self._parse_x(phone_x) if phone_x else None
        existing = await self._existing(
            account, customer_bind_id, a.digits, b.digits,
            requested_x.digits if requested_x else None, flag, expire_second, None, BIND_TYPE_AXB,
            now, attrs,
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
                **attrs,  # type: ignore[arg-type]
            )
            binding = _with_life(binding, life)
            try:
                await self.store.insert_binding(binding, now, claim)
                return binding
            except Replayed:
                raise PnsError(Code.REPLAYED) from None
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    # A concurrent request with the same customerBindId won: same answer as a
                    # repeat, or try again if it is already gone.
                    raced = await self._existing(
                        account, customer_bind_id, a.digits, b.digits,
                        requested_x.digits if requested_x else None, flag, expire_second, None,
                        BIND_TYPE_AXB, now, attrs,
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
                account.id, a.country_code, (*parties, EXCLUSIVE), now,
                _CANDIDATES + len(cooling))
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
        parties = _people(parties)
        if not account.cool_off_seconds or not parties:
            return
        until = (await self.store.cool_offs(parties, now)).get(x) or await self._ended_unswept(
            account, x, parties, now)
        if until:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
            raise PnsError(Code.PARTY_ALREADY_BOUND,
                           f"a party is in cool-off on this number until {at} ({until})")

    # --- the binding modes of modes.md ------------------------------------------------------
    async def bind_ax(
        self,
        account: Account,
        phone_a: str,
        expire_second: int,
        phone_x: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        api_version: int = 0,
        ext: str = "",
        iso2: str = "",
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """AX: X held by A alone; anyone but A calling X reaches A (display X)."""
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_ext(ext)
        requested_x = self._parse_x(phone_x) if phone_x else None
        country = region_country_code(iso2) if iso2 and requested_x is None else a.country_code

        def make(x: str) -> Binding:
            return _with_life(Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a=a.digits, b="",
                extension="", bind_type=BIND_TYPE_AX, customer_bind_id=customer_bind_id,
                business_id=business_id, flag=flag, expire_second=expire_second,
                expire_at=expire_at_for(expire_second, now), created_at=now,
                api_version=api_version, ext=ext,
            ), life)

        return await self._bind_alone(account, make, requested_x, country, (a.digits,), now)

    async def bind_axyb(
        self,
        account: Account,
        phone_a: str,
        phone_b: str,
        expire_second: int,
        phone_x: str = "",
        phone_y: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        api_version: int = 0,
        ext: str = "",
        iso2: str = "",
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """AXYB: A calling X reaches B (shown Y); B calling Y reaches A (shown Y, the number
        B dials back) once A has called. X and Y each carry both parties (I1)."""
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        b = require_international(phone_b, "phoneB")
        if a.country_code != b.country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA and phoneB have different country codes")
        if a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_ext(ext)
        requested_x = self._parse_x(phone_x) if phone_x else None
        requested_y = self._parse_x(phone_y) if phone_y else None
        country = region_country_code(iso2) if iso2 and requested_x is None else a.country_code

        def make(x: str, y: str) -> Binding:
            return _with_life(Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a=a.digits, b=b.digits,
                extension="", bind_type=BIND_TYPE_AXYB, customer_bind_id=customer_bind_id,
                business_id=business_id, flag=flag, expire_second=expire_second,
                expire_at=expire_at_for(expire_second, now), created_at=now, y=y,
                api_version=api_version, ext=ext,
            ), life)

        return await self._bind_two(account, make, requested_x, requested_y, country,
                                    (a.digits, b.digits), (a.digits, b.digits), now)

    async def bind_xyb(
        self,
        account: Account,
        phone_b: str,
        expire_second: int,
        phone_x: str = "",
        phone_y: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        api_version: int = 0,
        ext: str = "",
        iso2: str = "",
        customer_user_id: str = "",
        call_in_expire_second: int = 0,
        expire_strategy: int = 0,
        delayed_y: bool = False,
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """XYB: X held alone until its first call; that caller becomes A (captured atomically
        in ``query``), X is released, and A and B reach each other on Y (shown Y).

        ``expire_strategy`` is v1's ``callInExpireStrategy`` (else ``bindExpireStrategy``): 0
        keep, 1 reset, 2 extend, by ``call_in_expire_second`` (else ``expire_second``) at each
        answered query after the call-in. ``delayed_y``: Y is allocated at the call-in."""
        now = int(time.time()) if now is None else now
        b = require_international(phone_b, "phoneB")
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_ext(ext)
        if len(customer_user_id) > MAX_CUSTOMER_BIND_ID:
            raise PnsError(Code.BAD_PARAMETER, "customerUserId is longer than 64 characters")
        if not 0 <= call_in_expire_second <= MAX_EXPIRE_SECOND:
            raise PnsError(Code.BAD_PARAMETER, "callInExpireSecond must be 0 to 100 years")
        if expire_strategy not in (0, 1, 2):
            raise PnsError(Code.BAD_PARAMETER, "the expire strategy must be 0, 1 or 2")
        if delayed_y and phone_y:
            raise PnsError(Code.BAD_PARAMETER, "didY and delayedGetY exclude each other")
        requested_x = self._parse_x(phone_x) if phone_x else None
        requested_y = self._parse_x(phone_y) if phone_y else None
        country = region_country_code(iso2) if iso2 and requested_x is None else b.country_code

        def make(x: str, y: str) -> Binding:
            return _with_life(Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a="", b=b.digits,
                extension="", bind_type=BIND_TYPE_XYB, customer_bind_id=customer_bind_id,
                business_id=business_id, flag=flag, expire_second=expire_second,
                expire_at=expire_at_for(expire_second, now), created_at=now, y=y,
                api_version=api_version, ext=ext, customer_user_id=customer_user_id,
                call_in_expire_second=call_in_expire_second, expire_strategy=expire_strategy,
            ), life)

        if delayed_y:
            return await self._bind_alone(account, lambda x: make(x, ""), requested_x,
                                          country, (b.digits,), now)
        return await self._bind_two(account, make, requested_x, requested_y, country,
                                    (b.digits, EXCLUSIVE), (b.digits,), now, x_alone=True)

    async def _bind_two(
        self, account: Account, make: Callable[[str, str], Binding],
        requested_x: Number | None, requested_y: Number | None, country_code: int,
        on_x: tuple[str, ...], on_y: tuple[str, ...], now: int, x_alone: bool = False,
    ) -> Binding:
        """Insert a binding with an X and a Y: each requested, or allocated (least loaded)
        where the parties it will carry are free; Y is never X. Retried on a lost race."""
        probe = make(requested_x.digits if requested_x else "",
                     requested_y.digits if requested_y else "")
        existing = await self._existing_like(account, probe, now)
        if existing is not None:
            return existing
        for requested in (requested_x, requested_y):
            if requested is not None:
                await self._require_own_number(account, requested, country_code)
                await self._require_no_cool_off(account, requested.digits, (*on_x, *on_y),
                                                now)
        if requested_x and requested_y and requested_x.digits == requested_y.digits:
            raise PnsError(Code.BAD_PARAMETER, "didX and didY must differ")
        for _ in range(_INSERT_ATTEMPTS):
            x = requested_x.digits if requested_x else await self._pick(
                account, country_code, (*on_x, EXCLUSIVE), now, (requested_y.digits,)
                if requested_y else (), empty=x_alone)
            y = requested_y.digits if requested_y else await self._pick(
                account, country_code, (*on_y, EXCLUSIVE), now, (x,))
            binding = make(x, y)
            try:
                await self.store.insert_binding(binding, now)
                return binding
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing_like(account, probe, now)
                    if raced is not None:
                        return raced
                    continue
                if requested_x is not None and requested_y is not None:
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
        raise PnsError(Code.NUMBERS_EXHAUSTED, "virtual numbers exhausted under contention; retry")

    async def _pick(self, account: Account, country_code: int, parties: tuple[str, ...],
                    now: int, exclude: tuple[str, ...], empty: bool = False,
                    cool: tuple[str, ...] | None = None) -> str:
        """A number of the pool where none of ``parties`` is bound, least loaded, not one of
        ``exclude``; 10008/10010 when none. For a binding that holds its number alone
        (``empty``) one with no binding stored is preferred; the store's count includes
        expired bindings not yet swept, so a fuller one is tried too and the insert decides.

        Cool-off (lifecycle.md), as ``allocate_x``: never a number one of ``cool`` (default:
        the real numbers among ``parties``) left less than coolOffSeconds ago."""
        people = _people(parties if cool is None else cool)
        cooling = (await self.store.cool_offs(people, now)
                   if account.cool_off_seconds and people else {})
        candidates = [c for c in await self.store.free_numbers(
            account.id, country_code, parties, now, _CANDIDATES * 4 + len(cooling))
            if c.x not in exclude and c.x not in cooling]
        if empty:
            candidates = [c for c in candidates if c.active_bindings == 0] or candidates
        while candidates:
            chosen = choose_x(candidates)
            if not await self._ended_unswept(account, chosen.x, people, now):
                return chosen.x
            candidates.remove(chosen)
        if not await self._has_pool(account, country_code, now):
            raise PnsError(Code.NO_VIRTUAL_NUMBER,
                           f"the account has no virtual number in country code {country_code}")
        message = "virtual numbers exhausted: no number of the pool is free for these parties"
        held_back = await self._cooling_in_pool(account, country_code, cooling)
        if held_back:
            message += (f"; {held_back} number(s) held back by cool-off (a party left them "
                        f"less than {account.cool_off_seconds} s ago)")
        raise PnsError(Code.NUMBERS_EXHAUSTED, message)

    async def bind_axeyb(
        self,
        account: Account,
        phone_b: str,
        expire_second: int,
        phone_a: str = "",
        phone_x: str = "",
        phone_y: str = "",
        extension: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        api_version: int = 0,
        ext: str = "",
        iso2: str = "",
        extension_length: int | None = None,
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """AXEYB: (A, X, E) reaches B (shown Y); then A and B reach each other on Y. Without
        A, the first caller of X+E becomes A (captured atomically in ``query``)."""
        now = int(time.time()) if now is None else now
        b = require_international(phone_b, "phoneB")
        a = require_international(phone_a, "phoneA") if phone_a.strip() else None
        if a is not None and a.country_code != b.country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA and phoneB have different country codes")
        if a is not None and a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_ext(ext)
        length, requested_ext, requested_x, country = self._extension_request(
            extension_length, api_version, extension, phone_x, iso2, b.country_code)
        requested_y = self._parse_x(phone_y) if phone_y else None
        a_digits = a.digits if a else ""
        parties = (a_digits, b.digits) if a else (b.digits,)

        def make(x: str, y: str, extension: str) -> Binding:
            return _with_life(Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a=a_digits, b=b.digits,
                extension=extension, bind_type=BIND_TYPE_AXEYB,
                customer_bind_id=customer_bind_id, business_id=business_id, flag=flag,
                expire_second=expire_second, expire_at=expire_at_for(expire_second, now),
                created_at=now, y=y, api_version=api_version, ext=ext), life)

        return await self._bind_extension_mode(
            account, make, requested_x, requested_y, country, parties, requested_ext, length,
            now, parties)

    async def bind_nxeyb(
        self,
        account: Account,
        phone_b: str,
        expire_second: int,
        phone_x: str = "",
        extension: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        api_version: int = 0,
        ext: str = "",
        iso2: str = "",
        extension_length: int | None = None,
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """NXEYB: B on X + E. Each caller Aᵢ of X+E reaches B shown Yᵢ, a number allocated at
        that query where Aᵢ and B are free, through a child binding Aᵢ-Yᵢ-B made then."""
        now = int(time.time()) if now is None else now
        b = require_international(phone_b, "phoneB")
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_ext(ext)
        length, requested_ext, requested_x, country = self._extension_request(
            extension_length, api_version, extension, phone_x, iso2, b.country_code)

        def make(x: str, y: str, extension: str) -> Binding:
            return _with_life(Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a="", b=b.digits,
                extension=extension, bind_type=BIND_TYPE_NXEYB,
                customer_bind_id=customer_bind_id, business_id=business_id, flag=flag,
                expire_second=expire_second, expire_at=expire_at_for(expire_second, now),
                created_at=now, api_version=api_version, ext=ext), life)

        return await self._bind_extension_mode(
            account, make, requested_x, None, country, None, requested_ext, length, now,
            (b.digits,))

    def _extension_request(
        self, extension_length: int | None, api_version: int, extension: str, phone_x: str,
        iso2: str, parties_country: int,
    ) -> tuple[int, str | None, Number | None, int]:
        """What an extension mode's bind asks for: the extension length (4 digits through
        v1, else the setting), the extension named, the X named, and the country X is taken
        from (``iso2X`` when no X is named, else the parties')."""
        length = extension_length or (_V1_EXTENSION_LENGTH if api_version
                                      else self.settings.extension_length)
        requested_ext = _valid_extension(extension, length) if extension else None
        requested_x = self._parse_x(phone_x) if phone_x else None
        country = region_country_code(iso2) if iso2 and requested_x is None else parties_country
        return length, requested_ext, requested_x, country

    async def _free_extension(self, x: str, length: int, now: int) -> str:
        """A random free extension of ``length`` digits on X; 10016 when X's active
        extensions have another length (one length per X)."""
        used = await self.store.used_extensions(x, now)
        if any(len(e) != length for e in used):
            raise PnsError(Code.INVALID_EXTENSION, "the extensions on this number have "
                           "another length")
        total = 10**length
        if len(used) >= total:
            raise PnsError(Code.NO_FREE_EXTENSION)
        while True:
            extension = f"{random.randrange(total):0{length}d}"
            if extension not in used:
                return extension

    async def _bind_extension_mode(
        self, account: Account, make: Callable[[str, str, str], Binding],
        requested_x: Number | None, requested_y: Number | None, country_code: int,
        y_parties: tuple[str, ...] | None, requested_ext: str | None, length: int, now: int,
        cool: tuple[str, ...],
    ) -> Binding:
        """Insert an AXEYB (with a Y carrying ``y_parties``) or an NXEYB parent (no Y): X
        any number of the pool not held alone, least loaded; the extension requested or free.
        ``cool``: the binding's parties, kept off the numbers they cool off on (X carries no
        party of these modes, so its choice is told them)."""
        probe = make(requested_x.digits if requested_x else "",
                     requested_y.digits if requested_y else "", requested_ext or "")
        existing = await self._existing_like(account, probe, now)
        if existing is not None:
            return existing
        for requested in (requested_x, requested_y):
            if requested is not None:
                await self._require_own_number(account, requested, country_code)
                await self._require_no_cool_off(account, requested.digits, cool, now)
        for _ in range(_INSERT_ATTEMPTS):
            x = requested_x.digits if requested_x else await self._pick(
                account, country_code, (EXCLUSIVE,), now, (), cool=cool)
            if requested_ext is not None:
                used = await self.store.used_extensions(x, now)
                if any(len(e) != len(requested_ext) for e in used):
                    raise PnsError(Code.INVALID_EXTENSION, "the extensions on this number "
                                   "have another length")
            y = ""
            if y_parties is not None:
                y = requested_y.digits if requested_y else await self._pick(
                    account, country_code, (*y_parties, EXCLUSIVE), now, (x,))
            binding = make(x, y, requested_ext or await self._free_extension(x, length, now))
            try:
                await self.store.insert_binding(binding, now)
                return binding
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing_like(account, probe, now)
                    if raced is not None:
                        return raced
                    continue
                if conflict.kind is ConflictKind.EXTENSION and requested_ext is not None:
                    raise PnsError(Code.EXTENSION_TAKEN) from None
                if conflict.kind is ConflictKind.PARTY and (requested_x or requested_y) and (
                        y_parties is None or requested_y is not None):
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
        raise PnsError(Code.NUMBERS_EXHAUSTED, "virtual numbers exhausted under contention; retry")

    # --- AXG groups (old API) --------------------------------------------------------------
    def _group_numbers(self, phones: str, country_code: int | None) -> tuple[str, ...]:
        """``phones``: 1-200 distinct numbers of one country code (10020 otherwise)."""
        parsed = [require_international(p, "phones") for p in phones.split(",") if p.strip()]
        digits = tuple(sorted({n.digits for n in parsed}))
        countries = {n.country_code for n in parsed} | (
            {country_code} if country_code is not None else set())
        if not 1 <= len(digits) <= MAX_GROUP or len(countries) != 1:
            raise PnsError(Code.GROUP_INVALID)
        return digits

    async def create_group(self, account: Account, phones: str, name: str = "",
                           remark: str = "", now: int | None = None) -> Group:
        now = int(time.time()) if now is None else now
        if not phones.strip():
            raise PnsError(Code.BAD_PARAMETER, "phones is required")
        if len(name) > 64 or len(remark) > 256:
            raise PnsError(Code.BAD_PARAMETER, "groupName is at most 64 characters and remark "
                           "at most 256")
        members = self._group_numbers(phones, None)
        number = parse_international(members[0])
        group_id = new_snowflake()
        group = Group(group_id=group_id, account_id=account.id, name=name or group_id,
                      remark=remark, country_code=number.country_code if number else 0,
                      members=members, created_at=now)
        await self.store.create_group(group)
        return group

    async def _group(self, account: Account, group_id: str) -> Group:
        if not group_id:
            raise PnsError(Code.BAD_PARAMETER, "groupId is required")
        group = await self.store.get_group(account.id, group_id)
        if group is None:
            raise PnsError(Code.GROUP_NOT_EXIST)
        return group

    async def group_bindings(self, account: Account, group_id: str, now: int) -> list[Binding]:
        """The group's active bindings (a walk over the account's bindings: group changes
        are rare, and this needs no index of its own on any store)."""
        found: list[Binding] = []
        cursor = ""
        while True:
            page = await self.store.bindings_page(account.id, "", cursor, LIST_MAX, now)
            found += [b for b in page if b.group_id == group_id]
            if len(page) < LIST_MAX:
                return found
            cursor = page[-1].bind_id

    async def update_group(self, account: Account, group_id: str, operate_type: int,
                           phones: str, now: int | None = None) -> Group:
        """Add (0), remove (1) or replace (2) members, and every binding of the group with
        them, all or nothing: a member bound on an X of the group is 10017, nothing changed.
        A removed member's reach ends at once; a removed phoneB leaves A without a callee."""
        now = int(time.time()) if now is None else now
        if operate_type not in (0, 1, 2):
            raise PnsError(Code.BAD_PARAMETER, "operateType must be 0, 1 or 2")
        if not phones.strip():
            raise PnsError(Code.BAD_PARAMETER, "phones is required")
        for _ in range(_INSERT_ATTEMPTS):
            group = await self._group(account, group_id)
            given = set(self._group_numbers(phones, group.country_code))
            current = set(group.members)
            members = (current | given if operate_type == 0 else current - given
                       if operate_type == 1 else given)
            if not 1 <= len(members) <= MAX_GROUP:
                raise PnsError(Code.GROUP_INVALID)
            changed = msgspec.structs.replace(group, members=tuple(sorted(members)))
            joined = ",".join(changed.members)
            replacements = []
            for binding in await self.group_bindings(account, group_id, now):
                if binding.a in members:
                    raise PnsError(Code.PARTY_ALREADY_BOUND,
                                   "a new member is phoneA of a binding of the group")
                b = binding.b if binding.b in members else ""
                replacements.append(
                    (binding, msgspec.structs.replace(binding, members=joined, b=b)))
            try:
                if await self.store.change_group(changed, replacements, now):
                    return changed
            except BindConflict:
                raise PnsError(Code.PARTY_ALREADY_BOUND, "a new member is already bound on "
                               "an X of the group; nothing changed") from None
        raise PnsError(Code.INTERNAL, "the group's bindings kept changing; retry")

    async def delete_group(self, account: Account, group_id: str,
                           now: int | None = None) -> None:
        now = int(time.time()) if now is None else now
        group = await self._group(account, group_id)
        if await self.group_bindings(account, group_id, now):
            raise PnsError(Code.GROUP_IN_USE)
        if not await self.store.delete_group(account.id, group_id):
            raise PnsError(Code.GROUP_NOT_EXIST)
        # A bindAXG that read the group before the delete may have inserted since the check
        # above (it checks the group again after its insert, but may have done so before the
        # delete): then the group comes back and the delete is refused, so no binding ever
        # outlives its group.
        if await self.group_bindings(account, group_id, now):
            await self.store.create_group(group)
            raise PnsError(Code.GROUP_IN_USE)

    async def list_groups(self, account: Account, limit: int, offset: int
                          ) -> tuple[list[Group], int]:
        if not 0 <= limit <= LIST_MAX:
            raise PnsError(Code.LIMIT_OUT_OF_RANGE, "limit must be an integer from 0 to 1000")
        if offset < 0:
            raise PnsError(Code.OFFSET_OUT_OF_RANGE, "offset must be an integer >= 0")
        return await self.store.list_groups(account.id, limit or LIST_MAX, offset)

    async def bind_axg(
        self,
        account: Account,
        phone_a: str,
        group_id: str,
        expire_second: int,
        phone_x: str = "",
        phone_b: str = "",
        customer_bind_id: str = "",
        flag: int = 0,
        business_id: str = "",
        now: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """AXG: every member of the group calling X reaches A (display X); A calling X
        reaches ``phone_b`` (a member) or nobody. A and every member are parties on X (I1)."""
        now = int(time.time()) if now is None else now
        a = require_international(phone_a, "phoneA")
        _check_common(customer_bind_id, business_id, flag, expire_second)
        group = await self._group(account, group_id)
        if a.country_code != group.country_code:
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA and the group differ in country code")
        if a.digits in group.members:
            raise PnsError(Code.BAD_PARAMETER, "phoneA is a member of the group")
        b = require_international(phone_b, "phoneB").digits if phone_b.strip() else ""
        if b and b not in group.members:
            raise PnsError(Code.NOT_GROUP_MEMBER)
        requested_x = self._parse_x(phone_x) if phone_x else None
        probe = _with_life(Binding(
            bind_id="", account_id=account.id, x=requested_x.digits if requested_x else "",
            a=a.digits, b=b, extension="", bind_type=BIND_TYPE_AXG,
            customer_bind_id=customer_bind_id, business_id=business_id, flag=flag,
            expire_second=expire_second, expire_at=expire_at_for(expire_second, now),
            created_at=now, group_id=group.group_id, members=",".join(group.members)), life)
        existing = await self._existing_like(account, probe, now)
        if existing is not None:
            return existing
        if requested_x is not None:
            await self._require_own_number(account, requested_x, a.country_code)
            await self._require_no_cool_off(account, requested_x.digits,
                                            (a.digits, *group.members), now)
        for _ in range(_INSERT_ATTEMPTS):
            x = requested_x.digits if requested_x is not None else await self._pick(
                account, a.country_code, (a.digits, *group.members, EXCLUSIVE), now, ())
            binding = msgspec.structs.replace(probe, bind_id=new_bind_id(x), x=x)
            try:
                await self.store.insert_binding(binding, now)
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing_like(account, probe, now)
                    if raced is not None:
                        return raced
                    continue
                if requested_x is not None:
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
                continue
            return await self._follow_group(account, binding, now)
        raise PnsError(Code.NUMBERS_EXHAUSTED, "virtual numbers exhausted under contention; retry")

    async def _follow_group(self, account: Account, binding: Binding, now: int) -> Binding:
        """After a bindAXG's insert, the group as it is now: a group deleted meanwhile takes
        the binding with it (10019), members changed meanwhile (an updateGroup that did not
        see this binding yet) are swapped in, so a binding never keeps a group's old members
        nor outlives its group."""
        for _ in range(_INSERT_ATTEMPTS):
            group = await self.store.get_group(account.id, binding.group_id)
            if group is None:
                await self.store.delete_binding(binding.bind_id)
                raise PnsError(Code.GROUP_NOT_EXIST, "the group was deleted meanwhile")
            members = ",".join(group.members)
            if binding.members == members:
                return binding
            followed = msgspec.structs.replace(
                binding, members=members, b=binding.b if binding.b in group.members else "")
            try:
                if await self.store.replace_binding(binding, followed, now):
                    return followed
            except BindConflict:
                await self.store.delete_binding(binding.bind_id)
                raise PnsError(Code.PARTY_ALREADY_BOUND, "a member of the group changed "
                               "meanwhile is already bound on this X") from None
            stored = await self.store.get_binding(binding.bind_id, now)
            if stored is None:
                raise PnsError(Code.GROUP_NOT_EXIST, "the group was deleted meanwhile")
            binding = stored  # an updateGroup swapped it meanwhile: look again
        return binding

    async def _bind_alone(
        self, account: Account, make: Callable[[str], Binding], requested_x: Number | None,
        country_code: int, parties: tuple[str, ...], now: int,
    ) -> Binding:
        """Insert a binding that holds its X alone (AX; XYB until its call): on the requested
        X, or on a number of the pool with no active binding at all. Idempotent by
        customerBindId like every bind."""
        probe = make(requested_x.digits if requested_x else "")
        existing = await self._existing_like(account, probe, now)
        if existing is not None:
            return existing
        if requested_x is not None:
            await self._require_own_number(account, requested_x, country_code)
            await self._require_no_cool_off(account, requested_x.digits, parties, now)
        tried: list[str] = []  # numbers whose other bindings refused this one
        for _ in range(_INSERT_ATTEMPTS):
            try:
                x = requested_x.digits if requested_x is not None else await self._pick(
                    account, country_code, (*parties, EXCLUSIVE), now, tuple(tried),
                    empty=True)
            except PnsError as exc:
                if tried and exc.code is Code.NUMBERS_EXHAUSTED:
                    raise PnsError(Code.NUMBERS_EXHAUSTED, _held_alone(len(tried))) from None
                raise
            binding = make(x)
            try:
                await self.store.insert_binding(binding, now)
                return binding
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing_like(account, probe, now)
                    if raced is not None:
                        return raced
                    continue
                if requested_x is not None:
                    raise PnsError(Code.PARTY_ALREADY_BOUND,
                                   "the requested number has other bindings") from None
                tried.append(x)
        if tried:
            raise PnsError(Code.NUMBERS_EXHAUSTED, _held_alone(len(tried)))
        raise PnsError(Code.NUMBERS_EXHAUSTED, "virtual numbers exhausted under contention; retry")

    async def _has_pool(self, account: Account, country_code: int, now: int) -> bool:
        stats = await self.store.pool_stats(account.id, country_code, "", "", now)
        return stats.numbers > 0

    async def _existing_like(self, account: Account, probe: Binding,
                             now: int) -> Binding | None:
        """Idempotency for the modes: a repeated customerBindId with the same request (same
        kind, parties, flag, expiry, and X/Y when asked for) returns its binding."""
        if not probe.customer_bind_id:
            return None
        existing = await self.store.find_by_customer_bind_id(
            account.id, probe.customer_bind_id, now)
        if existing is None:
            return None
        if (existing.bind_type == probe.bind_type and existing.a == probe.a
                and existing.b == probe.b and existing.flag == probe.flag
                and existing.expire_second == probe.expire_second
                and (not probe.x or existing.x == probe.x)
                and (not probe.y or existing.y == probe.y)
                and (not probe.group_id or existing.group_id == probe.group_id)):
            return existing
        raise PnsError(Code.CUSTOMER_BIND_ID_REUSED)

    # --- bindAXBExtension and v1 AXE ---------------------------------------------------------
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
        *,
        api_version: int = 0,
        ext: str = "",
        extension_length: int | None = None,
        country_code: int | None = None,
        life: Lifecycle | None = None,
    ) -> Binding:
        """A + X + extension (+ B). The v1 API (``api_version`` 1, v1 AXE) may leave
        ``phone_x`` empty (X is then chosen like a pair's, in ``country_code`` when given),
        stores ``ext`` and uses ``extension_length`` (4) instead of the configured length.
        Every extension on one X has one length: another length there is 10016."""
        now = int(time.time()) if now is None else now
        length = extension_length or self.settings.extension_length
        a = require_international(phone_a, "phoneA")
        requested_x = self._parse_x(phone_x) if phone_x.strip() else None
        b = require_international(phone_b, "phoneB") if phone_b.strip() else None
        country = requested_x.country_code if requested_x else a.country_code
        if a.country_code != country or (b and b.country_code != country):
            raise PnsError(Code.COUNTRY_MISMATCH, "phoneA/phoneB and phoneX differ in country code")
        if b is not None and a.digits == b.digits:
            raise PnsError(Code.SAME_NUMBER)
        _check_common(customer_bind_id, business_id, flag, expire_second)
        _check_country(country_code, a.country_code)
        requested_ext = self.validate_extension(extension, length) if extension else None
        attrs = _v1_attrs(api_version, ext)
        if life is not None:
            life.apply(_PROBE)
        b_digits = b.digits if b else ""
        parties = (a.digits, b_digits) if b_digits else (a.digits,)
        existing = await self._existing(
            account, customer_bind_id, a.digits, b_digits,
            requested_x.digits if requested_x else None, flag, expire_second, requested_ext,
            BIND_TYPE_EXTENSION, now, attrs,
        )
        if existing is not None:
            return existing
        if requested_x is not None:
            await self._require_own_number(account, requested_x, a.country_code)
            await self._require_no_cool_off(account, requested_x.digits, parties, now)
        length_raced = False
        for attempt in range(_INSERT_ATTEMPTS):
            if requested_x is not None:
                x = requested_x.digits
            else:
                x = await self._allocate_extension_x(account, a, parties, length, now)
            used = await self.store.used_extensions(x, now)
            if any(len(other) != length for other in used):
                raise PnsError(Code.INVALID_EXTENSION,
                               f"the extensions on {x} have another length than {length} digits")
            ext_chosen = requested_ext or _free_extension(used, length)
            binding = Binding(
                bind_id=new_bind_id(x), account_id=account.id, x=x, a=a.digits,
                b=b_digits, extension=ext_chosen, bind_type=BIND_TYPE_EXTENSION,
                customer_bind_id=customer_bind_id, business_id=business_id, flag=flag,
                expire_second=expire_second, expire_at=expire_at_for(expire_second, now),
                created_at=now, **attrs,  # type: ignore[arg-type]
            )
            binding = _with_life(binding, life)
            try:
                await self.store.insert_binding(binding, now)
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    raced = await self._existing(
                        account, customer_bind_id, a.digits, b_digits,
                        requested_x.digits if requested_x else None, flag, expire_second,
                        requested_ext, BIND_TYPE_EXTENSION, now, attrs,
                    )
                    if raced is not None:
                        return raced
                    continue
                if conflict.kind is ConflictKind.PARTY or await self._party_bound(binding, now):
                    # Both keys may be taken; which one a store reports first is its own
                    # business, so the party conflict is decided here, the same on every store.
                    if requested_x is None:
                        continue  # a party was bound on the chosen X meanwhile: choose again
                    raise PnsError(Code.PARTY_ALREADY_BOUND) from None
                if requested_ext is not None:
                    raise PnsError(Code.EXTENSION_TAKEN) from None
                # The extension we picked was taken meanwhile: pick again.
                continue
            if not await self._one_extension_length(x, length, now):
                # Binds of two lengths raced onto one X: each that sees the other leaves, so
                # two lengths never stay. Then it looks again after a random pause: the other
                # length still there is 10016; all gone (every racer left), it binds again.
                await self.store.delete_binding(binding.bind_id)
                length_raced = True
                await asyncio.sleep(random.uniform(0, _LENGTH_RACE_PAUSE * (attempt + 1)))
                continue
            return binding
        if length_raced:
            raise PnsError(Code.INVALID_EXTENSION,
                           "extensions of another length were bound on this X meanwhile")
        raise PnsError(Code.NO_FREE_EXTENSION, "no free extension under contention; retry")

    def validate_extension(self, extension: str, length: int | None = None) -> str:
        length = length or self.settings.extension_length
        if len(extension) != length or not extension.isascii() or not extension.isdigit():
            raise PnsError(Code.INVALID_EXTENSION, f"extension must be {length} digits")
        return extension

    async def _one_extension_length(self, x: str, length: int, now: int) -> bool:
        """Are all active extensions on X of ``length`` digits (or none there)?"""
        return all(len(used) == length for used in await self.store.used_extensions(x, now))

    async def _allocate_extension_x(self, account: Account, a: Number,
                                    parties: tuple[str, ...], length: int, now: int) -> str:
        """X for an extension binding without a requested X: the least loaded of the
        account's numbers of A's country where no party is bound and the extensions have
        ``length`` digits."""
        # Never onto an X that an AX or XYB binding holds alone.
        candidates = await self.store.free_numbers(account.id, a.country_code,
                                                   (*parties, EXCLUSIVE), now, _CANDIDATES)
        fitting = [c for c in candidates if await self._one_extension_length(c.x, length, now)]
        if fitting:
            return choose_x(fitting).x
        if candidates:
            raise PnsError(Code.INVALID_EXTENSION,
                           f"every free number carries extensions of another length than "
                           f"{length} digits")
        stats = await self.store.pool_stats(account.id, a.country_code, a.digits, a.digits, now)
        if stats.numbers == 0:
            raise PnsError(
                Code.NO_VIRTUAL_NUMBER,
                f"the account has no virtual number in country code {a.country_code}",
            )
        raise PnsError(Code.NUMBERS_EXHAUSTED,
                       f"virtual numbers exhausted: phoneA is already bound on all "
                       f"{stats.numbers} number(s) in country code {a.country_code}")

    # --- unbind and list -----------------------------------------------------------------
    async def unbind(
        self, account: Account, bind_id: str, customer_bind_id: str, now: int | None = None
    ) -> Binding:
        now = int(time.time()) if now is None else now
        binding = await self.get_binding(account, bind_id, customer_bind_id, now)
        if not await self.store.delete_binding(binding.bind_id):
            raise PnsError(Code.BINDING_NOT_EXIST)
        if binding.bind_type == BIND_TYPE_NXEYB and not binding.parent_bind_id:
            # Its children end with it: they are the bindings of B made from this one.
            for child in await self.store.find_bindings_by_number(binding.b, now, LIST_MAX):
                if child.parent_bind_id == binding.bind_id:
                    await self.store.delete_binding(child.bind_id)
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
        if update.phone_b is not None and binding.bind_type == BIND_TYPE_NXEYB:
            raise PnsError(Code.BAD_PARAMETER, "phoneB does not apply to an NXEYB binding: "
                                               "its child bindings share B")
        if update.phone_b is not None and binding.bind_type == BIND_TYPE_AXG:
            member = require_international(update.phone_b, "phoneB").digits
            if member not in binding.members.split(","):
                raise PnsError(Code.NOT_GROUP_MEMBER)
            changes["b"] = member
        elif update.phone_b is not None:
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
        return _with_life(msgspec.structs.replace(binding, **changes), update.life)

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
        added = await self.store.add_blocked(account.id, numbers, now, BLOCK_LIST_MAX)
        if added is None:
            (_, total) = await self.store.list_blocked(account.id, 0, 0)
            raise PnsError(Code.BAD_PARAMETER, f"a block list holds at most {BLOCK_LIST_MAX} "
                                               f"numbers (this one has {total})")
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
    # The kinds an answered query may change (``_answered``); the others skip its coroutine.
    _CHANGED_WHEN_ANSWERED = frozenset({BIND_TYPE_XYB, BIND_TYPE_AXYB})

    def query_now(
        self, account: Account, caller: str, did: str, extension: str | None, now: int,
    ) -> QueryAnswer | None:
        """``query`` for its most common case, answered without waiting: the caller is a
        party of an AXB-like binding on X, and the store (``answers_in_process``) and the
        accounts cache hold all it reads. None: that is not the case, and ``query`` answers
        (nothing has changed meanwhile). The same rules, by the same functions, raise the
        same errors."""
        if extension is not None or not self.store.answers_in_process:
            return None
        x = _parse_did(caller, did)
        accounts = self.accounts
        number = accounts.number_fresh(x.digits)
        if number is None:
            return None
        _check_number(account, number)
        owner = accounts.by_id_fresh(number.account_id)
        blocked = accounts.blocked_fresh(number.account_id)
        if owner is None or blocked is None:
            return None
        caller_digits = _admit_caller(caller, x, blocked, owner)
        if caller_digits is None:
            return None
        found = self.store.find_by_party_now(x.digits, caller_digits, now)
        if found is None:
            return None
        callee = _party_callee(found, caller_digits, x.digits)
        if callee is None or found.bind_type in self._CHANGED_WHEN_ANSWERED:
            return None
        _check_direction(found, caller_digits, owner)
        return self._answer(account, found, x, caller, caller_digits, callee, None, owner, now)

    async def query(
        self, account: Account, caller: str, did: str, extension: str | None,
        now: int | None = None,
    ) -> QueryAnswer:
        """Whom does ``caller`` reach by dialling ``did`` (with ``extension``)?"""
        now = int(time.time()) if now is None else now
        x = _parse_did(caller, did)
        accounts = self.accounts
        number = accounts.number_fresh(x.digits) or await accounts.number(x.digits)
        _check_number(account, number)
        assert number is not None
        owner = accounts.by_id_fresh(number.account_id) or await accounts.by_id(
            number.account_id)
        blocked = accounts.blocked_fresh(number.account_id)
        if blocked is None:
            blocked = await accounts.blocked(number.account_id)
        caller_digits = _admit_caller(caller, x, blocked, owner)
        if extension is not None:
            binding = await self._by_extension(x.digits, extension, owner, now)
            callee = _extension_callee(binding, caller_digits)
            if callee is not None:
                _check_direction(binding, caller_digits, owner)
            if callee == "" and caller_digits is not None:
                # A first caller of an AXEYB without A, or any caller of an NXEYB.
                taken = await self._extension_call_in(binding, caller_digits, owner, now)
                if taken is not None and taken.parent_bind_id and binding.renew_on_call \
                        and binding.expire_at:
                    self._renew(binding, now)  # a call-in is an answered query of the parent
                binding, callee = (taken, taken.b) if taken is not None else (binding, None)
            if not callee:
                raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
        else:
            found = (
                await self.store.find_by_party(x.digits, caller_digits, now)
                if caller_digits is not None
                else None
            )
            if found is None:
                # Off the hot path (no binding for this caller): is X held alone?
                found = await self.store.find_by_party(x.digits, EXCLUSIVE, now)
            callee = _party_callee(found, caller_digits, x.digits) if found is not None else None
            if found is None or callee is None:
                if found is None and await self.store.has_extension_bindings(x.digits, now):
                    return QueryAnswer(
                        callee="", call_id=new_snowflake(), flag=0,
                        bind_type=BIND_TYPE_EXTENSION, prompts=owner, extension=None,
                        display=x.digits,
                    )
                if account.role is Role.SWITCH:
                    self._in_background(self.notify_binding_error(owner, caller, x.digits, now))
                raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
            # Before what an answered query changes: a refused call captures nothing.
            _check_direction(found, caller_digits, owner)
            if found.bind_type in self._CHANGED_WHEN_ANSWERED:
                answered = await self._answered(found, caller_digits, x.digits, now)
                if answered is None:
                    raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(owner))
                found = answered
            binding = found
            if binding.bind_type == BIND_TYPE_XYB and callee == "":
                callee = binding.b
        return self._answer(account, binding, x, caller, caller_digits, callee, extension,
                            owner, now)

    def _answer(self, account: Account, binding: Binding, x: Number, caller: str,
                caller_digits: str | None, callee: str, extension: str | None,
                owner: Account | None, now: int) -> QueryAnswer:
        """An answered query: its renewal (in the background), its call reference (buffered,
        no write on this path) and the answer."""
        if binding.renew_on_call and binding.expire_at:
            self._renew(binding, now)
        call_id = new_snowflake()
        self.store.record_call(
            CallRef(
                call_id=call_id, bind_id=binding.bind_id, account_id=binding.account_id,
                x=x.digits, caller=caller_digits or caller, callee=callee,
                customer_bind_id=binding.customer_bind_id, business_id=binding.business_id,
                bind_type=binding.bind_type, queried_at=now, queried_by=account.id,
            )
        )
        # extensionB of a v1 AXB is keyed into B's line, so only on A's calls to B.
        dtmf = binding.callee_dtmf if callee == binding.b and binding.callee_dtmf else ""
        return QueryAnswer(
            callee=callee, call_id=call_id, flag=binding.flag, bind_type=binding.bind_type,
            prompts=owner, extension=extension, callee_dtmf=dtmf,
            callee_dtmf_delay=binding.callee_dtmf_delay if dtmf else 0,
            display=binding.display(x.digits, caller_digits or caller),
            max_duration=binding.max_duration,
            audio_when_call_fail=binding.audio_when_call_fail,
        )

    async def _answered(self, binding: Binding, caller: str | None, on: str,
                        now: int) -> Binding | None:
        """What an answered query changes (modes.md), atomically by compare-and-swap: the
        first caller of an XYB's X is captured as A (None: another caller won); A's first
        answered query of an AXYB opens Y to B; an XYB's expiry strategy after its call-in."""
        kind = binding.bind_type
        if kind == BIND_TYPE_XYB and not binding.captured_at:
            if caller is None or caller == binding.b:
                return None
            y = binding.y or await self._delayed_y(binding, caller, now)
            period = binding.call_in_expire_second
            captured = msgspec.structs.replace(
                binding, a=caller, y=y, captured_at=now,
                expire_at=now + period if period else binding.expire_at)
            try:
                return captured if await self.store.replace_binding(binding, captured, now) \
                    else None
            except BindConflict:
                return None  # the caller is bound on Y already
        if kind == BIND_TYPE_AXYB and not binding.captured_at and on == binding.x:
            opened = msgspec.structs.replace(binding, captured_at=now)
            if await self.store.replace_binding(binding, opened, now):
                return opened
            return binding
        if kind == BIND_TYPE_XYB and binding.expire_strategy and binding.expire_at:
            period = binding.call_in_expire_second or binding.expire_second
            expire_at = (now + period if binding.expire_strategy == 1
                         else binding.expire_at + period)
            renewed = msgspec.structs.replace(binding, expire_at=expire_at)
            if await self.store.replace_binding(binding, renewed, now):
                return renewed
        return binding

    async def _extension_call_in(self, binding: Binding, caller: str, owner: Account | None,
                                 now: int) -> Binding | None:
        """AXEYB without A: the caller captured as A by compare-and-swap (None: another
        caller won, or the caller is bound on Y). NXEYB: a child binding caller-Yᵢ-B on a Yᵢ
        allocated now where both are free (10010 with the prompts when there is none)."""
        if binding.bind_type == BIND_TYPE_AXEYB:
            captured = msgspec.structs.replace(binding, a=caller, captured_at=now)
            try:
                if await self.store.replace_binding(binding, captured, now):
                    return captured
            except BindConflict:
                pass
            return None
        account = owner or await self.accounts.by_id(binding.account_id)
        number = parse_international(binding.x)
        if account is None or number is None:
            return None
        # One child per caller: a caller calling again gets its child back (else each redial
        # held one more Y for B, and three redials locked everyone out of a pool of three).
        # The child's customerBindId names parent and caller, so I3 finds it by one indexed
        # lookup and makes two concurrent first calls of one caller share one child.
        key = f"{binding.bind_id}:{caller}"
        existing = await self._child_of(binding, caller, key, now)
        if existing is not None:
            return existing
        for _ in range(_INSERT_ATTEMPTS):
            try:
                y = await self._pick(account, number.country_code,
                                     (caller, binding.b, EXCLUSIVE), now, (binding.x,))
            except PnsError as exc:
                raise PnsError(exc.code, exc.msg, data=prompt_data(owner)) from None
            child = Binding(
                bind_id=new_bind_id(y), account_id=binding.account_id, x=y, a=caller,
                b=binding.b, extension="", bind_type=BIND_TYPE_NXEYB, customer_bind_id=key,
                business_id=binding.business_id, flag=binding.flag,
                expire_second=binding.expire_second, expire_at=binding.expire_at,
                created_at=now, parent_bind_id=binding.bind_id,
                api_version=binding.api_version, ext=binding.ext,
                # lifecycle.md's fields of the parent hold for each of its conversations.
                call_direction=binding.call_direction, max_duration=binding.max_duration,
                renew_on_call=binding.renew_on_call,
                audio_when_call_fail=binding.audio_when_call_fail)
            try:
                await self.store.insert_binding(child, now)
                return child
            except BindConflict as conflict:
                if conflict.kind is ConflictKind.CUSTOMER_BIND_ID:
                    return await self._child_of(binding, caller, key, now)
                continue  # Yᵢ was taken meanwhile: choose again
        raise PnsError(Code.NUMBERS_EXHAUSTED, data=prompt_data(owner))

    async def _child_of(self, parent: Binding, caller: str, key: str,
                        now: int) -> Binding | None:
        """The caller's active child of an NXEYB parent, found by its customerBindId (a
        binding the customer made under that id is not one)."""
        found = await self.store.find_by_customer_bind_id(parent.account_id, key, now)
        if found is None or found.parent_bind_id != parent.bind_id or found.a != caller:
            return None
        return found

    async def _delayed_y(self, binding: Binding, caller: str, now: int) -> str:
        """XYB with delayedGetY: Y allocated at the call-in, where A and B are both free."""
        number = parse_international(binding.x)
        country = number.country_code if number is not None else 0
        account = await self.accounts.by_id(binding.account_id)
        if account is None:
            raise PnsError(Code.BINDING_NOT_EXIST)
        return await self._pick(account, country, (caller, binding.b, EXCLUSIVE), now,
                                (binding.x,))


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
                          reporter: Account | None = None,
                          claim: SignatureClaim | None = None) -> CallRecord:
        """Store a finished call once per callId, and enqueue its delivery.

        ``claim``: the request's replay guard, claimed by the record's own write (a report
        arrives alone, so a separate claim would cost a transaction of its own, a fifth of
        its CPU): ``REPLAYED`` when the signature was claimed before.

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
            event = new_event(owner.id, KIND_CALL_RECORD, await self._cdr(record), now,
                              call_id=record.call_id)
        try:
            saved = await self.store.save_call_record(record, event, claim)
        except Replayed:
            raise PnsError(Code.REPLAYED) from None
        if saved:
            if event is not None:
                self.on_event()
            return record
        existing = await self.store.get_call_record(call.account_id, report.callId)
        if existing is None:  # this callId was reported for another account's call
            raise PnsError(Code.BINDING_NOT_EXIST, "callId already reported for another call")
        return existing

    async def _cdr(self, record: CallRecord) -> dict[str, Any]:
        """A record's callback body: NXCloud's newer shape when its binding was made through
        the v1 API, the old flat one otherwise. The binding is read as it was when the call
        started (an expired one is still found until swept); one deleted since (unbound,
        swept) is unknown, and its record goes out in the old shape."""
        binding = None
        if record.bind_id:
            binding = await self.store.get_binding(record.bind_id,
                                                   record.start_at or record.reported_at)
        if binding is not None and binding.api_version == 1 \
                and binding.account_id == record.account_id:
            return v1_record_fields(record, binding)
        return record_fields(record)

    async def _call_from_binding(self, report: CallReport, now: int) -> CallRef | None:
        """Rebuild a call's reference from did and caller when its callId is unknown."""
        x = parse_international(report.did) if report.did else None
        caller = normalise_caller(report.caller, x.country_code) if x and report.caller else None
        if x is None or caller is None:
            return None
        binding = await self.store.find_by_party(x.digits, caller, now)
        if binding is None:
            binding = await self.store.find_by_party(x.digits, EXCLUSIVE, now)
        callee = _party_callee(binding, caller, x.digits) if binding is not None else None
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
        event = new_event(account.id, KIND_CALL_RECORD, await self._cdr(record), now,
                          call_id=call_id)
        await self.store.enqueue_event(event)
        self.on_event()
        return event.event_id

    async def _by_extension(
        self, x: str, extension: str, owner: Account | None, now: int
    ) -> Binding:
        binding = None
        # Old extensions have the configured length, v1 ones 4 digits: any short digit string
        # is looked up.
        if 0 < len(extension) <= _MAX_EXTENSION and extension.isascii() and extension.isdigit():
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
        attrs: Mapping[str, object],
    ) -> Binding | None:
        """Idempotency: a repeated customerBindId with the same request returns its binding."""
        if not customer_bind_id:
            return None
        existing = await self.store.find_by_customer_bind_id(account.id, customer_bind_id, now)
        if existing is None:
            return None
        if _same_request(existing, a, b, x, flag, expire_second, extension, bind_type, attrs):
            return existing
        raise PnsError(Code.CUSTOMER_BIND_ID_REUSED)


def _free_extension(used: set[str], length: int) -> str:
    """A random free extension of ``length`` digits, so concurrent binds rarely collide."""
    total = 10**length
    if len(used) >= total:
        raise PnsError(Code.NO_FREE_EXTENSION)
    while True:
        ext = f"{random.randrange(total):0{length}d}"
        if ext not in used:
            return ext
def _valid_extension(extension: str, length: int) -> str:
    if len(extension) != length or not extension.isascii() or not extension.isdigit():
        raise PnsError(Code.INVALID_EXTENSION, f"extension must be {length} digits")
    return extension


def _check_ext(ext: str) -> None:
    if len(ext) > MAX_EXT:
        raise PnsError(Code.BAD_PARAMETER, "ext is longer than 1024 characters")


def _held_alone(tried: int) -> str:
    """10010 for a binding that holds its number alone (AX, XYB) when none is empty."""
    return (f"virtual numbers exhausted: this binding holds its number alone, and the {tried} "
            "number(s) it could take have other bindings")


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


def _parse_did(caller: str, did: str) -> Number:
    """A query's X, or the refusal every query of a bad ``caller``/``did`` gets."""
    if not caller or not did:
        raise PnsError(Code.BAD_PARAMETER, "caller and did are required")
    x = parse_international(did)
    if x is None:
        raise PnsError(Code.NO_COUNTRY_PREFIX, "did must carry its country code",
                       data=prompt_data(None))
    return x


def _check_number(account: Account, number: VirtualNumber | None) -> None:
    """A customer queries only its own numbers; a number nobody has binds nothing."""
    if account.role is Role.CUSTOMER and (number is None or number.account_id != account.id):
        raise PnsError(Code.NO_PERMISSION, "did is not one of this account's numbers")
    if number is None:
        raise PnsError(Code.BINDING_NOT_EXIST, data=prompt_data(None))


def _admit_caller(caller: str, x: Number, blocked: frozenset[str],
                  owner: Account | None) -> str | None:
    """The caller as digits (None: not a number), refused when X's owner blocks it."""
    caller_digits = normalise_caller(caller, x.country_code)
    if caller_digits in blocked:
        raise PnsError(Code.CALLER_BLOCKED, data=prompt_data(owner))
    return caller_digits


def _party_callee(binding: Binding, caller: str | None, on: str) -> str | None:
    """Without an extension, the callee of ``caller`` dialling ``on`` (modes.md's table):
    the other party; A of an extension binding without B has none; in AX anyone but A
    reaches A; in the Y modes A reaches B on X and the parties reach each other on Y."""
    if binding.bind_type == BIND_TYPE_AX:
        return None if caller == binding.a else binding.a
    if binding.bind_type == BIND_TYPE_AXG:
        return (binding.b or None) if caller == binding.a else binding.a
    if binding.bind_type == BIND_TYPE_XYB and not binding.captured_at:
        # Anyone but B calling X: captured as A by ``Service._answered``.
        return "" if on == binding.x and caller != binding.b else None
    if binding.bind_type == BIND_TYPE_AXYB:
        if on == binding.x:
            return binding.b if caller == binding.a else None
        if caller == binding.b and binding.captured_at:
            return binding.a
        return None
    if caller == binding.a:
        return binding.b or None
    if caller == binding.b:
        return binding.a
    return None


def _extension_callee(binding: Binding, caller: str | None) -> str | None:
    """With an extension: with a B, only A and B reach each other; without, anyone but A
    reaches A. AXEYB: A reaches B; without A yet, "" (anyone but B: captured as A). NXEYB:
    "" for anyone but B (a child binding is made)."""
    if binding.bind_type == BIND_TYPE_AXEYB:
        if binding.a:
            return binding.b if caller == binding.a else None
        return "" if caller != binding.b else None
    if binding.bind_type == BIND_TYPE_NXEYB:
        return "" if caller != binding.b else None
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


def _check_direction(binding: Binding, caller: str | None, owner: Account | None) -> None:
    """callDirection 1: only A may call; 2: only B (anyone but A where there is no B: AX,
    AXE). Where A is still to be captured (XYB before its call-in, AXEYB without A, an
    NXEYB parent) the caller is the A to be. 10023 with the binding's fail prompt."""
    if not binding.call_direction:
        return
    from_a = caller == binding.a or (not binding.a and binding.bind_type in _CAPTURING)
    if from_a != (binding.call_direction == DIRECTION_A_ONLY):
        raise PnsError(Code.DIRECTION_NOT_ALLOWED, data=binding_prompt_data(owner, binding))


# The kinds whose first caller becomes A (modes.md).
_CAPTURING = (BIND_TYPE_AXEYB, BIND_TYPE_XYB, BIND_TYPE_NXEYB)


def _people(parties: tuple[str, ...]) -> tuple[str, ...]:
    """The real numbers among party keys (not "" nor ``EXCLUSIVE``): who can cool off."""
    return tuple(p for p in parties if p and p != EXCLUSIVE)


def _with_life(binding: Binding, life: Lifecycle | None) -> Binding:
    """``binding`` with lifecycle.md's fields of a bind or update, each checked against its
    bounds and against the binding's kind (1002 where a field makes no sense for it)."""
    if life is not None:
        binding = life.apply(binding)
    if binding.call_direction == DIRECTION_B_ONLY and not binding.a \
            and binding.bind_type in _CAPTURING:
        raise PnsError(Code.BAD_PARAMETER, "callDirection 2 (only B may call) does not apply "
                       "before the binding has an A: its first caller becomes A")
    if binding.renew_on_call and binding.bind_type == BIND_TYPE_XYB \
            and binding.expire_strategy:
        raise PnsError(Code.BAD_PARAMETER, "renewOnCall does not apply to an XYB binding with "
                       "an expiry strategy (both would move expireAt): use one of them")
    return binding


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
