"""Episode stores: where per-episode state lives between steps (memory now; Redis for replicas)."""

from glider.server.store.base import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    EpisodeStore,
    StoreFull,
)
from glider.server.store.memory import MemoryEpisodeStore

__all__ = [
    "EpisodeBusy",
    "EpisodeExists",
    "EpisodeNotFound",
    "EpisodeStore",
    "MemoryEpisodeStore",
    "StoreFull",
]
