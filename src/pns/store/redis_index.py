"""The binding index on a Redis Cluster, sharded by X.

Every key of one X carries the hash tag ``{X}``, so it lives in one slot on one master, and every
change of an X is one Lua script: atomic on that master, with no cross-slot step. Per X:

- ``P{X}:b`` hash bindId → the binding (a JSON array in ``Binding``'s field order);
- ``P{X}:p`` hash party number → bindId (I1: a field holds one binding);
- ``P{X}:e`` hash extension → bindId (I2).

A binding of a mode with a second number Y (modes.md) is also kept in Y's slot: a copy of it
in ``P{Y}:b`` and its Y keys in ``P{Y}:p``, so I1 on Y is decided by Y's master, one script,
as on X. Y's script runs first, X's second; a refusal on X removes the copy again, and a swap
(``replace_binding``) goes Y then X, undone on Y when X refuses.

An expired binding still holds its fields until swept or until an insert on its X releases it;
every read checks ``expireAt`` against the caller's clock, so it is never answered. A bindId
names its X (``ids.bind_id_x``): get and delete by bindId go straight to X's slot.

Allocation across X's reads ``P{pool:ACCOUNT:CC}``, a sorted set of X → bindings stored, kept
after every change: it is only a hint, the per-X script decides (a candidate taken meanwhile is
a conflict, and the core tries the next).

Durability: a write is acknowledged only once ``WAIT 1`` says a replica has it (the script and
the WAIT go on one connection); otherwise the caller gets ``IndexUnavailable`` (10009): the
write may or may not be there, and the records side resolves it (see ``composite``).

Failures (a master gone, MOVED/ASK while slots move, a failover under way) are retried with
backoff for about ``RETRY_SECONDS``; then ``IndexUnavailable``, which the API answers 10009.

URL: ``redis-cluster://HOST:PORT[,HOST:PORT...][/PREFIX][?replicas=1&wait_ms=1000]``.
``PREFIX`` (letters, digits, ``_-.:``) starts every key, so several deployments (or test runs)
can share one cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..ids import bind_id_x
from ..model import Binding, binding_from_row, binding_row
from .base import BindConflict, ConflictKind, StoreError, check_replacement

_log = logging.getLogger("pns.store.redis")

RETRY_SECONDS = 3.0
MAX_IN_FLIGHT = 128
DEFAULT_WAIT_MS = 1000
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{0,64}")
# Errors after which the cluster's map may be stale: ask it again, back off, retry.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError,
              RedisClusterException, OSError)


class IndexUnavailable(StoreError):
    """The cluster did not answer (or did not replicate) in time: the API answers 10009."""


# Shared by every script: ARGV[1] is the caller's clock (epoch seconds); KEYS are X's hashes.
_PRELUDE = """
local now = tonumber(ARGV[1])
local function active(body)
  local e = cjson.decode(body)[12]
  return e == 0 or e > now
