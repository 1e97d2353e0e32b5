"""Secrets at rest: account secrets are sealed with AES-256-GCM before they reach a store, so
the store's files, its backups and a ``pg_dump`` alone reveal none of them.

The key lives apart from the store: ``PNS_SECRET_KEY`` (one or more keys, comma separated, the
first seals), else the file ``PNS_SECRET_KEY_FILE`` names, else, for SQLite, ``<store>.key``
beside the store file, created readable by its owner only when the store has no sealed secret
yet. A PostgreSQL store needs one of the first two (there is no file beside a database).

A sealed value is ``pns-aesgcm:<key id>:<base64(nonce | ciphertext | tag)>``; the key id (the
first 8 hex digits of the key's SHA-256) picks the key among several, so a key can be rotated
while the old one still opens what it sealed. The associated data names the column and the
account's accessKey: a sealed secret copied to another account or column does not open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .store.base import Store, StoreError

KEY_ENV = "PNS_SECRET_KEY"
KEY_FILE_ENV = "PNS_SECRET_KEY_FILE"
SEALED_PREFIX = "pns-aesgcm:"
_NONCE_BYTES = 12
_log = logging.getLogger("pns.vault")


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def key_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys as text: base64 of 32 bytes each, separated by commas or whitespace."""
    keys = []
    for word in text.replace(",", " ").split():
        try:
            key = base64.urlsafe_b64decode(word + "=" * (-len(word) % 4))
        except (binascii.Error, ValueError):
            raise StoreError(f"{source}: a key is not base64") from None
        if len(key) != 32:
            raise StoreError(f"{source}: a key must be 32 bytes (make one with "
                             "`pns secrets new-key`)")
        keys.append(key)
    if not keys:
        raise StoreError(f"{source} holds no key")
    return keys


def write_key_file(path: str, keys: Sequence[bytes]) -> None:
    """Replace the key file atomically (a crash leaves the old or the new one, whole), readable
    by its owner only."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write("".join(key_text(key) + "\n" for key in keys))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Keyring:
    """The keys that open sealed secrets; the first one seals. Keys from a file are read again
    when a secret names a key this process does not know yet (``pns secrets rotate-key`` ran in
    another process)."""

    def __init__(self, keys: Sequence[bytes], source: str, path: str | None = None):
        self.source = source
        self.path = path
        self._set(keys)

    def _set(self, keys: Sequence[bytes]) -> None:
        self.keys = list(keys)
        self._by_id = {_key_id(key): AESGCM(key) for key in self.keys}
        self._current_id = _key_id(self.keys[0])

    @classmethod
    def ephemeral(cls) -> Keyring:
        """For a store that lives in memory only."""
        return cls([new_key()], "memory")

    def seal(self, plaintext: str, context: str) -> str:
        if not plaintext:
            return ""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._by_id[self._current_id].encrypt(nonce, plaintext.encode(),
                                                      context.encode())
        return f"{SEALED_PREFIX}{self._current_id}:{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, stored: str, context: str) -> str:
        if not stored:
            return ""
        if not stored.startswith(SEALED_PREFIX):
            raise StoreError("a secret in the store is not sealed: run `pns migrate`")
        key_id, _, payload = stored[len(SEALED_PREFIX):].partition(":")
        aead = self._by_id.get(key_id)
        if aead is None and self.path is not None:
            self.reload()
            aead = self._by_id.get(key_id)
        if aead is None:
            raise StoreError(f"a secret in the store was sealed with key {key_id}, which "
                             f"{self.source} does not hold")
        try:
            raw = base64.b64decode(payload, validate=True)
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise StoreError(f"a sealed secret does not open with key {key_id}") from None

    def derived_key(self, purpose: str, key_id: str | None = None) -> tuple[str, bytes] | None:
        """A key for ``purpose`` (signing console sessions) and the id of the key it comes
        from: the sealing key's by default, else key ``key_id``'s (the key file is read again
        for one this process does not know yet, as in ``unseal``); None when no key has that
        id. An HMAC of the purpose, so it is never the sealing key itself and one purpose's
        key says nothing of another's. Like the sealing key, it lives outside the store."""
        if key_id is None:
            key_id = self._current_id
        elif key_id not in self._by_id and self.path is not None:
            self.reload()
        key = next((k for k in self.keys if _key_id(k) == key_id), None)
        if key is None:
            return None
        return key_id, hmac.new(key, f"pns {purpose}".encode(), hashlib.sha256).digest()

    def is_current(self, stored: str) -> bool:
        """Sealed with the key that seals now (or empty)."""
        return not stored or stored.startswith(f"{SEALED_PREFIX}{self._current_id}:")

    def reload(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            self._set(parse_keys(Path(self.path).read_text(), self.path))


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


def load_keyring(beside_store: str | None, *, may_create: bool,
                 key_file: str | None = None) -> Keyring:
    """The keyring of a store: ``PNS_SECRET_KEY``, else ``key_file`` (the PostgreSQL URL's
    ``secret_key_file``), else ``PNS_SECRET_KEY_FILE``, else the file beside the store
    (``beside_store``; None for PostgreSQL). A missing file is created only when
    ``may_create`` (the store holds no sealed secret it would need to open)."""
    text = os.environ.get(KEY_ENV, "")
    if text.strip():
        return Keyring(parse_keys(text, KEY_ENV), KEY_ENV)
    path = key_file or os.environ.get(KEY_FILE_ENV) or beside_store
    if path is None:
        raise StoreError(
            "a PostgreSQL store needs a key to seal account secrets: set PNS_SECRET_KEY (make "
            "one with `pns secrets new-key`), PNS_SECRET_KEY_FILE or the URL option "
            "secret_key_file=PATH, the same on every process"
        )
    if os.path.exists(path):
        if os.stat(path).st_mode & 0o077:
            _log.warning("the key file %s is readable by others than its owner: chmod 600 it",
                         path)
        return Keyring(parse_keys(Path(path).read_text(), path), path, path)
    if not may_create:
        raise StoreError(
            f"the store's secrets are sealed, and their key file {path} is missing: restore "
            "it from your backup (or set PNS_SECRET_KEY)"
        )
    if not Path(path).parent.exists():
        raise StoreError(f"cannot create key file {path}: its folder does not exist")
    # Written whole beside it, then linked into place: a process starting at the same time
    # sees no file or a whole one, and exactly one key wins.
    temporary = f"{path}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(key_text(new_key()) + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return Keyring(parse_keys(Path(path).read_text(), path), path, path)


async def rotate_key(store: Store) -> int:
    """Seal every secret with a new key; returns how many accounts changed.

    With a key file: a fresh key is put first in the file (the old one kept after it), every
    secret is sealed again with it in one transaction, then the old key leaves the file. A
    crash at any point leaves a file that opens every secret. Other processes read the file
    again when they meet the new key. With ``PNS_SECRET_KEY``, the operator puts the new key
    first in it (``NEW,OLD``) on every process and this seals everything with it.
    """
    keyring = store.keyring
    if keyring.path is None:
        return await store.reseal_secrets(keyring)
    fresh = new_key()
    write_key_file(keyring.path, [fresh, *keyring.keys])
    changed = await store.reseal_secrets(Keyring([fresh, *keyring.keys], keyring.source,
                                                 keyring.path))
    write_key_file(keyring.path, [fresh])
    store.keyring.reload()
    return changed
