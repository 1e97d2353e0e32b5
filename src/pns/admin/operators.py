"""Operators' tokens: shown once when made, kept only as a SHA-256 hash.

A token is 32 random bytes, so a plain (unsalted, fast) hash is enough: nobody can guess a
preimage, and a hash lets the store look the token up by its unique key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from ..model import Operator, OperatorRole

TOKEN_PREFIX = "pnsop_"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def valid_name(name: str) -> bool:
    """Names go into session cookies and logs: letters, digits, ``_`` and ``-`` only."""
    return _NAME.fullmatch(name) is not None


def new_operator(name: str, role: OperatorRole, now: int | None = None) -> tuple[Operator, str]:
    """An operator and its token (the only time the token exists in clear)."""
    token = new_token()
    operator = Operator(name=name, role=role, token_hash=hash_token(token),
                        created_at=int(time.time()) if now is None else now)
    return operator, token
