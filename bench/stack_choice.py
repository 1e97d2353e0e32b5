"""Which HTTP stack for the queryAXB hot path? One run measures the same handler on each.

The handler is what queryAXB costs on any stack: check the accessKey/action/bizType/ts headers,
verify the md5 signature over the raw body with hashlib, decode the JSON body with msgspec,
look the (did, caller) binding up in SQLite (a file DB with a few thousand rows), and encode the
answer with msgspec. Stacks:

  floor          bench/floor.py: asyncio.Protocol on the standard loop, fixed body, NO handler
  ht-uvloop      hand-written asyncio.Protocol + httptools.HttpRequestParser, uvloop
  ht-asyncio     the same on the standard asyncio loop
  uvicorn-asgi   a raw ASGI app under uvicorn (http=httptools, loop=uvloop)
  starlette      Starlette (Route + Request + Response) under the same uvicorn
  fastapi        FastAPI (@app.post, Request, Response) under the same uvicorn

Every server runs pinned to one CPU (taskset -c 0), wrk on the other (taskset -c 1 wrk -t1 -c64
-d10s) with bench/wrk_signed.lua, which sends signed requests with a ts that moves every second.
Before measuring, each server is checked with one good and one badly signed request, and warmed
up with wrk checking every answer body. Rounds are interleaved (all stacks, then again) and the
best round per stack is reported (the box is shared and noisy; a round where the server got
under 90% of its CPU was disturbed by something else and is marked *): req/s, p50/p99 latency,
ratio to the floor, and the CPU used by the server and by wrk (to show the client was not the
bottleneck). The last line is JSON.

Needs wrk and taskset, and a Python with msgspec httptools uvloop uvicorn starlette fastapi
(default /tmp/stackvenv/bin/python; stacks whose imports fail there are skipped):

    python3 -m venv /tmp/stackvenv
    /tmp/stackvenv/bin/pip install msgspec httptools uvloop uvicorn starlette fastapi
    /tmp/stackvenv/bin/python bench/stack_choice.py run            # ~5 min with the defaults
    /tmp/stackvenv/bin/python bench/stack_choice.py run --close    # Connection: close variant

Other subcommands:
    gen-signs   write a sign file for bench/wrk_signed.lua
    serve       run one stack in the foreground (used by `run`)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import itertools
import json
import os
import platform
import random
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLOOR = HERE / "floor.py"
LUA = HERE / "wrk_signed.lua"

ACCESS_KEY = "bench-ak"
ACCESS_SECRET = "bench-secret-5f2b9c0e"
PATH = "/api/pns/"
TS_WINDOW_MS = 300_000  # a request's ts may be this far from the server's clock

DEFAULT_PYTHON = "/tmp/stackvenv/bin/python"
DEFAULT_DB = "/tmp/pns-stack-bench.db"
DEFAULT_SIGNS = "/tmp/pns-stack-bench-signs.txt"
STACKS = ["floor", "ht-uvloop", "ht-asyncio", "uvicorn-asgi", "starlette", "fastapi"]
STACK_IMPORTS = {
    "floor": [],
    "ht-uvloop": ["msgspec", "httptools", "uvloop"],
    "ht-asyncio": ["msgspec", "httptools"],
    "uvicorn-asgi": ["msgspec", "uvicorn", "httptools", "uvloop"],
    "starlette": ["msgspec", "uvicorn", "httptools", "uvloop", "starlette"],
    "fastapi": ["msgspec", "uvicorn", "httptools", "uvloop", "fastapi"],
}

# --------------------------------------------------------------------------------------------
# Data: the binding table and the (caller, did) pairs wrk sends
# --------------------------------------------------------------------------------------------

N_DIDS = 50  # X numbers
N_CALLERS = 100  # callers bound per X number -> 5,000 rows


def _row(i: int, j: int) -> tuple[str, str, str, int]:
    did = f"852{35753351 + i}"
    caller = f"852{22222222 + j}"
    callee = f"852{11111114 + (i * N_CALLERS + j) % 88_000_000}"
    return did, caller, callee, (i + j) % 2


def make_db(path: str) -> int:
    """(Re)create the SQLite binding table; returns its row count."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE axb (did TEXT NOT NULL, caller TEXT NOT NULL, callee TEXT NOT NULL,"
        " bind_type INTEGER NOT NULL, PRIMARY KEY (did, caller)) WITHOUT ROWID"
    )
    con.executemany(
        "INSERT INTO axb VALUES (?, ?, ?, ?)",
        (_row(i, j) for i in range(N_DIDS) for j in range(N_CALLERS)),
    )
    con.commit()
    (n,) = con.execute("SELECT count(*) FROM axb").fetchone()
    con.close()
    return int(n)


