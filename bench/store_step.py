"""The episode store's part of a step: acquire (lease + read) and commit (write + release), and where it goes.

A step of ``/act`` takes the episode with one call and gives it back with another (for Redis each is one
Lua script). This measures both calls on the two stores in one run, on a state as large as the policy
keeps (``--segments`` finished segments of ``--turns`` turns, observations of ``--obs-chars``), and
takes the Redis path apart: the JSON both ways, a bare round trip (PING), a script call with no payload,
and the scripts themselves.

    .venv/bin/python bench/store_step.py [--steps 2000] [--segments 8] [--turns 10] [--obs-chars 400]
"""

from __future__ import annotations

import argparse
import time

from act_overhead import start_redis
from common import machine, median, pct, result


def big_state(segments: int, turns: int, obs_chars: int):
    import random

    from glider.server.policy.state import EpisodeState, Segment, Turn

    # as in ScienceWorld: a few rooms whose descriptions come back, each time with other details
    rng = random.Random(0)
    things = ["a counter", "a sink", "a fridge", "a stove", "a lighter", "a thermometer", "a glass cup",
              "a metal pot", "an orange", "a bowl", "a table", "a chair", "a painting", "a cupboard"]
    rooms = ["kitchen", "hallway", "workshop", "greenhouse", "bathroom", "living room"]

    def obs():
        room = rng.choice(rooms)
        seen = ", ".join(rng.sample(things, 6))
        text = (f"This room is called the {room}. In it, you see: the agent, a substance called air, {seen}. "
                f"The temperature reads {rng.uniform(10, 40):.1f} degrees. You also see: a door to the "
                f"{rng.choice(rooms)} (that is {rng.choice(['open', 'closed'])}). ")
        return (text * (1 + obs_chars // len(text)))[:obs_chars]

    def segment(k):
        return Segment(subgoal=f"go to the kitchen and find the thermometer {k}", start_observation=obs(),
                       turns=[Turn(observation=obs(), action=f"open door to {rng.choice(rooms)}")
                              for _ in range(turns)], completed=True, adapter_version="v0007")

    return EpisodeState(id="bench-episode", task="Your task is to boil water. " * 4, mode="separate",
                        current=segment(segments), finished=[segment(k) for k in range(segments)],
                        step=segments * turns, adapter_versions={"planner": "v0007", "executor": "v0003"})


async def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(args) -> None:
    from glider.server.policy.state import EpisodeState
    from glider.server.store import MemoryEpisodeStore
    from glider.server.store.redis_store import RedisEpisodeStore

    state = big_state(args.segments, args.turns, args.obs_chars)
    payload = state.model_dump_json()
    proc, url = start_redis()
    rows: dict[str, list[float]] = {}
    try:
        stores = {"memory": MemoryEpisodeStore(), "redis": RedisEpisodeStore(url, compress=False),
                  "redis, compressed": RedisEpisodeStore(url, prefix="glider-z:")}
        for name, store in stores.items():
            await store.create(state.model_copy(deep=True))

            async def step(store=store):
                s = await store.acquire(state.id)
                await store.commit(s, s.version)

            await timed(step, 50)  # warm: connections, scripts loaded
            rows[f"{name}: acquire + commit"] = await timed(step, args.steps)

        redis_store = stores["redis"]
        client = redis_store._redis
        noop = client.register_script("return 0")
        await timed(lambda: client.ping(), 50)
        await timed(lambda: noop(keys=[], args=[]), 50)
        rows["redis: PING round trip"] = await timed(lambda: client.ping(), args.steps)
        rows["redis: empty script call"] = await timed(lambda: noop(keys=[], args=[]), args.steps)

        async def acquire_only():
            await redis_store.acquire(state.id)
            await redis_store.release(state.id)

        rows["redis: acquire + release (no write)"] = await timed(acquire_only, args.steps)

        async def dump():
            state.model_dump_json()

        async def load():
            EpisodeState.model_validate_json(payload)

        rows["state to JSON"] = await timed(dump, args.steps)
        rows["state from JSON"] = await timed(load, args.steps)
        for store in stores.values():
            await store.close()
    finally:
        proc.terminate()

    import zlib

    print(f"# episode store step ({args.segments} segments x {args.turns} turns, {len(payload):,} bytes of "
          f"state JSON, {len(zlib.compress(payload.encode(), 1)):,} compressed, {args.steps} steps, {machine()})")
    print("| | p50 ms | p95 ms |\n|---|---|---|")
    for label, ms in rows.items():
        print(f"| {label} | {median(ms):.3f} | {pct(ms, 95):.3f} |")
    result("store step p50, ms (memory)", median(rows["memory: acquire + commit"]), "")
    result("store step p50, ms (redis)", median(rows["redis: acquire + commit"]), "")
    result("store step p50, ms (redis, compressed)", median(rows["redis, compressed: acquire + commit"]), "")
    print(f"ratio redis compressed / uncompressed (p50): "
          f"{median(rows['redis, compressed: acquire + commit']) / median(rows['redis: acquire + commit']):.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--obs-chars", type=int, default=400)
    import uvloop  # what `glider serve` runs on

    uvloop.run(main(p.parse_args()))
