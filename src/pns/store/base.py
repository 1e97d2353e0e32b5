"""The narrow interface every store implements, and the guarantees it must give.

Every invariant is keyed by the virtual number X, so X is the shard key: each method either
names one X or one account. Guarantees a store must keep (the conformance suite tests them):

- ``insert_binding`` is atomic and enforces I1 (a number is a party of at most one active
  binding on an X, and on a Y: the keys of ``Binding.party_keys``), X exclusivity (a
  binding that holds its X alone, ``Binding.exclusive``, shares it with no active binding),
  I2 (an extension is used at most once among active bindings on an X) and I3
  (a ``customerBindId`` belongs to at most one active binding of an account) with the store's own
  unique keys, under any concurrency, across processes. Expired rows never block an insert.
- Reads never return an expired binding, whether the sweeper has run or not.
- ``claim_signature`` is atomic: of two concurrent claims of one signature, exactly one wins.
- ``save_call_record`` stores a record and its outbox event in one transaction, once per
  ``callId``: a repeated report changes nothing and enqueues nothing. Given a
  ``SignatureClaim``, it claims the signature in that transaction first, with the same one
  winner as ``claim_signature``; a lost claim writes nothing and raises ``Replayed``.
- ``lease_events`` hands a due event to one caller at a time, across processes, until the lease
  runs out; an event is never lost once enqueued (it ends delivered or failed, and stays visible
  until ``purge_history`` removes it after its retention).
- ``finish_event`` changes an event only for the holder of its current lease: once a lease ran
  out and another caller leased the event, the first holder's finish changes nothing.
- ``next_call_record_id`` hands out ids never twice, across processes, increasing within a
  process (drawn in blocks: ``record_ids``); they stay below 2^53 (exact in JavaScript).

``Store`` is the union of two narrower interfaces, split by key: ``BindingIndex`` (everything
that names one X; it can live on a cluster sharded by X) and ``RecordsStore`` (everything keyed
by account). The SQL stores implement both in one database; ``composite.CompositeStore`` puts
them on different machines and keeps I3 with ``BindingLedger``'s reserve → insert → confirm.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ..model import (
    Account,
    AccountChanges,
    AuditEntry,
    Binding,
    CallRecord,
    CallRef,
    Candidate,
    EventState,
    Group,
    NumberUsage,
    Operator,
    OutboxEvent,
    PoolStats,
    PoolUsage,
    Role,
    VirtualNumber,
)

if TYPE_CHECKING:
    from ..vault import Keyring


def summarise_pools(per_x: Sequence[Sequence[Any]],
                    busiest: dict[tuple[int, int], int]) -> list[PoolUsage]:
    """Fold (account, country, x, enabled, active) rows into one PoolUsage per pool."""
    pools: dict[tuple[int, int], list[Sequence[Any]]] = {}
    for row in per_x:
        pools.setdefault((int(row[0]), int(row[1])), []).append(row)
    usage = []
    for (account_id, country_code), rows in pools.items():
        fullest = max(rows, key=lambda r: (int(r[4]), str(r[2])))
        usage.append(PoolUsage(
            account_id=account_id, country_code=country_code, numbers=len(rows),
            enabled=sum(1 for r in rows if r[3]), active_bindings=sum(int(r[4]) for r in rows),
            fullest_x=str(fullest[2]), fullest_x_bindings=int(fullest[4]),
            free_numbers=sum(1 for r in rows if r[3] and not r[4]),
            busiest_party_bindings=busiest.get((account_id, country_code), 0),
        ))
    return usage


_KEPT_BY_REPLACE = ("bind_id", "account_id", "x", "extension", "customer_bind_id",
                    "bind_type", "created_at")


def check_replacement(old: Binding, new: Binding) -> None:
    """``replace_binding`` changes a binding, never which binding it is: its X, extension and
    customerBindId stay (so no store moves a binding between shards), and a Y once given
    stays. A, B and the parties' keys may change (a capture sets A; updateAXB moves B)."""
    for name in _KEPT_BY_REPLACE:
        if getattr(old, name) != getattr(new, name):
            raise StoreError(f"replace_binding cannot change {name}")
    if old.y and old.y != new.y:
        raise StoreError("replace_binding cannot change y")


