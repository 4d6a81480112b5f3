"""/act overhead: latency of POST /act vs calling the backend directly for the same generations.

One process, one engine: the real app runs under uvicorn on loopback; each
/act step's generation specs are recorded, then replayed directly on the
backend (same prompts, greedy, so the same tokens).  Overhead = /act latency
(client-measured, HTTP included) minus the direct latency of that step.

    .venv/bin/python bench/act_overhead.py [--steps 200] [--backend vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from common import InProcessServer, machine, median, pct, settings


async def main(args) -> None:
    s = settings(backend=args.backend)
    async with InProcessServer(s) as srv:
        backend = srv.agent.backend
        recorded: list[list] = []
        original = backend.generate

        async def recording(specs):
            recorded[-1].extend(specs)
            return await original(specs)

        backend.generate = recording
        act_ms, direct_ms = [], []
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            for _ in range(args.warmup):  # warm the engine and the HTTP path
                await client.post("/act", json={"task": "boil water", "observation": "warmup"})
            eid = None
            for i in range(args.steps):
                if i % 20 == 0:  # a fresh episode now and then: planner and executor steps both occur
                    eid = None
                body = {"observation": f"This room is called the kitchen. Step {i}."}
                body.update({"episode_id": eid} if eid else {"task": "boil water"})
                recorded.append([])
                t0 = time.perf_counter()
                r = await client.post("/act", json=body)
                act_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                eid = r.json()["episode_id"]
            backend.generate = original
            for specs in recorded:  # the same generations, straight to the engine
                t0 = time.perf_counter()
                for spec in specs:  # sequential, as the policy issues them
                    await backend.generate([spec])
                direct_ms.append((time.perf_counter() - t0) * 1000)
    overhead = [a - d for a, d in zip(act_ms, direct_ms, strict=True)]
    print(f"# /act overhead ({args.backend}, {args.steps} steps, {machine()})")
    print("| | p50 ms | p95 ms |")
    print("|---|---|---|")
    print(f"| POST /act (HTTP, client-measured) | {median(act_ms):.2f} | {pct(act_ms, 95):.2f} |")
    print(f"| backend.generate, same generations | {median(direct_ms):.2f} | {pct(direct_ms, 95):.2f} |")
    print(f"| added by /act (paired difference) | {median(overhead):.2f} | {pct(overhead, 95):.2f} |")
    print(f"ratio /act / direct (p50): {median(act_ms) / median(direct_ms):.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--backend", default="vllm")
    asyncio.run(main(p.parse_args()))
