"""The ``pns`` command line: serve, and the operator's accounts and numbers.

Every command takes ``--store URL`` (before or after its own arguments); the default is
``sqlite:///./pns.db``, overridden by ``PNS_STORE`` or a config file's ``store``. Only ``serve``
and ``migrate`` create a store: any other command refuses a SQLite file that does not exist,
so a command run from the wrong directory cannot quietly work on an empty store of its own.

Output has one vocabulary: every command prints records whose field names are the JSON ones;
on a terminal as an aligned table, otherwise (or with ``--json``) as JSON, one object a line.
Tables never cut a value short. Groups are one per noun (``account``, ``numbers``,
``bindings``, ``blacklist``): a new noun is a new group.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from rich.console import Console

from . import __version__, pool
from .core import (
    BLOCK_LIST_MAX,
    BindingUpdate,
    Lifecycle,
    Service,
    Settings,
    check_cool_off,
)
from .errors import PnsError
from .model import Account, AccountChanges, Binding, EventState, Role
from .store import DEFAULT_STORE_URL, Store, StoreError, open_store, schema_versions
from .store.rows import redact

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Rows fetched per store round trip when a listing streams.
PAGE_SIZE = 1000


def _store_option(func: F) -> F:
    func = _bindings_option(func)
    return click.option(
        "--store", "store_url", envvar="PNS_STORE", default=None, metavar="URL",
        help=f"Store URL (sqlite:///PATH or postgresql://...); default {DEFAULT_STORE_URL}, "
        "or $PNS_STORE, or the config file's store.",
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


def _format_option(func: F) -> F:
    return click.option(
        "--json/--table", "as_json", default=None,
        help="JSON (one object a line) or an aligned table; default: a table on a terminal, "
        "JSON otherwise.",
    )(func)


# --- which store ---------------------------------------------------------------------------
_SOURCES: dict[ParameterSource | None, str] = {
    ParameterSource.COMMANDLINE: "from --store",
    ParameterSource.ENVIRONMENT: "from PNS_STORE",
    ParameterSource.DEFAULT_MAP: "from the config file",
}


def _resolve_store(ctx: click.Context, store_url: str | None) -> tuple[str, str]:
    """The store URL a command uses, and where that choice came from (for messages)."""
    if store_url:
        return store_url, _SOURCES.get(ctx.get_parameter_source("store_url"), "")
    root = ctx.find_root()
    url = root.obj.get("store_url") if root.obj else None
    if url:
        source = root.get_parameter_source("store_url")
        return str(url), _SOURCES.get(source, "")
    return DEFAULT_STORE_URL, "the default"


def _store_url(ctx: click.Context, store_url: str | None) -> str:
    """The command's store URL; with ``pns --verbose``, said on stderr with its source."""
    url, source = _resolve_store(ctx, store_url)
    root = ctx.find_root()
    if root.obj and root.obj.get("verbose"):
        click.echo(f"pns: store {_describe_store(url)} ({source})", err=True)
    bindings = ctx.meta.get("pns_bindings")
    if bindings:
        url += ("&" if "?" in url else "?") + f"bindings={bindings}"
    return url


def _describe_store(url: str) -> str:
    """The URL without its password, and for SQLite the absolute path it means here."""
    if url.startswith("sqlite:"):
        from .store.sqlite import path_from_url

        try:
            path = path_from_url(url)
        except StoreError:
            return url
        if path != ":memory:":
            return f"{url} = {Path(path).resolve()}"
    return redact(url)


def _require_existing(url: str, source: str) -> None:
    """Refuse a SQLite store that does not exist: creating one here would hand out keys and
    numbers the running server never hears of."""
    if not url.startswith("sqlite:"):
        return
    from .store.sqlite import path_from_url

    try:
        path = path_from_url(url)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if path == ":memory:" or Path(path).exists():
        return
    raise click.ClickException(
        f"no store at {Path(path).resolve()} ({url}, {source}); nothing was done. "
        "Choose the store with --store URL, PNS_STORE or a config file (--config or "
        "PNS_CONFIG); `pns migrate` or `pns serve` creates a new one. See docs/cli-store.md."
    )


def _refuse(ctx: click.Context, message: str) -> click.ClickException:
    """A refusal found after the store answered, naming the store like every other."""
    url, _ = _resolve_store(ctx, ctx.params.get("store_url"))
    return click.ClickException(f"{message} [store {redact(url)}]")


