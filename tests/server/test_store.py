"""The episode store contract, run on every store: in-process memory and a real redis-server.

Redis-only tests below the suite: a restarted replica or a restarted redis-server loses nothing,
steps of one episode from many replicas at once never lose an update, a dead replica's lease
runs out, a step cancelled mid-acquire gives its lease back, and an unreachable Redis is ``StoreUnavailable`` until it returns.
"""

import asyncio

import pytest
from glider.server.policy import EpisodeState
from glider.server.store import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    MemoryEpisodeStore,
    StoreFull,
    StoreUnavailable,
)
from glider.server.store.redis_store import RedisEpisodeStore

from tests.conftest import free_port
from tests.redis_server import RedisServer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Stores:
    """Makes stores of one kind and lets time pass for them (a fake clock, or Redis's own)."""

    def __init__(self, kind: str, redis_url: str | None):
        self.kind, self.redis_url = kind, redis_url
        self.clock = Clock()
        self.made: list = []

    def make(self, ttl_s: float = 3600.0, max_episodes: int = 10000, **kw):
        if self.kind == "memory":
            store = MemoryEpisodeStore(ttl_s=ttl_s, max_episodes=max_episodes, clock=self.clock)
        else:
            store = RedisEpisodeStore(self.redis_url, ttl_s=ttl_s, max_episodes=max_episodes, **kw)
        self.made.append(store)
        return store

    async def advance(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.t += seconds
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis"])
async def stores(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = Stores(request.param, url)
    yield s
    for store in s.made:
        await store.close()


def state(eid="e1"):
    return EpisodeState(id=eid, task="t", mode="separate")


async def step(store, eid: str) -> None:
    """One whole step: take the lease, advance the episode by one, commit."""
    s = await store.acquire(eid)
    new = s.model_copy(deep=True)
    new.step += 1
    await store.commit(new, s.version)


# --- the contract, on every store ------------------------------------------------------------
async def test_lease_refuses_a_second_concurrent_step_and_commit_bumps_version(stores):
    store = stores.make()
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


async def test_release_leaves_state_unchanged(stores):
    store = stores.make()
    await store.create(state())
    await store.acquire("e1")
    await store.release("e1")
    got = await store.get("e1")
    assert got.version == 0 and got.step == 0
    await step(store, "e1")  # and the lease is free again


async def test_commit_on_a_stale_version_is_refused_and_lands_nothing(stores):
    store = stores.make()
    await store.create(state())
    s = await store.acquire("e1")
    stale = s.model_copy(deep=True)
    stale.step = 99
    with pytest.raises(EpisodeBusy):
        await store.commit(stale, s.version + 1)
    got = await store.get("e1")
    assert got.step == 0 and got.version == 0
    await step(store, "e1")


async def test_unknown_and_deleted_episodes_are_not_found(stores):
    store = stores.make()
    for call in (store.get, store.acquire, store.delete):
        with pytest.raises(EpisodeNotFound):
            await call("nope")
    await store.create(state())
    s = await store.acquire("e1")
    await store.delete("e1")  # deleted while a step runs: the step's commit finds nothing
    with pytest.raises(EpisodeNotFound):
        await store.commit(s.model_copy(deep=True), s.version)
    assert await store.count() == 0


async def test_ttl_expires_idle_episodes_but_not_running_ones(stores):
    store = stores.make(ttl_s=0.5)
    await store.create(state("idle"))
    await store.create(state("busy"))
    await store.acquire("busy")
    await stores.advance(0.8)
    with pytest.raises(EpisodeNotFound):
        await store.get("idle")
    assert (await store.get("busy")).id == "busy"
    assert await store.count() == 1


async def test_max_episodes_and_duplicates(stores):
    store = stores.make(max_episodes=2)
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
    assert await store.count() == 2


async def test_state_round_trips_whole(stores):
    from glider.server.policy.state import Segment, Turn

    store = stores.make()
    s = state()
    s.current = Segment(subgoal="find the plant", start_observation="hallway",
                        turns=[Turn(observation="hallway", action="go to garden", done=False)])
    s.adapter_versions = {"planner": "v0003"}
    s.total_reward = 0.25
    await store.create(s)
    got = await store.get("e1")
    assert got.model_dump(exclude={"version"}) == s.model_dump(exclude={"version"})


# --- Redis: replicas, restarts, outages --------------------------------------------------------
async def test_compressing_and_plain_replicas_read_each_others_states(redis_url):
    import redis.asyncio as aioredis

    plain, compressing = RedisEpisodeStore(redis_url, compress=False), RedisEpisodeStore(redis_url)
    raw = aioredis.from_url(redis_url)
    try:
        s = state()
        s.task = "boil water " * 200  # repetitive, as observations are
        await plain.create(s)
        taken = await compressing.acquire("e1")
        assert taken.task == s.task
        await compressing.commit(taken, taken.version)
        stored = await raw.hget("glider:ep:e1", "s")
        assert stored[:1] == b"z" and len(stored) < len(s.model_dump_json()) / 4
        again = await plain.acquire("e1")  # a replica that does not compress reads it too
        assert again.task == s.task and again.version == 1
        await plain.commit(again, again.version)
        assert (await raw.hget("glider:ep:e1", "s"))[:1] == b"{"
    finally:
        for client in (plain, compressing):
            await client.close()
        await raw.aclose()


async def test_an_episode_survives_a_replica_restart_and_a_redis_restart(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    try:
        first = RedisEpisodeStore(server.url)
        await first.create(state())
        await step(first, "e1")
        await first.close()  # the replica that served step 1 is gone

        server.restart()  # and so was Redis, in between

        second = RedisEpisodeStore(server.url)
        got = await second.get("e1")
        assert (got.step, got.version) == (1, 1)
        await step(second, "e1")
        assert (await second.get("e1")).step == 2
        assert await second.count() == 1
        await second.close()
    finally:
        server.stop()


async def test_concurrent_steps_from_many_replicas_lose_no_update(redis_url):
    replicas = [RedisEpisodeStore(redis_url) for _ in range(8)]
    await replicas[0].create(state())
    committed = 0

    async def play(store, n: int) -> None:
        nonlocal committed
        done = 0
        while done < n:
            try:
                await step(store, "e1")
            except EpisodeBusy:
                await asyncio.sleep(0.001)  # another replica holds the step: come back
                continue
            done += 1
            committed += 1

    await asyncio.gather(*(play(r, 10) for r in replicas))
    got = await replicas[0].get("e1")
    assert committed == 80
    assert (got.step, got.version) == (80, 80)  # every commit landed on the one before it
    for r in replicas:
        await r.close()


async def test_exactly_one_of_simultaneous_acquires_wins(redis_url):
    replicas = [RedisEpisodeStore(redis_url) for _ in range(16)]
    await replicas[0].create(state())
    results = await asyncio.gather(*(r.acquire("e1") for r in replicas), return_exceptions=True)
    winners = [r for r in results if isinstance(r, EpisodeState)]
    assert len(winners) == 1
    assert all(isinstance(r, EpisodeBusy) for r in results if not isinstance(r, EpisodeState))
    for r in replicas:
        await r.close()


async def test_a_step_cancelled_while_its_lease_is_taken_leaves_the_episode_free(redis_url):
    """A client's deadline cancels its step just after Redis took the lease, before the reply came
    back: the lease is given back when the reply arrives, not held for ``lease_s`` (120 s here)."""
    store = RedisEpisodeStore(redis_url)
    await store.create(state())
    script, ran, reply_arrives = store._acquire, asyncio.Event(), asyncio.Event()

    async def reply_in_flight(**kw):
        reply = await script(**kw)
        ran.set()
        await reply_arrives.wait()
        return reply

    store._acquire = reply_in_flight
    cancelled = asyncio.create_task(store.acquire("e1"))
    await ran.wait()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    store._acquire = script
    with pytest.raises(EpisodeBusy):  # Redis holds the lease for a step nobody will finish
        await store.acquire("e1")
    reply_arrives.set()
    for _ in range(200):
        try:
            taken = await store.acquire("e1")
            break
        except EpisodeBusy:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("the cancelled step's lease was not given back")
    new = taken.model_copy(deep=True)
    new.step = 1
    await store.commit(new, taken.version)
    assert (await store.get("e1")).step == 1
    await store.close()


async def test_a_replica_shutting_down_mid_acquire_gives_the_lease_back_before_it_closes(redis_url):
    store = RedisEpisodeStore(redis_url)
    await store.create(state())
    script, ran = store._acquire, asyncio.Event()

    async def slow_reply(**kw):
        reply = await script(**kw)
        ran.set()
        await asyncio.sleep(0.3)  # the reply is on its way when the shutdown cancels the step
        return reply

    store._acquire = slow_reply
    cancelled = asyncio.create_task(store.acquire("e1"))
    await ran.wait()
    cancelled.cancel()
    await store.close()  # waits for the acquire's reply and the release it starts
    other = RedisEpisodeStore(redis_url)
    taken = await other.acquire("e1")  # free at once, not after the 120 s lease
    assert taken.id == "e1"
    await other.close()


async def test_a_dead_replicas_lease_runs_out_and_its_late_commit_is_refused(redis_url):
    dead = RedisEpisodeStore(redis_url, lease_s=0.3)
    alive = RedisEpisodeStore(redis_url, lease_s=0.3)
    await dead.create(state())
    stuck = await dead.acquire("e1")  # the replica dies here, mid-step
    with pytest.raises(EpisodeBusy):
        await alive.acquire("e1")
    await asyncio.sleep(0.5)
    taken = await alive.acquire("e1")  # the lease ran out: the episode goes on elsewhere
    late = stuck.model_copy(deep=True)
    late.step = 42
    with pytest.raises(EpisodeBusy):  # the zombie's commit must not overwrite the live step
        await dead.commit(late, stuck.version)
    new = taken.model_copy(deep=True)
    new.step = 1
    await alive.commit(new, taken.version)
    assert (await alive.get("e1")).step == 1
    await dead.close()
    await alive.close()


async def test_unreachable_redis_is_store_unavailable_until_it_returns(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    store = RedisEpisodeStore(server.url, timeout_s=1.0)
    try:
        await store.create(state())
        server.stop()
        for call in (store.check, lambda: store.get("e1"), lambda: store.acquire("e1"), store.count):
            with pytest.raises(StoreUnavailable, match="episode store unavailable"):
                await call()
        server.start()
        await step(store, "e1")
        assert (await store.get("e1")).step == 1
    finally:
        await store.close()
        server.stop()