class ConflictKind(Enum):
    PARTY = "party"
    EXTENSION = "extension"
    CUSTOMER_BIND_ID = "customerBindId"


class BindConflict(Exception):
    """An insert lost to an active binding holding one of its unique keys."""

    def __init__(self, kind: ConflictKind):
        self.kind = kind
        super().__init__(kind.value)


# How long an answered query's callId stays joinable to its binding, unless configured
# (``Retention.call_refs``, PNS_RETENTION_CALL_REFS_DAYS).
CALL_RETENTION = 2 * 86400
DAY = 86400


def _days_from_env(name: str, default: float) -> int:
    value = os.environ.get(name, "")
    try:
        days = float(value) if value else default
    except ValueError:
        raise StoreError(f"{name} must be a number of days, not {value!r}") from None
    if not 0 < days < 1e6:
        raise StoreError(f"{name} must be more than 0 days (and fewer than a million)")
    return int(days * DAY)


@dataclass(frozen=True)
class Retention:
    """How long history with real phone numbers in it is kept, in seconds (a privacy
    guarantee: the sweeper purges anything older). Call records count from when they were
    reported; callback events from when they were delivered or failed for good; call
    references (a query's callId, caller and callee, kept to join its report) from the query."""

    call_records: int = 90 * DAY
    events: int = 30 * DAY
    call_refs: int = CALL_RETENTION

    @classmethod
    def from_env(cls) -> Retention:
        return cls(
            call_records=_days_from_env("PNS_RETENTION_RECORDS_DAYS", 90),
            events=_days_from_env("PNS_RETENTION_EVENTS_DAYS", 30),
            call_refs=_days_from_env("PNS_RETENTION_CALL_REFS_DAYS", CALL_RETENTION / DAY),
        )


class StoreError(Exception):
    """An operator-facing store failure with a clear one-line message (CLI, migrations)."""


@dataclass(slots=True)
class SignatureClaim:
    """A signed request's claim on its signature (the replay guard), made by the request's own
    write when it has one (``insert_binding``, ``save_call_record``): one transaction, not
    two. ``taken`` once a store committed it, so a refusal after that is not claimed twice."""

    key: str
    expires_at: int
    now: int
    taken: bool = False

    def params(self) -> dict[str, Any]:
        return {"key": self.key, "expires_at": self.expires_at, "now": self.now}


async def take_claim(store: RecordsStore, claim: SignatureClaim) -> bool:
    """The claim by itself (``claim_signature``); False for a replay. A claim this request
    took already (a bind tried again after a conflict) is its own: True."""
    if not claim.taken:
        claim.taken = await store.claim_signature(claim.key, claim.expires_at, claim.now)
    return claim.taken


class Replayed(Exception):
    """A write's ``SignatureClaim`` found the signature already claimed: nothing was written."""


class BindingIndex(Protocol):
    """Everything that names one X: bindings, their parties and extensions, the query.

    Keyed by X alone, so it shards by X: every method names one X or a bindId, and a bindId
    made by ``ids.new_bind_id(x)`` names its X (``ids.bind_id_x``), so no method needs a global
    index. Guarantees (``tests/test_store_conformance.py`` on every configuration):

    - ``insert_binding`` is atomic per X and enforces I1 and I2 with expired holders released
      first; it knows nothing of ``customerBindId`` (I3 is the records side's, see
      ``BindingLedger``). A repeated bindId is a ``StoreError``, never a conflict.
    - Reads never return an expired binding, swept or not.
    - ``delete_binding`` frees the binding's keys at once.
    - ``replace_binding`` is a compare-and-swap of one binding, I1 and X exclusivity kept,
      all or nothing; keys it no longer holds are free at once and its new ones taken.
    """

    async def insert_binding(self, binding: Binding, now: int) -> None:
        """Insert atomically or raise ``BindConflict``; expired holders of its keys are removed."""

    async def get_binding(self, bind_id: str, now: int) -> Binding | None: ...

    async def delete_binding(self, bind_id: str) -> bool:
        """End a binding now; False when it was already gone."""

    async def replace_binding(self, old: Binding, new: Binding, now: int) -> bool:
        """Change a binding in place (``updateAXB``, ``renewOnCall``, the captures of
        modes.md), atomically: ``new`` keeps what ``check_replacement`` names; its A (a
        capture), B, expiry and the fields beyond the columns may differ. A compare-and-swap:
        applied only while the stored binding still equals ``old`` and is active (False
        otherwise: changed or ended meanwhile, nothing written). A key of ``new`` that another
        active binding holds raises ``BindConflict`` (I1 and X exclusivity; expired holders
        are released first) and nothing changes. Of two concurrent replacements of one
        ``old`` at most one succeeds. The next read anywhere (another process's
        ``find_by_party`` included) sees ``new``, never ``old``."""

    async def find_by_party(self, x: str, number: str, now: int) -> Binding | None: ...

    async def find_by_extension(self, x: str, extension: str, now: int) -> Binding | None: ...

    async def has_extension_bindings(self, x: str, now: int) -> bool: ...

    async def used_extensions(self, x: str, now: int) -> set[str]: ...


