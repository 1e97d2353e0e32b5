"""The records the core works with. Plain typed structs: no HTTP, no SQL."""

from __future__ import annotations

from enum import StrEnum

import msgspec

BIND_TYPE_AXB = 0
BIND_TYPE_EXTENSION = 4
FLAG_RECORD = 1


class Role(StrEnum):
    CUSTOMER = "customer"
    SWITCH = "switch"


class Account(msgspec.Struct, frozen=True):
    id: int
    name: str
    access_key: str
    access_secret: str
    role: Role
    enabled: bool = True
    audio_when_call_fail: str = ""
    audio_when_dtmf_need: str = ""
    audio_when_dtmf_err: str = ""
    callback_url: str = ""
    previous_secret: str = ""
    previous_secret_until: int = 0
    created_at: int = 0

    def secrets_at(self, now: float) -> tuple[str, ...]:
        """Secrets a signature may use now: the current one, and the previous during its grace."""
        if self.previous_secret and now < self.previous_secret_until:
            return (self.access_secret, self.previous_secret)
        return (self.access_secret,)


class AccountChanges(msgspec.Struct, frozen=True):
    """Fields to change on an account; None leaves a field as it is."""

    enabled: bool | None = None
    audio_when_call_fail: str | None = None
    audio_when_dtmf_need: str | None = None
    audio_when_dtmf_err: str | None = None
    callback_url: str | None = None
    access_secret: str | None = None
    previous_secret: str | None = None
    previous_secret_until: int | None = None


class VirtualNumber(msgspec.Struct, frozen=True):
    x: str
    account_id: int
    country_code: int
    enabled: bool = True


class NumberUsage(msgspec.Struct, frozen=True):
    x: str
    account_id: int
    country_code: int
    enabled: bool
    active_bindings: int


class Binding(msgspec.Struct, frozen=True):
    bind_id: str
    account_id: int
    x: str
    a: str
    b: str
    extension: str
    bind_type: int
    customer_bind_id: str
    business_id: str
    flag: int
    expire_second: int
    expire_at: int
    created_at: int

    def active_at(self, now: int) -> bool:
        return self.expire_at == 0 or self.expire_at > now

    def parties(self) -> tuple[str, ...]:
        return (self.a, self.b) if self.b else (self.a,)


class Candidate(msgspec.Struct, frozen=True):
    """A number of the pool on which neither party is bound, with its load."""

    x: str
    active_bindings: int


class PoolStats(msgspec.Struct, frozen=True):
    """Why an allocation failed: the pool in that country and how much of it A and B hold."""

    numbers: int
    held_by_a: int
    held_by_b: int


class CallRef(msgspec.Struct, frozen=True):
    """What an answered query remembers so the call's record can be joined later."""

    call_id: str
    bind_id: str
    account_id: int
    x: str
    caller: str
    callee: str
    customer_bind_id: str
    business_id: str
    bind_type: int
    queried_at: int
    # The account that asked (the switch): only it may report this callId.
    queried_by: int = 0


class CallRecord(msgspec.Struct, frozen=True):
    """A finished call, joined with its query and binding: NXCloud's CDR fields."""

    call_id: str
    account_id: int
    bind_id: str
    customer_bind_id: str
    business_id: str
    did: str
    caller: str
    callee: str
    call_status: int
    call_status_msg: str
    duration: int
    start_at: int
    ring_at: int
    answer_at: int
    hangup_at: int
    hangup_cause: str
    hangup_code: int
    hangup: int
    record_file: str
    reported_at: int
    id: int = 0


class EventState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class OutboxEvent(msgspec.Struct, frozen=True):
    """A callback waiting in the durable outbox: the body is sent byte for byte as stored."""

    event_id: str
    account_id: int
    kind: str
    body: bytes
    created_at: int
    next_attempt_at: int
    attempts: int = 0
    state: EventState = EventState.PENDING
    last_error: str = ""
    call_id: str = ""


class PoolUsage(msgspec.Struct, frozen=True):
    """How full one account's pool is in one country (``pns stats``, ``/metrics``).

    A fresh pair can be bound on any enabled number where neither party is bound; the busiest
    party is the one closest to exhausting the pool (10010 once it is bound on every number).
    """

    account_id: int
    country_code: int
    numbers: int
    enabled: int
    active_bindings: int
    fullest_x: str
    fullest_x_bindings: int
    free_numbers: int
    busiest_party_bindings: int

    @property
    def headroom_busiest(self) -> int:
        """More bindings the busiest party can get in this pool."""
        return max(self.enabled - self.busiest_party_bindings, 0)


class OperatorRole(StrEnum):
    """Who works the admin API and console: an admin changes things, a viewer only reads."""

    ADMIN = "admin"
    VIEWER = "viewer"


class Operator(msgspec.Struct, frozen=True):
    """A person (or tool) on the admin API. Only the SHA-256 of the token is kept."""

    name: str
    role: OperatorRole
    token_hash: str
    disabled: bool = False
    created_at: int = 0


class AuditEntry(msgspec.Struct, frozen=True):
    """What an operator did through the admin API or console (writes and reveals)."""

    at: int
    operator: str
    action: str
    target: str
    id: int = 0
