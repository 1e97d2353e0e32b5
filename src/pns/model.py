"""The records the core works with. Plain typed structs: no HTTP, no SQL."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import msgspec

# bindType values (modes.md): NXCloud documents 0 and 4; the rest are ours.
BIND_TYPE_AXB = 0
BIND_TYPE_AX = 1
BIND_TYPE_AXG = 2
BIND_TYPE_AXYB = 3
BIND_TYPE_EXTENSION = 4
BIND_TYPE_AXEYB = 5
BIND_TYPE_XYB = 6
BIND_TYPE_NXEYB = 7
# The party key that holds a number for one binding alone (AX, and XYB until its first call):
# no real number is "*", so it never collides with a party, and an insert on that number
# checks it (store guarantee: X exclusivity).
EXCLUSIVE = "*"
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
    # lifecycle.md: seconds a number is not given again to a party of an ended binding.
    cool_off_seconds: int = 0

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
    cool_off_seconds: int | None = None


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


_Y_DISPLAY = frozenset({BIND_TYPE_AXYB, BIND_TYPE_AXEYB, BIND_TYPE_XYB, BIND_TYPE_NXEYB})


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
    # Everything below is kept by every store in one ``attrs`` column (``binding_attrs``):
    # a field added here, with its default, needs no store change. None of them is a unique
    # key; a store indexes only the fields above.
    # -- the binding modes of modes.md (old API AXG, the v1 API) --
    y: str = ""
    group_id: str = ""
    api_version: int = 0
    ext: str = ""
    customer_user_id: str = ""
    callee_dtmf: str = ""
    callee_dtmf_delay: int = 0
    parent_bind_id: str = ""
    call_in_expire_second: int = 0
    expire_strategy: int = 0
    captured_at: int = 0
    # -- a binding's life (lifecycle.md) --
    call_direction: int = 0
    max_duration: int = 0
    renew_on_call: int = 0
    audio_when_call_fail: str = ""
    # -- AXG: the group's members when the binding was made or its group last changed
    # (comma-separated); each is a party on X (I1), so ``queryAXB`` finds them by key --
    members: str = ""

    def active_at(self, now: int) -> bool:
        return self.expire_at == 0 or self.expire_at > now

    def parties(self) -> tuple[str, ...]:
        return (self.a, self.b) if self.b else (self.a,)

    def exclusive(self) -> bool:
        """Does this binding hold its X alone (no other binding on X while it is active)?"""
        return self.bind_type == BIND_TYPE_AX or (
            self.bind_type == BIND_TYPE_XYB and not self.captured_at)

    def party_keys(self) -> tuple[tuple[str, str], ...]:
        """I1's keys this binding holds: (number, party) pairs. A number carries the parties
        that are looked up on it (modes.md): X carries A and B in AXB; Y carries both parties
        in the Y modes; X of an AX (and of an XYB until its call) carries ``EXCLUSIVE``."""
        x, a, b, y = self.x, self.a, self.b, self.y
        kind = self.bind_type
        on_y = tuple((y, p) for p in (a, b) if p) if y else ()
        if kind == BIND_TYPE_AX:
            return ((x, a), (x, EXCLUSIVE))
        if kind == BIND_TYPE_AXG:
            return ((x, a), *((x, m) for m in self.members.split(",") if m))
        if kind == BIND_TYPE_AXYB:
            return tuple((x, p) for p in (a, b) if p) + on_y
        if kind == BIND_TYPE_XYB:
            return on_y if self.captured_at else ((x, EXCLUSIVE), *on_y)
        if kind == BIND_TYPE_AXEYB or (kind == BIND_TYPE_NXEYB and not self.parent_bind_id):
            return on_y
        return tuple((x, p) for p in (a, b) if p)

    def display(self, on: str, caller: str) -> str:
        """The number the callee is shown when ``caller`` reached this binding on ``on``
        (modes.md: the number it can dial to reach the caller again): X, or Y in the modes
        with a Y — except B's calls in AXYB, where A reaches B again on X."""
        if self.parent_bind_id:  # an NXEYB child: its X is the caller's Yᵢ
            return self.x
        if self.bind_type == BIND_TYPE_AXYB and caller == self.b:
            return self.x
        return self.y if self.y and self.bind_type in _Y_DISPLAY else on


# The fields every store keeps in columns of their own, in this order; the rest go in ``attrs``.
BINDING_COLUMN_FIELDS = 13
_ATTR_FIELDS = Binding.__struct_fields__[BINDING_COLUMN_FIELDS:]
_ATTR_DEFAULTS = Binding.__struct_defaults__
_encode_attrs = msgspec.json.Encoder().encode
_decode_attrs = msgspec.json.Decoder(dict[str, str | int]).decode


def binding_attrs(binding: Binding) -> str:
    """The binding's fields beyond the columns, as compact JSON ("" when all are defaults, as
    for every plain AXB binding: the hot path then decodes nothing)."""
    changed = {
        name: value
        for name, default in zip(_ATTR_FIELDS, _ATTR_DEFAULTS, strict=True)
        if (value := getattr(binding, name)) != default
    }
    return _encode_attrs(changed).decode() if changed else ""


def binding_from_row(row: Sequence[Any]) -> Binding:
    """A binding from its 13 column values followed by its ``attrs`` text."""
    # Written before ``attrs`` existed (a Redis index of 13-field arrays): no attrs.
    attrs = row[BINDING_COLUMN_FIELDS] if len(row) > BINDING_COLUMN_FIELDS else ""
    if not attrs:
        return Binding(*row[:BINDING_COLUMN_FIELDS])
    known = {k: v for k, v in _decode_attrs(attrs).items() if k in _ATTR_FIELDS}
    return Binding(*row[:BINDING_COLUMN_FIELDS], **known)  # type: ignore[arg-type]


def binding_row(binding: Binding) -> tuple[Any, ...]:
    """The 13 column values and ``attrs``, in ``binding_from_row``'s order."""
    return (binding.bind_id, binding.account_id, binding.x, binding.a, binding.b,
            binding.extension, binding.bind_type, binding.customer_bind_id, binding.business_id,
            binding.flag, binding.expire_second, binding.expire_at, binding.created_at,
            binding_attrs(binding))


class Candidate(msgspec.Struct, frozen=True):
    """A number of the pool on which neither party is bound, with its load."""

    x: str
    active_bindings: int


class Group(msgspec.Struct, frozen=True):
    """An AXG group (modes.md): up to 200 numbers of one country code, owned by one account."""

    group_id: str
    account_id: int
    name: str
    remark: str
    country_code: int
    members: tuple[str, ...]
    created_at: int


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
    # Console sessions carry the generation they were made in; logging out bumps it, so a
    # saved cookie stops working on every process (schema version 10).
    session_generation: int = 0


class AuditEntry(msgspec.Struct, frozen=True):
    """What an operator did through the admin API or console (writes and reveals)."""

    at: int
    operator: str
    action: str
    target: str
    id: int = 0
