"""The HTTP layer at the protocol level: hostile byte streams fed to the asyncio protocol of
``pns.http`` through a fake transport, with a controlled clock.

No sockets and no sleeping: every byte the server writes, every pause of reading and every
timeout is seen exactly, so a limit counted too late (after httptools hands over a header)
shows as bytes accepted past it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from pns.app import api_headers, error_reply
from pns.http import _CORK_LIMIT, _SLICE, HttpServer, Limits, Reply, Request, _Connection

MIB = 1024 * 1024
LIMITS = Limits()
# The most a head can hold before it is refused, counting as the server does (its count may
# run one slice ahead of the bytes): far below the 1 MiB the guarantee allows.
HEAD_CUTOFF = LIMITS.max_header_bytes + LIMITS.max_url + 2 * _SLICE


class FakeTransport:
    """What the protocol uses of an asyncio transport, recording everything."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.eof_written = False
        self.paused = False
        self.write_buffer = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "written after close"
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return self.write_buffer


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_answers(raw: bytes) -> list[Answer]:
    answers = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(status_line.split(" ")[1]), headers, raw[:length]))
        raw = raw[length:]
    return answers


@dataclass
class Harness:
    """One connection of a server whose app records every request it is given."""

    clock: list[float] = field(default_factory=lambda: [1000.0])
    seen: list[Request] = field(default_factory=list)
    gate: asyncio.Event | None = None
    limits: Limits = LIMITS
    first_step_outside_task: bool = False

    def __post_init__(self) -> None:
        self.server = HttpServer(self.app, error_reply, self.limits,
                                 clock=lambda: self.clock[0], tick=None,
                                 first_step_outside_task=self.first_step_outside_task)
        self.transport = FakeTransport()
        self.connection = self.connect(self.transport)

    def connect(self, transport: FakeTransport) -> _Connection:
        connection = _Connection(self.server._state)
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection

    def app(self, request: Request) -> Reply | Awaitable[Reply]:
        """Answers at once, or (with a gate) only once the gate opens."""
        self.seen.append(request)
        reply = Reply(200, request.path.encode() + b" " + request.body)
        if self.gate is None:
            return reply
        return self._gated(reply)

    async def _gated(self, reply: Reply) -> Reply:
        assert self.gate is not None
        await self.gate.wait()
        return reply

    def feed(self, data: bytes) -> None:
        """One read, then the end of the event loop's pass (where held answers are written)."""
        self.connection.data_received(data)
        self.server._state.uncork()

    def answers(self) -> list[Answer]:
        return parse_answers(bytes(self.transport.written))

    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds
        self.server.tick()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def settle(done: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the loop run until ``done()`` (a bounded number of turns, no clock involved)."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the server never got there")


def assert_refused(h: Harness, status: int) -> Answer:
    """Exactly one answer, the refusal, then a lingering close: write side shut, nothing more
    parsed (what the client still sends is read and dropped)."""
    answers = h.answers()
    assert [a.status for a in answers] == [status], answers
    assert answers[0].headers["connection"] == "close"
    assert h.transport.eof_written and not h.transport.paused
    envelope = json.loads(answers[0].body)
    assert envelope["code"] == (10009 if status >= 500 else 1002) and envelope["msg"]
    before = bytes(h.transport.written)
    h.feed(b"GET /after HTTP/1.1\r\n\r\n")
    assert bytes(h.transport.written) == before
    assert all(r.path != "/after" for r in h.seen)
    return answers[0]


# --- header bytes are counted as they arrive --------------------------------------------------
@pytest.mark.parametrize("piece", [1, 1000, MIB])
@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nX-Big: ",             # one endless value
    b"GET / HTTP/1.1\r\nX-",                  # one endless name
    b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: ",  # an endless value after others
])
def test_an_endless_header_is_431_before_1_mib(head: bytes, piece: int) -> None:
    """httptools hands a header over only when its value ends: 32 MiB in one value used to be
    buffered whole. Now the head's bytes are counted as they arrive, and it is refused at
    about 16 KiB + the URL limit, whether the bytes come one at a time or 1 MiB at once."""
    async def test() -> None:
        h = Harness()
        h.feed(head)
        fed = len(head)
        filler = b"a" * piece
        while not h.transport.written and fed < MIB:
            h.feed(filler)
            fed += piece
            assert h.connection.buffered_bytes <= HEAD_CUTOFF + piece
        assert_refused(h, 431)
        assert fed <= len(head) + max(HEAD_CUTOFF, piece), fed
        assert h.seen == []
    run(test)