def bench_pairs(n: int = 16) -> list[tuple[str, str, str]]:
    """(caller, did, expected callee) triples spread over the table; the first is the doc's
    example: caller 85222222222, did 85235753351 -> callee 85211111114."""
    rng = random.Random(5)
    cells = [(0, 0)] + [(rng.randrange(N_DIDS), rng.randrange(N_CALLERS)) for _ in range(n - 1)]
    out = []
    for i, j in cells:
        did, caller, callee, _ = _row(i, j)
        out.append((caller, did, callee))
    return out


def body_of(caller: str, did: str) -> str:
    return f'{{"caller":"{caller}","did":"{did}"}}'


def sign(access_key: str, secret: str, ts: str, body: str | bytes, action: str = "queryAXB") -> str:
    raw = body.encode() if isinstance(body, str) else body
    msg = (
        f"accessKey={access_key}&action={action}&bizType=5&ts={ts}&body=".encode()
        + raw
        + f"&accessSecret={secret}".encode()
    )
    return hashlib.md5(msg).hexdigest()


def write_sign_file(
    path: str,
    *,
    access_key: str = ACCESS_KEY,
    secret: str = ACCESS_SECRET,
    pairs: Iterable[tuple[str, str]],
    start: int | None = None,
    seconds: int = 900,
) -> int:
    """Write "<ts> <sign> <body>" lines for every second in [start, start+seconds) and every pair
    (ts = second * 1000, ms epoch). Returns the number of lines."""
    start = int(time.time()) - 5 if start is None else start
    bodies = [body_of(c, d) for c, d in pairs]
    n = 0
    with open(path, "w") as f:
        f.write(f"#accessKey={access_key}\n")
        f.write(f"# {len(bodies)} bodies x {seconds} s from {start}\n")
        for sec in range(start, start + seconds):
            ts = str(sec * 1000)
            for b in bodies:
                f.write(f"{ts} {sign(access_key, secret, ts, b)} {b}\n")
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# The handler (same code under every stack)
# --------------------------------------------------------------------------------------------


def make_handler(db_path: str) -> Callable[[bytes, bytes, bytes, bytes, bytes, bytes], bytes]:
    """handler(accessKey, action, bizType, ts, sign, raw_body) -> JSON answer bytes."""
    import msgspec

    class QueryAXB(msgspec.Struct):
        caller: str
        did: str

    class AXBData(msgspec.Struct):
        callee: str
        callId: str
        flag: int = 0
        audioWhenCallFail: str = ""
        bindType: int = 0
        audioWhenDtmfNeed: str = ""
        audioWhenDtmfErr: str = ""

    class Answer(msgspec.Struct):
        code: int
        msg: str
        requestId: str
        data: AXBData | None = None

    secrets = {ACCESS_KEY.encode(): ACCESS_SECRET.encode()}
    con = sqlite3.connect(db_path, check_same_thread=False)
    con.execute("PRAGMA query_only = 1")
    sql = "SELECT callee, bind_type FROM axb WHERE did = ? AND caller = ?"
    decode = msgspec.json.Decoder(QueryAXB).decode
    encode = msgspec.json.Encoder().encode
    # 19-digit ids: a per-process base plus a counter (a real service would use a snowflake).
    ids = itertools.count(10**18 + (os.getpid() % 1000) * 10**15 + int(time.time()) % 10**9)
    md5 = hashlib.md5
    compare = hmac.compare_digest
    now = time.time
    DecodeError = msgspec.DecodeError

    def fail(code: int, msg: str) -> bytes:
        return encode(Answer(code, msg, str(next(ids))))

    def handle(ak: bytes, action: bytes, biz: bytes, ts: bytes, sig: bytes, body: bytes) -> bytes:
        secret = secrets.get(ak)
        if secret is None:
            return fail(10001, "invalid accessKey")
        if action != b"queryAXB" or biz != b"5":
            return fail(10002, "invalid action or bizType")
        try:
            ts_ms = int(ts)
        except ValueError:
            return fail(10003, "invalid ts")
        if abs(now() * 1000 - ts_ms) > TS_WINDOW_MS:
            return fail(10003, "ts expired")
        expected = md5(
            b"accessKey="
            + ak
            + b"&action="
            + action
            + b"&bizType="
            + biz
            + b"&ts="
            + ts
            + b"&body="
            + body
            + b"&accessSecret="
            + secret
        ).hexdigest()
        if not compare(expected.encode(), sig):
            return fail(10004, "sign error")
        try:
            q = decode(body)
        except DecodeError:
            return fail(10005, "invalid body")
        row = con.execute(sql, (q.did, q.caller)).fetchone()
        if row is None:
            return fail(20001, "no binding")
        rid = str(next(ids))
        return encode(Answer(0, "success", rid, AXBData(row[0], str(next(ids)), bindType=row[1])))

    return handle


