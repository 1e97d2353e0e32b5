"""NXCloud's request signature, byte-exact, and the checks made before any action runs.

sign = hex(HASH("accessKey=K&action=A&bizType=B&ts=T" + "&body=" + RAW_BODY + "&accessSecret=S"))
with HASH MD5 by default or SHA-256 when the ``algorithm`` header says so; the body part is left
out when the body is empty. The raw body is hashed as received, byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from .errors import Code, PnsError

TS_WINDOW_MS = 60_000
BIZ_TYPE_PNS = "5"
_ALGORITHMS = {"md5": hashlib.md5, "sha256": hashlib.sha256}


def sign(
    access_key: str, action: str, biz_type: str, ts: str, body: bytes, secret: str,
    algorithm: str = "md5",
) -> str:
    """The signature a client sends; the server recomputes it the same way."""
    hasher = _signed_part(access_key, action, biz_type, ts, body, algorithm)
    hasher.update(f"&accessSecret={secret}".encode())
    return str(hasher.hexdigest())


def _signed_part(access_key: str, action: str, biz_type: str, ts: str, body: bytes,
                 algorithm: str) -> Any:
    """The hash of everything before the secret (the same for every secret tried)."""
    try:
        hasher = _ALGORITHMS[algorithm.lower()]()
    except KeyError:
        raise PnsError(Code.BAD_PARAMETER, "algorithm must be md5 or sha256") from None
    hasher.update(f"accessKey={access_key}&action={action}&bizType={biz_type}&ts={ts}".encode())
    if body:
        hasher.update(b"&body=")
        hasher.update(body)
    return hasher


def verify_sign(
    given: str, access_key: str, action: str, biz_type: str, ts: str, body: bytes,
    secrets: Iterable[str], algorithm: str = "md5",
) -> None:
    """Accept ``given`` if any of ``secrets`` (current, and previous during rotation) makes it.

    Every secret is tried, whatever the first gives, and compared in constant time, so timing
    tells nothing of the secret or of which one matched. The request's part is hashed once
    (the body may be 64 KiB), each secret on a copy of that state.
    """
    matched = False
    given_bytes = given.lower().encode("ascii", "replace")
    signed = _signed_part(access_key, action, biz_type, ts, body, algorithm)
    for secret in secrets:
        hasher = signed.copy()
        hasher.update(f"&accessSecret={secret}".encode())
        matched |= hmac.compare_digest(hasher.hexdigest().encode(), given_bytes)
    if not matched:
        raise PnsError(Code.BAD_SIGNATURE)


def check_ts(ts: str, now_ms: int, window_ms: int = TS_WINDOW_MS) -> int:
    """``ts`` must be epoch milliseconds within ``window_ms`` of the server clock, either way."""
    if not ts.isascii() or not ts.isdigit() or len(ts) > 16:
        raise PnsError(Code.TS_EXPIRED, "ts must be epoch milliseconds")
    value = int(ts)
    if abs(now_ms - value) > window_ms:
        raise PnsError(Code.TS_EXPIRED)
    return value
