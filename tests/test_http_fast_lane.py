"""The fast lane of ``pns.http`` against httptools: request smuggling comes from two parsers
that read the same bytes differently, so every byte stream is fed to a connection with the
fast lane and to one without it, and both must hand the app the same requests and write the
same bytes, and stay in step for the request after.

The streams are plain requests (what the fast lane takes) and hostile variants of them:
bare LF, obs-fold, whitespace around the colon, Content-Length duplicated, signed, negative,
huge or wrong, Transfer-Encoding, Connection, Expect and Upgrade, NUL and high bytes, a
lower-case method, HTTP/1.0, absolute-form and queries, empty values, pipelined pairs, bytes
after the body, a request split over two reads, and random byte edits. Each may come after a
plain request of the same shape, so that the shape learnt from it is tried first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pns.http import _SLICE

from .test_http_protocol import Harness, run, settle

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/"
# What differs between two answers of the same bytes: the time, and an error's request id.
DATE = re.compile(rb"Date: [^\r]*\r\n")
REQUEST_ID = re.compile(rb'"requestId":"[0-9]+"')

names = st.one_of(
    st.sampled_from(["Host", "Content-Type", "accessKey", "action", "bizType", "ts", "sign",
                     "User-Agent", "Accept", "X-Request-Id", "content-length", "Content-Length",
                     "Transfer-Encoding", "Connection", "Proxy-Connection", "Expect",
                     "Upgrade", "Keep-Alive", "HOST"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=12),
)
values = st.one_of(
    st.sampled_from(["127.0.0.1:8080", "application/json", "queryAXB", "5", "close",
                     "keep-alive", "chunked", "100-continue", "websocket", "a: b", "a  b",
                     "a \t b"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=24),
).map(str.encode)


@st.composite
def plain_requests(draw: st.DrawFn) -> bytes:
    """A request as the fast lane wants it (if its names avoid the special ones)."""
    method = draw(st.sampled_from([b"GET", b"POST"]))
    path = b"/" + draw(st.text(PATH_CHARS, max_size=20)).encode()
    headers = draw(st.lists(st.tuples(names.map(str.encode), values), max_size=8))
    body = draw(st.binary(max_size=60)) if method == b"POST" or draw(st.booleans()) else b""
    lines = [b"%s: %s\r\n" % pair for pair in headers if pair[0].lower() != b"content-length"]
    if body or draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), b"Content-Length: %d\r\n" % len(body))
    return b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, path, b"".join(lines), body)


def _replace_first(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: raw.replace(old, new, 1)


def _header(line: bytes) -> Callable[[bytes], bytes]:
    """Adds a header line right after the request line."""
    return lambda raw: raw.replace(b"\r\n", b"\r\n" + line, 1)


MUTATIONS: list[Callable[[bytes], bytes]] = [
    _replace_first(b"\r\n", b"\n"),                                  # bare LF, request line
    lambda raw: raw.replace(b"\r\n\r\n", b"\r\n\n", 1),              # bare LF, end of head
    lambda raw: raw.replace(b"\r\n", b"\r\r\n", 2),                  # bare CR
    _replace_first(b": ", b" : "),                                   # space before the colon
    _replace_first(b": ", b":"),
    _replace_first(b": ", b":\t"),
    _replace_first(b": ", b":  "),
    lambda raw: raw.replace(b"\r\n\r\n", b" \r\n\r\n", 1),           # trailing space
    lambda raw: raw.replace(b"\r\n", b"\r\n X-Folded: 1\r\n", 2).replace(  # obs-fold
        b"\r\n X-Folded: 1\r\n", b"\r\n", 1),
    _header(b"X-Fold: a\r\n b\r\n"),
    _header(b"Content-Length: 0\r\n"),                               # duplicate length
    _header(b"Content-Length: -1\r\n"),
    _header(b"Content-Length: +5\r\n"),
    _header(b"Content-Length: 99999999999999999999999\r\n"),
    _replace_first(b"Content-Length: ", b"Content-Length: 0"),       # leading zero
    _replace_first(b"Content-Length: ", b"Content-Length: +"),
    _replace_first(b"Content-Length: ", b"Content-Length: 1"),       # wrong length
    _replace_first(b"Content-Length: ", b"content-length: "),
    _header(b"Transfer-Encoding: chunked\r\n"),
    _header(b"Transfer-Encoding: chunked, identity\r\n"),
    _header(b"Transfer-Encoding:  chunked\r\n"),
    _header(b"Transfer-Encoding: xchunked\r\n"),
    _header(b"transfer-encoding: identity\r\n"),
    _header(b"Connection: close\r\n"),
    _header(b"Connection: keep-alive\r\n"),
    _header(b"Connection: upgrade\r\nUpgrade: websocket\r\n"),
    _header(b"Upgrade: h2c\r\n"),
    _header(b"Proxy-Connection: close\r\n"),
    _header(b"Expect: 100-continue\r\n"),
    _header(b"Expect: nothing\r\n"),
    _header(b"X-Nul: a\x00b\r\n"),
    _header(b"X-High: caf\xc3\xa9\r\n"),
    _header(b"X-Del: a\x7fb\r\n"),
    _header(b"X-Empty:\r\n"),
    _header(b"X-Empty: \r\n"),
    _header(b"Host: one\r\nhost: two\r\n"),                          # duplicate names
    _header(b": no-name\r\n"),
    _header(b"X Space: 1\r\n"),
    _header(b"X-Colon:: 1\r\n"),
    lambda raw: raw[:1].lower() + raw[1:],                            # lower-case method
    lambda raw: raw.replace(b"GET", b"get", 1).replace(b"POST", b"post", 1),
    _replace_first(b" HTTP/1.1", b" HTTP/1.0"),
    _replace_first(b" HTTP/1.1", b" HTTP/1.10"),
    _replace_first(b" HTTP/1.1", b"  HTTP/1.1"),
    _replace_first(b" /", b" http://example.com/"),                 # absolute-form
    _replace_first(b" /", b" /?q=1&r=/"),
    _replace_first(b" /", b" /a#frag"),
    _replace_first(b" /", b" /%2e%2e/"),
    _replace_first(b"POST ", b"PUT "),
    _replace_first(b"GET ", b"HEAD "),
    lambda raw: b"\r\n" + raw,                                        # CRLF before the line
    lambda raw: raw + b"x",                                           # bytes after the body
    lambda raw: raw + b"\r\n",
    lambda raw: raw + raw,                                            # a pipelined pair
]


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """What one client sends, read by read."""
    plain = draw(plain_requests())
    raw = plain
    for _ in range(draw(st.integers(0, 2))):
        raw = draw(st.sampled_from(MUTATIONS))(raw)
    for _ in range(draw(st.integers(0, 2))):  # random byte edits
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = bytes([draw(st.integers(0, 255))])
        raw = raw[:at] + (byte if edit != "delete" else b"") + raw[at + (edit != "insert"):]
    reads = [raw]
    if raw and draw(st.booleans()):  # split over two reads
        at = draw(st.integers(1, max(len(raw) - 1, 1)))
        reads = [raw[:at], raw[at:]]
    if draw(st.booleans()):  # after a plain request of the same shape: its shape is tried first
        reads.insert(0, plain)
    return [read for read in reads if read]


def _outcome(h: Harness) -> tuple[object, ...]:
    """What the client and the app see, and the state the next bytes meet: the timer armed,
    a request in progress or queued, reading paused, an error pending."""
    written = REQUEST_ID.sub(b"", DATE.sub(b"", bytes(h.transport.written)))
    c = h.connection
    return (h.seen, written, h.transport.closed, h.transport.eof_written, h.transport.paused,
            c.buffered_bytes, c._deadline, c._in_message, len(c._queue), c._closing,
            c._lingering, c._error)


async def _both(reads: list[bytes],
                gate: asyncio.Event | None = None) -> tuple[Harness, Harness]:
    """The reads fed to a connection with the fast lane and to one without; with ``gate``,
    the app waits on every request until it opens, so reads arrive while it waits."""
    fast, slow = Harness(gate=gate), Harness(gate=gate)
    slow.connection._take_plain = lambda data: False  # type: ignore[method-assign]
    for h in (fast, slow):
        for read in reads:
            h.feed(read)
            h.clock[0] += 1  # so that a timer armed at another read differs
            await asyncio.sleep(0)
        # The request after: both parsers must be in the same state to read it alike.
        h.feed(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0)
    return fast, slow


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.booleans())
def test_the_fast_lane_reads_every_stream_as_httptools_does(reads: list[bytes],
                                                            waits: bool) -> None:
    async def test() -> None:
        gate = asyncio.Event() if waits else None
        fast, slow = await _both(reads, gate)
        assert _outcome(fast) == _outcome(slow)
        if gate is not None:
            gate.set()
            for _ in range(20):
                await asyncio.sleep(0)
            assert _outcome(fast) == _outcome(slow)
    run(test)


BODY = b'{"caller":"85210000000","did":"85230000000"}'
QUERY = (b"POST /api/pns/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
         b"Content-Type: application/json\r\naccessKey: k\r\naction: queryAXB\r\n"
         b"bizType: 5\r\nts: 1700000000000\r\nsign: 0123abcd\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


@pytest.mark.parametrize("after_plain", [False, True])
@pytest.mark.parametrize("mutate", MUTATIONS)
def test_every_hostile_variant_of_a_query_is_read_as_httptools_does(
        mutate: Callable[[bytes], bytes], after_plain: bool) -> None:
    """Each variant for sure, whole and split in the middle, after a plain query (its shape
    learnt) or first on the connection."""
    raw = mutate(QUERY)

    async def test() -> None:
        for reads in ([raw], [raw[:len(raw) // 2], raw[len(raw) // 2:]]):
            fast, slow = await _both([QUERY, *reads] if after_plain else reads)
            assert _outcome(fast) == _outcome(slow)
    run(test)


def test_plain_requests_take_the_fast_lane() -> None:
    """The lane is really taken (httptools never sees these), with and without a learnt
    shape, and gives what httptools gives."""
    query = QUERY
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    reads = [query, query.replace(b"0123abcd", b"4567ef01"), get, query]

    async def test() -> None:
        fast, slow = await _both(reads)
        assert _outcome(fast) == _outcome(slow)
        assert [r.path for r in fast.seen] == ["/api/pns/"] * 2 + ["/healthz", "/api/pns/",
                                                                    "/after"]
        fed: list[bytes] = []
        h = Harness()
        h.connection._parser = _Spy(fed)  # type: ignore[assignment]
        for read in reads:
            h.feed(read)
        assert fed == [] and len(h.seen) == len(reads)
        assert len(h.server._state.shapes) == 2
    run(test)


class _Spy:
    def __init__(self, fed: list[bytes]):
        self.fed = fed

    def feed_data(self, data: bytes) -> None:
        self.fed.append(bytes(data))


def test_a_request_longer_than_a_slice_is_left_to_httptools() -> None:
    request = b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % _SLICE + b"a" * _SLICE

    async def test() -> None:
        fast, slow = await _both([request])
        assert _outcome(fast) == _outcome(slow)
        h = Harness()
        h.feed(request)
        assert len(h.seen) == 1 and h.connection._shape is None
    run(test)


def test_plain_requests_behind_one_that_waits_are_answered_in_order() -> None:
    """While the app waits on one request, plain ones queue behind it as httptools' would,
    and are answered in order once it is answered."""
    async def test() -> None:
        gate = asyncio.Event()
        fast, slow = Harness(gate=gate), Harness(gate=gate)
        slow.connection._take_plain = lambda data: False  # type: ignore[method-assign]
        for h in (fast, slow):
            for n in range(3):
                h.feed(QUERY.replace(b"0123abcd", b"%08d" % n))
        await asyncio.sleep(0)
        assert fast.transport.written == slow.transport.written == b""
        assert len(fast.connection._queue) == len(slow.connection._queue) == 2
        gate.set()
        await settle(lambda: len(fast.answers()) == len(slow.answers()) == 3)
        assert _outcome(fast) == _outcome(slow)
        assert [r.headers[b"sign"] for r in fast.seen] == [b"%08d" % n for n in range(3)]
    run(test)


@pytest.mark.parametrize("last", [b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                                  b"GET / HTTP/1.0\r\n\r\n"])
def test_nothing_is_read_after_a_request_that_closes_while_it_waits(last: bytes) -> None:
    """httptools reads nothing after a request that closes the connection (the bytes after
    it are an error): a plain request arriving while the app waits on that one is not taken
    by the fast lane either, and the connection ends as httptools' does."""
    async def test() -> None:
        gate = asyncio.Event()
        fast, slow = Harness(gate=gate), Harness(gate=gate)
        slow.connection._take_plain = lambda data: False  # type: ignore[method-assign]
        for h in (fast, slow):
            h.feed(last)
            await asyncio.sleep(0)
            h.feed(QUERY)
        assert len(fast.connection._queue) == len(slow.connection._queue) == 0
        gate.set()
        await settle(lambda: fast.transport.closed and slow.transport.closed)
        assert _outcome(fast) == _outcome(slow)
        assert len(fast.seen) == 1
    run(test)
