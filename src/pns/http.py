"""A lean HTTP/1.1 server: asyncio protocol + httptools, keep-alive and pipelining.

Chosen by measurement (bench/stack_choice.py): a framework costs several times the throughput
on the queryAXB hot path. This module knows nothing of the API; it parses requests, enforces
transport limits (body size, header size, timeouts, connection count, pipelined requests) and
writes responses. Requests of one connection are answered in order, one at a time.

Every limit is counted in bytes as they arrive, not when httptools hands over a parsed piece:
httptools buffers a header name or value until it ends, so a head that never ends would
otherwise grow without bound. Input is fed to the parser in slices of at most ``_SLICE``
bytes, which bounds both how far a count can lag behind the bytes and how many pipelined
requests one slice can add to the queue.

httptools' callbacks, thirteen per request, cost more than the rest of the layer. A request
that arrives whole in one read, in the plainest form (``_PLAIN_HEAD``), is read by a regex
instead; anything else, or anything in doubt, goes to httptools untouched. Two parsers that
read the same bytes differently are how requests are smuggled: tests/test_http_fast_lane.py
holds the two readings equal.

Keep-alive answers are written once per pass of the event loop, not one by one
(``_Server.uncork``): every request the pass read is answered first, then the answers are
written together. Why: each write to a client that sleeps waiting for it wakes that client, and
on a VM the wake-up (an IPI to the other CPU) costs the writer about as much kernel time as the
write itself. A single client of many connections (a load generator, a proxy) sleeps again
after each answer if they come one by one, and is woken once per pass if they come together:
measured with wrk, the server's kernel time per request fell from about 32 to 14 µs and its
throughput rose by about 40% (BENCHMARKS.md). An answer waits at most for the rest of its pass,
and a pass writes as soon as ``_CORK_LIMIT`` connections hold answers, so the wait is bounded
under any load. A connection holds one answer at most: a second in the same pass (pipelined) is
written at once with it, so flow control (``pause_writing``) still stops a client that does not
read. An answer that closes the connection, a refusal and a ``100 Continue`` are written at
once, after the connection's held answer.

An answer that needs no I/O is made in ``data_received`` itself, with no task: the app
answers such routes with a ``Reply``, and on Python 3.12+ a coroutine starts as an eager task
(it becomes a scheduled task only if it waits). Python 3.11 has no eager tasks. There, when the
server is told that the app's coroutines never need ``asyncio.current_task()`` before their
first wait (``first_step_outside_task``: true for the embedded store, whose answers come from
memory; false where a driver's ``asyncio.timeout`` needs a task, as redis-py's does), the
coroutine takes its first step in ``data_received`` and gets a task only if it waits, from
where it stopped (``_Resumed``). A task per queryAXB costs ~23k instructions of ~273k
(bench/query_cost.sh). Headers stay bytes; the app decodes the few it reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

import httptools

log = logging.getLogger("pns.http")


class Limits(NamedTuple):
    max_body: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_url: int = 2048
    request_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_connections: int = 10_000
    # Requests parsed but not yet answered, per connection; past it nothing more is parsed
    # (or read) until the queue shrinks. One slice may complete a few more (see ``_SLICE``).
    max_pipelined: int = 32
    # After a refusal (413, 431, ...): how long the rest of the client's request is read and
    # thrown away, so closing does not reset the connection before the answer is read.
    linger_timeout: float = 5.0


class Request(NamedTuple):
    method: str
    path: str
    # Lower-case names, raw values; the last of a repeated header counts.
    headers: dict[bytes, bytes]
    body: bytes
    client: str
    query: str = ""


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    # More header lines (the console's cookies and security headers); the API sends none.
    headers: tuple[tuple[str, str], ...] = ()


# The app answers with a Reply when it needs no I/O, else with an awaitable of one.
App = Callable[[Request], "Reply | Awaitable[Reply]"]
ErrorReply = Callable[[int], Reply]
Clock = Callable[[], float]

_NEVER = float("inf")
_TICK = 1.0
# Bytes fed to the parser at a time. A count of head bytes runs at most this far ahead of the
# truth, and one slice of minimal requests ("GET / HTTP/1.0\r\n\r\n", 18 bytes) can complete
# at most _SLICE // 18 requests past max_pipelined.
_SLICE = 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EMPTY = memoryview(b"")
# A head is "request line, headers, blank line"; each header costs ": " and CRLF beyond its
# name and value, counted too so that many empty headers are not free.
_HEADER_OVERHEAD = 4

# The fast lane (``_Connection._take_plain``): a request in the plainest form every client of
# the API sends, taken without httptools. Each piece is a strict subset of what httptools
# accepts, written so that it can only mean one thing: one SP between the parts of the request
# line, exactly ": " after a token name, values of visible ASCII and inner spaces (no OWS for
# the two parsers to trim differently), no query or percent-encoding in the path.
_PLAIN_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PLAIN_VALUE = rb"[!-~][ -~]*(?<! )"
_PLAIN_PATH = rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*"
_PLAIN_HEAD = re.compile(rb"(GET|POST) (" + _PLAIN_PATH + rb") HTTP/1\.1\r\n((?:" + _PLAIN_TOKEN
                         + rb": " + _PLAIN_VALUE + rb"\r\n)*)\r\n")
# Headers that change framing, the connection or the answer (httptools' and ``on_headers_
# complete``'s own): a request with any of them is left to httptools. Content-Length is
# checked by the fast lane itself.
_PLAIN_REFUSES = frozenset((b"transfer-encoding", b"connection", b"proxy-connection",
                            b"upgrade", b"expect"))
# Compiled shapes kept per server; past this many, new shapes take the strict lane only.
_SHAPES = 64
# Connections whose answers wait for the end of the loop's pass; at this many they are written
# at once. It bounds how long an answer waits for the others of its pass (as many answers'
# work) and the bytes held back. Measured with wrk over 64 connections: 32 gains what no bound
# gains, 16 a little less.
_CORK_LIMIT = 32

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_EAGER_TASKS = sys.version_info >= (3, 12)


class _DateHeader:
    """``Date: ...\\r\\n`` (RFC 9110 6.6.1), formatted once per second. Asked for by a
    method, not ``__call__``: calling an instance costs a type lookup on every answer."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


