"""One trainer per deployment: a leader lock in the Redis the episode store already uses.

Every server replica runs a trainer sidecar, and all of them publish to one registry. Without a
leader, N sidecars would publish N competing adapters and the servers would flip between them.
The sidecar that holds the key ``<prefix>trainer-leader`` trains; the others wait for it.

The key carries an expiry, renewed from a background thread while the leader lives; a leader
that dies or hangs loses the key within ``ttl_s`` and another sidecar takes over. A leader that
fails to renew (Redis unreachable, or the key taken after a long pause) stops before its next
publish: ``check()`` raises ``LeadershipLost``, and the process exits for its container to restart.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

log = logging.getLogger(__name__)

# renew only a key that is still ours (compare-and-expire, atomic on the server)
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeadershipLost(RuntimeError):
    pass


class LeaderLock:
    def __init__(self, url: str, *, prefix: str = "glider:", ttl_s: float = 30.0,
                 identity: str | None = None, timeout_s: float = 5.0):
        self.key = f"{prefix}trainer-leader"
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        # the pod's name (HOSTNAME) says who leads; the pid and a nonce keep two processes apart
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        return bool(self._redis.set(self.key, self.identity, nx=True, px=self.ttl_ms))

    def leader(self) -> str | None:
        value = self._redis.get(self.key)
        return value.decode() if value is not None else None

    def acquire(self, poll_s: float = 5.0, timeout_s: float | None = None) -> None:
        """Block until this process leads (Redis errors are retried: Redis may start after us)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        announced = None
        while True:
            try:
                if self.try_acquire():
                    break
                holder = self.leader()
                if holder != announced:
                    log.info("trainer leader is %s; waiting to take over", holder)
                    announced = holder
            except redis.RedisError as exc:
                log.warning("leader lock: Redis unreachable (%s); retrying", exc)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"did not become the trainer leader within {timeout_s:.0f}s")
            time.sleep(poll_s)
        log.info("this trainer (%s) leads", self.identity)
        self._lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name="leader-lock", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        interval = self.ttl_ms / 3000  # three renewals per TTL: one failed renewal is not fatal
        while not self._stop.wait(interval):
            try:
                if not self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]):
                    log.error("trainer leadership lost: the lock is held by %s", self.leader())
                    self._lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("leader lock renewal failed: %s", exc)

    def check(self) -> None:
        """Raise ``LeadershipLost`` unless this process still holds the lock."""
        if self._lost.is_set():
            raise LeadershipLost(f"{self.identity} no longer leads ({self.key})")
        try:
            holder = self.leader()
        except redis.RedisError as exc:
            raise LeadershipLost(f"cannot confirm leadership: {exc}") from exc
        if holder != self.identity:
            self._lost.set()
            raise LeadershipLost(f"{self.identity} no longer leads: {self.key} is held by {holder}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self._release(keys=[self.key], args=[self.identity])
        except redis.RedisError as exc:  # the key expires by itself
            log.warning("leader lock release failed: %s", exc)

    def close(self) -> None:
        self.release()
        self._redis.close()

    def __enter__(self) -> LeaderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
