"""The console's pages: login with a token, then one page per task, each a plain HTML form.

Every page carries the Content-Security-Policy (scripts and styles only from pns's own files),
every form a CSRF token, and every change needs an admin; a viewer sees no write buttons and is
refused (403) if it posts one anyway. POSTs answer with a redirect back to the page they came
from (303), except those that show a secret once (a new account, a rotated secret) or a
revealed number.
"""

from __future__ import annotations

import calendar
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2

from ..admin.api import parse_query
from ..admin.security import (
    LOGIN_CSRF_COOKIE,
    PAGE_HEADERS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Gate,
    Session,
    header,
    parse_cookies,
)
from ..admin.service import AdminError, AdminService
from ..http import Reply, Request
from ..model import OperatorRole
from .charts import rate_chart, usage_percent

log = logging.getLogger("pns.console")
HTML = "text/html; charset=utf-8"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml"}
NOTICES = {
    "unbound": "The binding was ended.",
    "redelivered": "One more delivery of the record was queued.",
    "retried": "The event will be delivered again now.",
    "account-updated": "The account was updated.",
    "numbers-added": "The numbers were added.",
    "numbers-disabled": "The numbers were disabled.",
    "numbers-enabled": "The numbers were enabled.",
    "numbers-moved": "The numbers were moved.",
    "numbers-removed": "The numbers were removed.",
}


def _format_time(epoch: int) -> str:
    if not epoch:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + " UTC"


# The last second of the year 9999: a time field beyond it is a typo, and a bigger number
# would overflow the stores' 64-bit integers (SQLite raises OverflowError).
MAX_TIME = 253_402_300_799


def _parse_local_time(text: str, field: str) -> int:
    """A ``datetime-local`` field (read as UTC) or epoch seconds; 0 when empty. Anything else,
    or a time past ``MAX_TIME``, is a 400 naming the field, never an error deeper down."""
    text = text.strip()
    if not text:
        return 0
    if text.isascii() and text.isdigit():
        if len(text) > len(str(MAX_TIME)) or int(text) > MAX_TIME:
            raise AdminError(400, f"{field}: {text[:20]!r} is too far ahead (epoch seconds "
                                  "up to the year 9999)")
        return int(text)
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(text, fmt))
        except ValueError:
            continue
    raise AdminError(400, f"{field}: not a time: {text[:40]!r} (use YYYY-MM-DDTHH:MM, UTC)")


def _parse_seconds(text: str, field: str) -> int | None:
    """A whole number of seconds from a form; None when empty (the setting is left as it is).
    Long digit strings are not converted (the core's bound refuses them anyway)."""
    text = text.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise AdminError(400, f"{field} must be whole seconds")
    return int(text) if len(text) <= 15 else 10**15


def _load_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("pns.console").joinpath("static")
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])
    return files


def _safe_next(target: str, default: str) -> str:
    """Only back to a console page of this site: never an open redirect, and nothing that
    could end the Location header (no controls, spaces or non-ASCII)."""
    if (target.startswith("/console/") and "//" not in target and "\\" not in target
            and target.isascii() and target.isprintable() and " " not in target):
        return target
    return default


View = Callable[["Console", Request, Session, dict[str, str]], Awaitable[Reply]]


