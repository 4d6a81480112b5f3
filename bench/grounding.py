"""Grounded actions: what sending the admissible commands costs, on the environment and on the server.

1. **The environment's list.** ScienceWorld builds its valid action-object combinations in the JVM on
   request: per step of gold paths, a plain step against a step plus the list, side by side.
2. **The server.** Real ScienceWorld states (observation + list, recorded once from gold paths and
   replayed, so no JVM competes for the cores) are played through one ``glider serve`` as episodes,
   free (observations only) and grounded (with the lists), at 1 and 32 concurrent episodes, for each
   grounding method (score | constrained) and candidate bound: step latency p50 / p95 grounded ÷ free,
   and how many steps were grounded (the executor's generation was not admissible, so its model chose).

    .venv/bin/python bench/grounding.py [--candidates 4,16,64] [--levels 1,32] [--methods constrained,score]
    .venv/bin/python bench/grounding.py --home .glider/quality-full-w10-s20 --mode flat   # a trained agent

The server serves ``--home``'s backbone and the adapters of ``--mode`` (``glider adapters init``
publishes untrained ones: the worst case, where nearly every step is grounded; a trained agent's
admissible generations skip the model's choice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
from common import ROOT, ServerProcess, machine, median, pct, result, settings
from glider.server.settings import GroundingMethod

TASKS = ["boil", "find-plant", "use-thermometer", "chemistry-mix", "grow-plant", "test-conductivity"]
STATES = ROOT / ".glider" / "bench" / "grounding-states.json"


def record_states(per_task: int, steps: int) -> tuple[list[dict], dict]:
    """Gold-path states with their lists (cached), and the list's cost per step measured on the way."""
    from glider.clients.envs.scienceworld import ScienceWorld, open_env

    env = open_env(step_limit=200)
    episodes, plain, listed, runner, sizes, possible, possible_sizes = [], [], [], [], [], [], []
    try:
        for task in TASKS:
            world = ScienceWorld(task, 0, env=env, gold=True)
            for variation in world.variations("train")[:per_task]:
                world.variation = variation
                world.grounded = True
                first = world.reset()
                gold = world.gold_actions()[:steps]
                states = [{"observation": first.observation, "valid_actions": first.valid_actions}]
                for action in gold:
                    world.grounded = False
                    t0 = time.perf_counter()
                    step = world.step(action)
                    t1 = time.perf_counter()
                    commands = world.env.get_valid_action_object_combinations()
                    t2 = time.perf_counter()
                    templates, objects = world.env.get_possible_action_object_combinations()
                    t3 = time.perf_counter()
                    world.grounded = True
                    world.valid_actions()  # what the runner sends: the same commands, asked for as JSON
                    t4 = time.perf_counter()
                    plain.append(t1 - t0)
                    listed.append(t2 - t0)
                    possible.append(t3 - t2)
                    runner.append(t1 - t0 + t4 - t3)
                    possible_sizes.append(len(templates))
                    sizes.append(len(commands))
                    if step.done:
                        break
                    states.append({"observation": step.observation, "valid_actions": list(commands)})
                episodes.append({"task": world.task, "states": states})
    finally:
        env.close()
    # the unchecked alternative: every template filled with every visible object, validity not checked
    cost = {"steps": len(plain), "plain_ms": 1000 * median(plain), "with_list_ms": 1000 * median(listed),
            "with_runner_list_ms": 1000 * median(runner),
            "list_size_p50": median(sizes), "list_size_max": max(sizes), "list_chars_p50": 0,
            "possible_ms": 1000 * median(possible), "possible_size_p50": median(possible_sizes)}
    cost["list_chars_p50"] = median([sum(len(c) for c in s["valid_actions"]) for e in episodes for s in e["states"]])
    return episodes, cost


async def play(client, episode: dict, steps: int, grounded: bool, latencies: list, flags: list) -> None:
    states = episode["states"]
    eid = None
    for i in range(steps):
        state = states[i % len(states)]
        body = {"observation": state["observation"], **({"episode_id": eid} if eid else {"task": episode["task"]})}
        if grounded:
            body["valid_actions"] = state["valid_actions"]
        t0 = time.perf_counter()
        r = await client.post("/act", json=body)
        latencies.append(time.perf_counter() - t0)
        r.raise_for_status()
        reply = r.json()
        eid = reply["episode_id"]
        flags.append(reply["grounded"])
    await client.delete(f"/episodes/{eid}")


