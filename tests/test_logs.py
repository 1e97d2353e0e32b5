"""The log: masked tracebacks, the writer thread (batches, never blocking the service), and
every request's line written when ``pns serve`` stops on SIGTERM."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pns import logs
from pns.client import PnsClient
from pns.model import Role

from .conftest import create_tenant, free_port, pns_command, unique_hk

NUMBER = "85211111114"
MASKED = "8521*****14"


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    logs.stop_writer()
    root.handlers[:] = handlers
    root.setLevel(level)


def _fail_with_a_number() -> None:
    try:
        raise LookupError(f"no binding for caller {NUMBER}")
    except LookupError:
        logging.getLogger("pns.test").exception("query failed for %s", NUMBER)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_masked_like_messages(restore_logging: None, fmt: str) -> None:
    """A traceback quotes the exception's message, which may carry a caller's number: it is
    masked as messages are (below debug), in text and in JSON."""
    out = io.StringIO()
    logs.configure("info", fmt, stream=out)
    _fail_with_a_number()
    logging.getLogger("pns.test").warning("stack", stack_info=True, extra={})
    logs.stop_writer()
    text = out.getvalue()
    assert "Traceback" in text and "LookupError" in text
    assert NUMBER not in text
    assert text.count(MASKED) >= 2  # the message and the traceback
    if fmt == "json":
        entries = [json.loads(line) for line in text.splitlines()]
        assert MASKED in entries[0]["exc"] and MASKED in entries[0]["msg"]


def test_debug_keeps_numbers(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("debug", "text", stream=out)
    _fail_with_a_number()
    logs.stop_writer()
    assert out.getvalue().count(NUMBER) >= 2


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.gate.wait()
        self.writes += 1
        return super().write(text)


def test_access_lines_are_written_in_batches_as_logging_would(restore_logging: None) -> None:
    """10,000 access lines take a handful of writes, and each line is what logging's own
    formatter makes of the same record."""
    out = CountingStream()
    logs.configure("info", "text", stream=out)
    for i in range(10_000):
        logs.access_log(f"{i:019d}", "queryAXB", 0, 0.000123)
    logs.stop_writer()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10_000
    assert out.writes <= 10_000 // 256 + 10, out.writes
    record = logging.LogRecord("pns.access", logging.INFO, __file__, 0,
                               "requestId=%s action=%s code=%d ms=%.3f",
                               (f"{0:019d}", "queryAXB", 0, 0.123), None)
    formatter = logs.TextFormatter()
    expected = formatter.format(record)
    entry = (record.created, f"{0:019d}", "queryAXB", 0, 0.123)
    assert formatter.format_access([entry]) == expected + "\n"
    assert re.fullmatch(r"\S+ \S+ INFO pns\.access requestId=0{19} action=queryAXB code=0 "
                        r"ms=0\.123", lines[0])


def _logging_line(fmt: str, created: float, message: str) -> str:
    """What logging (text) or ``json.dumps`` (json) makes of an INFO pns.access record made
    at ``created``: the reference the writer's access lines must equal byte for byte."""
    msecs = int((created - int(created)) * 1000)
    if fmt == "json":
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z"
        return json.dumps({"ts": ts, "level": "info", "logger": "pns.access", "msg": message},
                          ensure_ascii=False)
    record = logging.LogRecord("pns.access", logging.INFO, __file__, 0, message, None, None)
    record.created, record.msecs = created, msecs + 0.0
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(record)


