"""Pushed swaps: the trainer's word that it has published, passed to every replica at once.

The registry on the shared volume stays the one source of truth; a notice carries no version, only "look
now". The server that receives one (through the admin API, from the trainer beside it) checks its
``current`` pointers at once, as its watcher would on its next poll, and passes the notice on through a
Redis channel to every replica that shares its episode store; each of them checks too. Swap semantics are
the watcher's: validate, load, switch, retire the old version once its requests finish. A lost notice
(Redis down, a replica reconnecting) costs only time: the poll, which stays on, still finds the move.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishNotice:
    profile: str
    adapters: tuple[str, ...] | None  # None: every adapter of the profile
    origin: str = ""  # the replica that passed it on (which skips its own echo)

    def encode(self) -> str:
        return json.dumps({"profile": self.profile, "adapters": self.adapters, "origin": self.origin})

    @classmethod
    def decode(cls, raw: bytes | str) -> PublishNotice:
        data = json.loads(raw)
        adapters = data.get("adapters") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("profile"), str) or not (
                adapters is None or isinstance(adapters, list) and all(isinstance(a, str) for a in adapters)):
            raise ValueError(f"not a publish notice: {raw!r:.200}")
        return cls(data["profile"], None if adapters is None else tuple(adapters), str(data.get("origin", "")))


def channel_name(prefix: str, db: int) -> str:
    """The deployment's channel. Pub/sub is server-wide in Redis, blind to database numbers, so the name
    carries the database as well as the prefix: deployments that share a Redis by database or by prefix
    (as the episodes do) do not hear each other's notices."""
    return f"{prefix}adapters:published:{db}"


class SwapChannel:
    """One Redis pub/sub channel shared by the replicas of a deployment (``channel_name``)."""

    def __init__(self, url: str, *, prefix: str, timeout_s: float,
                 on_notice: Callable[[PublishNotice], Awaitable[None]]):
        from redis import asyncio as aioredis

        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.channel = channel_name(prefix, int(self._redis.connection_pool.connection_kwargs.get("db") or 0))
        self.origin = uuid.uuid4().hex
        self.on_notice = on_notice
        self.timeout_s = timeout_s
        self._listener: asyncio.Task | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="swap-channel")

    async def publish(self, profile: str, adapters: tuple[str, ...] | None) -> int:
        """Pass a notice to the other replicas; how many received it (0 when Redis cannot be reached:
        they will find the new versions on their next poll)."""
        from redis.exceptions import RedisError

        notice = PublishNotice(profile, adapters, self.origin)
        try:
            receivers = await self._redis.publish(self.channel, notice.encode())
        except RedisError as exc:
            log.warning("could not pass the publish notice on (%s); the other replicas' polls will find it", exc)
            return 0
        return max(0, receivers - (1 if self.subscribed.is_set() else 0))  # not counting this replica

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                backoff = 0.5
                log.info("listening for publish notices on %s", self.channel)
                while True:
                    # a bounded wait, so that a connection that died silently is noticed by the read
                    message = await pubsub.get_message(timeout=self.timeout_s)
                    if message is not None:
                        await self._deliver(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("publish-notice channel lost (%s); reconnecting in %.1f s, polling meanwhile",
                            exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
            finally:
                await pubsub.aclose()

    async def _deliver(self, raw) -> None:
        try:
            notice = PublishNotice.decode(raw)
        except ValueError as exc:
            log.warning("ignored a message on %s: %s", self.channel, exc)
            return
        if notice.origin == self.origin:
            return  # this replica acted on it when it received it
        try:
            await self.on_notice(notice)
        except Exception as exc:  # noqa: BLE001 - one bad notice must not stop the listener
            log.warning("publish notice for profile %s not applied: %s", notice.profile, exc)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            self._listener = None
        await self._redis.aclose()