async def level(url: str, episodes: list[dict], n: int, steps: int, grounded: bool) -> dict:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await asyncio.gather(*(play(client, episodes[k % len(episodes)], 2, grounded, [], []) for k in range(min(n, 4))))
        latencies, flags = [], []
        t0 = time.perf_counter()
        await asyncio.gather(*(play(client, episodes[k % len(episodes)], steps, grounded, latencies, flags)
                               for k in range(n)))
        elapsed = time.perf_counter() - t0
    return {"p50_ms": 1000 * median(latencies), "p95_ms": 1000 * pct(latencies, 95),
            "steps_per_s": n * steps / elapsed, "grounded_share": sum(flags) / max(1, len(flags))}


def main(args) -> None:
    if STATES.is_file() and not args.rerecord:
        saved = json.loads(STATES.read_text())
        episodes, cost = saved["episodes"], saved["cost"]
    else:
        episodes, cost = record_states(args.per_task, args.steps)
        STATES.parent.mkdir(parents=True, exist_ok=True)
        STATES.write_text(json.dumps({"episodes": episodes, "cost": cost}))
    print(f"# grounding ({machine()}; {sum(len(e['states']) for e in episodes)} recorded ScienceWorld states; "
          f"{args.mode} adapters of {args.home})")
    print(f"ScienceWorld, {cost['steps']} gold steps: a step {cost['plain_ms']:.1f} ms, with the list "
          f"{cost['with_list_ms']:.1f} ms ({cost['with_list_ms'] / cost['plain_ms']:.1f}×), with the list as the "
          f"runner asks for it (JSON) {cost.get('with_runner_list_ms', float('nan')):.1f} ms "
          f"({cost.get('with_runner_list_ms', float('nan')) / cost['plain_ms']:.1f}×); the list holds "
          f"{cost['list_size_p50']:.0f} commands (max {cost['list_size_max']}), {cost['list_chars_p50'] / 1024:.0f} KiB; "
          f"the unchecked combinations (get_possible_action_object_combinations) {cost['possible_ms']:.1f} ms, "
          f"{cost['possible_size_p50']:.0f} of them")
    s = settings(home=args.home, mode=args.mode)
    from glider.server.adapters.registry import AdapterNotFound, AdapterRegistry
    from glider.server.policy.modes import ADAPTER_ROLES

    missing = []
    for name in ADAPTER_ROLES[args.mode]:
        try:
            AdapterRegistry(s.adapters_dir()).current_version(name)
        except AdapterNotFound:
            missing.append(name)
    if missing:
        raise SystemExit(f"{s.adapters_dir()} has no {missing} adapters: run `glider adapters init` (GLIDER_HOME)")
    rows, choices = [], {}
    # the constrained choice stopping at the deciding prefix, or decoding the whole command: side by side
    stops = [x.strip() == "true" for x in args.early_stop.split(",")]
    variants = [(m, early) for m in args.methods.split(",") for early in (stops if m == "constrained" else [True])]
    for method_setting, early in variants:
        method = method_setting if early else f"{method_setting} (whole command)"
        for k in [int(x) for x in args.candidates.split(",")]:
            trace = Path(s.home) / "logs" / f"grounding-trace-{method_setting}-{k}{'' if early else '-whole'}.jsonl"
            trace.unlink(missing_ok=True)
            server = ServerProcess(s, GLIDER_BACKEND=args.backend, GLIDER_MODE=args.mode,
                                   GLIDER_GROUNDING_CANDIDATES=str(k), GLIDER_TRACE_REQUESTS=str(trace),
                                   GLIDER_GROUNDING_METHOD=method_setting, GLIDER_RECORD="false",
                                   GLIDER_GROUNDING_EARLY_STOP=str(early).lower())
            try:
                server.wait_ready()
                for n in [int(x) for x in args.levels.split(",")]:
                    free = asyncio.run(level(server.url, episodes, n, args.steps, grounded=False))
                    grounded = asyncio.run(level(server.url, episodes, n, args.steps, grounded=True))
                    rows.append((method, k, n, free, grounded))
            finally:
                server.close()
            if trace.is_file():  # vLLM traces its requests: the constrained choices among them
                choices[(method, k)] = [r for r in map(json.loads, trace.read_text().splitlines()) if r["choices"]]
    print("| method | candidates | episodes | free p50 ms | grounded p50 ms | p50 ratio | p95 ratio | "
          "steps/s ratio | steps grounded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method, k, n, free, grounded in rows:
        print(f"| {method} | {k} | {n} | {free['p50_ms']:.1f} | {grounded['p50_ms']:.1f} | "
              f"{grounded['p50_ms'] / free['p50_ms']:.2f} | {grounded['p95_ms'] / free['p95_ms']:.2f} | "
              f"{grounded['steps_per_s'] / free['steps_per_s']:.2f} | {grounded['grounded_share']:.0%} |")
    if choices:
        decided_early(choices)
    for method, k, n, free, grounded in rows:
        if k == 16 and "(whole command)" not in method:
            ratio = grounded["p50_ms"] / free["p50_ms"]
            # the target is the server's default method's; another method's figure is its price beside it
            default = method == GroundingMethod.constrained.value
            result(f"grounded ({method}) ÷ free step latency p50 at {n} episode(s), 16 candidates, "
                   f"{grounded['grounded_share']:.0%} of steps grounded", ratio,
                   "≤ 1.5×" if default else "", met=ratio <= 1.5 if default else None)


def decided_early(choices: dict[tuple[str, int], list[dict]]) -> None:
    """How far into the chosen command a constrained choice had to write before it was decided: it stops
    at the command's deciding prefix (``grounding.deciding_prefixes``), not at its end.  In characters:
    the model's own path through the grammar may spell a command in more, smaller tokens than its
    canonical tokenisation, so tokens would not compare.  A lower bound of what was written: the token
    that completed the prefix may run past it (vLLM cuts the text at the stop string)."""
    from glider.server.policy.grounding import chosen_option, deciding_prefixes

    print("\n| method | candidates | constrained choices | decode tokens p50 (mean) | deciding prefix ÷ the "
          "chosen command, characters, mean | stopped at a deciding prefix |")
    print("|---|---:|---:|---:|---:|---:|")
    for (method, k), reqs in choices.items():
        spent, share, early = [], [], 0
        for r in reqs:
            chosen = r["choices"][chosen_option(r["choices"], deciding_prefixes(r["choices"]), r["text"],
                                                r["stop_reason"])]
            spent.append(r["completion_tokens"])
            share.append(len(r["text"] + (r["stop_reason"] or "")) / len(chosen))
            early += r["stop_reason"] is not None
        if reqs:
            print(f"| {method} | {k} | {len(reqs)} | {median(spent):.0f} ({sum(spent) / len(spent):.1f}) | "
                  f"{sum(share) / len(share):.2f} | {early / len(reqs):.0%} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="constrained",
                   help="GLIDER_GROUNDING_METHOD values, comma-separated ('constrained,score': side by side)")
    p.add_argument("--early-stop", default="true",
                   help="constrained: GLIDER_GROUNDING_EARLY_STOP values, comma-separated ('true,false': the "
                        "choice stopped at its deciding prefix against the whole command decoded, side by side)")
    p.add_argument("--candidates", default="16", help="GLIDER_GROUNDING_CANDIDATES values, comma-separated")
    p.add_argument("--levels", default="1,32", help="concurrent episodes")
    p.add_argument("--steps", type=int, default=8, help="steps per episode")
    p.add_argument("--per-task", type=int, default=2, help="gold episodes recorded per task family")
    p.add_argument("--backend", default="vllm")
    p.add_argument("--home", type=Path, default=ROOT / ".glider", help="backbone and adapter registry")
    p.add_argument("--mode", default="separate", choices=["separate", "shared", "flat"])
    p.add_argument("--rerecord", action="store_true", help="record the states again")
    main(p.parse_args())