_date = _DateHeader()
_status_lines: dict[tuple[int, str], bytes] = {}


def _answer(reply: Reply, close: bool, head: bool = False) -> bytes:
    """Head and body in one formatting: the body is copied once, into the answer."""
    prefix = _status_lines.get((reply.status, reply.content_type))
    if prefix is None:
        reason = _REASONS.get(reply.status, "Unknown")
        prefix = f"HTTP/1.1 {reply.status} {reason}\r\nContent-Type: {reply.content_type}\r\n"\
            .encode("latin-1")
        _status_lines[(reply.status, reply.content_type)] = prefix
    extra = reply.headers
    more = "".join(f"{name}: {value}\r\n" for name, value in extra).encode(
        "latin-1") if extra else b""
    body = reply.body
    # The answer to HEAD has no content (RFC 9110 9.3.2): bytes after its head would be read
    # as the start of the next answer on a keep-alive connection.
    return b"%s%sContent-Length: %d\r\n%s%s\r\n%s" % (
        prefix, _date.line(), len(body), more, b"Connection: close\r\n" if close else b"",
        b"" if head else body)


class _Resumed:
    """A coroutine that took its first step outside a task, continued by a task from the
    future it waits on: what an eager task does on Python 3.12+."""

    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_on: Any):
        self._coroutine = coroutine
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting_on = self._coroutine, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # the task throws what the future raised, or cancels
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration:
                    return