# --------------------------------------------------------------------------------------------
# Stacks
# --------------------------------------------------------------------------------------------


def _http_response(body: bytes, keep_alive: bool, status: bytes = b"200 OK") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + (b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n")
        + body
    )


def httptools_server(handler: Callable[..., bytes]) -> Callable[[], Any]:
    """Protocol factory: asyncio.Protocol + httptools.HttpRequestParser, keep-alive, pipelining."""
    import asyncio

    import httptools

    not_found = _http_response(b'{"code":404,"msg":"not found"}', False, b"404 Not Found")
    bad_request = _http_response(b'{"code":400,"msg":"bad request"}', False, b"400 Bad Request")
    path = PATH.encode()

    class Proto(asyncio.Protocol):
        __slots__ = ("body", "headers", "parser", "transport", "url")

        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None
            self.url = b""
            self.headers: dict[bytes, bytes] = {}
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def connection_lost(self, exc: Exception | None) -> None:
            self.transport = None

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.transport is not None:
                    self.transport.write(bad_request)
                    self.transport.close()

        # parser callbacks
        def on_message_begin(self) -> None:
            self.url = b""
            self.headers = {}
            self.body = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            t = self.transport
            if t is None:
                return
            keep = self.parser.should_keep_alive()
            if self.url.split(b"?", 1)[0] != path or self.parser.get_method() != b"POST":
                t.write(not_found)
                t.close()
                return
            h = self.headers
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            out = handler(
                h.get(b"accesskey", b""),
                h.get(b"action", b""),
                h.get(b"biztype", b""),
                h.get(b"ts", b""),
                h.get(b"sign", b""),
                body,
            )
            t.write(_http_response(out, keep))
            if not keep:
                t.close()

    return Proto


