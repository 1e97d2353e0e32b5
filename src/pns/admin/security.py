"""Who is asking: bearer tokens, console sessions, CSRF tokens, and the limit on guesses.

A session cookie names the operator, its session generation, an expiry, a nonce and the id of
the key it was signed with, and is signed with HMAC-SHA256. The key is the operator's own,
derived from the server's secret-at-rest key (``pns.vault``: ``PNS_SECRET_KEY`` or the key
file, never in the store) and the operator's token hash: whoever reads the store alone (a
backup, ``pg_dump``, the operators table) cannot make a session, and a new token ends the old
ones. Every process of a deployment holds the same key, so each can check any session, and a
restart keeps them. Disabling the operator ends all its sessions at once; logging out bumps
its session generation in the store, which ends them too (every browser of that operator).
Rotating the secret-at-rest key (``pns secrets rotate-key``) ends every session: log in again.
The CSRF token of a form is an HMAC of the session's nonce under the same key, so it is
worthless without the session cookie, which the browser sends only to pns itself
(``SameSite=Strict``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping

from ..model import Operator
from ..ratelimit import FailureLimiter
from ..store import Store
from .operators import hash_token, valid_name


def header(headers: Mapping[bytes, bytes], name: str) -> str:
    """One request header as text ("" when absent): the HTTP layer keeps them as bytes with
    lower-case names and decodes none; Latin-1 makes any byte a character."""
    return headers.get(name.encode(), b"").decode("latin-1")


SESSION_COOKIE = "pns_session"
LOGIN_CSRF_COOKIE = "pns_login_csrf"
SESSION_SECONDS = 12 * 3600
# Guesses of a token, per client address: the console's login and the API's bearer.
LOGIN_FAILURES = 10
LOGIN_WINDOW = 300.0

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


SESSION_PURPOSE = "console sessions"
_KEY_ID = re.compile(r"[0-9a-f]{8}")


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def operator_key(server_key: bytes, operator: Operator) -> bytes:
    """The key of one operator's sessions: the server's, bound to the operator's name and its
    token hash (so a new token ends the sessions of the old one)."""
    return hmac.new(server_key, f"{operator.name}.{operator.token_hash}".encode(),
                    hashlib.sha256).digest()


class Session:
    def __init__(self, operator: Operator, nonce: str, key: bytes):
        self.operator = operator
        self.nonce = nonce
        self._key = key

    @property
    def csrf(self) -> str:
        return _sign(self._key, f"csrf.{self.nonce}")

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf, token)


class Gate:
    """Authenticates requests for the admin API and the console."""

    def __init__(self, store: Store, *, trusted_proxies: frozenset[str] = frozenset(),
                 secure_cookies: bool = False, clock: Callable[[], float] = time.time,
                 limiter: FailureLimiter | None = None):
        self.store = store
        self.trusted_proxies = trusted_proxies
        self.secure_cookies = secure_cookies
        self.clock = clock
        self.limiter = limiter or FailureLimiter(LOGIN_FAILURES, LOGIN_WINDOW)

    # --- where a request comes from -------------------------------------------------------
    def client_address(self, client: str, headers: Mapping[bytes, bytes]) -> str:
        """The peer, or what a trusted proxy says the peer is (the last X-Forwarded-For)."""
        if client in self.trusted_proxies:
            forwarded = header(headers, "x-forwarded-for").split(",")[-1].strip()
            if forwarded:
                return forwarded
        return client

    def over_tls(self, client: str, headers: Mapping[bytes, bytes]) -> bool:
        if self.secure_cookies:
            return True
        return (client in self.trusted_proxies
                and header(headers, "x-forwarded-proto").lower() == "https")

    # --- tokens ---------------------------------------------------------------------------
    def blocked(self, address: str) -> bool:
        return self.limiter.blocked(address)

    async def operator_for_token(self, token: str, address: str) -> Operator | None:
        """The enabled operator holding ``token``; a wrong one counts against ``address``."""
        operator = None
        if token:
            operator = await self.store.get_operator_by_token_hash(hash_token(token))
        if operator is None or operator.disabled:
            self.limiter.fail(address)
            return None
        return operator

    # --- sessions -------------------------------------------------------------------------
    def new_session_cookie(self, operator: Operator) -> str:
        """``name.generation.expires.nonce.keyid.signature``."""
        derived = self.store.keyring.derived_key(SESSION_PURPOSE)
        assert derived is not None  # the sealing key always derives one
        key_id, server_key = derived
        expires = int(self.clock()) + SESSION_SECONDS
        payload = (f"{operator.name}.{operator.session_generation}.{expires}."
                   f"{secrets.token_hex(16)}.{key_id}")
        return f"{payload}.{_sign(operator_key(server_key, operator), payload)}"

    async def session(self, cookie_header: str) -> Session | None:
        """The session of a valid cookie: signed with the server's key for this operator,
        unexpired, of the operator's current session generation, the operator enabled."""
        value = parse_cookies(cookie_header).get(SESSION_COOKIE, "")
        parts = value.split(".")
        if (len(parts) != 6 or not valid_name(parts[0]) or not parts[1].isdigit()
                or len(parts[1]) > 18 or not parts[2].isdigit() or len(parts[2]) > 18
                or not _KEY_ID.fullmatch(parts[4])):
            return None
        name, generation, expires, nonce, key_id, signature = parts
        if int(expires) <= self.clock():
            return None
        operator = await self.store.get_operator(name)
        if (operator is None or operator.disabled
                or int(generation) != operator.session_generation):
            return None
        derived = self.store.keyring.derived_key(SESSION_PURPOSE, key_id)
        if derived is None:
            return None
        key = operator_key(derived[1], operator)
        if not hmac.compare_digest(_sign(key, ".".join(parts[:5])), signature):
            return None
        return Session(operator, nonce, key)

    async def end_sessions(self, session: Session) -> None:
        """Logout: every session of this operator ends, on every process (the generation its
        cookies carry is bumped in the store)."""
        await self.store.end_operator_sessions(session.operator.name)

    def cookie(self, name: str, value: str, secure: bool, max_age: int) -> tuple[str, str]:
        flags = f"; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        return ("Set-Cookie", f"{name}={value}{flags}{'; Secure' if secure else ''}")


def parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in cookies:
            cookies[name] = value
    return cookies
