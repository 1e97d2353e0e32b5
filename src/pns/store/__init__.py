"""Stores: where bindings live. ``open_store`` picks one by URL scheme."""

from __future__ import annotations

from .base import BindConflict, ConflictKind, Store, StoreError

DEFAULT_STORE_URL = "sqlite:///./pns.db"

__all__ = ["DEFAULT_STORE_URL", "BindConflict", "ConflictKind", "Store", "StoreError", "open_store",
           "schema_versions"]


async def open_store(url: str, *, migrate: bool = True, index: bool = False) -> Store:
    """Open (and create or upgrade, unless ``migrate`` is False) the store at ``url``.

    ``index``: keep the bindings ``queryAXB`` reads in memory (the serving process on the
    embedded store; ``?index=on|off`` in a SQLite URL overrides it). Stores that share their
    data with other hosts ignore it."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return SqliteStore.open(url, migrate=migrate, index=index)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return await PostgresStore.open(url, migrate=migrate)
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///PATH or postgresql://...")


async def schema_versions(url: str) -> tuple[int, int]:
    """(the store's schema version, this release's), read without creating or changing the
    store: ``pns migrate`` reports what it did from them."""
    if url.startswith("sqlite:"):
        from . import sqlite

        return sqlite.stored_schema_version(url), sqlite.SCHEMA_VERSION
    if url.startswith(("postgresql:", "postgres:")):
        from . import postgres

        return await postgres.stored_schema_version(url), postgres.SCHEMA_VERSION
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///PATH or postgresql://...")
