"""In-process episode store with an idle TTL and a maximum number of episodes.

All methods run on the event loop without awaiting in between, so each is
atomic with respect to other coroutines; no lock is needed.  States are
handed out and taken in without copying: callers treat them as read-only (the
policy controller works on its own copy), which keeps the step path lean.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from glider.server.policy.state import EpisodeState
from glider.server.store.base import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    EpisodeStore,
    StoreFull,
)


class MemoryEpisodeStore(EpisodeStore):
    def __init__(self, ttl_s: float = 3600.0, max_episodes: int = 10000, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.max_episodes = max_episodes
        self._clock = clock
        # id -> (state, last touched); ordered by last touch so expiry scans stop early
        self._episodes: OrderedDict[str, tuple[EpisodeState, float]] = OrderedDict()
        self._busy: set[str] = set()

    def _touch(self, state: EpisodeState) -> None:
        self._episodes[state.id] = (state, self._clock())
        self._episodes.move_to_end(state.id)

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_s
        while self._episodes:
            eid, (_, touched) = next(iter(self._episodes.items()))
            if touched > deadline:
                break
            if eid in self._busy:  # a running step keeps its episode alive
                self._touch(self._episodes[eid][0])
                continue
            del self._episodes[eid]

    def _lookup(self, episode_id: str) -> EpisodeState:
        self._expire()
        try:
            return self._episodes[episode_id][0]
        except KeyError:
            raise EpisodeNotFound(f"episode {episode_id!r} not found (unknown or expired)") from None

    async def create(self, state: EpisodeState) -> None:
        self._expire()
        if state.id in self._episodes:
            raise EpisodeExists(f"episode {state.id!r} already exists")
        if len(self._episodes) >= self.max_episodes:
            raise StoreFull(f"too many active episodes ({self.max_episodes}); finish or delete some")
        self._touch(state.model_copy(deep=True))

    async def get(self, episode_id: str) -> EpisodeState:
        return self._lookup(episode_id)

    async def acquire(self, episode_id: str) -> EpisodeState:
        state = self._lookup(episode_id)
        if episode_id in self._busy:
            raise EpisodeBusy(f"episode {episode_id!r} has a step in progress")
        self._busy.add(episode_id)
        return state

    async def commit(self, state: EpisodeState, expected_version: int) -> None:
        try:
            current = self._lookup(state.id)
            if current.version != expected_version:
                raise EpisodeBusy(f"episode {state.id!r} changed during the step")
            state.version = expected_version + 1
            self._touch(state)
        finally:
            self._busy.discard(state.id)

    async def release(self, episode_id: str) -> None:
        self._busy.discard(episode_id)

    async def delete(self, episode_id: str) -> None:
        self._lookup(episode_id)
        del self._episodes[episode_id]
        self._busy.discard(episode_id)

    async def count(self) -> int:
        self._expire()
        return len(self._episodes)
