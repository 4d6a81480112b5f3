"""Episode store on Redis, so that stateless server replicas share episodes and a restart loses none.

Layout under a key prefix (``glider:`` by default):

* ``ep:{id}``    a hash: ``v`` (the version, the optimistic counter) and ``s`` (the state as JSON,
  zlib-compressed behind a ``z`` byte by default), with an idle TTL that every create, acquire and
  commit renews;
* ``lease:{id}`` the step lease: a random token set with ``NX`` and its own expiry, so a replica
  that dies mid-step blocks its episode for ``lease_s`` at most, never for good;
* ``episodes``   a sorted set of ids scored by their expiry time, which bounds the number of
  live episodes and answers ``count`` without scanning keys.

Every operation that reads and then writes is one Lua script, so it is atomic on the server with
no WATCH round trips, and its clock is Redis's own (``TIME``) so replicas never disagree about
expiry.  A single primary (optionally behind Sentinel) is assumed: the index key is shared by all
episodes, so Redis Cluster is not supported.

Leases are owned: ``acquire`` remembers its token in this process, ``commit`` and ``release``
only touch a lease that carries it.  A step that outlives its lease and finds another step's
lease fails with ``EpisodeBusy`` instead of overwriting that step's state.

A step is cancelled when its client goes away (a gRPC deadline, a closed connection), and the
cancellation may land while a script's reply is still on its way: the lease is then taken or held
with nobody left to give it back, and the episode would stay busy for ``lease_s``.  So the scripts
that take or give back a lease run to the end whatever happens to the step, and a lease taken for a
step that was cancelled meanwhile is released as soon as its reply arrives.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import zlib
from contextlib import contextmanager

import redis.asyncio as aioredis
from glider.server.policy.state import EpisodeState
from glider.server.store.base import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    EpisodeStore,
    StoreFull,
    StoreUnavailable,
)
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# A state holds up to plan_window segments of c_max turns, whose observations repeat the same rooms:
# ~50 KB of JSON that zlib's fastest level shrinks 10-25x in ~0.07 ms, less than the loopback write of
# the raw bytes costs, and Redis then holds a tenth of the memory per episode. JSON starts with "{", so
# both forms read back (a store written by an uncompressing replica stays readable).
_COMPRESSED = b"z"


def _encode(state: EpisodeState, compress: bool) -> bytes:
    raw = state.model_dump_json().encode()
    return _COMPRESSED + zlib.compress(raw, 1) if compress else raw


def _decode(raw: bytes) -> EpisodeState:
    if raw[:1] == _COMPRESSED:
        raw = zlib.decompress(memoryview(raw)[1:])
    return EpisodeState.model_validate_json(raw)

# Each script starts from Redis's clock; "touch" renews the idle TTL of the hash and its index entry.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_TOUCH = """
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[3], now + ttl, id)
"""

# KEYS: ep, lease (unused), index   ARGV: id, state json, version, ttl ms, max episodes
_CREATE = _NOW + """
local id, ttl = ARGV[1], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 's', ARGV[2])
""" + _TOUCH + "return 0"

# KEYS: ep, lease, index   ARGV: id, token, ttl ms, lease ms   ->  {0, state} | {-1} | {-2}
# A running step keeps its episode alive: the idle TTL starts again when its lease ends.
_ACQUIRE = _NOW + """
local id, ttl = ARGV[1], tonumber(ARGV[3]) + tonumber(ARGV[4])
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {-1} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[4]) then return {-2} end
""" + _TOUCH + "return {0, s}"

# KEYS: ep, lease, index   ARGV: id, token, expected version, new state json, ttl ms
_COMMIT = _NOW + """
local id, ttl = ARGV[1], tonumber(ARGV[5])
local holder = redis.call('GET', KEYS[2])
local ours = holder == ARGV[2]
if ours then redis.call('DEL', KEYS[2]) end
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if holder and not ours then return -2 end
if tonumber(v) ~= tonumber(ARGV[3]) then return -3 end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[3]) + 1, 's', ARGV[4])
""" + _TOUCH + "return 0"

# KEYS: lease   ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: ep, lease, index   ARGV: id
_DELETE = """
local gone = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if gone == 0 then return -1 end
return 0
"""

# KEYS: index
_COUNT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


def _not_found(episode_id: str) -> EpisodeNotFound:
    return EpisodeNotFound(f"episode {episode_id!r} not found (unknown or expired)")


@contextmanager
def _reachable():
    """Any Redis failure is the store being unavailable (503), never an internal error."""
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"episode store unavailable: {exc}") from exc


class RedisEpisodeStore(EpisodeStore):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "glider:",
                 ttl_s: float = 3600.0, max_episodes: int = 10000, lease_s: float = 120.0,
                 timeout_s: float = 5.0, compress: bool = True, client: aioredis.Redis | None = None):
        self.prefix = prefix
        self.compress = compress
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.lease_ms = max(1, int(lease_s * 1000))
        self.max_episodes = max_episodes
        self._redis = client or aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            health_check_interval=30)
        self._index = f"{prefix}episodes"
        self._create = self._redis.register_script(_CREATE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._delete = self._redis.register_script(_DELETE)
        self._count = self._redis.register_script(_COUNT)
        self._leases: dict[str, str] = {}  # episode id -> token of the lease this process holds
        self._scripts: set[asyncio.Future] = set()  # lease scripts still running (close waits for them)

    def _keys(self, episode_id: str) -> list[str]:
        return [f"{self.prefix}ep:{episode_id}", f"{self.prefix}lease:{episode_id}", self._index]

    async def check(self) -> None:
        with _reachable():
            await self._redis.ping()

    async def create(self, state: EpisodeState) -> None:
        with _reachable():
            code = await self._create(keys=self._keys(state.id), args=[
                state.id, _encode(state, self.compress), state.version, self.ttl_ms, self.max_episodes])
        if code == -1:
            raise EpisodeExists(f"episode {state.id!r} already exists")
        if code == -2:
            raise StoreFull(f"too many active episodes ({self.max_episodes}); finish or delete some")

    async def get(self, episode_id: str) -> EpisodeState:
        with _reachable():
            raw = await self._redis.hget(self._keys(episode_id)[0], "s")
        if raw is None:
            raise _not_found(episode_id)
        return _decode(raw)

    async def acquire(self, episode_id: str) -> EpisodeState:
        token = secrets.token_hex(16)
        call = self._run_to_end(self._acquire(keys=self._keys(episode_id),
                                              args=[episode_id, token, self.ttl_ms, self.lease_ms]))
        try:
            with _reachable():
                reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._give_back(done, episode_id, token))
            raise
        if reply[0] == -1:
            raise _not_found(episode_id)
        if reply[0] == -2:
            raise EpisodeBusy(f"episode {episode_id!r} has a step in progress")
        self._leases[episode_id] = token
        return _decode(reply[1])

    async def commit(self, state: EpisodeState, expected_version: int) -> None:
        token = self._leases.pop(state.id, "")
        new = state.model_copy(update={"version": expected_version + 1})
        with _reachable():
            code = await asyncio.shield(self._run_to_end(self._commit(keys=self._keys(state.id), args=[
                state.id, token, expected_version, _encode(new, self.compress), self.ttl_ms])))
        if code == -1:
            raise _not_found(state.id)
        if code == -2:
            raise EpisodeBusy(f"episode {state.id!r}: the step outlived its lease and another "
                              "step holds the episode")
        if code == -3:
            raise EpisodeBusy(f"episode {state.id!r} changed during the step")
        state.version = expected_version + 1

    async def release(self, episode_id: str) -> None:
        token = self._leases.pop(episode_id, None)
        if token is None:
            return
        with _reachable():
            await asyncio.shield(self._run_to_end(self._release(keys=self._keys(episode_id)[1:2], args=[token])))

    def _run_to_end(self, script) -> asyncio.Future:
        """A lease script as a task of its own: a cancelled step does not cut it off, ``close`` waits for it."""
        task = asyncio.ensure_future(script)
        self._scripts.add(task)
        task.add_done_callback(self._scripts.discard)
        return task

    def _give_back(self, call: asyncio.Future, episode_id: str, token: str) -> None:
        """Release the lease an acquire took for a step that was cancelled before it learnt so."""
        if call.cancelled() or call.exception() is not None or call.result()[0] != 0:
            return
        task = self._run_to_end(self._release(keys=self._keys(episode_id)[1:2], args=[token]))
        task.add_done_callback(lambda done: done.cancelled() or done.exception() is None or log.warning(
            "episode %s: the lease of a cancelled step could not be given back (%s); it expires in %.0f s",
            episode_id, done.exception(), self.lease_ms / 1000))

    async def delete(self, episode_id: str) -> None:
        self._leases.pop(episode_id, None)
        with _reachable():
            code = await self._delete(keys=self._keys(episode_id), args=[episode_id])
        if code == -1:
            raise _not_found(episode_id)

    async def count(self) -> int:
        with _reachable():
            return int(await self._count(keys=[self._index]))

    async def close(self) -> None:
        # a shutdown cancels the running steps: let their lease scripts (and the give-backs those
        # start when they finish) end first, or the leases outlive the replica by lease_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while self._scripts and loop.time() < deadline:
            await asyncio.wait(set(self._scripts), timeout=deadline - loop.time())
        await self._redis.aclose()
