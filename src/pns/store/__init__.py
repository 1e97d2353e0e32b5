"""Stores: where bindings live. ``open_store`` picks one by URL scheme (and ``bindings``)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .base import BindConflict, ConflictKind, Store, StoreError

DEFAULT_STORE_URL = "sqlite:///./pns.db"

__all__ = ["DEFAULT_STORE_URL", "BindConflict", "ConflictKind", "Store", "StoreError", "open_store",
           "schema_versions", "split_bindings"]


async def open_store(url: str, *, migrate: bool = True, index: bool = False,
                     bindings: str | None = None) -> Store:
    """Open (and create or upgrade, unless ``migrate`` is False) the store at ``url``.

    ``index``: keep the bindings ``queryAXB`` reads in memory (the serving process on the
    embedded store; ``?index=on|off`` in a SQLite URL overrides it). Stores that share their
    data with other hosts ignore it.

    With ``bindings`` (a ``redis-cluster://`` URL; also a ``bindings=`` parameter of a
    PostgreSQL URL, so one string can name the whole configuration) bindings live on that
    Redis Cluster and everything else at ``url``, which must then be PostgreSQL.
    """
    url, in_url = split_bindings(url)
    bindings = bindings or in_url
    if bindings:
        return await _open_composite(url, bindings, migrate)
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return SqliteStore.open(url, migrate=migrate, index=index)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return await PostgresStore.open(url, migrate=migrate)
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///PATH or postgresql://...")


def split_bindings(url: str) -> tuple[str, str | None]:
    """``postgresql://...?bindings=redis-cluster://...`` → (the PostgreSQL URL, the other)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    bindings = [value for key, value in query if key == "bindings"]
    if not bindings:
        return url, None
    kept = [(key, value) for key, value in query if key != "bindings"]
    return urlunsplit(parts._replace(query=urlencode(kept))), bindings[-1]


async def _open_composite(url: str, bindings: str, migrate: bool) -> Store:
    if not url.startswith(("postgresql:", "postgres:")):
        raise StoreError("a bindings index (--bindings) needs a PostgreSQL store (--store)")
    from .composite import CompositeStore
    from .pg_ledger import PgBindingLedger
    from .postgres import PostgresStore
    from .redis_index import RedisBindingIndex

    records = await PostgresStore.open(url, migrate=migrate)
    try:
        ledger = await PgBindingLedger.open(url)
        try:
            index = await RedisBindingIndex.open(bindings)
        except BaseException:
            await ledger.close()
            raise
    except BaseException:
        await records.close()
        raise
    return CompositeStore(index, ledger, records)
async def schema_versions(url: str) -> tuple[int, int]:
    """(the store's schema version, this release's), read without creating or changing the
    store: ``pns migrate`` reports what it did from them. With a bindings index, the
    PostgreSQL records store's (the ledger and the cluster have no schema versions)."""
    url, _ = split_bindings(url)
    if url.startswith("sqlite:"):
        from . import sqlite

        return sqlite.stored_schema_version(url), sqlite.SCHEMA_VERSION
    if url.startswith(("postgresql:", "postgres:")):
        from . import postgres

        return await postgres.stored_schema_version(url), postgres.SCHEMA_VERSION
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///PATH or postgresql://...")
