"""A lean HTTP/1.1 server: asyncio protocol + httptools, keep-alive and pipelining.

Chosen by measurement (bench/stack_choice.py): a framework costs several times the throughput
on the queryAXB hot path. This module knows nothing of the API; it parses requests, enforces
transport limits (body size, header size, timeouts, connection count) and writes responses.
Requests of one connection are answered in order, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import NamedTuple

import httptools

log = logging.getLogger("pns.http")


class Limits(NamedTuple):
    max_body: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_url: int = 2048
    request_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_connections: int = 10_000
    max_pipelined: int = 32


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str
    query: str = ""


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    # More header lines (the console's cookies and security headers); the API sends none.
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[Request], Awaitable[Reply]]
ErrorReply = Callable[[int], Reply]

_NEVER = float("inf")
_TICK = 1.0

_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _head(status: int, content_type: str, length: int, close: bool,
          extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    reason = _REASONS.get(status, "Unknown")
    connection = "Connection: close\r\n" if close else ""
    more = "".join(f"{name}: {value}\r\n" for name, value in extra) if extra else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{more}{connection}\r\n"
    ).encode("latin-1")


class _Server:
    def __init__(self, app: App, error_reply: ErrorReply, limits: Limits):
        self.app = app
        self.error_reply = error_reply
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.ticker: asyncio.TimerHandle | None = None
        self.idle_waiters: list[asyncio.Future[None]] = []


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server):
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[Request, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # When this connection times out (loop time); checked by the server's 1 s ticker, so
        # arming costs a float store, not a TimerHandle per request.
        self._deadline = _NEVER
        self._closing = False
        self._client = ""
        # Set while the transport's write buffer is above its high-water mark: a client that
        # does not read its answers gets no more of them (nor are more of its requests read).
        self._drained: asyncio.Future[None] | None = None
        # A transport error seen while earlier requests are still being answered: it is
        # answered after them, and nothing more is read.
        self._error: int | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    # --- connection lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        if len(self._server.connections) >= self._limits.max_connections:
            self._fail(503)
            return
        self._server.connections.add(self)
        # The first request must come within the request timeout: an idle new connection
        # would otherwise hold a connection slot for the whole keep-alive time.
        self._arm(self._limits.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._deadline = _NEVER
        self.resume_writing()
        if self._worker is None:
            self._notify_idle()

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def data_received(self, data: bytes) -> None:
        if self._closing or self._error is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Refused: the request that asked to switch protocols (the last one parsed) is not
            # answered, and what follows it is not HTTP/1.1.
            if self._queue:
                self._queue.pop()
            self._fail(400)
        except httptools.HttpParserError:
            if not self._closing:
                self._fail(400)

    # --- parser callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_message()
        self._arm(self._limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url:
            self._fail(414)
            raise httptools.HttpParserError("url too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._limits.max_header_bytes:
            self._fail(431)
            raise httptools.HttpParserError("headers too large")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self._limits.max_body:
            self._fail(413)
            raise httptools.HttpParserError("body too large")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            self._fail(413)
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        path = parsed.path.decode("latin-1") if parsed.path else "/"
        query = parsed.query.decode("latin-1") if parsed.query else ""
        method = self._parser.get_method().decode("latin-1")
        request = Request(method, path, self._headers, b"".join(self._body), self._client,
                          query)
        self._queue.append((request, bool(self._parser.should_keep_alive())))
        self._reset_message()
        self._deadline = _NEVER
        if len(self._queue) > self._limits.max_pipelined and self._transport is not None:
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._answer_queue())

    # --- answering -------------------------------------------------------------------------
    async def _answer_queue(self) -> None:
        try:
            while self._queue and not self._closing:
                if self._drained is not None and not await self._wait_drained():
                    return
                request, keep_alive = self._queue.popleft()
                try:
                    reply = await self._server.app(request)
                except Exception:
                    log.exception("unhandled error answering %s %s", request.method, request.path)
                    reply = self._server.error_reply(500)
                self._write(reply, close=not keep_alive, head=request.method == "HEAD")
                if not keep_alive:
                    return
                if self._transport is not None and len(self._queue) <= 1:
                    self._transport.resume_reading()
            if self._error is not None:
                self._write(self._server.error_reply(self._error), close=True)
        finally:
            self._worker = None
            if not self._closing:
                # A request begun meanwhile keeps the request timeout, not the keep-alive one.
                started = self._url or self._header_bytes or self._body_size
                self._arm(self._limits.request_timeout if started
                          else self._limits.keepalive_timeout)
            self._notify_idle()

    async def _wait_drained(self) -> bool:
        """Wait until the client has read enough of its answers; one that reads nothing for
        ``keepalive_timeout`` is cut off, so it cannot hold memory or the connection forever."""
        if self._drained is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._drained), self._limits.keepalive_timeout)
        except TimeoutError:
            self._closing = True
            if self._transport is not None:
                self._transport.abort()
            return False
        return not self._closing

    def _write(self, reply: Reply, close: bool, head: bool = False) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        # The answer to HEAD has no content (RFC 9110 9.3.2): bytes after its head would be
        # read as the start of the next answer on a keep-alive connection.
        transport.write(_head(reply.status, reply.content_type, len(reply.body), close,
                              reply.headers)
                        + (b"" if head else reply.body))
        if close:
            self._closing = True
            transport.close()

    def _fail(self, status: int) -> None:
        """Answer a transport-level error and close: the stream cannot be trusted after it.
        Requests complete before the bad bytes are answered first, in order (and after one
        that asked to close, the error is not answered at all)."""
        if self._closing or self._error is not None:
            return
        if self._worker is not None:
            self._error = status
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._queue.clear()
        self._write(self._server.error_reply(status), close=True)

    def _arm(self, seconds: float) -> None:
        self._deadline = self._loop.time() + seconds

    def _timed_out(self) -> None:
        if self._worker is not None or self._transport is None:
            return
        if self._header_bytes or self._body_size or self._url:
            self._fail(408)
        else:
            self._closing = True
            self._transport.close()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def close_when_idle(self) -> None:
        if self._worker is None and self._transport is not None:
            self._closing = True
            self._transport.close()

    def _notify_idle(self) -> None:
        if self._server.idle_waiters and not any(c.busy for c in self._server.connections):
            for waiter in self._server.idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._server.idle_waiters.clear()


class HttpServer:
    """Listens, serves, and shuts down gracefully: stop accepting, finish in-flight requests."""

    def __init__(self, app: App, error_reply: ErrorReply, limits: Limits | None = None):
        self._state = _Server(app, error_reply, limits or Limits())
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._state), host, port, reuse_port=reuse_port or None,
            backlog=4096,
        )
        self._state.ticker = loop.call_later(_TICK, self._tick)

    def _tick(self) -> None:
        """Time out the connections whose deadline has passed (at most ``_TICK`` late)."""
        state = self._state
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in state.connections if c._deadline <= now]:
            connection._deadline = _NEVER
            connection._timed_out()
        state.ticker = loop.call_later(_TICK, self._tick)

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

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
