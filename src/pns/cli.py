"""The ``pns`` command line: serve, and the operator's accounts and numbers.

Every command takes ``--store URL`` (before or after its own arguments); the default is
``sqlite:///./pns.db``, overridden by ``PNS_STORE``. A new store is created on first use.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .core import Settings
from .model import Account, AccountChanges, EventState, Role, VirtualNumber
from .numbers import parse_international
from .store import DEFAULT_STORE_URL, Store, StoreError, open_store

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def _store_option(func: F) -> F:
    func = _bindings_option(func)
    return click.option(
        "--store", "store_url", envvar="PNS_STORE", default=None, metavar="URL",
        help=f"Store URL (sqlite:///PATH or postgresql://...); default {DEFAULT_STORE_URL}, "
        "or $PNS_STORE.",
    )(func)


def _remember_bindings(ctx: click.Context, _param: click.Parameter, url: str | None) -> None:
    if url:
        ctx.meta["pns_bindings"] = url


def _bindings_option(func: F) -> F:
    """``--bindings URL``: bindings on a Redis Cluster, the rest on the PostgreSQL ``--store``.
    Kept in the context (every command's store URL carries it), not a parameter of each."""
    return click.option(
        "--bindings", "bindings_url", envvar="PNS_BINDINGS", default=None, metavar="URL",
        expose_value=False,
        callback=_remember_bindings,
        help="Binding index: redis-cluster://HOST:PORT[,HOST:PORT...] (with a PostgreSQL "
        "--store), or $PNS_BINDINGS.",
    )(func)


def _store_url(ctx: click.Context, store_url: str | None) -> str:
    url = _plain_store_url(ctx, store_url)
    bindings = ctx.meta.get("pns_bindings")
    if bindings:
        url += ("&" if "?" in url else "?") + f"bindings={bindings}"
    return url


def _plain_store_url(ctx: click.Context, store_url: str | None) -> str:
    if store_url:
        return store_url
    root = ctx.find_root()
    return str(root.obj.get("store_url") or DEFAULT_STORE_URL) if root.obj else DEFAULT_STORE_URL


def _with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the store: {exc}") from None


def new_access_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(16))


