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
from typing import Any, TextIO

# Phone numbers have at most 15 digits (E.164); longer runs are ids (requestId has 19), which
# must stay whole to correlate logs. Whole runs of 7+ digits are matched and the longer ones
# left alone: a pattern bounded to 15 with look-arounds backtracks through every id.
_DIGIT_RUN = re.compile(r"\d{7,}")

_ACCESS = "pns.access"
_ACCESS_MSG = "requestId=%s action=%s code=%d ms=%.3f"
_access_logger = logging.getLogger(_ACCESS)
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


class TextFormatter(_MaskedTracebacks):
    """``asctime level logger message``; with ``mask``, numbers are masked in tracebacks and
    stacks too (a traceback quotes exception messages, which may carry a caller's number)."""

    def __init__(self, mask: bool = False):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.mask = mask
        self._second = -1
        self._asctime = ""

    def format_access(self, created: float, message: str) -> str:
        """What ``format`` makes of an INFO record of pns.access, without the record."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._asctime = time.strftime(self.default_time_format, self.converter(created))
        msecs = int((created - second) * 1000)
        return f"{self._asctime},{msecs:03d} INFO {_ACCESS} {message}"


class JsonFormatter(_MaskedTracebacks):
    def __init__(self, mask: bool = False):
        super().__init__()
        self.mask = mask

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

    def format_access(self, created: float, message: str) -> str:
        return json.dumps({"ts": _utc(created), "level": "info", "logger": _ACCESS,
                           "msg": message}, ensure_ascii=False)


def _utc(created: float) -> str:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int((created - int(created)) * 1000):03d}Z")


class MaskingFilter(logging.Filter):
    """Masks phone numbers in every message below DEBUG verbosity."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_number(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


AccessEntry = tuple[float, str, str, int, float]


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
        """Write everything queued so far (from the writer thread, or at exit)."""
        with self._lock:
            items, lines = self._items, []
            while items:
                line = self._line(items.popleft())
                if line is not None:
                    lines.append(line)
            if self.dropped != self._reported_dropped:
                lost = self.dropped - self._reported_dropped
                self._reported_dropped = self.dropped
                lines.append(self._line(logging.LogRecord(
                    "pns.logs", logging.WARNING, __file__, 0,
                    "%d log lines dropped: the log was not written fast enough", (lost,),
                    None)) or "")
            if not lines:
                return
            stream = self._handler.stream
            try:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
            except Exception:  # a closed or broken log stream must not kill the writer
                pass

    def _line(self, item: logging.LogRecord | AccessEntry) -> str | None:
        try:
            if isinstance(item, logging.LogRecord):
                if not self._handler.filter(item):
                    return None
                return self._handler.format(item)
            # An access line holds a 19-digit id, an action name, a code and a duration: no
            # phone number to mask, by construction.
            created, request_id, action, code, seconds = item
            return self._formatter.format_access(
                created, _ACCESS_MSG % (request_id, action, code, seconds * 1000))
        except Exception:
            return None  # a record that cannot be formatted is lost alone

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
        writer.put((time.time(), request_id, action, code, seconds))
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
