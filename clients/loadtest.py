"""Load and soak: many concurrent episodes through a running server, over REST and gRPC at once,
checking every reply as it goes.

Each episode sends observations that name it (``ep<k>-s<i>``). An episode is lost-free when it
got one answer per step, each for its own id and the expected step index, and the server's view
of it at the end is at that step with only its own observations in it; anything else is counted
as a lost step or a cross-episode error. Finished episodes are closed (``done``) and deleted, so
the number of open episodes on the server should stay near the concurrency for the whole run.

    glider loadtest --server http://127.0.0.1:8000 --grpc 127.0.0.1:50051 --episodes 200 --steps 50
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from glider.clients.sdk import AsyncGliderClient, AsyncGliderGrpcClient, GliderAPIError


@dataclass
class LoadReport:
    episodes: int = 0
    steps: int = 0
    lost_steps: int = 0
    cross_episode_errors: int = 0
    errors: Counter = field(default_factory=Counter)  # error code -> count
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"rest": [], "grpc": []})
    samples: list[dict] = field(default_factory=list)  # {"t": s, "active": n, ...sampler's fields}
    wall_s: float = 0.0

    def check(self, transport: str, t0: float, reply, episode_id: str | None, index: int, steps: int) -> str:
        """Count one reply (its latency since ``t0``): it must be for this episode, at this step.
        Returns the episode's id (the first reply names it)."""
        self.latency_ms[transport].append((time.perf_counter() - t0) * 1000)
        episode_id = episode_id or reply.episode_id
        if reply.episode_id != episode_id or reply.step != index:
            self.cross_episode_errors += 1
        if index < steps:  # the closing `done` event is not an env step
            self.steps += 1
        return episode_id

    def percentile(self, transport: str, q: float) -> float:
        values = sorted(self.latency_ms[transport])
        if not values:
            return float("nan")
        return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]

    def markdown(self) -> str:
        lines = [
            f"episodes {self.episodes}, env steps {self.steps} in {self.wall_s:.0f} s "
            f"({self.steps / max(self.wall_s, 1e-9):.1f} steps/s); lost steps {self.lost_steps}, "
            f"cross-episode errors {self.cross_episode_errors}, errors {dict(self.errors) or 'none'}",
            "",
            "| transport | steps | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|",
        ]
        for t, values in self.latency_ms.items():
            lines.append(f"| {t} | {len(values)} | {self.percentile(t, 50):.1f} | {self.percentile(t, 95):.1f} | "
                         f"{self.percentile(t, 99):.1f} |")
        if self.samples:
            keys = list(self.samples[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(f"{s[k]:.1f}" if isinstance(s[k], float) else str(s[k]) for k in keys)
                      + " |" for s in self.samples]
        return "\n".join(lines)


def _observations(k: int, steps: int) -> list[str]:
    return [f"ep{k}-s{i}: you are in room {i % 7}." for i in range(steps)]


async def _rest_episode(client: AsyncGliderClient, k: int, steps: int, report: LoadReport) -> str:
    observations = _observations(k, steps)
    eid = None
    for i, obs in enumerate(observations + ["the end"]):
        t0 = time.perf_counter()
        reply = await client.act(obs, episode_id=eid, task=None if eid else f"task {k}",
                                 step=None if eid is None else i, done=i == steps)
        eid = report.check("rest", t0, reply, eid, i, steps)
    return eid


async def _grpc_episode(client: AsyncGliderGrpcClient, k: int, steps: int, report: LoadReport) -> str:
    observations = _observations(k, steps)
    async with client.episode(f"task {k}") as episode:
        t0 = time.perf_counter()  # one event, one reply: a step's latency is the round trip
        eid = report.check("grpc", t0, await episode.start(observations[0]), None, 0, steps)
        for i, obs in enumerate(observations[1:] + ["the end"], start=1):
            t0 = time.perf_counter()
            eid = report.check("grpc", t0, await episode.step(obs, done=i == steps), eid, i, steps)
    return eid


async def _verify_and_close(client: AsyncGliderClient, eid: str, k: int, steps: int, report: LoadReport) -> None:
    view = await client.get_episode(eid)
    seen = [t.observation for seg in view.finished for t in seg.turns]
    seen += [t.observation for t in view.current.turns] if view.current else []
    seen += [t.observation for t in view.history]
    mine = set(_observations(k, steps))
    if view.task != f"task {k}" or any(o not in mine for o in seen):
        report.cross_episode_errors += 1
    # the episode's counter says how many of its steps the server committed
    report.lost_steps += max(0, steps - min(view.step, steps))
    await client.delete_episode(eid)


async def run_load(url: str, grpc_target: str | None, *, episodes: int | None = 200, steps: int = 50,
                   concurrency: int = 200, grpc_share: float = 0.5, duration_s: float | None = None,
                   sample: Callable[[], dict] | None = None, sample_every_s: float = 10.0,
                   timeout_s: float = 600.0) -> LoadReport:
    """Play ``episodes`` (or, with ``duration_s``, as many as fit in it) at ``concurrency`` at once."""
    report = LoadReport()
    start = time.monotonic()
    deadline = start + duration_s if duration_s else None
    async with AsyncGliderClient(url, timeout=timeout_s, max_connections=concurrency) as client:
        streams = AsyncGliderGrpcClient(grpc_target) if grpc_target else None
        counter = iter(range(10**9))

        async def one(k: int) -> None:
            # spread evenly: of every n episodes, round(n * grpc_share) stream over gRPC
            use_grpc = streams is not None and int((k + 1) * grpc_share) > int(k * grpc_share)
            try:
                eid = await (_grpc_episode(streams, k, steps, report) if use_grpc
                             else _rest_episode(client, k, steps, report))
                await _verify_and_close(client, eid, k, steps, report)
            except GliderAPIError as exc:  # gRPC errors too: their code is the status name
                report.errors[exc.code] += 1
                report.lost_steps += 1
            report.episodes += 1

        async def worker() -> None:
            while True:
                k = next(counter)
                if (episodes is not None and k >= episodes) or (deadline and time.monotonic() > deadline):
                    return
                await one(k)

        async def sampler() -> None:
            while True:
                await _sample(url, report, start, sample)
                await asyncio.sleep(sample_every_s)

        sampling = asyncio.create_task(sampler())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            sampling.cancel()
            if streams is not None:
                await streams.close()
        await _sample(url, report, start, sample)
    report.wall_s = time.monotonic() - start
    return report


async def _sample(url: str, report: LoadReport, start: float, sample) -> None:
    """One row of the time series: the server's open episodes (its /metrics) and the sampler's own."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        text = (await http.get("/metrics")).text
    active = next((float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("glider_active_episodes ")), float("nan"))
    report.samples.append({"t": round(time.monotonic() - start, 1), "active episodes": active,
                           **(sample() if sample else {})})
