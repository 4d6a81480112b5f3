"""Concurrency: served env-steps/s at 1, 8, 32, 64 concurrent episodes, against the engine's own ceiling.

**Served.** Each episode is a client coroutine doing /act steps back to back over HTTP, on a replay
environment: a recorded ScienceWorld gold episode's task and observations, played back whatever the
agent answers, so no JVM competes for the cores while it is measured.  The server runs in its own
process (as deployed) and traces every engine request (``GLIDER_TRACE_REQUESTS``).

**Ceiling.** The same requests (each level's prompts, adapters and completion token counts) go straight
to vLLM's ``AsyncLLM``, built with the server's own engine arguments: N episodes at a time, each
episode's requests in the order it issued them (the trace names each request's episode), so the engine
sees the same dependencies, without our stack between them.  served ÷ ceiling is the share of the engine's throughput
the service delivers at N episodes.  CPU seconds per env step, per process (engine core, server, load
generator; engine core and driver for the ceiling), say where the rest goes.

    .venv/bin/python bench/concurrency.py [--levels 1,8,32,64] [--steps 10] [--model DIR] [--adapters DIR]
    .venv/bin/python bench/concurrency.py --model .glider/backbones/SmolLM2-135M-Instruct.Q4_1 --levels 1,8,32

Without ``--adapters`` an untrained planner/executor pair is published for the model (the same LoRA
compute as trained ones; their completions run longer).  The replayed episodes come from ``--data``
(the expert cache); where it is empty, one gold episode per family is collected first (JVM, before
any measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from common import ROOT, ServerProcess, machine, median, publish_fresh_pair, result, settings

EMBEDDED = ROOT / ".glider" / "backbone"


# -- the replay environment ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Replay:
    """One recorded episode: its task and the observations the environment gave, in order."""

    task: str
    observations: tuple[str, ...]

    def observation(self, i: int) -> str:
        return self.observations[i % len(self.observations)]


def replays(data: Path) -> list[Replay]:
    """Recorded gold episodes, one family after another (round-robin), so N episodes span the families."""
    from glider.trainer.data.collect import collect, load_collected

    trajs = load_collected(data, "scienceworld", "train")
    if not trajs:
        collect(data, per_task=1, workers=2, max_steps=60)
        trajs = load_collected(data, "scienceworld", "train")
    if not trajs:
        raise SystemExit(f"no recorded episodes under {data}")
    by_family: dict[str, list] = {}
    for t in trajs:
        by_family.setdefault(t.task_name, []).append(t)
    ordered = [fam[k] for k in range(max(map(len, by_family.values()))) for fam in by_family.values() if k < len(fam)]
    return [Replay(t.task, tuple(s.observation for s in t.steps) + (t.final_observation,))
            for t in ordered if t.steps]


async def episode(client, replay: Replay | None, k: int, steps: int, latencies: list[float]) -> None:
    def obs(i):  # the replayed observation, or a synthetic one naming the episode
        return replay.observation(i) if replay else f"kitchen {k} {i}"

    r = await client.post("/act", json={"task": replay.task if replay else f"boil water {k}",
                                        "observation": replay.observation(0) if replay else f"hallway {k}"})
    r.raise_for_status()
    eid = r.json()["episode_id"]
    for i in range(1, steps):
        t0 = time.perf_counter()
        r = await client.post("/act", json={"episode_id": eid, "observation": obs(i)})
        latencies.append(time.perf_counter() - t0)
        r.raise_for_status()


async def level(url, n, steps, episodes: list[Replay] | None = None, on_start=None):
    """``n`` episodes of ``steps`` steps at once (after a warm-up); env-steps/s and p50 step ms.
    ``on_start`` is called once the warm-up is over, just before the timed episodes start."""
    def replay(k):
        return episodes[k % len(episodes)] if episodes else None

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(episode(client, replay(k), k, 2, []) for k in range(min(n, 8))))
        if on_start is not None:
            on_start()
        latencies: list[float] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(episode(client, replay(k), k, steps, latencies) for k in range(n)))
        elapsed = time.perf_counter() - t0
    return n * steps / elapsed, median(latencies) * 1000


# -- CPU time per process -----------------------------------------------------------------------------

def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.NoSuchProcess:
        return 0.0


def cpu_by_role(root: psutil.Process, root_role: str) -> dict[str, float]:
    """CPU seconds so far of ``root`` (as ``root_role``) and its descendants: vLLM's engine processes (the
    engine core and its model worker, titled ``VLLM::EngineCore`` / ``VLLM::Worker…``), the rest."""
    def is_engine(p: psutil.Process) -> bool:
        return "VLLM::" in " ".join(p.cmdline()) or p.name().startswith("VLLM")

    out = {root_role: _cpu(root), "engine": 0.0}
    engines: set[int] = set()
    for child in root.children(recursive=True):  # parents come before their children
        try:
            engine = child.ppid() in engines or is_engine(child)  # an engine process's helpers count as engine
        except psutil.NoSuchProcess:
            continue
        if engine:
            engines.add(child.pid)
        role = "engine" if engine else root_role
        out[role] = out.get(role, 0.0) + _cpu(child)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


# -- the two runs -------------------------------------------------------------------------------------

@dataclass
class Measured:
    rate: float  # env-steps/s
    p50_ms: float
    cpu: dict[str, float]  # role -> CPU seconds during the timed part
    requests: list[dict]  # the engine requests of the timed part (served: its trace; ceiling: as replayed)
    warmup: list[dict] = dataclasses.field(default_factory=list)  # served: the warm-up's traced requests


def served(model: Path, adapters: Path, home: Path, levels: list[int], steps: int,
           episodes: list[Replay]) -> dict[int, Measured]:
    trace = home / "trace.jsonl"
    trace.unlink(missing_ok=True)
    server = ServerProcess(settings(home=home, model=model), GLIDER_MODEL=str(model), GLIDER_ADAPTERS=str(adapters),
                           GLIDER_BACKEND="vllm", GLIDER_TRACE_REQUESTS=str(trace))
    out = {}
    try:
        server.wait_ready()
        proc, me = psutil.Process(server.proc.pid), psutil.Process()
        def size() -> int:
            return trace.stat().st_size if trace.exists() else 0

        # one untimed round of 8 episodes first: a fresh engine's one-time costs otherwise land in the
        # first level, whichever it is (served ÷ ceiling read 6.17 at 1 episode run first, 0.95 run second,
        # and 0.68 at 8 episodes run first); the ceiling replays this round as the first level's warm-up
        asyncio.run(level(server.url, 8, 2, episodes))
        for n in levels:
            mark: dict = {"warmup": 0 if n == levels[0] else size()}

            def start(mark=mark):
                mark.update(offset=size(), cpu={**cpu_by_role(proc, "server"), "load generator": _cpu(me)})

            rate, p50 = asyncio.run(level(server.url, n, steps, episodes, on_start=start))
            cpu = delta({**cpu_by_role(proc, "server"), "load generator": _cpu(me)}, mark["cpu"])
            with trace.open("rb") as f:
                f.seek(mark["warmup"])
                lines = f.read().decode().splitlines(keepends=True)
            cut, warmup = mark["offset"] - mark["warmup"], []
            while lines and cut > 0:  # the warm-up's lines, then the timed part's
                cut -= len(lines[0].encode())
                warmup.append(json.loads(lines.pop(0)))
            out[n] = Measured(rate, p50, cpu, [json.loads(line) for line in lines if line.strip()], warmup)
    finally:
        server.close()
    return out


async def _ceiling(model: Path, home: Path, levels: dict[int, Measured], steps: int) -> dict[int, Measured]:
    """Each level's traced requests on a bare AsyncLLM (the server's engine arguments), after its warm-up's
    requests, so the prefix cache holds what the server's held.  N episodes at a time, each episode's
    requests in their served order (a step's executor call waits for its planner call, the next step for
    this one): the same dependencies as served, without the server, HTTP and load generator between them."""
    from glider.server.backends.vllm import VLLMBackend
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    s = settings(home=home, model=model, kv_cache_gib=2, backend="vllm")  # ServerProcess's cache size
    backend = VLLMBackend(s)
    await backend.start()  # the engine exactly as the server builds it; driven directly from here on
    engine = backend._engine
    loras: dict[str, LoRARequest] = {}
    for m in levels.values():
        for r in m.warmup + m.requests:
            if r["adapter"] and r["adapter"] not in loras:
                loras[r["adapter"]] = LoRARequest(r["adapter"], len(loras) + 1, r["adapter_path"])
                await engine.add_lora(loras[r["adapter"]])

    async def run(r: dict, rid: str) -> dict:
        # exactly the served completion's length: no stop string, no end-of-sequence (a min_tokens
        # logits processor would add work the served requests did not have). Not for grounded workloads:
        # a choice whose grammar ends before max_tokens would go on generating under ignore_eos
        params = SamplingParams(max_tokens=max(1, r["completion_tokens"]), ignore_eos=True,
                                temperature=r["temperature"], top_p=r["top_p"], seed=r["seed"],
                                output_kind=RequestOutputKind.FINAL_ONLY,
                                structured_outputs=StructuredOutputsParams(choice=r["choices"]) if r["choices"] else None)
        final, start = None, time.monotonic()
        async for out in engine.generate(r["prompt"], params, rid, lora_request=loras.get(r["adapter"])):
            final = out
        return {"prompt_tokens": len(final.prompt_token_ids), "completion_tokens": len(final.outputs[0].token_ids),
                "cached_tokens": final.num_cached_tokens or 0, "start": start, "end": time.monotonic()}

    async def replay(requests: list[dict], n: int, tag: str) -> list[dict]:
        done: list[dict] = []
        queue = iter(chains(requests))

        async def worker(w: int):
            for k, chain in enumerate(queue):
                for j, batch in enumerate(chain):  # an episode's requests in their order, as served
                    done.extend(await asyncio.gather(*(run(r, f"{tag}-{w}-{k}-{j}-{i}") for i, r in enumerate(batch))))

        await asyncio.gather(*(worker(w) for w in range(n)))
        return done

    me = psutil.Process()
    out = {}
    try:
        for n, m in levels.items():
            await replay(m.warmup, min(n, 8), f"warm{n}")
            before = cpu_by_role(me, "driver")
            t0 = time.perf_counter()
            done = await replay(m.requests, n, f"l{n}")
            elapsed = time.perf_counter() - t0
            out[n] = Measured(n * steps / elapsed, float("nan"), delta(cpu_by_role(me, "driver"), before), done)
    finally:
        await backend.close()
    return out


def chains(requests: list[dict]) -> list[list[list[dict]]]:
    """The traced requests as the episodes issued them: per episode, its batches in order (requests whose
    served spans overlap went to the engine together; a later one waited for the earlier ones), episodes
    in the order they first asked.  A request with no episode (a trace from before episodes were named)
    is a chain of its own."""
    by_episode: dict[object, list[dict]] = {}
    for i, r in enumerate(sorted(requests, key=lambda r: r["start"])):
        by_episode.setdefault(r.get("episode") or i, []).append(r)
    out = []
    for rs in by_episode.values():
        batches: list[list[dict]] = []
        end = float("-inf")
        for r in rs:
            if batches and r["start"] < end:
                batches[-1].append(r)
                end = max(end, r["end"])
            else:
                batches.append([r])
                end = r["end"]
        out.append(batches)
    return out


def in_flight(requests: list[dict]) -> float:
    """Requests in the engine on average over the span they cover (each from submission to its output):
    how full the batches the engine could form were."""
    if not requests:
        return 0.0
    span = max(r["end"] for r in requests) - min(r["start"] for r in requests)
    return sum(r["end"] - r["start"] for r in requests) / max(span, 1e-9)


def tokens(requests: list[dict]) -> tuple[int, int, int]:
    return tuple(sum(r[k] for r in requests) for k in ("prompt_tokens", "completion_tokens", "cached_tokens"))


def main(args) -> None:
    model = Path(args.model).resolve()
    levels = [int(x) for x in args.levels.split(",")]
    home = ROOT / ".glider" / "bench-concurrency" / model.name
    adapters = Path(args.adapters).resolve() if args.adapters else home / "adapters"
    if not args.adapters:
        shutil.rmtree(adapters, ignore_errors=True)
        publish_fresh_pair(adapters, model, home / "src")
    episodes = replays(Path(args.data))
    srv = served(model, adapters, home, levels, args.steps, episodes)
    ceiling = asyncio.run(_ceiling(model, home, srv, args.steps))

    print(f"# concurrency: served vs the engine's ceiling ({model.name}, vLLM-CPU, {args.steps} steps per episode, "
          f"replayed ScienceWorld episodes, {machine()})")
    print("| concurrent episodes | env-steps/s served | × single | p50 step ms | env-steps/s ceiling | served ÷ ceiling "
          "| requests in the engine, served / ceiling | engine requests | prompt / completion tokens per request "
          "| prefix hits served / ceiling |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    base = srv[levels[0]].rate
    for n in levels:
        s, c = srv[n], ceiling[n]
        (sp, sc, sh), (cp, cc, ch) = tokens(s.requests), tokens(c.requests)
        k = max(1, len(s.requests))
        print(f"| {n} | {s.rate:.1f} | {s.rate / base:.2f} | {s.p50_ms:.0f} | {c.rate:.1f} | {s.rate / c.rate:.2f} "
              f"| {in_flight(s.requests):.1f} / {in_flight(c.requests):.1f} | {len(s.requests)} | {sp / k:.0f} / {sc / k:.1f} (ceiling {cc / k:.1f}) | {sh / max(sp, 1):.2f} / "
              f"{ch / max(cp, 1):.2f} |")
    print("\nCPU seconds per env step, by process (2 cores: at most 2 s of CPU per second of wall time)")
    print("| concurrent episodes | served: engine core | server | load generator | ceiling: engine core | driver |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in levels:
        s, c, env_steps = srv[n].cpu, ceiling[n].cpu, n * args.steps
        print(f"| {n} | {s['engine'] / env_steps * 1000:.0f} ms | {s['server'] / env_steps * 1000:.0f} ms "
              f"| {s['load generator'] / env_steps * 1000:.0f} ms | {c['engine'] / env_steps * 1000:.0f} ms "
              f"| {c['driver'] / env_steps * 1000:.0f} ms |")
    top = levels[-1]
    result(f"env-steps/s at {top} concurrent episodes ÷ 1 episode", srv[top].rate / base, "≥ 3×",
           met=srv[top].rate / base >= 3)
    for n in levels:
        if n > 1:
            result(f"served ÷ engine ceiling at {n} episodes ({model.name})", srv[n].rate / ceiling[n].rate,
                   "measured")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--levels", default="1,8,32,64")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model", default=str(EMBEDDED))
    p.add_argument("--adapters", default=None, help="a registry to serve (default: a fresh pair for --model)")
    p.add_argument("--data", default=str(ROOT / ".glider" / "data" / "expert"))
    main(p.parse_args())
