"""The operator's view of the service: what the admin API answers and the console shows.

Knows nothing of HTTP. Each method returns JSON-ready data (the admin API's shapes), so the
API and the console show the same thing. Real numbers of parties are masked to their last
four digits everywhere except in ``reveal_*``, which the caller must allow only to admins and
must audit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import pool
from ..callbacks import record_fields
from ..core import LIST_MAX, Service, check_cool_off
from ..errors import PnsError
from ..model import (
    Account,
    AccountChanges,
    AuditEntry,
    Binding,
    CallRecord,
    EventState,
    OutboxEvent,
    Role,
)
from ..numbers import parse_international
from ..wire import binding_item
from .rates import RateHistory

log = logging.getLogger("pns.admin")

MAX_NUMBERS_PER_REQUEST = 100_000
MAX_NAME = 128
MAX_PROMPT = 512
MAX_URL = 2048
SEARCH_LIMIT = 200


class AdminError(Exception):
    """A refusal with the HTTP status the admin API answers it with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def mask(number: str) -> str:
    """A party's number with all but its last four digits hidden."""
    if len(number) <= 4:
        return "*" * len(number)
    return "*" * (len(number) - 4) + number[-4:]


def _new_access_key() -> str:
    from ..cli import new_access_key

    return new_access_key()


def _new_access_secret() -> str:
    from ..cli import new_access_secret

    return new_access_secret()


def account_json(account: Account) -> dict[str, Any]:
    """An account without its secrets."""
    return {
        "id": account.id, "name": account.name, "role": account.role.value,
        "accessKey": account.access_key, "enabled": account.enabled,
        "audioWhenCallFail": account.audio_when_call_fail,
        "audioWhenDtmfNeed": account.audio_when_dtmf_need,
        "audioWhenDtmfErr": account.audio_when_dtmf_err,
        "callbackUrl": account.callback_url, "coolOffSeconds": account.cool_off_seconds,
        "createdAt": account.created_at,
    }


def event_json(event: OutboxEvent, accounts: dict[int, Account]) -> dict[str, Any]:
    owner = accounts.get(event.account_id)
    return {
        "eventId": event.event_id, "account": owner.access_key if owner else "",
        "kind": event.kind, "callId": event.call_id, "state": event.state.value,
        "attempts": event.attempts, "createdAt": event.created_at,
        "nextAttemptAt": event.next_attempt_at, "lastError": event.last_error,
    }


