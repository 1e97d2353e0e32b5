"""Secrets at rest: the store's files (SQLite's file and WAL, a pg_dump) reveal no accessSecret;
an older store's plain secrets are sealed by the migration; the key can be rotated."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pns.client import PnsClient
from pns.ids import new_snowflake
from pns.model import CallRecord
from pns.store import StoreError, open_store
from pns.store.sqlite import path_from_url
from pns.vault import key_text, new_key

from .conftest import Server, cli, cli_json
from .test_migrations import store_module
from .test_store_conformance import fresh_store_url

__all__ = ["fresh_store_url"]  # the fixture, shared with the conformance suite


def _store_bytes(url: str) -> bytes:
    """Everything the store keeps, as an attacker with its files (or a dump) sees it."""
    if url.startswith("sqlite"):
        path = Path(path_from_url(url))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                        if p.exists())
    return subprocess.run(["pg_dump", "--no-owner", url], capture_output=True, check=True,
                          timeout=60).stdout


def _issue_secrets(url: str) -> tuple[list[str], dict[str, Any]]:
    """Accounts made and rotated with the CLI: every secret it ever printed, and the rotated
    account (its current secret is the last of them)."""
    cli("migrate", "--store", url)  # only serve and migrate create a store
    created = [cli_json("account", "create", "--name", f"n{i}", "--store", url)
               for i in range(3)]
    rotated = cli_json("account", "rotate-secret", str(created[0]["accessKey"]), "--grace",
                       "3600", "--store", url)
    return [str(c["accessSecret"]) for c in (*created, rotated)], rotated


def _works(server: Server, access_key: object, secret: object) -> bool:
    with PnsClient(server.url, str(access_key), str(secret)) as client:
        return client.call("getAXBList", {})["code"] == 0


def _found(secrets: list[str], raw: bytes) -> list[str]:
    return [s for s in secrets if s.encode() in raw]


def test_the_store_files_reveal_no_secret(fresh_store_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite with its key file beside the store (created 0600), PostgreSQL with the key from
    the environment: every secret ever issued is absent from the file, its WAL and a dump,
    and still works for signing."""
    sqlite = fresh_store_url.startswith("sqlite")
    if sqlite:
        monkeypatch.delenv("PNS_SECRET_KEY")
    issued, rotated = _issue_secrets(fresh_store_url)
    server = Server(fresh_store_url)
    try:
        assert _works(server, rotated["accessKey"], rotated["accessSecret"])
        assert _works(server, rotated["accessKey"], issued[0])  # the previous, in its grace
        raw = _store_bytes(fresh_store_url)  # while the server runs: the WAL is in use
    finally:
        server.stop()
    assert str(rotated["accessKey"]).encode() in raw, "the check would see a secret"
    assert _found(issued, raw) == []
    assert _found(issued, _store_bytes(fresh_store_url)) == []
    if sqlite:
        key_file = Path(path_from_url(fresh_store_url) + ".key")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        # Without its key the store refuses to open, saying why.
        key_file.rename(f"{key_file}.away")
        result = cli("account", "list", "--store", fresh_store_url, check=False)
        assert result.returncode != 0 and "key file" in result.stderr
        assert "Traceback" not in result.stderr


def _make_old_store(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[int]]:
    """A store as the release with schema version 2 left it: secrets in plain text and
    19-digit call-record ids."""
    secrets_plain = [f"plain-secret-{new_snowflake()}" for _ in range(2)]
    old_ids = sorted(int(new_snowflake()) for _ in range(3))

    keys = [f"oldkey{i}{s[-6:]}" for i, s in enumerate(secrets_plain)]
    # An account as schema 2 wrote it: its columns then (later versions add some).
    insert = ("INSERT INTO accounts (name, access_key, access_secret, role, created_at) "
              "VALUES ('old{i}', '{key}', 'x', 'customer', 1)")

    async def fill() -> None:
        store = await open_store(url)
        try:
            if url.startswith("sqlite"):
                conn = sqlite3.connect(path_from_url(url))
                with conn:
                    ids = [int(conn.execute(insert.format(i=i, key=key)).lastrowid or 0)
                           for i, key in enumerate(keys)]
                conn.close()
            else:
                import asyncpg

                pg = await asyncpg.connect(url)
                try:
                    ids = [int(await pg.fetchval(insert.format(i=i, key=key) + " RETURNING id"))
                           for i, key in enumerate(keys)]
                finally:
                    await pg.close()
            for n, record_id in enumerate(reversed(old_ids)):
                await store.save_call_record(CallRecord(
                    call_id=str(record_id), account_id=ids[0], bind_id="b" * 32,
                    customer_bind_id="", business_id="", did="85230000000",
                    caller="85211111111", callee="85222222222", call_status=1,
                    call_status_msg="", duration=0, start_at=n, ring_at=0, answer_at=0,
                    hangup_at=0, hangup_cause="", hangup_code=0, hangup=0, record_file="",
                    reported_at=1, id=record_id), None)
        finally:
            await store.close()
        plain = list(zip(secrets_plain, keys, strict=True))
        if url.startswith("sqlite"):
            conn = sqlite3.connect(path_from_url(url))
            conn.executemany("UPDATE accounts SET access_secret = ? WHERE access_key = ?", plain)
            conn.commit()
            conn.close()
        else:
            import asyncpg

            conn = await asyncpg.connect(url)
            try:
                await conn.executemany(
                    "UPDATE accounts SET access_secret = $1 WHERE access_key = $2", plain)
            finally:
                await conn.close()

    with monkeypatch.context() as patch:
        patch.setattr(store_module(url), "SCHEMA_VERSION", 2)
        asyncio.run(fill())
    return secrets_plain, old_ids