def new_access_secret() -> str:
    return secrets.token_urlsafe(24)


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """Read a TOML config file into click's default map: flags and environment variables
    still win over it (click's order: command line, environment, config, built-in default)."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read config {path}: {exc}") from None
    ctx.default_map = _default_map(config)
    return path


def _default_map(config: dict[str, Any]) -> dict[str, Any]:
    """``store = ...`` applies to every command; ``[serve]`` etc. to one command."""
    mapped: dict[str, Any] = {}
    store = config.get("store")
    bindings = config.get("bindings")
    for key, value in config.items():
        if isinstance(value, dict):
            section = {k.replace("-", "_"): v for k, v in value.items()}
            if store is not None:
                section.setdefault("store_url", store)
            if bindings is not None:  # "bindings_url": "bindings" is the command group's
                section.setdefault("bindings_url", bindings)
            mapped[key] = section
    if store is not None:
        mapped["store_url"] = store
    if bindings is not None:
        mapped["bindings_url"] = bindings
    return mapped


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), envvar="PNS_CONFIG",
              callback=_load_config, is_eager=True, expose_value=False,
              help="TOML file of settings (flags and environment variables win over it).")
@_store_option
@click.pass_context
def main(ctx: click.Context, store_url: str | None) -> None:
    """pns: an open privacy number service (NXCloud PNS API compatible).

    Every command takes --store URL (default sqlite:///./pns.db, or $PNS_STORE).
    """
    ctx.obj = {"store_url": store_url}


# --- serve --------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PNS_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="PNS_PORT")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes sharing the port (SO_REUSEPORT).")
@click.option("--extension-length", default=3, show_default=True, type=click.Choice(["3", "4"]),
              envvar="PNS_EXTENSION_LENGTH", help="Digits of an extension.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), envvar="PNS_LOG_LEVEL",
              help="info logs one line per request; below debug, phone numbers are masked.")
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]), envvar="PNS_LOG_FORMAT")
@click.option("--deliver/--no-deliver", default=True, show_default=True,
              help="Run the callback delivery worker in this process.")
@click.option("--admin/--no-admin", "admin", default=True, show_default=True,
              help="Serve the admin API (/admin/api/) and the console (/console/).")
@click.option("--admin-listen", default=None, metavar="HOST:PORT", envvar="PNS_ADMIN_LISTEN",
              help="Serve the admin API and console on this address only (not on --port).")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
              envvar="PNS_TRUSTED_PROXIES",
              help="A reverse proxy whose X-Forwarded-Proto/-For the console believes.")
@click.option("--admin-secure-cookies", is_flag=True, default=False,
              help="Mark console cookies Secure even without X-Forwarded-Proto (TLS ahead).")
@_store_option
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, extension_length: str,
          log_level: str, log_format: str, deliver: bool, admin: bool,
          admin_listen: str | None, trusted_proxies: tuple[str, ...],
          admin_secure_cookies: bool, store_url: str | None) -> None:
    """Run the API server until SIGTERM/SIGINT (then finish in-flight requests)."""
    from .admin.front import AdminOptions
    from .logs import configure
    from .serve import install_event_loop, run_server

    admin_options = None
    if admin:
        admin_options = AdminOptions(
            listen=_host_port(admin_listen) if admin_listen else None,
            trusted_proxies=frozenset(p for each in trusted_proxies for p in each.split()),
            secure_cookies=admin_secure_cookies)
    url = _store_url(ctx, store_url)
    configure(log_level, log_format)
    if workers > 1:
        if url.startswith("sqlite:"):
            # One process writes a SQLite file well; several would queue on its write lock,
            # and each would keep its own in-memory index. Scale out on PostgreSQL.
            raise click.ClickException(
                "--workers needs PostgreSQL: the embedded store (SQLite) is served by one "
                "process; use --store postgresql://... to run several")
        _run_workers(workers)
        return
    install_event_loop()
    settings = Settings(extension_length=int(extension_length))
    try:
        asyncio.run(run_server(url, host, port, settings,
                               reuse_port=os.environ.get("PNS_REUSE_PORT") == "1",
                               deliver=deliver, admin=admin_options))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, not {text!r}", param_hint="--admin-listen")
    return host.strip("[]"), int(port)


def _run_workers(workers: int) -> None:
    """Start ``workers`` single-process servers on one port and stop them together."""
    argv = [a for a in sys.argv[1:] if not a.startswith("--workers")]
    if "--workers" in sys.argv:
        index = sys.argv.index("--workers")
        argv = sys.argv[1:index] + sys.argv[index + 2:]
    env = {**os.environ, "PNS_REUSE_PORT": "1"}
    children = [
        subprocess.Popen([sys.executable, "-m", "pns.cli", *argv], env=env)
        for _ in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if any(codes):
        raise SystemExit(max(codes))


@main.command()
@_store_option
@click.pass_context
def deliver(ctx: click.Context, store_url: str | None) -> None:
    """Run only the callback delivery worker (pns serve runs one too)."""
    from .logs import configure
    from .serve import install_event_loop, run_deliverer

    configure("info", "text")
    install_event_loop()
    try:
        asyncio.run(run_deliverer(_store_url(ctx, store_url)))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--state", type=click.Choice([s.value for s in EventState]), default=None)
@click.option("--account", "access_key", default=None)
@click.option("--limit", default=100, show_default=True, type=int)
@_store_option
@click.pass_context
def deliveries(ctx: click.Context, state: str | None, access_key: str | None, limit: int,
               store_url: str | None) -> None:
    """Callbacks in the outbox: one JSON object each, oldest first."""

    async def work(store: Store) -> list[Any]:
        account_id = None
        if access_key is not None:
            owner = await store.get_account(access_key)
            if owner is None:
                raise click.ClickException(f"no account with accessKey {access_key}")
            account_id = owner.id
        return await store.list_events(account_id, EventState(state) if state else None, limit)

    for event in _with_store(_store_url(ctx, store_url), work):
        click.echo(json.dumps({"eventId": event.event_id, "kind": event.kind,
                               "callId": event.call_id, "state": event.state.value,
                               "attempts": event.attempts, "createdAt": event.created_at,
                               "nextAttemptAt": event.next_attempt_at,
                               "lastError": event.last_error}))


@main.command()
@_store_option
@click.pass_context
def migrate(ctx: click.Context, store_url: str | None) -> None:
    """Create the store, or upgrade it to this release's schema."""
    url = _store_url(ctx, store_url)

    async def work() -> str:
        store = await open_store(url, migrate=True)
        await store.close()
        return "store is at the current schema version"

    try:
        click.echo(asyncio.run(work()))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


# --- accounts -----------------------------------------------------------------------------
@main.group()
def account() -> None:
    """Customer and switch accounts."""


def _account_json(acc: Account, with_secret: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": acc.id, "name": acc.name, "role": acc.role.value, "accessKey": acc.access_key,
        "enabled": acc.enabled, "audioWhenCallFail": acc.audio_when_call_fail,
        "audioWhenDtmfNeed": acc.audio_when_dtmf_need, "audioWhenDtmfErr": acc.audio_when_dtmf_err,
        "callbackUrl": acc.callback_url,
    }
    if with_secret:
        data["accessSecret"] = acc.access_secret
    return data


@account.command("create")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default="customer",
              show_default=True)