class Console:
    def __init__(self, admin: AdminService, gate: Gate):
        self.admin = admin
        self.gate = gate
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("pns.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined,
        )
        self.env.filters["time"] = _format_time
        self.static = _load_static()
        self._pages: dict[str, View] = {
            "/console/": Console._overview,
            "/console/accounts": Console._accounts,
            "/console/numbers": Console._numbers,
            "/console/bindings": Console._bindings,
            "/console/records": Console._records,
            "/console/deliveries": Console._deliveries,
            "/console/audit": Console._audit,
        }

    # --- responses ---------------------------------------------------------------------------
    def page(self, status: int, template: str, session: Session | None,
             headers: tuple[tuple[str, str], ...] = (), **context: Any) -> Reply:
        html = self.env.get_template(template).render(
            operator=session.operator if session else None,
            is_admin=bool(session and session.operator.role is OperatorRole.ADMIN),
            csrf=session.csrf if session else "", notice=context.pop("notice", ""),
            **context)
        return Reply(status, html.encode(), HTML, PAGE_HEADERS + headers)

    @staticmethod
    def redirect(location: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return Reply(303, b"", HTML, (("Location", location), *PAGE_HEADERS, *headers))

    def failure(self, session: Session | None, status: int, message: str,
                back: str = "/console/") -> Reply:
        return self.page(status, "error.html", session, message=message, back=back,
                         title="Refused" if status in (401, 403) else "Error")

    # --- dispatch ----------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Reply:
        """Every answer of the console is one of its pages, with its headers: an error no
        view expected is logged here and shown as a plain error page, never the HTTP layer's
        JSON fault (which carries no CSP)."""
        try:
            return await self._dispatch(request)
        except Exception:
            log.exception("console: unexpected error answering %s %s", request.method,
                          request.path)
            return self.failure(None, 500, "Something went wrong on the server; its log has "
                                "the details. Try again, or go back.")

    async def _dispatch(self, request: Request) -> Reply:
        path = request.path
        if path == "/console":
            return self.redirect("/console/")
        if path.startswith("/console/static/"):
            return self._static(request, path[len("/console/static/"):])
        if path == "/console/login":
            return await self._login(request)
        session = await self.gate.session(header(request.headers, "cookie"))
        if request.method in ("GET", "HEAD"):
            if session is None:
                return self.redirect("/console/login")
            view = self._pages.get(path)
            if view is None:
                return self.failure(session, 404, "There is no such page.")
            query = parse_query(request.query)
            try:
                return await view(self, request, session, query)
            except AdminError as exc:
                return self.failure(session, exc.status, str(exc))
        if request.method != "POST":
            return self.failure(session, 405, "Method not allowed.")
        if session is None:
            return self.failure(None, 401, "Your session has ended: log in again.",
                                "/console/login")
        form = _form(request.body)
        if not session.csrf_ok(form.get("csrf", "")):
            return self.failure(session, 403, "The form's CSRF token is missing or wrong: "
                                "reload the page and try again.")
        if path == "/console/logout":
            await self.gate.end_sessions(session)
            return self.redirect("/console/login", (self._clear(SESSION_COOKIE, request),))
        if session.operator.role is not OperatorRole.ADMIN:
            return self.failure(session, 403, "A viewer may not change anything.")
        back = _safe_next(form.get("next", ""), "/console/")
        try:
            return await self._post(request, session, path, form, back)
        except AdminError as exc:
            return self.failure(session, exc.status, str(exc), back)

    def _static(self, request: Request, name: str) -> Reply:
        if request.method not in ("GET", "HEAD") or name not in self.static:
            return self.failure(None, 404, "There is no such file.")
        body, content_type = self.static[name]
        return Reply(200, body, content_type,
                     (("Cache-Control", "max-age=300"), ("X-Content-Type-Options", "nosniff")))

    def _secure(self, request: Request) -> bool:
        return self.gate.over_tls(request.client, request.headers)

    def _clear(self, name: str, request: Request) -> tuple[str, str]:
        return self.gate.cookie(name, "", self._secure(request), 0)

    # --- login -------------------------------------------------------------------------------
    def _login_page(self, request: Request, status: int, message: str = "") -> Reply:
        nonce = secrets.token_urlsafe(24)
        cookie = self.gate.cookie(LOGIN_CSRF_COOKIE, nonce, self._secure(request), 3600)
        return self.page(status, "login.html", None, (cookie,), login_csrf=nonce,
                         message=message)

    async def _login(self, request: Request) -> Reply:
        if request.method in ("GET", "HEAD"):
            return self._login_page(request, 200)
        if request.method != "POST":
            return self.failure(None, 405, "Method not allowed.", "/console/login")
        form = _form(request.body)
        expected = parse_cookies(header(request.headers, "cookie")).get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, form.get("csrf", "")):
            return self._login_page(request, 403, "The form expired: please try again.")
        address = self.gate.client_address(request.client, request.headers)
        if self.gate.blocked(address):
            return self._login_page(request, 429, "Too many wrong tokens from your address: "
                                    "wait a few minutes and try again.")
        operator = await self.gate.operator_for_token(form.get("token", "").strip(), address)
        if operator is None:
            return self._login_page(request, 401, "That token is not valid.")
        secure = self._secure(request)
        session = self.gate.cookie(SESSION_COOKIE, self.gate.new_session_cookie(operator),
                                   secure, SESSION_SECONDS)
        return self.redirect("/console/", (session, self._clear(LOGIN_CSRF_COOKIE, request)))

    # --- pages -------------------------------------------------------------------------------
    def _notice(self, query: dict[str, str]) -> str:
        return NOTICES.get(query.get("notice", ""), "")

    async def _overview(self, request: Request, session: Session,
                        query: dict[str, str]) -> Reply:
        overview = await self.admin.overview()
        for pool in overview["pools"]:
            pool["inUsePercent"] = usage_percent(pool["numbersInUse"], pool["enabled"])
            pool["busiestPercent"] = usage_percent(pool["busiestPartyBindings"],
                                                   pool["enabled"])
        return self.page(200, "overview.html", session, overview=overview,
                         chart=rate_chart(overview["rates"]["perMinute"]), page="overview",
                         notice=self._notice(query))

    async def _accounts(self, request: Request, session: Session,
                        query: dict[str, str]) -> Reply:
        return self.page(200, "accounts.html", session, accounts=await self.admin.accounts(),
                         page="accounts", notice=self._notice(query), secret=None)

    async def _numbers(self, request: Request, session: Session,
                       query: dict[str, str], notice: str = "") -> Reply:
        account = query.get("account", "")
        return self.page(200, "numbers.html", session,
                         numbers=await self.admin.numbers(account), account=account,
                         accounts=await self.admin.accounts(), page="numbers",
                         notice=notice or self._notice(query),
                         here="/console/numbers?" + urlencode({"account": account}))

    async def _bindings(self, request: Request, session: Session,
                        query: dict[str, str], revealed: dict[str, Any] | None = None
                        ) -> Reply:
        number = query.get("number", "")
        bind_id = query.get("bindId", "")
        customer_bind_id = query.get("customerBindId", "")
        account = query.get("account", "")
        searched = bool(number or bind_id or customer_bind_id)
        found = await self.admin.find_bindings(number, bind_id, customer_bind_id, account) \
            if searched else []
        here = "/console/bindings?" + urlencode(
            {k: v for k, v in (("number", number), ("bindId", bind_id),
                               ("customerBindId", customer_bind_id), ("account", account))
             if v})
        return self.page(200, "bindings.html", session, bindings=found, searched=searched,
                         number=number, bind_id=bind_id, customer_bind_id=customer_bind_id,
                         account=account, revealed=revealed, page="bindings",
                         notice=self._notice(query), here=here)

    async def _records(self, request: Request, session: Session,
                       query: dict[str, str], revealed: dict[str, Any] | None = None
                       ) -> Reply:
        account = query.get("account", "")
        start, end = query.get("from", ""), query.get("to", "")
        result, error, start_at, end_at = None, "", 0, 0
        try:
            start_at, end_at = _parse_local_time(start, "from"), _parse_local_time(end, "to")
        except AdminError as exc:  # shown above the filter, which keeps what was typed
            error = str(exc)
        if account and not error:
            result = await self.admin.records(account, start_at, end_at, 200, 0)
        here = "/console/records?" + urlencode(
            {k: v for k, v in (("account", account), ("from", start), ("to", end)) if v})
        return self.page(400 if error else 200, "records.html", session, result=result,
                         account=account, start=start, end=end, error=error,
                         accounts=await self.admin.accounts(), revealed=revealed,
                         page="records", notice=self._notice(query), here=here)

    async def _deliveries(self, request: Request, session: Session,
                          query: dict[str, str]) -> Reply:
        state = query.get("state", "failed")
        account = query.get("account", "")
        events = await self.admin.deliveries(state, account, 200)
        here = "/console/deliveries?" + urlencode(
            {k: v for k, v in (("state", state), ("account", account)) if v})
        return self.page(200, "deliveries.html", session, events=events, state=state,
                         account=account, page="deliveries", notice=self._notice(query),
                         here=here)

    async def _audit(self, request: Request, session: Session,
                     query: dict[str, str]) -> Reply:
        return self.page(200, "audit.html", session, entries=await self.admin.audit_log(200),
                         page="audit", notice="")

    # --- changes (admins only; CSRF checked) -------------------------------------------------
    async def _post(self, request: Request, session: Session, path: str,
                    form: dict[str, str], back: str) -> Reply:
        who = session.operator.name
        admin = self.admin
        parts = path.removeprefix("/console/").split("/")
        if parts == ["accounts"]:
            created = await admin.create_account(form.get("name", ""),
                                                 form.get("role", "customer"))
            await admin.audit(who, "account.create", created["accessKey"])
            return self.page(200, "accounts.html", session, accounts=await admin.accounts(),
                             page="accounts", notice="", secret=created)
        if len(parts) == 3 and parts[0] == "accounts":
            key, op = parts[1], parts[2]
            if op == "rotate":
                grace = form.get("grace", "3600")
                if not grace.isdigit():
                    raise AdminError(400, "the grace period is whole seconds")
                rotated = await admin.rotate_secret(key, int(grace))
                await admin.audit(who, "account.rotate-secret", key)
                return self.page(200, "accounts.html", session,
                                 accounts=await admin.accounts(), page="accounts",
                                 notice="", secret=rotated)
            if op in ("enable", "disable"):
                await admin.update_account(key, enabled=op == "enable")
            elif op == "settings":
                await admin.update_account(
                    key, audio_when_call_fail=form.get("audioWhenCallFail", ""),
                    audio_when_dtmf_need=form.get("audioWhenDtmfNeed", ""),
                    audio_when_dtmf_err=form.get("audioWhenDtmfErr", ""),
                    callback_url=form.get("callbackUrl", ""),
                    cool_off_seconds=_parse_seconds(form.get("coolOffSeconds", ""),
                                                    "coolOffSeconds"))
            else:
                raise AdminError(404, "no such change")
            await admin.audit(who, "account.update", f"{key} {op}")
            return self.redirect(_with_notice(back, "account-updated"))
        if parts == ["numbers"]:
            return await self._numbers_change(request, session, form, back)
        if len(parts) == 3 and parts[0] == "bindings":
            bind_id, op = parts[1], parts[2]
            if op == "unbind":
                await admin.unbind(bind_id)
                await admin.audit(who, "binding.unbind", bind_id)
                return self.redirect(_with_notice(back, "unbound"))
            if op == "reveal":
                revealed = await admin.reveal_binding(bind_id)
                await admin.audit(who, "binding.reveal", bind_id)
                return await self._bindings(request, session, parse_query(
                    back.partition("?")[2]), revealed=revealed)
        if len(parts) == 3 and parts[0] == "records":
            call_id, op = parts[1], parts[2]
            account = form.get("account", "")
            if op == "redeliver":
                await admin.redeliver(account, call_id)
                await admin.audit(who, "record.redeliver", call_id)
                return self.redirect(_with_notice(back, "redelivered"))
            if op == "reveal":
                revealed = await admin.reveal_record(account, call_id)
                await admin.audit(who, "record.reveal", call_id)
                return await self._records(request, session, parse_query(
                    back.partition("?")[2]), revealed=revealed)
        if len(parts) == 3 and parts[0] == "deliveries" and parts[2] == "retry":
            await admin.retry_delivery(parts[1])
            await admin.audit(who, "delivery.retry", parts[1])
            return self.redirect(_with_notice(back, "retried"))
        raise AdminError(404, "There is no such change.")

    async def _numbers_change(self, request: Request, session: Session, form: dict[str, str],
                              back: str) -> Reply:
        """Apply a change and tell what it did as the CLI and the admin API report it. A
        change that found no number is refused (404, the error page); one that found some
        but not all, kept some or met another account's numbers shows the page with those
        named (a notice built here from the answer, never from the URL), a clean one
        redirects with a fixed notice."""
        admin, who = self.admin, session.operator.name
        op = form.get("op", "")
        numbers = form.get("numbers", "").replace(",", "\n").splitlines()
        force = form.get("force", "") == "on"
        if op == "add":
            account = form.get("account", "")
            added = await admin.add_numbers(account, numbers)
            await admin.audit(who, "numbers.add", f"{account} {added['added']} number(s)")
            return await self._numbers_outcome(request, session, back, "numbers-added",
                                               added_details(added))
        if op in ("disable", "enable"):
            changed = await admin.set_numbers_enabled(numbers, op == "enable")
            await admin.audit(who, f"numbers.{op}", " ".join(changed[f"{op}d"]))
            return await self._numbers_outcome(request, session, back, f"numbers-{op}d",
                                               change_details(changed, f"{op}d"))
        if op == "move":
            moved = await admin.move_numbers(numbers, form.get("account", ""), force)
            await admin.audit(who, "numbers.move", f"{moved['to']} {' '.join(moved['moved'])}")
            return await self._numbers_outcome(request, session, back, "numbers-moved",
                                               change_details(moved, "moved"))
        if op == "remove":
            removed = await admin.remove_numbers(numbers, force)
            await admin.audit(who, "numbers.remove", " ".join(removed["removed"]))
            return await self._numbers_outcome(request, session, back, "numbers-removed",
                                               change_details(removed, "removed"))
        raise AdminError(400, "choose what to do with the numbers")

    async def _numbers_outcome(self, request: Request, session: Session, back: str,
                               notice: str, details: str) -> Reply:
        if not details:
            return self.redirect(_with_notice(back, notice))
        return await self._numbers(request, session, parse_query(back.partition("?")[2]),
                                   notice=details)