def test_the_migration_seals_plain_secrets_and_renumbers_record_ids(
        fresh_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if fresh_store_url.startswith("sqlite"):
        monkeypatch.delenv("PNS_SECRET_KEY")
    secrets_plain, old_ids = _make_old_store(fresh_store_url, monkeypatch)
    assert _found(secrets_plain, _store_bytes(fresh_store_url)) == secrets_plain
    cli("migrate", "--store", fresh_store_url)
    assert _found(secrets_plain, _store_bytes(fresh_store_url)) == []

    async def check() -> tuple[list[str], list[tuple[str, int]], int]:
        store = await open_store(fresh_store_url)
        try:
            accounts = [a for a in await store.list_accounts() if a.name.startswith("old")]
            records, _ = await store.list_call_records(accounts[0].id, 0, 2**62, "", 10, 0)
            return ([a.access_secret for a in accounts],
                    [(r.call_id, r.id) for r in records], await store.next_call_record_id())
        finally:
            await store.close()

    opened, records, next_id = asyncio.run(check())
    assert opened == secrets_plain
    # Renumbered 1, 2, 3 in the order of the old ids (time order); the sequence goes on.
    assert sorted(records, key=lambda r: r[1]) == [(str(i), n)
                                                   for n, i in enumerate(old_ids, start=1)]
    assert next_id == 4


def test_rotating_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pns secrets rotate-key` seals everything with a new key and drops the old one; a
    server that was running meanwhile keeps working, also for accounts sealed after it."""
    monkeypatch.delenv("PNS_SECRET_KEY")
    url = f"sqlite:///{tmp_path}/pns.db"
    key_file = tmp_path / "pns.db.key"
    issued, rotated = _issue_secrets(url)
    old_key = key_file.read_text()
    server = Server(url)
    try:
        out = json.loads(cli("secrets", "rotate-key", "--store", url).stdout)
        assert out == {"resealedAccounts": 3}
        assert key_file.read_text() != old_key and old_key.strip() not in key_file.read_text()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        created = cli_json("account", "create", "--name", "after", "--store", url)
        assert _works(server, rotated["accessKey"], rotated["accessSecret"])
        assert _works(server, created["accessKey"], created["accessSecret"])
    finally:
        server.stop()
    assert _found([*issued, str(created["accessSecret"])], _store_bytes(url)) == []
    # The old key alone no longer opens the store's secrets.
    monkeypatch.setenv("PNS_SECRET_KEY", old_key.strip())
    result = cli("account", "list", "--store", url, check=False)
    assert result.returncode != 0 and "does not hold" in result.stderr


@pytest.mark.parametrize("fresh_store_url", ["postgresql"], indirect=True)
def test_rotating_a_key_from_the_environment(fresh_store_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: PNS_SECRET_KEY=NEW,OLD, rotate-key, then NEW alone opens every secret."""
    pg_database = fresh_store_url
    old = os.environ["PNS_SECRET_KEY"]
    created = cli_json("account", "create", "--name", "env", "--store", pg_database)
    fresh = key_text(new_key())
    monkeypatch.setenv("PNS_SECRET_KEY", f"{fresh},{old}")
    assert json.loads(cli("secrets", "rotate-key", "--store", pg_database).stdout)[
        "resealedAccounts"] >= 1
    monkeypatch.setenv("PNS_SECRET_KEY", fresh)

    async def secret_of(key: str) -> str:
        store = await open_store(pg_database)
        try:
            account = await store.get_account(key)
            assert account is not None
            return account.access_secret
        finally:
            await store.close()

    assert asyncio.run(secret_of(str(created["accessKey"]))) == created["accessSecret"]
    monkeypatch.delenv("PNS_SECRET_KEY")
    with pytest.raises(StoreError, match="PNS_SECRET_KEY"):
        asyncio.run(secret_of(str(created["accessKey"])))