class RecordsStore(Protocol):
    """Everything keyed by account (or by nothing hot): accounts, numbers, call references and
    records, the outbox, the replay guard. Relational, append-heavy, off the query's path.

    Guarantees: ``claim_signature`` has one winner per signature across processes;
    ``save_call_record`` writes a record and its event once per callId, in one transaction;
    ``lease_events`` hands a due event to one caller at a time until its lease ends.
    """

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the store cannot answer (``/healthz``)."""

    async def create_account(
        self, name: str, role: Role, access_key: str, access_secret: str, now: int
    ) -> Account: ...

    async def get_account(self, access_key: str) -> Account | None: ...

    async def get_account_by_id(self, account_id: int) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    async def update_account(self, access_key: str, changes: AccountChanges) -> Account | None: ...

    async def add_numbers(self, numbers: Sequence[VirtualNumber]) -> list[str]:
        """Add numbers; returns those that already existed (left unchanged)."""

    async def remove_numbers(self, xs: Sequence[str], force: bool, now: int) -> list[str]:
        """Remove numbers; without ``force`` a number with active bindings is kept and returned.

        With ``force`` its bindings end too. Returns the numbers that were kept.
        """

    async def get_number(self, x: str) -> VirtualNumber | None: ...

    async def list_numbers(self, account_id: int | None, now: int) -> list[NumberUsage]: ...

    def record_call(self, call: CallRef) -> None:
        """Remember an answered query's callId without a write on the caller's path: the
        reference goes to the store's ``CallRefBuffer`` (one bounded buffer, one flusher, the
        same on every store); ``get_call`` finds it at once in this process."""

    async def get_call(self, call_id: str) -> CallRef | None: ...

    async def claim_signature(self, key: str, expires_at: int, now: int) -> bool:
        """True the first time ``key`` is claimed while unexpired; False for a replay."""

    async def sweep(self, now: int, limit: int) -> int:
        """Remove up to ``limit`` expired bindings and stale signatures; returns bindings
        gone. (Call references go with the history, by ``purge_history``.)"""

    async def save_call_record(self, record: CallRecord, event: OutboxEvent | None,
                               claim: SignatureClaim | None = None) -> bool:
        """False when a record with this callId exists (nothing is written then, but
        ``claim``). With ``claim``, the signature is claimed in the same transaction, before
        anything else: ``Replayed`` when it was claimed already (nothing is written);
        ``claim.taken`` once committed."""

    async def list_call_records(
        self, account_id: int, start_from: int, start_to: int, bind_id: str, limit: int,
        offset: int,
    ) -> tuple[list[CallRecord], int]:
        """The account's records with ``start_from <= startAt < start_to`` (and the bindId,
        when given), oldest first."""

    async def get_call_record(self, account_id: int, call_id: str) -> CallRecord | None: ...

    async def enqueue_event(self, event: OutboxEvent) -> None: ...

    async def lease_events(self, now: int, limit: int, lease_seconds: int, *, holder: str,
                           skip_accounts: Sequence[int] = ()) -> list[OutboxEvent]:
        """Claim for ``holder`` up to ``limit`` pending events that are due and not leased,
        none of the accounts in ``skip_accounts`` (their receiver is busy), longest due
        first."""

    async def finish_event(
        self, event_id: str, state: EventState, attempts: int, next_attempt_at: int, error: str,
        now: int, *, holder: str,
    ) -> bool:
        """Record an attempt: delivered, failed for good, or pending until ``next_attempt_at``.
        Only while ``holder`` holds the event's lease; returns whether anything changed."""

    async def list_events(self, account_id: int | None, state: EventState | None,
                          limit: int) -> list[OutboxEvent]: ...

    async def outbox_backlog(self, now: int) -> tuple[int, int]:
        """(pending events, age in seconds of the oldest pending one)."""

    # --- AXG groups (modes.md), by account ---------------------------------------------------
    async def create_group(self, group: Group) -> None: ...

    async def get_group(self, account_id: int, group_id: str) -> Group | None:
        """The account's group (None for another account's)."""

    async def list_groups(self, account_id: int, limit: int, offset: int
                          ) -> tuple[list[Group], int]: ...

    async def change_group(self, group: Group,
                           replacements: Sequence[tuple[Binding, Binding]], now: int) -> bool:
        """Store the group's members (and name, remark) and replace its bindings (each a
        compare-and-swap as ``replace_binding``) in one transaction: all or nothing. False
        when a binding changed since it was read; ``BindConflict`` when a new member is
        bound on an X of the group (I1)."""

    async def delete_group(self, account_id: int, group_id: str) -> bool: ...

    # --- lifecycle.md: cool-offs and the block list (keyed by party and by account) ----------
    async def cool_offs(self, parties: Sequence[str], now: int) -> dict[str, int]:
        """X → until when, for every X where any of ``parties`` cools off after ``now``.

        A binding of an account with ``cool_off_seconds`` > 0 leaves, when it ends (unbind,
        expiry swept or released by an insert, its number removed), a cool-off of that many
        seconds for each of its parties on its X and on its Y (the modes with a Y), from when
        it ended (its expireAt when it expired). Changed in place (``replace_binding``) it
        leaves none. The sweeper removes cool-offs that are over."""

    async def record_cool_offs(self, bindings: Sequence[Binding], now: int) -> None:
        """The cool-offs these ended bindings leave (their account's ``cool_off_seconds``
        from when each ended: its expireAt if expired at ``now``, else ``now``), for a binding
        index kept elsewhere (the SQL stores' own bindings record theirs by trigger)."""

    async def add_blocked(self, account_id: int, numbers: Sequence[str], now: int,
                          limit: int) -> int | None:
        """Add callers to the account's block list; returns how many were new, or None (and
        nothing added) when the list would then hold more than ``limit`` numbers. Atomic
        against concurrent adds: a cap checked before the insert let two adds overshoot it,
        and the numbers beyond the cap were listed but never enforced."""

    async def remove_blocked(self, account_id: int, numbers: Sequence[str]) -> int:
        """Remove callers from the block list; returns how many were there."""

    async def list_blocked(self, account_id: int, limit: int, offset: int
                           ) -> tuple[list[str], int]:
        """A page of the block list in number order, and its size."""

    # --- secrets at rest (pns.vault) -------------------------------------------------------
    @property
    def keyring(self) -> Keyring:
        """The keys that seal this store's account secrets (they are never stored plain)."""

    async def reseal_secrets(self, keyring: Keyring) -> int:
        """Seal every secret again with ``keyring``'s first key, in one transaction, and use
        ``keyring`` from now on; returns how many accounts changed."""

    # --- the pool of virtual numbers ------------------------------------------------------
    async def number_owners(self, xs: Sequence[str]) -> dict[str, int]:
        """The owning account id of each of ``xs`` that exists (operators' commands name the
        owner of a number they cannot add, and the numbers they did not find)."""

    async def numbers_page(self, account_id: int | None, after: str, limit: int,
                           now: int) -> list[NumberUsage]:
        """Up to ``limit`` numbers greater than ``after``, in number order (a cursor: pages
        stay cheap however deep, and a listing can stream)."""

    async def refresh_statistics(self) -> None:
        """Tell the query planner about a bulk change (after ``numbers import``)."""

    async def set_numbers_enabled(self, xs: Sequence[str], enabled: bool) -> list[str]:
        """Enable or disable numbers (a disabled number gets no new bindings; its bindings
        keep working until they end). Returns the numbers that do not exist."""

    # --- calls, the outbox, housekeeping --------------------------------------------------
    async def flush_calls(self) -> None:
        """Write every pending call reference now (shutdown, tests)."""

    async def lease_worker_id(self, holder: str, now: int, lease_seconds: int,
                              current: int | None = None) -> int | None:
        """A snowflake worker id (0 to ``ids.WORKER_IDS`` - 1) that no other live lease holds,
        leased to ``holder`` until ``now + lease_seconds``; ``current`` is renewed when
        ``holder`` still holds it. None when every id is leased."""

    async def release_worker_id(self, holder: str, worker_id: int) -> None: ...

    async def release_event(self, event_id: str, *, holder: str) -> None:
        """Give a leased event back unattempted, so any caller may lease it at once."""

    async def outbox_counts(self) -> dict[EventState, int]:
        """Events in the outbox by state."""

    async def events_for_calls(self, call_ids: Sequence[str]) -> list[OutboxEvent]:
        """Every outbox event of these calls, oldest first."""

    async def requeue_event(self, event_id: str, now: int) -> OutboxEvent | None:
        """Deliver a (failed) event again from ``now``, with a new retry horizon; the event
        id stays, so receivers still de-duplicate. None when no such event."""

    # --- operators of the admin API, and their audit trail ------------------------------------
    async def create_operator(self, operator: Operator) -> bool:
        """False when an operator of that name exists (nothing changes then)."""

    async def get_operator(self, name: str) -> Operator | None: ...

    async def get_operator_by_token_hash(self, token_hash: str) -> Operator | None: ...

    async def list_operators(self) -> list[Operator]: ...

    async def set_operator_disabled(self, name: str, disabled: bool) -> bool:
        """False when no such operator."""

    async def end_operator_sessions(self, name: str) -> bool:
        """Bump the operator's session generation, so the console sessions it has now stop
        working (logout). False when no such operator."""

    async def add_audit(self, entry: AuditEntry) -> None: ...

    async def list_audit(self, limit: int) -> list[AuditEntry]:
        """The newest entries first."""

    async def next_call_record_id(self) -> int:
        """A fresh call-record id: unique across processes, increasing within this one, below
        2^53."""

    async def purge_history(self, now: int, retention: Retention, limit: int) -> int:
        """Remove up to ``limit`` call records and up to ``limit`` delivered or failed
        events older than their retention; returns how many rows went."""


