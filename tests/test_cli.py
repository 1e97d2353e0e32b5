"""The operator's command line against a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
