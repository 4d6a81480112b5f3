"""The episode store interface.

A step is a lease: ``acquire`` hands out the current state and marks the
episode busy (a second concurrent step gets ``EpisodeBusy``); ``commit``
writes the new state only if the version is the one acquired, and releases;
``release`` gives the lease back without writing (a failed step leaves the
episode exactly as it was).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from glider.server.policy.state import EpisodeState


class EpisodeNotFound(LookupError):
    pass


class EpisodeExists(ValueError):
    pass


class EpisodeBusy(RuntimeError):
    """Another step of this episode is in progress (or the state moved on)."""


class StoreFull(RuntimeError):
    pass


class StoreUnavailable(RuntimeError):
    """The store's backing service (Redis) cannot be reached: the step can be retried."""


class EpisodeStore(ABC):
    @abstractmethod
    async def create(self, state: EpisodeState) -> None: ...

    @abstractmethod
    async def get(self, episode_id: str) -> EpisodeState: ...

    @abstractmethod
    async def acquire(self, episode_id: str) -> EpisodeState: ...

    @abstractmethod
    async def commit(self, state: EpisodeState, expected_version: int) -> None: ...

    @abstractmethod
    async def release(self, episode_id: str) -> None: ...

    @abstractmethod
    async def delete(self, episode_id: str) -> None: ...

    @abstractmethod
    async def count(self) -> int: ...

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raise ``StoreUnavailable`` when the backing service cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