class BindingLedger(Protocol):
    """The account's side of bindings when the index lives elsewhere: I3, listing, sweeping.

    One row per binding, keyed by bindId and by (account, customerBindId), in one of three
    states told by ``lease_until`` (epoch ms): 0 confirmed; > 0 reserved until then (a bind in
    flight); < 0 being unbound (until ``-lease_until``). A bind goes reserve → index insert →
    confirm (``set_lease(id, 0)``), or ``remove`` on a conflict. A row whose deadline passed
    (its writer died, or never heard back from the index) is settled by the next claimant of
    its customerBindId or by the sweeper, who asks the index whether the binding is there, so a
    crash between the steps never leaves a customerBindId unusable. Guarantees: of concurrent
    reservations of one customerBindId one wins; only confirmed, unexpired rows are listed or
    found; ``sweep_expired`` hands each expired row to one sweeper.
    """

    async def close(self) -> None: ...

    async def reserve(self, binding: Binding, now: int, lease_until_ms: int
                      ) -> tuple[Binding, int] | None:
        """Claim the binding's row; None, or the row holding its customerBindId with its
        ``lease_until``. Raises ``StoreError`` for a repeated bindId."""

    async def set_lease(self, bind_id: str, lease_until: int) -> None: ...

    async def update(self, binding: Binding) -> None:
        """Store the new copy of a binding the index replaced (same bindId)."""

    async def replace(self, old: Binding, new: Binding,
                      apply: Callable[[], Awaitable[bool]]) -> bool:
        """Change the confirmed row of ``old`` to ``new`` when ``apply()`` (the index's
        compare-and-swap) succeeds, holding the row meanwhile so no sweep or unbind of it
        runs in between; False, and nothing written, otherwise."""

    async def lease_of(self, bind_id: str) -> int | None: ...

    async def remove(self, bind_ids: Sequence[str]) -> None: ...

    async def remove_x(self, x: str) -> None: ...

    async def find_by_customer_bind_id(
        self, account_id: int, customer_bind_id: str, now: int
    ) -> Binding | None: ...

    async def list_bindings(
        self, account_id: int, limit: int, offset: int, now: int
    ) -> tuple[list[Binding], int]: ...

    async def bindings_page(self, account_id: int, x: str, after_bind_id: str, limit: int,
                            now: int) -> list[Binding]:
        """As ``Store.bindings_page``: the account's active bindings after a cursor."""

    async def find_by_number(self, number: str, now: int, limit: int) -> list[Binding]:
        """Active bindings where ``number`` is X or a party (an operator's search)."""

    async def sweep_expired(self, now: int, limit: int,
                            drop: Callable[[list[Binding]], Awaitable[None]]) -> int: ...

    async def stale(self, now_ms: int, limit: int) -> list[tuple[Binding, int]]: ...


