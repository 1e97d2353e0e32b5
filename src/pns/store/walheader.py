"""The WAL-index header of a SQLite file, read through SQLite's own descriptor of ``-shm``.

Why: the read index must notice any commit, by any process, before each answer.
``PRAGMA data_version`` does that exactly but costs 5-6 µs (it begins a read transaction:
locks taken with ``fcntl``, the GIL released around each step, which on a busy server hands
the GIL to another thread and back). The same fact is in the first 48 bytes of ``-shm``
(https://sqlite.org/walformat.html, "the WAL-index header"): every commit, by any connection
of any process, rewrites them (``mxFrame``, the checksums, and after a WAL reset the salts)
before the writer releases its lock, so before its ``COMMIT`` returns. Reading them from a
map costs a fraction of a microsecond and never releases the GIL.

Why SQLite's own descriptor: POSIX record locks belong to the process and the file, and
closing *any* descriptor of the file drops all of them, SQLite's read marks and its
dead-man-switch lock included; another process may then reset ``-shm`` under SQLite's maps
(SIGBUS) or checkpoint over pages a reader still uses. So this module never opens or closes a
descriptor of ``-shm``: it finds the one SQLite holds (``/proc/self/fd``) and maps it with
libc's ``mmap`` (Python's ``mmap`` would ``dup`` it, and close the duplicate). The map is
removed with ``munmap``, which touches no lock. SQLite keeps that descriptor open while any
of its connections to the file is open in this process, and never truncates ``-shm`` while
one of them holds the dead-man-switch lock, so the caller must ``close`` this before closing
its last connection. Where the descriptor cannot be found (not Linux, an in-memory store),
``open`` returns None and the caller keeps ``PRAGMA data_version``.
"""

from __future__ import annotations

import ctypes
import mmap
import os

# The first copy of the header: the one a writer updates last (walIndexWriteHdr).
HEADER_BYTES = 48
_MAP_BYTES = 4096


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _sqlite_fd(shm: str) -> int | None:
    """The one descriptor of ``shm`` this process holds (SQLite's), or None."""
    try:
        wanted = os.stat(shm)
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found = []
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") != shm:
                continue
            st = os.fstat(int(name))
        except (OSError, ValueError):
            continue
        if (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            found.append(int(name))
    return found[0] if len(found) == 1 else None


class WalHeader:
    """``token()``: the header's bytes; equal tokens mean no commit in between."""

    def __init__(self, libc: ctypes.CDLL, address: int):
        self._libc = libc
        self._address: int | None = address
        self._view = memoryview((ctypes.c_char * HEADER_BYTES).from_address(address)).cast("B")

    @classmethod
    def open(cls, db_path: str) -> WalHeader | None:
        """Map the header of ``db_path``'s ``-shm``; call after a connection of this process
        has read the file in WAL mode (SQLite then holds ``-shm`` open)."""
        libc = _libc()
        fd = _sqlite_fd(os.path.realpath(db_path + "-shm"))
        if libc is None or fd is None:
            return None
        try:
            if os.fstat(fd).st_size < _MAP_BYTES:
                return None
        except OSError:
            return None
        address = libc.mmap(None, _MAP_BYTES, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            return None
        return cls(libc, address)

    def token(self) -> bytes:
        return self._view.tobytes()

    def close(self) -> None:
        if self._address is not None:
            self._view.release()
            self._libc.munmap(self._address, _MAP_BYTES)
            self._address = None
