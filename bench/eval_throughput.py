"""Evaluation throughput against the environment's own floor, on the same episodes.

    .venv/bin/python bench/eval_throughput.py [--protocol quick] [--parallel 8,24] [--home .glider]

1. **Served**: the plan's episodes through a real server (``glider serve`` in its own process, the
   home's trained adapters), ``--parallel`` episodes in flight, one bounded ScienceWorld JVM each.
2. **Floor**: the same episodes with no model: each replays its gold path and then ``look around``
   up to the number of steps the served run took, with as many JVMs — the same loads and steps,
   minus the agent.

Prints steps/s of both and served ÷ floor time per step (target ≤ 1.3), and where the CPU went:
seconds per process group (JVMs, server + engine, this harness), from psutil.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil
from common import ROOT, ServerProcess, machine, result, settings
from glider.clients.evaluate import EvalConfig, run_episodes
from glider.clients.protocols import load_plan


class CpuMeter:
    """CPU seconds of the JVMs (this process's java children), the server tree and this process, over a run.
    Processes that exit during the run are sampled every second so their time is not lost."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid
        self.last: dict[int, tuple[str, float]] = {}

    def groups(self) -> dict[int, str]:
        me = psutil.Process()
        out = {me.pid: "harness"}
        for child in me.children(recursive=True):
            try:
                out[child.pid] = "jvm" if "java" in child.name() else "harness"
            except psutil.Error:
                pass
        if self.server_pid is not None:
            try:
                server = psutil.Process(self.server_pid)
                out[server.pid] = "server"
                for child in server.children(recursive=True):
                    out[child.pid] = "server"
            except psutil.Error:
                pass
        return out

    def sample(self) -> None:
        for pid, group in self.groups().items():
            try:
                t = psutil.Process(pid).cpu_times()
                self.last[pid] = (group, t.user + t.system)
            except psutil.Error:
                pass

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group, seconds in self.last.values():
            out[group] = out.get(group, 0.0) + seconds
        return out


def measured(cfg: EvalConfig, server_pid: int | None) -> tuple[list, float, dict[str, float]]:
    import threading

    meter = CpuMeter(server_pid)
    meter.sample()
    before = meter.totals()
    stop = threading.Event()

    def poll():
        while not stop.wait(1.0):
            meter.sample()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t0 = time.monotonic()
    results = run_episodes(cfg)
    seconds = time.monotonic() - t0
    stop.set()
    poller.join()
    meter.sample()
    after = meter.totals()
    return results, seconds, {g: after.get(g, 0.0) - before.get(g, 0.0) for g in after}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default="quick")
    p.add_argument("--parallel", default="8,24", help="episodes in flight; several: 8,24")
    p.add_argument("--busy-wait", default="0.002",
                   help="GLIDER_ENGINE_BUSY_WAIT_S values served side by side (1 = vLLM's own spin)")
    p.add_argument("--home", type=Path, default=ROOT / ".glider", help="a home with trained adapters")
    p.add_argument("--mode", default="separate")
    args = p.parse_args()
    plan = load_plan(args.protocol)
    s = settings(home=args.home, mode=args.mode)
    print(f"# evaluation throughput ({machine()}); {plan.describe()}; mode {args.mode}, home {args.home}\n")
    print("| in flight | engine busy wait | served steps/s | floor steps/s | served ÷ floor (time per step) | "
          "CPU s: JVMs / server+engine / harness |")
    print("|---:|---:|---:|---:|---:|---|")
    for parallel in [int(x) for x in args.parallel.split(",")]:
        served = []
        for busy_wait in args.busy_wait.split(","):
            server = ServerProcess(s, GLIDER_MODE=args.mode, GLIDER_RECORD="false",
                                   GLIDER_ENGINE_BUSY_WAIT_S=busy_wait)
            try:
                server.wait_ready()
                cfg = EvalConfig(plan=plan, server=server.url, transport="rest", parallel=parallel)
                served.append((busy_wait, *measured(cfg, server.proc.pid)))
            finally:
                server.close()
        # the floor replays the first served run's episodes to the same step counts, with as many JVMs
        first = served[0][1]
        floor_cfg = EvalConfig(plan=plan, policy="gold", parallel=parallel, pad_steps={r.key: r.steps for r in first})
        floor, floor_s, floor_cpu = measured(floor_cfg, None)
        floor_sps = sum(r.steps for r in floor) / floor_s
        print(f"| {parallel} | floor (no model) | – | {floor_sps:.2f} | 1 | {floor_cpu.get('jvm', 0):.0f} / – / "
              f"{floor_cpu.get('harness', 0):.0f} |")
        for busy_wait, results, seconds, cpu in served:
            sps = sum(r.steps for r in results) / seconds
            ratio = floor_sps / sps
            print(f"| {parallel} | {busy_wait} s | {sps:.2f} | {floor_sps:.2f} | **{ratio:.2f}×** | "
                  f"{cpu.get('jvm', 0):.0f} / {cpu.get('server', 0):.0f} / {cpu.get('harness', 0):.0f} |", flush=True)
            result(f"evaluation time per step, served ÷ gold-replay floor, {parallel} in flight, busy wait "
                   f"{busy_wait} s", ratio, "≤ 1.3", met=ratio <= 1.3)
    print(f"\n{len(plan.episodes)} episodes; the floor plays each to the served run's step count.")


if __name__ == "__main__":
    main()
