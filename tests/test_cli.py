"""The operator's command line against a real store."""

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


@pytest.fixture
def url(store_url: str) -> str:
    return store_url


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
    assert added == {"added": 3, "alreadyPresent": []}
    again = json.loads(cli("numbers", "add", "--account", key, x1, "--store", url).stdout)
    assert again == {"added": 0, "alreadyPresent": [x1]}
    bad = cli("numbers", "add", "--account", key, "12", "--store", url, check=False)
    assert bad.returncode != 0 and "12" in bad.stderr
    rows = [json.loads(line) for line in cli("numbers", "list", "--account", key, "--json",
                                            "--store", url).stdout.splitlines()]
    assert {r["number"] for r in rows} == {x1, x2, x3}
    assert all(r["activeBindings"] == 0 and r["countryCode"] == 852 for r in rows)
    assert x1 in cli("numbers", "list", "--store", url).stdout  # the human table
    removed = json.loads(cli("numbers", "remove", x1, "--store", url).stdout)
    assert removed == {"removed": [x1], "kept": []}


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
    out = subprocess.run(pns_command("account", "create", "--name", "e"), env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["name"] == "e"
    assert (tmp_path / "env.db").exists()
    assert oct((tmp_path / "env.db").stat().st_mode & 0o777) == "0o600"


def test_default_store_in_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PNS_STORE"}
    subprocess.run(pns_command("account", "list"), cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert (tmp_path / "pns.db").exists()


def test_bad_store_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("account", "list", "--store", "mysql://nope", check=False)
    assert result.returncode == 1
    assert "unknown store URL" in result.stderr and "Traceback" not in result.stderr
    result = cli("account", "list", "--store", f"sqlite:///{tmp_path}/no/such/dir/x.db",
                 check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_help_everywhere() -> None:
    for args in ([], ["serve"], ["account"], ["account", "create"], ["numbers", "add"]):
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
    assert json.loads(imported.stdout) == {"added": 3, "alreadyPresent": 0}
    bad = tmp_path / "bad.txt"
    bad.write_text("12\n")
    refused = cli("numbers", "import", str(bad), "--account", key, "--store", url, check=False)
    assert refused.returncode == 1 and "nothing was imported" in refused.stderr
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
    assert "headroom" in cli("stats", "--store", url).stdout
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
    run = subprocess.run(pns_command("--config", str(config), "account", "create", "--name",
                                     "f"), env=env, capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)["name"] == "f" and (tmp_path / "from-file.db").exists()
    # The environment wins over the file, and a flag over both.
    env["PNS_STORE"] = f"sqlite:///{tmp_path}/from-env.db"
    subprocess.run(pns_command("--config", str(config), "account", "list"), env=env,
                   check=True, capture_output=True)
    assert (tmp_path / "from-env.db").exists()
    subprocess.run(pns_command("--config", str(config), "account", "list", "--store",
                               f"sqlite:///{tmp_path}/from-flag.db"), env=env, check=True,
                   capture_output=True)
    assert (tmp_path / "from-flag.db").exists()
    broken = tmp_path / "broken.toml"
    broken.write_text("store = \n")
    result = subprocess.run(pns_command("--config", str(broken), "account", "list"), env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "cannot read config" in result.stderr


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
