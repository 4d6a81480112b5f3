import pytest
from glider.server.policy import EpisodeState
from glider.server.store import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    MemoryEpisodeStore,
    StoreFull,
)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def state(eid="e1"):
    return EpisodeState(id=eid, task="t", mode="separate")


async def test_lease_refuses_a_second_concurrent_step_and_commit_bumps_version():
    store = MemoryEpisodeStore()
    await store.create(state())
    s = await store.acquire("e1")
    with pytest.raises(EpisodeBusy):
        await store.acquire("e1")
    new = s.model_copy(deep=True)
    new.step = 1
    await store.commit(new, s.version)
    got = await store.get("e1")
    assert got.step == 1 and got.version == 1
    s2 = await store.acquire("e1")  # released by the commit
    await store.release("e1")
    assert s2.version == 1


async def test_release_leaves_state_unchanged():
    store = MemoryEpisodeStore()
    await store.create(state())
    await store.acquire("e1")
    await store.release("e1")
    assert (await store.get("e1")).version == 0


async def test_ttl_expires_idle_episodes_but_not_running_ones():
    clock = Clock()
    store = MemoryEpisodeStore(ttl_s=10, clock=clock)
    await store.create(state("idle"))
    await store.create(state("busy"))
    await store.acquire("busy")
    clock.t = 11
    with pytest.raises(EpisodeNotFound):
        await store.get("idle")
    assert (await store.get("busy")).id == "busy"
    assert await store.count() == 1


async def test_max_episodes_and_duplicates():
    store = MemoryEpisodeStore(max_episodes=2)
    await store.create(state("a"))
    with pytest.raises(EpisodeExists):
        await store.create(state("a"))
    await store.create(state("b"))
    with pytest.raises(StoreFull):
        await store.create(state("c"))
    await store.delete("a")
    await store.create(state("c"))
    with pytest.raises(EpisodeNotFound):
        await store.delete("a")
