"""A stand-in PNS API for the failure paths of the Kamailio config.

It checks each queryAXB exactly as the real service does (headers, `bizType`, the MD5 signature
over the raw body, the `ts` window) and answers per `did` from a table the test fills in: a
delay, an HTTP status, a raw body, or an envelope (`connect` builds a success answer with any
data fields). It records every request so a test can look at what Kamailio sent. A
`reportCall` is taken (code 0) unless `report_answers` holds answers for its callId: those are
given first, one per attempt. Runs in a thread of the test process.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    envelope: dict[str, Any] | None = None  # JSON envelope to send (HTTP 200)
    status: int = 200  # HTTP status
    raw: bytes | None = None  # raw body instead of the envelope
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class Recorded:
    headers: dict[str, str]
    body: bytes
    sign_ok: bool
    ts_skew_ms: int
    peer: tuple[str, int] = ("", 0)  # the client's address: one per TCP connection


@dataclass
class StubPns:
    access_key: str
    access_secret: str
    answers: dict[str, Answer] = field(default_factory=dict)
    report_answers: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def connect(self, did: str, callee: str, call_id: str, **data: Any) -> Answer:
        """Makes queries for `did` succeed: route to `callee` under `call_id`, with any further
        `data` fields of the answer (e.g. display, maxDuration, calleeDtmf, calleeDtmfDelay: the
        fields pns adds to the success answer, as the switch reads them)."""
        answer = Answer(envelope={"code": 0, "msg": "success", "requestId": "1" * 19,
                                  "data": {"callee": callee, "callId": call_id, "flag": 0,
                                           "bindType": 0, **data}})
        self.answers[did] = answer
        return answer

    def sign(self, ts: str, body: bytes, action: str = "queryAXB") -> str:
        text = (
            f"accessKey={self.access_key}&action={action}&bizType=5&ts={ts}&body=".encode()
            + body
            + f"&accessSecret={self.access_secret}".encode()
        )
        return hashlib.md5(text).hexdigest()

    def handle(self, headers: dict[str, str], body: bytes,
               peer: tuple[str, int] = ("", 0)) -> tuple[int, bytes, float]:
        h = {k.lower(): v for k, v in headers.items()}
        ts = h.get("ts", "")
        action = h.get("action", "")
        sign_ok = h.get("sign") == self.sign(ts, body, action)
        skew = int(time.time() * 1000) - int(ts) if ts.isdigit() else 1 << 40
        self.requests.append(Recorded(headers=h, body=body, sign_ok=sign_ok, ts_skew_ms=skew,
                                      peer=peer))

        def env(code: int, msg: str, data: dict[str, Any] | None = None) -> bytes:
            e: dict[str, Any] = {"code": code, "msg": msg, "requestId": "1" * 19}
            if data is not None:
                e["data"] = data
            return json.dumps(e).encode()

        if h.get("content-type", "").split(";")[0].strip() != "application/json":
            return 200, env(1002, "content type"), 0.0
        if h.get("accesskey") != self.access_key or action not in ("queryAXB", "reportCall"):
            return 200, env(1005, "account"), 0.0
        if h.get("biztype") != "5":
            return 200, env(1002, "bizType"), 0.0
        if not sign_ok:
            return 200, env(1003, "sign"), 0.0
        if abs(skew) > 60_000:
            return 200, env(1004, "ts"), 0.0
        try:
            req = json.loads(body)
        except ValueError:
            return 200, env(1002, "json"), 0.0
        if action == "reportCall":
            queued = self.report_answers.get(str(req.get("callId")))
            if not queued:
                return 200, env(0, "success", {"id": 1, "callId": req.get("callId")}), 0.0
            report = queued.pop(0)
            payload = (report.raw if report.raw is not None
                       else json.dumps(report.envelope or {}).encode())
            return report.status, payload, report.delay
        ans = self.answers.get(str(req.get("did")))
        if ans is None:
            return 200, env(10013, "binding not exist", {"audioWhenCallFail": "stub-fail.wav"}), 0.0
        payload = ans.raw if ans.raw is not None else json.dumps(ans.envelope or {}).encode()
        return ans.status, payload, ans.delay

    def start(self, port: int) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                status, payload, delay = stub.handle(dict(self.headers.items()), body,
                                                     self.client_address[:2])
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