def _with_store(ctx: click.Context, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``work`` on the command's existing store; every refusal names the store."""
    url = _store_url(ctx, ctx.params.get("store_url"))
    _require_existing(url, _resolve_store(ctx, ctx.params.get("store_url"))[1])

    async def run() -> T:
        store = await open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    where = f"[store {redact(url)}]"
    try:
        return asyncio.run(run())
    except click.ClickException as exc:
        raise click.ClickException(f"{exc.message} {where}") from None
    except StoreError as exc:
        raise click.ClickException(f"{exc} {where}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the store: {exc} {where}") from None


# --- output --------------------------------------------------------------------------------
def _wants_json(as_json: bool | None) -> bool:
    return as_json if as_json is not None else not sys.stdout.isatty()


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def emit_rows(rows: Iterable[dict[str, Any]], as_json: bool | None,
              columns: Sequence[str] | None = None) -> int:
    """Print records as JSON lines or an aligned table, streaming: widths come from the first
    page and only grow, values are never cut. Returns how many rows were printed."""
    out = sys.stdout
    if _wants_json(as_json):
        count = 0
        for row in rows:
            out.write(json.dumps(row) + "\n")
            count += 1
        return count
    widths: list[int] = []
    names: list[str] = list(columns or [])
    count = 0
    page: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal widths, names
        if not page:
            return
        if not names:
            names = list(page[0])
        cells = [[_cell(row.get(name)) for name in names] for row in page]
        first = not widths
        widths = [max([len(name) if first else widths[i], *(len(r[i]) for r in cells)])
                  for i, name in enumerate(names)]
        if first:
            out.write(_line(names, widths) + "\n")
        out.write("".join(_line(values, widths) + "\n" for values in cells))
        page.clear()

    for row in rows:
        page.append(row)
        count += 1
        if len(page) >= PAGE_SIZE:
            flush()
    flush()
    if count == 0 and names:
        out.write("  ".join(names) + "\n")
    return count


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def emit_one(record: dict[str, Any], as_json: bool | None) -> None:
    """One record: a JSON object, or on a terminal one ``field  value`` line per field."""
    if _wants_json(as_json):
        click.echo(json.dumps(record))
        return
    width = max((len(k) for k in record), default=0)
    for key, value in record.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
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
@click.version_option(__version__, prog_name="pns")
@click.option("--config", type=click.Path(dir_okay=False), envvar="PNS_CONFIG",
              callback=_load_config, is_eager=True, expose_value=False,
              help="TOML file of settings (flags and environment variables win over it).")
@click.option("-v", "--verbose", is_flag=True,
              help="Say on stderr which store the command uses, and why that one.")
@_store_option
@click.pass_context
def main(ctx: click.Context, verbose: bool, store_url: str | None) -> None:
    """pns: an open privacy number service (NXCloud PNS API compatible).

    Every command takes --store URL (default sqlite:///./pns.db, or $PNS_STORE, or the config
    file's store). Only serve and migrate create a store. Output: a table on a terminal,
    JSON lines otherwise or with --json.
    """
    ctx.obj = {"store_url": store_url, "verbose": verbose}


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
    from .metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    if os.environ.get(MULTIPROC_ENV) and os.environ.get("PNS_REUSE_PORT") != "1":
        prepare_multiprocess_dir(Path(os.environ[MULTIPROC_ENV]))  # a run of its own
    install_event_loop()
    settings = Settings(extension_length=int(extension_length))
    try:
        asyncio.run(run_server(url, host, port, settings,
                               reuse_port=os.environ.get("PNS_REUSE_PORT") == "1",
                               deliver=deliver, admin=admin_options))
    except StoreError as exc:
        raise click.ClickException(f"{exc} [store {redact(url)}]") from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, not {text!r}", param_hint="--admin-listen")
    return host.strip("[]"), int(port)


def _run_workers(workers: int) -> None:
    """Start ``workers`` single-process servers on one port and stop them together. They
    share a metrics directory (made for this run, or PROMETHEUS_MULTIPROC_DIR emptied), so
    ``/metrics`` adds up whichever worker answers the scrape."""
    import shutil
    import tempfile

    from .metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    argv = [a for a in sys.argv[1:] if not a.startswith("--workers")]
    if "--workers" in sys.argv:
        index = sys.argv.index("--workers")
        argv = sys.argv[1:index] + sys.argv[index + 2:]
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    made = None
    if metrics_dir:
        prepare_multiprocess_dir(Path(metrics_dir))
    else:
        made = metrics_dir = tempfile.mkdtemp(prefix="pns-metrics-")
    env = {**os.environ, "PNS_REUSE_PORT": "1", MULTIPROC_ENV: metrics_dir}
    try:
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
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    if any(codes):
        raise SystemExit(max(codes))


@main.command()
@_store_option
@click.pass_context
def deliver(ctx: click.Context, store_url: str | None) -> None:
    """Run only the callback delivery worker (pns serve runs one too)."""
    from .logs import configure
    from .serve import install_event_loop, run_deliverer

    url = _store_url(ctx, store_url)
    _require_existing(url, _resolve_store(ctx, store_url)[1])
    configure("info", "text")
    install_event_loop()
    try:
        asyncio.run(run_deliverer(url))
    except StoreError as exc:
        raise click.ClickException(f"{exc} [store {redact(url)}]") from None


@main.command()
@click.option("--state", type=click.Choice([s.value for s in EventState]), default=None)
@click.option("--account", "access_key", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@_format_option
@_store_option
@click.pass_context
def deliveries(ctx: click.Context, state: str | None, access_key: str | None, limit: int,
               as_json: bool | None, store_url: str | None) -> None:
    """Callbacks in the outbox, oldest first."""

    async def work(store: Store) -> list[Any]:
        account_id = None
        if access_key is not None:
            account_id = (await _account_or_fail(store, access_key)).id
        return await store.list_events(account_id, EventState(state) if state else None, limit)

    emit_rows(({"eventId": event.event_id, "kind": event.kind, "callId": event.call_id,
                "state": event.state.value, "attempts": event.attempts,
                "createdAt": event.created_at, "nextAttemptAt": event.next_attempt_at,
                "lastError": event.last_error}
               for event in _with_store(ctx, work)), as_json)


@main.command()
@_store_option
@click.pass_context
def migrate(ctx: click.Context, store_url: str | None) -> None:
    """Create the store, or upgrade it to this release's schema; says which it did."""
    url = _store_url(ctx, store_url)

    async def work() -> str:
        before, current = await schema_versions(url)
        store = await open_store(url, migrate=True)
        await store.close()
        if before == 0:
            return f"created the store at the current schema version {current}"
        if before < current:
            return (f"upgraded the store from schema version {before} to {current} "
                    "(the current schema version)")
        return f"nothing to do: the store is at the current schema version {current}"

    try:
        click.echo(f"{asyncio.run(work())} [store {redact(url)}]")
    except StoreError as exc:
        raise click.ClickException(f"{exc} [store {redact(url)}]") from None


# --- accounts -----------------------------------------------------------------------------
@main.group()
def account() -> None:
    """Customer and switch accounts."""


async def _account_or_fail(store: Store, access_key: str) -> Account:
    owner = await store.get_account(access_key)
    if owner is None:
        raise click.ClickException(f"no account with accessKey {access_key}")
    return owner


def _account_json(acc: Account, with_secret: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": acc.id, "name": acc.name, "role": acc.role.value, "accessKey": acc.access_key,
        "enabled": acc.enabled, "audioWhenCallFail": acc.audio_when_call_fail,
        "audioWhenDtmfNeed": acc.audio_when_dtmf_need, "audioWhenDtmfErr": acc.audio_when_dtmf_err,
        "callbackUrl": acc.callback_url, "coolOffSeconds": acc.cool_off_seconds,
    }
    if with_secret:
        data["accessSecret"] = acc.access_secret
    return data


@account.command("create")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default="customer",
              show_default=True)
@_format_option
@_store_option
@click.pass_context
def account_create(ctx: click.Context, name: str, role: str, as_json: bool | None,
                   store_url: str | None) -> None:
    """Create an account; prints its accessKey and accessSecret (shown only here)."""

    async def work(store: Store) -> Account:
        return await store.create_account(name, Role(role), new_access_key(),
                                          new_access_secret(), int(time.time()))

    emit_one(_account_json(_with_store(ctx, work), with_secret=True), as_json)


@account.command("list")
@_format_option
@_store_option
@click.pass_context
def account_list(ctx: click.Context, as_json: bool | None, store_url: str | None) -> None:
    """Every account (secrets are never listed)."""
    accounts = _with_store(ctx, lambda s: s.list_accounts())
    emit_rows((_account_json(acc, with_secret=False) for acc in accounts), as_json,
              columns=list(_ACCOUNT_COLUMNS))


_ACCOUNT_COLUMNS = ("id", "name", "role", "accessKey", "enabled", "audioWhenCallFail",
                    "audioWhenDtmfNeed", "audioWhenDtmfErr", "callbackUrl")


def _cool_off_option(ctx: click.Context, param: click.Parameter, value: int | None
                     ) -> int | None:
    """The core's bound and message, so the CLI and the admin API refuse alike."""
    if value is None:
        return None
    try:
        return check_cool_off(value)
    except PnsError as exc:
        raise click.BadParameter(exc.msg, ctx, param) from None


@account.command("set")
@click.argument("access_key")
@click.option("--audio-when-call-fail", default=None, help="Prompt when a call cannot connect.")
@click.option("--audio-when-dtmf-need", default=None, help="Prompt asking for an extension.")
@click.option("--audio-when-dtmf-err", default=None, help="Prompt for a wrong extension.")
@click.option("--callback-url", default=None, help="Where call records are delivered.")
@click.option("--disable/--enable", "disabled", default=None,
              help="A disabled account is refused (1005).")
@click.option("--cool-off", "cool_off", default=None, type=int, callback=_cool_off_option,
              metavar="SECONDS",
              help="After a binding ends, its parties are not given its number again for this "
                   "long (0: off).")
@_format_option
@_store_option
@click.pass_context
def account_set(ctx: click.Context, access_key: str, audio_when_call_fail: str | None,
                audio_when_dtmf_need: str | None, audio_when_dtmf_err: str | None,
                callback_url: str | None, disabled: bool | None, cool_off: int | None,
                as_json: bool | None, store_url: str | None) -> None:
    """Change an account's prompts, callback URL, cool-off, or enable/disable it."""
    changes = AccountChanges(
        enabled=None if disabled is None else not disabled,
        audio_when_call_fail=audio_when_call_fail, audio_when_dtmf_need=audio_when_dtmf_need,
        audio_when_dtmf_err=audio_when_dtmf_err, callback_url=callback_url,
        cool_off_seconds=cool_off,
    )

    async def work(store: Store) -> Account | None:
        await _account_or_fail(store, access_key)
        return await store.update_account(access_key, changes)

    acc = _with_store(ctx, work)
    assert acc is not None
    emit_one(_account_json(acc, with_secret=False), as_json)


@account.command("rotate-secret")
@click.argument("access_key")
@click.option("--grace", default=3600, show_default=True, type=click.IntRange(0),
              help="Seconds the previous secret keeps working, so clients can switch.")
@_format_option
@_store_option
@click.pass_context
def account_rotate_secret(ctx: click.Context, access_key: str, grace: int, as_json: bool | None,
                          store_url: str | None) -> None:
    """Give an account a new accessSecret; the old one works for --grace seconds more."""

    async def work(store: Store) -> Account | None:
        current = await _account_or_fail(store, access_key)
        return await store.update_account(access_key, AccountChanges(
            access_secret=new_access_secret(), previous_secret=current.access_secret,
            previous_secret_until=int(time.time()) + grace))

    acc = _with_store(ctx, work)
    assert acc is not None
    data = _account_json(acc, with_secret=True)
    data["previousSecretValidUntil"] = acc.previous_secret_until
    emit_one(data, as_json)


# --- numbers ------------------------------------------------------------------------------
@main.group()
def numbers() -> None:
    """The pool of virtual numbers (X)."""


def _read_numbers(args: Iterable[str], file: Path | None) -> list[str]:
    raw = list(args)
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read {file}: {exc}") from None
        raw += [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return raw


async def _add_numbers(store: Store, access_key: str, texts: list[str], batch: int,
                       progress: bool) -> dict[str, Any]:
    """Add numbers to a customer account; what is reported is ``pool.add_numbers``'s."""
    try:
        parsed = pool.parse_for_add(texts)
        owner = await _account_or_fail(store, access_key)
        if not progress:
            return await pool.add_numbers(store, owner, parsed, batch)
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task("importing", total=len({n.digits for n in parsed}))
            return await pool.add_numbers(store, owner, parsed, batch,
                                          lambda done: bar.advance(task, done))
    except pool.PoolRefusal as exc:
        raise click.ClickException(str(exc)) from None


def _report_added(ctx: click.Context, result: dict[str, Any], as_json: bool | None) -> None:
    emit_one(result, as_json)
    if result["ownedByOtherAccounts"]:
        raise _refuse(ctx, pool.owned_by_others_message(result))


@numbers.command("add")
@click.option("--account", "access_key", required=True, help="Owner's accessKey.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="One number per line.")
@click.argument("number", nargs=-1)
@_format_option
@_store_option
@click.pass_context
def numbers_add(ctx: click.Context, access_key: str, file: Path | None, number: tuple[str, ...],
                as_json: bool | None, store_url: str | None) -> None:
    """Give virtual numbers to a customer account.

    Prints added, alreadyPresent (the account had them) and ownedByOtherAccounts (each with
    its owner; exit 1 when there is any).
    """
    raw = _read_numbers(number, file)
    if not raw:
        raise click.UsageError("give numbers as arguments or with --file")
    result = _with_store(ctx, lambda s: _add_numbers(s, access_key, raw, 1000, progress=False))
    _report_added(ctx, result, as_json)


@numbers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--account", "access_key", required=True, help="Owner's accessKey.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@_format_option
@_store_option
@click.pass_context
def numbers_import(ctx: click.Context, file: Path, access_key: str, batch: int,
                   as_json: bool | None, store_url: str | None) -> None:
    """Import many numbers from FILE (one a line), with a progress bar on stderr.

    Prints the same fields as `numbers add`; refreshes the database's planner statistics after.
    """
    raw = _read_numbers([], file)
    result = _with_store(ctx, lambda s: _add_numbers(s, access_key, raw, batch, progress=True))
    _report_added(ctx, result, as_json)


@numbers.command("list")
@click.option("--account", "access_key", default=None, help="Only this account's numbers.")
@click.option("--limit", default=0, show_default=True, type=click.IntRange(0),
              help="At most this many (0: all, streamed page by page).")
@click.option("--after", default="", metavar="NUMBER",
              help="Start after this number (the last one of the previous page).")
@_format_option
@_store_option
@click.pass_context
def numbers_list(ctx: click.Context, access_key: str | None, limit: int, after: str,
                 as_json: bool | None, store_url: str | None) -> None:
    """Numbers in number order, each with its owner and its active bindings."""
    start = pool.as_digits([after])[0] if after else ""

    async def work(store: Store) -> AsyncIterator[dict[str, Any]]:
        account_id = (await _account_or_fail(store, access_key)).id if access_key else None
        keys = {a.id: a.access_key for a in await store.list_accounts()}
        cursor, left = start, limit or -1
        while left != 0:
            size = PAGE_SIZE if left < 0 else min(PAGE_SIZE, left)
            page = await store.numbers_page(account_id, cursor, size, int(time.time()))
            for u in page:
                yield {"number": u.x, "account": keys.get(u.account_id, str(u.account_id)),
                       "countryCode": u.country_code, "enabled": u.enabled,
                       "activeBindings": u.active_bindings}
            if len(page) < size:
                return
            cursor = page[-1].x
            left = left - len(page) if left > 0 else left

    _stream(ctx, work, as_json, ("number", "account", "countryCode", "enabled",
                                 "activeBindings"))


def _stream(ctx: click.Context, rows: Callable[[Store], AsyncIterator[dict[str, Any]]],
            as_json: bool | None, columns: Sequence[str]) -> None:
    """Print rows as the store yields them, page by page, in one event loop: a listing of
    200,000 rows starts at once and never holds them all."""
    import queue
    import threading

    lines: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=4)
    failure: list[BaseException] = []

    async def produce(store: Store) -> None:
        page: list[dict[str, Any]] = []
        async for row in rows(store):
            page.append(row)
            if len(page) >= PAGE_SIZE:
                await asyncio.to_thread(lines.put, page)
                page = []
        if page:
            await asyncio.to_thread(lines.put, page)

    def run() -> None:
        try:
            _with_store(ctx, produce)
        except BaseException as exc:
            failure.append(exc)
        finally:
            lines.put(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()

    def consume() -> Iterable[dict[str, Any]]:
        while (page := lines.get()) is not None:
            yield from page

    try:
        emit_rows(consume(), as_json, columns)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``| head``): stop quietly, as a listing piped into head should.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    worker.join()
    if failure:
        raise failure[0]


def _finish(ctx: click.Context, change: pool.Change, as_json: bool | None) -> None:
    """Print what a number command did; fail when it matched nothing or kept something."""
    emit_one(change.report, as_json)
    if change.kept:
        raise _refuse(ctx, change.kept_message())
    if change.nothing_found:
        raise _refuse(ctx, change.nothing_message())
    if change.not_found:
        click.echo(f"not found: {', '.join(change.not_found[:10])}", err=True)


@numbers.command("remove")
@click.argument("number", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Also end the numbers' active bindings.")
@_format_option
@_store_option
@click.pass_context
def numbers_remove(ctx: click.Context, number: tuple[str, ...], force: bool,
                   as_json: bool | None, store_url: str | None) -> None:
    """Remove numbers; refused while a number has active bindings, unless --force.

    Prints removed, kept and notFound; exit 1 when a number was kept or none was found.
    """
    _finish(ctx, _with_store(ctx, lambda s: pool.remove_numbers(s, number, force,
                                                                  int(time.time()))), as_json)


def _enable_command(enabled: bool) -> Callable[..., None]:
    verb = "enable" if enabled else "disable"

    @numbers.command(verb)
    @click.argument("number", nargs=-1, required=True)
    @_format_option
    @_store_option
    @click.pass_context
    def command(ctx: click.Context, number: tuple[str, ...], as_json: bool | None,
                store_url: str | None) -> None:
        _finish(ctx, _with_store(ctx, lambda s: pool.set_numbers_enabled(s, number, enabled)),
                as_json)

    command.__doc__ = (
        "Let numbers take new bindings again." if enabled else
        "Stop giving numbers to new bindings; their active bindings keep working.")
    command.help = command.__doc__
    return command


numbers_enable = _enable_command(True)
numbers_disable = _enable_command(False)


@numbers.command("move")
@click.argument("number", nargs=-1, required=True)
@click.option("--to", "to_key", required=True, metavar="ACCESSKEY",
              help="The customer account that gets the numbers.")
@click.option("--force", is_flag=True, help="Also end the numbers' active bindings.")
@_format_option
@_store_option
@click.pass_context
def numbers_move(ctx: click.Context, number: tuple[str, ...], to_key: str, force: bool,
                 as_json: bool | None, store_url: str | None) -> None:
    """Give numbers to another account; refused while a number has active bindings, unless
    --force (which ends them). Prints moved, kept and notFound."""

    async def work(store: Store) -> pool.Change:
        target = await _account_or_fail(store, to_key)
        try:
            return await pool.move_numbers(store, number, target, force, int(time.time()))
        except pool.PoolRefusal as exc:
            raise click.ClickException(str(exc)) from None

    _finish(ctx, _with_store(ctx, work), as_json)


# --- operators' views ----------------------------------------------------------------------
@main.command()
@_format_option
@_store_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool | None, store_url: str | None) -> None:
    """Pool headroom per account and country: how full, and how close to 10010.

    headroomBusiestParty: more bindings the busiest party can get before 10010; a fresh pair
    can use any enabled number.
    """

    async def work(store: Store) -> tuple[list[Any], dict[int, Account]]:
        accounts = {a.id: a for a in await store.list_accounts()}
        return await store.pool_usage(int(time.time())), accounts

    usage, accounts = _with_store(ctx, work)
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
    emit_rows(rows, as_json, columns=_STATS_COLUMNS)


_STATS_COLUMNS = ("account", "name", "countryCode", "numbers", "enabled", "activeBindings",
                  "freeNumbers", "fullestX", "fullestXBindings", "busiestPartyBindings",
                  "headroomBusiestParty")


@main.group()
def bindings() -> None:
    """Operators' view of bindings."""


def _binding_json(b: Binding) -> dict[str, Any]:
    from .wire import binding_item

    return binding_item(b)


def _binding_detail(b: Binding) -> dict[str, Any]:
    from .wire import binding_detail

    return binding_detail(b)


_BINDING_COLUMNS = ("bindId", "customerBindId", "phoneA", "phoneB", "did", "didY",
                    "extension", "bindType", "groupId", "customerUserId", "flag", "expireAt",
                    "businessId", "customerId")


@bindings.command("list")
@click.option("--account", "access_key", required=True)
@click.option("--number", "x", default=None, help="Only bindings on this X.")
@click.option("--limit", default=0, show_default=True, type=click.IntRange(0),
              help="At most this many (0: all, streamed page by page).")
@click.option("--after", default="", metavar="BINDID",
              help="Start after this binding (the last one of the previous page).")
@_format_option
@_store_option
@click.pass_context
def bindings_list(ctx: click.Context, access_key: str, x: str | None, limit: int, after: str,
                  as_json: bool | None, store_url: str | None) -> None:
    """An account's active bindings in creation order."""
    on_x = pool.as_digits([x])[0] if x else ""

    async def work(store: Store) -> AsyncIterator[dict[str, Any]]:
        owner = await _account_or_fail(store, access_key)
        now = int(time.time())
        if after and await store.get_binding(after, now) is None:
            raise click.ClickException(f"no active binding {after} to start after")
        cursor, left = after, limit or -1
        while left != 0:
            size = PAGE_SIZE if left < 0 else min(PAGE_SIZE, left)
            page = await store.bindings_page(owner.id, on_x, cursor, size, now)
            for b in page:
                yield _binding_json(b)
            if len(page) < size:
                return
            cursor = page[-1].bind_id
            left = left - len(page) if left > 0 else left

    _stream(ctx, work, as_json, _BINDING_COLUMNS)


@bindings.command("show")
@click.argument("bind_id")
@_format_option
@_store_option
@click.pass_context
def bindings_show(ctx: click.Context, bind_id: str, as_json: bool | None,
                  store_url: str | None) -> None:
    """One active binding, with every field (as getAXB answers it)."""
    b = _with_store(ctx, lambda s: s.get_binding(bind_id, int(time.time())))
    if b is None:
        raise _refuse(ctx, f"no active binding {bind_id}")
    emit_one(_binding_detail(b), as_json)


@bindings.command("update")
@click.argument("bind_id")
@click.option("--phone-b", default=None, help="A new B (the bindId and X stay).")
@click.option("--expire-second", default=None, type=click.IntRange(0),
              help="A new lifetime from now (0: never expires).")
@click.option("--flag", default=None, type=click.IntRange(0))
@click.option("--business-id", default=None)
@click.option("--call-direction", default=None, type=click.IntRange(0, 2),
              help="0 both ways, 1 only A may call, 2 only B may call.")
@click.option("--max-duration", default=None, type=int, help="Seconds a call may last (0: none).")
@click.option("--renew-on-call", default=None, type=int,
              help="Each answered query moves expireAt to at least now + this (0: off).")
@click.option("--audio-when-call-fail", default=None, help="This binding's fail prompt.")
@_format_option
@_store_option
@click.pass_context
def bindings_update(ctx: click.Context, bind_id: str, phone_b: str | None,
                    expire_second: int | None, flag: int | None, business_id: str | None,
                    call_direction: int | None, max_duration: int | None,
                    renew_on_call: int | None, audio_when_call_fail: str | None,
                    as_json: bool | None, store_url: str | None) -> None:
    """Change a binding in place, with updateAXB's rules, whoever owns it."""
    update = BindingUpdate(
        phone_b=phone_b, expire_second=expire_second, flag=flag, business_id=business_id,
        life=Lifecycle(call_direction=call_direction, max_duration=max_duration,
                       renew_on_call=renew_on_call, audio_when_call_fail=audio_when_call_fail))

    async def work(store: Store) -> Binding:
        found = await store.get_binding(bind_id, int(time.time()))
        owner = await store.get_account_by_id(found.account_id) if found else None
        if found is None or owner is None:
            raise click.ClickException(f"no active binding {bind_id}")
        try:
            return await Service(store).update_binding(owner, bind_id, "", update)
        except PnsError as exc:
            raise click.ClickException(f"{int(exc.code)} {exc.msg}") from None

    emit_one(_binding_detail(_with_store(ctx, work)), as_json)


@bindings.command("unbind")
@click.argument("bind_id")
@_format_option
@_store_option
@click.pass_context
def bindings_unbind(ctx: click.Context, bind_id: str, as_json: bool | None,
                    store_url: str | None) -> None:
    """End a binding now, whoever owns it."""
    if not _with_store(ctx, lambda s: s.delete_binding(bind_id)):
        raise _refuse(ctx, f"no binding {bind_id}")
    emit_one({"unbound": bind_id}, as_json)


# --- the caller block list -------------------------------------------------------------------
@main.group()
def blacklist() -> None:
    """Each account's blocked callers (10024 on every query to its numbers)."""


def _blacklist_command(verb: str) -> Callable[..., None]:
    @blacklist.command(verb)
    @click.option("--account", "access_key", required=True)
    @click.argument("phone", nargs=-1, required=True)
    @_format_option
    @_store_option
    @click.pass_context
    def command(ctx: click.Context, access_key: str, phone: tuple[str, ...],
                as_json: bool | None, store_url: str | None) -> None:
        async def work(store: Store) -> int:
            owner = await _account_or_fail(store, access_key)
            service = Service(store)
            try:
                if verb == "add":
                    return await service.add_blocked(owner, ",".join(phone))
                return await service.remove_blocked(owner, ",".join(phone))
            except PnsError as exc:
                raise click.ClickException(f"{int(exc.code)} {exc.msg}") from None

        emit_one({"added" if verb == "add" else "removed": _with_store(ctx, work)}, as_json)

    command.__doc__ = ("Block callers (numbers with their country codes)." if verb == "add"
                       else "Unblock callers.")
    command.help = command.__doc__
    return command


blacklist_add = _blacklist_command("add")
blacklist_remove = _blacklist_command("remove")


@blacklist.command("list")
@click.option("--account", "access_key", required=True)
@_format_option
@_store_option
@click.pass_context
def blacklist_list(ctx: click.Context, access_key: str, as_json: bool | None,
                   store_url: str | None) -> None:
    """An account's blocked callers, in number order."""

    async def work(store: Store) -> list[str]:
        owner = await _account_or_fail(store, access_key)
        return (await store.list_blocked(owner.id, BLOCK_LIST_MAX, 0))[0]

    emit_rows(({"phone": number} for number in _with_store(ctx, work)), as_json,
              columns=["phone"])


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
@click.option("--json", "as_json", is_flag=True, hidden=True,
              help="Accepted for scripts: the output is JSON anyway.")
@_store_option
@click.pass_context
def operator_create(ctx: click.Context, name: str, role: str, as_json: bool,
                    store_url: str | None) -> None:
    """Create an operator; prints it and its token as one JSON object (the token is shown only
    here, stored hashed). JSON on a terminal too: the token is copied or piped into a secret
    store whole, and a table's padding invites copying it wrong."""
    from .admin.operators import new_operator, valid_name
    from .model import OperatorRole

    if not valid_name(name):
        raise click.BadParameter("use 1 to 64 letters, digits, _ or -", param_hint="--name")
    op, token = new_operator(name, OperatorRole(role))
    if not _with_store(ctx, lambda s: s.create_operator(op)):
        raise _refuse(ctx, f"an operator named {name} exists already")
    emit_one({**_operator_json(op), "token": token}, True)


@operator.command("list")
@_format_option
@_store_option
@click.pass_context
def operator_list(ctx: click.Context, as_json: bool | None, store_url: str | None) -> None:
    """Every operator (tokens are never shown again)."""
    operators = _with_store(ctx, lambda s: s.list_operators())
    emit_rows((_operator_json(op) for op in operators), as_json,
              columns=("name", "role", "disabled", "createdAt"))


@operator.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the operator again instead.")
@_format_option
@_store_option
@click.pass_context
def operator_disable(ctx: click.Context, name: str, enable: bool, as_json: bool | None,
                     store_url: str | None) -> None:
    """Disable an operator: its token and its console sessions stop working at once."""
    if not _with_store(ctx, lambda s: s.set_operator_disabled(name, not enable)):
        raise _refuse(ctx, f"no operator named {name}")
    emit_one({"name": name, "disabled": not enable}, as_json)


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
@_format_option
@_store_option
@click.pass_context
def secrets_rotate_key(ctx: click.Context, as_json: bool | None, store_url: str | None) -> None:
    """Seal every account secret with a new key (a key file) or with the first key of
    PNS_SECRET_KEY."""
    from .vault import rotate_key

    emit_one({"resealedAccounts": _with_store(ctx, rotate_key)}, as_json)


if __name__ == "__main__":
    main()
