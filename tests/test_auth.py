"""The signature, byte-exact: NXCloud's documented worked example and its variants."""

from __future__ import annotations

import pytest

from pns.auth import check_ts, sign, verify_sign
from pns.errors import Code, PnsError

KEY, ACTION, BIZ, TS, SECRET = "fme2na3kdi3ki", "send", "1", "1655710885431", "abciiiko2k3"

VECTORS = [
    ('{"name":"牛小信","id":10001}', "md5", "87c3560d3331ae23f1021e2025722354"),
    ('{"id":10001,"name":"牛小信"}', "md5", "7750759da06333f20d0640be09355e34"),
    ('{"id": 10001, "name": "牛小信"}', "md5", "d0c24a9886c629330d7f3f2056c65bc2"),
    ('{"name":"牛小信","id":10001}', "sha256",
     "e0eec2c99ef80f269a82795e2223f618ebfc0616c8b6c8c7d438021ec38ad0eb"),
    ("", "md5", "884afe159e39b6c88a0d6102ca97d704"),
]


@pytest.mark.parametrize(("body", "algorithm", "expected"), VECTORS)
def test_documented_vectors(body: str, algorithm: str, expected: str) -> None:
    assert sign(KEY, ACTION, BIZ, TS, body.encode(), SECRET, algorithm) == expected


@pytest.mark.parametrize(("body", "algorithm", "expected"), VECTORS)
def test_verify_accepts_vectors_and_uppercase(body: str, algorithm: str, expected: str) -> None:
    verify_sign(expected, KEY, ACTION, BIZ, TS, body.encode(), [SECRET], algorithm)
    verify_sign(expected.upper(), KEY, ACTION, BIZ, TS, body.encode(), [SECRET], algorithm)


def test_one_byte_changes_everything() -> None:
    body = '{"name":"牛小信","id":10001}'.encode()
    with pytest.raises(PnsError) as err:
        verify_sign(VECTORS[0][2], KEY, ACTION, BIZ, TS, body + b"\n", [SECRET])
    assert err.value.code is Code.BAD_SIGNATURE


def test_previous_secret_accepted_during_rotation() -> None:
    body = b"{}"
    old = sign(KEY, ACTION, BIZ, TS, body, "old-secret")
    verify_sign(old, KEY, ACTION, BIZ, TS, body, ["new-secret", "old-secret"])
    with pytest.raises(PnsError):
        verify_sign(old, KEY, ACTION, BIZ, TS, body, ["new-secret"])


def test_unknown_algorithm() -> None:
    with pytest.raises(PnsError) as err:
        sign(KEY, ACTION, BIZ, TS, b"", SECRET, "sha1")
    assert err.value.code is Code.BAD_PARAMETER


@pytest.mark.parametrize(("ts", "ok"), [
    ("1000000", True), ("940000", True), ("1060000", True), ("939999", False),
    ("1060001", False), ("abc", False), ("", False), ("-1000", False), ("1e6", False),
    ("99999999999999999999", False),
])
def test_ts_window(ts: str, ok: bool) -> None:
    if ok:
        assert check_ts(ts, 1_000_000) == int(ts)
    else:
        with pytest.raises(PnsError) as err:
            check_ts(ts, 1_000_000)
        assert err.value.code is Code.TS_EXPIRED