end
local function drop(id)
  local body = redis.call('HGET', KEYS[1], id)
  if not body then return false end
  local r = cjson.decode(body)
  redis.call('HDEL', KEYS[1], id)
  local fields = {r[4], r[5], '*'}
  if r[14] and r[14] ~= '' then
    local members = cjson.decode(r[14]).members
    if members then
      for m in string.gmatch(members, '[^,]+') do fields[#fields + 1] = m end
    end
  end
  for _, n in ipairs(fields) do
    if n ~= '' and redis.call('HGET', KEYS[2], n) == id then redis.call('HDEL', KEYS[2], n) end
  end
  if r[6] ~= '' and redis.call('HGET', KEYS[3], r[6]) == id then
    redis.call('HDEL', KEYS[3], r[6])
  end
  return true
end
local function holder(hash, field)
  local id = redis.call('HGET', hash, field)
  if not id then return nil end
  local body = redis.call('HGET', KEYS[1], id)
  if body and active(body) then return id end
  if body then drop(id) else redis.call('HDEL', hash, field) end
  return nil
end
"""

# KEYS b, p, e; ARGV now, bindId, body, deadline (epoch ms, 0 = none), mode, then the parties
# the binding holds on this number ("*": held alone). Mode 0 a binding on its X; 1 one that
# holds its X alone (no other active binding there); 2 the copy of a binding on its Y (its
# extension is X's, not claimed here). Returns the number of bindings stored on the number,
# or the name of the key lost.
_INSERT = _PRELUDE + """
local id, body = ARGV[2], ARGV[3]
local deadline = tonumber(ARGV[4])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return 'late' end
end
local existing = redis.call('HGET', KEYS[1], id)
if existing then
  if existing == body then return redis.call('HLEN', KEYS[1]) end
  return 'duplicate'
end
local ext = ARGV[5] == '2' and '' or cjson.decode(body)[6]
local seen = {}
for i = 6, #ARGV do
  if seen[ARGV[i]] or holder(KEYS[2], ARGV[i]) then return 'party' end
  seen[ARGV[i]] = true
end
if holder(KEYS[2], '*') then return 'party' end
if ext ~= '' and holder(KEYS[3], ext) then return 'extension' end
if ARGV[5] == '1' then
  for _, other in ipairs(redis.call('HVALS', KEYS[1])) do
    if active(other) then return 'party' end
  end
end
redis.call('HSET', KEYS[1], id, body)
for i = 6, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], id) end
if ext ~= '' then redis.call('HSET', KEYS[3], ext, id) end
return redis.call('HLEN', KEYS[1])
"""

# KEYS b, p, e; ARGV now, bindId, old body, new body, mode (as insert), then the parties the
# new binding holds on this number: compare-and-swap of one binding. Returns 'stale' (the
# stored binding is not the old one, or it expired), the name of a key held by another
# binding, or the number of bindings stored on the number.
_REPLACE = _PRELUDE + """
local id = ARGV[2]
local current = redis.call('HGET', KEYS[1], id)
if current ~= ARGV[3] or not active(current) then return 'stale' end
local function free(hash, field)
  local h = holder(hash, field)
  return h == nil or h == id
end
local ext = ARGV[5] == '2' and '' or cjson.decode(ARGV[4])[6]
local seen = {}
for i = 6, #ARGV do
  if seen[ARGV[i]] or not free(KEYS[2], ARGV[i]) then return 'party' end
  seen[ARGV[i]] = true
end
if not free(KEYS[2], '*') then return 'party' end
if ext ~= '' and not free(KEYS[3], ext) then return 'extension' end
if ARGV[5] == '1' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if all[i] ~= id and active(all[i + 1]) then return 'party' end
  end
end
drop(id)
redis.call('HSET', KEYS[1], id, ARGV[4])
for i = 6, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], id) end
if ext ~= '' then redis.call('HSET', KEYS[3], ext, id) end
return redis.call('HLEN', KEYS[1])
"""

# KEYS b, p, e; ARGV now, expired_only (0/1), bindId...: {removed, bindings stored on X}.
_DELETE = _PRELUDE + """
local removed = 0
for i = 3, #ARGV do
  local body = redis.call('HGET', KEYS[1], ARGV[i])
  if body and (ARGV[2] == '0' or not active(body)) then
    drop(ARGV[i])
    removed = removed + 1
  end
