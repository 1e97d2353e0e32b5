"""The API: request → auth → action → core → response, for ``POST /api/pns/``.

Every answer is the envelope ``{code, msg, requestId, data?}``; errors too are HTTP 200 except
for the transport-level ones (404, 405, 413, 500) that still carry an envelope.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from .auth import BIZ_TYPE_PNS, TS_WINDOW_MS, check_ts, verify_sign
from .callbacks import CallReport, record_fields
from .core import BindingUpdate, Lifecycle, QueryAnswer, Service
from .errors import DEFAULT_MSG, Code, PnsError
from .ids import new_snowflake
from .model import Account, Role
from .ratelimit import FailureLimiter
from .store.base import SignatureClaim, take_claim
from .wire import (
    BindAXBBody,
    BindAXGBody,
    BindExtensionBody,
    BlacklistBody,
    CallRecordsBody,
    CreateGroupBody,
    GetBindingBody,
    GroupIdBody,
    ListBody,
    QueryBody,
    RedeliverBody,
    UnbindBody,
    UpdateAXBBody,
    UpdateGroupBody,
    V1Common,
    binding_detail,
    binding_item,
    decode,
    group_item,
    int_field,
    optional_int,
)

log = logging.getLogger("pns.api")

REQUIRED_HEADERS = ("accesskey", "action", "biztype", "ts", "sign")
_HEADER_NAMES = {"accesskey": "accessKey", "biztype": "bizType"}
_encode = msgspec.json.Encoder().encode

Handler = Callable[["Api", Account, Any, int], Awaitable[dict[str, Any] | None]]


class Action(NamedTuple):
    """An action: the body it takes (decoded before the handler runs; also what /openapi.json
    describes), its handler, who may call it, whether it changes state (replay guard), and
    the fields of ``data`` also given at the envelope's top level (NXCloud's createGroup)."""

    body: type[msgspec.Struct]
    handler: Handler
    roles: frozenset[Role]
    changes_state: bool
    top_level: tuple[str, ...] = ()
    # The action's one write claims the request's signature (one transaction, not two): its
    # handler gets ``Claimed(body, claim)``.
    claims_in_write: bool = False


def _claim_of(headers: Mapping[str, str], now: int) -> SignatureClaim:
    """The replay guard's claim for a signed request: a signature stays valid while its ts is
    inside the window, either way."""
    return SignatureClaim(f"{headers['accesskey']}:{headers['sign'].lower()}",
                          now + 2 * TS_WINDOW_MS // 1000 + 1, now)


class Claimed(NamedTuple):
    """The body of an action that claims its signature in its own write, with the claim."""

    body: Any
    claim: SignatureClaim


class Response(NamedTuple):
    status: int
    body: bytes
    request_id: str
    action: str
    code: int


def envelope(code: Code | int, msg: str, request_id: str, data: Any = None,
             top_level: tuple[str, ...] = ()) -> bytes:
    answer: dict[str, Any] = {"code": int(code), "msg": msg, "requestId": request_id}
    for name in top_level:
        answer[name] = data[name]
    if data is not None:
        answer["data"] = data
    return _encode(answer)


def error_response(status: int, code: Code, msg: str, action: str = "") -> Response:
    request_id = new_snowflake()
    return Response(status, envelope(code, msg, request_id), request_id, action, int(code))


class Api:
    def __init__(self, service: Service, clock: Callable[[], float] = time.time,
                 limiter: FailureLimiter | None = None):
        self.service = service
        self._clock = clock
        self.limiter = limiter or FailureLimiter()

    async def handle(self, headers: Mapping[str, str], body: bytes, client: str = "",
                     actions: Mapping[str, Action] | None = None) -> Response:
        """Answer one ``POST /api/pns/``; ``headers`` has lower-case names. ``actions``: the
        table the action header is read in (the v1 paths have their own). One coroutine
        from the headers to the action's handler: this runs on every queryAXB."""
        request_id = new_snowflake()
        action_name = headers.get("action", "")
        try:
            now = self._clock()
            action = self._admit(headers, client, actions, now)
            access_key = headers["accesskey"]
            accounts = self.service.accounts
            account = accounts.by_access_key_fresh(access_key) or await accounts.by_access_key(
                access_key)
            self._authenticate(headers, body, client, account, action, now)
            assert account is not None
            if action.claims_in_write:
                data = await self._claiming(action, account, headers, body, int(now))
            else:
                if action.changes_state and not await take_claim(
                        self.service.store, _claim_of(headers, int(now))):
                    raise PnsError(Code.REPLAYED)
                data = await action.handler(self, account, decode(body, action.body), int(now))
            return _succeeded(request_id, action_name, data, action.top_level)
        except PnsError as exc:
            return _refused(exc, request_id, action_name)
        except Exception:
            return _failed(request_id, action_name)

    async def _claiming(self, action: Action, account: Account, headers: Mapping[str, str],
                        body: bytes, now: int) -> dict[str, Any] | None:
        """An action whose write claims its signature (``Action.claims_in_write``). An answer
        that wrote nothing (a refusal, a repeated customerBindId) has the claim taken on its
        own here, so a replay is 1006 after a success or a refusal alike, as for every
        state-changing action (``take_claim`` costs nothing when the write took it)."""
        claim = _claim_of(headers, now)
        try:
            data = await action.handler(self, account, Claimed(decode(body, action.body), claim),
                                        now)
        except PnsError as exc:
            if exc.code is not Code.REPLAYED and not await take_claim(self.service.store, claim):
                raise PnsError(Code.REPLAYED) from None
            raise
        if not await take_claim(self.service.store, claim):
            raise PnsError(Code.REPLAYED)
        return data

    def answer_now(self, headers: Mapping[str, str], body: bytes,
                   client: str = "") -> Response | Awaitable[Response] | None:
        """``handle`` for a ``queryAXB``, without a coroutine when it needs no waiting
        (``Service.query_now``): the switch's question on the embedded store. An awaitable:
        the request passed every check and ``Service.query`` answers it (the checks are not
        made twice). None: ``handle`` must answer it (another action, or an account not
        cached), and nothing was changed meanwhile (the checks it shares with ``handle`` change
        something only when they refuse, and a refusal is answered here)."""
        action_name = headers.get("action", "")
        if action_name != "queryAXB":
            return None
        request_id = new_snowflake()
        try:
            now = self._clock()
            action = self._admit(headers, client, None, now)
            account = self.service.accounts.by_access_key_fresh(headers["accesskey"])
            if account is None:
                return None
            self._authenticate(headers, body, client, account, action, now)
            req: QueryBody = decode(body, QueryBody)
            answer = self.service.query_now(account, req.caller, req.did, req.extension or None,
                                            int(now))
            if answer is None:
                return self._query_later(account, req, int(now), request_id)
            return _succeeded(request_id, action_name, query_data(answer))
        except PnsError as exc:
            return _refused(exc, request_id, action_name)
        except Exception:
            return _failed(request_id, action_name)

    async def _query_later(self, account: Account, req: QueryBody, now: int,
                           request_id: str) -> Response:
        """The rest of a ``queryAXB`` that ``answer_now`` checked but could not answer at once."""
        try:
            return _succeeded(request_id, "queryAXB", await _query(self, account, req, now))
        except PnsError as exc:
            return _refused(exc, request_id, "queryAXB")
        except Exception:
            return _failed(request_id, "queryAXB")

    def _admit(self, headers: Mapping[str, str], client: str,
               actions: Mapping[str, Action] | None, now: float) -> Action:
        """What is checked before the account is known: the headers, the action, ts and the
        rate limit."""
        for name in REQUIRED_HEADERS:
            if not headers.get(name):
                raise PnsError(Code.MISSING_HEADER,
                               f"missing header {_HEADER_NAMES.get(name, name)}")
        if headers["biztype"] != BIZ_TYPE_PNS:
            raise PnsError(Code.BAD_PARAMETER, "bizType must be 5")
        action_name = headers["action"]
        action = (ACTIONS if actions is None else actions).get(action_name)
        if action is None:
            raise PnsError(Code.BAD_PARAMETER, f"unknown action {action_name[:64]!r}")
        check_ts(headers["ts"], int(now * 1000), TS_WINDOW_MS)
        limiter = self.limiter
        # Counted per (accessKey, address) and per address, never per accessKey alone: the
        # key travels in clear, and a per-key block would let anyone lock its owner out.
        if limiter.blocked(f"{headers['accesskey']}@{client}") or limiter.blocked(client):
            raise PnsError(Code.RATE_LIMITED)
        return action

    def _authenticate(self, headers: Mapping[str, str], body: bytes, client: str,
                      account: Account | None, action: Action, now: float) -> None:
        """The account may make this request: it exists and is enabled, the signature is
        its own (failures counted for the rate limit), its role may take the action."""
        limiter = self.limiter
        if account is None or not account.enabled:
            limiter.fail(client)
            raise PnsError(Code.NO_PERMISSION, "unknown or disabled accessKey")
        access_key = headers["accesskey"]
        action_name = headers["action"]
        try:
            verify_sign(headers["sign"], access_key, action_name, headers["biztype"],
                        headers["ts"], body, account.secrets_at(now),
                        headers.get("algorithm", "md5"))
        except PnsError:
            limiter.fail(f"{access_key}@{client}")
            limiter.fail(client)
            raise
        if account.role not in action.roles:
            raise PnsError(Code.NO_PERMISSION,
                           f"role {account.role.value} may not {action_name}")


