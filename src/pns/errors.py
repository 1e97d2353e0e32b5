"""Result codes of the API, in one place, so every layer raises and answers the same numbers.

NXCloud's codes 0, 1001-1005 and 10001-10013 keep their documented meaning; 1006, 1007 and
10014-10024 are ours (see ``shared/spec/behaviour.md``, modes.md, lifecycle.md).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    OK = 0
    MISSING_HEADER = 1001
    BAD_PARAMETER = 1002
    BAD_SIGNATURE = 1003
    TS_EXPIRED = 1004
    NO_PERMISSION = 1005
    REPLAYED = 1006
    RATE_LIMITED = 1007
    NUMBER_EMPTY = 10001
    SAME_NUMBER = 10002
    USER_NOT_EXIST = 10003
    COUNTRY_MISMATCH = 10004
    NUMBER_FETCH_FAILED = 10005
    BIND_FAILED = 10006
    NO_COUNTRY_PREFIX = 10007
    NO_VIRTUAL_NUMBER = 10008
    INTERNAL = 10009
    NUMBERS_EXHAUSTED = 10010
    LIMIT_OUT_OF_RANGE = 10011
    OFFSET_OUT_OF_RANGE = 10012
    BINDING_NOT_EXIST = 10013
    CUSTOMER_BIND_ID_REUSED = 10014
    EXTENSION_TAKEN = 10015
    INVALID_EXTENSION = 10016
    PARTY_ALREADY_BOUND = 10017
    NO_FREE_EXTENSION = 10018
    GROUP_NOT_EXIST = 10019
    GROUP_INVALID = 10020
    GROUP_IN_USE = 10021
    NOT_GROUP_MEMBER = 10022
    DIRECTION_NOT_ALLOWED = 10023
    CALLER_BLOCKED = 10024


DEFAULT_MSG: dict[Code, str] = {
    Code.OK: "success",
    Code.MISSING_HEADER: "Missing common parameters",
    Code.BAD_PARAMETER: "Parameter error",
    Code.BAD_SIGNATURE: "Invalid signature",
    Code.TS_EXPIRED: "Timestamp has expired",
    Code.NO_PERMISSION: "Insufficient permissions",
    Code.REPLAYED: "replayed request",
    Code.RATE_LIMITED: "too many failed authentications; retry later",
    Code.NUMBER_EMPTY: "binding number empty",
    Code.SAME_NUMBER: "A and B are the same number",
    Code.USER_NOT_EXIST: "user does not exist",
    Code.COUNTRY_MISMATCH: "numbers do not share the virtual number's country code",
    Code.NUMBER_FETCH_FAILED: "failed to get a number",
    Code.BIND_FAILED: "exception in binding numbers",
    Code.NO_COUNTRY_PREFIX: "virtual number has no country prefix",
    Code.NO_VIRTUAL_NUMBER: "user has no virtual number",
    Code.INTERNAL: "failed to retrieve data",
    Code.NUMBERS_EXHAUSTED: "virtual numbers exhausted",
    Code.LIMIT_OUT_OF_RANGE: "limit out of range",
    Code.OFFSET_OUT_OF_RANGE: "offset out of range",
    Code.BINDING_NOT_EXIST: "binding not exist",
    Code.CUSTOMER_BIND_ID_REUSED: "customerBindId reused with other parameters",
    Code.EXTENSION_TAKEN: "extension taken on this number",
    Code.INVALID_EXTENSION: "invalid extension",
    Code.PARTY_ALREADY_BOUND: "a party is already bound on the requested number",
    Code.NO_FREE_EXTENSION: "no free extension on this number",
    Code.GROUP_NOT_EXIST: "group does not exist",
    Code.GROUP_INVALID: "a group holds 1 to 200 numbers of one country code",
    Code.GROUP_IN_USE: "group has active bindings",
    Code.NOT_GROUP_MEMBER: "phoneB is not a member of the group",
    Code.DIRECTION_NOT_ALLOWED: "call direction not allowed",
    Code.CALLER_BLOCKED: "caller is blocked",
}


class PnsError(Exception):
    """A refusal with an API code; ``data`` travels in the envelope (e.g. prompts to play)."""

    def __init__(self, code: Code, msg: str | None = None, data: dict[str, Any] | None = None):
        self.code = code
        self.msg = msg if msg is not None else DEFAULT_MSG[code]
        self.data = data
        super().__init__(f"{int(code)} {self.msg}")
