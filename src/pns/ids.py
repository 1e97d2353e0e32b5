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


_BIND_ID_LENGTH = 32
_MAX_ROUTABLE_X = 15  # E.164: at most 15 digits, so the length fits in one hex digit


def new_bind_id(x: str = "") -> str:
    """32 lowercase hex digits, as NXCloud's bindId, that name their X.

    A sharded binding index finds a binding from its id alone, with no global index: the id is
    the length of X (one hex digit), X's digits (decimal digits are hex digits), then random
    hex. The id reveals X only to whoever holds it, and X is in the same answer (``did``). With
    no X (or one that cannot be embedded) the id is all random, as before.
    """
    if not (x.isascii() and x.isdigit() and 1 <= len(x) <= _MAX_ROUTABLE_X):
        return secrets.token_hex(_BIND_ID_LENGTH // 2)
    head = f"{len(x):x}{x}"
    return head + secrets.token_hex(_BIND_ID_LENGTH // 2)[: _BIND_ID_LENGTH - len(head)]


def bind_id_x(bind_id: str) -> str | None:
    """The X a bindId made by ``new_bind_id(x)`` names, or None for any other string."""
    if len(bind_id) != _BIND_ID_LENGTH or not bind_id.isascii():
        return None
    try:
        length = int(bind_id[0], 16)
    except ValueError:
        return None
    x = bind_id[1 : 1 + length]
    if length == 0 or not x.isdigit():
        return None
    return x
