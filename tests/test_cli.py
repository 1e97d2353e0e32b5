"""The operator's command line against a real store: what each command prints and exits with,
which store it uses, and that none but serve and migrate creates one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pns.client import PnsClient

from .conftest import Server, cli, pns_command, unique_hk
from .test_store_conformance import fresh_store_url

__all__ = ["fresh_store_url"]


@pytest.fixture
def url(store_url: str) -> str:
    cli("migrate", "--store", store_url)  # only serve and migrate create a store
    return store_url


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_account_lifecycle(url: str) -> None:
    created = json.loads(cli("account", "create", "--name", "acme", "--store", url).stdout)
    assert created["role"] == "customer"
    assert len(created["accessKey"]) == 16 and len(created["accessSecret"]) >= 24
    listed = [json.loads(line) for line in cli("account", "list", "--store", url)
              .stdout.splitlines()]
    mine = next(a for a in listed if a["accessKey"] == created["accessKey"])
    assert "accessSecret" not in mine, "secrets are never listed"
    changed = json.loads(cli("account", "set", created["accessKey"], "--audio-when-call-fail",
                             "f.wav", "--audio-when-dtmf-need", "n.wav",
                             "--audio-when-dtmf-err", "e.wav", "--disable",
                             "--store", url).stdout)
    assert (changed["audioWhenCallFail"], changed["audioWhenDtmfNeed"],
            changed["audioWhenDtmfErr"], changed["enabled"]) == ("f.wav", "n.wav", "e.wav",
                                                                 False)
    result = cli("account", "set", "nobody", "--enable", "--store", url, check=False)
    assert result.returncode != 0 and "no account" in result.stderr


def test_numbers_add_list_remove(url: str, tmp_path: Path) -> None:
    key = json.loads(cli("--store", url, "account", "create", "--name", "n").stdout)["accessKey"]
    x1, x2, x3 = unique_hk("3"), unique_hk("3"), unique_hk("3")
    listing = tmp_path / "numbers.txt"
    listing.write_text(f"# pool\n+{x2}\n\n{x3}\n")
    added = json.loads(cli("numbers", "add", "--account", key, x1, "--file", str(listing),
                           "--store", url).stdout)
    assert added == {"added": 3, "alreadyPresent": 0, "ownedByOtherAccounts": []}
    again = json.loads(cli("numbers", "add", "--account", key, x1, "--store", url).stdout)
    assert again == {"added": 0, "alreadyPresent": 1, "ownedByOtherAccounts": []}
    bad = cli("numbers", "add", "--account", key, "12", "--store", url, check=False)
    assert bad.returncode != 0 and "12" in bad.stderr
    rows = [json.loads(line) for line in cli("numbers", "list", "--account", key, "--json",
                                            "--store", url).stdout.splitlines()]
    assert {r["number"] for r in rows} == {x1, x2, x3}
    assert all(r["activeBindings"] == 0 and r["countryCode"] == 852 for r in rows)
    assert x1 in cli("numbers", "list", "--table", "--store", url).stdout  # the human table
    removed = json.loads(cli("numbers", "remove", x1, "--store", url).stdout)
    assert removed == {"removed": [x1], "kept": [], "notFound": []}


def test_remove_refused_while_bound(url: str) -> None:
    created = json.loads(cli("account", "create", "--name", "r", "--store", url).stdout)
    x = unique_hk("3")
    cli("numbers", "add", "--account", created["accessKey"], x, "--store", url)
    server = Server(url)
    try:
        client = PnsClient(server.url, created["accessKey"], created["accessSecret"])
        assert client.bind_axb(unique_hk("1"), unique_hk("2"), 0)["data"]["did"] == x
        rows = [json.loads(line) for line in cli("numbers", "list", "--json", "--account",
                                                created["accessKey"], "--store", url)
                .stdout.splitlines()]
        assert rows[0]["activeBindings"] == 1
        refused = cli("numbers", "remove", x, "--store", url, check=False)
        assert refused.returncode != 0 and "--force" in refused.stderr
        forced = json.loads(cli("numbers", "remove", x, "--force", "--store", url).stdout)
        assert forced["removed"] == [x]
        assert client.list_bindings()["data"]["total"] == 0
    finally:
        server.stop()


def test_store_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PNS_STORE": f"sqlite:///{tmp_path}/env.db"}
    subprocess.run(pns_command("migrate"), env=env, capture_output=True, check=True)
    assert oct((tmp_path / "env.db").stat().st_mode & 0o777) == "0o600"
    out = subprocess.run(pns_command("account", "create", "--name", "e"), env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["name"] == "e"


_NO_STORE_COMMANDS = [
    ["account", "list"], ["account", "create", "--name", "x"], ["account", "set", "k"],
    ["account", "rotate-secret", "k"], ["numbers", "add", "--account", "k", "85235753351"],
    ["numbers", "list"], ["numbers", "remove", "85235753351"],
    ["numbers", "disable", "85235753351"], ["numbers", "enable", "85235753351"],
    ["numbers", "move", "85235753351", "--to", "k"], ["stats"], ["deliveries"],
    ["bindings", "list", "--account", "k"], ["bindings", "show", "b"],
    ["bindings", "unbind", "b"], ["bindings", "update", "b", "--expire-second", "60"],
    ["deliver"], ["numbers", "import", "--account", "k", "/dev/null"],
    ["blacklist", "add", "--account", "k", "85235753351"],
    ["blacklist", "remove", "--account", "k", "85235753351"],
    ["blacklist", "list", "--account", "k"], ["operator", "create", "--name", "x"],
    ["operator", "list"], ["operator", "disable", "x"], ["secrets", "rotate-key"],
]


@pytest.mark.parametrize("args", _NO_STORE_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_missing_store_is_refused_not_created(tmp_path: Path, args: list[str]) -> None:
    """Run from the wrong directory, a command must not work on an empty store of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PNS_STORE", "PNS_CONFIG")}
    result = subprocess.run(pns_command(*args), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "pns.db").exists()
    message = result.stderr
    assert f"no store at {tmp_path / 'pns.db'}" in message and "the default" in message
    assert all(way in message for way in ("--store", "PNS_STORE", "PNS_CONFIG"))
    assert "Traceback" not in message and result.stdout == ""


