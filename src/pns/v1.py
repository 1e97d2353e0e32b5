"""NXCloud's v1 API: ``POST /v1/pns/bind/{mode}``, one path and body per binding mode.

Same headers, signature, replay guard and envelope as the old endpoint (``api.py``); the
``action`` header must name the path's mode. The fields are read here (``wire.py`` has their
structs) and handed to the core's bind of the mode with ``api_version`` 1, so the binding
remembers it was made here and its call records take NXCloud's newer shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .api import Action, Api, lifecycle_fields
from .core import MAX_EXPIRE_SECOND, V1_EXTENSION_LENGTH
from .errors import Code, PnsError
from .model import FLAG_RECORD, Account, Binding, Role
from .numbers import region_country_code
from .wire import (
    V1BindAXBBody,
    V1BindAXBody,
    V1BindAXEBody,
    V1BindAXEYBBody,
    V1BindAXYBBody,
    V1BindNXEYBBody,
    V1BindXYBBody,
    V1Common,
    int_field,
)

# NXCloud's default lifetime of a v1 binding when bindExpireSecond is absent.
DEFAULT_BIND_EXPIRE_SECOND = 7200
MAX_EXT = 1024
MAX_CUSTOMER_USER_ID = 64
MAX_CALLEE_DTMF = 32
MAX_DTMF_DELAY = 300
_DTMF_DIGITS = frozenset("0123456789*#")
# XYB's expiry strategies: 0 keep, 1 reset, 2 extend (modes.md).
_STRATEGIES = range(3)


class V1Fields(NamedTuple):
    """The common v1 fields, checked, in the core's terms."""

    flag: int
    expire_second: int
    ext: str
    country_code: int | None


def v1_fields(req: V1Common) -> V1Fields:
    """``recording``/``recoding`` → the record flag (both given must agree),
    ``bindExpireSecond`` (default 7200, 0 never), ``ext`` (≤ 1,024) and ``iso2X`` (→ its
    calling code)."""
    if req.recording is not None and req.recoding is not None \
            and req.recording != req.recoding:
        raise PnsError(Code.BAD_PARAMETER, "recording and recoding disagree")
    record = req.recording if req.recording is not None else bool(req.recoding)
    expire_second = int_field(req.bindExpireSecond, "bindExpireSecond", required=False,
                              default=DEFAULT_BIND_EXPIRE_SECOND)
    if not 0 <= expire_second <= MAX_EXPIRE_SECOND:
        raise PnsError(Code.BAD_PARAMETER,
                       "bindExpireSecond must be an integer from 0 to 100 years")
    if len(req.ext) > MAX_EXT:
        raise PnsError(Code.BAD_PARAMETER, f"ext is longer than {MAX_EXT} characters")
    country_code = region_country_code(req.iso2X) if req.iso2X.strip() else None
    return V1Fields(FLAG_RECORD if record else 0, expire_second, req.ext, country_code)


def _core_arguments(req: V1Common, now: int) -> dict[str, Any]:
    """The keyword arguments every mode's bind takes from the common fields: ``iso2X`` goes
    to AXB and AXE as its calling code (``country_code``), to the other modes as the region
    (``iso2``), both checked here."""
    fields = v1_fields(req)
    return {
        "expire_second": fields.expire_second, "customer_bind_id": req.customerBindId,
        "flag": fields.flag, "business_id": req.businessId, "phone_x": req.didX, "now": now,
        "api_version": 1, "ext": fields.ext, "country_code": fields.country_code,
        "life": lifecycle_fields(req),
    }


def _mode_arguments(req: V1Common, now: int) -> dict[str, Any]:
    arguments = _core_arguments(req, now)
    del arguments["country_code"]
    arguments["iso2"] = req.iso2X.strip()
    return arguments


def _answer(binding: Binding, with_y: bool = False, with_extension: bool = False
            ) -> dict[str, Any]:
    """Success data: bindId, didX, didY (modes with Y, once allocated), extensionX (modes
    with E), expireAt."""
    data: dict[str, Any] = {"bindId": binding.bind_id, "didX": binding.x}
    if with_y and binding.y:
        data["didY"] = binding.y
    if with_extension:
        data["extensionX"] = binding.extension
    data["expireAt"] = binding.expire_at
    return data


def _callee_dtmf(req: V1BindAXBBody) -> tuple[str, int]:
    """``extensionB`` (digits, * and #) and ``dtmfDelayTimeB`` (seconds, required with it)."""
    digits = req.extensionB.strip()
    if not digits:
        return "", 0
    if len(digits) > MAX_CALLEE_DTMF or not set(digits) <= _DTMF_DIGITS:
        raise PnsError(Code.BAD_PARAMETER,
                       f"extensionB must be 1 to {MAX_CALLEE_DTMF} of 0-9, * and #")
    delay = int_field(req.dtmfDelayTimeB, "dtmfDelayTimeB", required=True)
    if not 0 <= delay <= MAX_DTMF_DELAY:
        raise PnsError(Code.BAD_PARAMETER,
                       f"dtmfDelayTimeB must be an integer from 0 to {MAX_DTMF_DELAY}")
    return digits, delay


def _strategy(value: int | str | None, name: str) -> int:
    strategy = int_field(value, name, required=False)
    if strategy not in _STRATEGIES:
        raise PnsError(Code.BAD_PARAMETER, f"{name} must be 0 (keep), 1 (reset) or 2 (extend)")
    return strategy


