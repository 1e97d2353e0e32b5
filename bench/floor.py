"""The floor: the fastest HTTP/1.1 responder plain Python can be on the standard asyncio loop.

It does no application work. Each request is parsed only as far as framing needs (the end of
the headers, Content-Length, whether the connection stays open), and every request gets the
same fixed answer: a JSON body byte-for-byte as long as a real ``queryAXB`` answer. Whatever a
real server does per request costs on top of this, so "ratio to the floor" says how much of
the budget a stack plus handler spends.

Deliberately:
  * standard ``asyncio`` event loop (no uvloop), ``asyncio.Protocol`` (no streams);
  * HTTP/1.1 keep-alive by default, pipelined requests answered in order in one write;
  * ``Connection: close`` (and HTTP/1.0 without ``Connection: keep-alive``) answered with
    ``Connection: close`` and the socket closed after the write;
  * ``Transfer-Encoding`` (chunked request bodies) is not supported: 411 and close;
  * headers over 64 KiB: 431 and close; malformed Content-Length: 400 and close.

Use:
    python bench/floor.py --port 8089 [--host 127.0.0.1]

or from Python (e.g. from the project's own benchmark)::

    from floor import run, serve          # bench/ on sys.path
    run("127.0.0.1", 8089)                 # blocks until SIGINT/SIGTERM
    server = await serve("127.0.0.1", 0)   # inside a running loop; returns asyncio.Server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

__all__ = [
    "QUERY_AXB_ANSWER",
    "FloorProtocol",
    "build_response",
    "main",
    "run",
    "serve",
]

# A real queryAXB answer (compact JSON, 19-digit ids): 213 bytes. The floor sends exactly this.
QUERY_AXB_ANSWER = (
    b'{"code":0,"msg":"success","requestId":"1234567890123456789",'
    b'"data":{"callee":"85211111114","callId":"1234567890123456789","flag":0,'
    b'"audioWhenCallFail":"","bindType":0,"audioWhenDtmfNeed":"","audioWhenDtmfErr":""}}'
)

MAX_HEADER_BYTES = 64 * 1024


def build_response(body: bytes, *, close: bool = False, status: bytes = b"200 OK") -> bytes:
    """A complete HTTP/1.1 response with a JSON body."""
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    )
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def _error(status: bytes) -> bytes:
    return build_response(b'{"code":-1,"msg":"bad request"}', close=True, status=status)


_ERR_400 = _error(b"400 Bad Request")
_ERR_411 = _error(b"411 Length Required")
_ERR_431 = _error(b"431 Request Header Fields Too Large")


class FloorProtocol(asyncio.Protocol):
    """One connection. Answers every complete request with the same bytes."""

    __slots__ = ("_buf", "_close", "_keep", "_transport")

    def __init__(self, keep_alive_response: bytes, close_response: bytes) -> None:
        self._keep = keep_alive_response
        self._close = close_response
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        closing = False
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_HEADER_BYTES:
                    out.append(_ERR_431)
                    closing = True
                break
            head = buf[pos:end].lower()
            # Content-Length (absent means no body: GET, or a POST without one).
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 17)
                raw = head[i + 17 : j if j >= 0 else len(head)].strip()
                if not raw.isdigit():
                    out.append(_ERR_400)
                    closing = True
                    break
                length = int(raw)
            elif b"\r\ntransfer-encoding:" in head:
                out.append(_ERR_411)
                closing = True
                break
            total = end + 4 + length
            if len(buf) < total:
                break  # body not complete yet
            pos = total
            # Persistence: HTTP/1.1 keeps alive unless "Connection: close";
            # HTTP/1.0 closes unless "Connection: keep-alive".
            c = head.find(b"\r\nconnection:")
            conn = b""
            if c >= 0:
                e = head.find(b"\r\n", c + 13)
                conn = head[c + 13 : e if e >= 0 else len(head)]
            line_end = head.find(b"\r\n")
            http10 = (head[:line_end] if line_end >= 0 else head).endswith(b"http/1.0")
            if b"close" in conn or (http10 and b"keep-alive" not in conn):
                out.append(self._close)
                closing = True
                break
            out.append(self._keep)
        self._buf = b"" if closing else buf[pos:]
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if closing:
            transport.close()


async def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    body: bytes = QUERY_AXB_ANSWER,
    backlog: int = 1024,
) -> asyncio.Server:
    """Start the floor on the running loop; returns the listening ``asyncio.Server``.

    ``port=0`` picks a free port: read it from ``server.sockets[0].getsockname()[1]``.
    """
    keep = build_response(body)
    close = build_response(body, close=True)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: FloorProtocol(keep, close), host, port, backlog=backlog, reuse_address=True
    )


def run(
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    body: bytes = QUERY_AXB_ANSWER,
    ready: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM on a fresh standard asyncio loop (never uvloop).

    ``ready``: if given, printed (flushed) once listening, e.g. for a parent process to wait on.
    """

    async def _main() -> None:
        server = await serve(host, port, body=body)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            print(ready, flush=True)
        async with server:
            await stop.wait()

    # An explicit standard loop, whatever event loop policy an importer installed.
    loop = asyncio.SelectorEventLoop() if sys.platform != "win32" else asyncio.new_event_loop()
    try:
        loop.run_until_complete(_main())
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument(
        "--body-size",
        type=int,
        default=len(QUERY_AXB_ANSWER),
        help="fixed body size in bytes (default: a real queryAXB answer, %(default)s)",
    )
    a = p.parse_args(argv)
    if a.body_size == len(QUERY_AXB_ANSWER):
        body = QUERY_AXB_ANSWER
    else:
        body = (QUERY_AXB_ANSWER * (a.body_size // len(QUERY_AXB_ANSWER) + 1))[: a.body_size]
    run(a.host, a.port, body=body, ready=f"floor listening on {a.host}:{a.port}")


if __name__ == "__main__":
    main()