def test_serve_and_migrate_create_the_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PNS_STORE", "PNS_CONFIG")}
    run = subprocess.run(pns_command("migrate"), cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True)
    assert "created the store" in run.stdout and (tmp_path / "pns.db").exists()
    server = Server(f"sqlite:///{tmp_path}/served.db")
    server.stop()
    assert (tmp_path / "served.db").exists()


def test_verbose_says_which_store_and_why(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PNS_STORE", "PNS_CONFIG")}
    flag_url = f"sqlite:///{tmp_path}/flag.db"
    cli("migrate", "--store", flag_url)

    def said(*args: str, **extra: str) -> str:
        result = subprocess.run(pns_command("--verbose", *args), cwd=tmp_path,
                                env={**env, **extra}, capture_output=True, text=True)
        return result.stderr

    assert f"pns: store {flag_url} = {tmp_path / 'flag.db'} (from --store)" in said(
        "account", "list", "--store", flag_url)
    assert "(from PNS_STORE)" in said("account", "list", PNS_STORE=flag_url)
    config = tmp_path / "pns.toml"
    config.write_text(f'store = "{flag_url}"\n')
    assert "(from the config file)" in said("account", "list", PNS_CONFIG=str(config))
    assert f"{tmp_path / 'pns.db'} (the default)" in said("account", "list")


def test_every_error_names_the_store(url: str) -> None:
    for args in (["account", "set", "nobody", "--enable"], ["bindings", "show", "nope"],
                 ["bindings", "unbind", "nope"], ["numbers", "remove", "85269999999"],
                 ["numbers", "add", "--account", "nobody", "85269999998"],
                 ["numbers", "move", "85269999999", "--to", "nobody"]):
        result = cli(*args, "--store", url, check=False)
        assert result.returncode == 1, args
        assert url.split("@")[-1] in result.stderr, (args, result.stderr)


def test_migrate_says_what_it_did(fresh_store_url: str) -> None:
    assert "created the store at the current schema version" in cli(
        "migrate", "--store", fresh_store_url).stdout
    assert "nothing to do" in cli("migrate", "--store", fresh_store_url).stdout


def test_migrate_names_an_upgrade(tmp_path: Path) -> None:
    import sqlite3

    from pns.store import sqlite as sqlite_store

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(sqlite_store._MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    out = cli("migrate", "--store", f"sqlite:///{path}").stdout
    assert f"upgraded the store from schema version 1 to {sqlite_store.SCHEMA_VERSION}" in out


def test_bad_store_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("account", "list", "--store", "mysql://nope", check=False)
    assert result.returncode == 1
    assert "unknown store URL" in result.stderr and "Traceback" not in result.stderr
    result = cli("account", "list", "--store", f"sqlite:///{tmp_path}/no/such/dir/x.db",
                 check=False)
    assert result.returncode == 1 and "no store at" in result.stderr
    result = cli("migrate", "--store", f"sqlite:///{tmp_path}/no/such/dir/x.db", check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_help_everywhere() -> None:
    for args in ([], ["serve"], ["account"], ["account", "create"], ["numbers", "add"],
                 ["numbers", "disable"], ["numbers", "move"], ["bindings", "list"]):
        out = subprocess.run([sys.executable, "-m", "pns.cli", *args, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "Usage:" in out


def test_stats_import_and_bindings(url: str, tmp_path: Path) -> None:
    created = json.loads(cli("account", "create", "--name", "ops", "--store", url).stdout)
    key = created["accessKey"]
    xs = [unique_hk("3") for _ in range(3)]
    listing = tmp_path / "pool.txt"
    listing.write_text("\n".join(xs) + "\n")
    imported = cli("numbers", "import", str(listing), "--account", key, "--store", url)
    assert json.loads(imported.stdout) == {"added": 3, "alreadyPresent": 0,
                                           "ownedByOtherAccounts": []}
    bad = tmp_path / "bad.txt"
    bad.write_text("12\n")
    refused = cli("numbers", "import", str(bad), "--account", key, "--store", url, check=False)
    assert refused.returncode == 1 and "nothing was added" in refused.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe85235753351\n")
    refused = cli("numbers", "import", str(binary), "--account", key, "--store", url,
                  check=False)
    assert refused.returncode == 1 and "cannot read" in refused.stderr
    assert "Traceback" not in refused.stderr
    server = Server(url)
    try:
        c = PnsClient(server.url, key, created["accessSecret"])
        a = unique_hk("1")
        ids = [c.bind_axb(a, unique_hk("2"), 0)["data"]["bindId"] for _ in range(3)]
        assert c.bind_axb(a, unique_hk("2"), 0)["code"] == 10010
    finally:
        server.stop()
    pools = [json.loads(line) for line in cli("stats", "--json", "--store", url)
             .stdout.splitlines()]
    mine = next(p for p in pools if p["account"] == key)
    assert mine["numbers"] == 3 and mine["activeBindings"] == 3
    assert mine["busiestPartyBindings"] == 3 and mine["headroomBusiestParty"] == 0
    assert mine["fullestXBindings"] == 1 and mine["freeNumbers"] == 0
    assert "headroomBusiestParty" in cli("stats", "--table", "--store", url).stdout
    listed = [json.loads(line) for line in cli("bindings", "list", "--account", key,
                                              "--store", url).stdout.splitlines()]
    assert [b["bindId"] for b in listed] == ids
    on_x = cli("bindings", "list", "--account", key, "--number", listed[0]["did"],
               "--store", url).stdout.splitlines()
    assert len(on_x) == 1
    shown = json.loads(cli("bindings", "show", ids[0], "--store", url).stdout)
    assert shown["phoneA"] == a
    assert json.loads(cli("bindings", "unbind", ids[0], "--store", url).stdout) == \
        {"unbound": ids[0]}
    gone = cli("bindings", "show", ids[0], "--store", url, check=False)
    assert gone.returncode == 1 and "no active binding" in gone.stderr


def test_config_file_precedence(tmp_path: Path) -> None:
    config = tmp_path / "pns.toml"
    from_file = f"sqlite:///{tmp_path}/from-file.db"
    config.write_text(f'store = "{from_file}"\n')
    env = {k: v for k, v in os.environ.items() if k != "PNS_STORE"}
    subprocess.run(pns_command("--config", str(config), "migrate"), env=env, check=True,
                   capture_output=True)
    run = subprocess.run(pns_command("--config", str(config), "account", "create", "--name",
                                     "f"), env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)["name"] == "f" and (tmp_path / "from-file.db").exists()
    # The environment wins over the file, and a flag over both.
    env["PNS_STORE"] = f"sqlite:///{tmp_path}/from-env.db"
    subprocess.run(pns_command("--config", str(config), "migrate"), env=env,
                   check=True, capture_output=True)
    assert (tmp_path / "from-env.db").exists()
    subprocess.run(pns_command("--config", str(config), "migrate", "--store",
                               f"sqlite:///{tmp_path}/from-flag.db"), env=env, check=True,
                   capture_output=True)
    assert (tmp_path / "from-flag.db").exists()
    broken = tmp_path / "broken.toml"
    broken.write_text("store = \n")
    result = subprocess.run(pns_command("--config", str(broken), "account", "list"), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot read config" in result.stderr
    broken.write_bytes(b"\xff\xfe = 1")
    result = subprocess.run(pns_command("--config", str(broken), "account", "list"), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot read config" in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_rotation_with_grace(url: str) -> None:
    created = json.loads(cli("account", "create", "--name", "rot", "--store", url).stdout)
    key, old = created["accessKey"], created["accessSecret"]
    server = Server(url)
    try:
        rotated = json.loads(cli("account", "rotate-secret", key, "--grace", "3", "--store",
                                 url).stdout)
        new = rotated["accessSecret"]
        assert new != old and rotated["previousSecretValidUntil"] > 0
        time.sleep(1.1)  # past the account cache
        assert PnsClient(server.url, key, new).list_bindings(1, 0)["code"] == 0
        assert PnsClient(server.url, key, old).list_bindings(1, 0)["code"] == 0
        time.sleep(3)
        assert PnsClient(server.url, key, old).list_bindings(1, 0)["code"] == 1003
        assert PnsClient(server.url, key, new).list_bindings(1, 0)["code"] == 0
    finally:
        server.stop()


def _customer(url: str, name: str = "c") -> dict[str, str]:
    return json.loads(cli("account", "create", "--name", name, "--store", url).stdout)


def test_remove_reports_numbers_it_did_not_have(url: str) -> None:
    key = _customer(url)["accessKey"]
    x, missing = unique_hk("3"), unique_hk("3")
    cli("numbers", "add", "--account", key, x, "--store", url)
    nothing = cli("numbers", "remove", missing, "abc", "--store", url, check=False)
    assert nothing.returncode == 1 and "nothing to remove" in nothing.stderr
    assert json.loads(nothing.stdout) == {"removed": [], "kept": [], "notFound": [missing, "abc"]}
    some = cli("numbers", "remove", missing, f"+{x}", "--store", url)
    assert json.loads(some.stdout) == {"removed": [x], "kept": [], "notFound": [missing]}
    assert f"not found: {missing}" in some.stderr


def test_add_names_the_account_that_owns_a_number(url: str) -> None:
    first, second = _customer(url, "first")["accessKey"], _customer(url, "second")["accessKey"]
    x, y = unique_hk("3"), unique_hk("3")
    cli("numbers", "add", "--account", first, x, "--store", url)
    result = cli("numbers", "add", "--account", second, x, y, "--store", url, check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"added": 1, "alreadyPresent": 0,
                                         "ownedByOtherAccounts": [{"number": x,
                                                                   "account": first}]}
    assert f"{x} (account {first})" in result.stderr
    owners = {r["number"]: r["account"] for r in _lines(cli("numbers", "list", "--store", url))}
    assert owners[x] == first and owners[y] == second  # nothing was taken from its owner
    switch = json.loads(cli("account", "create", "--name", "sw", "--role", "switch",
                            "--store", url).stdout)["accessKey"]
    refused = cli("numbers", "add", "--account", switch, unique_hk("3"), "--store", url,
                  check=False)
    assert refused.returncode == 1 and "switch account" in refused.stderr


def test_disable_enable_and_move_numbers(url: str) -> None:
    owner, other = _customer(url, "owner"), _customer(url, "other")
    x = unique_hk("3")
    cli("numbers", "add", "--account", owner["accessKey"], x, "--store", url)
    server = Server(url)
    try:
        client = PnsClient(server.url, owner["accessKey"], owner["accessSecret"])
        disabled = json.loads(cli("numbers", "disable", x, "--store", url).stdout)
        assert disabled == {"disabled": [x], "notFound": []}
        assert [r["enabled"] for r in _lines(cli("numbers", "list", "--account",
                                                 owner["accessKey"], "--store", url))] == [False]
        assert client.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] in (10008, 10010)
        assert json.loads(cli("numbers", "enable", x, "--store", url).stdout)["enabled"] == [x]
        bound = client.bind_axb(unique_hk("1"), unique_hk("2"), 0)
        assert bound["code"] == 0 and bound["data"]["did"] == x
        missing = cli("numbers", "disable", unique_hk("3"), "--store", url, check=False)
        assert missing.returncode == 1 and "nothing to disable" in missing.stderr
        # A number with an active binding moves only with --force, which ends the binding.
        refused = cli("numbers", "move", x, "--to", other["accessKey"], "--store", url,
                      check=False)
        assert refused.returncode == 1 and "--force" in refused.stderr
        assert json.loads(refused.stdout)["kept"] == [x]
        moved = json.loads(cli("numbers", "move", x, "--to", other["accessKey"], "--force",
                               "--store", url).stdout)
        assert moved == {"moved": [x], "to": other["accessKey"], "kept": [], "notFound": []}
        assert client.list_bindings()["data"]["total"] == 0
        time.sleep(1.1)  # past the number-owner cache
        taker = PnsClient(server.url, other["accessKey"], other["accessSecret"])
        assert taker.bind_axb(unique_hk("1"), unique_hk("2"), 0)["data"]["did"] == x
        assert client.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 10008
    finally:
        server.stop()


def test_listings_page_with_a_cursor(url: str) -> None:
    created = _customer(url, "pages")
    key = created["accessKey"]
    xs = sorted(unique_hk("3") for _ in range(5))
    cli("numbers", "add", "--account", key, *xs, "--store", url)
    first = _lines(cli("numbers", "list", "--account", key, "--limit", "2", "--store", url))
    assert [r["number"] for r in first] == xs[:2]
    rest = _lines(cli("numbers", "list", "--account", key, "--after", xs[1], "--store", url))
    assert [r["number"] for r in rest] == xs[2:]
    server = Server(url)
    try:
        c = PnsClient(server.url, key, created["accessSecret"])
        ids = [c.bind_axb(unique_hk("1"), unique_hk("2"), 0)["data"]["bindId"]
               for _ in range(5)]
    finally:
        server.stop()
    page = _lines(cli("bindings", "list", "--account", key, "--limit", "2", "--store", url))
    assert [b["bindId"] for b in page] == ids[:2]
    after = _lines(cli("bindings", "list", "--account", key, "--after", ids[1], "--limit", "2",
                       "--store", url))
    assert [b["bindId"] for b in after] == ids[2:4]
    gone = cli("bindings", "list", "--account", key, "--after", "nope", "--store", url,
               check=False)
    assert gone.returncode == 1 and "no active binding nope" in gone.stderr


def test_listing_streams_past_one_page(url: str, tmp_path: Path) -> None:
    """More rows than one store page: every row once, in order, as JSON and as a table."""
    from pns.cli import PAGE_SIZE

    key = _customer(url, "many")["accessKey"]
    xs = [f"852{60000000 + i}" for i in range(PAGE_SIZE + 7)]
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(xs))
    cli("numbers", "import", str(pool), "--account", key, "--store", url)
    listed = [r["number"] for r in _lines(cli("numbers", "list", "--account", key,
                                              "--store", url))]
    assert listed == sorted(xs)
    table = cli("numbers", "list", "--account", key, "--table", "--store", url).stdout
    rows = table.splitlines()
    assert rows[0].split() == ["number", "account", "countryCode", "enabled", "activeBindings"]
    assert [r.split()[0] for r in rows[1:]] == sorted(xs)


def test_tables_fit_a_pipe_and_use_the_json_names(url: str) -> None:
    """Piped, a table prints every value whole (no ellipsis), under the JSON field names."""
    long_name = "a-customer-with-a-very-long-name-" * 4
    created = json.loads(cli("account", "create", "--name", long_name, "--store", url).stdout)
    cli("numbers", "add", "--account", created["accessKey"], unique_hk("3"), "--store", url)
    table = cli("stats", "--table", "--store", url).stdout
    assert long_name in table and created["accessKey"] in table and "…" not in table
    header = table.splitlines()[0].split()
    record = next(r for r in _lines(cli("stats", "--store", url))
                  if r["account"] == created["accessKey"])
    assert header == list(record)
    shown = cli("account", "create", "--name", "t", "--table", "--store", url).stdout
    fields = {line.split()[0] for line in shown.splitlines()}
    assert fields >= {"accessKey", "accessSecret", "role"}


def test_every_command_speaks_json(url: str) -> None:
    """--json everywhere: each command's output parses, one object a line."""
    created = _customer(url, "j")
    key, x = created["accessKey"], unique_hk("3")
    for args in (["account", "list"], ["account", "set", key, "--callback-url", ""],
                 ["account", "rotate-secret", key, "--grace", "0"],
                 ["numbers", "add", "--account", key, x], ["numbers", "list"],
                 ["numbers", "disable", x], ["numbers", "enable", x], ["stats"],
                 ["deliveries"], ["bindings", "list", "--account", key],
                 ["numbers", "remove", x]):
        out = cli(*args, "--json", "--store", url).stdout
        assert all(isinstance(json.loads(line), dict) for line in out.splitlines()), args
