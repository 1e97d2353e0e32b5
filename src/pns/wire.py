"""The JSON shapes of the API: request bodies as typed structs, answers as plain dicts.

Unknown fields are ignored (older NXCloud clients send extra prompt fields); a field of the
wrong type is refused with 1002. ``flag``, ``expireSecond``, ``limit`` and ``offset`` also
accept a string of digits, because NXCloud's older revision typed them as strings.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from .errors import Code, PnsError
from .model import Binding

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


class UnbindBody(msgspec.Struct):
    bindId: str = ""
    customerBindId: str = ""


class ListBody(msgspec.Struct):
    limit: IntField = None
    offset: IntField = None


class QueryBody(msgspec.Struct):
    caller: str = ""
    did: str = ""
    extension: str | None = None


def decode(body: bytes, shape: type[msgspec.Struct]) -> Any:
    """Decode a request body into its struct, or refuse with 1002 and what was wrong."""
    if not body.strip():
        raise PnsError(Code.BAD_PARAMETER, "the body must be a JSON object")
    if b"\\u0000" in body:
        # Numbers and ids never hold NUL, and PostgreSQL text cannot: refuse it everywhere.
        raise PnsError(Code.BAD_PARAMETER, "NUL characters are not allowed")
    try:
        # JSON is UTF-8; msgspec checks only the strings it keeps, not unknown fields it skips.
        body.decode()
        decoded = msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as exc:
        raise PnsError(Code.BAD_PARAMETER, f"invalid field: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PnsError(Code.BAD_PARAMETER, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise PnsError(Code.BAD_PARAMETER, "malformed JSON: nested too deeply") from None
    for name in _int_fields(shape):
        if not INT64_MIN <= getattr(decoded, name) <= INT64_MAX:
            raise PnsError(Code.BAD_PARAMETER, f"invalid field: {name} is out of range")
    return decoded


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
    """A getAXBList item: NXCloud's list fields plus bindType."""
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
    return item


class CallRecordsBody(msgspec.Struct):
    startTime: IntField = None
    endTime: IntField = None
    bindId: str = ""
    limit: IntField = None
    offset: IntField = None


class RedeliverBody(msgspec.Struct):
    callId: str = ""
