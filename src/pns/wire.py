"""The JSON shapes of the API: request bodies as typed structs, answers as plain dicts.

Unknown fields are ignored (older NXCloud clients send extra prompt fields); a field of the
wrong type is refused with 1002. ``flag``, ``expireSecond``, ``limit`` and ``offset`` also
accept a string of digits, because NXCloud's older revision typed them as strings.

Input rules, one code per kind of fault: a missing or empty party number (``phoneA``,
``phoneB``) is 10001, NXCloud's "binding number empty"; any other missing required field is
1002 naming it. An empty body is ``{}`` for an action whose fields are all optional
(``getAXBList``, ``getCallRecords``), and 1002 for the others, which need a JSON object.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from .errors import Code, PnsError
from .model import BIND_TYPE_XYB, Binding, Group

IntField = int | str | None

# Every store keeps integers in 64 bits: a larger one is refused here, not by the store (10009).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class BindAXBBody(msgspec.Struct):
    phoneA: str = ""
    phoneB: str = ""
    expireSecond: IntField = None
    customerBindId: str = ""
    flag: IntField = 0
    businessId: str = ""
    phoneX: str = ""
    # lifecycle.md
    callDirection: IntField = None
    maxDuration: IntField = None
    renewOnCall: IntField = None
    audioWhenCallFail: str | None = None


class BindExtensionBody(msgspec.Struct):
    phoneA: str = ""
    phoneX: str = ""
    expireSecond: IntField = None
    phoneB: str = ""
    extension: str = ""
    Extension: str = ""
    customerBindId: str = ""
    flag: IntField = 0
    businessId: str = ""
    # lifecycle.md
    callDirection: IntField = None
    maxDuration: IntField = None
    renewOnCall: IntField = None
    audioWhenCallFail: str | None = None


class UnbindBody(msgspec.Struct):
    bindId: str = ""
    customerBindId: str = ""


class GetBindingBody(msgspec.Struct):
    bindId: str = ""
    customerBindId: str = ""


class UpdateAXBBody(msgspec.Struct):
    """``updateAXB``: a field left out keeps its value."""

    bindId: str = ""
    customerBindId: str = ""
    phoneB: str | None = None
    expireSecond: IntField = None
    flag: IntField = None
    businessId: str | None = None
    callDirection: IntField = None
    maxDuration: IntField = None
    renewOnCall: IntField = None
    audioWhenCallFail: str | None = None


class BlacklistBody(msgspec.Struct):
    phones: str = ""


class ListBody(msgspec.Struct):
    limit: IntField = None
    offset: IntField = None


class QueryBody(msgspec.Struct):
    caller: str = ""
    did: str = ""
    extension: str | None = None


# --- the v1 API: one path and body per mode (nxcloud-pns-api.md §5, modes.md "v1 API") ---------
class V1Common(msgspec.Struct):
    """The fields every v1 bind takes. ``recoding`` is NXCloud's own misspelling of
    ``recording`` on some pages: both are read."""

    businessId: str = ""
    customerBindId: str = ""
    recording: bool | None = None
    recoding: bool | None = None
    bindExpireSecond: IntField = None
    ext: str = ""
    didX: str = ""
    iso2X: str = ""
    # lifecycle.md (its fields apply to the modes too)
    callDirection: IntField = None
    maxDuration: IntField = None
    renewOnCall: IntField = None
    audioWhenCallFail: str | None = None


class V1BindAXBBody(V1Common):
    phoneA: str = ""
    phoneB: str = ""
    extensionB: str = ""
    dtmfDelayTimeB: IntField = None


class V1BindAXEBody(V1Common):
    phoneA: str = ""


class V1BindAXBody(V1Common):
    phoneA: str = ""


class V1BindAXYBBody(V1Common):
    phoneA: str = ""
    phoneB: str = ""
    didY: str = ""


class V1BindAXEYBBody(V1Common):
    # Without A: the first caller of X + E becomes A (modes.md).
    phoneA: str = ""
    phoneB: str = ""
    didY: str = ""


class V1BindXYBBody(V1Common):
    phoneB: str = ""
    didY: str = ""
    customerUserId: str = ""
    delayedGetY: bool = False
    bindExpireStrategy: IntField = None
    callInExpireSecond: IntField = None
    callInExpireStrategy: IntField = None


class V1BindNXEYBBody(V1Common):
    phoneB: str = ""
class CreateGroupBody(msgspec.Struct):
    phones: str = ""
    groupName: str = ""
    remark: str = ""


class UpdateGroupBody(msgspec.Struct):
    groupId: str = ""
    operateType: IntField = None
    phones: str = ""


class GroupIdBody(msgspec.Struct):
    groupId: str = ""


class BindAXGBody(msgspec.Struct):
    phoneA: str = ""
    groupId: str = ""
    expireSecond: IntField = None
    phoneX: str = ""
    phoneB: str = ""
    customerBindId: str = ""
    flag: IntField = 0
    businessId: str = ""
    # lifecycle.md
    callDirection: IntField = None
    maxDuration: IntField = None
    renewOnCall: IntField = None
    audioWhenCallFail: str | None = None


# The fields each body must carry (checked by the actions; listed here once for the decoder's
# empty-body rule and for /openapi.json), keyed by struct name. ``unbindAXB`` needs one of two.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "BindAXBBody": ("phoneA", "phoneB", "expireSecond"),
    "BindExtensionBody": ("phoneA", "phoneX", "expireSecond"),
    "QueryBody": ("caller", "did"),
    "CreateGroupBody": ("phones",),
    "UpdateGroupBody": ("groupId", "operateType", "phones"),
    "GroupIdBody": ("groupId",),
    "BindAXGBody": ("phoneA", "groupId", "expireSecond"),
    "CallReport": ("callId",),
    "V1BindAXBBody": ("businessId", "phoneA", "phoneB"),
    "V1BindAXEBody": ("businessId", "phoneA"),
    "V1BindAXBody": ("businessId", "phoneA"),
    "V1BindAXYBBody": ("businessId", "phoneA", "phoneB"),
    "V1BindAXEYBBody": ("businessId", "phoneB"),
    "V1BindXYBBody": ("businessId", "phoneB"),
    "V1BindNXEYBBody": ("businessId", "phoneB"),
    "RedeliverBody": ("callId",),
    "BlacklistBody": ("phones",),
}
ONE_OF_FIELDS: dict[str, tuple[str, ...]] = {
    "UnbindBody": ("bindId", "customerBindId"),
    "GetBindingBody": ("bindId", "customerBindId"),
    "UpdateAXBBody": ("bindId", "customerBindId"),
}


def accepts_empty_body(shape: type[msgspec.Struct]) -> bool:
    """True when every field of the body is optional, so no body at all means ``{}``."""
    name = shape.__name__
    return not REQUIRED_FIELDS.get(name) and not ONE_OF_FIELDS.get(name)


def decode(body: bytes, shape: type[msgspec.Struct]) -> Any:
    """Decode a request body into its struct, or refuse with 1002 and what was wrong."""
    if not body.strip():
        if accepts_empty_body(shape):
            return shape()
        needed = REQUIRED_FIELDS.get(shape.__name__) or ONE_OF_FIELDS[shape.__name__]
        raise PnsError(Code.BAD_PARAMETER,
                       f"the body must be a JSON object with {', '.join(needed)}")
    if b"\\u0000" in body:
        # Numbers and ids never hold NUL, and PostgreSQL text cannot: refuse it everywhere.
        raise PnsError(Code.BAD_PARAMETER, "NUL characters are not allowed")
    try:
        # JSON is UTF-8; msgspec checks only the strings it keeps, not unknown fields it skips.
        body.decode()
        decoded = _decoder(shape)(body)
    except msgspec.ValidationError as exc:
        raise PnsError(Code.BAD_PARAMETER, f"invalid field: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PnsError(Code.BAD_PARAMETER, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise PnsError(Code.BAD_PARAMETER, "malformed JSON: nested too deeply") from None
    for name in _int_fields(shape):
        if not INT64_MIN <= getattr(decoded, name) <= INT64_MAX:
            raise PnsError(Code.BAD_PARAMETER, f"invalid field: {name} is out of range")
    _check_required(decoded)
    return decoded


# A missing party number keeps NXCloud's own code.
_PARTY_FIELDS = frozenset({"phoneA", "phoneB"})


def _check_required(decoded: msgspec.Struct) -> None:
    """Every missing required field gets its one documented code, whatever the action."""
    name = type(decoded).__name__
    for field in REQUIRED_FIELDS.get(name, ()):
        value = getattr(decoded, field)
        if value is None or (isinstance(value, str) and not value.strip()):
            if field in _PARTY_FIELDS:
                raise PnsError(Code.NUMBER_EMPTY, f"{field} is empty")
            raise PnsError(Code.BAD_PARAMETER, f"{field} is required")
    one_of = ONE_OF_FIELDS.get(name)
    if one_of and not any(str(getattr(decoded, field)).strip() for field in one_of):
        raise PnsError(Code.BAD_PARAMETER, f"{' or '.join(one_of)} is required")


@cache
def _decoder(shape: type[msgspec.Struct]) -> Any:
    """One decoder per body type: ``msgspec.json.decode(body, type=shape)`` looks the type up
    again on every call."""
    return msgspec.json.Decoder(shape).decode


@cache
def _int_fields(shape: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields typed plain ``int`` (``IntField`` ones are bounded by ``int_field``)."""
    return tuple(f.name for f in msgspec.structs.fields(shape) if f.type is int)


