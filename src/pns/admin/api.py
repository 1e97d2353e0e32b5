"""``/admin/api/``: the operators' JSON API, authenticated with ``Authorization: Bearer``.

401 without a valid token (and 429 after too many wrong ones from one address), 403 when a
viewer asks to change something. Every change and every reveal of a party's number is logged
and kept in the audit trail. Errors are ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NamedTuple
from urllib.parse import parse_qs

import msgspec

from ..core import MAX_COOL_OFF
from ..http import Reply, Request
from ..model import Operator, OperatorRole
from .security import Gate, header
from .service import AdminError, AdminService

PREFIX = "/admin/api/"
_encode = msgspec.json.Encoder().encode
_JSON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


# --- request bodies (also described in /openapi.json) ------------------------------------------
class CreateAccountBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    role: str = "customer"


class UpdateAccountBody(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool | None = None
    audioWhenCallFail: str | None = None
    audioWhenDtmfNeed: str | None = None
    audioWhenDtmfErr: str | None = None
    callbackUrl: str | None = None
    # The bound is checked by the core's rule (its message, as the CLI's), not by msgspec;
    # the schema only tells clients of it.
    coolOffSeconds: Annotated[int, msgspec.Meta(
        description="After a binding ends, its parties are not given its numbers again for "
                    "this long (0: off)",
        extra_json_schema={"minimum": 0, "maximum": MAX_COOL_OFF})] | None = None


class RotateSecretBody(msgspec.Struct, forbid_unknown_fields=True):
    graceSeconds: int = 3600


class AddNumbersBody(msgspec.Struct, forbid_unknown_fields=True):
    account: str
    numbers: list[str]


class NumbersBody(msgspec.Struct, forbid_unknown_fields=True):
    numbers: list[str]
    force: bool = False


class MoveNumbersBody(msgspec.Struct, forbid_unknown_fields=True):
    numbers: list[str]
    account: str
    force: bool = False


class RecordBody(msgspec.Struct, forbid_unknown_fields=True):
    account: str


# --- answers described in /openapi.json: the number operations report what pns.pool reports
# (`pns numbers ...`'s JSON); test_admin_api.py checks each answer against its shape.
class OwnedNumber(msgspec.Struct, forbid_unknown_fields=True):
    number: str
    account: str


class NumbersAdded(msgspec.Struct, forbid_unknown_fields=True):
    added: int
    alreadyPresent: Annotated[int, msgspec.Meta(
        description="How many the account had already")]
    ownedByOtherAccounts: Annotated[list[OwnedNumber], msgspec.Meta(
        description="Not added: each number with the accessKey of the account that owns it")]


class NumbersRemoved(msgspec.Struct, forbid_unknown_fields=True):
    removed: list[str]
    kept: Annotated[list[str], msgspec.Meta(
        description="Numbers with active bindings, left as they were (without force)")]
    notFound: list[str]


class NumbersDisabled(msgspec.Struct, forbid_unknown_fields=True):
    disabled: list[str]
    notFound: list[str]


class NumbersEnabled(msgspec.Struct, forbid_unknown_fields=True):
    enabled: list[str]
    notFound: list[str]


class NumbersMoved(msgspec.Struct, forbid_unknown_fields=True):
    moved: list[str]
    to: str
    kept: Annotated[list[str], msgspec.Meta(
        description="Numbers with active bindings, left as they were (without force)")]
    notFound: list[str]


class Call(NamedTuple):
    """One admin API request, once authenticated."""

    operator: Operator
    params: dict[str, str]
    query: dict[str, str]
    body: bytes


Handler = Callable[["AdminApi", Call], Awaitable[Any]]


class Route(NamedTuple):
    method: str
    pattern: str
    handler: Handler
    writes: bool
    summary: str
    body: type[msgspec.Struct] | None = None
    query: tuple[str, ...] = ()
    # The answer's shape, for /openapi.json; None: described as any object.
    answer: type[msgspec.Struct] | None = None
    # What a 404 means here, when more than "no such thing".
    not_found: str = "No such thing"


def _decode(body: bytes, shape: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=shape)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise AdminError(400, f"invalid body: {exc}") from None


def _int(query: dict[str, str], name: str, default: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 15:
        raise AdminError(400, f"{name} must be a non-negative integer")
    return int(text)


# --- handlers ------------------------------------------------------------------------------------
async def _me(api: AdminApi, call: Call) -> Any:
    return {"name": call.operator.name, "role": call.operator.role.value}


async def _overview(api: AdminApi, call: Call) -> Any:
    return await api.admin.overview()


async def _accounts(api: AdminApi, call: Call) -> Any:
    return {"accounts": await api.admin.accounts()}


async def _create_account(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, CreateAccountBody)
    created = await api.admin.create_account(body.name, body.role)
    await api.admin.audit(call.operator.name, "account.create", created["accessKey"])
    return created


async def _update_account(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, UpdateAccountBody)
    key = call.params["accessKey"]
    updated = await api.admin.update_account(
        key, enabled=body.enabled, audio_when_call_fail=body.audioWhenCallFail,
        audio_when_dtmf_need=body.audioWhenDtmfNeed, audio_when_dtmf_err=body.audioWhenDtmfErr,
        callback_url=body.callbackUrl, cool_off_seconds=body.coolOffSeconds)
    fields = [f for f in body.__struct_fields__ if getattr(body, f) is not None]
    await api.admin.audit(call.operator.name, "account.update", f"{key} {','.join(fields)}")
    return updated


async def _rotate_secret(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, RotateSecretBody)
    key = call.params["accessKey"]
    rotated = await api.admin.rotate_secret(key, body.graceSeconds)
    await api.admin.audit(call.operator.name, "account.rotate-secret", key)
    return rotated


async def _numbers(api: AdminApi, call: Call) -> Any:
    return {"numbers": await api.admin.numbers(call.query.get("account", ""))}


async def _add_numbers(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, AddNumbersBody)
    added = await api.admin.add_numbers(body.account, body.numbers)
    await api.admin.audit(call.operator.name, "numbers.add",
                          f"{body.account} {added['added']} number(s)")
    return added


async def _import_numbers(api: AdminApi, call: Call) -> Any:
    """One number a line, as a plain-text body (a file upload)."""
    account = call.query.get("account", "")
    try:
        text = call.body.decode()
    except UnicodeDecodeError:
        raise AdminError(400, "the file must be UTF-8 text, one number a line") from None
    added = await api.admin.add_numbers(account, text.splitlines())
    await api.admin.audit(call.operator.name, "numbers.import",
                          f"{account} {added['added']} number(s)")
    return added


def _numbers_change(enabled: bool) -> Handler:
    async def change(api: AdminApi, call: Call) -> Any:
        body = _decode(call.body, NumbersBody)
        changed = await api.admin.set_numbers_enabled(body.numbers, enabled)
        await api.admin.audit(call.operator.name,
                              "numbers.enable" if enabled else "numbers.disable",
                              " ".join(changed["enabled" if enabled else "disabled"]))
        return changed
    return change


async def _move_numbers(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, MoveNumbersBody)
    moved = await api.admin.move_numbers(body.numbers, body.account, body.force)
    await api.admin.audit(call.operator.name, "numbers.move",
                          f"{body.account} {' '.join(moved['moved'])}")
    return moved


async def _remove_numbers(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, NumbersBody)
    removed = await api.admin.remove_numbers(body.numbers, body.force)
    await api.admin.audit(call.operator.name, "numbers.remove", " ".join(removed["removed"]))
    return removed


async def _bindings(api: AdminApi, call: Call) -> Any:
    q = call.query
    return {"bindings": await api.admin.find_bindings(
        number=q.get("number", ""), bind_id=q.get("bindId", ""),
        customer_bind_id=q.get("customerBindId", ""), access_key=q.get("account", ""))}


async def _unbind(api: AdminApi, call: Call) -> Any:
    unbound = await api.admin.unbind(call.params["bindId"])
    await api.admin.audit(call.operator.name, "binding.unbind", call.params["bindId"])
    return unbound


async def _reveal_binding(api: AdminApi, call: Call) -> Any:
    revealed = await api.admin.reveal_binding(call.params["bindId"])
    await api.admin.audit(call.operator.name, "binding.reveal", call.params["bindId"])
    return revealed


async def _records(api: AdminApi, call: Call) -> Any:
    q = call.query
    return await api.admin.records(
        q.get("account", ""), _int(q, "from", 0), _int(q, "to", 0), _int(q, "limit", 100),
        _int(q, "offset", 0))


async def _redeliver(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, RecordBody)
    queued = await api.admin.redeliver(body.account, call.params["callId"])
    await api.admin.audit(call.operator.name, "record.redeliver", call.params["callId"])
    return queued


async def _reveal_record(api: AdminApi, call: Call) -> Any:
    body = _decode(call.body, RecordBody)
    revealed = await api.admin.reveal_record(body.account, call.params["callId"])
    await api.admin.audit(call.operator.name, "record.reveal", call.params["callId"])
    return revealed


async def _deliveries(api: AdminApi, call: Call) -> Any:
    q = call.query
    return {"deliveries": await api.admin.deliveries(
        q.get("state", "failed"), q.get("account", ""), _int(q, "limit", 100))}


async def _retry(api: AdminApi, call: Call) -> Any:
    retried = await api.admin.retry_delivery(call.params["eventId"])
    await api.admin.audit(call.operator.name, "delivery.retry", call.params["eventId"])
    return retried


async def _audit(api: AdminApi, call: Call) -> Any:
    return {"entries": await api.admin.audit_log(min(_int(call.query, "limit", 100), 1000))}


_NONE_FOUND = "None of the numbers exists (nothing was changed)"

ROUTES: tuple[Route, ...] = (
    Route("GET", "me", _me, False, "The operator behind the token and its role"),
    Route("GET", "overview", _overview, False,
          "Pools per account and country, request and error rates, delivery backlog"),
    Route("GET", "accounts", _accounts, False, "Every account (never its secret)"),
    Route("POST", "accounts", _create_account, True,
          "Create an account; the answer holds its accessSecret, shown only here",
          CreateAccountBody),
    Route("PATCH", "accounts/{accessKey}", _update_account, True,
          "Enable or disable an account; set its prompts, callback URL and cool-off",
          UpdateAccountBody),
    Route("POST", "accounts/{accessKey}/rotate-secret", _rotate_secret, True,
          "A new accessSecret; the old one works for graceSeconds more", RotateSecretBody),
    Route("GET", "numbers", _numbers, False,
          "Virtual numbers with owner and active bindings (?account=)", query=("account",)),
    Route("POST", "numbers", _add_numbers, True, "Give numbers to a customer account",
          AddNumbersBody, answer=NumbersAdded, not_found="No such account"),
    Route("POST", "numbers/import", _import_numbers, True,
          "Import a text file, one number a line (?account=); a bad line refuses them all",
          query=("account",), answer=NumbersAdded, not_found="No such account"),
    Route("POST", "numbers/disable", _numbers_change(False), True,
          "Disable numbers: no new bindings on them", NumbersBody, answer=NumbersDisabled,
          not_found=_NONE_FOUND),
    Route("POST", "numbers/enable", _numbers_change(True), True, "Enable numbers again",
          NumbersBody, answer=NumbersEnabled, not_found=_NONE_FOUND),
    Route("POST", "numbers/move", _move_numbers, True,
          "Give numbers to another account (force ends their bindings)", MoveNumbersBody,
          answer=NumbersMoved, not_found="No such account, or " + _NONE_FOUND.lower()),
    Route("POST", "numbers/remove", _remove_numbers, True,
          "Remove numbers (force ends their bindings)", NumbersBody, answer=NumbersRemoved,
          not_found=_NONE_FOUND),
    Route("GET", "bindings", _bindings, False,
          "Active bindings by number (X or party), bindId or customerBindId; parties masked",
          query=("number", "bindId", "customerBindId", "account")),
    Route("DELETE", "bindings/{bindId}", _unbind, True, "End a binding now"),
    Route("POST", "bindings/{bindId}/reveal", _reveal_binding, True,
          "The binding with its parties' real numbers (admins only; audited)"),
    Route("GET", "records", _records, False,
          "An account's call records by time (?account=&from=&to=), with delivery state",
          query=("account", "from", "to", "limit", "offset")),
    Route("POST", "records/{callId}/redeliver", _redeliver, True,
          "Queue one more delivery of a call record", RecordBody),
    Route("POST", "records/{callId}/reveal", _reveal_record, True,
          "The record with the parties' real numbers (admins only; audited)", RecordBody),
    Route("GET", "deliveries", _deliveries, False,
          "Callback events by state (?state=failed|pending|delivered&account=)",
          query=("state", "account", "limit")),
    Route("POST", "deliveries/{eventId}/retry", _retry, True,
          "Deliver an undelivered event again, from now"),
    Route("GET", "audit", _audit, False, "What operators changed or revealed, newest first",
          query=("limit",)),
)


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[A-Za-z0-9_.:+-]{1,128})", pattern)
    return re.compile(regex)


_COMPILED = [(_compile(route.pattern), route) for route in ROUTES]


def json_reply(status: int, data: Any) -> Reply:
    return Reply(status, _encode(data), "application/json", _JSON_HEADERS)


def error(status: int, message: str) -> Reply:
    return json_reply(status, {"error": message})


def parse_query(query: str) -> dict[str, str]:
    """The first value of each parameter."""
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}


class AdminApi:
    def __init__(self, admin: AdminService, gate: Gate):
        self.admin = admin
        self.gate = gate

    async def __call__(self, request: Request) -> Reply:
        rest = request.path[len(PREFIX):]
        matched = [(m, r) for regex, r in _COMPILED if (m := regex.fullmatch(rest))]
        if not matched:
            return error(404, "no such admin API path")
        allowed = [(m, r) for m, r in matched if r.method == request.method]
        if not allowed:
            return error(405, "method not allowed here")
        match, route = allowed[0]
        address = self.gate.client_address(request.client, request.headers)
        if self.gate.blocked(address):
            return error(429, "too many wrong tokens from this address; try again later")
        scheme, _, token = header(request.headers, "authorization").partition(" ")
        if scheme.lower() != "bearer":
            return error(401, "an Authorization: Bearer token is required")
        operator = await self.gate.operator_for_token(token.strip(), address)
        if operator is None:
            return error(401, "unknown or disabled operator token")
        if route.writes and operator.role is not OperatorRole.ADMIN:
            return error(403, "a viewer may not change anything")
        call = Call(operator, match.groupdict(), parse_query(request.query), request.body)
        try:
            data = await route.handler(self, call)
        except AdminError as exc:
            return error(exc.status, str(exc))
        return json_reply(201 if route.method == "POST" and route.pattern == "accounts"
                          else 200, data)