def _access_line(fmt: str, entry: logs.AccessEntry) -> str:
    created, request_id, action, code, milliseconds = entry
    return _logging_line(fmt, created, f"requestId={request_id} action={action} code={code:d} "
                                       f"ms={milliseconds:.3f}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_timestamps_stay_right_when_their_cache_is_emptied(fmt: str) -> None:
    """Lines over more seconds than the formatter keeps the text of: a second forgotten is
    made anew, right."""
    formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
    entries = [(SECOND + i * 0.0010007, "1", "queryAXB", 0, 0.5) for i in range(9000)]
    text = formatter.format_access(entries[:5000]) + formatter.format_access(entries[5000:])
    assert text == "".join(_access_line(fmt, entry) + "\n" for entry in entries)


# Around a second's end (a cached second must not outlive it), back in time, and on both of
# London's 2024 clock changes (at 01:00 UTC the local hour jumps to 02:00 on 31 March and
# falls back from 02:00 to 01:00 on 27 October).
SECOND = 1_711_846_800.0  # 2024-03-31 01:00:00 UTC
TIMES = [SECOND - 1.0005, SECOND - 0.0015, SECOND - 0.0004, SECOND, SECOND + 0.0009,
         SECOND + 0.999, SECOND + 0.9999999, SECOND - 0.9999, SECOND + 1.0, SECOND + 3600.5,
         1_729_990_799.9995, 1_729_990_800.0004, 1_729_994_399.999, 1_729_994_400.001]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("tz", ["UTC", "Europe/London", "Asia/Hong_Kong"])
def test_access_lines_equal_loggings_at_any_time(restore_logging: None,
                                                 monkeypatch: pytest.MonkeyPatch, fmt: str,
                                                 tz: str) -> None:
    """Each access line equals what logging (or ``json.dumps``) makes of the record at its
    time, across second boundaries, out of order and across DST changes; JSON escapes what
    ``json.dumps`` escapes; a log record between access lines keeps its place."""
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        out = io.StringIO()
        logs.configure("info", fmt, stream=out)
        writer = logs._writer
        assert writer is not None
        entries = [(t, f"{i:019d}", "queryAXB", i % 3 * 1000, 0.123 * i + 0.0005)
                   for i, t in enumerate(TIMES)]
        entries.append((SECOND, "7", 'a"b\\c\nd\x01e\u00e9\u2028', -1, 12345.6789))
        for entry in entries[:5]:
            writer.put(entry)
        logging.getLogger("pns.test").warning("between")
        for entry in entries[5:]:
            writer.put(entry)
        logs.stop_writer()
        lines = [_access_line(fmt, entry) for entry in entries]
    finally:
        monkeypatch.undo()
        time.tzset()
    text = out.getvalue()
    between = re.search(r"^.*between.*$", text, re.MULTILINE)
    assert between is not None
    lines.insert(5, between.group())
    assert text == "".join(line + "\n" for line in lines)


def test_an_access_entry_that_cannot_be_formatted_is_lost_alone(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("info", "text", stream=out)
    writer = logs._writer
    assert writer is not None
    for code in (1, "not a code", 2):
        writer.put((SECOND, "1", "queryAXB", code, 0.0))  # type: ignore[arg-type]
    logs.stop_writer()
    assert re.findall(r"code=(\S+)", out.getvalue()) == ["1", "2"]


def test_a_stalled_log_never_blocks_the_service(restore_logging: None) -> None:
    """A log pipe nobody reads: the writer thread blocks, the service does not. Past the
    queue's capacity lines are dropped and counted, and the count is logged once the log
    moves again."""
    out = CountingStream()
    out.gate.clear()
    logs.configure("info", "text", stream=out)
    logging.getLogger("pns.test").warning("first")
    assert out.entered.wait(60)  # the writer is blocked writing it

    def log_many() -> None:
        for _ in range(100_000):
            logs.access_log("1", "queryAXB", 0, 0.0)

    calls = threading.Thread(target=log_many)
    calls.start()
    calls.join(60)
    assert not calls.is_alive(), "logging blocked the caller"
    out.gate.set()
    logs.stop_writer()
    text = out.getvalue()
    kept = logs._CAPACITY
    assert text.count("action=queryAXB") == kept
    assert f"WARNING pns.logs {100_000 - kept} log lines dropped" in text


def test_every_request_is_in_the_log_after_sigterm(tmp_path: Path) -> None:
    """``pns serve`` with its default settings (access log on): 300 requests, SIGTERM right
    after the last answer, and every requestId answered is in the log."""
    url = f"sqlite:///{tmp_path}/pns.db"
    switch = create_tenant(url, Role.SWITCH)
    customer = create_tenant(url, Role.CUSTOMER, numbers=1)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(pns_command("serve", "--port", str(port), "--store", url),
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                client = PnsClient(base, switch.access_key, switch.access_secret)
                client.query(unique_hk("1"), customer.numbers[0])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        ids = [client.query(unique_hk("1"), customer.numbers[0])["requestId"]
               for _ in range(300)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    logged = set(re.findall(r"requestId=(\d{19}) action=queryAXB code=10013", text))
    assert set(ids) <= logged, f"{len(set(ids) - logged)} requests missing from the log"
    assert text.rstrip().endswith("stopped")