@_store_option
@click.pass_context
def account_create(ctx: click.Context, name: str, role: str, store_url: str | None) -> None:
    """Create an account; prints its accessKey and accessSecret (shown only here)."""

    async def work(store: Store) -> Account:
        return await store.create_account(name, Role(role), new_access_key(),
                                          new_access_secret(), int(time.time()))

    acc = _with_store(_store_url(ctx, store_url), work)
    click.echo(json.dumps(_account_json(acc, with_secret=True)))


@account.command("list")
@_store_option
@click.pass_context
def account_list(ctx: click.Context, store_url: str | None) -> None:
    """One JSON object per account (secrets are never listed)."""
    for acc in _with_store(_store_url(ctx, store_url), lambda s: s.list_accounts()):
        click.echo(json.dumps(_account_json(acc, with_secret=False)))


@account.command("set")
@click.argument("access_key")
@click.option("--audio-when-call-fail", default=None, help="Prompt when a call cannot connect.")
@click.option("--audio-when-dtmf-need", default=None, help="Prompt asking for an extension.")
@click.option("--audio-when-dtmf-err", default=None, help="Prompt for a wrong extension.")
@click.option("--callback-url", default=None, help="Where call records are delivered.")
@click.option("--disable/--enable", "disabled", default=None,
              help="A disabled account is refused (1005).")
@_store_option
@click.pass_context
def account_set(ctx: click.Context, access_key: str, audio_when_call_fail: str | None,
                audio_when_dtmf_need: str | None, audio_when_dtmf_err: str | None,
                callback_url: str | None, disabled: bool | None, store_url: str | None) -> None:
    """Change an account's prompts, callback URL, or enable/disable it."""
    changes = AccountChanges(
        enabled=None if disabled is None else not disabled,
        audio_when_call_fail=audio_when_call_fail, audio_when_dtmf_need=audio_when_dtmf_need,
        audio_when_dtmf_err=audio_when_dtmf_err, callback_url=callback_url,
    )
    acc = _with_store(_store_url(ctx, store_url),
                      lambda s: s.update_account(access_key, changes))
    if acc is None:
        raise click.ClickException(f"no account with accessKey {access_key}")
    click.echo(json.dumps(_account_json(acc, with_secret=False)))


@account.command("rotate-secret")
@click.argument("access_key")
@click.option("--grace", default=3600, show_default=True, type=click.IntRange(0),
              help="Seconds the previous secret keeps working, so clients can switch.")
