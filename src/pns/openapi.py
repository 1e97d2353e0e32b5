"""The OpenAPI description of the API, served at ``GET /openapi.json`` (and as a page at
``GET /docs``).

One path per action (``POST /api/pns/{action}``, an alias of ``POST /api/pns/`` with the
``action`` header), so each action's body and answer can be described. Request schemas are
generated from the same structs that decode the requests, with the required fields the actions
check (``wire.REQUIRED_FIELDS``); each answer's ``data`` is typed, and its ``code`` lists only
the codes that action can return, so a client generator gets usable types.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import msgspec

from . import __version__
from .api import ACTIONS, Action
from .errors import DEFAULT_MSG, Code
from .v1 import DEFAULT_BIND_EXPIRE_SECOND, MAX_EXT, V1_ACTIONS, V1_PATHS
from .wire import ONE_OF_FIELDS, REQUIRED_FIELDS

_SUMMARIES = {
    "bindAXB": "Bind A and B to a virtual number X chosen from the account's pool",
    "bindAXBExtension": "Bind A (and optionally B) to X plus an extension",
    "unbindAXB": "End a binding by bindId or customerBindId",
    "getAXBList": "List the account's active bindings, paged",
    "queryAXB": "The switch's question: whom does caller reach by dialling did?",
    "reportCall": "The switch reports a finished call (switch role)",
    "getCallRecords": "List call records by time range or bindId, paged",
    "redeliverCallRecord": "Queue one more delivery of a call record",
    "createGroup": "Create an AXG group of 1-200 numbers of one country code",
    "updateGroup": "Add (0), remove (1) or replace (2) a group's numbers",
    "deleteGroup": "Delete a group without active bindings",
    "listGroup": "List the account's groups, paged",
    "bindAXG": "Bind A to a group: every member calling X reaches A",
    "getAXB": "One active binding by bindId or customerBindId, with every field",
    "addBlacklist": "Block callers (comma-separated phones) on every number of the account",
    "removeBlacklist": "Unblock callers (comma-separated phones)",
    "getBlacklist": "The account's blocked callers, paged",
    "updateAXB": "Change a binding in place (B, lifetime, flag, lifecycle fields); bindId and "
                 "X stay",
}
_V1_SUMMARIES = {
    "bindAXB": "v1 AXB: A and B reach each other through X",
    "bindAXE": "v1 AXE: anyone dialling X and the 4-digit extension E reaches A",
    "bindAXEYB": "v1 AXEYB: A dials X + E to reach B, shown Y; then A and B talk through Y",
    "bindXYB": "v1 XYB: the first caller of X becomes A and reaches B through Y",
    "bindAX": "v1 AX: anyone but A dialling X reaches A; X is A's alone",
    "bindAXYB": "v1 AXYB: A dials X to reach B (shown Y); B dials Y to reach A",
    "bindNXEYB": "v1 NXEYB: each caller of X + E reaches B through a Y of its own",
}

_FIELD_DOCS = {
    "phoneA": "Party A, digits with the country code (+, spaces, -, ( ) and 00 allowed)",
    "phoneB": "Party B, same country code as A",
    "phoneX": "Ask for this virtual number X (must be the account's)",
    "expireSecond": "Lifetime in seconds, 0 = never expires (an integer or a string of digits)",
    "customerBindId": "Your id, at most 64 characters; a repeat of the same request is idempotent",
    "flag": "Bit 1 = record the call",
    "businessId": "Echoed in lists and call records, at most 128 characters",
    "extension": "3 digits (4 with pns serve --extension-length 4)",
    "Extension": "Alias of extension",
    "bindId": "32 hex digits, from the bind's answer",
    "limit": "0-1000, 0 = 1000",
    "offset": "0 or more",
    "caller": "The calling number (country code optional: read against X's country)",
    "did": "The dialled virtual number X, with its country code",
    "callId": "From the query's answer",
    # The v1 API.
    "didX": "Ask for this virtual number X (must be the account's); else one is chosen",
    "didY": "Ask for this virtual number Y (must be the account's); else one is chosen",
    "recording": "Record the calls (default false)",
    "recoding": "NXCloud's misspelling of recording, accepted too; both given must agree",
    "bindExpireSecond": f"Lifetime in seconds (default {DEFAULT_BIND_EXPIRE_SECOND}), "
                        "0 = never expires",
    "ext": f"Free text up to {MAX_EXT} characters, copied into the call records",
    "iso2X": "ISO-3166 alpha-2 region to take X from when didX is absent (default: the "
             "parties' country; another country is 10004)",
    "extensionB": "Digits (0-9 * #) the switch keys into B's line after B answers A's call",
    "dtmfDelayTimeB": "Seconds to wait before keying extensionB (0-300; required with it)",
    "customerUserId": "Your user's or device's id, at most 64 characters",
    "delayedGetY": "Allocate Y at the first call-in instead of at the bind",
    "bindExpireStrategy": "0 keep, 1 reset, 2 extend the lifetime on each answered call",
    "callInExpireSecond": "Lifetime from the first call-in, in seconds",
    "callInExpireStrategy": "0 keep, 1 reset, 2 extend, after the call-in",
    "phones": "Comma-separated numbers with their country codes (a group: 1-200 of one "
              "country code; a block-list change: at most 1000, the list at most 10000)",
    "groupName": "At most 64 characters (default: the groupId)",
    "remark": "At most 256 characters",
    "groupId": "From createGroup's answer",
    "operateType": "0 add, 1 remove, 2 replace the group's numbers",
    "callDirection": "0 both ways (default), 1 only A may call, 2 only B may call (10023). "
                     "A and B per mode: see the README; 2 on a binding whose first caller "
                     "becomes A (XYB, AXEYB without A, NXEYB) is 1002",
    "maxDuration": "Seconds a call may last, 0-86400, 0 = no limit (the switch ends the call)",
    "renewOnCall": "0-7776000 s, 0 = off: each answered query moves expireAt to "
                   "max(expireAt, now + renewOnCall); expireAt 0 stays 0; not beside an XYB "
                   "expiry strategy (1002)",
    "audioWhenCallFail": "This binding's fail prompt, instead of the account's",
}

# Codes every action can answer, besides its own (state-changing actions add 1006).
_COMMON_CODES = (Code.OK, Code.MISSING_HEADER, Code.BAD_PARAMETER, Code.BAD_SIGNATURE,
                 Code.TS_EXPIRED, Code.NO_PERMISSION, Code.RATE_LIMITED, Code.INTERNAL)
_BIND_CODES = (Code.NUMBER_EMPTY, Code.SAME_NUMBER, Code.COUNTRY_MISMATCH,
               Code.NO_COUNTRY_PREFIX, Code.NO_VIRTUAL_NUMBER, Code.CUSTOMER_BIND_ID_REUSED,
               Code.PARTY_ALREADY_BOUND)
ACTION_CODES: dict[str, tuple[Code, ...]] = {
    "bindAXB": (*_BIND_CODES, Code.NUMBERS_EXHAUSTED),
    "bindAXBExtension": (*_BIND_CODES, Code.EXTENSION_TAKEN, Code.INVALID_EXTENSION,
                         Code.NO_FREE_EXTENSION),
    "unbindAXB": (Code.BINDING_NOT_EXIST,),
    "getAXBList": (Code.LIMIT_OUT_OF_RANGE, Code.OFFSET_OUT_OF_RANGE),
    "queryAXB": (Code.NO_COUNTRY_PREFIX, Code.BINDING_NOT_EXIST,
                 Code.DIRECTION_NOT_ALLOWED, Code.CALLER_BLOCKED),
    "reportCall": (Code.BINDING_NOT_EXIST,),
    "getCallRecords": (Code.LIMIT_OUT_OF_RANGE, Code.OFFSET_OUT_OF_RANGE),
    "redeliverCallRecord": (Code.BINDING_NOT_EXIST,),
    "createGroup": (Code.GROUP_INVALID,),
    "updateGroup": (Code.GROUP_NOT_EXIST,
                    Code.GROUP_INVALID, Code.PARTY_ALREADY_BOUND),
    "deleteGroup": (Code.GROUP_NOT_EXIST, Code.GROUP_IN_USE),
    "listGroup": (Code.LIMIT_OUT_OF_RANGE, Code.OFFSET_OUT_OF_RANGE),
    "bindAXG": (*_BIND_CODES, Code.NUMBERS_EXHAUSTED, Code.GROUP_NOT_EXIST,
                Code.NOT_GROUP_MEMBER),
    "getAXB": (Code.BINDING_NOT_EXIST,),
    "addBlacklist": (Code.NUMBER_EMPTY,),
    "removeBlacklist": (Code.NUMBER_EMPTY,),
    "getBlacklist": (Code.LIMIT_OUT_OF_RANGE, Code.OFFSET_OUT_OF_RANGE),
    "updateAXB": (Code.BINDING_NOT_EXIST, Code.NUMBER_EMPTY, Code.SAME_NUMBER,
                  Code.COUNTRY_MISMATCH, Code.NO_COUNTRY_PREFIX, Code.PARTY_ALREADY_BOUND),
}
_V1_PAIR_CODES = (*_BIND_CODES, Code.NUMBERS_EXHAUSTED)
_V1_EXTENSION_CODES = (*_V1_PAIR_CODES, Code.INVALID_EXTENSION, Code.NO_FREE_EXTENSION)
V1_ACTION_CODES: dict[str, tuple[Code, ...]] = {
    "bindAXB": _V1_PAIR_CODES, "bindAX": _V1_PAIR_CODES, "bindAXYB": _V1_PAIR_CODES,
    "bindXYB": _V1_PAIR_CODES, "bindAXE": _V1_EXTENSION_CODES,
    "bindAXEYB": _V1_EXTENSION_CODES, "bindNXEYB": _V1_EXTENSION_CODES,
}


def action_codes(action: str, v1: bool = False) -> list[int]:
    """Every code ``action`` (of the v1 paths when ``v1``) can answer with, in order."""
    codes = {*_COMMON_CODES, *(V1_ACTION_CODES if v1 else ACTION_CODES)[action]}
    if (V1_ACTIONS if v1 else ACTIONS)[action].changes_state:
        codes.add(Code.REPLAYED)
    return sorted(int(c) for c in codes)


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


_S = {"type": "string"}
_I = {"type": "integer"}
_BIND_TYPES = "0 AXB, 1 AX, 2 AXG, 3 AXYB, 4 extension (AXE), 5 AXEYB, 6 XYB, 7 NXEYB"
_BINDING_ITEM = _obj(
    ["customerId", "businessId", "bindId", "customerBindId", "phoneA", "phoneB", "did", "flag",
     "expireAt", "bindType"],
    customerId=_S, businessId=_S, bindId=_S, customerBindId=_S, phoneA=_S, phoneB=_S, did=_S,
    flag=_I, expireAt={**_I, "description": "epoch seconds, 0 = never"},
    bindType={**_I, "description": _BIND_TYPES}, extension=_S,
    didY={**_S, "description": "the second virtual number Y (AXYB, AXEYB, XYB, NXEYB)"},
    groupId={**_S, "description": "the group of an AXG binding"},
    customerUserId={**_S, "description": "XYB: as given at the bind"},
    parentBindId={**_S, "description": "NXEYB: the binding whose call made this one"})
_BINDING_DETAIL = {
    **_BINDING_ITEM,
    "required": [*_BINDING_ITEM["required"], "expireSecond", "callDirection", "maxDuration",
                 "renewOnCall", "audioWhenCallFail"],
    "properties": {**_BINDING_ITEM["properties"], "expireSecond": _I,
                   "callDirection": {**_I, "enum": [0, 1, 2]}, "maxDuration": _I,
                   "renewOnCall": _I, "audioWhenCallFail": _S,
                   "ext": {**_S, "description": "v1: as given at the bind"},
                   "extensionB": {**_S, "description": "v1 AXB: as given at the bind"},
                   "dtmfDelayTimeB": _I,
                   "callInExpireSecond": {**_I, "description": "XYB: as given at the bind"},
                   "expireStrategy": {**_I, "description": "XYB: the strategy in force "
                                      "(callInExpireStrategy, else bindExpireStrategy)"}},
}
_PROMPTS = {"audioWhenCallFail": _S, "audioWhenDtmfNeed": _S, "audioWhenDtmfErr": _S}
_RECORD = _obj(
    ["id", "callId", "did", "caller", "callee", "callStatus", "duration", "startAt", "hangupAt"],
    id=_I, businessId=_S, customerBindId=_S, bindId=_S, callId=_S, did=_S, caller=_S,
    callee=_S, callStatus={**_I, "description": "1 answered and cleared normally, 2 otherwise"},
    callStatusMsg=_S, duration=_I, startAt=_I, ringAt=_I, answerAt=_I, hangupAt=_I,
    hangupCause=_S, hangupCode=_I, hangup=_I, recordFile=_S)
# What ``data`` holds in each action's answer. Only queryAXB's failures carry data (the three
# prompts), so its answer requires just those.
DATA_SCHEMAS: dict[str, dict[str, Any] | None] = {
    "bindAXB": _obj(["bindId", "did", "expireAt"], bindId=_S, did=_S, expireAt=_I),
    "bindAXBExtension": _obj(["bindId", "did", "extension", "expireAt"], bindId=_S, did=_S,
                             extension=_S, expireAt=_I),
    "unbindAXB": None,
    "getAXBList": _obj(["bindList", "total"], bindList={"type": "array", "items": _BINDING_ITEM},
                       total=_I),
    "queryAXB": _obj(list(_PROMPTS), callee=_S, callId=_S, flag=_I,
                     bindType={**_I, "description": _BIND_TYPES}, extension=_S,
                     display={**_S, "description": "the number the callee is shown: X, or Y "
                              "in the modes with a Y (present in every success answer)"},
                     calleeDtmf={**_S, "description": "v1 AXB with extensionB, A's calls: "
                                 "digits to key into B's line once B answers"},
                     calleeDtmfDelay={**_I, "description": "seconds to wait before"},
                     maxDuration={**_I, "description": "seconds the call may last, 0 = no "
                                  "limit (in every success answer)"},
                     **_PROMPTS),
    "reportCall": _obj(["id", "callId"], id=_I, callId=_S),
    "getCallRecords": _obj(["records", "total"], records={"type": "array", "items": _RECORD},
                           total=_I),
    "redeliverCallRecord": _obj(["eventId"], eventId=_S),
    "createGroup": _obj(["groupId"], groupId=_S),
    "updateGroup": None,
    "deleteGroup": None,
    "listGroup": _obj(["groups", "total"], groups={"type": "array", "items": _obj(
        ["customerId", "groupName", "groupId", "phones", "remark"], customerId=_S,
        groupName=_S, groupId=_S, phones=_S, remark=_S)}, total=_I),
    "bindAXG": _obj(["bindId", "did", "expireAt"], bindId=_S, did=_S, expireAt=_I),
    "getAXB": _BINDING_DETAIL,
    "addBlacklist": _obj(["added"], added=_I),
    "removeBlacklist": _obj(["removed"], removed=_I),
    "getBlacklist": _obj(["phones", "total"], phones={"type": "array", "items": _S}, total=_I),
    "updateAXB": _BINDING_DETAIL,
}

# What ``data`` holds in a v1 bind's answer.
_V1_DATA = {"bindId": _S, "didX": _S, "expireAt": {**_I, "description": "epoch seconds, 0 = never"}}
_V1_Y = {"didY": {**_S, "description": "absent while Y is not allocated (delayedGetY)"}}
_V1_E = {"extensionX": {**_S, "description": "4 digits"}}
V1_DATA_SCHEMAS: dict[str, dict[str, Any]] = {
    "bindAXB": _obj(list(_V1_DATA), **_V1_DATA),
    "bindAX": _obj(list(_V1_DATA), **_V1_DATA),
    "bindAXE": _obj([*_V1_DATA, "extensionX"], **_V1_DATA, **_V1_E),
    "bindAXYB": _obj(list(_V1_DATA), **_V1_DATA, **_V1_Y),
    "bindXYB": _obj(list(_V1_DATA), **_V1_DATA, **_V1_Y),
    "bindAXEYB": _obj([*_V1_DATA, "extensionX"], **_V1_DATA, **_V1_Y, **_V1_E),
    "bindNXEYB": _obj([*_V1_DATA, "extensionX"], **_V1_DATA, **_V1_E),
}

_PARAMETERS = [
    {"name": "bizType", "in": "header", "required": True, "description": "Must be 5",
     "schema": {"type": "string", "enum": ["5"]}},
    {"name": "ts", "in": "header", "required": True,
     "description": "Epoch milliseconds, within 60 s of the server clock",
     "schema": {"type": "string"}},
    {"name": "algorithm", "in": "header", "required": False,
     "description": "md5 (default) or sha256; not part of the signed string",
     "schema": {"type": "string", "enum": ["md5", "sha256"]}},
]

_SECURITY_SCHEMES = {
    "accessKey": {"type": "apiKey", "in": "header", "name": "accessKey",
                  "description": "The account's access key."},
    "sign": {"type": "apiKey", "in": "header", "name": "sign", "description": (
        "Lowercase hex MD5 (or SHA-256 with `algorithm: sha256`) of "
        "`accessKey=K&action=A&bizType=5&ts=T&body=<raw body>&accessSecret=S`; `&body=...` is "
        "left out for an empty body. The body is signed byte for byte as sent. A "
        "state-changing request whose sign was already used within the ts window gets 1006.")},
}


def _request_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    schema = {**schema, "required": list(REQUIRED_FIELDS.get(name, ()))}
    schema["properties"] = {
        field: ({**spec, "description": _FIELD_DOCS[field]} if field in _FIELD_DOCS else spec)
        for field, spec in schema["properties"].items()
    }
    one_of = ONE_OF_FIELDS.get(name)
    if one_of:
        schema["anyOf"] = [{"required": [field]} for field in one_of]
    return schema


def _answer_schema(action: str, v1: bool = False) -> dict[str, Any]:
    codes = action_codes(action, v1)
    properties: dict[str, Any] = {
        "code": {"type": "integer", "enum": codes},
        "msg": {"type": "string"},
        "requestId": {"type": "string", "pattern": "^[0-9]{19}$"},
    }
    data = V1_DATA_SCHEMAS[action] if v1 else DATA_SCHEMAS[action]
    if data is not None:
        properties["data"] = data
    top_level = () if v1 else ACTIONS[action].top_level
    for name in top_level:  # NXCloud's createGroup: groupId beside data too
        properties[name] = data["properties"][name] if data else {"type": "string"}
    return {"type": "object", "required": ["code", "msg", "requestId"],
            "properties": properties}


def _codes_text(action: str, v1: bool = False) -> str:
    lines = [f"- {code}: {DEFAULT_MSG[Code(code)]}" for code in action_codes(action, v1)]
    return "Codes this action answers with (HTTP 200 unless said):\n" + "\n".join(lines)


def _operation(operation_id: str, summary: str, description: str, answer: str,
               schema: dict[str, Any], action: str | None = None) -> dict[str, Any]:
    """One signed POST; ``action``: the value its action header must have, when it has one."""
    envelope = {"$ref": "#/components/schemas/Envelope"}
    parameters = _PARAMETERS
    if action is not None:
        parameters = [*_PARAMETERS, {
            "name": "action", "in": "header", "required": True,
            "description": "Must name this path's mode (else 1002); it is part of the signed "
                           "string", "schema": {"type": "string", "enum": [action]}}]
    return {"post": {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "parameters": parameters,
        "security": [{"accessKey": [], "sign": []}],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": schema}}},
        "responses": {
            "200": {"description": "An envelope; code 0 is success",
                    "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{answer}"}}}},
            "413": {"description": "Body over 64 KiB (code 1002)",
                    "content": {"application/json": {"schema": envelope}}},
            "500": {"description": "Unexpected failure (code 10009)",
                    "content": {"application/json": {"schema": envelope}}},
        },
    }}


def _roles(spec: Action) -> str:
    return " or ".join(sorted(role.value for role in spec.roles))


def build_openapi() -> dict[str, Any]:
    bodies = [a.body for a in ACTIONS.values()] + [a.body for a in V1_ACTIONS.values()]
    (schemas, components) = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}")
    for name in list(components):
        components[name] = _request_schema(name, components[name])
    paths: dict[str, Any] = {}
    for (action, spec), schema in zip(ACTIONS.items(), schemas[:len(ACTIONS)], strict=True):
        answer = f"{action}Answer"
        components[answer] = _answer_schema(action)
        paths[f"/api/pns/{action}"] = _operation(
            action, _SUMMARIES[action],
            f"Role: {_roles(spec)}. Same as `POST /api/pns/` (or `POST /v1/api/pns/`) with "
            f"header `action: {action}`.\n\n{_codes_text(action)}", answer, schema)
    v1_schemas = schemas[len(ACTIONS):]
    path_of = {action: path for path, action in V1_PATHS.items()}
    for (action, spec), schema in zip(V1_ACTIONS.items(), v1_schemas, strict=True):
        answer = f"v1{action[0].upper()}{action[1:]}Answer"
        components[answer] = _answer_schema(action, v1=True)
        paths[path_of[action]] = _operation(
            f"v1{action[0].upper()}{action[1:]}", _V1_SUMMARIES[action],
            f"Role: {_roles(spec)}. NXCloud's v1 API; header `action: {action}`. The binding "
            f"is made with the v1 API: its call records take the newer CDR shape."
            f"\n\n{_codes_text(action, v1=True)}", answer, schema, action)
    paths["/healthz"] = {"get": {"operationId": "healthz", "security": [], "responses": {
        "200": {"description": "The store answers"},
        "503": {"description": "The store does not answer"}}}}
    components["Envelope"] = {
        "type": "object", "required": ["code", "msg", "requestId"],
        "properties": {"code": {"type": "integer"}, "msg": {"type": "string"},
                       "requestId": {"type": "string", "pattern": "^[0-9]{19}$"}},
    }
    admin_paths, admin_schemas = _admin_paths()
    paths.update(admin_paths)
    components.update(admin_schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pns — privacy number service (NXCloud PNS compatible)",
                 "version": __version__,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": "/", "description": "the pns serving this document"}],
        "security": [{"accessKey": [], "sign": []}],
        "tags": [{"name": "admin", "description": "The operators' admin API (Bearer token), "
                  "separate from the NXCloud-compatible API"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            **_SECURITY_SCHEMES,
            "operatorToken": {"type": "http", "scheme": "bearer",
                              "description": "A token from `pns operator create`"}}},
    }


def _admin_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The admin API, one operation per route of ``pns.admin.api.ROUTES``."""
    from .admin.api import PREFIX, ROUTES

    shapes = list(dict.fromkeys(
        shape for route in ROUTES for shape in (route.body, route.answer) if shape is not None))
    (schemas, components) = msgspec.json.schema_components(
        shapes, ref_template="#/components/schemas/{name}")
    body_schema = dict(zip(shapes, schemas, strict=True))
    components["AdminError"] = {"type": "object", "required": ["error"],
                                "properties": {"error": {"type": "string"}}}
    error = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/AdminError"}}}}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        path = PREFIX + route.pattern
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.pattern)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        operation: dict[str, Any] = {
            "operationId": "admin_" + route.method.lower() + "_"
            + re.sub(r"\W+", "_", route.pattern).strip("_"),
            "tags": ["admin"], "summary": route.summary,
            "security": [{"operatorToken": []}], "parameters": parameters,
            "responses": {
                "201" if route.pattern == "accounts" and route.method == "POST" else "200": {
                    "description": "Done", "content": {"application/json": {
                        "schema": body_schema[route.answer] if route.answer is not None
                        else {"type": "object"}}}},
                "400": {"description": "Invalid input", **error},
                "401": {"description": "No valid operator token", **error},
                "403": {"description": "A viewer asked to change something", **error},
                "404": {"description": route.not_found, **error},
                "429": {"description": "Too many wrong tokens from this address", **error},
            },
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": body_schema[route.body]}}}
        elif route.pattern == "numbers/import":
            operation["requestBody"] = {"required": True, "content": {
                "text/plain": {"schema": {"type": "string"}}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return paths, components


OPENAPI_JSON = msgspec.json.encode(build_openapi())


def _docs_assets() -> dict[str, tuple[str, bytes]]:
    """``/docs`` and the files it loads, from the package (no CDN: pns runs offline)."""
    static = files("pns") / "static"
    return {
        "/docs": ("text/html; charset=utf-8", (static / "docs.html").read_bytes()),
        "/docs/": ("text/html; charset=utf-8", (static / "docs.html").read_bytes()),
        "/docs/docs.js": ("text/javascript; charset=utf-8", (static / "docs.js").read_bytes()),
        "/docs/docs.css": ("text/css; charset=utf-8", (static / "docs.css").read_bytes()),
    }


DOCS_ASSETS = _docs_assets()