def _listed(numbers: list[str]) -> str:
    """At most ten numbers, and how many more: a notice stays one readable line."""
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return ", ".join(numbers[:10]) + more


def added_details(added: dict[str, Any]) -> str:
    """What an add did beyond adding: the numbers the account had, and those another account
    owns (with the owner, so the operator knows which to move)."""
    parts = [f"{added['added']} added."]
    if added["alreadyPresent"]:
        parts.append(f"{added['alreadyPresent']} the account had already.")
    others = added["ownedByOtherAccounts"]
    if others:
        parts.append("Not added, owned by another account: " + _listed(
            [f"{o['number']} (account {o['account']})" for o in others])
            + " (Move gives a number to another account).")
    return " ".join(parts) if len(parts) > 1 else ""


def change_details(report: dict[str, Any], done: str) -> str:
    """How many numbers a remove, disable, enable or move changed (``done``: the report's
    key for them), and those it kept or did not find; empty when it did what was asked
    with every number."""
    parts = [f"{len(report[done])} {done}."]
    if report.get("kept"):
        parts.append(f"Kept, with active bindings (tick force to end them): "
                     f"{_listed(report['kept'])}.")
    if report["notFound"]:
        parts.append(f"Not found: {_listed(report['notFound'])}.")
    return " ".join(parts) if len(parts) > 1 else ""


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _with_notice(target: str, notice: str) -> str:
    path, _, query = target.partition("?")
    params = [(k, v) for k, v in parse_query(query).items() if k != "notice"]
    return f"{path}?{urlencode([*params, ('notice', notice)])}"
