"""Concurrency: env-steps/s with 1, 8, 32, 64 concurrent episodes on one server, side by side.

Each episode is a client coroutine doing /act steps back to back over HTTP;
the server runs in a separate process (as deployed), on the chosen backend.

    .venv/bin/python bench/concurrency.py [--levels 1,8,32,64] [--steps 10] [--backend vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from common import ServerProcess, machine, result, settings


async def episode(client, k, steps, latencies):
    r = await client.post("/act", json={"task": f"boil water {k}", "observation": f"hallway {k}"})
    r.raise_for_status()
    eid = r.json()["episode_id"]
    for i in range(steps - 1):
        t0 = time.perf_counter()
        r = await client.post("/act", json={"episode_id": eid, "observation": f"kitchen {k} {i}"})
        latencies.append(time.perf_counter() - t0)
        r.raise_for_status()


async def level(url, n, steps):
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(episode(client, k, 2, []) for k in range(min(n, 8))))  # warm up
        latencies: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(episode(client, k, steps, latencies) for k in range(n)))
        elapsed = time.perf_counter() - t0
    return n * steps / elapsed, sorted(latencies)[len(latencies) // 2] * 1000


def main(args) -> None:
    server = ServerProcess(settings(), GLIDER_BACKEND=args.backend)
    try:
        server.wait_ready()
        rows = []
        for n in [int(x) for x in args.levels.split(",")]:
            rate, p50 = asyncio.run(level(server.url, n, args.steps))
            rows.append((n, rate, p50))
    finally:
        server.close()
    base = rows[0][1]
    print(f"# concurrency ({args.backend}, {args.steps} steps per episode, {machine()})")
    print("| concurrent episodes | env-steps/s | × single | p50 step ms |")
    print("|---|---|---|---|")
    for n, rate, p50 in rows:
        print(f"| {n} | {rate:.1f} | {rate / base:.2f} | {p50:.1f} |")
    n, rate, _ = rows[-1]
    result(f"env-steps/s at {n} concurrent episodes ÷ 1 episode", rate / base, "≥ 3×", met=rate / base >= 3)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--levels", default="1,8,32,64")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--backend", default="vllm")
    main(p.parse_args())
