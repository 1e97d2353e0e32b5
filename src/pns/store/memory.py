"""An exact in-memory index of the bindings that ``queryAXB`` reads: (X, party) and
(X, extension) to the binding, compact enough for millions.

Python objects are large (a ``Binding`` with its thirteen fields is over 600 bytes), so each
binding is kept as one msgpack ``bytes`` value shared by its keys, and a party key is one
integer (X and the number side by side) whenever both are plain digit strings, as every stored
number is. About 300 bytes per binding at 10^6 (``bench/load.py --index-bytes``).

The index knows nothing of time or of the store: expiry is checked by the reader on every
answer (an expired binding stays until the store deletes it and the deletion reaches here), and
the store decides when to add and remove. ``seq`` (the store's row number, always increasing)
tells a binding apart from a later one on the same keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from ..model import (
    BIND_TYPE_AXB,
    BIND_TYPE_EXTENSION,
    Binding,
    binding_from_row,
    binding_row,
)

# Party keys pack X and the number as X * 10^16 + number: numbers have at most 15 digits.
_SHIFT = 10**16
_Packed = tuple[int, str, int, str, str, str, str, int, str, str, int, int, int, int, str]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Packed).decode


def _plain(digits: str) -> bool:
    return len(digits) < 16 and digits.isdigit() and digits.isascii() and digits[:1] != "0"


def _party_key(x: str, number: str) -> int | tuple[str, str]:
    if _plain(number) and _plain(x):
        return int(x) * _SHIFT + int(number)
    return (x, number)


def pack(seq: int, b: Binding) -> bytes:
    return _encode((seq, *binding_row(b)))


def unpack(value: bytes) -> tuple[int, Binding]:
    row = _decode(value)
    return row[0], binding_from_row(row[1:])


def _expire_at(value: bytes) -> int:
    return _decode(value)[12]


class BindingIndex:
    def __init__(self) -> None:
        self._parties: dict[int | tuple[str, str], bytes] = {}
        self._extensions: dict[str, dict[str, bytes]] = {}
        # X's part of a party key, per X (as many as the store has numbers).
        self._x_keys: dict[str, int] = {}
        # The party keys of bindings of the other modes (on Y, "*", a group's members), by
        # seq, so ``remove`` forgets every one of them.
        self._mode_keys: dict[int, list[int | tuple[str, str]]] = {}

    def add(self, seq: int, binding: Binding) -> None:
        value = pack(seq, binding)
        keys = [_party_key(number, party) for number, party in binding.party_keys()]
        for key in keys:
            self._parties[key] = value
        if binding.bind_type not in (BIND_TYPE_AXB, BIND_TYPE_EXTENSION):
            self._mode_keys[seq] = keys
        if binding.extension:
            self._extensions.setdefault(binding.x, {})[binding.extension] = value

    def add_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Add rows of (seq, then a binding's fields in ``Binding`` order), as a store reads
        them: the packed value is the row itself, with no ``Binding`` made on the way."""
        parties = self._parties
        x_keys = self._x_keys
        for row in rows:
            value = _encode(row)
            x, a, b, extension = row[3], row[4], row[5], row[6]
            if row[14] or row[7] not in (BIND_TYPE_AXB, BIND_TYPE_EXTENSION):
                # Another mode: its keys may sit on Y, be "*" or a group's members
                # (``Binding.party_keys``).
                keys = [_party_key(number, party)
                        for number, party in binding_from_row(row[1:]).party_keys()]
                for key in keys:
                    parties[key] = value
                self._mode_keys[row[0]] = keys
                if extension:
                    self._extensions.setdefault(x, {})[extension] = value
                continue
            x_key = x_keys.get(x)
            if x_key is None:
                x_key = x_keys[x] = int(x) * _SHIFT if _plain(x) else -1
            for party in (a, b) if b else (a,):
                if x_key >= 0 and _plain(party):
                    parties[x_key + int(party)] = value
                else:
                    parties[(x, party)] = value
            if extension:
                self._extensions.setdefault(x, {})[extension] = value

    def remove(self, seq: int, x: str, a: str, b: str, extension: str) -> None:
        """Forget binding ``seq``: every key it holds; keys a later binding holds already are
        left alone."""
        keys = self._mode_keys.pop(seq, None)
        if keys is None:
            keys = [_party_key(x, party) for party in (a, b) if party]
        for key in keys:
            value = self._parties.get(key)
            if value is not None and _decode(value)[0] == seq:
                del self._parties[key]
        if extension:
            on_x = self._extensions.get(x)
            value = on_x.get(extension) if on_x else None
            if on_x is not None and value is not None and _decode(value)[0] == seq:
                del on_x[extension]
                if not on_x:
                    del self._extensions[x]

    def find_by_party(self, x: str, number: str, now: int) -> Binding | None:
        x_key = self._x_keys.get(x)
        if x_key is None:
            x_key = self._x_keys[x] = int(x) * _SHIFT if _plain(x) else -1
        key: int | tuple[str, str] = (
            x_key + int(number) if x_key >= 0 and _plain(number) else (x, number))
        value = self._parties.get(key)
        if value is None:
            return None
        binding = unpack(value)[1]
        return binding if binding.active_at(now) else None

    def find_by_extension(self, x: str, extension: str, now: int) -> Binding | None:
        on_x = self._extensions.get(x)
        value = on_x.get(extension) if on_x else None
        if value is None:
            return None
        binding = unpack(value)[1]
        return binding if binding.active_at(now) else None

    def has_extension_bindings(self, x: str, now: int) -> bool:
        on_x = self._extensions.get(x)
        if not on_x:
            return False
        for value in on_x.values():
            expire_at = _expire_at(value)
            if expire_at == 0 or expire_at > now:
                return True
        return False