class Store(BindingIndex, RecordsStore, Protocol):
    """The union the single-database stores implement, and what the core talks to: both
    narrower interfaces, and what needs the bindings and the records together (allocation,
    pool statistics, listings by account, moving numbers)."""

    # True when the store answers reads in this process without waiting (the embedded store):
    # ``find_by_party_now`` answers, and no coroutine of the store needs
    # ``asyncio.current_task()`` (no driver's ``asyncio.timeout``), so the HTTP layer may start
    # a request outside a task and give it one only if it waits (Python 3.11; 3.12+ has eager
    # tasks for that).
    answers_in_process: bool

    async def insert_binding(self, binding: Binding, now: int,
                             claim: SignatureClaim | None = None) -> None:
        """``BindingIndex.insert_binding``, and with ``claim`` (the request's replay guard) the
        signature claimed with the insert: in its transaction on SQLite, just before it
        elsewhere (a round trip of its own either way). A lost claim raises ``Replayed`` and
        inserts nothing; ``claim.taken`` tells whether it was committed (a conflict after it,
        or a rolled-back insert with it)."""

    def find_by_party_now(self, x: str, number: str, now: int) -> Binding | None:
        """``find_by_party`` without waiting; only where ``answers_in_process`` (elsewhere it
        raises ``StoreError``)."""

    def get_number_now(self, x: str) -> VirtualNumber | None:
        """``get_number`` without waiting; only where ``answers_in_process`` (elsewhere it
        raises ``StoreError``)."""

    # --- the pool of virtual numbers ------------------------------------------------------
    async def move_numbers(self, xs: Sequence[str], account_id: int, force: bool,
                           now: int) -> list[str]:
        """Give numbers to another account. A number with active bindings is kept (and
        returned) unless ``force``, which ends them: a binding never changes account."""

    async def free_numbers(
        self, account_id: int, country_code: int, parties: Sequence[str], now: int, limit: int
    ) -> list[Candidate]:
        """Up to ``limit`` enabled numbers of the account in that country where no party is
        bound, least loaded first."""

    async def pool_stats(
        self, account_id: int, country_code: int, a: str, b: str, now: int
    ) -> PoolStats: ...

    async def pool_usage(self, now: int) -> list[PoolUsage]:
        """Per account and country: numbers, active bindings, the fullest X, free numbers and
        the busiest party's bindings. Exact (expired bindings never count); O(bindings)."""

    # --- bindings -------------------------------------------------------------------------
    async def find_by_customer_bind_id(
        self, account_id: int, customer_bind_id: str, now: int
    ) -> Binding | None: ...

    async def list_bindings(
        self, account_id: int, limit: int, offset: int, now: int
    ) -> tuple[list[Binding], int]: ...

    async def bindings_page(self, account_id: int, x: str, after_bind_id: str, limit: int,
                            now: int) -> list[Binding]:
        """Up to ``limit`` active bindings of the account (only on X ``x`` unless it is ""),
        in creation order, after the binding ``after_bind_id`` ("" from the start)."""

    async def find_bindings_by_number(self, number: str, now: int,
                                      limit: int) -> list[Binding]:
        """Active bindings where ``number`` is X or a party, across accounts (operators'
        search). Not on the hot path: may scan."""