def int_field(value: IntField, name: str, required: bool, code: Code = Code.BAD_PARAMETER,
              default: int = 0) -> int:
    """An integer field that may arrive as an int or a string of digits."""
    if value is None:
        if required:
            raise PnsError(code, f"{name} is required")
        return default
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 18:
            raise PnsError(code, f"{name} must be an integer")
        return int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise PnsError(code, f"{name} is out of range")
    return value


def binding_item(binding: Binding) -> dict[str, Any]:
    """A getAXBList item: NXCloud's list fields plus bindType, and the fields of the other
    modes where they apply (modes.md)."""
    item: dict[str, Any] = {
        "customerId": str(binding.account_id),
        "businessId": binding.business_id,
        "bindId": binding.bind_id,
        "customerBindId": binding.customer_bind_id,
        "phoneA": binding.a,
        "phoneB": binding.b,
        "did": binding.x,
        "flag": binding.flag,
        "expireAt": binding.expire_at,
        "bindType": binding.bind_type,
    }
    if binding.extension:
        item["extension"] = binding.extension
    if binding.y:
        item["didY"] = binding.y
    if binding.group_id:
        item["groupId"] = binding.group_id
    if binding.customer_user_id:
        item["customerUserId"] = binding.customer_user_id
    if binding.parent_bind_id:
        item["parentBindId"] = binding.parent_bind_id
    return item


