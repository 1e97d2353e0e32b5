"""A Python client for the pns (and NXCloud PNS) API that signs its requests.

Standard library only, one keep-alive connection per client (not thread-safe: one client per
thread). ``call`` returns the envelope as a dict whatever the code; nothing is raised for a
refusal, so callers see every code the service gives.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from .auth import BIZ_TYPE_PNS, sign
from .callbacks import verify_callback

__all__ = ["PnsClient", "encode_body", "signed_headers", "verify_callback"]

API_PATH = "/api/pns/"
# Actions that change nothing: safe to send again when a connection drops mid-request.
READ_ONLY_ACTIONS = frozenset({"queryAXB", "getAXBList", "getCallRecords"})


def signed_headers(
    access_key: str, access_secret: str, action: str, body: bytes, ts: str | None = None,
    algorithm: str = "md5",
) -> dict[str, str]:
    """The headers of a signed request; ``ts`` defaults to now in milliseconds."""
    ts = ts if ts is not None else str(int(time.time() * 1000))
    headers = {
        "Content-Type": "application/json",
        "accessKey": access_key,
        "action": action,
        "bizType": BIZ_TYPE_PNS,
        "ts": ts,
        "sign": sign(access_key, action, BIZ_TYPE_PNS, ts, body, access_secret, algorithm),
    }
    if algorithm != "md5":
        headers["algorithm"] = algorithm
    return headers


def encode_body(body: dict[str, Any] | bytes | str) -> bytes:
    """Compact JSON, UTF-8, non-ASCII kept as is: the bytes sent are the bytes signed."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class PnsClient:
    def __init__(
        self, base_url: str, access_key: str, access_secret: str, *, algorithm: str = "md5",
        timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
    ):
        """``ssl_context`` for https: URLs (default: the system's trusted CAs, hostname
        checked); e.g. ``ssl.create_default_context(cafile="ca.pem")`` for a private CA."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], not {base_url!r}")
        self.access_key = access_key
        self.access_secret = access_secret
        self.algorithm = algorithm
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path.rstrip("/") + API_PATH) if parts.path not in ("", "/") \
            else API_PATH
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._last_ts = 0

    def _next_ts(self) -> str:
        """Now in milliseconds, never repeated by this client: a repeated request within one
        millisecond would otherwise carry the same signature and be refused as a replay."""
        self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        return str(self._last_ts)

    def call(self, action: str, body: dict[str, Any] | bytes | str) -> dict[str, Any]:
        """Sign and send one action; returns the envelope ``{code, msg, requestId, data?}``."""
        _status, envelope = self.request(action, body)
        return envelope

    def request(
        self, action: str, body: dict[str, Any] | bytes | str, *, ts: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Like ``call`` but also gives the HTTP status, and lets tests set ``ts``/headers."""
        raw = encode_body(body)
        headers = signed_headers(self.access_key, self.access_secret, action, raw,
                                 ts if ts is not None else self._next_ts(), self.algorithm)
        if extra_headers:
            headers.update(extra_headers)
        status, payload = self.send(raw, headers, resend=action in READ_ONLY_ACTIONS)
        return status, json.loads(payload)

    def send(self, raw: bytes, headers: dict[str, str], path: str | None = None,
             method: str = "POST", resend: bool = True) -> tuple[int, bytes]:
        """Send bytes as they are (no signing). When the connection drops, a ``resend``-able
        request is sent once more on a new one; a state-changing one is not (it may have been
        carried out: the error goes to the caller, who repeats it with the same
        customerBindId, which is idempotent, or checks getAXBList)."""
        for attempt in (1, 2) if resend else (2,):
            self._drop_if_closed_by_server()
            conn = self._connection()
            try:
                conn.request(method, path or self._path, body=raw, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.will_close:
                    self.close()
                return response.status, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _drop_if_closed_by_server(self) -> None:
        """A kept-alive connection the server has closed meanwhile (idle timeout) is dropped
        before use, so even a request that is never resent does not fail on it.

        Between answers the server sends nothing, so a readable socket means it closed (its
        FIN, TLS close_notify or a reset) or sent what no request asked for: either way the
        connection is done. Polling reads nothing, which works for TLS sockets as well
        (``recv`` with flags is refused on those)."""
        sock = self._conn.sock if self._conn is not None else None
        if sock is None:
            return
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            done = bool(poller.poll(0)) or (isinstance(sock, ssl.SSLSocket) and sock.pending())
        except (OSError, ValueError):
            done = True
        if done:
            self.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._ssl_context)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port,
                                                        timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PnsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- conveniences ----------------------------------------------------------------------
    def bind_axb(self, phone_a: str, phone_b: str, expire_second: int = 0,
                 **fields: Any) -> dict[str, Any]:
        return self.call("bindAXB", {"phoneA": phone_a, "phoneB": phone_b,
                                     "expireSecond": expire_second, **fields})

    def bind_extension(self, phone_a: str, phone_x: str, expire_second: int = 0,
                       **fields: Any) -> dict[str, Any]:
        return self.call("bindAXBExtension", {"phoneA": phone_a, "phoneX": phone_x,
                                              "expireSecond": expire_second, **fields})

    def unbind(self, bind_id: str = "", customer_bind_id: str = "") -> dict[str, Any]:
        body = {"bindId": bind_id} if bind_id else {"customerBindId": customer_bind_id}
        return self.call("unbindAXB", body)

    def list_bindings(self, limit: int = 0, offset: int = 0) -> dict[str, Any]:
        return self.call("getAXBList", {"limit": limit, "offset": offset})

    def report_call(self, call_id: str, **times: Any) -> dict[str, Any]:
        return self.call("reportCall", {"callId": call_id, **times})

    def call_records(self, **filters: Any) -> dict[str, Any]:
        return self.call("getCallRecords", filters)

    def query(self, caller: str, did: str, extension: str | None = None) -> dict[str, Any]:
        body = {"caller": caller, "did": did}
        if extension is not None:
            body["extension"] = extension
        return self.call("queryAXB", body)
