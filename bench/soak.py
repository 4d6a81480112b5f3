"""Load and soak on the vLLM-CPU backend: concurrent episodes over REST and gRPC at once.

Phase 1 (load): EPISODES episodes x STEPS steps, all at once, half over gRPC streams.
Phase 2 (soak): MINUTES of the same traffic at CONCURRENCY episodes at a time, new episodes
started as old ones finish, with the server's memory (RSS of the server and its engine
processes) and its open episodes sampled over time.

Every reply is checked (clients/loadtest.py): lost steps and cross-episode state must be 0.

    .venv/bin/python bench/soak.py [--episodes 200 --steps 50] [--minutes 20 --concurrency 64]
                                   [--store memory|redis]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile

import psutil
from common import ServerProcess, free_port, machine, result, settings
from glider.clients.loadtest import run_load


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of the server's own process, and of every process under it (vLLM's engine
    core and workers), so a growth can be placed."""
    proc = psutil.Process(pid)
    engine = 0
    for p in proc.children(recursive=True):
        try:
            engine += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return proc.memory_info().rss / 2**20, engine / 2**20


def main(args) -> None:
    env = {"GLIDER_BACKEND": "vllm", "GLIDER_RECORD": "false"}
    redis = None
    if args.store == "redis":
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "yes", "--appendfsync", "everysec", "--dir", tempfile.mkdtemp()],
                                 stdout=subprocess.DEVNULL)
        env |= {"GLIDER_STORE": "redis", "GLIDER_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    server = ServerProcess(settings(), **env)
    try:
        server.wait_ready()

        def sample() -> dict:
            api, engine = rss_mb(server.proc.pid)
            return {"server RSS MiB": api + engine, "API process MiB": api, "engine processes MiB": engine}

        target = f"127.0.0.1:{server.grpc_port}"
        print(f"# load and soak ({machine()}, vLLM-CPU, store={args.store}, embedded backbone)\n")
        if args.episodes:
            report = asyncio.run(run_load(server.url, target, episodes=args.episodes, steps=args.steps,
                                          concurrency=args.episodes, sample=sample, sample_every_s=30))
            print(f"## load: {args.episodes} concurrent episodes x {args.steps} steps\n")
            print(report.markdown() + "\n", flush=True)
            bad = report.lost_steps + report.cross_episode_errors + sum(report.errors.values())
            result(f"lost steps + cross-episode errors + errors, {args.episodes} episodes x {args.steps} steps",
                   bad, "0", met=bad == 0)
            for t in ("rest", "grpc"):
                result(f"{t} step latency p99 ÷ p50 under load", report.percentile(t, 99) / report.percentile(t, 50))
        if args.minutes:
            report = asyncio.run(run_load(server.url, target, episodes=None, steps=args.steps,
                                          concurrency=args.concurrency, duration_s=args.minutes * 60,
                                          sample=sample, sample_every_s=args.sample_every))
            print(f"## soak: {args.minutes} min at {args.concurrency} concurrent episodes of {args.steps} steps\n")
            print(report.markdown())
            rss = [s["server RSS MiB"] for s in report.samples]
            half = len(rss) // 2
            if half:
                first, second = sum(rss[:half]) / half, sum(rss[half:]) / (len(rss) - half)
                print(f"\nRSS mean, second half / first half: {second / first:.3f}")
                result(f"server RSS, second half ÷ first half of a {args.minutes:g}-min soak", second / first,
                       "≈ 1 (flat)", met=second / first < 1.1)
    finally:
        server.close()
        if redis is not None:
            redis.terminate()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=200, help="load phase: episodes all at once (0: skip)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--minutes", type=float, default=20, help="soak phase length (0: skip)")
    p.add_argument("--concurrency", type=int, default=64, help="soak phase: episodes at a time")
    p.add_argument("--sample-every", type=float, default=60)
    p.add_argument("--store", default="memory", choices=["memory", "redis"])
    main(p.parse_args())
