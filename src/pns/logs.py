"""Logging set-up: plain text or JSON lines, masking of phone numbers, and a writer thread.

Nothing here ever formats a secret: request headers are not logged, and the store URL is
logged without its password.

Once ``configure`` has run, no log line is formatted or written on the event loop: records
(and the access log's bare tuples, which skip ``LogRecord`` altogether) go to a bounded
queue, and one thread formats them and writes each batch with one ``write``. The queue is
flushed when the process exits (``atexit``), so a SIGTERM'd server still writes every line.
If the writer cannot keep up (a log pipe nobody reads), lines are dropped and counted, never
waited for: the service does not stall on its log.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, groupby, repeat
from json.encoder import encode_basestring
from math import trunc
from operator import mul, sub
from typing import Any, TextIO, cast

# Phone numbers have at most 15 digits (E.164); longer runs are ids (requestId has 19), which
# must stay whole to correlate logs. Whole runs of 7+ digits are matched and the longer ones
# left alone: a pattern bounded to 15 with look-arounds backtracks through every id.
_DIGIT_RUN = re.compile(r"\d{7,}")

_ACCESS = "pns.access"
_ACCESS_MSG = "requestId=%s action=%s code=%d ms=%.3f"
_access_logger = logging.getLogger(_ACCESS)
# What JSON strings escape (json.dumps with ensure_ascii=False); the ids and actions pns
# makes hold none of it.
_JSON_ESCAPED = re.compile(r'[\x00-\x1f"\\]')
_UTC_SECOND = "%Y-%m-%dT%H:%M:%S"
_UTC_MSEC = "%s.%03dZ"
# Queue length that wakes the writer at once; otherwise it writes every _INTERVAL seconds.
_BATCH = 256
_INTERVAL = 0.05
_CAPACITY = 65_536


def mask_number(text: str) -> str:
    """Keep the first 4 and last 2 digits of every phone-number-like run: 8521*****14."""
    return _DIGIT_RUN.sub(_mask_run, text)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group()
    return run if len(run) > 15 else run[:4] + "*" * (len(run) - 6) + run[-2:]


class _MaskedTracebacks(logging.Formatter):
    """Tracebacks and stacks quote arguments and locals: they are masked like messages."""

    mask = False

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        return mask_number(text) if self.mask else text

    def formatStack(self, stack_info: str) -> str:
        text = super().formatStack(stack_info)
        return mask_number(text) if self.mask else text


# (time.time(), requestId, action, code, duration in milliseconds): what ``access_log``
# queues, the arguments of one access line.
AccessEntry = tuple[float, str, str, int, float]


class _Stamps(dict[int, str]):
    """Timestamps' text in two parts: the second's, by whole second (the lines of one second
    share it, so ``strftime`` runs once a second), then the milliseconds', from ``msecs``, a
    table made once. Two small lookups a line: the log's entries are cold in the CPU's caches
    by the time they are written, and a larger table of whole timestamps cost more."""

    def __init__(self, second: Callable[[int], str], msec_format: str):
        super().__init__()
        self._second = second
        # What msec_format (``%s`` the second's text, then the milliseconds) adds to it.
        self.msecs = tuple(msec_format % ("", msecs) for msecs in range(1000))

    def __missing__(self, second: int) -> str:
        if len(self) >= 4:
            self.clear()  # lines come in time order: older seconds are not asked for again
        text = self[second] = self._second(second)
        return text


def _access_lines(template: str, stamps: _Stamps, created: Sequence[float],
                  request_ids: Sequence[str], actions: Sequence[str], codes: Sequence[int],
                  milliseconds: Sequence[float]) -> str:
    """A batch's lines, each ending in a newline, made by one ``%`` of ``template`` repeated
    (its fields: the second's and the milliseconds' text, then ``_ACCESS_MSG``'s): every
    step runs in C over the whole batch, as a Python loop over lines would cost more than
    the log's budget. The milliseconds of the timestamp are logging's (``LogRecord.msecs``):
    ``int((created - int(created)) * 1000)``, with ``trunc``, which is ``int`` for a float
    at half the cost of calling ``int``."""
    whole = list(map(trunc, created))
    msecs = map(trunc, map(mul, map(sub, created, whole), repeat(1000.0)))
    return (template * len(whole)) % tuple(chain.from_iterable(zip(
        map(stamps.__getitem__, whole), map(stamps.msecs.__getitem__, msecs), request_ids,
        actions, codes, milliseconds, strict=True)))


class TextFormatter(_MaskedTracebacks):
    """``asctime level logger message``; with ``mask``, numbers are masked in tracebacks and
    stacks too (a traceback quotes exception messages, which may carry a caller's number)."""

    # logging's own, made this class's: records' asctime and access lines' stamps share it.
    default_msec_format: str = "%s,%03d"

    def __init__(self, mask: bool = False):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.mask = mask
        self._stamps = _Stamps(self._asctime, self.default_msec_format)
        self._access = f"%s%s INFO {_ACCESS} {_ACCESS_MSG}\n"

    def _asctime(self, second: int) -> str:
        return time.strftime(self.default_time_format, self.converter(second))

    def format_access(self, entries: Sequence[AccessEntry]) -> str:
        """What ``format`` makes of INFO records of pns.access, without the records."""
        return _access_lines(self._access, self._stamps, *zip(*entries, strict=True))


class JsonFormatter(_MaskedTracebacks):
    def __init__(self, mask: bool = False):
        super().__init__()
        self.mask = mask
        self._stamps = _Stamps(lambda second: time.strftime(_UTC_SECOND, time.gmtime(second)),
                               _UTC_MSEC)
        self._access = (f'{{"ts": "%s%s", "level": "info", "logger": "{_ACCESS}", '
                        f'"msg": "{_ACCESS_MSG}"}}\n')

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)

    def format_access(self, entries: Sequence[AccessEntry]) -> str:
        """What ``format`` makes of INFO records of pns.access, without the records. Ids and
        actions are escaped only in a batch that needs it, which pns's own never do."""
        created, request_ids, actions, codes, milliseconds = zip(*entries, strict=True)
        if _JSON_ESCAPED.search("".join(request_ids + actions)):
            request_ids, actions = _json_inner(request_ids), _json_inner(actions)
        return _access_lines(self._access, self._stamps, created, request_ids, actions, codes,
                             milliseconds)


def _json_inner(texts: Sequence[str]) -> tuple[str, ...]:
    """The texts as JSON strings, without their quotes, to be put inside one."""
    return tuple(encode_basestring(text)[1:-1] for text in texts)


def _utc(created: float) -> str:
    return _UTC_MSEC % (time.strftime(_UTC_SECOND, time.gmtime(created)),
                        int((created - int(created)) * 1000))


class MaskingFilter(logging.Filter):
    """Masks phone numbers in every message below DEBUG verbosity."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_number(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class _Writer:
    """The one thread that formats and writes log lines, a batch per ``write``."""

    def __init__(self, handler: logging.StreamHandler[TextIO],
                 formatter: TextFormatter | JsonFormatter):
        self._handler = handler
        self._formatter = formatter
        self._items: deque[logging.LogRecord | AccessEntry] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self.dropped = 0
        self._reported_dropped = 0
        self._thread = threading.Thread(target=self._run, name="pns-log-writer", daemon=True)
        self._thread.start()

    def put(self, item: logging.LogRecord | AccessEntry) -> None:
        """From any thread; never blocks."""
        items = self._items
        if len(items) >= _CAPACITY:
            self.dropped += 1
            return
        items.append(item)
        if len(items) == _BATCH:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(_INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything queued so far (from the writer thread, or at exit). Access
        entries are formatted a run at a time (between two records, in queue order), which is
        what keeps the access log cheap."""
        with self._lock:
            items = self._items
            popleft = items.popleft
            batch = [popleft() for _ in range(len(items))]
            # A run of one type is all access entries (tuples) or all records.
            texts = [self._access_lines(cast(list[AccessEntry], list(run))) if kind is tuple
                     else "".join(map(self._record_line,
                                      cast(Iterator[logging.LogRecord], run)))
                     for kind, run in groupby(batch, type)]
            if self.dropped != self._reported_dropped:
                lost = self.dropped - self._reported_dropped
                self._reported_dropped = self.dropped
                texts.append(self._record_line(logging.LogRecord(
                    "pns.logs", logging.WARNING, __file__, 0,
                    "%d log lines dropped: the log was not written fast enough", (lost,),
                    None)))
            text = "".join(texts)
            if not text:
                return
            stream = self._handler.stream
            try:
                stream.write(text)
                stream.flush()
            except Exception:  # a closed or broken log stream must not kill the writer
                pass

    def _access_lines(self, entries: list[AccessEntry]) -> str:
        # An access line holds a 19-digit id, an action name, a code and a duration: no
        # phone number to mask, by construction.
        try:
            return self._formatter.format_access(entries)
        except Exception:
            if len(entries) == 1:
                return ""  # an entry that cannot be formatted is lost alone
            return "".join(self._access_lines([entry]) for entry in entries)

    def _record_line(self, record: logging.LogRecord) -> str:
        try:
            return self._handler.format(record) + "\n" if self._handler.filter(record) else ""
        except Exception:
            return ""  # a record that cannot be formatted is lost alone

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()


class _QueueHandler(logging.Handler):
    """Root's only handler once configured: hands each record to the writer. The message is
    made here (its arguments may change later); everything else happens in the writer."""

    def __init__(self, writer: _Writer):
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.args:
            record.msg, record.args = record.getMessage(), None
        self.writer.put(record)

    def flush(self) -> None:
        self.writer.flush()


_writer: _Writer | None = None
_direct: logging.Handler | None = None


def access_log(request_id: str, action: str, code: int, seconds: float) -> None:
    """One line per API request (logger ``pns.access``, INFO): handed to the writer thread as a
    tuple when logging is configured, else logged as usual."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    writer = _writer
    if writer is not None:
        writer.put((time.time(), request_id, action, code, seconds * 1000))
    else:
        _access_logger.info(_ACCESS_MSG, request_id, action, code, seconds * 1000)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Log at ``level`` (below debug, numbers masked) as ``fmt`` (text or json) to ``stream``
    (stderr), through the writer thread; flushed at exit."""
    global _writer, _direct
    stop_writer()
    mask = level.lower() != "debug"
    formatter: TextFormatter | JsonFormatter = \
        JsonFormatter(mask) if fmt == "json" else TextFormatter(mask)
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    if mask:
        handler.addFilter(MaskingFilter())
    _direct = handler
    _writer = _Writer(handler, formatter)
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(_writer)]
    root.setLevel(level.upper())


def stop_writer() -> None:
    """Write what is queued and stop the writer thread; later records are written directly
    (at exit, nothing is left to batch for)."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    root = logging.getLogger()
    if _direct is not None:
        root.handlers[:] = [_direct]
    writer.stop()


atexit.register(stop_writer)