end
return {removed, redis.call('HLEN', KEYS[1])}
"""

# KEYS b, field hash; ARGV now, field: the active binding holding the field, or nil.
_FIND = _PRELUDE + """
local id = redis.call('HGET', KEYS[2], ARGV[2])
if not id then return false end
local body = redis.call('HGET', KEYS[1], id)
if body and active(body) then return body end
return false
"""

# KEYS b, e; ARGV now, first_only (0/1): active extensions on X.
_EXTENSIONS = _PRELUDE + """
local found = {}
local pairs_ = redis.call('HGETALL', KEYS[2])
for i = 1, #pairs_, 2 do
  local body = redis.call('HGET', KEYS[1], pairs_[i + 1])
  if body and active(body) then
    found[#found + 1] = pairs_[i]
    if ARGV[2] == '1' then return found end
  end
end
return found
"""

# KEYS b, p; ARGV now, party...: {bindings stored on X, then 1/0 per party: actively bound}.
_PROBE = _PRELUDE + """
local out = {redis.call('HLEN', KEYS[1])}
for i = 2, #ARGV do
  local bound = 0
  local id = ARGV[i] ~= '' and redis.call('HGET', KEYS[2], ARGV[i])
  if id then
    local body = redis.call('HGET', KEYS[1], id)
    if body and active(body) then bound = 1 end
  end
  out[#out + 1] = bound
end
return out
"""

# KEYS b; ARGV now, with_parties (0/1): {active bindings, then every active party if asked}.
# O(bindings on X).
_ACTIVE = _PRELUDE + """
local out = {0}
local parties = ARGV[2] == '1'
for _, body in ipairs(redis.call('HVALS', KEYS[1])) do
  local r = cjson.decode(body)
  if r[12] == 0 or r[12] > now then
    out[1] = out[1] + 1
    if parties then
      out[#out + 1] = r[4]
      if r[5] ~= '' then out[#out + 1] = r[5] end
    end
  end
end
return out
"""

# KEYS b, p, e: drop every key of X (a number removed from the pool).
_DROP_X = """
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return n
"""

_SCRIPTS = {
    "insert": _INSERT, "replace": _REPLACE, "delete": _DELETE, "find": _FIND,
    "extensions": _EXTENSIONS, "probe": _PROBE, "active": _ACTIVE, "drop_x": _DROP_X,
}
_WRITES = {"insert", "replace", "delete", "drop_x"}


def encode_binding(binding: Binding) -> str:
    """A JSON array: the 13 column fields (the scripts read ``expire_at`` at [12]), then the
    ``attrs`` text of the fields beyond them."""
    return msgspec.json.encode(binding_row(binding)).decode()


def decode_binding(body: str) -> Binding:
    return binding_from_row(msgspec.json.decode(body))


def _raise_lost(result: Any) -> None:
    """An insert's or a swap's refusal as the store's exception."""
    if result == "party":
        raise BindConflict(ConflictKind.PARTY)
    if result == "extension":
        raise BindConflict(ConflictKind.EXTENSION)
    if result == "duplicate":
        raise StoreError("this bindId exists")
    if result == "late":
        raise StoreError("the reservation's deadline passed before the insert")


def _active_at(binding: Binding, now: int) -> Binding | None:
    return binding if binding.active_at(now) else None


class IndexOptions:
    """What a ``redis-cluster://`` URL says."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "redis-cluster":
            raise StoreError(f"bindings URL must start with redis-cluster://, not {url!r}")
        self.nodes: list[tuple[str, int]] = []
        for item in parts.netloc.split(","):
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise StoreError(f"bindings URL: {item!r} is not HOST:PORT")
            self.nodes.append((host.strip("[]"), int(port)))
        self.prefix = parts.path.lstrip("/")
        if not _PREFIX.fullmatch(self.prefix):
            raise StoreError("bindings URL: the key prefix may hold letters, digits and _.:- "
                             "(at most 64)")
        query = dict(parse_qsl(parts.query))
        try:
            self.replicas = int(query.pop("replicas", "1"))
            self.wait_ms = int(query.pop("wait_ms", str(DEFAULT_WAIT_MS)))
        except ValueError:
            raise StoreError("bindings URL: replicas and wait_ms must be integers") from None
        if self.replicas < 0 or self.wait_ms < 1:
            raise StoreError("bindings URL: replicas >= 0 and wait_ms >= 1")
        if query:
            raise StoreError(f"bindings URL: unknown option(s) {sorted(query)}")


class RedisBindingIndex:
    """``BindingIndex`` on a Redis Cluster; also the per-X probes a pool needs."""

    def __init__(self, cluster: RedisCluster, options: IndexOptions):
        self._cluster = cluster
        self._prefix = options.prefix
        self._replicas = options.replicas
        self._wait_ms = options.wait_ms
        self._sha: dict[str, str] = {}
        self._in_flight: asyncio.Semaphore | None = None
        self._refresh_lock: asyncio.Lock | None = None
        self._refreshed_at = 0.0

    @classmethod
    async def open(cls, url: str) -> RedisBindingIndex:
        options = IndexOptions(url)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in options.nodes],
            decode_responses=True, socket_timeout=2.0, socket_connect_timeout=1.0,
            require_full_coverage=True,
        )
        index = cls(cluster, options)
        try:
            await cluster.initialize()
            for name, source in _SCRIPTS.items():
                index._sha[name] = str(await cluster.script_load(source))
        except (RedisError, RedisClusterException, OSError) as exc:
            await cluster.aclose()
            raise StoreError(f"cannot open bindings index {url}: {type(exc).__name__}: {exc}"
                             ) from exc
        return index

    async def close(self) -> None:
        await self._cluster.aclose()

    async def ping(self) -> None:
        """Every slot has a master that answers."""
        info = await self._retrying(lambda: self._cluster.cluster_info())
        if info.get("cluster_state") != "ok":
            raise IndexUnavailable("the cluster's state is not ok")

    # --- keys --------------------------------------------------------------------------------
    def _keys(self, x: str) -> list[str]:
        tag = f"{self._prefix}{{{x}}}"
        return [f"{tag}:b", f"{tag}:p", f"{tag}:e"]

    def pool_key(self, account_id: int, country_code: int) -> str:
        return f"{self._prefix}{{pool:{account_id}:{country_code}}}"

    # --- running scripts ------------------------------------------------------------------------
    async def _retrying(self, attempt: Any) -> Any:
        """Run ``attempt()`` again after failures that a failover or a slot move explains,
        refreshing the cluster's map in between, for about ``RETRY_SECONDS``. At most
        ``MAX_IN_FLIGHT`` attempts run at once per process, so a burst of binds cannot open
        a connection per command."""
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                async with self._in_flight:
                    return await attempt()
            except _TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise IndexUnavailable(f"bindings index unavailable: {exc}") from exc
                _log.warning("bindings index: %s: %s; retrying", type(exc).__name__, exc)
                stale_map = not isinstance(exc, MaxConnectionsError | TryAgainError)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 0.5)
            if stale_map:
                await self._refresh_map()

    async def _refresh_map(self) -> None:
        """Ask the cluster for its slots again; once for many failing callers at a time."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        asked = time.monotonic()
        async with self._refresh_lock:
            if self._refreshed_at >= asked:
                return
            with contextlib.suppress(*_TRANSIENT):
                await self._cluster.nodes_manager.initialize()
            self._refreshed_at = time.monotonic()

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script on X's master, one round trip; for a write, followed by ``WAIT`` on the
        same connection, so the answer says whether a replica has it."""
        write = name in _WRITES and self._replicas > 0
        redirect: list[str] = []  # "host:port" after an ASK

        async def attempt() -> Any:
            node, asking = self._node(keys[0], redirect)
            commands = [PipelineCommand(0, "ASKING")] if asking else []
            commands.append(PipelineCommand(len(commands), "EVALSHA", self._sha[name],
                                            len(keys), *keys, *args))
            if write:
                commands.append(PipelineCommand(len(commands), "WAIT", self._replicas,
                                                self._wait_ms))
            await node.execute_pipeline(commands)
            result = commands[-2 if write else -1].result
            if isinstance(result, NoScriptError):
                await node.execute_command("SCRIPT", "LOAD", _SCRIPTS[name])
                raise TryAgainError("script reloaded")
            if isinstance(result, MovedError):
                await self._refresh_map()
                raise TryAgainError(f"MOVED {result.node_addr}")
            if isinstance(result, AskError):
                redirect[:] = [f"{result.host}:{result.port}"]
                raise TryAgainError(f"ASK {result.node_addr}")
            if isinstance(result, BaseException):
                raise result
            if write:
                acked = commands[-1].result
                if isinstance(acked, BaseException) or int(acked) < self._replicas:
                    raise IndexUnavailable(
                        f"a replica did not confirm the write within {self._wait_ms} ms")
            return result

        try:
            return await self._retrying(attempt)
        except ResponseError as exc:
            raise StoreError(f"bindings index: {exc}") from exc

    def _node(self, key: str, redirect: list[str]) -> tuple[ClusterNode, bool]:
        if redirect:
            node = self._cluster.get_node(node_name=redirect.pop())
            if node is not None:
                return node, True
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise ClusterDownError("no node serves this slot")
        return node, False

    # --- BindingIndex ---------------------------------------------------------------------------
    async def insert_binding(self, binding: Binding, now: int) -> None:
        await self.insert_on_x(binding, now, 0)

    async def insert_on_x(self, binding: Binding, now: int, deadline_ms: int) -> int:
        """Insert atomically on X or raise ``BindConflict``; returns the bindings stored on X.

        With ``deadline_ms`` (epoch ms on the master's clock) the script refuses to insert
        after it (``StoreError``): the records side may then decide the binding never came.

        A binding with a Y is inserted on Y first (its copy and its keys there, in Y's slot:
        I1 on Y is decided by Y's master), then on X; if X refuses it, the copy on Y is
        removed again. Whoever finds a copy on Y without its binding on X (a crash between
        the two scripts) removes it: the records side's settling of the reservation does.
        """
        if bind_id_x(binding.bind_id) != binding.x:
            raise StoreError("this bindId does not name its X (make it with ids.new_bind_id)")
        on_x, on_y = self._split_keys(binding)
        if on_y:
            _raise_lost(await self._script("insert", self._keys(binding.y), (
                now, binding.bind_id, encode_binding(binding), deadline_ms, 2, *on_y)))
        try:
            result = await self._script("insert", self._keys(binding.x), (
                now, binding.bind_id, encode_binding(binding), deadline_ms,
                int(binding.exclusive()), *on_x))
            _raise_lost(result)
        except IndexUnavailable:
            raise  # an unknown outcome: the records side settles it, the copy on Y too
        except (BindConflict, StoreError):
            if on_y:
                await self._delete_copies([binding.y], [binding.bind_id], 0, False)
            raise
        return int(result)

    async def replace_binding(self, old: Binding, new: Binding, now: int) -> bool:
        """Compare-and-swap of one binding: on Y first (where it has one), then on X, each in
        one script; a refusal on X swaps Y back. The records side's copy is the caller's
        (``CompositeStore.replace_binding``)."""
        check_replacement(old, new)
        on_x, on_y = self._split_keys(new)
        if on_y:
            if old.y:
                swapped = await self._script("replace", self._keys(new.y), (
                    now, new.bind_id, encode_binding(old), encode_binding(new), 2, *on_y))
            else:  # Y given at the call-in (XYB with delayedGetY)
                swapped = await self._script("insert", self._keys(new.y), (
                    now, new.bind_id, encode_binding(new), 0, 2, *on_y))
            if swapped == "stale":
                return False
            _raise_lost(swapped)
        try:
            result = await self._script("replace", self._keys(new.x), (
                now, new.bind_id, encode_binding(old), encode_binding(new),
                int(new.exclusive()), *on_x))
            if result == "stale":
                await self._undo_y(old, new, now)
                return False
            _raise_lost(result)
        except BindConflict:
            await self._undo_y(old, new, now)
            raise
        return True

    async def _undo_y(self, old: Binding, new: Binding, now: int) -> None:
        if not new.y:
            return
        if old.y:
            await self._script("replace", self._keys(new.y), (
                now, new.bind_id, encode_binding(new), encode_binding(old), 2,
                *self._split_keys(old)[1]))
        else:
            await self._delete_copies([new.y], [new.bind_id], 0, False)

    @staticmethod
    def _split_keys(binding: Binding) -> tuple[list[str], list[str]]:
        """The binding's parties on X and on Y (``Binding.party_keys``)."""
        on_x: list[str] = []
        on_y: list[str] = []
        for number, party in binding.party_keys():
            if number == binding.x:
                on_x.append(party)
            elif number == binding.y:
                on_y.append(party)
            else:
                raise StoreError("a binding's keys are on its X and its Y only")
        return on_x, on_y

    async def get_binding(self, bind_id: str, now: int) -> Binding | None:
        found = await self.stored_binding(bind_id)
        return _active_at(found, now) if found is not None else None

    async def stored_binding(self, bind_id: str) -> Binding | None:
        """The binding under this bindId, expired or not (the records side's repairs)."""
        x = bind_id_x(bind_id)
        if x is None:
            return None
        key = self._keys(x)[0]
        body = await self._retrying(lambda: self._cluster.hget(key, bind_id))
        return decode_binding(body) if body else None

    async def delete_binding(self, bind_id: str) -> bool:
        found = await self.stored_binding(bind_id)
        removed, _ = await self.delete_bindings(
            bind_id_x(bind_id) or "", [bind_id], 0, expired_only=False,
            ys=[found.y] if found is not None and found.y else [])
        return removed > 0

    async def delete_bindings(self, x: str, bind_ids: Sequence[str], now: int,
                              expired_only: bool, ys: Sequence[str] = ()) -> tuple[int, int]:
        """Remove these bindings of X (only those expired at ``now``, if asked), and their
        copies on the numbers ``ys`` (their Ys); returns (removed, bindings still stored on
        X). The copies go after X; a copy left by a crash in between keeps its keys on Y
        (and answers there) until the records side finishes the unbind or the sweeper its
        expiry, both of which come here again."""
        if not x or not bind_ids:
            return 0, 0
        removed, stored = await self._script(
            "delete", self._keys(x), (now, int(expired_only), *bind_ids))
        await self._delete_copies(ys, bind_ids, now, expired_only)
        return int(removed), int(stored)

    async def _delete_copies(self, ys: Sequence[str], bind_ids: Sequence[str], now: int,
                             expired_only: bool) -> None:
        for y in dict.fromkeys(y for y in ys if y):
            await self._script("delete", self._keys(y), (now, int(expired_only), *bind_ids))

    async def drop_x(self, x: str) -> int:
        return int(await self._script("drop_x", self._keys(x), ()))

    async def _find(self, x: str, which: int, field: str, now: int) -> Binding | None:
        keys = self._keys(x)
        body = await self._script("find", (keys[0], keys[which]), (now, field))
        return decode_binding(body) if body else None

    async def find_by_party(self, x: str, number: str, now: int) -> Binding | None:
        return await self._find(x, 1, number, now) if number else None

    async def find_by_extension(self, x: str, extension: str, now: int) -> Binding | None:
        return await self._find(x, 2, extension, now) if extension else None

    async def has_extension_bindings(self, x: str, now: int) -> bool:
        keys = self._keys(x)
        return bool(await self._script("extensions", (keys[0], keys[2]), (now, 1)))

    async def used_extensions(self, x: str, now: int) -> set[str]:
        keys = self._keys(x)
        return set(await self._script("extensions", (keys[0], keys[2]), (now, 0)))

    # --- what a pool needs ----------------------------------------------------------------------
    async def _batch(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
                     ) -> list[Any]:
        """One read script per X for many X's: one pipeline, one round trip per master."""
        if not calls:
            return []

        async def attempt() -> list[Any]:
            by_node: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
            for position, (keys, args) in enumerate(calls):
                node, _ = self._node(keys[0], [])
                by_node.setdefault(node.name, (node, []))[1].append(PipelineCommand(
                    position, "EVALSHA", self._sha[name], len(keys), *keys, *args))
            await asyncio.gather(*(node.execute_pipeline(commands)
                                   for node, commands in by_node.values()))
            results: list[Any] = [None] * len(calls)
            for node, commands in by_node.values():
                for command in commands:
                    if isinstance(command.result, NoScriptError):
                        await node.execute_command("SCRIPT", "LOAD", _SCRIPTS[name])
                        raise TryAgainError("script reloaded")
                    if isinstance(command.result, AskError):  # MOVED too
                        await self._refresh_map()
                        raise TryAgainError(f"slot moved: {command.result}")
                    if isinstance(command.result, BaseException):
                        raise command.result
                    results[command.position] = command.result
            return results

        try:
            return list(await self._retrying(attempt))
        except ResponseError as exc:
            raise StoreError(f"bindings index: {exc}") from exc

    async def probe(self, xs: Sequence[str], parties: Sequence[str], now: int
                    ) -> list[tuple[int, list[bool]]]:
        """Per X: (bindings stored, whether each party is actively bound there)."""
        outs = await self._batch("probe", [(self._keys(x)[:2], (now, *parties)) for x in xs])
        return [(int(out[0]), [bool(flag) for flag in out[1:]]) for out in outs]

    async def active(self, xs: Sequence[str], now: int, with_parties: bool = False
                     ) -> list[tuple[int, list[str]]]:
        """Per X: (active bindings, their parties if asked). O(bindings on X): for reports,
        not binds."""
        outs = await self._batch("active", [(self._keys(x)[:1], (now, int(with_parties)))
                                            for x in xs])
        return [(int(out[0]), [str(p) for p in out[1:]]) for out in outs]

    async def load_hint(self, account_id: int, country_code: int, start: int, count: int
                        ) -> list[tuple[str, int]]:
        key = self.pool_key(account_id, country_code)
        rows = await self._retrying(lambda: self._cluster.zrange(
            key, start, start + count - 1, withscores=True))
        return [(str(x), int(score)) for x, score in rows]

    async def set_load(self, account_id: int, country_code: int, loads: dict[str, int],
                       only_new: bool = False) -> None:
        if not loads:
            return
        key = self.pool_key(account_id, country_code)
        await self._retrying(lambda: self._cluster.zadd(key, loads, nx=only_new,
                                                        xx=not only_new))

    async def forget_load(self, account_id: int, country_code: int, xs: Sequence[str]) -> None:
        if xs:
            key = self.pool_key(account_id, country_code)
            await self._retrying(lambda: self._cluster.zrem(key, *xs))

    async def used_memory(self) -> int:
        """Bytes used by every master (``INFO memory``), for sizing."""
        info = await self._cluster.info("memory", target_nodes=RedisCluster.PRIMARIES)
        if isinstance(info, dict) and "used_memory" in info:
            return int(info["used_memory"])
        return sum(int(node_info["used_memory"]) for node_info in info.values())