def _succeeded(request_id: str, action_name: str, data: Any,
               top_level: tuple[str, ...] = ()) -> Response:
    return Response(200, envelope(Code.OK, "success", request_id, data, top_level), request_id,
                    action_name, 0)


def _refused(exc: PnsError, request_id: str, action_name: str) -> Response:
    return Response(200, envelope(exc.code, exc.msg, request_id, exc.data), request_id,
                    action_name, int(exc.code))


def _failed(request_id: str, action_name: str) -> Response:
    log.exception("unexpected failure requestId=%s action=%s", request_id, action_name)
    return Response(500, envelope(Code.INTERNAL, DEFAULT_MSG[Code.INTERNAL], request_id),
                    request_id, action_name, int(Code.INTERNAL))


# --- actions --------------------------------------------------------------------------------
async def _bind_axb(api: Api, account: Account, claimed: Claimed, now: int) -> dict[str, Any]:
    req: BindAXBBody = claimed.body
    binding = await api.service.bind_axb(
        account, req.phoneA, req.phoneB,
        expire_second=int_field(req.expireSecond, "expireSecond", required=True),
        customer_bind_id=req.customerBindId, flag=int_field(req.flag, "flag", required=False),
        business_id=req.businessId, phone_x=req.phoneX, now=now, life=lifecycle_fields(req),
        claim=claimed.claim,
    )
    return {"bindId": binding.bind_id, "did": binding.x, "expireAt": binding.expire_at}