def test_head_limits_count_exactly_what_was_sent() -> None:
    """Under the limit is served however it is split; many small headers count their ": " and
    line ends, so 5,000 empty headers are not free."""
    async def test() -> None:
        h = Harness()
        request = b"GET /ok HTTP/1.1\r\nX-Big: " + b"c" * (15 * 1024) + b"\r\n\r\n"
        for i in range(0, len(request), 700):
            h.feed(request[i:i + 700])
        assert [a.status for a in h.answers()] == [200]
        h = Harness()
        h.feed(b"GET / HTTP/1.1\r\n" + b"a:\r\n" * 5000 + b"\r\n")
        assert_refused(h, 431)
    run(test)


# --- trailers -------------------------------------------------------------------------------
def test_trailers_never_change_the_request_headers() -> None:
    """A chunked request's trailers come after the headers a proxy may have checked: they are
    counted against the header limit and dropped, never merged into the headers."""
    async def test() -> None:
        h = Harness()
        h.feed(b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\naction: queryAXB\r\n\r\n"
               b"5\r\nhello\r\n0\r\naction: unbindAXB\r\nsign: forged\r\nX-Trailer: 1\r\n\r\n")
        assert [a.status for a in h.answers()] == [200]
        (request,) = h.seen
        assert request.body == b"hello"
        assert request.headers[b"action"] == b"queryAXB"
        assert b"sign" not in request.headers and b"x-trailer" not in request.headers
        assert api_headers(request.headers) == {"action": "queryAXB"}
    run(test)


def test_an_endless_trailer_is_431_before_1_mib() -> None:
    async def test() -> None:
        h = Harness()
        h.feed(b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: ")
        fed = 0
        while not h.transport.written and fed < MIB:
            h.feed(b"t" * 1000)
            fed += 1000
        assert_refused(h, 431)
        assert fed <= HEAD_CUTOFF, fed
        assert h.seen == []
    run(test)


# --- pipelining ---------------------------------------------------------------------------
def test_pipelined_requests_are_capped_per_connection() -> None:
    """5,000 minimal requests in one read while the first answer waits: at most
    max_pipelined (plus one slice's worth) are parsed and queued, reading pauses, and the
    rest stays unparsed. Once the app answers, all 5,000 are answered, in order."""
    async def test() -> None:
        h = Harness(gate=asyncio.Event())
        minimal = b"GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        burst = b"".join(minimal % i for i in range(5000))
        h.feed(burst)
        await settle(lambda: h.transport.paused)
        queued = len(h.connection._queue)
        assert queued <= LIMITS.max_pipelined + _SLICE // len(minimal % 0) + 1, queued
        assert len(h.seen) <= queued + 1  # the app has seen only those (and the one waiting)
        assert h.transport.written == b""
        assert h.gate is not None
        h.gate.set()
        await settle(lambda: h.transport.writes == 5000, turns=100_000)
        answers = h.answers()
        assert [a.body for a in answers] == [b"/%d " % i for i in range(5000)]
        assert not h.transport.paused and not h.transport.closed
    run(test)


def test_pipelined_burst_with_instant_answers_is_answered_in_order() -> None:
    async def test() -> None:
        h = Harness()
        h.feed(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(3000)))
        answers = h.answers()
        assert [a.body for a in answers] == [b"/%d " % i for i in range(3000)]
        assert not h.transport.paused
    run(test)


