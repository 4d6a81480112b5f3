"""Training throughput on the embedded backbone, side by side on the same expert trajectories.

* SFT, flat vs hierarchical (planner + executor adapters): training tokens, seconds and tokens/s
  per expert env step, for the same epochs on the same trajectories, one after the other;
* the ORL actor's optimizer step (advantage-weighted NLL) vs an SFT step on the same executor
  sequences and batch budget, and the critic stage's time (features + Q/V fit) once.

Trains into a scratch registry under ``--home``; the served registry is not touched. Collects the
expert trajectories it needs (ScienceWorld gold paths) when they are not collected yet.

    .venv/bin/python bench/train_throughput.py [--tasks boil,find-plant,...] [--per-task 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, result, settings
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.controller import HierarchyConfig
from glider.trainer.critic import CriticConfig
from glider.trainer.data.collect import collect, load_collected
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.orl import attach_weights, critic_and_weights, load_policy
from glider.trainer.sequences import SequenceBuilder, role_decisions
from glider.trainer.sft import SFTConfig, episodes_for, run_sft
from glider.trainer.training import TrainConfig, train

TASKS = "boil,find-plant,chemistry-mix,melt,grow-plant,test-conductivity"


def step_times(model_dir: Path, registry: Path, trajs, s, steps: int, out: Path) -> dict:
    """Seconds per optimizer step: SFT (plain NLL) vs the ORL actor (weighted NLL) on the same executor
    sequences and batch budget, one after the other; plus the ORL stage's critic work per actor step."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": "separate"}))
    eps = episodes_for(trajs, seg=SegmentationConfig(max_len=s.c_max))
    seqs, decisions = role_decisions(eps, "executor", SequenceBuilder(tok, 2048), hierarchy)
    start = AdapterRegistry(registry).get("executor").path
    cfg = TrainConfig(lr=5e-4, max_steps=steps, warmup_steps=1, progress=False, checkpoint_every=10**6,
                      checkpoint_minutes=None)
    plain = load_policy(model_dir, adapter=start, lora=None)
    t0 = time.monotonic()
    train(plain, seqs, cfg, out / "sft", pad_id=tok.pad_token_id, name="sft-step")
    sft_s = (time.monotonic() - t0) / steps
    model = load_policy(model_dir, adapter=start, lora=None)
    t0 = time.monotonic()
    _, _, _, weights, _ = critic_and_weights(model, seqs, decisions, tok.pad_token_id, CriticConfig(), progress=False)
    critic_s = time.monotonic() - t0
    attach_weights(seqs, weights)
    t0 = time.monotonic()
    train(model, seqs, cfg, out / "orl", pad_id=tok.pad_token_id, name="orl-step")
    orl_s = (time.monotonic() - t0) / steps
    return {"steps": steps, "sft_s_per_step": sft_s, "orl_actor_s_per_step": orl_s, "critic_stage_s": critic_s,
            "decisions": len(decisions)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data" / "expert")
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--per-task", type=int, default=2)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--step-bench", type=int, default=6, help="optimizer steps per side of the ORL/SFT comparison")
    p.add_argument("--home", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args()

    s = settings()
    model = s.model_dir()
    tasks = [t for t in args.tasks.split(",") if t]
    collect(args.data, tasks=tasks, per_task=args.per_task, progress=False)  # resumes: cached ones are kept
    trajs = load_collected(args.data, "scienceworld", "train", tasks, args.per_task)
    env_steps = sum(len(t.steps) for t in trajs)
    home = args.home or Path(tempfile.mkdtemp(prefix="glider-train-bench-"))
    registry = home / "adapters"
    rows, totals = [], {}
    try:
        for mode in ("flat", "separate"):
            cfg = SFTConfig(mode=mode, train=TrainConfig(lr=2e-3, epochs=args.epochs, progress=False),
                            segmentation=SegmentationConfig(max_len=s.c_max))
            metrics = run_sft(model, trajs, home / "runs" / f"sft-{mode}", cfg, registry=registry,
                              hierarchy=HierarchyConfig.from_settings(s.model_copy(update={"mode": mode})))
            tokens = seconds = 0.0
            for name, m in metrics.adapters.items():
                t = m.training
                rows.append(f"| {mode} | {name} | {m.sequences} | {m.tokens:,} | {m.target_tokens:,} "
                            f"| {100 * t.padding_share:.1f} % | {t.tokens_per_s:,.0f} | {t.seconds:.1f} |")
                tokens += m.tokens
                seconds += t.seconds
            totals[mode] = (tokens, seconds)
            if mode == "separate":
                executor = metrics.adapters["executor"].training
                executor_epoch_s = executor.seconds / max(executor.epochs_done, 1e-9)
        steps = step_times(model, registry, trajs, s, args.step_bench, home / "step-times")
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)

    print(f"# training throughput ({machine()}; {len(trajs)} expert trajectories, {env_steps} env steps, "
          f"{len(tasks)} task families; SFT {args.epochs:g} epoch(s), LoRA r16 on every projection)")
    print("| mode | adapter | sequences | train tokens | target tokens | padding | tokens/s | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    (f_tok, f_sec), (h_tok, h_sec) = totals["flat"], totals["separate"]
    print(f"\nper expert env step: flat {f_tok / env_steps:.0f} tokens, {1000 * f_sec / env_steps:.0f} ms; "
          f"hierarchical {h_tok / env_steps:.0f} tokens, {1000 * h_sec / env_steps:.0f} ms")
    print(f"ORL vs SFT optimizer step on {steps['decisions']} executor decisions: SFT {steps['sft_s_per_step']:.2f} s, "
          f"ORL actor {steps['orl_actor_s_per_step']:.2f} s; critic stage {steps['critic_stage_s']:.1f} s once, "
          f"one SFT epoch of the executor {executor_epoch_s:.1f} s")
    result("SFT training tokens per expert env step, hierarchical ÷ flat", h_tok / f_tok, "")
    result("SFT training seconds per expert env step, hierarchical ÷ flat", h_sec / f_sec, "")
    result("SFT tokens/s, hierarchical ÷ flat", (h_tok / h_sec) / (f_tok / f_sec), "")
    result("ORL actor step ÷ SFT step (same sequences)", steps["orl_actor_s_per_step"] / steps["sft_s_per_step"], "")
    result("ORL critic stage ÷ one SFT epoch of the executor", steps["critic_stage_s"] / executor_epoch_s, "")


if __name__ == "__main__":
    main()