async def _bind_extension(api: Api, account: Account, req: BindExtensionBody,
                          now: int) -> dict[str, Any]:
    binding = await api.service.bind_extension(
        account, req.phoneA, req.phoneX,
        expire_second=int_field(req.expireSecond, "expireSecond", required=True),
        phone_b=req.phoneB, extension=req.extension or req.Extension,
        customer_bind_id=req.customerBindId, flag=int_field(req.flag, "flag", required=False),
        business_id=req.businessId, now=now, life=lifecycle_fields(req),
    )
    return {"bindId": binding.bind_id, "did": binding.x, "extension": binding.extension,
            "expireAt": binding.expire_at}


async def _unbind(api: Api, account: Account, req: UnbindBody, now: int) -> None:
    await api.service.unbind(account, req.bindId, req.customerBindId, now)
    return None


def lifecycle_fields(req: BindAXBBody | BindExtensionBody | BindAXGBody | UpdateAXBBody
                     | V1Common) -> Lifecycle:
    """lifecycle.md's fields of a bind or update body (absent ones stay None)."""
    return Lifecycle(
        call_direction=optional_int(req.callDirection, "callDirection"),
        max_duration=optional_int(req.maxDuration, "maxDuration"),
        renew_on_call=optional_int(req.renewOnCall, "renewOnCall"),
        audio_when_call_fail=req.audioWhenCallFail,
    )


