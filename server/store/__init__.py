"""Episode stores: where per-episode state lives between steps (this process, or Redis for replicas)."""

from __future__ import annotations

from glider.server.store.base import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    EpisodeStore,
    StoreFull,
    StoreUnavailable,
)
from glider.server.store.memory import MemoryEpisodeStore


def create_store(settings) -> EpisodeStore:
    """The store ``settings.store`` names (the Redis client is imported only when used)."""
    from glider.server.settings import StoreKind

    if settings.store is StoreKind.redis:
        from glider.server.store.redis_store import RedisEpisodeStore

        return RedisEpisodeStore(
            settings.redis_url.get_secret_value(), prefix=settings.redis_prefix,
            ttl_s=settings.episode_ttl_s, max_episodes=settings.max_episodes,
            lease_s=settings.step_lease_s, timeout_s=settings.redis_timeout_s, compress=settings.redis_compress)
    return MemoryEpisodeStore(ttl_s=settings.episode_ttl_s, max_episodes=settings.max_episodes)


__all__ = [
    "EpisodeBusy",
    "EpisodeExists",
    "EpisodeNotFound",
    "EpisodeStore",
    "MemoryEpisodeStore",
    "StoreFull",
    "StoreUnavailable",
    "create_store",
]