@_store_option
@click.pass_context
def account_rotate_secret(ctx: click.Context, access_key: str, grace: int,
                          store_url: str | None) -> None:
    """Give an account a new accessSecret; the old one works for --grace seconds more."""

    async def work(store: Store) -> Account | None:
        current = await store.get_account(access_key)
        if current is None:
            return None
        return await store.update_account(access_key, AccountChanges(
            access_secret=new_access_secret(), previous_secret=current.access_secret,
            previous_secret_until=int(time.time()) + grace))

    acc = _with_store(_store_url(ctx, store_url), work)
    if acc is None:
        raise click.ClickException(f"no account with accessKey {access_key}")
    data = _account_json(acc, with_secret=True)
    data["previousSecretValidUntil"] = acc.previous_secret_until
    click.echo(json.dumps(data))


# --- numbers ------------------------------------------------------------------------------
@main.group()
def numbers() -> None:
    """The pool of virtual numbers (X)."""


def _read_numbers(args: Iterable[str], file: Path | None) -> list[str]:
    raw = list(args)
    if file is not None:
        raw += [line.strip() for line in file.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return raw


@numbers.command("add")
@click.option("--account", "access_key", required=True, help="Owner's accessKey.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One number per line.")
@click.argument("number", nargs=-1)
@_store_option
@click.pass_context
def numbers_add(ctx: click.Context, access_key: str, file: Path | None, number: tuple[str, ...],
                store_url: str | None) -> None:
    """Give virtual numbers to a customer account."""
    raw = _read_numbers(number, file)
    if not raw:
        raise click.UsageError("give numbers as arguments or with --file")
    parsed = []
    bad = []
    for text in raw:
        n = parse_international(text)
        if n is None:
            bad.append(text)
        else:
            parsed.append(n)
    if bad:
        raise click.ClickException(
            f"not possible international numbers (country code first): {', '.join(bad[:10])}"
        )

    async def work(store: Store) -> tuple[int, list[str]]:
        owner = await store.get_account(access_key)
        if owner is None:
            raise click.ClickException(f"no account with accessKey {access_key}")
        if owner.role is not Role.CUSTOMER:
            raise click.ClickException("only customer accounts own virtual numbers")
        records = [VirtualNumber(n.digits, owner.id, n.country_code) for n in parsed]
        existing = await store.add_numbers(records)
        return len(records) - len(existing), existing

    added, existing = _with_store(_store_url(ctx, store_url), work)
    click.echo(json.dumps({"added": added, "alreadyPresent": existing}))


@numbers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--account", "access_key", required=True, help="Owner's accessKey.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@_store_option
@click.pass_context
def numbers_import(ctx: click.Context, file: Path, access_key: str, batch: int,
                   store_url: str | None) -> None:
    """Import many numbers from FILE (one a line), with a progress bar."""
    from rich.progress import Progress

    raw = _read_numbers([], file)
    parsed = [(text, parse_international(text)) for text in raw]
    bad = [text for text, n in parsed if n is None]
    if bad:
        raise click.ClickException(
            f"{len(bad)} line(s) are not possible international numbers, e.g. "
            f"{', '.join(bad[:5])}; nothing was imported")

    async def work(store: Store) -> tuple[int, int]:
        owner = await store.get_account(access_key)
        if owner is None or owner.role is not Role.CUSTOMER:
            raise click.ClickException(f"no customer account with accessKey {access_key}")
        records = [VirtualNumber(n.digits, owner.id, n.country_code) for _, n in parsed if n]
        existing = 0
        with Progress(console=Console(stderr=True), transient=False) as progress:
            task = progress.add_task("importing", total=len(records))
            for start in range(0, len(records), batch):
                chunk = records[start:start + batch]
                existing += len(await store.add_numbers(chunk))
                progress.advance(task, len(chunk))
        return len(records) - existing, existing

    added, existing = _with_store(_store_url(ctx, store_url), work)
    click.echo(json.dumps({"added": added, "alreadyPresent": existing}))


@numbers.command("list")
@click.option("--account", "access_key", default=None, help="Only this account's numbers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per number.")
@_store_option
@click.pass_context
def numbers_list(ctx: click.Context, access_key: str | None, as_json: bool,
                 store_url: str | None) -> None:
    """Each number with its owner and its active bindings."""

    async def work(store: Store) -> tuple[list[Any], dict[int, str]]:
        account_id = None
        if access_key is not None:
            owner = await store.get_account(access_key)
            if owner is None:
                raise click.ClickException(f"no account with accessKey {access_key}")
            account_id = owner.id
        keys = {a.id: a.access_key for a in await store.list_accounts()}
        return await store.list_numbers(account_id, int(time.time())), keys

    usage, keys = _with_store(_store_url(ctx, store_url), work)
    if as_json:
        for u in usage:
            click.echo(json.dumps({"number": u.x, "account": keys.get(u.account_id, ""),
                                   "countryCode": u.country_code, "enabled": u.enabled,
                                   "activeBindings": u.active_bindings}))
        return
    table = Table("number", "account", "country", "active bindings")
    for u in usage:
        table.add_row(u.x, keys.get(u.account_id, ""), f"+{u.country_code}",
                      str(u.active_bindings))
    Console().print(table)


@numbers.command("remove")
@click.argument("number", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Also end the numbers' active bindings.")
@_store_option
@click.pass_context
def numbers_remove(ctx: click.Context, number: tuple[str, ...], force: bool,
                   store_url: str | None) -> None:
    """Remove numbers; refused while a number has active bindings, unless --force."""
    xs = [(parse_international(n) or n) for n in number]
    digits = [x.digits if not isinstance(x, str) else x for x in xs]
    kept = _with_store(_store_url(ctx, store_url),
                       lambda s: s.remove_numbers(digits, force, int(time.time())))
    removed = [x for x in digits if x not in kept]
    click.echo(json.dumps({"removed": removed, "kept": kept}))
    if kept:
        raise click.ClickException(
            f"{len(kept)} number(s) have active bindings and were kept: {', '.join(kept[:10])} "
            "(use --force to end their bindings)"
        )


# --- operators' views ----------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool.")
@_store_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool, store_url: str | None) -> None:
    """Pool headroom per account and country: how full, and how close to 10010."""

    async def work(store: Store) -> tuple[list[Any], dict[int, Account]]:
        accounts = {a.id: a for a in await store.list_accounts()}
        return await store.pool_usage(int(time.time())), accounts

    usage, accounts = _with_store(_store_url(ctx, store_url), work)
    rows = []
    for u in usage:
        owner = accounts.get(u.account_id)
        rows.append({
            "account": owner.access_key if owner else str(u.account_id),
            "name": owner.name if owner else "", "countryCode": u.country_code,
            "numbers": u.numbers, "enabled": u.enabled, "activeBindings": u.active_bindings,
            "freeNumbers": u.free_numbers, "fullestX": u.fullest_x,
            "fullestXBindings": u.fullest_x_bindings,
            "busiestPartyBindings": u.busiest_party_bindings,
            "headroomBusiestParty": u.headroom_busiest,
        })
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    table = Table("account", "name", "cc", "numbers", "bindings", "free", "fullest X",
                  "busiest", "headroom",
                  caption="headroom: more bindings the busiest party can get before 10010; "
                          "a fresh pair can use any enabled number")
    for row in rows:
        style = "red" if row["headroomBusiestParty"] == 0 else None
        table.add_row(str(row["account"]), str(row["name"]), f"+{row['countryCode']}",
                      f"{row['enabled']}/{row['numbers']}", str(row["activeBindings"]),
                      str(row["freeNumbers"]),
                      f"{row['fullestX']} ({row['fullestXBindings']})",
                      str(row["busiestPartyBindings"]), str(row["headroomBusiestParty"]),
                      style=style)
    Console().print(table)


@main.group()
def bindings() -> None:
    """Operators' view of bindings."""


def _binding_json(b: Any) -> dict[str, Any]:
    from .wire import binding_item

    return binding_item(b)


@bindings.command("list")
@click.option("--account", "access_key", required=True)
@click.option("--number", "x", default=None, help="Only bindings on this X.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@_store_option
@click.pass_context
def bindings_list(ctx: click.Context, access_key: str, x: str | None, limit: int, offset: int,
                  store_url: str | None) -> None:
    """An account's active bindings, one JSON object each, in creation order."""

    async def work(store: Store) -> list[Any]:
        owner = await store.get_account(access_key)
        if owner is None:
            raise click.ClickException(f"no account with accessKey {access_key}")
        items, _ = await store.list_bindings(owner.id, limit, offset, int(time.time()))
        return items

    wanted = (parse_international(x) or None) if x else None
    for b in _with_store(_store_url(ctx, store_url), work):
        if wanted is None or b.x == wanted.digits:
            click.echo(json.dumps(_binding_json(b)))


@bindings.command("show")
@click.argument("bind_id")
@_store_option
@click.pass_context
def bindings_show(ctx: click.Context, bind_id: str, store_url: str | None) -> None:
    """One active binding."""
    b = _with_store(_store_url(ctx, store_url),
                    lambda s: s.get_binding(bind_id, int(time.time())))
    if b is None:
        raise click.ClickException(f"no active binding {bind_id}")
    click.echo(json.dumps(_binding_json(b)))


@bindings.command("unbind")
@click.argument("bind_id")
@_store_option
@click.pass_context
def bindings_unbind(ctx: click.Context, bind_id: str, store_url: str | None) -> None:
    """End a binding now, whoever owns it."""
    if not _with_store(_store_url(ctx, store_url), lambda s: s.delete_binding(bind_id)):
        raise click.ClickException(f"no binding {bind_id}")
    click.echo(json.dumps({"unbound": bind_id}))


# --- operators of the admin API and console ------------------------------------------------------
@main.group()
def operator() -> None:
    """People (and tools) on the admin API and console: admins change, viewers read."""


def _operator_json(op: Any) -> dict[str, Any]:
    return {"name": op.name, "role": op.role.value, "disabled": op.disabled,
            "createdAt": op.created_at}


@operator.command("create")
@click.option("--name", required=True, help="Letters, digits, _ and -; at most 64.")
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="admin",
              show_default=True)
@_store_option
@click.pass_context
def operator_create(ctx: click.Context, name: str, role: str, store_url: str | None) -> None:
    """Create an operator; prints its token (shown only here, stored hashed)."""
    from .admin.operators import new_operator, valid_name
    from .model import OperatorRole

    if not valid_name(name):
        raise click.BadParameter("use 1 to 64 letters, digits, _ or -", param_hint="--name")
    op, token = new_operator(name, OperatorRole(role))
    if not _with_store(_store_url(ctx, store_url), lambda s: s.create_operator(op)):
        raise click.ClickException(f"an operator named {name} exists already")
    click.echo(json.dumps({**_operator_json(op), "token": token}))


@operator.command("list")
@_store_option
@click.pass_context
def operator_list(ctx: click.Context, store_url: str | None) -> None:
    """One JSON object per operator (tokens are never shown again)."""
    for op in _with_store(_store_url(ctx, store_url), lambda s: s.list_operators()):
        click.echo(json.dumps(_operator_json(op)))


@operator.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the operator again instead.")
@_store_option
@click.pass_context
def operator_disable(ctx: click.Context, name: str, enable: bool, store_url: str | None) -> None:
    """Disable an operator: its token and its console sessions stop working at once."""
    if not _with_store(_store_url(ctx, store_url),
                       lambda s: s.set_operator_disabled(name, not enable)):
        raise click.ClickException(f"no operator named {name}")
    click.echo(json.dumps({"name": name, "disabled": not enable}))
# --- secrets at rest ------------------------------------------------------------------------
@main.group("secrets")
def secrets_group() -> None:
    """The key that seals account secrets at rest (see pns.vault)."""


@secrets_group.command("new-key")
def secrets_new_key() -> None:
    """Print a fresh key for PNS_SECRET_KEY (a PostgreSQL store needs one)."""
    from .vault import key_text, new_key

    click.echo(key_text(new_key()))


@secrets_group.command("rotate-key")
@_store_option
@click.pass_context
def secrets_rotate_key(ctx: click.Context, store_url: str | None) -> None:
    """Seal every account secret with a new key (a key file) or with the first key of
    PNS_SECRET_KEY."""
    from .vault import rotate_key

    changed = _with_store(_store_url(ctx, store_url), rotate_key)
    click.echo(json.dumps({"resealedAccounts": changed}))


if __name__ == "__main__":
    main()