# --- the modes ------------------------------------------------------------------------------
async def _bind_axb(api: Api, account: Account, req: V1BindAXBBody, now: int) -> dict[str, Any]:
    dtmf, delay = _callee_dtmf(req)
    binding = await api.service.bind_axb(
        account, req.phoneA, req.phoneB, **_core_arguments(req, now), callee_dtmf=dtmf,
        callee_dtmf_delay=delay,
    )
    return _answer(binding)


async def _bind_axe(api: Api, account: Account, req: V1BindAXEBody, now: int) -> dict[str, Any]:
    arguments = _core_arguments(req, now)
    binding = await api.service.bind_extension(
        account, req.phoneA, arguments.pop("phone_x"), **arguments,
        extension_length=V1_EXTENSION_LENGTH,
    )
    return _answer(binding, with_extension=True)


async def _bind_ax(api: Api, account: Account, req: V1BindAXBody, now: int) -> dict[str, Any]:
    arguments = _mode_arguments(req, now)
    binding = await api.service.bind_ax(account, phone_a=req.phoneA, **arguments)
    return _answer(binding)


async def _bind_axyb(api: Api, account: Account, req: V1BindAXYBBody,
                     now: int) -> dict[str, Any]:
    arguments = _mode_arguments(req, now)
    binding = await api.service.bind_axyb(
        account, phone_a=req.phoneA, phone_b=req.phoneB, phone_y=req.didY, **arguments,
    )
    return _answer(binding, with_y=True)


async def _bind_axeyb(api: Api, account: Account, req: V1BindAXEYBBody,
                      now: int) -> dict[str, Any]:
    arguments = _mode_arguments(req, now)
    binding = await api.service.bind_axeyb(
        account, phone_a=req.phoneA, phone_b=req.phoneB, phone_y=req.didY,
        extension_length=V1_EXTENSION_LENGTH, **arguments,
    )
    return _answer(binding, with_y=True, with_extension=True)


async def _bind_xyb(api: Api, account: Account, req: V1BindXYBBody, now: int) -> dict[str, Any]:
    if len(req.customerUserId) > MAX_CUSTOMER_USER_ID:
        raise PnsError(Code.BAD_PARAMETER,
                       f"customerUserId is longer than {MAX_CUSTOMER_USER_ID} characters")
    call_in_expire_second = int_field(req.callInExpireSecond, "callInExpireSecond",
                                      required=False)
    if not 0 <= call_in_expire_second <= MAX_EXPIRE_SECOND:
        raise PnsError(Code.BAD_PARAMETER,
                       "callInExpireSecond must be an integer from 0 to 100 years")
    if req.delayedGetY and req.didY.strip():
        raise PnsError(Code.BAD_PARAMETER, "didY and delayedGetY exclude each other")
    bind_strategy = _strategy(req.bindExpireStrategy, "bindExpireStrategy")
    call_in_strategy = _strategy(req.callInExpireStrategy, "callInExpireStrategy")
    arguments = _mode_arguments(req, now)
    arguments.update(
        phone_b=req.phoneB, phone_y=req.didY, customer_user_id=req.customerUserId,
        delayed_y=req.delayedGetY, call_in_expire_second=call_in_expire_second,
        # modes.md: callInExpireStrategy, else bindExpireStrategy.
        expire_strategy=call_in_strategy if req.callInExpireStrategy is not None
        else bind_strategy,
    )
    binding = await api.service.bind_xyb(account, **arguments)
    return _answer(binding, with_y=True)


async def _bind_nxeyb(api: Api, account: Account, req: V1BindNXEYBBody,
                      now: int) -> dict[str, Any]:
    arguments = _mode_arguments(req, now)
    binding = await api.service.bind_nxeyb(account, phone_b=req.phoneB,
                                              extension_length=V1_EXTENSION_LENGTH, **arguments)
    return _answer(binding, with_extension=True)


_CUSTOMER = frozenset({Role.CUSTOMER})

# The v1 paths and the action header each must carry.
V1_PATHS: dict[str, str] = {
    "/v1/pns/bind/axb": "bindAXB",
    "/v1/pns/bind/axe": "bindAXE",
    "/v1/pns/bind/axeyb": "bindAXEYB",
    "/v1/pns/bind/xyb": "bindXYB",
    "/v1/pns/bind/ax": "bindAX",
    "/v1/pns/bind/axyb": "bindAXYB",
    "/v1/pns/bind/nxeyb": "bindNXEYB",
}
V1_ACTIONS: dict[str, Action] = {
    "bindAXB": Action(V1BindAXBBody, _bind_axb, _CUSTOMER, True),
    "bindAXE": Action(V1BindAXEBody, _bind_axe, _CUSTOMER, True),
    "bindAXEYB": Action(V1BindAXEYBBody, _bind_axeyb, _CUSTOMER, True),
    "bindXYB": Action(V1BindXYBBody, _bind_xyb, _CUSTOMER, True),
    "bindAX": Action(V1BindAXBody, _bind_ax, _CUSTOMER, True),
    "bindAXYB": Action(V1BindAXYBBody, _bind_axyb, _CUSTOMER, True),
    "bindNXEYB": Action(V1BindNXEYBBody, _bind_nxeyb, _CUSTOMER, True),
}