def group_item(group: Group) -> dict[str, Any]:
    """A listGroup item (modes.md)."""
    return {"customerId": str(group.account_id), "groupName": group.name,
            "groupId": group.group_id, "phones": ",".join(group.members),
            "remark": group.remark}
def optional_int(value: IntField, name: str) -> int | None:
    """An integer field whose absence means "not given" (None), not 0."""
    return None if value is None else int_field(value, name, required=True)


def binding_detail(binding: Binding) -> dict[str, Any]:
    """A ``getAXB`` / ``updateAXB`` answer: the list item plus the fields of lifecycle.md, and
    what the bind of its mode was given beyond the list's fields (so one read shows the whole
    binding): v1's ``ext``, AXB's ``extensionB``, XYB's lifetime after its call-in."""
    detail = {
        **binding_item(binding),
        "expireSecond": binding.expire_second,
        "callDirection": binding.call_direction,
        "maxDuration": binding.max_duration,
        "renewOnCall": binding.renew_on_call,
        "audioWhenCallFail": binding.audio_when_call_fail,
    }
    if binding.ext:
        detail["ext"] = binding.ext
    if binding.callee_dtmf:
        detail["extensionB"] = binding.callee_dtmf
        detail["dtmfDelayTimeB"] = binding.callee_dtmf_delay
    if binding.bind_type == BIND_TYPE_XYB:
        detail["callInExpireSecond"] = binding.call_in_expire_second
        detail["expireStrategy"] = binding.expire_strategy
    return detail


class CallRecordsBody(msgspec.Struct):
    startTime: IntField = None
    endTime: IntField = None
    bindId: str = ""
    limit: IntField = None
    offset: IntField = None


class RedeliverBody(msgspec.Struct):
    callId: str = ""
