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
    created = record.created
    assert formatter.format_access(created, record.getMessage()) == expected
    assert re.fullmatch(r"\S+ \S+ INFO pns\.access requestId=0{19} action=queryAXB code=0 "
                        r"ms=0\.123", lines[0])


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