async def _resume(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _Resumed(coroutine, waiting_on)


class _Shape(NamedTuple):
    """A plain request's method and header names, compiled into one regex whose groups are
    the path and the values. A client sends the same head request after request, but for a
    few values: matching its shape costs a fraction of ``_PLAIN_HEAD`` and the loop that
    takes its headers apart (bench/query_cost.py). A shape is made only from names the strict
    lane accepted, and spelled with the same pieces, so it accepts a subset of what
    ``_PLAIN_HEAD`` does and reads it the same way."""

    pattern: re.Pattern[bytes]
    method: str
    names: tuple[bytes, ...]  # lower-case, in order
    length_at: int  # which group is Content-Length's value; 0 (the path's): none

    @classmethod
    def of(cls, method: bytes, raw_names: tuple[bytes, ...]) -> _Shape:
        fields = b"".join(re.escape(name) + b": (" + _PLAIN_VALUE + rb")\r\n"
                          for name in raw_names)
        names = tuple(name.lower() for name in raw_names)
        return cls(re.compile(re.escape(method) + b" (" + _PLAIN_PATH + rb") HTTP/1\.1\r\n"
                              + fields + rb"\r\n"),
                   method.decode("ascii"), names,
                   names.index(b"content-length") + 1 if b"content-length" in names else 0)


class _Server:
    def __init__(self, app: App, error_reply: ErrorReply, limits: Limits, clock: Clock,
                 first_step_outside_task: bool = False):
        self.app = app
        self.error_reply = error_reply
        self.limits = limits
        self.clock = clock
        # The longest request the fast lane takes: one slice (so httptools, fed the same
        # bytes, would count no more than them), and no longer than any limit, so that none
        # can refuse it: its URL, body and header bytes (in the plain form a header line is
        # exactly the ": " and CRLF that ``on_header`` counts) are each shorter than itself.
        self.plain_max = min(_SLICE, limits.max_header_bytes, limits.max_url,
                             limits.max_body) if limits.max_pipelined > 0 else 0
        self.shapes: dict[tuple[bytes, tuple[bytes, ...]], _Shape] = {}
        self.first_step_outside_task = first_step_outside_task and not _EAGER_TASKS
        self.connections: set[_Connection] = set()
        self.ticker: asyncio.TimerHandle | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []
        # Connections holding an answer until the end of this pass of the event loop.
        self.corked: list[_Connection] = []

    def cork(self, connection: _Connection) -> None:
        """``connection`` now holds an answer: it is written at the end of this pass of the
        event loop (the first held schedules that), or now if the pass holds many."""
        corked = self.corked
        corked.append(connection)
        if len(corked) == 1:
            connection._loop.call_soon(self.uncork)
        elif len(corked) >= _CORK_LIMIT:
            self.uncork()

    def uncork(self) -> None:
        """Write every held answer: the pass that made them is over (or holds enough)."""
        corked, self.corked = self.corked, []
        for connection in corked:
            connection._uncork()

    def shape(self, method: bytes, lines: list[bytes]) -> _Shape | None:
        raw_names = tuple(line.partition(b": ")[0] for line in lines)
        shape = self.shapes.get((method, raw_names))
        if shape is None and len(self.shapes) < _SHAPES:
            shape = self.shapes[(method, raw_names)] = _Shape.of(method, raw_names)
        return shape


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server):
        self._server = server
        self._limits = server.limits
        self._max_header_bytes = server.limits.max_header_bytes
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[Request, bool]] = deque()
        # The request being answered by a task (its app call waits on I/O), or a task waiting
        # for the client to read its answers.
        self._worker: asyncio.Task[None] | None = None
        # When this connection times out (server clock); checked by the server's ticker, so
        # arming costs a float store, not a TimerHandle per request.
        self._deadline = _NEVER
        # Nothing more is parsed or answered (answered a close, refused, or lost).
        self._closing = False
        # Refused: the answer is sent, the write side shut, input read and dropped.
        self._lingering = False
        self._client = ""
        # Set while the transport's write buffer is above its high-water mark: a client that
        # does not read its answers gets no more of them (nor are more of its requests read).
        self._drained: asyncio.Future[None] | None = None
        # A transport error: answered after the requests complete before it, then closed.
        self._error: int | None = None
        # Input not yet fed to the parser, kept while the queue is full (reading is paused).
        self._unparsed = memoryview(b"")
        self._reading_paused = False
        # Raw bytes fed since the parser last made progress (ended a head, a body piece, a
        # chunk or a message): bytes httptools may be holding, such as an unfinished header.
        self._unprogressed = 0
        self._progressed = False
        self._expect_continue = False
        # The client has shut its write side: close once what it sent is answered.
        self._client_done = False
        # A request has begun arriving and is not complete.
        self._in_message = False
        # The shape of this client's last plain request: the first the fast lane tries.
        self._shape: _Shape | None = None
        # A keep-alive answer made in this pass of the event loop, not yet written.
        self._corked = b""
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._headers_done = False
        self._body: list[bytes] = []
        self._body_size = 0

    # --- connection lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        if len(self._server.connections) >= self._limits.max_connections:
            self._closing = True
            transport.write(_answer(self._server.error_reply(503), close=True))  # type: ignore[attr-defined]
            transport.close()
            return
        self._server.connections.add(self)
        # The first request must come within the request timeout: an idle new connection
        # would otherwise hold a connection slot for the whole keep-alive time.
        self._arm(self._limits.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._corked = b""
        self._deadline = _NEVER
        self._unparsed = memoryview(b"")
        self._queue.clear()
        self.resume_writing()
        if self._worker is None:
            self._notify_idle()

    def eof_received(self) -> bool | None:
        # The client is done sending. Requests already read are still answered (a client may
        # half-close after its last request); a lingering connection is done.
        if self._lingering or (not self._queue and self._worker is None):
            self._uncork()  # the transport's close sends what it was given, not what is held
            return None  # close
        self._client_done = True
        return True

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._closing or self._error is not None:
            return  # a refused request's rest: read, and thrown away
        if self._unparsed:  # only when reading was paused and the transport sent more anyway
            self._unparsed = memoryview(bytes(self._unparsed) + data)
        elif (len(data) <= self._server.plain_max and self._worker is None
              and not self._in_message and not self._queue and self._drained is None
              and self._take_plain(data)):
            return
        else:
            self._unparsed = memoryview(data)
        self._feed()

    # --- the fast lane ------------------------------------------------------------------------
    def _take_plain(self, data: bytes) -> bool:
        """Take ``data`` as one request without httptools, if it is exactly one whole request
        in the plainest form (see ``_PLAIN_HEAD``), with no header that httptools or
        ``on_headers_complete`` treats specially; else leave it, untouched, to httptools.

        httptools' callbacks cost more than half the HTTP layer's time per request. Called
        only between requests (nothing unparsed, none in progress, queued or being answered:
        after a request that closes, httptools reads nothing more, and neither may this), when
        httptools is idle and has nothing of this request; it stays idle, as after a message
        it parsed.
        What happens next is what ``on_message_complete`` and ``_feed`` do for the same bytes
        fed in one slice."""
        shape = self._shape
        if shape is not None and (match := shape.pattern.match(data)) is not None:
            groups = match.groups()  # the path, then the values
            # One name per value by construction; strict= would cost a keyword dict per call.
            method, headers = shape.method, dict(zip(shape.names, groups[1:]))  # noqa: B905
            path, length = groups[0], groups[shape.length_at] if shape.length_at else None
            lines = None
        else:
            match = _PLAIN_HEAD.match(data)
            if match is None:
                return False
            raw_method, path, block = match.groups()
            lines = block.split(b"\r\n")
            del lines[-1]  # after the last line's CRLF
            headers = {}
            for line in lines:
                name, _, value = line.partition(b": ")
                headers[name.lower()] = value
            if len(headers) != len(lines) or not _PLAIN_REFUSES.isdisjoint(headers):
                return False
            method, length = raw_method.decode("ascii"), headers.get(b"content-length")
        body = data[match.end():]
        # The Content-Length (none: no body) counts exactly the bytes after the head. Anything
        # else (leading zeros, a sign, a pipelined request behind) is left to httptools.
        if (length != b"%d" % len(body)) if length is not None else body:
            return False
        if lines is not None:
            self._shape = self._server.shape(match[1], lines)
        self._queue.append((Request(method, path.decode("ascii"), headers, body, self._client),
                            True))
        self._unprogressed = len(data)
        self._deadline = _NEVER
        self._pump()
        return True

    # --- feeding the parser -----------------------------------------------------------------
    def _feed(self) -> None:
        """Parse what is unparsed, a slice at a time, answering as requests complete, until
        it is all parsed or the queue is full (then reading pauses until it drains)."""
        limit_unprogressed = self._limits.max_header_bytes + self._limits.max_url + _SLICE
        while self._unparsed and not self._closing and self._error is None:
            if len(self._queue) >= self._limits.max_pipelined or self._drained is not None:
                self._pause_reading()
                return
            data = self._unparsed
            if len(data) <= _SLICE:  # the usual case: a request or a few, in one slice
                piece, self._unparsed = data, _EMPTY
            else:
                piece, self._unparsed = data[:_SLICE], data[_SLICE:]
            self._progressed = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                # Refused: the request that asked to switch protocols (the last one parsed)
                # is not answered, and what follows it is not HTTP/1.1.
                if self._queue:
                    _request, _keep = self._queue.pop()
                self._fail(400)
            except httptools.HttpParserError:
                self._fail(400)
            else:
                # Bytes httptools holds while nothing progresses (an unfinished head or
                # trailer): counted as they arrive, whatever httptools has passed on.
                self._unprogressed = len(piece) if self._progressed \
                    else self._unprogressed + len(piece)
                if self._unprogressed > limit_unprogressed:
                    self._fail(431)
            self._pump()
        if not self._unparsed:
            self._unparsed = _EMPTY
            if self._error is None:
                self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = False
            self._transport.resume_reading()

    # --- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = True
        self._arm(self._limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url:
            self._fail(414)
            raise httptools.HttpParserError("url too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called eight or more times per request: one attribute store, one comparison.
        size = self._header_bytes + len(name) + len(value) + _HEADER_OVERHEAD
        self._header_bytes = size
        if size > self._max_header_bytes:
            self._fail(431)
            raise httptools.HttpParserError("headers too large")
        if not self._headers_done:  # trailers are counted, never kept
            self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._progressed = True
        headers = self._headers
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self._limits.max_body:
            self._fail(413)
            raise httptools.HttpParserError("body too large")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                self._fail(417)
                raise httptools.HttpParserError("expectation failed")
            if self._parser.get_http_version() == "1.1" and (
                    length != b"0" or b"transfer-encoding" in headers):
                self._expect_continue = True  # written once earlier answers are out

    def on_body(self, body: bytes) -> None:
        self._progressed = True
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            self._fail(413)
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_chunk_complete(self) -> None:
        self._progressed = True

    def on_message_complete(self) -> None:
        self._progressed = True
        self._in_message = False
        self._expect_continue = False
        url = self._url
        query = ""
        if b"?" in url or b"#" in url:
            parsed = httptools.parse_url(url)
            path = parsed.path.decode("latin-1") if parsed.path else "/"
            query = parsed.query.decode("latin-1") if parsed.query else ""
        else:
            path = url.decode("latin-1")
        method = self._parser.get_method().decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._queue.append((Request(method, path, self._headers, body, self._client, query),
                            bool(self._parser.should_keep_alive())))
        # Nothing of this request is in progress any more (``buffered_bytes``); the next
        # one's headers and body get fresh containers in ``on_message_begin``.
        self._url = b""
        self._header_bytes = 0
        self._body_size = 0
        self._deadline = _NEVER

    # --- answering -------------------------------------------------------------------------
    def _pump(self, answered: bool = False) -> None:
        """Answer queued requests in order while the app answers without waiting; the first
        one that waits (or a full write buffer) is handed to a task, which pumps on after."""
        while self._queue and self._worker is None and not self._closing:
            if self._drained is not None:
                self._worker = self._loop.create_task(self._after_drain())
                return
            request, keep_alive = self._queue.popleft()
            answered = True
            try:
                answer = self._server.app(request)
            except Exception:
                answer = self._unhandled(request)
            if isinstance(answer, Reply):
                self._respond(request, answer, keep_alive)
                continue
            work = self._finish(request, keep_alive, answer)
            if _EAGER_TASKS:
                task = asyncio.Task(work, loop=self._loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
                if task.done():
                    continue  # answered without waiting
            elif self._server.first_step_outside_task:
                try:
                    waiting_on = work.send(None)
                except StopIteration:
                    continue  # answered without waiting
                task = self._loop.create_task(_resume(work, waiting_on))
            else:
                task = self._loop.create_task(work)
            self._worker = task
            return
        if self._worker is not None or self._closing:
            return
        if self._error is not None:
            self._refuse(self._error)
            return
        if self._client_done and self._transport is not None:
            self._close()
            return
        if self._expect_continue and self._transport is not None:
            self._expect_continue = False
            self._uncork()
            self._transport.write(_CONTINUE)
        if answered:
            # A request begun meanwhile keeps the request timeout, not the keep-alive one.
            self._arm(self._limits.request_timeout if self._in_message
                      else self._limits.keepalive_timeout)
            if self._server.idle_waiters:  # a shutdown waits: rarely, so no call otherwise
                self._notify_idle()

    async def _finish(self, request: Request, keep_alive: bool,
                      answer: Awaitable[Reply]) -> None:
        """Await the app's answer and send it; then, if this ran as the connection's task
        (it waited), answer the rest of the queue and read on."""
        try:
            reply = await answer
        except Exception:
            reply = self._unhandled(request)
        self._respond(request, reply, keep_alive)
        if self._worker is not None:  # None: it never waited, and _pump goes on by itself
            self._worker = None
            self._pump(answered=True)
            if self._unparsed or self._reading_paused:  # else there is nothing to feed
                self._feed()

    async def _after_drain(self) -> None:
        """Wait until the client has read enough of its answers; one that reads nothing for
        ``keepalive_timeout`` is cut off, so it cannot hold memory or the connection forever."""
        try:
            if self._drained is not None:
                await asyncio.wait_for(asyncio.shield(self._drained),
                                       self._limits.keepalive_timeout)
        except TimeoutError:
            self._closing = True
            if self._transport is not None:
                self._transport.abort()
            return
        finally:
            self._worker = None
        self._pump(answered=True)
        self._feed()

    def _unhandled(self, request: Request) -> Reply:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return self._server.error_reply(500)

    def _respond(self, request: Request, reply: Reply, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        answer = _answer(reply, not keep_alive, request.method == "HEAD")
        if keep_alive:
            held = self._corked
            if not held:
                self._corked = answer
                self._server.cork(self)
            else:
                # A second answer in one pass (pipelined): both go now, so that the
                # transport's flow control (pause_writing) sees every answer but one.
                self._corked = b""
                transport.write(held + answer)
            return
        self._uncork()
        transport.write(answer)
        self._closing = True
        if self._unparsed or self._queue or self._in_message:
            self._linger()  # the client sent more: let it read this answer first
        else:
            transport.close()

    def _fail(self, status: int) -> None:
        """A transport-level error: nothing more is parsed. Requests complete before the bad
        bytes are answered first, in order (and after one that asked to close, the error is
        not answered at all); then the error, then a lingering close."""
        if self._closing or self._error is not None:
            return
        self._error = status
        self._expect_continue = False
        self._unparsed = memoryview(b"")
        self._unprogressed = 0
        self._reset_message()

    def _uncork(self) -> None:
        """Write the answer held for the end of the pass (before anything written after it)."""
        held = self._corked
        if held:
            self._corked = b""
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.write(held)

    def _close(self) -> None:
        """Answer nothing more and close, the held answer first (a transport's close sends
        what it was given, not what this connection holds)."""
        self._closing = True
        self._uncork()
        if self._transport is not None:
            self._transport.close()

    def _refuse(self, status: int) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._closing = True
        self._uncork()
        transport.write(_answer(self._server.error_reply(status), close=True))
        self._linger()

    def _linger(self) -> None:
        """Close as nginx does after a refusal: send the answer, shut the write side, then
        read and drop whatever the client still sends, until it closes or for at most
        ``linger_timeout``. Closing at once with unread input would send a reset, which can
        destroy the answer before the client reads it."""
        transport = self._transport
        if transport is None:
            return
        self._lingering = True
        self._unparsed = memoryview(b"")
        self._queue.clear()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
            return
        self._arm(self._limits.linger_timeout)
        if self._reading_paused:  # it must read again, to drain
            self._reading_paused = False
            transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        self._deadline = self._server.clock() + seconds

    def _timed_out(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._lingering:
            transport.close()
        elif self._worker is not None or self._queue:
            return
        elif self._in_message:
            self._fail(408)
            self._pump()
        else:
            self._close()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def buffered_bytes(self) -> int:
        """Bytes this connection holds for its client: input not yet parsed, the request in
        progress, requests parsed but not answered, and answers not yet sent."""
        transport = self._transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        unsent += len(self._corked)
        in_progress = self._unprogressed + len(self._url) + self._header_bytes + self._body_size
        queued = sum(len(r.body) + len(r.path) + sum(map(len, r.headers)) +
                     sum(map(len, r.headers.values())) for r, _keep in self._queue)
        return len(self._unparsed) + in_progress + queued + unsent

    def close_when_idle(self) -> None:
        if self._worker is None and self._transport is not None:
            self._close()

    def _notify_idle(self) -> None:
        if self._server.idle_waiters and not any(c.busy for c in self._server.connections):
            for waiter in self._server.idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._server.idle_waiters.clear()


class HttpServer:
    """Listens, serves, and shuts down gracefully: stop accepting, finish in-flight requests.

    ``clock`` (the event loop's by default) and ``tick`` (seconds between timeout checks;
    ``None``: only when ``tick()`` is called) let tests drive the timeouts."""

    def __init__(self, app: App, error_reply: ErrorReply, limits: Limits | None = None,
                 clock: Clock | None = None, tick: float | None = _TICK,
                 first_step_outside_task: bool = False):
        self._clock = clock
        self._tick_every = tick
        self._state = _Server(app, error_reply, limits or Limits(), clock or time.monotonic,
                              first_step_outside_task)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._state.clock = loop.time
        self._server = await loop.create_server(
            lambda: _Connection(self._state), host, port, reuse_port=reuse_port or None,
            backlog=4096,
        )
        if self._tick_every is not None:
            self._state.ticker = loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        self.tick()
        if self._tick_every is not None:
            self._state.ticker = asyncio.get_running_loop().call_later(self._tick_every,
                                                                        self._tick)

    def tick(self) -> None:
        """Time out the connections whose deadline has passed (at most one tick late)."""
        state = self._state
        now = state.clock()
        for connection in [c for c in state.connections if c._deadline <= now]:
            connection._deadline = _NEVER
            connection._timed_out()

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._state.connections)

    def buffered_bytes(self) -> int:
        """Bytes held for clients over every connection (see ``_Connection.buffered_bytes``):
        what a client can make the server keep, whatever it sends or fails to read."""
        return sum(c.buffered_bytes for c in self._state.connections)

    async def shutdown(self, grace: float = 10.0) -> None:
        if self._server is None:
            return
        self._server.close()
        state = self._state
        if state.ticker is not None:
            state.ticker.cancel()
            state.ticker = None
        if any(c.busy for c in state.connections):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.idle_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, grace)
            except TimeoutError:
                log.warning("shutdown: %d connection(s) still busy after %.0fs",
                            sum(c.busy for c in state.connections), grace)
        for connection in list(state.connections):
            connection.close_when_idle()
        await self._server.wait_closed()
