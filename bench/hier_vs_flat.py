"""Planner calls, tokens per env step and prefix-cache hit rate, hierarchical vs flat, on real
ScienceWorld episodes.

The same episodes (task families × variations, fixed step budget) are played
through the Agent in ``separate`` mode and in ``flat`` mode on the same engine
kind; counts come from the server's own metrics.

The prefix cache's *attainable* hit rate comes from the prompts themselves: each prompt can reuse at most
its longest common token prefix with an earlier prompt of the same adapter (vLLM keys cached blocks by
LoRA), never its last token, and only whole blocks of ``block_size`` tokens. Computed for each block size
in ``--block-sizes`` on the same prompts (an unbounded cache: nothing evicted), per role, beside the rate
the engine measured with its own block size (``--block-size``, default the engine's: 128 on CPU).

    .venv/bin/python bench/hier_vs_flat.py [--tasks boil,find-plant] [--steps 30] [--backend vllm] [--block-size 32]
"""

from __future__ import annotations

import argparse
import asyncio

from common import machine, result, settings
from glider.clients.envs.scienceworld import ScienceWorld, open_env


def counter(agent, name, role):
    return agent.metrics.registry.get_sample_value(name, {"profile": "default", "role": role}) or 0.0


def attainable(prompts: dict[str, list[list[int]]], block: int) -> dict[str, float]:
    """Per role: the share of prompt tokens an unbounded prefix cache of ``block``-token blocks could serve."""
    rates = {}
    for role, seqs in prompts.items():
        hit = total = 0
        for i, seq in enumerate(seqs):
            best = 0
            for earlier in seqs[:i]:
                n = 0
                for a, b in zip(seq, earlier):  # noqa: B905 - a common prefix stops at the shorter one
                    if a != b:
                        break
                    n += 1
                best = max(best, n)
            hit += min(best, len(seq) - 1) // block * block
            total += len(seq)
        rates[role] = hit / max(total, 1)
    return rates


async def run_mode(mode, args, env):
    from glider.server.app import build_agent
    from transformers import AutoTokenizer

    s = settings(backend=args.backend, mode=mode, block_size=args.block_size)
    agent = build_agent(s)
    await agent.start()
    tokenizer = AutoTokenizer.from_pretrained(s.model_dir())
    prompts: dict[str, list[list[int]]] = {}
    generate = agent.backend.generate

    async def recording(specs):
        for spec in specs:
            prompts.setdefault(spec.adapter or "base", []).append(tokenizer(spec.prompt).input_ids)
        return await generate(specs)

    agent.backend.generate = recording
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
        measured = {ro: counter(agent, "glider_prompt_cached_tokens_total", ro)
                    / max(1.0, counter(agent, "glider_prompt_tokens_total", ro)) for ro in roles}
    finally:
        await agent.close()
    rates = {block: attainable(prompts, block) for block in args.block_sizes}
    return steps, calls, gen, prompt, cached, measured, rates


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
    for mode, (steps, calls, gen, prompt, cached, _, _) in rows.items():
        print(f"| {mode} | {steps} | {calls.get('planner', 0) / steps:.3f} | {sum(calls.values()) / steps:.3f} "
              f"| {gen / steps:.1f} | {prompt / steps:.1f} | {cached / max(prompt, 1):.3f} "
              f"| {(prompt - cached) / steps:.1f} |")
    engine_block = args.block_size or "the engine's"
    print(f"\n| role | measured hit rate (block {engine_block}) | "
          + " | ".join(f"attainable, block {b}" for b in args.block_sizes) + " |")
    print("|---|---|" + "---|" * len(args.block_sizes))
    for mode, row in rows.items():
        measured, rates = row[5], row[6]
        for role in measured:
            print(f"| {mode}: {role} | {measured[role]:.3f} | "
                  + " | ".join(f"{rates[b].get(role, 0.0):.3f}" for b in args.block_sizes) + " |")
    (s_steps, _, s_gen, s_prompt, s_cached, _, _), (f_steps, _, f_gen, f_prompt, f_cached, _, _) = \
        rows["separate"], rows["flat"]
    print(f"ratio hierarchical/flat: generated tokens/step {s_gen / s_steps / (f_gen / f_steps):.2f}, "
          f"prompt tokens/step {s_prompt / s_steps / (f_prompt / f_steps):.2f}, "
          f"uncached prompt tokens/step {(s_prompt - s_cached) / s_steps / ((f_prompt - f_cached) / f_steps):.2f}")
    result("generated tokens per env step, hierarchical ÷ flat", s_gen / s_steps / (f_gen / f_steps), "")
    result("prompt tokens per env step, hierarchical ÷ flat", s_prompt / s_steps / (f_prompt / f_steps), "")
    for mode, (_, _, _, prompt, cached, measured, rates) in rows.items():
        result(f"prefix-cache hit rate of prompt tokens, {mode}", cached / max(prompt, 1), "")
        block = args.block_size or 128
        if block in rates:
            for role, rate in measured.items():
                if rates[block].get(role):
                    ratio = rate / rates[block][role]
                    result(f"prefix-cache hit rate ÷ attainable (block {block}), {mode} {role}", ratio, "≥ 0.9",
                           met=ratio >= 0.9)
    result("uncached prompt tokens per env step, hierarchical ÷ flat",
           (s_prompt - s_cached) / s_steps / ((f_prompt - f_cached) / f_steps), "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="boil,find-plant,chemistry-mix")
    p.add_argument("--variations", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--backend", default="vllm")
    p.add_argument("--block-size", type=int, default=None, help="the engine's KV block size (default: its own)")
    p.add_argument("--block-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[16, 32, 64, 128],
                   help="block sizes to compute the attainable hit rate for")
    asyncio.run(main(p.parse_args()))
