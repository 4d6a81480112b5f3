"""/act overhead: latency of POST /act vs calling the backend directly for the same generations.

One process, one engine: the real app runs under uvicorn on loopback; each
/act step's generation specs are recorded, then replayed directly on the
backend (same prompts, greedy, so the same tokens).  Overhead = /act latency
(client-measured, HTTP included) minus the direct latency of that step.

    .venv/bin/python bench/act_overhead.py [--steps 200] [--backend vllm]
"""

from __future__ import annotations

import argparse
import time

import httpx
from common import InProcessServer, machine, median, pct, settings


async def main(args) -> None:
    # no prefix cache: the direct replay would otherwise find every prompt already computed
    s = settings(backend=args.backend, enable_prefix_caching=False,
                 planner_max_tokens=args.max_tokens, executor_max_tokens=args.max_tokens)
    async with InProcessServer(s) as srv:
        backend = srv.agent.backend
        recorded: list[list] = []
        original = backend.generate

        gen_s: list[float] = []  # engine time inside each /act
        agent_s: list[float] = []  # Agent.act time inside each /act

        async def recording(specs):
            recorded[-1].extend(specs)
            t = time.perf_counter()
            try:
                return await original(specs)
            finally:
                gen_s[-1] += time.perf_counter() - t

        agent_act = srv.agent.act

        async def timed_act(**kw):
            t = time.perf_counter()
            try:
                return await agent_act(**kw)
            finally:
                agent_s.append(time.perf_counter() - t)

        act_ms, direct_ms, server_ms = [], [], []
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            for _ in range(args.warmup):  # warm the engine and the HTTP path
                r = await client.post("/act", json={"task": "boil water", "observation": "warmup"})
                r.raise_for_status()
            eid = None
            for i in range(args.steps):
                if i % 20 == 0:  # a fresh episode now and then: planner and executor steps both occur
                    eid = None
                body = {"observation": f"This room is called the kitchen. Step {i}."}
                body.update({"episode_id": eid} if eid else {"task": "boil water"})
                recorded.append([])
                gen_s.append(0.0)
                backend.generate = recording
                srv.agent.act = timed_act
                t0 = time.perf_counter()
                r = await client.post("/act", json=body)
                act_ms.append((time.perf_counter() - t0) * 1000)
                server_ms.append(srv.server_s[-1] * 1000)
                r.raise_for_status()
                eid = r.json()["episode_id"]
                backend.generate = original
                srv.agent.act = agent_act
                # right away, the same generations straight to the engine, sequential as the
                # policy issues them: paired with the /act call under the same machine load
                t0 = time.perf_counter()
                for spec in recorded[-1]:
                    await backend.generate([spec])
                direct_ms.append((time.perf_counter() - t0) * 1000)
    overhead = [a - d for a, d in zip(act_ms, direct_ms, strict=True)]
    print(f"# /act overhead ({args.backend}, {args.steps} steps, {args.max_tokens} tokens per generation, "
          f"{machine()})")
    print("| | p50 ms | p95 ms |")
    print("|---|---|---|")
    print(f"| POST /act (HTTP, client-measured) | {median(act_ms):.2f} | {pct(act_ms, 95):.2f} |")
    print(f"| backend.generate, same generations | {median(direct_ms):.2f} | {pct(direct_ms, 95):.2f} |")
    print(f"| added by /act (paired difference) | {median(overhead):.2f} | {pct(overhead, 95):.2f} |")
    client = [a - s for a, s in zip(act_ms, server_ms, strict=True)]
    stack = [s - g * 1000 for s, g in zip(server_ms, agent_s, strict=True)]
    agent = [(a - g) * 1000 for a, g in zip(agent_s, gen_s, strict=True)]
    server = [s - g * 1000 for s, g in zip(server_ms, gen_s, strict=True)]
    print(f"| server-side overhead (in the app, minus engine time) | {median(server):.2f} | {pct(server, 95):.2f} |")
    print(f"| - of which FastAPI/ASGI stack | {median(stack):.2f} | {pct(stack, 95):.2f} |")
    print(f"| - of which Agent (store, policy, prompts) | {median(agent):.2f} | {pct(agent, 95):.2f} |")
    print(f"| client + loopback (httpx, in this process) | {median(client):.2f} | {pct(client, 95):.2f} |")
    print(f"ratio /act / direct (p50): {median(act_ms) / median(direct_ms):.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--backend", default="vllm")
    p.add_argument("--max-tokens", type=int, default=4,
                   help="tokens per generation: short keeps engine noise below the overhead measured")
    import uvloop  # what `glider serve` runs on (uvicorn's loop="auto")

    uvloop.run(main(p.parse_args()))
