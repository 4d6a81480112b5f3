"""Pushed vs polled swaps: publish → the new version served, on two replicas of one Redis.

Two ``glider serve`` processes (as deployed: one registry, one Redis, the watcher polling every
``GLIDER_ADAPTER_POLL_S``) and a publisher. Swaps alternate between the two ways a trainer can let the
servers know: *polled* (it only publishes; each replica's watcher finds the new version) and *pushed* (it
then sends ``POST /admin/adapters/published`` to replica A, which swaps and passes the notice to B through
Redis). After each publish each replica's ``/readyz`` is read every 5 ms until it names the new version
(the moment a new request gets it), then one step confirms it serves it. The time to the first *answer* on
the new version adds a step's own latency (0.3-0.6 s with two engines on 2 cores), whatever the trigger.

    .venv/bin/python bench/pushed_swaps.py [--swaps 20] [--backend vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time

import httpx
from act_overhead import start_redis
from common import ServerProcess, machine, median, pct, result, settings
from hotswap import first_served, swap_registry

TOKEN = "bench-admin-token"


async def serving_since(client, name: str, version: str, timeout: float = 30.0) -> float:
    """When the replica's /readyz first names ``version`` of ``name`` (a new request then gets it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).json()["adapters"].get(name) == version:
            return time.monotonic()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{name}@{version} never served")


async def main(args) -> None:
    s = settings()
    work, registry, publish = swap_registry(s)

    redis_proc, url = start_redis()
    env = {"GLIDER_ADAPTERS": str(registry), "GLIDER_BACKEND": args.backend, "GLIDER_STORE": "redis",
           "GLIDER_REDIS_URL": url, "GLIDER_ADMIN_TOKEN": TOKEN, "GLIDER_ADAPTER_POLL_S": str(args.poll_s),
           "GLIDER_GRPC_ENABLED": "false"}
    replicas = [ServerProcess(s, **env) for _ in range(2)]  # noqa: ASYNC220 - once, before measuring
    latency: dict[str, dict[str, list[float]]] = {m: {"A": [], "B": []} for m in ("polled", "pushed")}
    first_answer: dict[str, list[float]] = {"polled": [], "pushed": []}  # publish → a step answered on it
    publish_s: list[float] = []  # the trainer's publish call (copy, fsync, rename)
    notice_s: list[float] = []  # POST /admin/adapters/published: A validates, loads and switches before it answers
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.wait_ready)
        clients = [httpx.AsyncClient(base_url=r.url, timeout=60) for r in replicas]
        try:
            episodes = []
            for client in clients:
                r = await client.post("/act", json={"task": "boil water", "observation": "hallway"})
                episodes.append([r.json()["episode_id"]])
            await asyncio.sleep(2.0)  # both replicas subscribed to the channel
            for i in range(2 * args.swaps):
                mode = ("polled", "pushed")[i % 2]
                await asyncio.sleep(args.gap_s)  # off the poll's phase, as a real publish is
                t0 = time.monotonic()
                version = await asyncio.to_thread(publish)
                publish_s.append(time.monotonic() - t0)
                if mode == "pushed":
                    t1 = time.monotonic()
                    r = await clients[0].post("/admin/adapters/published", json={"adapters": ["executor"]},
                                              headers={"Authorization": f"Bearer {TOKEN}"})
                    r.raise_for_status()
                    notice_s.append(time.monotonic() - t1)
                switched = await asyncio.gather(*(serving_since(c, "executor", version) for c in clients))
                for name, t in zip("AB", switched, strict=True):
                    latency[mode][name].append(t - t0)
                answered = await asyncio.gather(*(first_served(c, e, "executor", version)
                                                  for c, e in zip(clients, episodes, strict=True)))
                for t in answered:
                    first_answer[mode].append(t - t0)
        finally:
            for client in clients:
                await client.aclose()
    finally:
        for replica in replicas:
            replica.close()
        redis_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)

    print(f"# pushed vs polled swaps ({args.backend}, 2 replicas on one Redis, watcher poll {args.poll_s:g} s, "
          f"{args.swaps} swaps each, alternating; {machine()})")
    print("| publish → the replica serves the new version | p50 s | p95 s | max s |\n|---|---|---|---|")
    for mode in ("polled", "pushed"):
        for name, role in (("A", "the replica told"), ("B", "the other replica")):
            xs = latency[mode][name]
            print(f"| {mode}, {role} | {median(xs):.3f} | {pct(xs, 95):.3f} | {max(xs):.3f} |")
    print(f"of which: the publish call p50 {median(publish_s):.3f} s (p95 {pct(publish_s, 95):.3f}); the notice, "
          f"answered once A has validated, loaded and switched, p50 {median(notice_s):.3f} s "
          f"(p95 {pct(notice_s, 95):.3f})")
    for mode in ("polled", "pushed"):
        xs = first_answer[mode]
        print(f"publish → first step answered on it, {mode}, both replicas: p50 {median(xs):.3f} s, "
              f"p95 {pct(xs, 95):.3f} s")
    both = {m: [max(a, b) for a, b in zip(latency[m]["A"], latency[m]["B"], strict=True)] for m in latency}
    print(f"ratio pushed / polled, p95 until both replicas serve it: {pct(both['pushed'], 95) / pct(both['polled'], 95):.3f}")
    result("pushed swap: publish → both replicas serve the new version, p95 s", pct(both["pushed"], 95),
           "≤ 0.2 s", met=pct(both["pushed"], 95) <= 0.2)
    result("polled swap: publish → both replicas serve the new version, p95 s", pct(both["polled"], 95), "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=20, help="swaps per mode")
    p.add_argument("--backend", default="vllm")
    p.add_argument("--poll-s", type=float, default=0.5, help="the watcher's poll, the fallback in both modes")
    p.add_argument("--gap-s", type=float, default=0.37, help="pause before each publish")
    asyncio.run(main(p.parse_args()))