class AdminService:
    def __init__(self, service: Service, rates: RateHistory | None = None,
                 clock: Callable[[], float] = time.time):
        self.service = service
        self.store = service.store
        self.rates = rates
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock())

    async def _accounts_by_id(self) -> dict[int, Account]:
        return {a.id: a for a in await self.store.list_accounts()}

    async def _account(self, access_key: str, *, customer: bool = False) -> Account:
        account = await self.store.get_account(access_key) if access_key else None
        if account is None:
            raise AdminError(404, f"no account with accessKey {access_key!r}")
        if customer and account.role is not Role.CUSTOMER:
            raise AdminError(400, "only customer accounts own numbers and bindings")
        return account

    # --- audit ---------------------------------------------------------------------------------
    async def audit(self, operator: str, action: str, target: str) -> None:
        """Log and keep what an operator did (writes and reveals). Targets name ids and
        accounts, never a party's number."""
        log.info("operator=%s action=%s target=%s", operator, action, target)
        await self.store.add_audit(AuditEntry(self._now(), operator, action, target[:500]))

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return [{"id": e.id, "at": e.at, "operator": e.operator, "action": e.action,
                 "target": e.target} for e in await self.store.list_audit(limit)]

    # --- overview ------------------------------------------------------------------------------
    async def overview(self) -> dict[str, Any]:
        now = self._now()
        accounts = await self._accounts_by_id()
        pools = []
        for usage in await self.store.pool_usage(now):
            owner = accounts.get(usage.account_id)
            pools.append({
                "account": owner.access_key if owner else str(usage.account_id),
                "accountName": owner.name if owner else "",
                "countryCode": usage.country_code, "numbers": usage.numbers,
                "enabled": usage.enabled, "activeBindings": usage.active_bindings,
                "freeNumbers": usage.free_numbers,
                "numbersInUse": usage.enabled - usage.free_numbers,
                "fullestX": usage.fullest_x, "fullestXBindings": usage.fullest_x_bindings,
                "busiestPartyBindings": usage.busiest_party_bindings,
                "headroom": usage.headroom_busiest,
            })
        pending, oldest = await self.store.outbox_backlog(now)
        counts = await self.store.outbox_counts()
        series = self.rates.series(now) if self.rates is not None else []
        last_hour = [{"minute": minute, "requests": requests, "errors": errors}
                     for minute, requests, errors in series]
        return {
            "now": now,
            "accounts": len(accounts),
            "pools": pools,
            "rates": {
                "perMinute": last_hour,
                "requestsLastHour": sum(m["requests"] for m in last_hour),
                "errorsLastHour": sum(m["errors"] for m in last_hour),
            },
            "deliveries": {
                "pending": pending, "oldestPendingAgeSeconds": oldest,
                "failed": counts[EventState.FAILED],
                "delivered": counts[EventState.DELIVERED],
            },
        }

    # --- accounts ------------------------------------------------------------------------------
    async def accounts(self) -> list[dict[str, Any]]:
        return [account_json(a) for a in await self.store.list_accounts()]

    async def create_account(self, name: str, role: str) -> dict[str, Any]:
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise AdminError(400, f"name must be 1 to {MAX_NAME} characters")
        try:
            account_role = Role(role)
        except ValueError:
            raise AdminError(400, "role must be customer or switch") from None
        account = await self.store.create_account(
            name, account_role, _new_access_key(), _new_access_secret(), self._now())
        return {**account_json(account), "accessSecret": account.access_secret}

    async def update_account(
        self, access_key: str, *, enabled: bool | None = None,
        audio_when_call_fail: str | None = None, audio_when_dtmf_need: str | None = None,
        audio_when_dtmf_err: str | None = None, callback_url: str | None = None,
        cool_off_seconds: int | None = None,
    ) -> dict[str, Any]:
        await self._account(access_key)
        if cool_off_seconds is not None:
            try:
                check_cool_off(cool_off_seconds)
            except PnsError as exc:
                raise AdminError(400, exc.msg) from None
        for prompt in (audio_when_call_fail, audio_when_dtmf_need, audio_when_dtmf_err):
            if prompt is not None and len(prompt) > MAX_PROMPT:
                raise AdminError(400, f"a prompt is at most {MAX_PROMPT} characters")
        if callback_url and (len(callback_url) > MAX_URL
                             or not callback_url.startswith(("http://", "https://"))):
            raise AdminError(400, "callbackUrl must be an http:// or https:// URL")
        changes = AccountChanges(
            enabled=enabled, audio_when_call_fail=audio_when_call_fail,
            audio_when_dtmf_need=audio_when_dtmf_need, audio_when_dtmf_err=audio_when_dtmf_err,
            callback_url=callback_url, cool_off_seconds=cool_off_seconds)
        account = await self.store.update_account(access_key, changes)
        assert account is not None
        return account_json(account)

    async def rotate_secret(self, access_key: str, grace: int) -> dict[str, Any]:
        current = await self._account(access_key)
        if not 0 <= grace <= 30 * 86400:
            raise AdminError(400, "graceSeconds must be from 0 to 30 days")
        account = await self.store.update_account(access_key, AccountChanges(
            access_secret=_new_access_secret(), previous_secret=current.access_secret,
            previous_secret_until=self._now() + grace))
        assert account is not None
        return {**account_json(account), "accessSecret": account.access_secret,
                "previousSecretValidUntil": account.previous_secret_until}

    # --- numbers -------------------------------------------------------------------------------
    async def numbers(self, access_key: str = "") -> list[dict[str, Any]]:
        account_id = (await self._account(access_key)).id if access_key else None
        accounts = await self._accounts_by_id()
        return [
            {"number": u.x, "account": accounts[u.account_id].access_key
             if u.account_id in accounts else "", "countryCode": u.country_code,
             "enabled": u.enabled, "activeBindings": u.active_bindings}
            for u in await self.store.list_numbers(account_id, self._now())
        ]

    @staticmethod
    def _texts(raw: Sequence[str]) -> list[str]:
        """The request's numbers, blank lines and ``#`` comments left out (a file upload),
        bounded so one request cannot hold the store for long."""
        texts = [t.strip() for t in raw if t.strip() and not t.strip().startswith("#")]
        if not texts:
            raise AdminError(400, "no numbers given")
        if len(texts) > MAX_NUMBERS_PER_REQUEST:
            raise AdminError(400, f"at most {MAX_NUMBERS_PER_REQUEST} numbers at once")
        return texts

    async def add_numbers(self, access_key: str, raw: Sequence[str]) -> dict[str, Any]:
        """``pool.add_numbers``'s report, as ``pns numbers add``/``import`` print it: a
        number another account owns is named with its owner, and the answer is still 200
        (the others were added), as the CLI still adds them."""
        try:
            parsed = pool.parse_for_add(self._texts(raw))
            owner = await self._account(access_key)
            return await pool.add_numbers(self.store, owner, parsed)
        except pool.PoolRefusal as exc:
            raise AdminError(400, str(exc)) from None

    @staticmethod
    def _matched(change: pool.Change) -> dict[str, Any]:
        """The report of a change that found a number; 404 when it found none, as the CLI
        fails then (``notFound`` alone would read as a success)."""
        if change.nothing_found:
            raise AdminError(404, change.nothing_message())
        return change.report

    async def set_numbers_enabled(self, raw: Sequence[str], enabled: bool) -> dict[str, Any]:
        return self._matched(await pool.set_numbers_enabled(self.store, self._texts(raw),
                                                            enabled))

    async def move_numbers(self, raw: Sequence[str], to_access_key: str,
                           force: bool) -> dict[str, Any]:
        target = await self._account(to_access_key)
        try:
            change = await pool.move_numbers(self.store, self._texts(raw), target, force,
                                             self._now())
        except pool.PoolRefusal as exc:
            raise AdminError(400, str(exc)) from None
        return self._matched(change)

    async def remove_numbers(self, raw: Sequence[str], force: bool) -> dict[str, Any]:
        return self._matched(await pool.remove_numbers(self.store, self._texts(raw), force,
                                                       self._now()))

    # --- bindings ------------------------------------------------------------------------------
    def _binding_json(self, binding: Binding, accounts: dict[int, Account],
                      reveal: bool = False) -> dict[str, Any]:
        item = binding_item(binding)
        owner = accounts.get(binding.account_id)
        item["account"] = owner.access_key if owner else ""
        item["createdAt"] = binding.created_at
        if not reveal:
            item["phoneA"] = mask(binding.a)
            item["phoneB"] = mask(binding.b) if binding.b else ""
        return item

    async def find_bindings(self, number: str = "", bind_id: str = "",
                            customer_bind_id: str = "", access_key: str = ""
                            ) -> list[dict[str, Any]]:
        now = self._now()
        found: list[Binding] = []
        if bind_id:
            binding = await self.store.get_binding(bind_id.strip(), now)
            found = [binding] if binding else []
        elif customer_bind_id:
            owners = ([await self._account(access_key)] if access_key
                      else list((await self._accounts_by_id()).values()))
            for owner in owners:
                binding = await self.store.find_by_customer_bind_id(
                    owner.id, customer_bind_id.strip(), now)
                if binding is not None:
                    found.append(binding)
        elif number:
            parsed = parse_international(number)
            digits = parsed.digits if parsed else "".join(c for c in number if c.isdigit())
            if not digits:
                raise AdminError(400, "number must be digits with the country code")
            found = await self.store.find_bindings_by_number(digits, now, SEARCH_LIMIT)
        else:
            raise AdminError(400, "give number, bindId or customerBindId")
        if access_key:
            owner = await self._account(access_key)
            found = [b for b in found if b.account_id == owner.id]
        accounts = await self._accounts_by_id()
        return [self._binding_json(b, accounts) for b in found]

    async def _active_binding(self, bind_id: str) -> Binding:
        binding = await self.store.get_binding(bind_id, self._now()) if bind_id else None
        if binding is None:
            raise AdminError(404, "no active binding with this bindId")
        return binding

    async def unbind(self, bind_id: str) -> dict[str, Any]:
        binding = await self._active_binding(bind_id)
        if not await self.store.delete_binding(binding.bind_id):
            raise AdminError(404, "no active binding with this bindId")
        return {"unbound": binding.bind_id}

    async def reveal_binding(self, bind_id: str) -> dict[str, Any]:
        binding = await self._active_binding(bind_id)
        return self._binding_json(binding, await self._accounts_by_id(), reveal=True)

    # --- call records --------------------------------------------------------------------------
    def _record_json(self, record: CallRecord, events: list[OutboxEvent],
                     reveal: bool = False) -> dict[str, Any]:
        item = record_fields(record)
        if not reveal:
            item["caller"] = mask(record.caller)
            item["callee"] = mask(record.callee)
        latest = events[-1] if events else None
        item["delivery"] = None if latest is None else {
            "eventId": latest.event_id, "state": latest.state.value,
            "attempts": latest.attempts, "lastError": latest.last_error,
            "deliveries": len(events),
        }
        return item

    async def records(self, access_key: str, start_from: int = 0, start_to: int = 0,
                      limit: int = 100, offset: int = 0) -> dict[str, Any]:
        account = await self._account(access_key)
        if not 1 <= limit <= LIST_MAX or offset < 0 or start_from < 0 or start_to < 0:
            raise AdminError(400, "limit is 1 to 1000; offset and times are >= 0")
        records, total = await self.store.list_call_records(
            account.id, start_from, start_to or 2**62, "", limit, offset)
        events: dict[str, list[OutboxEvent]] = {}
        for event in await self.store.events_for_calls([r.call_id for r in records]):
            events.setdefault(event.call_id, []).append(event)
        return {"records": [self._record_json(r, events.get(r.call_id, [])) for r in records],
                "total": total}

    async def _record(self, access_key: str, call_id: str) -> tuple[Account, CallRecord]:
        account = await self._account(access_key)
        record = await self.store.get_call_record(account.id, call_id) if call_id else None
        if record is None:
            raise AdminError(404, "no call record with this callId for this account")
        return account, record

    async def reveal_record(self, access_key: str, call_id: str) -> dict[str, Any]:
        _, record = await self._record(access_key, call_id)
        return self._record_json(record, await self.store.events_for_calls([call_id]),
                                 reveal=True)

    async def redeliver(self, access_key: str, call_id: str) -> dict[str, Any]:
        account, _ = await self._record(access_key, call_id)
        try:
            event_id = await self.service.redeliver(account, call_id, self._now())
        except PnsError as exc:
            raise AdminError(409, exc.msg) from None
        return {"eventId": event_id, "callId": call_id}

    # --- deliveries ----------------------------------------------------------------------------
    async def deliveries(self, state: str = "failed", access_key: str = "",
                         limit: int = 100) -> list[dict[str, Any]]:
        try:
            wanted = EventState(state) if state else None
        except ValueError:
            raise AdminError(400, "state must be pending, delivered or failed") from None
        if not 1 <= limit <= LIST_MAX:
            raise AdminError(400, "limit is 1 to 1000")
        account_id = (await self._account(access_key)).id if access_key else None
        accounts = await self._accounts_by_id()
        return [event_json(e, accounts)
                for e in await self.store.list_events(account_id, wanted, limit)]

    async def retry_delivery(self, event_id: str) -> dict[str, Any]:
        event = await self.store.requeue_event(event_id, self._now()) if event_id else None
        if event is None:
            raise AdminError(404, "no undelivered event with this eventId")
        self.service.on_event()
        return event_json(event, await self._accounts_by_id())
