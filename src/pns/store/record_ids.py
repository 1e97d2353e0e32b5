"""Call-record ids drawn from the store's counter in blocks, one write per block.

Every ``reportCall`` needs a fresh id. Drawing each one from the store cost a write
transaction of its own per call (on SQLite: a commit in the writer thread, a third of the
report's store work), so a process draws ``size`` ids at once and hands them out from memory.

- Unique across processes: each block comes from the store's counter (a SQLite counter row, a
  PostgreSQL sequence), which never hands out a number twice.
- Increasing within a process: a block is drawn only when the last one is used up, one draw at
  a time, and every block is above the ones before it. Between processes (several workers,
  the CLI) ids interleave block by block: an id orders the records of one process, not of all.
- A process that stops leaves its unused ids as a gap; they are never handed out again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

BLOCK = 64


class RecordIds:
    def __init__(self, draw: Callable[[int], Awaitable[Sequence[int]]], size: int = BLOCK):
        """``draw(n)``: ``n`` fresh ids from the store's counter, in one write."""
        self._draw = draw
        self._size = size
        self._ids: list[int] = []
        self._lock = asyncio.Lock()

    async def next(self) -> int:
        while not self._ids:
            async with self._lock:
                if not self._ids:
                    # Reversed, so the smallest id is popped from the end first.
                    self._ids = sorted(await self._draw(self._size), reverse=True)
        return self._ids.pop()
