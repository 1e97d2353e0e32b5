"""Identifiers: 19-digit snowflake ids (requestId, callId) and 32-hex binding ids.

Snowflakes follow Twitter's layout (41 bits of milliseconds since the Twitter epoch, 10 bits of
worker, 12 bits of sequence) so they look like NXCloud's and sort by time.

Unique across processes by construction: a serving process leases its worker id from the store
(``Store.lease_worker_id``; one of ``WORKER_IDS``, renewed every ``LEASE_RENEW`` seconds for
``LEASE_SECONDS``) and uses it through ``use_worker``; no two live leases share an id, and the
sequence makes ids of one worker distinct within a millisecond. A process that has no lease
(the CLI, a test driving the core directly) draws its worker id at random, as before: its ids
are unique within the process only. A process that fails to renew its lease in time stops
using the id (``lease_lost``) and draws a random one until it leases again.
"""

from __future__ import annotations

import os
import secrets
import time

_TWITTER_EPOCH_MS = 1288834974657
WORKER_IDS = 1024
LEASE_SECONDS = 120
LEASE_RENEW = 10


class _Snowflake:
    def __init__(self) -> None:
        self.worker = (os.getpid() ^ secrets.randbits(10)) & 0x3FF
        self.leased = False
        self.valid_until = 0.0
        self._last_ms = 0
        self._seq = 0

    def next(self) -> int:
        if self.leased and time.monotonic() > self.valid_until:
            lease_lost()
        now = int(time.time() * 1000)
        if now <= self._last_ms:
            self._seq = (self._seq + 1) & 0xFFF
            if self._seq == 0:
                self._last_ms += 1
            now = self._last_ms
        else:
            self._seq = 0
            self._last_ms = now
        return ((now - _TWITTER_EPOCH_MS) << 22) | (self.worker << 12) | self._seq


_snowflake = _Snowflake()


def use_worker(worker_id: int, valid_for: float) -> None:
    """Make ids with ``worker_id``, leased from the store by this process, for ``valid_for``
    seconds from now (less than the lease itself, so a process frozen past it stops first)."""
    if not 0 <= worker_id < WORKER_IDS:
        raise ValueError(f"worker id {worker_id} out of range")
    _snowflake.worker = worker_id
    _snowflake.valid_until = time.monotonic() + valid_for
    _snowflake.leased = True


def lease_lost() -> None:
    """The lease ran out: another process may hold this id now."""
    _snowflake.worker = secrets.randbits(10)
    _snowflake.leased = False


def current_worker() -> tuple[int, bool]:
    """(worker id, whether it is leased)."""
    return _snowflake.worker, _snowflake.leased


def new_snowflake() -> str:
    """A fresh 19-digit id as a string (requestId, callId)."""
    return str(_snowflake.next())


def snowflake_floor(epoch_seconds: float) -> str:
    """The smallest id made at ``epoch_seconds``: ids below it are older (they sort by time,
    as strings too while they have 19 digits, until about 2080)."""
    return str((int(epoch_seconds * 1000) - _TWITTER_EPOCH_MS) << 22)


def new_bind_id() -> str:
    """32 lowercase hex digits, as NXCloud's bindId: 12 of milliseconds, then 80 random bits.
    The time first makes a store's bindId index grow at its end, as bindings are made,
    instead of touching a random page of it for every bind (most of a bind's cost at 10^6)."""
    return f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:012x}{secrets.token_hex(10)}"
