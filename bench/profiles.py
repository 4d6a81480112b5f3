"""Agent profiles: env-steps/s with 32 concurrent episodes spread over 1, 2 and 4 profiles on one engine.

One vLLM server with LoRA slots for every profile (GLIDER_MAX_LORAS); each profile is a planner/executor
pair of its own (fresh adapters, different seeds: the same compute as trained ones).  Episode k plays
profile k mod n.  The levels run in the order 1, 2, 4, 4, 2, 1 on the same warm engine, so drift on a
shared machine falls on both sides; each level's rate is the mean of its two rounds.

    .venv/bin/python bench/profiles.py [--episodes 32] [--steps 6] [--profiles 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time

import httpx
from common import ROOT, ServerProcess, machine, publish_fresh_pair, result, settings

ADMIN = "bench-profiles-token"


def build_registry(home, model, count: int) -> None:
    """The default profile's planner and executor, and ``count - 1`` more profiles' (each its own adapters)."""
    from glider.server.profiles import DEFAULT, ProfileSpec, ProfileStore

    root = home / "adapters"
    shutil.rmtree(root, ignore_errors=True)
    store = ProfileStore(root, ProfileSpec())
    for k in range(count):
        name = DEFAULT if k == 0 else f"p{k}"
        if k:
            store.put(name, ProfileSpec())
        publish_fresh_pair(store.registry(name).root, model, home / "src" / name, seed=10 * k)


async def episode(client, k: int, profile: str | None, steps: int) -> None:
    body = {"task": f"boil water {k}", "observation": f"hallway {k}", **({"profile": profile} if profile else {})}
    r = await client.post("/act", json=body)
    r.raise_for_status()
    eid = r.json()["episode_id"]
    for i in range(steps - 1):
        r = await client.post("/act", json={"episode_id": eid, "observation": f"kitchen {k} {i}"})
        r.raise_for_status()


async def level(url: str, episodes: int, profiles: int, steps: int) -> float:
    names = [None] + [f"p{k}" for k in range(1, profiles)]
    limits = httpx.Limits(max_connections=episodes + 4, max_keepalive_connections=episodes + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(episode(client, k, names[k % profiles], 2) for k in range(min(episodes, 8))))
        t0 = time.perf_counter()
        await asyncio.gather(*(episode(client, k, names[k % profiles], steps) for k in range(episodes)))
        return episodes * steps / (time.perf_counter() - t0)


def main(args) -> None:
    levels = [int(x) for x in args.profiles.split(",")]
    home = ROOT / ".glider" / "bench-profiles"
    s = settings(home=home, model=args.model or ROOT / ".glider" / "backbone")
    model = s.model_dir()
    build_registry(home, model, max(levels))
    slots = 2 * max(levels) + 2  # every profile's pair, and one pair swapping
    server = ServerProcess(s, GLIDER_MODEL=str(model), GLIDER_ADAPTERS=str(home / "adapters"),
                           GLIDER_MAX_LORAS=str(slots), GLIDER_ADMIN_TOKEN=ADMIN, GLIDER_RECORD="false")
    rates: dict[int, list[float]] = {n: [] for n in levels}
    try:
        server.wait_ready()
        served = httpx.get(f"{server.url}/readyz", timeout=30).json()["profiles"]
        assert all(p["state"] == "ready" for p in served.values()), served
        for n in levels + levels[::-1]:
            rates[n].append(asyncio.run(level(server.url, args.episodes, n, args.steps)))
    finally:
        server.close()
    base = statistics.mean(rates[levels[0]])
    print(f"# agent profiles (vLLM, {args.episodes} concurrent episodes x {args.steps} steps, LoRA slots {slots}, "
          f"{machine()})")
    print("| profiles | env-steps/s (rounds) | mean | ÷ one profile |")
    print("|---:|---|---:|---:|")
    for n in levels:
        mean = statistics.mean(rates[n])
        print(f"| {n} | {', '.join(f'{r:.2f}' for r in rates[n])} | {mean:.2f} | {mean / base:.2f} |")
    top = max(levels)
    ratio = statistics.mean(rates[top]) / base
    result(f"env-steps/s, {args.episodes} episodes over {top} profiles ÷ 1 profile", ratio, "≥ 0.85×",
           met=ratio >= 0.85)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--profiles", default="1,2,4")
    p.add_argument("--model", default=None, help="backbone directory (default: the embedded one)")
    main(p.parse_args())
