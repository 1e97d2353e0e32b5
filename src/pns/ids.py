"""Identifiers: 19-digit snowflake ids (requestId, callId) and 32-hex binding ids.

Snowflakes follow Twitter's layout (41 bits of milliseconds since the Twitter epoch, 10 bits of
worker, 12 bits of sequence) so they look like NXCloud's and sort by time. The worker bits come
from the process id and a random salt, so stateless processes do not need coordination; a
collision would need the same millisecond, the same 10 bits and the same sequence value.
"""

from __future__ import annotations

import os
import secrets
import time

_TWITTER_EPOCH_MS = 1288834974657


class _Snowflake:
    def __init__(self) -> None:
        self._worker = (os.getpid() ^ secrets.randbits(10)) & 0x3FF
        self._last_ms = 0
        self._seq = 0

    def next(self) -> int:
        now = int(time.time() * 1000)
        if now <= self._last_ms:
            self._seq = (self._seq + 1) & 0xFFF
            if self._seq == 0:
                self._last_ms += 1
            now = self._last_ms
        else:
            self._seq = 0
            self._last_ms = now
        return ((now - _TWITTER_EPOCH_MS) << 22) | (self._worker << 12) | self._seq


_snowflake = _Snowflake()


def new_snowflake() -> str:
    """A fresh 19-digit id as a string (requestId, callId)."""
    return str(_snowflake.next())


def snowflake_floor(epoch_seconds: float) -> str:
    """The smallest id made at ``epoch_seconds``: ids below it are older (they sort by time,
    as strings too while they have 19 digits, until about 2080)."""
    return str((int(epoch_seconds * 1000) - _TWITTER_EPOCH_MS) << 22)


def new_bind_id() -> str:
    """32 lowercase hex digits, as NXCloud's bindId."""
    return secrets.token_hex(16)