# --- answers --------------------------------------------------------------------------------
def test_an_answer_that_needs_no_io_is_written_at_the_end_of_the_pass() -> None:
    """No task: the answer is made before data_received returns, and written when the event
    loop's pass ends, head and body in one write."""
    async def test() -> None:
        h = Harness()
        writes: list[bytes] = []
        original = h.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        h.transport.write = write  # type: ignore[method-assign]
        tasks_before = len(asyncio.all_tasks())
        h.connection.data_received(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        assert writes == [] and len(h.seen) == 1 and len(asyncio.all_tasks()) == tasks_before
        holding = h.connection.buffered_bytes  # the held answer is counted as held
        await asyncio.sleep(0)  # the pass ends
        assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n/x abc")
        assert [a.status for a in h.answers()] == [200]
        assert holding - h.connection.buffered_bytes == len(writes[0])
    run(test)


def test_the_answers_of_a_pass_are_written_together_when_it_ends() -> None:
    """Several connections answered in one pass: nothing is written until the pass ends, then
    each its own answer, once."""
    async def test() -> None:
        h = Harness()
        transports = [h.transport] + [FakeTransport() for _ in range(4)]
        connections = [h.connection] + [h.connect(t) for t in transports[1:]]
        for i, connection in enumerate(connections):
            connection.data_received(b"GET /c%d HTTP/1.1\r\n\r\n" % i)
        assert [t.writes for t in transports] == [0] * 5
        await asyncio.sleep(0)
        assert [t.writes for t in transports] == [1] * 5
        assert [[a.body for a in parse_answers(bytes(t.written))] for t in transports] == \
            [[b"/c%d " % i] for i in range(5)]
    run(test)


def test_a_pass_that_holds_the_limit_of_answers_writes_them_at_once() -> None:
    """However many connections one pass answers, no answer waits for more than
    ``_CORK_LIMIT`` answers' work: at that many held, they are written."""
    async def test() -> None:
        h = Harness()
        transports = [h.transport] + [FakeTransport() for _ in range(_CORK_LIMIT)]
        connections = [h.connection] + [h.connect(t) for t in transports[1:]]
        for connection in connections[:_CORK_LIMIT - 1]:
            connection.data_received(b"GET /a HTTP/1.1\r\n\r\n")
        assert sum(t.writes for t in transports) == 0
        connections[_CORK_LIMIT - 1].data_received(b"GET /a HTTP/1.1\r\n\r\n")
        assert [t.writes for t in transports] == [1] * _CORK_LIMIT + [0]
        connections[_CORK_LIMIT].data_received(b"GET /b HTTP/1.1\r\n\r\n")
        assert transports[-1].writes == 0
        await asyncio.sleep(0)
        assert [t.writes for t in transports] == [1] * (_CORK_LIMIT + 1)
        assert parse_answers(bytes(transports[-1].written))[0].body == b"/b "
    run(test)


def test_a_connection_holds_one_answer_at_most() -> None:
    """Pipelined requests answered in one pass: a second answer is written at once with the
    held one (so the transport's flow control sees them), a third is held; order is kept."""
    async def test() -> None:
        h = Harness()
        h.connection.data_received(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
                                   b"GET /3 HTTP/1.1\r\n\r\n")
        assert [a.body for a in h.answers()] == [b"/1 ", b"/2 "] and h.transport.writes == 1
        await asyncio.sleep(0)
        assert [a.body for a in h.answers()] == [b"/1 ", b"/2 ", b"/3 "]
    run(test)


def test_a_held_answer_to_a_client_gone_meanwhile_is_dropped() -> None:
    """A client that resets its connection while its answer is held: nothing is written to
    the dead transport, and the other answers of the pass still go."""
    async def test() -> None:
        h = Harness()
        other = FakeTransport()
        second = h.connect(other)
        h.connection.data_received(b"GET /gone HTTP/1.1\r\n\r\n")
        second.data_received(b"GET /stays HTTP/1.1\r\n\r\n")
        h.connection.connection_lost(ConnectionResetError())
        await asyncio.sleep(0)
        assert h.transport.writes == 0
        assert [a.body for a in parse_answers(bytes(other.written))] == [b"/stays "]
    run(test)


@pytest.mark.parametrize("then", ["close", "100-continue", "half-close", "timeout", "shutdown",
                                  "refusal"])
def test_a_held_answer_is_written_before_what_follows_it(then: str) -> None:
    """Whatever follows a held answer in the same pass (an answer that closes, a 100 Continue,
    the client's end of input, a timeout, a shutdown, a refusal) is written after it, and a
    close never drops it."""
    async def test() -> None:
        h = Harness()
        first = b"GET /held HTTP/1.1\r\n\r\n"
        bodies: list[bytes | None]
        if then == "close":
            h.connection.data_received(first + b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
            bodies = [b"/held ", b"/last "]
        elif then == "100-continue":
            h.connection.data_received(
                first + b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            assert bytes(h.transport.written).endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            h.connection.data_received(b"ok")
            bodies = [b"/held "]
        elif then == "half-close":
            h.connection.data_received(first)
            assert h.connection.eof_received() is None  # nothing left to answer: close
            h.transport.close()  # what the transport does when told None
            bodies = [b"/held "]
        elif then == "timeout":
            h.connection.data_received(first)
            h.advance(LIMITS.keepalive_timeout + 1)
            bodies = [b"/held "]
        elif then == "shutdown":
            h.connection.data_received(first)
            h.connection.close_when_idle()
            bodies = [b"/held "]
        else:
            h.connection.data_received(first + b"GET /" + b"u" * (LIMITS.max_url + 10)
                                       + b" HTTP/1.1\r\n\r\n")
            bodies = [b"/held ", None]
        await asyncio.sleep(0)
        answers = h.answers()
        if then == "100-continue":
            head, _, rest = bytes(h.transport.written).partition(b"HTTP/1.1 100 Continue\r\n\r\n")
            assert [a.body for a in parse_answers(head)] == [b"/held "]
            assert [a.body for a in parse_answers(rest)] == [b"/e ok"]
            return
        assert len(answers) == len(bodies)
        assert [a.body if b is not None else None
                for a, b in zip(answers, bodies, strict=True)] == bodies
        if then == "refusal":
            assert answers[1].status == 414
        if then in ("close", "timeout", "shutdown", "half-close"):
            assert h.transport.closed
    run(test)


def test_a_coroutine_that_never_waits_is_answered_without_a_task_when_allowed() -> None:
    """With ``first_step_outside_task`` (the embedded store), an app coroutine that never
    waits is answered inside data_received: no task, no turn of the loop."""
    async def test() -> None:
        h = Harness(first_step_outside_task=True)
        tasks_before = len(asyncio.all_tasks())

        async def at_once(request: Request) -> Reply:
            return Reply(200, b"now " + request.body)

        h.server._state.app = at_once
        h.feed(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
               b"POST /y HTTP/1.1\r\nContent-Length: 1\r\n\r\nd")
        assert [a.body for a in h.answers()] == [b"now abc", b"now d"]
        assert not h.connection.busy and len(asyncio.all_tasks()) == tasks_before
    run(test)


@pytest.mark.parametrize("outcome", ["result", "exception"])
def test_a_coroutine_that_waits_goes_on_in_a_task_from_where_it_stopped(outcome: str) -> None:
    """Started outside a task, a coroutine that waits is continued by a task: it gets what it
    waited for (or its exception: answered 500), runs inside that task from then on, and the
    requests behind it are answered after it, in order."""
    async def test() -> None:
        h = Harness(first_step_outside_task=True)
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[bytes]] = []
        steps: list[str] = []

        async def waiting(request: Request) -> Reply:
            if request.path != "/wait":
                return Reply(200, request.path.encode())
            steps.append("before" if asyncio.current_task() is None else "in a task")
            future: asyncio.Future[bytes] = loop.create_future()
            waits.append(future)
            got = await future
            steps.append("after" if asyncio.current_task() is not None else "no task")
            return Reply(200, got)

        h.server._state.app = waiting
        # As the event loop calls data_received: from a callback, outside any task.
        loop.call_soon(h.feed, b"GET /wait HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0)
        # Python 3.12+ starts it as an eager task instead: inside a task from the start.
        first = "before" if sys.version_info < (3, 12) else "in a task"
        assert h.answers() == [] and h.connection.busy and steps == [first]
        await asyncio.sleep(0)
        assert h.answers() == []  # still waiting: the task does not step it again early
        if outcome == "result":
            waits[0].set_result(b"waited")
        else:
            waits[0].set_exception(RuntimeError("the store failed"))
        await settle(lambda: len(h.answers()) == 2)
        statuses = [(a.status, a.body) for a in h.answers()]
        if outcome == "result":
            assert statuses == [(200, b"waited"), (200, b"/next")]
            assert steps == [first, "after"]
        else:
            assert [s for s, _ in statuses] == [500, 200] and statuses[1][1] == b"/next"
        assert not h.connection.busy
    run(test)


def test_every_answer_carries_a_date() -> None:
    async def test() -> None:
        answers: list[Answer] = []
        for data in (b"GET /ok HTTP/1.1\r\n\r\n",
                     b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                     b"NOT HTTP\r\n\r\n",
                     b"GET /" + b"u" * 3000 + b" HTTP/1.1\r\n\r\n"):
            h = Harness()
            h.feed(data)
            answers += h.answers()
        h = Harness()
        h.feed(b"GET /slow HTTP/1.1\r\n")
        h.advance(LIMITS.request_timeout)
        answers += h.answers()
        full = Harness(limits=Limits(max_connections=1))
        extra = FakeTransport()
        full.connect(extra)
        answers += parse_answers(bytes(extra.written))
        assert [a.status for a in answers] == [200, 413, 400, 414, 408, 503]
        for answer in answers:
            date = parsedate_to_datetime(answer.headers["date"])
            assert date.tzinfo is not None and date.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
            assert answer.headers["date"].endswith(" GMT")
    run(test)


# --- Expect: 100-continue -------------------------------------------------------------------
def test_expect_100_continue() -> None:
    """An acceptable body is invited with 100 Continue (and only then is it sent by a client
    that waits); a body over the limit gets 413 at once, without 100 and without reading it;
    another expectation is 417."""
    async def test() -> None:
        h = Harness()
        h.feed(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert bytes(h.transport.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
        h.feed(b"hello")
        final = parse_answers(bytes(h.transport.written)[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
        assert [(a.status, a.body) for a in final] == [(200, b"/e hello")]

        h = Harness()
        h.feed(b"POST /e HTTP/1.1\r\nContent-Length: 70000\r\nExpect: 100-continue\r\n\r\n")
        assert b"100 Continue" not in h.transport.written
        assert_refused(h, 413)

        h = Harness()
        h.feed(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n")
        assert_refused(h, 417)

        h = Harness()  # HTTP/1.0 knows no 100 Continue
        h.feed(b"POST /e HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert h.transport.written == b""
        h.feed(b"ok")
        assert [a.status for a in h.answers()] == [200]
    run(test)


def test_100_continue_waits_for_earlier_answers() -> None:
    """Behind a pipelined request still being answered, 100 Continue is written after that
    answer, never in the middle of the stream of answers."""
    async def test() -> None:
        h = Harness(gate=asyncio.Event())
        h.feed(b"GET /first HTTP/1.1\r\n\r\n"
               b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        await settle(lambda: len(h.seen) == 1)
        assert h.transport.written == b""
        assert h.gate is not None
        h.gate.set()
        await settle(lambda: b"100 Continue" in h.transport.written)
        first, rest = bytes(h.transport.written).split(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert [a.body for a in parse_answers(first)] == [b"/first "] and rest == b""
        h.feed(b"ok")
        await settle(lambda: len(h.seen) == 2 and b"/e ok" in h.transport.written)
    run(test)


# --- timeouts, by a controlled clock ---------------------------------------------------------
def test_request_timeout_counts_from_the_first_byte() -> None:
    """A request in progress gets 408 when it has taken request_timeout (10 s) since its first
    byte: trickling does not extend it, nor does an answer to an earlier request."""
    async def test() -> None:
        timeout = LIMITS.request_timeout
        trickler = Harness()
        for byte in b"GET /x HTTP/1.1\r\nX-Pad: ppp":
            trickler.feed(bytes([byte]))
            trickler.advance(timeout / 40)
        trickler.advance(timeout - timeout / 40 * 27 - 0.01)
        assert trickler.transport.written == b""
        trickler.advance(0.01)
        assert_refused(trickler, 408)

        second = Harness()
        second.feed(b"GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n")
        assert [a.body for a in second.answers()] == [b"/one "]
        second.advance(timeout - 0.01)
        assert len(second.answers()) == 1
        second.advance(0.01)
        assert [a.status for a in second.answers()] == [200, 408]
        assert second.transport.eof_written
    run(test)


def test_idle_connections_close_silently() -> None:
    """A new connection that sends nothing is closed after the request timeout, an answered
    keep-alive one after the keep-alive timeout (60 s); neither gets an answer."""
    async def test() -> None:
        silent = Harness()
        silent.advance(LIMITS.request_timeout - 0.01)
        assert not silent.transport.closed
        silent.advance(0.01)
        assert silent.transport.closed and silent.transport.written == b""

        idle = Harness()
        idle.feed(b"GET /ok HTTP/1.1\r\n\r\n")
        idle.advance(LIMITS.keepalive_timeout - 0.01)
        assert not idle.transport.closed
        idle.advance(0.01)
        assert idle.transport.closed and len(idle.answers()) == 1
    run(test)


def test_a_lingering_connection_is_closed_after_the_linger_timeout() -> None:
    async def test() -> None:
        h = Harness()
        h.feed(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        assert_refused(h, 413)
        h.feed(b"x" * 100_000)  # read and dropped
        assert h.connection.buffered_bytes == 0
        h.advance(LIMITS.linger_timeout - 0.01)
        assert not h.transport.closed
        h.advance(0.01)
        assert h.transport.closed
    run(test)


def test_a_client_that_half_closes_still_gets_its_answers() -> None:
    async def test() -> None:
        h = Harness(gate=asyncio.Event())
        h.feed(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        assert h.connection.eof_received() is True  # keep the write side open
        assert h.gate is not None
        h.gate.set()
        await settle(lambda: h.transport.closed)
        assert [a.body for a in h.answers()] == [b"/a ", b"/b "]
    run(test)


def test_api_headers_decodes_only_what_the_api_reads() -> None:
    raw = {b"accesskey": b"k\xff", b"action": b"queryAXB", b"x-custom": b"\xfe",
           b"content-type": b"application/json"}
    assert api_headers(raw) == {"accesskey": "k\xff", "action": "queryAXB"}