async def _get_axb(api: Api, account: Account, req: GetBindingBody, now: int) -> dict[str, Any]:
    return binding_detail(await api.service.get_binding(account, req.bindId,
                                                        req.customerBindId, now))


async def _update_axb(api: Api, account: Account, req: UpdateAXBBody,
                      now: int) -> dict[str, Any]:
    update = BindingUpdate(
        phone_b=req.phoneB, expire_second=optional_int(req.expireSecond, "expireSecond"),
        flag=optional_int(req.flag, "flag"), business_id=req.businessId,
        life=lifecycle_fields(req),
    )
    return binding_detail(await api.service.update_binding(account, req.bindId,
                                                           req.customerBindId, update, now))


async def _add_blacklist(api: Api, account: Account, req: BlacklistBody,
                         now: int) -> dict[str, Any]:
    return {"added": await api.service.add_blocked(account, req.phones, now)}


async def _remove_blacklist(api: Api, account: Account, req: BlacklistBody,
                            now: int) -> dict[str, Any]:
    return {"removed": await api.service.remove_blocked(account, req.phones)}


async def _get_blacklist(api: Api, account: Account, req: ListBody, now: int) -> dict[str, Any]:
    phones, total = await api.service.list_blocked(
        account, int_field(req.limit, "limit", required=False, code=Code.LIMIT_OUT_OF_RANGE),
        int_field(req.offset, "offset", required=False, code=Code.OFFSET_OUT_OF_RANGE))
    return {"phones": phones, "total": total}


async def _list(api: Api, account: Account, req: ListBody, now: int) -> dict[str, Any]:
    limit = int_field(req.limit, "limit", required=False, code=Code.LIMIT_OUT_OF_RANGE)
    offset = int_field(req.offset, "offset", required=False, code=Code.OFFSET_OUT_OF_RANGE)
    bindings, total = await api.service.list_bindings(account, limit, offset, now)
    return {"bindList": [binding_item(b) for b in bindings], "total": total}


async def _query(api: Api, account: Account, req: QueryBody, now: int) -> dict[str, Any]:
    answer = await api.service.query(account, req.caller, req.did, req.extension or None, now)
    return query_data(answer)


def query_data(answer: QueryAnswer) -> dict[str, Any]:
    prompts = answer.prompts
    data: dict[str, Any] = {
        "callee": answer.callee,
        "callId": answer.call_id,
        "flag": answer.flag,
        "audioWhenCallFail": answer.audio_when_call_fail or (
            prompts.audio_when_call_fail if prompts else ""),
        "bindType": answer.bind_type,
        "audioWhenDtmfNeed": prompts.audio_when_dtmf_need if prompts else "",
        "audioWhenDtmfErr": prompts.audio_when_dtmf_err if prompts else "",
        "display": answer.display,
    }
    if answer.extension is not None:
        data["extension"] = answer.extension
    if answer.callee_dtmf:
        data["calleeDtmf"] = answer.callee_dtmf
        data["calleeDtmfDelay"] = answer.callee_dtmf_delay
    data["maxDuration"] = answer.max_duration
    return data


async def _report_call(api: Api, account: Account, claimed: Claimed, now: int
                       ) -> dict[str, Any]:
    record = await api.service.report_call(claimed.body, now, reporter=account,
                                           claim=claimed.claim)
    return {"id": record.id, "callId": record.call_id}


async def _call_records(api: Api, account: Account, req: CallRecordsBody,
                        now: int) -> dict[str, Any]:
    records, total = await api.service.list_call_records(
        account,
        start_from=int_field(req.startTime, "startTime", required=False),
        start_to=int_field(req.endTime, "endTime", required=False),
        bind_id=req.bindId,
        limit=int_field(req.limit, "limit", required=False, code=Code.LIMIT_OUT_OF_RANGE),
        offset=int_field(req.offset, "offset", required=False, code=Code.OFFSET_OUT_OF_RANGE),
    )
    return {"records": [record_fields(r) for r in records], "total": total}