def asgi_app(handler: Callable[..., bytes]) -> Callable[..., Any]:
    """A raw ASGI 3 app (no framework)."""
    ctype = (b"content-type", b"application/json")
    path = PATH

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != path or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": [ctype]})
            await send({"type": "http.response.body", "body": b'{"code":404,"msg":"not found"}'})
            return
        msg = await receive()
        body = msg.get("body", b"")
        while msg.get("more_body", False):
            msg = await receive()
            body += msg.get("body", b"")
        h = dict(scope["headers"])
        out = handler(
            h.get(b"accesskey", b""),
            h.get(b"action", b""),
            h.get(b"biztype", b""),
            h.get(b"ts", b""),
            h.get(b"sign", b""),
            body,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [ctype, (b"content-length", str(len(out)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": out})

    return app


def starlette_app(handler: Callable[..., bytes]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def query(request: Request) -> Response:
        body = await request.body()
        h = request.headers
        out = handler(
            h.get("accesskey", "").encode(),
            h.get("action", "").encode(),
            h.get("biztype", "").encode(),
            h.get("ts", "").encode(),
            h.get("sign", "").encode(),
            body,
        )
        return Response(out, media_type="application/json")

    return Starlette(routes=[Route(PATH, query, methods=["POST"])])


def fastapi_app(handler: Callable[..., bytes]) -> Any:
    from fastapi import FastAPI, Request, Response

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def query(request: Request) -> Response:
        body = await request.body()
        h = request.headers
        out = handler(
            h.get("accesskey", "").encode(),
            h.get("action", "").encode(),
            h.get("biztype", "").encode(),
            h.get("ts", "").encode(),
            h.get("sign", "").encode(),
            body,
        )
        return Response(out, media_type="application/json")

    # This module uses `from __future__ import annotations`: give FastAPI real classes (it
    # resolves string annotations in module globals, where Request is not), else it would take
    # `request` for a required query parameter.
    query.__annotations__ = {"request": Request, "return": Response}
    app.post(PATH)(query)
    return app


def serve(stack: str, host: str, port: int, db: str) -> None:
    """Run one stack in the foreground until SIGTERM/SIGINT."""
    if stack == "floor":
        sys.path.insert(0, str(HERE))
        import floor

        floor.run(host, port, ready=f"ready {stack} {host}:{port}")
        return

    handler = make_handler(db)
    if stack in ("ht-uvloop", "ht-asyncio"):
        import asyncio

        factory = httptools_server(handler)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(factory, host, port, backlog=1024)
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"ready {stack} {host}:{port} loop={type(loop).__module__}", flush=True)
            async with server:
                await stop.wait()

        loop: asyncio.AbstractEventLoop
        if stack == "ht-uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.SelectorEventLoop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        return

    import uvicorn

    if stack == "uvicorn-asgi":
        app = asgi_app(handler)
    elif stack == "starlette":
        app = starlette_app(handler)
    elif stack == "fastapi":
        app = fastapi_app(handler)
    else:
        raise SystemExit(f"unknown stack {stack!r}")
    print(f"ready {stack} {host}:{port}", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening on {port} after {timeout}s")


def post(
    port: int,
    body: str,
    *,
    ts: str | None = None,
    sig: str | None = None,
    close: bool = False,
    access_key: str = ACCESS_KEY,
    secret: str = ACCESS_SECRET,
    action: str = "queryAXB",
) -> tuple[int, dict[str, Any]]:
    ts = ts or str(int(time.time() * 1000))
    sig = sig or sign(access_key, secret, ts, body, action)
    headers = {
        "Content-Type": "application/json",
        "accessKey": access_key,
        "action": action,
        "bizType": "5",
        "ts": ts,
        "sign": sig,
    }
    if close:
        headers["Connection"] = "close"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("POST", PATH, body=body.encode(), headers=headers)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def sanity_check(stack: str, port: int, pair: tuple[str, str, str]) -> None:
    caller, did, callee = pair
    status, ans = post(port, body_of(caller, did))
    if status != 200 or ans.get("code") != 0 or len(ans.get("requestId", "")) != 19:
        raise RuntimeError(f"{stack}: bad answer {status} {ans}")
    data = ans.get("data") or {}
    if stack == "floor":
        return
    if data.get("callee") != callee or len(data.get("callId", "")) != 19:
        raise RuntimeError(f"{stack}: wrong binding {ans}, expected callee {callee}")
    _, bad = post(port, body_of(caller, did), sig="0" * 32)
    if bad.get("code") == 0:
        raise RuntimeError(f"{stack}: accepted a bad signature: {bad}")
    _, closed = post(port, body_of(caller, did), close=True)
    if closed.get("code") != 0:
        raise RuntimeError(f"{stack}: Connection: close request failed: {closed}")


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int,
    *,
    seconds: int,
    connections: int,
    client_cpu: str,
    signs: str,
    close: bool,
    check: bool,
    script: Path = LUA,
    access_key: str = ACCESS_KEY,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run (-t1) pinned to ``client_cpu``; returns the script's WRK_JSON summary plus
    wrk's own CPU use (``wrk_cpu_pct``). ``script`` must print a WRK_JSON line as
    bench/wrk_signed.lua does; ``extra`` are more script args (key=value)."""
    cmd = [
        "taskset",
        "-c",
        client_cpu,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
        "--",
        f"signs={signs}",
        f"key={access_key}",
        *extra,
    ]
    if close:
        cmd.append("close=1")
    if check:
        cmd.append("check=1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-2000:]} {p.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res["wrk_cpu_pct"] = round(100 * cpu / wall, 1)
    if p.stderr.strip():
        res["wrk_stderr"] = p.stderr.strip()[-500:]
    return res


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def server_cmd(stack: str, python: str, port: int, db: str, cpu: str) -> list[str]:
    if stack == "floor":  # the floor is started exactly as the project's benchmark would
        return ["taskset", "-c", cpu, python, str(FLOOR), "--port", str(port)]
    return [
        "taskset",
        "-c",
        cpu,
        python,
        str(Path(__file__).resolve()),
        "serve",
        "--stack",
        stack,
        "--port",
        str(port),
        "--db",
        db,
    ]


def measure(stack: str, a: argparse.Namespace, pairs: list[tuple[str, str, str]]) -> dict[str, Any]:
    port = free_port()
    log = Path(f"/tmp/pns-stack-bench-{stack}.log")
    with log.open("wb") as err_out:  # a file, not a pipe: a chatty server must never block
        proc = subprocess.Popen(
            server_cmd(stack, a.python, port, a.db, a.server_cpu),
            stdout=subprocess.DEVNULL,
            stderr=err_out,
        )
    try:
        wait_port(port, proc)
        sanity_check(stack, port, pairs[0])
        warm = run_wrk(
            port,
            seconds=a.warmup,
            connections=a.connections,
            client_cpu=a.client_cpu,
            signs=a.signs,
            close=a.close,
            check=True,
        )
        if warm["bad_body"] or warm["err_status"]:
            raise RuntimeError(f"{stack}: {warm['bad_body']} bad answers during warm-up: {warm}")
        cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
        res = run_wrk(
            port,
            seconds=a.duration,
            connections=a.connections,
            client_cpu=a.client_cpu,
            signs=a.signs,
            close=a.close,
            check=False,
        )
        cpu1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
        res["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
        res["warmup_checked"] = warm["requests"]
        return res
    except Exception:
        stop_server(proc)
        err = log.read_text(errors="replace")[-1500:]
        if err:
            print(f"--- {stack} server stderr ({log}) ---\n{err}", file=sys.stderr)
        raise
    finally:
        stop_server(proc)


def importable(python: str, modules: Sequence[str]) -> tuple[bool, str]:
    if not modules:
        return True, ""
    code = "import " + ", ".join(modules)
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return p.returncode == 0, p.stderr.strip().splitlines()[-1] if p.returncode else ""


def versions(python: str) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for n in ['msgspec','httptools','uvloop','uvicorn','starlette','fastapi','pydantic']:\n"
        "    try: out[n] = m.version(n)\n"
        "    except Exception: pass\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release()}
    with contextlib.suppress(Exception):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for ln in lscpu.splitlines():
            k, _, v = ln.partition(":")
            if k.strip() in (
                "Model name",
                "CPU(s)",
                "Thread(s) per core",
                "Hypervisor vendor",
                "L2 cache",
                "L3 cache",
                "CPU max MHz",
                "BogoMIPS",
            ):
                info[k.strip()] = v.strip()
    with contextlib.suppress(Exception):
        info["wrk"] = (
            subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
            .stdout.split("\n")[0]
            .strip()
        )
    return info


def cmd_run(a: argparse.Namespace) -> int:
    stacks = [s.strip() for s in a.stacks.split(",") if s.strip()]
    for s in stacks:
        if s not in STACKS:
            raise SystemExit(f"unknown stack {s!r}; choose from {','.join(STACKS)}")
    if "floor" not in stacks:
        stacks.insert(0, "floor")
    if not Path(a.python).exists():
        raise SystemExit(f"{a.python} not found: create the venv (see --help) or pass --python")

    skipped: dict[str, str] = {}
    for s in list(stacks):
        ok, why = importable(a.python, STACK_IMPORTS[s])
        if not ok:
            skipped[s] = why
            stacks.remove(s)
            print(f"skipping {s}: {why}", file=sys.stderr)

    rows = make_db(a.db)
    pairs = bench_pairs(a.pairs)
    per_stack = a.warmup + a.duration + 4
    span = a.rounds * len(stacks) * per_stack + 120
    n_lines = write_sign_file(a.signs, pairs=[(c, d) for c, d, _ in pairs], seconds=span)
    print(
        f"db {a.db}: {rows} rows; signs {a.signs}: {n_lines} lines; "
        f"{len(stacks)} stacks x {a.rounds} rounds x ~{per_stack}s "
        f"= ~{a.rounds * len(stacks) * per_stack}s",
        file=sys.stderr,
    )

    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stacks}
    failed: dict[str, str] = {}
    for r in range(a.rounds):
        for s in stacks:
            if s in failed:
                continue
            try:
                res = measure(s, a, pairs)
            except Exception as e:  # keep going with the other stacks
                failed[s] = str(e)[:500]
                print(f"round {r + 1} {s}: FAILED {e}", file=sys.stderr)
                continue
            runs[s].append(res)
            print(
                f"round {r + 1} {s:13s} {res['rps']:>9.0f} req/s  p50 "
                f"{res['lat_p50_us'] / 1000:.2f} ms  p99 {res['lat_p99_us'] / 1000:.2f} ms  "
                f"server cpu {res['server_cpu_pct']}%  wrk cpu {res['wrk_cpu_pct']}%",
                file=sys.stderr,
            )

    results = []
    floor_rps = max((x["rps"] for x in runs.get("floor", [])), default=float("nan"))
    for s in stacks:
        if not runs[s]:
            continue
        best = max(runs[s], key=lambda x: x["rps"])
        errors = sum(
            best[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
        )
        results.append(
            {
                "stack": s,
                "rps": round(best["rps"], 1),
                "rps_rounds": [round(x["rps"], 1) for x in runs[s]],
                "rps_median": round(statistics.median(x["rps"] for x in runs[s]), 1),
                "server_cpu_rounds": [x["server_cpu_pct"] for x in runs[s]],
                "p50_ms": round(best["lat_p50_us"] / 1000, 3),
                "p99_ms": round(best["lat_p99_us"] / 1000, 3),
                "max_ms": round(best["lat_max_us"] / 1000, 3),
                "ratio_to_floor": round(best["rps"] / floor_rps, 3)
                if floor_rps == floor_rps
                else None,
                "server_cpu_pct": best["server_cpu_pct"],
                "wrk_cpu_pct": best["wrk_cpu_pct"],
                "errors": errors,
                "stale_ts": best["stale_ts"],
                "requests": best["requests"],
                "warmup_checked": best["warmup_checked"],
            }
        )

    mode = "Connection: close" if a.close else "keep-alive"
    print()
    print(
        f"queryAXB stack choice: server on CPU {a.server_cpu}, wrk -t1 -c{a.connections} "
        f"-d{a.duration}s on CPU {a.client_cpu}, {mode}, best of {a.rounds} round(s)"
    )
    hdr = (
        f"{'stack':13s} {'req/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'x floor':>7s} "
        f"{'srv cpu':>7s} {'wrk cpu':>7s} {'errors':>6s}  rounds"
    )
    print(hdr)
    print("-" * len(hdr))
    for x in results:
        print(
            f"{x['stack']:13s} {x['rps']:9.0f} {x['p50_ms']:7.2f} {x['p99_ms']:7.2f} "
            f"{x['ratio_to_floor']:7.3f} {x['server_cpu_pct']:6.0f}% {x['wrk_cpu_pct']:6.0f}% "
            f"{x['errors']:6d}  "
            + ", ".join(
                f"{v:.0f}{'*' if c < 90 else ''}"
                for v, c in zip(x["rps_rounds"], x["server_cpu_rounds"], strict=True)
            )
        )
    print("(* = disturbed round: the server got < 90% of its CPU; x floor uses the best rounds)")
    for s, why in {**skipped, **failed}.items():
        print(f"{s:13s} not measured: {why}")
    summary = {
        "bench": "stack_choice",
        "mode": mode,
        "config": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "connections": a.connections,
            "rounds": a.rounds,
            "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu,
            "pairs": len(pairs),
            "db_rows": rows,
        },
        "machine": machine(),
        "versions": versions(a.python),
        "results": results,
        "skipped": skipped,
        "failed": failed,
    }
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if failed else 0


def cmd_handler(db: str, n: int) -> int:
    """Per-request cost of the handler alone and of its parts, in microseconds."""
    import msgspec

    handle = make_handler(db)
    pairs = bench_pairs()
    ts = str(int(time.time() * 1000))
    reqs = []
    for c, d, _ in pairs:
        b = body_of(c, d).encode()
        reqs.append(
            (
                ACCESS_KEY.encode(),
                b"queryAXB",
                b"5",
                ts.encode(),
                sign(ACCESS_KEY, ACCESS_SECRET, ts, b).encode(),
                b,
            )
        )
    assert all(b'"code":0,' in handle(*r) for r in reqs)
    con = sqlite3.connect(db)
    sql = "SELECT callee, bind_type FROM axb WHERE did = ? AND caller = ?"
    dec = msgspec.json.Decoder(dict).decode
    msg = b"accessKey=bench-ak&action=queryAXB&bizType=5&ts=" + ts.encode() + b"&body=" + reqs[0][5]

    def per_call_us(fn: Callable[[int], object]) -> float:
        t0 = time.perf_counter()
        fn(n)
        return (time.perf_counter() - t0) / n * 1e6

    def whole(k: int) -> None:
        m = len(reqs)
        for i in range(k):
            handle(*reqs[i % m])

    def md5_only(k: int) -> None:
        for _ in range(k):
            hashlib.md5(msg).hexdigest()

    def decode_only(k: int) -> None:
        b = reqs[0][5]
        for _ in range(k):
            dec(b)

    def sqlite_only(k: int) -> None:
        args = (pairs[0][1], pairs[0][0])
        for _ in range(k):
            con.execute(sql, args).fetchone()

    out = {
        "handler_us": round(per_call_us(whole), 2),
        "md5_us": round(per_call_us(md5_only), 2),
        "msgspec_decode_us": round(per_call_us(decode_only), 2),
        "sqlite_lookup_us": round(per_call_us(sqlite_only), 2),
    }
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd")

    r = sub.add_parser("run", help="measure every stack (default)")
    r.add_argument("--stacks", default=",".join(STACKS))
    r.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter for the servers")
    r.add_argument("--duration", type=int, default=10, help="measured seconds per stack per round")
    r.add_argument("--warmup", type=int, default=2, help="checked warm-up seconds before each")
    r.add_argument("--connections", type=int, default=64)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--pairs", type=int, default=16, help="distinct (caller, did) bodies sent")
    r.add_argument("--close", action="store_true", help="send Connection: close on every request")
    r.add_argument("--server-cpu", default="0")
    r.add_argument("--client-cpu", default="1")
    r.add_argument("--db", default=DEFAULT_DB)
    r.add_argument("--signs", default=DEFAULT_SIGNS)
    r.add_argument("--json-out", help="also write the summary JSON (indented) here")

    s = sub.add_parser("serve", help="run one stack in the foreground")
    s.add_argument("--stack", required=True, choices=STACKS)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8089)
    s.add_argument("--db", default=DEFAULT_DB)
    s.add_argument("--make-db", action="store_true", help="(re)create the DB first")

    h = sub.add_parser("handler", help="time the handler alone, in-process (no HTTP)")
    h.add_argument("--db", default=DEFAULT_DB)
    h.add_argument("--n", type=int, default=200_000)

    g = sub.add_parser("gen-signs", help="write a sign file for bench/wrk_signed.lua")
    g.add_argument("--out", default=DEFAULT_SIGNS)
    g.add_argument("--access-key", default=ACCESS_KEY)
    g.add_argument("--secret", default=ACCESS_SECRET)
    g.add_argument("--seconds", type=int, default=900, help="seconds covered, from now - 5 s")
    g.add_argument(
        "--pair",
        action="append",
        metavar="CALLER:DID",
        help="(repeatable) default: the bench pairs, which exist in the bench DB",
    )

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args.insert(0, "run")
    a = p.parse_args(args)
    if a.cmd == "serve":
        if a.make_db or not Path(a.db).exists():
            make_db(a.db)
        serve(a.stack, a.host, a.port, a.db)
        return 0
    if a.cmd == "handler":
        if not Path(a.db).exists():
            make_db(a.db)
        return cmd_handler(a.db, a.n)
    if a.cmd == "gen-signs":
        pairs: list[tuple[str, str]]
        if a.pair:
            pairs = [(x.split(":", 1)[0], x.split(":", 1)[1]) for x in a.pair]
        else:
            pairs = [(c, d) for c, d, _ in bench_pairs()]
        n = write_sign_file(
            a.out, access_key=a.access_key, secret=a.secret, pairs=pairs, seconds=a.seconds
        )
        print(f"{a.out}: {n} lines for {len(pairs)} pairs over {a.seconds} s")
        return 0
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
