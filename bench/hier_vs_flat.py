"""Planner calls, tokens per env step and prefix-cache hit rate, hierarchical vs flat, on real
ScienceWorld episodes.

The same episodes (task families × variations, fixed step budget) are played
through the Agent in ``separate`` mode and in ``flat`` mode on the same engine
kind; counts come from the server's own metrics.

    .venv/bin/python bench/hier_vs_flat.py [--tasks boil,find-plant] [--steps 30] [--backend vllm]
"""

from __future__ import annotations

import argparse
import asyncio

from common import machine, result, settings
from glider.clients.envs.scienceworld import ScienceWorld, open_env


def counter(agent, name, role):
    return agent.metrics.registry.get_sample_value(name, {"profile": "default", "role": role}) or 0.0


async def run_mode(mode, args, env):
    from glider.server.app import build_agent

    agent = build_agent(settings(backend=args.backend, mode=mode))
    await agent.start()
    steps = 0
    try:
        for task in args.tasks.split(","):
            for var in range(args.variations):
                world = ScienceWorld(task, var, env=env)
                first = world.reset()
                r = await agent.act(observation=first.observation, task=world.task)
                for _ in range(args.steps):
                    res = world.step(r.action)
                    steps += 1
                    if res.done:
                        break
                    r = await agent.act(observation=res.observation, episode_id=r.episode_id,
                                        reward=res.reward)
        roles = ["planner", "executor"] if mode != "flat" else ["flat"]
        calls = {ro: counter(agent, "glider_generations_total", ro) for ro in roles}
        gen = sum(counter(agent, "glider_generated_tokens_total", ro) for ro in roles)
        prompt = sum(counter(agent, "glider_prompt_tokens_total", ro) for ro in roles)
        cached = sum(counter(agent, "glider_prompt_cached_tokens_total", ro) for ro in roles)
    finally:
        await agent.close()
    return steps, calls, gen, prompt, cached


async def main(args):
    env = open_env(step_limit=args.steps + 10)
    rows = {}
    try:
        for mode in ("separate", "flat"):
            rows[mode] = await run_mode(mode, args, env)
    finally:
        env.close()
    print(f"# hierarchical vs flat ({args.backend}, tasks {args.tasks}, {args.variations} variation(s), "
          f"≤{args.steps} steps, {machine()})")
    print("| mode | env steps | planner calls/step | model calls/step | generated tokens/step | prompt tokens/step "
          "| prefix-cache hit rate | uncached prompt tokens/step |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, (steps, calls, gen, prompt, cached) in rows.items():
        print(f"| {mode} | {steps} | {calls.get('planner', 0) / steps:.3f} | {sum(calls.values()) / steps:.3f} "
              f"| {gen / steps:.1f} | {prompt / steps:.1f} | {cached / max(prompt, 1):.3f} "
              f"| {(prompt - cached) / steps:.1f} |")
    (s_steps, _, s_gen, s_prompt, s_cached), (f_steps, _, f_gen, f_prompt, f_cached) = rows["separate"], rows["flat"]
    print(f"ratio hierarchical/flat: generated tokens/step {s_gen / s_steps / (f_gen / f_steps):.2f}, "
          f"prompt tokens/step {s_prompt / s_steps / (f_prompt / f_steps):.2f}, "
          f"uncached prompt tokens/step {(s_prompt - s_cached) / s_steps / ((f_prompt - f_cached) / f_steps):.2f}")
    result("generated tokens per env step, hierarchical ÷ flat", s_gen / s_steps / (f_gen / f_steps), "")
    result("prompt tokens per env step, hierarchical ÷ flat", s_prompt / s_steps / (f_prompt / f_steps), "")
    for mode, (_, _, _, prompt, cached) in rows.items():
        result(f"prefix-cache hit rate of prompt tokens, {mode}", cached / max(prompt, 1), "")
    result("uncached prompt tokens per env step, hierarchical ÷ flat",
           (s_prompt - s_cached) / s_steps / ((f_prompt - f_cached) / f_steps), "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="boil,find-plant,chemistry-mix")
    p.add_argument("--variations", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--backend", default="vllm")
    asyncio.run(main(p.parse_args()))