async def _redeliver(api: Api, account: Account, req: RedeliverBody, now: int) -> dict[str, Any]:
    return {"eventId": await api.service.redeliver(account, req.callId, now)}


async def _create_group(api: Api, account: Account, req: CreateGroupBody,
                        now: int) -> dict[str, Any]:
    group = await api.service.create_group(account, req.phones, req.groupName, req.remark, now)
    return {"groupId": group.group_id}


async def _update_group(api: Api, account: Account, req: UpdateGroupBody, now: int) -> None:
    await api.service.update_group(
        account, req.groupId, int_field(req.operateType, "operateType", required=True),
        req.phones, now)
    return None


async def _delete_group(api: Api, account: Account, req: GroupIdBody, now: int) -> None:
    await api.service.delete_group(account, req.groupId, now)
    return None


async def _list_groups(api: Api, account: Account, req: ListBody, now: int) -> dict[str, Any]:
    limit = int_field(req.limit, "limit", required=False, code=Code.LIMIT_OUT_OF_RANGE)
    offset = int_field(req.offset, "offset", required=False, code=Code.OFFSET_OUT_OF_RANGE)
    groups, total = await api.service.list_groups(account, limit, offset)
    return {"groups": [group_item(g) for g in groups], "total": total}


async def _bind_axg(api: Api, account: Account, req: BindAXGBody, now: int) -> dict[str, Any]:
    binding = await api.service.bind_axg(
        account, req.phoneA, req.groupId,
        expire_second=int_field(req.expireSecond, "expireSecond", required=True),
        phone_x=req.phoneX, phone_b=req.phoneB, customer_bind_id=req.customerBindId,
        flag=int_field(req.flag, "flag", required=False), business_id=req.businessId, now=now,
        life=lifecycle_fields(req),
    )
    return {"bindId": binding.bind_id, "did": binding.x, "expireAt": binding.expire_at}


_CUSTOMER = frozenset({Role.CUSTOMER})
_SWITCH = frozenset({Role.SWITCH})
_ANYONE = frozenset({Role.CUSTOMER, Role.SWITCH})

ACTIONS: dict[str, Action] = {
    "bindAXB": Action(BindAXBBody, _bind_axb, _CUSTOMER, True, claims_in_write=True),
    "bindAXBExtension": Action(BindExtensionBody, _bind_extension, _CUSTOMER, True),
    "unbindAXB": Action(UnbindBody, _unbind, _CUSTOMER, True),
    "getAXBList": Action(ListBody, _list, _CUSTOMER, False),
    "queryAXB": Action(QueryBody, _query, _ANYONE, False),
    "reportCall": Action(CallReport, _report_call, _SWITCH, True, claims_in_write=True),
    "getCallRecords": Action(CallRecordsBody, _call_records, _CUSTOMER, False),
    "redeliverCallRecord": Action(RedeliverBody, _redeliver, _CUSTOMER, True),
    "createGroup": Action(CreateGroupBody, _create_group, _CUSTOMER, True, ("groupId",)),
    "updateGroup": Action(UpdateGroupBody, _update_group, _CUSTOMER, True),
    "deleteGroup": Action(GroupIdBody, _delete_group, _CUSTOMER, True),
    "listGroup": Action(ListBody, _list_groups, _CUSTOMER, False),
    "bindAXG": Action(BindAXGBody, _bind_axg, _CUSTOMER, True),
    # lifecycle.md
    "getAXB": Action(GetBindingBody, _get_axb, _CUSTOMER, False),
    "updateAXB": Action(UpdateAXBBody, _update_axb, _CUSTOMER, True),
    "addBlacklist": Action(BlacklistBody, _add_blacklist, _CUSTOMER, True),
    "removeBlacklist": Action(BlacklistBody, _remove_blacklist, _CUSTOMER, True),
    "getBlacklist": Action(ListBody, _get_blacklist, _CUSTOMER, False),
}
